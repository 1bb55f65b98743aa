import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Address } from '../config/config-types';
import { formatAddress } from '../config/address';
import { loadConfigFile } from '../config/load-config';
import { planFileOf } from '../control/resharding';
import { encodeState, readStateFile } from '../control/state-file';
import { topologyFromJson } from '../topology/topology-codec';
import { Topology, type ShardInfo } from '../topology/topology';
import {
  REDIS_INSTALL_HINT,
  RedisNotFoundError,
  RedisStartError,
  findFreePort,
  isPortFree,
  startRedisServer,
  waitForReplication,
  type LocalRedis,
} from './local-redis';
import { startProxy } from './start';

/**
 * `slotproxy demo`: three AOF-backed shards of one primary and one replica each, as child
 * redis-servers on loopback, served by the proxy until SIGINT/SIGTERM. Shards, replicas and the
 * slot split are those `redis-cli --cluster create ... --cluster-replicas 1` builds on six nodes.
 * A restart keeps the nodes' data and the slot table an earlier run's resharding left.
 */

const USAGE = 'Usage: slotproxy demo [--port 7000] [--dir ./.slotproxy/demo]\n';
const HOST = '127.0.0.1';
const SHARD_NAMES = ['s1', 's2', 's3'] as const;
const DEFAULT_PORT = 7000;
const DEFAULT_DIR = './.slotproxy/demo';
const METRICS_PORT = 9121;
const ADMIN_PORT = 9122;
const CONFIG_FILE = 'demo.yaml';
const STATE_FILE = 'demo.state.json';
/** A first full sync of an empty or small AOF takes well under a second; this is the bound. */
const REPLICATION_TIMEOUT_MS = 15_000;
const PROXY_CLOSE_TIMEOUT_MS = 5_000;

export interface DemoOptions {
  /** Proxy port; the nodes prefer the six ports after it. @default 7000 */
  readonly port: number;
  /** Work folder: demo.yaml, the state file and one data folder per node. @default ./.slotproxy/demo */
  readonly dir: string;
}

/** The addresses written into demo.yaml. */
export interface DemoTopology {
  readonly listen: Address;
  readonly metrics: Address;
  /** The admin endpoint the resharding CLI finds from demo.yaml. */
  readonly admin: Address;
  readonly shards: readonly { readonly name: string; readonly primary: Address; readonly replica: Address }[];
}

export class DemoUsageError extends Error {
  override readonly name = 'DemoUsageError';
}

export function parseDemoArgs(args: readonly string[]): DemoOptions {
  let port = DEFAULT_PORT;
  let dir = DEFAULT_DIR;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] ?? '';
    const eq = arg.indexOf('=');
    const name = eq === -1 ? arg : arg.slice(0, eq);
    if (name !== '--port' && name !== '--dir') throw new DemoUsageError(`unknown argument '${arg}'`);
    const value = eq === -1 ? args[++i] : arg.slice(eq + 1);
    if (value === undefined || value === '') throw new DemoUsageError(`${name} needs a value`);
    if (name === '--dir') {
      dir = value;
      continue;
    }
    port = Number(value);
    // The six node ports after it must stay valid port numbers too.
    if (!/^[0-9]+$/.test(value) || port < 1 || port > 65535 - SHARD_NAMES.length * 2) {
      throw new DemoUsageError(`--port must be a port number, got '${value}'`);
    }
  }
  return { port, dir: path.resolve(dir) };
}

/** demo.yaml: only the keys that differ from the defaults; no `slots`, so the split is even. */
export function renderDemoYaml(topology: DemoTopology): string {
  const lines = [
    '# Written by `slotproxy demo` on every start; edits are overwritten.',
    '# Three shards of one primary and one replica each. Without `slots` the 16384 hash slots are',
    '# split evenly in shard order, as `redis-cli --cluster create --cluster-replicas 1` splits them.',
    `listen: ${formatAddress(topology.listen)}`,
    `metrics: ${formatAddress(topology.metrics)}`,
    `admin: ${formatAddress(topology.admin)}`,
    `stateFile: ${STATE_FILE}`,
    'shards:',
  ];
  for (const shard of topology.shards) {
    lines.push(
      `  - name: ${shard.name}`,
      `    primary: ${formatAddress(shard.primary)}`,
      `    replicas: [${formatAddress(shard.replica)}]`,
    );
  }
  return `${lines.join('\n')}\n`;
}

/**
 * The snapshot for this run's state file: an earlier run's slot table (and the moves it had
 * under way) kept, its shards pointed at this run's nodes. The nodes keep their data (AOF), so the keys a
 * reshard moved are where that table says, and an even split would lose sight of them; the
 * roles are this run's, since the nodes were just wired from scratch (an earlier failover is
 * undone). Null when there is no earlier state file, it cannot be read, or it names other shards
 * than this run's.
 */
export function carriedState(stateFile: string, topology: DemoTopology): Topology | null {
  let previous: Topology;
  try {
    const state = readStateFile(stateFile);
    if (state === null) return null;
    previous = topologyFromJson(state.topology);
  } catch {
    return null;
  }
  const names = topology.shards.map((shard) => shard.name);
  if (previous.shards.length !== names.length || previous.shards.some((shard, i) => shard.name !== names[i])) return null;
  const shards: ShardInfo[] = topology.shards.map((shard, index) => ({
    index,
    name: shard.name,
    primary: shard.primary,
    replicas: [shard.replica],
    readReplicas: [shard.replica],
    isFailingOver: false,
  }));
  return new Topology(previous.epoch + 1, shards, previous.slotOwner, previous.migrations);
}

export async function runDemo(args: readonly string[]): Promise<void> {
  let options: DemoOptions;
  try {
    options = parseDemoArgs(args);
  } catch (err) {
    if (!(err instanceof DemoUsageError)) throw err;
    process.stderr.write(`slotproxy demo: ${err.message}\n${USAGE}`);
    process.exit(2);
  }

  // Every node spawned so far, so a failure or a signal halfway through still stops them all.
  const primaries: LocalRedis[] = [];
  const replicas: LocalRedis[] = [];
  let proxy: { close(): Promise<void> } | null = null;
  let isStopping = false;
  const shutdown = (signal: NodeJS.Signals): void => {
    if (isStopping) return;
    isStopping = true;
    process.stdout.write(`\n${signal}: stopping the proxy and the redis-servers\n`);
    void (async () => {
      if (proxy !== null) await withTimeout(proxy.close(), PROXY_CLOSE_TIMEOUT_MS).catch(reportError);
      await stopNodes(primaries, replicas);
      process.exit(0);
    })();
  };
  process.on('SIGINT', shutdown);
  process.on('SIGTERM', shutdown);

  try {
    if (!(await isPortFree(options.port, HOST))) {
      throw new DemoUsageError(`port ${options.port} is in use: pass another one with --port`);
    }
    fs.mkdirSync(options.dir, { recursive: true });
    const nodePort = (i: number): number => options.port + 1 + i;

    primaries.push(
      ...(await startEach(SHARD_NAMES.map((name, i) => () => startNode(options.dir, `${name}-primary`, nodePort(i))))),
    );
    // A node must not pick a port that a later one prefers, so the two groups start one after the other.
    replicas.push(
      ...(await startEach(
        SHARD_NAMES.map((name, i) => () => {
          const primary = primaries[i]!;
          return startNode(options.dir, `${name}-replica`, nodePort(SHARD_NAMES.length + i), primary);
        }),
      )),
    );
    await Promise.all(replicas.map((replica) => waitForReplication(replica, REPLICATION_TIMEOUT_MS)));

    const configFile = path.join(options.dir, CONFIG_FILE);
    const metricsPort = (await isPortFree(METRICS_PORT, HOST)) ? METRICS_PORT : await findFreePort(HOST);
    const adminPort = (await isPortFree(ADMIN_PORT, HOST)) ? ADMIN_PORT : await findFreePort(HOST);
    const topology: DemoTopology = {
      listen: { host: HOST, port: options.port },
      metrics: { host: HOST, port: metricsPort },
      admin: { host: HOST, port: adminPort },
      shards: SHARD_NAMES.map((name, i) => ({
        name,
        primary: { host: HOST, port: primaries[i]!.port },
        replica: { host: HOST, port: replicas[i]!.port },
      })),
    };
    fs.writeFileSync(configFile, renderDemoYaml(topology));
    const stateFile = path.join(options.dir, STATE_FILE);
    const carried = carriedState(stateFile, topology);
    if (carried !== null) {
      fs.writeFileSync(stateFile, encodeState(carried));
    } else {
      if (fs.existsSync(stateFile)) {
        process.stderr.write(
          `slotproxy demo: ${stateFile} names other shards than s1-s3; slots start evenly split again, so keys an earlier ` +
            `reshard moved may be out of sight (remove ${options.dir} to start afresh)\n`,
        );
      }
      fs.rmSync(stateFile, { force: true });
      // A plan of that earlier topology (its resharding journal) must not resume on this one.
      fs.rmSync(planFileOf(stateFile), { force: true });
    }

    const config = loadConfigFile(configFile);
    if (isStopping) return;
    proxy = await startProxy(config);
    if (isStopping) {
      // A signal arrived while the proxy was starting: shutdown saw no proxy to close.
      await proxy.close();
      return;
    }
    const slots = carried === null ? config.shards.map((shard) => shard.slots) : carried.slotRanges();
    process.stdout.write(connectHelp(options, configFile, topology, slots));
  } catch (err) {
    if (isStopping) return;
    await stopNodes(primaries, replicas);
    if (err instanceof RedisNotFoundError) {
      process.stderr.write(`slotproxy demo: ${REDIS_INSTALL_HINT}\n`);
      process.exit(1);
    }
    if (err instanceof DemoUsageError) {
      process.stderr.write(`slotproxy demo: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
}

/** The demo nodes' busy-reply-threshold (lua-time-limit), below the default nodeTimeoutMs by more than a probe interval. */
const SCRIPT_BUSY_REPLY_MS = 3000;

/** One node with AOF on in `<dir>/<folder>`, on `preferredPort` when free, else on any free port. */
async function startNode(dir: string, folder: string, preferredPort: number, primary?: LocalRedis): Promise<LocalRedis> {
  const options = {
    dir: path.join(dir, folder),
    host: HOST,
    appendonly: true,
    replicaOf: primary === undefined ? undefined : { host: primary.host, port: primary.port },
    // A node mid-script answers nothing until this threshold, then -BUSY; under the proxy's
    // nodeTimeoutMs (5 s), a slow script is seen to be one instead of taken for a failure.
    extraArgs: ['--lua-time-limit', String(SCRIPT_BUSY_REPLY_MS)],
  };
  if (await isPortFree(preferredPort, HOST)) {
    try {
      return await startRedisServer({ ...options, port: preferredPort });
    } catch (err) {
      // Taken between the check and the bind: any free port will do.
      if (!(err instanceof RedisStartError && err.isPortInUse)) throw err;
    }
  }
  return startRedisServer(options);
}

/** Starts all in parallel; if one fails, the others that did start are stopped before rethrowing. */
async function startEach(starts: readonly (() => Promise<LocalRedis>)[]): Promise<LocalRedis[]> {
  const results = await Promise.allSettled(starts.map((start) => start()));
  const started = results.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
  const failure = results.find((result) => result.status === 'rejected');
  if (failure !== undefined) {
    await Promise.allSettled(started.map((node) => node.stop()));
    throw failure.reason;
  }
  return started;
}

/** Replicas first: a primary whose replicas are gone shuts down without waiting for them to catch up. */
async function stopNodes(primaries: readonly LocalRedis[], replicas: readonly LocalRedis[]): Promise<void> {
  for (const group of [replicas, primaries]) {
    const results = await Promise.allSettled(group.map((node) => node.stop()));
    for (const result of results) if (result.status === 'rejected') reportError(result.reason);
  }
}

function connectHelp(
  options: DemoOptions,
  configFile: string,
  topology: DemoTopology,
  slotsByShard: readonly (readonly (readonly [number, number])[])[],
): string {
  const rows = topology.shards.map((shard, i) => {
    const slots = (slotsByShard[i] ?? []).map(([from, to]) => (from === to ? `${from}` : `${from}-${to}`)).join(',');
    return `  ${shard.name}  primary ${formatAddress(shard.primary)}  replica ${formatAddress(shard.replica)}  slots ${slots}`;
  });
  const port = options.port;
  return [
    '',
    'slotproxy demo is running: 3 shards, each a primary with one replica (AOF on)',
    ...rows,
    `  proxy    ${formatAddress(topology.listen)}`,
    `  metrics  http://${formatAddress(topology.metrics)}/metrics`,
    `  config   ${configFile}`,
    `  data     ${options.dir} (one folder per node, redis.log inside)`,
    '',
    'Connect with redis-cli:',
    `  redis-cli -p ${port}`,
    `  redis-cli -p ${port} mset a 1 b 2 c 3    # keys on different shards, one reply`,
    `  redis-cli -p ${port} mget a b c`,
    '',
    'Or with ioredis (npm install ioredis):',
    "  import Redis from 'ioredis';",
    `  const redis = new Redis({ host: '${HOST}', port: ${port} });`,
    "  await redis.set('hello', 'world');",
    "  console.log(await redis.get('hello'));",
    '',
    'Move slots online while it runs (the CLI finds the proxy from the YAML):',
    `  node dist/cli.js reshard --from s1 --to s2 --slots 100 --yes --config ${configFile}`,
    `  node dist/cli.js rebalance --config ${configFile}`,
    '',
    'Press Ctrl-C to stop the proxy and the six redis-servers.',
    '',
  ].join('\n');
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function reportError(err: unknown): void {
  process.stderr.write(`slotproxy demo: ${err instanceof Error ? err.message : String(err)}\n`);
}
