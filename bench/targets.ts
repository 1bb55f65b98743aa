/**
 * Starts what the bench measures, on free loopback ports in one temp dir:
 * 3 redis-server shards, 1 direct redis-server, Twemproxy over the shards twice (as shipped, at its
 * default verbosity, and with `-v 4`) and slotproxy over the same shards (workers 1 and workers 2,
 * each in its own folder).
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join, relative } from 'node:path';
import calculateSlot from 'cluster-key-slot';
import { shardOfSlot } from './keys';
import { delay, ProcessRegistry, type ManagedProcess } from './processes';
import { readFdLimit } from './proc-stats';
import { runCommand, waitForPing } from './resp-client';

export type TargetId = 'direct' | 'twemproxy' | 'twemproxy-v4' | 'slotproxy-w1' | 'slotproxy-w2';

/** Column order of every table: the order in which a round alternates targets. */
export const TARGET_IDS: readonly TargetId[] = ['direct', 'twemproxy', 'twemproxy-v4', 'slotproxy-w1', 'slotproxy-w2'];

export const TARGET_LABELS = {
  direct: 'direct',
  twemproxy: 'twemproxy',
  'twemproxy-v4': 'twemproxy(-v 4)',
  'slotproxy-w1': 'slotproxy(w1)',
  'slotproxy-w2': 'slotproxy(w2)',
} as const satisfies Record<TargetId, string>;

/** What a benchmark client connects to. */
export interface Target {
  readonly id: TargetId;
  readonly label: string;
  readonly port: number;
  /** The process that listens (for slotproxy: the primary of its workers); null when unavailable. */
  readonly process: ManagedProcess | null;
  /** null while usable; otherwise why the target is not measured (shown in place of its cells). */
  unavailableReason: string | null;
  /** Soft fd limit of the listening process, to show the 10k-connection test was possible. */
  readonly fdLimit: number | null;
}

/** One redis-server the bench started. */
export interface RedisNode {
  readonly name: string;
  readonly port: number;
  readonly process: ManagedProcess;
}

export interface BenchTopology {
  readonly dir: string;
  readonly shards: readonly RedisNode[];
  readonly direct: RedisNode;
  readonly targets: readonly Target[];
  readonly twemproxyStatsPort: number;
}

const READY_TIMEOUT_MS = 10_000;
const SLOTPROXY_READY_TIMEOUT_MS = 15_000;

/** Ports the kernel hands out for port 0, all held open together so none repeats; never 6379. */
export async function freePorts(count: number): Promise<number[]> {
  const servers: Server[] = [];
  const ports: number[] = [];
  try {
    while (ports.length < count) {
      const server = createServer();
      servers.push(server);
      const port = await new Promise<number>((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', () => {
          const address = server.address();
          if (address === null || typeof address === 'string') reject(new Error('no port'));
          else resolve(address.port);
        });
      });
      if (port !== 6379) ports.push(port);
    }
    return ports;
  } finally {
    await Promise.all(servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
  }
}

export async function startRedis(
  registry: ProcessRegistry,
  dir: string,
  name: string,
  port: number,
): Promise<RedisNode> {
  const nodeDir = join(dir, name);
  mkdirSync(nodeDir, { recursive: true });
  const started = registry.start(
    name,
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', nodeDir],
    { logPath: join(dir, `${name}.log`) },
  );
  const failure = await waitForPing(port, READY_TIMEOUT_MS, () => started.hasExited);
  if (failure !== null) throw new Error(`redis-server ${name} on ${port}: ${failure}\n${started.logTail()}`);
  return { name, port, process: started };
}

/**
 * How each Twemproxy target runs nutcracker: files of its own, and the verbosity option.
 * `twemproxy` is nutcracker as shipped: no `-v`, so its default level 5 (LOG_NOTICE), which is what
 * Debian's nutcracker.service runs. At that level `req_log()` calls getpeername() on every request,
 * to build a log line that a non-debug build never prints. `twemproxy-v4` runs with `-v 4` (LOG_WARN,
 * one level lower), which skips that work: Twemproxy tuned.
 */
const TWEMPROXY_VARIANTS = {
  twemproxy: { fileStem: 'nutcracker', verbosityArgs: [] },
  'twemproxy-v4': { fileStem: 'nutcracker-v4', verbosityArgs: ['-v', '4'] },
} as const satisfies Record<'twemproxy' | 'twemproxy-v4', { fileStem: string; verbosityArgs: readonly string[] }>;

export async function startTwemproxy(
  registry: ProcessRegistry,
  dir: string,
  id: 'twemproxy' | 'twemproxy-v4',
  port: number,
  statsPort: number,
  shards: readonly RedisNode[],
): Promise<Target> {
  const { fileStem, verbosityArgs } = TWEMPROXY_VARIANTS[id];
  const confPath = join(dir, `${fileStem}.yml`);
  writeFileSync(
    confPath,
    [
      'bench:',
      `  listen: 127.0.0.1:${port}`,
      '  hash: fnv1a_64',
      '  distribution: ketama',
      '  redis: true',
      '  auto_eject_hosts: false',
      '  server_connections: 1',
      '  preconnect: true',
      '  servers:',
      ...shards.map((shard) => `    - 127.0.0.1:${shard.port}:1 ${shard.name}`),
      '',
    ].join('\n'),
  );
  const started = registry.start(
    id,
    'nutcracker',
    ['-c', confPath, '-s', String(statsPort), '-a', '127.0.0.1', '-o', join(dir, `${fileStem}.log`), ...verbosityArgs],
    { logPath: join(dir, `${fileStem}.stdout.log`), raiseFdLimit: true },
  );
  const failure = await waitForPing(port, READY_TIMEOUT_MS, () => started.hasExited);
  if (failure !== null) throw new Error(`nutcracker (${id}) on ${port}: ${failure}\n${started.logTail()}`);
  return {
    id,
    label: TARGET_LABELS[id],
    port,
    process: started,
    unavailableReason: null,
    fdLimit: readFdLimit(started.pid),
  };
}

/**
 * Starts `node dist/cli.js start --config FILE` with the given worker count. Never throws: a missing
 * build, a crash or no PONG gives an unavailable target, and the bench goes on without it.
 */
export async function startSlotproxy(
  registry: ProcessRegistry,
  repoRoot: string,
  dir: string,
  id: 'slotproxy-w1' | 'slotproxy-w2',
  port: number,
  workers: number,
  shards: readonly RedisNode[],
): Promise<Target> {
  const unavailable = (reason: string): Target => ({
    id,
    label: TARGET_LABELS[id],
    port,
    process: null,
    unavailableReason: reason,
    fdLimit: null,
  });
  // SLOTPROXY_CLI points the bench at another build (or at a stand-in, to test the harness itself).
  const cliPath = process.env.SLOTPROXY_CLI ?? join(repoRoot, 'dist', 'cli.js');
  if (!existsSync(cliPath)) {
    const shown = relative(repoRoot, cliPath).startsWith('..') ? cliPath : relative(repoRoot, cliPath);
    return unavailable(`${shown} not found (slotproxy not built yet)`);
  }

  // Own folder per instance: a state file resolved against the YAML's folder must not be shared.
  const proxyDir = join(dir, id);
  mkdirSync(proxyDir, { recursive: true });
  const configPath = join(proxyDir, 'slotproxy.yaml');
  writeFileSync(
    configPath,
    [
      `listen: 127.0.0.1:${port}`,
      'nodeTimeoutMs: 5000',
      `workers: ${workers}`,
      'shards:',
      ...shards.flatMap((shard) => [`  - name: ${shard.name}`, `    primary: 127.0.0.1:${shard.port}`]),
      '',
    ].join('\n'),
  );
  let started: ManagedProcess;
  try {
    started = registry.start(id, process.execPath, [cliPath, 'start', '--config', configPath], {
      cwd: proxyDir,
      logPath: join(dir, `${id}.log`),
      raiseFdLimit: true,
    });
  } catch (error) {
    return unavailable(`cannot start: ${(error as Error).message}`);
  }
  const failure = await waitForPing(port, SLOTPROXY_READY_TIMEOUT_MS, () => started.hasExited);
  if (failure !== null) {
    const exit = started.exitInfo;
    const how = exit === null ? failure : `exited (code ${exit.code}, signal ${exit.signal})`;
    await registry.stop(started);
    return unavailable(`${how}; log: ${lastLine(started.logTail(5))}`);
  }
  // With workers > 1 the port may answer before every worker is up: give them a moment to appear.
  const deadline = Date.now() + 3000;
  while (workers > 1 && registry.treeOf(started).length < workers && Date.now() < deadline) await delay(100);
  return { id, label: TARGET_LABELS[id], port, process: started, unavailableReason: null, fdLimit: readFdLimit(started.pid) };
}

function lastLine(text: string): string {
  const line = text.trim().split('\n').pop() ?? '';
  return line === '' ? '(empty)' : line.slice(0, 200);
}

/**
 * Checks slotproxy's routing against the even slot split: SET a few keys through the proxy, then GET
 * each on the shard that owns its slot. Returns null when all are where they belong.
 */
export async function checkSlotRouting(target: Target, shards: readonly RedisNode[]): Promise<string | null> {
  try {
    for (let n = 1; n <= 9; n++) {
      const key = `route-check:${target.id}:${n}`;
      const reply = await runCommand(target.port, ['SET', key, key], 3000);
      if (reply !== 'OK') return `SET ${key} answered ${String(reply)}`;
      const owner = shards[shardOfSlot(calculateSlot(key))];
      const stored = await runCommand(owner.port, ['GET', key], 3000);
      if (stored !== key) return `${key} (slot ${calculateSlot(key)}) not found on ${owner.name}`;
    }
    return null;
  } catch (error) {
    return (error as Error).message;
  }
}

/**
 * Where Twemproxy puts each of `keys`: index into `shards`, by name. Writes them all through it,
 * looks for them on every shard, then deletes them there (the shards are fresh; nothing else is
 * under these names yet).
 */
export async function probeTwemproxyPlacement(target: Target, shards: readonly RedisNode[], keys: readonly string[]): Promise<Map<string, number>> {
  const reply = await runCommand(target.port, ['MSET', ...keys.flatMap((key) => [key, 'probe'])], 5000);
  if (reply !== 'OK') throw new Error(`MSET through ${target.label} answered ${String(reply)}`);
  const placement = new Map<string, number>();
  for (const [index, shard] of shards.entries()) {
    const values = await runCommand(shard.port, ['MGET', ...keys], 5000);
    if (!Array.isArray(values)) throw new Error(`MGET on ${shard.name} answered ${String(values)}`);
    values.forEach((value, k) => {
      if (value !== null) placement.set(keys[k]!, index);
    });
  }
  for (const shard of shards) await runCommand(shard.port, ['DEL', ...keys], 5000);
  return placement;
}
