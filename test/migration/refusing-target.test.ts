import * as fs from 'node:fs';
import Redis from 'ioredis';
import { beforeAll, describe, expect, it } from 'vitest';
import { findFreePort } from '../../src/cli/local-redis';
import type { ReshardStatus } from '../../src/control/resharding';
import { seededRandom } from '../helpers/seeded-random';
import { around, firstDecrease, listOf, tagsFor, runPipelines } from './contended-load';
import { HOST, ownerFromStateFile, sleep, slotOf, useMigrationDeployment, type MigrationProxy, type ShardSpec } from './migration-harness';

/**
 * Shards that refuse work in the middle of a slot migration. The same 27 slots (s3's highest)
 * move five times, s3 -> s1 -> s2 -> s1 -> s3 -> s1, and each plan meets a shard that refuses,
 * set by hand on the shard itself (not through the proxy) just before the plan starts:
 *
 * 1. s3 -> s1, the target out of memory (`maxmemory` a little above its use, `noeviction`): the
 *    mover's RESTOREs, the commands' MIGRATEs and big keys' chunked copies fail part-way (OOM);
 * 2. s1 -> s2, the target made a replica of a node that does not answer (REPLICAOF by hand): it
 *    keeps its data and answers READONLY to every write;
 * 3. s2 -> s1, the target with `min-replicas-to-write 1` and no replica: NOREPLICAS;
 * 4. s1 -> s3, the source under `CLIENT PAUSE WRITE` (its scripts wait);
 *    each lifted 1.2 s into its plan, which must then finish;
 * 5. s3 -> s1, the source out of memory: nothing a move needs is refused there (MIGRATE, DEL,
 *    reads; the target's RESTORE), and keys leaving it only free memory, so the plan must
 *    finish while it lasts (2 s), as a reshard away from a full shard is what one reshards for.
 *
 * Meanwhile seeded clients pipeline on the moving keys: INCRBY on shared counters, SET of a
 * per-client sequence number followed by a GET of it, RPUSH and XADD of unique tokens, LLEN of
 * a big list. The keys include TTL keys (a long TTL, which must be kept, short ones expiring
 * during the moves, which must not come back), a big list with a TTL (copied in chunks), a big
 * set whose TTL ends during the first plan, a stream with a consumer group and pending entries
 * big enough to be moved whole by MIGRATE.
 *
 * Checked (docs/resharding.md): a command whose key cannot move waits up to keyMoveWaitMs, then
 * gets TRYAGAIN without having run, the key whole on the source; every other error is the
 * refusing shard's own (OOM / READONLY / NOREPLICAS), and only while it refuses; an error reply
 * means the command did not run (counters are the sum of the acknowledged increments, an
 * errored token is nowhere, a SET answered with an error is never read back); replies per
 * client and key in send order; every key on exactly its slot's owner at the end, no mover key
 * left; TTLs kept; the refusals reported by /admin/status and the errors metric; the mover
 * process not dying of a refused write ("every failed step is retried"); every plan done.
 *
 * REFUSING_SEED=N replays a run's commands; REFUSING_OOM_MS=20000 keeps the first target full
 * for 20 s (the plan then fails: the mover process dies at each big key's copy and is restarted
 * only 5 times); REFUSING_LOG=FILE keeps the proxy's log.
 */

const MOVING_SLOT_COUNT = 27;
const MOVING_SLOTS = Array.from({ length: MOVING_SLOT_COUNT }, (_, i) => 16384 - MOVING_SLOT_COUNT + i);
/**
 * The first three hold a big key each and nothing else (the mover takes a plan's slots in
 * ascending order, a group at a time, and a group's big keys in slot order: these are in the
 * group that meets the refusal, the set first); the others the clients' keys.
 */
const BIG_SET_SLOT = MOVING_SLOTS[0]!;
const BIG_LIST_SLOT = MOVING_SLOTS[1]!;
const BIG_STREAM_SLOT = MOVING_SLOTS[2]!;
const TAG_SLOTS = MOVING_SLOTS.slice(3);
const BIG_SET_MEMBERS = 2_500;
/** The big set's TTL, set as the out-of-memory plan starts: it expires while that plan runs. */
const BIG_SET_TTL_MS = 800;
/** One slot per shard that never moves (s1, s2, s3). */
const STABLE_SLOTS = [1000, 8000, 12000];
const FILLER_PER_SLOT = 25;
const FILLER_VALUE = 'f'.repeat(200);
const BIG_LIST_ITEMS = 3_000;
const BIG_LIST_ITEM = 'L'.repeat(100);
const BIG_STREAM_ENTRIES = 2_500;
const KEY_MOVE_WAIT_MS = 600;
/** How long each refusal lasts once its plan is submitted. */
const REFUSAL_MS = 1_200;
const CLIENTS = 6;
const BATCH = 10;
const PIPELINES_IN_FLIGHT = 2;
const PAUSE_MS = 15;

const key = {
  counter: (tag: string, i: number) => `{${tag}}:c${i}`,
  seq: (tag: string, client: number) => `{${tag}}:seq${client}`,
  list: (tag: string) => `{${tag}}:l`,
  stream: (tag: string) => `{${tag}}:x`,
  filler: (tag: string, i: number) => `{${tag}}:f${i}`,
  longTtl: (tag: string) => `{${tag}}:ttl-long`,
  shortTtl: (tag: string) => `{${tag}}:ttl-short`,
};

type Kind = 'incrby' | 'set-seq' | 'get-seq' | 'rpush' | 'xadd' | 'get-counter' | 'llen-big';

interface Sent {
  readonly kind: Kind;
  readonly key: string;
  readonly delta?: number;
  readonly value?: string;
  readonly sentAt: number;
  answeredAt?: number;
  reply?: unknown;
  error?: string;
}

/** The errors a refusing shard may cause, by where they come from. */
const DOCUMENTED_ERRORS: readonly [string, RegExp][] = [
  ['proxy: key could not move within keyMoveWaitMs', /^TRYAGAIN slotproxy could not move the key to its new shard in time/],
  ['target out of memory', /^OOM command not allowed when used memory > 'maxmemory'/],
  ['target is a replica', /^READONLY You can't write against a read only replica/],
  ['target lacks replicas', /^NOREPLICAS Not enough good replicas to write/],
];

class Client {
  readonly id: number;
  readonly redis: Redis;
  readonly sent: Sent[] = [];
  readonly #random: () => number;
  readonly #tags: readonly string[];
  readonly #streamTags: readonly string[];
  readonly #bigList: string;
  #seq = 0;

  constructor(id: number, port: number, seed: number, tags: readonly string[], streamTags: readonly string[], bigList: string) {
    this.id = id;
    this.redis = new Redis({ host: HOST, port, lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null });
    this.redis.on('error', () => undefined);
    this.#random = seededRandom(seed);
    this.#tags = tags;
    this.#streamTags = streamTags;
    this.#bigList = bigList;
  }

  #pick<T>(list: readonly T[]): T {
    return list[Math.floor(this.#random() * list.length)]!;
  }

  async sendBatch(): Promise<void> {
    const pipeline = this.redis.pipeline();
    const batch: Sent[] = [];
    const now = Date.now();
    const add = (s: Omit<Sent, 'sentAt'>): void => {
      const sent: Sent = { ...s, sentAt: now };
      batch.push(sent);
      this.sent.push(sent);
    };
    for (let i = 0; i < BATCH; i++) {
      const r = this.#random();
      const tag = this.#pick(this.#tags);
      if (r < 0.35) {
        const k = key.counter(tag, this.#random() < 0.5 ? 0 : 1);
        const delta = 1 + Math.floor(this.#random() * 5);
        add({ kind: 'incrby', key: k, delta });
        pipeline.incrby(k, delta);
        if (this.#random() < 0.3) {
          // A burst on the same key in the same pipeline.
          const more = 1 + Math.floor(this.#random() * 3);
          for (let m = 0; m < more; m++) {
            add({ kind: 'incrby', key: k, delta });
            pipeline.incrby(k, delta);
          }
        }
      } else if (r < 0.6) {
        const k = key.seq(tag, this.id);
        const value = `${this.id}:${this.#seq++}`;
        add({ kind: 'set-seq', key: k, value });
        pipeline.set(k, value);
        add({ kind: 'get-seq', key: k });
        pipeline.get(k);
      } else if (r < 0.85) {
        const k = key.list(tag);
        const value = `${this.id}:${this.#seq++}`;
        add({ kind: 'rpush', key: k, value });
        pipeline.rpush(k, value);
      } else if (r < 0.93) {
        const k = key.stream(this.#pick(this.#streamTags));
        const value = `${this.id}:${this.#seq++}`;
        add({ kind: 'xadd', key: k, value });
        pipeline.xadd(k, '*', 't', value);
      } else if (r < 0.95) {
        // The big list: answered +BIG by the key-move script, waits while it is copied.
        add({ kind: 'llen-big', key: this.#bigList });
        pipeline.llen(this.#bigList);
      } else {
        const k = key.counter(tag, 0);
        add({ kind: 'get-counter', key: k });
        pipeline.get(k);
      }
    }
    let results: [Error | null, unknown][] | null;
    try {
      results = await pipeline.exec();
    } catch (err) {
      for (const s of batch) {
        s.answeredAt = Date.now();
        s.error = `pipeline: ${(err as Error).message}`;
      }
      return;
    }
    const at = Date.now();
    batch.forEach((s, i) => {
      const [err, reply] = results?.[i] ?? [new Error('no reply'), null];
      s.answeredAt = at;
      if (err !== null) s.error = err.message;
      else s.reply = reply;
    });
  }

  async run(isStopped: () => boolean): Promise<void> {
    await runPipelines(() => this.sendBatch(), isStopped, PIPELINES_IN_FLIGHT, PAUSE_MS);
  }
}

/** XPENDING's extended form without the idle times (which grow). */
function withoutIdle(pending: unknown): unknown {
  return (pending as unknown[][]).map(([id, consumer, , deliveries]) => [id, consumer, deliveries]);
}

/** A hash tag whose slot is `slot`, other than `avoid`. */
function otherTagFor(slot: number, avoid: readonly string[]): string {
  for (let n = 0; ; n++) {
    const tag = `b${n}`;
    if (slotOf(`{${tag}}`) === slot && !avoid.includes(tag)) return tag;
  }
}

/** A refusal set on a shard by hand, and how it is lifted. */
interface Refusal {
  readonly name: string;
  readonly plan: { readonly from: string; readonly to: string };
  /** The shard refusing (the target, or the source for the pause). */
  readonly on: string;
  /** What the plan's status must report as its last error while the refusal lasts (null: nothing required). */
  readonly reported: RegExp | null;
  /** How long it lasts. @default REFUSAL_MS */
  readonly ms?: number;
  /**
   * The plan must finish while the refusal lasts (it refuses nothing a move needs): waited for
   * up to `ms`, then the refusal is lifted all the same.
   */
  readonly isPassable?: boolean;
  apply(redis: Redis): Promise<void>;
  lift(redis: Redis): Promise<void>;
}

/** The migration errors metric, by kind. */
async function migrationErrors(metricsPort: number): Promise<Record<string, number>> {
  const text = await (await fetch(`http://${HOST}:${metricsPort}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const match of text.matchAll(/^slotproxy_migration_errors_total\{kind="([^"]+)"\} (\d+)/gm)) out[match[1]!] = Number(match[2]);
  return out;
}

/** Every key on every shard, with the shard it is on. */
async function keysByShard(specs: readonly ShardSpec[]): Promise<Map<string, string[]>> {
  const where = new Map<string, string[]>();
  for (const spec of specs) {
    const redis = new Redis({ host: spec.node.host, port: spec.node.port });
    try {
      let cursor = '0';
      do {
        const [next, keys] = await redis.scan(cursor, 'COUNT', 1000);
        cursor = next;
        for (const k of keys) listOf(where, k).push(spec.name);
      } while (cursor !== '0');
    } finally {
      redis.disconnect();
    }
  }
  return where;
}

describe('shards that refuse work during a slot migration', () => {
  let metricsPort = 0;
  beforeAll(async () => {
    metricsPort = await findFreePort();
  });
  const deployment = useMigrationDeployment({
    shards: 3,
    config: {
      keyMoveWaitMs: KEY_MOVE_WAIT_MS,
      migrateKeysPerSecond: 4_000,
      migrateBatchKeys: 10,
      migrateSlotsInFlight: 12,
      // Read when the proxy starts (after the beforeAll above found a port).
      get metrics() {
        return `${HOST}:${metricsPort}`;
      },
    },
  });

  it('loses no acknowledged write, runs no command it answered with an error, and finishes every plan once the shard accepts again', async () => {
    const { proxy, specs } = deployment;
    const seed = Number(process.env['REFUSING_SEED'] ?? Date.now() % 1_000_000);
    console.log(`refusing-target seed ${seed} (REFUSING_SEED=${seed} to replay)`);
    const random = seededRandom(seed);
    const movingTags = tagsFor(TAG_SLOTS);
    const stableTags = tagsFor(STABLE_SLOTS);
    const tags = [...movingTags, ...stableTags];
    const streamTags = [movingTags[3]!, movingTags[11]!, stableTags[0]!];
    // Big keys alone in slots that move (a slot's big keys go after its small ones, and only
    // once those are moved: alone, they meet the refusal themselves).
    const bigListKey = `{${otherTagFor(BIG_LIST_SLOT, movingTags)}}:big-list`;
    const bigStreamKey = `{${otherTagFor(BIG_STREAM_SLOT, movingTags)}}:big-stream`;
    const bigSetKey = `{${otherTagFor(BIG_SET_SLOT, movingTags)}}:big-set`;
    const groupStreamKey = key.stream(streamTags[0]!);

    const direct = new Map(specs.map((s) => [s.name, new Redis({ host: s.node.host, port: s.node.port })]));
    const shardNamed = (name: string): Redis => direct.get(name)!;
    const setup = new Redis({ host: HOST, port: proxy.port });
    const clients: Client[] = [];
    let isStopped = false;
    let running: Promise<void>[] = [];
    /** Each refusal: applied, lifted, its plan done (ms since the epoch). */
    const windows: { name: string; from: number; to: number; planDone: number }[] = [];
    const phaseNotes: string[] = [];
    const startedAt = Date.now();
    try {
      expect(MOVING_SLOTS.every((slot) => ownerFromStateFile(proxy.stateFile).owner[slot] === 's3')).toBe(true);

      // ------------------------------------------------------------------------------------
      // The data, through the proxy.
      const loading = setup.pipeline();
      for (const tag of tags) loading.set(key.counter(tag, 0), '0').set(key.counter(tag, 1), '0');
      for (const tag of movingTags) for (let i = 0; i < FILLER_PER_SLOT; i++) loading.set(key.filler(tag, i), FILLER_VALUE);
      for (let i = 0; i < BIG_LIST_ITEMS; i += 500) loading.rpush(bigListKey, ...Array.from({ length: 500 }, () => BIG_LIST_ITEM));
      loading.pexpire(bigListKey, 300_000);
      for (let i = 0; i < BIG_SET_MEMBERS; i += 500) loading.sadd(bigSetKey, ...Array.from({ length: 500 }, (_, j) => `member-${String(i + j).padStart(50, '0')}`));
      for (let i = 0; i < BIG_STREAM_ENTRIES; i += 500) {
        for (let j = 0; j < 500; j++) loading.xadd(bigStreamKey, `${1_000 + i + j}-1`, 'n', String(i + j));
      }
      loading.xgroup('CREATE', bigStreamKey, 'workers', '0');
      loading.xgroup('CREATE', groupStreamKey, 'readers', '$', 'MKSTREAM');
      // Long TTLs (kept through every move) and short ones (expiring during the moves: they
      // must not come back).
      for (const tag of movingTags) {
        loading.set(key.longTtl(tag), `long-${tag}`, 'PX', 300_000);
        loading.set(key.shortTtl(tag), `short-${tag}`, 'PX', 300 + Math.floor(random() * 6_000));
      }
      for (const [err] of (await loading.exec())!) expect(err).toBeNull();
      // A consumer with pending entries on the big stream.
      await setup.xreadgroup('GROUP', 'workers', 'alice', 'COUNT', 20, 'STREAMS', bigStreamKey, '>');
      await setup.xack(bigStreamKey, 'workers', '1000-1', '1001-1');
      const bigStreamBefore = {
        length: await setup.xlen(bigStreamKey),
        groups: await setup.call('XINFO', 'GROUPS', bigStreamKey),
        pending: withoutIdle(await setup.xpending(bigStreamKey, 'workers', '-', '+', 100)),
        last: await setup.xrevrange(bigStreamKey, '+', '-', 'COUNT', 1),
      };
      const expireAt = new Map<string, number>();
      for (const k of [...movingTags.map(key.longTtl), bigListKey]) expireAt.set(k, Number(await setup.call('PEXPIRETIME', k)));
      expect([...expireAt.values()].every((t) => t > Date.now())).toBe(true);

      // ------------------------------------------------------------------------------------
      // The load.
      for (let c = 0; c < CLIENTS; c++) clients.push(new Client(c, proxy.port, seed * 100 + c, tags, streamTags, bigListKey));
      await Promise.all(clients.map((c) => c.redis.connect()));
      running = clients.map((c) => c.run(() => isStopped));
      await sleep(200);

      const deadPort = await findFreePort();
      const refusals: Refusal[] = [
        {
          name: 'target out of memory',
          plan: { from: 's3', to: 's1' },
          on: 's1',
          reported: /OOM/,
          // REFUSING_OOM_MS=20000: an out-of-memory target for longer than the mover's restarts last.
          ms: Number(process.env['REFUSING_OOM_MS'] ?? REFUSAL_MS),
          async apply(redis) {
            // A big key that expires while this plan runs (its copy may be under way then).
            expect(await setup.pexpire(bigSetKey, BIG_SET_TTL_MS)).toBe(1);
            const used = Number(/used_memory:(\d+)/.exec(await redis.info('memory'))![1]);
            // A little room: some keys move, then RESTOREs fail part-way (and the big list's copy).
            await redis.config('SET', 'maxmemory-policy', 'noeviction');
            await redis.config('SET', 'maxmemory', String(used + 160 * 1024));
          },
          async lift(redis) {
            await redis.config('SET', 'maxmemory', '0');
          },
        },
        {
          name: 'target became a replica',
          plan: { from: 's1', to: 's2' },
          on: 's2',
          reported: /READONLY/,
          async apply(redis) {
            // A master that never answers: the node keeps its data and refuses writes.
            await redis.call('REPLICAOF', HOST, String(deadPort));
          },
          async lift(redis) {
            await redis.call('REPLICAOF', 'NO', 'ONE');
          },
        },
        {
          name: 'target without its replicas',
          plan: { from: 's2', to: 's1' },
          on: 's1',
          reported: /NOREPLICAS/,
          async apply(redis) {
            await redis.config('SET', 'min-replicas-to-write', '1');
          },
          async lift(redis) {
            await redis.config('SET', 'min-replicas-to-write', '0');
          },
        },
        {
          name: 'source paused for writes',
          plan: { from: 's1', to: 's3' },
          on: 's1',
          reported: null,
          async apply(redis) {
            await redis.call('CLIENT', 'PAUSE', String(REFUSAL_MS), 'WRITE');
          },
          async lift() {
            // CLIENT PAUSE ends by itself.
          },
        },
        {
          // Keys leaving a full shard only free memory (MIGRATE, DEL and a target's RESTORE are
          // allowed there): a reshard away from a full shard, what one reshards for, must go.
          name: 'source out of memory',
          plan: { from: 's3', to: 's1' },
          on: 's3',
          reported: null,
          // The most it may last: the refusal is lifted as soon as the plan is done (~1 s when idle).
          ms: 10_000,
          isPassable: true,
          async apply(redis) {
            const used = Number(/used_memory:(\d+)/.exec(await redis.info('memory'))![1]);
            await redis.config('SET', 'maxmemory-policy', 'noeviction');
            await redis.config('SET', 'maxmemory', String(Math.floor(used / 2)));
          },
          async lift(redis) {
            await redis.config('SET', 'maxmemory', '0');
          },
        },
      ];

      for (const refusal of refusals) {
        const { from, to } = refusal.plan;
        const shard = shardNamed(refusal.on);
        const windowStart = Date.now();
        await refusal.apply(shard);
        const submitted = await proxy.submit({ op: 'reshard', from, to, slots: MOVING_SLOT_COUNT });
        expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
        let during: ReshardStatus;
        if (refusal.isPassable === true) {
          const until = Date.now() + (refusal.ms ?? REFUSAL_MS);
          while ((during = await proxy.status()).state === 'running' && Date.now() < until) await sleep(50);
          expect.soft(during.state, `${refusal.name}: the plan while the refusal lasts (${during.progress?.lastError ?? 'no error'})`).toBe('done');
        } else {
          await sleep(refusal.ms ?? REFUSAL_MS);
          // On a busy machine the mover may not have met the refusal yet: it holds until it has.
          const until = Date.now() + 15_000;
          while ((during = await proxy.status()).state === 'running' && refusal.reported !== null && (during.progress?.errors ?? 0) === 0 && Date.now() < until) await sleep(50);
        }
        await refusal.lift(shard);
        const windowEnd = Date.now();
        const status = await waitForPlan(proxy, 20_000);
        windows.push({ name: refusal.name, from: windowStart, to: windowEnd, planDone: Date.now() });
        const note = `${refusal.name} (${from} -> ${to}): ${status.state} ${Date.now() - windowStart} ms after the refusal; during it: state ${during.state}, ${during.progress?.slotsDone ?? 0}/${during.progress?.slotsTotal ?? 0} slots done, ${during.progress?.errors ?? 0} errors, last: ${during.progress?.lastError ?? 'none'}`;
        phaseNotes.push(note);
        console.log(note);
        expect(status.state, `${refusal.name}: ${status.error}\n${proxy.logs().slice(-3000)}`).toBe('done');
        const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
        expect(migrations).toBe(0);
        expect(MOVING_SLOTS.filter((slot) => owner[slot] !== to), refusal.name).toEqual([]);
        if (refusal.reported !== null) {
          // The refusal shows in the plan's status while it lasts.
          expect(during.state, refusal.name).toBe('running');
          expect(during.progress?.errors ?? 0, refusal.name).toBeGreaterThan(0);
          expect.soft(during.progress?.lastError ?? '', refusal.name).toMatch(refusal.reported);
        }
      }
      await sleep(200);
      isStopped = true;
      await Promise.all(running);
      const sentCount = clients.reduce((n, c) => n + c.sent.length, 0);
      console.log(`seed ${seed}: ${sentCount} commands from ${CLIENTS} clients in ${Date.now() - startedAt} ms`);

      // ------------------------------------------------------------------------------------
      // What the clients saw.
      const all = clients.flatMap((c) => c.sent.map((s) => ({ client: c.id, s })));
      expect(all.filter(({ s }) => s.answeredAt === undefined).length, 'commands never answered').toBe(0);
      const errored = all.filter(({ s }) => s.error !== undefined);
      const errorKinds = new Map<string, number>();
      const undocumented: string[] = [];
      const outsideWindows: string[] = [];
      for (const { client, s } of errored) {
        const kind = DOCUMENTED_ERRORS.find(([, re]) => re.test(s.error!))?.[0];
        errorKinds.set(kind ?? 'undocumented', (errorKinds.get(kind ?? 'undocumented') ?? 0) + 1);
        const what = `client ${client} ${s.kind} ${s.key} sent at +${s.sentAt - startedAt} ms, answered at +${s.answeredAt! - startedAt} ms: ${s.error}`;
        if (kind === undefined) undocumented.push(what);
        // The shard's own errors come while it refuses; TRYAGAIN while its plan has not caught
        // up (a big key waits for the mover, which backs off after failures).
        const isTryAgain = kind === DOCUMENTED_ERRORS[0]![0];
        const inWindow = windows.some((w) => s.answeredAt! >= w.from && s.sentAt <= (isTryAgain ? w.planDone : w.to + 50));
        if (!inWindow) outsideWindows.push(what);
      }
      console.log(`client errors: ${JSON.stringify(Object.fromEntries(errorKinds))}`);
      expect.soft(undocumented.slice(0, 10), `${undocumented.length} undocumented client errors`).toEqual([]);
      expect.soft(outsideWindows.slice(0, 10), `${outsideWindows.length} client errors outside the refusal windows`).toEqual([]);
      const ok = all.filter(({ s }) => s.error === undefined);

      // Replies per client and key in send order.
      const orderProblems: string[] = [];
      const staleOwn: string[] = [];
      for (const c of clients) {
        const seen = new Map<string, number[]>();
        const lastSet = new Map<string, string>();
        for (const s of c.sent) {
          if (s.kind === 'set-seq' && s.error === undefined) lastSet.set(s.key, s.value!);
          if (s.error !== undefined) continue;
          if (s.kind === 'incrby' || s.kind === 'rpush') listOf(seen, `${s.kind} ${s.key}`).push(Number(s.reply));
          // A GET after the client's own SET reads its last acknowledged SET: an errored SET must not have run.
          if (s.kind === 'get-seq' && s.reply !== (lastSet.get(s.key) ?? null)) staleOwn.push(`client ${c.id} GET ${s.key} -> ${String(s.reply)}, its last acknowledged SET ${lastSet.get(s.key)}`);
        }
        for (const [what, replies] of seen) if (firstDecrease(replies) >= 0) orderProblems.push(`client ${c.id} ${what}: ${around(replies)}`);
      }
      const badLlen = ok.filter(({ s }) => s.kind === 'llen-big' && s.reply !== BIG_LIST_ITEMS).map(({ client, s }) => `client ${client} LLEN ${s.key} -> ${String(s.reply)}`);
      expect.soft(badLlen.slice(0, 10), `${badLlen.length} LLENs of the big list not its length`).toEqual([]);
      expect.soft(orderProblems.slice(0, 10), `${orderProblems.length} keys whose replies to one client went backwards`).toEqual([]);
      expect.soft(staleOwn.slice(0, 10), `${staleOwn.length} GETs not reading the client's own last acknowledged SET`).toEqual([]);

      // ------------------------------------------------------------------------------------
      // The data, on the shards directly.
      const { owner } = ownerFromStateFile(proxy.stateFile);
      const where = await keysByShard(specs);
      const placement: string[] = [];
      for (const [k, on] of where) {
        if (on.length > 1) placement.push(`${k} on ${on.join(' and ')}`);
        else if (owner[slotOf(k)] !== on[0]) placement.push(`${k} on ${on[0]}, slot ${slotOf(k)} owned by ${owner[slotOf(k)]}`);
        if (k.includes('slotproxy')) placement.push(`mover key ${k} left on ${on.join(', ')}`);
      }
      expect.soft(placement.slice(0, 10), `${placement.length} keys misplaced`).toEqual([]);
      const onOwner = (k: string): Redis => shardNamed(owner[slotOf(k)]!);

      const dataProblems: string[] = [];
      // Counters: exactly the acknowledged increments (an INCRBY answered with an error did not run).
      const sums = new Map<string, number>();
      for (const { s } of ok) if (s.kind === 'incrby') sums.set(s.key, (sums.get(s.key) ?? 0) + s.delta!);
      for (const tag of tags) {
        for (const k of [key.counter(tag, 0), key.counter(tag, 1)]) {
          const value = Number(await onOwner(k).get(k));
          if (value !== (sums.get(k) ?? 0)) dataProblems.push(`${k} = ${value}, acknowledged increments add up to ${sums.get(k) ?? 0}`);
        }
      }
      // Each client's sequence key holds its last acknowledged SET.
      for (const c of clients) {
        const last = new Map<string, string>();
        for (const s of c.sent) if (s.kind === 'set-seq' && s.error === undefined) last.set(s.key, s.value!);
        for (const tag of tags) {
          const k = key.seq(tag, c.id);
          const value = await onOwner(k).get(k);
          if (value !== (last.get(k) ?? null)) dataProblems.push(`${k} = ${value}, client ${c.id}'s last acknowledged SET ${last.get(k) ?? 'none'}`);
        }
      }
      // Lists and streams: every acknowledged token once, in each client's order; no other.
      const pushed = new Map<string, string[]>();
      const failedTokens = new Set<string>();
      for (const { s } of all) {
        if (s.kind !== 'rpush' && s.kind !== 'xadd') continue;
        if (s.error === undefined) listOf(pushed, s.key).push(s.value!);
        else failedTokens.add(s.value!);
      }
      const checkTokens = (k: string, tokens: string[]): void => {
        const expected = new Set(pushed.get(k) ?? []);
        const counts = new Map<string, number>();
        for (const t of tokens) counts.set(t, (counts.get(t) ?? 0) + 1);
        const twice = [...counts].filter(([, n]) => n > 1).map(([t, n]) => `${t} x${n}`);
        const missing = [...expected].filter((t) => !counts.has(t));
        const ranAfterError = tokens.filter((t) => failedTokens.has(t));
        const unknown = tokens.filter((t) => !expected.has(t) && !failedTokens.has(t));
        if (twice.length > 0) dataProblems.push(`${k}: tokens more than once: ${twice.slice(0, 5).join(', ')}`);
        if (missing.length > 0) dataProblems.push(`${k}: ${missing.length} acknowledged tokens missing: ${missing.slice(0, 5).join(', ')}`);
        if (ranAfterError.length > 0) dataProblems.push(`${k}: ${ranAfterError.length} tokens whose command was answered with an error: ${ranAfterError.slice(0, 5).join(', ')}`);
        if (unknown.length > 0) dataProblems.push(`${k}: ${unknown.length} tokens nobody sent: ${unknown.slice(0, 5).join(', ')}`);
        const byClient = new Map<string, number[]>();
        for (const t of tokens) listOf(byClient, t.split(':')[0]!).push(Number(t.split(':')[1]));
        for (const [client, seqs] of byClient) if (firstDecrease(seqs) >= 0) dataProblems.push(`${k}: client ${client}'s tokens out of send order: ${around(seqs)}`);
      };
      for (const tag of tags) checkTokens(key.list(tag), await onOwner(key.list(tag)).lrange(key.list(tag), 0, -1));
      for (const tag of streamTags) {
        const entries = (await onOwner(key.stream(tag)).xrange(key.stream(tag), '-', '+')) as [string, string[]][];
        checkTokens(key.stream(tag), entries.map(([, fields]) => fields[1]!));
      }
      // The group of the clients' stream is still there.
      const groups = (await onOwner(groupStreamKey).call('XINFO', 'GROUPS', groupStreamKey)) as unknown[][];
      if (groups.length !== 1 || groups[0]![1] !== 'readers') dataProblems.push(`${groupStreamKey}: groups ${JSON.stringify(groups)}`);
      // Fillers.
      for (const tag of movingTags) {
        const values = await onOwner(key.filler(tag, 0)).mget(...Array.from({ length: FILLER_PER_SLOT }, (_, i) => key.filler(tag, i)));
        const bad = values.filter((v) => v !== FILLER_VALUE).length;
        if (bad > 0) dataProblems.push(`{${tag}}: ${bad} fillers missing or changed`);
      }
      // The big keys, whole, the stream's group and pending entries as they were.
      const bigList = onOwner(bigListKey);
      if ((await bigList.llen(bigListKey)) !== BIG_LIST_ITEMS) dataProblems.push(`${bigListKey}: ${await bigList.llen(bigListKey)} items of ${BIG_LIST_ITEMS}`);
      const bigStream = onOwner(bigStreamKey);
      const bigStreamAfter = {
        length: await bigStream.xlen(bigStreamKey),
        groups: await bigStream.call('XINFO', 'GROUPS', bigStreamKey),
        pending: withoutIdle(await bigStream.xpending(bigStreamKey, 'workers', '-', '+', 100)),
        last: await bigStream.xrevrange(bigStreamKey, '+', '-', 'COUNT', 1),
      };
      if (JSON.stringify(bigStreamAfter) !== JSON.stringify(bigStreamBefore)) {
        dataProblems.push(`${bigStreamKey}: ${JSON.stringify(bigStreamAfter).slice(0, 300)} != ${JSON.stringify(bigStreamBefore).slice(0, 300)}`);
      }
      // TTLs kept (an absolute expiry, within a tolerance for MIGRATE's relative TTL), expired keys gone.
      for (const [k, at] of expireAt) {
        const now = Number(await onOwner(k).call('PEXPIRETIME', k));
        if (Math.abs(now - at) > 250) dataProblems.push(`${k}: expires at ${now}, was ${at} (${now - at} ms off)`);
      }
      if (where.has(bigSetKey)) dataProblems.push(`${bigSetKey}, which expired during the first plan, is back on ${where.get(bigSetKey)!.join(', ')}`);
      for (const tag of movingTags) {
        const k = key.shortTtl(tag);
        if (where.has(k)) dataProblems.push(`${k}, set with a TTL of at most 6.3 s, is back on ${where.get(k)!.join(', ')}`);
      }
      expect.soft(dataProblems.slice(0, 15), `${dataProblems.length} data problems`).toEqual([]);

      // ------------------------------------------------------------------------------------
      // The refusals are in the metrics; the mover process did not die of one.
      const metrics = await migrationErrors(metricsPort);
      console.log(`migration errors metric: ${JSON.stringify(metrics)}`);
      expect(metrics['migrate'] ?? 0).toBeGreaterThan(0);
      expect(metrics['big_key'] ?? 0).toBeGreaterThan(0);
      const moverExits = proxy.logs().split('\n').filter((line) => line.includes('the mover process ended mid-run'));
      expect.soft(moverExits.slice(0, 3), 'mover process exits').toEqual([]);
      expect.soft(metrics['mover_exit'] ?? 0, 'mover_exit').toBe(0);
    } finally {
      isStopped = true;
      await Promise.all(running).catch(() => undefined);
      for (const c of clients) c.redis.disconnect();
      setup.disconnect();
      // Whatever a failed phase left refusing.
      for (const [, redis] of direct) {
        await redis.call('CLIENT', 'UNPAUSE').catch(() => undefined);
        await redis.config('SET', 'maxmemory', '0').catch(() => undefined);
        await redis.config('SET', 'min-replicas-to-write', '0').catch(() => undefined);
        await redis.call('REPLICAOF', 'NO', 'ONE').catch(() => undefined);
        redis.disconnect();
      }
      console.log(`refusing-target: ${Date.now() - startedAt} ms; phases:\n  ${phaseNotes.join('\n  ')}`);
      // REFUSING_LOG=FILE keeps the proxy's log (its mover's lines included) for a look.
      if (process.env['REFUSING_LOG'] !== undefined) fs.writeFileSync(process.env['REFUSING_LOG'], proxy.logs());
    }
  }, 60_000);
});

/** Polls the status until the plan submitted last is no longer running. */
async function waitForPlan(proxy: MigrationProxy, timeoutMs: number): Promise<ReshardStatus> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = await proxy.status();
    if (status.state !== 'running') return status;
    if (Date.now() > deadline) throw new Error(`plan not done in ${timeoutMs} ms: ${JSON.stringify(status)}\n${proxy.logs().slice(-3000)}`);
    await sleep(50);
  }
}
