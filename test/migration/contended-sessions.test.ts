import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Topology } from '../../src/topology/topology';
import { startInProcessDataPath, type InProcessDataPath } from '../helpers/in-process-data-path';
import { seededRandom } from '../helpers/seeded-random';
import {
  checkPlacement,
  expectNoMoverKeys,
  HOST,
  ownerFromStateFile,
  type ShardSpec,
  sleep,
  slotOf,
  stateFileMigrations,
  useMigrationDeployment,
} from './migration-harness';
import { around, firstDecrease, listOf, readOnOwners, runReshard, tagsFor, runPipelines, pickTag } from './contended-load';

/**
 * Transactions, WATCH, scripts and blocking commands on contended keys of slots that migrate back
 * and forth (s3 -> s1 -> s2 -> s1 -> s3, slowly, a few slots at a time, with filler keys so each
 * slot migrates for a while). contended-keys.test.ts does the same for plain commands; here the
 * commands that run on one connection to one shard (MULTI/EXEC, WATCH, BLPOP, BLMOVE: they wait
 * while their slot migrates, dispatch/session-commands.ts) and EVAL/EVALSHA (moved like plain
 * commands, dispatch/migrating-router.ts) meet plain commands on the same keys, from the same and
 * from other clients, while each shard is kept busy now and then by a slow script:
 *
 * - mixed clients pipeline MULTI [INCRBY c, RPUSH l, HINCRBY h] EXEC (every key of one tag, often
 *   right behind a plain INCRBY of the same client on c), EVAL and EVALSHA (SCRIPT LOAD through
 *   the proxy) incrementing three keys of a tag, and plain INCRBY / RPUSH / HINCRBY / INCR on the
 *   same keys. Every acknowledged increment and token is applied exactly once; the replies one
 *   client saw for one counter / hash field / list grow strictly in its send order, whether from
 *   a plain command, EXEC's array or a script's (a later command, transaction or script of a
 *   client never runs before its earlier one on the key); EXEC without WATCH never answers null;
 *   no command answers an error (TRYAGAIN after the bounded waits is the documented one; none is
 *   expected at this pace);
 * - watchers: WATCH o, GET o, MULTI, SET o value+1, EXEC, the same key again on null. A WATCH
 *   taken before the slot moved makes EXEC answer null (docs/resharding.md, "Limits"); a lost
 *   update would show as a counter other than its committed EXECs plus the plain INCRs on it, or
 *   as a value written by two committed EXECs (or by one and answered by an INCR);
 * - producers RPUSH unique tokens, consumers BLPOP / BLMOVE them (timeouts 0.5-2 s): followers on
 *   the queues of migrating slots (their pops wait for the slot to settle), others blocked on
 *   quiet queues of slots about to move (woken on the source, sent again on the target). Every
 *   acknowledged token is popped exactly once or still queued at the end, none unknown; each
 *   producer's tokens stay in its order in every queue, every BLMOVE destination and in what one
 *   consumer popped from one queue; a destination holds exactly what BLMOVE answered.
 *
 * Afterwards: every key only on its slot's owner (per the state file), values read the same
 * through the proxy and on the owner, no mover marks left; proxy warnings are printed.
 *
 * The second describe makes the moment the load meets only now and then last (a command still
 * held by the migrating router when its slot settles, the same client's transaction or WATCH on
 * the key next), on the data path in this process with snapshots published by hand.
 *
 * CONTENDED_SESSIONS_PROXY_CONFIG='{"workers":2,"connectionsPerNode":2}' (and the like) runs the
 * load with other proxy settings; CONTENDED_SESSIONS_SEED repeats a run's commands.
 */

/** The slots that move: s3's highest, which each reshard below takes from its giver. */
const MOVING_SLOT_COUNT = 16;
const MOVING_SLOTS = Array.from({ length: MOVING_SLOT_COUNT }, (_, i) => 16384 - MOVING_SLOT_COUNT + i);
/** Slots that stay where they are (one per shard). */
const STABLE_SLOTS = [1000, 8000, 12000];
/** Keys per moving slot that no client touches, so each slot migrates for a while. */
const FILLER_PER_SLOT = 30;
const PLANS = [
  { from: 's3', to: 's1' },
  { from: 's1', to: 's2' },
  { from: 's2', to: 's3' },
] as const;

/** Clients mixing transactions, scripts and plain commands; watchers; producers; consumers. */
const MIXED_CLIENTS = 6;
const WATCHERS = 3;
const PRODUCERS = 2;
const CONSUMERS = 6;
/** Producers push this many tokens per pipeline, then pause 1-2x this long: fewer than the consumers could pop, so they often block. */
const TOKENS_PER_BATCH = 2;
const PRODUCER_PAUSE_MS = 30;
/** Share of the tokens pushed to the quiet queues (of the moving slots, picked evenly). */
const QUIET_SHARE = 0.1;
/** Units (a transaction, a script, a plain command) per pipeline; pipelines in flight per client; pause between pipelines. */
const UNITS_PER_BATCH = 5;
const PIPELINES_IN_FLIGHT = 2;
const PAUSE_MS = 20;
/** Share of the commands on keys of the slots migrating at the time. */
const HOT_SHARE = 0.6;
const HASH_FIELDS = ['f0', 'f1'];
/**
 * Each shard is kept busy now and then by a script of BUSY_SCRIPT_US (a slow Lua script, as
 * clients run): a key move or a mover batch queued behind it waits that long, so the moments
 * around a slot settling (the mover's last batch answered, the snapshot on its way) last longer.
 */
const BUSY_SCRIPT_US = 3_000;
const BUSY_PAUSE_MS = 10;

const key = {
  counter: (tag: string) => `{${tag}}:c`,
  list: (tag: string) => `{${tag}}:l`,
  hash: (tag: string) => `{${tag}}:h`,
  scripted: (tag: string, i: number) => `{${tag}}:e${i}`,
  optimistic: (tag: string) => `{${tag}}:o`,
  queue: (tag: string) => `{${tag}}:q`,
  /** A queue few tokens go to: the consumers blocked on it mostly wait. */
  quietQueue: (tag: string) => `{${tag}}:wq`,
  busy: (tag: string) => `{${tag}}:busy`,
  /** Where BLMOVE puts what it takes from the queue named `queue`. */
  done: (queue: string) => `${queue}:done`,
  filler: (tag: string, i: number) => `{${tag}}:f:${i}`,
};

/** Spins ARGV[1] microseconds, then INCR KEYS[1]. */
const BUSY_SCRIPT =
  "local t = redis.call('TIME') local start = t[1] * 1000000 + t[2] repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start >= tonumber(ARGV[1]) return redis.call('INCR', KEYS[1])";

/** Increments KEYS[i] by ARGV[i], returns the new values. */
const INCREMENT_SCRIPT = "local out = {} for i = 1, #KEYS do out[i] = redis.call('INCRBY', KEYS[i], ARGV[i]) end return out";

/** One effect of a command on a key: its reply (or its part of EXEC's / the script's reply) must grow per client. */
interface Effect {
  readonly type: 'incr' | 'hincr' | 'push';
  readonly key: string;
  readonly field?: string;
  /** incr / hincr: the increment (1 for INCR). */
  readonly delta?: number;
  /** push: the token. */
  readonly token?: string;
}

type UnitKind = 'exec' | 'eval' | 'evalsha' | 'incrby' | 'rpush' | 'hincrby' | 'incr-o';

/** One unit a mixed client sent, in its send order, with what came back. */
interface Unit {
  readonly kind: UnitKind;
  readonly effects: readonly Effect[];
  /** Its tag's slot was migrating (by the state file) when it was sent. */
  readonly isHot: boolean;
  /** The command's reply (EXEC's array, the script's array, a number). */
  reply?: unknown;
  error?: string;
  isAnswered: boolean;
}

const MIXED_WEIGHTS: readonly (readonly [UnitKind, number])[] = [
  ['exec', 5],
  ['eval', 2],
  ['evalsha', 2],
  ['incrby', 3],
  ['rpush', 2],
  ['hincrby', 2],
  ['incr-o', 1],
];
const MIXED_WEIGHT_TOTAL = MIXED_WEIGHTS.reduce((sum, [, w]) => sum + w, 0);

function newClient(port: number): Redis {
  // No retries, no offline queue: a command is sent once, or fails visibly.
  const redis = new Redis({ host: HOST, port, lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null });
  redis.on('error', () => undefined);
  return redis;
}

/** Picks tags: mostly those whose slots migrate right now (followed in the state file). */
class TagPicker {
  readonly #random: () => number;
  readonly #tags: readonly string[];
  readonly #hot: () => readonly string[];

  constructor(random: () => number, tags: readonly string[], hot: () => readonly string[]) {
    this.#random = random;
    this.#tags = tags;
    this.#hot = hot;
  }

  isHot(tag: string): boolean {
    return this.#hot().includes(tag);
  }

  pick(): string {
    return pickTag(this.#random, this.#hot(), this.#tags, HOT_SHARE);
  }
}

function errorText(value: unknown): string {
  return value instanceof Error ? value.message : String(value);
}

/**
 * Pipelines of transactions, scripts and plain commands on the shared keys. A unit's effects are
 * in the order of its reply's elements (EXEC's and the script's arrays).
 */
class MixedClient {
  readonly id: number;
  readonly redis: Redis;
  readonly units: Unit[] = [];
  /** Errors of MULTI / queued commands (each must answer +OK / +QUEUED). */
  readonly queueingErrors: string[] = [];
  readonly #random: () => number;
  readonly #picker: TagPicker;
  readonly #sha: string;
  #seq = 0;

  constructor(id: number, port: number, seed: number, tags: readonly string[], hot: () => readonly string[], sha: string) {
    this.id = id;
    this.redis = newClient(port);
    this.#random = seededRandom(seed);
    this.#picker = new TagPicker(this.#random, tags, hot);
    this.#sha = sha;
  }

  #delta(): number {
    return 1 + Math.floor(this.#random() * 5);
  }

  #token(): string {
    return `${this.id}:${this.#seq++}`;
  }

  #kind(): UnitKind {
    let r = this.#random() * MIXED_WEIGHT_TOTAL;
    for (const [kind, w] of MIXED_WEIGHTS) {
      r -= w;
      if (r < 0) return kind;
    }
    return 'incrby';
  }

  async sendBatch(): Promise<void> {
    const pipeline = this.redis.pipeline();
    /** Per pipeline entry: the unit it answers for, or what it must answer (MULTI: OK, queued: QUEUED). */
    const entries: (Unit | 'OK' | 'QUEUED')[] = [];
    const batch: Unit[] = [];
    const add = (unit: Unit): void => {
      entries.push(unit);
      batch.push(unit);
      this.units.push(unit);
    };
    for (let u = 0; u < UNITS_PER_BATCH; u++) {
      const tag = this.#picker.pick();
      const isHot = this.#picker.isHot(tag);
      const kind = this.#kind();
      switch (kind) {
        case 'exec': {
          // Often right behind a plain command of this client on the same counter (and a plain
          // RPUSH after): the transaction must not overtake it, nor be overtaken.
          if (this.#random() < 0.7) {
            const delta = this.#delta();
            add({ kind: 'incrby', effects: [{ type: 'incr', key: key.counter(tag), delta }], isHot, isAnswered: false });
            pipeline.incrby(key.counter(tag), delta);
          }
          const effects: Effect[] = [
            { type: 'incr', key: key.counter(tag), delta: this.#delta() },
            { type: 'push', key: key.list(tag), token: this.#token() },
            { type: 'hincr', key: key.hash(tag), field: HASH_FIELDS[Math.floor(this.#random() * HASH_FIELDS.length)]!, delta: this.#delta() },
          ];
          pipeline.call('MULTI');
          entries.push('OK');
          pipeline.incrby(effects[0]!.key, effects[0]!.delta!);
          pipeline.rpush(effects[1]!.key, effects[1]!.token!);
          pipeline.hincrby(effects[2]!.key, effects[2]!.field!, effects[2]!.delta!);
          entries.push('QUEUED', 'QUEUED', 'QUEUED');
          pipeline.call('EXEC');
          add({ kind, effects, isHot, isAnswered: false });
          if (this.#random() < 0.3) {
            const token = this.#token();
            add({ kind: 'rpush', effects: [{ type: 'push', key: key.list(tag), token }], isHot, isAnswered: false });
            pipeline.rpush(key.list(tag), token);
          }
          break;
        }
        case 'eval':
        case 'evalsha': {
          const keys = [key.counter(tag), key.scripted(tag, 0), key.scripted(tag, 1)];
          const effects = keys.map((k): Effect => ({ type: 'incr', key: k, delta: this.#delta() }));
          const args = [...keys, ...effects.map((e) => e.delta!)];
          if (kind === 'eval') pipeline.eval(INCREMENT_SCRIPT, keys.length, ...args);
          else pipeline.evalsha(this.#sha, keys.length, ...args);
          add({ kind, effects, isHot, isAnswered: false });
          break;
        }
        case 'incrby': {
          // The counter or one of the scripts' keys.
          const r = this.#random();
          const k = r < 0.5 ? key.counter(tag) : key.scripted(tag, r < 0.75 ? 0 : 1);
          const delta = this.#delta();
          add({ kind, effects: [{ type: 'incr', key: k, delta }], isHot, isAnswered: false });
          pipeline.incrby(k, delta);
          break;
        }
        case 'rpush': {
          const token = this.#token();
          add({ kind, effects: [{ type: 'push', key: key.list(tag), token }], isHot, isAnswered: false });
          pipeline.rpush(key.list(tag), token);
          break;
        }
        case 'hincrby': {
          const field = HASH_FIELDS[Math.floor(this.#random() * HASH_FIELDS.length)]!;
          const delta = this.#delta();
          add({ kind, effects: [{ type: 'hincr', key: key.hash(tag), field, delta }], isHot, isAnswered: false });
          pipeline.hincrby(key.hash(tag), field, delta);
          break;
        }
        case 'incr-o': {
          // The watchers' counter: their WATCH must see this.
          add({ kind, effects: [{ type: 'incr', key: key.optimistic(tag), delta: 1 }], isHot, isAnswered: false });
          pipeline.incr(key.optimistic(tag));
          break;
        }
      }
    }
    let results: [Error | null, unknown][] | null;
    try {
      results = await pipeline.exec();
    } catch (err) {
      for (const unit of batch) {
        unit.isAnswered = true;
        unit.error = `pipeline: ${(err as Error).message}`;
      }
      return;
    }
    entries.forEach((entry, i) => {
      const [err, reply] = results?.[i] ?? [new Error('no reply'), null];
      if (typeof entry === 'string') {
        if (err !== null || reply !== entry) this.queueingErrors.push(`client ${this.id}: expected ${entry}, got ${err !== null ? err.message : String(reply)}`);
        return;
      }
      entry.isAnswered = true;
      if (err !== null) entry.error = err.message;
      else entry.reply = reply;
    });
  }

  async run(isStopped: () => boolean): Promise<void> {
    await runPipelines(() => this.sendBatch(), isStopped, PIPELINES_IN_FLIGHT, PAUSE_MS);
  }
}

/** One optimistic increment: WATCH, GET, MULTI, SET value+1, EXEC (null: tried again). */
interface Attempt {
  readonly key: string;
  /** Its slot was migrating when WATCH was sent. */
  readonly isHot: boolean;
  /** The value it wrote, when its EXEC committed. */
  written?: number;
  isAborted: boolean;
  error?: string;
}

class Watcher {
  readonly id: number;
  readonly redis: Redis;
  readonly attempts: Attempt[] = [];
  readonly #random: () => number;
  readonly #picker: TagPicker;

  constructor(id: number, port: number, seed: number, tags: readonly string[], hot: () => readonly string[]) {
    this.id = id;
    this.redis = newClient(port);
    this.#random = seededRandom(seed);
    this.#picker = new TagPicker(this.#random, tags, hot);
  }

  async run(isStopped: () => boolean): Promise<void> {
    let tag = this.#picker.pick();
    while (!isStopped()) {
      const k = key.optimistic(tag);
      const attempt: Attempt = { key: k, isHot: this.#picker.isHot(tag), isAborted: false };
      this.attempts.push(attempt);
      try {
        const watched = await this.redis.watch(k);
        if (watched !== 'OK') throw new Error(`WATCH answered ${String(watched)}`);
        const value = Number((await this.redis.get(k)) ?? 0);
        const result = await this.redis.multi().set(k, String(value + 1)).exec();
        if (result === null) {
          // Someone wrote it, or the slot moved since WATCH: the same key again.
          attempt.isAborted = true;
        } else if (result[0]![0] !== null) {
          attempt.error = `EXEC: ${result[0]![0].message}`;
        } else {
          attempt.written = value + 1;
          tag = this.#picker.pick();
        }
      } catch (err) {
        attempt.error = errorText(err);
        await this.redis.unwatch().catch(() => undefined);
      }
      await sleep(5 + Math.floor(this.#random() * 10));
    }
  }
}

class Producer {
  readonly id: number;
  readonly redis: Redis;
  /** Tokens RPUSH acknowledged, by queue; and the errors. */
  readonly acknowledged = new Map<string, string[]>();
  readonly errors: string[] = [];
  readonly #random: () => number;
  readonly #picker: TagPicker;
  readonly #movingTags: readonly string[];
  #seq = 0;

  constructor(id: number, port: number, seed: number, tags: readonly string[], hot: () => readonly string[], movingTags: readonly string[]) {
    this.id = id;
    this.redis = newClient(port);
    this.#random = seededRandom(seed);
    this.#picker = new TagPicker(this.#random, tags, hot);
    this.#movingTags = movingTags;
  }

  async #sendBatch(): Promise<void> {
    const pipeline = this.redis.pipeline();
    const sent: [string, string][] = [];
    for (let i = 0; i < TOKENS_PER_BATCH; i++) {
      const queue = this.#random() < QUIET_SHARE ? key.quietQueue(this.#movingTags[Math.floor(this.#random() * this.#movingTags.length)]!) : key.queue(this.#picker.pick());
      const token = `p${this.id}:${this.#seq++}`;
      sent.push([queue, token]);
      pipeline.rpush(queue, token);
    }
    try {
      const results = (await pipeline.exec())!;
      results.forEach(([err], i) => {
        const [queue, token] = sent[i]!;
        if (err !== null) this.errors.push(`producer ${this.id} RPUSH ${queue} ${token}: ${err.message}`);
        else (this.acknowledged.get(queue) ?? this.acknowledged.set(queue, []).get(queue)!).push(token);
      });
    } catch (err) {
      this.errors.push(`producer ${this.id} pipeline: ${errorText(err)}`);
    }
  }

  async run(isStopped: () => boolean): Promise<void> {
    const inFlight = new Set<Promise<void>>();
    while (!isStopped()) {
      const batch = this.#sendBatch().finally(() => inFlight.delete(batch));
      inFlight.add(batch);
      if (inFlight.size >= PIPELINES_IN_FLIGHT) await Promise.race(inFlight);
      await sleep(PRODUCER_PAUSE_MS + Math.floor(this.#random() * PRODUCER_PAUSE_MS));
    }
    await Promise.all(inFlight);
  }
}

/** One pop: BLPOP from `queue`, or BLMOVE from it to its tag's done list. */
interface Pop {
  readonly command: 'blpop' | 'blmove';
  readonly queue: string;
  readonly timeout: number;
  readonly sentAt: number;
  /** Its queue's slot was migrating when it was sent. */
  readonly isHot: boolean;
  answeredAt?: number;
  token?: string | null;
  error?: string;
}

/**
 * Pops in a loop. A 'follower' picks queues as the other clients do (mostly those of migrating
 * slots: its pops wait for the slot to settle); an 'ahead' one blocks on the quiet queues of
 * moving slots that do not migrate right now, so its pops are often waiting when their slot
 * begins to move (woken on the source, sent again on the target once it settles).
 */
class Consumer {
  readonly id: number;
  readonly redis: Redis;
  readonly pops: Pop[] = [];
  readonly #random: () => number;
  readonly #picker: TagPicker;
  readonly #isAhead: boolean;
  readonly #movingTags: readonly string[];
  readonly #hot: () => readonly string[];

  constructor(id: number, port: number, seed: number, tags: readonly string[], hot: () => readonly string[], isAhead: boolean, movingTags: readonly string[]) {
    this.id = id;
    this.redis = newClient(port);
    this.#random = seededRandom(seed);
    this.#picker = new TagPicker(this.#random, tags, hot);
    this.#isAhead = isAhead;
    this.#movingTags = movingTags;
    this.#hot = hot;
  }

  #tag(): string {
    if (!this.#isAhead) return this.#picker.pick();
    const hot = this.#hot();
    const waiting = this.#movingTags.filter((tag) => !hot.includes(tag));
    return waiting[Math.floor(this.#random() * waiting.length)]!;
  }

  async run(isStopped: () => boolean): Promise<void> {
    while (!isStopped()) {
      const tag = this.#tag();
      const timeout = Math.round((0.5 + this.#random() * 1.5) * 10) / 10;
      const queue = this.#isAhead ? key.quietQueue(tag) : key.queue(tag);
      const pop: Pop = { command: this.#random() < 0.5 ? 'blpop' : 'blmove', queue, timeout, sentAt: Date.now(), isHot: this.#picker.isHot(tag) };
      this.pops.push(pop);
      try {
        if (pop.command === 'blpop') {
          const result = await this.redis.blpop(pop.queue, timeout);
          if (result !== null && result[0] !== pop.queue) pop.error = `BLPOP answered for ${result[0]}`;
          pop.token = result === null ? null : result[1];
        } else {
          pop.token = await this.redis.blmove(pop.queue, key.done(pop.queue), 'LEFT', 'RIGHT', timeout);
        }
      } catch (err) {
        pop.error = errorText(err);
      }
      pop.answeredAt = Date.now();
    }
  }
}

/** Keeps each shard busy now and then: a slow script on its stable slot's key. */
class BusyClient {
  readonly redis: Redis;
  readonly keys: readonly string[];
  acknowledged = 0;
  readonly errors: string[] = [];

  constructor(port: number, keys: readonly string[]) {
    this.redis = newClient(port);
    this.keys = keys;
  }

  async run(isStopped: () => boolean): Promise<void> {
    for (let n = 0; !isStopped(); n++) {
      const k = this.keys[n % this.keys.length]!;
      try {
        await this.redis.eval(BUSY_SCRIPT, 1, k, BUSY_SCRIPT_US);
        this.acknowledged++;
      } catch (err) {
        this.errors.push(`busy EVAL on ${k}: ${errorText(err)}`);
      }
      await sleep(BUSY_PAUSE_MS);
    }
  }
}

/** The seq of a token `<who>:<seq>`, by who. */
function bySource(tokens: readonly string[]): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const token of tokens) {
    const at = token.lastIndexOf(':');
    listOf(out, token.slice(0, at)).push(Number(token.slice(at + 1)));
  }
  return out;
}

/** What the test's keys of `tags` hold, read the same way through the proxy and from a shard. */
async function readAll(redis: Redis, tags: readonly string[]): Promise<Map<string, unknown>> {
  const pipeline = redis.pipeline();
  const names: string[] = [];
  for (const tag of tags) {
    for (const k of [key.counter(tag), key.scripted(tag, 0), key.scripted(tag, 1), key.optimistic(tag), key.busy(tag)]) {
      names.push(k);
      pipeline.get(k);
    }
    names.push(key.hash(tag));
    pipeline.hgetall(key.hash(tag));
    for (const k of [key.list(tag), key.queue(tag), key.done(key.queue(tag)), key.quietQueue(tag), key.done(key.quietQueue(tag))]) {
      names.push(k);
      pipeline.lrange(k, 0, -1);
    }
  }
  const results = (await pipeline.exec())!;
  const values = new Map<string, unknown>();
  results.forEach(([err, value], i) => values.set(names[i]!, err === null ? value : `ERROR ${err.message}`));
  return values;
}

describe('transactions, WATCH, scripts and blocking commands on contended keys of slots migrating back and forth', () => {
  const deployment = useMigrationDeployment({
    shards: 3,
    config: {
      // Slow, small batches: each slot migrates for about a second, and the mover has keys in
      // flight (+MOVING) often while clients hit them.
      migrateKeysPerSecond: 400,
      migrateBatchKeys: 10,
      migrateSlotsInFlight: 3,
      keyMoveWaitMs: 10_000,
      // CONTENDED_SESSIONS_PROXY_CONFIG='{"workers":2,"connectionsPerNode":2}' and the like.
      ...(JSON.parse(process.env['CONTENDED_SESSIONS_PROXY_CONFIG'] ?? '{}') as Record<string, unknown>),
    },
  });

  it('applies every transaction, script and pop once, in each client\'s order, and leaves every key on its slot\'s owner', async () => {
    const { proxy, specs } = deployment;
    const seed = Number(process.env['CONTENDED_SESSIONS_SEED'] ?? Date.now() % 1_000_000);
    const movingTags = tagsFor(MOVING_SLOTS);
    const stableTags = tagsFor(STABLE_SLOTS);
    const tags = [...movingTags, ...stableTags];
    const tagOfSlot = new Map(MOVING_SLOTS.map((slot, i) => [slot, movingTags[i]!]));
    let migratingTags: string[] = [];
    /** When each tag's slot was first seen migrating (for the current migration), and when each migration was first seen. */
    const migratingSince = new Map<string, number>();
    const migrationStarts = new Map<string, number[]>();
    const followMigrations = (): void => {
      try {
        migratingTags = stateFileMigrations(proxy.stateFile).flatMap((slot) => tagOfSlot.get(slot) ?? []);
      } catch {
        // Being rewritten: the next look reads it.
        return;
      }
      const now = Date.now();
      for (const tag of migratingTags) {
        if (!migratingSince.has(tag)) {
          migratingSince.set(tag, now);
          listOf(migrationStarts, tag).push(now);
        }
      }
      for (const tag of [...migratingSince.keys()]) if (!migratingTags.includes(tag)) migratingSince.delete(tag);
    };
    const hot = (): readonly string[] => migratingTags;
    const startOwner = ownerFromStateFile(proxy.stateFile).owner;
    expect(MOVING_SLOTS.every((slot) => startOwner[slot] === 's3')).toBe(true);

    const setup = new Redis({ host: HOST, port: proxy.port });
    const mixed: MixedClient[] = [];
    const watchers: Watcher[] = [];
    const producers: Producer[] = [];
    const consumers: Consumer[] = [];
    // One per shard, each over the stable slots' keys in turn.
    const busy: BusyClient[] = [];
    const everyone = (): Redis[] => [...mixed, ...watchers, ...producers, ...consumers, ...busy].map((c) => c.redis);
    let isStopped = false;
    let areConsumersStopped = false;
    let running: Promise<void>[] = [];
    let follower: NodeJS.Timeout | undefined;
    const startedAt = Date.now();
    try {
      follower = setInterval(followMigrations, 20);
      const loading = setup.pipeline();
      for (const tag of tags) loading.set(key.counter(tag), '0');
      for (const tag of movingTags) for (let i = 0; i < FILLER_PER_SLOT; i++) loading.set(key.filler(tag, i), `filler-${i}`);
      for (const [err] of (await loading.exec())!) expect(err).toBeNull();
      // Through the proxy: every shard has it, EVALSHA finds it wherever its keys are.
      const sha = (await setup.script('LOAD', INCREMENT_SCRIPT)) as string;

      for (let c = 0; c < MIXED_CLIENTS; c++) mixed.push(new MixedClient(c, proxy.port, seed * 100 + c, tags, hot, sha));
      for (let c = 0; c < WATCHERS; c++) watchers.push(new Watcher(c, proxy.port, seed * 100 + 20 + c, tags, hot));
      for (let c = 0; c < PRODUCERS; c++) producers.push(new Producer(c, proxy.port, seed * 100 + 40 + c, tags, hot, movingTags));
      for (let c = 0; c < CONSUMERS; c++) consumers.push(new Consumer(c, proxy.port, seed * 100 + 60 + c, tags, hot, c % 3 !== 0, movingTags));
      for (let c = 0; c < stableTags.length; c++) busy.push(new BusyClient(proxy.port, stableTags.map((_, i) => key.busy(stableTags[(c + i) % stableTags.length]!))));
      await Promise.all(everyone().map((r) => r.connect()));
      const stopped = (): boolean => isStopped;
      running = [
        ...mixed.map((c) => c.run(stopped)),
        ...watchers.map((c) => c.run(stopped)),
        ...producers.map((c) => c.run(stopped)),
        ...consumers.map((c) => c.run(() => areConsumersStopped)),
        ...busy.map((c) => c.run(stopped)),
      ];
      await sleep(300);

      const plans: string[] = [];
      for (const { from, to } of PLANS) {
        const planStart = Date.now();
        const result = await runReshard(proxy, from, to, MOVING_SLOT_COUNT);
        plans.push(`${from}->${to}: ${result.state} in ${Date.now() - planStart} ms, up to ${result.maxMigrating} slots migrating, ${result.keysMoved} keys moved by the mover`);
        expect(result.state, `${from} -> ${to}: ${result.error}`).toBe('done');
        expect(result.maxMigrating, `${from} -> ${to}`).toBeGreaterThan(0);
        const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
        expect(migrations).toBe(0);
        expect(MOVING_SLOTS.filter((slot) => owner[slot] !== to)).toEqual([]);
      }
      await sleep(300);
      isStopped = true;
      // Consumers go on a little after the producers stopped, so most tokens are popped.
      await sleep(500);
      areConsumersStopped = true;
      await Promise.all(running);
      const loadMs = Date.now() - startedAt;

      // -------------------------------------------------------------------------------------
      // What the clients saw

      const units = mixed.flatMap((c) => c.units.map((u) => ({ client: c.id, u })));
      const attempts = watchers.flatMap((w) => w.attempts.map((a) => ({ client: w.id, a })));
      const pops = consumers.flatMap((c) => c.pops.map((p) => ({ client: c.id, p })));
      const count = (kind: UnitKind): number => units.filter(({ u }) => u.kind === kind).length;
      console.log(
        `seed ${seed}; in ${loadMs} ms: ${units.length} units from ${MIXED_CLIENTS} mixed clients (${count('exec')} EXEC, ${count('eval')} EVAL, ${count('evalsha')} EVALSHA), ` +
          `${attempts.length} optimistic attempts (${attempts.filter(({ a }) => a.written !== undefined).length} committed, ${attempts.filter(({ a }) => a.isAborted).length} EXEC null), ` +
          `${producers.reduce((n, p) => n + [...p.acknowledged.values()].reduce((m, l) => m + l.length, 0), 0)} tokens pushed, ` +
          `${pops.filter(({ p }) => typeof p.token === 'string').length} popped in ${pops.length} pops (longest ${Math.max(...pops.map(({ p }) => (p.answeredAt ?? 0) - p.sentAt))} ms)\n  ${plans.join('\n  ')}`,
      );

      // The load met the migrating paths: transactions, scripts, WATCHes and pops on slots migrating
      // at the time (the transactions, WATCHes and pops then waited for the slot to settle).
      const hotUnits = (kinds: readonly UnitKind[]): number => units.filter(({ u }) => u.isHot && kinds.includes(u.kind)).length;
      const outlived = pops.filter(({ p }) => p.answeredAt !== undefined && p.answeredAt - p.sentAt > p.timeout * 1000 + 300).length;
      // Pops sent while their queue's slot was settled and still waiting when it began to move
      // (give or take the 20 ms the state file is looked at): woken on the source, sent again on the target.
      const tagOfQueue = (queue: string): string => queue.slice(1, queue.indexOf('}'));
      const caught = pops.filter(
        ({ p }) => !p.isHot && p.answeredAt !== undefined && (migrationStarts.get(tagOfQueue(p.queue)) ?? []).some((at) => at > p.sentAt + 20 && at < p.answeredAt! - 20),
      );
      console.log(
        `on migrating slots: ${hotUnits(['exec'])} EXEC, ${hotUnits(['eval', 'evalsha'])} scripts, ${hotUnits(['incrby', 'rpush', 'hincrby', 'incr-o'])} plain, ` +
          `${attempts.filter(({ a }) => a.isHot).length} WATCH, ${pops.filter(({ p }) => p.isHot).length} pops; ${outlived} pops outlived their timeout by 300 ms or more; ` +
          `${caught.length} pops were waiting when their slot began to move (${caught.filter(({ p }) => typeof p.token === 'string').length} answered with a token); ` +
          `${busy.reduce((n, b) => n + b.acknowledged, 0)} busy scripts`,
      );
      expect(hotUnits(['exec']), 'EXECs on migrating slots').toBeGreaterThan(0);
      expect(hotUnits(['eval', 'evalsha']), 'scripts on migrating slots').toBeGreaterThan(0);
      expect(attempts.filter(({ a }) => a.isHot).length, 'WATCHes on migrating slots').toBeGreaterThan(0);
      expect(pops.filter(({ p }) => p.isHot).length, 'pops on migrating slots').toBeGreaterThan(0);

      expect(units.filter(({ u }) => !u.isAnswered).length, 'units never answered').toBe(0);
      const errors = [
        ...mixed.flatMap((c) => c.queueingErrors),
        ...units.filter(({ u }) => u.error !== undefined).map(({ client, u }) => `client ${client} ${u.kind} ${u.effects.map((e) => e.key).join(' ')}: ${u.error}`),
        // EXEC without WATCH never answers null; its commands each answer as they would alone.
        ...units
          .filter(({ u }) => u.kind === 'exec' && u.error === undefined && !Array.isArray(u.reply))
          .map(({ client, u }) => `client ${client} EXEC on ${u.effects[0]!.key} (no WATCH) answered ${JSON.stringify(u.reply)}`),
        ...units
          .filter(({ u }) => (u.kind === 'exec' || u.kind === 'eval' || u.kind === 'evalsha') && Array.isArray(u.reply) && (u.reply as unknown[]).some((v) => v instanceof Error || typeof v !== 'number'))
          .map(({ client, u }) => `client ${client} ${u.kind} on ${u.effects[0]!.key}: ${(u.reply as unknown[]).map(errorText).join(', ')}`),
        ...attempts.filter(({ a }) => a.error !== undefined).map(({ client, a }) => `watcher ${client} on ${a.key}: ${a.error}`),
        ...producers.flatMap((p) => p.errors),
        ...busy.flatMap((b) => b.errors),
        ...pops.filter(({ p }) => p.error !== undefined).map(({ client, p }) => `consumer ${client} ${p.command} ${p.queue}: ${p.error}`),
      ];
      if (errors.length > 0) console.log(`${errors.length} client errors, the first:\n  ${errors.slice(0, 20).join('\n  ')}`);
      expect.soft(errors.slice(0, 10), `${errors.length} client errors`).toEqual([]);

      /** A unit's acknowledged effects with the number its reply gave each (null: not acknowledged). */
      const acknowledged = (u: Unit): { effect: Effect; value: number }[] | null => {
        if (u.error !== undefined) return null;
        if (u.kind === 'exec' || u.kind === 'eval' || u.kind === 'evalsha') {
          if (!Array.isArray(u.reply)) return null;
          const values = u.reply as unknown[];
          if (values.some((v) => typeof v !== 'number')) return null;
          return u.effects.map((effect, i) => ({ effect, value: values[i] as number }));
        }
        return [{ effect: u.effects[0]!, value: Number(u.reply) }];
      };

      // One client's replies for one counter / hash field / list grow strictly in its send order,
      // whether they came from a plain command, from EXEC's array or from a script's.
      const orderProblems: string[] = [];
      for (const c of mixed) {
        const seen = new Map<string, { value: number; kind: UnitKind }[]>();
        for (const u of c.units) {
          for (const { effect, value } of acknowledged(u) ?? []) {
            listOf(seen, `${effect.type} ${effect.key}${effect.field === undefined ? '' : ` ${effect.field}`}`).push({ value, kind: u.kind });
          }
        }
        for (const [what, replies] of seen) {
          const values = replies.map((r) => r.value);
          const at = firstDecrease(values);
          if (at >= 0) orderProblems.push(`client ${c.id} ${what}: ${around(values)}; at the first: ${replies[at - 1]!.kind} then ${replies[at]!.kind}`);
        }
      }
      if (orderProblems.length > 0) console.log(`${orderProblems.length} keys whose replies to one client went backwards:\n  ${orderProblems.slice(0, 20).join('\n  ')}`);
      expect.soft(orderProblems.slice(0, 10), `${orderProblems.length} keys whose replies to one client went backwards`).toEqual([]);

      // -------------------------------------------------------------------------------------
      // The data: on the owning shards directly, and through the proxy

      const { owner } = ownerFromStateFile(proxy.stateFile);
      const direct = await readOnOwners(setup, proxy, specs, tags, readAll);
      const value = (k: string): unknown => direct.get(k);

      const dataProblems: string[] = [];
      // Counters and hash fields: the sum of their acknowledged increments (plain, in EXEC, in a
      // script); the optimistic counters also take the watchers' committed SETs.
      const sums = new Map<string, number>();
      const pushed = new Map<string, string[]>();
      for (const { u } of units) {
        for (const { effect } of acknowledged(u) ?? []) {
          if (effect.type === 'push') listOf(pushed, effect.key).push(effect.token!);
          else {
            const name = effect.type === 'hincr' ? `${effect.key} ${effect.field}` : effect.key;
            sums.set(name, (sums.get(name) ?? 0) + effect.delta!);
          }
        }
      }
      for (const tag of tags) {
        for (const k of [key.counter(tag), key.scripted(tag, 0), key.scripted(tag, 1)]) {
          const expected = sums.get(k) ?? 0;
          const actual = value(k) === null || value(k) === undefined ? 0 : Number(value(k));
          if (actual !== expected) dataProblems.push(`${k} = ${String(value(k))}, acknowledged increments add up to ${expected}`);
        }
        const hash = (value(key.hash(tag)) ?? {}) as Record<string, string>;
        for (const field of HASH_FIELDS) {
          const expected = sums.get(`${key.hash(tag)} ${field}`) ?? 0;
          if (Number(hash[field] ?? 0) !== expected) dataProblems.push(`${key.hash(tag)} ${field} = ${String(hash[field])}, acknowledged increments add up to ${expected}`);
        }
        // Lists: every acknowledged token (plain RPUSH or in EXEC) once, each client's in its send order.
        const k = key.list(tag);
        const list = (value(k) ?? []) as string[];
        const expectedTokens = new Set(pushed.get(k) ?? []);
        const counts = new Map<string, number>();
        for (const token of list) counts.set(token, (counts.get(token) ?? 0) + 1);
        const twice = [...counts].filter(([, n]) => n > 1).map(([t, n]) => `${t} x${n}`);
        const missing = [...expectedTokens].filter((t) => !counts.has(t));
        const unknown = list.filter((t) => !expectedTokens.has(t));
        if (twice.length > 0) dataProblems.push(`${k}: tokens more than once: ${twice.slice(0, 5).join(', ')}`);
        if (missing.length > 0) dataProblems.push(`${k}: ${missing.length} acknowledged tokens missing: ${missing.slice(0, 5).join(', ')}`);
        if (unknown.length > 0) dataProblems.push(`${k}: ${unknown.length} tokens never acknowledged: ${unknown.slice(0, 5).join(', ')}`);
        for (const [client, seqs] of bySource(list)) if (firstDecrease(seqs) >= 0) dataProblems.push(`${k}: client ${client}'s tokens out of send order: ${around(seqs)}`);
      }

      // The busy scripts' counters hold one per acknowledged script.
      const busyTotal = stableTags.reduce((n, tag) => n + Number(value(key.busy(tag)) ?? 0), 0);
      const busyAcknowledged = busy.reduce((n, b) => n + b.acknowledged, 0);
      if (busyTotal !== busyAcknowledged) dataProblems.push(`busy counters add up to ${busyTotal}, ${busyAcknowledged} busy scripts acknowledged`);

      // WATCH: each optimistic counter holds its committed EXECs plus the plain INCRs on it; no
      // two committed EXECs wrote the same value (both would have read the same one: a lost update).
      const committed = new Map<string, number[]>();
      for (const { a } of attempts) if (a.written !== undefined) listOf(committed, a.key).push(a.written);
      for (const tag of tags) {
        const k = key.optimistic(tag);
        const writes = committed.get(k) ?? [];
        const incrs = sums.get(k) ?? 0;
        const actual = value(k) === null || value(k) === undefined ? 0 : Number(value(k));
        if (actual !== writes.length + incrs) dataProblems.push(`${k} = ${String(value(k))}: ${writes.length} committed optimistic increments + ${incrs} INCRs = ${writes.length + incrs}`);
        const dup = writes.filter((v, i) => writes.indexOf(v) !== i);
        if (dup.length > 0) dataProblems.push(`${k}: committed EXECs wrote the same value more than once (lost updates): ${[...new Set(dup)].slice(0, 5).join(', ')}`);
      }
      const incrReplies = new Map<string, Set<number>>();
      for (const { u } of units) if (u.kind === 'incr-o' && u.error === undefined) (incrReplies.get(u.effects[0]!.key) ?? incrReplies.set(u.effects[0]!.key, new Set()).get(u.effects[0]!.key)!).add(Number(u.reply));
      for (const [k, writes] of committed) {
        const clash = writes.filter((v) => incrReplies.get(k)?.has(v) === true);
        if (clash.length > 0) dataProblems.push(`${k}: committed EXECs wrote values an INCR also answered (a lost update): ${clash.slice(0, 5).join(', ')}`);
      }

      // Queues: every acknowledged token popped exactly once or still queued; nothing unknown;
      // each producer's tokens in its order in each queue, each done list, and in what one
      // consumer popped from one queue; the done lists hold exactly what BLMOVE answered.
      const produced = new Map<string, string>();
      for (const p of producers) for (const [queue, tokens] of p.acknowledged) for (const token of tokens) produced.set(token, queue);
      const seen = new Map<string, string[]>();
      for (const { client, p } of pops) if (typeof p.token === 'string') listOf(seen, p.token).push(`consumer ${client} ${p.command} ${p.queue}`);
      const queueProblems: string[] = [];
      for (const name of tags.flatMap((tag) => [key.queue(tag), key.quietQueue(tag)])) {
        const queue = (value(name) ?? []) as string[];
        for (const token of queue) listOf(seen, token).push(`left in ${name}`);
        for (const [producer, seqs] of bySource(queue)) if (firstDecrease(seqs) >= 0) queueProblems.push(`${name}: producer ${producer}'s tokens out of order: ${around(seqs)}`);
        const done = (value(key.done(name)) ?? []) as string[];
        for (const [producer, seqs] of bySource(done)) if (firstDecrease(seqs) >= 0) queueProblems.push(`${key.done(name)}: producer ${producer}'s tokens out of order: ${around(seqs)}`);
        const moved = pops.filter(({ p }) => p.command === 'blmove' && p.queue === name && typeof p.token === 'string').map(({ p }) => p.token!);
        if (JSON.stringify([...done].sort()) !== JSON.stringify([...moved].sort())) {
          const doneSet = new Set(done);
          const movedSet = new Set(moved);
          queueProblems.push(
            `${key.done(name)} holds ${done.length} tokens, BLMOVE answered ${moved.length}: not answered ${done.filter((t) => !movedSet.has(t)).slice(0, 5).join(', ')}; missing ${moved.filter((t) => !doneSet.has(t)).slice(0, 5).join(', ')}`,
          );
        }
      }
      for (const [token, where] of seen) {
        if (where.length > 1) queueProblems.push(`${token} popped or queued ${where.length} times: ${where.join('; ')}`);
        if (!produced.has(token)) queueProblems.push(`${token} (${where.join('; ')}) was never acknowledged to a producer`);
        else if (!where.some((w) => w.endsWith(produced.get(token)!))) queueProblems.push(`${token}, pushed to ${produced.get(token)}, found: ${where.join('; ')}`);
      }
      const lost = [...produced.keys()].filter((token) => !seen.has(token));
      if (lost.length > 0) queueProblems.push(`${lost.length} acknowledged tokens neither popped nor queued: ${lost.slice(0, 10).map((t) => `${t} (${produced.get(t)})`).join(', ')}`);
      for (const c of consumers) {
        const byQueue = new Map<string, string[]>();
        for (const p of c.pops) if (typeof p.token === 'string') listOf(byQueue, p.queue).push(p.token);
        for (const [queue, tokens] of byQueue) {
          for (const [producer, seqs] of bySource(tokens)) if (firstDecrease(seqs) >= 0) queueProblems.push(`consumer ${c.id} popped producer ${producer}'s tokens from ${queue} out of order: ${around(seqs)}`);
        }
      }
      dataProblems.push(...queueProblems);
      if (dataProblems.length > 0) console.log(`${dataProblems.length} data problems:\n  ${dataProblems.slice(0, 40).join('\n  ')}`);
      expect.soft(dataProblems.slice(0, 20), `${dataProblems.length} data problems`).toEqual([]);

      // Every key on exactly its slot's owner (none on two shards, none left on a source); no
      // mover marks left.
      const mustExist = [
        ...tags.map((tag) => key.counter(tag)),
        ...movingTags.flatMap((tag) => Array.from({ length: FILLER_PER_SLOT }, (_, i) => key.filler(tag, i))),
        ...[...pushed.keys()],
        ...[...committed.keys()],
      ];
      const placement = await checkPlacement(specs as readonly ShardSpec[], owner, 0, () => [], mustExist);
      expect.soft(placement.misplaced.slice(0, 10), "keys not (only) on their slot's owner").toEqual([]);
      expect.soft(placement.missing.slice(0, 10), 'keys missing').toEqual([]);
      await expectNoMoverKeys(specs);
      console.log(`keys per shard: ${JSON.stringify(placement.keysPerShard)}; ${Date.now() - startedAt} ms in all`);

      const warnings = proxy
        .logs()
        .split('\n')
        .filter((line) => (line.includes('"level":"warn"') || line.includes('"level":"error"')) && !line.includes('busy-reply-threshold'));
      if (warnings.length > 0) console.log(`proxy warnings:\n  ${warnings.slice(0, 20).join('\n  ')}`);
    } finally {
      clearInterval(follower);
      isStopped = true;
      areConsumersStopped = true;
      await Promise.allSettled(running);
      for (const r of everyone()) r.disconnect();
      setup.disconnect();
    }
  }, 90_000);
});

/**
 * The moment the load above reaches only now and then, made to last: a slot settles while the
 * migrating router still holds a client's command on a key of it (its key-move script waits on
 * a source busy with a slow script; the key is already on the target). The client's next
 * command on that key, sent before or after the settling snapshot, must run after it: a plain
 * command does (the router's order across a slot settling), and so must a transaction.
 * The data path runs in the test's process, snapshots published by hand (no control plane).
 */
describe('a command held by the migrating router when its slot settles, then a transaction or WATCH of the same client on its key', () => {
  let deployment: InProcessDataPath;
  let from = 0;
  /** Slow scripts on the source: the key-move scripts queued behind one wait for it. */
  const SOURCE_BUSY_US = 300_000;

  /** Keys of four slots of s1 (each case settles its own). */
  const keys: string[] = [];

  beforeAll(async () => {
    deployment = await startInProcessDataPath(['keyMoveWaitMs: 10000'], (base) => {
      from = 0;
      for (let n = 0; keys.length < 4; n++) if (base.slotOwner[slotOf(`{held${n}}:c`)] === from) keys.push(`{held${n}}:c`);
      // Every case's slot migrating from s1 to s2.
      return new Topology(base.epoch + 1, base.shards, base.slotOwner, new Map(keys.map((k) => [slotOf(k), { from, to: 1 - from }])));
    });
  });

  afterAll(async () => {
    await deployment?.close();
  });

  /**
   * The key `k` is on the target already (100); the source is busy; the client's INCRBY 1 is sent
   * (its key-move script waits on the source); then `second` goes before or after the snapshot
   * that settles the slot on the target. Resolves with both replies, in send order.
   */
  async function heldThenSecond(k: string, second: (client: Redis) => Promise<unknown>, isSecondBeforeSettle: boolean): Promise<[unknown, unknown]> {
    const { shards, proxy, store } = deployment;
    const [source, target] = [shards.primaries[from]!, shards.primaries[1 - from]!].map((node) => new Redis({ host: node.host, port: node.port }));
    const client = new Redis({ host: HOST, port: proxy.port });
    try {
      await target!.set(k, '100');
      await client.ping();
      const busy = source!.eval(BUSY_SCRIPT, 1, '{busy}:x', SOURCE_BUSY_US);
      await sleep(30);
      const first = client.incrby(k, 1);
      let isFirstAnswered = false;
      void first.then(() => (isFirstAnswered = true), () => undefined);
      await sleep(30);
      let later: Promise<unknown> | undefined;
      if (isSecondBeforeSettle) later = second(client);
      await sleep(30);
      // The moment this case is about: the router still holds the INCRBY when its slot settles.
      expect(isFirstAnswered, 'INCRBY answered before the slot settled').toBe(false);
      const current = store.current;
      const owner = Uint16Array.from(current.slotOwner);
      owner[slotOf(k)] = 1 - from;
      const migrations = new Map(current.migrations);
      migrations.delete(slotOf(k));
      store.publish(new Topology(current.epoch + 1, current.shards, owner, migrations));
      later ??= second(client);
      await busy;
      return [await first, await later];
    } finally {
      for (const c of [client, source!, target!]) c.disconnect();
    }
  }

  it('runs a plain command after it (the router keeps the order across the settle)', async () => {
    expect(await heldThenSecond(keys[0]!, (client) => client.incrby(keys[0]!, 10), false)).toEqual([101, 111]);
  }, 20_000);

  // Fails today: EXEC does not wait for the client's command the router holds. Sent after the
  // settle it goes straight to the new owner (session-commands.ts #exec -> #isSettled, which looks
  // at topology.migrations only, not at the router still holding commands on the slot); sent
  // before, it waits in #settleWaiters and the settling snapshot sends it (onTopology) while the
  // router still holds the INCRBY. Either way it runs first: [111, [[null, 110]]].
  it('runs a transaction sent after the slot settled after it', async () => {
    expect(await heldThenSecond(keys[1]!, (client) => client.multi().incrby(keys[1]!, 10).exec(), false)).toEqual([101, [[null, 111]]]);
  }, 20_000);

  it('runs a transaction sent while the slot still migrated (EXEC waiting for the settle) after it', async () => {
    expect(await heldThenSecond(keys[2]!, (client) => client.multi().incrby(keys[2]!, 10).exec(), true)).toEqual([101, [[null, 111]]]);
  }, 20_000);

  // Fails today: WATCH goes straight to the new owner too (#watch), the client's own earlier
  // INCRBY then runs after the WATCH, and EXEC answers null for a key nobody else wrote
  // ([101, null]); not the documented case (that WATCH was taken after the slot had settled).
  it('takes a WATCH sent after the slot settled after it, and commits the transaction', async () => {
    const k = keys[3]!;
    const watchThenExec = async (client: Redis): Promise<unknown> => {
      await client.watch(k);
      return client.multi().incrby(k, 10).exec();
    };
    expect(await heldThenSecond(k, watchThenExec, false)).toEqual([101, [[null, 111]]]);
  }, 20_000);
});
