import Redis from 'ioredis';
import { describe, expect, it } from 'vitest';
import { checkPlacement, expectNoMoverKeys, HOST, ownerFromStateFile, sleep, slotOf, useMigrationDeployment } from './migration-harness';
import { runReshard, tagsFor } from './contended-load';
import { seededRandom } from '../helpers/seeded-random';
import { commandCalls } from '../ha/ha-harness';

/**
 * Replica reads (`readFrom: replica`, `minReplicaAcks: 1` on 3 shards x 1 replica) while the
 * slots of a big list (3,000 elements) and a big hash (3,000 fields), copied in chunks each
 * time they move (BIG_KEY_MAX_ELEMENTS is 2,000), and of small counters move s3 -> s1 -> s2 -> s3.
 * Paced clients pipeline RPUSH (unique tokens), HSET (new fields and per-client fields),
 * INCRBY, and read them back: LLEN, LINDEX, LRANGE, HGET, HLEN, GET, MGET.
 *
 * What the docs promise and what is checked:
 * - README (readFrom): replica reads are not ordered with the client's writes, but
 *   "minReplicaAcks equal to the replica count closes that": an acknowledged write is on every
 *   replica, so a read sent after ANY client's write was acknowledged sees it. Lists and hashes
 *   only grow here, so: LLEN >= every RPUSH reply acknowledged before the read was sent;
 *   LINDEX at (reply - 1) of an acknowledged RPUSH returns exactly its token; HGET of a field
 *   whose HSET was acknowledged finds it (own fields: at least the last acknowledged value);
 *   HLEN >= the fields acknowledged; GET/MGET of a counter >= every INCRBY reply acknowledged.
 * - resharding.md: reads on a migrating slot go to the target's primary, "no command, read or
 *   write, is answered from a copy the target's replicas do not have"; big keys are copied to a
 *   temporary key under a lock: a read never sees a half-copied key (a short LLEN / HLEN, a
 *   missing field, a wrong element at an index).
 * - LLEN never going backwards for one client is promised only as far as the above implies (a
 *   read on the target's primary may see a write not yet acknowledged that a later read on its
 *   replica does not): a step back below the acknowledged floor fails, other steps back are
 *   counted and printed.
 * - Order: RPUSH and INCRBY replies grow strictly per client; no error at all (replicas are
 *   healthy throughout; TRYAGAIN only after keyMoveWaitMs).
 * - At the end: the list holds the initial elements then every acknowledged token exactly once
 *   (each at the position its reply said, each client's in send order, nothing unsent); the
 *   hash has every acknowledged field; counters = acknowledged increments; every key only on its
 *   slot's owner, no mover key left; every replica equal to its primary.
 */

const SEED = Number(process.env['SEED'] ?? Date.now() % 1_000_000_000);
const configFor = (readFrom: 'replica' | 'preferReplica'): Record<string, unknown> => ({
  readFrom,
  minReplicaAcks: 1,
  replicaAckTimeoutMs: 2000,
  keyMoveWaitMs: 8000,
  logLevel: 'info',
});

const MOVING_SLOTS = Array.from({ length: 8 }, (_, i) => 16384 - 8 + i);
const STABLE_SLOTS = [1000, 8000, 12000];
const MOVING_TAGS = tagsFor(MOVING_SLOTS);
const STABLE_TAGS = tagsFor(STABLE_SLOTS);
const PLANS = [
  { from: 's3', to: 's1' },
  { from: 's1', to: 's2' },
  { from: 's2', to: 's3' },
] as const;
const FILLER_PER_SLOT = 25;
const BIG_LIST = `{${MOVING_TAGS[1]}}:big-list`;
const BIG_HASH = `{${MOVING_TAGS[5]}}:big-hash`;
const BIG_ELEMENTS = 3000;
/** Never written by the load: EXISTS of it and the big keys must count 3. */
const FILLER_KEY = `{${MOVING_TAGS[3]}}:f:0`;
const HASH_TTL_MS = 3_600_000;
const LLEN_SCRIPT = "return redis.call('LLEN', KEYS[1])";
const COUNTERS = [...MOVING_TAGS, ...STABLE_TAGS].map((t) => `{${t}}:ctr`);

const CLIENTS = 4;
const BATCH = 8;
const SEND_EVERY_MS = 10;
const MAX_IN_FLIGHT = 2;
const OWN_FIELDS = 3;

type Kind =
  | 'rpush'
  | 'llen'
  | 'lindex'
  | 'ltail'
  | 'lpos'
  | 'evalro'
  | 'hnew'
  | 'hown'
  | 'hgetNew'
  | 'hgetOwn'
  | 'hmget'
  | 'hexists'
  | 'hlen'
  | 'pttl'
  | 'exists'
  | 'type'
  | 'incr'
  | 'get'
  | 'mget';
const WEIGHTS: readonly (readonly [Kind, number])[] = [
  ['rpush', 3],
  ['llen', 3],
  ['lindex', 2],
  ['ltail', 1],
  ['hnew', 2],
  ['hown', 2],
  ['hgetNew', 2],
  ['hgetOwn', 2],
  ['hlen', 1],
  ['lpos', 1],
  ['evalro', 1],
  ['hmget', 1],
  ['hexists', 1],
  ['pttl', 1],
  ['exists', 1],
  ['type', 1],
  ['incr', 3],
  ['get', 2],
  ['mget', 1],
];
const WEIGHT_TOTAL = WEIGHTS.reduce((s, [, w]) => s + w, 0);

interface Op {
  readonly client: number;
  readonly seq: number;
  readonly kind: Kind;
  readonly keys: readonly string[];
  /** rpush: token; hnew/hown/hgetNew/hgetOwn/hexists: field; lindex/lpos: the expected token; hmget: fields joined by spaces. */
  readonly arg: string;
  /** hown: value written; lindex: index read. */
  readonly num: number;
  readonly sentTick: number;
  readonly sentAt: number;
  endedTick: number;
  reply: unknown;
  error: string | null;
}

const initialToken = (i: number): string => `init:${i}`;
const ownField = (c: number, k: number): string => `own:${c}:${k}`;

let tick = 0;

class Load {
  readonly ops: Op[] = [];
  readonly clients: Redis[];
  /** Acknowledged RPUSHes (token, reply) and new fields, in completion order: what reads may ask for. */
  readonly ackedPushes: { token: string; index: number }[] = [];
  readonly ackedFields: string[] = [];
  readonly #rand: () => number;
  readonly #seq: number[];
  readonly #ownValue: number[];
  #isRunning = false;
  #senders: Promise<void>[] = [];

  constructor(port: number, seed: number) {
    this.#rand = seededRandom(seed);
    this.clients = Array.from({ length: CLIENTS }, () => {
      const client = new Redis({ host: HOST, port, maxRetriesPerRequest: 0 });
      client.on('error', () => undefined);
      return client;
    });
    this.#seq = this.clients.map(() => 0);
    this.#ownValue = this.clients.map(() => 0);
  }

  start(): void {
    this.#isRunning = true;
    this.#senders = this.clients.map((_, c) => this.#sender(c));
  }

  async stop(): Promise<void> {
    this.#isRunning = false;
    await Promise.all(this.#senders);
  }

  close(): void {
    for (const c of this.clients) c.disconnect();
  }

  #pick<T>(list: readonly T[]): T {
    return list[Math.floor(this.#rand() * list.length)]!;
  }

  #kind(): Kind {
    let r = this.#rand() * WEIGHT_TOTAL;
    for (const [kind, w] of WEIGHTS) {
      r -= w;
      if (r < 0) return kind;
    }
    return 'llen';
  }

  async #sender(c: number): Promise<void> {
    const pending = new Set<Promise<void>>();
    while (this.#isRunning) {
      if (pending.size < MAX_IN_FLIGHT) {
        const sent = this.#send(c);
        pending.add(sent);
        void sent.finally(() => pending.delete(sent));
      }
      await sleep(SEND_EVERY_MS);
    }
    await Promise.all([...pending]);
  }

  async #send(c: number): Promise<void> {
    const client = this.clients[c]!;
    const pipeline = client.pipeline();
    const planned: { kind: Kind; keys: string[]; arg: string; num: number }[] = [];
    for (let i = 0; i < BATCH; i++) {
      const kind = this.#kind();
      const seq = this.#seq[c]! + planned.length;
      switch (kind) {
        case 'rpush': {
          const token = `c${c}:${seq}`;
          pipeline.rpush(BIG_LIST, token);
          planned.push({ kind, keys: [BIG_LIST], arg: token, num: 0 });
          break;
        }
        case 'llen':
          pipeline.llen(BIG_LIST);
          planned.push({ kind, keys: [BIG_LIST], arg: '', num: 0 });
          break;
        case 'lindex': {
          // An element known to be there: an initial one, or one whose RPUSH was acknowledged.
          const useAcked = this.ackedPushes.length > 0 && this.#rand() < 0.7;
          const { token, index } = useAcked ? this.#pick(this.ackedPushes) : ((n) => ({ token: initialToken(n), index: n }))(Math.floor(this.#rand() * BIG_ELEMENTS));
          pipeline.lindex(BIG_LIST, index);
          planned.push({ kind, keys: [BIG_LIST], arg: token, num: index });
          break;
        }
        case 'ltail':
          pipeline.lrange(BIG_LIST, -3, -1);
          planned.push({ kind, keys: [BIG_LIST], arg: '', num: 0 });
          break;
        case 'hnew': {
          const field = `new:${c}:${seq}`;
          pipeline.hset(BIG_HASH, field, '1');
          planned.push({ kind, keys: [BIG_HASH], arg: field, num: 0 });
          break;
        }
        case 'hown': {
          const field = ownField(c, Math.floor(this.#rand() * OWN_FIELDS));
          const value = ++this.#ownValue[c]!;
          pipeline.hset(BIG_HASH, field, String(value));
          planned.push({ kind, keys: [BIG_HASH], arg: field, num: value });
          break;
        }
        case 'hgetNew': {
          const field = this.ackedFields.length > 0 && this.#rand() < 0.7 ? this.#pick(this.ackedFields) : `f:${Math.floor(this.#rand() * BIG_ELEMENTS)}`;
          pipeline.hget(BIG_HASH, field);
          planned.push({ kind, keys: [BIG_HASH], arg: field, num: 0 });
          break;
        }
        case 'hgetOwn': {
          const field = ownField(c, Math.floor(this.#rand() * OWN_FIELDS));
          pipeline.hget(BIG_HASH, field);
          planned.push({ kind, keys: [BIG_HASH], arg: field, num: 0 });
          break;
        }
        case 'lpos': {
          const useAcked = this.ackedPushes.length > 0 && this.#rand() < 0.8;
          const { token, index } = useAcked ? this.#pick(this.ackedPushes) : ((n) => ({ token: initialToken(n), index: n }))(Math.floor(this.#rand() * BIG_ELEMENTS));
          pipeline.lpos(BIG_LIST, token);
          planned.push({ kind, keys: [BIG_LIST], arg: token, num: index });
          break;
        }
        case 'evalro':
          pipeline.call('EVAL_RO', LLEN_SCRIPT, 1, BIG_LIST);
          planned.push({ kind, keys: [BIG_LIST], arg: '', num: 0 });
          break;
        case 'hmget': {
          const fields = [0, 1, 2].map(() => (this.ackedFields.length > 0 && this.#rand() < 0.7 ? this.#pick(this.ackedFields) : `f:${Math.floor(this.#rand() * BIG_ELEMENTS)}`));
          pipeline.hmget(BIG_HASH, ...fields);
          planned.push({ kind, keys: [BIG_HASH], arg: fields.join(' '), num: 0 });
          break;
        }
        case 'hexists': {
          const field = this.ackedFields.length > 0 && this.#rand() < 0.7 ? this.#pick(this.ackedFields) : `f:${Math.floor(this.#rand() * BIG_ELEMENTS)}`;
          pipeline.hexists(BIG_HASH, field);
          planned.push({ kind, keys: [BIG_HASH], arg: field, num: 0 });
          break;
        }
        case 'pttl':
          pipeline.pttl(BIG_HASH);
          planned.push({ kind, keys: [BIG_HASH], arg: '', num: 0 });
          break;
        case 'exists':
          pipeline.exists(BIG_LIST, BIG_HASH, FILLER_KEY);
          planned.push({ kind, keys: [BIG_LIST, BIG_HASH, FILLER_KEY], arg: '', num: 0 });
          break;
        case 'type': {
          const key = this.#rand() < 0.5 ? BIG_LIST : BIG_HASH;
          pipeline.type(key);
          planned.push({ kind, keys: [key], arg: key === BIG_LIST ? 'list' : 'hash', num: 0 });
          break;
        }
        case 'hlen':
          pipeline.hlen(BIG_HASH);
          planned.push({ kind, keys: [BIG_HASH], arg: '', num: 0 });
          break;
        case 'incr': {
          const key = this.#pick(COUNTERS);
          pipeline.incrby(key, 1);
          planned.push({ kind, keys: [key], arg: '', num: 1 });
          break;
        }
        case 'get': {
          const key = this.#pick(COUNTERS);
          pipeline.get(key);
          planned.push({ kind, keys: [key], arg: '', num: 0 });
          break;
        }
        case 'mget': {
          const keys = [...new Set([this.#pick(COUNTERS), this.#pick(COUNTERS), this.#pick(COUNTERS)])];
          pipeline.mget(...keys);
          planned.push({ kind, keys, arg: '', num: 0 });
          break;
        }
      }
    }
    const sentTick = ++tick;
    const sentAt = Date.now();
    const ops = planned.map((p): Op => ({ client: c, seq: this.#seq[c]!++, ...p, sentTick, sentAt, endedTick: 0, reply: undefined, error: null }));
    this.ops.push(...ops);
    let results: [Error | null, unknown][];
    try {
      results = (await pipeline.exec()) ?? [];
    } catch (err) {
      results = ops.map(() => [err as Error, null]);
    }
    const endedTick = ++tick;
    ops.forEach((op, i) => {
      const [error, reply] = results[i] ?? [new Error('no result'), null];
      op.endedTick = endedTick;
      op.reply = reply;
      op.error = error === null ? null : error.message;
      if (op.error !== null) return;
      if (op.kind === 'rpush') this.ackedPushes.push({ token: op.arg, index: Number(reply) - 1 });
      if (op.kind === 'hnew') this.ackedFields.push(op.arg);
    });
  }
}

/** Every key of a node with its type, whether it expires, and whole value (lists in order, hashes sorted). */
async function dumpNode(client: Redis): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const keys = (await client.keys('*')).sort();
  for (const key of keys) {
    const type = await client.type(key);
    let value: unknown;
    if (type === 'string') value = await client.get(key);
    else if (type === 'list') value = await client.lrange(key, 0, -1);
    else if (type === 'hash') value = Object.entries(await client.hgetall(key)).sort(([a], [b]) => (a < b ? -1 : 1));
    else value = `(${type})`;
    const pttl = await client.pttl(key);
    out.set(key, `${type} ${pttl > 0 ? 'expiring' : String(pttl)} ${JSON.stringify(value)}`);
  }
  return out;
}

for (const [variant, readFrom] of [
  [0, 'replica'],
  [1, 'preferReplica'],
] as const) {
  // An extended stress test (no fault found), left out of the suite for its time: SLOTPROXY_STRESS=1
  // runs it. test/ha/replica-reads-churn.test.ts reads from replicas through reshards in every run.
  describe.runIf(process.env['SLOTPROXY_STRESS'] === '1')(`replica reads while slots with big keys migrate (readFrom: ${readFrom}, minReplicaAcks: 1)`, () => {
    const deployment = useMigrationDeployment({ shards: 3, replicas: 1, config: configFor(readFrom) });

    it('a read sent after an acknowledged write sees it, never a half-copied big key; replicas equal their primaries', async () => {
      const testStart = Date.now();
      const seed = SEED + variant;
      console.log(`replica-reads-migration (${readFrom}) seed ${seed} (SEED=${SEED} to replay)`);
      const { proxy, shards, specs } = deployment;
      const admin = new Redis({ host: HOST, port: proxy.port });
      admin.on('error', () => undefined);
      const load = new Load(proxy.port, seed);
      const direct: Redis[] = [];
      try {
        // Data, written through the proxy (acknowledged by each shard's replica).
        const filler: string[] = [];
        for (const tag of MOVING_TAGS) for (let i = 0; i < FILLER_PER_SLOT; i++) filler.push(`{${tag}}:f:${i}`, `x${i}`);
        await admin.mset(...filler);
        for (let i = 0; i < BIG_ELEMENTS; i += 500) {
          await admin.rpush(BIG_LIST, ...Array.from({ length: 500 }, (_, j) => initialToken(i + j)));
          await admin.hset(BIG_HASH, Object.fromEntries(Array.from({ length: 500 }, (_, j) => [`f:${i + j}`, '1'])));
        }
        await admin.pexpire(BIG_HASH, HASH_TTL_MS);
        expect(await admin.llen(BIG_LIST)).toBe(BIG_ELEMENTS);
        expect(await admin.hlen(BIG_HASH)).toBe(BIG_ELEMENTS);

        load.start();
        const t0 = Date.now();
        const timeline: string[] = [];
        await sleep(200);
        for (const plan of PLANS) {
          const r = await runReshard(proxy, plan.from, plan.to, MOVING_SLOTS.length);
          timeline.push(`+${Date.now() - t0} ms plan ${plan.from} -> ${plan.to} ${r.state} (${r.keysMoved} keys, max ${r.maxMigrating} migrating)${r.error === null ? '' : ` ${r.error}`}`);
          expect(r.state, JSON.stringify(r)).toBe('done');
          await sleep(150);
        }
        await load.stop();
        timeline.push(`+${Date.now() - t0} ms load stopped`);
        // Both big keys were copied in chunks by each plan (not MIGRATEd whole).
        const bigMoves = proxy
          .logs()
          .split('\n')
          .filter((line) => line.includes('big key moved'));
        timeline.push(...bigMoves.map((line) => line.slice(0, 200)));
        expect(bigMoves.filter((line) => line.includes('"outcome":"moved"')).length).toBe(2 * PLANS.length);
        console.log(timeline.join('\n'));

        // ---------------- checks on the replies
        const ops = load.ops;
        const violations: string[] = [];
        const errors = ops.filter((op) => op.error !== null);
        const errorKinds = new Map<string, number>();
        for (const op of errors) errorKinds.set(op.error!.replace(/\d+/g, 'N'), (errorKinds.get(op.error!.replace(/\d+/g, 'N')) ?? 0) + 1);
        const at = (op: Op): string => `client ${op.client} seq ${op.seq}, sent +${op.sentAt - t0} ms`;
        const ok = (op: Op): boolean => op.error === null;

        // Every write acknowledged, in completion order by tick, for floors.
        const pushes = ops.filter((w) => w.kind === 'rpush');
        const sentTokens = new Set(pushes.map((w) => w.arg));
        const ackedPushes = pushes.filter(ok);
        const ackedNew = ops.filter((w) => w.kind === 'hnew' && ok(w));
        const ackedIncrs = ops.filter((w) => w.kind === 'incr' && ok(w));
        const floorOf = <T>(list: readonly Op[], op: Op, value: (w: Op) => T, reduce: (a: T, b: T) => T, start: T): T =>
          list.filter((w) => w.endedTick < op.sentTick).reduce((m, w) => reduce(m, value(w)), start);

        let stepsBack = 0;
        const stepBackExamples: string[] = [];
        for (let c = 0; c < CLIENTS; c++) {
          const mine = ops.filter((op) => op.client === c).sort((a, b) => a.seq - b.seq);
          const lastReply = new Map<string, number>();
          const llenReads: Op[] = [];
          for (const op of mine) {
            if (!ok(op)) continue;
            switch (op.kind) {
              case 'rpush':
              case 'incr': {
                const key = op.kind === 'rpush' ? 'list' : op.keys[0]!;
                const v = Number(op.reply);
                const before = lastReply.get(key) ?? 0;
                if (!(v > before)) violations.push(`${at(op)}: ${op.kind.toUpperCase()} ${op.keys[0]} answered ${v} after an earlier one answered ${before}`);
                lastReply.set(key, v);
                break;
              }
              case 'hnew':
                if (op.reply !== 1) violations.push(`${at(op)}: HSET of new field ${op.arg} answered ${String(op.reply)}, not 1 (applied twice?)`);
                break;
              case 'evalro':
              case 'llen': {
                const v = Number(op.reply);
                const floor = Math.max(BIG_ELEMENTS, floorOf(ackedPushes, op, (w) => Number(w.reply), Math.max, 0));
                if (v < floor) violations.push(`${at(op)}: LLEN read ${v}, below ${floor} (an RPUSH answered ${floor}, or the initial size, before the read was sent)`);
                const prior = llenReads.filter((r) => r.endedTick < op.sentTick).reduce((m, r) => Math.max(m, Number(r.reply)), 0);
                if (v < prior) {
                  stepsBack++;
                  if (stepBackExamples.length < 5) stepBackExamples.push(`${at(op)}: LLEN ${v} after this client read ${prior} (acknowledged floor ${floor})`);
                }
                llenReads.push(op);
                break;
              }
              case 'lindex':
                if (op.reply !== op.arg) violations.push(`${at(op)}: LINDEX ${op.num} read ${String(op.reply)}, expected ${op.arg} (acknowledged there before the read was sent)`);
                break;
              case 'lpos':
                if (op.reply !== op.num) violations.push(`${at(op)}: LPOS ${op.arg} answered ${String(op.reply)}, expected ${op.num} (acknowledged there before the read was sent)`);
                break;
              case 'hmget': {
                const values = op.reply as (string | null)[];
                if (values.some((v) => v !== '1')) violations.push(`${at(op)}: HMGET ${op.arg} read ${JSON.stringify(values)}; every field was acknowledged before the read was sent`);
                break;
              }
              case 'hexists':
                if (op.reply !== 1) violations.push(`${at(op)}: HEXISTS ${op.arg} answered ${String(op.reply)}; the field was acknowledged before the read was sent`);
                break;
              case 'pttl': {
                const v = Number(op.reply);
                if (!(v > 0 && v <= HASH_TTL_MS)) violations.push(`${at(op)}: PTTL ${BIG_HASH} answered ${v} (set to ${HASH_TTL_MS} ms before the load)`);
                break;
              }
              case 'exists':
                if (op.reply !== 3) violations.push(`${at(op)}: EXISTS ${op.keys.join(' ')} answered ${String(op.reply)}, not 3`);
                break;
              case 'type':
                if (op.reply !== op.arg) violations.push(`${at(op)}: TYPE ${op.keys[0]} answered ${String(op.reply)}, not ${op.arg}`);
                break;
              case 'ltail': {
                const tail = op.reply as string[];
                const floor = Math.max(BIG_ELEMENTS, floorOf(ackedPushes, op, (w) => Number(w.reply), Math.max, 0));
                if (tail.length !== 3 || tail.some((t) => !sentTokens.has(t) && !t.startsWith('init:'))) {
                  violations.push(`${at(op)}: LRANGE -3 -1 read ${JSON.stringify(tail)} (floor ${floor})`);
                }
                break;
              }
              case 'hgetNew':
                if (op.reply !== '1') violations.push(`${at(op)}: HGET ${op.arg} read ${String(op.reply)}; the field was written and acknowledged before the read was sent`);
                break;
              case 'hgetOwn': {
                const writes = mine.filter((w) => w.kind === 'hown' && w.arg === op.arg && w.seq < op.seq);
                const acked = writes.filter((w) => ok(w) && w.endedTick < op.sentTick).reduce((m, w) => Math.max(m, w.num), 0);
                const sentMax = writes.reduce((m, w) => Math.max(m, w.num), 0);
                const v = op.reply === null ? 0 : Number(op.reply);
                if (v < acked) violations.push(`${at(op)}: HGET ${op.arg} read ${String(op.reply)}, the client's HSET ${acked} was acknowledged before the read was sent`);
                // A later value of the same pipeline is allowed on replicas (README); one never sent is not.
                const everSent = ops.some((w) => w.kind === 'hown' && w.arg === op.arg && w.num === v);
                if (v > 0 && !everSent) violations.push(`${at(op)}: HGET ${op.arg} read ${v}, never written (highest sent before ${sentMax})`);
                break;
              }
              case 'hlen': {
                const v = Number(op.reply);
                const floor = BIG_ELEMENTS + floorOf(ackedNew, op, () => 1, (a, b) => a + b, 0);
                if (v < floor) violations.push(`${at(op)}: HLEN read ${v}, below ${floor} fields acknowledged before the read was sent`);
                break;
              }
              case 'get':
              case 'mget': {
                const values = op.kind === 'mget' ? (op.reply as (string | null)[]) : [op.reply as string | null];
                op.keys.forEach((key, i) => {
                  const v = values[i] === null ? 0 : Number(values[i]);
                  const floor = floorOf(
                    ackedIncrs.filter((w) => w.keys[0] === key),
                    op,
                    (w) => Number(w.reply),
                    Math.max,
                    0,
                  );
                  if (v < floor) violations.push(`${at(op)}: ${op.kind.toUpperCase()} ${key} (slot ${slotOf(key)}) read ${String(values[i])}, an INCRBY answered ${floor} before the read was sent`);
                });
                break;
              }
              default:
                break;
            }
          }
        }

        // ---------------- final state on the shards
        const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
        expect(migrations).toBe(0);
        const primaryOf = new Map(specs.map((s) => [s.name, s.node]));
        const onOwner = (key: string): Redis => {
          const node = primaryOf.get(owner[slotOf(key)]!)!;
          const r = new Redis({ host: node.host, port: node.port });
          direct.push(r);
          return r;
        };
        const list = await onOwner(BIG_LIST).lrange(BIG_LIST, 0, -1);
        const hash = await onOwner(BIG_HASH).hgetall(BIG_HASH);
        const finalLines: string[] = [];
        // The list: initial elements, then tokens each once, each at its acknowledged position, per client in order.
        const position = new Map<string, number>();
        list.forEach((t, i) => {
          if (position.has(t)) violations.push(`list: ${t} twice (at ${position.get(t)} and ${i})`);
          position.set(t, i);
          if (i < BIG_ELEMENTS && t !== initialToken(i)) violations.push(`list: ${t} at ${i}, expected ${initialToken(i)}`);
          if (i >= BIG_ELEMENTS && !sentTokens.has(t)) violations.push(`list: ${t} at ${i} was never sent`);
        });
        for (const w of ackedPushes) {
          const p = position.get(w.arg);
          if (p !== Number(w.reply) - 1) violations.push(`list: acknowledged ${w.arg} (RPUSH answered ${String(w.reply)}) at ${p ?? 'nowhere'}`);
        }
        const maybePushes = pushes.filter((w) => !ok(w)).length;
        if (list.length < BIG_ELEMENTS + ackedPushes.length || list.length > BIG_ELEMENTS + ackedPushes.length + maybePushes) {
          violations.push(`list: ${list.length} elements, ${ackedPushes.length} acknowledged pushes, ${maybePushes} of unknown outcome`);
        }
        for (let c = 0; c < CLIENTS; c++) {
          const seqs = list.filter((t) => t.startsWith(`c${c}:`)).map((t) => Number(t.split(':')[1]));
          if (seqs.some((s, i) => i > 0 && s <= seqs[i - 1]!)) violations.push(`list: client ${c}'s tokens out of send order`);
        }
        finalLines.push(`list ${list.length} (${ackedPushes.length} pushes acknowledged)`);
        // The hash: every field acknowledged, own fields at least their last acknowledged value.
        for (const w of ackedNew) if (hash[w.arg] !== '1') violations.push(`hash: acknowledged field ${w.arg} is ${String(hash[w.arg])}`);
        for (let i = 0; i < BIG_ELEMENTS; i++) if (hash[`f:${i}`] !== '1') violations.push(`hash: initial field f:${i} is ${String(hash[`f:${i}`])}`);
        for (let c = 0; c < CLIENTS; c++) {
          for (let k = 0; k < OWN_FIELDS; k++) {
            const writes = ops.filter((w) => w.kind === 'hown' && w.client === c && w.arg === ownField(c, k));
            const acked = writes.filter(ok).reduce((m, w) => Math.max(m, w.num), 0);
            const sent = writes.reduce((m, w) => Math.max(m, w.num), 0);
            const v = Number(hash[ownField(c, k)] ?? 0);
            if (v < acked || v > sent || (v > 0 && !writes.some((w) => w.num === v))) violations.push(`hash: ${ownField(c, k)} = ${v}, acknowledged ${acked}, sent ${sent}`);
          }
        }
        const finalTtl = await onOwner(BIG_HASH).pttl(BIG_HASH);
        if (!(finalTtl > 0 && finalTtl <= HASH_TTL_MS)) violations.push(`hash: PTTL ${finalTtl} at the end on its owner`);
        const hashFields = Object.keys(hash).length;
        const allNew = ops.filter((w) => w.kind === 'hnew');
        const unknownFields = Object.keys(hash).filter((f) => !f.startsWith('f:') && !f.startsWith('own:') && !allNew.some((w) => w.arg === f));
        if (unknownFields.length > 0) violations.push(`hash: fields never written: ${unknownFields.slice(0, 5).join(' ')}`);
        finalLines.push(`hash ${hashFields} fields (${ackedNew.length} new acknowledged)`);
        // Counters.
        for (const key of COUNTERS) {
          const incrs = ops.filter((w) => w.kind === 'incr' && w.keys[0] === key);
          const acked = incrs.filter(ok).length;
          const maybe = incrs.length - acked;
          const replies = incrs.filter(ok).map((w) => Number(w.reply));
          if (new Set(replies).size !== replies.length) violations.push(`${key}: the same INCRBY reply given twice`);
          const final = Number((await onOwner(key).get(key)) ?? 0);
          if (final < acked || final > acked + maybe || final < Math.max(0, ...replies)) violations.push(`${key}: final ${final}, ${acked} acknowledged, ${maybe} of unknown outcome`);
        }

        console.log(
          [
            `ops ${ops.length} (${ops.filter(ok).length} answered), errors ${errors.length}: ${JSON.stringify([...errorKinds])}`,
            ...finalLines,
            `LLEN steps back above the acknowledged floor (not promised): ${stepsBack}`,
            ...stepBackExamples,
            `violations ${violations.length}:`,
            ...violations.slice(0, 30),
          ].join('\n'),
        );

        // The reads did go to the replicas (the checks above are about replica reads).
        const replicaReads = { llen: 0, hget: 0, get: 0 };
        for (const node of shards.replicas.flat()) for (const name of ['llen', 'hget', 'get'] as const) replicaReads[name] += await commandCalls(node, name);
        console.log(`reads answered by replicas: ${JSON.stringify(replicaReads)}`);
        expect(Math.min(replicaReads.llen, replicaReads.hget, replicaReads.get)).toBeGreaterThan(0);

        // Placement (each key on its slot's owner only), no mover keys.
        const finalShards = specs.map((s) => ({ name: s.name, node: s.node }));
        const placement = await checkPlacement(finalShards, owner, 0, () => []);
        expect(placement.misplaced.slice(0, 5)).toEqual([]);
        await expectNoMoverKeys(finalShards);

        // Every replica equals its primary (after WAIT: the primary's writes have reached it).
        for (const [i, s] of specs.entries()) {
          const p = new Redis({ host: s.node.host, port: s.node.port });
          const r = new Redis({ host: shards.replicas[i]![0]!.host, port: shards.replicas[i]![0]!.port });
          direct.push(p, r);
          expect(await p.call('WAIT', '1', '5000')).toBe(1);
          const [dp, dr] = [await dumpNode(p), await dumpNode(r)];
          const differ = [...new Set([...dp.keys(), ...dr.keys()])].filter((k) => dp.get(k) !== dr.get(k));
          expect(differ.slice(0, 5).map((k) => `${s.name} ${k}: primary ${dp.get(k)?.slice(0, 80)}, replica ${dr.get(k)?.slice(0, 80)}`)).toEqual([]);
        }

        expect(errors.map((op) => `${at(op)} ${op.kind} ${op.keys.join(' ')}: ${op.error}`).slice(0, 10)).toEqual([]);
        expect(violations.slice(0, 20)).toEqual([]);
        console.log(`wall ${Date.now() - testStart} ms (seed ${seed})`);
      } finally {
        await load.stop();
        load.close();
        admin.disconnect();
        for (const r of direct) r.disconnect();
      }
    }, 30_000);
  });
}
