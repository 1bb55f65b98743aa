import Redis from 'ioredis';
import { expect } from 'vitest';
import { ownerFromStateFile, sleep, slotOf, type MigrationProxy, type ShardSpec } from './migration-harness';

/**
 * What the contended-load tests share (contended-keys, contended-sessions): many clients on the
 * same keys of slots that move back and forth, whose replies per key must grow in each client's
 * send order.
 */

/** A hash tag (`t<n>`) for each of `slots`. */
export function tagsFor(slots: readonly number[]): string[] {
  const wanted = new Set(slots);
  const found = new Map<number, string>();
  for (let n = 0; found.size < wanted.size; n++) {
    const slot = slotOf(`{t${n}}`);
    if (wanted.has(slot) && !found.has(slot)) found.set(slot, `t${n}`);
  }
  return slots.map((slot) => found.get(slot)!);
}

/** Runs one reshard of `slots` slots and waits for it; returns the highest slotsMigrating seen and the plan's progress. */
export async function runReshard(
  proxy: MigrationProxy,
  from: string,
  to: string,
  slots: number,
): Promise<{ maxMigrating: number; keysMoved: number; state: string; error: string | null }> {
  const submitted = await proxy.submit({ op: 'reshard', from, to, slots });
  expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
  let maxMigrating = 0;
  const deadline = Date.now() + 30_000;
  for (;;) {
    const status = await proxy.status();
    maxMigrating = Math.max(maxMigrating, status.slotsMigrating);
    if (status.state !== 'running') return { maxMigrating, keysMoved: status.progress?.keysMoved ?? -1, state: status.state, error: status.error };
    if (Date.now() > deadline) throw new Error(`plan ${from} -> ${to} did not finish in 30 s: ${JSON.stringify(status)}`);
    await sleep(25);
  }
}

/** The index of the first value not above the one before it; -1 when they all grow. */
export function firstDecrease(values: readonly number[]): number {
  for (let i = 1; i < values.length; i++) if (!(values[i]! > values[i - 1]!)) return i;
  return -1;
}

/** Where `values` first stop growing, with a few neighbours: `... 609 610 [607] 623 ...`. */
export function around(values: readonly number[]): string {
  const at = firstDecrease(values);
  const from = Math.max(0, at - 3);
  const shown = values.slice(from, at + 3).map((v, i) => (from + i === at ? `[${v}]` : String(v)));
  return `${from > 0 ? '... ' : ''}${shown.join(' ')}${at + 3 < values.length ? ' ...' : ''} (${values.filter((v, i) => i > 0 && !(v > values[i - 1]!)).length} decreases in ${values.length})`;
}

/** `map[k]` as a list, made when absent. */
export function listOf<K, V>(map: Map<K, V[]>, k: K): V[] {
  let list = map.get(k);
  if (list === undefined) map.set(k, (list = []));
  return list;
}

/**
 * What `read` finds for the keys of `tags` on the shard that owns each tag's slot, by the state
 * file (which must show no slot migrating any more); the same read through the proxy (`client`)
 * must find the same.
 */
export async function readOnOwners(
  client: Redis,
  proxy: MigrationProxy,
  specs: readonly ShardSpec[],
  tags: readonly string[],
  read: (redis: Redis, tags: readonly string[]) => Promise<Map<string, unknown>>,
): Promise<Map<string, unknown>> {
  const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
  expect(migrations).toBe(0);
  const viaProxy = await read(client, tags);
  const direct = new Map<string, unknown>();
  const shardClients = new Map(specs.map((spec) => [spec.name, new Redis({ host: spec.node.host, port: spec.node.port })]));
  try {
    for (const [name, redis] of shardClients) {
      const mine = tags.filter((tag) => owner[slotOf(`{${tag}}`)] === name);
      for (const [k, v] of await read(redis, mine)) direct.set(k, v);
    }
  } finally {
    for (const redis of shardClients.values()) redis.disconnect();
  }
  const differing = [...viaProxy.keys()].filter((k) => JSON.stringify(viaProxy.get(k)) !== JSON.stringify(direct.get(k)));
  expect.soft(differing.slice(0, 10).map((k) => `${k}: proxy ${JSON.stringify(viaProxy.get(k))}, shard ${JSON.stringify(direct.get(k))}`), 'keys read differently through the proxy').toEqual([]);
  return direct;
}

/** A command sent in a pipeline, as a stress client records its outcome. */
export interface PipelinedOutcome {
  isAnswered: boolean;
  error?: string | null;
  reply?: unknown;
}

/**
 * Runs `pipeline` and records each command's outcome on `batch` (same order): its reply or error,
 * or for all of them the pipeline's own failure (a lost connection: outcome unknown).
 */
export async function recordPipeline(pipeline: { exec(): Promise<[Error | null, unknown][] | null> }, batch: readonly PipelinedOutcome[]): Promise<void> {
  let results: [Error | null, unknown][] | null;
  try {
    results = await pipeline.exec();
  } catch (err) {
    for (const s of batch) {
      s.isAnswered = true;
      s.error = `pipeline: ${(err as Error).message}`;
    }
    return;
  }
  batch.forEach((s, i) => {
    const [err, reply] = results?.[i] ?? [new Error('no reply'), null];
    s.isAnswered = true;
    if (err !== null) s.error = err.message;
    else s.reply = reply;
  });
}

/** Sends batches (`inFlight` at a time, `pauseMs` apart) until `isStopped()`; resolves once all are answered. */
export async function runPipelines(sendBatch: () => Promise<void>, isStopped: () => boolean, inFlight: number, pauseMs: number): Promise<void> {
  const pending = new Set<Promise<void>>();
  while (!isStopped()) {
    const batch = sendBatch().finally(() => pending.delete(batch));
    pending.add(batch);
    if (pending.size >= inFlight) await Promise.race(pending);
    await sleep(pauseMs);
  }
  await Promise.all(pending);
}

/** One of `tags`; with a chance of `hotShare`, one of `hot` instead when there are any (the slots migrating now). */
export function pickTag(random: () => number, hot: readonly string[], tags: readonly string[], hotShare: number): string {
  const from = hot.length > 0 && random() < hotShare ? hot : tags;
  return from[Math.floor(random() * from.length)]!;
}

/** 2..max distinct values of `pick`. */
export function pickDistinct(random: () => number, max: number, pick: () => string): string[] {
  const n = 2 + Math.floor(random() * (max - 1));
  const chosen = new Set<string>();
  while (chosen.size < n) chosen.add(pick());
  return [...chosen];
}

/** One of the weighted kinds (`total` the weights' sum), `fallback` past the last. */
export function pickWeighted<K>(random: () => number, weights: readonly (readonly [K, number])[], total: number, fallback: K): K {
  let r = random() * total;
  for (const [kind, w] of weights) {
    r -= w;
    if (r < 0) return kind;
  }
  return fallback;
}
