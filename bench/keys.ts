/**
 * The 10 fixed keys of the MSET/MGET tests, chosen by Redis Cluster slot so that they spread over
 * slotproxy's 3 shards under the even split (4 + 3 + 3 keys).
 */
import calculateSlot from 'cluster-key-slot';

/** The even split slotproxy uses when the YAML gives no slot ranges: [first, last] per shard. */
export const EVEN_SPLIT: readonly (readonly [number, number])[] = [
  [0, 5460],
  [5461, 10922],
  [10923, 16383],
];

/** How many of the 10 keys each shard gets. */
const KEYS_PER_SHARD = [4, 3, 3] as const;

/** One key of the multi-key tests. */
export interface MultiKey {
  readonly key: string;
  readonly slot: number;
  /** Index into EVEN_SPLIT. */
  readonly shard: number;
}

export function shardOfSlot(slot: number): number {
  return EVEN_SPLIT.findIndex(([first, last]) => slot >= first && slot <= last);
}

/** Deterministic: the first `bm:N` names (no hash tags) that fill the per-shard quota, in slot order of discovery. */
export function chooseMultiKeys(): readonly MultiKey[] {
  const counts = [0, 0, 0];
  const chosen: MultiKey[] = [];
  for (let n = 1; chosen.length < 10; n++) {
    const key = `bm:${n}`;
    const slot = calculateSlot(key);
    const shard = shardOfSlot(slot);
    if (counts[shard] < KEYS_PER_SHARD[shard]) {
      counts[shard]++;
      chosen.push({ key, slot, shard });
    }
  }
  return chosen;
}

/** The value stored under each multi-key: 3 bytes, like redis-benchmark's default -d 3. */
export const MULTI_KEY_VALUE = 'xxx';
