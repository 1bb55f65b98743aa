/** A parsed `host:port` (IPv6 hosts without brackets). */
export interface Address {
  readonly host: string;
  readonly port: number;
}

/** Where replica-safe (readonly) commands are sent. */
export type ReadFrom = 'primary' | 'preferReplica' | 'replica';

/** What writes do when `minReplicaAcks` > 0 and the shard has no healthy replica left. */
export type NoReplicaWrites = 'refuse' | 'accept';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/** One shard of the YAML topology. */
export interface ShardConfig {
  /** Unique shard name, used in logs, metrics and errors. */
  readonly name: string;
  readonly primary: Address;
  readonly replicas: readonly Address[];
  /** Inclusive slot ranges `[from, to]` this shard owns (filled in when the YAML leaves them out). */
  readonly slots: readonly (readonly [number, number])[];
}

/** The validated YAML topology and proxy settings. */
export interface ProxyConfig {
  /** The one RESP endpoint apps use. @default 127.0.0.1:7000 */
  readonly listen: Address;
  /** HTTP address for /metrics and /healthz; null disables it. @default null */
  readonly metrics: Address | null;
  /**
   * HTTP admin endpoint for online resharding (what `slotproxy reshard/add-shard/remove-shard/
   * rebalance` talk to); null disables it. Keep it on loopback: it moves data. @default null
   */
  readonly admin: Address | null;
  /** Reload this file when it changes, as SIGHUP does (shards added or removed are rebalanced). @default false */
  readonly watchConfig: boolean;
  /** Keys per background batch while slots move (DUMP on the source, RESTORE on the target). @default 50 */
  readonly migrateBatchKeys: number;
  /**
   * Slots migrating at once, over all source shards. A command on a migrating slot takes one
   * more round trip, so fewer keeps client latency flatter; more moves faster. @default 192
   */
  readonly migrateSlotsInFlight: number;
  /**
   * Background moves per second over all shards, at most (0 = no limit): the mover shares the
   * shards and the proxy with client traffic, and the CPU it adds is what their p99 pays during
   * a move (docs/resharding-latency.md). @default 12000
   */
  readonly migrateKeysPerSecond: number;
  /** A node that fails to answer for this long is failed, like cluster-node-timeout. @default 5000 */
  readonly nodeTimeoutMs: number;
  /** Runtime topology the proxy rewrites (like nodes.conf), resolved against the YAML's folder. */
  readonly stateFile: string | null;
  /** Pipelined connections shared by all clients, per backend node; one, like Twemproxy, keeps writes per turn few. @default 1 */
  readonly connectionsPerNode: number;
  /** Backend connect timeout; a shard not reachable within it answers an error. @default 1000 */
  readonly connectTimeoutMs: number;
  /**
   * A backend reply that takes longer fails the command, and new commands to that node until it
   * has answered the failed ones (the connection is kept, so the node runs a client's commands
   * in the order sent, a failed one included). 0 = none. @default 0
   */
  readonly commandTimeoutMs: number;
  /** Commands for a shard in failover wait this long for the new primary. @default 5000 */
  readonly failoverWaitMs: number;
  /** Where readonly commands go; a failed replica is skipped. @default primary */
  readonly readFrom: ReadFrom;
  /**
   * Replicas that must confirm each write (WAIT) before the client gets its reply, so an
   * acknowledged write survives the loss of its primary: EVAL/EVALSHA/FCALL, MULTI/EXEC with a
   * write and blocking pops included; a key a reshard moves is confirmed on the new shard's
   * replicas before it leaves the old one. 0 = Redis's behaviour. @default 0
   */
  readonly minReplicaAcks: number;
  /** How long WAIT waits for those replicas; on timeout the client gets a NOREPLICAS error. @default 1000 */
  readonly replicaAckTimeoutMs: number;
  /**
   * With minReplicaAcks > 0 and no healthy replica left: `refuse` writes with an error (they
   * are not run; a reshard moves no key onto the shard meanwhile), or `accept` them unconfirmed
   * and count them in slotproxy_unconfirmed_writes_total (moved keys go unconfirmed too).
   * @default refuse
   */
  readonly noReplicaWrites: NoReplicaWrites;
  /** MIGRATE timeout when moving keys of a migrating slot (on demand, at most 250 ms, and in the background). @default 2000 */
  readonly migrateTimeoutMs: number;
  /**
   * How long a command on a key of a migrating slot waits for the key to reach its new shard
   * (target not answering, a big key being copied) before it fails with TRYAGAIN. @default 30000
   */
  readonly keyMoveWaitMs: number;
  /** Processes sharing the listening port. @default 1 */
  readonly workers: number;
  /** Password for the backends (AUTH), never logged. @default null */
  readonly backendPassword: string | null;
  /** @default info */
  readonly logLevel: LogLevel;
  readonly shards: readonly ShardConfig[];
  /** The YAML file it was read from (absolute path); null when read from text. Not a YAML key. */
  readonly configFile: string | null;
}
