import { describe, expect, it } from 'vitest';
import type { PubSubSession } from '../../src/dispatch/pubsub-session';
import { PubSubSessions } from '../../src/dispatch/pubsub-sessions';
import { SLOT_COUNT, Topology, type ShardInfo, type SlotMigration } from '../../src/topology/topology';

/**
 * Which sessions a new snapshot is shown to: a plan publishes one per group of slots, and a
 * session is told only of the moved slots it has channels in; a change of the shards themselves
 * (one added or removed, a primary replaced) is shown to every session.
 */

function shard(index: number, port = 7000 + index, name = `s${index}`): ShardInfo {
  return { index, name, primary: { host: '127.0.0.1', port }, replicas: [], readReplicas: [], isFailingOver: false };
}

function topology(shards: readonly ShardInfo[], owner: (slot: number) => number, migrations: ReadonlyMap<number, SlotMigration> = new Map()): Topology {
  return new Topology(1, shards, Uint16Array.from({ length: SLOT_COUNT }, (_, slot) => owner(slot)), migrations);
}

/** A session that records what it is told. */
function recorder(): { session: PubSubSession; told: (readonly number[] | null)[] } {
  const told: (readonly number[] | null)[] = [];
  const session = { onTopology: (_t: Topology, _names: readonly string[], moved: readonly number[] | null) => told.push(moved === null ? null : [...moved]) };
  return { session: session as unknown as PubSubSession, told };
}

const THREE = [shard(0), shard(1), shard(2)];
const even = (slot: number): number => Math.floor((slot * 3) / SLOT_COUNT);

describe('PubSubSessions', () => {
  it('tells a session only of the moved slots it has channels in, migrations included', () => {
    const sessions = new PubSubSessions();
    const first = topology(THREE, even);
    const a = recorder();
    const b = recorder();
    sessions.add(a.session, first);
    sessions.add(b.session, first);
    sessions.watch(a.session, 10);
    sessions.watch(a.session, 20);
    sessions.watch(b.session, 9000);

    // Slots 10 and 11 start migrating to s2: a (slot 10) is told, b is not.
    sessions.onTopology(topology(THREE, even, new Map([[10, { from: 0, to: 2 }], [11, { from: 0, to: 2 }]])));
    expect(a.told).toEqual([[10]]);
    expect(b.told).toEqual([]);

    // They become stable on s2 (their home stays s2): nobody is told; then 20 and 9000 move.
    sessions.onTopology(topology(THREE, (slot) => (slot === 10 || slot === 11 ? 2 : even(slot))));
    expect(a.told).toEqual([[10]]);
    sessions.onTopology(topology(THREE, (slot) => (slot === 10 || slot === 11 || slot === 20 ? 2 : slot === 9000 ? 0 : even(slot))));
    expect(a.told).toEqual([[10], [20]]);
    expect(b.told).toEqual([[9000]]);

    // A slot given up is not watched any more.
    sessions.unwatch(a.session, 20);
    sessions.onTopology(topology(THREE, even));
    expect(a.told).toEqual([[10], [20], [10]]);
  });

  it('tells every session when the shards change: one added, a primary replaced, one removed', () => {
    const sessions = new PubSubSessions();
    const a = recorder();
    const b = recorder();
    sessions.add(a.session, topology(THREE, even));
    sessions.add(b.session, topology(THREE, even));
    sessions.watch(a.session, 1);

    const four = [...THREE, shard(3)];
    sessions.onTopology(topology(four, even));
    expect([a.told, b.told]).toEqual([[null], [null]]);

    const failedOver = [shard(0), shard(1, 7101), shard(2), shard(3)];
    sessions.onTopology(topology(failedOver, even));
    expect([a.told, b.told]).toEqual([[null, null], [null, null]]);

    sessions.onTopology(topology([shard(0, 7000, 's1'), shard(1, 7101, 's2'), shard(2, 7002, 's3')], even));
    expect([a.told, b.told]).toEqual([[null, null, null], [null, null, null]]);
  });

  it('starts from the snapshot of its first session again once every session has gone', () => {
    const sessions = new PubSubSessions();
    const a = recorder();
    sessions.add(a.session, topology(THREE, even));
    sessions.watch(a.session, 5);
    sessions.unwatch(a.session, 5);
    sessions.delete(a.session);
    // No session: the snapshots in between are not compared with anything.
    sessions.onTopology(topology(THREE, () => 1));
    const b = recorder();
    const now = topology(THREE, () => 1);
    sessions.add(b.session, now);
    sessions.watch(b.session, 5);
    sessions.onTopology(topology(THREE, () => 1));
    expect(b.told).toEqual([]);
    sessions.onTopology(topology(THREE, (slot) => (slot === 5 ? 2 : 1)));
    expect(b.told).toEqual([[5]]);
    expect(a.told).toEqual([]);
  });
});
