import * as fs from 'node:fs';
import * as net from 'node:net';
import calculateSlot from 'cluster-key-slot';
import Redis from 'ioredis';
import { describe, expect, it } from 'vitest';
import { seededRandom } from '../helpers/seeded-random';
import { connect as connectNode, waitFor } from '../ha/ha-harness';
import { tagsFor } from '../migration/contended-load';
import { sleep, useMigrationDeployment } from '../migration/migration-harness';

/**
 * Client connection churn during a reshard and a failover: the proxy must not leak file
 * descriptors, backend connections, blocked commands, WATCH or Pub/Sub connections.
 *
 * 3 shards with a replica each. Thousands of short-lived clients (raw sockets and ioredis), in
 * waves, send a random pipeline (single-key commands on keys of migrating and still slots,
 * MGET/MSET over every shard, SUBSCRIBE, BLPOP with a timeout or none, MULTI without EXEC,
 * WATCH) and leave abruptly (destroy, at a random moment, often with replies or a blocked pop
 * outstanding) or politely (QUIT once answered). Meanwhile s1's top slots move to s2 and s3's
 * primary is killed (kill -9: its replica is promoted). A steady client beside the churn runs
 * INCR+GET on a key of s1's unmoved slots and checks every reply, in order, with bounded latency.
 *
 * Afterwards (plan done, a grace period): the proxy's open fds and its connections on every live
 * redis-server come back to the baseline (tolerances below), no redis-server has a blocked
 * client, a subscribed connection or a connection in MULTI, and CLIENT LIST through the proxy
 * lists exactly the clients still connected. Then CLIENT KILL by ID, ADDR, the old form, USER
 * (with ID) and TYPE pubsub must close exactly the clients selected, releasing their backend
 * state (a blocked pop, a WATCH, subscriptions).
 *
 * The last test: a client blocked in BLPOP 0 with more than 64 KiB pipelined behind it, then
 * gone (RST). The proxy stops reading a client whose parser holds 64 KiB (READ_AHEAD_BYTES); a
 * paused socket sees no reset: see the report in the `it`'s comment.
 */

const SEED = Number(process.env['CHURN_SEED'] ?? Date.now() % 1_000_000);
const NODE_TIMEOUT_MS = 1_000;
const WAVES = 16;
const WAVE_EVERY_MS = 90;
const RAW_PER_WAVE = 110;
const IOREDIS_PER_WAVE = 20;
/** s1 owns 0-5460; its highest MOVED_SLOTS slots move to s2 during the churn. */
const MOVED_SLOTS = 16;
const FIRST_MOVED = 5461 - MOVED_SLOTS;
const KEYS_PER_MOVED_SLOT = 120;
/** The steady client's INCR+GET+ECHO round trip, at most: 40-70 ms measured alone, 874 ms with the 2 shared cores busy elsewhere. */
const STEADY_MAX_LATENCY_MS = 1_500;
/**
 * fds of the proxy after the churn vs before: +3. The node killed had 2 of the proxy's
 * connections (health check, shared), the promoted replica gains a shared one; the health
 * checker goes on dialling the dead node (a socket open for a moment per attempt); the admin
 * endpoint's HTTP keep-alive socket from our status polls may be open. A leak of the churn
 * (thousands of clients, hundreds of blocking/WATCH/Pub/Sub sessions) is far above it.
 */
const FD_SLACK = 3;

const random = seededRandom(SEED);
const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;

function command(...args: (string | number)[]): string {
  return `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`).join('')}`;
}

/** Counts complete top-level RESP2 replies in a stream (enough for our replies: no RESP3). */
class ReplyCounter {
  #buffer = '';
  replies: string[] = [];

  feed(chunk: string): void {
    this.#buffer += chunk;
    for (;;) {
      const end = this.#parse(0);
      if (end < 0) return;
      this.replies.push(this.#buffer.slice(0, end));
      this.#buffer = this.#buffer.slice(end);
    }
  }

  #parse(at: number): number {
    const line = this.#buffer.indexOf('\r\n', at);
    if (line < 0) return -1;
    const type = this.#buffer[at];
    const n = Number(this.#buffer.slice(at + 1, line));
    if (type === '+' || type === '-' || type === ':') return line + 2;
    if (type === '$') return n < 0 ? line + 2 : this.#buffer.length >= line + 2 + n + 2 ? line + 2 + n + 2 : -1;
    if (type === '*') {
      let next = line + 2;
      for (let i = 0; i < n; i++) {
        next = this.#parse(next);
        if (next < 0) return -1;
      }
      return next;
    }
    throw new Error(`bad reply: ${JSON.stringify(this.#buffer.slice(at, at + 40))}`);
  }
}

/** A raw client: its socket, replies, and a promise of its close. */
interface RawClient {
  readonly socket: net.Socket;
  readonly counter: ReplyCounter;
  readonly closed: Promise<void>;
  isClosed: boolean;
}

function rawClient(port: number): Promise<RawClient> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const counter = new ReplyCounter();
    let onClose: () => void = () => undefined;
    const client: RawClient = { socket, counter, closed: new Promise((r) => (onClose = r)), isClosed: false };
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => counter.feed(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      client.isClosed = true;
      onClose();
    });
    socket.once('connect', () => resolve(client));
    socket.once('error', reject);
  });
}

async function repliesOf(client: RawClient, count: number, timeoutMs = 2_000): Promise<string[]> {
  await waitFor(`${count} replies`, () => client.counter.replies.length >= count, timeoutMs);
  return client.counter.replies.slice(0, count);
}

/** The proxy's connections on a node as CLIENT LIST shows them (ours excluded), by kind. */
interface NodeConnections {
  readonly normal: string[];
  readonly pubsub: number;
  readonly blocked: number;
  readonly inMulti: number;
  readonly blockedClients: number;
}

async function nodeConnections(node: { host: string; port: number }): Promise<NodeConnections> {
  const client = connectNode(node);
  try {
    const me = Number(await client.call('CLIENT', 'ID'));
    const lines = (String(await client.call('CLIENT', 'LIST')) as string).split('\n').filter((l) => l.startsWith('id='));
    const others = lines.filter((l) => Number(/^id=(\d+)/.exec(l)![1]) !== me);
    const flags = (l: string): string => /flags=(\S*)/.exec(l)![1]!;
    // Replication links (S, M) are not the proxy's; nor are MIGRATE's cached sockets from another
    // redis-server (last command RESTORE, closed by Redis after 10 s idle).
    const normal = others.filter((l) => !/[SM]/.test(flags(l)) && !/ cmd=restore/.test(l));
    const info = await client.info('clients');
    return {
      normal: normal.map((l) => `${/ addr=(\S+)/.exec(l)![1]} flags=${flags(l)} ${/ cmd=(\S+)/.exec(l)![0].trim()} ${/ sub=\d+ psub=\d+/.exec(l)![0].trim()}`),
      pubsub: normal.filter((l) => !/ sub=0 psub=0 /.test(l)).length,
      blocked: normal.filter((l) => flags(l).includes('b')).length,
      inMulti: normal.filter((l) => !/ multi=-1 /.test(l)).length,
      blockedClients: Number(/blocked_clients:(\d+)/.exec(info)![1]),
    };
  } finally {
    client.disconnect();
  }
}

function fdCount(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

function proxyClientIds(list: string): number[] {
  return list
    .split('\n')
    .filter((l) => l.startsWith('id='))
    .map((l) => Number(/^id=(\d+)/.exec(l)![1]))
    .sort((a, b) => a - b);
}

const DOCUMENTED_ERRORS = [/^ERR shard s3 unavailable: /, /^TRYAGAIN shard s3 is failing over; /];

describe('client connection churn during a reshard and a failover', () => {
  const deployment = useMigrationDeployment({
    shards: 3,
    replicas: 1,
    config: { nodeTimeoutMs: NODE_TIMEOUT_MS, failoverWaitMs: 3_000, migrateKeysPerSecond: 1_500, logLevel: 'info' },
  });

  const movedTags = tagsFor(Array.from({ length: MOVED_SLOTS }, (_, i) => FIRST_MOVED + i));
  /** One tag per shard in slots that do not move: s1 low, s2, s3. */
  const stillTags = tagsFor([100, 7000, 12000]);
  const keyPool = [...movedTags.flatMap((t) => [`{${t}}:a`, `{${t}}:b`]), ...stillTags.flatMap((t) => [`{${t}}:a`, `{${t}}:b`])];
  const listKey = (): string => `{${pick([...movedTags, ...stillTags])}}:emptylist`;

  it(
    'releases every fd, backend connection, blocked pop, WATCH and subscription of churned clients; CLIENT KILL closes exactly its targets',
    async () => {
      console.log(`connection-churn seed=${SEED} (replay with CHURN_SEED=${SEED})`);
      const t0 = Date.now();
      const { proxy, shards } = deployment;
      const [s1p, s2p, s3p] = shards.primaries;
      const s3r = shards.replicas[2]![0]!;
      const nodes = [s1p!, shards.replicas[0]![0]!, s2p!, shards.replicas[1]![0]!, s3p!, s3r];
      const port = proxy.port;

      // Keys to move: KEYS_PER_MOVED_SLOT in each moved slot, written directly on s1.
      const direct = connectNode(s1p!);
      for (const tag of movedTags) {
        const args: string[] = [];
        for (let i = 0; i < KEYS_PER_MOVED_SLOT; i++) args.push(`{${tag}}:fill${i}`, 'x');
        await direct.mset(...args);
      }
      direct.disconnect();

      const admin = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 0 });
      admin.on('error', () => undefined);
      const steady = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 0 });
      steady.on('error', () => undefined);
      const steadyKey = `{${stillTags[0]}}:steady`;
      const steadyId = Number(await steady.client('ID'));
      const adminId = Number(await admin.client('ID'));

      // Warm-up: every kind of session once on every shard, so lazily opened shared connections
      // exist before the baseline.
      for (const tag of stillTags) {
        const warm = await rawClient(port);
        warm.socket.write(
          command('SET', `{${tag}}:a`, '1') + command('MGET', ...keyPool) + command('WATCH', `{${tag}}:a`) + command('MULTI') + command('GET', `{${tag}}:a`) + command('EXEC') +
            command('BLPOP', `{${tag}}:emptylist`, '0.05'),
        );
        await repliesOf(warm, 7);
        warm.socket.write(command('SUBSCRIBE', `ch:${tag}`));
        await repliesOf(warm, 8);
        warm.socket.write(command('QUIT'));
        await warm.closed;
      }
      await steady.incr(steadyKey);
      await sleep(300);
      const baselineFds = fdCount(proxy.pid);
      const baseline = await Promise.all(nodes.map(nodeConnections));
      console.log('baseline', JSON.stringify({ fds: baselineFds, nodes: baseline.map((b) => b.normal.length) }));
      expect(baseline.map((b) => b.blockedClients)).toEqual([0, 0, 0, 0, 0, 0]);

      // The steady client: INCR then GET, pipelined, each pair waited for.
      let isSteadyRunning = true;
      const steadyProblems: string[] = [];
      const steadyLatencies: number[] = [];
      const steadyLoop = (async () => {
        let expected = Number(await steady.get(steadyKey));
        while (isSteadyRunning) {
          const started = Date.now();
          const results = await steady.pipeline().incr(steadyKey).get(steadyKey).echo('order').exec();
          steadyLatencies.push(Date.now() - started);
          expected++;
          const got = results!.map(([err, value]) => (err === null ? String(value) : `ERR ${err.message}`));
          if (got[0] !== String(expected) || got[1] !== String(expected) || got[2] !== 'order') steadyProblems.push(`expected ${expected}: ${JSON.stringify(got)}`);
          await sleep(5);
        }
      })();

      // The churn.
      const churnErrors: string[] = [];
      const counts = { raw: 0, ioredis: 0, destroyed: 0, quit: 0, blpop: 0, blpop0: 0, subscribe: 0, multi: 0, watch: 0 };
      const raw = async (): Promise<void> => {
        counts.raw++;
        let client: RawClient;
        try {
          client = await rawClient(port);
        } catch (err) {
          churnErrors.push(`connect: ${String(err)}`);
          return;
        }
        let out = '';
        let expectedReplies = 0;
        let isHeld = false;
        // A transaction and a WATCH are on one slot (else CROSSSLOT, as documented): this client's.
        const sessionKey = pick(keyPool);
        const ops = 1 + Math.floor(random() * 5);
        for (let i = 0; i < ops && !isHeld; i++) {
          const r = random();
          if (r < 0.3) {
            out += pick([command('SET', pick(keyPool), String(i)), command('GET', pick(keyPool)), command('INCR', `${pick(keyPool)}:n`)]);
            expectedReplies++;
          } else if (r < 0.45) {
            out += random() < 0.5 ? command('MGET', ...keyPool.slice(0, 6), ...keyPool.slice(-6)) : command('MSET', pick(keyPool), 'm', pick(keyPool), 'n', pick(keyPool), 'o');
            expectedReplies++;
          } else if (r < 0.58) {
            out += command('SUBSCRIBE', `ch:${Math.floor(random() * 8)}`, `ch:${Math.floor(random() * 8) + 8}`);
            expectedReplies += 2;
            counts.subscribe++;
            isHeld = true;
          } else if (r < 0.72) {
            const isForever = random() < 0.4;
            out += command('BLPOP', listKey(), isForever ? '0' : pick(['0.2', '0.5', '1']));
            expectedReplies++;
            counts.blpop++;
            if (isForever) counts.blpop0++;
            isHeld = true;
          } else if (r < 0.86) {
            out += command('MULTI') + command('INCR', sessionKey) + command('SET', sessionKey, 'tx');
            expectedReplies += 3;
            counts.multi++;
            isHeld = true; // never EXEC'd
          } else {
            out += command('WATCH', sessionKey) + command('GET', pick(keyPool));
            expectedReplies += 2;
            counts.watch++;
          }
        }
        client.socket.write(out);
        const polite = random() < 0.35;
        if (polite) {
          // Waits for what it can get (a held command may never answer), then QUIT.
          await waitFor('replies', () => client.counter.replies.length >= expectedReplies, 150).catch(() => undefined);
          client.socket.write(command('QUIT'));
          counts.quit++;
          await Promise.race([client.closed, sleep(400)]);
          client.socket.destroy();
        } else {
          await sleep(random() * 60);
          counts.destroyed++;
          client.socket.resetAndDestroy();
        }
        for (const reply of client.counter.replies) {
          if (reply.startsWith('-') && !DOCUMENTED_ERRORS.some((p) => p.test(reply.slice(1)))) churnErrors.push(`raw: ${reply.trim()}`);
        }
      };
      const viaIoredis = async (): Promise<void> => {
        counts.ioredis++;
        const client = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 0, retryStrategy: () => null, lazyConnect: true });
        client.on('error', () => undefined);
        let step = 'connect';
        try {
          await client.connect();
          step = 'commands';
          const kind = random();
          if (kind < 0.5) {
            const results = await client.pipeline().set(pick(keyPool), 'io').mget(...keyPool.slice(0, 4), ...keyPool.slice(-4)).incr(`${pick(keyPool)}:n`).get(pick(keyPool)).exec();
            for (const [err] of results!) if (err !== null && !DOCUMENTED_ERRORS.some((p) => p.test(err.message))) churnErrors.push(`ioredis: ${err.message}`);
            step = 'quit';
            await client.quit();
            counts.quit++;
          } else if (kind < 0.75) {
            void client.blpop(listKey(), 0).catch(() => undefined);
            counts.blpop++;
            counts.blpop0++;
            await sleep(random() * 80);
            client.disconnect();
            counts.destroyed++;
          } else {
            const channel = `ch:${Math.floor(random() * 16)}`;
            // Documented: a subscribed client whose shard fails over is disconnected (s3: slots 10923-16383).
            step = calculateSlot(channel) >= 10923 ? 'subscribe on s3' : 'subscribe';
            await client.subscribe(channel);
            counts.subscribe++;
            if (step === 'subscribe') step = 'quit after subscribe (s1/s2)';
            else step = 'quit after subscribe';
            if (random() < 0.5) await client.quit();
            else client.disconnect();
          }
        } catch (err) {
          const message = (err as Error).message;
          const isFailoverDisconnect = (step === 'subscribe on s3' || step === 'quit after subscribe') && message === 'Connection is closed.' && killedAt > 0;
          if (!isFailoverDisconnect && !DOCUMENTED_ERRORS.some((p) => p.test(message))) churnErrors.push(`ioredis ${step}: ${message}`);
          client.disconnect();
        }
      };

      const churnStart = Date.now();
      const fdSamples: number[] = [];
      const waves: Promise<void>[] = [];
      let submitted: { status: number; body: unknown } | null = null;
      let killedAt = 0;
      for (let wave = 0; wave < WAVES; wave++) {
        for (let i = 0; i < RAW_PER_WAVE; i++) waves.push(raw());
        for (let i = 0; i < IOREDIS_PER_WAVE; i++) waves.push(viaIoredis());
        if (wave === 2) submitted = await proxy.submit({ op: 'reshard', from: 's1', to: 's2', slots: MOVED_SLOTS });
        if (wave === 6) {
          killedAt = Date.now();
          s3p!.kill('SIGKILL');
        }
        await sleep(WAVE_EVERY_MS);
        fdSamples.push(fdCount(proxy.pid));
      }
      await Promise.all(waves);
      const churnMs = Date.now() - churnStart;
      expect(submitted?.status, JSON.stringify(submitted?.body)).toBe(202);
      const status = await proxy.waitForPlan(15_000);
      expect(status.state, `${status.error}`).toBe('done');
      await waitFor('s3 promoted', async () => (await proxy.status()).shards.find((s) => s.name === 's3')?.primary === `127.0.0.1:${s3r.port}`, 5_000);
      isSteadyRunning = false;
      await steadyLoop;

      // Grace: the longest BLPOP timeout (1 s) has run out by now; closes have been seen.
      const liveNodes = nodes.filter((n) => n !== s3p);
      const liveBaseline = baseline.filter((_, i) => nodes[i] !== s3p);
      const s3Baseline = baseline[nodes.indexOf(s3p!)]!.normal.length;
      const settled = async (): Promise<boolean> => {
        const now = await Promise.all(liveNodes.map(nodeConnections));
        const fds = fdCount(proxy.pid);
        // Per node: at most its baseline, plus (the promoted replica) what a primary has beyond a replica.
        const within = now.every((n, i) => n.normal.length <= liveBaseline[i]!.normal.length + (liveNodes[i] === s3r ? s3Baseline - liveBaseline[i]!.normal.length : 0));
        return within && fds <= baselineFds + FD_SLACK && now.every((n) => n.blockedClients === 0);
      };
      const settledAt = await waitFor('resources back to the baseline', settled, 2_500).then(
        () => Date.now(),
        () => null,
      );
      const after = await Promise.all(liveNodes.map(nodeConnections));
      const afterFds = fdCount(proxy.pid);
      console.log(
        'connection-churn figures',
        JSON.stringify({
          seed: SEED,
          testMs: Date.now() - t0,
          counts,
          churnMs,
          killedAfterMs: killedAt - churnStart,
          fds: { baseline: baselineFds, peak: Math.max(...fdSamples), after: afterFds },
          nodes: { baseline: baseline.map((b) => b.normal.length), after: after.map((a) => a.normal.length) },
          settledMsAfterChurn: settledAt === null ? null : settledAt - churnStart - churnMs,
          steady: { ops: steadyLatencies.length, maxMs: Math.max(...steadyLatencies) },
          keysMoved: status.progress?.keysMoved,
          churnErrors: churnErrors.length,
          churnErrorKinds: [...new Set(churnErrors.map((e) => e.slice(0, 60)))].slice(0, 8),
        }),
      );
      const describeNodes = (list: NodeConnections[]): string => list.map((n, i) => `node ${liveNodes[i]!.port}:\n  ${n.normal.join('\n  ')}`).join('\n');
      expect(fdSamples.some((n) => n > baselineFds + 50), 'the churn did hold many connections at once').toBe(true);
      expect(after.map((n) => n.blockedClients), describeNodes(after)).toEqual([0, 0, 0, 0, 0]);
      expect(after.map((n) => n.blocked)).toEqual([0, 0, 0, 0, 0]);
      expect(after.map((n) => n.pubsub), describeNodes(after)).toEqual([0, 0, 0, 0, 0]);
      expect(after.map((n) => n.inMulti)).toEqual([0, 0, 0, 0, 0]);
      expect(afterFds, `proxy fds: baseline ${baselineFds}`).toBeLessThanOrEqual(baselineFds + FD_SLACK);
      expect(settledAt, `backend connections not back to the baseline ${JSON.stringify(baseline.map((b) => b.normal.length))}:\n${describeNodes(after)}`).not.toBeNull();
      expect(churnErrors.slice(0, 10)).toEqual([]);
      expect(steadyProblems.slice(0, 10)).toEqual([]);
      expect(Math.max(...steadyLatencies)).toBeLessThan(STEADY_MAX_LATENCY_MS);
      expect(steadyLatencies.length).toBeGreaterThan(50);

      // CLIENT LIST through the proxy: exactly the two clients still connected.
      await waitFor('only steady and admin listed', async () => proxyClientIds(String(await admin.client('LIST'))).length === 2, 2_000).catch(() => undefined);
      expect(proxyClientIds(String(await admin.client('LIST')))).toEqual([steadyId, adminId].sort((a, b) => a - b));

      // CLIENT KILL: victims of each kind, killed by every filter the proxy supports.
      const victims = await Promise.all(Array.from({ length: 10 }, () => rawClient(port)));
      for (const v of victims) v.socket.write(command('CLIENT', 'ID'));
      const ids = await Promise.all(victims.map(async (v) => Number((await repliesOf(v, 1))[0]!.slice(1, -2))));
      const addr = (v: RawClient): string => `127.0.0.1:${v.socket.localPort}`;
      // 0-3: idle; 4-5: subscribed; 6-7: blocked in BLPOP 0 on s2 (moved slot) and s3; 8: WATCH on s3; 9: idle, kept.
      victims[4]!.socket.write(command('SUBSCRIBE', 'ch:kill'));
      victims[5]!.socket.write(command('PSUBSCRIBE', 'kill:*'));
      const blockedKeys = [`{${movedTags[0]}}:killlist`, `{${stillTags[2]}}:killlist`];
      victims[6]!.socket.write(command('BLPOP', blockedKeys[0]!, '0'));
      victims[7]!.socket.write(command('BLPOP', blockedKeys[1]!, '0'));
      victims[8]!.socket.write(command('WATCH', `{${stillTags[2]}}:a`));
      await Promise.all([repliesOf(victims[4]!, 2), repliesOf(victims[5]!, 2), repliesOf(victims[8]!, 2)]);
      const s2Now = liveNodes.indexOf(s2p!);
      const s3Now = liveNodes.indexOf(s3r);
      await waitFor('2 pops blocked', async () => (await nodeConnections(s2p!)).blockedClients === 1 && (await nodeConnections(s3r)).blockedClients === 1, 2_000);
      const withSessions = await Promise.all(liveNodes.map(nodeConnections));
      expect(withSessions[s2Now]!.normal.length).toBeGreaterThan(after[s2Now]!.normal.length);

      const kill = async (...args: string[]): Promise<unknown> => admin.call('CLIENT', 'KILL', ...args).catch((err: Error) => err.message);
      const expectOnlyClosed = async (closedNow: number[], why: string): Promise<void> => {
        await Promise.all(closedNow.map((i) => Promise.race([victims[i]!.closed, sleep(1_000)])));
        await sleep(50);
        const closedSet = victims.map((v, i) => (v.isClosed ? i : -1)).filter((i) => i >= 0);
        killedSoFar.push(...closedNow);
        expect(closedSet, why).toEqual([...killedSoFar].sort((a, b) => a - b));
      };
      const killedSoFar: number[] = [];
      expect(await kill('ID', String(ids[0]))).toBe(1);
      await expectOnlyClosed([0], 'KILL ID');
      expect(await kill('ADDR', addr(victims[1]!))).toBe(1);
      await expectOnlyClosed([1], 'KILL ADDR');
      expect(await kill(addr(victims[2]!))).toBe('OK');
      await expectOnlyClosed([2], 'KILL addr (old form)');
      expect(await kill('USER', 'default', 'ID', String(ids[3]))).toBe(1);
      await expectOnlyClosed([3], 'KILL USER default ID');
      expect(await kill('TYPE', 'pubsub')).toBe(2);
      await expectOnlyClosed([4, 5], 'KILL TYPE pubsub');
      expect(await kill('ID', String(ids[6]))).toBe(1);
      expect(await kill('ADDR', addr(victims[7]!), 'SKIPME', 'yes')).toBe(1);
      await expectOnlyClosed([6, 7], 'KILL blocked clients');
      expect(await kill('ID', String(ids[8]))).toBe(1);
      await expectOnlyClosed([8], 'KILL the WATCH client');
      expect(await kill('ID', String(ids[0]))).toBe(0);
      expect(await kill(addr(victims[0]!))).toBe('ERR No such client');
      expect(await kill('USER', 'nobody')).toBe("ERR No such user 'nobody'");

      // The kept one still works; the killed clients' backend state is gone.
      victims[9]!.socket.write(command('PING'));
      expect((await repliesOf(victims[9]!, 2))[1]).toBe('+PONG\r\n');
      await waitFor('blocked pops released', async () => (await nodeConnections(s2p!)).blockedClients === 0 && (await nodeConnections(s3r)).blockedClients === 0, 2_000);
      // A push now reaches no one: the killed clients' BLPOPs popped nothing.
      await admin.rpush(blockedKeys[0]!, 'v');
      await admin.rpush(blockedKeys[1]!, 'v');
      expect(await admin.llen(blockedKeys[0]!)).toBe(1);
      expect(await admin.llen(blockedKeys[1]!)).toBe(1);
      victims[9]!.socket.destroy();
      await waitFor(
        'connections back after CLIENT KILL',
        async () => (await Promise.all(liveNodes.map(nodeConnections))).every((n, i) => n.normal.length <= after[i]!.normal.length),
        2_000,
      );
      const end = await Promise.all(liveNodes.map(nodeConnections));
      expect(end.map((n) => n.pubsub)).toEqual([0, 0, 0, 0, 0]);
      expect(end.map((n) => n.normal.length)).toEqual(after.map((n) => n.normal.length));
      expect(proxyClientIds(String(await admin.client('LIST')))).toEqual([steadyId, adminId].sort((a, b) => a - b));
      expect(s3Now).toBeGreaterThanOrEqual(0);
      expect(proxy.logs()).not.toMatch(/dispatch failed|uncaught|unhandled/i);
      steady.disconnect();
      admin.disconnect();
    },
    20_000,
  );

  it(
    'releases the blocked pop of a client gone with more than 64 KiB pipelined behind its BLPOP',
    async () => {
      const { proxy, shards } = deployment;
      const node = shards.primaries[1]!; // s2: owns {stillTags[1]}
      const key = `{${stillTags[1]}}:bigtail`;
      const admin = new Redis({ host: '127.0.0.1', port: proxy.port, maxRetriesPerRequest: 0 });
      await admin.ping();
      const before = await nodeConnections(node);
      const fdsBefore = fdCount(proxy.pid);
      const client = await rawClient(proxy.port);
      // BLPOP 0, then 8000 PINGs (112 KB) the proxy reads up to READ_AHEAD_BYTES of and stops.
      client.socket.write(command('BLPOP', key, '0') + command('PING').repeat(Number(process.env['TAIL_PINGS'] ?? 8_000)));
      await waitFor('the pop blocked on s2', async () => (await nodeConnections(node)).blockedClients === 1, 2_000);
      await sleep(100);
      client.socket.resetAndDestroy();
      const released = await waitFor('the pop released', async () => (await nodeConnections(node)).blockedClients === 0, 1_500).then(
        () => true,
        () => false,
      );
      const after = await nodeConnections(node);
      const listed = String(await admin.client('LIST'));
      console.log('big tail', JSON.stringify({ released, before: before.normal, after: after.normal, fdsBefore, fdsAfter: fdCount(proxy.pid), proxyClients: proxyClientIds(listed).length }));
      try {
        expect(released, `s2 still has a blocked client 1.5 s after its client left:\n${after.normal.join('\n')}\nproxy CLIENT LIST:\n${listed}`).toBe(true);
        expect(after.normal.length).toBe(before.normal.length);
        expect(fdCount(proxy.pid)).toBe(fdsBefore);
        // A push now reaches no one: the BLPOP of the client gone popped nothing.
        await admin.rpush(key, 'v');
        expect(await admin.lpop(key)).toBe('v');
      } finally {
        admin.disconnect();
      }
    },
    10_000,
  );
});
