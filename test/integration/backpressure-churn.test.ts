import { connect as netConnect, type Socket } from 'node:net';
import * as fs from 'node:fs';
import Redis from 'ioredis';
import RedisParser from 'redis-parser';
import { beforeAll, describe, expect, it } from 'vitest';
import { findFreePort } from '../../src/cli/local-redis';
import { encodeCommand } from '../helpers/proxy-harness';
import { seededRandom } from '../helpers/seeded-random';
import { tagsFor } from '../migration/contended-load';
import { checkPlacement, loadKeys, ownerFromStateFile, sleep, slotOf, startLoad, useMigrationDeployment } from '../migration/migration-harness';

/**
 * Back-pressure and memory under churn: slow and stalled readers, big values, a reshard and a
 * failover at once, through one proxy (3 shards x 1 replica, minReplicaAcks 1 so an
 * acknowledged write survives the failover; noReplicaWrites accept, as s1 has no replica left).
 *
 * - Slow readers (raw sockets): each writes 60,000-150,000 pipelined INCR/SET/GET on keys of
 *   every shard (s1's moving and staying slots, s2, s3) in one go, reads nothing for a while,
 *   then reads every reply: each must be there, in order, and right (INCR replies per key
 *   grow by one, a GET reads the reader's own SET before it).
 * - A stalled reader: 400 pipelined GETs of a 1 MB value on s3, not read until the end (the
 *   proxy holds at most 256 of its replies: docs/performance.md "Memory"), then every one
 *   checked byte for byte. Paced clients in a process of their own (migration-harness's
 *   startLoad, on every shard) measure latency: on s3, p99 under FAST_P99_MS over the whole run
 *   and while the readers stall, and no command over FAST_MAX_MS once R2's first 256 replies
 *   are in. R2's burst itself is measured and printed, not bounded: the proxy takes up to 256
 *   requests of a client before its first reply, so its 256 x 1 MB replies come through s3's
 *   one shared backend connection ahead of everyone's (0.6-1.6 s here; 3.4 s with 4 MB values,
 *   where Redis alone delays others 0.3 s for 400 x 1 MB), and the proxy holds 256 x the value
 *   size for it (the 8 MB unsent-output limit stops further reads only): the documented bound
 *   is in replies, not bytes.
 * - Big values (3-20 MB, seeded bytes) on slots that migrate s1 -> s2 (moved by the mover's
 *   chunked copy), on s1's staying slots (the failover shard) and on s3: rewritten with SET,
 *   read back with GET, read together with MGET across shards, one grown by APPEND of 64 KB
 *   chunks while it migrates. Every value read must be byte for byte one that was written,
 *   never older than the last one acknowledged before the read; at the end each holds its
 *   last acknowledged value (or a later unacknowledged one), and the appended string is
 *   exactly its acknowledged chunks in order (unacknowledged ones present or not, whole).
 * - Clients that leave in the middle of a 100 MB write (one 100 MB SET, or 100 pipelined 1 MB
 *   SETs): the proxy must not keep that memory, and no cut value may be stored in part.
 * - s1's primary is killed (kill -9) while its slots move; its replica is promoted.
 * Checked: the proxy never exits; the only errors are the documented ones for a failing-over
 * shard, on s1's keys; no key sits on a shard that does not own its slot; the proxy's peak RSS
 * over its start is below MEMORY_BOUND (see there), and its external (Buffer) memory comes back
 * near where it started once the clients have gone.
 */

const SEED = Number(process.env['SEED'] ?? (Date.now() % 1_000_000_007));
const NODE_TIMEOUT_MS = 2_000;
const FAILOVER_WAIT_MS = 5_000;

/** s1 owns 0-5460; a reshard of RESHARD_SLOTS moves its highest slots to s2. */
const RESHARD_SLOTS = 400;
const FIRST_MOVED_SLOT = 5461 - RESHARD_SLOTS;

const MB = 1024 * 1024;
/** R2's value and request count: its unread replies are what the proxy holds for it. */
const STALLED_VALUE_BYTES = 1 * MB;
const STALLED_GETS = 400;
/** Replies a client may have pending before the proxy stops reading it (client-session.ts). */
const MAX_PENDING_REPLIES = 256;
/**
 * The proxy's RSS may rise at most this much over its value before the load. What it holds at
 * most, by design: the stalled reader's 256 pending 1 MB replies (256 MiB); one cut 100 MB
 * request frame at a time (a spanning request is joined once, so up to 2x while it completes:
 * it never completes here, 100 MiB); the big values in flight (an MGET of 40 MB: its pieces and
 * the merged reply, 80 MiB; a 20 MB SET and GET, 40 MiB; the appender and slow readers,
 * small); plus 128 MiB for V8's heap growth and allocator slack. A proxy buffering a slow
 * reader's replies without bound (Twemproxy: +941 MiB for the same reader) or keeping a cut
 * frame per client passes it.
 */
const MEMORY_BOUND = (256 + 100 + 80 + 40 + 128) * MB;
/** After the clients have gone (and a collection): external memory within this of its start. */
const EXTERNAL_SLACK = 96 * MB;
/** Clients of s3 (never hurt, never moving) while readers stall and big values move. */
const FAST_P99_MS = 50;
/** Keys of the paced clients (k:0...), on every shard. */
const LOAD_KEYS = 6_000;
const FAST_MAX_MS = 1_000;

const DOCUMENTED = [/^ERR shard s1 unavailable: /, /^TRYAGAIN shard s1 is failing over; no new primary within 5000 ms$/, /^NOREPLICAS /];

const config: Record<string, unknown> = {
  nodeTimeoutMs: NODE_TIMEOUT_MS,
  failoverWaitMs: FAILOVER_WAIT_MS,
  minReplicaAcks: 1,
  noReplicaWrites: 'accept',
  replicaAckTimeoutMs: 2_000,
  logLevel: 'info',
};

// ------------------------------------------------------------------------------------------
// Values

/** Deterministic bytes for (key, version): a readable header, then seeded noise. */
const valueCache = new Map<string, Buffer>();
function valueOf(key: string, version: number, size: number): Buffer {
  const id = `${key}|v${version}|${size}`;
  const cached = valueCache.get(id);
  if (cached !== undefined) return cached;
  const buf = Buffer.allocUnsafe(size);
  const header = Buffer.from(`${id}|`);
  header.copy(buf, 0);
  let h = SEED;
  for (let i = 0; i < id.length; i++) h = Math.imul(h ^ id.charCodeAt(i), 0x01000193);
  const rnd = seededRandom(h);
  let i = header.length;
  for (; i + 4 <= size; i += 4) buf.writeUInt32LE(Math.floor(rnd() * 4294967296), i);
  for (; i < size; i++) buf[i] = Math.floor(rnd() * 256);
  valueCache.set(id, buf);
  return buf;
}

function describeValue(value: Buffer | null): string {
  if (value === null) return 'null';
  return `${value.length} bytes starting ${JSON.stringify(value.subarray(0, 40).toString('latin1').split('|').slice(0, 3).join('|'))}`;
}

// ------------------------------------------------------------------------------------------
// Per-key expectations (INCR counters and SET/GET registers)

class Expectations {
  readonly violations: string[] = [];
  readonly errors = new Map<string, number>();
  /** Counter key -> last acknowledged reply, unknown outcomes since. */
  readonly counters = new Map<string, { last: number; unknown: number }>();
  /** Register key -> values it may hold now (oldest first; null = absent). */
  readonly registers = new Map<string, (string | null)[]>();

  constructor(private readonly mayFail: (key: string) => boolean) {}

  error(what: string, key: string, message: string): boolean {
    const documented = DOCUMENTED.some((re) => re.test(message)) && this.mayFail(key);
    const label = `${what} ${documented ? '' : '(UNDOCUMENTED) '}${message.slice(0, 90)}`;
    this.errors.set(label, (this.errors.get(label) ?? 0) + 1);
    if (!documented) this.violations.push(`${what} on ${key}: ${message}`);
    return documented;
  }

  incr(key: string, reply: unknown, where: string): void {
    const state = this.counters.get(key) ?? this.counters.set(key, { last: 0, unknown: 0 }).get(key)!;
    if (reply instanceof Error) {
      this.error('INCR', key, reply.message);
      state.unknown++;
      return;
    }
    const n = Number(reply);
    if (!(n > state.last && n - state.last - 1 <= state.unknown)) {
      this.violations.push(`${where}: INCR ${key} answered ${String(reply)} after ${state.last} (${state.unknown} unknown outcomes since)`);
    }
    state.last = Number.isFinite(n) ? n : state.last;
    state.unknown = 0;
  }

  set(key: string, value: string, reply: unknown): void {
    const candidates = this.registers.get(key) ?? this.registers.set(key, [null]).get(key)!;
    if (reply instanceof Error) {
      this.error('SET', key, reply.message);
      candidates.push(value);
      return;
    }
    if (reply !== 'OK') this.violations.push(`SET ${key} answered ${String(reply)}`);
    this.registers.set(key, [value]);
  }

  get(key: string, reply: unknown, where: string): void {
    const candidates = this.registers.get(key) ?? this.registers.set(key, [null]).get(key)!;
    if (reply instanceof Error) {
      this.error('GET', key, reply.message);
      return;
    }
    const value = reply === null ? null : String(reply);
    const at = candidates.lastIndexOf(value);
    if (at < 0) {
      this.violations.push(`${where}: GET ${key} read ${JSON.stringify(value)}, expected one of ${JSON.stringify(candidates)}`);
      return;
    }
    this.registers.set(key, candidates.slice(at));
  }

  /** The final values, read directly: counters within their unknown outcomes, registers one of their candidates. */
  checkFinal(key: string, value: string | null): void {
    const counter = this.counters.get(key);
    if (counter !== undefined) {
      const n = value === null ? 0 : Number(value);
      if (!(n >= counter.last && n <= counter.last + counter.unknown)) {
        this.violations.push(`final ${key} = ${String(value)}, expected ${counter.last}..${counter.last + counter.unknown}`);
      }
      return;
    }
    const candidates = this.registers.get(key);
    if (candidates !== undefined && !candidates.includes(value)) {
      this.violations.push(`final ${key} = ${JSON.stringify(value)}, expected one of ${JSON.stringify(candidates)}`);
    }
  }
}

// ------------------------------------------------------------------------------------------
// Raw pipelined readers

interface RawOp {
  readonly kind: 'incr' | 'set' | 'get';
  readonly key: string;
  readonly value: string;
}

/** Writes every command at once on a socket that reads nothing until `read()`; then collects every reply. */
class SlowReader {
  readonly socket: Socket;
  readonly replies: unknown[] = [];
  #parser: RedisParser;
  #done: Promise<void>;
  #resolve!: () => void;
  #fatal: Error | null = null;

  constructor(
    readonly label: string,
    port: number,
    readonly expected: number,
    payload: Buffer,
    returnBuffers = false,
  ) {
    this.#done = new Promise((resolve) => (this.#resolve = resolve));
    this.#parser = new RedisParser({
      returnBuffers,
      returnReply: (reply: unknown) => this.#push(reply),
      returnError: (err: Error) => this.#push(err),
      returnFatalError: (err: Error) => {
        this.#fatal = err;
        this.#resolve();
      },
    });
    this.socket = netConnect(port, '127.0.0.1');
    this.socket.pause();
    this.socket.on('error', () => undefined);
    this.socket.on('close', () => this.#resolve());
    this.socket.write(payload);
  }

  #push(reply: unknown): void {
    this.replies.push(reply);
    if (this.replies.length >= this.expected) this.#resolve();
  }

  /** Starts reading; resolves once every reply is in (or the socket closed), at most `timeoutMs`. */
  async read(timeoutMs: number): Promise<void> {
    this.socket.on('data', (chunk: Buffer) => this.#parser.execute(chunk));
    this.socket.resume();
    const timer = sleep(timeoutMs);
    await Promise.race([this.#done, timer]);
    if (this.#fatal !== null) throw this.#fatal;
  }

  close(): void {
    this.socket.destroy();
  }
}

function rawOps(rnd: () => number, count: number, reader: string, tags: readonly string[]): RawOp[] {
  const ops: RawOp[] = [];
  for (let i = 0; i < count; i++) {
    const tag = tags[Math.floor(rnd() * tags.length)]!;
    const n = Math.floor(rnd() * 4);
    const r = rnd();
    if (r < 0.5) ops.push({ kind: 'incr', key: `{${tag}}:${reader}:ctr:${n}`, value: '' });
    else if (r < 0.75) ops.push({ kind: 'set', key: `{${tag}}:${reader}:reg:${n}`, value: `${reader}:${i}` });
    else ops.push({ kind: 'get', key: `{${tag}}:${reader}:reg:${n}`, value: '' });
  }
  return ops;
}

function encodeOps(ops: readonly RawOp[]): Buffer {
  return Buffer.concat(ops.map((op) => encodeCommand(op.kind === 'incr' ? ['INCR', op.key] : op.kind === 'set' ? ['SET', op.key, op.value] : ['GET', op.key])));
}

// ------------------------------------------------------------------------------------------
// The proxy's memory

function rssOf(pid: number): { rss: number; hwm: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

async function metric(metrics: string, name: string): Promise<number> {
  const text = await (await fetch(`http://${metrics}/metrics`)).text();
  return Number(new RegExp(`^${name} (\\S+)`, 'm').exec(text)?.[1] ?? NaN);
}

async function externalMemory(metrics: string): Promise<number> {
  return metric(metrics, 'slotproxy_nodejs_external_memory_bytes');
}

// ------------------------------------------------------------------------------------------

// An extended stress test, left out of the suite for its time (SLOTPROXY_STRESS=1 runs it):
// test/integration/slow-reader.test.ts checks the memory bound of a reader that stalls in every run.
describe.runIf(process.env['SLOTPROXY_STRESS'] === '1')('back-pressure and memory: slow readers, big values, a reshard and a failover at once', () => {
  beforeAll(async () => {
    config['metrics'] = `127.0.0.1:${await findFreePort()}`;
  });
  const deployment = useMigrationDeployment({ shards: 3, replicas: 1, config });

  it('keeps every reply in order and right, every acknowledged write, and bounded memory', async () => {
    const startedAt = Date.now();
    console.log(`backpressure-churn seed ${SEED} (SEED=${SEED} to replay)`);
    const rnd = seededRandom(SEED);
    const { proxy, shards } = deployment;
    const port = proxy.port;
    const metrics = String(config['metrics']);
    const closers: (() => void)[] = [];
    const open = (): Redis => {
      const redis = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 0 });
      redis.on('error', () => undefined);
      closers.push(() => redis.disconnect());
      return redis;
    };
    const timeline: string[] = [];
    const mark = (what: string): void => void timeline.push(`+${Date.now() - startedAt} ms ${what}`);

    try {
      // Slots: moving (s1 -> s2), s1 staying (fails over), s2, s3.
      const [mv1, mv2, mv3, mv4, st1, st2, s2a, s3a, s3b, s3c] = tagsFor([5100, 5200, 5300, 5400, 100, 2000, 7000, 13000, 14000, 15000]);
      const s1Origin = (key: string): boolean => slotOf(key) <= 5460;
      const expect1 = new Expectations(s1Origin);

      const control = open();
      await control.ping();
      const before = rssOf(proxy.pid);
      const externalBefore = await externalMemory(metrics);

      // --- Big values, written through the proxy.
      const BIG = [
        { key: `{${mv4}}:big20`, size: 20 * MB },
        { key: `{${mv3}}:big12`, size: 12 * MB },
        { key: `{${st2}}:big5`, size: 5 * MB },
        { key: `{${s3a}}:big3`, size: 3 * MB },
      ];
      const bigAcked = new Map<string, number>();
      const bigUnknown = new Map<string, number[]>();
      const bigSent = new Map<string, number>();
      for (const b of BIG) {
        expect(await control.set(b.key, valueOf(b.key, 0, b.size))).toBe('OK');
        bigAcked.set(b.key, 0);
        bigSent.set(b.key, 0);
      }
      const appendKey = `{${mv2}}:app`;
      const appendBase = valueOf(appendKey, 0, 3 * MB);
      expect(await control.set(appendKey, appendBase)).toBe('OK');
      const stalledKey = `{${s3b}}:stalled`;
      const stalledValue = valueOf(stalledKey, 0, STALLED_VALUE_BYTES);
      expect(await control.set(stalledKey, stalledValue)).toBe('OK');
      mark('big values written');

      // --- Clients that leave in the middle of a 100 MB write.
      const cutKeys: { key: string; value: Buffer }[] = [];
      const cutPayload = (kind: 'frame' | 'pipeline', tag: string, c: number): Buffer => {
        let payload: Buffer;
        if (kind === 'frame') {
          const key = `{${tag}}:cut:${c}:frame`;
          const value = Buffer.alloc(100 * MB, c);
          cutKeys.push({ key, value });
          payload = encodeCommand(['SET', key, value]);
        } else {
          const parts: Buffer[] = [];
          for (let i = 0; i < 100; i++) {
            const key = `{${tag}}:cut:${c}:${i}`;
            const value = Buffer.alloc(MB, (c * 31 + i) % 251);
            cutKeys.push({ key, value });
            parts.push(encodeCommand(['SET', key, value]));
          }
          payload = Buffer.concat(parts);
        }
        return payload;
      };
      // --- Paced clients in a process of their own (latency, acknowledged values), on every shard.
      await loadKeys(shards.primaries, LOAD_KEYS);
      const load = await startLoad(port, { clients: 4, opsPerSecond: 2_000, keys: LOAD_KEYS });
      const loadStarted = Date.now();
      await sleep(700);
      // R3's and the cutters' payloads, made now: the test process's own work must not land in the phases below.
      const r3Ops = rawOps(rnd, 150_000, 'r3', [mv1!, mv2!, mv3!, st1!, st2!, s3c!]);
      const r3Payload = encodeOps(r3Ops);
      const r1Ops = rawOps(rnd, 100_000, 'r1', [mv1!, mv2!, mv3!, st1!, st2!, s2a!, s3a!, s3c!]);
      const r1Payload = encodeOps(r1Ops);
      const cutPayloads = [cutPayload('frame', s3c!, 0), cutPayload('pipeline', s3c!, 1), cutPayload('frame', mv1!, 2), cutPayload('pipeline', st1!, 3)];

      // --- R2: the stalled reader (never reads until the end).
      const stalled = new SlowReader('R2', port, STALLED_GETS, Buffer.concat(Array.from({ length: STALLED_GETS }, () => encodeCommand(['GET', stalledKey]))), true);
      closers.push(() => stalled.close());

      const r2Started = Date.now();
      mark('stalled reader R2 sent its GETs');
      let isRunning = true;
      // A GET of another s3 key through the proxy queues behind R2's GETs on s3's shared backend
      // connection: once it is answered, the proxy has taken in R2's first 256 replies.
      await sleep(50);
      expect((await control.getBuffer(`{${s3b}}:after-burst`)) ?? 'absent').toBe('absent');
      const r2BurstEnd = Date.now();
      mark(`R2's replies in: RSS +${((rssOf(proxy.pid).rss - before.rss) / MB).toFixed(0)} MiB`);
      await sleep(300);

      // --- R1: a slow reader of 100,000 small commands on every kind of slot.
      const r1 = new SlowReader('R1', port, r1Ops.length, r1Payload);
      closers.push(() => r1.close());
      await sleep(1_500);
      const stalledWindow = [r2BurstEnd, Date.now()] as const;
      const whileStalled = rssOf(proxy.pid);
      mark(`readers stalled: RSS +${((whileStalled.rss - before.rss) / MB).toFixed(0)} MiB`);
      const r1Read = r1.read(20_000);

      // --- Big value load: SET/GET rewrites, MGET across shards, APPEND growth.
      const bigCheck = (key: string, got: Buffer | null, minVersion: number, where: string): void => {
        const b = BIG.find((x) => x.key === key)!;
        const sent = bigSent.get(key)!;
        for (let v = sent; v >= minVersion; v--) if (got !== null && got.equals(valueOf(key, v, b.size))) return;
        expect1.violations.push(`${where}: ${key} read ${describeValue(got)}, expected a version in ${minVersion}..${sent} (${b.size} bytes)`);
      };
      const bigWriter = async (): Promise<void> => {
        const client = open();
        for (let round = 1; isRunning; round++) {
          for (const b of BIG.slice(1, 3)) {
            const version = round;
            bigSent.set(b.key, version);
            try {
              const reply = await client.set(b.key, valueOf(b.key, version, b.size));
              if (reply !== 'OK') expect1.violations.push(`SET ${b.key} answered ${reply}`);
              bigAcked.set(b.key, version);
              bigUnknown.set(b.key, []);
            } catch (err) {
              expect1.error('SET big', b.key, (err as Error).message);
              (bigUnknown.get(b.key) ?? bigUnknown.set(b.key, []).get(b.key)!).push(version);
            }
            const min = bigAcked.get(b.key)!;
            try {
              bigCheck(b.key, await client.getBuffer(b.key), min, 'GET');
            } catch (err) {
              expect1.error('GET big', b.key, (err as Error).message);
            }
          }
          await sleep(100);
        }
      };
      const mgetReader = async (): Promise<number> => {
        const client = open();
        let reads = 0;
        while (isRunning) {
          const mins = BIG.map((b) => bigAcked.get(b.key)!);
          try {
            const values = await client.mgetBuffer(...BIG.map((b) => b.key));
            values.forEach((v, i) => bigCheck(BIG[i]!.key, v, mins[i]!, 'MGET'));
            reads++;
          } catch (err) {
            expect1.error('MGET big', BIG[0]!.key, (err as Error).message);
          }
          await sleep(50);
        }
        return reads;
      };
      // APPEND: 64 KB chunks, 4 per pipeline; replies must grow by exactly the chunk each time (or by unknown ones too).
      const chunks: { chunk: Buffer; acked: boolean }[] = [];
      const appender = async (): Promise<void> => {
        const client = open();
        let length = appendBase.length;
        let unknownBytes = 0;
        for (let n = 0; isRunning; ) {
          const pipeline = client.pipeline();
          const mine: number[] = [];
          for (let i = 0; i < 4; i++, n++) {
            const chunk = valueOf(`${appendKey}#${n}`, 0, 64 * 1024);
            chunks.push({ chunk, acked: false });
            mine.push(chunks.length - 1);
            pipeline.append(appendKey, chunk);
          }
          const results = (await pipeline.exec().catch((err: Error) => mine.map(() => [err, null] as [Error, null]))) ?? [];
          mine.forEach((index, i) => {
            const [err, reply] = results[i] ?? [new Error('no reply'), null];
            const size = chunks[index]!.chunk.length;
            if (err !== null) {
              expect1.error('APPEND', appendKey, err.message);
              unknownBytes += size;
              return;
            }
            const got = Number(reply);
            if (!(got >= length + size && got <= length + size + unknownBytes && (got - length - size) % size === 0)) {
              expect1.violations.push(`APPEND #${index} answered ${got} after ${length} (+${size}, ${unknownBytes} unknown bytes since)`);
            }
            chunks[index]!.acked = true;
            length = got;
            unknownBytes = 0;
          });
          await sleep(20);
        }
      };
      const loads = [bigWriter(), mgetReader(), appender()];

      // --- The reshard, then kill -9 of s1's primary while it runs.
      const submitted = await proxy.submit({ op: 'reshard', from: 's1', to: 's2', slots: RESHARD_SLOTS });
      expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
      mark('reshard submitted');
      // R3: a slow reader of 150,000 commands on the moving and failing-over slots, sent now.
      const r3 = new SlowReader('R3', port, r3Ops.length, r3Payload);
      closers.push(() => r3.close());

      const cutter = async (payload: Buffer, c: number): Promise<number> => {
        const socket = netConnect(port, '127.0.0.1');
        socket.on('error', () => undefined);
        closers.push(() => socket.destroy());
        await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
        const cutAt = Math.floor(payload.length * (0.4 + rnd() * 0.3));
        let sent = 0;
        while (sent < cutAt) {
          const slice = payload.subarray(sent, Math.min(cutAt, sent + MB));
          sent += slice.length;
          if (!socket.write(slice)) await new Promise((resolve) => socket.once('drain', resolve));
        }
        if (c % 2 === 0) socket.resetAndDestroy();
        else socket.destroy();
        return sent;
      };
      await sleep(300);
      const r3Read = (async () => {
        await sleep(700);
        await r3.read(20_000);
      })();
      const cuts = (async () => {
        const sent: number[] = [];
        for (const [c, payload] of cutPayloads.entries()) sent.push(await cutter(payload, c));
        return sent;
      })();

      // Kill s1's primary once slots are moving.
      for (const deadline = Date.now() + 10_000; ; await sleep(20)) {
        const status = await proxy.status();
        if ((status.progress?.slotsDone ?? 0) >= 20 || status.state !== 'running' || Date.now() > deadline) {
          mark(`kill -9 s1 primary (plan ${status.state}, ${status.progress?.slotsDone ?? 0} slots done, ${status.progress?.bigKeysMoved ?? 0} big keys)`);
          break;
        }
      }
      const killedPrimary = shards.primaries[0]!;
      const promoted = shards.replicas[0]![0]!;
      killedPrimary.kill('SIGKILL');

      const planStatus = await proxy.waitForPlan(40_000);
      mark(`plan ${planStatus.state} (${planStatus.progress?.keysMoved} keys, ${planStatus.progress?.bigKeysMoved} big keys, errors ${JSON.stringify(planStatus.progress?.errors)})`);
      const cutSent = await cuts;
      mark(`cut writers gone after ${cutSent.map((s) => (s / MB).toFixed(0)).join(', ')} MB`);
      await Promise.all([r1Read, r3Read]);
      mark(`slow readers read: R1 ${r1.replies.length}/${r1Ops.length}, R3 ${r3.replies.length}/${r3Ops.length}`);
      isRunning = false;
      const [, mgetReads] = await Promise.all([loads[0], loads[1], loads[2]]);
      const loadReport = await load.stop();
      const loadStopped = Date.now();
      const peakBeforeStalledRead = rssOf(proxy.pid);
      const lagMaxMs = (await metric(metrics, 'slotproxy_nodejs_eventloop_lag_max_seconds')) * 1000;

      // R2 reads now: every one of its 400 replies, whole and in order.
      await stalled.read(20_000);
      mark(`stalled reader read ${stalled.replies.length}/${STALLED_GETS}`);
      let stalledWrong = 0;
      for (const reply of stalled.replies) if (!(Buffer.isBuffer(reply) && reply.equals(stalledValue))) stalledWrong++;

      // --- Replies of the slow readers, in order.
      for (const [reader, ops] of [
        [r1, r1Ops],
        [r3, r3Ops],
      ] as const) {
        expect(reader.replies.length, `${reader.label} replies`).toBe(ops.length);
        ops.forEach((op, i) => {
          const reply = reader.replies[i];
          if (op.kind === 'incr') expect1.incr(op.key, reply, `${reader.label} #${i}`);
          else if (op.kind === 'set') expect1.set(op.key, op.value, reply);
          else expect1.get(op.key, reply, `${reader.label} #${i}`);
        });
      }

      // --- Final state, on the shards directly.
      expect(proxy.pid).toBeGreaterThan(0);
      const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
      expect(migrations).toBe(0);
      for (let slot = FIRST_MOVED_SLOT; slot <= 5460; slot++) expect(owner[slot], `slot ${slot}`).toBe('s2');
      const nodes = [
        { name: 's1', node: promoted },
        { name: 's2', node: shards.primaries[1]! },
        { name: 's3', node: shards.primaries[2]! },
      ];
      const direct = new Map(nodes.map((n) => [n.name, new Redis({ host: n.node.host, port: n.node.port })]));
      for (const d of direct.values()) closers.push(() => d.disconnect());
      const misplaced: string[] = [];
      const where = new Map<string, string>();
      for (const [name, d] of direct) {
        let cursor = '0';
        do {
          const [next, keys] = await d.scan(cursor, 'COUNT', 1000);
          cursor = next;
          for (const key of keys) {
            if (owner[slotOf(key)] !== name) misplaced.push(`${key} on ${name}, slot ${slotOf(key)} owned by ${owner[slotOf(key)]}`);
            if (where.has(key)) misplaced.push(`${key} on ${where.get(key)} and ${name}`);
            where.set(key, name);
          }
        } while (cursor !== '0');
      }
      const loadPlacement = await checkPlacement(nodes, owner, LOAD_KEYS, load.expected);
      const readDirect = async (key: string): Promise<Buffer | null> => direct.get(owner[slotOf(key)]!)!.getBuffer(key);
      for (const key of [...expect1.counters.keys(), ...expect1.registers.keys()]) {
        const value = await readDirect(key);
        expect1.checkFinal(key, value === null ? null : value.toString());
      }
      for (const b of BIG) {
        const got = await readDirect(b.key);
        const ok = [bigAcked.get(b.key)!, ...(bigUnknown.get(b.key) ?? [])].some((v) => got !== null && got.equals(valueOf(b.key, v, b.size)));
        if (!ok) expect1.violations.push(`final ${b.key}: ${describeValue(got)}, expected version ${bigAcked.get(b.key)} (or ${JSON.stringify(bigUnknown.get(b.key) ?? [])})`);
      }
      // The appended string: the base, then the chunks in order, each acknowledged one present.
      const appended = await readDirect(appendKey);
      let at = 0;
      if (appended === null || !appended.subarray(0, appendBase.length).equals(appendBase)) {
        expect1.violations.push(`${appendKey}: base lost (${describeValue(appended)})`);
      } else {
        at = appendBase.length;
        for (const [i, { chunk, acked }] of chunks.entries()) {
          const here = appended.subarray(at, at + chunk.length).equals(chunk);
          if (here) at += chunk.length;
          else if (acked) {
            expect1.violations.push(`${appendKey}: acknowledged chunk #${i} not at ${at} (found ${describeValue(appended.subarray(at, at + 40))})`);
            break;
          }
        }
        if (at !== appended.length) expect1.violations.push(`${appendKey}: ${appended.length - at} bytes past the last chunk found (at ${at})`);
      }
      // Cut writes: absent, or whole.
      let cutStored = 0;
      for (const { key, value } of cutKeys) {
        const got = await readDirect(key);
        if (got === null) continue;
        cutStored++;
        if (!got.equals(value)) expect1.violations.push(`cut write ${key} stored ${got.length} bytes, not its ${value.length}`);
      }

      // --- Memory: peak, and what is left once the clients have gone.
      stalled.close();
      for (const close of closers.splice(0)) close();
      const peak = rssOf(proxy.pid);
      // Big allocations make V8 collect (external memory pressure), freeing what nothing holds.
      const nudge = open();
      for (let i = 0; i < 4; i++) await nudge.getBuffer(BIG[0]!.key);
      await sleep(300);
      const externalAfter = await externalMemory(metrics);
      const after = rssOf(proxy.pid);
      const nudgeCheck = async (): Promise<string> => {
        try {
          return await nudge.ping();
        } finally {
          nudge.disconnect();
        }
      };

      const onS3 = (slot: number): boolean => slot >= 10923;
      const p99Stalled = loadReport.p99(stalledWindow[0], stalledWindow[1], onS3);
      const p99Burst = loadReport.p99(r2Started, r2BurstEnd, onS3);
      const maxBurst = loadReport.max(r2Started, r2BurstEnd, onS3);
      const p99Before = loadReport.p99(loadStarted, r2Started, onS3);
      const p99All = loadReport.p99(loadStarted, loadStopped, onS3);
      const maxAll = loadReport.max(loadStarted, loadStopped, onS3);
      const maxAfterBurst = loadReport.max(r2BurstEnd, loadStopped, onS3);
      const slowS3 = loadReport.slow(loadStarted, loadStopped, 50).filter((x) => onS3(x.slot));
      const logs = proxy.logs();
      const proxyWarnings = logs.split('\n').filter((l) => /"level":"(warn|error)"/.test(l)).slice(0, 15);
      console.log(
        [
          `backpressure-churn seed ${SEED}: ${Date.now() - startedAt} ms`,
          ...timeline.map((t) => `  ${t}`),
          `  paced load (own process): ${loadReport.ops} commands, ${loadReport.errorCount} errors; on s3 keys p99 before ${p99Before} ms, during R2's burst ${p99Burst} ms (max ${maxBurst}), readers stalled ${p99Stalled} ms, whole run ${p99All} ms (max ${maxAll}, after R2's burst ${maxAfterBurst})`,
          `  s3 commands over 50 ms: ${slowS3.length}: ${slowS3.slice(0, 12).map((x) => `+${x.wall - startedAt}:${Math.round(x.ms)}ms`).join(' ')}`,
          `  proxy event loop lag max ${lagMaxMs.toFixed(0)} ms; MGET reads ${mgetReads}; APPEND chunks ${chunks.length} (${chunks.filter((c) => c.acked).length} acked)`,
          `  load errors: ${loadReport.errors.slice(0, 5).join(' | ')}`,
          `  load keys: missing ${loadPlacement.missing.length}, wrong ${loadPlacement.wrongValues.length}, stale reads ${loadReport.staleReads.length}`,
          `  RSS: before ${(before.rss / MB).toFixed(0)} MiB, while stalled ${(whileStalled.rss / MB).toFixed(0)}, before R2 read ${(peakBeforeStalledRead.rss / MB).toFixed(0)}, peak (VmHWM) ${(peak.hwm / MB).toFixed(0)}, after ${(after.rss / MB).toFixed(0)}; external memory ${(externalBefore / MB).toFixed(0)} -> ${(externalAfter / MB).toFixed(0)} MiB`,
          `  cut writes stored whole: ${cutStored} of ${cutKeys.length}; stalled reader wrong replies: ${stalledWrong}`,
          '  errors seen:',
          ...[...expect1.errors].map(([label, n]) => `    ${n} x ${label}`),
          `  misplaced: ${misplaced.length}`,
          ...(proxyWarnings.length === 0 ? [] : ['  proxy warnings:', ...proxyWarnings.map((w) => `    ${w.slice(0, 300)}`)]),
          `  violations (${expect1.violations.length}):`,
          ...expect1.violations.slice(0, 30).map((v) => `    ${v}`),
        ].join('\n'),
      );

      expect(logs).not.toMatch(/"level":"error"/);
      expect(planStatus.state, planStatus.error ?? '').toBe('done');
      expect(stalled.replies.length).toBe(STALLED_GETS);
      expect(stalledWrong).toBe(0);
      expect(misplaced.slice(0, 10)).toEqual([]);
      expect(expect1.violations.slice(0, 20)).toEqual([]);
      expect(mgetReads).toBeGreaterThan(0);
      expect(chunks.filter((c) => c.acked).length).toBeGreaterThan(0);
      // The stalled reader held at most its 256 replies: the proxy's RSS stayed within the bound.
      expect(peak.hwm - before.rss).toBeLessThan(MEMORY_BOUND);
      expect(whileStalled.rss - before.rss).toBeLessThan((MAX_PENDING_REPLIES + 128) * MB);
      expect(externalAfter - externalBefore).toBeLessThan(EXTERNAL_SLACK);
      // Others stay fast while readers stall (after the stalled reader's 256 replies have come in).
      expect(p99Stalled).toBeLessThan(FAST_P99_MS);
      expect(p99All).toBeLessThan(FAST_P99_MS);
      // R2's burst itself (256 x 1 MB through s3's one shared connection) holds s3's other
      // clients for as long as it takes to move: measured and printed, not bounded here (see the
      // header). After it, no command on s3 waits long, whatever else happens.
      expect(maxAfterBurst).toBeLessThan(FAST_MAX_MS);
      // The proxy is still there, and answers.
      expect(() => process.kill(proxy.pid, 0)).not.toThrow();
      expect(await nudgeCheck()).toBe('PONG');
      // The paced clients: only documented errors, on s1's keys; every acknowledged write read back.
      expect(loadReport.errors.filter((e) => !(slotOf(e.slice(0, e.indexOf(': '))) <= 5460 && DOCUMENTED.some((re) => re.test(e.slice(e.indexOf(': ') + 2))))).slice(0, 5)).toEqual([]);
      expect(loadReport.staleReads.slice(0, 5)).toEqual([]);
      expect(loadPlacement.missing.slice(0, 5)).toEqual([]);
      expect(loadPlacement.wrongValues.slice(0, 5)).toEqual([]);
      expect(loadPlacement.misplaced.slice(0, 5)).toEqual([]);
    } finally {
      for (const close of closers) close();
    }
  }, 60_000);
});
