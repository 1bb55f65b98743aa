import * as net from 'node:net';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeCommand, rawCommands, rawExchange } from '../helpers/proxy-harness';
import { startSingleRedis, type SingleRedis } from '../helpers/redis-harness';
import { seededRandom } from '../helpers/seeded-random';
import { waitFor } from '../ha/ha-harness';
import { runReshard } from '../migration/contended-load';
import { checkPlacement, HOST, ownerFromStateFile, sleep, slotOf, useMigrationDeployment, type MigrationProxy, type ShardSpec } from '../migration/migration-harness';

/**
 * RESP3 clients through the proxy. The proxy promises (README "Commands", local row) to answer
 * HELLO as a RESP2-only Redis 7.0: `HELLO 3` -> `-NOPROTO`, so RESP3 clients (ioredis 6 tries
 * RESP3 by default, as go-redis and node-redis do) fall back to RESP2; CLIENT TRACKING is refused
 * (docs/commands.md). What is checked:
 *
 * 1. Byte for byte against one redis-server (7.0.15 speaks RESP3, so the reference gets
 *    `HELLO 4`, which it refuses with the same NOPROTO, wherever the proxy gets `HELLO 3`):
 *    HELLO with AUTH/SETNAME and bad options, HELLO 3 interleaved with fan-out merges (MGET with
 *    nulls, EXISTS, DEL, DBSIZE, KEYS) and the replies RESP3 would type differently (HGETALL,
 *    ZRANGE WITHSCORES, ZSCORE, INCRBYFLOAT, CONFIG GET, SMEMBERS, XRANGE, big numbers),
 *    HELLO/CLIENT TRACKING while subscribed, RESET; CLIENT TRACKING refused clearly.
 * 2. Regressions (fail today): RESET pipelined behind WATCH/EXEC, RESET and QUIT inside MULTI,
 *    AUTH with a user name.
 * 3. Churn: raw clients that open with `HELLO 3 AUTH ... SETNAME ...` and then pipeline seeded
 *    mixes of HELLO 3 (refused), HELLO 2 SETNAME, CLIENT GETNAME/ID, INCRBY, MGET, EXISTS,
 *    HSET/HGETALL, MULTI/EXEC, WATCH/MULTI/EXEC, SUBSCRIBE + PING + refused commands +
 *    UNSUBSCRIBE or RESET on channels whose slots move, RESET; ioredis 6 clients with their
 *    default (RESP3, falling back) on the same keys and a long-lived subscriber; while the
 *    channels' and keys' slots move s3 -> s1, s1's primary is killed (failover), and they move
 *    back. Every reply is RESP2 (no RESP3 type byte anywhere), exactly one per command, in order,
 *    exactly as expected (counters equal the sum of acknowledged increments, bounded by the
 *    unknown outcomes); no message outside its subscription or out of order; the subscriber
 *    misses nothing outside the documented windows; errors only `shard NAME unavailable` in the
 *    failover window; no key on a shard that does not own its slot at the end.
 *
 * Replay a run with RESP3_SEED=<seed> (printed).
 */

const NODE_TIMEOUT_MS = 1_000;
const MOVING_SLOTS = 16;
const FIRST_MOVING_SLOT = 16_384 - MOVING_SLOTS;
const FILLER_KEYS = 200;
const RAW_CLIENTS = 8;
const IOREDIS_CLIENTS = 2;
const PUBLISH_EVERY_MS = 20;
const STUCK_MS = 5_000;
const FAILOVER_SETTLE_MS = 1_500;
/** A message acknowledged this long before its primary was killed may be lost with it: Redis answers PUBLISH before it writes to the subscribers. */
const FAILOVER_LEAD_MS = 100;
const RESHARD_SETTLE_MS = 300;
/** The longest run of messages one subscription may miss as its channel moves (publish times, first to last). */
const RESHARD_MAX_GAP_MS = 500;
const NOPROTO = '-NOPROTO unsupported protocol version\r\n';
const SUBSCRIBED_ONLY = (name: string): string =>
  `-ERR Can't execute '${name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n`;

// ---------------------------------------------------------------------------------------------
// A small RESP2/RESP3 reader: values, the raw bytes of each top-level reply, every type byte seen

type Value = string | number | null | Error | Value[];
const RESP2_TYPES = new Set('+-:$*'.split('').map((c) => c.charCodeAt(0)));

function parseAt(buf: Buffer, pos: number, types: Set<number>): [Value, number] | null {
  if (pos >= buf.length) return null;
  const type = buf[pos]!;
  const lineEnd = buf.indexOf('\r\n', pos);
  if (lineEnd < 0) return null;
  types.add(type);
  const line = buf.toString('latin1', pos + 1, lineEnd);
  let next = lineEnd + 2;
  switch (String.fromCharCode(type)) {
    case '+':
      return [line, next];
    case '-':
      return [new Error(line), next];
    case ':':
      return [Number(line), next];
    case '$':
    case '=':
    case '!': {
      const n = Number(line);
      if (n < 0) return [null, next];
      if (buf.length < next + n + 2) return null;
      const text = buf.toString('latin1', next, next + n);
      return [type === 0x21 ? new Error(text) : text, next + n + 2];
    }
    case '*':
    case '~':
    case '>':
    case '%':
    case '|': {
      const count = Number(line);
      if (count < 0) return [null, next];
      const items: Value[] = [];
      for (let i = 0; i < (type === 0x25 || type === 0x7c ? 2 * count : count); i++) {
        const item = parseAt(buf, next, types);
        if (item === null) return null;
        items.push(item[0]);
        next = item[1];
      }
      // An attribute describes the value that follows it.
      return type === 0x7c ? parseAt(buf, next, types) : [items, next];
    }
    default: // _ , # ( : one line
      return [line, next];
  }
}

interface Frame {
  readonly raw: string;
  readonly value: Value;
}

/** Splits a reply stream into top-level frames; `types` collects every type byte seen. */
function framesOf(data: Buffer, types: Set<number>): Frame[] {
  const frames: Frame[] = [];
  let pos = 0;
  for (;;) {
    const parsed = parseAt(data, pos, types);
    if (parsed === null) break;
    frames.push({ raw: data.toString('latin1', pos, parsed[1]), value: parsed[0] });
    pos = parsed[1];
  }
  return frames;
}

function bulk(text: string): string {
  return `$${Buffer.byteLength(text)}\r\n${text}\r\n`;
}

function show(value: unknown): string {
  const text = value instanceof Error ? `error ${value.message}` : JSON.stringify(value);
  return text.length > 200 ? `${text.slice(0, 200)}...` : text;
}

function helloReply(version: string, id: number): string {
  return `*14\r\n${bulk('server')}${bulk('redis')}${bulk('version')}${bulk(version)}${bulk('proto')}:2\r\n${bulk('id')}:${id}\r\n${bulk('mode')}${bulk('standalone')}${bulk('role')}${bulk('master')}${bulk('modules')}*0\r\n`;
}

/** Names `${prefix}${n}` whose slot `isWanted`. */
function namesWhere(prefix: string, count: number, isWanted: (slot: number) => boolean): string[] {
  const names: string[] = [];
  for (let n = 0; names.length < count; n++) if (isWanted(slotOf(`${prefix}${n}`))) names.push(`${prefix}${n}`);
  return names;
}

/** The proxy's log lines with `event`, with their time. */
function logEvents(proxy: MigrationProxy, event: string): { at: number; fields: Record<string, unknown> }[] {
  return proxy
    .logs()
    .split('\n')
    .filter((line) => line.startsWith('{') && line.includes(`"event":"${event}"`))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .map((fields) => ({ at: Date.parse(String(fields['time'])), fields }));
}

/** Compares the proxy's and the reference's reply streams for `commands`, reply by reply. */
async function differences(proxyPort: number, directPort: number, commands: readonly (readonly string[])[]): Promise<string[]> {
  const toDirect = commands.map((c) => (c[0]!.toUpperCase() === 'HELLO' && c[1] === '3' ? ['HELLO', '4', ...c.slice(2)] : c));
  const frameCount = commands.reduce((n, c) => n + (/^P?(UN)?SUBSCRIBE$/i.test(c[0]!) && c.length > 1 ? c.length - 1 : 1), 0);
  const exchange = (port: number, list: readonly (readonly string[])[]): Promise<{ data: Buffer }> =>
    rawExchange(port, Buffer.concat(list.map((c) => encodeCommand(c))), { timeoutMs: 3_000, until: (data) => framesOf(data, new Set()).length >= frameCount });
  const [viaProxy, direct] = await Promise.all([exchange(proxyPort, commands), exchange(directPort, toDirect)]);
  const types = new Set<number>();
  // One group of frames per command: (P)(UN)SUBSCRIBE answers once per channel named.
  const group = (frames: Frame[]): Frame[] => {
    const out: Frame[] = [];
    let at = 0;
    for (const command of commands) {
      const n = /^P?(UN)?SUBSCRIBE$/i.test(command[0]!) && command.length > 1 ? command.length - 1 : 1;
      const part = frames.slice(at, at + n);
      at += n;
      if (part.length > 0) out.push({ raw: part.map((f) => f.raw).join(''), value: part.length === 1 ? part[0]!.value : part.map((f) => f.value) });
    }
    if (at < frames.length) out.push({ raw: `(${frames.length - at} more frames)`, value: null });
    return out;
  };
  const a = group(framesOf(viaProxy.data, types));
  const b = group(framesOf(direct.data, new Set()));
  const wrong: string[] = [];
  for (const type of types) if (!RESP2_TYPES.has(type)) wrong.push(`RESP3 type byte ${String.fromCharCode(type)} through the proxy`);
  if (a.length !== commands.length) wrong.push(`${a.length} replies through the proxy for ${commands.length} commands`);
  commands.forEach((command, i) => {
    const mine = a[i];
    const theirs = b[i];
    if (mine === undefined || theirs === undefined) return;
    const name = command.join(' ').toUpperCase();
    let same: boolean;
    if (name.startsWith('HELLO') && Array.isArray(mine.value) && Array.isArray(theirs.value)) {
      // Same shape; the version is the proxy's own and the id is each server's.
      const mask = (v: Value[]): Value[] => v.map((x, j) => (v[j - 1] === 'version' || v[j - 1] === 'id' ? '?' : x));
      same = JSON.stringify(mask(mine.value)) === JSON.stringify(mask(theirs.value));
    } else if (name.startsWith('KEYS') && Array.isArray(mine.value) && Array.isArray(theirs.value)) {
      same = JSON.stringify([...mine.value].sort()) === JSON.stringify([...theirs.value].sort());
    } else if (name.startsWith('CONFIG GET') && Array.isArray(mine.value) && Array.isArray(theirs.value)) {
      // Parameter order follows each server's dict (seeded per process): compared as pairs.
      const pairs = (v: Value[]): string => JSON.stringify(v.flatMap((x, j) => (j % 2 === 0 ? [`${String(x)}=${String(v[j + 1])}`] : [])).sort());
      same = mine.raw.startsWith('*') && pairs(mine.value) === pairs(theirs.value);
    } else {
      same = mine.raw === theirs.raw;
    }
    if (!same) wrong.push(`#${i} ${command.join(' ')}: proxy ${JSON.stringify(mine.raw)}, redis ${JSON.stringify(theirs.raw)}`);
  });
  return wrong;
}

// ---------------------------------------------------------------------------------------------
// The churn's raw client

/** What a counter may hold: lo..hi (hi above lo by the increments whose outcome is unknown). */
interface Counter {
  lo: number;
  hi: number;
}

interface Expected {
  readonly command: readonly string[];
  /** Frames this command answers with (SUBSCRIBE a b: 2). */
  readonly frames: number;
  /** Checks the frames (null: the connection closed first, or an error reply) and updates the model. */
  readonly check: (frames: Frame[] | null) => void;
}

interface Window {
  readonly label: string;
  readonly from: number;
  to: number;
}

class Findings {
  readonly wrong: string[] = [];
  readonly allowedErrors: string[] = [];
  readonly resp3Types = new Set<string>();
  windows: Window[] = [];
  counts = { pipelines: 0, commands: 0, messages: 0, reconnects: 0, unknown: 0, hello3: 0, resets: 0, subscribes: 0 };

  add(text: string): void {
    if (this.wrong.length < 100) this.wrong.push(text);
  }

  inFailoverWindow(at: number): boolean {
    return this.windows.some((w) => w.label.startsWith('failover') && at >= w.from && at <= w.to);
  }
}

class RawClient {
  readonly #port: number;
  readonly #findings: Findings;
  readonly #label: string;
  readonly #random: () => number;
  readonly counters: Map<string, Counter>;
  readonly #keys: readonly string[];
  readonly #hashKey: string;
  #hash: Map<string, string> | null = new Map();
  readonly #channels: readonly string[];
  #socket: net.Socket | null = null;
  #buffer: Buffer = Buffer.alloc(0);
  #queue: { expected: Expected; frames: Frame[] }[] = [];
  #subscribed = new Set<string>();
  /** Per channel, the last sequence number seen on this client (any connection). */
  readonly #lastSeq = new Map<string, number>();
  #closed: (() => void) | null = null;
  #id = 0;
  #name = '';
  #version = '';
  isRunning = true;

  constructor(index: number, port: number, seed: number, findings: Findings, keys: readonly string[], hashKey: string, channels: readonly string[]) {
    this.#port = port;
    this.#findings = findings;
    this.#label = `raw#${index}`;
    this.#random = seededRandom(seed);
    this.#keys = keys;
    this.#hashKey = hashKey;
    this.#channels = channels;
    this.counters = new Map(keys.map((k) => [k, { lo: 0, hi: 0 }]));
  }

  #pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.#random() * items.length)]!;
  }

  #wrong(text: string): void {
    this.#findings.add(`${this.#label} (client id ${this.#id}): ${text}`);
  }

  async #connect(): Promise<void> {
    this.#buffer = Buffer.alloc(0);
    this.#subscribed.clear();
    const socket = net.connect(this.#port, HOST);
    this.#socket = socket;
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('close', () => this.#onClose());
    // What a RESP3 client opens with; refused as a whole (the name is not set), then RESP2.
    const [hello3, hello, clientId, name] = await this.#rawPipeline([
      ['HELLO', '3', 'AUTH', 'default', 'secret', 'SETNAME', `${this.#label}-resp3`],
      ['HELLO'],
      ['CLIENT', 'ID'],
      ['CLIENT', 'GETNAME'],
    ]);
    if (hello3 !== NOPROTO) this.#wrong(`HELLO 3 on connect answered ${show(hello3)}`);
    const helloValue = framesOf(Buffer.from(hello ?? '', 'latin1'), new Set())[0]?.value;
    if (!Array.isArray(helloValue) || helloValue[5] !== 2) this.#wrong(`HELLO on connect answered ${show(hello)}`);
    this.#version = Array.isArray(helloValue) ? String(helloValue[3]) : '';
    this.#id = Number((clientId ?? ':0').slice(1, -2));
    if (hello !== helloReply(this.#version, this.#id)) this.#wrong(`HELLO ${show(hello)} does not match CLIENT ID ${this.#id}`);
    if (name !== '$-1\r\n') this.#wrong(`the refused HELLO 3 SETNAME set the name: ${show(name)}`);
    this.#name = '';
  }

  /** Commands whose raw replies the caller checks itself (connection set-up). */
  async #rawPipeline(commands: readonly (readonly string[])[]): Promise<(string | null)[]> {
    const results: (string | null)[] = [];
    const done = commands.map(
      (command) =>
        new Promise<void>((resolve) => {
          this.#queue.push({
            expected: {
              command,
              frames: 1,
              check: (frames) => {
                results.push(frames === null ? null : frames[0]!.raw);
                resolve();
              },
            },
            frames: [],
          });
        }),
    );
    this.#socket!.write(Buffer.concat(commands.map((c) => encodeCommand(c))));
    await this.#within(Promise.all(done), commands);
    return results;
  }

  async #within(promise: Promise<unknown>, commands: readonly (readonly string[])[]): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const stuck = new Promise<'stuck'>((resolve) => (timer = setTimeout(() => resolve('stuck'), STUCK_MS)));
    const outcome = await Promise.race([promise, stuck]);
    clearTimeout(timer);
    if (outcome === 'stuck') {
      this.#wrong(`replies missing after ${STUCK_MS} ms; ${this.#queue.length} of the pipeline unanswered, next ${show(this.#queue[0]?.expected.command)}; pipeline ${show(commands.map((c) => c.join(' ')))}`);
      this.#socket?.destroy();
      await promise;
    }
  }

  #onData(chunk: Buffer): void {
    this.#buffer = this.#buffer.length === 0 ? chunk : Buffer.concat([this.#buffer, chunk]);
    let pos = 0;
    for (;;) {
      const types = new Set<number>();
      const parsed = parseAt(this.#buffer, pos, types);
      if (parsed === null) break;
      for (const type of types) if (!RESP2_TYPES.has(type)) this.#findings.resp3Types.add(String.fromCharCode(type));
      const frame: Frame = { raw: this.#buffer.toString('latin1', pos, parsed[1]), value: parsed[0] };
      pos = parsed[1];
      this.#onFrame(frame);
    }
    this.#buffer = this.#buffer.subarray(pos);
  }

  #onFrame(frame: Frame): void {
    const v = frame.value;
    if (Array.isArray(v) && v.length === 3 && v[0] === 'message') {
      const channel = String(v[1]);
      this.#findings.counts.messages++;
      if (!this.#subscribed.has(channel)) {
        this.#wrong(`message on ${channel} (${String(v[2])}) while not subscribed to it; waiting for ${show(this.#queue[0]?.expected.command)}`);
        return;
      }
      const seq = Number(v[2]);
      const last = this.#lastSeq.get(channel) ?? -1;
      if (!(seq > last)) this.#wrong(`message ${seq} on ${channel} after ${last}`);
      this.#lastSeq.set(channel, seq);
      return;
    }
    const head = this.#queue[0];
    if (head === undefined) {
      this.#wrong(`a frame nobody asked for: ${show(frame.raw)}`);
      return;
    }
    if (Array.isArray(v) && (v[0] === 'subscribe' || v[0] === 'unsubscribe')) {
      if (v[0] === 'subscribe') this.#subscribed.add(String(v[1]));
      else this.#subscribed.delete(String(v[1]));
    }
    if (frame.raw === '+RESET\r\n') this.#subscribed.clear();
    head.frames.push(frame);
    if (head.frames.length === head.expected.frames || frame.raw.startsWith('-')) {
      this.#queue.shift();
      this.#findings.counts.commands++;
      head.expected.check(head.frames);
    }
  }

  #onClose(): void {
    const at = Date.now();
    const pending = this.#queue;
    this.#queue = [];
    this.#subscribed.clear();
    if (this.isRunning && !this.#findings.inFailoverWindow(at)) this.#wrong(`connection closed by the proxy outside a failover window; ${pending.length} replies owed`);
    else if (this.isRunning) this.#findings.allowedErrors.push(`${this.#label}: connection closed in the failover window (${pending.length} owed)`);
    for (const entry of pending) entry.expected.check(null);
    this.#closed?.();
  }

  /** An error reply: allowed only as documented (a failover's shard unavailable); the outcome is unknown. */
  #errorAllowed(frame: Frame, command: readonly string[]): boolean {
    if (/^-ERR shard s\d unavailable/.test(frame.raw) && this.#findings.inFailoverWindow(Date.now())) {
      this.#findings.allowedErrors.push(`${this.#label} ${command[0]}: ${frame.raw.trim()}`);
      return true;
    }
    this.#wrong(`${command.join(' ')} answered ${show(frame.raw)}`);
    return false;
  }

  #expectRaw(command: readonly string[], raw: () => string, onMatch: () => void = () => undefined): Expected {
    const wanted = raw();
    return {
      command,
      frames: 1,
      check: (frames) => {
        if (frames === null) return;
        const raw = frames[0]!.raw;
        if (raw === wanted) onMatch();
        else if (raw.startsWith('-') && !wanted.startsWith('-')) this.#errorAllowed(frames[0]!, command);
        else this.#wrong(`${command.join(' ')} answered ${show(raw)}, expected ${show(wanted)}`);
      },
    };
  }

  /** INCRBY's reply (or EXEC's element): within the counter's bounds plus n; pins the counter. */
  /** Per counter key, what happened to it lately (for the report). */
  readonly #history = new Map<string, string[]>();

  #note(key: string, text: string): void {
    let list = this.#history.get(key);
    if (list === undefined) this.#history.set(key, (list = []));
    list.push(`${Date.now() % 100_000} ${text}`);
    if (list.length > 8) list.shift();
  }

  /** INCRBY's reply (or EXEC's element): within the counter's bounds plus n; pins the counter. */
  #incremented(key: string, n: number, reply: Value, what: string): void {
    const counter = this.counters.get(key)!;
    if (typeof reply !== 'number' || reply < counter.lo + n || reply > counter.hi + n) {
      this.#wrong(`${what} ${key} ${n} answered ${show(reply)}, expected ${counter.lo + n}${counter.hi > counter.lo ? `..${counter.hi + n}` : ''}; before: ${(this.#history.get(key) ?? []).join(' / ')}`);
    }
    this.#note(key, `${what} ${n} -> ${show(reply)}`);
    // Pinned to what the shard says, so one surprise is reported once.
    if (typeof reply === 'number') counter.lo = counter.hi = reply;
  }

  #unknown(key: string, n: number, why = 'no reply'): void {
    this.#note(key, `+${n} unknown (${why})`);
    this.counters.get(key)!.hi += n;
    this.#findings.counts.unknown++;
  }

  #incrby(): Expected[] {
    const key = this.#pick(this.#keys);
    const n = 1 + Math.floor(this.#random() * 9);
    const command = ['INCRBY', key, String(n)];
    return [
      {
        command,
        frames: 1,
        check: (frames) => {
          if (frames === null) return this.#unknown(key, n);
          if (frames[0]!.raw.startsWith('-')) {
            this.#errorAllowed(frames[0]!, command);
            return this.#unknown(key, n, frames[0]!.raw.trim());
          }
          this.#incremented(key, n, frames[0]!.value, 'INCRBY');
        },
      },
    ];
  }

  #mget(): Expected[] {
    const keys = [this.#pick(this.#keys), this.#pick(this.#keys), this.#pick(this.#keys), this.#pick(this.#keys)];
    const command = ['MGET', ...keys];
    const exists = ['EXISTS', ...keys];
    return [
      {
        command,
        frames: 1,
        check: (frames) => {
          if (frames === null) return;
          const v = frames[0]!.value;
          if (frames[0]!.raw.startsWith('-')) return void this.#errorAllowed(frames[0]!, command);
          if (!Array.isArray(v) || v.length !== keys.length) return this.#wrong(`MGET answered ${show(v)}`);
          keys.forEach((key, i) => {
            const c = this.counters.get(key)!;
            const got = v[i];
            const ok = got === null ? c.lo === 0 : Number(got) >= c.lo && Number(got) <= c.hi;
            if (!ok) this.#wrong(`MGET ${key} (position ${i}) answered ${show(got)}, expected ${c.lo}..${c.hi}; whole reply ${show(v)}`);
          });
        },
      },
      {
        command: exists,
        frames: 1,
        check: (frames) => {
          if (frames === null) return;
          if (frames[0]!.raw.startsWith('-')) return void this.#errorAllowed(frames[0]!, exists);
          const min = keys.filter((k) => this.counters.get(k)!.lo > 0).length;
          const max = keys.filter((k) => this.counters.get(k)!.hi > 0).length;
          const v = frames[0]!.value;
          if (typeof v !== 'number' || v < min || v > max) this.#wrong(`EXISTS answered ${show(v)}, expected ${min}..${max}`);
        },
      },
    ];
  }

  #hello(): Expected[] {
    const variants: string[][] = [['HELLO', '3'], ['HELLO', '3', 'SETNAME', `${this.#label}-x`], ['HELLO', '3', 'AUTH', 'default', 'pw'], ['HELLO', '3', 'BOGUS']];
    const hello3 = this.#pick(variants);
    const name = this.#random() < 0.5 ? `${this.#label}-n${Math.floor(this.#random() * 1000)}` : null;
    const hello2 = name === null ? ['HELLO', '2'] : ['HELLO', '2', 'SETNAME', name];
    this.#findings.counts.hello3++;
    return [
      this.#expectRaw(hello3, () => NOPROTO),
      this.#expectRaw(hello2, () => helloReply(this.#version, this.#id), () => {
        if (name !== null) this.#name = name;
      }),
      this.#getname(),
      this.#expectRaw(['CLIENT', 'ID'], () => `:${this.#id}\r\n`),
    ];
  }

  #getname(): Expected {
    const command = ['CLIENT', 'GETNAME'];
    return {
      command,
      frames: 1,
      check: (frames) => {
        if (frames === null) return;
        const wanted = this.#name === '' ? '$-1\r\n' : bulk(this.#name);
        if (frames[0]!.raw !== wanted) this.#wrong(`CLIENT GETNAME answered ${show(frames[0]!.raw)}, expected ${show(wanted)}`);
      },
    };
  }

  #hashOps(): Expected[] {
    const field = `f${Math.floor(this.#random() * 6)}`;
    const value = `v${Math.floor(this.#random() * 1000)}`;
    const hset = ['HSET', this.#hashKey, field, value];
    const hgetall = ['HGETALL', this.#hashKey];
    return [
      {
        command: hset,
        frames: 1,
        check: (frames) => {
          const hash = this.#hash;
          if (frames === null || frames[0]!.raw.startsWith('-')) {
            if (frames !== null) this.#errorAllowed(frames[0]!, hset);
            this.#hash = null; // unknown until the next HGETALL
            return;
          }
          if (hash === null) return;
          const wanted = hash.has(field) ? 0 : 1;
          if (frames[0]!.value !== wanted) this.#wrong(`HSET ${field} answered ${show(frames[0]!.value)}, expected ${wanted}`);
          hash.set(field, value);
        },
      },
      {
        command: hgetall,
        frames: 1,
        check: (frames) => {
          if (frames === null) return;
          if (frames[0]!.raw.startsWith('-')) return void this.#errorAllowed(frames[0]!, hgetall);
          const v = frames[0]!.value;
          if (!Array.isArray(v) || v.length % 2 !== 0) return this.#wrong(`HGETALL answered ${show(v)}`);
          const got = new Map<string, string>();
          for (let i = 0; i < v.length; i += 2) got.set(String(v[i]), String(v[i + 1]));
          const sorted = (m: Map<string, string>): string => JSON.stringify([...m].sort());
          if (this.#hash !== null && sorted(got) !== sorted(this.#hash)) this.#wrong(`HGETALL answered ${sorted(got)}, expected ${sorted(this.#hash)}`);
          this.#hash = got;
        },
      },
    ];
  }

  #multi(isWatched: boolean): Expected[] {
    const key = this.#pick(this.#keys);
    const n = 1 + Math.floor(this.#random() * 9);
    const exec = ['EXEC'];
    const expected: Expected[] = [];
    if (isWatched) expected.push(this.#expectRaw(['WATCH', key], () => '+OK\r\n'));
    expected.push(this.#expectRaw(['MULTI'], () => '+OK\r\n'));
    expected.push(this.#expectRaw(['INCRBY', key, String(n)], () => '+QUEUED\r\n'));
    if (!isWatched) expected.push(this.#expectRaw(['GET', key], () => '+QUEUED\r\n'));
    expected.push({
      command: exec,
      frames: 1,
      check: (frames) => {
        if (frames === null) return this.#unknown(key, n);
        const v = frames[0]!.value;
        if (frames[0]!.raw.startsWith('-')) {
          this.#errorAllowed(frames[0]!, exec);
          return this.#unknown(key, n, frames[0]!.raw.trim());
        }
        // A watched slot that moved (or whose shard failed over) since WATCH: null, nothing ran.
        if (isWatched && v === null) return this.#note(key, `WATCH/EXEC ${n} -> null`);
        if (!Array.isArray(v) || v.length !== (isWatched ? 1 : 2)) return this.#wrong(`EXEC answered ${show(v)}`);
        this.#incremented(key, n, v[0]!, isWatched ? 'WATCH/EXEC INCRBY' : 'EXEC INCRBY');
        if (!isWatched && v[1] !== String(v[0])) this.#wrong(`EXEC's GET answered ${show(v[1])} after INCRBY ${show(v[0])}`);
      },
    });
    return expected;
  }

  #subscribeBlock(): Expected[] {
    const a = this.#pick(this.#channels);
    let b = this.#pick(this.#channels);
    if (b === a) b = this.#channels[(this.#channels.indexOf(a) + 1) % this.#channels.length]!;
    const byReset = this.#random() < 0.4;
    this.#findings.counts.subscribes++;
    const confirm = (kind: string, channel: string, count: number): string => `*3\r\n${bulk(kind)}${bulk(channel)}:${count}\r\n`;
    const sub: Expected = {
      command: ['SUBSCRIBE', a, b],
      frames: 2,
      check: (frames) => {
        if (frames === null) return;
        const wanted = confirm('subscribe', a, 1) + confirm('subscribe', b, 2);
        const got = frames.map((f) => f.raw).join('');
        if (got !== wanted) this.#wrong(`SUBSCRIBE ${a} ${b} answered ${show(got)}`);
      },
    };
    const expected: Expected[] = [
      sub,
      this.#expectRaw(['PING'], () => `*2\r\n${bulk('pong')}${bulk('')}`),
      this.#expectRaw(['HELLO', '3'], () => SUBSCRIBED_ONLY('hello')),
      this.#expectRaw(['HELLO', '2'], () => SUBSCRIBED_ONLY('hello')),
      this.#expectRaw(['GET', a], () => SUBSCRIBED_ONLY('get')),
      this.#expectRaw(['PING', 'hi'], () => `*2\r\n${bulk('pong')}${bulk('hi')}`),
    ];
    if (byReset) {
      this.#findings.counts.resets++;
      expected.push(this.#expectRaw(['RESET'], () => '+RESET\r\n', () => (this.#name = '')));
    } else {
      expected.push({
        command: ['UNSUBSCRIBE', a, b],
        frames: 2,
        check: (frames) => {
          if (frames === null) return;
          const got = frames.map((f) => f.raw).join('');
          const wanted = confirm('unsubscribe', a, 1) + confirm('unsubscribe', b, 0);
          if (got !== wanted) this.#wrong(`UNSUBSCRIBE ${a} ${b} answered ${show(got)}`);
        },
      });
    }
    // Back in plain mode: a plain reply, not a late message.
    expected.push(this.#expectRaw(['ECHO', `after-${a}`], () => bulk(`after-${a}`)));
    return expected;
  }

  async run(): Promise<void> {
    await this.#connect();
    while (this.isRunning) {
      if (this.#socket === null || this.#socket.destroyed) {
        this.#findings.counts.reconnects++;
        await sleep(50);
        try {
          await this.#connect();
        } catch {
          continue;
        }
      }
      const expected: Expected[] = [];
      if (this.#random() < 0.12) {
        // WATCH ... EXEC alone in its pipeline, after every earlier reply and before any later
        // command: pipelined with other commands it runs out of order with them (the regression
        // test above), which would hide everything else this test looks for.
        expected.push(...this.#multi(true));
      } else {
        const ops = 2 + Math.floor(this.#random() * 6);
        for (let i = 0; i < ops; i++) {
          const r = this.#random();
          if (r < 0.32) expected.push(...this.#incrby());
          else if (r < 0.45) expected.push(...this.#mget());
          else if (r < 0.58) expected.push(...this.#hello());
          else if (r < 0.69) expected.push(...this.#hashOps());
          else if (r < 0.8) expected.push(...this.#multi(false));
          else if (r < 0.94) expected.push(...this.#subscribeBlock());
          else expected.push(this.#getname());
        }
        // RESET at the end of a pipeline.
        if (this.#random() < 0.25) {
          this.#findings.counts.resets++;
          expected.push(this.#expectRaw(['RESET'], () => '+RESET\r\n', () => (this.#name = '')));
          expected.push(this.#getname());
        }
      }
      const done = expected.map(
        (e) =>
          new Promise<void>((resolve) => {
            this.#queue.push({
              expected: {
                ...e,
                check: (frames) => {
                  e.check(frames);
                  resolve();
                },
              },
              frames: [],
            });
          }),
      );
      const bytes = Buffer.concat(expected.map((e) => encodeCommand(e.command)));
      this.#findings.counts.pipelines++;
      // Sometimes in two writes cut anywhere, so the proxy's parser sees a request split.
      if (this.#random() < 0.3) {
        const cut = 1 + Math.floor(this.#random() * (bytes.length - 1));
        this.#socket!.write(bytes.subarray(0, cut));
        await sleep(1);
        if (!this.#socket!.destroyed) this.#socket!.write(bytes.subarray(cut));
      } else {
        this.#socket!.write(bytes);
      }
      await this.#within(Promise.all(done), expected.map((e) => e.command));
    }
  }

  async stop(): Promise<void> {
    this.isRunning = false;
    const socket = this.#socket;
    if (socket !== null && !socket.destroyed) {
      const closed = new Promise<void>((resolve) => (this.#closed = resolve));
      socket.destroy();
      await closed;
    }
  }
}

// ---------------------------------------------------------------------------------------------

describe('RESP3 clients (HELLO 3) through the proxy, under slot moves and a failover', () => {
  const deployment = useMigrationDeployment({
    shards: 3,
    replicas: 1,
    config: { nodeTimeoutMs: NODE_TIMEOUT_MS, failoverWaitMs: 5_000, migrateKeysPerSecond: 2_000 },
  });
  let single: SingleRedis | undefined;
  beforeAll(async () => {
    single = await startSingleRedis();
  }, 30_000);
  afterAll(async () => {
    await single?.stopAll();
  });

  it('answers HELLO, HELLO 3 and every reply type as a RESP2-only Redis does, byte for byte', async () => {
    const { proxy } = deployment;
    const directPort = single!.redis.port;
    await rawCommands(proxy.port, [['FLUSHALL']]);
    await rawCommands(directPort, [['FLUSHALL']]);
    const handshake = [
      ['HELLO', '3'],
      ['HELLO', '3', 'AUTH', 'default', 'pw', 'SETNAME', 'early'],
      ['CLIENT', 'GETNAME'],
      ['HELLO', '3', 'SETNAME', 'bad name'],
      ['HELLO'],
      ['HELLO', '2', 'SETNAME', 'n2'],
      ['CLIENT', 'GETNAME'],
      ['HELLO', '2', 'AUTH', 'default', 'pw'],
      ['HELLO', '2', 'AUTH', 'default'],
      ['HELLO', '2', 'SETNAME'],
      ['HELLO', '2', 'SETNAME', 'bad name'],
      ['HELLO', '2', 'FOO'],
      ['HELLO', '1'],
      ['HELLO', 'x'],
      ['HELLO', '3', 'SETNAME', 'n4'],
      ['CLIENT', 'GETNAME'],
      ['PING'],
      ['ECHO', 'still RESP2'],
    ];
    expect(await differences(proxy.port, directPort, handshake), 'handshakes').toEqual([]);

    const merges = [
      ['HELLO', '3'],
      ['MSET', 'a', '1', 'b', '', 'c', 'x', '{a}2', '-0'],
      ['MGET', 'a', 'nope', 'b', 'c', 'nope2', '{a}2'],
      ['HELLO', '3'],
      ['EXISTS', 'a', 'b', 'nope', 'a'],
      ['HSET', 'h', 'f1', 'v1', 'f2', '2'],
      ['HGETALL', 'h'],
      ['HGETALL', 'nohash'],
      ['ZADD', 'z', '1.5', 'm1', '-inf', 'm2', '1e300', 'm3', '0.1', 'm4'],
      ['ZRANGE', 'z', '0', '-1', 'WITHSCORES'],
      ['ZSCORE', 'z', 'm3'],
      ['ZSCORE', 'z', 'nomember'],
      ['ZINCRBY', 'z', '0.2', 'm4'],
      ['ZMSCORE', 'z', 'm1', 'nomember', 'm2'],
      ['INCRBYFLOAT', 'fl', '3.0e3'],
      ['SET', 'big', '9223372036854775807'],
      ['INCR', 'big'],
      ['DECRBY', 'neg', '9223372036854775807'],
      ['DBSIZE'],
      ['CONFIG', 'GET', 'hash-max-listpack-*'],
      ['SADD', 's', 'x'],
      ['SMEMBERS', 's'],
      ['SMISMEMBER', 's', 'x', 'y'],
      ['SISMEMBER', 's', 'y'],
      ['OBJECT', 'ENCODING', 'h'],
      ['LPOS', 'nolist', 'x'],
      ['XADD', 'st', '1-1', 'f', 'v'],
      ['XRANGE', 'st', '-', '+'],
      ['GETDEL', 'nope'],
      ['HELLO', '3'],
      ['KEYS', '*'],
      ['DEL', 'a', 'b', 'c', 'nope', '{a}2'],
      ['MGET', 'a', 'b', 'c'],
      ['UNLINK', 'h', 'nope'],
      ['TOUCH', 'z', 's', 'nope'],
      ['DBSIZE'],
      ['TYPE', 'st'],
      ['PING'],
    ];
    expect(await differences(proxy.port, directPort, merges), 'fan-out merges and RESP3-typed replies').toEqual([]);

    const subscribed = [
      ['SUBSCRIBE', 'c1', 'c2'],
      ['HELLO', '3'],
      ['HELLO'],
      ['HELLO', '2', 'SETNAME', 'sub'],
      ['CLIENT', 'TRACKING', 'ON'],
      ['CLIENT', 'GETNAME'],
      ['PING'],
      ['PING', 'x'],
      ['PSUBSCRIBE', 'p*'],
      ['UNSUBSCRIBE', 'c1'],
      ['RESET'],
      ['HELLO', '3'],
      ['CLIENT', 'GETNAME'],
      ['PING'],
    ];
    expect(await differences(proxy.port, directPort, subscribed), 'HELLO while subscribed, then RESET').toEqual([]);

    // Client-side caching: refused clearly, the connection stays a plain RESP2 one.
    expect(await differences(proxy.port, directPort, [['CLIENT', 'TRACKINGINFO'], ['HELLO', '3'], ['PING']]), 'TRACKINGINFO').toEqual([]);
    const tracking = await rawCommands(proxy.port, [
      ['CLIENT', 'TRACKING', 'ON'],
      ['CLIENT', 'TRACKING', 'ON', 'BCAST', 'PREFIX', 'a'],
      ['CLIENT', 'CACHING', 'YES'],
      ['CLIENT', 'GETREDIR'],
      ['SET', 'tracked', '1'],
      ['GET', 'tracked'],
    ]);
    const refused = (name: string): string =>
      `-ERR command 'client|${name}' is not allowed through slotproxy (client-side caching is not supported through the proxy)\r\n`;
    expect(tracking.data.toString('latin1')).toBe(refused('tracking') + refused('tracking') + refused('caching') + refused('getredir') + '+OK\r\n' + bulk('1'));

    // HELLO cannot switch the protocol from inside a transaction either: refused, transaction aborted.
    const inMulti = await rawCommands(proxy.port, [['MULTI'], ['HELLO', '3'], ['EXEC'], ['HGETALL', 'nohash']]);
    expect(inMulti.data.toString('latin1')).toBe(
      "+OK\r\n-ERR command 'hello' cannot be queued in a transaction through slotproxy\r\n-EXECABORT Transaction discarded because of previous errors.\r\n*0\r\n",
    );

    // INFO: a RESP2 bulk string (RESP3's verbatim string never), the proxy's section first.
    const info = await rawCommands(proxy.port, [['HELLO', '3'], ['INFO']]);
    const infoFrames = framesOf(info.data, new Set());
    expect(infoFrames[0]!.raw).toBe(NOPROTO);
    expect(infoFrames[1]!.raw.startsWith('$')).toBe(true);
    expect(String(infoFrames[1]!.value).startsWith('# Proxy')).toBe(true);
  }, 20_000);

  it('answers a RESET pipelined behind WATCH/UNWATCH/EXEC, or sent inside MULTI, as one Redis does', async () => {
    const { proxy } = deployment;
    const directPort = single!.redis.port;
    const wrong: string[] = [];
    // A connection pool's reset right behind a transaction. One Redis answers every earlier
    // command, then +RESET. Through the proxy (8dad94f): WATCH, UNWATCH and EXEC are answered
    // "-ERR shard sN unavailable: connection closed by the proxy": RESET closes the client's own
    // connection that holds the WATCH (dispatcher.ts -> SessionCommands.reset() ->
    // ClientPins.close() -> BackendConnection.close() fails what is in flight on it).
    for (const commands of [
      [['SET', 'rk', '0'], ['WATCH', 'rk'], ['GET', 'rk'], ['UNWATCH'], ['RESET'], ['PING']],
      [['SET', 'rk', '0'], ['WATCH', 'rk'], ['MULTI'], ['INCR', 'rk'], ['EXEC'], ['RESET'], ['GET', 'rk']],
      // RESET inside MULTI: Redis runs it at once (it discards the transaction); the proxy
      // refuses it as "cannot be queued" and the connection stays in MULTI, so the next user of
      // a pooled connection gets +QUEUED for its commands. QUIT is the same (the connection stays).
      [['MULTI'], ['RESET'], ['SET', 'rk', '5'], ['GET', 'rk']],
    ]) {
      wrong.push(...(await differences(proxy.port, directPort, commands)));
    }
    const quit = await rawCommands(proxy.port, [['MULTI'], ['QUIT']]).then((r) => r.data.toString('latin1'));
    if (quit !== '+OK\r\n+OK\r\n') wrong.push(`MULTI QUIT answered ${JSON.stringify(quit)}, expected "+OK\\r\\n+OK\\r\\n" and the connection closed`);

    // Worse: a RESET sent while EXEC runs. The transaction ran (the counter moved), the client is
    // told it failed ("shard unavailable"), so a retry would apply it twice. (A key never set
    // before: a SET pipelined ahead of WATCH can run after the transaction, see the next test.)
    const slow = "local i = 0 while i < 20000000 do i = i + 1 end return redis.call('incr', KEYS[1])";
    const rk = `rk:${Date.now()}`;
    const owner = ownerFromStateFile(proxy.stateFile).owner[slotOf(rk)]!;
    const rkNode = deployment.specs.find((spec) => spec.name === owner)!.node;
    for (const [port, nodePort] of [
      [directPort, directPort],
      [proxy.port, rkNode.port],
    ] as const) {
      const socket = net.connect(port, HOST);
      socket.on('error', () => undefined);
      let data = Buffer.alloc(0);
      socket.on('data', (chunk: Buffer) => (data = Buffer.concat([data, chunk])));
      await new Promise((resolve) => socket.once('connect', resolve));
      socket.write(Buffer.concat([['WATCH', rk], ['MULTI'], ['EVAL', slow, '1', rk], ['EXEC']].map((c) => encodeCommand(c))));
      // RESET once the script runs: the node stops answering PING.
      const probe = new Redis({ host: HOST, port: nodePort, protocol: 2 });
      probe.on('error', () => undefined);
      for (const deadline = Date.now() + 3_000; Date.now() < deadline; await sleep(2)) {
        if (!(await Promise.race([probe.ping().then(() => true), sleep(25).then(() => false)]))) break;
      }
      probe.disconnect();
      socket.write(Buffer.concat([['RESET'], ['GET', rk]].map((c) => encodeCommand(c))));
      for (const deadline = Date.now() + 5_000; framesOf(data, new Set()).length < 6 && Date.now() < deadline; ) await sleep(10);
      socket.destroy();
      const got = framesOf(data, new Set()).map((f) => f.raw);
      const wanted = ['+OK\r\n', '+OK\r\n', '+QUEUED\r\n', '*1\r\n:1\r\n', '+RESET\r\n', bulk('1')];
      if (JSON.stringify(got) !== JSON.stringify(wanted)) wrong.push(`${port === directPort ? 'redis' : 'proxy'}: slow EXEC then RESET answered ${JSON.stringify(got)}`);
    }
    expect(wrong).toEqual([]);
  }, 20_000);

  it('runs a WATCHed transaction in the client\'s order with its other commands on the key', async () => {
    const { proxy } = deployment;
    // One Redis: SET, then the transaction, then INCR: EXEC [1], INCR 2, the key ends at 2.
    // Through the proxy (8dad94f), on a new client about half the time the transaction runs
    // BEFORE the SET sent ahead of it (EXEC [1], INCR 1: the SET wiped the transaction's
    // increment, the key ends at 1), and otherwise the INCR sent after EXEC runs before it
    // (INCR 1, EXEC [2]). WATCH and EXEC go on the client's own connection
    // (SessionCommands.#watch/#exec -> #sendAfterOwn with isNow when the slot is settled), its
    // other commands on the shared one, and nothing orders the two connections.
    const wrong: string[] = [];
    for (let i = 0; i < 30; i++) {
      const key = `order:${i}`;
      const commands = [['SET', key, '0'], ['WATCH', key], ['MULTI'], ['INCR', key], ['EXEC'], ['INCR', key], ['GET', key]];
      const got = await rawCommands(proxy.port, commands);
      const final = await rawCommands(proxy.port, [['GET', key]]);
      const text = `${got.data.toString('latin1')}then ${final.data.toString('latin1')}`;
      const wanted = `+OK\r\n+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n:1\r\n:2\r\n$1\r\n2\r\nthen $1\r\n2\r\n`;
      if (text !== wanted) wrong.push(JSON.stringify(text));
    }
    expect(wrong.slice(0, 5), `${wrong.length} of 30 out of order`).toEqual([]);
  }, 20_000);

  it('answers AUTH with a user name as one Redis without a password does', async () => {
    const { proxy } = deployment;
    // The default user has no password: Redis accepts `AUTH default <anything>` (+OK), and
    // refuses an unknown user with WRONGPASS, in AUTH and in HELLO's AUTH alike. The proxy
    // (local-commands.ts, case 'auth') answers both 2-argument forms with the 1-argument form's
    // "called without any password" error, and accepts any user in HELLO (#hello: "the default
    // user accepts any"). A client that sends a user name (go-redis and redis-py with a username,
    // after HELLO 3 is refused) fails to connect through the proxy, not to Redis.
    const commands = [['AUTH', 'default', 'pw'], ['AUTH', 'nosuchuser', 'pw'], ['HELLO', '2', 'AUTH', 'nosuchuser', 'pw'], ['AUTH', 'pw'], ['PING']];
    expect(await differences(proxy.port, single!.redis.port, commands)).toEqual([]);
  }, 10_000);

  it('RESP3 clients fall back to RESP2 and get every reply, in order, while slots move and a shard fails over', async () => {
    const { proxy, shards, specs } = deployment;
    const seed = Number(process.env['RESP3_SEED'] ?? Date.now() % 1_000_000);
    console.log(`resp3-churn seed ${seed} (RESP3_SEED=${seed} to replay)`);
    const random = seededRandom(seed);
    const findings = new Findings();
    const startedAt = Date.now();
    const moving = (slot: number): boolean => slot >= FIRST_MOVING_SLOT;
    const setup = new Redis({ host: HOST, port: proxy.port, protocol: 2 });
    setup.on('error', () => undefined);
    // Filler keys so each move takes a while.
    const fillers = namesWhere('fill:', FILLER_KEYS, moving);
    await setup.mset(...fillers.flatMap((k) => [k, 'x']));

    // Channels: four in the moving slots, one on s1 and one on s2 (never moving).
    const channels = [...namesWhere('ch:m:', 4, moving), namesWhere('ch:1:', 1, (s) => s < 5461)[0]!, namesWhere('ch:2:', 1, (s) => s >= 5461 && s < 10923)[0]!];

    // Publishers: one sequence per channel, one at a time, ack times recorded.
    const published = new Map<string, { seq: number; ackAt: number }[]>(channels.map((c) => [c, []]));
    const publisher = new Redis({ host: HOST, port: proxy.port, maxRetriesPerRequest: 1, retryStrategy: () => 50 });
    publisher.on('error', () => undefined);
    let isPublishing = true;
    const publishLoops = channels.map(async (channel) => {
      for (let seq = 0; isPublishing; seq++) {
        try {
          await publisher.publish(channel, String(seq));
          published.get(channel)!.push({ seq, ackAt: Date.now() });
        } catch {
          // unknown: neither required nor forbidden
        }
        await sleep(PUBLISH_EVERY_MS);
      }
    });

    // A long-lived ioredis subscriber with its default protocol (HELLO 3, NOPROTO, RESP2).
    const subscriber = new Redis({ host: HOST, port: proxy.port });
    subscriber.on('error', () => undefined);
    const received = new Map<string, { seq: number; at: number }[]>(channels.map((c) => [c, []]));
    subscriber.on('message', (channel: string, message: string) => received.get(channel)?.push({ seq: Number(message), at: Date.now() }));
    await subscriber.subscribe(...channels);
    const subscribedAt = Date.now();
    expect((subscriber as unknown as { condition: { protocol: number } }).condition.protocol, 'ioredis fell back to RESP2').toBe(2);

    // ioredis plain clients with their default protocol, on their own counters.
    const ioKeys = (c: number): string[] => [...namesWhere(`io${c}:m:`, 2, moving), namesWhere(`io${c}:f:`, 1, (s) => !moving(s))[0]!];
    const ioCounters = new Map<string, Counter>();
    const ioClients = Array.from({ length: IOREDIS_CLIENTS }, () => {
      const client = new Redis({ host: HOST, port: proxy.port, maxRetriesPerRequest: 0 });
      client.on('error', () => undefined);
      return client;
    });
    let isRunning = true;
    const ioLoops = ioClients.map(async (client, c) => {
      const rnd = seededRandom(seed * 31 + c);
      const keys = ioKeys(c);
      for (const k of keys) ioCounters.set(k, { lo: 0, hi: 0 });
      const hello = (await client.call('HELLO')) as unknown[];
      if (hello[5] !== 2) findings.add(`ioredis#${c}: HELLO answered ${show(hello)}`);
      while (isRunning) {
        const key = keys[Math.floor(rnd() * keys.length)]!;
        const n = 1 + Math.floor(rnd() * 5);
        const counter = ioCounters.get(key)!;
        const results = await client
          .pipeline()
          .incrby(key, n)
          .call('HELLO', '3')
          .mget(...keys)
          .zadd(`${key}:z`, '1.5', 'a', '1e300', 'b')
          .zrange(`${key}:z`, '0', '-1', 'WITHSCORES')
          .exec();
        const [incr, hello3, mget, , zrange] = results!;
        if (incr![0] !== null) {
          if (!(/^ERR shard s\d unavailable/.test(incr![0].message) && findings.inFailoverWindow(Date.now()))) findings.add(`ioredis#${c}: INCRBY ${key} failed: ${incr![0].message}`);
          counter.hi += n;
          findings.counts.unknown++;
        } else {
          const r = incr![1] as number;
          if (r < counter.lo + n || r > counter.hi + n) findings.add(`ioredis#${c}: INCRBY ${key} ${n} answered ${r}, expected ${counter.lo + n}..${counter.hi + n}`);
          counter.lo = counter.hi = r;
        }
        if (hello3![0]?.message !== 'NOPROTO unsupported protocol version') findings.add(`ioredis#${c}: HELLO 3 answered ${show(hello3)}`);
        if (mget![0] === null && !Array.isArray(mget![1])) findings.add(`ioredis#${c}: MGET answered ${show(mget![1])}`);
        if (zrange![0] === null && JSON.stringify(zrange![1]) !== JSON.stringify(['a', '1.5', 'b', '1.0000000000000001e+300'])) findings.add(`ioredis#${c}: ZRANGE WITHSCORES answered ${show(zrange![1])}`);
        findings.counts.commands += 5;
      }
    });

    // Raw clients.
    const raws = Array.from({ length: RAW_CLIENTS }, (_, i) => {
      const keys = [...namesWhere(`r${i}:m:`, 2, moving), namesWhere(`r${i}:a:`, 1, (s) => s < 5461)[0]!, namesWhere(`r${i}:b:`, 1, (s) => s >= 5461 && s < 10923)[0]!];
      const hashKey = namesWhere(`r${i}:h:`, 1, moving)[0]!;
      return new RawClient(i, proxy.port, Math.floor(random() * 2 ** 31), findings, keys, hashKey, channels);
    });
    const rawLoops = raws.map((r) => r.run().catch((err: Error) => findings.add(`raw client crashed: ${err.stack ?? String(err)}`)));

    // The churn: moving slots s3 -> s1, s1's primary killed, back s1 -> s3.
    const timeline: string[] = [];
    const reshard = async (from: string, to: string): Promise<void> => {
      const window: Window = { label: `reshard ${from} -> ${to}`, from: Date.now(), to: Infinity };
      findings.windows.push(window);
      const result = await runReshard(proxy, from, to, MOVING_SLOTS);
      window.to = Date.now() + RESHARD_SETTLE_MS;
      timeline.push(`${window.label}: ${result.state}, ${result.keysMoved} keys, ${window.to - RESHARD_SETTLE_MS - window.from} ms`);
      expect(result.state, JSON.stringify(result)).toBe('done');
    };
    await sleep(600);
    await reshard('s3', 's1');
    await sleep(400);
    const killedAt = Date.now();
    const failover: Window = { label: 'failover s1', from: killedAt, to: Infinity };
    findings.windows.push(failover);
    shards.primaries[0]!.kill('SIGKILL');
    const promoted = await waitFor(
      's1 failed over',
      () => logEvents(proxy, 'failover promoted').find((e) => e.fields['shard'] === 's1' && e.at >= killedAt - 5),
      10_000,
    );
    failover.to = promoted.at + FAILOVER_SETTLE_MS;
    timeline.push(`s1 primary killed, promoted after ${promoted.at - killedAt} ms`);
    await sleep(FAILOVER_SETTLE_MS);
    await reshard('s1', 's3');
    await sleep(600);

    // Stop: clients first (their last pipelines answered), then the publishers and the subscriber.
    for (const r of raws) r.isRunning = false;
    isRunning = false;
    await Promise.all([...rawLoops, ...ioLoops]);
    await Promise.all(raws.map((r) => r.stop()));
    const stoppedAt = Date.now();
    await sleep(200);
    isPublishing = false;
    await Promise.all(publishLoops);
    publisher.disconnect();
    subscriber.disconnect();
    for (const c of ioClients) c.disconnect();

    // Counters: what every client acknowledged, nothing applied twice, nothing lost.
    const finalWrong: string[] = [];
    const allCounters = new Map<string, Counter>([...ioCounters, ...raws.flatMap((r) => [...r.counters])]);
    const keys = [...allCounters.keys()];
    const values = await setup.mget(...keys);
    keys.forEach((key, i) => {
      const c = allCounters.get(key)!;
      const v = values[i] === null ? 0 : Number(values[i]);
      if (v < c.lo || v > c.hi) finalWrong.push(`${key} = ${values[i]}, expected ${c.lo}..${c.hi}`);
    });

    // The subscriber: messages once each, in order; none missing outside the windows.
    const subscriberWrong: string[] = [];
    const gaps: string[] = [];
    for (const channel of channels) {
      const got = received.get(channel)!;
      for (let i = 1; i < got.length; i++) if (!(got[i]!.seq > got[i - 1]!.seq)) subscriberWrong.push(`${channel}: ${got[i]!.seq} after ${got[i - 1]!.seq}`);
      const seen = new Set(got.map((m) => m.seq));
      let run: { seq: number; ackAt: number }[] = [];
      const endRun = (): void => {
        if (run.length === 0) return;
        const first = run[0]!;
        const last = run[run.length - 1]!;
        const inWindow = findings.windows.find((w) => first.ackAt >= w.from - (w.label.startsWith('failover') ? FAILOVER_LEAD_MS : 0) && last.ackAt <= w.to);
        const text = `${channel}: ${run.length} missed (${first.seq}..${last.seq}, ${last.ackAt - first.ackAt} ms)`;
        if (inWindow === undefined) subscriberWrong.push(`${text} outside any window`);
        else if (inWindow.label.startsWith('reshard') && last.ackAt - first.ackAt > RESHARD_MAX_GAP_MS) subscriberWrong.push(`${text} in ${inWindow.label}, longer than ${RESHARD_MAX_GAP_MS} ms`);
        else gaps.push(`${text} in ${inWindow.label}`);
        run = [];
      };
      for (const p of published.get(channel)!) {
        if (p.ackAt < subscribedAt + 50 || p.ackAt > stoppedAt) continue;
        if (seen.has(p.seq)) endRun();
        else run.push(p);
      }
      endRun();
    }

    // Placement: no key on a shard that does not own its slot (s1's primary is its old replica now).
    const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
    const current: ShardSpec[] = [{ name: 's1', node: shards.replicas[0]![0]! }, specs[1]!, specs[2]!];
    const placement = await checkPlacement(current, owner, 0, () => []);
    const pong = await setup.ping();
    setup.disconnect();

    console.log(
      `resp3-churn seed ${seed}: ${Date.now() - startedAt} ms; ${JSON.stringify(findings.counts)}\n  ${timeline.join('\n  ')}\n` +
        `  allowed errors/closures in the failover window: ${findings.allowedErrors.length} ${findings.allowedErrors.slice(0, 4).join(' | ')}\n` +
        `  subscriber: ${[...received.values()].reduce((n, l) => n + l.length, 0)} messages; gaps in windows: ${gaps.slice(0, 6).join(' | ') || 'none'}`,
    );
    expect(findings.wrong.slice(0, 10), `${findings.wrong.length} wrong replies (seed ${seed})`).toEqual([]);
    expect([...findings.resp3Types], 'RESP3 type bytes through the proxy').toEqual([]);
    expect(finalWrong.slice(0, 10), 'counters').toEqual([]);
    expect(subscriberWrong.slice(0, 10), 'the ioredis subscriber').toEqual([]);
    expect(migrations, 'slots still migrating').toBe(0);
    expect(placement.misplaced.slice(0, 5), 'misplaced keys').toEqual([]);
    expect(pong).toBe('PONG');
    expect(findings.counts.hello3).toBeGreaterThan(20);
    expect(findings.counts.subscribes).toBeGreaterThan(10);
  }, 60_000);
});
