import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { aggregateMetrics, nodeLabel, updateTopologyMetrics, WorkerScraper, type TopologySource, type TopologyView } from './exporter';
import { registry } from './metrics';

/**
 * The admin HTTP endpoint on the `metrics:` address:
 *   /metrics   Prometheus text format (this process, plus every worker's data path when there are workers)
 *   /healthz   200 while the process runs
 *   /readyz    200 when every shard that owns slots has a primary that is not failing over and
 *              not failed by the health checks; 503 with the reasons otherwise
 *   /topology  the current snapshot as JSON, with each node's role and health
 * It runs where the control plane runs (the primary process when there are workers).
 */

export interface MetricsServerOptions {
  readonly host: string;
  /** 0 picks a free port (see `port` once started). */
  readonly port: number;
  /** Where /topology, /readyz and the topology gauges read the snapshot (the control plane's store). */
  readonly topology: TopologySource;
  /** The data path runs in worker processes (`workers:` > 1): ask them at every scrape. @default false */
  readonly hasWorkers?: boolean;
  /** How long a scrape waits for the workers' answers. @default 2000 */
  readonly workerTimeoutMs?: number;
}

/** Health of one node as the metrics tell it. */
export interface NodeHealth {
  /** slotproxy_node_up from the health checker; null while no health check has reported. */
  readonly isUp: boolean | null;
  /** The data path's connections to the node by state (summed over workers). */
  readonly connections: { readonly ready: number; readonly down: number };
}

export interface Readiness {
  readonly isReady: boolean;
  /** Why not, one entry per problem; empty when ready. */
  readonly reasons: readonly string[];
}

/** The /topology document. */
export interface TopologyReport {
  readonly epoch: number;
  readonly isReady: boolean;
  readonly reasons: readonly string[];
  readonly shards: readonly {
    readonly name: string;
    readonly isFailingOver: boolean;
    readonly slotCount: number;
    /** Inclusive ranges. */
    readonly slots: readonly (readonly [number, number])[];
    readonly nodes: readonly ({
      readonly address: string;
      readonly role: 'primary' | 'replica';
      /** A replica that readonly commands may use (healthy and replicating from the primary). */
      readonly isReadReplica: boolean;
    } & NodeHealth)[];
  }[];
  readonly migrations: readonly { readonly slot: number; readonly from: string; readonly to: string }[];
}

const TEXT = 'text/plain; charset=utf-8';
const JSON_TYPE = 'application/json; charset=utf-8';
const INDEX = 'slotproxy admin endpoint: /metrics /healthz /readyz /topology\n';

export class MetricsServer {
  readonly host: string;
  readonly port: number;
  readonly #server: http.Server;
  readonly #topology: TopologySource;
  readonly #workers: WorkerScraper | null;

  private constructor(server: http.Server, options: MetricsServerOptions, workers: WorkerScraper | null) {
    const address = server.address() as AddressInfo;
    this.host = address.address;
    this.port = address.port;
    this.#server = server;
    this.#topology = options.topology;
    this.#workers = workers;
    server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      this.#handle(req, res).catch((err: unknown) => reply(res, 500, TEXT, `scrape failed: ${String(err)}\n`));
    });
  }

  /** Listens on host:port; rejects when it cannot bind (EADDRINUSE). */
  static async start(options: MetricsServerOptions): Promise<MetricsServer> {
    const server = http.createServer();
    // A scrape that keeps its connection open must not hold close() up for long.
    server.keepAliveTimeout = 5_000;
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      server.once('error', onError);
      server.listen(options.port, options.host, () => {
        server.off('error', onError);
        resolve();
      });
    });
    const workers = options.hasWorkers === true ? new WorkerScraper(options.workerTimeoutMs) : null;
    return new MetricsServer(server, options, workers);
  }

  /** Every metric of the proxy, workers' included, with the topology gauges brought up to date. */
  async collect(): Promise<Registry> {
    updateTopologyMetrics(this.#topology.current);
    if (this.#workers === null) return registry;
    const [own, workers] = await Promise.all([registry.getMetricsAsJSON(), this.#workers.scrape()]);
    return aggregateMetrics([own, ...workers]);
  }

  async readiness(): Promise<Readiness> {
    return readinessOf(this.#topology.current, await nodeHealth(await this.collect()));
  }

  async report(): Promise<TopologyReport> {
    const topology = this.#topology.current;
    const health = await nodeHealth(await this.collect());
    const { isReady, reasons } = readinessOf(topology, health);
    const ranges = topology.slotRanges();
    const healthOf = (shard: string, node: string): NodeHealth =>
      health.get(`${shard} ${node}`) ?? { isUp: null, connections: { ready: 0, down: 0 } };
    return {
      epoch: topology.epoch,
      isReady,
      reasons,
      shards: topology.shards.map((shard, i) => {
        const readReplicas = new Set(shard.readReplicas.map(nodeLabel));
        const slots = ranges[i] ?? [];
        const primary = shard.primary === null ? [] : [nodeLabel(shard.primary)];
        return {
          name: shard.name,
          isFailingOver: shard.isFailingOver,
          slotCount: slots.reduce((sum, [from, to]) => sum + to - from + 1, 0),
          slots,
          nodes: [
            ...primary.map((address) => ({ address, role: 'primary' as const, isReadReplica: false, ...healthOf(shard.name, address) })),
            ...shard.replicas.map(nodeLabel).map((address) => ({
              address,
              role: 'replica' as const,
              isReadReplica: readReplicas.has(address),
              ...healthOf(shard.name, address),
            })),
          ],
        };
      }),
      migrations: [...topology.migrations].map(([slot, m]) => ({
        slot,
        from: topology.shards[m.from]?.name ?? String(m.from),
        to: topology.shards[m.to]?.name ?? String(m.to),
      })),
    };
  }

  /** Stops listening and drops open connections (Prometheus keeps its own alive). */
  close(): Promise<void> {
    this.#workers?.close();
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      reply(res, 405, TEXT, 'method not allowed\n');
      return;
    }
    const path = (req.url ?? '/').split('?', 1)[0];
    switch (path) {
      case '/metrics': {
        const metrics = await this.collect();
        reply(res, 200, metrics.contentType, await metrics.metrics());
        return;
      }
      case '/healthz':
        reply(res, 200, TEXT, 'ok\n');
        return;
      case '/readyz': {
        const { isReady, reasons } = await this.readiness();
        if (isReady) reply(res, 200, TEXT, 'ready\n');
        else reply(res, 503, TEXT, `not ready: ${reasons.join('; ')}\n`);
        return;
      }
      case '/topology':
        reply(res, 200, JSON_TYPE, `${JSON.stringify(await this.report(), null, 2)}\n`);
        return;
      case '/':
        reply(res, 200, TEXT, INDEX);
        return;
      default:
        reply(res, 404, TEXT, `not found; ${INDEX}`);
    }
  }
}

function reply(res: http.ServerResponse, status: number, contentType: string, body: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(status, { 'Content-Type': contentType, 'Cache-Control': 'no-store', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

/** Node health by `shard node`, from slotproxy_node_up and slotproxy_backend_connections. */
async function nodeHealth(metrics: Registry): Promise<Map<string, NodeHealth>> {
  const health = new Map<string, { isUp: boolean | null; connections: { ready: number; down: number } }>();
  const entry = (labels: Readonly<Record<string, unknown>>): { isUp: boolean | null; connections: { ready: number; down: number } } => {
    const key = `${String(labels['shard'])} ${String(labels['node'])}`;
    let found = health.get(key);
    if (found === undefined) {
      found = { isUp: null, connections: { ready: 0, down: 0 } };
      health.set(key, found);
    }
    return found;
  };
  for (const { labels, value } of await samplesOf(metrics, 'slotproxy_node_up')) entry(labels).isUp = value > 0;
  for (const { labels, value } of await samplesOf(metrics, 'slotproxy_backend_connections')) {
    if (labels['state'] === 'ready') entry(labels).connections.ready += value;
    else if (labels['state'] === 'down') entry(labels).connections.down += value;
  }
  return health;
}

async function samplesOf(metrics: Registry, name: string): Promise<readonly { readonly labels: Readonly<Record<string, unknown>>; readonly value: number }[]> {
  const metric = metrics.getSingleMetric(name);
  if (metric === undefined) return [];
  return (await metric.get()).values;
}

/**
 * Ready when every shard owning slots has a primary, is not failing over, and its primary is
 * not failed by the health checker (nor, while the checker has not reported, cut off from the
 * data path: connections down and none ready).
 */
export function readinessOf(topology: TopologyView, health: ReadonlyMap<string, NodeHealth>): Readiness {
  const reasons: string[] = [];
  const ranges = topology.slotRanges();
  topology.shards.forEach((shard, i) => {
    if ((ranges[i] ?? []).length === 0) return;
    if (shard.primary === null) {
      reasons.push(`shard ${shard.name} has no primary`);
      return;
    }
    if (shard.isFailingOver) reasons.push(`shard ${shard.name} is failing over`);
    const primary = nodeLabel(shard.primary);
    const node = health.get(`${shard.name} ${primary}`);
    if (node?.isUp === false) reasons.push(`shard ${shard.name} primary ${primary} fails health checks`);
    // A data-path connection stays 'down' until the next command reconnects it, so once the
    // health checker has found the node up again its word wins; without health reports (before
    // the first probe) the data path's view is all there is.
    if (node !== undefined && node.isUp === null && node.connections.down > 0 && node.connections.ready === 0) {
      reasons.push(`shard ${shard.name} primary ${primary}: data-path connections down`);
    }
  });
  return { isReady: reasons.length === 0, reasons };
}
