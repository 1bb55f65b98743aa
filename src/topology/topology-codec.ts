import { SLOT_COUNT, Topology, type ShardInfo, type SlotMigration } from './topology';

/** A topology as plain JSON: what goes to worker processes and into the state file. */
export interface TopologyJson {
  readonly epoch: number;
  readonly shards: readonly ShardInfo[];
  /** Inclusive slot ranges per shard, in shard order. */
  readonly slots: readonly (readonly (readonly [number, number])[])[];
  readonly migrations: readonly MigrationJson[];
}

/** One migrating slot; locked keys (big keys being copied) as base64 of their bytes. */
export interface MigrationJson {
  readonly slot: number;
  readonly from: number;
  readonly to: number;
  readonly lockedKeys?: readonly string[];
  readonly movesFrom?: number;
}

export function topologyToJson(topology: Topology): TopologyJson {
  return {
    epoch: topology.epoch,
    shards: topology.shards,
    slots: topology.slotRanges(),
    migrations: [...topology.migrations].map(([slot, m]) => migrationToJson(slot, m)),
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
  const migrations = new Map(json.migrations.map((m) => [m.slot, migrationFromJson(m)]));
  return new Topology(json.epoch, json.shards, slotOwner, migrations);
}

function migrationToJson(slot: number, m: SlotMigration): MigrationJson {
  return {
    slot,
    from: m.from,
    to: m.to,
    ...(m.lockedKeys === undefined || m.lockedKeys.size === 0 ? {} : { lockedKeys: [...m.lockedKeys].map((key) => Buffer.from(key, 'latin1').toString('base64')) }),
    ...(m.movesFrom === undefined ? {} : { movesFrom: m.movesFrom }),
  };
}

function migrationFromJson(m: MigrationJson): SlotMigration {
  return {
    from: m.from,
    to: m.to,
    ...(m.lockedKeys === undefined || m.lockedKeys.length === 0 ? {} : { lockedKeys: new Set(m.lockedKeys.map((key) => Buffer.from(key, 'base64').toString('latin1'))) }),
    ...(m.movesFrom === undefined ? {} : { movesFrom: m.movesFrom }),
  };
}
