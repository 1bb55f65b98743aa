import { createHash } from 'node:crypto';
import type Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SHARD_COUNT, startDeployment, type Deployment } from '../helpers/deployment';
import { decodeReplies, rawCommands, type DecodedReply, type ProxyProcess } from '../helpers/proxy-harness';
import type { SingleRedis } from '../helpers/redis-harness';
import { seededRandom } from '../helpers/seeded-random';

/**
 * Issue 6's acceptance at scale: a pipeline of 10,000 mixed commands covering every
 * deterministic handling kind answers through the proxy exactly as one Redis, and a full SCAN
 * over 100,000 keys on 3 shards (1 replica each) returns every key, and no key that does not
 * exist, also with MATCH, COUNT and TYPE.
 */

const PIPELINE_COMMANDS = 10_000;

let deployment: Deployment;
let single: SingleRedis;
let proxy: ProxyProcess;
let viaProxy: Redis;
let direct: Redis;
let primaries: readonly Redis[] = [];

type Command = (string | number)[];

const flushEverything = (): Promise<void> => deployment.flushEverything();

const SCRIPT = "redis.call('INCR', KEYS[1]); return {KEYS[1], redis.call('GET', KEYS[1]), ARGV[1]}";
const SCRIPT_SHA = createHash('sha1').update(SCRIPT).digest('hex');
const LIBRARY = "#!lua name=pipelib\nredis.register_function('pipe_get', function(keys) return redis.call('GET', keys[1]) end)";

/**
 * The mixed pipeline: blocks of commands, each block one handling kind (docs/commands.md), over
 * keys of every shard, until there are at least `total` commands. Left out as nondeterministic
 * or different from one Redis by design: SCAN, RANDOMKEY, INFO, TIME, WAIT, CLIENT ID / INFO,
 * HELLO, CLUSTER, refused commands and cross-slot multi-key commands.
 */
function mixedPipeline(total: number, seed: number): { commands: Command[]; kinds: Set<string> } {
  const next = seededRandom(seed);
  const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)]!;
  const key = (type: string): string => `pl:${type}:${Math.floor(next() * 300)}`;
  const tag = (): string => `{pl${Math.floor(next() * 100)}}`;
  const kinds = new Set<string>();
  /** Explicit, increasing stream ids: XADD * would differ between the two servers. */
  let streamId = 0;
  const blocks: readonly [string, () => Command[]][] = [
    ['single', () => [['SET', key('s'), `v${Math.floor(next() * 1000)}`], ['GET', key('s')], ['INCR', key('n')], ['APPEND', key('s'), 'x'], ['STRLEN', key('s')]]],
    ['single', () => [['HSET', key('h'), 'f', next().toFixed(6)], ['HGETALL', key('h')], ['HINCRBY', key('h'), 'c', 3], ['HLEN', key('h')]]],
    ['single', () => [['RPUSH', key('l'), 'a', 'b'], ['LRANGE', key('l'), 0, 3], ['LPOP', key('l')], ['LLEN', key('l')]]],
    ['single', () => [['ZADD', key('z'), Math.floor(next() * 100), `m${Math.floor(next() * 20)}`], ['ZRANGE', key('z'), 0, -1, 'WITHSCORES'], ['ZCARD', key('z')]]],
    ['single', () => [['SADD', key('set'), `m${Math.floor(next() * 5)}`], ['SCARD', key('set')], ['SISMEMBER', key('set'), 'm1']]],
    ['single', () => {
      // TTL right after its own EXPIRE: a TTL of a key expired earlier would depend on timing.
      const s = key('s');
      return [['XADD', key('x'), `${++streamId}-1`, 'f', 'v'], ['XLEN', key('x')], ['TYPE', key('x')], ['EXPIRE', s, 1000], ['TTL', s], ['PERSIST', s]];
    }],
    ['single', () => [['INCR', key('h')], ['GET'], ['NOSUCHCOMMAND', 'x'], ['PUBLISH', `chan:${Math.floor(next() * 10)}`, 'nobody listens']]],
    ['split', () => {
      const keys = Array.from({ length: 6 }, () => key('s'));
      return [['MSET', ...keys.flatMap((k, i) => [k, `m${i}`])], ['MGET', ...keys, key('s')], ['EXISTS', ...keys, key('none')], ['TOUCH', key('s'), key('n')]];
    }],
    ['split', () => [['DEL', key('s'), key('n'), key('l')], ['UNLINK', key('h'), key('z')], ['MGET', key('s'), key('n'), key('h')]]],
    ['broadcast', () => [['DBSIZE'], ['KEYS', key('s')], ['SCRIPT', 'EXISTS', SCRIPT_SHA, 'ffffffffffffffffffffffffffffffffffffffff'], ['PUBSUB', 'NUMSUB', 'chan:1', 'chan:2'], ['PUBSUB', 'CHANNELS', 'nomatch*']]],
    ['broadcast', () => [['SCRIPT', 'LOAD', SCRIPT], ['FUNCTION', 'LOAD', 'REPLACE', LIBRARY], ['CONFIG', 'RESETSTAT']]],
    ['any-shard', () => [['CONFIG', 'GET', 'hash-max-listpack-entries'], ['COMMAND', 'COUNT'], ['COMMAND', 'GETKEYS', 'SET', key('s'), 'v'], ['COMMAND', 'INFO', 'get']]],
    ['local', () => [['PING'], ['PING', `p${Math.floor(next() * 10)}`], ['ECHO', 'echo'], ['SELECT', 0], ['CLIENT', 'SETNAME', 'pipeliner'], ['CLIENT', 'GETNAME']]],
    ['transaction', () => {
      const t = tag();
      return [['MULTI'], ['INCR', `${t}n`], ['SET', `${t}s`, 'in tx'], ['MGET', `${t}n`, `${t}s`], ['PING'], ['EXEC']];
    }],
    ['transaction', () => {
      const t = tag();
      return [['MULTI'], ['SET', `${t}a`, '1'], ['DISCARD'], ['GET', `${t}a`], ['EXEC'], ['DISCARD']];
    }],
    ['blocking', () => {
      const l = key('bl');
      return [['RPUSH', l, 'x', 'y'], ['BLPOP', l, 1], ['BRPOP', l, 1]];
    }],
    ['blocking', () => {
      const t = tag();
      const x = key('x');
      return [
        ['ZADD', `${t}bz`, 1, 'a'], ['BZPOPMIN', `${t}bz`, 1], ['RPUSH', `${t}src`, 'v'], ['BLMOVE', `${t}src`, `${t}dst`, 'LEFT', 'RIGHT', 1],
        // COUNT 1 from 0-0: the stream's first entry, whichever of the client's XADDs the read
        // meets. (Whether a blocking read sees the XADD just before it is commands-session's test.)
        ['XADD', x, `${++streamId}-1`, 'f', 'v'], ['XREAD', 'COUNT', 1, 'BLOCK', 10, 'STREAMS', x, '0-0'],
      ];
    }],
    ['pubsub', () => {
      const channel = `sub:${Math.floor(next() * 10)}`;
      // One channel per command: one reply per command keeps replies and commands aligned.
      return [['SUBSCRIBE', channel], ['SUBSCRIBE', 'sub:x'], ['PING'], ['UNSUBSCRIBE', channel], ['UNSUBSCRIBE', 'sub:x'], ['PING']];
    }],
    ['script', () => {
      const k = key('n');
      return [['EVALSHA', SCRIPT_SHA, 1, k, 'arg'], ['EVAL', SCRIPT, 1, k, 'again'], ['EVAL_RO', "return redis.call('GET', KEYS[1])", 1, k], ['EVAL', 'return 1', 0], ['FCALL', 'pipe_get', 1, key('s')]];
    }],
    ['config-set', () => [['CONFIG', 'SET', 'slowlog-max-len', 128]]],
  ];
  // Blocking commands that time out are few: a server wakes for a timeout only at its next cron
  // tick (hz 10), so each costs up to 100 ms. The blocks below find their data present.
  const commands: Command[] = [
    ['FLUSHALL'], ['SCRIPT', 'FLUSH'], ['FUNCTION', 'FLUSH'], ['SCRIPT', 'LOAD', SCRIPT], ['FUNCTION', 'LOAD', LIBRARY],
    ['BLPOP', 'pl:empty', 0.01], ['XREAD', 'BLOCK', 10, 'STREAMS', 'pl:nostream', '$'],
  ];
  while (commands.length < total) {
    const [kind, build] = pick(blocks);
    kinds.add(kind);
    commands.push(...build());
  }
  return { commands, kinds };
}

/** The first reply that differs, with its command, for a readable failure. */
function firstDifference(commands: readonly Command[], a: readonly DecodedReply[], b: readonly DecodedReply[]): string | null {
  const show = (reply: DecodedReply | undefined): string => JSON.stringify(reply instanceof Error ? `error: ${reply.message}` : reply);
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (show(a[i]) !== show(b[i])) return `reply ${i} to ${JSON.stringify(commands[i])}: proxy ${show(a[i])}, direct ${show(b[i])}`;
  }
  return null;
}

describe('10,000-command pipelines and a full SCAN through slotproxy (issue 6)', () => {
  beforeAll(async () => {
    deployment = await startDeployment();
    ({ single, proxy, viaProxy, direct, primaries } = deployment);
  }, 40_000);

  afterAll(() => deployment?.stop(), 30_000);

  describe('a mixed pipeline of 10,000 commands', () => {
    it('covers every deterministic handling kind', () => {
      const { commands, kinds } = mixedPipeline(PIPELINE_COMMANDS, 1);
      expect(commands.length).toBeGreaterThanOrEqual(PIPELINE_COMMANDS);
      expect([...kinds].sort()).toEqual(['blocking', 'broadcast', 'config-set', 'any-shard', 'local', 'pubsub', 'script', 'single', 'split', 'transaction'].sort());
    });

    it.each([1, 2])('answers byte for byte as one Redis, in one write (seed %i)', async (seed) => {
      const { commands } = mixedPipeline(PIPELINE_COMMANDS, seed);
      const [p, d] = await Promise.all([
        rawCommands(proxy.port, commands, { timeoutMs: 30_000 }),
        rawCommands(single.redis.port, commands, { timeoutMs: 30_000 }),
      ]);
      const difference = p.data.equals(d.data) ? null : firstDifference(commands, decodeReplies(p.data), decodeReplies(d.data));
      expect(difference).toBeNull();
      expect(p.replies).toHaveLength(commands.length);
      // The data really is spread over every shard.
      const sizes = await Promise.all(primaries.map((primary) => primary.dbsize()));
      expect(sizes.every((size) => size > 0), `shard sizes ${sizes.join(', ')}`).toBe(true);
    }, 60_000);

    it('answers as one Redis through an ioredis pipeline (Pub/Sub left out: ioredis would turn subscriber)', async () => {
      const { commands } = mixedPipeline(PIPELINE_COMMANDS, 3);
      const noPubSub = commands.filter(([name]) => !['SUBSCRIBE', 'UNSUBSCRIBE'].includes(String(name)));
      // Without the subscriptions the PINGs between them are plain PINGs on both sides.
      const run = async (client: Redis): Promise<unknown[]> => {
        const pipeline = client.pipeline();
        for (const [name, ...args] of noPubSub) pipeline.call(String(name), ...args);
        return (await pipeline.exec())!.map(([err, reply]) => (err === null ? reply : `error: ${err.message}`));
      };
      const [p, d] = await Promise.all([run(viaProxy), run(direct)]);
      expect(p).toHaveLength(noPubSub.length);
      const first = p.findIndex((reply, i) => JSON.stringify(reply) !== JSON.stringify(d[i]));
      expect(first === -1 ? null : `reply ${first} to ${JSON.stringify(noPubSub[first])}: proxy ${JSON.stringify(p[first])}, direct ${JSON.stringify(d[first])}`).toBeNull();
    }, 60_000);
  });

  describe('SCAN over 100,000 keys on 3 shards', () => {
    const STRINGS = 60_000;
    const HASHES = 25_000;
    const LISTS = 15_000;
    const stringKey = (n: number): string => `scan:s:${n}`;
    const hashKey = (n: number): string => `scan:h:${n}`;
    const listKey = (n: number): string => `scan:l:${n}`;
    const allKeys = new Set<string>();

    /** Every key a full SCAN with these options returns, with how often each came. */
    async function fullScan(...options: (string | number)[]): Promise<{ seen: Map<string, number>; calls: number }> {
      const seen = new Map<string, number>();
      let cursor = '0';
      let calls = 0;
      do {
        const [next, keys] = (await viaProxy.call('SCAN', cursor, ...options)) as [string, string[]];
        calls++;
        expect(next, `cursor after call ${calls}`).toMatch(/^\d+$/);
        for (const key of keys) seen.set(key, (seen.get(key) ?? 0) + 1);
        cursor = next;
        if (calls > 200_000) throw new Error('SCAN did not finish');
      } while (cursor !== '0');
      return { seen, calls };
    }

    function expectExactly(seen: Map<string, number>, expected: ReadonlySet<string>, what: string): void {
      const missing = [...expected].filter((key) => !seen.has(key));
      const unknown = [...seen.keys()].filter((key) => !expected.has(key));
      expect(missing.length, `${what}: keys never returned, e.g. ${missing.slice(0, 5).join(', ')}`).toBe(0);
      expect(unknown.length, `${what}: keys returned that were not loaded, e.g. ${unknown.slice(0, 5).join(', ')}`).toBe(0);
    }

    beforeAll(async () => {
      await flushEverything();
      const load: Command[] = [];
      for (let n = 0; n < STRINGS; n++) load.push(['SET', stringKey(n), n]);
      for (let n = 0; n < HASHES; n++) load.push(['HSET', hashKey(n), 'n', n]);
      for (let n = 0; n < LISTS; n++) load.push(['RPUSH', listKey(n), n]);
      for (const [, key] of load) allKeys.add(String(key));
      for (let i = 0; i < load.length; i += 10_000) {
        const pipeline = viaProxy.pipeline();
        for (const [name, ...args] of load.slice(i, i + 10_000)) pipeline.call(String(name), ...args);
        const results = (await pipeline.exec())!;
        expect(results.filter(([err]) => err !== null)).toEqual([]);
      }
    }, 60_000);

    it('the 100,000 keys are spread over the 3 shards', async () => {
      const sizes = await Promise.all(primaries.map((p) => p.dbsize()));
      expect(sizes.reduce((a, b) => a + b, 0)).toBe(allKeys.size);
      for (const size of sizes) expect(size / allKeys.size).toBeGreaterThan(0.3);
      expect(await viaProxy.dbsize()).toBe(100_000);
    });

    it('a full SCAN with COUNT 1000 returns each key at least once and none that does not exist', async () => {
      const { seen, calls } = await fullScan('COUNT', 1000);
      expectExactly(seen, allKeys, 'SCAN COUNT 1000');
      expect(calls).toBeGreaterThan(SHARD_COUNT);
    }, 60_000);

    it('a full SCAN without options (COUNT 10) does the same', async () => {
      const { seen } = await fullScan();
      expectExactly(seen, allKeys, 'SCAN');
    }, 60_000);

    it('MATCH returns exactly the matching keys', async () => {
      const pattern = 'scan:s:1*';
      const expected = new Set([...allKeys].filter((key) => key.startsWith('scan:s:1')));
      const { seen } = await fullScan('MATCH', pattern, 'COUNT', 500);
      expectExactly(seen, expected, `SCAN MATCH ${pattern}`);
    }, 60_000);

    it('TYPE returns exactly the keys of that type (with MATCH too)', async () => {
      const hashes = new Set(Array.from({ length: HASHES }, (_, n) => hashKey(n)));
      expectExactly((await fullScan('TYPE', 'hash', 'COUNT', 1000)).seen, hashes, 'SCAN TYPE hash');
      const lists = new Set(Array.from({ length: LISTS }, (_, n) => listKey(n)).filter((key) => key.endsWith('7')));
      expectExactly((await fullScan('MATCH', '*7', 'TYPE', 'list', 'COUNT', 2000)).seen, lists, 'SCAN MATCH *7 TYPE list');
      expect((await fullScan('TYPE', 'zset', 'COUNT', 5000)).seen.size).toBe(0);
    }, 60_000);

    it('ioredis scanStream through the proxy collects every key', async () => {
      const seen = new Map<string, number>();
      await new Promise<void>((resolve, reject) => {
        const stream = viaProxy.scanStream({ match: 'scan:l:*', count: 1000 });
        stream.on('data', (keys: string[]) => {
          for (const key of keys) seen.set(key, (seen.get(key) ?? 0) + 1);
        });
        stream.on('end', resolve);
        stream.on('error', reject);
      });
      expectExactly(seen, new Set(Array.from({ length: LISTS }, (_, n) => listKey(n))), 'scanStream MATCH scan:l:*');
    }, 60_000);

    it('a malformed cursor is refused as Redis refuses it', async () => {
      for (const cursor of ['abc', '1x', ' 1']) {
        const [p, d] = await Promise.all([
          viaProxy.call('SCAN', cursor).catch((err: Error) => err.message),
          direct.call('SCAN', cursor).catch((err: Error) => err.message),
        ]);
        expect(p, cursor).toBe(d);
      }
    });
  });
});
