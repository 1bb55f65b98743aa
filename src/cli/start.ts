import { randomBytes } from 'node:crypto';
import { BackendPools } from '../backend/shard-pool';
import { Listener } from '../client/listener';
import type { ProxyConfig } from '../config/config-types';
import { formatAddress } from '../config/address';
import { topologyFromConfig } from '../control/topology-builder';
import { Dispatcher } from '../dispatch/dispatcher';
import { log } from '../log/logger';
import { TopologyStore } from '../topology/topology-store';
import { VERSION } from './version';

export interface RunningProxy {
  /** Where the RESP endpoint listens (the real port when the config asked for 0). */
  readonly host: string;
  readonly port: number;
  close(): Promise<void>;
}

/** Builds the pieces from a validated config and starts serving. */
export async function startProxy(config: ProxyConfig): Promise<RunningProxy> {
  log.setLevel(config.logLevel);
  const store = new TopologyStore(topologyFromConfig(config));
  const pools = new BackendPools({
    connectionsPerNode: config.connectionsPerNode,
    connectTimeoutMs: config.connectTimeoutMs,
    password: config.backendPassword,
  });
  const dispatcher = new Dispatcher(store, pools, { version: VERSION, nodeId: randomBytes(20).toString('hex') });
  const listener = new Listener(dispatcher, { host: config.listen.host, port: config.listen.port });
  const address = await listener.listen();
  log.info('listening', {
    address: formatAddress(address),
    shards: config.shards.map((s) => `${s.name}=${formatAddress(s.primary)}`),
    version: VERSION,
  });
  return {
    host: address.host,
    port: address.port,
    async close() {
      await listener.close();
      dispatcher.close();
      log.info('stopped');
    },
  };
}

/** `slotproxy start --config FILE`: serve until SIGINT/SIGTERM. */
export async function runStart(config: ProxyConfig): Promise<void> {
  const proxy = await startProxy(config);
  let isStopping = false;
  const stop = (): void => {
    if (isStopping) return;
    isStopping = true;
    proxy.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}
