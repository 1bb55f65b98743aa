/**
 * Counters the data path bumps on every command. Plain numbers in typed arrays, so the hot path
 * pays an array increment, not a prom-client label lookup; the exporter (metrics/exporter.ts)
 * reads them when Prometheus scrapes. Timestamps are taken once per socket read or flush, not
 * per command.
 */

/** Upper bounds (seconds) of the latency histograms; the last bucket is +Inf. */
export const LATENCY_BUCKETS: readonly number[] = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
];

/** A Prometheus-style cumulative histogram kept as per-bucket counts. */
export class LatencyHistogram {
  /** counts[i] = observations in (LATENCY_BUCKETS[i-1], LATENCY_BUCKETS[i]]; last = above all. */
  readonly counts = new Float64Array(LATENCY_BUCKETS.length + 1);
  /**
   * [sum of the observations in seconds, their count]. Not plain fields: one that starts at 0
   * holds a small integer, and at its first fraction V8 changes the class's field layout; a
   * histogram made after that (a new node's, at the first failover or slot move) then no longer
   * fits what the data path's compiled code expects, and that code is thrown away in the middle
   * of the move (`--trace-deopt`: `onReplyFrame`; docs/resharding-latency.md).
   */
  readonly #totals = new Float64Array(2);

  get sum(): number {
    return this.#totals[0]!;
  }

  get count(): number {
    return this.#totals[1]!;
  }

  observe(seconds: number): void {
    let i = 0;
    while (i < LATENCY_BUCKETS.length && seconds > LATENCY_BUCKETS[i]!) i++;
    this.counts[i]!++;
    this.#totals[0]! += seconds;
    this.#totals[1]!++;
  }
}

/** Handling kinds used as the `class` label of the end-to-end latency histogram. */
export const COMMAND_CLASSES = [
  'single', 'split', 'broadcast', 'any-shard', 'local', 'refused', 'transaction', 'blocking', 'pubsub',
  'scan', 'first-non-empty', 'script', 'config-set', 'info', 'kill-script', 'error',
] as const;
export type CommandClass = (typeof COMMAND_CLASSES)[number];

/** Index of each class in COMMAND_CLASSES, for slots to carry as a small number. */
export const CLASS_INDEX: Readonly<Record<CommandClass, number>> = Object.fromEntries(
  COMMAND_CLASSES.map((c, i) => [c, i]),
) as Record<CommandClass, number>;

/** Per command name (by command table id) and per class. */
export class CommandStats {
  /** Names by id, as the command table numbered them, then `unknown` at UNKNOWN id. */
  readonly names: readonly string[];
  /** Id under which commands that are not in the table are counted. */
  readonly unknownId: number;
  readonly calls: Float64Array;
  readonly errors: Float64Array;
  /** End-to-end latency (request read -> reply written) by class index. */
  readonly latency: readonly LatencyHistogram[] = COMMAND_CLASSES.map(() => new LatencyHistogram());
  /** Sub-commands per split or broadcast command (fan-out width). */
  readonly fanOutWidth = new Float64Array(65);

  /** Id under which Pub/Sub messages pushed to clients are counted. */
  readonly pushId: number;

  constructor(names: readonly string[]) {
    this.names = [...names, 'unknown', 'pubsub-message'];
    this.unknownId = names.length;
    this.pushId = names.length + 1;
    this.calls = new Float64Array(this.names.length);
    this.errors = new Float64Array(this.names.length);
  }

  /** One reply written to a client. */
  record(id: number, classIndex: number, isError: boolean, seconds: number): void {
    this.calls[id]!++;
    if (isError) this.errors[id]!++;
    this.latency[classIndex]!.observe(seconds);
  }

  recordFanOut(width: number): void {
    this.fanOutWidth[width < 64 ? width : 64]!++;
  }
}

/** Per backend node, shared by that node's connections. */
export class NodeStats {
  readonly shard: string;
  readonly node: string;
  requests = 0;
  /** Replies that were errors (`-...`). */
  errors = 0;
  /** Requests that failed without a reply (connection lost, node unavailable). */
  failures = 0;
  /** Writes sent without the replica confirmation minReplicaAcks asks for (noReplicaWrites: accept). */
  unconfirmedWrites = 0;
  readonly latency = new LatencyHistogram();
  /** Connections of the node by state, kept current by the connections. */
  connectionsReady = 0;
  connectionsDown = 0;
  inFlight = 0;
  bytesOut = 0;
  bytesIn = 0;

  constructor(shard: string, node: string) {
    this.shard = shard;
    this.node = node;
  }
}

/** Client-side counters. */
export class ClientStats {
  connected = 0;
  accepted = 0;
  rejected = 0;
  bytesIn = 0;
  bytesOut = 0;
  /** Requests parsed from one socket read (pipeline depth), bucketed by power of two. */
  readonly pipelineDepth = new Float64Array(16);

  /** Requests parsed from all reads: the pipeline-depth histogram's sum. */
  requestsRead = 0;

  recordPipelineDepth(requests: number): void {
    this.requestsRead += requests;
    let bucket = 0;
    while (bucket < 15 && 1 << bucket < requests) bucket++;
    this.pipelineDepth[bucket]!++;
  }
}

/** Every data-path counter of one process. */
export class DataPathStats {
  readonly commands: CommandStats;
  readonly clients = new ClientStats();
  /** Node stats by `shard node` key; created by the backend pools. */
  readonly nodes = new Map<string, NodeStats>();

  constructor(commandNames: readonly string[]) {
    this.commands = new CommandStats(commandNames);
  }

  node(shard: string, node: string): NodeStats {
    const key = `${shard} ${node}`;
    let stats = this.nodes.get(key);
    if (stats === undefined) {
      stats = new NodeStats(shard, node);
      this.nodes.set(key, stats);
    }
    return stats;
  }
}
