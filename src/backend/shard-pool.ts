import { nodeKey, type NodeAddress, type ShardInfo, type Topology } from '../topology/topology';
import type { DataPathStats } from '../metrics/data-path-stats';
import { BackendConnection, type PushSink } from './backend-connection';
import { NodePool } from './node-pool';

/** The connections of one shard: its primary's, and its readable replicas' for replica reads. */
export interface ShardPool {
  readonly info: ShardInfo;
  readonly primary: NodePool;
  readonly replicas: readonly NodePool[];
}

type Role = 'primary' | 'replica';

export interface BackendPoolOptions {
  /** Pipelined connections per node. */
  readonly connectionsPerNode: number;
  readonly connectTimeoutMs: number;
  readonly password: string | null;
  readonly minReplicaAcks: number;
  readonly replicaAckTimeoutMs: number;
  readonly commandTimeoutMs: number;
  readonly stats: DataPathStats;
}

/**
 * Node pools for every node of the current topology, kept across snapshots: a new snapshot
 * reuses the pools of nodes it still names in the same role and closes the others. A primary
 * that is demoted loses its pool at once, so requests in flight on it fail instead of waiting
 * for a late reply from a node that no longer owns the shard's writes.
 */
export class BackendPools {
  readonly #options: BackendPoolOptions;
  readonly #nodes = new Map<string, NodePool>();

  constructor(options: BackendPoolOptions) {
    this.#options = options;
  }

  /** Shard pools for `topology`, in shard order. */
  update(topology: Topology): ShardPool[] {
    const used = new Set<string>();
    const pools = topology.shards.map((info) => ({
      info,
      primary: this.#node(info.primary, 'primary', info.name, used),
      replicas: info.readReplicas.map((replica) => this.#node(replica, 'replica', info.name, used)),
    }));
    for (const [key, pool] of this.#nodes) {
      if (!used.has(key)) {
        pool.close();
        this.#nodes.delete(key);
      }
    }
    return pools;
  }

  /**
   * A connection of its own for one client (blocking commands, WATCH, Pub/Sub), outside the
   * shared pools; the caller closes it.
   */
  dedicated(address: NodeAddress, shardName: string, pushSink?: PushSink): BackendConnection {
    const stats = this.#options.stats.node(shardName, nodeKey(address));
    // No command timeout: a blocked command legitimately waits as long as the client asked.
    // minReplicaAcks kept: a blocking pop or a WATCHed transaction that writes is confirmed here.
    return new BackendConnection({ ...this.#options, commandTimeoutMs: 0, address, shardName, stats, pushSink });
  }

  get nodes(): ReadonlyMap<string, NodePool> {
    return this.#nodes;
  }

  close(): void {
    for (const pool of this.#nodes.values()) pool.close();
    this.#nodes.clear();
  }

  #node(address: NodeAddress, role: Role, shardName: string, used: Set<string>): NodePool {
    const key = `${role} ${nodeKey(address)}`;
    used.add(key);
    let pool = this.#nodes.get(key);
    if (pool === undefined) {
      pool = new NodePool(
        { ...this.#options, address, shardName, stats: this.#options.stats.node(shardName, nodeKey(address)), reconnectsInBackground: true },
        this.#options.connectionsPerNode,
      );
      this.#nodes.set(key, pool);
    }
    return pool;
  }
}
