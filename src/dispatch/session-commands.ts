import type { BackendConnection, DurableReplies } from '../backend/backend-connection';
import { IGNORE_REPLY, type ReplySink } from '../backend/reply-sink';
import type { CommandSpec } from '../commands/handling';
import type { ReplySlot } from '../reply/reply-slot';
import type { RequestFrame } from '../resp/request-parser';
import { CROSSSLOT, encodeCommand, encodeError, NULL_ARRAY, NULL_BULK, OK, QUEUED } from '../resp/resp-writer';
import { REPLICATED_NOOP } from '../topology/key-move-script';
import { commandSlot, CROSS_SLOT, NO_KEYS, movableKeysRefusal } from '../routing/route-planner';
import { sameNode } from '../topology/topology';
import type { ClientContext } from './client-context';
import { ClientPins, type WatchState } from './client-pins';
import { wrongArity } from './local-commands';
import { PubSubSession } from './pubsub-session';
import { PubSubSessions } from './pubsub-sessions';
import type { ShardAccess } from './shard-access';
import { EXEC_REQUEST, Transaction, UNWATCH_REQUEST } from './transaction';

/** How long a transaction, WATCH or blocking command waits for its slot to settle. */
const SETTLE_WAIT_MS = 30_000;
const NOT_SETTLED = encodeError('TRYAGAIN the slot is being moved or its shard failed over; try again');
const EXECABORT = encodeError('EXECABORT Transaction discarded because of previous errors.');
const PONG_SUBSCRIBED = Buffer.from('*2\r\n$4\r\npong\r\n$0\r\n\r\n');

/** Commands a subscribed RESP2 client may send (redis-server's list). */
const ALLOWED_WHILE_SUBSCRIBED: ReadonlySet<string> = new Set([
  'subscribe', 'ssubscribe', 'psubscribe', 'unsubscribe', 'sunsubscribe', 'punsubscribe', 'ping', 'quit', 'reset',
]);

/** Handlings that cannot be queued in a transaction: they are not one shard's to run. */
const NOT_IN_TRANSACTION: ReadonlySet<string> = new Set(['broadcast', 'scan', 'first-non-empty', 'config-set', 'info', 'kill-script', 'pubsub', 'refused']);

function isValidArity(spec: CommandSpec, argc: number): boolean {
  return spec.arity > 0 ? argc === spec.arity : argc >= -spec.arity;
}

/** A transaction, WATCH or blocking command waiting for its slot to settle. */
interface SettleWaiter {
  readonly slot: number;
  /** Canceled when the client goes: its command is then not sent at all. */
  readonly reply: ReplySlot;
  readonly send: () => void;
  /** Answers TRYAGAIN when the wait runs out. */
  readonly timer: NodeJS.Timeout;
}

const CLIENT_ID_REQUEST = encodeCommand(['CLIENT', 'ID']);

/** A blocking pop's reply is its own; a null one (timed out, or woken to be sent again) popped nothing. */
const BLOCKING_WRITE: DurableReplies = { ignored: 0, isNullUnwritten: true };

/**
 * A blocking command sent on its client's own connection. When a snapshot moves its slot (or
 * starts moving it), the command is woken where it waits (CLIENT UNBLOCK: it answers as if timed
 * out) and sent again where the slot now lives, so a worker blocked on a queue follows the
 * queue; an answer with data that came before the wake-up goes to the client as it is.
 */
class BlockedCommand implements ReplySink {
  readonly slot: number;
  readonly reply: ReplySlot;
  /** The shard it waits on, the connection it waits on, and that connection's id there (CLIENT ID; null until known). */
  shardName = '';
  connection: BackendConnection | null = null;
  nodeClientId: number | null = null;
  /** Woken on purpose: a null answer means "send it again", not "timed out". */
  isWoken = false;
  /** Its connection closed on purpose (the shard failed over under it): the failure means "send it again". */
  isFailedOver = false;
  /**
   * Its connection was lost while the shard can fail over: it waits (up to failoverWaitMs) for a
   * snapshot with a new primary, to be sent again there; else it fails with `lostError`.
   */
  lostError: Buffer | null = null;
  #lostTimer: NodeJS.Timeout | null = null;
  /** How long a lost connection may wait for a failover, in ms (0: not at all; from SessionCommands). */
  readonly #mayWaitForFailover: (blocked: BlockedCommand) => number;
  /** Sends it (again) once the slot is settled. */
  readonly #resend: () => void;
  /** It answered (or failed): nothing to follow any more. */
  readonly #onDone: (blocked: BlockedCommand) => void;
  /** Asked to wake before CLIENT ID answered: wake as soon as it does. */
  #wake: ((id: number) => void) | null = null;
  /** Reads CLIENT ID's answer. */
  readonly idSink: ReplySink = {
    onReply: (frame) => {
      this.nodeClientId = Number(frame.toString('latin1', 1, frame.length - 2));
      this.#wake?.(this.nodeClientId);
      this.#wake = null;
    },
    onFailure: () => undefined,
  };

  constructor(
    slot: number,
    reply: ReplySlot,
    resend: () => void,
    onDone: (blocked: BlockedCommand) => void,
    mayWaitForFailover: (blocked: BlockedCommand) => number,
  ) {
    this.slot = slot;
    this.reply = reply;
    this.#resend = resend;
    this.#onDone = onDone;
    this.#mayWaitForFailover = mayWaitForFailover;
  }

  sentTo(shardName: string, connection: BackendConnection): void {
    this.shardName = shardName;
    this.connection = connection;
    this.nodeClientId = null;
    this.isWoken = false;
    this.isFailedOver = false;
    this.#wake = null;
  }

  /**
   * Its shard failed over while the old primary kept the connection up (frozen, cut off): no
   * push to the new primary would reach it there. The connection is closed (so the old node,
   * if it comes back, pops nothing for it) and the command sent again on the new primary.
   */
  leaveFailedPrimary(): void {
    this.isFailedOver = true;
    this.connection?.close();
  }

  /** Wakes it where it waits: `unblock(id)` now, or once its connection's id is known. */
  wakeUp(unblock: (id: number) => void): void {
    this.isWoken = true;
    if (this.nodeClientId !== null) unblock(this.nodeClientId);
    else this.#wake = unblock;
  }

  onReply(frame: Buffer): void {
    if (this.isWoken && isNullReply(frame)) {
      this.#resend();
      return;
    }
    this.#onDone(this);
    this.reply.onReply(frame);
  }

  onFailure(error: Buffer): void {
    if (this.isFailedOver) {
      this.isFailedOver = false;
      this.#resend();
      return;
    }
    // Its primary died (the connection is lost, not a reply): it waits for the promoted replica,
    // as the shared connections' requests are parked. A pop answered just before the death and
    // lost with the connection (or held for its WAIT, minReplicaAcks) is lost if it had reached
    // the promoted replica; if it had not, the item is still there and the pop sent again takes it.
    const waitMs = this.reply.isCanceled ? 0 : this.#mayWaitForFailover(this);
    if (waitMs > 0 && this.lostError === null) {
      this.lostError = error;
      this.#lostTimer = setTimeout(() => this.#giveUp(), waitMs);
      this.#lostTimer.unref();
      return;
    }
    this.#giveUp(error);
  }

  /** Answers `error` without sending it (again): a write refused by noReplicaWrites. */
  refuse(error: Buffer): void {
    this.#giveUp(error);
  }

  /** The snapshot names another primary for its shard: sent again there. */
  resendAfterLoss(): void {
    if (this.#lostTimer !== null) clearTimeout(this.#lostTimer);
    this.#lostTimer = null;
    this.lostError = null;
    if (this.reply.isCanceled) {
      this.#onDone(this);
      return;
    }
    this.#resend();
  }

  #giveUp(error: Buffer | null = this.lostError): void {
    if (this.#lostTimer !== null) clearTimeout(this.#lostTimer);
    this.#lostTimer = null;
    this.lostError = null;
    this.#onDone(this);
    this.reply.onFailure(error!);
  }
}

function isNullReply(frame: Buffer): boolean {
  return frame.equals(NULL_ARRAY) || frame.equals(NULL_BULK);
}

/**
 * Commands that change the state of the connection they run on — transactions, WATCH,
 * blocking commands, Pub/Sub — carried out so that no shared backend connection ever holds
 * one client's state.
 */
export class SessionCommands {
  readonly #shards: ShardAccess;
  /** In arrival order; each client has at most one (it reads nothing more while one waits). */
  #settleWaiters: SettleWaiter[] = [];
  /** Clients' Pub/Sub sessions, told of the snapshots that concern them so their subscriptions follow. */
  readonly #pubsubSessions = new PubSubSessions();
  /** Blocking commands sent and not answered yet, told of each new snapshot likewise. */
  readonly #blocked = new Set<BlockedCommand>();

  constructor(shards: ShardAccess) {
    this.#shards = shards;
  }

  /**
   * How long a blocking command whose connection was lost waits for its shard to fail over: the
   * shard's failoverWaitMs when it has a replica to promote, else 0 (it fails at once, as before).
   */
  #failoverWaitFor(blocked: BlockedCommand): number {
    const shard = this.#shards.topology.shardNamed(blocked.shardName);
    return shard !== undefined && shard.replicas.length > 0 ? this.#shards.failoverWaitMs : 0;
  }

  /**
   * A new snapshot: Pub/Sub subscriptions follow it, and the commands whose slot has settled in
   * it go now. Those of clients that have gone are dropped: a BLPOP sent for nobody would take
   * an element no one receives, a WATCH would open a connection no one closes.
   */
  onTopology(): void {
    const topology = this.#shards.topology;
    this.#pubsubSessions.onTopology(topology);
    for (const blocked of this.#blocked) {
      if (blocked.lostError !== null) {
        const shard = topology.shardNamed(blocked.shardName);
        // Its connection (kept until it is sent again) names the primary it was lost with.
        const lostFrom = blocked.connection?.address;
        if (shard !== undefined && lostFrom !== undefined && !sameNode(shard.primary, lostFrom) && !shard.isFailingOver) blocked.resendAfterLoss();
        continue;
      }
      if (blocked.isWoken || blocked.isFailedOver || blocked.connection === null) continue;
      const where = topology.shardNamed(blocked.shardName);
      // A shard gone from the topology owned no slot for a while: nothing blocks there on ours.
      if (where === undefined) continue;
      if (!sameNode(where.primary, blocked.connection.address)) {
        blocked.leaveFailedPrimary();
        continue;
      }
      if (blocked.slot === NO_KEYS || topology.shards[topology.homeOf(blocked.slot)]!.name === blocked.shardName) continue;
      blocked.wakeUp((id) => this.#shards.primaryConnection(where.index, 0).send(encodeCommand(['CLIENT', 'UNBLOCK', String(id)]), IGNORE_REPLY));
    }
    if (this.#settleWaiters.length === 0) return;
    const waiting = this.#settleWaiters;
    this.#settleWaiters = [];
    for (const waiter of waiting) {
      if (waiter.reply.isCanceled) {
        clearTimeout(waiter.timer);
      } else if (this.#isSettled(waiter.slot)) {
        clearTimeout(waiter.timer);
        waiter.send();
      } else {
        this.#settleWaiters.push(waiter);
      }
    }
  }

  /**
   * Called before normal dispatch for a client with pins. Returns true when it took the command
   * (queued it in a transaction, or refused it in subscribed mode).
   */
  intercept(frame: RequestFrame, spec: CommandSpec | undefined, client: ClientContext, pins: ClientPins): boolean {
    if (pins.pubsub !== null && pins.pubsub.isSubscribed) {
      // As redis-server: an unknown command or a wrong arity is reported as such first.
      if (spec === undefined) return false;
      if (!isValidArity(spec, frame.argc)) {
        client.reply(wrongArity(spec.name), spec);
        return true;
      }
      const name = spec.name;
      if (name === 'ping') {
        client.reply(frame.argc > 1 ? Buffer.concat([Buffer.from(`*2\r\n$4\r\npong\r\n$${frame.argLength(1)}\r\n`), frame.arg(1), Buffer.from('\r\n')]) : PONG_SUBSCRIBED, spec);
        return true;
      }
      if (!ALLOWED_WHILE_SUBSCRIBED.has(name)) {
        client.reply(
          encodeError(`ERR Can't execute '${name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context`),
          spec,
        );
        return true;
      }
      return false;
    }
    const transaction = pins.transaction;
    if (transaction === null || (spec !== undefined && spec.handling === 'transaction')) return false;
    if (spec === undefined) return false; // the dispatcher answers "unknown command" and aborts the transaction
    // Redis runs these at once inside MULTI too: RESET ends the transaction, QUIT the connection.
    if (spec.name === 'reset' || spec.name === 'quit') return false;
    this.#queue(frame, spec, client, transaction);
    return true;
  }

  /** A command was refused while a transaction was open: EXEC must abort, as Redis does. */
  abortTransaction(client: ClientContext): void {
    if (client.pins?.transaction) client.pins.transaction.isAborted = true;
  }

  transaction(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    if (!isValidArity(spec, frame.argc)) {
      client.reply(wrongArity(spec.name), spec);
      return;
    }
    const pins = (client.pins ??= new ClientPins());
    switch (spec.name) {
      case 'multi':
        if (pins.transaction !== null) {
          client.reply(encodeError('ERR MULTI calls can not be nested'), spec);
          return;
        }
        pins.transaction = new Transaction(pins.watch?.slot ?? NO_KEYS);
        client.reply(OK, spec);
        return;
      case 'discard':
        if (pins.transaction === null) {
          client.reply(encodeError('ERR DISCARD without MULTI'), spec);
          return;
        }
        pins.transaction = null;
        this.#unwatch(pins, null);
        client.reply(OK, spec);
        return;
      case 'exec':
        this.#exec(spec, client, pins);
        return;
      case 'watch':
        this.#watch(frame, spec, client, pins);
        return;
      case 'unwatch':
        if (pins.transaction !== null) {
          // Inside MULTI, UNWATCH is queued like any command.
          this.#queue(frame, spec, client, pins.transaction);
          return;
        }
        if (pins.watch === null) client.reply(OK, spec);
        else this.#unwatch(pins, client.awaitReply(spec));
        return;
    }
  }

  /** A blocking command on the client's own connection; reading pauses until it answers. */
  blocking(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    const isStreamRead = spec.name === 'xread' || spec.name === 'xreadgroup';
    if (isStreamRead && !hasBlockOption(frame)) {
      // XREAD without BLOCK never blocks: an ordinary single-slot command (migrations included).
      this.#shards.sendSingle(frame, spec, client);
      return;
    }
    if (spec.name === 'wait') {
      this.#wait(frame, spec, client);
      return;
    }
    const slot = commandSlot(frame, spec);
    if (slot === CROSS_SLOT) {
      client.reply(CROSSSLOT, spec);
      return;
    }
    // A copy: the request may wait for the client's earlier replies, past this chunk's life.
    const request = Buffer.from(frame.bytes());
    const reply = client.awaitReply(spec);
    client.holdUntilReplied();
    const durability = this.#shards.writeDurability;
    const send = (): void => {
      const topology = this.#shards.topology;
      const shard = slot === NO_KEYS ? this.#shards.anyShard() : topology.slotOwner[slot]!;
      const info = topology.shards[shard]!;
      // A pop is a write (XREAD is the one read here): refused before it can block, as SET is.
      const refusal = spec.isWrite ? durability.refusal(info) : null;
      if (refusal !== null) {
        blocked.refuse(refusal);
        return;
      }
      const connection = this.#ownConnection(client, shard);
      blocked.sentTo(info.name, connection);
      this.#blocked.add(blocked);
      connection.send(CLIENT_ID_REQUEST, blocked.idSink);
      if (spec.isWrite) durability.send(connection, info, request, blocked, BLOCKING_WRITE);
      else connection.send(request, blocked);
    };
    const blocked = new BlockedCommand(
      slot,
      reply,
      () => this.#whenSettled(slot, reply, send),
      (done) => this.#blocked.delete(done),
      (lost) => this.#failoverWaitFor(lost),
    );
    client.sendWhenFirst(reply, () => this.#whenSettled(slot, reply, send));
  }

  pubsub(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    const pins = (client.pins ??= new ClientPins());
    if (pins.pubsub === null) {
      const shards = this.#shards;
      const sessions = this.#pubsubSessions;
      pins.pubsub = new PubSubSession(client, {
        get topology() {
          return shards.topology;
        },
        openPushConnection: (shard, sink) => shards.dedicatedConnection(shard, sink),
        onClosed: (session) => {
          sessions.delete(session);
          // Closed by itself (its shard lost while the client had left Pub/Sub mode): the client
          // stays, and its next SUBSCRIBE opens a new session.
          if (pins.pubsub === session) pins.pubsub = null;
        },
        watch: (session, slot) => sessions.watch(session, slot),
        unwatch: (session, slot) => sessions.unwatch(session, slot),
      });
      sessions.add(pins.pubsub, shards.topology);
    }
    pins.pubsub.handle(frame, spec);
  }

  /**
   * RESET: the client's transaction, watch, blocking and Pub/Sub state go away. Its own
   * connections close once what is in flight on them is answered (an UNWATCH pipelined just
   * before gets its reply, not an error).
   */
  reset(client: ClientContext): void {
    client.pins?.release();
    client.pins = null;
  }

  #queue(frame: RequestFrame, spec: CommandSpec, client: ClientContext, transaction: Transaction): void {
    const reject = (error: Buffer): void => {
      transaction.isAborted = true;
      client.reply(error, spec);
    };
    if (!isValidArity(spec, frame.argc)) return reject(wrongArity(spec.name));
    if (NOT_IN_TRANSACTION.has(spec.handling) || (spec.handling === 'local' && spec.name !== 'ping' && spec.name !== 'echo')) {
      return reject(encodeError(`ERR command '${spec.name}' cannot be queued in a transaction through slotproxy`));
    }
    if (spec.name === 'watch') return reject(encodeError('ERR WATCH inside MULTI is not allowed'));
    const refusal = spec.hasMovableKeys ? movableKeysRefusal(frame, spec) : null;
    if (refusal !== null) return reject(refusal);
    const slot = commandSlot(frame, spec);
    if (slot === CROSS_SLOT || (slot !== NO_KEYS && transaction.slot !== NO_KEYS && slot !== transaction.slot)) {
      return reject(CROSSSLOT);
    }
    if (slot !== NO_KEYS) transaction.slot = slot;
    transaction.queue(frame.bytes(), spec.isWrite);
    client.reply(QUEUED, spec);
  }

  #exec(spec: CommandSpec, client: ClientContext, pins: ClientPins): void {
    const transaction = pins.transaction;
    if (transaction === null) {
      client.reply(encodeError('ERR EXEC without MULTI'), spec);
      return;
    }
    pins.transaction = null;
    const watch = pins.watch;
    pins.watch = null;
    if (transaction.isAborted) {
      // Redis unwatches on EXEC whatever happens.
      watch?.connection.send(UNWATCH_REQUEST, IGNORE_REPLY);
      client.reply(EXECABORT, spec);
      return;
    }
    const reply = client.awaitReply(spec);
    if (watch !== null) {
      // A key moved away since WATCH counts as modified on the watching shard: EXEC answers null.
      // But WATCH sees only that shard: once the slot has moved or is moving, its keys may have
      // been written on the target (those the source never had), and the transaction would run
      // on a shard that no longer owns them. Redis answers null for a modified key; so does this.
      // A failover since WATCH is the same: writes the old primary acknowledged may be gone.
      const sendWatched = (): void => {
        if (!this.#isWatchedHome(watch)) {
          // The old primary may be frozen: its connection is closed, not asked to UNWATCH.
          if (this.#isOnPrimaryOf(watch.connection, watch.shardName)) watch.connection.send(UNWATCH_REQUEST, IGNORE_REPLY);
          else watch.connection.close();
          reply.onReply(NULL_ARRAY);
          return;
        }
        this.#sendTransaction(this.#shards.topology.slotOwner[watch.slot]!, watch.connection, transaction, reply, true);
      };
      // On the client's own connection, not the shared one its earlier commands took: only their
      // replies tell that they ran (a SET before the WATCH ... EXEC run after the transaction would
      // undo it), and its later commands wait for this reply (one sent after EXEC ran before it).
      this.#sendAfterOwn(false, client, reply, sendWatched);
      return;
    }
    const slot = transaction.slot;
    // The client's earlier commands on the slot may be held by the migrating router (now, or
    // when the slot settles): the transaction goes once they have run, not past them.
    this.#sendAfterOwn(this.#isSettled(slot) && !this.#isHeldByRouter(slot), client, reply, () =>
      this.#whenSettled(slot, reply, () => {
        const shards = this.#shards;
        const shard = slot === NO_KEYS ? shards.anyShard() : shards.topology.slotOwner[slot]!;
        this.#sendTransaction(shard, shards.primaryConnection(shard, client.id), transaction, reply, false);
      }),
    );
  }

  /** The migrating router holds commands on `slot` (its slot settled while they waited). */
  #isHeldByRouter(slot: number): boolean {
    return slot !== NO_KEYS && this.#shards.isHeldByRouter(slot);
  }

  /**
   * Runs `send` now when `isNow`; otherwise once the client's earlier replies are in (its own
   * commands the migrating router holds have run), reading nothing more from it until then.
   */
  #sendAfterOwn(isNow: boolean, client: ClientContext, reply: ReplySlot, send: () => void): void {
    if (isNow) {
      send();
      return;
    }
    client.holdUntilReplied();
    client.sendWhenFirst(reply, send);
  }

  /**
   * MULTI, the queued requests and EXEC written back to back on `connection`, to `shard`'s
   * primary (`isWatched`: the client's own connection, which holds its WATCH). A transaction
   * that may write goes as writeDurability says, as SET does: refused, or its EXEC reply held
   * for the WAIT and answered NOREPLICAS when unconfirmed; one of reads only goes as it is.
   */
  #sendTransaction(shard: number, connection: BackendConnection, transaction: Transaction, reply: ReplySink, isWatched: boolean): void {
    // MULTI and the queued commands were answered +OK/+QUEUED already; only EXEC's reply goes on.
    const batch = [...transaction.parts, EXEC_REQUEST];
    const ignored = transaction.count + 1;
    if (!transaction.isWriting) {
      connection.sendBatch(batch, ignored, reply);
      return;
    }
    const durability = this.#shards.writeDurability;
    const info = this.#shards.topology.shards[shard]!;
    const refusal = durability.refusal(info);
    if (refusal !== null) {
      // Redis unwatches on EXEC whatever happens, and the connection stays the client's.
      if (isWatched) connection.send(UNWATCH_REQUEST, IGNORE_REPLY);
      reply.onFailure(refusal);
      return;
    }
    // A null EXEC (a watched key changed) or EXECABORT ran nothing: answered at once.
    durability.send(connection, info, batch, reply, { ignored, isNullUnwritten: true });
  }

  /** The watched slot is settled on the shard that held it at WATCH, whose primary is still the node watching. */
  #isWatchedHome(watch: WatchState): boolean {
    const topology = this.#shards.topology;
    return this.#isSettled(watch.slot) && topology.shards[topology.slotOwner[watch.slot]!]!.name === watch.shardName && this.#isOnPrimaryOf(watch.connection, watch.shardName);
  }

  /** The connection goes to the current primary of the shard named `shardName`. */
  #isOnPrimaryOf(connection: BackendConnection, shardName: string): boolean {
    const shard = this.#shards.topology.shardNamed(shardName);
    return shard !== undefined && sameNode(shard.primary, connection.address);
  }

  /** The slot's shard can take a command now: the slot is not migrating, the shard not failing over. */
  #isSettled(slot: number): boolean {
    if (slot === NO_KEYS) return true;
    const topology = this.#shards.topology;
    return !topology.migrations.has(slot) && !topology.shards[topology.slotOwner[slot]!]!.isFailingOver;
  }

  /**
   * Runs `send` once the slot is settled. Transactions, WATCH and blocking commands run on one
   * connection to one shard, so they cannot follow a key mid-move or a primary mid-failover;
   * they wait instead (slots migrate for about a second), bounded like a failover wait. Every
   * snapshot that settles a slot comes through onTopology().
   */
  #whenSettled(slot: number, reply: ReplySlot, send: () => void): void {
    if (this.#isSettled(slot)) {
      send();
      return;
    }
    const waiter: SettleWaiter = {
      slot,
      reply,
      send,
      timer: setTimeout(() => {
        this.#settleWaiters = this.#settleWaiters.filter((w) => w !== waiter);
        reply.onReply(NOT_SETTLED);
      }, SETTLE_WAIT_MS),
    };
    this.#settleWaiters.push(waiter);
  }

  #watch(frame: RequestFrame, spec: CommandSpec, client: ClientContext, pins: ClientPins): void {
    if (pins.transaction !== null) {
      client.reply(encodeError('ERR WATCH inside MULTI is not allowed'), spec);
      return;
    }
    const slot = commandSlot(frame, spec);
    if (slot === CROSS_SLOT || (pins.watch !== null && slot !== pins.watch.slot)) {
      client.reply(CROSSSLOT, spec);
      return;
    }
    const request = Buffer.from(frame.bytes());
    const reply = client.awaitReply(spec);
    const send = (): void => {
      const topology = this.#shards.topology;
      const shard = topology.slotOwner[slot]!;
      const connection = this.#ownConnection(client, shard);
      pins.watch = { slot, shardName: pins.watch?.shardName ?? topology.shards[shard]!.name, connection };
      connection.send(request, reply);
    };
    // The MULTI that follows must find the watch in place: read nothing more until it is. The
    // client's earlier commands (on shared connections, held by the migrating router, or waiting
    // for the slot to settle) run before the WATCH is taken, as on one Redis: the WATCH goes on a
    // connection of the client's own, which nothing orders with theirs but their replies.
    this.#sendAfterOwn(false, client, reply, () => this.#whenSettled(slot, reply, send));
  }

  #unwatch(pins: ClientPins, sink: ReplySink | null): void {
    const watch = pins.watch;
    pins.watch = null;
    if (watch === null) return;
    watch.connection.send(UNWATCH_REQUEST, sink ?? IGNORE_REPLY);
  }

  /**
   * WAIT through a proxy: the client's writes went to several shards, each on a shared
   * connection. Once every earlier reply of the client is in (so its writes ran), each shard is
   * asked on a connection of the client's own to replicate everything up to now: a replicated
   * no-op (PUBLISH on a proxy channel) moves that connection's offset to the present, then WAIT
   * waits for it. The answer is the smallest count over the shards.
   */
  #wait(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    const shardCount = this.#shards.topology.shards.length;
    const reply = client.awaitReply(spec);
    const gather = new WaitGather(reply, shardCount);
    const request = Buffer.from(frame.bytes());
    const connections = Array.from({ length: shardCount }, (_, shard) => this.#ownConnection(client, shard));
    client.holdUntilReplied();
    client.sendWhenFirst(reply, () => {
      for (const connection of connections) connection.sendBatch([WAIT_NOOP, request], 1, gather);
    });
  }

  #ownConnection(client: ClientContext, shard: number): ReturnType<ShardAccess['dedicatedConnection']> {
    const pins = (client.pins ??= new ClientPins());
    let connection = pins.connections.get(shard);
    // One to a node that is no longer the shard's primary (a failover since) is not reused.
    if (connection !== undefined && connection.state !== 'closed' && !sameNode(connection.address, this.#shards.topology.shards[shard]!.primary)) {
      connection.close();
    }
    if (connection === undefined || connection.state === 'closed') {
      connection = this.#shards.dedicatedConnection(shard);
      pins.connections.set(shard, connection);
    }
    return connection;
  }
}

/** WAIT's replies from every shard: the smallest count, or the first error. */
class WaitGather implements ReplySink {
  readonly #target: ReplySink;
  #remaining: number;
  #least = Number.MAX_SAFE_INTEGER;
  #error: Buffer | null = null;

  constructor(target: ReplySink, shardCount: number) {
    this.#target = target;
    this.#remaining = shardCount;
  }

  onReply(frame: Buffer): void {
    if (frame[0] === 58) this.#least = Math.min(this.#least, Number(frame.toString('latin1', 1, frame.length - 2)));
    else this.#error ??= frame;
    if (--this.#remaining === 0) this.#target.onReply(this.#error ?? Buffer.from(`:${this.#least}\r\n`));
  }

  onFailure(error: Buffer): void {
    this.onReply(error);
  }
}

/** Moves the connection's replication offset so WAIT has something to wait for (key-move-script.ts). */
const WAIT_NOOP = encodeCommand(REPLICATED_NOOP);

function hasBlockOption(frame: RequestFrame): boolean {
  for (let i = 1; i < frame.argc; i++) {
    if (frame.argIs(i, 'block')) return true;
    if (frame.argIs(i, 'streams')) return false;
  }
  return false;
}
