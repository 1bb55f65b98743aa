import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load-config';
import { SlotMigrator } from '../../src/control/slot-migrator';
import { topologyFromConfig } from '../../src/control/topology-builder';
import { topologyFromJson, topologyToJson } from '../../src/topology/topology-codec';
import type { Topology } from '../../src/topology/topology';
import { TopologyStore } from '../../src/topology/topology-store';

/**
 * With several connections per node or several workers, a command routed to a slot's source
 * before the slot began migrating can reach it on another connection than the data path's key
 * moves: the snapshot that begins a slot says when its keys may move (`movesFrom`, the settle
 * time after the publish), and the locks of big keys keep it.
 */

const SETTLE_MS = 100;

function migratorOn(onDemandSettle: boolean): { migrator: SlotMigrator; store: TopologyStore; persisted: Topology[] } {
  const yaml = ['listen: 127.0.0.1:7000', 'shards:', '  - name: s1', '    primary: 127.0.0.1:7001', '  - name: s2', '    primary: 127.0.0.1:7002'].join('\n');
  const store = new TopologyStore(topologyFromConfig(loadConfig(yaml, 'settle.yaml', '.')));
  const persisted: Topology[] = [];
  const migrator = new SlotMigrator(
    store,
    async (topology) => {
      persisted.push(topology);
    },
    { setBigKeys: async () => undefined, setNotifyFlags: async () => undefined },
    { migrateTimeoutMs: 1_000, password: null, settleMs: SETTLE_MS, onDemandSettle },
  );
  return { migrator, store, persisted };
}

describe('the snapshot that begins a slot', () => {
  it('says when its keys may move, the settle time after the publish, when commands can take other connections', async () => {
    const { migrator, store, persisted } = migratorOn(true);
    const before = Date.now();
    await migrator.call({ method: 'change', source: 's1', done: [], begun: [{ slot: 5, to: 's2' }, { slot: 6, to: 's2' }] });
    const after = Date.now();
    const migration = store.current.migrations.get(5)!;
    expect(migration).toMatchObject({ from: 0, to: 1 });
    expect(migration.movesFrom).toBeGreaterThanOrEqual(before + SETTLE_MS);
    expect(migration.movesFrom).toBeLessThanOrEqual(after + SETTLE_MS);
    expect(store.current.migrations.get(6)!.movesFrom).toBe(migration.movesFrom);
    // Written to the state file before the publish, which then sets the time.
    expect(persisted).toHaveLength(1);
    // Workers get it with the snapshot.
    expect(topologyFromJson(topologyToJson(store.current)).migrations.get(5)!.movesFrom).toBe(migration.movesFrom);

    // A big key's lock keeps it; a slot begun later gets its own.
    await migrator.call({ method: 'setLock', slot: 5, key: 'big', isLocked: true });
    expect(store.current.migrations.get(5)).toMatchObject({ movesFrom: migration.movesFrom });
    expect([...store.current.migrations.get(5)!.lockedKeys!]).toEqual(['big']);
    await migrator.call({ method: 'setLock', slot: 5, key: 'big', isLocked: false });
    expect(store.current.migrations.get(5)).toEqual({ from: 0, to: 1, movesFrom: migration.movesFrom });
    await new Promise((resolve) => setTimeout(resolve, 5));
    await migrator.call({ method: 'change', source: 's1', done: [{ slot: 6, to: 's2' }], begun: [{ slot: 7, to: 's2' }] });
    expect(store.current.migrations.get(7)!.movesFrom).toBeGreaterThan(migration.movesFrom!);
    expect(store.current.migrations.get(5)!.movesFrom).toBe(migration.movesFrom);
    expect(store.current.migrations.has(6)).toBe(false);
  });

  it('says nothing of it with one connection per node in one process (every key move queues behind those commands)', async () => {
    const { migrator, store } = migratorOn(false);
    await migrator.call({ method: 'change', source: 's1', done: [], begun: [{ slot: 5, to: 's2' }] });
    expect(store.current.migrations.get(5)).toEqual({ from: 0, to: 1 });
  });
});
