import { SLOT_COUNT, Topology, type ShardInfo, type SlotMigration } from './topology';

/** A topology as plain JSON: what goes to worker processes and into the state file. */
export interface TopologyJson {
  readonly epoch: number;
  readonly shards: readonly ShardInfo[];
  /** Inclusive slot ranges per shard, in shard order. */
  readonly slots: readonly (readonly (readonly [number, number])[])[];
  readonly migrations: readonly (SlotMigration & { readonly slot: number })[];
}

export function topologyToJson(topology: Topology): TopologyJson {
  return {
    epoch: topology.epoch,
    shards: topology.shards,
    slots: topology.slotRanges(),
    migrations: [...topology.migrations].map(([slot, m]) => ({ slot, from: m.from, to: m.to })),
  };
}

export function topologyFromJson(json: TopologyJson): Topology {
  const slotOwner = new Uint16Array(SLOT_COUNT);
  const owned = new Uint8Array(SLOT_COUNT);
  json.slots.forEach((ranges, shard) => {
    for (const [from, to] of ranges) {
      slotOwner.fill(shard, from, to + 1);
      owned.fill(1, from, to + 1);
    }
  });
  const missing = owned.indexOf(0);
  if (missing >= 0) throw new RangeError(`slot ${missing} has no owner`);
  const migrations = new Map(json.migrations.map((m) => [m.slot, { from: m.from, to: m.to }]));
  return new Topology(json.epoch, json.shards, slotOwner, migrations);
}
