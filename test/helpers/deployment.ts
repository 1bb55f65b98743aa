import calculateSlot from 'cluster-key-slot';
import Redis from 'ioredis';
import { startProxyProcess, type ProxyProcess } from './proxy-harness';
import { startShards, startSingleRedis, type Shards, type SingleRedis } from './redis-harness';

/**
 * The deployment the integration suites share: 3 shards of real redis-server processes (a
 * replica each by default), `dist/cli.js start` over them with the even slot split, one plain
 * redis-server to compare replies with, and ioredis clients on all of them. Plus the key helpers
 * that pick keys by the shard owning their slot.
 */

/** Shard names in the proxy's YAML, in shard order. */
export const SHARD_NAMES = ['s1', 's2', 's3'] as const;
export const SHARD_COUNT = SHARD_NAMES.length;
/**
 * redis-cli's even split of 16384 slots over 3 primaries, which the proxy uses when the YAML
 * gives no `slots`. Written out rather than computed by src/, so the tests check the proxy's
 * split instead of repeating it.
 */
export const SLOT_RANGES = [
  [0, 5460],
  [5461, 10922],
  [10923, 16383],
] as const;
/** The proxy's `connectTimeoutMs`: the bound on failing the commands of an unreachable shard. */
export const CONNECT_TIMEOUT_MS = 1_000;

export interface DeploymentOptions {
  /** Replicas per shard. @default 1 */
  readonly replicas?: number;
  /** More top-level YAML keys for the proxy, over `connectTimeoutMs: CONNECT_TIMEOUT_MS`. */
  readonly extra?: Readonly<Record<string, unknown>>;
}

export interface Deployment {
  /** The shard servers: `primaries[i]` and its `replicas[i]`, in shard order. */
  readonly shards: Shards;
  /** The plain Redis the proxy's replies are compared with. */
  readonly single: SingleRedis;
  /** The proxy over every shard, primaries and replicas. */
  readonly proxy: ProxyProcess;
  /** Through the proxy, ioredis with its defaults (it tries RESP3, falls back on NOPROTO); connects on first use. */
  readonly viaProxy: Redis;
  /** The reference Redis, RESP2 like the proxy, so reply shapes are comparable. */
  readonly direct: Redis;
  /** Each shard's primary, directly (RESP2), in shard order. */
  readonly primaries: readonly Redis[];
  /** Each shard's first replica, directly (RESP2), in shard order; empty without replicas. Connect on first use. */
  readonly replicas: readonly Redis[];
  /** FLUSHALL on every primary and on the direct Redis. */
  flushEverything(): Promise<void>;
  /** Disconnects the clients, then stops the proxy and every server; safe to call twice. */
  stop(): Promise<void>;
}

/** An ioredis client that leaves its rejections to the awaiting test. */
export function connect(node: { readonly host: string; readonly port: number }, protocol?: 2 | 3): Redis {
  const redis = new Redis({ host: node.host, port: node.port, ...(protocol === undefined ? {} : { protocol }) });
  // Without a listener ioredis would print reconnect noise.
  redis.on('error', () => undefined);
  return redis;
}

/**
 * Starts the shards and the direct Redis side by side, then the proxy, then connects the
 * clients. When a step fails, whatever did start is stopped before the error is thrown.
 */
export async function startDeployment(options: DeploymentOptions = {}): Promise<Deployment> {
  const [shardsResult, singleResult] = await Promise.allSettled([
    startShards(SHARD_COUNT, { replicas: options.replicas ?? 1 }),
    startSingleRedis(),
  ] as const);
  let proxy: ProxyProcess | undefined;
  const stopServers = async (): Promise<void> => {
    const failures: unknown[] = [];
    for (const stop of [
      () => proxy?.stop(),
      () => (shardsResult.status === 'fulfilled' ? shardsResult.value.stopAll() : undefined),
      () => (singleResult.status === 'fulfilled' ? singleResult.value.stopAll() : undefined),
    ]) {
      await Promise.resolve()
        .then(stop)
        .catch((err: unknown) => failures.push(err));
    }
    if (failures.length > 0) throw failures[0];
  };
  if (shardsResult.status === 'rejected' || singleResult.status === 'rejected') {
    // The start failure is the news; a failed stop here would only hide it.
    await stopServers().catch(() => undefined);
    throw shardsResult.status === 'rejected' ? shardsResult.reason : (singleResult as PromiseRejectedResult).reason;
  }
  const shards = shardsResult.value;
  const single = singleResult.value;
  try {
    proxy = await startProxyProcess({
      shards: shards.primaries.map((primary, i) => ({
        name: SHARD_NAMES[i]!,
        primary,
        replicas: shards.replicas[i]!.map((replica) => ({ host: replica.host, port: replica.port })),
      })),
      extra: { connectTimeoutMs: CONNECT_TIMEOUT_MS, ...options.extra },
    });
  } catch (err) {
    await stopServers().catch(() => undefined);
    throw err;
  }

  const proxyProcess = proxy;
  const direct = connect(single.redis, 2);
  const primaries = shards.primaries.map((primary) => connect(primary, 2));
  // The clients not every suite uses connect on first use, so a suite holds only the connections
  // it uses. An idle extra client is not neutral: with one on the proxy, commands-cluster-client's
  // Pub/Sub test lost a message in 4 of 20 runs under load, without it in none of 40 (the proxy
  // confirms SUBSCRIBE before its shard connection has subscribed).
  let viaProxy: Redis | undefined;
  let replicas: readonly Redis[] | undefined;
  return {
    shards,
    single,
    proxy: proxyProcess,
    get viaProxy(): Redis {
      return (viaProxy ??= connect(proxyProcess));
    },
    direct,
    primaries,
    get replicas(): readonly Redis[] {
      return (replicas ??= shards.replicas.flatMap((list) => (list.length === 0 ? [] : [connect(list[0]!, 2)])));
    },
    async flushEverything(): Promise<void> {
      await Promise.all([...primaries.map((p) => p.flushall()), direct.flushall()]);
    },
    async stop(): Promise<void> {
      for (const redis of [viaProxy, direct, ...primaries, ...(replicas ?? [])]) redis?.disconnect();
      await stopServers();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Keys by shard (the even split above)

/** The shard index owning `slot`. */
export function ownerOfSlot(slot: number): number {
  return SLOT_RANGES.findIndex(([from, to]) => slot >= from && slot <= to);
}

/** The shard index owning the slot of `key` (hash tags honoured). */
export function ownerOf(key: string | Buffer): number {
  return ownerOfSlot(calculateSlot(key as string));
}

/** The first `count` keys `prefix<n>` whose owner is `shard`. */
export function keysOnShard(shard: number, prefix: string, count: number): string[] {
  const keys: string[] = [];
  for (let n = 0; keys.length < count; n++) {
    if (ownerOf(`${prefix}${n}`) === shard) keys.push(`${prefix}${n}`);
  }
  return keys;
}

/** `count` keys on each shard, interleaved so every shard appears early: s1, s2, s3, s1, ... */
export function keysOnEveryShard(prefix: string, count: number): string[] {
  const perShard = Array.from({ length: SHARD_COUNT }, (_, s) => keysOnShard(s, prefix, count));
  return Array.from({ length: count }, (_, i) => perShard.map((keys) => keys[i]!)).flat();
}

/** One key (or channel, or hash tag) per shard, in shard order. */
export function onePerShard(prefix: string): string[] {
  return keysOnEveryShard(prefix, 1);
}
