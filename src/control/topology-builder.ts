import type { ProxyConfig, ShardConfig } from '../config/config-types';
import { nodeKey, sameNode, SLOT_COUNT, Topology, type NodeAddress, type ShardInfo, type SlotMigration } from '../topology/topology';
import type { StateFileJson } from './state-file';

/** The first snapshot, straight from the YAML topology. */
export function topologyFromConfig(config: ProxyConfig, epoch = 1): Topology {
  const slotOwner = new Uint16Array(SLOT_COUNT);
  const shards: ShardInfo[] = config.shards.map((shard, index) => {
    for (const [from, to] of shard.slots) slotOwner.fill(index, from, to + 1);
    return { index, name: shard.name, primary: shard.primary, replicas: shard.replicas, readReplicas: shard.replicas, isFailingOver: false };
  });
  return new Topology(epoch, shards, slotOwner);
}

/** Where the first snapshot came from, and why. */
export interface InitialTopology {
  readonly topology: Topology;
  readonly source: 'config' | 'state-file';
  /** Why the state file was not used, or what of it was adjusted to the YAML; for the log. */
  readonly notes: readonly string[];
}

/**
 * The first snapshot of a proxy that has a state file. The state file records what the control
 * plane did at run time (promotions, demotions, slot moves), so when it names the same shards
 * as the YAML it wins for roles, slot ownership and migrations: a restarted proxy routes to the
 * promoted primary. The YAML stays the authority on membership: a node the YAML no longer lists
 * is dropped, and a node it adds joins as a replica. A state file for other shard names (the
 * YAML describes another deployment now) is ignored.
 */
export function initialTopology(config: ProxyConfig, state: StateFileJson | null): InitialTopology {
  if (state === null) return { topology: topologyFromConfig(config), source: 'config', notes: [] };
  const stored = state.topology.shards;
  const configNames = config.shards.map((s) => s.name).sort();
  const storedNames = stored.map((s) => s.name).sort();
  if (configNames.join('\n') !== storedNames.join('\n')) {
    return {
      topology: topologyFromConfig(config),
      source: 'config',
      notes: [`the state file names shards [${storedNames.join(', ')}], the YAML [${configNames.join(', ')}]; using the YAML`],
    };
  }

  const notes: string[] = [];
  const byName = new Map(stored.map((s) => [s.name, s]));
  const slotOwner = new Uint16Array(SLOT_COUNT);
  /** Stored shard index -> index in the YAML's order. */
  const indexOf = new Map<number, number>();
  const shards = config.shards.map((shard, index): ShardInfo => {
    const saved = byName.get(shard.name)!;
    indexOf.set(saved.index, index);
    return mergeShard(shard, saved, index, notes);
  });
  state.topology.slots.forEach((ranges, storedIndex) => {
    const index = indexOf.get(storedIndex)!;
    for (const [from, to] of ranges) slotOwner.fill(index, from, to + 1);
  });
  const migrations = new Map<number, SlotMigration>(
    state.topology.migrations.map((m) => [m.slot, { from: indexOf.get(m.from)!, to: indexOf.get(m.to)! }]),
  );
  return { topology: new Topology(state.topology.epoch, shards, slotOwner, migrations), source: 'state-file', notes };
}

/** One shard: roles from the state file, membership from the YAML. */
function mergeShard(shard: ShardConfig, saved: ShardInfo, index: number, notes: string[]): ShardInfo {
  const members = [shard.primary, ...shard.replicas];
  const isMember = (node: NodeAddress): boolean => members.some((m) => sameNode(m, node));
  let primary = saved.primary;
  if (!isMember(primary)) {
    notes.push(`shard ${shard.name}: stored primary ${nodeKey(primary)} is not in the YAML; using ${nodeKey(shard.primary)}`);
    primary = shard.primary;
  }
  const replicas: NodeAddress[] = [];
  for (const node of [...saved.replicas, saved.primary, ...members]) {
    if (sameNode(node, primary) || !isMember(node) || replicas.some((r) => sameNode(r, node))) continue;
    replicas.push(node);
  }
  for (const node of [saved.primary, ...saved.replicas]) {
    if (!isMember(node) && !sameNode(node, saved.primary)) notes.push(`shard ${shard.name}: node ${nodeKey(node)} is no longer in the YAML; dropped`);
  }
  for (const node of members) {
    if (!sameNode(node, saved.primary) && !saved.replicas.some((r) => sameNode(r, node))) {
      notes.push(`shard ${shard.name}: node ${nodeKey(node)} is new in the YAML; added as a replica`);
    }
  }
  // Readable replicas are confirmed by the first health check round before the proxy serves.
  const readReplicas = saved.readReplicas.filter((r) => replicas.some((m) => sameNode(m, r)));
  return { index, name: shard.name, primary, replicas, readReplicas, isFailingOver: false };
}
