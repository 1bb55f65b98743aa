import * as fs from 'node:fs';
import * as net from 'node:net';
import Redis from 'ioredis';
import RedisParser from 'redis-parser';
import { describe, expect, it } from 'vitest';
import { encodeCommand, rawCommands } from '../helpers/proxy-harness';
import { HOST, evenOwner, ownerFromStateFile, sleep, slotOf, useMigrationDeployment, type MigrationProxy } from './migration-harness';

/**
 * Pub/Sub under churn: about a hundred subscribers at a time (ioredis and raw sockets) on
 * channels, patterns and shard channels over 3 shards with a replica each, while publishers send
 * sequence-numbered messages through the proxy without pause, and meanwhile:
 *   - a primary is killed and its replica promoted,
 *   - a primary is frozen past nodeTimeoutMs, failed over, and comes back (demoted),
 *   - the slots of some channels migrate back and forth (reshard through the admin endpoint),
 *   - clients keep subscribing, unsubscribing, leaving Pub/Sub mode (all unsubscribed, RESET)
 *     and coming back, and short-lived clients subscribe and drop their socket abruptly.
 *
 * What is checked, per subscription (a client's connection, one channel, pattern or shard channel):
 *   - every message published after its confirmation and before it ended is delivered, except
 *     around each disruption: the documented windows (docs/resharding.md "Limits": a message
 *     published through an older snapshot as a channel moves can be missed; docs/architecture.md:
 *     a subscriber whose shard fails over is disconnected and subscribes again). Those windows
 *     are bounded here and the gaps inside them are measured and printed;
 *   - no message twice on one subscription (a channel and a matching pattern are two), and each
 *     channel's messages in publish order;
 *   - every (un)subscribe confirmation with the count one Redis would give, replies in order, no
 *     frame the client did not ask for (the proxy's own re-subscriptions stay unseen), no message
 *     for a subscription already confirmed gone, SPUBLISH never reaching a pattern;
 *   - a client that left Pub/Sub mode is a plain client again: never disconnected by a failover;
 *   - after every client has left: no Pub/Sub connection left on any node, the proxy's sockets back
 *     to where they were, INFO's connected_clients back to 1.
 *
 * Found with it, and fixed (dispatch/pubsub-session.ts): a RESET pipelined behind a (UN)SUBSCRIBE
 * was never answered (nor anything after it); a message a shard sent before an UNSUBSCRIBE's
 * confirmation reached the client after it (a RESP2 client back in plain mode took it for the
 * reply to its next command); a client that had left Pub/Sub mode was disconnected by a failover.
 */

const NODE_TIMEOUT_MS = 1_000;
/** Slots that migrate back and forth: s3's highest, which `reshard --from s3` takes first and any later giver gives back first. */
const MOVING_SLOTS = 16;
const FIRST_MOVING_SLOT = 16_384 - MOVING_SLOTS;
/** Keys in the moving slots, so that each move takes a few hundred milliseconds. */
const KEYS_IN_MOVING_SLOTS = 300;
const PUBLISH_EVERY_MS = 50;
/** A message acknowledged to its publisher this long before a subscriber's socket closed may not have reached it. */
const GRACE_MS = 250;
/** After a promotion: subscribers were disconnected, reconnect and subscribe again within this. */
const FAILOVER_SETTLE_MS = 1_500;
/**
 * Before a primary is killed or frozen: a message acknowledged this recently may never be
 * delivered. Redis writes PUBLISH's reply before the messages to the subscribers (7.0 writes its
 * pending clients newest first), so a node stopped between those writes holds messages it has
 * already acknowledged; the failover then disconnects the subscribers, as a failing node does in
 * a Redis Cluster.
 */
const FAILOVER_LEAD_MS = 100;
/** After a plan is done, the last snapshots have reached every session. */
const RESHARD_SETTLE_MS = 300;
/** The longest run of messages one subscription may miss as its channel moves (publish times, first to last). */
const RESHARD_MAX_GAP_MS = 500;
/** A command whose replies have not all come within this is stuck. */
const STUCK_MS = 4_000;

const PATTERNS = ['ch:1:*', 'ch:2:*', 'ch:3:*', 'ch:m:*', 'ch:?:1*', 'sc:*'] as const;
const MESSAGE_TYPES = new Set(['message', 'pmessage', 'smessage']);

type Kind = 'c' | 'p' | 's';
const SUBSCRIBE: Record<Kind, string> = { c: 'subscribe', p: 'psubscribe', s: 'ssubscribe' };
const UNSUBSCRIBE: Record<Kind, string> = { c: 'unsubscribe', p: 'punsubscribe', s: 'sunsubscribe' };

type Frame = string | number | null | Error | Frame[];

/** Wall-clock ms with sub-ms precision: publish acknowledgements and (un)subscribes within the same millisecond keep their order. */
function now(): number {
  return performance.timeOrigin + performance.now();
}

function random<T>(items: readonly T[]): T {
  return items[Math.floor(Math.random() * items.length)]!;
}

function globRegExp(pattern: string): RegExp {
  let source = '^';
  for (const c of pattern) source += c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`${source}$`);
}

/** `count` names `${prefix}${n}` whose slot `isWanted`. */
function namesWhere(prefix: string, count: number, isWanted: (slot: number) => boolean): string[] {
  const names: string[] = [];
  for (let n = 0; names.length < count; n++) if (isWanted(slotOf(`${prefix}${n}`))) names.push(`${prefix}${n}`);
  return names;
}

// ---------------------------------------------------------------------------------------------
// What the clients saw

type EndKind = 'unsub' | 'reset' | 'destroyed' | 'closed' | 'final';

/** A subscription in force on one connection, from its confirmation to its end. */
interface Interval {
  readonly logical: string;
  readonly inc: number;
  readonly subKey: string;
  readonly start: number;
  readonly end: number;
  readonly endKind: EndKind;
  /** What the client still waited for when it ended (raw clients). */
  readonly note?: string;
}

interface Delivery {
  readonly inc: number;
  readonly seq: number;
  readonly at: number;
}

/** A message that came when no subscription of the client could deliver it. */
interface Stray {
  readonly logical: string;
  readonly role: string;
  readonly subKey: string;
  readonly channel: string;
  readonly seq: number;
  readonly at: number;
  /** When the client sent the subscription's last UNSUBSCRIBE (or RESET), and when its confirmation came; null: never. */
  readonly endSentAt: number | null;
  readonly endConfirmedAt: number | null;
  readonly state: string;
}

class Recorder {
  readonly intervals: Interval[] = [];
  /** `${logical}|${subKey}|${channel}` -> deliveries in arrival order. */
  readonly deliveries = new Map<string, Delivery[]>();
  /** Wrong confirmations, counts, replies, frames nobody asked for. */
  readonly protocolErrors: string[] = [];
  /** Messages for a subscription the client never made or whose end was confirmed (raw clients). */
  readonly strays: Stray[] = [];
  /** The same seen by ioredis subscribers. */
  readonly strayMessages: string[] = [];
  /** Clients disconnected by the proxy while in plain (not subscribed) mode. */
  readonly normalModeClosures: string[] = [];
  /** Clients disconnected by the proxy while subscribed: [time, logical]. */
  readonly subscribedClosures: [number, string][] = [];
  /** Plain commands answered with an error: [time, what]. */
  readonly plainErrors: [number, string][] = [];
  /** Replies waited for longer than STUCK_MS. */
  readonly stuck: string[] = [];
  nextInc = 1;
  counters = { connections: 0, subscribeCommands: 0, unsubscribeCommands: 0, resets: 0, normalCommands: 0, abruptCloses: 0 };

  error(list: string[], text: string): void {
    if (list.length < 200) list.push(text);
  }

  deliver(logical: string, inc: number, subKey: string, channel: string, payload: string): void {
    const key = `${logical}|${subKey}|${channel}`;
    let list = this.deliveries.get(key);
    if (list === undefined) this.deliveries.set(key, (list = []));
    list.push({ inc, seq: Number(payload), at: now() });
  }
}

// ---------------------------------------------------------------------------------------------
// Publishers

interface Publish {
  readonly seq: number;
  readonly sentAt: number;
  ackAt: number;
  isOk: boolean;
}

class Publishers {
  readonly sent = new Map<string, Publish[]>();
  readonly #clients: Redis[];
  #isRunning = false;
  #loops: Promise<void>[] = [];
  readonly #channels: readonly string[];
  readonly #shardChannels: readonly string[];

  constructor(port: number, channels: readonly string[], shardChannels: readonly string[]) {
    this.#channels = channels;
    this.#shardChannels = shardChannels;
    this.#clients = [0, 1, 2].map(() => {
      const client = new Redis({ host: HOST, port, maxRetriesPerRequest: 1, retryStrategy: () => 50 });
      client.on('error', () => undefined);
      return client;
    });
  }

  start(): void {
    this.#isRunning = true;
    const all = [...this.#channels.map((c) => [c, false] as const), ...this.#shardChannels.map((c) => [c, true] as const)];
    this.#loops = all.map(([channel, isShard], i) => this.#loop(this.#clients[i % 3]!, channel, isShard));
  }

  async stop(): Promise<void> {
    this.#isRunning = false;
    await Promise.all(this.#loops);
    for (const client of this.#clients) client.disconnect();
  }

  async #loop(client: Redis, channel: string, isShard: boolean): Promise<void> {
    const list: Publish[] = [];
    this.sent.set(channel, list);
    await sleep(Math.random() * PUBLISH_EVERY_MS);
    for (let seq = 1; this.#isRunning; seq++) {
      const publish: Publish = { seq, sentAt: now(), ackAt: 0, isOk: false };
      list.push(publish);
      try {
        await (isShard ? client.call('SPUBLISH', channel, String(seq)) : client.publish(channel, String(seq)));
        publish.isOk = true;
      } catch {
        // Not acknowledged (a failover): it may or may not have been delivered.
      }
      publish.ackAt = now();
      await sleep(PUBLISH_EVERY_MS);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// ioredis subscribers: a fixed set, subscribed again (by the test) on each new connection

class IoSubscriber {
  readonly logical: string;
  readonly #client: Redis;
  readonly #rec: Recorder;
  readonly #channels: readonly string[];
  readonly #pattern: string | null;
  readonly #shardChannel: string | null;
  #inc = 0;
  readonly #open = new Map<string, number>();
  #isFinal = false;

  constructor(rec: Recorder, port: number, logical: string, channels: readonly string[], pattern: string | null, shardChannel: string | null) {
    this.logical = logical;
    this.#rec = rec;
    this.#channels = channels;
    this.#pattern = pattern;
    this.#shardChannel = shardChannel;
    // Default protocol: ioredis 6 asks HELLO 3 first and falls back to RESP2 on NOPROTO.
    this.#client = new Redis({
      host: HOST,
      port,
      autoResubscribe: false,
      autoResendUnfulfilledCommands: false,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      retryStrategy: () => 40 + Math.floor(Math.random() * 40),
    });
    const client = this.#client;
    client.on('error', () => undefined);
    client.on('ready', () => this.#onReady());
    client.on('close', () => this.#onClose());
    client.on('message', (channel: string, message: string) => this.#onMessage(`c:${channel}`, channel, message));
    client.on('pmessage', (pattern: string, channel: string, message: string) => this.#onMessage(`p:${pattern}`, channel, message));
    client.on('smessage', (channel: string, message: string) => this.#onMessage(`s:${channel}`, channel, message));
  }

  get isSubscribedEverywhere(): boolean {
    return this.#open.size === this.#channels.length + (this.#pattern === null ? 0 : 1) + (this.#shardChannel === null ? 0 : 1);
  }

  /** Ends the subscriptions (for the checks) and closes the connection. */
  close(): void {
    this.#isFinal = true;
    this.#endAll('final');
    this.#client.disconnect();
  }

  #onReady(): void {
    const inc = this.#rec.nextInc++;
    this.#inc = inc;
    this.#rec.counters.connections++;
    const started = (kind: Kind, name: string): void => {
      if (this.#inc === inc && !this.#isFinal) this.#open.set(`${kind}:${name}`, now());
    };
    const expectCount = (what: string, got: unknown, want: number): void => {
      if (got !== want) this.#rec.error(this.#rec.protocolErrors, `${this.logical}: ${what} answered count ${String(got)}, one Redis says ${want}`);
    };
    void (async () => {
      const client = this.#client;
      expectCount(`SUBSCRIBE ${this.#channels.join(' ')}`, await client.subscribe(...this.#channels), this.#channels.length);
      for (const channel of this.#channels) started('c', channel);
      if (this.#pattern !== null) {
        expectCount(`PSUBSCRIBE ${this.#pattern}`, await client.psubscribe(this.#pattern), this.#channels.length + 1);
        started('p', this.#pattern);
      }
      if (this.#shardChannel !== null) {
        expectCount(`SSUBSCRIBE ${this.#shardChannel}`, await client.ssubscribe(this.#shardChannel), 1);
        started('s', this.#shardChannel);
      }
    })().catch(() => undefined);
  }

  #onClose(): void {
    if (this.#isFinal) return;
    if (this.#inc !== 0) this.#rec.subscribedClosures.push([now(), this.logical]);
    this.#endAll('closed');
    this.#inc = 0;
  }

  #endAll(kind: EndKind): void {
    const at = now();
    for (const [subKey, start] of this.#open) this.#rec.intervals.push({ logical: this.logical, inc: this.#inc, subKey, start, end: at, endKind: kind });
    this.#open.clear();
  }

  #onMessage(subKey: string, channel: string, message: string): void {
    const wanted = subKey === `p:${this.#pattern}` || subKey === `s:${this.#shardChannel}` || (subKey.startsWith('c:') && this.#channels.includes(channel));
    if (!wanted || (subKey.startsWith('p:') && channel.startsWith('sc:'))) {
      this.#rec.error(this.#rec.strayMessages, `${this.logical}: ${subKey} ${channel} ${message}`);
    }
    this.#rec.deliver(this.logical, this.#inc, subKey, channel, message);
  }
}

// ---------------------------------------------------------------------------------------------
// Raw-socket clients: every frame checked against what one Redis would answer

interface Expected {
  readonly label: string;
  readonly sentAt: number;
  /** Null when `frame` is the reply expected; else what is wrong with it. */
  check(frame: Frame): string | null;
  onMatch?(frame: Frame): void;
}

type Role = 'static' | 'churn' | 'leaver' | 'reset-leaver' | 'resetter' | 'abrupt';

interface Pools {
  readonly channels: readonly string[];
  readonly shardChannels: readonly string[];
  /** One stable channel of each shard. */
  readonly perShard: readonly string[];
}

function isConfirmation(frame: Frame, name: string, subject: string | null, count: number): string | null {
  if (!Array.isArray(frame) || frame.length !== 3 || frame[0] !== name || frame[1] !== subject || frame[2] !== count) {
    return `expected [${name}, ${String(subject)}, ${count}], got ${JSON.stringify(frame instanceof Error ? frame.message : frame)}`;
  }
  return null;
}

function isReply(frame: Frame, expected: Frame): string | null {
  return JSON.stringify(frame instanceof Error ? `ERR:${frame.message}` : frame) === JSON.stringify(expected) ? null : `expected ${JSON.stringify(expected)}, got ${JSON.stringify(frame instanceof Error ? frame.message : frame)}`;
}

class RawClient {
  readonly logical: string;
  readonly role: Role;
  readonly #rec: Recorder;
  readonly #port: number;
  readonly #pools: Pools;
  #socket: net.Socket | null = null;
  #inc = 0;
  #queue: Expected[] = [];
  /** What this connection is subscribed to, once every command sent has run (the model of one Redis). */
  readonly #sets: Record<Kind, Set<string>> = { c: new Set(), p: new Set(), s: new Set() };
  /** Subscriptions that may deliver: from the command sent to the end confirmed. */
  readonly #live = new Set<string>();
  readonly #open = new Map<string, number>();
  /** Per subscription, when its last end (UNSUBSCRIBE, RESET) was sent and when it was confirmed. */
  readonly #ended = new Map<string, { sentAt: number; confirmedAt: number }>();
  #isClosedByUs = false;
  #isStopping = false;
  /** How the connection last left Pub/Sub mode, for the report. */
  #leftBy = 'never subscribed';
  #loop: Promise<void> = Promise.resolve();
  #key: string;

  constructor(rec: Recorder, port: number, logical: string, role: Role, pools: Pools) {
    this.#rec = rec;
    this.#port = port;
    this.logical = logical;
    this.role = role;
    this.#pools = pools;
    this.#key = `plain:${logical}`;
  }

  get isIdle(): boolean {
    return this.#socket !== null && this.#queue.length === 0;
  }

  get isSubscribed(): boolean {
    return this.#sets.c.size + this.#sets.p.size + this.#sets.s.size > 0;
  }

  /** How long the oldest unanswered command of the open connection has waited (0: none, or no connection). */
  get oldestWaitMs(): number {
    return this.#socket === null || this.#queue.length === 0 ? 0 : now() - this.#queue[0]!.sentAt;
  }

  get pending(): string {
    return this.#queue.map((e) => e.label).join(', ');
  }

  connect(): void {
    const socket = net.connect({ host: HOST, port: this.#port });
    socket.setNoDelay(true);
    this.#socket = null;
    const inc = this.#rec.nextInc++;
    const parser = new RedisParser({
      returnReply: (reply: Frame) => this.#onFrame(inc, reply),
      returnError: (err: Error) => this.#onFrame(inc, err),
      returnFatalError: (err: Error) => {
        this.#rec.error(this.#rec.protocolErrors, `${this.logical}: unparseable reply: ${err.message}`);
        socket.destroy();
      },
    });
    socket.on('data', (chunk: Buffer) => parser.execute(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => this.#onClose(inc));
    socket.on('connect', () => {
      this.#inc = inc;
      this.#socket = socket;
      this.#isClosedByUs = false;
      this.#queue = [];
      for (const set of Object.values(this.#sets)) set.clear();
      this.#live.clear();
      this.#open.clear();
      this.#ended.clear();
      this.#rec.counters.connections++;
      this.#start(inc);
    });
  }

  /** Stops acting; `graceful`: QUIT, else the socket is dropped. */
  close(graceful: boolean): void {
    this.#isStopping = true;
    this.#endAll('final');
    this.#isClosedByUs = true;
    if (graceful && this.#socket !== null) this.#socket.end(encodeCommand(['QUIT']));
    else this.#socket?.destroy();
  }

  async stopLoop(): Promise<void> {
    this.#isStopping = true;
    await this.#loop;
  }

  #start(inc: number): void {
    const pools = this.#pools;
    const isLeaver = this.role === 'leaver' || this.role === 'reset-leaver';
    // Leavers hold a channel on every shard, a pattern and a shard channel: a connection to each shard.
    const initial: Buffer[] = [this.#subscribe('c', isLeaver ? pools.perShard : this.#pick('c', 3))];
    if (Math.random() < 0.5 || isLeaver) initial.push(this.#subscribe('p', [random(PATTERNS)]));
    initial.push(this.#ping());
    if (Math.random() < 0.4 || isLeaver) initial.push(this.#subscribe('s', [random(pools.shardChannels)]));
    this.#write(initial);
    switch (this.role) {
      case 'abrupt':
        this.#loop = this.#abrupt(inc);
        break;
      case 'churn':
        this.#loop = this.#churn(inc);
        break;
      case 'leaver':
      case 'reset-leaver':
        this.#loop = this.#leave(inc);
        break;
      case 'resetter':
        this.#loop = this.#resetter(inc);
        break;
      case 'static':
        break;
    }
  }

  #isCurrent(inc: number): boolean {
    return !this.#isStopping && this.#inc === inc && this.#socket !== null;
  }

  async #waitIdle(inc: number): Promise<boolean> {
    while (this.#isCurrent(inc) && this.#queue.length > 0) await sleep(20);
    return this.#isCurrent(inc);
  }

  /** Subscribes, drops the socket after a while, sometimes in the middle of a command. */
  async #abrupt(inc: number): Promise<void> {
    await sleep(30 + Math.random() * 1_500);
    if (!this.#isCurrent(inc)) return;
    if (Math.random() < 0.3) this.#socket!.write(encodeCommand(['SUBSCRIBE', random(this.#pools.channels)]).subarray(0, 12));
    this.#rec.counters.abruptCloses++;
    this.#endAll('destroyed');
    this.#isClosedByUs = true;
    this.#socket!.destroy();
  }

  /** Subscribes and unsubscribes at random, leaves Pub/Sub mode now and then and comes back. */
  async #churn(inc: number): Promise<void> {
    while (await this.#waitIdle(inc)) {
      await sleep(150 + Math.random() * 250);
      if (!this.#isCurrent(inc) || this.#queue.length > 0) continue;
      const batch: Buffer[] = [];
      const actions = 1 + Math.floor(Math.random() * 3);
      for (let a = 0; a < actions; a++) batch.push(...this.#randomAction());
      this.#write(batch);
    }
  }

  #randomAction(): Buffer[] {
    const r = Math.random();
    const { c, p, s } = this.#sets;
    if (!this.isSubscribed) {
      // Plain mode: a plain command, then back to Pub/Sub.
      return [...this.#plainCommands(), this.#subscribe('c', this.#pick('c', 2))];
    }
    if (r < 0.22) return [this.#subscribe('c', this.#pick('c', 1 + Math.floor(Math.random() * 2)))];
    if (r < 0.4) return [this.#unsubscribe('c', c.size > 0 && Math.random() < 0.9 ? [random([...c])] : this.#pick('c', 1))];
    if (r < 0.5) return [this.#subscribe('p', this.#pick('p', 1))];
    if (r < 0.6) return [this.#unsubscribe('p', p.size > 0 ? [random([...p])] : this.#pick('p', 1))];
    if (r < 0.68) return [this.#subscribe('s', this.#pick('s', 1))];
    if (r < 0.75) return [this.#unsubscribe('s', s.size > 0 ? [random([...s])] : this.#pick('s', 1))];
    if (r < 0.8) return [this.#unsubscribe('c', null)];
    if (r < 0.84) return [this.#unsubscribe('p', null)];
    if (r < 0.88) return [this.#unsubscribe('c', null), this.#unsubscribe('p', null), this.#unsubscribe('s', null)];
    if (r < 0.93) return [this.#ping()];
    // RESET, a plain command, and back.
    return [this.#reset(), ...this.#plainCommands(), this.#subscribe('c', this.#pick('c', 2))];
  }

  /** Subscribes, then leaves Pub/Sub mode (all unsubscribed, or RESET) and stays a plain client. */
  async #leave(inc: number): Promise<void> {
    if (!(await this.#waitIdle(inc))) return;
    if (this.role === 'reset-leaver') this.#write([this.#reset()]);
    else this.#write([this.#unsubscribe('c', null), this.#unsubscribe('p', null), this.#unsubscribe('s', null)]);
    while (await this.#waitIdle(inc)) {
      await sleep(100);
      if (this.#isCurrent(inc)) this.#write(this.#plainCommands());
    }
  }

  /** Now and then a SUBSCRIBE pipelined with RESET and a PING, as a connection pool's reset does. */
  async #resetter(inc: number): Promise<void> {
    while (await this.#waitIdle(inc)) {
      await sleep(1_000 + Math.random() * 1_000);
      if (!this.#isCurrent(inc) || this.#queue.length > 0) continue;
      this.#write([this.#subscribe('c', this.#pick('c', 2)), this.#reset(), this.#ping(), this.#subscribe('c', this.#pick('c', 2))]);
    }
  }

  /** Names of `kind` not subscribed now (nor touched by the commands of this batch so far). */
  #pick(kind: Kind, count: number): string[] {
    const pool = kind === 'c' ? this.#pools.channels : kind === 'p' ? PATTERNS : this.#pools.shardChannels;
    const free = pool.filter((name) => !this.#sets[kind].has(name) && !this.#live.has(`${kind}:${name}`));
    const picked: string[] = [];
    while (picked.length < count && free.length > 0) picked.push(free.splice(Math.floor(Math.random() * free.length), 1)[0]!);
    return picked.length > 0 ? picked : [random(pool)];
  }

  #count(kind: Kind): number {
    return kind === 's' ? this.#sets.s.size : this.#sets.c.size + this.#sets.p.size;
  }

  #subscribe(kind: Kind, names: readonly string[]): Buffer {
    const name = SUBSCRIBE[kind];
    const set = this.#sets[kind];
    const inc = this.#inc;
    this.#rec.counters.subscribeCommands++;
    for (const subject of names) {
      const subKey = `${kind}:${subject}`;
      set.add(subject);
      this.#live.add(subKey);
      const count = this.#count(kind);
      this.#queue.push({
        label: `${name} ${subject}`,
        sentAt: now(),
        check: (frame) => isConfirmation(frame, name, subject, count),
        onMatch: () => {
          if (this.#inc === inc && set.has(subject) && !this.#open.has(subKey) && !this.#isStopping) this.#open.set(subKey, now());
        },
      });
    }
    return encodeCommand([name.toUpperCase(), ...names]);
  }

  /** `names` null: every one of the kind, as the command without arguments does. */
  #unsubscribe(kind: Kind, names: readonly string[] | null): Buffer {
    const name = UNSUBSCRIBE[kind];
    const set = this.#sets[kind];
    this.#rec.counters.unsubscribeCommands++;
    const afterEnd = (subject: string): void => {
      const ended = this.#ended.get(`${kind}:${subject}`);
      if (ended !== undefined) ended.confirmedAt = now();
      if (!set.has(subject)) this.#live.delete(`${kind}:${subject}`);
    };
    for (const subject of names ?? set) this.#ended.set(`${kind}:${subject}`, { sentAt: now(), confirmedAt: 0 });
    if (names === null) {
      const all = [...set];
      if (all.length === 0) {
        const count = this.#count(kind);
        this.#queue.push({ label: `${name} (none)`, sentAt: now(), check: (frame) => isConfirmation(frame, name, null, count) });
      }
      // Redis answers them in the order of its dict: any order, counts going down by one.
      const remaining = new Set(all);
      const before = this.#count(kind);
      all.forEach((subject, i) => {
        set.delete(subject);
        this.#end(`${kind}:${subject}`, 'unsub');
        const count = before - i - 1;
        this.#queue.push({
          label: `${name} (all) #${i}`,
          sentAt: now(),
          check: (frame) =>
            Array.isArray(frame) && frame.length === 3 && frame[0] === name && typeof frame[1] === 'string' && remaining.has(frame[1]) && frame[2] === count
              ? null
              : `expected [${name}, one of ${[...remaining].join('|')}, ${count}], got ${JSON.stringify(frame instanceof Error ? frame.message : frame)}`,
          onMatch: (frame) => {
            const subject = (frame as string[])[1]!;
            remaining.delete(subject);
            afterEnd(subject);
          },
        });
      });
      if (all.length > 0) this.#leftBy = `${name} without arguments`;
      return encodeCommand([name.toUpperCase()]);
    }
    for (const subject of names) {
      set.delete(subject);
      this.#end(`${kind}:${subject}`, 'unsub');
      const count = this.#count(kind);
      this.#queue.push({ label: `${name} ${subject}`, sentAt: now(), check: (frame) => isConfirmation(frame, name, subject, count), onMatch: () => afterEnd(subject) });
    }
    this.#leftBy = `${name} ${names.join(' ')}`;
    return encodeCommand([name.toUpperCase(), ...names]);
  }

  #ping(): Buffer {
    const expected: Frame = this.isSubscribed ? ['pong', ''] : 'PONG';
    this.#queue.push({ label: 'PING', sentAt: now(), check: (frame) => isReply(frame, expected) });
    return encodeCommand(['PING']);
  }

  #reset(): Buffer {
    this.#rec.counters.resets++;
    for (const kind of ['c', 'p', 's'] as const) {
      for (const subject of this.#sets[kind]) this.#end(`${kind}:${subject}`, 'reset');
      this.#sets[kind].clear();
    }
    this.#leftBy = 'RESET';
    const ending = [...this.#live].map((subKey) => {
      const ended = { sentAt: now(), confirmedAt: 0 };
      this.#ended.set(subKey, ended);
      return ended;
    });
    this.#queue.push({
      label: 'RESET',
      sentAt: now(),
      check: (frame) => isReply(frame, 'RESET'),
      onMatch: () => {
        for (const ended of ending) ended.confirmedAt = now();
        for (const subKey of [...this.#live]) if (!this.#sets[subKey[0] as Kind].has(subKey.slice(2))) this.#live.delete(subKey);
      },
    });
    return encodeCommand(['RESET']);
  }

  /** SET then GET of the client's own key (plain mode only). */
  #plainCommands(): Buffer[] {
    const value = String(Math.random());
    this.#rec.counters.normalCommands += 2;
    let isSet = true;
    const failed = (frame: Frame): boolean => {
      if (!(frame instanceof Error)) return false;
      // A command in flight on a primary that stops being one fails (docs/architecture.md, HA).
      this.#rec.plainErrors.push([now(), `${this.logical}: ${frame.message}`]);
      return true;
    };
    this.#queue.push({
      label: 'SET',
      sentAt: now(),
      check: (frame) => {
        if (!failed(frame)) return isReply(frame, 'OK');
        isSet = false;
        return null;
      },
    });
    this.#queue.push({ label: 'GET', sentAt: now(), check: (frame) => (failed(frame) || !isSet ? null : isReply(frame, value)) });
    return [encodeCommand(['SET', this.#key, value]), encodeCommand(['GET', this.#key])];
  }

  #write(parts: Buffer[]): void {
    this.#socket?.write(Buffer.concat(parts));
  }

  #end(subKey: string, kind: EndKind): void {
    const start = this.#open.get(subKey);
    if (start === undefined) return;
    this.#open.delete(subKey);
    const at = now();
    const note = this.#queue.map((e) => `${e.label} (${Math.round(at - e.sentAt)} ms)`).join(', ');
    this.#rec.intervals.push({ logical: this.logical, inc: this.#inc, subKey, start, end: at, endKind: kind, note });
  }

  #endAll(kind: EndKind): void {
    for (const subKey of [...this.#open.keys()]) this.#end(subKey, kind);
  }

  #onFrame(inc: number, frame: Frame): void {
    if (inc !== this.#inc || this.#isClosedByUs) return;
    if (Array.isArray(frame) && typeof frame[0] === 'string' && MESSAGE_TYPES.has(frame[0])) {
      const type = frame[0];
      const [subKey, channel, payload] =
        type === 'pmessage' ? [`p:${String(frame[1])}`, String(frame[2]), String(frame[3])] : [`${type === 'message' ? 'c' : 's'}:${String(frame[1])}`, String(frame[1]), String(frame[2])];
      if (!this.#live.has(subKey) || (type === 'pmessage' && channel.startsWith('sc:'))) {
        const ended = this.#ended.get(subKey);
        this.#rec.strays.push({
          logical: this.logical,
          role: this.role,
          subKey,
          channel,
          seq: Number(payload),
          at: now(),
          endSentAt: ended?.sentAt ?? null,
          endConfirmedAt: ended?.confirmedAt ?? null,
          state: `subscribed to ${[...this.#live].join(' ') || 'nothing'}; waiting for ${this.pending || 'nothing'}`,
        });
      }
      this.#rec.deliver(this.logical, inc, subKey, channel, payload);
      return;
    }
    const head = this.#queue.shift();
    if (head === undefined) {
      this.#rec.error(this.#rec.protocolErrors, `${this.logical} (${this.role}): a frame nobody asked for: ${JSON.stringify(frame instanceof Error ? frame.message : frame)}`);
      return;
    }
    const wrong = head.check(frame);
    if (wrong !== null) this.#rec.error(this.#rec.protocolErrors, `${this.logical} (${this.role}): ${head.label}: ${wrong}`);
    else head.onMatch?.(frame);
  }

  #onClose(inc: number): void {
    if (inc !== this.#inc) return;
    this.#socket = null;
    if (!this.#isClosedByUs) {
      const at = now();
      // Until the end of its last subscription is confirmed the proxy may still count it subscribed.
      const isLeaving = this.#queue.some((e) => /^(p|s)?unsubscribe|^RESET/.test(e.label));
      if (this.isSubscribed || isLeaving) this.#rec.subscribedClosures.push([at, this.logical]);
      else {
        this.#rec.error(this.#rec.normalModeClosures, `${this.logical} (${this.role}) at ${new Date(at).toISOString()}: plain client (left Pub/Sub by ${this.#leftBy}) disconnected by the proxy`);
      }
      this.#endAll('closed');
    }
    this.#inc = 0;
    if (!this.#isStopping && this.role !== 'abrupt') setTimeout(() => this.connect(), 50 + Math.random() * 100);
  }
}

// ---------------------------------------------------------------------------------------------
// The proxy and the nodes, looked at from outside

/** The proxy process's established TCP sockets: to each remote port, and from clients (`clients`). */
function proxySockets(pid: number, proxyPort: number): { clients: number; byNodePort: Map<number, number> } {
  const inodes = new Set<string>();
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      const match = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (match !== null) inodes.add(match[1]!);
    } catch {
      // closed meanwhile
    }
  }
  let clients = 0;
  const byNodePort = new Map<number, number>();
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    if (!fs.existsSync(file)) continue;
    for (const line of fs.readFileSync(file, 'utf8').split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 10 || fields[3] !== '01' || !inodes.has(fields[9]!)) continue;
      const localPort = parseInt(fields[1]!.split(':')[1]!, 16);
      const remotePort = parseInt(fields[2]!.split(':')[1]!, 16);
      if (localPort === proxyPort) clients++;
      else byNodePort.set(remotePort, (byNodePort.get(remotePort) ?? 0) + 1);
    }
  }
  return { clients, byNodePort };
}

function rssKb(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
}

/** CLIENT LIST lines of a node that hold or held Pub/Sub state. */
async function pubsubConnections(node: { readonly host: string; readonly port: number }): Promise<string[]> {
  const client = new Redis({ host: node.host, port: node.port, protocol: 2, maxRetriesPerRequest: 1, retryStrategy: () => null });
  client.on('error', () => undefined);
  try {
    const list = (await client.call('CLIENT', 'LIST')) as string;
    return list
      .split('\n')
      .filter((line) => /\b(sub|psub|ssub)=[1-9]/.test(line) || /\bcmd=(p|s)?(un)?subscribe\b/.test(line))
      .map((line) => `${node.port}: ${line}`);
  } finally {
    client.disconnect();
  }
}

interface LogEvent {
  readonly at: number;
  readonly fields: Record<string, unknown>;
}

function logEvents(proxy: MigrationProxy, event: string): LogEvent[] {
  return proxy
    .logs()
    .split('\n')
    .filter((line) => line.startsWith('{') && line.includes(`"event":"${event}"`))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .map((fields) => ({ at: Date.parse(String(fields['time'])), fields }));
}

async function waitFor<T>(what: string, check: () => Promise<T | undefined> | T | undefined, timeoutMs: number): Promise<T> {
  const deadline = now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(20);
  }
}

// ---------------------------------------------------------------------------------------------

describe('Pub/Sub under churn: failovers, a frozen primary and channels migrating back and forth', () => {
  const deployment = useMigrationDeployment({
    shards: 3,
    replicas: 1,
    config: { nodeTimeoutMs: NODE_TIMEOUT_MS, failoverWaitMs: 5_000, migrateKeysPerSecond: 1_000 },
  });

  it('answers HELLO 3 with NOPROTO (RESP2 only), and a SUBSCRIBE pipelined with RESET as one Redis does', async () => {
    const { proxy, shards } = deployment;
    const hello = await rawCommands(proxy.port, [['HELLO', '3'], ['SUBSCRIBE', 'hello:ch'], ['PING']]);
    expect(hello.data.toString('latin1')).toBe('-NOPROTO unsupported protocol version\r\n*3\r\n$9\r\nsubscribe\r\n$8\r\nhello:ch\r\n:1\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n');
    // A connection pool's reset: RESET right behind a SUBSCRIBE, before its confirmation came.
    // One Redis (here a replica of the deployment) answers the confirmations, +RESET, +PONG.
    const commands = [['SUBSCRIBE', 'ch:a', 'ch:b', 'ch:c'], ['RESET'], ['PING']];
    const direct = await rawCommands(shards.replicas[2]![0]!.port, commands);
    const viaProxy = await rawCommands(proxy.port, commands, { timeoutMs: 2_000 }).then(
      (reply) => reply.data.toString('latin1'),
      (err: Error) => err.message,
    );
    // Fails on f88161e/cbf4d84: nothing at all comes back, ever. RESET closes the session
    // (PubSubSession.close()) while the SUBSCRIBE's confirmation is still owed; the reply slot it
    // holds is never answered, and every later reply of the client waits behind it.
    expect.soft(viaProxy, 'SUBSCRIBE + RESET + PING pipelined through the proxy').toBe(direct.data.toString('latin1'));
  });

  it('an ioredis subscriber that unsubscribes from everything under traffic is a plain client again: its next commands get their own replies', async () => {
    const { proxy, shards } = deployment;
    const owner = evenOwner(3);
    // One busy channel on each shard.
    const busy = [0, 1, 2].map((s) => namesWhere(`busy:${s + 1}:`, 1, (slot) => owner[slot] === s)[0]!);
    /** What goes wrong over `rounds` subscribe-then-leave rounds against `port`, under traffic on `busy`. */
    const leaveRounds = async (port: number, rounds: number): Promise<string[]> => {
      const publisher = new Redis({ host: HOST, port });
      publisher.on('error', () => undefined);
      let isRunning = true;
      const loops = busy.map(async (channel) => {
        while (isRunning) await publisher.publish(channel, 'x').catch(() => sleep(10));
      });
      const wrong: string[] = [];
      try {
        for (let round = 0; round < rounds; round++) {
          const client = new Redis({ host: HOST, port, maxRetriesPerRequest: 1 });
          // ioredis reports a frame that answers no command it sent ("Command queue state error") as an 'error' event.
          client.on('error', (err: Error) => wrong.push(`round ${round}: 'error' event: ${err.message}`));
          const step = async (what: string, promise: Promise<unknown>, expected: unknown): Promise<boolean> => {
            const outcome = await Promise.race([promise.catch((err: Error) => `error: ${err.message}`), sleep(2_000).then(() => 'no answer within 2 s')]);
            if (JSON.stringify(outcome) === JSON.stringify(expected)) return true;
            wrong.push(`round ${round}, ${what}: ${JSON.stringify(outcome)}, expected ${JSON.stringify(expected)}`);
            return false;
          };
          try {
            if (!(await step('ECHO', client.echo(`before ${round}`), `before ${round}`))) continue;
            if (!(await step('SUBSCRIBE', client.subscribe(...busy), 3))) continue;
            if (!(await step('PSUBSCRIBE', client.psubscribe('busy:*'), 4))) continue;
            await sleep(20);
            // (ioredis 6's unsubscribe() without arguments never resolves, on one Redis too: named.)
            if (!(await step('UNSUBSCRIBE', client.unsubscribe(...busy), 1))) continue;
            if (!(await step('PUNSUBSCRIBE', client.punsubscribe('busy:*'), 0))) continue;
            for (let i = 0; i < 3; i++) if (!(await step(`ECHO #${i} after leaving`, client.echo(`after ${round}.${i}`), `after ${round}.${i}`))) break;
          } finally {
            client.disconnect();
          }
        }
      } finally {
        isRunning = false;
        await Promise.all(loops);
        publisher.disconnect();
      }
      return wrong;
    };
    // The same client code against one Redis (a replica of the deployment; Pub/Sub is per node) is the control.
    expect(await leaveRounds(shards.replicas[2]![0]!.port, 10), 'one Redis').toEqual([]);
    // Fails on f88161e/cbf4d84 ("Command queue state error. ... Last reply: pmessage,busy:*,..."):
    // a message the shard sent before its PUNSUBSCRIBE confirmation reaches the client after the
    // confirmation (PubSubSession.onShardPush pushes it behind the command's pending reply slot),
    // when ioredis has already left subscriber mode.
    const viaProxy = await leaveRounds(proxy.port, 20);
    expect.soft(viaProxy.slice(0, 10), `through the proxy, ${viaProxy.length} wrong replies`).toEqual([]);
  }, 60_000);

  it('delivers every message outside short windows around each event, once and in order, with correct counts, and leaves nothing behind', async () => {
    const { proxy, shards } = deployment;
    const owner = evenOwner(3);
    const isStable = (shard: number) => (slot: number) => owner[slot] === shard && slot < FIRST_MOVING_SLOT;
    const isMoving = (slot: number): boolean => slot >= FIRST_MOVING_SLOT;
    const stable = [0, 1, 2].map((s) => namesWhere(`ch:${s + 1}:`, 5, isStable(s)));
    const moving = namesWhere('ch:m:', 5, isMoving);
    const channels = [...stable.flat(), ...moving];
    const shardChannels = [...[0, 1, 2].flatMap((s) => namesWhere(`sc:${s + 1}:`, 2, isStable(s))), ...namesWhere('sc:m:', 2, isMoving)];
    const movingNames = new Set([...moving, ...shardChannels.filter((c) => c.startsWith('sc:m:'))]);
    const homeOf = (channel: string, at: number): number => {
      if (!movingNames.has(channel)) return Number(channel.split(':')[1]) - 1;
      return movingHome.filter(([since]) => since <= at).at(-1)![1];
    };
    /** [since, shard index] of the moving slots. */
    const movingHome: [number, number][] = [[0, 2]];
    const pools: Pools = { channels, shardChannels, perShard: stable.map((names) => names[0]!) };

    const checker = new Redis({ host: HOST, port: proxy.port });
    checker.on('error', () => undefined);
    const rec = new Recorder();
    const ioSubscribers: IoSubscriber[] = [];
    const rawClients: RawClient[] = [];
    let publishers: Publishers | null = null;
    let isSpawning = true;
    let spawner: Promise<void> = Promise.resolve();
    const startedAt = now();
    try {
      // Keys in the moving slots: each move then takes a few hundred milliseconds.
      const keys = namesWhere('mk:', KEYS_IN_MOVING_SLOTS, isMoving);
      const fill = checker.pipeline();
      for (const key of keys) fill.set(key, 'x'.repeat(100));
      await fill.exec();
      const baseline = proxySockets(proxy.pid, proxy.port);
      const rssBefore = rssKb(proxy.pid);

      publishers = new Publishers(proxy.port, channels, shardChannels);
      publishers.start();
      for (let i = 0; i < 40; i++) {
        const picked = [...channels].sort(() => Math.random() - 0.5).slice(0, 3);
        ioSubscribers.push(new IoSubscriber(rec, proxy.port, `io${i}`, picked, Math.random() < 0.5 ? random(PATTERNS) : null, Math.random() < 0.3 ? random(shardChannels) : null));
      }
      const roles: [Role, number][] = [['static', 24], ['churn', 16], ['leaver', 4], ['reset-leaver', 3], ['resetter', 3]];
      for (const [role, count] of roles) {
        for (let i = 0; i < count; i++) {
          const client = new RawClient(rec, proxy.port, `${role}${i}`, role, pools);
          rawClients.push(client);
          client.connect();
        }
      }
      // Short-lived subscribers that drop their socket, one every 80 ms.
      spawner = (async () => {
        for (let i = 0; isSpawning; i++) {
          const client = new RawClient(rec, proxy.port, `abrupt${i}`, 'abrupt', pools);
          rawClients.push(client);
          client.connect();
          await sleep(80);
        }
      })();
      await waitFor('every ioredis subscriber subscribed', () => (ioSubscribers.every((s) => s.isSubscribedEverywhere) ? true : undefined), 10_000);
      await sleep(1_000);
      const peak = proxySockets(proxy.pid, proxy.port);

      const windows: { label: string; kind: 'failover' | 'reshard'; shard: number; from: number; eventEnd: number; to: number }[] = [];
      const settleGap = (): Promise<void> => sleep(1_000);
      const reshard = async (from: number, to: number): Promise<void> => {
        const submittedAt = now();
        const submitted = await proxy.submit({ op: 'reshard', from: `s${from + 1}`, to: `s${to + 1}`, slots: MOVING_SLOTS });
        expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
        const status = await proxy.waitForPlan(20_000);
        expect(status.state).toBe('done');
        const doneAt = now();
        expect(ownerFromStateFile(proxy.stateFile).owner.slice(FIRST_MOVING_SLOT), 'owner of the moving slots').toEqual(new Array(MOVING_SLOTS).fill(`s${to + 1}`));
        movingHome.push([submittedAt, to]);
        windows.push({ label: `reshard s${from + 1} -> s${to + 1}`, kind: 'reshard', shard: to, from: submittedAt, eventEnd: doneAt, to: doneAt + RESHARD_SETTLE_MS });
      };
      const promotedAfter = async (shard: number, since: number): Promise<number> =>
        (await waitFor(`s${shard + 1} failed over`, () => logEvents(proxy, 'failover promoted').find((e) => e.fields['shard'] === `s${shard + 1}` && e.at >= since - 5), 15_000)).at;

      // (c) the moving slots go to s1, (a) s1's primary is killed, (c) the slots come back.
      await reshard(2, 0);
      await settleGap();
      const killedAt = now();
      shards.primaries[0]!.kill('SIGKILL');
      const s1PromotedAt = await promotedAfter(0, killedAt);
      windows.push({ label: 's1 primary killed', kind: 'failover', shard: 0, from: killedAt, eventEnd: s1PromotedAt, to: s1PromotedAt + FAILOVER_SETTLE_MS });
      await sleep(FAILOVER_SETTLE_MS);
      await reshard(0, 2);
      await settleGap();
      // (b) s2's primary frozen past nodeTimeoutMs, failed over, then back (demoted).
      const frozenAt = now();
      shards.primaries[1]!.kill('SIGSTOP');
      const s2PromotedAt = await promotedAfter(1, frozenAt);
      windows.push({ label: 's2 primary frozen', kind: 'failover', shard: 1, from: frozenAt, eventEnd: s2PromotedAt, to: s2PromotedAt + FAILOVER_SETTLE_MS });
      await sleep(300);
      shards.primaries[1]!.kill('SIGCONT');
      await waitFor('the old s2 primary demoted', () => logEvents(proxy, 'node demoted').find((e) => e.fields['shard'] === 's2'), 10_000);
      await sleep(FAILOVER_SETTLE_MS);
      // (c) once more, through s2.
      await reshard(2, 1);
      await settleGap();
      await reshard(1, 2);
      await sleep(2_000);

      // Stop: the churn first (its last commands answered), then the publishers, then everyone.
      isSpawning = false;
      await spawner;
      await Promise.all(rawClients.map((c) => c.stopLoop()));
      await sleep(300);
      for (const client of rawClients) if (client.oldestWaitMs > STUCK_MS) rec.error(rec.stuck, `${client.logical} (${client.role}): no reply for ${client.oldestWaitMs} ms to ${client.pending}`);
      await publishers.stop();
      const publishedUntil = now();
      await sleep(GRACE_MS);
      rawClients.forEach((client, i) => client.close(i % 2 === 0));
      for (const subscriber of ioSubscribers) subscriber.close();
      const endedAt = now();

      // ----- What the clients saw
      const sent = publishers.sent;
      const publishedCount = [...sent.values()].reduce((n, list) => n + list.filter((p) => p.isOk).length, 0);
      const regex = new Map(PATTERNS.map((p) => [p, globRegExp(p)]));
      const channelsOf = (subKey: string): string[] => {
        const name = subKey.slice(2);
        if (subKey.startsWith('p:')) return channels.filter((c) => regex.get(name as (typeof PATTERNS)[number])!.test(c));
        return [name];
      };
      const deliveredSeqs = new Map<string, Set<number>>();
      const duplicates: string[] = [];
      const outOfOrder: string[] = [];
      let deliveries = 0;
      for (const [key, list] of rec.deliveries) {
        deliveries += list.length;
        const lastByInc = new Map<number, number>();
        const seen = new Set<string>();
        for (const d of list) {
          const id = `${d.inc}|${d.seq}`;
          if (seen.has(id)) {
            if (duplicates.length < 50) duplicates.push(`${key} #${d.seq} (connection ${d.inc})`);
          } else if ((lastByInc.get(d.inc) ?? 0) > d.seq && outOfOrder.length < 50) {
            outOfOrder.push(`${key}: #${d.seq} after #${lastByInc.get(d.inc)} (connection ${d.inc})`);
          }
          seen.add(id);
          lastByInc.set(d.inc, Math.max(lastByInc.get(d.inc) ?? 0, d.seq));
          const byInc = `${key}|${d.inc}`;
          let set = deliveredSeqs.get(byInc);
          if (set === undefined) deliveredSeqs.set(byInc, (set = new Set()));
          set.add(d.seq);
        }
      }
      /** A required delivery that did not come, and the window that excuses it (null: none does). */
      interface Miss {
        readonly key: string;
        readonly inc: number;
        readonly seq: number;
        readonly sentAt: number;
        readonly window: number | null;
      }
      const misses: Miss[] = [];
      let required = 0;
      for (const iv of rec.intervals) {
        const limit = iv.end - (iv.endKind === 'unsub' ? 0 : GRACE_MS);
        for (const channel of channelsOf(iv.subKey)) {
          const key = `${iv.logical}|${iv.subKey}|${channel}`;
          const got = deliveredSeqs.get(`${key}|${iv.inc}`);
          for (const p of sent.get(channel) ?? []) {
            if (!p.isOk || p.sentAt < iv.start || p.ackAt > limit) continue;
            required++;
            if (got?.has(p.seq) === true) continue;
            const window = windows.findIndex(
              (w) =>
                (w.kind === 'reshard' ? p.sentAt >= w.from : p.ackAt >= w.from - FAILOVER_LEAD_MS) &&
                p.sentAt <= w.to &&
                (w.kind === 'reshard'
                  ? movingNames.has(channel) && !iv.subKey.startsWith('p:')
                  : homeOf(channel, w.from) === w.shard || (iv.endKind === 'closed' && iv.end >= w.from && iv.end <= w.to + GRACE_MS)),
            );
            misses.push({ key, inc: iv.inc, seq: p.seq, sentAt: p.sentAt, window: window < 0 ? null : window });
          }
        }
      }
      const unexcused = misses.filter((m) => m.window === null);
      // The gaps inside each window: runs of consecutive missed messages on one subscription.
      const windowReport = windows.map((w, i) => {
        const inWindow = misses.filter((m) => m.window === i).sort((a, b) => (a.key === b.key ? a.inc - b.inc || a.seq - b.seq : a.key < b.key ? -1 : 1));
        let longestRunMs = 0;
        let runStart = 0;
        let previous: Miss | null = null;
        for (const m of inWindow) {
          if (previous === null || previous.key !== m.key || previous.inc !== m.inc || previous.seq !== m.seq - 1) runStart = m.sentAt;
          longestRunMs = Math.max(longestRunMs, m.sentAt - runStart);
          previous = m;
        }
        const lastMissAfterEventMs = inWindow.reduce((latest, m) => Math.max(latest, m.sentAt - w.eventEnd), Number.NEGATIVE_INFINITY);
        // Longest silence on one subscription of an ioredis subscriber (the same subscriptions on
        // every connection) across the window: the gap between arrivals that overlaps it.
        let longestSilenceMs = 0;
        for (const [key, list] of rec.deliveries) {
          if (!key.startsWith('io')) continue;
          for (let k = 1; k < list.length; k++) {
            if (list[k]!.at >= w.from && list[k - 1]!.at <= w.to) longestSilenceMs = Math.max(longestSilenceMs, list[k]!.at - list[k - 1]!.at);
          }
        }
        return {
          window: w.label,
          at: `${new Date(w.from).toISOString()}..${new Date(w.to).toISOString()}`,
          eventMs: Math.round(w.eventEnd - w.from),
          missed: inWindow.length,
          subscriptions: new Set(inWindow.map((m) => `${m.key}|${m.inc}`)).size,
          longestRunMs: Math.round(longestRunMs),
          lastMissAfterEventMs: inWindow.length === 0 ? null : Math.round(lastMissAfterEventMs),
          longestSilenceMs: Math.round(longestSilenceMs),
          examples: inWindow.slice(0, 3).map((m) => {
            const iv = rec.intervals.find((v) => v.inc === m.inc && m.key.startsWith(`${v.logical}|${v.subKey}|`) && m.sentAt >= v.start && m.sentAt <= v.end);
            return `${m.key} #${m.seq} sent +${m.sentAt - w.from} ms; subscription ${iv === undefined ? '?' : `+${iv.start - w.from}..+${iv.end - w.from} ms, ended ${iv.endKind}`}`;
          }),
        };
      });
      const inFailover = (at: number): boolean => windows.some((w) => w.kind === 'failover' && at >= w.from && at <= w.to);
      const plainErrorsOutsideFailovers = rec.plainErrors.filter(([at]) => !inFailover(at)).map(([at, what]) => `${new Date(at).toISOString()} ${what}`);
      // Messages that came after the client's UNSUBSCRIBE (or RESET) was confirmed. One Redis
      // sends none: a message published before the unsubscribe comes before its confirmation.
      const strays = rec.strays.map((stray) => {
        const publish = sent.get(stray.channel)?.find((p) => p.seq === stray.seq);
        const when = (at: number | null | undefined): string => (at === null || at === undefined || at === 0 ? '-' : `${at - stray.at} ms`);
        return (
          `${stray.logical} (${stray.role}): ${stray.subKey} ${stray.channel} #${stray.seq}: published ${when(publish?.sentAt)}, acknowledged ${when(publish?.ackAt)}, ` +
          `end sent ${when(stray.endSentAt)}, end confirmed ${when(stray.endConfirmedAt)} (times relative to its arrival); ${stray.state}`
        );
      });
      const closuresOutsideFailovers = rec.subscribedClosures.filter(([at]) => !windows.some((w) => w.kind === 'failover' && at >= w.from && at <= w.to));

      // ----- What is left once everyone has gone
      const live = [...shards.primaries.slice(1), ...shards.replicas.flat()];
      const leftClients = await waitFor(
        'clients gone',
        async () => {
          const info = await checker.info('clients');
          const connected = Number(/connected_clients:(\d+)/.exec(info)?.[1]);
          return connected === 1 ? connected : now() - endedAt > 3_000 ? connected : undefined;
        },
        5_000,
      );
      let leftOnNodes: string[] = [];
      for (const deadline = now() + 3_000; ; await sleep(100)) {
        leftOnNodes = (await Promise.all(live.map((node) => pubsubConnections(node)))).flat();
        if (leftOnNodes.length === 0 || now() > deadline) break;
      }
      const channelsLeft = (await checker.call('PUBSUB', 'CHANNELS')) as string[];
      const shardChannelsLeft = (await checker.call('PUBSUB', 'SHARDCHANNELS')) as string[];
      const after = proxySockets(proxy.pid, proxy.port);
      const rssAfter = rssKb(proxy.pid);
      const total = (m: Map<number, number>): number => [...m.values()].reduce((a, b) => a + b, 0);

      console.log(
        JSON.stringify(
          {
            ms: { total: Math.round(endedAt - startedAt), publishing: Math.round(publishedUntil - startedAt) },
            published: publishedCount,
            deliveries,
            required,
            counters: rec.counters,
            intervals: rec.intervals.length,
            rawClients: rawClients.length,
            windows: windowReport,
            closuresOfSubscribed: rec.subscribedClosures.length,
            plainErrors: rec.plainErrors.length,
            proxyRssKb: { before: rssBefore, after: rssAfter },
            strays: rec.strays.length,
            proxySockets: { baseline: { clients: baseline.clients, nodes: total(baseline.byNodePort) }, peak: { clients: peak.clients, nodes: total(peak.byNodePort) }, after: { clients: after.clients, nodes: total(after.byNodePort), byNodePort: Object.fromEntries(after.byNodePort) }, baselineByNodePort: Object.fromEntries(baseline.byNodePort) },
          },
          null,
          1,
        ),
      );

      const describeMiss = (m: Miss): string => {
        const iv = rec.intervals.find((v) => v.inc === m.inc && m.key.startsWith(`${v.logical}|${v.subKey}|`) && m.sentAt >= v.start && m.sentAt <= v.end);
        const channel = m.key.split('|')[2]!;
        const publish = sent.get(channel)!.find((p) => p.seq === m.seq)!;
        const got = [...(deliveredSeqs.get(`${m.key}|${m.inc}`) ?? [])].filter((seq) => Math.abs(seq - m.seq) <= 3).sort((a, b) => a - b);
        return (
          `${m.key} #${m.seq} (connection ${m.inc}) sent ${new Date(m.sentAt).toISOString()}, acknowledged +${Math.round(publish.ackAt - m.sentAt)} ms; ` +
          `subscription ${iv === undefined ? '?' : `${Math.round(iv.start - m.sentAt)}..+${Math.round(iv.end - m.sentAt)} ms, ended by ${iv.endKind}, waiting then for: ${iv.note || 'nothing'}`}; got #${got.join(' #')} around it`
        );
      };
      expect.soft(unexcused.slice(0, 10).map(describeMiss), `${unexcused.length} messages missed outside every window`).toEqual([]);
      expect.soft(duplicates, 'messages delivered twice on one subscription').toEqual([]);
      expect.soft(outOfOrder, 'messages out of publish order on one subscription').toEqual([]);
      expect.soft(rec.protocolErrors, 'confirmations, counts and replies as one Redis gives them; no frame unasked for').toEqual([]);
      // Fails on f88161e/cbf4d84: messages behind an UNSUBSCRIBE's pending confirmation (see the ioredis test).
      expect.soft(strays.slice(0, 20), `${strays.length} messages after their subscription's end was confirmed (or never held, or SPUBLISH reaching a pattern)`).toEqual([]);
      expect.soft(rec.strayMessages, 'ioredis subscribers: messages for subscriptions not held, SPUBLISH reaching a pattern').toEqual([]);
      expect.soft(plainErrorsOutsideFailovers, 'plain commands failed outside a failover').toEqual([]);
      // Fails on f88161e/cbf4d84: churners whose RESET came behind a pending (UN)SUBSCRIBE (see the first test).
      expect.soft(rec.stuck, 'commands never answered').toEqual([]);
      expect.soft(closuresOutsideFailovers.map(([at, who]) => `${who} at ${new Date(at).toISOString()}`), 'subscribers disconnected by the proxy outside a failover').toEqual([]);
      // Fails on f88161e/cbf4d84: a client that unsubscribed from everything keeps its session and
      // its Pub/Sub connections; the failover of any shard it had one to ends the client
      // (PubSubSession.onPushClosed / onTopology), though it is a plain client now.
      expect.soft(rec.normalModeClosures, 'clients that had left Pub/Sub mode disconnected by the proxy').toEqual([]);
      for (const row of windowReport.filter((r) => r.window.startsWith('reshard'))) {
        expect.soft(row.longestRunMs, `${row.window}: longest run of missed messages on one subscription`).toBeLessThanOrEqual(RESHARD_MAX_GAP_MS);
      }
      expect.soft(leftClients, "INFO connected_clients once every client left (the checker's own)").toBe(1);
      expect.soft(leftOnNodes, 'Pub/Sub connections left on the nodes').toEqual([]);
      expect.soft(channelsLeft, 'PUBSUB CHANNELS').toEqual([]);
      expect.soft(shardChannelsLeft, 'PUBSUB SHARDCHANNELS').toEqual([]);
      expect.soft(after.clients, "client sockets the proxy holds (the checker's)").toBe(1);
      // Pools to the promoted primaries are new; the dead and demoted nodes' ones are gone.
      expect.soft(total(after.byNodePort), 'the proxy sockets to the nodes, against before any subscriber').toBeLessThanOrEqual(total(baseline.byNodePort) + 4);
      for (const [port, count] of after.byNodePort) expect.soft(count, `proxy sockets to node ${port}`).toBeLessThanOrEqual(Math.max(...baseline.byNodePort.values()) + 2);
    } finally {
      isSpawning = false;
      await spawner;
      for (const client of rawClients) client.close(false);
      for (const subscriber of ioSubscribers) subscriber.close();
      await publishers?.stop();
      checker.disconnect();
      shards.primaries[1]?.kill('SIGCONT');
    }
  }, 60_000);
});
