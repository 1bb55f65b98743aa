import { execFile, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import calculateSlot from 'cluster-key-slot';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { planShards } from '../../src/cli/create';
import { findFreePort, startRedisServer, type LocalRedis } from '../../src/cli/local-redis';
import type { Address, ProxyConfig } from '../../src/config/config-types';
import { evenSlotRanges, loadConfigFile } from '../../src/config/load-config';

/**
 * `slotproxy create` and `slotproxy check` as a user runs them: `node dist/cli.js` child
 * processes against real redis-servers on free loopback ports, then `slotproxy start` on the
 * YAML that create wrote. Every process is stopped by its PID and every step is time-bounded.
 */

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const CLI_PATH = path.join(REPO_ROOT, 'dist', 'cli.js');
/** create waits up to 30 s for links; nothing here should come near that. */
const CLI_TIMEOUT_MS = 40_000;
const CASE_TIMEOUT_MS = 60_000;
const PROXY_START_TIMEOUT_MS = 10_000;
const PROXY_STOP_TIMEOUT_MS = 5_000;

interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** `node dist/cli.js ...args`, killed (by its PID, SIGKILL) if it outlives the bound. */
function runCli(args: readonly string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI_PATH, ...args],
      { cwd: REPO_ROOT, timeout: CLI_TIMEOUT_MS, killSignal: 'SIGKILL' },
      (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof err.code === 'number' ? err.code : null;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

function addr(node: LocalRedis): string {
  return `${node.host}:${node.port}`;
}

async function withClient<T>(node: Address, use: (redis: Redis) => Promise<T>): Promise<T> {
  const redis = new Redis({
    host: node.host,
    port: node.port,
    lazyConnect: true,
    enableReadyCheck: false,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: 1_000,
    commandTimeout: 3_000,
  });
  redis.on('error', () => undefined);
  try {
    await redis.connect();
    return await use(redis);
  } finally {
    redis.disconnect();
  }
}

function replicationField(info: string, name: string): string | undefined {
  return new RegExp(`^${name}:(.*?)\\r?$`, 'm').exec(info)?.[1];
}

/** A key whose slot is in `[from, to]`. */
function keyInSlots(prefix: string, [from, to]: readonly [number, number]): string {
  for (let i = 0; ; i++) {
    const key = `${prefix}:${i}`;
    const slot = calculateSlot(key);
    if (slot >= from && slot <= to) return key;
  }
}

describe('planShards', () => {
  const a = (host: string, port: number): Address => ({ host, port });
  const show = (nodes: readonly Address[], replicas: number): string[] =>
    planShards(nodes, replicas).shards.map((s) => `${s.primary.host}:${s.primary.port}<-${s.replicas.map((r) => `${r.host}:${r.port}`).join(',')}`);

  it('keeps the given order on one host: the first count/(N+1) nodes are primaries', () => {
    const nodes = [1, 2, 3, 4, 5, 6].map((p) => a('127.0.0.1', p));
    expect(show(nodes, 1)).toEqual(['127.0.0.1:1<-127.0.0.1:4', '127.0.0.1:2<-127.0.0.1:5', '127.0.0.1:3<-127.0.0.1:6']);
    expect(planShards(nodes, 1).shards.map((s) => s.slots)).toEqual(evenSlotRanges(3));
  });

  it('never puts a replica on its primary host when the hosts allow it', () => {
    for (const nodes of [
      [a('A', 1), a('A', 2), a('B', 1), a('B', 2), a('C', 1), a('C', 2)],
      [a('A', 1), a('A', 2), a('A', 3), a('B', 1), a('B', 2), a('B', 3)],
      [a('A', 1), a('B', 1), a('C', 1), a('A', 2), a('B', 2), a('C', 2), a('A', 3), a('B', 3), a('C', 3)],
    ]) {
      const replicas = nodes.length === 9 ? 2 : 1;
      const plan = planShards(nodes, replicas);
      expect(plan.isAntiAffinityMet).toBe(true);
      // Primaries spread over the hosts too: one per host before a second on any.
      const hosts = new Set(nodes.map((n) => n.host)).size;
      expect(new Set(plan.shards.map((s) => s.primary.host)).size).toBe(Math.min(3, hosts));
      for (const shard of plan.shards) {
        expect(shard.replicas).toHaveLength(replicas);
        for (const replica of shard.replicas) expect(replica.host).not.toBe(shard.primary.host);
      }
    }
  });

  it('says so when the hosts cannot avoid it, and adds leftover nodes as extra replicas', () => {
    expect(planShards([a('A', 1), a('A', 2), a('A', 3), a('A', 4), a('B', 1), a('B', 2)], 1).isAntiAffinityMet).toBe(false);
    const plan = planShards([1, 2, 3, 4, 5, 6, 7].map((p) => a('h', p)), 1);
    expect(plan.extraReplicas).toBe(1);
    expect(plan.shards.map((s) => s.replicas.length)).toEqual([2, 1, 1]);
  });
});

describe('slotproxy create and check on real redis-servers', () => {
  let root = '';
  /** The six blank nodes create wires into 3 shards of 1 primary + 1 replica. */
  const nodes: LocalRedis[] = [];
  /** Four more blank nodes for the refusals and --force. */
  const spares: LocalRedis[] = [];
  let yamlPath = '';
  let config: ProxyConfig | null = null;

  beforeAll(async () => {
    if (!fs.existsSync(CLI_PATH)) throw new Error(`${CLI_PATH} is missing: run \`npm run build\` first`);
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'slotproxy-create-'));
    // One at a time: each takes its own free port before the next looks for one.
    for (let i = 0; i < 10; i++) {
      const node = await startRedisServer({ dir: path.join(root, `n${i}`) });
      (i < 6 ? nodes : spares).push(node);
    }
    yamlPath = path.join(root, 'tmp.yaml');
  }, CASE_TIMEOUT_MS);

  afterAll(async () => {
    await Promise.allSettled([...nodes, ...spares].map((node) => node.stop()));
    if (root !== '') fs.rmSync(root, { recursive: true, force: true });
  }, CASE_TIMEOUT_MS);

  it('refuses to go ahead without --yes when stdin is not a terminal, changing nothing', async () => {
    const result = await runCli(['create', ...nodes.map(addr), '--replicas', '1', '--out', yamlPath]);
    expect(result.code, result.stderr).toBe(1);
    expect(result.stdout).toContain('Shard s1: primary');
    expect(result.stderr).toContain('pass --yes');
    expect(fs.existsSync(yamlPath)).toBe(false);
    for (const node of nodes) {
      expect(replicationField(await withClient(node, (r) => r.info('replication')), 'role')).toBe('master');
    }
  }, CASE_TIMEOUT_MS);

  it('wires 6 blank nodes into 3 shards of one primary and one replica, and writes the YAML', async () => {
    const listen = await findFreePort();
    const metrics = await findFreePort();
    const result = await runCli([
      'create',
      ...nodes.map(addr),
      '--replicas',
      '1',
      '--yes',
      '--out',
      yamlPath,
      '--listen',
      `127.0.0.1:${listen}`,
      '--metrics',
      `127.0.0.1:${metrics}`,
    ]);
    expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
    expect(result.stdout).toContain(`slotproxy start --config ${yamlPath}`);

    config = loadConfigFile(yamlPath);
    expect(config.listen).toEqual({ host: '127.0.0.1', port: listen });
    expect(config.metrics).toEqual({ host: '127.0.0.1', port: metrics });
    expect(config.nodeTimeoutMs).toBe(5000);
    expect(config.stateFile).toBe(path.join(root, 'tmp.state.json'));
    expect(config.shards.map((s) => s.name)).toEqual(['s1', 's2', 's3']);
    expect(config.shards.map((s) => s.slots)).toEqual(evenSlotRanges(3));
    expect(fs.readFileSync(yamlPath, 'utf8')).toContain('slots: ["0-5460"]');
    for (const [i, shard] of config.shards.entries()) {
      expect(shard.primary).toEqual({ host: '127.0.0.1', port: nodes[i]!.port });
      expect(shard.replicas).toEqual([{ host: '127.0.0.1', port: nodes[i + 3]!.port }]);
      const info = await withClient(shard.replicas[0]!, (r) => r.info('replication'));
      expect(replicationField(info, 'role')).toBe('slave');
      expect(replicationField(info, 'master_port')).toBe(String(shard.primary.port));
      expect(replicationField(info, 'master_link_status')).toBe('up');
    }
  }, CASE_TIMEOUT_MS);

  it('check passes on the fresh deployment', async () => {
    const result = await runCli(['check', '--config', yamlPath]);
    expect(result.code, result.stdout).toBe(0);
    expect(result.stdout).toContain('[OK] All 16384 slots covered.');
    expect(result.stdout).not.toContain('[ERR]');
    expect(result.stdout.match(/\[OK\] s\d replica .* replicates .*, link up, lag \d+ bytes/g)).toHaveLength(3);
    expect(result.stdout).toContain('>>> Summary: healthy');
  }, CASE_TIMEOUT_MS);

  it('slotproxy start serves the created YAML: SET/GET land on the shard owning the slot', async () => {
    const cfg = config!;
    const proxy = await startProxy(yamlPath, cfg.listen);
    try {
      await withClient(cfg.listen, async (redis) => {
        for (let i = 0; i < 60; i++) expect(await redis.set(`created:${i}`, `v${i}`)).toBe('OK');
        for (let i = 0; i < 60; i++) expect(await redis.get(`created:${i}`)).toBe(`v${i}`);
      });
    } finally {
      await proxy.stop();
    }
    const onShard = cfg.shards.map(() => 0);
    for (let i = 0; i < 60; i++) {
      const slot = calculateSlot(`created:${i}`);
      const owner = cfg.shards.findIndex((s) => s.slots.some(([from, to]) => slot >= from && slot <= to));
      expect(await withClient(cfg.shards[owner]!.primary, (r) => r.get(`created:${i}`))).toBe(`v${i}`);
      onShard[owner]!++;
    }
    expect(onShard.every((n) => n > 0)).toBe(true);

    const check = await runCli(['check', '--config', yamlPath]);
    expect(check.code, check.stdout).toBe(0);
    for (const [i, shard] of cfg.shards.entries()) {
      expect(check.stdout).toContain(`[OK] ${shard.name}: ${onShard[i]} key(s), all in slots it owns`);
    }
  }, CASE_TIMEOUT_MS);

  it('check fails and names a key written directly onto a shard that does not own its slot', async () => {
    const cfg = config!;
    const key = keyInSlots('misplaced', cfg.shards[1]!.slots[0]!);
    await withClient(cfg.shards[0]!.primary, (r) => r.set(key, 'wrong shard'));
    try {
      const result = await runCli(['check', '--config', yamlPath]);
      expect(result.code, result.stdout).toBe(1);
      expect(result.stdout).toMatch(
        new RegExp(`\\[ERR\\] s1: 1 of \\d+ key\\(s\\) sit in slots owned by other shards: "${key}" \\(slot ${calculateSlot(key)}, owned by s2\\)`),
      );
      expect(result.stdout).toContain('>>> Summary: 1 error(s)');
    } finally {
      await withClient(cfg.shards[0]!.primary, (r) => r.del(key));
    }
    expect((await runCli(['check', '--config', yamlPath])).code).toBe(0);
  }, CASE_TIMEOUT_MS);

  it('check fails when a replica has been turned into a primary', async () => {
    const cfg = config!;
    const replica = cfg.shards[0]!.replicas[0]!;
    await withClient(replica, (r) => r.replicaof('NO', 'ONE'));
    const result = await runCli(['check', '--config', yamlPath]);
    expect(result.code, result.stdout).toBe(1);
    expect(result.stdout).toContain(
      `[ERR] s1 replica 127.0.0.1:${replica.port} is a primary, expected a replica of 127.0.0.1:${cfg.shards[0]!.primary.port}`,
    );
  }, CASE_TIMEOUT_MS);

  it('create refuses nodes that are already wired into a deployment', async () => {
    const result = await runCli(['create', ...nodes.map(addr), '--replicas', '1', '--yes', '--out', path.join(root, 'again.yaml')]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(`Node ${addr(nodes[4]!)} is already a replica of ${addr(nodes[1]!)}`);
    expect(result.stderr).toContain(`Node ${addr(nodes[1]!)} already has 1 replica(s)`);
    expect(result.stderr).toMatch(new RegExp(`Node ${addr(nodes[0]!)} is not empty: it holds \\d+ key\\(s\\)`));
    expect(fs.existsSync(path.join(root, 'again.yaml'))).toBe(false);
  }, CASE_TIMEOUT_MS);

  it('create refuses 4 nodes with --replicas 1 (only 2 primaries) without --force, changing nothing', async () => {
    const out = path.join(root, 'four.yaml');
    const result = await runCli(['create', ...spares.map(addr), '--replicas', '1', '--yes', '--out', out]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('4 nodes with --replicas 1 make only 2 primaries; a sharded deployment needs at least 3');
    expect(result.stderr).toContain('pass --force');
    expect(fs.existsSync(out)).toBe(false);
    for (const node of spares) {
      expect(replicationField(await withClient(node, (r) => r.info('replication')), 'role')).toBe('master');
    }
  }, CASE_TIMEOUT_MS);

  it('create refuses a node holding keys and an unreachable node, even with --force', async () => {
    const closedPort = await findFreePort();
    await withClient(spares[0]!, (r) => r.set('already-here', '1'));
    try {
      const out = path.join(root, 'keys.yaml');
      const result = await runCli([
        'create',
        ...spares.slice(0, 3).map(addr),
        `127.0.0.1:${closedPort}`,
        '--replicas',
        '0',
        '--yes',
        '--force',
        '--out',
        out,
      ]);
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(`Node ${addr(spares[0]!)} is not empty: it holds 1 key(s) (db0=1)`);
      expect(result.stderr).toContain(`Node 127.0.0.1:${closedPort} is not reachable`);
      expect(result.stderr).toContain('Nothing was changed.');
      expect(fs.existsSync(out)).toBe(false);
    } finally {
      await withClient(spares[0]!, (r) => r.flushall());
    }
  }, CASE_TIMEOUT_MS);

  it('create --force goes ahead with 2 primaries and warns', async () => {
    const out = path.join(root, 'forced.yaml');
    const result = await runCli(['create', ...spares.map(addr), '--replicas', '1', '--yes', '--force', '--out', out]);
    expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
    expect(result.stderr).toContain('[WARNING] 4 nodes with --replicas 1 make only 2 primaries');
    const forced = loadConfigFile(out);
    expect(forced.shards.map((s) => [s.primary.port, s.replicas.map((r) => r.port)])).toEqual([
      [spares[0]!.port, [spares[2]!.port]],
      [spares[1]!.port, [spares[3]!.port]],
    ]);
    expect(forced.shards.map((s) => s.slots)).toEqual(evenSlotRanges(2));
    expect((await runCli(['check', '--config', out])).code).toBe(0);
  }, CASE_TIMEOUT_MS);
});

interface RunningProxy {
  stop(): Promise<void>;
}

/** `node dist/cli.js start --config FILE`; resolves once it answers PING on `listen`. */
async function startProxy(configPath: string, listen: Address): Promise<RunningProxy> {
  const child: ChildProcess = spawn(process.execPath, [CLI_PATH, 'start', '--config', configPath], {
    cwd: path.dirname(configPath),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  let isRunning = true;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => {
      isRunning = false;
      resolve();
    });
  });
  const waitForExit = async (ms: number): Promise<boolean> => {
    let timer: NodeJS.Timeout | undefined;
    const gone = await Promise.race([exited.then(() => true), new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)))]);
    clearTimeout(timer);
    return gone;
  };
  const signal = (sig: NodeJS.Signals): void => {
    if (isRunning && child.pid !== undefined) process.kill(child.pid, sig);
  };
  const stop = async (): Promise<void> => {
    signal('SIGTERM');
    if (await waitForExit(PROXY_STOP_TIMEOUT_MS)) return;
    signal('SIGKILL');
    await waitForExit(PROXY_STOP_TIMEOUT_MS);
  };

  const deadline = Date.now() + PROXY_START_TIMEOUT_MS;
  for (;;) {
    if (!isRunning) throw new Error(`slotproxy start exited:\n${output}`);
    // Our child must have said it listens: a PONG alone could come from another process.
    const isUp = /"event":"listening"/.test(output) && (await withClient(listen, (r) => r.ping()).catch(() => null)) === 'PONG';
    if (isUp) return { stop };
    if (Date.now() >= deadline) {
      await stop();
      throw new Error(`slotproxy start did not answer PING on ${listen.host}:${listen.port}:\n${output}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
