import type { BackendConnection, PushSink } from '../backend/backend-connection';
import type { ReplySink } from '../backend/reply-sink';
import type { CommandSpec } from '../commands/handling';
import type { RequestFrame } from '../resp/request-parser';
import { encodeCommand } from '../resp/resp-writer';
import { keySlot } from '../routing/key-slot';
import { sameNode, type Topology } from '../topology/topology';
import type { ClientContext } from './client-context';

/** What a Pub/Sub session needs of the dispatcher. */
export interface PubSubShards {
  /** The current snapshot. */
  readonly topology: Topology;
  /** A Pub/Sub-mode connection of the client's own to a shard's primary. */
  openPushConnection(shard: number, sink: PushSink): BackendConnection;
  /** The session has closed (the dispatcher stops telling it of new snapshots). */
  onClosed(session: PubSubSession): void;
  /** The session has its first channel in `slot`: snapshots that move the slot concern it. */
  watch(session: PubSubSession, slot: number): void;
  /** The session has no channel in `slot` any more. */
  unwatch(session: PubSubSession, slot: number): void;
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

/** The shard a channel or shard channel lives on: where PUBLISH and SPUBLISH for it go now. */
function homeOf(topology: Topology, slot: number): string {
  return topology.shards[topology.homeOf(slot)]!.name;
}

/** What owes confirmations: a client's command, or the session's own (re)subscription. */
interface ConfirmationWaiter {
  shardDone(): void;
}

/** The session's own subscribe and unsubscribe commands, as subscriptions follow the topology: the client hears nothing of them. */
const UNSEEN: ConfirmationWaiter = { shardDone: () => undefined };

/** A (un)subscribe command whose reply waits for every shard it went to. */
class PendingConfirmation implements ConfirmationWaiter {
  readonly #slot: ReplySink;
  readonly #reply: Buffer;
  #shardsLeft: number;
  /** Messages the shards sent before confirming: one Redis would have written them before the confirmation. */
  #held: Buffer[] = [];

  constructor(slot: ReplySink, reply: Buffer, shards: number) {
    this.#slot = slot;
    this.#reply = reply;
    this.#shardsLeft = shards;
  }

  shardDone(): void {
    if (--this.#shardsLeft === 0) this.#slot.onReply(this.#held.length === 0 ? this.#reply : Buffer.concat([...this.#held, this.#reply]));
  }

  /** A message a shard sent before its confirmation: the client gets it before the confirmation. */
  hold(frame: Buffer): void {
    this.#held.push(frame);
  }
}

/** Confirmations owed by one shard for one command. */
interface Expectation {
  readonly pending: ConfirmationWaiter;
  remaining: number;
}

/** A channel or shard channel subscribed to, and the shard it is subscribed on. */
interface Subscription {
  readonly kind: Kind;
  readonly name: Buffer;
  readonly slot: number;
  /** Shard name; '' for patterns (they are on every shard). */
  home: string;
}

/** Tells the session which shard's connection a frame came from; silent once retired. */
class ShardPushSink implements PushSink {
  readonly #session: PubSubSession;
  readonly #shard: string;
  /** The shard left the topology and its connection was closed on purpose. */
  isRetired = false;

  constructor(session: PubSubSession, shard: string) {
    this.#session = session;
    this.#shard = shard;
  }

  onPush(frame: Buffer): void {
    if (!this.isRetired) this.#session.onShardPush(this.#shard, frame);
  }

  onPushClosed(): void {
    if (!this.isRetired) this.#session.onPushClosed();
  }
}

/** Commands a session sends to one shard as its subscriptions follow a new snapshot. */
interface Moves {
  readonly add: Record<Kind, Buffer[]>;
  readonly remove: Record<Kind, Buffer[]>;
}

const SUBSCRIBE: Readonly<Record<Kind, string>> = { channel: 'SUBSCRIBE', pattern: 'PSUBSCRIBE', shard: 'SSUBSCRIBE' };
const UNSUBSCRIBE: Readonly<Record<Kind, string>> = { channel: 'UNSUBSCRIBE', pattern: 'PUNSUBSCRIBE', shard: 'SUNSUBSCRIBE' };

/**
 * A subscribed client. Channels live on the shard owning the channel name's slot (where
 * PUBLISH through the proxy goes too), patterns on every shard; each shard is reached through
 * a Pub/Sub connection of the client's own. The proxy writes the subscribe confirmations itself,
 * with the counts one Redis would give, once every shard involved has confirmed, and forwards
 * the messages as they come. When a snapshot moves a channel's slot, or adds or removes a shard,
 * the subscriptions follow (onTopology): the client stays subscribed to what it asked for.
 */
export class PubSubSession {
  readonly #client: ClientContext;
  readonly #shards: PubSubShards;
  /** Subscriptions by kind, keyed by the name's latin1 text. */
  readonly #subscriptions: Readonly<Record<Kind, Map<string, Subscription>>> = {
    channel: new Map(),
    pattern: new Map(),
    shard: new Map(),
  };
  /** By shard name. */
  readonly #connections = new Map<string, { readonly connection: BackendConnection; readonly sink: ShardPushSink }>();
  /** Per shard name, the confirmations still owed for each command sent there, in order. */
  readonly #expectations = new Map<string, Expectation[]>();
  /** The shards patterns are subscribed on: every shard of the last snapshot seen. */
  #patternShards: readonly string[];
  /** Channels and shard channels by slot, for snapshots that move only some slots. */
  readonly #bySlot = new Map<number, Subscription[]>();
  #isClosed = false;

  constructor(client: ClientContext, shards: PubSubShards) {
    this.#client = client;
    this.#shards = shards;
    this.#patternShards = shards.topology.shards.map((shard) => shard.name);
  }

  /** True while the client holds any subscription (RESP2 subscribed mode). */
  get isSubscribed(): boolean {
    const s = this.#subscriptions;
    return s.channel.size + s.pattern.size + s.shard.size > 0;
  }

  /** Subscriptions held, by kind (CLIENT LIST's sub, psub, ssub). */
  counts(): { channels: number; patterns: number; shardChannels: number } {
    const s = this.#subscriptions;
    return { channels: s.channel.size, patterns: s.pattern.size, shardChannels: s.shard.size };
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
    const targets = isAdd || names.length > 0 ? names : [...subscribed.values()].map((s) => s.name);
    const replies: Buffer[] = [];
    /** Names to send to each shard. */
    const perShard = new Map<string, Buffer[]>();
    for (const name of targets) {
      const key = name.toString('latin1');
      let subscription = subscribed.get(key);
      const isChange = isAdd ? subscription === undefined : subscription !== undefined;
      if (isAdd && subscription === undefined) {
        const slot = kind === 'pattern' ? -1 : keySlot(name, 0, name.length);
        subscription = { kind, name, slot, home: slot < 0 ? '' : homeOf(this.#shards.topology, slot) };
        subscribed.set(key, subscription);
        if (slot >= 0) this.#index(subscription);
      } else if (!isAdd && subscription !== undefined) {
        subscribed.delete(key);
        if (subscription.slot >= 0) this.#unindex(subscription);
      }
      replies.push(confirmation(spec.name, name, this.#count(kind)));
      if (!isChange) continue;
      const shards = kind === 'pattern' ? this.#patternShards : [subscription!.home];
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
      this.#closeIfLeft();
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

  /**
   * A new snapshot: each channel moves to the shard its slot now lives on (subscribed there
   * first, then unsubscribed where it was), patterns are subscribed on shards that joined, and
   * the connections to shards that left are closed. Messages published meanwhile through an
   * older snapshot may be missed, as across a Redis Cluster reshard; none is heard twice.
   * `movedSlots` names the slots whose home changed when the shards did not (then only their
   * channels can move); null when the shards changed too (every subscription is looked at).
   */
  onTopology(topology: Topology, names: readonly string[], movedSlots: readonly number[] | null): void {
    if (this.#isClosed) return;
    if (movedSlots === null) {
      for (const [shard, { connection }] of this.#connections) {
        const info = topology.shardNamed(shard);
        if (info !== undefined && !sameNode(info.primary, connection.address)) {
          // The shard failed over while its old primary kept the connection up (frozen, cut
          // off): the subscriptions there hear nothing of what is published on the new primary,
          // and confirmations owed from there may never come. End the client, as its own Redis
          // failing would; it reconnects and subscribes again (on the new primary).
          this.onPushClosed();
          return;
        }
      }
    }
    const moves = new Map<string, Moves>();
    const movesOn = (shard: string): Moves => {
      let m = moves.get(shard);
      if (m === undefined) {
        m = { add: { channel: [], pattern: [], shard: [] }, remove: { channel: [], pattern: [], shard: [] } };
        moves.set(shard, m);
      }
      return m;
    };
    const follow = (subscription: Subscription): void => {
      const home = homeOf(topology, subscription.slot);
      if (home === subscription.home) return;
      movesOn(home).add[subscription.kind].push(subscription.name);
      if (names.includes(subscription.home)) movesOn(subscription.home).remove[subscription.kind].push(subscription.name);
      subscription.home = home;
    };
    if (movedSlots === null) {
      for (const subscription of this.#subscriptions.channel.values()) follow(subscription);
      for (const subscription of this.#subscriptions.shard.values()) follow(subscription);
    } else {
      for (const slot of movedSlots) for (const subscription of this.#bySlot.get(slot) ?? []) follow(subscription);
    }
    if (movedSlots === null && this.#subscriptions.pattern.size > 0) {
      for (const shard of names) {
        if (this.#patternShards.includes(shard)) continue;
        for (const subscription of this.#subscriptions.pattern.values()) movesOn(shard).add.pattern.push(subscription.name);
      }
    }
    if (movedSlots === null) this.#patternShards = names;
    for (const [shard, m] of moves) {
      for (const kind of ['channel', 'pattern', 'shard'] as const) this.#sendUnseen(shard, SUBSCRIBE[kind], m.add[kind]);
    }
    for (const [shard, m] of moves) {
      for (const kind of ['channel', 'pattern', 'shard'] as const) this.#sendUnseen(shard, UNSUBSCRIBE[kind], m.remove[kind]);
    }
    if (movedSlots !== null) return;
    for (const [shard, { connection, sink }] of this.#connections) {
      if (names.includes(shard)) continue;
      sink.isRetired = true;
      connection.close();
      this.#connections.delete(shard);
      // Commands still waiting for that shard's confirmations wait for it no more.
      for (const expectation of this.#expectations.get(shard) ?? []) expectation.pending.shardDone();
      this.#expectations.delete(shard);
    }
  }

  /** A frame read on the Pub/Sub connection to `shard`. */
  onShardPush(shard: string, frame: Buffer): void {
    if (this.#isClosed) return;
    const type = pushType(frame);
    if (type === 'message' || type === 'pmessage' || type === 'smessage') {
      // The shard sent it before the confirmations it still owes: written after a pending
      // confirmation (the client's reply slot, allocated when the command came), it would reach
      // the client after an UNSUBSCRIBE's confirmation, for a channel it has left (a client back
      // in plain mode takes it for the reply to its next command). It goes out just before the
      // first confirmation of the client's that this shard still owes, as one Redis orders them.
      const owed = this.#firstSeenOwed(shard);
      if (owed !== null) owed.hold(frame);
      else this.#client.push(frame);
      return;
    }
    // A confirmation: one per name, in the order the commands were sent to this shard.
    const queue = this.#expectations.get(shard);
    const head = queue?.[0];
    if (head === undefined) return;
    if (--head.remaining === 0) {
      queue!.shift();
      if (queue!.length === 0) this.#expectations.delete(shard);
      head.pending.shardDone();
      this.#closeIfLeft();
    }
  }

  /**
   * A client that has left Pub/Sub mode (its last subscription ended and confirmed) gives its
   * shards' Pub/Sub connections back: otherwise every client that ever subscribed would keep
   * one idle connection per shard until it disconnects. Its next SUBSCRIBE opens a new session.
   */
  #closeIfLeft(): void {
    if (!this.isSubscribed && this.#expectations.size === 0) this.close();
  }

  /** The first confirmation of the client's (not the session's own) that `shard` still owes; null when none. */
  #firstSeenOwed(shard: string): PendingConfirmation | null {
    const queue = this.#expectations.get(shard);
    if (queue === undefined) return null;
    for (const { pending } of queue) if (pending instanceof PendingConfirmation) return pending;
    return null;
  }

  onPushClosed(): void {
    if (this.#isClosed) return;
    // Subscriptions on that shard are gone: end a subscribed client, as its own Redis dying
    // would, so it reconnects and subscribes again. A client that has left Pub/Sub mode (every
    // subscription ended) is a plain client: it keeps its connection, and a later SUBSCRIBE
    // opens a new session (SessionCommands drops this one in onClosed).
    const isSubscribed = this.isSubscribed;
    this.close();
    if (isSubscribed) this.#client.destroy();
  }

  close(): void {
    if (this.#isClosed) return;
    this.#isClosed = true;
    for (const { connection } of this.#connections.values()) connection.close();
    this.#connections.clear();
    // Confirmations still owed are answered as prepared (with the messages held for them): after
    // a RESET that came behind a (UN)SUBSCRIBE the client waits for them, and for every reply
    // after them, as one Redis answers the SUBSCRIBE, then +RESET.
    for (const queue of this.#expectations.values()) for (const expectation of queue) expectation.pending.shardDone();
    this.#expectations.clear();
    for (const slot of this.#bySlot.keys()) this.#shards.unwatch(this, slot);
    this.#bySlot.clear();
    this.#shards.onClosed(this);
  }

  #index(subscription: Subscription): void {
    const inSlot = this.#bySlot.get(subscription.slot);
    if (inSlot !== undefined) {
      inSlot.push(subscription);
      return;
    }
    this.#bySlot.set(subscription.slot, [subscription]);
    this.#shards.watch(this, subscription.slot);
  }

  #unindex(subscription: Subscription): void {
    const inSlot = this.#bySlot.get(subscription.slot);
    if (inSlot === undefined) return;
    const at = inSlot.indexOf(subscription);
    if (at >= 0) inSlot.splice(at, 1);
    if (inSlot.length > 0) return;
    this.#bySlot.delete(subscription.slot);
    this.#shards.unwatch(this, subscription.slot);
  }

  /** What Redis reports after each (un)subscribe: channels + patterns, or shard channels alone. */
  #count(kind: Kind): number {
    const s = this.#subscriptions;
    return kind === 'shard' ? s.shard.size : s.channel.size + s.pattern.size;
  }

  #connection(shard: string): BackendConnection {
    let entry = this.#connections.get(shard);
    if (entry === undefined) {
      const sink = new ShardPushSink(this, shard);
      entry = { connection: this.#shards.openPushConnection(this.#shards.topology.indexOfShard(shard), sink), sink };
      this.#connections.set(shard, entry);
    }
    return entry.connection;
  }

  /** A (un)subscribe of the session's own; its confirmations are counted, not forwarded. */
  #sendUnseen(shard: string, command: string, names: readonly Buffer[]): void {
    if (names.length === 0) return;
    this.#expected(shard).push({ pending: UNSEEN, remaining: names.length });
    this.#connection(shard).sendToPush(encodeCommand([command, ...names]));
  }

  #expected(shard: string): Expectation[] {
    let queue = this.#expectations.get(shard);
    if (queue === undefined) {
      queue = [];
      this.#expectations.set(shard, queue);
    }
    return queue;
  }
}
