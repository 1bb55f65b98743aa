import * as fs from 'node:fs';
import * as net from 'node:net';
import RedisParser from 'redis-parser';
import type Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, ownerOf, SHARD_NAMES } from '../helpers/deployment';
import { encodeCommand, rawExchange, repliesComplete, startProxyProcess, type ProxyProcess } from '../helpers/proxy-harness';
import { startShards, startSingleRedis, type Shards, type SingleRedis } from '../helpers/redis-harness';
import { seededRandom } from '../helpers/seeded-random';
import { lockMigrationTests } from '../migration/migration-harness';

/**
 * Fan-out (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH, DBSIZE, KEYS, SCAN, SCRIPT LOAD) and deep
 * pipelines under partial failure and client misbehaviour, over 3 shards without replicas (so no
 * failover: a shard that is frozen or dead stays so until it comes back):
 *
 * - several clients pipeline deep mixes of single-key and fan-out commands (duplicate keys,
 *   binary keys and values with CRLF inside, empty strings, 1000-key commands) while one shard is
 *   SIGSTOPped and SIGCONTed and another is SIGKILLed and restarted (AOF on, so an acknowledged
 *   write must survive it). Every request gets exactly one reply, in order; every reply that is
 *   not an error agrees with a model of each client's keys; every error is `-ERR shard NAME
 *   unavailable: ...` naming a shard the command needs while that shard was impaired; a client
 *   that needs only healthy shards is answered promptly throughout; afterwards every key holds
 *   what the model allows;
 * - clients leave in the middle of fan-out pipelines (after writing, halfway through a request,
 *   after their first reply bytes) while the pieces they are owed are stuck on a frozen shard:
 *   the shared backend connections stay in step and a half request never runs;
 * - a client pipelines 20,000 fan-outs (240 MB of replies) without reading: the shards stop
 *   being asked, bounded proxy memory, others served, then every reply in order;
 * - what a failed MSET / DEL / broadcast / SCAN leaves behind (per-shard pieces, no rollback;
 *   docs say only "MSET OK only if all OK" and "every shard; all must succeed");
 * - protocol edges inside fan-out commands, byte for byte against a plain redis-server;
 * - a client's write answered with commandTimeoutMs's error on a frozen shard never runs after
 *   its later, acknowledged one (last test; found with it: the proxy used to close the
 *   connection and open another, and the frozen node ran the old one's bytes when it resumed).
 *
 * Settings that decide what a client sees: `commandTimeoutMs` (set here) fails what waits on a
 * frozen shard, and new commands to it until it answers those; `connectTimeoutMs` bounds
 * connecting; `nodeTimeoutMs` only matters for failover, and there are no replicas (README's
 * settings table; docs/architecture.md, "High availability").
 */

const COMMAND_TIMEOUT_MS = 800;
const CONNECT_TIMEOUT_MS = 1_000;
/** A batch (pipeline) whose replies are not all in by then counts as hung. */
const BATCH_TIMEOUT_MS = 6_000;
/** A pipeline that needs only healthy shards, while another shard is frozen or down, is answered within this. */
const HEALTHY_BATCH_BOUND_MS = 750;
/** After SIGCONT, errors of requests that waited on the frozen shard may still arrive this long. */
const THAW_GRACE_MS = COMMAND_TIMEOUT_MS + 700;

type Arg = string | Buffer;
type Reply = Buffer | number | null | Error | Reply[];

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function show(bytes: Buffer | null | undefined): string {
  if (bytes === null || bytes === undefined) return 'nil';
  const text = JSON.stringify(bytes.toString('latin1'));
  return text.length > 60 ? `${text.slice(0, 60)}...(${bytes.length} bytes)` : text;
}

function showReply(reply: Reply): string {
  if (reply instanceof Error) return `error ${JSON.stringify(reply.message)}`;
  if (Buffer.isBuffer(reply) || reply === null) return show(reply);
  if (typeof reply === 'number') return `:${reply}`;
  return `[${reply.slice(0, 6).map(showReply).join(', ')}${reply.length > 6 ? `, ... ${reply.length} items` : ''}]`;
}

// ---------------------------------------------------------------------------------------------
// A raw pipelining client: binary-safe replies, one awaited reply per request, extra replies seen

class PipelineClient {
  readonly #socket: net.Socket;
  readonly #waiting: { resolve: (reply: Reply) => void; reject: (err: Error) => void }[] = [];
  /** Replies that arrived with no request waiting for them (a second reply to one request). */
  extraReplies = 0;
  #closed: Error | null = null;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    const parser = new RedisParser({
      returnBuffers: true,
      returnReply: (reply: Reply) => this.#deliver(reply),
      returnError: (err: Error) => this.#deliver(err),
      returnFatalError: (err: Error) => this.#fail(new Error(`unparseable reply: ${err.message}`)),
    });
    socket.on('data', (chunk: Buffer) => parser.execute(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => this.#fail(new Error('connection closed')));
  }

  static open(port: number): Promise<PipelineClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port });
      socket.setNoDelay(true);
      socket.once('connect', () => resolve(new PipelineClient(socket)));
      socket.once('error', reject);
    });
  }

  get owed(): number {
    return this.#waiting.length;
  }

  /** Sends the commands in one write; resolves with their replies in order, rejects on timeout or close. */
  send(commands: readonly (readonly Arg[])[], timeoutMs = BATCH_TIMEOUT_MS): Promise<Reply[]> {
    if (this.#closed !== null) return Promise.reject(this.#closed);
    const replies = commands.map(
      () => new Promise<Reply>((resolve, reject) => this.#waiting.push({ resolve, reject })),
    );
    this.#socket.write(Buffer.concat(commands.map((command) => encodeCommand(command))));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${this.#waiting.length} of ${commands.length} replies still owed after ${timeoutMs} ms`)), timeoutMs);
    });
    return Promise.race([Promise.all(replies), timedOut]).finally(() => clearTimeout(timer));
  }

  async call(...args: Arg[]): Promise<Reply> {
    return (await this.send([args]))[0]!;
  }

  close(): void {
    this.#socket.destroy();
  }

  #deliver(reply: Reply): void {
    const waiter = this.#waiting.shift();
    if (waiter === undefined) this.extraReplies++;
    else waiter.resolve(reply);
  }

  #fail(err: Error): void {
    this.#closed ??= err;
    for (let waiter = this.#waiting.shift(); waiter !== undefined; waiter = this.#waiting.shift()) waiter.reject(err);
  }
}

// ---------------------------------------------------------------------------------------------
// The model: per key, the values it may hold (hex; null = absent)

class Model {
  readonly #possible = new Map<string, Set<string | null>>();

  possible(key: Buffer): ReadonlySet<string | null> {
    return this.#possible.get(key.toString('hex')) ?? NOTHING;
  }

  /** A write whose reply said it ran (`isCertain`), or whose outcome is unknown (an error: it may have run, or may yet). */
  apply(key: Buffer, value: Buffer | null, isCertain: boolean): void {
    const v = value === null ? null : value.toString('hex');
    if (isCertain) {
      this.#possible.set(key.toString('hex'), new Set([v]));
      return;
    }
    const next = new Set(this.possible(key));
    next.add(v);
    this.#possible.set(key.toString('hex'), next);
  }

  allows(key: Buffer, value: Buffer | null): boolean {
    return this.possible(key).has(value === null ? null : value.toString('hex'));
  }

  isSurelyPresent(key: Buffer): boolean {
    return !this.possible(key).has(null);
  }

  isMaybePresent(key: Buffer): boolean {
    return [...this.possible(key)].some((v) => v !== null);
  }

  describe(key: Buffer): string {
    return [...this.possible(key)].map((v) => (v === null ? 'nil' : show(Buffer.from(v, 'hex')))).join(' | ');
  }
}
const NOTHING: ReadonlySet<string | null> = new Set([null]);

// ---------------------------------------------------------------------------------------------
// Operations and their checks

type OpKind = 'set' | 'get' | 'mget' | 'mset' | 'del' | 'unlink' | 'exists' | 'touch' | 'echo' | 'dbsize' | 'keys';

interface Op {
  readonly kind: OpKind;
  readonly args: Buffer[];
  /** Keys in argument order (duplicates kept). */
  readonly keys: Buffer[];
  /** MSET / SET: the value of each key in `keys`. */
  readonly values: Buffer[];
  /** Shard indexes the command needs. */
  readonly shards: ReadonlySet<number>;
  /** ECHO's token; KEYS: the keys its pattern can match. */
  readonly token?: Buffer;
  readonly universe?: readonly Buffer[];
}

const ALL_SHARDS: ReadonlySet<number> = new Set([0, 1, 2]);

function op(kind: OpKind, name: string, keys: Buffer[], values: Buffer[] = [], extra: Partial<Op> = {}): Op {
  const args: Buffer[] = [Buffer.from(name)];
  if (kind === 'mset' || kind === 'set') keys.forEach((key, i) => args.push(key, values[i]!));
  else args.push(...keys);
  return { kind, args, keys, values, shards: new Set(keys.map((key) => ownerOf(key))), ...extra };
}

/** An impaired shard: frozen or down from `from` to `to` (Infinity while it lasts). */
interface Impairment {
  readonly shard: number;
  readonly from: number;
  to: number;
  /** What the error's reason must say. */
  readonly reason: RegExp;
}

const SHARD_ERROR = /^ERR shard (s[123]) unavailable: (.+)$/;

/** Null when `err`, answered to `o` sent at `sentAt` and complete at `doneAt`, is one the proxy may give. */
function judgeError(o: Op, err: Error, sentAt: number, doneAt: number, impairments: readonly Impairment[]): string | null {
  const match = SHARD_ERROR.exec(err.message);
  if (match === null) return `unclear error ${JSON.stringify(err.message)}`;
  const shard = SHARD_NAMES.indexOf(match[1] as (typeof SHARD_NAMES)[number]);
  if (!o.shards.has(shard)) return `error names ${match[1]}, which the command does not need: ${JSON.stringify(err.message)}`;
  const during = impairments.filter((i) => i.shard === shard && i.from <= doneAt && i.to >= sentAt);
  if (during.length === 0) return `error from ${match[1]} while it was healthy: ${JSON.stringify(err.message)}`;
  if (!during.some((i) => i.reason.test(match[2]!))) return `error with an unexpected reason: ${JSON.stringify(err.message)}`;
  return null;
}

/** Checks a reply against the model and applies the command's writes; returns what is wrong, or null. */
function judgeAndApply(o: Op, reply: Reply, model: Model): string | null {
  const isError = reply instanceof Error;
  switch (o.kind) {
    case 'echo':
      return Buffer.isBuffer(reply) && reply.equals(o.token!) ? null : `ECHO ${show(o.token)} answered ${showReply(reply)}: replies out of order`;
    case 'set':
    case 'mset': {
      if (!isError && !(Buffer.isBuffer(reply) && reply.toString() === 'OK')) return `${o.kind} answered ${showReply(reply)}`;
      o.keys.forEach((key, i) => model.apply(key, o.values[i]!, !isError));
      return null;
    }
    case 'del':
    case 'unlink': {
      const distinct = uniqueKeys(o.keys);
      let wrong: string | null = null;
      if (!isError) {
        const min = distinct.filter((k) => model.isSurelyPresent(k)).length;
        const max = distinct.filter((k) => model.isMaybePresent(k)).length;
        if (typeof reply !== 'number' || reply < min || reply > max) wrong = `${o.kind} of ${o.keys.length} keys answered ${showReply(reply)}, model allows ${min}..${max}`;
      }
      for (const key of distinct) model.apply(key, null, !isError);
      return wrong;
    }
    case 'exists':
    case 'touch': {
      if (isError) return null;
      const min = o.keys.filter((k) => model.isSurelyPresent(k)).length;
      const max = o.keys.filter((k) => model.isMaybePresent(k)).length;
      return typeof reply === 'number' && reply >= min && reply <= max ? null : `${o.kind} of ${o.keys.length} keys answered ${showReply(reply)}, model allows ${min}..${max}`;
    }
    case 'get': {
      if (isError) return null;
      if (!(reply === null || Buffer.isBuffer(reply))) return `GET answered ${showReply(reply)}`;
      return model.allows(o.keys[0]!, reply) ? null : `GET ${show(o.keys[0])} = ${show(reply)}, model allows ${model.describe(o.keys[0]!)}`;
    }
    case 'mget': {
      if (isError) return null;
      if (!Array.isArray(reply) || reply.length !== o.keys.length) return `MGET of ${o.keys.length} keys answered ${showReply(reply)}`;
      for (let k = 0; k < o.keys.length; k++) {
        const item = reply[k]!;
        if (!(item === null || Buffer.isBuffer(item))) return `MGET item ${k} is ${showReply(item)}`;
        if (!model.allows(o.keys[k]!, item)) return `MGET item ${k} (${show(o.keys[k])}) = ${show(item)}, model allows ${model.describe(o.keys[k]!)}`;
      }
      return null;
    }
    case 'dbsize':
      return isError || (typeof reply === 'number' && reply >= 0) ? null : `DBSIZE answered ${showReply(reply)}`;
    case 'keys': {
      if (isError) return null;
      if (!Array.isArray(reply)) return `KEYS answered ${showReply(reply)}`;
      const got = new Set(reply.map((k) => (Buffer.isBuffer(k) ? k.toString('hex') : '?')));
      if (got.size !== reply.length) return `KEYS answered a key twice: ${showReply(reply)}`;
      const universe = new Map(o.universe!.map((k) => [k.toString('hex'), k]));
      for (const hex of got) if (!universe.has(hex)) return `KEYS answered a key its pattern cannot match: ${show(Buffer.from(hex, 'hex'))}`;
      for (const [hex, key] of universe) {
        if (model.isSurelyPresent(key) && !got.has(hex)) return `KEYS left out ${show(key)}, which holds ${model.describe(key)}`;
        if (!model.isMaybePresent(key) && got.has(hex)) return `KEYS answered ${show(key)}, which does not exist`;
      }
      return null;
    }
  }
}

function uniqueKeys(keys: readonly Buffer[]): Buffer[] {
  const seen = new Map<string, Buffer>();
  for (const key of keys) seen.set(key.toString('hex'), key);
  return [...seen.values()];
}

// ---------------------------------------------------------------------------------------------
// A client's workload: its own keys, so the model of them follows from its own commands

/** The first `count` keys made by `make(n)` whose slot is on `shard`. */
function keysOn(shard: number, count: number, make: (n: number) => Buffer): Buffer[] {
  const keys: Buffer[] = [];
  for (let n = 0; keys.length < count; n++) {
    const key = make(n);
    if (ownerOf(key) === shard) keys.push(key);
  }
  return keys;
}

class Workload {
  /** Hot keys by shard: plain, and binary ones with CRLF, NUL and 0xff inside. */
  readonly hot: Buffer[][];
  /** Keys for the 1000-key commands. */
  readonly bulk: Buffer[];
  /** Keys nobody writes. */
  readonly missing: Buffer[];
  readonly model = new Model();
  readonly #random: () => number;
  readonly #name: string;
  #echo = 0;

  constructor(name: string, seed: number, withEmptyKey: boolean) {
    this.#name = name;
    this.#random = seededRandom(seed);
    this.hot = [0, 1, 2].map((s) => [
      ...keysOn(s, 4, (n) => Buffer.from(`fo:${name}:h:${n}`)),
      ...keysOn(s, 4, (n) => Buffer.concat([Buffer.from(`fo:${name}:h:`), Buffer.from([13, 10, 0, 255]), Buffer.from(`${n}\r\n`)])),
    ]);
    // The empty key (slot 0, shard s1): one client owns it.
    if (withEmptyKey) this.hot[0]!.push(Buffer.alloc(0));
    this.bulk = Array.from({ length: 600 }, (_, n) => Buffer.from(`fo:${name}:b:${n}`));
    this.missing = Array.from({ length: 400 }, (_, n) => Buffer.from(`fo:missing:${name}:${n}`));
  }

  get allKeys(): Buffer[] {
    return [...this.hot.flat(), ...this.bulk];
  }

  #int(n: number): number {
    return Math.floor(this.#random() * n);
  }

  #pick<T>(items: readonly T[]): T {
    return items[this.#int(items.length)]!;
  }

  value(): Buffer {
    const r = this.#random();
    if (r < 0.06) return Buffer.alloc(0);
    // Longer than the fragmenter's copy limit (1 KiB): such pieces are sent as views of the request.
    const length = r < 0.1 ? 1_200 + this.#int(1_500) : 1 + this.#int(40);
    const value = Buffer.alloc(length);
    for (let i = 0; i < length; i++) value[i] = this.#int(256);
    if (length > 3) value.write('\r\n', this.#int(length - 2), 'latin1');
    return value;
  }

  #hotKeys(shards: readonly number[], count: number): Buffer[] {
    const pool = shards.flatMap((s) => this.hot[s]!);
    return Array.from({ length: count }, () => this.#pick(pool));
  }

  /** `size` commands over keys of `shards`; `withBig` adds one 600-1000-key command. */
  batch(size: number, shards: readonly number[], withBig: boolean): Op[] {
    const ops: Op[] = [];
    for (let i = 0; i < size; i++) {
      if (i % 20 === 0) {
        const token = Buffer.from(`${this.#name}:${this.#echo++}`);
        ops.push(op('echo', 'ECHO', [], [], { args: [Buffer.from('ECHO'), token], shards: new Set(), token }));
        continue;
      }
      const r = this.#random();
      if (r < 0.18) {
        const [key] = this.#hotKeys(shards, 1);
        ops.push(op('set', 'SET', [key!], [this.value()]));
      } else if (r < 0.34) {
        ops.push(op('get', 'GET', this.#hotKeys(shards, 1)));
      } else if (r < 0.52) {
        const keys = this.#hotKeys(shards, 2 + this.#int(11));
        if (this.#random() < 0.3) keys.push(this.#pick(this.missing));
        ops.push(op('mget', this.#random() < 0.5 ? 'MGET' : 'mget', keys));
      } else if (r < 0.66) {
        const keys = this.#hotKeys(shards, 1 + this.#int(6));
        ops.push(op('mset', 'MSET', keys, keys.map(() => this.value())));
      } else if (r < 0.74) {
        ops.push(op('del', 'DEL', this.#hotKeys(shards, 1 + this.#int(5))));
      } else if (r < 0.78) {
        ops.push(op('unlink', 'UNLINK', this.#hotKeys(shards, 1 + this.#int(5))));
      } else if (r < 0.88) {
        ops.push(op('exists', 'EXISTS', this.#hotKeys(shards, 1 + this.#int(8))));
      } else if (r < 0.95) {
        ops.push(op('touch', 'TOUCH', this.#hotKeys(shards, 1 + this.#int(8))));
      } else if (r < 0.975 && shards.length === 3) {
        ops.push(op('dbsize', 'DBSIZE', [], [], { shards: ALL_SHARDS }));
      } else if (shards.length === 3) {
        const universe = this.hot.flat().filter((k) => k.length > 0);
        ops.push(op('keys', 'KEYS', [], [], { args: [Buffer.from('KEYS'), Buffer.from(`fo:${this.#name}:h:*`)], shards: ALL_SHARDS, universe }));
      } else {
        ops.push(op('get', 'GET', this.#hotKeys(shards, 1)));
      }
    }
    if (withBig) ops.splice(this.#int(ops.length), 0, this.#big());
    return ops;
  }

  #big(): Op {
    const r = this.#random();
    if (r < 0.3) {
      const keys = [...this.bulk, ...this.missing].sort(() => this.#random() - 0.5);
      keys.push(...this.bulk.slice(0, 20));
      return op('mget', 'MGET', keys);
    }
    if (r < 0.6) {
      const keys = this.bulk.filter(() => this.#random() < 0.9);
      return op('mset', 'MSET', keys, keys.map(() => (this.#random() < 0.02 ? this.value() : Buffer.from(`${this.#int(1e9)}`))));
    }
    if (r < 0.8) return op('exists', 'EXISTS', [...this.bulk, ...this.bulk.slice(0, 100), ...this.missing]);
    return op(this.#random() < 0.5 ? 'del' : 'unlink', this.#random() < 0.5 ? 'DEL' : 'UNLINK', this.bulk.filter(() => this.#random() < 0.25));
  }
}

interface BatchRecord {
  readonly client: string;
  readonly sentAt: number;
  readonly doneAt: number;
  readonly shards: ReadonlySet<number>;
  readonly errors: number;
}

/** Runs one batch and judges every reply; problems go to `violations`. False when the client is out of step (stop using it). */
async function runBatch(
  name: string,
  client: PipelineClient,
  workload: Workload,
  ops: Op[],
  impairments: readonly Impairment[],
  violations: string[],
  records: BatchRecord[],
  errorTexts: Map<string, number>,
): Promise<boolean> {
  const sentAt = Date.now();
  let replies: Reply[];
  try {
    replies = await client.send(ops.map((o) => o.args));
  } catch (err) {
    violations.push(`${name}: a pipeline of ${ops.length} commands (${[...new Set(ops.map((o) => o.kind))].join(',')}) sent at +${sentAt % 100_000} ms: ${(err as Error).message}`);
    return false;
  }
  const doneAt = Date.now();
  let errors = 0;
  for (let i = 0; i < ops.length; i++) {
    const o = ops[i]!;
    const reply = replies[i]!;
    if (reply instanceof Error) {
      errors++;
      const text = reply.message.replace(/ECONNREFUSED \S+/, 'ECONNREFUSED ADDR');
      errorTexts.set(text, (errorTexts.get(text) ?? 0) + 1);
      const wrong = judgeError(o, reply, sentAt, doneAt, impairments);
      if (wrong !== null) violations.push(`${name} #${i} ${o.kind} over shards [${[...o.shards]}]: ${wrong}`);
    }
    const wrong = judgeAndApply(o, reply, workload.model);
    if (wrong !== null) violations.push(`${name} #${i}: ${wrong}`);
  }
  const shards = new Set(ops.flatMap((o) => [...o.shards]));
  records.push({ client: name, sentAt, doneAt, shards, errors });
  return true;
}

/** MSETs every key of the workload to a first value through the proxy; the model then knows them for sure. */
async function seed(client: PipelineClient, workload: Workload): Promise<void> {
  const keys = workload.allKeys;
  const values = keys.map(() => workload.value());
  const reply = await client.call('MSET', ...keys.flatMap((key, i) => [key, values[i]!]));
  expect(showReply(reply)).toBe(show(Buffer.from('OK')));
  keys.forEach((key, i) => workload.model.apply(key, values[i]!, true));
}

function percentile(sorted: readonly number[], p: number): number {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

function rssKb(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

// ---------------------------------------------------------------------------------------------

describe('fan-out and pipelines under partial failure and client misbehaviour', () => {
  // Saturates both cores for its whole run: not beside the tests that measure latency (they take
  // the same lock).
  let unlock: (() => void) | null = null;
  beforeAll(async () => {
    unlock = await lockMigrationTests();
  }, 250_000);
  afterAll(() => unlock?.());
  let shards: Shards | undefined;
  let single: SingleRedis | undefined;
  let proxy: ProxyProcess | undefined;
  let proxyPid = 0;
  /** Each shard's primary, directly. */
  let primaries: Redis[] = [];
  const closers: (() => void)[] = [];

  const open = async (): Promise<PipelineClient> => {
    const client = await PipelineClient.open(proxy!.port);
    closers.push(() => client.close());
    return client;
  };

  /** Polls a command on `key` through the proxy until it is answered without error; the time it was. */
  const waitUntilServed = async (key: Buffer, timeoutMs: number): Promise<number> => {
    const probe = await open();
    const deadline = Date.now() + timeoutMs;
    let last: Reply = null;
    for (;;) {
      last = await probe.call('EXISTS', key);
      if (!(last instanceof Error)) {
        probe.close();
        return Date.now();
      }
      if (Date.now() > deadline) throw new Error(`${show(key)} still not served ${timeoutMs} ms on: ${showReply(last)}`);
      await sleep(25);
    }
  };

  beforeAll(async () => {
    [shards, single] = await Promise.all([startShards(3, { replicas: 0, appendonly: true }), startSingleRedis()]);
    proxy = await startProxyProcess({
      shards: shards.primaries.map((primary, i) => ({ name: SHARD_NAMES[i]!, primary })),
      extra: { connectTimeoutMs: CONNECT_TIMEOUT_MS, commandTimeoutMs: COMMAND_TIMEOUT_MS },
    });
    proxyPid = proxy.pid;
    primaries = shards.primaries.map((primary) => connect(primary, 2));
  }, 60_000);

  afterAll(async () => {
    for (const close of closers) close();
    for (const primary of shards?.primaries ?? []) primary.kill('SIGCONT');
    for (const redis of primaries) redis.disconnect();
    await proxy?.stop();
    await shards?.stopAll();
    await single?.stopAll();
  });

  it('deep pipelines of single-key and fan-out commands while s2 is frozen then resumed and s3 is killed then restarted: one reply each, in order, right or a clear error; healthy shards stay prompt; nothing acknowledged is lost', async () => {
    const s2 = shards!.primaries[1]!;
    const s3 = shards!.primaries[2]!;
    const workloads = [0, 1, 2].map((i) => new Workload(`w${i}`, 7_001 + i, i === 0));
    const bystander = new Workload('by', 7_100, false);
    const clients = await Promise.all([...workloads, bystander].map(() => open()));
    const seeder = await open();
    for (const w of [...workloads, bystander]) await seed(seeder, w);

    const impairments: Impairment[] = [];
    const violations: string[] = [];
    const records: BatchRecord[] = [];
    const errorTexts = new Map<string, number>();
    let isStopping = false;
    const impairedNow = (): Set<number> => new Set(impairments.filter((i) => i.to >= Date.now()).map((i) => i.shard));

    const runWorkload = async (w: Workload, c: number): Promise<void> => {
      for (let n = 0; !isStopping; n++) {
        if (!(await runBatch(`w${c}`, clients[c]!, w, w.batch(120, [0, 1, 2], n % 3 === 0), impairments, violations, records, errorTexts))) return;
      }
    };
    const runBystander = async (): Promise<void> => {
      while (!isStopping) {
        const impaired = impairedNow();
        const healthy = [0, 1, 2].filter((s) => !impaired.has(s));
        if (!(await runBatch('bystander', clients[3]!, bystander, bystander.batch(16, healthy, false), impairments, violations, records, errorTexts))) return;
        await sleep(15);
      }
    };

    const running = [...workloads.map((w, c) => runWorkload(w, c)), runBystander()];
    let recoveredAfterRestartMs = NaN;
    try {
      await sleep(1_000);
      // s2 frozen: its connection stays up, only commandTimeoutMs fails what waits on it.
      const frozen: Impairment = { shard: 1, from: Date.now(), to: Infinity, reason: new RegExp(`^no reply within ${COMMAND_TIMEOUT_MS} ms \\(commandTimeoutMs\\)$`) };
      impairments.push(frozen);
      s2.kill('SIGSTOP');
      await sleep(3_000);
      s2.kill('SIGCONT');
      frozen.to = Date.now() + THAW_GRACE_MS;
      await sleep(THAW_GRACE_MS);
      // s3 killed, then restarted from its AOF.
      const down: Impairment = { shard: 2, from: Date.now(), to: Infinity, reason: /^(connection lost|down|connect ECONNREFUSED \S+|read ECONNRESET|write EPIPE)$/ };
      impairments.push(down);
      await s3.stop('SIGKILL');
      await sleep(1_500);
      await s3.restart();
      const restartedAt = Date.now();
      const recoveredAt = await waitUntilServed(workloads[0]!.hot[2]![0]!, 10_000);
      recoveredAfterRestartMs = recoveredAt - restartedAt;
      down.to = recoveredAt + 300;
      await sleep(1_500);
    } finally {
      s2.kill('SIGCONT');
      isStopping = true;
      await Promise.all(running);
    }

    // Exactly one reply per request: none extra on any client, and each still in step.
    await sleep(200);
    for (const [c, client] of clients.entries()) {
      expect({ client: c, extraReplies: client.extraReplies }).toEqual({ client: c, extraReplies: 0 });
      expect(showReply(await client.call('ECHO', `last-${c}`))).toBe(show(Buffer.from(`last-${c}`)));
    }

    // Healthy shards stayed prompt: pipelines that needed neither the frozen nor the dead shard,
    // sent while one of them was out.
    const overlapping = (r: BatchRecord): Impairment[] => impairments.filter((i) => i.from <= r.doneAt && i.to >= r.sentAt);
    const healthyDuringImpairment = records.filter(
      (r) => r.client === 'bystander' && overlapping(r).length > 0 && overlapping(r).every((i) => !r.shards.has(i.shard)),
    );
    const latencies = healthyDuringImpairment.map((r) => r.doneAt - r.sentAt).sort((a, b) => a - b);
    const workloadBatches = records.filter((r) => r.client !== 'bystander');
    const summary = {
      batches: records.length,
      workloadBatches: workloadBatches.length,
      workloadBatchesWithErrors: workloadBatches.filter((r) => r.errors > 0).length,
      bystanderBatchesDuringImpairment: latencies.length,
      bystanderLatencyMs: { p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99), max: latencies[latencies.length - 1] },
      recoveredAfterRestartMs,
      errorTexts: Object.fromEntries(errorTexts),
    };
    console.log(`fan-out under partial failure: ${JSON.stringify(summary, null, 1)}`);

    expect(violations.slice(0, 15)).toEqual([]);
    expect(latencies.length).toBeGreaterThanOrEqual(10);
    expect(latencies[latencies.length - 1]).toBeLessThan(HEALTHY_BATCH_BOUND_MS);
    // Both impairments were felt, each with its own clear reason.
    const texts = [...errorTexts.keys()];
    expect(texts.some((t) => t.startsWith(`ERR shard s2 unavailable: no reply within ${COMMAND_TIMEOUT_MS} ms (commandTimeoutMs)`))).toBe(true);
    expect(texts.some((t) => t.startsWith('ERR shard s3 unavailable: '))).toBe(true);

    // Nothing acknowledged lost: every key, read from the shard that owns it, holds a value the
    // model allows; and the proxy's 1000-key MGET agrees with the shards byte for byte.
    const lost: string[] = [];
    for (const w of [...workloads, bystander]) {
      const keys = w.allKeys;
      const direct = await Promise.all(keys.map((key) => primaries[ownerOf(key)]!.getBuffer(key)));
      keys.forEach((key, i) => {
        if (!w.model.allows(key, direct[i]!)) lost.push(`${show(key)} on ${SHARD_NAMES[ownerOf(key)]} = ${show(direct[i])}, model allows ${w.model.describe(key)}`);
      });
      const viaProxy = await seeder.call('MGET', ...keys);
      expect(Array.isArray(viaProxy)).toBe(true);
      const mismatch = keys.findIndex((_, i) => showReply((viaProxy as Reply[])[i]!) !== show(direct[i]));
      expect(mismatch).toBe(-1);
    }
    expect(lost.slice(0, 10)).toEqual([]);
    expect(proxy!.isRunning).toBe(true);
    expect(proxy!.pid).toBe(proxyPid);
    expect(proxy!.logs()).not.toMatch(/dispatch failed|internal error|Uncaught|TypeError|RangeError/);
  }, 45_000);

  it('clients that leave mid fan-out pipeline (after writing, halfway through a request, after their first reply bytes) while their pieces are stuck on a frozen shard: owed replies swallowed, shared connections in step, a half request never runs', async () => {
    const s2 = shards!.primaries[1]!;
    const seeder = await open();
    const checker = new Workload('ck', 7_200, false);
    await seed(seeder, checker);
    const checkerClient = await open();
    const admin = await open();
    const clientCount = async (): Promise<number> => {
      const list = await admin.call('CLIENT', 'LIST');
      return Buffer.isBuffer(list) ? list.toString().trim().split('\n').length : -1;
    };
    const clientsBefore = await clientCount();

    const impairments: Impairment[] = [];
    const violations: string[] = [];
    const records: BatchRecord[] = [];
    const errorTexts = new Map<string, number>();
    let isStopping = false;
    const checking = (async () => {
      while (!isStopping) {
        if (!(await runBatch('checker', checkerClient, checker, checker.batch(60, [0, 1, 2], false), impairments, violations, records, errorTexts))) return;
      }
    })();

    // What the leavers send: fan-outs over the 3 shards, an ECHO first (answered by the proxy).
    const lvKeys = [0, 1, 2].flatMap((s) => keysOn(s, 10, (n) => Buffer.from(`lv:${n}`)));
    const fanouts = (i: number): Buffer => {
      const commands: Arg[][] = [['ECHO', `leaver-${i}`]];
      for (let n = 0; n < 200; n++) {
        const keys = Array.from({ length: 12 }, (_, k) => lvKeys[(n * 7 + k * 5 + i) % lvKeys.length]!);
        const kind = n % 4;
        if (kind === 0) commands.push(['MGET', ...keys]);
        else if (kind === 1) commands.push(['MSET', ...keys.slice(0, 6).flatMap((key) => [key, Buffer.alloc(n % 2 === 0 ? 30 : 1_500, i)])]);
        else if (kind === 2) commands.push(['EXISTS', ...keys]);
        else commands.push(['DEL', keys[0]!, keys[5]!]);
      }
      return Buffer.concat(commands.map((c) => encodeCommand(c)));
    };
    // The request cut halfway: 30 pairs over the 3 shards; only the first pairs arrive.
    const cutKeys = [0, 1, 2].flatMap((s) => keysOn(s, 10, (n) => Buffer.from(`cut:${n}`)));
    const cutRequest = encodeCommand(['MSET', ...cutKeys.flatMap((key) => [key, Buffer.from('never')])]);

    const sockets: net.Socket[] = [];
    const leave = (i: number): Promise<void> =>
      new Promise((resolve) => {
        const socket = net.connect({ host: '127.0.0.1', port: proxy!.port });
        sockets.push(socket);
        socket.on('error', () => undefined);
        socket.on('close', () => resolve());
        socket.once('connect', () => {
          const payload = fanouts(i);
          switch (i % 5) {
            case 0: // leaves as soon as it has written
              socket.write(payload, () => socket.destroy());
              break;
            case 1: // leaves with a reset
              socket.write(payload, () => socket.resetAndDestroy());
              break;
            case 2: // a whole pipeline, then half a request, then gone
              socket.write(Buffer.concat([payload, cutRequest.subarray(0, Math.floor(cutRequest.length * (0.3 + (i % 7) / 20)))]), () => socket.destroy());
              break;
            case 3: // waits for its first reply bytes, then leaves
              socket.once('data', () => socket.destroy());
              socket.write(payload);
              break;
            case 4: // announces a 100,001-key MGET, sends 50 keys, leaves
              socket.write(
                Buffer.concat([payload, Buffer.from('*100001\r\n$4\r\nMGET\r\n'), ...lvKeys.map((key) => Buffer.from(`$${key.length}\r\n${key.toString()}\r\n`))]),
                () => socket.destroy(),
              );
              break;
          }
        });
      });

    try {
      await sleep(300);
      // Frozen for less than commandTimeoutMs: the pieces owed to the leavers are answered
      // late, on the shared connection, after their clients are gone.
      const frozen: Impairment = { shard: 1, from: Date.now(), to: Infinity, reason: new RegExp(`^no reply within ${COMMAND_TIMEOUT_MS} ms \\(commandTimeoutMs\\)$`) };
      impairments.push(frozen);
      s2.kill('SIGSTOP');
      await Promise.all(Array.from({ length: 25 }, (_, i) => leave(i)));
      await sleep(Math.max(0, 450 - (Date.now() - frozen.from)));
      s2.kill('SIGCONT');
      frozen.to = Date.now() + THAW_GRACE_MS;
      // Once more with every shard answering: they leave with replies in flight everywhere.
      await Promise.all(Array.from({ length: 25 }, (_, i) => leave(25 + i)));
      await sleep(1_000);
    } finally {
      s2.kill('SIGCONT');
      isStopping = true;
      await checking;
      for (const socket of sockets) socket.destroy();
    }

    expect(violations.slice(0, 15)).toEqual([]);
    expect(records.length).toBeGreaterThan(10);
    // The freeze did hold the checker's pieces on s2 (and so the leavers' too).
    expect(records.some((r) => r.doneAt - r.sentAt >= 250)).toBe(true);
    expect(checkerClient.extraReplies).toBe(0);
    expect(showReply(await checkerClient.call('ECHO', 'still-in-step'))).toBe(show(Buffer.from('still-in-step')));
    // The half request never ran, not even the pairs that did arrive.
    const cutOnShards = await Promise.all(cutKeys.map((key) => primaries[ownerOf(key)]!.exists(key)));
    expect(cutOnShards.reduce((a, b) => a + b, 0)).toBe(0);
    // Every leaver is gone from the proxy's clients.
    const deadline = Date.now() + 3_000;
    let clientsAfter = await clientCount();
    while (clientsAfter !== clientsBefore && Date.now() < deadline) {
      await sleep(100);
      clientsAfter = await clientCount();
    }
    expect(clientsAfter).toBe(clientsBefore);
    expect(proxy!.isRunning).toBe(true);
    expect(proxy!.pid).toBe(proxyPid);
  }, 30_000);

  it('a client that pipelines 20,000 fan-out MGETs without reading: the shards stop being asked, proxy memory stays bounded, others are served, then every reply arrives whole and in order', async () => {
    const VALUE_BYTES = 4_000;
    const REQUESTS = 20_000;
    const GROUPS = 10;
    const seeder = await open();
    // Group g: one key per shard, each with its own 4,000-byte value.
    const groups = Array.from({ length: GROUPS }, (_, g) => [0, 1, 2].map((s) => keysOn(s, 1, (n) => Buffer.from(`unread:${g}:${n}`))[0]!));
    const values = groups.map((keys, g) => keys.map((_, s) => Buffer.alloc(VALUE_BYTES, 65 + ((g * 3 + s) % 26))));
    const mset = await seeder.call('MSET', ...groups.flatMap((keys, g) => keys.flatMap((key, s) => [key, values[g]![s]!])));
    expect(showReply(mset)).toBe(show(Buffer.from('OK')));
    const requests = groups.map((keys, g) => encodeCommand(['MGET', keys[0]!, keys[1]!, `unread:missing:${g}`, keys[2]!]));
    // The reply lists the keys in request order: the missing one third.
    const expectedInOrder = groups.map((_, g) =>
      Buffer.concat([Buffer.from('*4\r\n'), ...[values[g]![0]!, values[g]![1]!, null, values[g]![2]!].map((v) => (v === null ? Buffer.from('$-1\r\n') : Buffer.concat([Buffer.from(`$${v.length}\r\n`), v, Buffer.from('\r\n')])))]),
    );

    const mgetCalls = async (): Promise<number> => {
      const stats = await Promise.all(primaries.map((p) => p.info('commandstats')));
      return stats.reduce((sum, text) => sum + Number(/cmdstat_mget:calls=(\d+)/.exec(text)?.[1] ?? 0), 0);
    };
    const callsBefore = await mgetCalls();
    const rssBefore = rssKb(proxyPid);

    const reader = net.connect({ host: '127.0.0.1', port: proxy!.port });
    closers.push(() => reader.destroy());
    reader.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => reader.once('connect', resolve).once('error', reject));
    reader.pause();
    reader.write(Buffer.concat(Array.from({ length: REQUESTS }, (_, i) => requests[i % GROUPS]!)));

    await sleep(1_500);
    const heldCalls = (await mgetCalls()) - callsBefore;
    const rssHeld = rssKb(proxyPid);
    // Others are served meanwhile, fan-outs included.
    const other = await open();
    for (let i = 0; i < 10; i++) {
      const started = Date.now();
      const replies = await other.send([['MGET', ...groups[i]!], ['SET', `unread:other:${i}`, 'v'], ['EXISTS', ...groups[i]!]]);
      expect(Date.now() - started).toBeLessThan(HEALTHY_BATCH_BOUND_MS);
      expect(replies.map(showReply)).toEqual([showReply(values[i]!), show(Buffer.from('OK')), ':3']);
    }
    await sleep(500);
    const stillCalls = (await mgetCalls()) - callsBefore;
    // Each MGET is one piece per shard: 3 calls. The shards were asked for a bounded share only,
    // and no more while the client reads nothing (the other client's 10 MGETs aside).
    expect(heldCalls).toBeGreaterThan(0);
    expect(heldCalls).toBeLessThan((3 * REQUESTS) / 4);
    expect(stillCalls).toBe(heldCalls + 10 * 3);
    // The replies would be 240 MB.
    expect(rssHeld - rssBefore).toBeLessThan(100 * 1024);

    let pending: Buffer = Buffer.alloc(0);
    let checked = 0;
    let firstWrong = -1;
    const done = new Promise<void>((resolve) => {
      reader.on('data', (chunk: Buffer) => {
        pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
        for (;;) {
          const want = expectedInOrder[checked % GROUPS]!;
          if (pending.length < want.length) break;
          if (firstWrong < 0 && !pending.subarray(0, want.length).equals(want)) firstWrong = checked;
          pending = pending.subarray(want.length);
          checked++;
        }
        if (checked >= REQUESTS) resolve();
      });
    });
    reader.resume();
    await Promise.race([done, sleep(20_000)]);
    console.log(`unread fan-out pipeline: shards asked ${heldCalls} of ${3 * REQUESTS} pieces while held; proxy RSS +${Math.round((rssHeld - rssBefore) / 1024)} MB`);
    expect({ checked, firstWrong, leftover: pending.length }).toEqual({ checked: REQUESTS, firstWrong: -1, leftover: 0 });
    expect((await mgetCalls()) - callsBefore).toBe(3 * REQUESTS + 10 * 3);
    reader.destroy();
  }, 40_000);

  it('a fan-out write one shard fails: the error names that shard, the other shards keep their pieces (no rollback), each shard all or nothing; broadcasts fail clearly; SCAN resumes from its cursor once the shard is back', async () => {
    const s2 = shards!.primaries[1]!;
    const s3 = shards!.primaries[2]!;
    const client = await open();
    const [a] = keysOn(0, 1, (n) => Buffer.from(`part:a:${n}`));
    const [b1, b2] = keysOn(1, 2, (n) => Buffer.from(`part:b:${n}`));
    const [c1, c2] = keysOn(2, 2, (n) => Buffer.from(`part:c:${n}`));
    const key = { a: a!, b1: b1!, b2: b2!, c1: c1!, c2: c2! };
    const direct = async (k: Buffer): Promise<string | null> => {
      const value = await primaries[ownerOf(k)]!.getBuffer(k);
      return value === null ? null : value.toString();
    };
    const text = (reply: Reply): string => (reply instanceof Error ? `-${reply.message}` : showReply(reply));
    expect(text(await client.call('MSET', key.a, 'a0', key.b1, 'b0', key.b2, 'b0', key.c1, 'c0', key.c2, 'c0'))).toBe('"OK"');
    // The keyspace SCAN must walk: every key on the shards now, and these five.
    const everyKey = new Set<string>();
    for (const p of primaries) for (const k of await p.keysBuffer('*')) everyKey.add(k.toString('hex'));

    // --- s3 killed ------------------------------------------------------------------------------
    await s3.stop('SIGKILL');
    const s3Down = /^-ERR shard s3 unavailable: /;
    let started = Date.now();
    expect(text(await client.call('MSET', key.a, 'a1', key.b1, 'b1', key.b2, 'b1', key.c1, 'c1', key.c2, 'c1'))).toMatch(s3Down);
    expect(Date.now() - started).toBeLessThan(CONNECT_TIMEOUT_MS + 500);
    // The pieces on s1 and s2 ran: MSET is all or nothing per shard only.
    expect(await Promise.all([direct(key.a), direct(key.b1), direct(key.b2)])).toEqual(['a1', 'b1', 'b1']);
    expect(text(await client.call('DEL', key.a, key.b1, key.c1))).toMatch(s3Down);
    expect(await Promise.all([direct(key.a), direct(key.b1), direct(key.b2)])).toEqual([null, null, 'b1']);
    // What needs only s1 and s2 works.
    expect(text(await client.call('MGET', key.a, key.b2, key.b1))).toBe(`[nil, "b1", nil]`);
    expect(text(await client.call('EXISTS', key.b2, key.b2, key.a))).toBe(':2');
    // Broadcasts need every shard.
    for (const command of [['DBSIZE'], ['KEYS', 'part:*'], ['SCRIPT', 'LOAD', 'return 7']]) {
      started = Date.now();
      expect({ command, reply: text(await client.call(...command)) }).toMatchObject({ reply: expect.stringMatching(s3Down) });
      expect(Date.now() - started).toBeLessThan(CONNECT_TIMEOUT_MS + 500);
    }
    // SCAN walks s1 and s2, then stops at s3 with the error; its cursor stays good.
    const seen = new Set<string>();
    let cursor = '0';
    let scanError = '';
    for (let i = 0; i < 10_000; i++) {
      const reply = await client.call('SCAN', cursor, 'COUNT', '1000');
      if (reply instanceof Error) {
        scanError = reply.message;
        break;
      }
      const [next, keys] = reply as [Buffer, Buffer[]];
      for (const k of keys) seen.add(k.toString('hex'));
      cursor = next.toString();
      if (cursor === '0') break;
    }
    expect(scanError).toMatch(/^ERR shard s3 unavailable: /);

    await s3.restart();
    await waitUntilServed(key.c1, 10_000);
    // The failed MSET never reached s3; what s3 acknowledged before the kill is there (AOF).
    expect(await Promise.all([direct(key.c1), direct(key.c2)])).toEqual(['c0', 'c0']);
    // The same cursor finishes the walk: every key there was, but the two DEL removed, seen.
    for (let i = 0; i < 10_000 && cursor !== '0'; i++) {
      const reply = await client.call('SCAN', cursor, 'COUNT', '1000');
      expect(reply instanceof Error ? reply.message : 'array').toBe('array');
      const [next, keys] = reply as [Buffer, Buffer[]];
      for (const k of keys) seen.add(k.toString('hex'));
      cursor = next.toString();
    }
    everyKey.delete(key.a.toString('hex'));
    everyKey.delete(key.b1.toString('hex'));
    const missed = [...everyKey].filter((k) => !seen.has(k));
    expect(missed.map((k) => show(Buffer.from(k, 'hex'))).slice(0, 5)).toEqual([]);
    expect(text(await client.call('SCRIPT', 'LOAD', 'return 7'))).toMatch(/^"[0-9a-f]{40}"$/);

    // --- s2 frozen --------------------------------------------------------------------------------
    s2.kill('SIGSTOP');
    try {
      started = Date.now();
      const [msetReply, dbsizeReply, mgetReply] = await client.send([
        ['MSET', key.a, 'a2', key.b1, 'b2', key.b2, 'b2', key.c1, 'c2'],
        ['DBSIZE'],
        ['MGET', key.a, key.c1],
      ]);
      const elapsed = Date.now() - started;
      const timedOut = `-ERR shard s2 unavailable: no reply within ${COMMAND_TIMEOUT_MS} ms (commandTimeoutMs)`;
      expect([text(msetReply!), text(dbsizeReply!)]).toEqual([timedOut, timedOut]);
      // In order, and the MGET that needs only s1 and s3 was answered right behind them.
      expect(text(mgetReply!)).toBe('["a2", "c2"]');
      expect(elapsed).toBeGreaterThanOrEqual(COMMAND_TIMEOUT_MS - 100);
      expect(elapsed).toBeLessThan(COMMAND_TIMEOUT_MS + 1_500);
      // The s1 and s3 pieces ran while s2 was frozen.
      expect(await Promise.all([direct(key.a), direct(key.c1)])).toEqual(['a2', 'c2']);
    } finally {
      s2.kill('SIGCONT');
    }
    await waitUntilServed(key.b1, 5_000);
    // s2's piece was failed by the timeout, but its bytes were already in s2's socket: whether it
    // ran is unknown to the client. Either way both of its keys went together.
    const late = await Promise.all([direct(key.b1), direct(key.b2)]);
    expect([['b2', 'b2'], [null, 'b1']]).toContainEqual(late);
    console.log(`MSET answered "no reply within ${COMMAND_TIMEOUT_MS} ms" for s2; after SIGCONT s2 holds ${JSON.stringify(late)} (${late[0] === 'b2' ? 'the timed-out piece ran late' : 'the piece never ran'})`);
  }, 30_000);

  it('protocol edges inside fan-out commands answer byte for byte as one redis-server: 1000-key MSET/MGET with duplicates, empty and CRLF keys, long values, split at odd offsets; arity errors in a pipeline; bulk terminators Redis does not check; inline fan-out', async () => {
    const r = seededRandom(4242);
    const binary = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => Math.floor(r() * 256)));
    const keys: Buffer[] = [Buffer.alloc(0), Buffer.from('\r\n'), Buffer.from('*1\r\n$4\r\nPING\r\n')];
    for (let i = 0; keys.length < 1_000; i++) keys.push(i % 3 === 0 ? Buffer.concat([Buffer.from(`edge:${i}:`), binary(6)]) : Buffer.from(`edge:${i}`));
    const values = keys.map((_, i) => (i % 50 === 0 ? binary(1_500 + i) : i % 7 === 0 ? Buffer.alloc(0) : binary(1 + (i % 30))));
    // Duplicates: the same key three times in one MSET (the last value stays), spread over the request.
    const msetArgs: Buffer[] = keys.flatMap((key, i) => [key, values[i]!]);
    msetArgs.push(keys[5]!, Buffer.from('second'), keys[500]!, Buffer.from('again'), keys[5]!, Buffer.from('third'));
    const readKeys = [...keys, keys[5]!, Buffer.from('edge:missing'), keys[0]!, keys[999]!, keys[1]!];
    expect(new Set(keys.map((k) => ownerOf(k)))).toEqual(new Set([0, 1, 2]));

    const compare = async (label: string, payload: Buffer | string, replies: number, chunkSize?: number): Promise<void> => {
      const [got, want] = await Promise.all(
        [proxy!.port, single!.redis.port].map((port) => rawExchange(port, payload, { until: repliesComplete(replies), timeoutMs: 10_000, chunkSize })),
      );
      expect({ label, isTimedOut: got!.isTimedOut }).toEqual({ label, isTimedOut: false });
      const [g, w] = [got!.data.toString('latin1'), want!.data.toString('latin1')];
      const at = [...g].findIndex((ch, i) => ch !== w[i]);
      expect({ label, length: g.length, firstDifference: at < 0 && g.length === w.length ? null : { at, proxy: g.slice(Math.max(0, at - 40), at + 80), redis: w.slice(Math.max(0, at - 40), at + 80) } }).toEqual({
        label,
        length: w.length,
        firstDifference: null,
      });
    };
    const cmd = (...args: Arg[]): Buffer => encodeCommand(args);

    // Both start without these keys (the empty key may be left from the first test).
    for (const port of [proxy!.port, single!.redis.port]) {
      const cleared = await rawExchange(port, cmd('DEL', ...keys), { until: repliesComplete(1), timeoutMs: 5_000 });
      expect(cleared.data.toString('latin1')).toMatch(/^:\d+\r\n$/);
    }
    await compare('1000-key MSET with duplicates, in 997-byte pieces', cmd('MSET', ...msetArgs), 1, 997);
    await compare('1000-key MGET with duplicates and a missing key', cmd('MGET', ...readKeys), 1);
    await compare(
      'EXISTS / TOUCH / UNLINK / DEL with duplicates, pipelined',
      Buffer.concat([cmd('EXISTS', ...readKeys), cmd('TOUCH', ...readKeys.slice(0, 400)), cmd('UNLINK', ...keys.slice(0, 300), keys[0]!), cmd('DEL', ...readKeys), cmd('MGET', ...readKeys.slice(0, 20))]),
      5,
    );
    await compare('small fan-outs split at every byte', Buffer.concat([cmd('MSET', keys[1]!, 'x\r\ny', keys[2]!, '', keys[3]!, 'z'), cmd('mGeT', keys[3]!, keys[1]!, keys[2]!, keys[1]!), cmd('exists', keys[1]!, keys[2]!, keys[4]!)]), 3, 1);
    await compare(
      'arity errors between fan-outs keep their place',
      Buffer.concat([cmd('MGET'), cmd('MSET', keys[3]!, 'v', keys[4]!), cmd('MGET', keys[3]!, keys[4]!, keys[1]!), cmd('DEL'), cmd('MSET'), cmd('EXISTS'), cmd('TOUCH'), cmd('UNLINK'), cmd('MGET', keys[1]!)]),
      9,
    );
    // Redis skips the two bytes after a bulk unchecked; the proxy must rebuild the pieces alike.
    const [k1, k2, k3] = [0, 1, 2].map((s) => keysOn(s, 1, (n) => Buffer.from(`edge:t:${n}`))[0]!.toString()) as [string, string, string];
    await compare(
      'bulk terminators that are not CRLF inside MSET / MGET',
      `*7\r\n$4\r\nMSET\r\n$${k1.length}\r\n${k1}XY$2\r\nv1??$${k2.length}\r\n${k2}\r\n$2\r\nv2!!$${k3.length}\r\n${k3}ab$2\r\nv3\r\n` +
        `*4\r\n$4\r\nMGET\r\n$${k3.length}\r\n${k3}--$${k2.length}\r\n${k2}..$${k1.length}\r\n${k1}\r\n`,
      2,
    );
    await compare('inline fan-out with quotes and escapes', `MSET "edge:\\r\\n" 'a b' "" "\\x00\\xff"\r\nMGET "edge:\\r\\n" "" nope\r\nEXISTS "" "" "edge:\\r\\n"\r\nDEL "" "edge:\\r\\n"\r\n`, 4);
  }, 30_000);

  /**
   * commandTimeoutMs used to close the shared connection to a frozen shard and the next request
   * opened a new one. The requests on the closed connections were still in the frozen node's
   * socket buffers and ran once it resumed, and Redis does not order requests across
   * connections: a piece the proxy answered "no reply within 800 ms" ran after a later piece of
   * the same client that the proxy acknowledged (its key on s2 held the earlier MSET's value: an
   * acknowledged write lost, the MSET torn). The connection is now kept, and new requests fail
   * at once until the node has answered the overdue ones.
   */
  it('a fan-out write acknowledged after a frozen shard resumes is not overtaken by the client\'s earlier write that timed out there', async () => {
    const s2 = shards!.primaries[1]!;
    const client = await open();
    const [x] = keysOn(0, 1, (n) => Buffer.from(`order:x:${n}`));
    const [y] = keysOn(1, 1, (n) => Buffer.from(`order:y:${n}`));
    const timedOut = `error "ERR shard s2 unavailable: no reply within ${COMMAND_TIMEOUT_MS} ms (commandTimeoutMs)"`;
    expect(showReply(await client.call('MSET', x!, 'v0', y!, 'v0'))).toBe('"OK"');
    // 40 kB: more than redis-server reads at once (16 kB), so a connection it accepts after
    // resuming needs two reads to run it.
    const earlier = Buffer.alloc(40_000, 'e');
    s2.kill('SIGSTOP');
    try {
      // Times out on the connection that was up when s2 froze (the proxy used to close it).
      expect(showReply(await client.call('MSET', x!, 'stale', y!, 'stale'))).toBe(timedOut);
      await sleep(300);
      // Refused at once while s2 owes the reply above (it used to go on a new connection, which
      // s2's kernel accepts while the process is stopped, and time out too).
      expect(showReply(await client.call('MSET', x!, earlier, y!, earlier))).toBe(timedOut);
      await sleep(300);
      // The client's last write; s2 resumes before it times out (or it is refused while s2 still
      // owes replies). A client retries it until it is acknowledged.
      const last = client.send([['MSET', x!, 'final', y!, 'final']]);
      await sleep(150);
      s2.kill('SIGCONT');
      let reply: Reply = (await last)[0]!;
      for (const deadline = Date.now() + 5_000; reply instanceof Error && Date.now() < deadline; ) {
        await sleep(50);
        reply = await client.call('MSET', x!, 'final', y!, 'final');
      }
      expect(showReply(reply)).toBe('"OK"');
    } finally {
      s2.kill('SIGCONT');
    }
    await sleep(300);
    const direct = await Promise.all([primaries[0]!.getBuffer(x!), primaries[1]!.getBuffer(y!)]);
    // One Redis (and one connection per shard) would leave the acknowledged MSET's values.
    expect(direct.map((v) => show(v))).toEqual(['"final"', '"final"']);
    expect(showReply(await client.call('MGET', x!, y!))).toBe('["final", "final"]');
  }, 20_000);
});
