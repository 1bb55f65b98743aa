import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startRedisServer, waitForReplication, type LocalRedis } from '../../src/cli/local-redis';

/** How long a new replica may take to finish its first sync. */
const REPLICATION_TIMEOUT_MS = 10_000;

/** Whether a process with this PID exists (signal 0 checks without sending anything). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export interface ShardsOptions {
  /** Replicas per primary. @default 0 */
  readonly replicas?: number;
  /** @default false */
  readonly appendonly?: boolean;
  /** requirepass (and masterauth) on every server. @default none */
  readonly password?: string;
}

export interface Shards {
  /** One primary per shard, in shard order. */
  readonly primaries: readonly LocalRedis[];
  /** `replicas[i]` are the replicas of `primaries[i]`, already linked. */
  readonly replicas: readonly (readonly LocalRedis[])[];
  /** Stop every server by PID and remove the temp folder; safe to call twice. */
  stopAll(): Promise<void>;
}

export interface SingleRedis {
  /** A plain Redis to compare the proxy's replies with. */
  readonly redis: LocalRedis;
  stopAll(): Promise<void>;
}

/** n primaries on free loopback ports, each with `replicas` replicas linked to it. */
export async function startShards(n: number, options: ShardsOptions = {}): Promise<Shards> {
  const replicaCount = options.replicas ?? 0;
  const appendonly = options.appendonly ?? false;
  const password = options.password === undefined ? {} : { password: options.password };
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'slotproxy-shards-'));
  const primaries: LocalRedis[] = [];
  const replicas: LocalRedis[][] = [];
  let isStopped = false;
  const stopAll = async (): Promise<void> => {
    if (isStopped) return;
    isStopped = true;
    // Replicas first: a primary with no replica left shuts down without waiting for one to catch up.
    const stoppedReplicas = await Promise.allSettled(replicas.flat().map((replica) => replica.stop()));
    const stoppedPrimaries = await Promise.allSettled(primaries.map((primary) => primary.stop()));
    fs.rmSync(root, { recursive: true, force: true });
    throwFirstRejection([...stoppedReplicas, ...stoppedPrimaries]);
  };

  try {
    const started = await Promise.allSettled(
      Array.from({ length: n }, (_, i) => startRedisServer({ dir: path.join(root, `p${i}`), appendonly, ...password })),
    );
    primaries.push(...fulfilled(started));
    throwFirstRejection(started);
    for (const [i, primary] of primaries.entries()) {
      const startedReplicas = await Promise.allSettled(
        Array.from({ length: replicaCount }, (_, j) =>
          startRedisServer({
            dir: path.join(root, `p${i}-r${j}`),
            appendonly,
            ...password,
            replicaOf: { host: primary.host, port: primary.port },
          }),
        ),
      );
      replicas.push(fulfilled(startedReplicas));
      throwFirstRejection(startedReplicas);
    }
    await Promise.all(replicas.flat().map((replica) => waitForReplication(replica, REPLICATION_TIMEOUT_MS)));
  } catch (err) {
    // The start failure is the news; a failed stop here would only hide it.
    await stopAll().catch(() => undefined);
    throw err;
  }
  return { primaries, replicas, stopAll };
}

/** One standalone Redis in its own temp folder. */
export async function startSingleRedis(options: { readonly appendonly?: boolean } = {}): Promise<SingleRedis> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'slotproxy-redis-'));
  let redis: LocalRedis;
  try {
    redis = await startRedisServer({ dir: root, appendonly: options.appendonly ?? false });
  } catch (err) {
    fs.rmSync(root, { recursive: true, force: true });
    throw err;
  }
  let isStopped = false;
  return {
    redis,
    async stopAll(): Promise<void> {
      if (isStopped) return;
      isStopped = true;
      await redis.stop();
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
}

function fulfilled<T>(results: readonly PromiseSettledResult<T>[]): T[] {
  return results.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
}

/** allSettled, not all: every server that did start is kept so stopAll can stop it. */
function throwFirstRejection(results: readonly PromiseSettledResult<unknown>[]): void {
  for (const result of results) {
    if (result.status === 'rejected') throw result.reason;
  }
}
