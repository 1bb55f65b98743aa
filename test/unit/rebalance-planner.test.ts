import { describe, expect, it } from 'vitest';
import { evenSlotRanges } from '../../src/config/load-config';
import {
  countsAfter,
  fromRanges,
  groupMoves,
  planRebalance,
  planReshard,
  PlanError,
  slotCounts,
  targetCounts,
  toRanges,
  type SlotMap,
} from '../../src/control/rebalance-planner';

/** The even split redis-cli makes for `n` shards, plus `extra` empty shards after them. */
function evenMap(n: number, extra = 0): SlotMap {
  const owner = new Uint16Array(16384);
  evenSlotRanges(n).forEach((ranges, i) => {
    for (const [from, to] of ranges) owner.fill(i, from, to + 1);
  });
  return { names: Array.from({ length: n + extra }, (_, i) => `s${i + 1}`), owner };
}

/** The slot map once the moves are done. */
function apply(map: SlotMap, moves: readonly { slot: number; from: string; to: string }[]): SlotMap {
  const owner = Uint16Array.from(map.owner);
  for (const move of moves) {
    expect(map.names[owner[move.slot]!]).toBe(move.from);
    owner[move.slot] = map.names.indexOf(move.to);
  }
  return { names: map.names, owner };
}

describe('targetCounts', () => {
  it.each([
    [[1, 1, 1], [5461, 5461, 5462]],
    [[1, 1, 1, 1], [4096, 4096, 4096, 4096]],
    [[2, 1, 1], [8192, 4096, 4096]],
    [[1, 0, 1], [8192, 0, 8192]],
  ])('splits 16384 slots by weights %j', (weights, expected) => {
    const counts = targetCounts(weights, [0, 0, 16384, 0].slice(0, weights.length));
    expect(counts.reduce((a, b) => a + b, 0)).toBe(16384);
    expect([...counts].sort((a, b) => a - b)).toEqual([...expected].sort((a, b) => a - b));
  });

  it('gives the leftover slot to the shard that owns more now (fewer moves)', () => {
    expect(targetCounts([1, 1, 1], [5461, 5462, 5461])).toEqual([5461, 5462, 5461]);
  });

  it('refuses weights that give no shard a slot', () => {
    expect(() => targetCounts([0, 0], [1, 1])).toThrow(PlanError);
  });
});

describe('planRebalance', () => {
  it('adding a 4th shard moves a quarter of the slots, about a third from each, and leaves counts within 1', () => {
    const map = evenMap(3, 1);
    const moves = planRebalance(map);
    expect(moves).toHaveLength(4096);
    expect(new Set(moves.map((m) => m.to))).toEqual(new Set(['s4']));
    const after = slotCounts(apply(map, moves));
    expect(after).toEqual([4096, 4096, 4096, 4096]);
    const groups = groupMoves(moves);
    expect(groups.map((g) => [g.from, g.count])).toEqual([
      ['s1', 1365],
      ['s2', 1366],
      ['s3', 1365],
    ]);
    // Each giver hands over its highest slots: its remaining range stays contiguous.
    expect(groups.every((g) => g.ranges.length === 1)).toBe(true);
    const kept: number[] = [];
    apply(map, moves).owner.forEach((owner, slot) => owner === 0 && kept.push(slot));
    expect(toRanges(kept)).toEqual([[0, 4095]]);
  });

  it('draining a shard spreads its slots over the others evenly', () => {
    const map = evenMap(4);
    const moves = planRebalance(map, {}, ['s2']);
    expect(moves).toHaveLength(4096);
    expect(moves.every((m) => m.from === 's2')).toBe(true);
    const after = slotCounts(apply(map, moves));
    expect(after[1]).toBe(0);
    const others = [after[0]!, after[2]!, after[3]!];
    expect(Math.max(...others) - Math.min(...others)).toBeLessThanOrEqual(1);
  });

  it('honours weights and does nothing when already balanced', () => {
    const map = evenMap(4);
    expect(planRebalance(map)).toEqual([]);
    const weighted = planRebalance(map, { s1: 2 });
    // 16384 * 2/5 = 6553.6 and 3276.8 each: the three slots left go to the largest remainders.
    expect(slotCounts(apply(map, weighted))).toEqual([6553, 3277, 3277, 3277]);
    expect(countsAfter(map, weighted)['s1']).toBe(slotCounts(apply(map, weighted))[0]);
  });

  it('rejects unknown shards and negative weights', () => {
    const map = evenMap(3);
    expect(() => planRebalance(map, { nope: 1 })).toThrow(PlanError);
    expect(() => planRebalance(map, { s1: -1 })).toThrow(PlanError);
    expect(() => planRebalance(map, {}, ['nope'])).toThrow(PlanError);
  });
});

describe('planReshard', () => {
  it('moves N of the giver\'s highest slots', () => {
    const map = evenMap(3);
    const moves = planReshard(map, 's1', 's3', 100);
    expect(moves).toHaveLength(100);
    expect(toRanges(moves.map((m) => m.slot))).toEqual([[5361, 5460]]);
    expect(moves.every((m) => m.from === 's1' && m.to === 's3')).toBe(true);
  });

  it.each([
    ['an unknown source', 'x', 's2', 1],
    ['an unknown target', 's1', 'x', 1],
    ['the same shard twice', 's1', 's1', 1],
    ['more slots than the source owns', 's1', 's2', 5462],
    ['zero slots', 's1', 's2', 0],
  ])('refuses %s', (_what, from, to, count) => {
    expect(() => planReshard(evenMap(3), from, to, count)).toThrow(PlanError);
  });
});

describe('slot ranges', () => {
  it('round-trips and merges neighbours', () => {
    expect(toRanges([5, 1, 2, 3, 9, 10])).toEqual([
      [1, 3],
      [5, 5],
      [9, 10],
    ]);
    expect(fromRanges([[1, 3], [7, 7]])).toEqual([1, 2, 3, 7]);
  });
});
