import type { BackendConnection } from '../backend/backend-connection';
import type { ReplySink } from '../backend/reply-sink';
import { CRLF, encodeArrayHeader, encodeBulk, encodeCommand, encodeError } from '../resp/resp-writer';
import { keySlot } from '../routing/key-slot';
import { confirmsMoves, COPIED_KEYS_DELETE_SCRIPT, FENCE_SKEW_MS, KEY_MOVE_SCRIPT, keyMoveArgs, REPLICATED_NOOP } from '../topology/key-move-script';
import { nodeKey, sameNode, writeConfirmation, type NodeAddress, type SlotMigration, type Topology } from '../topology/topology';
import type { KnownScript } from './special-sinks';

/** What the router needs of the dispatcher. */
export interface ShardConnections {
  /** The current snapshot: a parked command is routed again by it. */
  readonly topology: Topology;
  /** The client's connection to a shard's primary (where the key-move script runs). */
  primaryConnection(shard: number, clientId: number): BackendConnection;
  primaryAddress(shard: number): NodeAddress;
  /**
   * Sends a command to a shard's primary the normal way (failover waits, replica acks); an
   * EVALSHA of a script the proxy knows with the script, so the shard gets it loaded first.
   */
  sendToPrimary(shard: number, request: Buffer | readonly Buffer[], sink: ReplySink, clientId: number, isWrite: boolean, script?: KnownScript | null): void;
}

export interface MigratingRouterOptions {
  /** MIGRATE's timeout for keys moved on demand (at most MAX_ON_DEMAND_MIGRATE_TIMEOUT_MS is used). @default 2000 */
  readonly migrateTimeoutMs: number;
  /** How long a command may wait for its key (a big key being copied, a target not answering) before it fails with TRYAGAIN. */
  readonly keyMoveWaitMs: number;
  /** Backend password for MIGRATE's AUTH; null when none. */
  readonly password: string | null;
  /**
   * The proxy's minReplicaAcks: a move's copy on the target is confirmed by this many of the
   * target's replicas before the source deletes it, and that delete by this many of the
   * source's replicas before the command goes (0: not waited for).
   */
  readonly minReplicaAcks: number;
  /** WAIT's timeout for the target's confirmation. */
  readonly replicaAckTimeoutMs: number;
  /** The proxy's noReplicaWrites: a target with fewer healthy replicas takes no key under `refuse`, unconfirmed keys under `accept`. */
  readonly noReplicaWrites: 'refuse' | 'accept';
}

/** A command answered BIG (a big key not locked yet) or a failed move is tried again after this. */
const RETRY_DELAY_MS = 20;
/** A command on a key the background mover has in flight (one batch, a millisecond or two) tries again after this. */
const MOVING_DELAY_MS = 2;
const MAX_RETRY_DELAY_MS = 500;
/** Parked commands are looked at least this often (deadlines, locks a lost snapshot never lifts). */
const MAX_TICK_MS = 250;

/**
 * Key-move scripts in flight at once to one target node. The script's MIGRATE runs inside the
 * source, which answers no one while it waits for the target: with the target stalled (frozen,
 * cut off) every script queued on the source waits out the MIGRATE timeout in turn, so the cap
 * bounds how long a stalled target can hold its sources.
 */
const MOVES_IN_FLIGHT_PER_TARGET = 4;
/**
 * MIGRATE's timeout for a command's keys, at most: they are small (big keys are copied in
 * chunks) and move in a millisecond; waiting longer only holds the source.
 */
const MAX_ON_DEMAND_MIGRATE_TIMEOUT_MS = 250;
/** After a move failed with an I/O error, no move goes to that target for this long (doubling per failure, up to MAX_HOLD_MS). */
const MIN_HOLD_MS = 250;
const MAX_HOLD_MS = 4_000;

const PING = Buffer.from('*1\r\n$4\r\nPING\r\n');
const BIG = Buffer.from('+BIG\r\n');
const MOVING = Buffer.from('+MOVING\r\n');
const COPIED = Buffer.from('+COPIED\r\n');
const STALE = Buffer.from('+STALE\r\n');
/** The scripts' bodies, encoded once: every on-demand move sends them as views. */
const EVAL_HEAD = Buffer.from(`$4\r\nEVAL\r\n$${Buffer.byteLength(KEY_MOVE_SCRIPT)}\r\n${KEY_MOVE_SCRIPT}\r\n`);
const DELETE_HEAD = Buffer.from(`$4\r\nEVAL\r\n$${Buffer.byteLength(COPIED_KEYS_DELETE_SCRIPT)}\r\n${COPIED_KEYS_DELETE_SCRIPT}\r\n`);
const NOOP = encodeCommand(REPLICATED_NOOP);
const SHUTTING_DOWN = encodeError('ERR slotproxy is shutting down');

/**
 * Where a command's move is: the key-move script on the source ('move'); with a copy to
 * confirm, WAIT on the target ('confirm'), then the source's copy deleted ('delete').
 */
type MovePhase = 'move' | 'confirm' | 'delete';

/**
 * One command on keys of a migrating slot: moves its keys off the source with the key-move
 * script, then sends the command to the target. It is its own reply sink for the replies of
 * its move's steps (no per-command closure), and what waits in the park while its key cannot
 * move yet.
 */
class KeyMove implements ReplySink {
  readonly router: MigratingRouter;
  /** Its place in the order commands reached the router: commands on a key go in this order. */
  readonly arrival: number;
  /** The command's keys (views of the request); at least one. */
  readonly keys: readonly Buffer[];
  /** The keys as latin1 strings, for lock and park lookups; made when first needed. */
  #names: string[] | null = null;
  readonly slot: number;
  readonly request: Buffer | readonly Buffer[];
  readonly sink: ReplySink;
  readonly clientId: number;
  readonly isWrite: boolean;
  /** An EVALSHA's script, when the proxy knows it: the target may not have it loaded. */
  readonly script: KnownScript | null;
  /** Fails with TRYAGAIN when still parked at this time (ms since the epoch). */
  readonly deadline: number;
  /** Failed attempts so far (errors, not BIG answers). */
  failures = 0;
  /** MOVING answers so far: a key left marked (the mover is restarting) is tried less and less often. */
  movingAnswers = 0;
  /** Parked: not retried before this time, unless a new snapshot comes first. */
  retryAt = 0;
  /** The last error, for the reply if the deadline passes. */
  lastError = '';
  /** The target its script is in flight to; null when none is. */
  target: MoveTarget | null = null;
  phase: MovePhase = 'move';
  /** The node its last script moved or copied the keys to. */
  sentTo: NodeAddress | null = null;
  /** In the router's queues of its keys: until handed over or failed. */
  isHeld = false;
  /** The fence of its last key-move script (ms since the epoch): that script does nothing after it. */
  fence = 0;

  constructor(
    router: MigratingRouter,
    arrival: number,
    keys: readonly Buffer[],
    slot: number,
    request: Buffer | readonly Buffer[],
    sink: ReplySink,
    clientId: number,
    isWrite: boolean,
    script: KnownScript | null,
  ) {
    this.router = router;
    this.arrival = arrival;
    this.keys = keys;
    this.slot = slot;
    this.request = request;
    this.sink = sink;
    this.clientId = clientId;
    this.isWrite = isWrite;
    this.script = script;
    this.deadline = Date.now() + router.keyMoveWaitMs;
  }

  get names(): readonly string[] {
    this.#names ??= this.keys.map((key) => key.toString('latin1'));
    return this.#names;
  }

  onReply(frame: Buffer): void {
    if (this.phase === 'confirm') {
      this.router.afterConfirm(this, frame);
      return;
    }
    if (this.phase === 'delete') {
      if (frame.equals(OK)) this.router.afterMove(this);
      else if (frame.equals(MOVING)) this.parkMoving();
      else this.retry(frame.toString('utf8', 1, frame.length - 2));
      return;
    }
    // -ERR ... IOERR error or timeout ...: MIGRATE could not reach the target in time.
    this.router.settled(this, frame[0] === 45 && frame.includes(IOERR));
    if (frame[0] === 43) {
      // +OK: moved. +NOKEY: nothing of it left on the source. +COPIED: on both, to be
      // confirmed on the target. +BIG: a big key still on the source. +MOVING: the background
      // mover has the key in flight. +STALE: it ran past its fence, and did nothing.
      if (frame.equals(MOVING)) this.parkMoving();
      else if (frame.equals(BIG)) this.router.park(this, RETRY_DELAY_MS);
      else if (frame.equals(STALE)) this.retry('the key-move script ran after its fence (a late source, or one whose clock is ahead of the proxy\'s)');
      else if (frame.equals(COPIED)) this.router.confirmCopy(this);
      else this.router.afterMove(this);
      return;
    }
    this.retry(frame.toString('utf8', 1, frame.length - 2));
  }

  onFailure(error: Buffer): void {
    this.router.settled(this, false);
    // The step may or may not have run, and the key-move script may still run later (a frozen
    // source wakes): nothing touches its keys again until its fence has passed.
    if (this.phase === 'move') this.router.fenceKeys(this);
    this.retry(error.toString('utf8', 1, error.length - 2));
  }

  /** Parked, the move to start over after a backoff. */
  retry(reason: string): void {
    this.failures++;
    this.lastError = reason;
    this.router.park(this, Math.min(MAX_RETRY_DELAY_MS, RETRY_DELAY_MS * 2 ** (this.failures - 1)));
  }

  /** The background mover has a key in flight: tried again soon, then less and less often (a mark a restarting mover left). */
  parkMoving(): void {
    this.router.park(this, Math.min(MAX_RETRY_DELAY_MS, MOVING_DELAY_MS * 2 ** Math.min(8, this.movingAnswers++)));
  }
}

const IOERR = Buffer.from('IOERR');
/**
 * How long after it is sent a key-move script may still run (KEY_MOVE_SCRIPT's fence). Longer
 * than any wait a healthy source puts it through; a script that runs later answers +STALE and
 * is sent again.
 */
const KEY_MOVE_FENCE_MS = 2_000;
const OK = Buffer.from('+OK\r\n');

/**
 * A target node as key moves see it: scripts in flight to it, moves waiting for one of its
 * MOVES_IN_FLIGHT_PER_TARGET places, and whether it stalled. After a move failed with an I/O
 * error, none goes until the target has answered a PING through the data path (so a frozen
 * target holds its sources for one round of MIGRATE timeouts, not for as long as it is frozen)
 * and a hold has passed (so a target the proxy reaches but its sources cannot is tried less and
 * less often); then one at a time until one succeeds.
 */
class MoveTarget implements ReplySink {
  readonly address: NodeAddress;
  /** The key-move script's arguments after the keys (this target, the MIGRATE timeout, ...), encoded once: to move, and to copy. */
  readonly args: EncodedArgs;
  readonly copyArgs: EncodedArgs;
  readonly #router: MigratingRouter;
  inFlight = 0;
  limit = MOVES_IN_FLIGHT_PER_TARGET;
  /** Moves waiting for a place, in arrival order. */
  waiting: KeyMove[] = [];
  holdMs = 0;
  holdUntil = 0;
  /** A PING is in flight to it (sent after a stall); nothing goes until it answers. */
  isProbing = false;

  constructor(router: MigratingRouter, address: NodeAddress, args: readonly string[], copyArgs: readonly string[]) {
    this.#router = router;
    this.address = address;
    this.args = encodeArgs(args);
    this.copyArgs = encodeArgs(copyArgs);
  }

  canSend(now: number): boolean {
    return this.inFlight < this.limit && !this.isProbing && now >= this.holdUntil;
  }

  /** The PING's answer: the target answers again. */
  onReply(): void {
    this.isProbing = false;
    this.#router.onTargetAnswered(this);
  }

  onFailure(): void {
    this.isProbing = false;
    this.#router.onTargetAnswered(this);
  }
}

interface EncodedArgs {
  readonly count: number;
  readonly bytes: Buffer;
}

function sharesKey(a: KeyMove, b: KeyMove): boolean {
  for (const name of a.names) if (b.names.includes(name)) return true;
  return false;
}

/** Whether one of the move's keys is in `keys` (the parked or waiting moves' keys). */
function hasAnyKey(move: KeyMove, keys: ReadonlyMap<string, number>): boolean {
  for (const name of move.names) if (keys.has(name)) return true;
  return false;
}

function encodeArgs(args: readonly string[]): EncodedArgs {
  return { count: args.length, bytes: Buffer.concat(args.map((arg) => encodeBulk(arg))) };
}

/**
 * Commands on keys of a migrating slot (Codis's way over plain Redis): each command's keys are
 * moved from the source to the target first, then the command runs on the target. The move is
 * the key-move script (topology/key-move-script.ts): atomic on the source, +NOKEY when the keys
 * are already gone, so a command never runs while its key exists on both shards; +BIG for a
 * key too big to MIGRATE at once, which the control plane copies in chunks; +MOVING for a key
 * the control plane's mover has in flight (a batch takes a millisecond or two).
 *
 * Commands that cannot go yet wait here ("parked"): keys the snapshot locks (a chunked copy
 * under way), keys the script answered BIG or MOVING for, and moves that failed (retried with
 * backoff). Moves also wait for a place at their target (MoveTarget: a stalled target must not
 * hold its sources for long).
 * Parked commands go again when a snapshot arrives or their retry time comes, and fail with
 * TRYAGAIN only after keyMoveWaitMs.
 *
 * Commands on a key leave in the order they came: a command whose key has an earlier command
 * parked or waiting parks behind it, and none is handed to a shard before every earlier one
 * held on its keys (#queues). Scripts of commands on one key may be in flight together (they
 * queue on the source's first connection and answer in order). A slot can stop migrating while
 * commands on it are held: the dispatcher then sends later commands on that slot here too
 * (holdsSlot), so they go to the new owner behind the held ones, not past them.
 *
 * With minReplicaAcks, a key leaves the source only once the target's replicas have it (see
 * confirmCopy): otherwise the target's primary failing right after the move would take the
 * only copy of the key with it, an acknowledged write lost, whatever the command was.
 */
export class MigratingRouter {
  readonly #shards: ShardConnections;
  readonly #options: MigratingRouterOptions;
  /** The key-move script's last argument, encoded once: the target's password; null when none. */
  readonly #passwordArg: Buffer | null;
  /** Parked commands in arrival order. */
  #parked: KeyMove[] = [];
  /** Keys of parked commands -> how many parked commands hold each. */
  readonly #parkedKeys = new Map<string, number>();
  #timer: NodeJS.Timeout | null = null;
  /** When #timer fires (ms since the epoch). */
  #timerAt = 0;
  /** Every node moves have gone to, by host:port (a few per deployment; kept). */
  readonly #targets = new Map<string, MoveTarget>();
  /** Keys of moves waiting for a target's place -> how many hold each: later commands on them park behind. */
  readonly #waitingKeys = new Map<string, number>();
  #isReleaseQueued = false;
  /** The next command's arrival number. */
  #arrivals = 0;
  /** A replicated no-op, then WAIT: confirms a copy on the target (confirmCopy). */
  readonly #confirmRequest: readonly Buffer[];
  /**
   * Per key, the commands on it held here (not handed to a shard yet, whatever they wait for),
   * in arrival order. A command is handed over only when it is the first on each of its keys,
   * so a later command on a key never overtakes an earlier one: not when an earlier one's
   * script answers after its own, and not when their slot stops migrating while they wait.
   */
  readonly #queues = new Map<string, KeyMove[]>();
  /** Slot -> commands held on it: the dispatcher sends later commands on those slots here too (holdsSlot). */
  readonly #heldSlots = new Map<number, number>();
  /**
   * Key name -> until when (ms since the epoch) a key-move script that got no reply may still run
   * on its source: no command on the key goes anywhere before (its slot is held meanwhile, so
   * this holds after the slot has settled too).
   */
  readonly #fences = new Map<string, number>();

  constructor(shards: ShardConnections, options: MigratingRouterOptions) {
    this.#shards = shards;
    this.#options = options;
    this.#passwordArg = options.password === null ? null : encodeBulk(options.password);
    this.#confirmRequest = [NOOP, encodeCommand(['WAIT', String(options.minReplicaAcks), String(options.replicaAckTimeoutMs)])];
  }

  get keyMoveWaitMs(): number {
    return this.#options.keyMoveWaitMs;
  }

  /** Commands waiting for their keys; for tests and stats. */
  get parkedCount(): number {
    let waiting = 0;
    for (const target of this.#targets.values()) waiting += target.waiting.length;
    return this.#parked.length + waiting;
  }

  /**
   * A command (or a split command's piece) whose keys are all in one slot: a migrating one
   * (`migration`), or one this router still holds commands on (`holdsSlot`; migration null),
   * which it then hands to the slot's owner after them. Keyless (a malformed command whose keys
   * could not be found) goes straight to the target. `script`: an EVALSHA's, when the proxy knows it.
   */
  send(
    keys: readonly Buffer[],
    migration: SlotMigration | null,
    request: Buffer | readonly Buffer[],
    sink: ReplySink,
    clientId: number,
    isWrite: boolean,
    script: KnownScript | null = null,
  ): void {
    if (keys.length === 0 && migration !== null) {
      this.#shards.sendToPrimary(migration.to, request, sink, clientId, isWrite, script);
      return;
    }
    const first = keys[0]!;
    const move = new KeyMove(this, this.#arrivals++, keys, keySlot(first, 0, first.length), request, sink, clientId, isWrite, script);
    this.#hold(move);
    this.#route(move);
  }

  /** Whether commands on `slot` are held here: a later one on the slot must come here too, to go after them. */
  holdsSlot(slot: number): boolean {
    return this.#heldSlots.has(slot);
  }

  /** Whether any command is held here (a cheap check before holdsSlot). */
  get isHolding(): boolean {
    return this.#heldSlots.size > 0;
  }

  /** A new snapshot: parked commands whose keys are no longer locked go again, and waiting ones whose slot settled. */
  onTopology(): void {
    if (this.#parked.length > 0 || this.#waitingKeys.size > 0) this.#release(true);
  }

  #hold(move: KeyMove): void {
    move.isHeld = true;
    for (const name of move.names) {
      const queue = this.#queues.get(name);
      if (queue === undefined) this.#queues.set(name, [move]);
      else queue.push(move);
    }
    this.#heldSlots.set(move.slot, (this.#heldSlots.get(move.slot) ?? 0) + 1);
  }

  /** Whether no earlier command held here has one of the move's keys. */
  #isFirst(move: KeyMove): boolean {
    for (const name of move.names) {
      // No queue: the router was closed while the move's script was in flight.
      const first = this.#queues.get(name)?.[0];
      if (first !== undefined && first !== move) return false;
    }
    return true;
  }

  /** The move leaves (handed over, or failed): commands parked behind it on its keys may go now, not at their retry time. */
  #unhold(move: KeyMove): void {
    // Not held: the router was closed meanwhile.
    if (!move.isHeld) return;
    move.isHeld = false;
    let isAnyBehind = false;
    for (const name of move.names) {
      const queue = this.#queues.get(name)!;
      queue.splice(queue.indexOf(move), 1);
      if (queue.length === 0) this.#queues.delete(name);
      else isAnyBehind = true;
    }
    const n = this.#heldSlots.get(move.slot)!;
    if (n === 1) this.#heldSlots.delete(move.slot);
    else this.#heldSlots.set(move.slot, n - 1);
    if (isAnyBehind && this.#parked.length > 0) this.#releaseAt(0);
  }

  /**
   * A key-move script of `move` got no reply: until its fence (and the clocks' allowed skew) has
   * passed, its keys wait, and its slot counts as held (later commands on it come here, also once
   * it has settled).
   */
  fenceKeys(move: KeyMove): void {
    const until = move.fence + FENCE_SKEW_MS;
    const wait = until - Date.now();
    if (wait <= 0) return;
    for (const name of move.names) if ((this.#fences.get(name) ?? 0) < until) this.#fences.set(name, until);
    this.#heldSlots.set(move.slot, (this.#heldSlots.get(move.slot) ?? 0) + 1);
    setTimeout(() => {
      for (const name of move.names) if (this.#fences.get(name) === until) this.#fences.delete(name);
      const n = this.#heldSlots.get(move.slot);
      if (n === 1) this.#heldSlots.delete(move.slot);
      else if (n !== undefined) this.#heldSlots.set(move.slot, n - 1);
      if (this.#parked.length > 0) this.#releaseAt(0);
    }, wait).unref();
  }

  /** The latest fence on the move's keys (0 when none). */
  #fenceOf(move: KeyMove): number {
    let until = 0;
    for (const name of move.names) until = Math.max(until, this.#fences.get(name) ?? 0);
    return until;
  }

  /** Hands the command to a shard's primary: reads too, since a replica of the target may not have the key yet. */
  #handOver(move: KeyMove, shard: number): void {
    this.#unhold(move);
    this.#shards.sendToPrimary(shard, move.request, move.sink, move.clientId, move.isWrite, move.script);
  }

  /** Answers the command with TRYAGAIN: its keys could not move within keyMoveWaitMs. */
  #expire(move: KeyMove): void {
    this.#unhold(move);
    move.sink.onFailure(encodeError(`TRYAGAIN slotproxy could not move the key to its new shard in time${move.lastError === '' ? '' : `: ${move.lastError}`}`));
  }

  /** Fails every parked command. */
  close(): void {
    const parked = this.#parked;
    this.#parked = [];
    this.#parkedKeys.clear();
    for (const target of this.#targets.values()) {
      parked.push(...target.waiting);
      target.waiting = [];
    }
    this.#waitingKeys.clear();
    for (const queue of this.#queues.values()) for (const move of queue) move.isHeld = false;
    this.#queues.clear();
    this.#heldSlots.clear();
    this.#stopTimer();
    for (const move of parked) move.sink.onFailure(SHUTTING_DOWN);
  }

  /** A move's script answered (or its connection failed): its place at the target is free. */
  settled(move: KeyMove, isStall: boolean): void {
    const target = move.target;
    if (target === null) return;
    move.target = null;
    target.inFlight--;
    const now = Date.now();
    if (isStall) {
      target.limit = 1;
      // The other scripts already queued behind the first to time out fail the same way: one stall.
      if (now >= target.holdUntil) {
        target.holdMs = Math.min(MAX_HOLD_MS, Math.max(MIN_HOLD_MS, 2 * target.holdMs));
        target.holdUntil = now + target.holdMs;
      }
      this.#probe(target);
    } else if (target.holdMs > 0 && !target.isProbing && now >= target.holdUntil) {
      // A move went through after a stall: back to full speed.
      target.limit = MOVES_IN_FLIGHT_PER_TARGET;
      target.holdMs = 0;
    }
    if (target.waiting.length > 0) this.#releaseAt(target.holdUntil);
  }

  onTargetAnswered(target: MoveTarget): void {
    if (target.waiting.length > 0) this.#releaseAt(target.holdUntil);
  }

  /**
   * Looks at the waiting moves at `at`, or, when that has passed, once the replies being read
   * now are handled (after this move's own handling: it may park, and an earlier command on its
   * keys must go first), still in this event-loop turn.
   */
  #releaseAt(at: number): void {
    if (at > Date.now()) {
      this.#wakeAt(at);
      return;
    }
    if (this.#isReleaseQueued) return;
    this.#isReleaseQueued = true;
    queueMicrotask(() => {
      this.#isReleaseQueued = false;
      this.#release(false);
    });
  }

  /** Asks the stalled target for a PING through the data path (not through its sources). */
  #probe(target: MoveTarget): void {
    if (target.isProbing) return;
    const topology = this.#shards.topology;
    const shard = topology.shards.findIndex((info) => sameNode(info.primary, target.address));
    // No longer a primary (failed over, removed): moves go to whatever the snapshot says now.
    if (shard < 0) return;
    target.isProbing = true;
    this.#shards.sendToPrimary(shard, PING, target, 0, false);
  }

  /**
   * The script copied the keys to the target (+COPIED): its replicas must have them before the
   * source's copy is deleted. A replicated no-op and WAIT on a connection to the node the
   * script copied to: MIGRATE's RESTORE came from the source's own connection, and WAIT only
   * covers the writes of the connection it runs on, so the no-op carries that connection's
   * replication offset past the RESTORE. Unconfirmed, the move starts over later (retried
   * until keyMoveWaitMs, then TRYAGAIN, the keys whole on the source): the command is never
   * answered from a copy that the target's failover could lose.
   */
  confirmCopy(move: KeyMove): void {
    const topology = this.#shards.topology;
    const migration = topology.migrations.get(move.slot);
    if (migration === undefined) {
      move.retry('the slot stopped migrating');
      return;
    }
    const target = topology.shards[migration.to]!;
    const { minReplicaAcks, noReplicaWrites } = this.#options;
    const confirmation = writeConfirmation(target, minReplicaAcks, noReplicaWrites);
    if (confirmation === 'refused') {
      move.retry(`shard ${target.name} has fewer than ${minReplicaAcks} healthy replica(s) to confirm the moved key (noReplicaWrites: refuse)`);
    } else if (confirmation === 'none') {
      this.#deleteCopied(move, migration);
    } else if (move.sentTo === null || !sameNode(target.primary, move.sentTo)) {
      // A failover of the target since the copy: the new primary may not have it.
      move.retry(`shard ${target.name} failed over while the key was copied to it`);
    } else {
      move.phase = 'confirm';
      this.#shards.primaryConnection(migration.to, move.clientId).sendBatch(this.#confirmRequest, 1, move);
    }
  }

  /** WAIT's answer on the target: enough replicas have the copy, or the move starts over. */
  afterConfirm(move: KeyMove, frame: Buffer): void {
    let acks = -1;
    if (frame[0] === 58) acks = Number(frame.toString('latin1', 1, frame.length - 2));
    const { minReplicaAcks, replicaAckTimeoutMs } = this.#options;
    const migration = this.#shards.topology.migrations.get(move.slot);
    if (acks < minReplicaAcks || migration === undefined) {
      const name = migration === undefined ? 'the target' : `shard ${this.#shards.topology.shards[migration.to]!.name}`;
      move.retry(acks < 0 ? frame.toString('utf8', 1, frame.length - 2) : `${acks} of ${minReplicaAcks} replica(s) of ${name} confirmed the moved key within ${replicaAckTimeoutMs} ms`);
      return;
    }
    this.#deleteCopied(move, migration);
  }

  /** The copy is confirmed (or needs no confirmation): the source deletes its own, on the connection the scripts use. */
  #deleteCopied(move: KeyMove, migration: SlotMigration): void {
    move.phase = 'delete';
    // As the script's own delete: held until the source's replicas have it.
    this.#evalOnSource(move, migration, DELETE_HEAD, null);
  }

  /** The keys are on the target now (the script answered +OK or +NOKEY, or a confirmed copy's source was deleted). */
  afterMove(move: KeyMove): void {
    if (!this.#isFirst(move)) {
      // An earlier command on one of these keys has not gone yet (parked, waiting for a place
      // at the target, or its move answered after this one's): it goes first, and releases this one.
      this.park(move, 0, RETRY_DELAY_MS);
      return;
    }
    const topology = this.#shards.topology;
    const migration = topology.migrations.get(move.slot);
    this.#handOver(move, migration === undefined ? topology.slotOwner[move.slot]! : migration.to);
  }

  /**
   * Parks `move` until `delayMs` from now; it is looked at again by `lookAfterMs` at the latest
   * (a command behind an earlier one on its keys may go at once, but is released by that one's
   * going: no timer every millisecond meanwhile).
   */
  park(move: KeyMove, delayMs: number, lookAfterMs = delayMs): void {
    if (Date.now() >= move.deadline) {
      this.#expire(move);
      return;
    }
    move.retryAt = Date.now() + delayMs;
    // In arrival order: a move parked again after its script (afterMove) goes before later ones.
    let at = this.#parked.length;
    while (at > 0 && this.#parked[at - 1]!.arrival > move.arrival) at--;
    this.#parked.splice(at, 0, move);
    for (const name of move.names) this.#parkedKeys.set(name, (this.#parkedKeys.get(name) ?? 0) + 1);
    this.#wakeAt(Date.now() + lookAfterMs);
  }

  /** Makes sure the parked commands are looked at by `at` (one timer, for the earliest). */
  #wakeAt(at: number): void {
    if (this.#timer !== null && this.#timerAt <= at) return;
    this.#stopTimer();
    this.#timerAt = at;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#release(false);
    }, Math.max(1, at - Date.now()));
    this.#timer.unref();
  }

  #route(move: KeyMove): void {
    if (this.#fences.size > 0) {
      const wait = this.#fenceOf(move) - Date.now();
      if (wait > 0) {
        this.park(move, wait);
        return;
      }
    }
    const topology = this.#shards.topology;
    const migration = topology.migrations.get(move.slot);
    if (migration === undefined) {
      // The slot finished migrating while the command waited (or it came behind commands
      // held on its slot): to the owner, after the earlier commands on its keys.
      if (this.#isFirst(move)) this.#handOver(move, topology.slotOwner[move.slot]!);
      else this.park(move, 0, RETRY_DELAY_MS);
      return;
    }
    if (isLocked(migration, move)) {
      this.park(move, RETRY_DELAY_MS);
      return;
    }
    if (migration.movesFrom !== undefined) {
      // Commands routed to the source before the slot began migrating may still be on their way.
      const wait = migration.movesFrom - Date.now();
      if (wait > 0) {
        this.park(move, wait);
        return;
      }
    }
    if ((this.#parked.length > 0 && this.#holdsParkedKey(move)) || (this.#waitingKeys.size > 0 && this.#holdsWaitingKey(move))) {
      // Behind an earlier command on its keys: released when that one goes (afterMove), or at
      // the next look at the parked commands.
      this.park(move, 0, RETRY_DELAY_MS);
      return;
    }
    const target = this.#targetFor(this.#shards.primaryAddress(migration.to));
    if (target.waiting.length > 0 || !target.canSend(Date.now())) {
      target.waiting.push(move);
      for (const name of move.names) this.#waitingKeys.set(name, (this.#waitingKeys.get(name) ?? 0) + 1);
      // Sent when a script settles or the target answers; looked at meanwhile for its deadline.
      const now = Date.now();
      this.#wakeAt(target.holdUntil > now && !target.isProbing ? target.holdUntil : now + MAX_TICK_MS);
      return;
    }
    this.#sendScript(move, migration, target);
  }

  #sendScript(move: KeyMove, migration: SlotMigration, target: MoveTarget): void {
    const topology = this.#shards.topology;
    target.inFlight++;
    move.target = target;
    move.phase = 'move';
    move.sentTo = target.address;
    // A copy when the target's replicas are to confirm it first (or cannot: it waits then).
    const isCopy = writeConfirmation(topology.shards[migration.to], this.#options.minReplicaAcks, this.#options.noReplicaWrites) !== 'none';
    this.#evalOnSource(move, migration, EVAL_HEAD, isCopy ? target.copyArgs : target.args);
  }

  /**
   * EVAL of a script (`head`: its name and body) over the move's keys, then `args`, on the
   * source's first connection: every move's scripts run there. With minReplicaAcks, the answer is
   * held until WAIT confirms it on the source's replicas (one WAIT per turn), so no command
   * reaches the target while the source's delete of the key could still be lost in a failover
   * (a promoted replica would bring the old copy back, and the source's copy is the authority).
   * WAIT covers every earlier write of its connection, hence one connection for all moves: a
   * +NOKEY for a key another command moved a moment ago is confirmed only after that delete.
   */
  #evalOnSource(move: KeyMove, migration: SlotMigration, head: Buffer, args: EncodedArgs | null): void {
    // The key-move script's fence and the target's password follow its other arguments.
    const password = this.#passwordArg;
    const more = args === null ? 0 : args.count + 1 + (password === null ? 0 : 1);
    const parts: Buffer[] = [encodeArrayHeader(3 + move.keys.length + more), head, encodeBulk(String(move.keys.length))];
    for (const key of move.keys) parts.push(Buffer.from(`$${key.length}\r\n`), key, CRLF);
    if (args !== null) {
      move.fence = Date.now() + KEY_MOVE_FENCE_MS;
      parts.push(args.bytes, encodeBulk(String(move.fence)));
      if (password !== null) parts.push(password);
    }
    const connection = this.#shards.primaryConnection(migration.from, 0);
    if (confirmsMoves(this.#shards.topology.shards[migration.from], this.#options.minReplicaAcks)) connection.sendDurable(parts, move);
    else connection.send(parts, move);
  }

  #targetFor(address: NodeAddress): MoveTarget {
    const key = nodeKey(address);
    let target = this.#targets.get(key);
    if (target === undefined) {
      const timeoutMs = Math.min(this.#options.migrateTimeoutMs, MAX_ON_DEMAND_MIGRATE_TIMEOUT_MS);
      const where = { host: address.host, port: address.port, timeoutMs, password: this.#options.password };
      target = new MoveTarget(this, address, keyMoveArgs(where, false), keyMoveArgs(where, true));
      this.#targets.set(key, target);
    }
    return target;
  }

  /**
   * Whether a parked command that came before `move` holds one of its keys. Only earlier ones:
   * a command whose move has just settled must not wait for a later one on its key, which waits
   * for it in turn (five or more commands on one key in flight to a target waited out
   * keyMoveWaitMs that way, each parking behind the others, and failed with TRYAGAIN).
   */
  #holdsParkedKey(move: KeyMove): boolean {
    if (!hasAnyKey(move, this.#parkedKeys)) return false;
    for (const other of this.#parked) {
      // #parked is in arrival order.
      if (other.arrival >= move.arrival) return false;
      if (sharesKey(other, move)) return true;
    }
    return false;
  }

  /** Whether a command that came before `move` and waits for a target's place holds one of its keys. */
  #holdsWaitingKey(move: KeyMove): boolean {
    if (!hasAnyKey(move, this.#waitingKeys)) return false;
    for (const target of this.#targets.values()) {
      for (const other of target.waiting) if (other.arrival < move.arrival && sharesKey(other, move)) return true;
    }
    return false;
  }

  /**
   * Sends the waiting moves whose target has places again, in arrival order; those whose slot
   * settled or whose target is no longer where their slot goes are routed afresh, and expired
   * ones fail, from anywhere in the queue (not only from its head: one still waiting for a
   * place must not hold them). Returns the earliest time a held target opens (Infinity when
   * none waits on a hold).
   */
  #drainTargets(now: number, expired: KeyMove[]): number {
    let nextAt = Infinity;
    const topology = this.#shards.topology;
    for (const target of this.#targets.values()) {
      if (target.waiting.length === 0) continue;
      const rerouted: KeyMove[] = [];
      const queue = target.waiting;
      target.waiting = [];
      for (const move of queue) {
        const migration = topology.migrations.get(move.slot);
        const isStillHere = migration !== undefined && sameNode(this.#shards.primaryAddress(migration.to), target.address);
        if (now < move.deadline && isStillHere && (target.waiting.length > 0 || !target.canSend(now))) {
          target.waiting.push(move);
          continue;
        }
        for (const name of move.names) {
          const n = this.#waitingKeys.get(name)! - 1;
          if (n === 0) this.#waitingKeys.delete(name);
          else this.#waitingKeys.set(name, n);
        }
        if (now >= move.deadline) expired.push(move);
        else if (!isStillHere) rerouted.push(move);
        else this.#sendScript(move, migration, target);
      }
      for (const move of rerouted) this.#route(move);
      if (target.waiting.length > 0 && !target.isProbing && target.inFlight < target.limit) nextAt = Math.min(nextAt, target.holdUntil);
    }
    return nextAt;
  }

  /**
   * Takes out the parked commands that may go (their retry time has come or a snapshot
   * arrived, their keys are not locked, and no earlier parked command holds one of their keys),
   * then routes them again in arrival order. Taking them all out first keeps two commands on
   * one key, released together, in their order.
   */
  #release(isNewSnapshot: boolean): void {
    const now = Date.now();
    const topology = this.#shards.topology;
    const kept: KeyMove[] = [];
    const going: KeyMove[] = [];
    const expired: KeyMove[] = [];
    /** Keys of the commands kept so far: later commands on them stay behind. */
    const held = new Set<string>();
    for (const move of this.#parked) {
      if (now >= move.deadline) {
        expired.push(move);
        continue;
      }
      const migration = topology.migrations.get(move.slot);
      const isReady =
        (isNewSnapshot || now >= move.retryAt) &&
        !(migration !== undefined && isLocked(migration, move)) &&
        !move.names.some((name) => held.has(name));
      if (isReady) going.push(move);
      else {
        kept.push(move);
        for (const name of move.names) held.add(name);
      }
    }
    if (going.length > 0 || expired.length > 0) {
      this.#parked = kept;
      this.#parkedKeys.clear();
      for (const move of kept) for (const name of move.names) this.#parkedKeys.set(name, (this.#parkedKeys.get(name) ?? 0) + 1);
    }
    // Moves waiting for a target's place are older than the parked ones behind them: first.
    const openAt = this.#waitingKeys.size > 0 ? this.#drainTargets(now, expired) : Infinity;
    if (kept.length === 0 && this.#waitingKeys.size === 0) this.#stopTimer();
    else {
      let next = Math.min(now + MAX_TICK_MS, Math.max(now + 1, openAt));
      for (const move of kept) if (move.retryAt > now && move.retryAt < next) next = move.retryAt;
      this.#wakeAt(next);
    }
    for (const move of expired) this.#expire(move);
    for (const move of going) this.#route(move);
  }

  #stopTimer(): void {
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
  }
}

function isLocked(migration: SlotMigration, move: KeyMove): boolean {
  const locked = migration.lockedKeys;
  if (locked === undefined || locked.size === 0) return false;
  for (const name of move.names) if (locked.has(name)) return true;
  return false;
}
