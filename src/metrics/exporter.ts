import cluster from 'node:cluster';
import { AggregatorRegistry, type Metric, type Registry } from 'prom-client';
import { AnswerCollector } from '../runtime/answer-collector';
import { COMMAND_CLASSES, LATENCY_BUCKETS, type DataPathStats, type LatencyHistogram, type NodeStats } from './data-path-stats';
import {
  enableProcessMetrics,
  registry,
  shardFailingOver,
  shardSlots,
  slotsMigrating,
  topologyEpoch,
} from './metrics';

/**
 * Turns the data path's plain counters (DataPathStats) into Prometheus metrics when scraped, so
 * the hot path never touches prom-client. The data-path metric families are declared once, in
 * DATA_PATH_METRICS below; control-plane and topology metrics are in metrics.ts.
 *
 * With `workers: N` every worker holds its own DataPathStats: the primary asks each worker for
 * its registry as JSON over the cluster IPC channel and sums them (prom-client's
 * AggregatorRegistry.aggregate), together with its own registry.
 */

/** Label values of one sample. */
export type Labels = Readonly<Record<string, string | number>>;

/** One line of the text format. */
export interface Sample {
  /** Set on histogram lines (`NAME_bucket`, `NAME_sum`, `NAME_count`); absent = the family name. */
  readonly metricName?: string;
  readonly labels: Labels;
  readonly value: number;
}

export type MetricKind = 'counter' | 'gauge' | 'histogram';

/** One data-path metric family: how to read its samples out of DataPathStats. */
export interface DataPathMetric {
  readonly name: string;
  readonly help: string;
  readonly type: MetricKind;
  /** Appends the current samples to `out`. Runs at scrape time, never on the hot path. */
  readonly read: (stats: DataPathStats, out: Sample[]) => void;
}

/** Fan-out widths are counted exactly up to 63 (index = width); index 64 holds 64 and more. */
const FAN_OUT_BOUNDS: readonly number[] = [1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 63];
/** Pipeline depth bucket b holds reads with 2^(b-1) < requests <= 2^b; the last bucket is +Inf. */
const PIPELINE_BOUNDS: readonly number[] = Array.from({ length: 15 }, (_, b) => 2 ** b);

/** A family of one sample without labels: a process-wide counter or gauge. */
function unlabelled(value: (stats: DataPathStats) => number): DataPathMetric['read'] {
  return (stats, out) => void out.push({ labels: {}, value: value(stats) });
}

/** The labels every per-node family carries. */
function nodeLabels(node: NodeStats): Labels {
  return { shard: node.shard, node: node.node };
}

/** A family of one sample per backend node. */
function perNode(value: (node: NodeStats) => number): DataPathMetric['read'] {
  return (stats, out) => {
    for (const node of stats.nodes.values()) out.push({ labels: nodeLabels(node), value: value(node) });
  };
}

/**
 * A family of one sample per backend node and value of `label`, in the order of `values`
 * (label value -> reading): a node's outcomes or states side by side.
 */
function perNodeBy(label: string, values: Readonly<Record<string, (node: NodeStats) => number>>): DataPathMetric['read'] {
  const readings = Object.entries(values);
  return (stats, out) => {
    for (const node of stats.nodes.values()) {
      for (const [labelValue, value] of readings) out.push({ labels: { ...nodeLabels(node), [label]: labelValue }, value: value(node) });
    }
  };
}

/** Every data-path metric family, declared once (names follow the Prometheus naming guide). */
export const DATA_PATH_METRICS = [
  {
    name: 'slotproxy_commands_total',
    help: 'Commands answered to clients, by command name (subcommands as name|sub) and outcome: error when the reply was an error.',
    type: 'counter',
    read: readCommands,
  },
  {
    name: 'slotproxy_command_duration_seconds',
    help: 'End-to-end command latency, from the read of the request to the write of its reply, by command class (handling kind).',
    type: 'histogram',
    read: (stats, out) => {
      COMMAND_CLASSES.forEach((commandClass, i) => pushLatency(out, 'slotproxy_command_duration_seconds', { class: commandClass }, stats.commands.latency[i]!));
    },
  },
  {
    name: 'slotproxy_fanout_width',
    help: 'Shards one split or broadcast command was sent to.',
    type: 'histogram',
    read: (stats, out) => {
      const counts = stats.commands.fanOutWidth;
      let sum = 0;
      for (let width = 0; width < counts.length; width++) sum += width * counts[width]!;
      pushBuckets(out, 'slotproxy_fanout_width', {}, FAN_OUT_BOUNDS, (bound, previous) => sumRange(counts, previous + 1, bound), counts, sum);
    },
  },
  {
    name: 'slotproxy_pipeline_depth',
    help: 'Requests parsed from one socket read of a client (pipeline depth).',
    type: 'histogram',
    read: (stats, out) => {
      const counts = stats.clients.pipelineDepth;
      const sum = stats.clients.requestsRead;
      pushBuckets(out, 'slotproxy_pipeline_depth', {}, PIPELINE_BOUNDS, (_bound, _previous, i) => counts[i]!, counts, sum);
    },
  },
  {
    name: 'slotproxy_clients_connected',
    help: 'Client connections open now.',
    type: 'gauge',
    read: unlabelled((stats) => stats.clients.connected),
  },
  {
    name: 'slotproxy_clients_accepted_total',
    help: 'Client connections accepted.',
    type: 'counter',
    read: unlabelled((stats) => stats.clients.accepted),
  },
  {
    name: 'slotproxy_clients_rejected_total',
    help: 'Client connections refused because the proxy was at its connection limit.',
    type: 'counter',
    read: unlabelled((stats) => stats.clients.rejected),
  },
  {
    name: 'slotproxy_client_bytes_received_total',
    help: 'Bytes read from client sockets.',
    type: 'counter',
    read: unlabelled((stats) => stats.clients.bytesIn),
  },
  {
    name: 'slotproxy_client_bytes_sent_total',
    help: 'Bytes written to client sockets.',
    type: 'counter',
    read: unlabelled((stats) => stats.clients.bytesOut),
  },
  {
    name: 'slotproxy_backend_requests_total',
    help: 'Requests sent to a backend node (a fan-out command sends one per shard).',
    type: 'counter',
    read: perNode((node) => node.requests),
  },
  {
    name: 'slotproxy_backend_errors_total',
    help: 'Backend requests that went wrong: kind="reply" for an error reply, kind="failure" for no reply (connection lost, timeout).',
    type: 'counter',
    read: perNodeBy('kind', { reply: (node) => node.errors, failure: (node) => node.failures }),
  },
  {
    name: 'slotproxy_backend_duration_seconds',
    help: 'Time from queueing a request on a backend connection to its reply.',
    type: 'histogram',
    read: (stats, out) => {
      for (const node of stats.nodes.values()) pushLatency(out, 'slotproxy_backend_duration_seconds', nodeLabels(node), node.latency);
    },
  },
  {
    name: 'slotproxy_unconfirmed_writes_total',
    help: 'Writes sent to a primary without the replica confirmation minReplicaAcks asks for, because its shard had too few healthy replicas (noReplicaWrites: accept).',
    type: 'counter',
    read: perNode((node) => node.unconfirmedWrites),
  },
  {
    name: 'slotproxy_backend_in_flight',
    help: 'Requests sent to a backend node and awaiting their reply.',
    type: 'gauge',
    read: perNode((node) => node.inFlight),
  },
  {
    name: 'slotproxy_backend_connections',
    help: 'Connections to a backend node by state: ready, or down (reconnect backoff after a failure).',
    type: 'gauge',
    read: perNodeBy('state', { ready: (node) => node.connectionsReady, down: (node) => node.connectionsDown }),
  },
  {
    name: 'slotproxy_backend_bytes_sent_total',
    help: 'Bytes written to backend node sockets.',
    type: 'counter',
    read: perNode((node) => node.bytesOut),
  },
  {
    name: 'slotproxy_backend_bytes_received_total',
    help: 'Bytes read from backend node sockets.',
    type: 'counter',
    read: perNode((node) => node.bytesIn),
  },
] as const satisfies readonly DataPathMetric[];

function readCommands(stats: DataPathStats, out: Sample[]): void {
  const { names, calls, errors } = stats.commands;
  for (let id = 0; id < names.length; id++) {
    const count = calls[id]!;
    if (count === 0) continue;
    const failed = errors[id]!;
    // Both outcomes once a command was seen, so error ratios read 0 rather than "no data".
    out.push({ labels: { command: names[id]!, outcome: 'ok' }, value: count - failed }, { labels: { command: names[id]!, outcome: 'error' }, value: failed });
  }
}

function sumRange(counts: Float64Array, from: number, to: number): number {
  let sum = 0;
  for (let i = from; i <= to; i++) sum += counts[i]!;
  return sum;
}

/**
 * Appends the `_bucket` (cumulative, then +Inf), `_sum` and `_count` lines of one histogram.
 * `inBucket(bound, previousBound, i)` gives the observations of bucket i alone; the +Inf line is
 * the total of `counts`.
 */
function pushBuckets(
  out: Sample[],
  name: string,
  labels: Labels,
  bounds: readonly number[],
  inBucket: (bound: number, previous: number, i: number) => number,
  counts: Float64Array,
  sum: number,
): void {
  let cumulative = 0;
  let previous = -1;
  for (let i = 0; i < bounds.length; i++) {
    cumulative += inBucket(bounds[i]!, previous, i);
    previous = bounds[i]!;
    out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: bounds[i]! }, value: cumulative });
  }
  let total = 0;
  for (const count of counts) total += count;
  out.push(
    { metricName: `${name}_bucket`, labels: { ...labels, le: '+Inf' }, value: total },
    { metricName: `${name}_sum`, labels, value: sum },
    { metricName: `${name}_count`, labels, value: total },
  );
}

function pushLatency(out: Sample[], name: string, labels: Labels, histogram: LatencyHistogram): void {
  pushBuckets(out, name, labels, LATENCY_BUCKETS, (_bound, _previous, i) => histogram.counts[i]!, histogram.counts, histogram.sum);
}

/** A metric family whose samples are read from DataPathStats when the registry is scraped. */
class StatsMetric {
  readonly name: string;
  readonly help: string;
  readonly type: MetricKind;
  /** How workers' values are combined in the primary (AggregatorRegistry). */
  readonly aggregator = 'sum';
  readonly #stats: DataPathStats;
  readonly #read: DataPathMetric['read'];

  constructor(definition: DataPathMetric, stats: DataPathStats) {
    this.name = definition.name;
    this.help = definition.help;
    this.type = definition.type;
    this.#read = definition.read;
    this.#stats = stats;
  }

  async get(): Promise<{ name: string; help: string; type: MetricKind; aggregator: 'sum'; values: Sample[] }> {
    const values: Sample[] = [];
    this.#read(this.#stats, values);
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  /** registry.resetMetrics() calls it; the counts belong to the data path, so nothing to do. */
  reset(): void {}
}

/**
 * Registers the data-path metric families of `stats`. A second data path in the same process
 * (tests, the demo restarting) replaces the first one's families.
 */
export function registerDataPathMetrics(stats: DataPathStats, target: Registry = registry): void {
  for (const definition of DATA_PATH_METRICS) {
    target.removeSingleMetric(definition.name);
    // prom-client's typings model only its own classes; the registry needs name, help, type,
    // aggregator, get() and reset(), which StatsMetric has (prom-client's "custom metric").
    target.registerMetric(new StatsMetric(definition, stats) as unknown as Metric);
  }
}

/**
 * What a data path process does when `metrics:` is set: process metrics, its data-path
 * families, and, in a worker, answers to the primary's scrape requests.
 */
export function exportDataPath(stats: DataPathStats): void {
  enableProcessMetrics();
  registerDataPathMetrics(stats);
  if (cluster.isWorker) answerScrapes();
}

// ---------------------------------------------------------------------------------------------
// Topology

/** A node address as the topology holds it. */
export interface NodeAddressView {
  readonly host: string;
  readonly port: number;
}

/** What the exporter and the admin endpoints read of a shard; `topology/ShardInfo` fits it. */
export interface ShardView {
  readonly name: string;
  readonly primary: NodeAddressView | null;
  readonly replicas: readonly NodeAddressView[];
  /** Replicas healthy and replicating from the current primary. */
  readonly readReplicas: readonly NodeAddressView[];
  readonly isFailingOver: boolean;
}

/**
 * What metrics/ reads of a topology snapshot. Declared here so this leaf imports nothing from
 * topology/: `Topology` satisfies it structurally, as `TopologyStore` satisfies TopologySource.
 */
export interface TopologyView {
  readonly epoch: number;
  readonly shards: readonly ShardView[];
  /** Slots being migrated: shard indexes. */
  readonly migrations: ReadonlyMap<number, { readonly from: number; readonly to: number }>;
  /** Inclusive slot ranges owned by each shard, in shard order. */
  slotRanges(): readonly (readonly (readonly [number, number])[])[];
}

export interface TopologySource {
  readonly current: TopologyView;
}

/** `host:port`, `[v6]:port`: the `node` label the backend pools give NodeStats. */
export function nodeLabel(address: NodeAddressView): string {
  return address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/**
 * Sets the topology gauges from the snapshot; run before every scrape. (Node roles and health,
 * slotproxy_node_role and slotproxy_node_up, are the control plane's: it sets them as it decides.)
 */
export function updateTopologyMetrics(topology: TopologyView): void {
  const ranges = topology.slotRanges();
  // Reset first: shards that left the topology must lose their series.
  shardSlots.reset();
  shardFailingOver.reset();
  topology.shards.forEach((shard, i) => {
    let slots = 0;
    for (const [from, to] of ranges[i] ?? []) slots += to - from + 1;
    shardSlots.set({ shard: shard.name }, slots);
    shardFailingOver.set({ shard: shard.name }, shard.isFailingOver ? 1 : 0);
  });
  slotsMigrating.set(topology.migrations.size);
  topologyEpoch.set(topology.epoch);
}

// ---------------------------------------------------------------------------------------------
// Workers: the primary scrapes them over the cluster IPC channel

const SCRAPE_REQUEST = 'slotproxy:scrape';
const SCRAPE_REPLY = 'slotproxy:scrape-reply';

interface ScrapeRequest {
  readonly type: typeof SCRAPE_REQUEST;
  readonly id: number;
}

interface ScrapeReply {
  readonly type: typeof SCRAPE_REPLY;
  readonly id: number;
  /** `registry.getMetricsAsJSON()` of the worker; empty on error. */
  readonly metrics: readonly object[];
  readonly error?: string;
}

function isMessage<T extends { readonly type: string }>(message: unknown, type: T['type']): message is T {
  return typeof message === 'object' && message !== null && (message as { type?: unknown }).type === type;
}

let isAnswering = false;

/** In a worker: answer each scrape request of the primary with this process's registry. */
export function answerScrapes(target: Registry = registry): void {
  if (isAnswering) return;
  isAnswering = true;
  process.on('message', (message: unknown) => {
    if (!isMessage<ScrapeRequest>(message, SCRAPE_REQUEST)) return;
    const { id } = message;
    target.getMetricsAsJSON().then(
      (metrics) => process.send?.({ type: SCRAPE_REPLY, id, metrics } satisfies ScrapeReply),
      (err: unknown) => process.send?.({ type: SCRAPE_REPLY, id, metrics: [], error: String(err) } satisfies ScrapeReply),
    );
  });
}

/**
 * In the primary: sends a scrape request to every connected worker and gathers their replies.
 * A worker that does not answer within the timeout (starting, stuck, gone) is left out of
 * that scrape rather than failing it.
 */
export class WorkerScraper {
  readonly #scrapes: AnswerCollector<readonly object[]>;
  readonly #onMessage = (_worker: unknown, message: unknown): void => {
    if (!isMessage<ScrapeReply>(message, SCRAPE_REPLY)) return;
    this.#scrapes.answer(message.id, message.error === undefined ? message.metrics : undefined);
  };

  constructor(timeoutMs = 2_000) {
    this.#scrapes = new AnswerCollector(timeoutMs);
    cluster.on('message', this.#onMessage);
  }

  scrape(): Promise<(readonly object[])[]> {
    return new Promise((resolve) => {
      const send = (id: number): number => {
        let sent = 0;
        for (const worker of Object.values(cluster.workers ?? {})) {
          if (worker === undefined || !worker.isConnected()) continue;
          worker.send({ type: SCRAPE_REQUEST, id } satisfies ScrapeRequest);
          sent++;
        }
        return sent;
      };
      this.#scrapes.ask(send, resolve);
    });
  }

  close(): void {
    cluster.off('message', this.#onMessage);
    this.#scrapes.finishAll();
  }
}

/** Sums registries given as `getMetricsAsJSON()` arrays into one registry (by each family's aggregator). */
export function aggregateMetrics(registries: readonly (readonly object[])[]): Registry {
  return AggregatorRegistry.aggregate(registries.map((families) => [...families]));
}
