import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import calculateSlot from 'cluster-key-slot';
import Redis from 'ioredis';
import type { LocalRedis } from '../../src/cli/local-redis';
import { startProxyProcess, type ProxyProcess } from '../helpers/proxy-harness';
import type { Shards } from '../helpers/redis-harness';

/**
 * Helpers of the HA tests: a proxy over real shards with a state file in a temp folder,
 * writer loops that record which writes were acknowledged, and direct looks at the nodes.
 */

export const NODE_TIMEOUT_MS = 2000;
export const FAILOVER_WAIT_MS = 5000;
/** The acceptance bound on recovering a failed primary. */
export const RECOVERY_BOUND_MS = NODE_TIMEOUT_MS + 1000;

/** redis-cli's even split of 16384 slots over 3 primaries. */
const SLOT_RANGES_3 = ['0-5460', '5461-10922', '10923-16383'] as const;

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` until it returns a value other than undefined/false; rejects after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown = null;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms${lastError === null ? '' : ` (${String(lastError)})`}`);
    await sleep(20);
  }
}

export function shardOfSlot(slot: number, shardCount: number): number {
  if (shardCount === 1) return 0;
  if (shardCount !== 3) throw new Error('the HA tests use 1 or 3 shards');
  return slot <= 5460 ? 0 : slot <= 10922 ? 1 : 2;
}

export function shardOfKey(key: string, shardCount: number): number {
  return shardOfSlot(calculateSlot(key), shardCount);
}

/**
 * Resolves once every primary streams writes to all its replicas. A replica says
 * `master_link_status:up` as soon as it has loaded the primary's snapshot, but after a diskless
 * sync the primary sends it nothing more until the replica's first REPLCONF ACK (up to a
 * second later): a primary killed in that window loses what it acknowledged meanwhile, which is
 * Redis's behaviour and not what these tests measure.
 */
export async function replicationFlowing(shards: Shards): Promise<void> {
  await Promise.all(
    shards.primaries.map(async (primary, i) => {
      const replicas = shards.replicas[i]?.length ?? 0;
      if (replicas === 0) return;
      const client = connect(primary);
      try {
        await client.set('ha:replication-check', '1');
        const acks = (await client.call('WAIT', String(replicas), '5000')) as number;
        if (acks < replicas) throw new Error(`primary ${primary.port}: ${acks} of ${replicas} replicas acknowledged within 5 s`);
        await client.del('ha:replication-check');
      } finally {
        client.disconnect();
      }
    }),
  );
}

export interface HaProxy {
  readonly proxy: ProxyProcess;
  /** Absolute path of the state file (in its own temp folder, kept across proxy restarts). */
  readonly stateFile: string;
  stop(): Promise<void>;
}

export interface HaProxyOptions {
  /** More top-level YAML keys (readFrom, minReplicaAcks, ...). */
  readonly extra?: Readonly<Record<string, unknown>>;
  /** Reuse this state file (a restarted proxy). @default a new one */
  readonly stateFile?: string;
  /** Wait for replication to flow to every replica first (see replicationFlowing). @default true */
  readonly isReplicationChecked?: boolean;
}

/** The proxy over `shards` with nodeTimeoutMs 2000, failoverWaitMs 5000 and a state file. */
export async function startHaProxy(shards: Shards, options: HaProxyOptions = {}): Promise<HaProxy> {
  if (options.isReplicationChecked ?? true) await replicationFlowing(shards);
  const ownsFolder = options.stateFile === undefined;
  const stateFile = options.stateFile ?? path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'slotproxy-ha-')), 'state.json');
  const count = shards.primaries.length;
  const proxy = await startProxyProcess({
    shards: shards.primaries.map((primary, i) => ({
      name: `s${i}`,
      primary,
      replicas: shards.replicas[i] ?? [],
      ...(count === 3 ? { slots: [SLOT_RANGES_3[i]!] } : {}),
    })),
    extra: { nodeTimeoutMs: NODE_TIMEOUT_MS, failoverWaitMs: FAILOVER_WAIT_MS, stateFile, ...options.extra },
  });
  return {
    proxy,
    stateFile,
    async stop() {
      await proxy.stop();
      if (ownsFolder) fs.rmSync(path.dirname(stateFile), { recursive: true, force: true });
    },
  };
}

/** One write: when it was sent, when its reply came, and whether it was acknowledged. */
export interface WriteOp {
  readonly key: string;
  readonly shard: number;
  readonly startedAt: number;
  readonly endedAt: number;
  readonly isOk: boolean;
  readonly error: string | null;
}

/**
 * Writer loops through the proxy, each on its own ioredis connection (default options), each
 * writing unique keys `k:<writer>:<n>` of one shard (writer w writes shard w % shardCount), one
 * at a time, recording every outcome.
 */
export class Writers {
  readonly ops: WriteOp[] = [];
  readonly #clients: Redis[];
  readonly #shardCount: number;
  #isRunning = false;
  #loops: Promise<void>[] = [];

  constructor(port: number, count: number, shardCount: number) {
    this.#shardCount = shardCount;
    this.#clients = Array.from({ length: count }, () => {
      const client = new Redis({ host: '127.0.0.1', port });
      client.on('error', () => undefined);
      return client;
    });
  }

  start(): void {
    this.#isRunning = true;
    this.#loops = this.#clients.map((client, w) => this.#loop(client, w));
  }

  async stop(): Promise<void> {
    this.#isRunning = false;
    await Promise.all(this.#loops);
  }

  close(): void {
    for (const client of this.#clients) client.disconnect();
  }

  get acked(): string[] {
    return this.ops.filter((op) => op.isOk).map((op) => op.key);
  }

  /** Ops of `shard` whose reply came in [from, to). */
  opsOf(shard: number, from = 0, to = Infinity): WriteOp[] {
    return this.ops.filter((op) => op.shard === shard && op.endedAt >= from && op.endedAt < to);
  }

  /**
   * Time from a fault at `since` to the first acknowledged write of `shard` sent after it. Writes
   * sent in the first 20 ms are left out: a signal takes a moment to reach the process, and a
   * write it answered meanwhile says nothing about recovery.
   */
  recoveryMs(shard: number, since: number): number | null {
    const first = this.ops.find((op) => op.shard === shard && op.isOk && op.startedAt >= since + 20);
    return first === undefined ? null : first.endedAt - since;
  }

  /** The longest time `shard` acknowledged no write, within [from, to): the outage clients saw. */
  maxAckGapMs(shard: number, from: number, to: number): number {
    const ends = this.ops.filter((op) => op.shard === shard && op.isOk && op.endedAt >= from && op.endedAt < to).map((op) => op.endedAt);
    ends.sort((a, b) => a - b);
    let gap = 0;
    let previous = from;
    for (const end of [...ends, to]) {
      gap = Math.max(gap, end - previous);
      previous = end;
    }
    return gap;
  }

  async #loop(client: Redis, writer: number): Promise<void> {
    const shard = writer % this.#shardCount;
    let n = 0;
    while (this.#isRunning) {
      let key: string;
      do key = `k:${writer}:${n++}`;
      while (shardOfKey(key, this.#shardCount) !== shard);
      const startedAt = Date.now();
      try {
        const reply = await client.set(key, String(startedAt));
        this.ops.push({ key, shard, startedAt, endedAt: Date.now(), isOk: reply === 'OK', error: reply === 'OK' ? String(reply) : null });
      } catch (err) {
        this.ops.push({ key, shard, startedAt, endedAt: Date.now(), isOk: false, error: (err as Error).message });
        await sleep(5);
      }
    }
  }
}

/** Keys of `keys` that `client` does not have (MGET in batches; through the proxy it is split per shard). */
export async function missingKeys(client: Redis, keys: readonly string[]): Promise<string[]> {
  const missing: string[] = [];
  for (let i = 0; i < keys.length; i += 1000) {
    const batch = keys.slice(i, i + 1000);
    const values = await client.mget(...batch);
    values.forEach((value, j) => {
      if (value === null) missing.push(batch[j]!);
    });
  }
  return missing;
}

/** A direct connection to one node (RESP2, like the tests' other direct connections). */
export function connect(node: { readonly host: string; readonly port: number }): Redis {
  const client = new Redis({ host: node.host, port: node.port, protocol: 2, maxRetriesPerRequest: 1, retryStrategy: () => null });
  client.on('error', () => undefined);
  return client;
}

/** A MONITOR of one node on a socket of its own: each command it runs, with its arguments and the client's address. */
export interface NodeMonitor {
  close(): void;
}

/**
 * MONITOR over a plain socket. ioredis's `monitor()` cannot be used on a node that is busy
 * (here the proxy's health checks): a line that arrives with MONITOR's +OK is taken for a reply
 * to no command ("Command queue state error", thrown from its socket handler).
 * Resolves once the node has answered +OK.
 */
export function monitorNode(node: { readonly host: string; readonly port: number }, onCommand: (args: string[], source: string) => void): Promise<NodeMonitor> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(node.port, node.host);
    const monitor: NodeMonitor = { close: () => socket.destroy() };
    let pending = '';
    let isStarted = false;
    socket.setEncoding('latin1');
    socket.once('error', reject);
    socket.on('error', () => undefined);
    socket.on('connect', () => socket.write('MONITOR\r\n'));
    socket.on('data', (chunk: string) => {
      pending += chunk;
      let end: number;
      while ((end = pending.indexOf('\r\n')) !== -1) {
        const line = pending.slice(0, end);
        pending = pending.slice(end + 2);
        if (!isStarted) {
          isStarted = true;
          if (line === '+OK') resolve(monitor);
          else reject(new Error(`MONITOR answered ${line}`));
          continue;
        }
        // +1712098529.327989 [0 127.0.0.1:62763] "set" "key" "value"
        const header = /^\+\d+\.\d+ \[\d+ ([^\]]+)\] /.exec(line);
        if (header === null) continue;
        const args = [...line.slice(header[0].length).matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1]!.replace(/\\(.)/g, '$1'));
        onCommand(args, header[1]!);
      }
    });
  });
}

/** ROLE of a node: 'master', or 'slave' with the primary it follows and its link state. */
export async function roleOf(node: LocalRedis): Promise<{ role: string; primaryPort: number | null; link: string | null }> {
  const client = connect(node);
  try {
    const role = (await client.call('ROLE')) as unknown[];
    if (role[0] === 'slave') return { role: 'slave', primaryPort: Number(role[2]), link: String(role[3]) };
    return { role: String(role[0]), primaryPort: null, link: null };
  } finally {
    client.disconnect();
  }
}

/** `cmdstat_<name>` calls on a node (0 when the command never ran there). */
export async function commandCalls(node: LocalRedis, name: string): Promise<number> {
  const client = connect(node);
  try {
    const info = await client.info('commandstats');
    const match = new RegExp(`^cmdstat_${name}:calls=(\\d+)`, 'm').exec(info);
    return match === null ? 0 : Number(match[1]);
  } finally {
    client.disconnect();
  }
}

/** Every key matching `pattern` on one node. */
export async function keysOf(node: LocalRedis, pattern: string): Promise<Set<string>> {
  const client = connect(node);
  try {
    const keys = new Set<string>();
    let cursor = '0';
    do {
      const [next, batch] = await client.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
      for (const key of batch) keys.add(key);
      cursor = next;
    } while (cursor !== '0');
    return keys;
  } finally {
    client.disconnect();
  }
}

/** The JSON lines the proxy logged with `event`. */
export function logEvents(proxy: ProxyProcess, event: string): Record<string, unknown>[] {
  return proxy
    .logs()
    .split('\n')
    .filter((line) => line.startsWith('{') && line.includes(`"event":"${event}"`))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

/** Summary of a set of ops for the report: count, errors, max and p99 latency. */
export function latencySummary(ops: readonly WriteOp[]): { count: number; errors: number; maxMs: number; p99Ms: number } {
  const latencies = ops.map((op) => op.endedAt - op.startedAt).sort((a, b) => a - b);
  return {
    count: ops.length,
    errors: ops.filter((op) => !op.isOk).length,
    maxMs: latencies.at(-1) ?? 0,
    p99Ms: latencies[Math.floor(latencies.length * 0.99)] ?? 0,
  };
}
