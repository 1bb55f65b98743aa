import * as net from 'node:net';
import type Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SHARD_COUNT, connect, keysOnShard, onePerShard, ownerOf, startDeployment, type Deployment } from '../helpers/deployment';
import { countReplies, encodeCommand, rawCommands, type ProxyProcess } from '../helpers/proxy-harness';
import type { SingleRedis } from '../helpers/redis-harness';

/**
 * Issue 6, the commands that change the state of their connection: MULTI / EXEC / DISCARD /
 * WATCH, blocking commands and WAIT, Pub/Sub. Through `dist/cli.js start` over 3 shards with a
 * replica each, compared with one direct redis-server, byte for byte where the reply is
 * deterministic. Tests run in file order and share the servers.
 */

const CROSSSLOT = "CROSSSLOT Keys in request don't hash to the same slot";
/** A blocked client must not slow anyone else down by more than this. */
const LATENCY_BOUND_MS = 50;

let deployment: Deployment;
let single: SingleRedis;
let proxy: ProxyProcess;
let viaProxy: Redis;
let direct: Redis;
let primaries: readonly Redis[] = [];

type Command = readonly (string | number)[];

const flushEverything = (): Promise<void> => deployment.flushEverything();

/** Sends the commands in one write to the proxy and to the direct Redis; both raw replies. */
async function rawBoth(commands: readonly Command[]): Promise<{ proxy: string; direct: string }> {
  const [p, d] = await Promise.all([rawCommands(proxy.port, commands), rawCommands(single.redis.port, commands)]);
  return { proxy: p.data.toString('latin1'), direct: d.data.toString('latin1') };
}

async function errorOf(promise: Promise<unknown>): Promise<string> {
  try {
    return `(no error; resolved to ${JSON.stringify(await promise)})`;
  } catch (err) {
    return (err as Error).message;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` every 10 ms until it holds; false after `timeoutMs`. */
async function eventually(check: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() >= deadline) return false;
    await sleep(10);
  }
}

/** Connections of `node` that are blocked in `command` (CLIENT LIST: flags contain b). */
async function blockedIn(node: Redis, command: string): Promise<number> {
  const list = (await node.call('CLIENT', 'LIST')) as string;
  return list.split('\n').filter((line) => line.includes(` cmd=${command} `) && /\bflags=\w*b/.test(line)).length;
}

async function waitBlocked(node: Redis, command: string, count = 1): Promise<void> {
  if (!(await eventually(async () => (await blockedIn(node, command)) >= count, 2_000))) {
    throw new Error(`no connection blocked in ${command} on port ${node.options.port} within 2 s`);
  }
}

/**
 * A raw RESP connection that stays open: send commands at any time, collect every byte, wait
 * for a number of complete replies (push messages count as replies).
 */
class RawConnection {
  readonly #socket: net.Socket;
  #data = Buffer.alloc(0);

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#data = Buffer.concat([this.#data, chunk]);
    });
    socket.on('error', () => undefined);
  }

  static open(port: number): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port });
      socket.setNoDelay(true);
      socket.once('connect', () => resolve(new RawConnection(socket)));
      socket.once('error', reject);
    });
  }

  /** Every byte received so far, as latin1 so that a failed comparison shows each byte. */
  get text(): string {
    return this.#data.toString('latin1');
  }

  get replyCount(): number {
    return countReplies(this.#data);
  }

  send(...commands: Command[]): void {
    this.#socket.write(Buffer.concat(commands.map((command) => encodeCommand(command))));
  }

  /** Waits until `count` complete replies are in; throws with what came when they do not. */
  async waitForReplies(count: number, timeoutMs = 2_000): Promise<void> {
    if (!(await eventually(async () => countReplies(this.#data) >= count, timeoutMs))) {
      throw new Error(`${countReplies(this.#data)} of ${count} replies within ${timeoutMs} ms: ${JSON.stringify(this.text.slice(-400))}`);
    }
  }

  close(): void {
    this.#socket.destroy();
  }
}

/** The same Pub/Sub conversation with a raw subscriber on the proxy and one on the direct Redis. */
interface SubscriberPair {
  readonly proxy: RawConnection;
  readonly direct: RawConnection;
}

async function openSubscribers(): Promise<SubscriberPair> {
  return { proxy: await RawConnection.open(proxy.port), direct: await RawConnection.open(single.redis.port) };
}

/** Sends to both and waits until both have `count` replies in all. */
async function sendBoth(pair: SubscriberPair, count: number, ...commands: Command[]): Promise<void> {
  pair.proxy.send(...commands);
  pair.direct.send(...commands);
  await Promise.all([pair.proxy.waitForReplies(count), pair.direct.waitForReplies(count)]);
}

/**
 * PUBLISH (or SPUBLISH) through the proxy and on the direct Redis, one message at a time: each
 * waits until both subscribers got it, so the order of messages from different shards is fixed.
 * Returns PUBLISH's replies (receivers) from both sides.
 */
async function publishBoth(pair: SubscriberPair, publishes: readonly Command[], messagesEach = 1): Promise<{ proxy: unknown[]; direct: unknown[] }> {
  const receivers = { proxy: [] as unknown[], direct: [] as unknown[] };
  for (const [name, ...args] of publishes) {
    const [proxyBefore, directBefore] = [pair.proxy.replyCount, pair.direct.replyCount];
    receivers.proxy.push(await viaProxy.call(String(name), ...args));
    receivers.direct.push(await direct.call(String(name), ...args));
    await Promise.all([pair.proxy.waitForReplies(proxyBefore + messagesEach), pair.direct.waitForReplies(directBefore + messagesEach)]);
  }
  return receivers;
}

describe('transactions, blocking commands and Pub/Sub through slotproxy (issue 6)', () => {
  beforeAll(async () => {
    deployment = await startDeployment();
    ({ single, proxy, viaProxy, direct, primaries } = deployment);
  }, 40_000);

  afterAll(() => deployment?.stop(), 30_000);

  describe('MULTI / EXEC / DISCARD', () => {
    it('a same-slot transaction (hash tags) answers byte for byte as one Redis, on every shard', async () => {
      await flushEverything();
      for (const tag of onePerShard('tx')) {
        const { proxy: p, direct: d } = await rawBoth([
          ['MULTI'],
          ['SET', `{${tag}}a`, '1'],
          ['INCR', `{${tag}}a`],
          ['LPUSH', `{${tag}}l`, 'x', 'y'],
          ['LRANGE', `{${tag}}l`, 0, -1],
          ['GET', `{${tag}}a`],
          ['PING'],
          ['ECHO', 'in a transaction'],
          ['INCR', `{${tag}}l`],
          ['EXEC'],
          ['GET', `{${tag}}a`],
        ]);
        expect(p, tag).toBe(d);
        expect(await primaries[ownerOf(tag)]!.get(`{${tag}}a`)).toBe('2');
      }
    });

    it('ioredis multi() ... exec() gives the same results as on one Redis', async () => {
      await flushEverything();
      const [tag] = onePerShard('iotx');
      const run = (client: Redis): Promise<[Error | null, unknown][] | null> =>
        client.multi().set(`{${tag}}k`, 'v').append(`{${tag}}k`, '2').get(`{${tag}}k`).hset(`{${tag}}h`, 'f', '1').hgetall(`{${tag}}h`).exec();
      expect(await run(viaProxy)).toEqual(await run(direct));
    });

    it('a command for another slot inside MULTI is answered CROSSSLOT and EXEC answers EXECABORT; nothing ran', async () => {
      await flushEverything();
      const [a, b] = onePerShard('xs');
      const { data } = await rawCommands(proxy.port, [['MULTI'], ['SET', `{${a}}k`, '1'], ['SET', `{${b}}k`, '2'], ['EXEC'], ['EXISTS', `{${a}}k`]]);
      expect(data.toString('latin1')).toBe(
        `+OK\r\n+QUEUED\r\n-${CROSSSLOT}\r\n-EXECABORT Transaction discarded because of previous errors.\r\n:0\r\n`,
      );
      expect(await primaries[ownerOf(a!)]!.exists(`{${a}}k`)).toBe(0);
      // ioredis sees the same: exec() rejects with EXECABORT.
      expect(await errorOf(viaProxy.multi().set(`{${a}}k`, '1').set(`{${b}}k`, '2').exec())).toMatch(/EXECABORT/);
    });

    it('DISCARD drops the queue; MULTI / EXEC / DISCARD misuse errors are Redis\'s', async () => {
      await flushEverything();
      const [tag] = onePerShard('discard');
      const { proxy: p, direct: d } = await rawBoth([
        ['MULTI'],
        ['SET', `{${tag}}k`, '1'],
        ['DISCARD'],
        ['GET', `{${tag}}k`],
        ['DISCARD'],
        ['EXEC'],
        ['MULTI'],
        ['MULTI'],
        ['EXEC'],
        ['MULTI'],
        ['GET'],
        ['EXEC'],
        ['MULTI'],
        ['NOSUCHCOMMAND'],
        ['EXEC'],
      ]);
      expect(p).toBe(d);
    });

    it('pipelined transactions: several MULTI blocks on different shards in one write answer as one Redis', async () => {
      await flushEverything();
      const commands: Command[] = [];
      for (const [i, tag] of [...onePerShard('pipe'), ...onePerShard('pipe2')].entries()) {
        commands.push(['SET', `{${tag}}before`, i], ['MULTI'], ['INCR', `{${tag}}n`], ['INCRBY', `{${tag}}n`, i], ['GET', `{${tag}}before`], ['EXEC'], ['GET', `{${tag}}n`]);
      }
      const { proxy: p, direct: d } = await rawBoth(commands);
      expect(p).toBe(d);
      // And the same through ioredis, as a pipeline holding transactions.
      const tags = onePerShard('pipe3');
      const run = async (client: Redis): Promise<unknown> => {
        const pipeline = client.pipeline();
        for (const tag of tags) pipeline.call('MULTI').incr(`{${tag}}c`).incr(`{${tag}}c`).call('EXEC');
        return (await pipeline.exec())!.map(([err, reply]) => (err === null ? reply : err.message));
      };
      expect(await run(viaProxy)).toEqual(await run(direct));
    });
  });

  describe('WATCH / UNWATCH', () => {
    /** WATCH on `watcher`, a write by `other` when `modify`, then the transaction: EXEC's reply. */
    async function watchScenario(watcher: Redis, other: Redis, key: string, modify: 'none' | 'before-multi' | 'after-unwatch'): Promise<unknown> {
      await other.set(key, 'start');
      expect(await watcher.watch(key)).toBe('OK');
      if (modify === 'after-unwatch') expect(await watcher.unwatch()).toBe('OK');
      if (modify !== 'none') await other.set(key, 'changed by another client');
      return watcher.multi().set(key, 'from the transaction').get(key).exec();
    }

    it.each(['none', 'before-multi', 'after-unwatch'] as const)('modification %s: EXEC answers as one Redis (null when a watched key changed)', async (modify) => {
      await flushEverything();
      for (const tag of onePerShard(`watch-${modify}-`)) {
        const key = `{${tag}}w`;
        const [pw, po, dw, dOther] = [connect(proxy), connect(proxy), connect(single.redis, 2), connect(single.redis, 2)];
        try {
          const viaProxyResult = await watchScenario(pw, po, key, modify);
          const directResult = await watchScenario(dw, dOther, key, modify);
          expect(viaProxyResult, `${modify} on ${key}`).toEqual(directResult);
          expect(viaProxyResult === null).toBe(modify === 'before-multi');
          expect(await viaProxy.get(key)).toBe(await direct.get(key));
        } finally {
          for (const client of [pw, po, dw, dOther]) client.disconnect();
        }
      }
    });

    it('WATCH of keys in two slots is answered CROSSSLOT', async () => {
      const [a, b] = onePerShard('wx');
      expect(await errorOf(viaProxy.watch(`{${a}}k`, `{${b}}k`))).toBe(CROSSSLOT);
    });
  });

  describe('blocking commands on a connection of the client\'s own', () => {
    it('a client blocked in BLPOP delays no one (< 50 ms per command); LPUSH from another client unblocks it with the value', async () => {
      await flushEverything();
      const key = keysOnShard(1, 'queue', 1)[0]!;
      const blocked = connect(proxy);
      const pusher = connect(proxy);
      try {
        const popped = blocked.blpop(key, 0);
        await waitBlocked(primaries[1]!, 'blpop');
        // Other clients on every shard, with single and fan-out commands, keep their normal latency.
        const others = onePerShard('lat');
        let slowest = 0;
        for (let i = 0; i < 150; i++) {
          const started = performance.now();
          if (i % 3 === 0) await viaProxy.mget(...others);
          else await viaProxy.set(others[i % SHARD_COUNT]!, String(i));
          slowest = Math.max(slowest, performance.now() - started);
        }
        expect(slowest, `slowest command while a client is blocked (ms)`).toBeLessThan(LATENCY_BOUND_MS);
        // Also a command on the very shard and list the blocked client waits on.
        expect(await viaProxy.llen(key)).toBe(0);
        expect(await pusher.lpush(key, 'the value')).toBe(1);
        expect(await popped).toEqual([key, 'the value']);
        expect(await viaProxy.llen(key)).toBe(0);
      } finally {
        blocked.disconnect();
        pusher.disconnect();
      }
    });

    it('a blocked client that disconnects releases its backend connection within 1 s (and pops nothing after)', async () => {
      await flushEverything();
      const key = keysOnShard(2, 'gone', 1)[0]!;
      const shard = primaries[2]!;
      const before = await blockedIn(shard, 'blpop');
      const leaving = connect(proxy);
      leaving.blpop(key, 0).catch(() => undefined);
      await waitBlocked(shard, 'blpop', before + 1);
      const disconnected = Date.now();
      leaving.disconnect();
      const isReleased = await eventually(async () => (await blockedIn(shard, 'blpop')) === before, 1_000);
      expect(isReleased, `backend connection still blocked ${Date.now() - disconnected} ms after the client left`).toBe(true);
      // A value pushed now stays: no orphaned BLPOP takes it.
      expect(await viaProxy.lpush(key, 'kept')).toBe(1);
      await sleep(50);
      expect(await viaProxy.lrange(key, 0, -1)).toEqual(['kept']);
    });

    /**
     * One blocking command of each kind on `client` (through the proxy or direct), each released
     * by `pusher` once the server shows it blocked on `node`. Returns what each returned.
     */
    async function blockingScenario(client: Redis, pusher: Redis, node: Redis, tag: string): Promise<unknown[]> {
      const k = (name: string): string => `{${tag}}${name}`;
      const results: unknown[] = [];
      const release = async <T>(pending: Promise<T>, command: string, push: () => Promise<unknown>): Promise<void> => {
        await waitBlocked(node, command);
        await push();
        results.push(await pending);
      };
      await release(client.brpoplpush(k('src'), k('dst'), 5), 'brpoplpush', () => pusher.rpush(k('src'), 'one', 'two'));
      await release(client.blmove(k('empty'), k('dst'), 'LEFT', 'LEFT', 5), 'blmove', () => pusher.rpush(k('empty'), 'three'));
      results.push(await pusher.lrange(k('dst'), 0, -1));
      await release(client.bzpopmin(k('z'), 5), 'bzpopmin', () => pusher.zadd(k('z'), 2, 'b', 1, 'a'));
      await release(client.bzpopmax(k('z2'), 5), 'bzpopmax', () => pusher.zadd(k('z2'), 7, 'seven'));
      await release(client.blmpop(5, 2, k('l1'), k('l2'), 'RIGHT', 'COUNT', 2), 'blmpop', () => pusher.rpush(k('l2'), 'a', 'b', 'c'));
      await release(client.xread('BLOCK', 5_000, 'STREAMS', k('x'), '$'), 'xread', () => pusher.xadd(k('x'), '5-1', 'f', 'v'));
      await pusher.xgroup('CREATE', k('x'), 'g', '$');
      await release(client.xreadgroup('GROUP', 'g', 'c1', 'BLOCK', 5_000, 'STREAMS', k('x'), '>'), 'xreadgroup', () => pusher.xadd(k('x'), '6-1', 'g', 'w'));
      // Not blocking when there is data; nil on timeout.
      results.push(await client.brpop(k('l2'), 1));
      results.push(await client.blpop(k('nothing'), 0.05));
      results.push(await client.xread('BLOCK', 50, 'STREAMS', k('x'), '$'));
      return results;
    }

    it('BRPOPLPUSH / BLMOVE / BZPOPMIN / BZPOPMAX / BLMPOP / XREAD BLOCK / XREADGROUP BLOCK answer as on one Redis', async () => {
      await flushEverything();
      for (const tag of onePerShard('blk')) {
        const [pc, pp, dc, dp] = [connect(proxy), connect(proxy), connect(single.redis, 2), connect(single.redis, 2)];
        try {
          const viaProxyResults = await blockingScenario(pc, pp, primaries[ownerOf(tag)]!, tag);
          const directResults = await blockingScenario(dc, dp, direct, tag);
          expect(viaProxyResults, tag).toEqual(directResults);
          expect(viaProxyResults[0]).toBe('two');
        } finally {
          for (const client of [pc, pp, dc, dp]) client.disconnect();
        }
      }
    });

    it('a blocking command sees the writes its client pipelined just before it (XADD then XREAD BLOCK from 0-0)', async () => {
      await flushEverything();
      const ROUNDS = 20;
      /**
       * Writes queued ahead on the same shard (3,000 x 1 kB): more than the socket buffers hold,
       * so the shared backend connection has a backlog when the XADD and the XREAD arrive.
       */
      const BACKLOG = 3_000;
      const filler = 'x'.repeat(1_000);
      const client = await RawConnection.open(proxy.port);
      try {
        let replies = 0;
        const missed: number[] = [];
        for (let round = 0; round < ROUNDS; round++) {
          const stream = `{order}stream${round}`;
          client.send(['XADD', stream, '1-1', 'f', 'old']);
          await client.waitForReplies(++replies);
          const backlog: Command[] = Array.from({ length: BACKLOG }, (_, i) => ['SET', `{order}fill${i}`, filler]);
          client.send(...backlog, ['XADD', stream, '2-1', 'f', 'new'], ['XREAD', 'COUNT', 10, 'BLOCK', 2_000, 'STREAMS', stream, '0-0']);
          replies += BACKLOG + 2;
          await client.waitForReplies(replies, 5_000);
          if (!client.text.endsWith('$3\r\nnew\r\n')) missed.push(round);
        }
        // One Redis always answers both entries: the XADD ran before the XREAD on its one connection.
        expect(missed, `rounds (of ${ROUNDS}) whose XREAD BLOCK did not see the XADD sent just before it`).toEqual([]);
      } finally {
        client.close();
      }
    }, 30_000);

    it('a blocking command with keys in two slots is answered CROSSSLOT', async () => {
      const [a, b] = onePerShard('bx');
      expect(await errorOf(viaProxy.blpop(`{${a}}k`, `{${b}}k`, 1))).toBe(CROSSSLOT);
    });

    it('WAIT 0 0 answers an integer; WAIT 1 after a write sees each shard\'s replica', async () => {
      const zero = await viaProxy.wait(0, 0);
      expect(Number.isInteger(zero)).toBe(true);
      expect(zero).toBeGreaterThanOrEqual(0);
      await viaProxy.mset(Object.fromEntries(onePerShard('waited').map((k) => [k, '1'])));
      expect(await viaProxy.wait(1, 5_000)).toBe(1);
      expect(await viaProxy.ping()).toBe('PONG');
    });
  });

  describe('Pub/Sub across shards', () => {
    it('SUBSCRIBE to channels on every shard: each PUBLISH through the proxy arrives once, framed byte for byte as redis-server frames it', async () => {
      const channels = [...onePerShard('news.'), ...onePerShard('sport.')];
      const pair = await openSubscribers();
      try {
        await sendBoth(pair, channels.length, ['SUBSCRIBE', ...channels]);
        const payloads = ['hello', '', 'x'.repeat(20_000), 'bin\r\n\u0000\u00ff', 'é'];
        const publishes = channels.flatMap((channel, i) => payloads.slice(0, i === 0 ? payloads.length : 1).map((payload): Command => ['PUBLISH', channel, payload]));
        const receivers = await publishBoth(pair, publishes);
        expect(receivers.proxy).toEqual(receivers.direct);
        expect(receivers.proxy.every((n) => n === 1)).toBe(true);
        // Nothing more arrives: every message exactly once.
        await sleep(100);
        expect(pair.proxy.replyCount).toBe(channels.length + publishes.length);
        expect(pair.proxy.text).toBe(pair.direct.text);
      } finally {
        pair.proxy.close();
        pair.direct.close();
      }
    });

    it('PSUBSCRIBE sees messages for channels on all shards (and a channel matching both kinds twice, as Redis sends)', async () => {
      const channels = onePerShard('ps.');
      const pair = await openSubscribers();
      try {
        await sendBoth(pair, 3, ['PSUBSCRIBE', 'ps.*', 'nomatch.*'], ['SUBSCRIBE', channels[1]!]);
        await publishBoth(pair, channels.map((channel): Command => ['PUBLISH', channel, `to ${channel}`]).filter((_, i) => i !== 1));
        await publishBoth(pair, [['PUBLISH', channels[1]!, 'both kinds']], 2);
        await sleep(100);
        expect(pair.proxy.replyCount).toBe(3 + 2 + 2);
        expect(pair.proxy.text).toBe(pair.direct.text);
      } finally {
        pair.proxy.close();
        pair.direct.close();
      }
    });

    it('UNSUBSCRIBE / PUNSUBSCRIBE counts, PUBSUB CHANNELS / NUMSUB / NUMPAT answer as one Redis', async () => {
      const channels = onePerShard('count.');
      const pair = await openSubscribers();
      try {
        await sendBoth(pair, 5, ['SUBSCRIBE', ...channels], ['PSUBSCRIBE', 'count.*', 'other.*']);
        const [numsub, numpat, listed] = await Promise.all([
          Promise.all([viaProxy.call('PUBSUB', 'NUMSUB', ...channels, 'nobody'), direct.call('PUBSUB', 'NUMSUB', ...channels, 'nobody')]),
          Promise.all([viaProxy.call('PUBSUB', 'NUMPAT'), direct.call('PUBSUB', 'NUMPAT')]),
          Promise.all([viaProxy.call('PUBSUB', 'CHANNELS', 'count.*'), direct.call('PUBSUB', 'CHANNELS', 'count.*')]),
        ]);
        expect(numsub[0]).toEqual(numsub[1]);
        expect(numpat[0]).toEqual(numpat[1]);
        expect((listed[0] as string[]).sort()).toEqual((listed[1] as string[]).sort());
        // Subscribing again to a channel already held changes no count.
        await sendBoth(pair, 5 + 2, ['SUBSCRIBE', channels[0]!], ['PSUBSCRIBE', 'count.*']);
        await sendBoth(pair, 7 + 4, ['UNSUBSCRIBE', channels[0]!, 'never-subscribed'], ['PUNSUBSCRIBE', 'other.*'], ['UNSUBSCRIBE', channels[2]!]);
        await sendBoth(pair, 11 + 2, ['UNSUBSCRIBE', channels[1]!], ['PUNSUBSCRIBE', 'count.*']);
        // No subscription left: UNSUBSCRIBE without arguments answers the nil form; the client is out of subscribed mode.
        await sendBoth(pair, 13 + 3, ['UNSUBSCRIBE'], ['PUNSUBSCRIBE'], ['SET', 'after-unsubscribe', '1']);
        expect(pair.proxy.text).toBe(pair.direct.text);
      } finally {
        pair.proxy.close();
        pair.direct.close();
      }
    });

    it('a client that leaves Pub/Sub mode gives its connections to the shards back, and can subscribe again', async () => {
      const channels = onePerShard('leave.');
      /** Connections each primary has, as its CLIENT LIST counts them (the probe's own included). */
      const connectionsPerShard = (): Promise<number[]> =>
        Promise.all(primaries.map(async (p) => ((await p.call('CLIENT', 'LIST')) as string).trim().split('\n').length));
      // The proxy's shared connections to every shard are open (they are opened on first use).
      await viaProxy.dbsize();
      const before = await connectionsPerShard();
      const pair = await openSubscribers();
      try {
        await sendBoth(pair, channels.length + 1, ['SUBSCRIBE', ...channels], ['PSUBSCRIBE', 'leave.*']);
        expect(await connectionsPerShard()).toEqual(before.map((n) => n + 1));
        await sendBoth(pair, channels.length + 1 + channels.length + 1 + 1, ['UNSUBSCRIBE'], ['PUNSUBSCRIBE'], ['SET', 'left-pubsub', '1']);
        // (The order UNSUBSCRIBE with no names lists the channels in is redis-server's dict order, not compared.)
        expect(pair.proxy.text.endsWith(':0\r\n+OK\r\n')).toBe(true);
        // Without this, every client that ever subscribed kept one idle connection per shard.
        expect(await eventually(async () => JSON.stringify(await connectionsPerShard()) === JSON.stringify(before), 2_000), 'connections given back').toBe(true);
        // Subscribed again: a new session, messages from every shard arrive.
        const subscribed = pair.proxy.replyCount;
        pair.proxy.send(['SUBSCRIBE', ...channels]);
        await pair.proxy.waitForReplies(subscribed + channels.length);
        for (const channel of channels) expect(await viaProxy.publish(channel, 'again')).toBe(1);
        await pair.proxy.waitForReplies(subscribed + 2 * channels.length);
        expect(pair.proxy.text.slice(-200)).toContain('again');
      } finally {
        pair.proxy.close();
        pair.direct.close();
      }
    });

    it('in subscribed mode only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET run, with redis-server\'s error text', async () => {
      const [channel] = onePerShard('mode.');
      const pair = await openSubscribers();
      try {
        await sendBoth(pair, 1, ['SUBSCRIBE', channel!]);
        await sendBoth(pair, 1 + 6, ['GET', 'k'], ['SET', 'k', 'v'], ['PING'], ['PING', 'payload'], ['CLIENT', 'ID'], ['MULTI']);
        expect(pair.proxy.text).toBe(pair.direct.text);
        await sendBoth(pair, 7 + 2, ['RESET'], ['GET', 'never-set']);
        expect(pair.proxy.text).toBe(pair.direct.text);
      } finally {
        pair.proxy.close();
        pair.direct.close();
      }
    });

    it('in subscribed mode, unknown commands and wrong arity are answered as redis-server answers them', async () => {
      const [channel] = onePerShard('mode2.');
      const pair = await openSubscribers();
      try {
        await sendBoth(pair, 1, ['SUBSCRIBE', channel!]);
        await sendBoth(pair, 1 + 2, ['NOSUCHCOMMAND', 'x'], ['GET']);
        expect(pair.proxy.text).toBe(pair.direct.text);
      } finally {
        pair.proxy.close();
        pair.direct.close();
      }
    });

    it('SSUBSCRIBE / SPUBLISH are routed by slot and framed as redis-server frames them', async () => {
      const channels = onePerShard('shard.');
      const pair = await openSubscribers();
      try {
        for (const [i, channel] of channels.entries()) await sendBoth(pair, i + 1, ['SSUBSCRIBE', channel]);
        const receivers = await publishBoth(pair, channels.map((channel): Command => ['SPUBLISH', channel, `sharded ${channel}`]));
        expect(receivers.proxy).toEqual(receivers.direct);
        const [p, d] = await Promise.all([viaProxy.call('PUBSUB', 'SHARDNUMSUB', ...channels), direct.call('PUBSUB', 'SHARDNUMSUB', ...channels)]);
        expect(p).toEqual(d);
        const [pc, dc] = await Promise.all([viaProxy.call('PUBSUB', 'SHARDCHANNELS'), direct.call('PUBSUB', 'SHARDCHANNELS')]);
        expect((pc as string[]).sort()).toEqual((dc as string[]).sort());
        const count = channels.length * 2;
        await sendBoth(pair, count + 1, ['SUNSUBSCRIBE', channels[0]!]);
        await sleep(100);
        expect(pair.proxy.text).toBe(pair.direct.text);
        // The shard channel lives on the shard owning its slot, as Redis Cluster places it.
        for (const [i, channel] of channels.entries()) {
          const expected = i === 0 ? 0 : 1;
          expect(await primaries[ownerOf(channel)]!.call('PUBSUB', 'SHARDNUMSUB', channel)).toEqual([channel, expected]);
        }
      } finally {
        pair.proxy.close();
        pair.direct.close();
      }
    });

    it('keyspace notifications of every shard reach a PSUBSCRIBE through the proxy, framed as one Redis frames them', async () => {
      const keys = onePerShard('notified:');
      const pair = await openSubscribers();
      try {
        expect(await viaProxy.config('SET', 'notify-keyspace-events', 'E$')).toBe('OK');
        expect(await direct.config('SET', 'notify-keyspace-events', 'E$')).toBe('OK');
        await sendBoth(pair, 1, ['PSUBSCRIBE', '__keyevent@0__:*']);
        // Each SET is an event on the shard owning the key; wait for each before the next, so the order is fixed.
        await publishBoth(pair, keys.map((key): Command => ['SET', key, 'v']));
        await sleep(100);
        expect(pair.proxy.replyCount).toBe(1 + keys.length);
        expect(pair.proxy.text).toBe(pair.direct.text);
      } finally {
        pair.proxy.close();
        pair.direct.close();
        await viaProxy.config('SET', 'notify-keyspace-events', '');
        await direct.config('SET', 'notify-keyspace-events', '');
      }
    });

    it('ioredis subscribers through the proxy get every message once, whatever shard carried it', async () => {
      const channels = [...onePerShard('io.'), ...onePerShard('io2.')];
      const subscriber = connect(proxy);
      const received: string[] = [];
      subscriber.on('message', (channel: string, message: string) => received.push(`${channel}=${message}`));
      subscriber.on('pmessage', (_pattern: string, channel: string, message: string) => received.push(`p:${channel}=${message}`));
      try {
        expect(await subscriber.subscribe(...channels)).toBe(channels.length);
        expect(await subscriber.psubscribe('io2.*')).toBe(channels.length + 1);
        for (const channel of channels) expect(await viaProxy.publish(channel, 'm')).toBe(channel.startsWith('io2.') ? 2 : 1);
        await eventually(async () => received.length >= channels.length + SHARD_COUNT, 2_000);
        await sleep(100);
        const expected = channels.flatMap((channel) => (channel.startsWith('io2.') ? [`${channel}=m`, `p:${channel}=m`] : [`${channel}=m`]));
        expect(received.sort()).toEqual(expected.sort());
      } finally {
        subscriber.disconnect();
      }
    });
  });
});
