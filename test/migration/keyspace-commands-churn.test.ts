import Redis from 'ioredis';
import { describe, expect, it } from 'vitest';
import { decodeScanCursor, scanNameToken } from '../../src/dispatch/special-sinks';
import { seededRandom } from '../helpers/seeded-random';
import { tagsFor } from './contended-load';
import { evenOwner, type MigrationProxy, moverProcesses, ownerFromStateFile, sleep, slotOf, useMigrationDeployment } from './migration-harness';

/**
 * Keyless and whole-keyspace commands through the proxy while the topology changes: slots move
 * (reshard), a shard is added, another removed, a primary fails over.
 *
 * What the docs promise (README "Commands", docs/commands.md, docs/resharding.md "Limits",
 * docs/architecture.md "Scripts"):
 * - SCAN walks the shards one after another, the shard carried in the cursor's low 10 bits; while
 *   slots move it keeps SCAN's guarantee per shard only: "a key moving from a shard not yet scanned
 *   to one already scanned is not returned, and one moving the other way can be returned twice".
 *   So a key that exists for the whole iteration is returned, except one that moved from a shard
 *   at or after the cursor's shard to one at or before it. Nothing documents an error, a skipped
 *   shard or a cursor that changes meaning when a shard is removed.
 * - DBSIZE and KEYS, asked of every shard at once, "can count a key of a batch in flight twice: for
 *   the moment between its RESTORE on the target and its delete on the source". So never fewer
 *   than the keys that exist throughout, and at most one batch (migrateBatchKeys) per source more,
 *   plus the mover's marker hash.
 * - FLUSHALL / FLUSHDB (ASYNC too) run on every shard: afterwards no key is left anywhere.
 * - Scripts: the proxy remembers SCRIPT LOAD bodies, and a shard added later runs EVALSHA.
 *   FUNCTION LOAD is a broadcast too; FCALL must run (or be refused clearly) on a shard added
 *   after it.
 *
 * The test runs one deployment (4 primaries with a replica each; the proxy starts on s1-s3) through:
 * a reshard with DBSIZE/KEYS probes skewed by pipelined floods; add-shard s4 and remove-shard s2,
 * each with SCANs parked mid-shard before the plan and finished after it, and free-running SCANs
 * (ioredis scanStream and manual cursor loops with MATCH, COUNT, TYPE) throughout; a kill -9 of
 * the primary of the shard a parked SCAN is in; FLUSHALL / FLUSHALL ASYNC / FLUSHDB in the middle
 * of reshards, with on-demand moves running.
 *
 * Found (these checks fail until fixed; see each it()):
 * - remove-shard renumbers the shards after the removed one, and the cursor carries only the
 *   shard's index: a SCAN in s3 continues in s4 with s3's cursor (s3's remaining keys and part of
 *   s4's never returned), one in s4 gets `ERR invalid cursor`, one in s2 continues in s3.
 * - a failover of the shard being scanned: the cursor is sent on to the promoted replica, whose
 *   dict orders keys by another hash seed, so ~100 of ~5,000 keys of that shard are skipped.
 * - a FLUSHALL / FLUSHDB acknowledged while a mover batch is DUMPed but not yet RESTOREd: the
 *   batch's keys are restored on the target afterwards and are there for good.
 * - FCALL of a library loaded (FUNCTION LOAD) before add-shard: `ERR Function not found` on
 *   the new shard. SCRIPT EXISTS of a script loaded before add-shard answers 0.
 *
 * Replay a failure with SEED=<seed> (printed first).
 */

const SEED = Number(process.env['SEED'] ?? Math.floor(Math.random() * 2 ** 31));
const KEYS = 16_000;
const BATCH_KEYS = 50;
const MARKER = '{slotproxy}:moving-keys';
/** Calls one SCAN iteration may take before it counts as looping. */
const MAX_CALLS = 3_000;
/** Errors the docs name for a shard whose primary died, before the promotion (or after failoverWaitMs). */
const FAILOVER_ERRORS = /^(ERR shard \S+ unavailable|TRYAGAIN)/;

type Kind = 'string' | 'hash' | 'set';

function keyOf(n: number): string {
  return `ks:${n}`;
}
function kindOf(n: number): Kind {
  return n % 7 === 0 ? 'hash' : n % 11 === 0 ? 'set' : 'string';
}
/** Counters EVALSHA and FCALL increment: strings, created with the keys. */
const COUNTERS = Array.from({ length: 200 }, (_, i) => `{ct${i}}:n`);
const ALL_KEYS = [...Array.from({ length: KEYS }, (_, n) => keyOf(n)), ...COUNTERS];
const KIND = new Map<string, Kind>([...ALL_KEYS.map((k, n): [string, Kind] => [k, n < KEYS ? kindOf(n) : 'string'])]);
const TOTAL = ALL_KEYS.length;

interface Filter {
  readonly match?: string;
  readonly type?: Kind;
}
/** MATCH patterns used here are `prefix*`. */
function isMatch(key: string, filter: Filter): boolean {
  if (filter.match !== undefined && !key.startsWith(filter.match.slice(0, -1))) return false;
  if (filter.type !== undefined && KIND.get(key) !== filter.type) return false;
  return true;
}

/** The shard a virtual cursor names, by the token of its name (layout: src/dispatch/special-sinks.ts). */
function cursorShard(cursor: string): string {
  const parsed = decodeScanCursor(cursor)!;
  return ['s1', 's2', 's3', 's4'].find((name) => scanNameToken(name) === parsed.nameToken) ?? `token ${parsed.nameToken}`;
}

/** The shard's own cursor inside a virtual one (0 at a shard's start). */
function shardCursorOf(cursor: string): bigint {
  return decodeScanCursor(cursor)!.cursor;
}

function scanArgs(cursor: string, filter: Filter, count: number): string[] {
  const args = [cursor];
  if (filter.match !== undefined) args.push('MATCH', filter.match);
  args.push('COUNT', String(count));
  if (filter.type !== undefined) args.push('TYPE', filter.type);
  return args;
}

function client(port: number): Redis {
  const redis = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 0 });
  redis.on('error', () => undefined);
  return redis;
}

/** One full SCAN iteration through the proxy, as it went. */
interface Iteration {
  readonly label: string;
  readonly filter: Filter;
  readonly startedAt: number;
  endedAt: number;
  readonly seen: Set<string>;
  /** The shard each cursor the proxy returned names (manual loops only). */
  readonly shards: string[];
  calls: number;
  error: string | null;
  isLooping: boolean;
}

function newIteration(label: string, filter: Filter): Iteration {
  return { label, filter, startedAt: Date.now(), endedAt: 0, seen: new Set(), shards: [], calls: 0, error: null, isLooping: false };
}

/** Runs SCAN calls on `it` from `cursor` until the cursor is 0 (or an error, or MAX_CALLS). */
async function scanOn(redis: Redis, it: Iteration, cursor: string, count: () => number, pauseMs: number): Promise<void> {
  try {
    do {
      if (it.calls >= MAX_CALLS) {
        it.isLooping = true;
        return;
      }
      const [next, keys] = (await redis.call('SCAN', ...scanArgs(cursor, it.filter, count()))) as [string, string[]];
      it.calls++;
      for (const k of keys) it.seen.add(k);
      cursor = next;
      if (next !== '0') it.shards.push(cursorShard(next));
      if (pauseMs > 0) await sleep(pauseMs);
    } while (cursor !== '0');
  } catch (err) {
    it.error = (err as Error).message;
  } finally {
    it.endedAt = Date.now();
  }
}

/** Free-running SCAN loops (manual and scanStream) until `stop()` is called; every iteration kept. */
function freeScanners(port: number, rand: () => number): { iterations: Iteration[]; stop(): Promise<void> } {
  const iterations: Iteration[] = [];
  let isRunning = true;
  const filters: { label: string; filter: Filter; stream: boolean }[] = [
    { label: 'manual all', filter: {}, stream: false },
    { label: 'manual MATCH ks:1*', filter: { match: 'ks:1*' }, stream: false },
    { label: 'manual TYPE hash', filter: { type: 'hash' }, stream: false },
    { label: 'scanStream MATCH ks:*', filter: { match: 'ks:*' }, stream: true },
  ];
  const loops = filters.map(async ({ label, filter, stream }) => {
    const redis = client(port);
    try {
      while (isRunning) {
        const it = newIteration(label, filter);
        iterations.push(it);
        if (!stream) {
          await scanOn(redis, it, '0', () => 50 + Math.floor(rand() * 250), 4);
        } else {
          await new Promise<void>((resolve) => {
            const s = redis.scanStream({ ...(filter.match === undefined ? {} : { match: filter.match }), count: 50 + Math.floor(rand() * 250) });
            s.on('data', (keys: string[]) => {
              it.calls++;
              for (const k of keys) it.seen.add(k);
              if (it.calls >= MAX_CALLS) {
                it.isLooping = true;
                s.destroy();
                resolve();
              } else {
                s.pause();
                setTimeout(() => s.resume(), 4);
              }
            });
            s.on('error', (err: Error) => {
              it.error = err.message;
              resolve();
            });
            s.on('end', () => resolve());
          });
          it.endedAt = Date.now();
        }
        if (it.error !== null) await sleep(20);
      }
    } finally {
      redis.disconnect();
    }
  });
  return {
    iterations,
    async stop() {
      isRunning = false;
      await Promise.all(loops);
    },
  };
}

/** A SCAN advanced into shard `index` (a few calls into it) and left there, to be finished later. */
interface Parked {
  readonly index: number;
  readonly it: Iteration;
  readonly cursor: string;
}

async function park(redis: Redis, index: number, label: string): Promise<Parked> {
  const it = newIteration(label, {});
  let cursor = '0';
  let inShard = 0;
  for (;;) {
    // Parked while the shards keep their positions: the cursor's position is the shard's index.
    const atIndex = cursor === '0' ? 0 : decodeScanCursor(cursor)!.position;
    if (cursor !== '0' || it.calls > 0) expect(cursor, `${label}: the scan ended before shard ${index}`).not.toBe('0');
    if (atIndex === index && shardCursorOf(cursor) !== 0n && ++inShard >= 3) break;
    const count = atIndex < index ? 2000 : 40;
    const [next, keys] = (await redis.call('SCAN', ...scanArgs(cursor, {}, count))) as [string, string[]];
    it.calls++;
    for (const k of keys) it.seen.add(k);
    cursor = next;
    if (next !== '0') it.shards.push(cursorShard(next));
  }
  return { index, it, cursor };
}

/** Shard names in topology order, from the proxy's status. */
async function shardOrder(proxy: MigrationProxy): Promise<string[]> {
  return (await proxy.status()).shards.map((s) => s.name);
}

async function runPlan(proxy: MigrationProxy, request: Record<string, unknown>, onTick?: () => Promise<void>): Promise<{ startedAt: number; endedAt: number }> {
  const startedAt = Date.now();
  const submitted = await proxy.submit(request);
  expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
  for (const deadline = Date.now() + 15_000; ; await sleep(10)) {
    const status = await proxy.status();
    if (status.state !== 'running') {
      expect(status.state, `${status.error}\n${proxy.logs().slice(-2000)}`).toBe('done');
      console.log(`plan ${String(request['op'])} done in ${Date.now() - startedAt} ms`);
      return { startedAt, endedAt: Date.now() };
    }
    if (onTick !== undefined) await onTick();
    expect(Date.now(), `plan ${JSON.stringify(request)} did not finish`).toBeLessThan(deadline);
  }
}

/**
 * Keys of `all` that a SCAN may miss: moved (owner before != after) from a shard at or after
 * position `index` (in `order`, the topology order when the scan started; a shard absent from it,
 * added meanwhile, comes after) to one at or before it.
 */
function mayMiss(index: number, order: readonly string[], before: readonly string[], after: readonly string[]): (key: string) => boolean {
  const position = (name: string): number => (order.includes(name) ? order.indexOf(name) : order.length);
  return (key) => {
    const slot = slotOf(key);
    const [from, to] = [before[slot]!, after[slot]!];
    return from !== to && position(from) >= index && position(to) <= index;
  };
}

/** What is wrong with one iteration: errors, loops, a cursor going back, keys missed or unknown. */
function problems(it: Iteration, isExempt: (key: string) => boolean, allowedError: RegExp | null, removed: ReadonlySet<string> = new Set()): string[] {
  const found: string[] = [];
  if (it.error !== null) {
    if (allowedError === null || !allowedError.test(it.error)) found.push(`${it.label}: error ${it.error}`);
    return found;
  }
  if (it.isLooping) found.push(`${it.label}: no end after ${MAX_CALLS} calls`);
  // Shards are named, not numbered, in the check: removing a shard renumbers those after it. A
  // scan whose shard was removed under it starts over from the first shard (documented: the keys
  // it held went to shards it may have finished); it must not go back otherwise.
  let left = new Set<string>();
  for (let i = 1; i < it.shards.length; i++) {
    if (removed.has(it.shards[i - 1]!) && !removed.has(it.shards[i]!)) left = new Set();
    else if (it.shards[i] !== it.shards[i - 1]) left.add(it.shards[i - 1]!);
    if (left.has(it.shards[i]!)) {
      found.push(`${it.label}: cursor went back from shard ${it.shards[i - 1]} to ${it.shards[i]}, already left`);
      break;
    }
  }
  const missed = ALL_KEYS.filter((k) => isMatch(k, it.filter) && !it.seen.has(k) && !isExempt(k));
  if (missed.length > 0) {
    const bySlotOwner = missed.slice(0, 3).map((k) => `${k} (slot ${slotOf(k)})`);
    found.push(`${it.label}: ${missed.length} keys that existed throughout not returned, e.g. ${bySlotOwner.join(', ')}`);
  }
  const unknown = [...it.seen].filter((k) => !KIND.has(k) && k !== MARKER);
  if (unknown.length > 0) found.push(`${it.label}: unknown keys ${unknown.slice(0, 3).join(', ')}`);
  const wrong = [...it.seen].filter((k) => KIND.has(k) && !isMatch(k, it.filter));
  if (wrong.length > 0) found.push(`${it.label}: keys not matching the filter ${wrong.slice(0, 3).join(', ')}`);
  return found;
}

/**
 * Checks the free-running iterations of a plan's window: each must return every key matching its
 * filter that did not move; one entirely outside the plan, every key matching.
 */
function freeProblems(iterations: readonly Iteration[], window: { startedAt: number; endedAt: number }, before: readonly string[], after: readonly string[], allowedError: RegExp | null = null, removed: ReadonlySet<string> = new Set()): string[] {
  const found: string[] = [];
  for (const it of iterations) {
    if (it.endedAt === 0) continue;
    const isOutside = it.endedAt < window.startedAt || it.startedAt > window.endedAt;
    // scanStream hides its cursors: every key that moved may be missed during the plan.
    const moved = (key: string): boolean => before[slotOf(key)] !== after[slotOf(key)];
    found.push(...problems(it, isOutside ? () => false : moved, allowedError, removed));
  }
  return found;
}

describe('keyless and whole-keyspace commands while the topology changes', () => {
  const deployment = useMigrationDeployment({
    shards: 4,
    replicas: 1,
    proxyShards: 3,
    config: { nodeTimeoutMs: 1_000, failoverWaitMs: 4_000, migrateKeysPerSecond: 6_000, migrateBatchKeys: BATCH_KEYS, migrateSlotsInFlight: 512 },
  });
  const rand = seededRandom(SEED);
  console.log(`keyspace-commands-churn seed ${SEED} (replay: SEED=${SEED})`);

  it('loads the keys', async () => {
    const { shards } = deployment;
    const owner = evenOwner(3);
    const direct = shards.primaries.slice(0, 3).map((n) => new Redis({ host: n.host, port: n.port }));
    try {
      const pipelines = direct.map((d) => d.pipeline());
      ALL_KEYS.forEach((key, n) => {
        const p = pipelines[owner[slotOf(key)]!]!;
        const kind = KIND.get(key)!;
        if (kind === 'hash') p.hset(key, 'f', String(n));
        else if (kind === 'set') p.sadd(key, String(n));
        else p.set(key, n < KEYS ? `v${n}` : '0');
      });
      await Promise.all(pipelines.map((p) => p.exec()));
      // The replicas have it all (the failover below promotes one).
      for (const d of direct) expect(await d.call('WAIT', '1', '5000')).toBe(1);
    } finally {
      for (const d of direct) d.disconnect();
    }
    const redis = client(deployment.proxy.port);
    try {
      expect(await redis.dbsize()).toBe(TOTAL);
    } finally {
      redis.disconnect();
    }
  }, 20_000);

  it('DBSIZE and KEYS during a reshard never count fewer than the keys that exist throughout, nor more than a batch too many', async () => {
    const { proxy } = deployment;
    const { owner } = ownerFromStateFile(proxy.stateFile);
    const probe = client(proxy.port);
    const flooder = client(proxy.port);
    // A key of a slot that does not move on the source (s1 gives away its highest slots) and on the target.
    const sourceKey = ALL_KEYS.find((k) => owner[slotOf(k)] === 's1' && slotOf(k) < 1000)!;
    const targetKey = ALL_KEYS.find((k) => owner[slotOf(k)] === 's2')!;
    const sizes: number[] = [];
    const keysCounts: { distinct: number; total: number }[] = [];
    const infoKeys: number[] = [];
    let isRunning = true;
    const probing = (async () => {
      for (let i = 0; isRunning; i++) {
        // A pipelined flood on one shard's shared connection, then the probe: its piece for that
        // shard waits behind the flood while the other shards answer at once.
        const flood = flooder.pipeline();
        const key = i % 2 === 0 ? sourceKey : targetKey;
        for (let j = 0; j < 2000; j++) flood.get(key);
        const flooded = flood.exec();
        await sleep(0);
        if (i % 4 === 3) {
          const keys = await probe.keys('ks:1*');
          keysCounts.push({ distinct: new Set(keys).size, total: keys.length });
        } else if (i % 8 === 6) {
          const info = (await probe.info('keyspace')) as string;
          infoKeys.push(Number(/db0:keys=(\d+)/.exec(info)?.[1] ?? -1));
        } else {
          sizes.push(await probe.dbsize());
        }
        await flooded;
        await sleep(3);
      }
    })();
    try {
      await runPlan(proxy, { op: 'reshard', from: 's1', to: 's2', slots: 2_500 });
    } finally {
      isRunning = false;
      await probing;
      probe.disconnect();
      flooder.disconnect();
    }
    const matching = ALL_KEYS.filter((k) => k.startsWith('ks:1')).length;
    console.log('DBSIZE during the reshard', JSON.stringify({ probes: sizes.length, min: Math.min(...sizes), max: Math.max(...sizes), keysProbes: keysCounts.length, info: infoKeys.length }));
    expect(sizes.length).toBeGreaterThan(10);
    expect.soft(sizes.filter((n) => n < TOTAL).slice(0, 10), 'DBSIZE below the keys that existed throughout').toEqual([]);
    // One source: one batch in flight, plus the mover's marker hash.
    expect.soft(sizes.filter((n) => n > TOTAL + BATCH_KEYS + 1).slice(0, 10), 'DBSIZE above keys + one batch + marker').toEqual([]);
    expect.soft(keysCounts.filter((c) => c.distinct < matching).slice(0, 10), 'KEYS ks:1* missing keys').toEqual([]);
    expect.soft(keysCounts.filter((c) => c.total - c.distinct > BATCH_KEYS).slice(0, 10), 'KEYS ks:1* duplicates above a batch').toEqual([]);
    expect.soft(infoKeys.filter((n) => n < TOTAL || n > TOTAL + BATCH_KEYS + 1).slice(0, 10), 'INFO keyspace keys= out of bounds').toEqual([]);
  }, 20_000);

  it('SCAN across add-shard: every key that exists throughout is returned; EVALSHA and FCALL run on the new shard', async () => {
    const { proxy, shards, specs } = deployment;
    const before = ownerFromStateFile(proxy.stateFile).owner;
    const order = await shardOrder(proxy);
    expect(order).toEqual(['s1', 's2', 's3']);
    const redis = client(proxy.port);
    // Scripts and functions loaded before the shard exists.
    const body = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
    const sha = (await redis.call('SCRIPT', 'LOAD', body)) as string;
    expect(await redis.call('FUNCTION', 'LOAD', 'REPLACE', "#!lua name=kslib\nredis.register_function('ks_incr', function(keys, args) return redis.call('INCRBY', keys[1], args[1]) end)")).toBe('kslib');
    const counters = COUNTERS;
    const incremented = redis.pipeline();
    for (const c of counters) incremented.evalsha(sha, 1, c, 1);
    expect((await incremented.exec())!.map(([err, value]) => err?.message ?? value)).toEqual(counters.map(() => 1));

    const parkedClients = [0, 1, 2].map(() => client(proxy.port));
    const parked = await Promise.all(parkedClients.map((c, i) => park(c, i, `parked in shard ${i}`)));
    const free = freeScanners(proxy.port, rand);
    await sleep(150);
    const s4 = specs[3]!;
    const replica = shards.replicas[3]![0]!;
    const window = await runPlan(proxy, { op: 'add-shard', name: 's4', primary: `${s4.node.host}:${s4.node.port}`, replicas: [`${replica.host}:${replica.port}`] });
    await sleep(150);
    await free.stop();
    const after = ownerFromStateFile(proxy.stateFile).owner;
    expect(await shardOrder(proxy)).toEqual(['s1', 's2', 's3', 's4']);

    const found: string[] = [];
    for (const [i, p] of parked.entries()) {
      await scanOn(parkedClients[i]!, p.it, p.cursor, () => 20 + Math.floor(rand() * 400), 0);
      found.push(...problems(p.it, mayMiss(p.index, order, before, after), null));
    }
    found.push(...freeProblems(free.iterations, window, before, after));
    console.log('add-shard SCAN iterations', free.iterations.length, 'overlapping the plan', free.iterations.filter((it) => it.endedAt >= window.startedAt && it.startedAt <= window.endedAt).length);
    expect.soft(found.slice(0, 12), 'SCAN across add-shard').toEqual([]);

    // SCRIPT EXISTS: loaded through the proxy, never flushed: one Redis answers 1.
    expect.soft(await redis.call('SCRIPT', 'EXISTS', sha), 'SCRIPT EXISTS of a script loaded before add-shard').toEqual([1]);
    // EVALSHA and FCALL on counters whose slots now live on s4.
    const onS4 = counters.filter((c) => after[slotOf(c)] === 's4');
    expect(onS4.length).toBeGreaterThan(10);
    const evalErrors: string[] = [];
    const fcallErrors: string[] = [];
    for (const c of onS4) {
      try {
        expect(await redis.call('EVALSHA', sha, '1', c, '1')).toBe(2);
      } catch (err) {
        evalErrors.push(`${c}: ${(err as Error).message}`);
      }
      try {
        await redis.call('FCALL', 'ks_incr', '1', c, '1');
      } catch (err) {
        fcallErrors.push(`${c}: ${(err as Error).message}`);
      }
    }
    expect.soft(evalErrors.slice(0, 3), 'EVALSHA on a shard added after SCRIPT LOAD').toEqual([]);
    expect.soft(fcallErrors.slice(0, 3), 'FCALL on a shard added after FUNCTION LOAD').toEqual([]);
    for (const c of parkedClients) c.disconnect();
    redis.disconnect();
  }, 20_000);

  it('SCAN across remove-shard: a key that exists throughout and never moves is returned', async () => {
    const { proxy } = deployment;
    const before = ownerFromStateFile(proxy.stateFile).owner;
    const order = await shardOrder(proxy);
    expect(order).toEqual(['s1', 's2', 's3', 's4']);
    const parkedClients = [0, 1, 2, 3].map(() => client(proxy.port));
    const parked = await Promise.all(parkedClients.map((c, i) => park(c, i, `parked in shard ${i} (${order[i]})`)));
    const free = freeScanners(proxy.port, rand);
    await sleep(150);
    const window = await runPlan(proxy, { op: 'remove-shard', name: 's2' });
    await sleep(150);
    await free.stop();
    const after = ownerFromStateFile(proxy.stateFile).owner;
    expect(await shardOrder(proxy)).toEqual(['s1', 's3', 's4']);

    const found: string[] = [];
    for (const [i, p] of parked.entries()) {
      await scanOn(parkedClients[i]!, p.it, p.cursor, () => 20 + Math.floor(rand() * 400), 0);
      found.push(...problems(p.it, mayMiss(p.index, order, before, after), null, new Set(['s2'])));
    }
    found.push(...freeProblems(free.iterations, window, before, after, null, new Set(['s2'])));
    for (const c of parkedClients) c.disconnect();
    expect(found.slice(0, 12), 'SCAN across remove-shard').toEqual([]);
  }, 20_000);

  it('SCAN across a failover of the shard being scanned', async () => {
    const { proxy, shards } = deployment;
    const owner = ownerFromStateFile(proxy.stateFile).owner;
    const order = await shardOrder(proxy);
    const victim = order.indexOf('s3');
    const oldPrimary = shards.primaries[2]!;
    const replica = shards.replicas[2]![0]!;
    const direct = new Redis({ host: oldPrimary.host, port: oldPrimary.port });
    expect(await direct.call('WAIT', '1', '2000')).toBe(1);
    direct.disconnect();

    const parkedClient = client(proxy.port);
    const parked = await park(parkedClient, victim, 'parked in s3');
    const free = freeScanners(proxy.port, rand);
    await sleep(100);
    const window = { startedAt: Date.now(), endedAt: 0 };
    oldPrimary.kill('SIGKILL');
    for (const deadline = Date.now() + 8_000; ; await sleep(20)) {
      const s3 = (await proxy.status()).shards.find((s) => s.name === 's3');
      if (s3?.primary === `${replica.host}:${replica.port}`) break;
      expect(Date.now(), 's3 not failed over').toBeLessThan(deadline);
    }
    window.endedAt = Date.now();
    await sleep(300);
    await free.stop();
    await scanOn(parkedClient, parked.it, parked.cursor, () => 20 + Math.floor(rand() * 400), 0);
    parkedClient.disconnect();
    const found = problems(parked.it, () => false, null);
    found.push(...freeProblems(free.iterations, window, owner, owner, FAILOVER_ERRORS));
    expect(found.slice(0, 12), 'SCAN across a failover').toEqual([]);
  }, 20_000);

  /**
   * The mover runs in SCHED_IDLE: on busy cores it is descheduled for a while at any point. Here
   * it is stopped (SIGSTOP) at a moment when a batch of its keys is marked and DUMPed on the
   * source but not yet RESTOREd on the target; the flush is sent and acknowledged; then it goes on.
   */
  it('FLUSHALL / FLUSHDB (ASYNC too) in the middle of a reshard leave no key anywhere', async () => {
    const { proxy, shards } = deployment;
    const redis = client(proxy.port);
    const reader = client(proxy.port);
    const leftovers: string[] = [];
    const variants: string[][] = [['FLUSHALL'], ['FLUSHALL', 'ASYNC'], ['FLUSHDB', 'ASYNC']];
    try {
      for (const [round, flush] of variants.entries()) {
        const status = await proxy.status();
        const [from, to] = round % 2 === 0 ? ['s1', 's4'] : ['s4', 's1'];
        const sourceAddress = status.shards.find((s) => s.name === from)!.primary;
        const targetAddress = status.shards.find((s) => s.name === to)!.primary;
        const source = new Redis({ host: sourceAddress.split(':')[0]!, port: Number(sourceAddress.split(':')[1]) });
        const target = new Redis({ host: targetAddress.split(':')[0]!, port: Number(targetAddress.split(':')[1]) });
        const { owner } = ownerFromStateFile(proxy.stateFile);
        // 10 keys in each of the 400 slots the reshard moves (the giver's highest).
        const moving = owner.flatMap((o, slot) => (o === from ? [slot] : [])).slice(-400);
        const keys = tagsFor(moving).flatMap((tag) => Array.from({ length: 10 }, (_, n) => `fl:{${tag}}:${round}:${n}`));
        const write = redis.pipeline();
        for (const k of keys) write.set(k, 'x');
        await write.exec();
        const fromKeys = keys.filter((k) => owner[slotOf(k)] === from);
        // GETs of keys of the moving slots meanwhile: their keys move on demand too.
        let isReading = true;
        const reading = (async () => {
          while (isReading) {
            const p = reader.pipeline();
            for (let i = 0; i < 10; i++) p.get(fromKeys[Math.floor(rand() * fromKeys.length)]!);
            await p.exec();
            await sleep(1);
          }
        })();
        let inFlight: string[] = [];
        let flushReply: unknown = null;
        try {
          const submitted = await proxy.submit({ op: 'reshard', from, to, slots: 400 });
          expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
          const started = Date.now();
          for (const deadline = Date.now() + 8_000; inFlight.length === 0; ) {
            if (Date.now() > deadline || (await proxy.status()).state !== 'running') break;
            // Looked up each time: a mover starved on a busy machine is replaced by another.
            const mover = moverProcesses(proxy.pid)[0]?.pid;
            if (mover === undefined || !signalled(mover, 'SIGSTOP')) continue;
            try {
              const marked = await source.hkeys(MARKER);
              if (marked.length > 0) {
                // A RESTORE the mover wrote before it stopped has run on the target by now: caught
                // before it only when none of the marked keys is there.
                await sleep(5);
                const onTarget = await target.exists(...marked);
                if (onTarget === 0) {
                  inFlight = marked;
                  flushReply = await redis.call(flush[0]!, ...flush.slice(1));
                }
              }
            } finally {
              signalled(mover, 'SIGCONT');
            }
            await sleep(Math.floor(rand() * 3));
          }
          const plan = Date.now();
          await proxy.waitForPlan(10_000);
          console.log(`round ${round}: caught after ${plan - started} ms, plan done ${Date.now() - plan} ms later`);
        } finally {
          isReading = false;
          await reading;
          source.disconnect();
          target.disconnect();
        }
        expect(inFlight.length, `${flush.join(' ')}: no batch caught in flight`).toBeGreaterThan(0);
        expect(flushReply).toBe('OK');
        expect((await proxy.status()).state).toBe('done');
        const viaProxy = await redis.dbsize();
        const left: string[] = [];
        for (const node of [...shards.primaries, ...shards.replicas.flat()]) {
          if (!node.isRunning) continue;
          const direct = new Redis({ host: node.host, port: node.port });
          try {
            const role = ((await direct.call('ROLE')) as unknown[])[0];
            if (role === 'master') for (const k of await direct.keys('*')) left.push(`${k} on ${node.port}`);
          } finally {
            direct.disconnect();
          }
        }
        const marked = new Set(inFlight);
        const others = left.filter((entry) => !marked.has(entry.slice(0, entry.indexOf(' on '))));
        console.log(`${flush.join(' ')} round ${round} (${from} -> ${to}): ${inFlight.length} keys in flight at the flush; DBSIZE after ${viaProxy}, keys left ${left.length} (${others.length} not of the stopped batch: ${others.slice(0, 3).join(', ')})`);
        if (viaProxy !== 0 || left.length > 0) leftovers.push(`${flush.join(' ')} (${from} -> ${to}, ${inFlight.length} keys in flight): DBSIZE ${viaProxy}, ${left.length} left: ${left.slice(0, 3).join(', ')}`);
        // The next round starts from an empty keyspace.
        await redis.flushall();
      }
    } finally {
      redis.disconnect();
      reader.disconnect();
    }
    expect(leftovers, 'keys that came back after an acknowledged FLUSHALL/FLUSHDB').toEqual([]);
  }, 25_000);
});

/** Sends `signal` to `pid`; false when that process is gone. */
function signalled(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(pid, signal);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw err;
  }
}
