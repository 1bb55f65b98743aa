import type { ProxyConfig, ShardConfig } from '../config/config-types';
import type { TopologyJson } from '../topology/topology-codec';
import type { StateFileJson } from './state-file';

/**
 * The YAML says which shards there should be; the state file says which there are and who owns
 * what. When they disagree only partly (shards were added to or removed from the YAML while the
 * proxy was down, or it stopped in the middle of adding or removing one), throwing the state
 * file away would route by the YAML's slot lists while the keys sit where resharding put them.
 * Instead the state file's topology is kept and brought to the YAML's membership in a way that
 * loses nothing, and resharding then finishes the change (resharding.ts):
 *
 * - a shard only the YAML names joins the stored topology with no slots, to be rebalanced onto;
 * - a shard only the state file names that still owns slots (or is in a migration) is kept, as
 *   if the YAML still listed it, to be drained and dropped; one that owns nothing is dropped.
 *
 * With no shard name in common the state file belongs to another deployment and is left alone
 * (topology-builder.ts then starts from the YAML).
 */
export interface RuntimeMembership {
  /** The config to build the first snapshot from: the YAML's shards, plus the ones kept for draining. */
  readonly config: ProxyConfig;
  /** The state file with the YAML's new shards added (no slots) and empty departed ones dropped. */
  readonly state: StateFileJson | null;
  /** Shards the YAML added since the state file was written. */
  readonly added: readonly string[];
  /** Shards the YAML no longer lists that still own slots: to drain, then drop. */
  readonly removed: readonly string[];
}

export function withRuntimeMembership(config: ProxyConfig, state: StateFileJson | null): RuntimeMembership {
  const unchanged: RuntimeMembership = { config, state, added: [], removed: [] };
  if (state === null) return unchanged;
  const stored = state.topology;
  const storedNames = new Set(stored.shards.map((s) => s.name));
  const configNames = new Set(config.shards.map((s) => s.name));
  const common = [...configNames].filter((name) => storedNames.has(name));
  if (common.length === 0) return unchanged;
  const addedShards = config.shards.filter((s) => !storedNames.has(s.name));
  const departed = stored.shards.filter((s) => !configNames.has(s.name));
  if (addedShards.length === 0 && departed.length === 0) return unchanged;

  const inMigration = new Set(stored.migrations.flatMap((m) => [m.from, m.to]));
  const kept = departed.filter((s) => (stored.slots[s.index]?.length ?? 0) > 0 || inMigration.has(s.index));
  const dropped = new Set(departed.filter((s) => !kept.includes(s)).map((s) => s.index));

  // Drop the empty departed shards, renumbering the rest.
  const newIndex = new Map<number, number>();
  const shards = stored.shards.filter((s) => !dropped.has(s.index)).map((s, i) => {
    newIndex.set(s.index, i);
    return { ...s, index: i };
  });
  const slots = stored.slots.filter((_, i) => !dropped.has(i));
  for (const shard of addedShards) {
    shards.push({ index: shards.length, name: shard.name, primary: shard.primary, replicas: shard.replicas, readReplicas: shard.replicas, isFailingOver: false });
    slots.push([]);
  }
  const topology: TopologyJson = {
    ...stored,
    shards,
    slots,
    migrations: stored.migrations.map((m) => ({ ...m, from: newIndex.get(m.from)!, to: newIndex.get(m.to)! })),
  };
  const keptConfig: ShardConfig[] = kept.map((s) => ({ name: s.name, primary: s.primary, replicas: s.replicas, slots: [] }));
  return {
    config: { ...config, shards: [...config.shards, ...keptConfig] },
    state: { ...state, topology },
    added: addedShards.map((s) => s.name),
    removed: kept.map((s) => s.name),
  };
}
