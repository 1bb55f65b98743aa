import cluster, { type Worker } from 'node:cluster';
import { formatAddress } from '../config/address';
import type { ProxyConfig } from '../config/config-types';
import { ControlPlane } from '../control/control-plane';
import type { ProxyIdentity } from '../dispatch/local-commands';
import { log } from '../log/logger';
import { topologyFromJson, topologyToJson, type TopologyJson } from '../topology/topology-codec';
import { TopologyStore } from '../topology/topology-store';
import { enableProcessMetrics } from '../metrics/metrics';
import { exitOnSignals, newIdentity, startDataPath, startMetricsServer, type RunningProxy } from './start';
import { VERSION } from './version';
import { IpcWorkerPeers, PeerRelay } from './worker-peers';

/**
 * Client ids of the n-th worker process forked start at 1 + n * ID_SPAN, so CLIENT ID stays
 * unique per proxy: a worker forked again after a crash gets a range of its own (with its old
 * one, a CLIENT KILL ID of a client gone with the crash closed a new client that had its id).
 */
const ID_SPAN = 1e12;

type ToWorker =
  | { readonly type: 'start'; readonly config: ProxyConfig; readonly identity: ProxyIdentity; readonly index: number; readonly firstClientId: number; readonly topology: TopologyJson }
  | { readonly type: 'topology'; readonly topology: TopologyJson };

type FromWorker = { readonly type: 'listening'; readonly host: string; readonly port: number } | { readonly type: 'failed'; readonly error: string };

/**
 * `workers: N`: N processes share the listening port (node:cluster hands accepted sockets to
 * them), each a full data path. The control plane runs here, once, and every snapshot it
 * publishes is sent to every worker.
 */
export async function runPrimary(config: ProxyConfig): Promise<void> {
  log.setLevel(config.logLevel);
  const control = new ControlPlane(config);
  await control.start();
  const identity = newIdentity();
  const workers = new Map<Worker, number>();
  const relay = new PeerRelay(workers);
  let isStopping = false;
  let forks = 0;

  const fork = (index: number): Promise<void> =>
    new Promise((resolve, reject) => {
      const worker = cluster.fork({ SLOTPROXY_WORKER: String(index) });
      const firstClientId = 1 + forks++ * ID_SPAN;
      workers.set(worker, index);
      // A send to a worker that has just died fails with EPIPE, reported here: without a listener
      // it would end this process, the whole proxy (its exit is handled below).
      worker.on('error', (err) => log.warn('message to a worker not delivered', { worker: index, error: err.message }));
      worker.on('message', (message: FromWorker) => {
        if (relay.onMessage(worker, message)) return;
        if (message.type === 'listening') {
          relay.onReady(worker);
          resolve();
        } else if (message.type === 'failed') {
          reject(new Error(`worker ${index}: ${message.error}`));
        }
      });
      worker.on('online', () => {
        const start: ToWorker = { type: 'start', config, identity, index, firstClientId, topology: topologyToJson(control.store.current) };
        worker.send(start);
      });
      worker.on('exit', (code, signal) => {
        workers.delete(worker);
        relay.onExit(index);
        if (isStopping) return;
        log.error('worker exited', { worker: index, code, signal });
        void fork(index).catch((err: unknown) => log.error('worker restart failed', { worker: index, error: String(err) }));
      });
    });

  control.store.on('change', (next) => {
    const message: ToWorker = { type: 'topology', topology: topologyToJson(next) };
    for (const worker of workers.keys()) worker.send(message);
  });

  await Promise.all(Array.from({ length: config.workers }, (_, i) => fork(i)));
  if (config.metrics !== null) enableProcessMetrics();
  const metrics = await startMetricsServer(config, control.store, true);
  log.info('listening', {
    address: formatAddress(config.listen),
    shards: config.shards.map((s) => `${s.name}=${formatAddress(s.primary)}`),
    workers: config.workers,
    version: VERSION,
  });

  exitOnSignals(async () => {
    isStopping = true;
    await metrics?.close();
    const exits = [...workers.keys()].map((worker) => new Promise<void>((resolve) => {
      worker.once('exit', () => resolve());
      worker.process.kill('SIGTERM');
    }));
    await Promise.all(exits);
    relay.close();
    await control.close();
    log.info('stopped');
  });
}

/** A worker: waits for its config and first snapshot, then serves; follows later snapshots. */
export function runWorker(): void {
  let store: TopologyStore | null = null;
  let proxy: RunningProxy | null = null;
  const peers = new IpcWorkerPeers();
  process.on('message', (message: ToWorker) => {
    if (message.type === 'start') {
      log.setLevel(message.config.logLevel);
      store = new TopologyStore(topologyFromJson(message.topology));
      startDataPath(message.config, store, message.identity, message.firstClientId, peers).then(
        (running) => {
          proxy = running;
          process.send?.({ type: 'listening', host: running.host, port: running.port } satisfies FromWorker);
        },
        (err: unknown) => {
          process.send?.({ type: 'failed', error: String(err) } satisfies FromWorker);
          process.exit(1);
        },
      );
    } else if (message.type === 'topology' && store !== null) {
      const next = topologyFromJson(message.topology);
      if (next.epoch > store.current.epoch) store.publish(next);
    }
  });
  // The primary stops workers with SIGTERM; close the clients before exiting.
  exitOnSignals(async () => {
    await proxy?.close();
  });
  process.on('disconnect', () => process.exit(0));
}
