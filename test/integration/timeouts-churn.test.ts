import Redis from 'ioredis';
import { describe, expect, it } from 'vitest';
import type { LocalRedis } from '../../src/cli/local-redis';
import { replicationFlowing } from '../ha/ha-harness';
import { seededRandom } from '../helpers/seeded-random';
import { tagsFor } from '../migration/contended-load';
import { migratingSlots, ownerFromStateFile, sleep, slotOf, useMigrationDeployment, type MigrationProxy } from '../migration/migration-harness';

/**
 * commandTimeoutMs against slot migration and failover, 2 shards with 1 replica each,
 * minReplicaAcks 1 (noReplicaWrites: accept, so a shard whose replica was promoted still takes
 * writes). README: "a backend reply slower than this fails the commands waiting that long, and
 * new ones to that node until it answers them; a failed command may still run once the node
 * goes on"; docs/architecture.md: the connection is kept, a paused node runs the overdue bytes
 * when it goes on. On-demand key moves are a script run on the source (MIGRATE inside it), so a
 * move whose reply timed out may still run later. Clients pipeline, on keys of the migrating
 * slots (and one key on the other shard for MSET/MGET):
 *   INCRBY of a counter of their own (seeded increments), SET of a sequence number then GET,
 *   MSET of two keys on both shards then MGET.
 * Faults, each while slots migrate:
 *   1. the SOURCE's primary frozen past nodeTimeoutMs: it fails over while key moves and
 *      commands are overdue on it; it resumes after clients have moved keys from the promoted
 *      node and written them on the target;
 *   2. the plan back: the SOURCE frozen past commandTimeoutMs, below nodeTimeoutMs (no
 *      failover), then the TARGET likewise.
 * Checked: errors are only the documented ones; "shard unavailable" (a timeout, or refused while
 * the node owes overdue replies) and NOREPLICAS-unconfirmed count as "may have run", TRYAGAIN
 * (parked, never sent) as "did not run"; each acknowledged INCRBY's reply is within
 * [acked before + inc, acked before + unknown before + inc], and the final counter within
 * [acked, acked + unknown]; a GET/MGET after the client's own SET/MSET sees a value the client
 * may have left; at the end every key is on exactly one shard, the one owning its slot, the
 * plans are done and the proxy is alive.
 *
 * Found (open): the key-move EVAL a client's command sent to the frozen source times out
 * (commandTimeoutMs) and stays in the frozen node's socket; the command retries its move on the
 * promoted replica, the key moves to s1 and is incremented there (acknowledged). When the old
 * primary resumes, before it is demoted, it runs the overdue script: its MIGRATE ... REPLACE
 * (COPY or not) writes its stale copy over s1's key, reverting every acknowledged increment
 * since the freeze (migrating-router.ts KeyMove.onFailure assumes a late run is harmless
 * because "the source keeps the keys"; after a failover the old node is no longer the source).
 */

const SEED = Number(process.env['TIMEOUTS_CHURN_SEED'] ?? Date.now() % 100_000);
const COMMAND_TIMEOUT_MS = 250;
const NODE_TIMEOUT_MS = 1_000;
const CLIENTS = 4;
/** Filler keys per migrating slot, so the mover is still at work when the freeze comes. */
const FILLER = 100;
const MIGRATING = 2;

type Kind = 'incr' | 'set' | 'get' | 'mset' | 'mget';
interface Op {
  readonly client: number;
  readonly kind: Kind;
  readonly keys: readonly string[];
  /** INCRBY: the increment; SET/MSET: the value. */
  readonly arg: number;
  readonly sentAt: number;
  endedAt: number;
  reply: unknown;
  error: string | null;
}

type Outcome = 'acked' | 'unknown' | 'notRun' | 'undocumented';

function outcomeOf(op: Op): Outcome {
  if (op.error === null) return 'acked';
  if (/^ERR shard s[12] unavailable: /.test(op.error)) return 'unknown';
  if (/^NOREPLICAS the write reached the primary but not 1 replica\(s\) within \d+ ms; a failover may lose it$/.test(op.error)) return 'unknown';
  if (/^TRYAGAIN shard s[12] is failing over; no new primary within \d+ ms$/.test(op.error)) return 'notRun';
  if (/^TRYAGAIN slotproxy could not move the key to its new shard in time/.test(op.error)) return 'notRun';
  return 'undocumented';
}

class Load {
  readonly ops: Op[] = [];
  readonly #clients: Redis[];
  readonly #random: () => number;
  #isRunning = false;
  #loops: Promise<void>[] = [];
  #seq = 0;
  /** Whether pipelines touch the migrating slots' keys (off while a plan is being set up). */
  isHot = true;

  constructor(
    port: number,
    readonly tags: readonly string[],
    readonly otherTag: string,
    seed: number,
  ) {
    this.#random = seededRandom(seed);
    this.#clients = Array.from({ length: CLIENTS }, () => {
      const client = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 0 });
      client.on('error', () => undefined);
      return client;
    });
  }

  start(): void {
    this.#isRunning = true;
    this.#loops = this.#clients.map((_, c) => this.#loop(c));
  }

  async stop(): Promise<void> {
    this.#isRunning = false;
    await Promise.all(this.#loops);
    for (const client of this.#clients) client.disconnect();
  }

  async #loop(c: number): Promise<void> {
    const inFlight = new Set<Promise<void>>();
    while (this.#isRunning) {
      if (inFlight.size < 3) {
        const p = this.#pipeline(c).finally(() => inFlight.delete(p));
        inFlight.add(p);
      }
      await sleep(8);
    }
    await Promise.all(inFlight);
  }

  #pipeline(c: number): Promise<void> {
    const client = this.#clients[c]!;
    const pipeline = client.pipeline();
    const steps: Op[] = [];
    const add = (kind: Kind, keys: string[], arg: number, args: (string | number)[]): void => {
      steps.push({ client: c, kind, keys, arg, sentAt: Date.now(), endedAt: 0, reply: null, error: null });
      pipeline.call(String(args[0]), ...args.slice(1));
    };
    const seq = ++this.#seq;
    for (const tag of this.isHot ? this.tags : []) {
      const ctr = `{${tag}}:ctr:${c}`;
      const own = `{${tag}}:own:${c}`;
      const inc = 1 + Math.floor(this.#random() * 1000);
      add('incr', [ctr], inc, ['incrby', ctr, inc]);
      add('set', [own], seq, ['set', own, seq]);
      add('get', [own], 0, ['get', own]);
    }
    const pair = [this.isHot ? `{${this.tags[seq % this.tags.length]}}:m:${c}` : `{${this.otherTag}}:n:${c}`, `{${this.otherTag}}:m:${c}`];
    add('mset', pair, seq, ['mset', pair[0]!, seq, pair[1]!, seq]);
    add('mget', pair, 0, ['mget', ...pair]);
    this.ops.push(...steps);
    return pipeline.exec().then(
      (results) => {
        const now = Date.now();
        steps.forEach((op, i) => {
          const [err, reply] = results![i]!;
          op.endedAt = now;
          if (err !== null) op.error = err.message;
          else op.reply = reply;
        });
      },
      (err: Error) => {
        for (const op of steps) {
          op.endedAt = Date.now();
          op.error = err.message;
        }
      },
    );
  }
}

interface Model {
  /** Per key: the values it may hold (null = absent); per counter: acked sum and unknown sum. */
  possible: Map<string, Set<string | null>>;
  counters: Map<string, { acked: number; unknown: number; lastReply: number; totalAcked: number; totalUnknown: number }>;
}

/** Checks every reply against what the client sent before it, in order; returns the violations. */
function checkReplies(ops: readonly Op[], model: Model, t0: number): string[] {
  const violations: string[] = [];
  for (const op of ops) {
    const outcome = outcomeOf(op);
    const at = `(client ${op.client}, sent +${op.sentAt - t0} ms, answered +${op.endedAt - t0} ms)`;
    if (outcome === 'undocumented') violations.push(`${op.kind} ${op.keys.join(' ')}: undocumented error ${JSON.stringify(op.error)} ${at}`);
    switch (op.kind) {
      case 'incr': {
        const key = op.keys[0]!;
        const counter = model.counters.get(key) ?? { acked: 0, unknown: 0, lastReply: 0, totalAcked: 0, totalUnknown: 0 };
        model.counters.set(key, counter);
        if (outcome === 'acked') counter.totalAcked += op.arg;
        else if (outcome !== 'notRun') counter.totalUnknown += op.arg;
        if (outcome === 'acked') {
          const reply = Number(op.reply);
          const low = counter.acked + op.arg;
          const high = counter.acked + counter.unknown + op.arg;
          if (reply <= counter.lastReply) violations.push(`INCRBY ${key} answered ${reply} after ${counter.lastReply} ${at}`);
          counter.lastReply = reply;
          if (reply < low || reply > high) {
            violations.push(`INCRBY ${key} ${op.arg} answered ${reply}, allowed ${low}..${high} ${at}`);
            // Re-based on what the shard holds now, so a later, separate fault shows on its own.
            counter.acked = reply;
            counter.unknown = 0;
          } else counter.acked += op.arg;
        } else if (outcome !== 'notRun') counter.unknown += op.arg;
        break;
      }
      case 'set':
      case 'mset':
        for (const key of op.keys) {
          const value = String(op.arg);
          if (outcome === 'acked') model.possible.set(key, new Set([value]));
          else if (outcome !== 'notRun') model.possible.set(key, new Set([...(model.possible.get(key) ?? [null]), value]));
        }
        break;
      case 'get':
      case 'mget': {
        if (outcome !== 'acked') break;
        const values = op.kind === 'get' ? [op.reply] : (op.reply as unknown[]);
        op.keys.forEach((key, i) => {
          const allowed = model.possible.get(key) ?? new Set([null]);
          const value = values[i] === null ? null : String(values[i]);
          if (!allowed.has(value)) violations.push(`${op.kind.toUpperCase()} ${key} read ${value}, the client may have left ${[...allowed].join(' | ')} ${at}`);
        });
        break;
      }
    }
  }
  return violations;
}

/** The proxy's JSON log lines with `event`. */
function events(logs: string, event: string): Record<string, unknown>[] {
  return logs
    .split('\n')
    .filter((line) => line.startsWith('{') && line.includes(`"event":"${event}"`))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

function nodeOf(address: string, all: readonly LocalRedis[]): LocalRedis {
  const node = all.find((n) => `${n.host}:${n.port}` === address);
  if (node === undefined) throw new Error(`no node ${address}`);
  return node;
}

async function waitPlan(proxy: MigrationProxy, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = await proxy.status();
    if (status.state !== 'running') return status.state === 'done' ? 'done' : `${status.state}: ${status.error}`;
    if (Date.now() > deadline) return `still running after ${timeoutMs} ms: ${JSON.stringify(status.progress)}`;
    await sleep(25);
  }
}

describe('commandTimeoutMs and connectTimeoutMs while slots migrate and shards fail over', () => {
  const deployment = useMigrationDeployment({
    shards: 2,
    replicas: 1,
    config: {
      commandTimeoutMs: COMMAND_TIMEOUT_MS,
      connectTimeoutMs: 300,
      nodeTimeoutMs: NODE_TIMEOUT_MS,
      failoverWaitMs: 3_000,
      minReplicaAcks: Number(process.env['TIMEOUTS_CHURN_ACKS'] ?? 1),
      noReplicaWrites: 'accept',
      migrateKeysPerSecond: 400,
      migrateBatchKeys: 10,
      keyMoveWaitMs: 5_000,
    },
  });

  it('a frozen source fails over with key moves overdue on it, then resumes; frozen source and target below nodeTimeoutMs on the plan back', async () => {
    const { proxy, shards } = deployment;
    const all = [...shards.primaries, ...shards.replicas.flat()];
    console.log(`timeouts-churn seed ${SEED} (TIMEOUTS_CHURN_SEED=${SEED} to replay)`);
    const t0 = Date.now();
    // s2 owns 8192-16383; a reshard s2 -> s1 takes its highest slots.
    const slots = Array.from({ length: MIGRATING }, (_, i) => 16383 - i).sort((a, b) => a - b);
    const tags = tagsFor(slots);
    const otherTag = tagsFor([100])[0]!;
    const s2 = new Redis({ host: shards.primaries[1]!.host, port: shards.primaries[1]!.port });
    try {
      const fill = s2.pipeline();
      for (const tag of tags) for (let i = 0; i < FILLER; i++) fill.set(`{${tag}}:fill:${i}`, 'x');
      await fill.exec();
    } finally {
      s2.disconnect();
    }
    await replicationFlowing(shards);

    const load = new Load(proxy.port, tags, otherTag, SEED);
    load.start();
    const timeline: string[] = [];
    const mark = (what: string): void => void timeline.push(`+${Date.now() - t0} ms ${what}`);
    let failures: string[] = [];
    try {
      await sleep(150);
      load.isHot = false;
      await sleep(100);
      // --- 1. s2 (source) frozen past nodeTimeoutMs while its slots migrate to s1.
      let submitted = await proxy.submit({ op: 'reshard', from: 's2', to: 's1', slots: MIGRATING });
      expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
      expect((await migratingSlots(proxy.stateFile)).sort((a, b) => a - b)).toEqual(slots);
      const oldSource = shards.primaries[1]!;
      oldSource.kill('SIGSTOP');
      mark('s2 primary SIGSTOP (source, slots migrating)');
      load.isHot = true;
      try {
        for (const deadline = Date.now() + NODE_TIMEOUT_MS + 4_000; events(proxy.logs(), 'failover promoted').length === 0; await sleep(20)) {
          expect(Date.now(), 'no failover of s2').toBeLessThan(deadline);
        }
        mark('s2 failed over');
        // Clients move keys off the promoted s2 and write them on s1 meanwhile.
        await sleep(500);
      } finally {
        oldSource.kill('SIGCONT');
      }
      mark('old s2 primary SIGCONT');
      const plan1 = await waitPlan(proxy, 6_000);
      mark(`plan 1 ${plan1}`);
      expect(plan1).toBe('done');
      await sleep(150);

      // --- 2. the plan back, s1 -> s2: s1 (source) frozen below nodeTimeoutMs, then s2's primary (target).
      load.isHot = false;
      await sleep(100);
      submitted = await proxy.submit({ op: 'reshard', from: 's1', to: 's2', slots: MIGRATING });
      expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
      expect((await migratingSlots(proxy.stateFile)).sort((a, b) => a - b)).toEqual(slots);
      const s1Primary = shards.primaries[0]!;
      s1Primary.kill('SIGSTOP');
      mark('s1 primary SIGSTOP (source)');
      load.isHot = true;
      await sleep(COMMAND_TIMEOUT_MS + 350);
      s1Primary.kill('SIGCONT');
      mark('s1 primary SIGCONT');
      await sleep(200);
      const status = await proxy.status();
      const target = nodeOf(status.shards.find((s) => s.name === 's2')!.primary, all);
      if (status.state === 'running') {
        target.kill('SIGSTOP');
        mark(`s2 primary :${target.port} SIGSTOP (target)`);
        await sleep(COMMAND_TIMEOUT_MS + 350);
        target.kill('SIGCONT');
        mark('s2 primary SIGCONT');
      } else mark(`plan 2 already ${status.state} before the target freeze`);
      const plan2 = await waitPlan(proxy, 6_000);
      mark(`plan 2 ${plan2}`);
      expect(plan2).toBe('done');
      await sleep(150);
    } finally {
      await load.stop();
      for (const node of all) if (node.isRunning) node.kill('SIGCONT');
    }
    mark('load stopped');

    // --- Replies, in each client's order.
    const model: Model = { possible: new Map(), counters: new Map() };
    failures = checkReplies(load.ops, model, t0);

    // --- Final placement: each key on exactly one shard, the owner of its slot, through the current primaries.
    const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
    expect(migrations).toBe(0);
    const finalStatus = await proxy.status();
    const found = new Map<string, { shard: string; value: string | null }>();
    for (const shard of finalStatus.shards) {
      const node = nodeOf(shard.primary, all);
      const direct = new Redis({ host: node.host, port: node.port });
      try {
        for (const key of await direct.keys('*')) {
          if (key.includes(':fill:')) continue;
          if (owner[slotOf(key)] !== shard.name) failures.push(`${key} on ${shard.name}, slot ${slotOf(key)} owned by ${owner[slotOf(key)]}`);
          const before = found.get(key);
          const value = await direct.get(key);
          if (before !== undefined) failures.push(`${key} on both ${before.shard} (${before.value}) and ${shard.name} (${value})`);
          found.set(key, { shard: shard.name, value });
        }
      } finally {
        direct.disconnect();
      }
    }
    for (const [key, counter] of model.counters) {
      const value = Number(found.get(key)?.value ?? 0);
      // Every increment acknowledged over the run, each once (not the re-based model).
      if (value < counter.totalAcked || value > counter.totalAcked + counter.totalUnknown) {
        failures.push(`${key} = ${value} at the end, ${counter.totalAcked} acknowledged in all (+${counter.totalUnknown} unknown): allowed ${counter.totalAcked}..${counter.totalAcked + counter.totalUnknown}`);
      }
    }
    for (const [key, allowed] of model.possible) {
      const value = found.get(key)?.value ?? null;
      if (!allowed.has(value)) failures.push(`${key} = ${value} at the end, the clients may have left ${[...allowed].join(' | ')}`);
    }
    // The proxy answers, and reads what the shards hold.
    const client = new Redis({ host: '127.0.0.1', port: proxy.port });
    try {
      const sample = [...model.counters.keys()];
      expect(await client.mget(...sample)).toEqual(sample.map((k) => found.get(k)?.value ?? null));
    } finally {
      client.disconnect();
    }

    const counts = new Map<string, number>();
    for (const op of load.ops) if (op.error !== null) counts.set(`${outcomeOf(op)} ${op.error.slice(0, 90)}`, (counts.get(`${outcomeOf(op)} ${op.error.slice(0, 90)}`) ?? 0) + 1);
    const logs = proxy.logs();
    console.log(
      [
        `timeouts-churn seed ${SEED}: ${load.ops.length} commands, ${load.ops.filter((op) => op.error === null).length} acknowledged; ${Date.now() - t0} ms`,
        ...timeline.map((l) => `  ${l}`),
        'commands sent / errors per 250 ms:',
        '  ' + Array.from({ length: Math.ceil((Date.now() - t0) / 250) }, (_, b) => {
          const inBucket = load.ops.filter((op) => op.sentAt - t0 >= b * 250 && op.sentAt - t0 < (b + 1) * 250);
          return `${b * 250}:${inBucket.length}/${inBucket.filter((op) => op.error !== null).length}`;
        }).join(' '),
        'errors:',
        ...[...counts].map(([e, n]) => `  ${n} x ${e}`),
        'counters:',
        ...[...model.counters].map(([k, c]) => `  ${k}: final ${found.get(k)?.value ?? null}, acked ${c.totalAcked}, unknown ${c.totalUnknown}`),
        'proxy events:',
        ...['node failed', 'failover promoted', 'node demoted', 'resharding plan done'].flatMap((e) => events(logs, e).map((x) => `  ${JSON.stringify(x)}`)),
        `violations (${failures.length}):`,
        ...failures.slice(0, 30).map((f) => `  ${f}`),
      ].join('\n'),
    );
    expect(failures.slice(0, 20)).toEqual([]);
    // Only the first fault failed over.
    expect(events(logs, 'failover promoted').map((e) => e['shard'])).toEqual(['s2']);
  }, 40_000);
});
