import * as fs from 'node:fs';
import Redis from 'ioredis';
import { describe, expect, it } from 'vitest';
import { isMap, isSeq, parseDocument, type YAMLMap, type YAMLSeq } from 'yaml';
import { loadConfigFile } from '../../src/config/load-config';
import type { ReshardStatus } from '../../src/control/resharding';
import {
  checkPlacement,
  expectNoMoverKeys,
  HOST,
  initialValue,
  loadKeys,
  ownerFromStateFile,
  sleep,
  slotOf,
  useMigrationDeployment,
  type MigrationDeployment,
  type MigrationProxy,
  type ShardSpec,
} from './migration-harness';
import { around, firstDecrease, listOf, readOnOwners, tagsFor, recordPipeline, runPipelines, pickWeighted } from './contended-load';
import { seededRandom } from '../helpers/seeded-random';

/**
 * Config reloads (SIGHUP and the file watcher) racing each other and running plans, under
 * contended pipelined load. An "operator" edits the YAML the way a person would (the yaml
 * Document API on the file as it is now, comments and the proxy's own `slots:` rewrites kept;
 * a shard removed from a YAML that lists slots hands its slots to another listed shard, so the
 * file stays valid) and signals the proxy:
 *
 * 1. a shard added, then (while that rebalance runs) another removed, the YAML broken and fixed,
 *    a non-shard setting changed, a storm of 10 SIGHUPs in 100 ms, an admin reshard refused
 *    with 409 meanwhile (YAML listing `slots:`);
 * 2. (file watcher on, YAML without slots) a shard's address changed and a setting changed while
 *    idle; a plan ending while the YAML is broken, then fixed; a shard removed and, while it
 *    drains, put back;
 * 3. storms of SIGHUPs while idle, with and without edits between them (two edits 2 ms apart).
 *
 * At the end: the topology names exactly the final YAML's shards, slot counts within 1 of each
 * other; the YAML loads (and its `slots:` are the proxy's ownership when it lists them); the
 * state file has no migration; no client error; per client, INCRBY/RPUSH replies grow per key
 * and reads see the client's own writes before them (GET, cross-shard MGET after MSET); counters
 * are the sum of acknowledged increments, lists hold every acknowledged token once, own keys
 * their last write; every key on its slot's owner (removed shards hold none); every SIGHUP's
 * reload says in the log what became of it, and no reload is dropped as "plan busy".
 *
 * RELOAD_CHURN_SEED=n replays the clients' commands.
 *
 * Regression tests for (failing when written, src/control/resharding.ts):
 * 1. a plan's end rewrites the YAML's `slots:` for the shards the file lists only
 *    (writeSlotsToConfigFile): a shard the operator removed meanwhile still owns slots, which no
 *    listed shard gets, so the file no longer loads; the deferred reload fails, the removal is lost;
 * 2. a plan ending while the YAML does not parse is reported failed (its YAML writes throw);
 * 3. a reload plan that drains a shard deletes it from the YAML at its end (removeShardFromConfigFile,
 *    not limited to admin plans as addShardToConfigFile is): the operator's putting it back is erased;
 * 4. reload() awaits the new shard's check before launching, so a second reload in that window is
 *    refused "still running" by #launch and dropped instead of deferred (reloads now run one
 *    after another).
 */

const SEED = Number(process.env['RELOAD_CHURN_SEED'] ?? Date.now() % 1_000_000);
console.log(`reload-churn seed ${SEED} (RELOAD_CHURN_SEED=${SEED} replays it)`);

/** Keys written straight to the shards before the load, read back at the end with their value. */
const FILLER = 6_000;
const CLIENTS = 10;
const BATCH = 12;
const PIPELINES_IN_FLIGHT = 3;
const PAUSE_MS = 15;
/** Tags spread over the slot space, so every rebalance moves some of the contended keys. */
const TAG_SLOTS = Array.from({ length: 48 }, (_, i) => i * 341 + 13);
const PROXY_CONFIG = { migrateKeysPerSecond: 3_000, migrateSlotsInFlight: 192, keyMoveWaitMs: 10_000 };

const key = {
  counter: (tag: string, i: number) => `{${tag}}:c${i}`,
  list: (tag: string) => `{${tag}}:l`,
  own: (tag: string, client: number) => `{${tag}}:o${client}`,
  ownMulti: (tag: string, client: number) => `{${tag}}:n${client}`,
  shared: (tag: string) => `{${tag}}:m`,
};

// ---------------------------------------------------------------------------------------------
// The load

type Kind = 'incrby' | 'rpush' | 'set-own' | 'get-own' | 'mset-own' | 'mget-own' | 'mset' | 'mget';

interface Sent {
  readonly kind: Kind;
  readonly keys: readonly string[];
  readonly delta?: number;
  readonly value?: string;
  /** For reads of the client's own keys: what its earlier writes (in send order) left there. */
  readonly expected?: readonly (string | null)[];
  reply?: unknown;
  error?: string;
  isAnswered: boolean;
}

const WEIGHTS: readonly (readonly [Kind, number])[] = [
  ['incrby', 5],
  ['rpush', 4],
  ['set-own', 3],
  ['get-own', 2],
  ['mset-own', 2],
  ['mget-own', 2],
  ['mset', 2],
  ['mget', 2],
];
const WEIGHT_TOTAL = WEIGHTS.reduce((sum, [, w]) => sum + w, 0);

class Client {
  readonly id: number;
  readonly redis: Redis;
  readonly sent: Sent[] = [];
  readonly #random: () => number;
  readonly #tags: readonly string[];
  /** What this client's writes sent so far leave in its own keys. */
  readonly #own = new Map<string, string>();
  #seq = 0;

  constructor(id: number, port: number, seed: number, tags: readonly string[]) {
    this.id = id;
    // Sent once or failed visibly: no retry, no offline queue.
    this.redis = new Redis({ host: HOST, port, lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null });
    this.redis.on('error', () => undefined);
    this.#random = seededRandom(seed);
    this.#tags = tags;
  }

  #tag(): string {
    return this.#tags[Math.floor(this.#random() * this.#tags.length)]!;
  }

  #distinctTags(): string[] {
    const n = 2 + Math.floor(this.#random() * 3);
    const chosen = new Set<string>();
    while (chosen.size < n) chosen.add(this.#tag());
    return [...chosen];
  }

  #token(): string {
    return `${this.id}:${this.#seq++}`;
  }

  #kind(): Kind {
    return pickWeighted(this.#random, WEIGHTS, WEIGHT_TOTAL, 'incrby');
  }

  async sendBatch(): Promise<void> {
    const pipeline = this.redis.pipeline();
    const batch: Sent[] = [];
    const add = (s: Sent): void => {
      batch.push(s);
      this.sent.push(s);
    };
    for (let i = 0; i < BATCH; i++) {
      const kind = this.#kind();
      switch (kind) {
        case 'incrby': {
          const k = key.counter(this.#tag(), this.#random() < 0.5 ? 0 : 1);
          const delta = 1 + Math.floor(this.#random() * 5);
          add({ kind, keys: [k], delta, isAnswered: false });
          pipeline.incrby(k, delta);
          break;
        }
        case 'rpush': {
          const k = key.list(this.#tag());
          const value = this.#token();
          add({ kind, keys: [k], value, isAnswered: false });
          pipeline.rpush(k, value);
          break;
        }
        case 'set-own': {
          const k = key.own(this.#tag(), this.id);
          const value = this.#token();
          this.#own.set(k, value);
          add({ kind, keys: [k], value, isAnswered: false });
          pipeline.set(k, value);
          break;
        }
        case 'get-own': {
          const k = key.own(this.#tag(), this.id);
          add({ kind, keys: [k], expected: [this.#own.get(k) ?? null], isAnswered: false });
          pipeline.get(k);
          break;
        }
        case 'mset-own': {
          const keys = this.#distinctTags().map((t) => key.ownMulti(t, this.id));
          const value = this.#token();
          for (const k of keys) this.#own.set(k, value);
          add({ kind, keys, value, isAnswered: false });
          pipeline.mset(...keys.flatMap((k) => [k, value]));
          break;
        }
        case 'mget-own': {
          const keys = this.#distinctTags().map((t) => key.ownMulti(t, this.id));
          add({ kind, keys, expected: keys.map((k) => this.#own.get(k) ?? null), isAnswered: false });
          pipeline.mget(...keys);
          break;
        }
        case 'mset': {
          const keys = this.#distinctTags().map(key.shared);
          const value = this.#token();
          add({ kind, keys, value, isAnswered: false });
          pipeline.mset(...keys.flatMap((k) => [k, value]));
          break;
        }
        case 'mget': {
          const keys = this.#distinctTags().map(key.shared);
          add({ kind, keys, isAnswered: false });
          pipeline.mget(...keys);
          break;
        }
      }
    }
    await recordPipeline(pipeline, batch);
  }

  async run(isStopped: () => boolean): Promise<void> {
    await runPipelines(() => this.sendBatch(), isStopped, PIPELINES_IN_FLIGHT, PAUSE_MS);
  }
}

interface RunningLoad {
  readonly clients: readonly Client[];
  readonly tags: readonly string[];
  stop(): Promise<void>;
}

async function startContendedLoad(port: number, seed: number): Promise<RunningLoad> {
  const tags = tagsFor(TAG_SLOTS);
  const clients = Array.from({ length: CLIENTS }, (_, c) => new Client(c, port, seed * 100 + c, tags));
  await Promise.all(clients.map((c) => c.redis.connect()));
  let isStopped = false;
  const running = clients.map((c) => c.run(() => isStopped));
  return {
    clients,
    tags,
    async stop() {
      isStopped = true;
      await Promise.allSettled(running);
      for (const c of clients) c.redis.disconnect();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The operator: edits the YAML, signals the proxy

class Operator {
  readonly #proxy: MigrationProxy;
  readonly #specs: ReadonlyMap<string, ShardSpec>;
  /** The last valid text this operator wrote (what a broken edit is fixed back to). */
  #good: string;
  signals = 0;

  constructor(proxy: MigrationProxy, specs: readonly ShardSpec[]) {
    this.#proxy = proxy;
    this.#specs = new Map(specs.map((s) => [s.name, s]));
    this.#good = fs.readFileSync(proxy.configPath, 'utf8');
  }

  /** The shards the operator's last valid YAML lists. */
  get intended(): string[] {
    return shardItems(parseDocument(this.#good).get('shards', true) as YAMLSeq).map((item) => String(item.get('name')));
  }

  /** Edits the file as it is now (the operator's last valid text when it does not parse) and writes it. */
  edit(change: (doc: ReturnType<typeof parseDocument>, shards: YAMLSeq) => void): void {
    const now = fs.readFileSync(this.#proxy.configPath, 'utf8');
    let doc = parseDocument(now);
    if (doc.errors.length > 0 || !isSeq(doc.get('shards', true))) doc = parseDocument(this.#good);
    change(doc, doc.get('shards', true) as YAMLSeq);
    this.#good = doc.toString();
    fs.writeFileSync(this.#proxy.configPath, this.#good);
  }

  /** Lists every shard's slots as the state file has them now (the proxy then keeps them true). */
  listSlots(): void {
    const state = JSON.parse(fs.readFileSync(this.#proxy.stateFile, 'utf8')) as { topology: { shards: { name: string }[]; slots: [number, number][][] } };
    const ranges = new Map(state.topology.shards.map((s, i) => [s.name, state.topology.slots[i]!]));
    this.edit((doc, shards) => {
      for (const item of shardItems(shards)) {
        const node = doc.createNode((ranges.get(String(item.get('name'))) ?? []).map(([a, b]) => (a === b ? String(a) : `${a}-${b}`)));
        node.flow = true;
        item.set('slots', node);
      }
    });
  }

  addShard(name: string): void {
    const spec = this.#specs.get(name)!;
    this.edit((doc, shards) => {
      const entry: Record<string, unknown> = { name, primary: `${spec.node.host}:${spec.node.port}` };
      if (shardItems(shards).some((item) => item.has('slots'))) entry['slots'] = [];
      shards.add(doc.createNode(entry));
    });
  }

  /** Takes the shard out; in a YAML listing slots, its slots go to the first shard left (or the file would not load). */
  removeShard(name: string): void {
    this.edit((_doc, shards) => {
      const items = shardItems(shards);
      const index = items.findIndex((item) => item.get('name') === name);
      const removed = items[index]!;
      shards.delete(shards.items.indexOf(removed));
      const slots = removed.get('slots', true);
      if (isSeq(slots)) {
        const heir = shardItems(shards)[0]!.get('slots', true) as unknown as YAMLSeq;
        for (const item of slots.items) heir.add(item);
      }
    });
  }

  setPrimary(name: string, address: string): void {
    this.edit((_doc, shards) => shardItems(shards).find((item) => item.get('name') === name)!.set('primary', address));
  }

  setSetting(name: string, value: unknown): void {
    this.edit((doc) => doc.set(name, value));
  }

  /** A half-saved edit: the file no longer parses. */
  breakFile(): void {
    fs.writeFileSync(this.#proxy.configPath, `${this.#good}\nshards: [unclosed\n`);
  }

  /** The edit finished: the last valid text again. */
  fixFile(): void {
    fs.writeFileSync(this.#proxy.configPath, this.#good);
  }

  hup(): void {
    this.signals++;
    this.#proxy.kill('SIGHUP');
  }

  /** `count` SIGHUPs spread over `ms`. */
  async storm(count: number, ms: number): Promise<void> {
    for (let i = 0; i < count; i++) {
      this.hup();
      if (i < count - 1) await sleep(ms / count);
    }
  }
}

function shardItems(shards: YAMLSeq): YAMLMap[] {
  return shards.items.filter((item): item is YAMLMap => isMap(item));
}

// ---------------------------------------------------------------------------------------------
// Watching the proxy

interface LogLine {
  readonly event: string;
  readonly level: string;
  readonly [field: string]: unknown;
}

function logLines(proxy: MigrationProxy): LogLine[] {
  const lines: LogLine[] = [];
  for (const line of proxy.logs().split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      lines.push(JSON.parse(line) as LogLine);
    } catch {
      // A line being written.
    }
  }
  return lines;
}

function countEvent(proxy: MigrationProxy, event: string): number {
  return logLines(proxy).filter((l) => l.event === event).length;
}

const EV = {
  sighup: 'SIGHUP: reloading the config',
  watcher: 'config file changed: reloading',
  deferred: 'config reload deferred until the running plan is done',
  loadFailed: 'config reload failed; nothing changed',
  unchanged: 'config reloaded: no shard added or removed',
  rebalancing: 'config reloaded: rebalancing',
  refused: 'config reload: plan refused',
  busyRefused: 'resharding plan refused',
  started: 'resharding plan started',
  done: 'resharding plan done',
  failed: 'resharding plan failed',
  notApplied: 'config reload: these changes take effect at the next start only',
} as const;

async function waitFor<T>(what: string, proxy: MigrationProxy, timeoutMs: number, probe: () => Promise<T | undefined> | T | undefined): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms\n${proxy.logs().slice(-4000)}`);
    await sleep(20);
  }
}

/** Waits until `event` has been logged `count` times in all. */
function waitForEvent(proxy: MigrationProxy, event: string, count: number, timeoutMs = 10_000): Promise<true> {
  return waitFor(`${count}x "${event}"`, proxy, timeoutMs, () => (countEvent(proxy, event) >= count ? true : undefined));
}

/** Waits for a running plan that `isIt` recognises. */
function waitForRunning(proxy: MigrationProxy, what: string, isIt: (s: ReshardStatus) => boolean, timeoutMs = 10_000): Promise<ReshardStatus> {
  return waitFor(`a running plan ${what}`, proxy, timeoutMs, async () => {
    const s = await proxy.status();
    return s.state === 'running' && isIt(s) ? s : undefined;
  });
}

/** Waits until no plan runs and none has started for `quietMs` (a deferred reload starts its own shortly after a plan). */
async function waitQuiet(proxy: MigrationProxy, timeoutMs = 30_000, quietMs = 800): Promise<ReshardStatus> {
  const deadline = Date.now() + timeoutMs;
  let since = Date.now();
  let started = countEvent(proxy, EV.started);
  for (;;) {
    const s = await proxy.status();
    const nowStarted = countEvent(proxy, EV.started);
    if (s.state === 'running' || nowStarted !== started || reloadsAwaitingPlan(logLines(proxy)) > 0) {
      since = Date.now();
      started = nowStarted;
    } else if (Date.now() - since >= quietMs) {
      return s;
    }
    if (Date.now() > deadline) throw new Error(`plans still starting after ${timeoutMs} ms\n${proxy.logs().slice(-4000)}`);
    await sleep(50);
  }
}

/** "Rebalancing" reloads whose plan has neither started nor been refused yet (on a busy machine that can take longer than a quiet spell). */
function reloadsAwaitingPlan(lines: readonly LogLine[]): number {
  const count = (event: string): number => lines.filter((l) => l.event === event).length;
  return count(EV.rebalancing) - (count(EV.started) - countStartedBy(lines, ['admin', 'startup'])) - count(EV.refused) - count(EV.busyRefused);
}

// ---------------------------------------------------------------------------------------------
// The checks

async function finalChecks(deployment: MigrationDeployment, operator: Operator, load: RunningLoad, startedAt: number): Promise<void> {
  const { proxy, specs } = deployment;
  const status = await waitQuiet(proxy);
  await load.stop();
  const { clients, tags } = load;
  const sentCount = clients.reduce((n, c) => n + c.sent.length, 0);
  const lines = logLines(proxy);
  const reloadEvents = lines.filter((l) => Object.values(EV).includes(l.event as (typeof EV)[keyof typeof EV]));
  console.log(
    `seed ${SEED}: ${sentCount} commands from ${CLIENTS} clients, ${operator.signals} SIGHUPs, ${Date.now() - startedAt} ms\n  ` +
      reloadEvents.map((l) => `${String(l['time']).slice(11, 23)} ${l.event}${l['added'] !== undefined ? ` +${JSON.stringify(l['added'])}` : ''}${l['removed'] !== undefined ? ` -${JSON.stringify(l['removed'])}` : ''}${l['error'] !== undefined ? ` (${String(l['error'])})` : ''}`).join('\n  '),
  );

  // ---- the topology against the final YAML
  const intended = operator.intended;
  const names = status.shards.map((s) => s.name);
  expect.soft(names, 'the topology names exactly the shards of the last YAML the operator wrote').toEqual(intended);
  const counts = status.shards.map((s) => s.slots);
  expect.soft(Math.max(...counts) - Math.min(...counts), `slot counts ${JSON.stringify(counts)}`).toBeLessThanOrEqual(1);
  expect.soft(status.slotsMigrating).toBe(0);
  for (const shard of status.shards) {
    const spec = specs.find((s) => s.name === shard.name)!;
    expect.soft(shard.primary, `${shard.name}'s primary`).toBe(`${spec.node.host}:${spec.node.port}`);
  }
  const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
  expect.soft(migrations, 'slots migrating in the state file').toBe(0);
  expect.soft([...new Set(owner)].sort(), 'shards owning slots in the state file').toEqual([...names].sort());
  expect.soft(fs.existsSync(`${proxy.stateFile}.reshard`), 'a plan file left behind').toBe(false);

  // ---- the YAML as the proxy left it loads, names the same shards, and its slots (if listed) are the ownership
  let loaded: ReturnType<typeof loadConfigFile> | null = null;
  try {
    loaded = loadConfigFile(proxy.configPath);
  } catch (err) {
    softFail(`the YAML left in ${proxy.configPath} does not load: ${(err as Error).message}\n${fs.readFileSync(proxy.configPath, 'utf8')}`);
  }
  if (loaded !== null) {
    expect.soft(loaded.shards.map((s) => s.name), 'the YAML\'s shards').toEqual(names);
    const text = fs.readFileSync(proxy.configPath, 'utf8');
    if (/\bslots:/.test(text)) {
      for (const shard of loaded.shards) {
        const mine = shard.slots.flatMap(([a, b]) => Array.from({ length: b - a + 1 }, (_, i) => a + i));
        const wrong = mine.filter((slot) => owner[slot] !== shard.name).length + owner.filter((o) => o === shard.name).length - mine.length;
        expect.soft(wrong, `${shard.name}'s slots in the YAML differ from the state file's`).toBe(0);
      }
    }
  }

  // ---- what the clients saw
  const all = clients.flatMap((c) => c.sent.map((s) => ({ client: c.id, s })));
  expect.soft(all.filter(({ s }) => !s.isAnswered).length, 'commands never answered').toBe(0);
  const errors = all.filter(({ s }) => s.error !== undefined).map(({ client, s }) => `client ${client} ${s.kind} ${s.keys.join(' ')}: ${s.error}`);
  if (errors.length > 0) console.log(`${errors.length} client errors, the first:\n  ${errors.slice(0, 20).join('\n  ')}`);
  expect.soft(errors.slice(0, 10), `${errors.length} client errors`).toEqual([]);
  const ok = all.filter(({ s }) => s.error === undefined);

  const orderProblems: string[] = [];
  for (const c of clients) {
    const seen = new Map<string, number[]>();
    for (const s of c.sent) if (s.error === undefined && (s.kind === 'incrby' || s.kind === 'rpush')) listOf(seen, `${s.kind} ${s.keys[0]}`).push(Number(s.reply));
    for (const [what, replies] of seen) if (firstDecrease(replies) >= 0) orderProblems.push(`client ${c.id} ${what}: ${around(replies)}`);
  }
  expect.soft(orderProblems.slice(0, 10), `${orderProblems.length} keys whose replies to one client went backwards`).toEqual([]);

  const staleReads: string[] = [];
  const written = new Map<string, Set<string>>();
  for (const { s } of all) if (s.kind === 'mset') for (const k of s.keys) (written.get(k) ?? written.set(k, new Set()).get(k)!).add(s.value!);
  for (const { client, s } of ok) {
    if (s.kind === 'get-own' && s.reply !== s.expected![0]) staleReads.push(`client ${client} GET ${s.keys[0]} -> ${String(s.reply)}, its last SET wrote ${String(s.expected![0])}`);
    if (s.kind === 'mget-own') {
      const reply = s.reply as (string | null)[];
      s.keys.forEach((k, i) => {
        if (reply[i] !== s.expected![i]) staleReads.push(`client ${client} MGET ${k} -> ${String(reply[i])}, its last write was ${String(s.expected![i])}`);
      });
    }
    if (s.kind === 'mget') {
      (s.reply as (string | null)[]).forEach((v, i) => {
        if (v !== null && written.get(s.keys[i]!)?.has(v) !== true) staleReads.push(`client ${client} MGET ${s.keys[i]} -> ${v}, which no MSET wrote`);
      });
    }
  }
  expect.soft(staleReads.slice(0, 10), `${staleReads.length} reads that missed the client's own earlier write`).toEqual([]);

  // ---- the data, on the owning shards directly and through the proxy
  const readAll = async (redis: Redis, list: readonly string[]): Promise<Map<string, unknown>> => {
    const pipeline = redis.pipeline();
    const keyNames: string[] = [];
    for (const tag of list) {
      for (const k of [key.counter(tag, 0), key.counter(tag, 1), key.shared(tag), ...Array.from({ length: CLIENTS }, (_, c) => [key.own(tag, c), key.ownMulti(tag, c)]).flat()]) {
        keyNames.push(k);
        pipeline.get(k);
      }
      keyNames.push(key.list(tag));
      pipeline.lrange(key.list(tag), 0, -1);
    }
    const results = (await pipeline.exec())!;
    return new Map(results.map(([err, v], i) => [keyNames[i]!, err === null ? v : `ERROR ${err.message}`]));
  };
  const setup = new Redis({ host: HOST, port: proxy.port });
  let direct: Map<string, unknown>;
  try {
    direct = await readOnOwners(setup, proxy, specs, tags, readAll);
  } finally {
    setup.disconnect();
  }
  const dataProblems: string[] = [];
  const acked = new Map<string, number>();
  const unknown = new Map<string, number>();
  const pushed = new Map<string, string[]>();
  const lastOwn = new Map<string, string>();
  for (const { s } of all) {
    if (s.kind === 'incrby') {
      const into = s.error === undefined ? acked : unknown;
      into.set(s.keys[0]!, (into.get(s.keys[0]!) ?? 0) + s.delta!);
    }
    if (s.kind === 'rpush' && s.error === undefined) listOf(pushed, s.keys[0]!).push(s.value!);
    if ((s.kind === 'set-own' || s.kind === 'mset-own') && s.error === undefined) for (const k of s.keys) lastOwn.set(k, s.value!);
  }
  for (const tag of tags) {
    for (const k of [key.counter(tag, 0), key.counter(tag, 1)]) {
      const value = Number(direct.get(k) ?? 0);
      const low = acked.get(k) ?? 0;
      const high = low + (unknown.get(k) ?? 0);
      if (value < low || value > high) dataProblems.push(`${k} = ${value}, acknowledged increments add up to ${low} (+ up to ${high - low} unknown)`);
    }
    const k = key.list(tag);
    const list = (direct.get(k) ?? []) as string[];
    const expected = new Set(pushed.get(k) ?? []);
    const seen = new Map<string, number>();
    for (const token of list) seen.set(token, (seen.get(token) ?? 0) + 1);
    const twice = [...seen].filter(([, n]) => n > 1);
    const missing = [...expected].filter((t) => !seen.has(t));
    if (twice.length > 0) dataProblems.push(`${k}: tokens more than once: ${twice.slice(0, 5).map(([t, n]) => `${t} x${n}`).join(', ')}`);
    if (missing.length > 0) dataProblems.push(`${k}: ${missing.length} acknowledged tokens missing: ${missing.slice(0, 5).join(', ')}`);
    const byClient = new Map<string, number[]>();
    for (const token of list) {
      const [client, seq] = token.split(':');
      listOf(byClient, client!).push(Number(seq));
    }
    for (const [client, seqs] of byClient) if (firstDecrease(seqs) >= 0) dataProblems.push(`${k}: client ${client}'s tokens out of send order: ${around(seqs)}`);
    const shared = direct.get(key.shared(tag));
    if (shared !== null && shared !== undefined && written.get(key.shared(tag))?.has(String(shared)) !== true) dataProblems.push(`${key.shared(tag)} = ${String(shared)}, which no MSET wrote`);
  }
  for (const [k, v] of lastOwn) if (direct.get(k) !== v) dataProblems.push(`${k} = ${String(direct.get(k))}, its client's last acknowledged write was ${v}`);
  if (dataProblems.length > 0) console.log(`${dataProblems.length} data problems:\n  ${dataProblems.slice(0, 30).join('\n  ')}`);
  expect.soft(dataProblems.slice(0, 10), `${dataProblems.length} data problems`).toEqual([]);

  // ---- placement: every key on its slot's owner (none on removed shards), the fillers with their value
  const mustExist = [...pushed.keys(), ...lastOwn.keys(), ...acked.keys(), ...written.keys()];
  const placement = await checkPlacement(specs, owner, FILLER, (n) => [initialValue(n)], mustExist);
  expect.soft(placement.misplaced.slice(0, 10), 'keys not (only) on their slot\'s owner').toEqual([]);
  expect.soft(placement.missing.slice(0, 10), 'keys missing').toEqual([]);
  expect.soft(placement.wrongValues.slice(0, 10), 'fillers with another value').toEqual([]);
  for (const spec of specs) if (!names.includes(spec.name)) expect.soft(placement.keysPerShard[spec.name], `keys on ${spec.name}, in no shard`).toBe(0);
  await expectNoMoverKeys(specs);
  console.log(`keys per shard: ${JSON.stringify(placement.keysPerShard)}`);

  // ---- the log: every SIGHUP reached the proxy and each reload says what became of it; no
  // reload is lost to another plan starting first ("a reload during a plan waits for it").
  const count = (event: string): number => lines.filter((l) => l.event === event).length;
  expect.soft(count(EV.sighup), 'SIGHUPs logged').toBe(operator.signals);
  const outcomes = count(EV.deferred) + count(EV.loadFailed) + count(EV.unchanged) + count(EV.rebalancing);
  expect.soft(outcomes, 'reload outcomes logged, against the reloads begun (SIGHUP, watcher)').toBeGreaterThanOrEqual(count(EV.sighup) + count(EV.watcher));
  const busy = lines.filter((l) => l.event === EV.busyRefused).map((l) => String(l['error']));
  expect.soft(busy, 'reloads dropped because another plan had started meanwhile').toEqual([]);
  expect.soft(count(EV.rebalancing), 'each "rebalancing" reload started a plan or said why not').toBe(count(EV.started) - countStartedBy(lines, ['admin', 'startup']) + count(EV.refused) + busy.length);
  expect.soft(count(EV.failed), 'plans failed').toBe(0);
  expect.soft(lines.filter((l) => l.level === 'error' && !([EV.loadFailed, EV.refused, EV.busyRefused, EV.failed] as string[]).includes(l.event)).map((l) => l.event), 'other errors logged').toEqual([]);
}

/** A failure that lets the rest of the checks run; the message is what the report shows. */
function softFail(message: string): void {
  expect.soft(message, 'failure').toBeNull();
}

function countStartedBy(lines: readonly LogLine[], triggers: readonly string[]): number {
  return lines.filter((l) => l.event === EV.started && triggers.includes(String(l['trigger']))).length;
}

async function prepare(deployment: MigrationDeployment): Promise<{ operator: Operator; load: RunningLoad; startedAt: number }> {
  const startedAt = Date.now();
  await loadKeys(deployment.shards.primaries.slice(0, 3), FILLER);
  const operator = new Operator(deployment.proxy, deployment.specs);
  const load = await startContendedLoad(deployment.proxy.port, SEED);
  await sleep(300);
  return { operator, load, startedAt };
}

// ---------------------------------------------------------------------------------------------

describe('config reloads racing a running plan (YAML listing slots)', () => {
  const deployment = useMigrationDeployment({ shards: 4, proxyShards: 3, config: PROXY_CONFIG });

  it('adds s4, removes s2 while that runs, survives a broken YAML, a setting change, a SIGHUP storm and an admin reshard', async () => {
    const { proxy } = deployment;
    const { operator, load, startedAt } = await prepare(deployment);
    try {
      operator.listSlots();
      operator.hup();
      await waitForEvent(proxy, EV.unchanged, 1);

      // A: s4 added.
      operator.addShard('s4');
      operator.hup();
      await waitForRunning(proxy, 'adding s4', (s) => s.plan?.trigger === 'reload' && s.plan.addShards.some((a) => a.name === 's4'));

      // An admin plan meanwhile: 409, as documented.
      const admin = await proxy.submit({ op: 'reshard', from: 's1', to: 's3', slots: 10 });
      expect.soft(admin.status, JSON.stringify(admin.body)).toBe(409);

      // s2 removed while A runs: deferred.
      operator.removeShard('s2');
      operator.hup();
      await waitForEvent(proxy, EV.deferred, 1);
      // Broken mid-plan, then fixed, with a setting the reload does not apply, and a storm.
      operator.breakFile();
      operator.hup();
      await sleep(30);
      operator.setSetting('migrateKeysPerSecond', 2_500);
      await operator.storm(10, 100);
      expect.soft((await proxy.status()).state, 'plan A still running after the edits (else the test is too slow to race it)').toBe('running');

      // B: once A is done, the deferred reload drains s2.
      await waitForEvent(proxy, EV.done, 1, 30_000);
      await waitFor('a plan removing s2 started', proxy, 15_000, () =>
        logLines(proxy).some((l) => l.event === EV.started && (l['removed'] as string[]).includes('s2')) ? true : undefined,
      ).catch((err: Error) => {
        softFail(`no plan removing s2 after A: ${err.message.slice(0, 300)}\nYAML now:\n${fs.readFileSync(proxy.configPath, 'utf8')}`);
      });
      await finalChecks(deployment, operator, load, startedAt);
    } finally {
      await load.stop();
    }
  }, 60_000);
});

describe('config reloads with the file watcher on (YAML without slots)', () => {
  const deployment = useMigrationDeployment({ shards: 4, proxyShards: 3, config: { ...PROXY_CONFIG, watchConfig: true } });

  it('ignores an address change, lives through a plan ending on a broken YAML, and takes back a shard put back while it drains', async () => {
    const { proxy, specs } = deployment;
    const { operator, load, startedAt } = await prepare(deployment);
    try {
      // Idle: s1's address and a setting changed. Neither is applied (a reload only adds and
      // removes shards); the proxy keeps routing s1 to where its keys are.
      const s1 = `${specs[0]!.node.host}:${specs[0]!.node.port}`;
      operator.setPrimary('s1', `${specs[3]!.node.host}:${specs[3]!.node.port}`);
      operator.setSetting('nodeTimeoutMs', 3_000);
      operator.hup();
      await waitForEvent(proxy, EV.unchanged, 1);
      expect.soft((await proxy.status()).shards.find((s) => s.name === 's1')?.primary, 's1 after its address changed in the YAML').toBe(s1);
      // ... and the log says so, naming both, so the edit is not taken for applied.
      const notApplied = proxy.logs().split('\n').filter((l) => l.includes(EV.notApplied));
      expect.soft(notApplied.length, 'changes not applied, logged').toBe(1);
      expect.soft(notApplied[0], 'changes not applied, named').toMatch(/"changed":\["nodeTimeoutMs","shards\.s1 addresses"\]/);
      operator.setPrimary('s1', s1);
      operator.hup();
      await waitForEvent(proxy, EV.unchanged, 2);

      // s4 added; the YAML broken while that plan runs, and still broken when it ends.
      operator.addShard('s4');
      operator.hup();
      await waitForRunning(proxy, 'adding s4', (s) => s.plan?.addShards.some((a) => a.name === 's4') === true);
      operator.breakFile();
      operator.hup();
      const ended = await proxy.waitForPlan(30_000, (s) => s.plan?.addShards.some((a) => a.name === 's4') === true);
      expect.soft(`${ended.state} ${ended.error ?? ''}`, 'the plan adding s4, which ended while the YAML did not parse').toBe('done ');
      expect.soft(ended.shards.map((s) => s.name)).toEqual(['s1', 's2', 's3', 's4']);
      operator.fixFile();
      operator.hup();
      await waitQuiet(proxy, 20_000, 800);
      expect.soft(ownerFromStateFile(proxy.stateFile).migrations, 'migrations in the state file after the plan adding s4').toBe(0);

      // s2 removed; while it drains, the operator changes their mind and puts it back.
      operator.removeShard('s2');
      operator.hup();
      await waitForRunning(proxy, 'removing s2', (s) => s.plan?.removeShards.includes('s2') === true);
      operator.addShard('s2');
      operator.hup();
      await waitForEvent(proxy, EV.deferred, countEvent(proxy, EV.deferred) + 1);
      expect.soft((await proxy.status()).state, 'still draining s2 when it was put back').toBe('running');
      await finalChecks(deployment, operator, load, startedAt);
    } finally {
      await load.stop();
    }
  }, 60_000);
});

describe('SIGHUP storms while idle (YAML without slots)', () => {
  const deployment = useMigrationDeployment({ shards: 5, proxyShards: 3, config: PROXY_CONFIG });

  it('answers every signal, and two edits signalled one after the other both take effect', async () => {
    const { proxy } = deployment;
    const { operator, load, startedAt } = await prepare(deployment);
    try {
      // 10 SIGHUPs in 100 ms, nothing edited.
      await operator.storm(10, 100);
      await waitForEvent(proxy, EV.unchanged, 10);

      // s4 added, then the same storm: one plan, the other reloads deferred behind it.
      operator.addShard('s4');
      await operator.storm(10, 100);
      await waitForRunning(proxy, 'adding s4', (s) => s.plan?.addShards.some((a) => a.name === 's4') === true);
      await waitQuiet(proxy, 30_000, 800);

      // Two edits, each signalled: s5 added, then s3 removed, the second while the first reload
      // still checks s5 (a node slow to answer: stopped for a moment, as one loading its data).
      const s5 = deployment.shards.primaries[4]!;
      s5.kill('SIGSTOP');
      const rebalancing = countEvent(proxy, EV.rebalancing);
      const outcomes = rebalancing + countEvent(proxy, EV.deferred);
      try {
        operator.addShard('s5');
        operator.hup();
        await waitForEvent(proxy, EV.rebalancing, rebalancing + 1);
        operator.removeShard('s3');
        operator.hup();
        // Reloads run one at a time: the second waits for the first, which waits for s5.
        await sleep(300);
        expect.soft(countEvent(proxy, EV.rebalancing) + countEvent(proxy, EV.deferred), 'the second reload before the first is done').toBe(outcomes + 1);
      } finally {
        s5.kill('SIGCONT');
      }
      await waitFor('the second reload', proxy, 10_000, () => (countEvent(proxy, EV.rebalancing) + countEvent(proxy, EV.deferred) >= outcomes + 2 ? true : undefined));
      await finalChecks(deployment, operator, load, startedAt);
    } finally {
      await load.stop();
    }
  }, 60_000);
});
