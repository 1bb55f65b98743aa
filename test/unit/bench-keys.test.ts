import calculateSlot from 'cluster-key-slot';
import { describe, expect, it } from 'vitest';
import { CANDIDATE_KEYS, chooseMultiKeys, shardOfSlot } from '../../bench/keys';

/** How many of the keys each shard gets, by the given shard index of each key. */
function split(shards: readonly number[]): number[] {
  const counts = [0, 0, 0];
  for (const shard of shards) counts[shard]!++;
  return counts;
}

describe("the benchmark's MSET/MGET keys", () => {
  it('split 4 + 3 + 3 over slotproxy\'s shards by slot when Twemproxy\'s placement is not known', () => {
    const keys = chooseMultiKeys();
    expect(keys).toHaveLength(10);
    for (const key of keys) {
      expect(key.slot).toBe(calculateSlot(key.key));
      expect(key.shard).toBe(shardOfSlot(key.slot));
      expect(key.twemproxyShard).toBeNull();
    }
    expect(split(keys.map((k) => k.shard))).toEqual([4, 3, 3]);
  });

  it("split 4 + 3 + 3 for both proxies, given a placement as skewed as Twemproxy's ketama (190 / 100 / 10 of 300)", () => {
    // Most names on the first shard, few on the third, as fnv1a_64 ketama put bm:1..bm:300.
    const placement = new Map(CANDIDATE_KEYS.map((key, i) => [key, i % 30 === 7 ? 2 : i % 3 === 0 ? 1 : 0]));
    const keys = chooseMultiKeys(placement);
    expect(new Set(keys.map((k) => k.key)).size).toBe(10);
    expect(split(keys.map((k) => k.shard))).toEqual([4, 3, 3]);
    expect(split(keys.map((k) => k.twemproxyShard!))).toEqual([4, 3, 3]);
    for (const key of keys) expect(key.twemproxyShard).toBe(placement.get(key.key));
  });

  it('refuses a placement that cannot give Twemproxy three pieces', () => {
    const allOnOne = new Map(CANDIDATE_KEYS.map((key) => [key, 0]));
    expect(() => chooseMultiKeys(allOnOne)).toThrow(/fit both proxies/);
  });
});
