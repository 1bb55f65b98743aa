import { describe, expect, it } from 'vitest';
import { evenSlotRanges } from '../../src/config/load-config';
import { movesOf, workOutPlan, type StoredPlan } from '../../src/control/plan-view';
import { PlanError, planRebalance, slotMapOf } from '../../src/control/rebalance-planner';
import { Topology, type ShardInfo, type SlotMigration } from '../../src/topology/topology';

function shard(index: number): ShardInfo {
  return { index, name: `s${index + 1}`, primary: { host: '127.0.0.1', port: 7001 + index }, replicas: [], readReplicas: [], isFailingOver: false };
}

/** `n` shards splitting the slots evenly, with `migrations` under way. */
function topologyOf(n: number, migrations: ReadonlyMap<number, SlotMigration> = new Map()): Topology {
  const owner = new Uint16Array(16384);
  evenSlotRanges(n).forEach((ranges, i) => {
    for (const [from, to] of ranges) owner.fill(i, from, to + 1);
  });
  return new Topology(1, Array.from({ length: n }, (_, i) => shard(i)), owner, migrations);
}

function plan(fields: Partial<StoredPlan>): StoredPlan {
  return {
    format: 'slotproxy-reshard',
    version: 1,
    id: 'p1',
    op: 'rebalance',
    trigger: 'admin',
    createdAt: '2026-11-26T00:00:00.000Z',
    addShards: [],
    removeShards: [],
    weights: {},
    reshard: null,
    bigKeys: [],
    ...fields,
  };
}

const s4 = { name: 's4', primary: { host: '127.0.0.1', port: 7004 }, replicas: [{ host: '127.0.0.1', port: 7005 }] };

describe('workOutPlan', () => {
  it('adds a shard: the moves planRebalance makes with the new shard counted, and their view', () => {
    const topology = topologyOf(3);
    const { plan: stored, view } = workOutPlan(topology, { plan: plan({ op: 'add-shard', addShards: [s4] }) });
    const expected = planRebalance({ names: ['s1', 's2', 's3', 's4'], owner: slotMapOf(topology).owner });
    expect(stored.reshard).toBeNull();
    expect(view.slotsToMove).toBe(expected.length);
    expect(new Set(movesOf(view.moves).map((m) => `${m.slot} ${m.from} ${m.to}`))).toEqual(new Set(expected.map((m) => `${m.slot} ${m.from} ${m.to}`)));
    expect(view.countsBefore).toEqual({ s1: 5461, s2: 5462, s3: 5461, s4: 0 });
    expect(view.countsAfter).toEqual({ s1: 4096, s2: 4096, s3: 4096, s4: 4096 });
    expect(view.addShards).toEqual([{ name: 's4', primary: '127.0.0.1:7004', replicas: ['127.0.0.1:7005'] }]);
  });

  it('chooses a new reshard\'s slots (the giver\'s highest) and stores them as ranges', () => {
    const job = { plan: plan({ op: 'reshard', weights: null, reshard: { from: 's1', to: 's3', slots: [] } }), reshardCount: 100 };
    const { plan: stored, view } = workOutPlan(topologyOf(3), job);
    expect(stored.reshard).toEqual({ from: 's1', to: 's3', slots: [[5361, 5460]] });
    expect(view.moves).toEqual([{ from: 's1', to: 's3', count: 100, ranges: [[5361, 5460]] }]);
    expect(view.countsAfter).toEqual({ s1: 5361, s2: 5462, s3: 5561 });
    // Stored, the plan is worked out from its slots alone (a resumed reshard).
    expect(workOutPlan(topologyOf(3), { plan: stored }).view.moves).toEqual(view.moves);
  });

  it('finishes slots left migrating, counted as their source\'s before', () => {
    const topology = topologyOf(3, new Map([[0, { from: 0, to: 1 }], [16383, { from: 2, to: 0 }]]));
    const { view } = workOutPlan(topology, { plan: plan({ op: 'resume', weights: null }) });
    expect(movesOf(view.moves)).toEqual([
      { slot: 0, from: 's1', to: 's2' },
      { slot: 16383, from: 's3', to: 's1' },
    ]);
    expect(view.countsBefore).toEqual({ s1: 5461, s2: 5462, s3: 5461 });
    expect(view.countsAfter).toEqual({ s1: 5461, s2: 5463, s3: 5460 });
  });

  it('drains a shard being removed', () => {
    const { view } = workOutPlan(topologyOf(3), { plan: plan({ op: 'remove-shard', removeShards: ['s2'] }) });
    expect(view.slotsToMove).toBe(5462);
    expect(view.countsAfter).toEqual({ s1: 8192, s2: 0, s3: 8192 });
    expect(movesOf(view.moves).every((m) => m.from === 's2')).toBe(true);
  });

  it.each([
    ['an unknown weight', { weights: { s9: 1 } }, undefined, 'no shard named s9'],
    ['a reshard of more slots than the giver owns', { op: 'reshard' as const, weights: null, reshard: { from: 's1', to: 's2', slots: [] } }, 6000, 's1 owns 5461 slots'],
    ['a reshard to itself', { op: 'reshard' as const, weights: null, reshard: { from: 's1', to: 's1', slots: [] } }, 1, 'the same shard'],
  ])('refuses %s with a PlanError', (_, fields, reshardCount, message) => {
    const job = reshardCount === undefined ? { plan: plan(fields) } : { plan: plan(fields), reshardCount };
    expect(() => workOutPlan(topologyOf(3), job)).toThrow(PlanError);
    expect(() => workOutPlan(topologyOf(3), job)).toThrow(message);
  });
});
