import * as fs from 'node:fs';
import Redis from 'ioredis';
import { describe, expect, it } from 'vitest';
import {
  checkPlacement,
  expectPlacementClean,
  HOST,
  evenOwner,
  loadKeys,
  ownerFromStateFile,
  planWindow,
  sleep,
  slotOf,
  startLoad,
  useMigrationDeployment,
} from './migration-harness';

/**
 * Rebalancing onto a 4th shard, started by editing the YAML and sending SIGHUP, with a 5 MB
 * list, a 100,000-field hash and a 100,000-member sorted set among the keys: they are copied
 * in chunks while commands on them wait, and no command on the other keys of their shards
 * waits more than 50 ms.
 */

const KEYS = 50_000;
const CLIENTS = 20;
const OPS_PER_SECOND = 5_000;
const LIST_ITEMS = 50_000;
const LIST_ITEM = 'x'.repeat(100);
const HASH_FIELDS = 100_000;
const ZSET_MEMBERS = 100_000;

/** A hash tag whose slot is in [from, to] (slots a rebalance to 4 shards moves from a source). */
function tagIn(from: number, to: number, prefix: string): string {
  for (let n = 0; ; n++) {
    const slot = slotOf(`{${prefix}${n}}`);
    if (slot >= from && slot <= to) return `${prefix}${n}`;
  }
}

describe('big keys move in chunks', () => {
  const deployment = useMigrationDeployment({ shards: 4, proxyShards: 3 });
  // The even 3-way split gives s4 the top 1365 or so slots of each shard.
  const listKey = `{${tagIn(4200, 5400, 'l')}}:big-list`;
  const hashKey = `{${tagIn(9600, 10900, 'h')}}:big-hash`;
  const zsetKey = `{${tagIn(15100, 16300, 'z')}}:big-zset`;

  it('copies a 5 MB list, a 100k-field hash and a 100k-member zset without stalling their shards', async () => {
    const { shards, proxy, specs } = deployment;
    await loadKeys(shards.primaries.slice(0, 3), KEYS);
    const owner = evenOwner(3);
    const direct = shards.primaries.slice(0, 3).map((n) => new Redis({ host: n.host, port: n.port }));
    try {
      const onShard = (key: string): Redis => direct[owner[slotOf(key)]!]!;
      for (let start = 0; start < LIST_ITEMS; start += 5_000) {
        await onShard(listKey).rpush(listKey, ...Array.from({ length: 5_000 }, () => LIST_ITEM));
      }
      for (let start = 0; start < HASH_FIELDS; start += 5_000) {
        await onShard(hashKey).hset(hashKey, Object.fromEntries(Array.from({ length: 5_000 }, (_, i) => [`f${start + i}`, `v${start + i}`])));
      }
      for (let start = 0; start < ZSET_MEMBERS; start += 5_000) {
        await onShard(zsetKey).zadd(zsetKey, ...Array.from({ length: 5_000 }, (_, i) => [String((start + i) / 7), `m${start + i}`]).flat());
      }
      await onShard(hashKey).pexpire(hashKey, 3_600_000);
    } finally {
      for (const c of direct) c.disconnect();
    }

    const load = await startLoad(proxy.port, { clients: CLIENTS, opsPerSecond: OPS_PER_SECOND, keys: KEYS });
    // A client working on the big keys the whole time: its commands wait while a key is copied.
    const bigClient = new Redis({ host: HOST, port: proxy.port, maxRetriesPerRequest: 0 });
    let bigOps = 0;
    let bigWrites = 0;
    const bigErrors: string[] = [];
    let bigLongestMs = 0;
    let isStopping = false;
    const bigLoop = (async (): Promise<void> => {
      while (!isStopping) {
        const at = Date.now();
        try {
          await bigClient.hset(hashKey, `added${bigWrites}`, 'yes');
          bigWrites++;
          const [llen, zcard] = await Promise.all([bigClient.llen(listKey), bigClient.zcard(zsetKey)]);
          if (llen !== LIST_ITEMS || zcard !== ZSET_MEMBERS) bigErrors.push(`llen ${llen}, zcard ${zcard}`);
          bigOps++;
        } catch (err) {
          bigErrors.push((err as Error).message);
        }
        bigLongestMs = Math.max(bigLongestMs, Date.now() - at);
        await sleep(20);
      }
    })();

    // The load's first seconds are its warm-up; the baseline is the 1.5 s before the reload.
    await sleep(3_500);
    proxy.writeShards(specs);
    proxy.kill('SIGHUP');
    const status = await proxy.waitForPlan(120_000, (s) => s.plan?.trigger === 'reload');
    const { start: moveStart, end: moveEnd } = planWindow(proxy.logs());
    await sleep(500);
    isStopping = true;
    await bigLoop;
    bigClient.disconnect();
    const report = await load.stop();

    expect(status.state, proxy.logs().slice(-3000)).toBe('done');
    expect(status.plan!.addShards.map((s) => s.name)).toEqual(['s4']);
    expect(status.progress!.bigKeysMoved).toBe(3);
    const counts = status.shards.map((s) => s.slots);
    expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);

    const { owner: after } = ownerFromStateFile(proxy.stateFile);
    for (const key of [listKey, hashKey, zsetKey]) expect(after[slotOf(key)]).toBe('s4');
    const placement = await checkPlacement(specs, after, KEYS, load.expected, [listKey, hashKey, zsetKey]);
    expectPlacementClean(placement);
    expect(report.errors.slice(0, 5)).toEqual([]);
    expect(report.staleReads.slice(0, 5)).toEqual([]);
    expect(bigErrors.slice(0, 5)).toEqual([]);

    // The big keys arrived whole on s4, with the writes made while they moved.
    const s4 = new Redis({ host: specs[3]!.node.host, port: specs[3]!.node.port });
    try {
      expect(await s4.llen(listKey)).toBe(LIST_ITEMS);
      expect(await s4.lindex(listKey, LIST_ITEMS - 1)).toBe(LIST_ITEM);
      expect(await s4.hlen(hashKey)).toBe(HASH_FIELDS + bigWrites);
      expect(await s4.hget(hashKey, 'f99999')).toBe('v99999');
      expect(await s4.pttl(hashKey)).toBeGreaterThan(3_000_000);
      expect(await s4.zcard(zsetKey)).toBe(ZSET_MEMBERS);
      expect(Number(await s4.zscore(zsetKey, 'm99999'))).toBe(99999 / 7);
      expect(await s4.keys('*slotproxy:moving*')).toEqual([]);
    } finally {
      s4.disconnect();
    }

    // No command on the other keys of the big keys' shards waited more than 50 ms.
    const sources = new Set([listKey, hashKey, zsetKey].map((k) => evenOwner(3)[slotOf(k)]));
    const initial = evenOwner(3);
    const longest = report.max(moveStart, moveEnd, (slot) => sources.has(initial[slot]!));
    const bigMoves = proxy.logs().split('\n').filter((l) => l.includes('"big key moved"')).map((l) => JSON.parse(l) as { ms: number; slot: number });
    console.log(
      'big-keys figures',
      JSON.stringify({
        longestOtherKeyMs: longest,
        p99BeforeMs: report.p99(moveStart - 1_500, moveStart),
        p99DuringMs: report.p99(moveStart, moveEnd),
        bigKeyCopyMs: bigMoves.map((m) => m.ms),
        longestBigKeyCommandMs: Math.round(bigLongestMs),
        bigKeyCommands: bigOps,
        keysPerSecond: status.progress!.keysPerSecond,
        planSeconds: status.progress!.elapsedMs / 1000,
      }),
    );
    expect(longest).toBeLessThanOrEqual(50);
    expect(fs.readFileSync(proxy.configPath, 'utf8')).toMatch(/name: s4/);
  }, 240_000);
});
