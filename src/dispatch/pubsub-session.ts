import type { BackendConnection, PushSink } from '../backend/backend-connection';
import type { ReplySink } from '../backend/reply-sink';
import type { CommandSpec } from '../commands/handling';
import type { RequestFrame } from '../resp/request-parser';
import { encodeCommand } from '../resp/resp-writer';
import { keySlot } from '../routing/key-slot';
import type { ClientContext } from './client-context';

/** What a Pub/Sub session needs of the dispatcher. */
export interface PubSubShards {
  readonly shardCount: number;
  /** Index of the shard owning a slot. */
  shardOfSlot(slot: number): number;
  /** A Pub/Sub-mode connection of the client's own to a shard's primary. */
  openPushConnection(shard: number, sink: PushSink): BackendConnection;
}

type Kind = 'channel' | 'pattern' | 'shard';

const CONFIRM_NAMES: Readonly<Record<string, { readonly kind: Kind; readonly isAdd: boolean }>> = {
  subscribe: { kind: 'channel', isAdd: true },
  unsubscribe: { kind: 'channel', isAdd: false },
  psubscribe: { kind: 'pattern', isAdd: true },
  punsubscribe: { kind: 'pattern', isAdd: false },
  ssubscribe: { kind: 'shard', isAdd: true },
  sunsubscribe: { kind: 'shard', isAdd: false },
};

/** The first element of a push frame (`*3\r\n$7\r\nmessage\r\n...`), as latin1. */
function pushType(frame: Buffer): string {
  const first = frame.indexOf(10);
  const second = frame.indexOf(10, first + 1);
  if (first < 0 || second < 0) return '';
  const length = Number(frame.toString('latin1', first + 2, second - 1));
  return frame.toString('latin1', second + 1, second + 1 + length);
}

function confirmation(name: string, subject: Buffer | null, count: number): Buffer {
  const head = `*3\r\n$${name.length}\r\n${name}\r\n`;
  const body = subject === null ? '$-1\r\n' : `$${subject.length}\r\n`;
  return Buffer.concat([Buffer.from(head + body), subject ?? Buffer.alloc(0), Buffer.from(subject === null ? `:${count}\r\n` : `\r\n:${count}\r\n`)]);
}

/** A (un)subscribe command whose reply waits for every shard it went to. */
class PendingConfirmation {
  readonly #slot: ReplySink;
  readonly #reply: Buffer;
  #shardsLeft: number;

  constructor(slot: ReplySink, reply: Buffer, shards: number) {
    this.#slot = slot;
    this.#reply = reply;
    this.#shardsLeft = shards;
  }

  shardDone(): void {
    if (--this.#shardsLeft === 0) this.#slot.onReply(this.#reply);
  }
}

/** Confirmations owed by one shard for one command. */
interface Expectation {
  readonly pending: PendingConfirmation;
  remaining: number;
}

/** Tells the session which shard's connection a frame came from. */
class ShardPushSink implements PushSink {
  readonly #session: PubSubSession;
  readonly #shard: number;

  constructor(session: PubSubSession, shard: number) {
    this.#session = session;
    this.#shard = shard;
  }

  onPush(frame: Buffer): void {
    this.#session.onShardPush(this.#shard, frame);
  }

  onPushClosed(): void {
    this.#session.onPushClosed();
  }
}

/**
 * A subscribed client. Channels live on the shard owning the channel name's slot (where
 * PUBLISH through the proxy goes too), patterns on every shard; each shard is reached through
 * a Pub/Sub connection of the client's own. The proxy writes the subscribe confirmations itself,
 * with the counts one Redis would give, once every shard involved has confirmed, and forwards
 * the messages as they come.
 */
export class PubSubSession {
  readonly #client: ClientContext;
  readonly #shards: PubSubShards;
  /** Subscriptions by kind, keyed by the name's latin1 text. */
  readonly #subscriptions: Readonly<Record<Kind, Map<string, Buffer>>> = {
    channel: new Map(),
    pattern: new Map(),
    shard: new Map(),
  };
  readonly #connections = new Map<number, BackendConnection>();
  /** Per shard, the confirmations still owed for each command sent there, in order. */
  readonly #expectations = new Map<number, Expectation[]>();
  #isClosed = false;

  constructor(client: ClientContext, shards: PubSubShards) {
    this.#client = client;
    this.#shards = shards;
  }

  /** True while the client holds any subscription (RESP2 subscribed mode). */
  get isSubscribed(): boolean {
    const s = this.#subscriptions;
    return s.channel.size + s.pattern.size + s.shard.size > 0;
  }

  handle(frame: RequestFrame, spec: CommandSpec): void {
    const { kind, isAdd } = CONFIRM_NAMES[spec.name]!;
    const names: Buffer[] = [];
    for (let i = 1; i < frame.argc; i++) names.push(Buffer.from(frame.arg(i)));
    if (isAdd && names.length === 0) {
      this.#client.reply(Buffer.from(`-ERR wrong number of arguments for '${spec.name}' command\r\n`), spec);
      return;
    }
    const subscribed = this.#subscriptions[kind];
    const targets = isAdd || names.length > 0 ? names : [...subscribed.values()];
    const replies: Buffer[] = [];
    /** Names to send to each shard. */
    const perShard = new Map<number, Buffer[]>();
    for (const name of targets) {
      const key = name.toString('latin1');
      const isChange = isAdd ? !subscribed.has(key) : subscribed.has(key);
      if (isAdd) subscribed.set(key, name);
      else subscribed.delete(key);
      replies.push(confirmation(spec.name, name, this.#count(kind)));
      if (!isChange) continue;
      const shards = kind === 'pattern' ? [...Array(this.#shards.shardCount).keys()] : [this.#shards.shardOfSlot(keySlot(name, 0, name.length))];
      for (const shard of shards) {
        const list = perShard.get(shard);
        if (list === undefined) perShard.set(shard, [name]);
        else list.push(name);
      }
    }
    if (replies.length === 0) replies.push(confirmation(spec.name, null, this.#count(kind)));
    const reply = Buffer.concat(replies);
    if (perShard.size === 0) {
      this.#client.reply(reply, spec);
      return;
    }
    // The client hears the confirmation only once every shard involved has confirmed, so a
    // PUBLISH it sends right after cannot miss the new subscription.
    const pending = new PendingConfirmation(this.#client.awaitReply(spec), reply, perShard.size);
    for (const [shard, list] of perShard) {
      this.#expected(shard).push({ pending, remaining: list.length });
      this.#connection(shard).sendToPush(encodeCommand([spec.name.toUpperCase(), ...list]));
    }
  }

  /** A frame read on the Pub/Sub connection to `shard`. */
  onShardPush(shard: number, frame: Buffer): void {
    if (this.#isClosed) return;
    const type = pushType(frame);
    if (type === 'message' || type === 'pmessage' || type === 'smessage') {
      this.#client.push(frame);
      return;
    }
    // A confirmation: one per name, in the order the commands were sent to this shard.
    const queue = this.#expectations.get(shard);
    const head = queue?.[0];
    if (head === undefined) return;
    if (--head.remaining === 0) {
      queue!.shift();
      head.pending.shardDone();
    }
  }

  onPushClosed(): void {
    if (this.#isClosed) return;
    // Subscriptions on that shard are gone: end the client, as its own Redis dying would, so it
    // reconnects and subscribes again.
    this.close();
    this.#client.destroy();
  }

  close(): void {
    this.#isClosed = true;
    for (const connection of this.#connections.values()) connection.close();
    this.#connections.clear();
  }

  /** What Redis reports after each (un)subscribe: channels + patterns, or shard channels alone. */
  #count(kind: Kind): number {
    const s = this.#subscriptions;
    return kind === 'shard' ? s.shard.size : s.channel.size + s.pattern.size;
  }

  #connection(shard: number): BackendConnection {
    let connection = this.#connections.get(shard);
    if (connection === undefined) {
      connection = this.#shards.openPushConnection(shard, new ShardPushSink(this, shard));
      this.#connections.set(shard, connection);
    }
    return connection;
  }

  #expected(shard: number): Expectation[] {
    let queue = this.#expectations.get(shard);
    if (queue === undefined) {
      queue = [];
      this.#expectations.set(shard, queue);
    }
    return queue;
  }
}
