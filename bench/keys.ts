/**
 * The 10 fixed keys of the MSET/MGET tests, chosen so that both proxies split every MSET/MGET
 * into 3 pieces of 4, 3 and 3 keys: slotproxy by Redis Cluster slot under the even split,
 * Twemproxy by where its ketama hash puts each name (probed at start: bench/targets.ts).
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
  /** Index of the shard Twemproxy sends it to; null when its placement was not probed. */
  readonly twemproxyShard: number | null;
}

/**
 * The names tried, `bm:1` to `bm:300`. Twemproxy's fnv1a_64 ketama puts names this alike mostly
 * on one server (190 / 100 / 10 of these 300 over s1 / s2 / s3), so the first ten names would give
 * it a split of 9 + 1 over two shards against slotproxy's 4 + 3 + 3 over three: less work per
 * command, and one shard fewer to wait for.
 */
export const CANDIDATE_KEYS: readonly string[] = Array.from({ length: 300 }, (_, i) => `bm:${i + 1}`);

export function shardOfSlot(slot: number): number {
  return EVEN_SPLIT.findIndex(([first, last]) => slot >= first && slot <= last);
}

/**
 * Deterministic: the first candidates that fill the per-shard quota of slotproxy and, given
 * where Twemproxy puts each candidate (shard index by name), of Twemproxy too. Throws when the
 * candidates cannot fill both.
 */
export function chooseMultiKeys(twemproxyShardOf: ReadonlyMap<string, number> | null = null): readonly MultiKey[] {
  const counts = [0, 0, 0];
  const twemproxyCounts = [0, 0, 0];
  const chosen: MultiKey[] = [];
  for (const key of CANDIDATE_KEYS) {
    if (chosen.length === 10) break;
    const slot = calculateSlot(key);
    const shard = shardOfSlot(slot);
    const twemproxyShard = twemproxyShardOf === null ? null : (twemproxyShardOf.get(key) ?? -1);
    if (twemproxyShard === -1) continue;
    if (counts[shard] >= KEYS_PER_SHARD[shard]) continue;
    if (twemproxyShard !== null && twemproxyCounts[twemproxyShard] >= KEYS_PER_SHARD[twemproxyShard]) continue;
    counts[shard]++;
    if (twemproxyShard !== null) twemproxyCounts[twemproxyShard]++;
    chosen.push({ key, slot, shard, twemproxyShard });
  }
  if (chosen.length < 10) throw new Error(`only ${chosen.length} of ${CANDIDATE_KEYS.length} names fit both proxies' 4 + 3 + 3 split`);
  return chosen;
}

/** The value stored under each multi-key: 3 bytes, like redis-benchmark's default -d 3. */
export const MULTI_KEY_VALUE = 'xxx';
