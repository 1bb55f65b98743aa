import { SINGLE_WRITE, type BackendConnection, type DurableReplies } from '../backend/backend-connection';
import type { ReplySink } from '../backend/reply-sink';
import { encodeError } from '../resp/resp-writer';
import type { ShardInfo } from '../topology/topology';

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
    const { minReplicaAcks, noReplicaWrites } = this.#options;
    if (minReplicaAcks === 0 || noReplicaWrites !== 'refuse' || shard.readReplicas.length >= minReplicaAcks) return null;
    return encodeError(`NOREPLICAS shard ${shard.name} has fewer than ${minReplicaAcks} healthy replica(s); write refused`);
  }

  /**
   * Sends a write on `connection`, a connection to `shard`'s primary: refused (the sink fails
   * with refusal()'s error, nothing is sent), confirmed by WAIT when the shard has the healthy
   * replicas to confirm it, or as it is (minReplicaAcks 0, or noReplicaWrites: accept).
   */
  send(connection: BackendConnection, shard: ShardInfo, request: Buffer | readonly Buffer[], sink: ReplySink, replies: DurableReplies = SINGLE_WRITE): void {
    const required = this.#options.minReplicaAcks;
    if (required > 0) {
      if (shard.readReplicas.length >= required) {
        connection.sendDurable(request, sink, replies);
        return;
      }
      const refusal = this.refusal(shard);
      if (refusal !== null) {
        sink.onFailure(refusal);
        return;
      }
      connection.countUnconfirmedWrite();
    }
    connection.sendBatch(request, replies.ignored, sink);
  }
}
