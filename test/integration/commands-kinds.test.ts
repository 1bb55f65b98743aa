import { createHash } from 'node:crypto';
import * as net from 'node:net';
import type Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lookupCommand } from '../../src/commands/command-table';
import {
  SHARD_COUNT,
  connect,
  keysOnEveryShard,
  keysOnShard,
  ownerOf,
  startDeployment,
  type Deployment,
} from '../helpers/deployment';
import { rawCommands, runRedisCli, startProxyProcess, type ProxyProcess } from '../helpers/proxy-harness';
import type { Shards, SingleRedis } from '../helpers/redis-harness';

/**
 * Issue 6, one handling kind at a time (docs/commands.md): real clients (ioredis standalone,
 * redis-cli) through `dist/cli.js start` over 3 shards with a replica each, compared with one
 * direct redis-server wherever the command is deterministic. Tests run in file order and share
 * the servers; each flushes what it depends on.
 */

const CROSSSLOT = "CROSSSLOT Keys in request don't hash to the same slot";
const NOT_ALLOWED = (name: string): string => `ERR command '${name}' is not allowed through slotproxy`;

let deployment: Deployment;
let shards: Shards;
let single: SingleRedis;
let proxy: ProxyProcess;
/** Through the proxy, ioredis with its defaults (it tries RESP3, falls back on NOPROTO). */
let viaProxy: Redis;
/** The reference Redis, RESP2 like the proxy. */
let direct: Redis;
/** Each shard's primary, directly, in shard order. */
let primaries: readonly Redis[] = [];
/** Each shard's replica, directly, in shard order. */
let replicas: readonly Redis[] = [];

const flushEverything = (): Promise<void> => deployment.flushEverything();

/** A reply, or the error text, so that replies and errors compare alike. */
async function outcome(promise: Promise<unknown>): Promise<unknown> {
  try {
    return await promise;
  } catch (err) {
    return `error: ${(err as Error).message}`;
  }
}

/** The same command through the proxy and on the direct Redis. */
async function both(...args: (string | number)[]): Promise<{ proxy: unknown; direct: unknown }> {
  const [name, ...rest] = args as [string, ...(string | number)[]];
  const [p, d] = await Promise.all([outcome(viaProxy.call(name, ...rest)), outcome(direct.call(name, ...rest))]);
  return { proxy: p, direct: d };
}

/** Runs each command on both, in order, and expects equal replies. */
async function expectSame(commands: readonly (readonly (string | number)[])[]): Promise<void> {
  for (const command of commands) {
    const { proxy: p, direct: d } = await both(...command);
    expect(p, command.join(' ')).toEqual(d);
  }
}

async function errorOf(promise: Promise<unknown>): Promise<string> {
  const result = await outcome(promise);
  return typeof result === 'string' && result.startsWith('error: ') ? result.slice(7) : `(no error; got ${JSON.stringify(result)})`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

describe('command kinds through slotproxy (issue 6)', () => {
  beforeAll(async () => {
    deployment = await startDeployment();
    ({ shards, single, proxy, viaProxy, direct, primaries, replicas } = deployment);
  }, 40_000);

  afterAll(() => deployment?.stop(), 30_000);

  describe('single: routed by the slot of its keys', () => {
    it('answers string, hash, list, set, zset, stream, HyperLogLog, geo and bitmap commands as one Redis', async () => {
      await flushEverything();
      const commands: (string | number)[][] = [];
      for (const [i, key] of keysOnEveryShard('single:', 2).entries()) {
        commands.push(
          ['SET', `${key}:s`, `v${i}`], ['APPEND', `${key}:s`, '-x'], ['GET', `${key}:s`], ['STRLEN', `${key}:s`],
          ['INCRBY', `${key}:n`, i], ['INCRBYFLOAT', `${key}:n`, '1.5'], ['GETRANGE', `${key}:s`, 0, 1], ['SETRANGE', `${key}:s`, 1, 'ZZ'],
          ['HSET', `${key}:h`, 'a', 1, 'b', 2], ['HINCRBY', `${key}:h`, 'a', 10], ['HGETALL', `${key}:h`], ['HMGET', `${key}:h`, 'a', 'zz'],
          ['RPUSH', `${key}:l`, 'a', 'b', 'c'], ['LPOP', `${key}:l`], ['LRANGE', `${key}:l`, 0, -1], ['LINSERT', `${key}:l`, 'BEFORE', 'c', 'x'],
          ['SADD', `${key}:set`, 'a'], ['SISMEMBER', `${key}:set`, 'a'], ['SCARD', `${key}:set`],
          ['ZADD', `${key}:z`, 1, 'a', 2, 'b', 3, 'c'], ['ZRANGE', `${key}:z`, 0, -1, 'WITHSCORES'], ['ZINCRBY', `${key}:z`, 5, 'a'], ['ZRANK', `${key}:z`, 'a'],
          ['XADD', `${key}:x`, '1-1', 'f', 'v'], ['XADD', `${key}:x`, '2-1', 'f', 'w'], ['XRANGE', `${key}:x`, '-', '+'], ['XLEN', `${key}:x`],
          ['PFADD', `${key}:hll`, 'a', 'b', 'c'], ['PFCOUNT', `${key}:hll`],
          ['GEOADD', `${key}:g`, '13.361389', '38.115556', 'Palermo', '15.087269', '37.502669', 'Catania'], ['GEODIST', `${key}:g`, 'Palermo', 'Catania', 'km'],
          ['SETBIT', `${key}:b`, 7, 1], ['BITCOUNT', `${key}:b`], ['TYPE', `${key}:z`], ['OBJECT', 'ENCODING', `${key}:l`],
          ['EXPIRE', `${key}:s`, 1000], ['TTL', `${key}:s`], ['PERSIST', `${key}:s`], ['TTL', `${key}:s`], ['GETDEL', `${key}:n`],
          ['INCR', `${key}:s`], ['LPUSH', `${key}:s`, 'x'],
        );
      }
      await expectSame(commands);
      // Every key landed on the primary that owns its slot.
      for (const [i, key] of keysOnEveryShard('single:', 2).entries()) {
        expect(await primaries[ownerOf(`${key}:h`)]!.exists(`${key}:h`), `${key}:h (${i})`).toBe(1);
      }
    });

    it('gives redis-cli the same output as one Redis', async () => {
      await flushEverything();
      for (const key of keysOnEveryShard('cli:', 1)) {
        for (const args of [['SET', key, 'hello world'], ['GET', key], ['RPUSH', `${key}:l`, '1', '2'], ['LRANGE', `${key}:l`, '0', '-1'], ['INCR', key]]) {
          const [p, d] = await Promise.all([runRedisCli(proxy.port, args), runRedisCli(single.redis.port, args)]);
          expect(p, args.join(' ')).toBe(d);
        }
      }
    });
  });

  describe('split: MGET / MSET / DEL / UNLINK / EXISTS / TOUCH over keys on all shards', () => {
    it('answers as one Redis with ioredis, duplicates and missing keys included', async () => {
      await flushEverything();
      const keys = keysOnEveryShard('split:', 4);
      const missing = keysOnEveryShard('split-missing:', 1);
      const pairs = keys.flatMap((key, i) => [key, `v${i}`]);
      const mixed = [keys[0]!, missing[1]!, keys[5]!, keys[0]!, missing[2]!, keys[11]!];
      await expectSame([
        ['MSET', ...pairs],
        ['MGET', ...keys],
        ['MGET', ...mixed],
        ['EXISTS', ...mixed],
        ['TOUCH', ...mixed],
        ['DEL', keys[0]!, keys[1]!, missing[0]!, keys[1]!],
        ['UNLINK', keys[2]!, keys[3]!, keys[4]!, missing[1]!],
        ['MGET', ...keys],
        ['EXISTS', ...keys],
        ['MSET', keys[0]!, 'again', keys[1]!],
        ['DEL'],
        ['MGET'],
      ]);
      // The keys MSET wrote are on their owners only.
      const sizes = await Promise.all(primaries.map((p) => p.dbsize()));
      expect(sizes.every((size) => size > 0)).toBe(true);
      expect(sizes.reduce((a, b) => a + b, 0)).toBe(await direct.dbsize());
    });

    it('gives redis-cli the same output as one Redis', async () => {
      await flushEverything();
      const keys = keysOnEveryShard('split-cli:', 2);
      const commands = [['MSET', ...keys.flatMap((k, i) => [k, `v${i}`])], ['MGET', ...keys, 'nope'], ['EXISTS', ...keys], ['TOUCH', ...keys], ['UNLINK', keys[0]!], ['DEL', ...keys]];
      for (const args of commands) {
        const [p, d] = await Promise.all([runRedisCli(proxy.port, args), runRedisCli(single.redis.port, args)]);
        expect(p, args.join(' ')).toBe(d);
      }
    });
  });

  describe('broadcast: every shard, replies merged', () => {
    it('DBSIZE is the sum over shards and KEYS their union (as one Redis, order aside)', async () => {
      await flushEverything();
      const keys = keysOnEveryShard('bc:', 10);
      await viaProxy.mset(Object.fromEntries(keys.map((k) => [k, k])));
      await direct.mset(Object.fromEntries(keys.map((k) => [k, k])));
      const sizes = await Promise.all(primaries.map((p) => p.dbsize()));
      expect(sizes.every((size) => size === 10)).toBe(true);
      expect(await viaProxy.dbsize()).toBe(30);
      expect(await viaProxy.dbsize()).toBe(await direct.dbsize());
      expect((await viaProxy.keys('*')).sort()).toEqual((await direct.keys('*')).sort());
      expect((await viaProxy.keys('bc:1*')).sort()).toEqual((await direct.keys('bc:1*')).sort());
      expect(await viaProxy.keys('nothing:*')).toEqual([]);
      const cliKeys = (await runRedisCli(proxy.port, ['KEYS', '*'])).split('\n').filter((l) => l !== '').sort();
      expect(cliKeys).toEqual([...keys].sort());
    });

    it('FLUSHDB and FLUSHALL empty every shard', async () => {
      await viaProxy.mset(Object.fromEntries(keysOnEveryShard('flush:', 3).map((k) => [k, '1'])));
      expect(await viaProxy.flushdb()).toBe('OK');
      expect(await Promise.all(primaries.map((p) => p.dbsize()))).toEqual([0, 0, 0]);
      await viaProxy.mset(Object.fromEntries(keysOnEveryShard('flush:', 3).map((k) => [k, '1'])));
      expect(await viaProxy.flushall()).toBe('OK');
      expect(await Promise.all(primaries.map((p) => p.dbsize()))).toEqual([0, 0, 0]);
      expect(await viaProxy.dbsize()).toBe(0);
    });

    it('SCRIPT LOAD reaches every shard: EVALSHA on keys of each shard never sees NOSCRIPT', async () => {
      await flushEverything();
      await Promise.all([...primaries.map((p) => p.script('FLUSH')), direct.script('FLUSH')]);
      const body = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1]) .. ':' .. KEYS[1]";
      const sha = createHash('sha1').update(body).digest('hex');
      expect(await viaProxy.script('LOAD', body)).toBe(sha);
      expect(await direct.script('LOAD', body)).toBe(sha);
      for (const primary of primaries) expect(await primary.script('EXISTS', sha)).toEqual([1]);
      for (const key of keysOnEveryShard('sha:', 3)) {
        const { proxy: p, direct: d } = await both('EVALSHA', sha, 1, key, 'v');
        expect(p, key).toEqual(d);
        expect(p).toBe(`v:${key}`);
      }
      // EVALSHA_RO and a keyless EVALSHA (any shard) as well.
      await expectSame([['EVALSHA', createHash('sha1').update('return 42').digest('hex'), 0], ['EVAL', 'return 42', 0], ['EVALSHA', createHash('sha1').update('return 42').digest('hex'), 0]]);
    });

    it('heals NOSCRIPT: a script the proxy saw is loaded on a shard that lost it', async () => {
      const body = "return 'healed:' .. KEYS[1]";
      const sha = createHash('sha1').update(body).digest('hex');
      const [first, other] = [keysOnShard(0, 'heal:', 1)[0]!, keysOnShard(2, 'heal:', 1)[0]!];
      // EVAL through the proxy runs (and caches) it on shard 0 only.
      expect(await viaProxy.eval(body, 1, first)).toBe(`healed:${first}`);
      await primaries[2]!.script('FLUSH');
      expect(await primaries[2]!.script('EXISTS', sha)).toEqual([0]);
      expect(await viaProxy.evalsha(sha, 1, other)).toBe(`healed:${other}`);
      expect(await primaries[2]!.script('EXISTS', sha)).toEqual([1]);
    });

    it('SCRIPT EXISTS is the AND over shards', async () => {
      await Promise.all(primaries.map((p) => p.script('FLUSH')));
      const everywhere = (await viaProxy.script('LOAD', 'return "everywhere"')) as string;
      const onOne = (await primaries[1]!.script('LOAD', 'return "on one shard"')) as string;
      const nowhere = createHash('sha1').update('return "nowhere"').digest('hex');
      expect(await viaProxy.script('EXISTS', everywhere, onOne, nowhere)).toEqual([1, 0, 0]);
      expect(await primaries[1]!.script('EXISTS', everywhere, onOne, nowhere)).toEqual([1, 1, 0]);
    });

    it('after SCRIPT FLUSH through the proxy, EVALSHA answers NOSCRIPT as one Redis does', async () => {
      const body = 'return "flushed?"';
      const sha = createHash('sha1').update(body).digest('hex');
      await expectSame([['SCRIPT', 'LOAD', body], ['EVALSHA', sha, 0], ['SCRIPT', 'FLUSH'], ['SCRIPT', 'EXISTS', sha]]);
      const { proxy: p, direct: d } = await both('EVALSHA', sha, 0);
      expect(d).toMatch(/^error: NOSCRIPT/);
      expect(p, 'the proxy still remembers (and reloads) a script SCRIPT FLUSH removed').toEqual(d);
    });

    it('FUNCTION LOAD reaches every shard: FCALL on keys of each shard, FUNCTION DELETE everywhere', async () => {
      await flushEverything();
      await Promise.all([...primaries.map((p) => p.call('FUNCTION', 'FLUSH')), direct.call('FUNCTION', 'FLUSH')]);
      const library = [
        '#!lua name=kindslib',
        "redis.register_function('kinds_set', function(keys, args) redis.call('SET', keys[1], args[1]); return redis.call('GET', keys[1]) end)",
        "redis.register_function{function_name='kinds_get', callback=function(keys) return redis.call('GET', keys[1]) end, flags={'no-writes'}}",
      ].join('\n');
      await expectSame([['FUNCTION', 'LOAD', library], ['FUNCTION', 'LOAD', library]]);
      for (const primary of primaries) {
        const listed = (await primary.call('FUNCTION', 'LIST', 'LIBRARYNAME', 'kindslib')) as unknown[];
        expect(listed).toHaveLength(1);
      }
      for (const key of keysOnEveryShard('fcall:', 2)) {
        await expectSame([['FCALL', 'kinds_set', 1, key, `value of ${key}`], ['FCALL_RO', 'kinds_get', 1, key], ['FCALL', 'kinds_get', 1, key]]);
        expect(await primaries[ownerOf(key)]!.get(key)).toBe(`value of ${key}`);
      }
      await expectSame([['FUNCTION', 'DELETE', 'kindslib'], ['FUNCTION', 'DELETE', 'kindslib'], ['FCALL', 'kinds_get', 1, 'x']]);
      for (const primary of primaries) expect(await primary.call('FUNCTION', 'LIST')).toEqual([]);
    });
  });

  describe('any-shard: keyless, one shard answers', () => {
    it('TIME is a [seconds, microseconds] pair of now; LASTSAVE an integer', async () => {
      const [seconds, micros] = (await viaProxy.time()).map(Number) as [number, number];
      expect(Math.abs(seconds - Date.now() / 1000)).toBeLessThan(5);
      expect(micros).toBeGreaterThanOrEqual(0);
      expect(micros).toBeLessThan(1_000_000);
      expect(typeof (await viaProxy.lastsave())).toBe('number');
      const cli = (await runRedisCli(proxy.port, ['TIME'])).trim().split('\n');
      expect(cli).toHaveLength(2);
    });

    it('CONFIG GET and COMMAND COUNT / INFO / GETKEYS answer as one Redis of the same version', async () => {
      await expectSame([
        ['CONFIG', 'GET', 'hash-max-listpack-entries'],
        ['CONFIG', 'GET', 'maxmemory-polic*'],
        ['COMMAND', 'COUNT'],
        ['COMMAND', 'INFO', 'get', 'mset', 'nosuch'],
        ['COMMAND', 'GETKEYS', 'MSET', 'a', '1', 'b', '2'],
      ]);
      // LOLWUT 5 draws Schotter, whose squares each server displaces at random: the caption
      // (with the server's version) is what must match.
      const caption = (reply: unknown): string => String(reply).trim().split('\n').at(-1)!;
      const lolwut = await both('LOLWUT', 'VERSION', '5', '1');
      expect(caption(lolwut.proxy)).toMatch(/Redis ver\. \d/);
      expect(caption(lolwut.proxy)).toBe(caption(lolwut.direct));
    });

    it('COMMAND without a subcommand answers the command table as one Redis does', async () => {
      const names = (reply: unknown): string[] => (reply as [string, ...unknown[]][]).map((entry) => entry[0]).sort();
      const expected = names(await direct.call('COMMAND'));
      expect(expected.length).toBeGreaterThan(200);
      const { proxy: p } = await both('COMMAND');
      expect(typeof p === 'string' ? p : names(p), 'COMMAND (no arguments) through the proxy').toEqual(expected);
    });
  });

  describe('first-non-empty: RANDOMKEY', () => {
    it('returns the key when only one shard has keys, whichever shard is asked first', async () => {
      await flushEverything();
      const [key] = keysOnShard(2, 'only:', 1);
      await viaProxy.set(key!, '1');
      expect(await primaries[2]!.dbsize()).toBe(1);
      // The proxy rotates its first shard: several calls start at every shard.
      for (let i = 0; i < 2 * SHARD_COUNT; i++) expect(await viaProxy.randomkey()).toBe(key);
      expect(await runRedisCli(proxy.port, ['RANDOMKEY'])).toBe(`${key}\n`);
    });

    it('answers nil when every shard is empty, as one Redis', async () => {
      await flushEverything();
      for (let i = 0; i < SHARD_COUNT; i++) expect(await viaProxy.randomkey()).toBe(await direct.randomkey());
    });
  });

  describe('local: answered by the proxy', () => {
    it('PING, ECHO, SELECT 0, READONLY / READWRITE, AUTH answer as one Redis', async () => {
      await expectSame([['PING'], ['PING', 'hello'], ['ECHO', 'héllo wörld'], ['ECHO', ''], ['SELECT', '0'], ['SELECT', 'x'], ['PING', 'a', 'b'], ['ECHO']]);
      expect(await viaProxy.call('READONLY')).toBe('OK');
      expect(await viaProxy.call('READWRITE')).toBe('OK');
      expect(await errorOf(viaProxy.call('AUTH', 'secret'))).toBe(await errorOf(direct.call('AUTH', 'secret')));
      for (const args of [['PING'], ['ECHO', 'a b c'], ['SELECT', '0']]) {
        expect(await runRedisCli(proxy.port, args)).toBe(await runRedisCli(single.redis.port, args));
      }
    });

    it('CLIENT SETNAME / GETNAME / ID / INFO are the connection\'s own', async () => {
      const a = connect(proxy);
      const b = connect(proxy);
      try {
        expect(await a.call('CLIENT', 'GETNAME')).toBeNull();
        expect(await a.call('CLIENT', 'SETNAME', 'alpha')).toBe('OK');
        expect(await b.call('CLIENT', 'SETNAME', 'beta')).toBe('OK');
        expect(await a.call('CLIENT', 'GETNAME')).toBe('alpha');
        expect(await b.call('CLIENT', 'GETNAME')).toBe('beta');
        expect(await errorOf(a.call('CLIENT', 'SETNAME', 'has space'))).toBe(await errorOf(direct.call('CLIENT', 'SETNAME', 'has space')));
        const [idA, idB] = [(await a.call('CLIENT', 'ID')) as number, (await b.call('CLIENT', 'ID')) as number];
        expect(Number.isInteger(idA) && Number.isInteger(idB)).toBe(true);
        expect(idA).not.toBe(idB);
        const info = (await a.call('CLIENT', 'INFO')) as string;
        expect(info).toMatch(new RegExp(`^id=${idA} addr=127\\.0\\.0\\.1:\\d+ laddr=127\\.0\\.0\\.1:${proxy.port} .*name=alpha .*db=0 `));
        expect(info.endsWith('\n')).toBe(true);
      } finally {
        a.disconnect();
        b.disconnect();
      }
    });

    it('CLIENT LIST and CLIENT KILL are about the proxy\'s own clients, in redis-server\'s formats', async () => {
      const a = connect(proxy);
      const b = connect(proxy);
      const subscriber = connect(proxy);
      const doomed = connect(proxy);
      doomed.on('error', () => undefined);
      try {
        const [idA, idB, idDoomed] = [(await a.call('CLIENT', 'ID')) as number, (await b.call('CLIENT', 'ID')) as number, (await doomed.call('CLIENT', 'ID')) as number];
        await a.call('CLIENT', 'SETNAME', 'lister');
        await b.call('CLIENT', 'SETNAME', 'bee');
        await b.set('client-list:k', 'v');
        await subscriber.subscribe('client-list-channel');
        await subscriber.psubscribe('client-list-*');
        await doomed.call('CLIENT', 'SETNAME', 'doomed');
        const lines = ((await a.call('CLIENT', 'LIST')) as string).trimEnd().split('\n');
        const byName = (name: string): string | undefined => lines.find((line) => line.includes(` name=${name} `));
        expect(lines.length).toBeGreaterThanOrEqual(4);
        // The caller's own line, as redis-server writes it: the command running is CLIENT LIST.
        expect(byName('lister')).toMatch(new RegExp(`^id=${idA} addr=127\\.0\\.0\\.1:\\d+ laddr=127\\.0\\.0\\.1:${proxy.port} fd=-1 name=lister age=\\d+ idle=\\d+ flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 .* cmd=client\\|list user=default `));
        expect(byName('bee')).toMatch(new RegExp(`^id=${idB} .* cmd=set `));
        const subscribed = lines.find((line) => / sub=1 psub=1 /.test(line));
        expect(subscribed).toMatch(/ flags=P /);
        // Filters: by type and by id.
        expect(((await a.call('CLIENT', 'LIST', 'TYPE', 'pubsub')) as string).trimEnd().split('\n')).toEqual([subscribed]);
        const two = ((await a.call('CLIENT', 'LIST', 'ID', String(idA), String(idB))) as string).trimEnd().split('\n');
        expect(two.map((line) => Number(/^id=(\d+)/.exec(line)![1])).sort((x, y) => x - y)).toEqual([idA, idB].sort((x, y) => x - y));
        expect(await a.call('CLIENT', 'LIST', 'TYPE', 'master')).toBe('');
        for (const args of [['CLIENT', 'LIST', 'TYPE', 'nosuch'], ['CLIENT', 'LIST', 'ID', 'x'], ['CLIENT', 'LIST', 'BOGUS'], ['CLIENT', 'KILL', 'ID', '0', 'SKIPME', 'maybe'], ['CLIENT', 'KILL', 'USER', 'nobody']]) {
          expect(await errorOf(a.call(args[0]!, ...args.slice(1))), args.join(' ')).toBe(await errorOf(direct.call(args[0]!, ...args.slice(1))));
        }
        // KILL: by id (a count), by address (the old form: OK), nobody (0 / No such client).
        const closed = new Promise((resolve) => doomed.once('close', resolve));
        expect(await a.call('CLIENT', 'KILL', 'ID', String(idDoomed))).toBe(1);
        await closed;
        expect((await a.call('CLIENT', 'LIST')) as string).not.toContain(' name=doomed ');
        expect(await a.call('CLIENT', 'KILL', 'ID', String(idDoomed))).toBe(0);
        expect(await errorOf(a.call('CLIENT', 'KILL', '127.0.0.1:1'))).toBe(await errorOf(direct.call('CLIENT', 'KILL', '127.0.0.1:1')));
        const addrB = /addr=(\S+)/.exec(byName('bee')!)![1]!;
        b.on('error', () => undefined);
        const bClosed = new Promise((resolve) => b.once('close', resolve));
        expect(await a.call('CLIENT', 'KILL', addrB)).toBe('OK');
        await bClosed;
        // The caller is skipped unless it asks (SKIPME no): then its reply comes, then it is closed.
        expect(await a.call('CLIENT', 'KILL', 'ID', String(idA))).toBe(0);
        expect(await a.ping()).toBe('PONG');
        const aClosed = new Promise((resolve) => a.once('close', resolve));
        a.on('error', () => undefined);
        expect(await a.call('CLIENT', 'KILL', 'ID', String(idA), 'SKIPME', 'no')).toBe(1);
        await aClosed;
        // The other shards' clients and the proxy's backend connections are untouched.
        expect(await viaProxy.get('client-list:k')).toBe('v');
      } finally {
        for (const c of [a, b, subscriber, doomed]) c.disconnect();
      }
    });

    it('MONITOR streams every command the proxy\'s clients send, in redis-server\'s format and order', async () => {
      /** A monitor and a client on `port`; the stream with times and addresses masked. */
      const stream = async (port: number): Promise<string> => {
        const clientCommands = Buffer.concat([
          Buffer.from('SET "a b" "x\\ny"\r\n'),
          Buffer.from('*2\r\n$4\r\nECHO\r\n$3\r\n\x01\xff"\r\n', 'latin1'),
          Buffer.from('*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$1\r\nb\r\n'),
          Buffer.from('EVAL "return 1" 0\r\nCONFIG GET maxmemory\r\n'),
        ]);
        const [monitor, client] = await Promise.all([port, port].map((p) => new Promise<net.Socket>((resolve) => {
          const socket = net.connect(p, '127.0.0.1', () => resolve(socket));
        })));
        const seen: Buffer[] = [];
        monitor!.on('data', (chunk: Buffer) => seen.push(chunk));
        monitor!.write('MONITOR\r\n');
        await sleep(100);
        // Its own commands: PING is answered (then shown), keyspace commands refused.
        monitor!.write('PING\r\nGET x\r\n');
        await sleep(100);
        client!.write(clientCommands);
        await sleep(300);
        // Only the lines of these two connections: other clients of the deployment may come and go.
        const ours = new Set([monitor!.localPort, client!.localPort].map((p) => `127.0.0.1:${p}`));
        monitor!.destroy();
        client!.destroy();
        return Buffer.concat(seen)
          .toString('latin1')
          .split('\r\n')
          .filter((line) => !/^\+\d+\.\d{6} \[0 /.test(line) || ours.has(/\[0 (\S+)\]/.exec(line)![1]!))
          .join('\r\n')
          .replace(/\+\d+\.\d{6} \[0 127\.0\.0\.1:\d+\]/g, '+TIME [0 ADDR]');
      };
      const [viaTheProxy, fromRedis] = [await stream(proxy.port), await stream(single.redis.port)];
      expect(viaTheProxy).toBe(fromRedis);
      // Bytes Redis would not print are escaped as it escapes them.
      expect(viaTheProxy).toContain('+TIME [0 ADDR] "ECHO" "\\x01\\xff\\""');
      expect(viaTheProxy).not.toContain('CONFIG');
      // ioredis's monitor mode reads it too.
      const watcher = await connect(proxy).monitor();
      const lines: string[][] = [];
      watcher.on('monitor', (_time: string, args: string[]) => lines.push(args));
      await viaProxy.set('monitored', '1');
      await sleep(100);
      watcher.disconnect();
      expect(lines).toContainEqual(['set', 'monitored', '1']);
    });

    it('HELLO 2 answers the handshake map; HELLO 3 is refused with NOPROTO so clients stay on RESP2', async () => {
      const { replies } = await rawCommands(proxy.port, [['HELLO', '2', 'SETNAME', 'hello-client'], ['CLIENT', 'GETNAME'], ['HELLO', '3'], ['HELLO', 'x'], ['HELLO']]);
      const [hello2, name, hello3, helloX, hello] = replies;
      const map = hello2 as (string | number | unknown[])[];
      const fields = Object.fromEntries(Array.from({ length: map.length / 2 }, (_, i) => [map[2 * i], map[2 * i + 1]]));
      expect(fields).toMatchObject({ server: 'redis', proto: 2, mode: 'standalone', role: 'master', modules: [] });
      expect(typeof fields['id']).toBe('number');
      expect(name).toBe('hello-client');
      expect((hello3 as Error).message).toBe('NOPROTO unsupported protocol version');
      expect((helloX as Error).message).toBe('ERR Protocol version is not an integer or out of range');
      expect(Array.isArray(hello)).toBe(true);
      // ioredis with its defaults got through the same handshake (beforeAll) and talks RESP2.
      expect(await viaProxy.ping()).toBe('PONG');
    });
  });

  describe('refused: commands that would take the backends out of the proxy\'s hands', () => {
    const REFUSED: readonly [string, readonly string[]][] = [
      ['shutdown', ['SHUTDOWN', 'NOSAVE']],
      ['replicaof', ['REPLICAOF', 'NO', 'ONE']],
      ['slaveof', ['SLAVEOF', '127.0.0.1', '1']],
      ['migrate', ['MIGRATE', '127.0.0.1', '1', 'k', '0', '1000']],
      ['move', ['MOVE', 'k', '1']],
      ['swapdb', ['SWAPDB', '0', '1']],
      ['failover', ['FAILOVER']],
      ['bgsave', ['BGSAVE']],
      ['debug', ['DEBUG', 'SET-ACTIVE-EXPIRE', '0']],
      ['config|rewrite', ['CONFIG', 'REWRITE']],
      ['client|pause', ['CLIENT', 'PAUSE', '10']],
      ['cluster|reset', ['CLUSTER', 'RESET']],
    ];

    it.each(REFUSED)('%s is refused with the documented error (ioredis)', async (name, args) => {
      const message = await errorOf(viaProxy.call(args[0]!, ...args.slice(1)));
      expect(message.startsWith(NOT_ALLOWED(name)), message).toBe(true);
      // The reason docs/commands.md gives follows in parentheses.
      expect(message).toBe(`${NOT_ALLOWED(name)} (${noteOf(name)})`);
    });

    it('SELECT 1 and CONFIG SET port are refused; redis-cli sees the same text', async () => {
      expect(await errorOf(viaProxy.call('SELECT', '1'))).toMatch(/^ERR command 'select' is not allowed through slotproxy/);
      expect(await errorOf(viaProxy.call('CONFIG', 'SET', 'port', '1'))).toBe("ERR CONFIG SET parameter 'port' is not allowed through slotproxy");
      expect(await runRedisCli(proxy.port, ['MOVE', 'k', '1'])).toMatch(/^ERR command 'move' is not allowed through slotproxy/);
      expect(await runRedisCli(proxy.port, ['SHUTDOWN'])).toMatch(/^ERR command 'shutdown' is not allowed through slotproxy/);
    });

    it('left every backend as it was: all up, replicas still replicas, database 0 only', async () => {
      for (const primary of primaries) expect(((await primary.call('ROLE')) as unknown[])[0]).toBe('master');
      for (const replica of replicas) expect(((await replica.call('ROLE')) as unknown[])[0]).toBe('slave');
      for (const primary of primaries) expect(await primary.info('keyspace')).not.toMatch(/db1:/);
      expect(await viaProxy.ping()).toBe('PONG');
    });
  });

  describe('key counts given by the client', () => {
    it('an impossible count (huge, negative, not a number, more than the arguments) is answered as Redis answers it, at once', async () => {
      const startedAt = Date.now();
      await expectSame([
        // EVAL "" 200000000 made the key lookup build an array until V8 aborted the proxy.
        ['EVAL', 'return 1', '200000000', 'a'],
        ['EVAL', 'return 1', '99999999999999999999', 'a'],
        ['EVALSHA', 'ffffffffffffffffffffffffffffffffffffffff', '4294967296', 'a'],
        ['EVAL', 'return 1', '3', 'a', 'b'],
        ['EVAL', 'return 1', '-1', 'a'],
        ['EVAL', 'return 1', '1.5', 'a'],
        ['FCALL', 'nosuchfunction', '400000000', 'k'],
        ['ZUNION', '9999999999', 'a', 'b'],
        ['ZUNIONSTORE', 'dest', '5000000000', 'a'],
        ['ZINTERCARD', '123456789012', 'a'],
        ['SINTERCARD', '99999999999', 'a'],
        ['LMPOP', '300000000', 'a', 'LEFT'],
        ['ZMPOP', '300000000', 'a', 'MIN'],
        ['BLMPOP', '0.01', '300000000', 'a', 'LEFT'],
      ]);
      expect(Date.now() - startedAt).toBeLessThan(5_000);
      expect(await viaProxy.ping()).toBe('PONG');
      // A possible count still routes by its keys.
      expect(await viaProxy.eval('return KEYS[2]', 2, '{n}a', '{n}b')).toBe('{n}b');
      expect(await errorOf(viaProxy.eval('return 1', 2, 'n:a', 'n:b'))).toBe(CROSSSLOT);
    });
  });

  describe('SLOWLOG through the proxy: every shard\'s log', () => {
    it('LEN adds up the shards\' logs, GET merges them newest first up to its count, RESET empties them all', async () => {
      const entriesOf = (reply: unknown): [number, number, number, string[]][] => reply as [number, number, number, string[]][];
      expect(await viaProxy.call('CONFIG', 'SET', 'slowlog-log-slower-than', '0')).toBe('OK');
      try {
        expect(await viaProxy.call('SLOWLOG', 'RESET')).toBe('OK');
        const keys = keysOnEveryShard('slowlog:', 6);
        for (const key of keys) await viaProxy.set(key, 'v');
        const perShard = await Promise.all(primaries.map(async (p) => (await p.call('SLOWLOG', 'LEN')) as number));
        expect(perShard.every((n) => n > 0)).toBe(true);
        const total = (await viaProxy.call('SLOWLOG', 'LEN')) as number;
        // The LEN itself may be logged on each shard before it answers: at least the sum of before.
        expect(total).toBeGreaterThanOrEqual(perShard.reduce((a, b) => a + b, 0));
        const five = entriesOf(await viaProxy.call('SLOWLOG', 'GET', '5'));
        expect(five).toHaveLength(5);
        for (let i = 1; i < five.length; i++) expect(five[i - 1]![1]).toBeGreaterThanOrEqual(five[i]![1]);
        const all = entriesOf(await viaProxy.call('SLOWLOG', 'GET', '-1'));
        const setKeys = all.filter((entry) => entry[3][0]?.toLowerCase() === 'set').map((entry) => entry[3][1]);
        expect(new Set(setKeys)).toEqual(new Set(keys));
        expect(entriesOf(await viaProxy.call('SLOWLOG', 'GET')).length).toBeLessThanOrEqual(10);
        expect(await viaProxy.call('SLOWLOG', 'RESET')).toBe('OK');
        // Logged after it ran (every command is slow now): the RESET is all each log holds.
        expect(await Promise.all(primaries.map((p) => p.call('SLOWLOG', 'LEN')))).toEqual(primaries.map(() => 1));
        expect(await errorOf(viaProxy.call('SLOWLOG', 'GET', 'x'))).toBe(await errorOf(direct.call('SLOWLOG', 'GET', 'x')));
      } finally {
        await viaProxy.call('CONFIG', 'SET', 'slowlog-log-slower-than', '10000');
      }
    });
  });

  describe('LATENCY LATEST through the proxy: every shard\'s events, one row each', () => {
    it('gives the latest spike of an event on any shard and its greatest max', async () => {
      const spin = "local s = redis.call('TIME') while true do local n = redis.call('TIME') if (n[1] - s[1]) * 1000000 + (n[2] - s[2]) >= tonumber(ARGV[1]) * 1000 then break end end return 1";
      expect(await viaProxy.call('CONFIG', 'SET', 'latency-monitor-threshold', '5')).toBe('OK');
      try {
        expect(await viaProxy.call('LATENCY', 'RESET')).toBeGreaterThanOrEqual(0);
        const [onFirst] = keysOnShard(0, 'latency:', 1);
        const [onSecond] = keysOnShard(1, 'latency:', 1);
        await viaProxy.eval(spin, 1, onFirst!, '40');
        await viaProxy.eval(spin, 1, onSecond!, '15');
        const rows = (await viaProxy.call('LATENCY', 'LATEST')) as [string, number, number, number][];
        const perShard = await Promise.all(primaries.slice(0, 2).map(async (p) => ((await p.call('LATENCY', 'LATEST')) as [string, number, number, number][]).find((r) => r[0] === 'command')!));
        const command = rows.filter((row) => row[0] === 'command');
        expect(command).toHaveLength(1);
        expect(command[0]![3]).toBe(Math.max(...perShard.map((r) => r[3])));
        expect(command[0]![3]).toBeGreaterThanOrEqual(40);
        expect(command[0]![1]).toBe(Math.max(...perShard.map((r) => r[1])));
      } finally {
        await viaProxy.call('CONFIG', 'SET', 'latency-monitor-threshold', '0');
        await viaProxy.call('LATENCY', 'RESET');
      }
    });
  });

  describe('SORT: its key and STORE\'s are the keys; BY and GET patterns as Redis Cluster allows them', () => {
    it('BY nosort, GET #, patterns in the key\'s slot; other patterns refused with Redis Cluster\'s error', async () => {
      await flushEverything();
      const [list] = keysOnShard(0, 'sort-list:', 1);
      // A constant BY (no '*') means no sorting: allowed whatever slot the word hashes to.
      await viaProxy.rpush(list!, '3', '1', '2');
      expect(await viaProxy.call('SORT', list!, 'BY', 'nosort')).toEqual(['3', '1', '2']);
      expect(await viaProxy.call('SORT_RO', list!, 'BY', 'nosort')).toEqual(['3', '1', '2']);
      expect(await viaProxy.call('SORT', list!)).toEqual(['1', '2', '3']);
      expect(await viaProxy.call('SORT', list!, 'GET', '#', 'LIMIT', '0', '2')).toEqual(['1', '2']);
      // Patterns whose hash tag is the key's slot: read on the key's shard, as one Redis would.
      await viaProxy.rpush('{sorted}list', 'a', 'b', 'c');
      await viaProxy.mset({ '{sorted}w_a': '3', '{sorted}w_b': '1', '{sorted}w_c': '2', '{sorted}o_a': 'A', '{sorted}o_b': 'B', '{sorted}o_c': 'C' });
      expect(await viaProxy.call('SORT', '{sorted}list', 'BY', '{sorted}w_*', 'GET', '{sorted}o_*', 'GET', '#')).toEqual(['B', 'b', 'C', 'c', 'A', 'a']);
      expect(await viaProxy.call('SORT', '{sorted}list', 'BY', '{sorted}w_*', 'STORE', '{sorted}dest')).toBe(3);
      expect(await viaProxy.lrange('{sorted}dest', 0, -1)).toEqual(['b', 'c', 'a']);
      // Patterns that may name keys on any shard: Redis Cluster's refusal, not a partial answer.
      expect(await errorOf(viaProxy.call('SORT', list!, 'BY', 'w_*'))).toBe('ERR BY option of SORT denied in Cluster mode when keys formed by the pattern may be in different slots.');
      expect(await errorOf(viaProxy.call('SORT', list!, 'GET', 'o_*'))).toBe('ERR GET option of SORT denied in Cluster mode when keys formed by the pattern may be in different slots.');
      expect(await errorOf(viaProxy.call('SORT', '{sorted}list', 'BY', '{other}w_*'))).toMatch(/^ERR BY option of SORT denied/);
      // Inside MULTI, refused as it is queued (EXEC then aborts, as for any refused command).
      const tx = await viaProxy.multi().call('SORT', list!, 'BY', 'w_*').exec().catch((err: Error) => err.message);
      expect(String(tx)).toMatch(/EXECABORT/);
      // STORE into another slot is a second key in another slot.
      expect(await errorOf(viaProxy.call('SORT', '{sorted}list', 'STORE', '{elsewhere}dest'))).toBe(CROSSSLOT);
    });
  });

  describe('all-or-nothing multi-key commands: one slot, else CROSSSLOT', () => {
    /** Each command with same-slot keys ({t}) to run; and keys across shards for the CROSSSLOT case. */
    const setup = (t: string): (string | number)[][] => [
      ['SADD', `{${t}}s1`, 'a', 'b', 'c'], ['SADD', `{${t}}s2`, 'b', 'c', 'd'],
      ['RPUSH', `{${t}}l1`, '1', '2', '3'],
      ['ZADD', `{${t}}z1`, 1, 'a', 2, 'b'], ['ZADD', `{${t}}z2`, 3, 'b', 4, 'c'],
      ['PFADD', `{${t}}h1`, 'x', 'y'], ['PFADD', `{${t}}h2`, 'y', 'z'],
      ['SET', `{${t}}str`, 'value'],
    ];
    const sameSlot = (t: string): (string | number)[][] => [
      ['MSETNX', `{${t}}n1`, '1', `{${t}}n2`, '2'], ['MSETNX', `{${t}}n1`, 'x', `{${t}}n3`, '3'], ['MGET', `{${t}}n1`, `{${t}}n2`, `{${t}}n3`],
      ['RENAME', `{${t}}str`, `{${t}}renamed`], ['GET', `{${t}}renamed`], ['RENAMENX', `{${t}}renamed`, `{${t}}n1`],
      ['SMOVE', `{${t}}s1`, `{${t}}s2`, 'a'], ['SMISMEMBER', `{${t}}s2`, 'a', 'b', 'c', 'd', 'e'],
      ['LMOVE', `{${t}}l1`, `{${t}}l2`, 'LEFT', 'RIGHT'], ['LRANGE', `{${t}}l2`, 0, -1], ['RPOPLPUSH', `{${t}}l1`, `{${t}}l2`],
      ['SINTERSTORE', `{${t}}inter`, `{${t}}s1`, `{${t}}s2`], ['SUNIONSTORE', `{${t}}union`, `{${t}}s1`, `{${t}}s2`], ['SINTERCARD', 2, `{${t}}s1`, `{${t}}s2`], ['SCARD', `{${t}}union`],
      ['ZUNIONSTORE', `{${t}}zu`, 2, `{${t}}z1`, `{${t}}z2`], ['ZRANGE', `{${t}}zu`, 0, -1, 'WITHSCORES'], ['ZINTERSTORE', `{${t}}zi`, 2, `{${t}}z1`, `{${t}}z2`],
      ['PFMERGE', `{${t}}hm`, `{${t}}h1`, `{${t}}h2`], ['PFCOUNT', `{${t}}hm`], ['PFCOUNT', `{${t}}h1`, `{${t}}h2`],
      ['COPY', `{${t}}renamed`, `{${t}}copy`], ['COPY', `{${t}}renamed`, `{${t}}copy`], ['GET', `{${t}}copy`],
    ];

    it('run as one Redis when every key shares a slot (on every shard)', async () => {
      await flushEverything();
      for (let shard = 0; shard < SHARD_COUNT; shard++) {
        const tag = keysOnShard(shard, 'tag', 1)[0]!;
        await expectSame([...setup(tag), ...sameSlot(tag)]);
        expect(await primaries[shard]!.exists(`{${tag}}copy`)).toBe(1);
      }
    });

    it('answer CROSSSLOT across slots and change nothing on any shard', async () => {
      await flushEverything();
      const [a, b] = [keysOnShard(0, 'x', 1)[0]!, keysOnShard(1, 'y', 1)[0]!];
      for (const command of [...setup(a), ...setup(b)]) await viaProxy.call(String(command[0]), ...command.slice(1));
      const before = await Promise.all(primaries.map((p) => p.dbsize()));
      const crossSlot: (string | number)[][] = [
        ['MSETNX', `{${a}}n1`, '1', `{${b}}n2`, '2'],
        ['RENAME', `{${a}}str`, `{${b}}renamed`],
        ['SMOVE', `{${a}}s1`, `{${b}}s2`, 'a'],
        ['LMOVE', `{${a}}l1`, `{${b}}l2`, 'LEFT', 'RIGHT'],
        ['SINTERSTORE', `{${a}}inter`, `{${a}}s1`, `{${b}}s2`],
        ['ZUNIONSTORE', `{${a}}zu`, 2, `{${a}}z1`, `{${b}}z2`],
        ['PFMERGE', `{${a}}hm`, `{${a}}h1`, `{${b}}h2`],
        ['COPY', `{${a}}str`, `{${b}}copy`],
        ['EVAL', "return redis.call('SET', KEYS[2], '1')", 2, `{${a}}str`, `{${b}}evalled`],
      ];
      for (const [name, ...args] of crossSlot) {
        expect(await errorOf(viaProxy.call(String(name), ...args)), String(name)).toBe(CROSSSLOT);
      }
      expect(await Promise.all(primaries.map((p) => p.dbsize()))).toEqual(before);
      expect(await viaProxy.smembers(`{${a}}s1`)).toHaveLength(3);
      expect(await viaProxy.exists(`{${b}}copy`, `{${b}}renamed`, `{${b}}n2`, `{${b}}evalled`)).toBe(0);
    });
  });

  describe('argument errors: answered as Redis answers them', () => {
    it('unknown subcommands, containers named alone, too few arguments', async () => {
      await expectSame([
        ['CONFIG', 'FOO'],
        ['OBJECT', 'NOPE', 'x'],
        ['MEMORY', 'NOPE'],
        ['SCRIPT', 'NOPE'],
        ['XINFO', 'NOPE', 'x'],
        ['CONFIG'],
        ['OBJECT'],
        ['XINFO'],
        ['SCAN'],
        ['EVAL', 'return 1'],
        ['EVALSHA', 'abc'],
        ['EVAL_RO', 'return 1'],
        ['CONFIG', 'SET', 'maxmemory'],
        ['CONFIG', 'SET'],
        ['GET'],
        ['SET', 'k'],
        ['MGET'],
        ['DEL'],
      ]);
    });
  });

  describe('CONFIG GET / CONFIG SET', () => {
    const everyNode = (): Redis[] => [...primaries, ...replicas];

    it('CONFIG SET of an allowed parameter applies to every node of every shard', async () => {
      expect(await viaProxy.config('SET', 'hash-max-listpack-entries', '77')).toBe('OK');
      for (const node of everyNode()) expect(await node.config('GET', 'hash-max-listpack-entries')).toEqual(['hash-max-listpack-entries', '77']);
      expect(await viaProxy.config('GET', 'hash-max-listpack-entries')).toEqual(['hash-max-listpack-entries', '77']);
      expect(await viaProxy.call('CONFIG', 'SET', 'slowlog-max-len', '99', 'notify-keyspace-events', 'KEA')).toBe('OK');
      for (const node of everyNode()) {
        expect(await node.config('GET', 'slowlog-max-len')).toEqual(['slowlog-max-len', '99']);
        expect(await node.config('GET', 'notify-keyspace-events')).toEqual(['notify-keyspace-events', 'AKE']);
      }
      // Back to the defaults for the rest of the file.
      expect(await viaProxy.call('CONFIG', 'SET', 'hash-max-listpack-entries', '128', 'slowlog-max-len', '128', 'notify-keyspace-events', '')).toBe('OK');
    });

    it.each(['port', 'bind', 'dir', 'dbfilename', 'replicaof', 'masterauth', 'requirepass', 'appendonly', 'save', 'cluster-enabled'])(
      'CONFIG SET %s is refused and no node changes',
      async (parameter) => {
        const before = await Promise.all(everyNode().map((node) => node.config('GET', parameter)));
        expect(await errorOf(viaProxy.call('CONFIG', 'SET', parameter, 'x'))).toBe(`ERR CONFIG SET parameter '${parameter}' is not allowed through slotproxy`);
        expect(await Promise.all(everyNode().map((node) => node.config('GET', parameter)))).toEqual(before);
      },
    );

    it('a refused parameter beside an allowed one refuses the whole CONFIG SET', async () => {
      expect(await errorOf(viaProxy.call('CONFIG', 'SET', 'hz', '20', 'dir', '/tmp'))).toBe("ERR CONFIG SET parameter 'dir' is not allowed through slotproxy");
      for (const node of everyNode()) expect(await node.config('GET', 'hz')).toEqual(['hz', '10']);
    });

    it('a value every node rejects is answered with an error naming the nodes', async () => {
      const message = await errorOf(viaProxy.call('CONFIG', 'SET', 'maxmemory-policy', 'no-such-policy'));
      expect(message).toMatch(/^ERR CONFIG SET refused by /);
      for (const node of [...shards.primaries, ...shards.replicas.flat()]) expect(message).toContain(`${node.host}:${node.port}`);
    });

    it('CONFIG RESETSTAT is broadcast', async () => {
      expect(await viaProxy.config('RESETSTAT')).toBe('OK');
    });
  });

  describe('INFO', () => {
    it('has a # Proxy section, the server sections, and a # Keyspace summed over the shards', async () => {
      await flushEverything();
      const keys = keysOnEveryShard('info:', 7);
      await viaProxy.mset(Object.fromEntries(keys.map((k) => [k, '1'])));
      await viaProxy.expire(keys[0]!, 1000);
      await viaProxy.expire(keys[1]!, 1000);
      const sizes = await Promise.all(primaries.map((p) => p.dbsize()));
      const info = await viaProxy.info();
      expect(info).toMatch(/^# Proxy\r\n/);
      expect(info).toMatch(/\r\nshards:3\r\n/);
      expect(info).toMatch(/\r\nworkers:1\r\n/);
      for (const section of ['Server', 'Clients', 'Memory', 'Stats', 'Replication', 'Keyspace']) expect(info).toContain(`# ${section}\r\n`);
      const keyspace = /# Keyspace\r\ndb0:keys=(\d+),expires=(\d+),avg_ttl=\d+\r\n/.exec(info);
      expect(keyspace, info.slice(info.indexOf('# Keyspace'))).not.toBeNull();
      expect(Number(keyspace![1])).toBe(sizes.reduce((a, b) => a + b, 0));
      expect(Number(keyspace![1])).toBe(keys.length);
      expect(Number(keyspace![2])).toBe(2);
      // One section alone, as one Redis answers it.
      expect(await viaProxy.info('keyspace')).toMatch(new RegExp(`^# Keyspace\\r\\ndb0:keys=${keys.length},expires=2,avg_ttl=\\d+\\r\\n$`));
      expect(await viaProxy.info('proxy')).toMatch(/^# Proxy\r\nslotproxy_version:/);
      expect(await viaProxy.info('server')).toMatch(/^# Server\r\nredis_version:7\./);
      expect(await runRedisCli(proxy.port, ['INFO', 'keyspace'])).toMatch(new RegExp(`db0:keys=${keys.length},`));
    });

    it('is one server\'s: counters added up over the shards, the clients the proxy\'s, a primary without replicas, cluster enabled', async () => {
      const field = (info: string, name: string): string | undefined => new RegExp(`(?:^|\\r\\n)${name}:([^\\r]*)`).exec(info)?.[1];
      await flushEverything();
      expect(await viaProxy.call('CONFIG', 'RESETSTAT')).toBe('OK');
      const keys = keysOnEveryShard('info-merge:', 12);
      for (const key of keys) await viaProxy.set(key, 'v');
      const missing = keysOnEveryShard('info-miss:', 9);
      for (const key of missing) expect(await viaProxy.get(key)).toBeNull();
      // Commandstats and Stats: the deployment's counts, not the first shard's.
      const everything = await viaProxy.info('everything');
      expect(everything).toMatch(new RegExp(`\\r\\ncmdstat_set:calls=${keys.length},usec=\\d+,usec_per_call=\\d+\\.\\d\\d,`));
      expect(field(everything, 'keyspace_misses')).toBe(String(missing.length));
      expect(field(everything, 'cluster_enabled')).toBe('1');
      // Memory: limits of 100, 200 and 300 MB are 600 MB; one shard without a limit is no limit.
      const limits = [100, 200, 300].map((mb) => mb * 1024 * 1024);
      try {
        await Promise.all(primaries.map((p, i) => p.config('SET', 'maxmemory', String(limits[i]))));
        const memory = await viaProxy.info('memory');
        expect(field(memory, 'maxmemory')).toBe(String(600 * 1024 * 1024));
        expect(field(memory, 'maxmemory_human')).toBe('600.00M');
        const used = await Promise.all(primaries.map(async (p) => Number(field(await p.info('memory'), 'used_memory'))));
        const total = used.reduce((a, b) => a + b, 0);
        // Allocations move a little between the reads.
        expect(Math.abs(Number(field(memory, 'used_memory')) - total) / total).toBeLessThan(0.1);
        await primaries[1]!.config('SET', 'maxmemory', '0');
        expect(field(await viaProxy.info('memory'), 'maxmemory')).toBe('0');
      } finally {
        await Promise.all(primaries.map((p) => p.config('SET', 'maxmemory', '0')));
      }
      // Clients: the proxy's own, as its Proxy section counts them.
      const extra = [connect(proxy), connect(proxy), connect(proxy)];
      try {
        await Promise.all(extra.map((c) => c.ping()));
        const info = await viaProxy.info();
        expect(field(info, 'connected_clients')).toBe(field(await viaProxy.info('proxy'), 'connected_clients'));
        expect(Number(field(await viaProxy.info('clients'), 'connected_clients'))).toBeGreaterThanOrEqual(4);
        // The server the client talks to: the proxy's port; a primary without replicas, as ROLE says.
        expect(field(info, 'tcp_port')).toBe(String(proxy.port));
        expect(field(info, 'role')).toBe('master');
        expect(field(info, 'connected_slaves')).toBe('0');
        expect(info).not.toMatch(/\r\nslave\d+:/);
        expect(await primaries[0]!.info('replication')).toMatch(/\r\nslave0:/);
      } finally {
        for (const c of extra) c.disconnect();
      }
      // redis-cli's cluster tooling takes the proxy for a one-node cluster covering every slot.
      const check = await runRedisCli(proxy.port, ['--cluster', 'check', `127.0.0.1:${proxy.port}`]);
      expect(check).toContain('[OK] All 16384 slots covered');
    });
  });

  describe('CLUSTER: one node owning all 16384 slots at the proxy\'s address', () => {
    it('CLUSTER MYID, SLOTS, SHARDS, NODES and INFO agree with each other', async () => {
      const id = (await viaProxy.call('CLUSTER', 'MYID')) as string;
      expect(id).toMatch(/^[0-9a-f]{40}$/);
      const slots = (await viaProxy.call('CLUSTER', 'SLOTS')) as unknown[];
      expect(slots).toEqual([[0, 16383, ['127.0.0.1', proxy.port, id, []]]]);
      const shardsReply = (await viaProxy.call('CLUSTER', 'SHARDS')) as unknown[][];
      expect(shardsReply).toHaveLength(1);
      const [slotsLabel, slotRanges, nodesLabel, nodes] = shardsReply[0]!;
      expect([slotsLabel, slotRanges, nodesLabel]).toEqual(['slots', [0, 16383], 'nodes']);
      const node = nodes as unknown[][];
      expect(node).toHaveLength(1);
      const fields = Object.fromEntries(Array.from({ length: node[0]!.length / 2 }, (_, i) => [node[0]![2 * i], node[0]![2 * i + 1]]));
      expect(fields).toMatchObject({ id, port: proxy.port, ip: '127.0.0.1', role: 'master', health: 'online' });
      const nodesText = (await viaProxy.call('CLUSTER', 'NODES')) as string;
      expect(nodesText).toBe(`${id} 127.0.0.1:${proxy.port}@${proxy.port + 10000} myself,master - 0 0 1 connected 0-16383\n`);
      const info = (await viaProxy.call('CLUSTER', 'INFO')) as string;
      for (const line of ['cluster_enabled:1', 'cluster_state:ok', 'cluster_slots_assigned:16384', 'cluster_slots_ok:16384', 'cluster_known_nodes:1', 'cluster_size:1']) {
        expect(info).toContain(`${line}\r\n`);
      }
    });

    it('CLUSTER KEYSLOT is the slot Redis Cluster computes (hash tags included)', async () => {
      for (const key of ['foo', 'bar', '{user1}.a', 'a{user1}', '{}x', 'foo{}{bar}', '{x', 'x}{y}', '', 'héllo']) {
        expect(await viaProxy.call('CLUSTER', 'KEYSLOT', key), JSON.stringify(key)).toBe(keySlotOf(key));
      }
      expect(await errorOf(viaProxy.call('CLUSTER', 'KEYSLOT'))).toMatch(/^ERR wrong number of arguments/);
    });
  });

  describe('connection state stays the client\'s own', () => {
    it('SCRIPT DEBUG from one client does not put other clients\' EVAL into the Lua debugger', async () => {
      // Its own proxy, so that a shared backend connection left in debug mode cannot spoil the tests above.
      const own = await startProxyProcess({
        shards: shards.primaries.map((primary, i) => ({ name: `s${i + 1}`, primary })),
        extra: { connectTimeoutMs: 1_000 },
      });
      const debugger_ = connect(own);
      const other = connect(own);
      try {
        // SCRIPT DEBUG is answered by "any shard": ask often enough to reach every shard.
        const answers = await Promise.all(Array.from({ length: SHARD_COUNT }, () => outcome(debugger_.call('SCRIPT', 'DEBUG', 'YES'))));
        const evals = await Promise.all(
          keysOnEveryShard('debug:', 1).map((key) => outcome(Promise.race([other.eval('return KEYS[1]', 1, key), sleep(2_000).then(() => 'timed out')]))),
        );
        expect(answers).toHaveLength(SHARD_COUNT);
        expect(evals, 'EVAL replies of a client that never asked for the debugger').toEqual(keysOnEveryShard('debug:', 1));
      } finally {
        debugger_.disconnect();
        other.disconnect();
        await own.stop();
      }
    });
  });
});

/** The refusal reason the command table gives `name` (`name|sub` for a subcommand). */
function noteOf(fullName: string): string {
  const [name, sub] = fullName.split('|') as [string, string | undefined];
  const spec = sub === undefined ? lookupCommand(name) : lookupCommand(name)?.subcommands?.get(sub);
  return spec?.note ?? `(${fullName} is not in the command table)`;
}

/**
 * redis-server's keyHashSlot (cluster.c), written out bit by bit here so the test does not lean
 * on the proxy's own table-driven version: CRC16-XMODEM of the key, or of the text between the
 * first '{' and the first '}' after it when that text is not empty.
 */
function keySlotOf(key: string): number {
  const bytes = Buffer.from(key);
  let part = bytes;
  const open = bytes.indexOf(0x7b);
  if (open >= 0) {
    const close = bytes.indexOf(0x7d, open + 1);
    if (close > open + 1) part = bytes.subarray(open + 1, close);
  }
  let crc = 0;
  for (const byte of part) {
    crc ^= byte << 8;
    for (let bit = 0; bit < 8; bit++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc % 16384;
}
