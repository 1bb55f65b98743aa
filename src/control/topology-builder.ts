import type { ProxyConfig } from '../config/config-types';
import { SLOT_COUNT, Topology, type ShardInfo } from '../topology/topology';

/** The first snapshot, straight from the YAML topology. */
export function topologyFromConfig(config: ProxyConfig, epoch = 1): Topology {
  const slotOwner = new Uint16Array(SLOT_COUNT);
  const shards: ShardInfo[] = config.shards.map((shard, index) => {
    for (const [from, to] of shard.slots) slotOwner.fill(index, from, to + 1);
    return { index, name: shard.name, primary: shard.primary, replicas: shard.replicas, readReplicas: shard.replicas, isFailingOver: false };
  });
  return new Topology(epoch, shards, slotOwner);
}
