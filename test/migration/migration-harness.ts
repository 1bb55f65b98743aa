import { fork, spawn, type ChildProcess } from 'node:child_process';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Redis from 'ioredis';
import { afterAll, beforeAll, expect } from 'vitest';
import { stringify } from 'yaml';
import { findFreePort, type LocalRedis } from '../../src/cli/local-redis';
import { evenSlotRanges } from '../../src/config/load-config';
import { keySlot } from '../../src/routing/key-slot';
import type { ReshardStatus } from '../../src/control/resharding';
import { CLI_PATH, killWithTestProcess, REPO_ROOT } from '../helpers/proxy-harness';
import { isAlive, startShards, type Shards } from '../helpers/redis-harness';

/**
 * What the migration tests share: a proxy child process that can be killed and started again on
 * the same config and state file, a bulk loader that writes straight to the shards, a load of
 * paced clients that remember every acknowledged write, and the final checks (every key where
 * its slot says, with its last acknowledged value).
 */

export const HOST = '127.0.0.1';
const START_TIMEOUT_MS = 15_000;

export function slotOf(key: string): number {
  const bytes = Buffer.from(key);
  return keySlot(bytes, 0, bytes.length);
}

// ---------------------------------------------------------------------------------------------
// The proxy process

export interface ShardSpec {
  readonly name: string;
  readonly node: LocalRedis;
  /** Written to the YAML as the shard's `replicas:` (host:port) when given. */
  readonly replicas?: readonly { readonly host: string; readonly port: number }[];
}

export interface MigrationProxy {
  readonly port: number;
  readonly adminPort: number;
  readonly dir: string;
  readonly configPath: string;
  readonly stateFile: string;
  readonly pid: number;
  logs(): string;
  /** Starts the process again on the same config (after kill or stop). */
  restart(): Promise<void>;
  kill(signal: NodeJS.Signals): void;
  /** Waits for the process to exit (after kill). */
  exited(): Promise<void>;
  stop(): Promise<void>;
  /** GET /admin/status. */
  status(): Promise<ReshardStatus>;
  /** POST /admin/plan (runs it); resolves with the HTTP status and body. */
  submit(request: Record<string, unknown>): Promise<{ status: number; body: unknown }>;
  /** Polls the status until no plan runs (and at least one ran); throws after `timeoutMs`. */
  waitForPlan(timeoutMs: number, isStarted?: (status: ReshardStatus) => boolean): Promise<ReshardStatus>;
  /** Rewrites the YAML with these shards (the test then sends SIGHUP). */
  writeShards(shards: readonly ShardSpec[]): void;
}

export async function startMigrationProxy(shards: readonly ShardSpec[], extra: Record<string, unknown> = {}): Promise<MigrationProxy> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'slotproxy-migration-'));
  const port = await findFreePort();
  const adminPort = await findFreePort();
  const configPath = path.join(dir, 'slotproxy.yaml');
  const stateFile = path.join(dir, 'state.json');
  const writeShards = (list: readonly ShardSpec[]): void => {
    const config = {
      listen: `${HOST}:${port}`,
      admin: `${HOST}:${adminPort}`,
      stateFile: 'state.json',
      logLevel: 'info',
      ...extra,
      shards: list.map((s) => ({
        name: s.name,
        primary: `${s.node.host}:${s.node.port}`,
        ...(s.replicas === undefined || s.replicas.length === 0 ? {} : { replicas: s.replicas.map((r) => `${r.host}:${r.port}`) }),
      })),
    };
    fs.writeFileSync(configPath, stringify(config));
  };
  writeShards(shards);

  let child: ChildProcess | null = null;
  let output = '';
  let exitPromise: Promise<void> = Promise.resolve();
  const launch = async (): Promise<void> => {
    // MIGRATION_PROFILE=DIR writes the proxy's CPU profiles (main and mover threads) there;
    // MIGRATION_NODE_FLAGS='--trace-gc ...' passes other flags to its node.
    const profile = process.env['MIGRATION_PROFILE'] === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${process.env['MIGRATION_PROFILE']}`];
    const extraFlags = (process.env['MIGRATION_NODE_FLAGS'] ?? '').split(' ').filter((f) => f !== '');
    const proc = spawn(process.execPath, [...profile, ...extraFlags, CLI_PATH, 'start', '--config', configPath], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    child = proc;
    const collect = (chunk: Buffer): void => {
      output += chunk.toString('utf8');
    };
    proc.stdout!.on('data', collect);
    proc.stderr!.on('data', collect);
    exitPromise = new Promise((resolve) => proc.once('exit', () => resolve()));
    killWithTestProcess(proc);
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`proxy exited at start:\n${output.slice(-3000)}`);
      if (await answers(port, adminPort)) return;
      if (Date.now() > deadline) throw new Error(`proxy did not start:\n${output.slice(-3000)}`);
      await sleep(50);
    }
  };
  const proxy: MigrationProxy = {
    port,
    adminPort,
    dir,
    configPath,
    stateFile,
    get pid() {
      return child?.pid ?? 0;
    },
    logs: () => output,
    restart: launch,
    kill(signal) {
      if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) process.kill(child.pid, signal);
    },
    exited: () => exitPromise,
    async stop() {
      if (child !== null && child.exitCode === null && child.signalCode === null) {
        proxy.kill('SIGTERM');
        const timer = setTimeout(() => proxy.kill('SIGKILL'), 3_000);
        await exitPromise;
        clearTimeout(timer);
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
    async status() {
      const response = await fetch(`http://${HOST}:${adminPort}/admin/status`);
      return (await response.json()) as ReshardStatus;
    },
    async submit(request) {
      const response = await fetch(`http://${HOST}:${adminPort}/admin/plan`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(request),
      });
      return { status: response.status, body: await response.json() };
    },
    async waitForPlan(timeoutMs, isStarted = (s) => s.plan !== null) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const status = await proxy.status().catch(() => null);
        if (status !== null && isStarted(status) && status.state !== 'running') return status;
        if (Date.now() > deadline) throw new Error(`no plan finished within ${timeoutMs} ms: ${JSON.stringify(status)}\n${output.slice(-3000)}`);
        await sleep(100);
      }
    },
    writeShards,
  };
  try {
    await launch();
  } catch (err) {
    // A proxy that did not come up may still be running: stopped by PID, its folder removed.
    await proxy.stop().catch(() => undefined);
    throw err;
  }
  return proxy;
}

async function answers(port: number, adminPort: number): Promise<boolean> {
  try {
    const response = await fetch(`http://${HOST}:${adminPort}/admin/status`, { signal: AbortSignal.timeout(500) });
    if (!response.ok) return false;
  } catch {
    return false;
  }
  const redis = new Redis({ host: HOST, port, lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => null });
  redis.on('error', () => undefined);
  try {
    await redis.connect();
    return (await redis.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    redis.disconnect();
  }
}

/** Runs the CLI (`node dist/cli.js ...args`); resolves with its exit code and output. */
export function runCli(args: readonly string[], timeoutMs = 120_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, [CLI_PATH, ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    proc.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
    proc.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

// ---------------------------------------------------------------------------------------------
// The deployment a migration test runs on

export interface MigrationDeployment {
  /** Every redis-server started, also those the proxy does not list (yet). */
  readonly shards: Shards;
  /** `s1`, `s2`, ... over every primary in order, with its replicas when `replicas` was given. */
  readonly specs: readonly ShardSpec[];
  readonly proxy: MigrationProxy;
}

export interface MigrationDeploymentOptions {
  /** Primaries to start. */
  readonly shards: number;
  /** Replicas per primary; each spec lists its primary's replicas when given. */
  readonly replicas?: number;
  /** The proxy's YAML lists the first this many shards. @default all of them */
  readonly proxyShards?: number;
  /** Extra proxy config (merged into the YAML). */
  readonly config?: Record<string, unknown>;
}

/** Lock wait (up to 240 s) plus starting the servers and the proxy. */
const DEPLOYMENT_START_TIMEOUT_MS = 300_000;

/**
 * Registers beforeAll/afterAll in the calling describe: takes the migration-test lock, starts
 * the redis-servers and a proxy over the first `proxyShards` shards; afterwards stops the proxy,
 * then the servers (by PID), then releases the lock. The fields are there once beforeAll ran:
 * read them inside `it`. A failed beforeAll still stops what it had started (afterAll runs after
 * a failed beforeAll; if beforeAll outlives its timeout, it stops what starts after afterAll).
 */
export function useMigrationDeployment(options: MigrationDeploymentOptions): MigrationDeployment {
  let shards: Shards | undefined;
  let specs: readonly ShardSpec[] | undefined;
  let proxy: MigrationProxy | undefined;
  let unlock: (() => void) | undefined;
  let isClosed = false;

  /** Stops whatever is running now, in order, each step even when the one before failed. */
  const stop = async (): Promise<void> => {
    const [runningProxy, runningShards, release] = [proxy, shards, unlock];
    proxy = undefined;
    shards = undefined;
    unlock = undefined;
    try {
      await runningProxy?.stop();
    } finally {
      try {
        await runningShards?.stopAll();
      } finally {
        release?.();
      }
    }
  };

  beforeAll(async () => {
    try {
      unlock = await lockMigrationTests();
      if (isClosed) return;
      const started = await startShards(options.shards, options.replicas === undefined ? {} : { replicas: options.replicas });
      shards = started;
      if (isClosed) return;
      specs = started.primaries.map((node, i) =>
        options.replicas === undefined ? { name: `s${i + 1}`, node } : { name: `s${i + 1}`, node, replicas: started.replicas[i] },
      );
      proxy = await startMigrationProxy(specs.slice(0, options.proxyShards ?? specs.length), options.config);
    } finally {
      // Timed out, and afterAll already ran: what started since is stopped here.
      if (isClosed) await stop();
    }
  }, DEPLOYMENT_START_TIMEOUT_MS);

  afterAll(async () => {
    isClosed = true;
    await stop();
  });

  const ready = <T>(value: T | undefined, name: string): T => {
    if (value === undefined) throw new Error(`the migration deployment's ${name} is not running (read it inside it(), after beforeAll)`);
    return value;
  };
  return {
    get shards() {
      return ready(shards, 'shards');
    },
    get specs() {
      return ready(specs, 'specs');
    },
    get proxy() {
      return ready(proxy, 'proxy');
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Data

export function keyName(n: number): string {
  return `k:${n}`;
}

export function initialValue(n: number): string {
  return `v0-${n}`;
}

/**
 * Writes keys 0..count-1 straight to the shards of an even split over `nodes` (what the proxy
 * routes by when the YAML lists no slots), pipelined.
 */
export async function loadKeys(nodes: readonly LocalRedis[], count: number): Promise<void> {
  const owner = evenOwner(nodes.length);
  const clients = nodes.map((n) => new Redis({ host: n.host, port: n.port }));
  try {
    const batch = 10_000;
    for (let start = 0; start < count; start += batch) {
      const pipelines = clients.map((c) => c.pipeline());
      for (let n = start; n < Math.min(count, start + batch); n++) {
        const key = keyName(n);
        pipelines[owner[slotOf(key)]!]!.set(key, initialValue(n));
      }
      await Promise.all(pipelines.map((p) => p.exec()));
    }
  } finally {
    for (const c of clients) c.disconnect();
  }
  collectGarbage();
}

/**
 * A full collection of this (the test's) process, now. Loading 200,000 keys leaves a collection
 * due; started later, its marking threads ran beside the measured move and held both cores for
 * 4-6 ms at a time (perf sched: the proxy's event loop waiting for a core meanwhile), which
 * says nothing about the proxy. It also puts V8's memory reducer, which otherwise runs two more
 * full collections ~8 s after the last one, that far away.
 */
export function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

export function evenOwner(shards: number): Uint16Array {
  const owner = new Uint16Array(16384);
  evenSlotRanges(shards).forEach((ranges, i) => {
    for (const [from, to] of ranges) owner.fill(i, from, to + 1);
  });
  return owner;
}

// ---------------------------------------------------------------------------------------------
// Load: paced clients that remember what was acknowledged (load-process.cjs, a process of its own)

/** One command of the load. */
interface Sample {
  /** When it was sent, ms since the epoch (Date.now()). */
  readonly wall: number;
  readonly ms: number;
  /** The key's slot. */
  readonly slot: number;
}

/** Times are ms since the epoch (Date.now()), so they line up with the proxy's log. */
export interface LoadReport {
  readonly ops: number;
  /** The first 1,000 errors (`key: message`). */
  readonly errors: readonly string[];
  /** All errors, counted. */
  readonly errorCount: number;
  /** GETs that returned neither the last acknowledged value nor one of the unconfirmed writes after it. */
  readonly staleReads: readonly string[];
  /** p99 (ms) of the commands sent in [from, to) (on keys for which `isKey(slot)` holds). */
  p99(from: number, to: number, isKey?: (slot: number) => boolean): number;
  /** Longest command (ms) sent in [from, to) on a key for which `isKey(slot)` holds. */
  max(from: number, to: number, isKey?: (slot: number) => boolean): number;
  count(from: number, to: number): number;
  /** The commands slower than `ms`, sent in [from, to). */
  slow(from: number, to: number, ms: number): readonly Sample[];
}

export interface Load {
  /** Stops the clients; resolves once every command has come back. */
  stop(): Promise<LoadReport>;
  /** After stop(): key n's expected values, the last acknowledged one and any unconfirmed write after it. */
  expected(n: number): readonly string[];
}

export interface LoadOptions {
  readonly clients: number;
  /** Commands per second over all clients. */
  readonly opsPerSecond: number;
  /** Keys the clients use: 0..keys-1, split between clients by n mod clients. */
  readonly keys: number;
  /** Treat connection errors as expected (the proxy is killed on purpose): the clients reconnect. */
  readonly tolerateDisconnects?: boolean;
}

interface ChildReport {
  readonly wall: number[];
  readonly took: number[];
  readonly slots: number[];
  readonly errors: string[];
  readonly errorCount: number;
  readonly staleReads: string[];
  readonly acked: [number, string][];
  readonly unsure: [number, string[]][];
}

/** Starts the clients in their own process; resolves once all are connected. */
export async function startLoad(port: number, options: LoadOptions): Promise<Load> {
  const child = fork(path.join(__dirname, 'load-process.cjs'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  killWithTestProcess(child);
  const next = <T>(type: string): Promise<T> =>
    new Promise((resolve, reject) => {
      const onMessage = (message: { type: string }): void => {
        if (message.type !== type) return;
        child.off('message', onMessage);
        resolve(message as T);
      };
      child.on('message', onMessage);
      void exited.then(() => reject(new Error(`the load process exited before '${type}'`)));
    });
  const ready = next<unknown>('ready');
  child.send({ type: 'start', options: { host: HOST, port, ...options } });
  await ready;
  let acked = new Map<number, string>();
  let unsure = new Map<number, string[]>();
  return {
    expected: (n) => [acked.get(n) ?? initialValue(n), ...(unsure.get(n) ?? [])],
    async stop() {
      const reported = next<ChildReport>('report');
      child.send({ type: 'stop' });
      const report = await reported;
      await exited;
      acked = new Map(report.acked);
      unsure = new Map(report.unsure);
      const samples: Sample[] = report.wall.map((wall, i) => ({ wall, ms: report.took[i]!, slot: report.slots[i]! }));
      const within = (from: number, to: number, isKey?: (slot: number) => boolean): Sample[] =>
        samples.filter((s) => s.wall >= from && s.wall < to && (isKey === undefined || isKey(s.slot)));
      return {
        ops: samples.length,
        errors: report.errors,
        errorCount: report.errorCount,
        staleReads: report.staleReads,
        p99(from, to, isKey) {
          const ms = within(from, to, isKey).map((s) => s.ms).sort((a, b) => a - b);
          return ms.length === 0 ? 0 : ms[Math.min(ms.length - 1, Math.floor(ms.length * 0.99))]!;
        },
        max(from, to, isKey) {
          return within(from, to, isKey).reduce((m, s) => Math.max(m, s.ms), 0);
        },
        count(from, to) {
          return within(from, to).length;
        },
        slow(from, to, ms) {
          return within(from, to).filter((s) => s.ms > ms);
        },
      };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Checks

/** The state file's slot table: slot -> shard name. */
export function ownerFromStateFile(file: string): { owner: string[]; migrations: number } {
  const state = JSON.parse(fs.readFileSync(file, 'utf8')) as {
    topology: { shards: { name: string }[]; slots: [number, number][][]; migrations: unknown[] };
  };
  const owner: string[] = new Array<string>(16384);
  state.topology.slots.forEach((ranges, i) => {
    for (const [from, to] of ranges) for (let s = from; s <= to; s++) owner[s] = state.topology.shards[i]!.name;
  });
  return { owner, migrations: state.topology.migrations.length };
}

export interface PlacementReport {
  /** Keys found on a shard that does not own their slot. */
  readonly misplaced: readonly string[];
  /** Keys 0..count-1 missing everywhere. */
  readonly missing: readonly string[];
  /** Keys whose value is neither the last acknowledged nor an unconfirmed later write. */
  readonly wrongValues: readonly string[];
  /** Keys per shard. */
  readonly keysPerShard: Readonly<Record<string, number>>;
}

/**
 * Scans every shard directly: each key must sit on the shard owning its slot, each of keys
 * 0..count-1 must exist with an expected value. `extraKeys` are other keys that must exist.
 */
export async function checkPlacement(
  shards: readonly ShardSpec[],
  owner: readonly string[],
  count: number,
  expected: (n: number) => readonly string[],
  extraKeys: readonly string[] = [],
): Promise<PlacementReport> {
  const misplaced: string[] = [];
  const wrongValues: string[] = [];
  const keysPerShard: Record<string, number> = {};
  const found = new Map<string, string>();
  for (const shard of shards) {
    const redis = new Redis({ host: shard.node.host, port: shard.node.port });
    try {
      let cursor = '0';
      let n = 0;
      do {
        const [next, keys] = await redis.scan(cursor, 'COUNT', 2000);
        cursor = next;
        n += keys.length;
        for (const key of keys) {
          if (owner[slotOf(key)] !== shard.name) misplaced.push(`${key} on ${shard.name}, slot ${slotOf(key)} owned by ${owner[slotOf(key)]}`);
          if (found.has(key)) misplaced.push(`${key} on both ${found.get(key)} and ${shard.name}`);
          found.set(key, shard.name);
        }
      } while (cursor !== '0');
      keysPerShard[shard.name] = n;
    } finally {
      redis.disconnect();
    }
  }
  const missing: string[] = [];
  for (const key of extraKeys) if (!found.has(key)) missing.push(key);
  // Values: read each key from the shard it was found on, pipelined.
  const clients = new Map(shards.map((s) => [s.name, new Redis({ host: s.node.host, port: s.node.port })]));
  try {
    const batch = 5_000;
    for (let start = 0; start < count; start += batch) {
      const byShard = new Map<string, number[]>();
      for (let n = start; n < Math.min(count, start + batch); n++) {
        const where = found.get(keyName(n));
        if (where === undefined) {
          missing.push(keyName(n));
          continue;
        }
        (byShard.get(where) ?? byShard.set(where, []).get(where)!).push(n);
      }
      await Promise.all(
        [...byShard].map(async ([name, ns]) => {
          const pipeline = clients.get(name)!.pipeline();
          for (const n of ns) pipeline.get(keyName(n));
          const results = (await pipeline.exec())!;
          results.forEach(([err, value], i) => {
            const n = ns[i]!;
            const ok = expected(n);
            if (err !== null || !ok.includes(value as string)) wrongValues.push(`${keyName(n)} = ${String(value)}, expected one of ${ok.join(' | ')}`);
          });
        }),
      );
    }
  } finally {
    for (const c of clients.values()) c.disconnect();
  }
  return { misplaced, missing, wrongValues, keysPerShard };
}

/** No key on a shard that does not own its slot, none missing, none with a value no client wrote (the first 5 of each shown). */
export function expectPlacementClean(placement: PlacementReport): void {
  expect(placement.misplaced.slice(0, 5)).toEqual([]);
  expect(placement.missing.slice(0, 5)).toEqual([]);
  expect(placement.wrongValues.slice(0, 5)).toEqual([]);
}

/** The slots migrating in the proxy's state file now (none before it is first written; it is replaced atomically). */
export function stateFileMigrations(stateFile: string): number[] {
  if (!fs.existsSync(stateFile)) return [];
  const state = JSON.parse(fs.readFileSync(stateFile, 'utf8')) as { topology: { migrations: { slot: number }[] } };
  return state.topology.migrations.map((m) => m.slot);
}

/** The slots migrating in the proxy's state file, once at least one is (at most 20 s). */
export async function migratingSlots(stateFile: string): Promise<number[]> {
  for (const deadline = Date.now() + 20_000; ; await sleep(20)) {
    expect(Date.now(), 'no slot started migrating').toBeLessThan(deadline);
    const slots = stateFileMigrations(stateFile);
    if (slots.length > 0) return slots;
  }
}

/** No key of the mover's own (its in-flight marks) left on any of `shards`. */
export async function expectNoMoverKeys(shards: readonly { readonly name: string; readonly node: { readonly host: string; readonly port: number } }[]): Promise<void> {
  for (const shard of shards) {
    const direct = new Redis({ host: shard.node.host, port: shard.node.port });
    try {
      expect(await direct.keys('*slotproxy*'), shard.name).toEqual([]);
    } finally {
      direct.disconnect();
    }
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** When the proxy's last resharding plan started and ended (ms since the epoch), from its log. */
export function planWindow(logs: string): { readonly start: number; readonly end: number } {
  let start = 0;
  let end = 0;
  for (const line of logs.split('\n')) {
    if (line.includes('"event":"resharding plan started"')) start = Date.parse((JSON.parse(line) as { time: string }).time);
    else if (line.includes('"event":"resharding plan done"')) end = Date.parse((JSON.parse(line) as { time: string }).time);
  }
  return { start, end };
}

// ---------------------------------------------------------------------------------------------
// One migration test at a time

const LOCK_DIR = path.join(os.tmpdir(), 'slotproxy-migration-tests.lock');

/**
 * The migration tests measure latency and throughput on a small machine: two of them moving
 * data at once would measure each other, and so would the heaviest load tests beside them
 * (contended failover, fan-out under partial failure). vitest runs test files in parallel, so each takes
 * this lock (a folder made atomically, holding the owner's PID; a dead owner's lock is taken
 * over) for its whole run. Returns the release function.
 */
export async function lockMigrationTests(timeoutMs = 240_000): Promise<() => void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      fs.mkdirSync(LOCK_DIR);
      fs.writeFileSync(path.join(LOCK_DIR, 'pid'), String(process.pid));
      return () => fs.rmSync(LOCK_DIR, { recursive: true, force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const owner = Number(fs.readFileSync(path.join(LOCK_DIR, 'pid'), { encoding: 'utf8', flag: 'a+' }) || 0);
    if (owner > 0 && !isAlive(owner)) fs.rmSync(LOCK_DIR, { recursive: true, force: true });
    if (Date.now() > deadline) throw new Error(`another migration test held ${LOCK_DIR} for ${timeoutMs} ms`);
    await sleep(200);
  }
}

/** A process as /proc shows it: its id and the scheduling policy of each of its threads. */
export interface ProcessThreads {
  readonly pid: number;
  readonly commandLine: string;
  /** sched_setscheduler's policy per thread: 0 SCHED_OTHER, 5 SCHED_IDLE. */
  readonly policies: readonly number[];
}

/** Fields of /proc/PID/stat (or .../task/TID/stat) from field 3 (state) on: the name before it may hold spaces. */
function statFields(file: string): string[] | null {
  try {
    const stat = fs.readFileSync(file, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** `pid` and its threads' scheduling policies; null when it is gone or a zombie. */
export function processThreads(pid: number): ProcessThreads | null {
  const fields = statFields(`/proc/${pid}/stat`);
  if (fields === null || fields[0] === 'Z' || fields[0] === 'X') return null;
  const policies: number[] = [];
  try {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      // Field 41 (policy) is the 39th from field 3.
      const thread = statFields(`/proc/${pid}/task/${tid}/stat`);
      if (thread !== null) policies.push(Number(thread[38]));
    }
  } catch {
    return null;
  }
  const commandLine = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
  return { pid, commandLine, policies };
}

/** The proxy's slot mover processes: the run's, or the idle one started ahead of the next plan. */
export function moverProcesses(proxyPid: number): ProcessThreads[] {
  return childProcesses(proxyPid).filter((child) => child.commandLine.includes('mover-process.js'));
}

/** The running (not zombie) children of `pid`. */
export function childProcesses(pid: number): ProcessThreads[] {
  const children: ProcessThreads[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    // Field 4 (ppid) is the second from field 3.
    if (Number(statFields(`/proc/${entry}/stat`)?.[1]) !== pid) continue;
    const child = processThreads(Number(entry));
    if (child !== null) children.push(child);
  }
  return children;
}
