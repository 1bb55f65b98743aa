import { BackendPools } from '../backend/shard-pool';
import { Listener } from '../client/listener';
import type { ProxyConfig } from '../config/config-types';
import { Dispatcher } from '../dispatch/dispatcher';
import type { ProxyIdentity } from '../dispatch/local-commands';
import type { WorkerPeers } from '../dispatch/worker-peers';
import type { DataPathStats } from '../metrics/data-path-stats';
import type { TopologyStore } from '../topology/topology-store';

/** A data path's parts, its endpoint not open yet (`listener.listen()`). */
export interface DataPathParts {
  readonly dispatcher: Dispatcher;
  readonly listener: Listener;
}

/**
 * Backend pools, dispatcher and listener over `store`, as `config` sets them: the one place a
 * data path is put together, for the proxy's own and for its rehearsal at start
 * (migrating-path-rehearsal.ts), so both take every backend setting alike.
 */
export function assembleDataPath(
  config: ProxyConfig,
  store: TopologyStore,
  identity: ProxyIdentity,
  stats: DataPathStats,
  firstClientId = 1,
  peers: WorkerPeers | null = null,
): DataPathParts {
  const pools = new BackendPools({
    stats,
    connectionsPerNode: config.connectionsPerNode,
    connectTimeoutMs: config.connectTimeoutMs,
    password: config.backendPassword,
    minReplicaAcks: config.minReplicaAcks,
    replicaAckTimeoutMs: config.replicaAckTimeoutMs,
    commandTimeoutMs: config.commandTimeoutMs,
  });
  const dispatcher = new Dispatcher(store, pools, identity, config, stats, peers);
  const listener = new Listener(dispatcher, { host: config.listen.host, port: config.listen.port, firstClientId }, stats);
  return { dispatcher, listener };
}
