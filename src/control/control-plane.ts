import type { ProxyConfig } from '../config/config-types';
import { TopologyStore } from '../topology/topology-store';
import { topologyFromConfig } from './topology-builder';

/**
 * Everything off the hot path, run once per proxy (in the primary process when there are
 * workers): it owns the topology store and publishes new snapshots into it.
 */
export class ControlPlane {
  readonly store: TopologyStore;

  constructor(config: ProxyConfig) {
    this.store = new TopologyStore(topologyFromConfig(config));
  }

  close(): void {}
}
