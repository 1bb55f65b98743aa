import { randomBytes } from 'node:crypto';
import { formatAddress } from '../config/address';
import type { ProxyConfig } from '../config/config-types';
import { ControlPlane } from '../control/control-plane';
import type { ProxyIdentity } from '../dispatch/local-commands';
import type { WorkerPeers } from '../dispatch/worker-peers';
import { log } from '../log/logger';
import { COMMAND_NAMES } from '../commands/command-table';
import { DataPathStats } from '../metrics/data-path-stats';
import { exportDataPath } from '../metrics/exporter';
import { MetricsServer } from '../metrics/metrics-server';
import type { TopologyStore } from '../topology/topology-store';
import { assembleDataPath } from './data-path';
import { rehearseMigratingPath } from './migrating-path-rehearsal';
import { VERSION } from './version';

export interface RunningProxy {
  /** Where the RESP endpoint listens (the real port when the config asked for 0). */
  readonly host: string;
  readonly port: number;
  /** The data path's counters (null for a primary whose workers hold them). */
  readonly stats: DataPathStats | null;
  close(): Promise<void>;
}

export function newIdentity(): ProxyIdentity {
  return { version: VERSION, nodeId: randomBytes(20).toString('hex') };
}

/**
 * One data path: listener, dispatcher and backend pools, reading snapshots from `store`. A
 * worker of several passes `peers`, the other workers.
 */
export async function startDataPath(
  config: ProxyConfig,
  store: TopologyStore,
  identity: ProxyIdentity,
  firstClientId = 1,
  peers: WorkerPeers | null = null,
): Promise<RunningProxy> {
  const stats = new DataPathStats(COMMAND_NAMES);
  if (config.metrics !== null) exportDataPath(stats);
  // Before the endpoint opens: its connections to the shards are gone before any client's come.
  await rehearseMigratingPath(config, store.current, identity);
  const { dispatcher, listener } = assembleDataPath(config, store, identity, stats, firstClientId, peers);
  const address = await listener.listen();
  return {
    host: address.host,
    port: address.port,
    stats,
    async close() {
      await listener.close();
      dispatcher.close();
    },
  };
}

/** A whole proxy in this process: control plane and one data path. */
export async function startProxy(config: ProxyConfig): Promise<RunningProxy> {
  log.setLevel(config.logLevel);
  const control = new ControlPlane(config);
  // Nothing is routed on roles the health checks have not confirmed.
  await control.start();
  const data = await startDataPath(config, control.store, newIdentity());
  const metrics = await startMetricsServer(config, control.store, false).catch(async (err: unknown) => {
    await data.close();
    await control.close();
    throw err;
  });
  log.info('listening', {
    address: formatAddress(data),
    shards: config.shards.map((s) => `${s.name}=${formatAddress(s.primary)}`),
    workers: 1,
    version: VERSION,
  });
  return {
    host: data.host,
    port: data.port,
    stats: data.stats,
    async close() {
      await metrics?.close();
      await data.close();
      await control.close();
      log.info('stopped');
    },
  };
}

/** The admin HTTP endpoint (/metrics, /healthz, /readyz, /topology) when `metrics:` is set. */
export async function startMetricsServer(config: ProxyConfig, store: TopologyStore, hasWorkers: boolean): Promise<MetricsServer | null> {
  if (config.metrics === null) return null;
  const server = await MetricsServer.start({ host: config.metrics.host, port: config.metrics.port, topology: store, hasWorkers });
  log.info('metrics listening', { address: formatAddress(server) });
  return server;
}

/** Runs `stop` once on SIGINT/SIGTERM, then exits. */
export function exitOnSignals(stop: () => Promise<void>): void {
  let isStopping = false;
  const onSignal = (): void => {
    if (isStopping) return;
    isStopping = true;
    stop().then(
      () => process.exit(0),
      (err: unknown) => {
        log.error('stop failed', { error: String(err) });
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

/** `slotproxy start --config FILE`: serve until SIGINT/SIGTERM. */
export async function runStart(config: ProxyConfig): Promise<void> {
  if (config.workers > 1) {
    const { runPrimary } = await import('./workers');
    await runPrimary(config);
    return;
  }
  const proxy = await startProxy(config);
  exitOnSignals(() => proxy.close());
}
