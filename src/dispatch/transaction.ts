import { encodeCommand } from '../resp/resp-writer';
import { NO_KEYS } from '../routing/route-planner';

export const MULTI_REQUEST = encodeCommand(['MULTI']);
export const EXEC_REQUEST = encodeCommand(['EXEC']);
export const UNWATCH_REQUEST = encodeCommand(['UNWATCH']);

/**
 * A MULTI being queued. The proxy answers +QUEUED itself and keeps the requests; EXEC sends
 * MULTI, the requests and EXEC back to back to the one shard that owns their slot, and only
 * EXEC's reply reaches the client. Like Redis Cluster, every key must be in one slot.
 */
export class Transaction {
  /** MULTI, then each queued request (views of the client's chunks). */
  readonly parts: Buffer[] = [MULTI_REQUEST];
  /** Requests queued. */
  count = 0;
  /** The slot all keys share; NO_KEYS until a command names a key. */
  slot: number;
  /** A command was refused while queuing: EXEC answers EXECABORT, as Redis does. */
  isAborted = false;
  /** A queued command may write: EXEC is then confirmed as minReplicaAcks says; one of reads only is not. */
  isWriting = false;

  constructor(slot: number = NO_KEYS) {
    this.slot = slot;
  }

  queue(request: Buffer, isWrite: boolean): void {
    this.parts.push(request);
    this.count++;
    if (isWrite) this.isWriting = true;
  }
}
