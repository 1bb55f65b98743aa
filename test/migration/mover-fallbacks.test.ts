import Redis from 'ioredis';
import { describe, expect, it } from 'vitest';
import {
  checkPlacement,
  evenOwner,
  expectPlacementClean,
  HOST,
  loadKeys,
  ownerFromStateFile,
  sleep,
  slotOf,
  startLoad,
  useMigrationDeployment,
} from './migration-harness';

/**
 * The mover's paths the main tests do not take: shards that refuse CONFIG (so no key index:
 * one full SCAN of the source per group of slots), and big keys of the types the other tests
 * leave out (a string, a set, a stream with its ID state) and one with no chunked copy (a
 * stream with a consumer group, moved whole by MIGRATE).
 */

describe('shards that refuse CONFIG, as managed Redis services do', () => {
  const deployment = useMigrationDeployment({ shards: 3 });
  const KEYS = 30_000;
  const SLOTS = 2_000;

  it('moves slots by full SCAN passes under load, with no error and no lost write', async () => {
    const { shards, proxy, specs } = deployment;
    await loadKeys(shards.primaries, KEYS);
    for (const node of shards.primaries) {
      const redis = new Redis({ host: node.host, port: node.port });
      try {
        await redis.call('ACL', 'SETUSER', 'default', '-config');
        await expect(redis.config('GET', 'notify-keyspace-events')).rejects.toThrow(/NOPERM/);
      } finally {
        redis.disconnect();
      }
    }
    const load = await startLoad(proxy.port, { clients: 10, opsPerSecond: 2_000, keys: KEYS });
    await sleep(1_000);
    const submitted = await proxy.submit({ op: 'reshard', from: 's1', to: 's2', slots: SLOTS });
    expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
    const status = await proxy.waitForPlan(120_000);
    await sleep(300);
    const report = await load.stop();

    const logs = proxy.logs();
    expect(status.state, logs.slice(-3000)).toBe('done');
    expect(status.progress!.slotsDone).toBe(SLOTS);
    expect(logs).toContain('moving without a key index');
    expect(logs).not.toContain('"event":"source indexed"');
    expect(status.shards.map((s) => s.slots)).toEqual([5461 - SLOTS, 5462 + SLOTS, 5461]);

    const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
    expect(migrations).toBe(0);
    const placement = await checkPlacement(specs, owner, KEYS, load.expected);
    expectPlacementClean(placement);
    // s1 held about a third of the keys and gave 2,000 of its 5,461 slots.
    expect(placement.keysPerShard['s2']!).toBeGreaterThan(KEYS / 3 + KEYS * (SLOTS / 16384) * 0.8);
    expect(report.errors.slice(0, 5)).toEqual([]);
    expect(report.staleReads.slice(0, 5)).toEqual([]);
  }, 180_000);
});

describe('big keys of every type', () => {
  const deployment = useMigrationDeployment({ shards: 2 });
  // With two shards s1 owns 0-8191; a reshard of all its slots moves every key it holds.
  const tagged = (prefix: string): string => {
    for (let n = 0; ; n++) if (slotOf(`{${prefix}${n}}`) < 8192) return `{${prefix}${n}}`;
  };
  const stringKey = `${tagged('s')}:big-string`;
  const setKey = `${tagged('t')}:big-set`;
  const streamKey = `${tagged('x')}:big-stream`;
  const groupedKey = `${tagged('g')}:stream-with-group`;
  const STRING_BYTES = 3 * 1024 * 1024;
  const SET_MEMBERS = 20_000;
  const STREAM_ENTRIES = 6_000;

  /** What a client can see of a stream, its ID state included. */
  async function streamState(redis: Redis, key: string): Promise<unknown> {
    const info = (await redis.call('XINFO', 'STREAM', key)) as unknown[];
    const field = (name: string): unknown => info[info.indexOf(name) + 1];
    return {
      entries: await redis.xrange(key, '-', '+'),
      length: field('length'),
      lastGeneratedId: field('last-generated-id'),
      maxDeletedEntryId: field('max-deleted-entry-id'),
      entriesAdded: field('entries-added'),
    };
  }

  it('copies a string, a set and a stream in chunks and a stream with a consumer group whole, each as it was', async () => {
    const { shards, proxy, specs } = deployment;
    expect(evenOwner(2)[slotOf(stringKey)]).toBe(0);
    const source = new Redis({ host: shards.primaries[0]!.host, port: shards.primaries[0]!.port });
    const target = new Redis({ host: shards.primaries[1]!.host, port: shards.primaries[1]!.port });
    const client = new Redis({ host: HOST, port: proxy.port, maxRetriesPerRequest: 0 });
    try {
      // Bytes of every value 0-255, so a chunk boundary that mangled one would show.
      const bytes = Buffer.alloc(STRING_BYTES);
      for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + (i >> 10)) & 0xff;
      await source.set(stringKey, bytes, 'PX', 3_600_000);
      for (let start = 0; start < SET_MEMBERS; start += 5_000) {
        await source.sadd(setKey, ...Array.from({ length: 5_000 }, (_, i) => `member-${start + i}`));
      }
      const adds = source.pipeline();
      for (let i = 1; i <= STREAM_ENTRIES; i++) adds.xadd(streamKey, `${1_000 + i}-${i % 3}`, 'n', String(i), 'payload', 'p'.repeat(i % 50));
      await adds.exec();
      // Entries deleted and trimmed: the copy must keep the stream's counters, not only its entries.
      await source.xdel(streamKey, '1500-0', '1600-1');
      await source.xtrim(streamKey, 'MAXLEN', STREAM_ENTRIES - 100);
      for (let i = 1; i <= 3_000; i++) await source.xadd(groupedKey, '*', 'n', String(i));
      await source.xgroup('CREATE', groupedKey, 'workers', '0');
      const read = (await source.xreadgroup('GROUP', 'workers', 'alice', 'COUNT', 10, 'STREAMS', groupedKey, '>')) as [string, [string, string[]][]][];
      await source.xack(groupedKey, 'workers', read[0]![1][0]![0]);

      const before = {
        ttl: await source.pttl(stringKey),
        stream: await streamState(source, streamKey),
        grouped: await streamState(source, groupedKey),
        groups: await source.call('XINFO', 'GROUPS', groupedKey),
        pending: await source.xpending(groupedKey, 'workers'),
      };

      const submitted = await proxy.submit({ op: 'reshard', from: 's1', to: 's2', slots: 8192 });
      expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
      const status = await proxy.waitForPlan(120_000);
      const logs = proxy.logs();
      expect(status.state, logs.slice(-3000)).toBe('done');
      expect(status.progress!.bigKeysMoved).toBe(4);
      expect(status.progress!.errors, status.progress!.lastError ?? '').toBe(0);
      const outcomes = logs
        .split('\n')
        .filter((line) => line.includes('"big key moved"'))
        .map((line) => (JSON.parse(line) as { outcome: string }).outcome)
        .sort();
      expect(outcomes).toEqual(['moved', 'moved', 'moved', 'moved whole']);

      // Nothing left on the source, no temporary key on the target.
      expect(await source.dbsize()).toBe(0);
      expect(await target.keys('*slotproxy:moving*')).toEqual([]);
      expect(ownerFromStateFile(proxy.stateFile).owner[slotOf(stringKey)]).toBe('s2');

      // Each key as it was, read on the target and through the proxy.
      expect((await target.getBuffer(stringKey))!.equals(bytes)).toBe(true);
      expect((await client.getBuffer(stringKey))!.equals(bytes)).toBe(true);
      const ttl = await target.pttl(stringKey);
      expect(ttl).toBeGreaterThan(before.ttl - 120_000);
      expect(ttl).toBeLessThanOrEqual(before.ttl);
      expect(await client.scard(setKey)).toBe(SET_MEMBERS);
      expect(await target.smismember(setKey, 'member-0', `member-${SET_MEMBERS - 1}`, 'member-x')).toEqual([1, 1, 0]);
      expect(await streamState(target, streamKey)).toEqual(before.stream);
      expect(await streamState(target, groupedKey)).toEqual(before.grouped);
      expect(await target.call('XINFO', 'GROUPS', groupedKey)).toEqual(before.groups);
      expect(await target.xpending(groupedKey, 'workers')).toEqual(before.pending);
      // A new entry gets the ID it would have had on the source: after the last generated one.
      const lastId = String((before.stream as { lastGeneratedId: string }).lastGeneratedId);
      await expect(client.xadd(streamKey, lastId, 'n', 'same')).rejects.toThrow(/equal or smaller/);
      const added = await client.xadd(streamKey, `${lastId.split('-')[0]}-*`, 'n', 'after');
      expect(added).toBe(`${lastId.split('-')[0]}-${Number(lastId.split('-')[1]) + 1}`);
    } finally {
      source.disconnect();
      target.disconnect();
      client.disconnect();
    }
  }, 180_000);
});
