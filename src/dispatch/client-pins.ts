import type { BackendConnection } from '../backend/backend-connection';
import type { PubSubSession } from './pubsub-session';
import type { Transaction } from './transaction';

const PING_REQUEST = Buffer.from('*1\r\n$4\r\nPING\r\n');

/** A WATCH in force: the keys' slot, the shard it watched them on, and the client's own connection that holds the watch. */
export interface WatchState {
  readonly slot: number;
  /** The name of the shard that owned the slot at the first WATCH. */
  readonly shardName: string;
  readonly connection: BackendConnection;
}

/**
 * What the dispatcher keeps for a client beyond plain commands. Created on first need, closed
 * with the client: every connection here is the client's alone, so closing it releases a
 * blocked command, a watch or subscriptions on the backend.
 */
export class ClientPins {
  /** MULTI in progress. */
  transaction: Transaction | null = null;
  watch: WatchState | null = null;
  /** The client's own connections, by shard index (blocking commands and WATCH). */
  readonly connections = new Map<number, BackendConnection>();
  pubsub: PubSubSession | null = null;

  /**
   * As close(), but each own connection closes only once the requests already sent on it are
   * answered: a PING behind them closes it when its reply comes (or at once if it cannot be sent).
   */
  release(): void {
    for (const connection of this.connections.values()) {
      const closeIt = { onReply: () => connection.close(), onFailure: () => connection.close() };
      connection.send(PING_REQUEST, closeIt);
    }
    this.connections.clear();
    this.close();
  }

  close(): void {
    for (const connection of this.connections.values()) connection.close();
    this.connections.clear();
    this.pubsub?.close();
    this.pubsub = null;
    this.transaction = null;
    this.watch = null;
  }
}
