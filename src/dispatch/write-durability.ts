import { SINGLE_WRITE, type BackendConnection, type DurableReplies } from '../backend/backend-connection';
import type { ReplySink } from '../backend/reply-sink';
import { encodeError } from '../resp/resp-writer';
import { writeConfirmation, type ShardInfo, type WriteConfirmation } from '../topology/topology';

/** The settings it acts on (a subset of ProxyConfig). */
export interface WriteDurabilityOptions {
  readonly minReplicaAcks: number;
  readonly noReplicaWrites: 'refuse' | 'accept';
}

/**
 * `minReplicaAcks` and `noReplicaWrites` applied to a write, whichever way it reaches its
 * shard's primary: one command on a shared connection, a transaction's EXEC, a script, or a
 * blocking pop on a connection of the client's own. One place decides, so no path promises
 * less than SET does. The decision is made as the write is sent, from the shard's healthy
 * replicas (`readReplicas`) in the snapshot of that moment.
 */
export class WriteDurability {
  readonly #options: WriteDurabilityOptions;

  constructor(options: WriteDurabilityOptions) {
    this.#options = options;
  }

  /**
   * The NOREPLICAS error a write to `shard` gets now: minReplicaAcks is set, the shard has fewer
   * healthy replicas, and noReplicaWrites says refuse. Null when the write may go.
   */
  refusal(shard: ShardInfo): Buffer | null {
    return this.#confirmation(shard) === 'refused' ? this.#refusalError(shard) : null;
  }

  /**
   * Sends a write on `connection`, a connection to `shard`'s primary: refused (the sink fails
   * with refusal()'s error, nothing is sent), confirmed by WAIT when the shard has the healthy
   * replicas to confirm it, or as it is (minReplicaAcks 0, or noReplicaWrites: accept, counted).
   */
  send(connection: BackendConnection, shard: ShardInfo, request: Buffer | readonly Buffer[], sink: ReplySink, replies: DurableReplies = SINGLE_WRITE): void {
    switch (this.#confirmation(shard)) {
      case 'wait':
        connection.sendDurable(request, sink, replies);
        return;
      case 'refused':
        sink.onFailure(this.#refusalError(shard));
        return;
      case 'none':
        if (this.#options.minReplicaAcks > 0) connection.countUnconfirmedWrite();
        connection.sendBatch(request, replies.ignored, sink);
    }
  }

  #confirmation(shard: ShardInfo): WriteConfirmation {
    return writeConfirmation(shard, this.#options.minReplicaAcks, this.#options.noReplicaWrites);
  }

  #refusalError(shard: ShardInfo): Buffer {
    return encodeError(`NOREPLICAS shard ${shard.name} has fewer than ${this.#options.minReplicaAcks} healthy replica(s); write refused`);
  }
}
