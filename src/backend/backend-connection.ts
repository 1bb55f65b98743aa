import { connect, type Socket } from 'node:net';
import { Fifo, NumberFifo } from '../io/fifo';
import { tick, turnTime } from '../io/turn-clock';
import type { NodeStats } from '../metrics/data-path-stats';
import { scheduleFlush, type Flushable } from '../io/flush-scheduler';
import { OutputBuffer } from '../io/output-buffer';
import { SocketWriter } from '../io/socket-writer';
import { copyOfRange } from '../io/byte-copy';
import { passingRead } from '../io/shared-read-buffer';
import { ReplyScanner, type ReplyFrameSink } from '../resp/reply-scanner';
import { encodeCommand, encodeError, NULL_ARRAY, NULL_BULK } from '../resp/resp-writer';
import { nodeKey, type NodeAddress } from '../topology/topology';
import { IGNORE_REPLY, type ReplySink } from './reply-sink';

export type ConnectionState = 'idle' | 'connecting' | 'ready' | 'down' | 'closed';

export interface BackendConnectionOptions {
  readonly address: NodeAddress;
  /** Shard name, for error messages. */
  readonly shardName: string;
  /** @default 1000 */
  readonly connectTimeoutMs: number;
  /** Sent with AUTH right after connecting; never logged. */
  readonly password: string | null;
  /** Replicas that must confirm a durable write (WAIT) before it is answered; 0 = off. */
  readonly minReplicaAcks: number;
  /** WAIT's timeout. */
  readonly replicaAckTimeoutMs: number;
  /** A reply slower than this closes the connection and fails what is in flight; 0 = no limit. */
  readonly commandTimeoutMs: number;
  /** Counters of this node, shared by its connections. */
  readonly stats: NodeStats;
  /**
   * Reconnect by itself once the backoff has passed, so an idle pool sees its node come back
   * (metrics, /readyz) without waiting for a command. Off for a client's own connections.
   */
  readonly reconnectsInBackground?: boolean;
  /**
   * Set for a connection in Pub/Sub mode: every frame it reads (subscription confirmations and
   * messages) goes here, none to a request, since pushes interleave freely with confirmations.
   */
  readonly pushSink?: PushSink;
}

/** Receives every frame of a Pub/Sub-mode connection. */
export interface PushSink {
  /** The frame is the sink's own to keep: a copy, not a view of a read buffer. */
  onPush(frame: Buffer): void;
  /** The connection closed; the subscriptions on it are gone. */
  onPushClosed(reason: string): void;
}

const MIN_BACKOFF_MS = 100;
/**
 * A connection whose oldest expired request (commandTimeoutMs) has waited this long is given up
 * on and closed: the node is gone, not paused. Until then it is kept (see #expireOverdue).
 */
const GIVE_UP_AFTER_MS = 30_000;
const MAX_BACKOFF_MS = 5000;
/**
 * A turn's requests to one node below this many bytes (a dozen GETs) wait one more turn before
 * they are written: at `-P 1` the clients whose replies were just written send their next
 * requests meanwhile, and one write then carries both. Larger batches (pipelines) go at once.
 * Measured in docs/performance.md ("Small backend batches wait one turn").
 */
const HOLD_BELOW_BYTES = 512;

/** Swallows the reply to the proxy's own AUTH; a refused AUTH closes the connection. */
class AuthSink implements ReplySink {
  readonly #connection: BackendConnection;
  constructor(connection: BackendConnection) {
    this.#connection = connection;
  }
  onReply(frame: Buffer): void {
    if (frame[0] === 45) this.#connection.destroy(`AUTH refused: ${frame.toString('utf8', 1, frame.length - 2)}`);
  }
  onFailure(): void {}
}

/** Where a durable write's own reply is among the replies it gets, and what that reply says. */
export interface DurableReplies {
  /**
   * Replies before the write's own, swallowed: MULTI's and the queued commands' +QUEUED before
   * EXEC's, SCRIPT LOAD's before the EVALSHA it heals.
   */
  readonly ignored: number;
  /**
   * A null reply says nothing was written: EXEC aborted by a WATCH, a blocking pop that timed
   * out. Such a reply is passed on at once. Not so for every write (SET ... GET answers null for
   * a key it just created), hence a flag.
   */
  readonly isNullUnwritten: boolean;
}

/** One command whose reply is its own: SET, HSET, EVAL, ... */
export const SINGLE_WRITE: DurableReplies = { ignored: 0, isNullUnwritten: false };

/**
 * A write whose reply is held until the WAIT that follows it in the same turn says enough
 * replicas have it. A reply that acknowledges no write has nothing to confirm and is passed on
 * as it comes: an error (the command did not run; or a script failed after writing, which
 * Redis does not roll back, and its client is not told it succeeded), or a null where
 * `isNullUnwritten`.
 */
class DurableWrite implements ReplySink {
  readonly target: ReplySink;
  readonly #isNullUnwritten: boolean;
  /** The write's own reply, held; null until it arrives. */
  reply: Buffer | null = null;
  /** Its target has been answered already (failed, or nothing written): the WAIT's answer is not for it. */
  isSettled = false;

  constructor(target: ReplySink, isNullUnwritten: boolean) {
    this.target = target;
    this.#isNullUnwritten = isNullUnwritten;
  }

  onReply(frame: Buffer): void {
    if (frame[0] === 45 || (this.#isNullUnwritten && (frame.equals(NULL_BULK) || frame.equals(NULL_ARRAY)))) {
      this.isSettled = true;
      this.target.onReply(frame);
      return;
    }
    this.reply = frame;
  }

  onFailure(error: Buffer): void {
    this.isSettled = true;
    this.target.onFailure(error);
  }
}

/** The WAIT after a turn's durable writes: releases their replies, or fails them. */
class WaitSink implements ReplySink {
  readonly #writes: DurableWrite[];
  readonly #required: number;
  readonly #notAcked: Buffer;

  constructor(writes: DurableWrite[], required: number, timeoutMs: number) {
    this.#writes = writes;
    this.#required = required;
    this.#notAcked = encodeError(
      `NOREPLICAS the write reached the primary but not ${required} replica(s) within ${timeoutMs} ms; a failover may lose it`,
    );
  }

  onReply(frame: Buffer): void {
    let acks = 0;
    if (frame[0] === 58) for (let p = 1; p < frame.length && frame[p] !== 13; p++) acks = acks * 10 + frame[p]! - 48;
    const isAcked = acks >= this.#required;
    for (const write of this.#writes) {
      if (write.isSettled || write.reply === null) continue;
      write.target.onReply(isAcked ? write.reply : this.#notAcked);
    }
  }

  onFailure(error: Buffer): void {
    for (const write of this.#writes) if (!write.isSettled) write.target.onFailure(error);
  }
}

/**
 * One pipelined socket to one backend node, shared by many clients. Requests are written in
 * the order sent and Redis answers in order, so the head of the in-flight FIFO owns the next
 * reply. Writes are coalesced into one per event-loop turn.
 */
export class BackendConnection implements ReplyFrameSink, Flushable {
  readonly #options: BackendConnectionOptions;
  readonly #scanner: ReplyScanner;
  /** Requests written (or queued to be) whose replies have not arrived, in order. */
  readonly #inFlight = new Fifo<ReplySink>(64);
  readonly #out = new OutputBuffer();
  /** When each in-flight request was queued (turn clock, seconds), parallel to #inFlight. */
  readonly #queuedAt = new NumberFifo(64);
  readonly #stats: NodeStats;
  #timeoutTimer: NodeJS.Timeout | null = null;
  /**
   * In-flight requests at the head of #inFlight already answered with the commandTimeoutMs
   * error: IGNORE_REPLY placeholders whose late replies are swallowed, in step.
   */
  #expired = 0;
  /** Durable writes queued this turn, confirmed by one WAIT appended at flush. */
  #durableWrites: DurableWrite[] = [];
  #socket: Socket | null = null;
  #writer: SocketWriter | null = null;
  #state: ConnectionState = 'idle';
  /** Why the connection last went down, for error replies. */
  #lastError = '';
  #backoffMs = MIN_BACKOFF_MS;
  /** While down, sends before this time fail at once instead of reconnecting. */
  #retryAt = 0;
  /**
   * SHA1s of the scripts this connection sent SCRIPT LOAD for since it (re)connected: the node
   * has them (unless flushed behind the proxy's back), so an EVALSHA goes without a SCRIPT LOAD
   * in front. Emptied on every connect: the node may be another process by then.
   */
  readonly #scriptsLoaded = new Set<string>();
  isFlushScheduled = false;
  isFlushDeferred = false;
  readonly flushesFirst = true;

  constructor(options: BackendConnectionOptions) {
    this.#options = options;
    this.#stats = options.stats;
    this.#scanner = new ReplyScanner(this);
  }

  get state(): ConnectionState {
    return this.#state;
  }

  /** The node it talks to. */
  get address(): NodeAddress {
    return this.#options.address;
  }

  /** How long the oldest request in flight has waited for its reply, in seconds (0 when none waits). */
  oldestWaitSeconds(): number {
    // The clock read here, not tick(): that would move the turn clock the latency counts use.
    return this.#inFlight.length === 0 ? 0 : performance.now() / 1000 - this.#queuedAt.peek();
  }

  /** Queues a request (one buffer, or several written back to back) for this turn's flush. */
  send(request: Buffer | readonly Buffer[], sink: ReplySink): void {
    if (this.#queue(request, sink)) this.#push(sink);
  }

  /**
   * A batch whose first `ignored` replies are swallowed and whose last goes to `sink`: a
   * transaction sent as MULTI, the queued commands, EXEC, written back to back so no other
   * client's command can come between them on this shared connection.
   */
  sendBatch(parts: Buffer | readonly Buffer[], ignored: number, sink: ReplySink): void {
    if (!this.#queue(parts, sink)) return;
    for (let i = 0; i < ignored; i++) this.#push(IGNORE_REPLY);
    this.#push(sink);
  }

  /** Whether this connection loaded the script `sha` on its node (SCRIPT LOAD) since it connected. */
  hasScript(sha: string): boolean {
    return this.#scriptsLoaded.has(sha);
  }

  /** A SCRIPT LOAD of `sha` was queued on this connection. */
  addScript(sha: string): void {
    this.#scriptsLoaded.add(sha);
  }

  /** SCRIPT FLUSH went through the proxy: no script is known to be loaded any more. */
  forgetScripts(): void {
    this.#scriptsLoaded.clear();
  }

  /** A write goes without the confirmation minReplicaAcks asks for (noReplicaWrites: accept): counted. */
  countUnconfirmedWrite(): void {
    this.#stats.unconfirmedWrites++;
  }

  /** Pub/Sub mode: writes a command whose answers arrive at the push sink. */
  sendToPush(request: Buffer): boolean {
    if (!this.#isUsable()) return false;
    this.#out.push(request);
    scheduleFlush(this);
    return true;
  }

  /**
   * A write confirmed by `minReplicaAcks` replicas before it is answered. One WAIT per turn
   * covers every write queued on this connection in that turn (WAIT counts all earlier writes
   * of the connection), so the cost is one round trip to the replicas per batch, not per write.
   * On a blocked command's connection the WAIT waits behind it and runs once it has answered.
   */
  sendDurable(request: Buffer | readonly Buffer[], sink: ReplySink, replies: DurableReplies = SINGLE_WRITE): void {
    if (!this.#queue(request, sink)) return;
    for (let i = 0; i < replies.ignored; i++) this.#push(IGNORE_REPLY);
    const write = new DurableWrite(sink, replies.isNullUnwritten);
    this.#durableWrites.push(write);
    this.#push(write);
  }

  /**
   * Queues the request's bytes for this turn's flush; false (and `sink` failed) when the node
   * cannot be reached. The caller then pushes the sinks that await its replies.
   */
  #queue(request: Buffer | readonly Buffer[], sink: ReplySink): boolean {
    // While the node owes replies past commandTimeoutMs, nothing new queues behind them.
    if (this.#expired > 0 || !this.#isUsable()) {
      sink.onFailure(this.#unavailableReply());
      return false;
    }
    if (Buffer.isBuffer(request)) this.#out.push(request);
    else for (const part of request) this.#out.push(part);
    scheduleFlush(this);
    return true;
  }

  isWorthHolding(): boolean {
    // Durable writes' WAIT is not held back: it times replicas, not the shard.
    const length = this.#out.length;
    return length > 0 && length < HOLD_BELOW_BYTES && this.#durableWrites.length === 0 && this.#state === 'ready';
  }

  flush(): void {
    if (this.#durableWrites.length > 0) {
      const { minReplicaAcks, replicaAckTimeoutMs } = this.#options;
      this.#out.push(encodeCommand(['WAIT', String(minReplicaAcks), String(replicaAckTimeoutMs)]));
      this.#push(new WaitSink(this.#durableWrites, minReplicaAcks, replicaAckTimeoutMs));
      this.#durableWrites = [];
    }
    if (this.#state === 'ready' && this.#writer !== null) {
      this.#stats.bytesOut += this.#out.length;
      this.#out.writeTo(this.#writer);
    }
  }

  /** `buf` is the read buffer, valid during this call only, unless `isJoined` (reply-scanner.ts). */
  onReplyFrame(buf: Buffer, start: number, end: number, isJoined: boolean): void {
    const push = this.#options.pushSink;
    if (push !== undefined) {
      push.onPush(isJoined ? buf.subarray(start, end) : copyOfRange(buf, start, end));
      return;
    }
    // Pop before the callback: the callback may close this connection and fail the rest.
    const sink = this.#inFlight.shift();
    if (sink === undefined) {
      this.destroy('reply with no request waiting for it');
      return;
    }
    // The expired placeholders are the head of the queue: this reply is one of them.
    if (this.#expired > 0) this.#expired--;
    const stats = this.#stats;
    stats.inFlight--;
    stats.latency.observe(turnTime() - this.#queuedAt.shift());
    if (buf[start] === 45) stats.errors++;
    if (isJoined) sink.onReply(buf.subarray(start, end));
    else if (sink.onPassingReply !== undefined) sink.onPassingReply(buf, start, end);
    else sink.onReply(copyOfRange(buf, start, end));
  }

  /** Closes the socket; in-flight requests fail. The next send reconnects (after backoff). */
  destroy(reason: string): void {
    this.#lastError = reason;
    this.#socket?.destroy();
  }

  /** Closes for good. */
  close(): void {
    this.#setState('closed');
    if (this.#timeoutTimer !== null) clearInterval(this.#timeoutTimer);
    this.#socket?.destroy();
    this.#failAll('connection closed by the proxy');
  }

  #isUsable(): boolean {
    switch (this.#state) {
      case 'ready':
      case 'connecting':
        return true;
      case 'idle':
        this.#connect();
        return true;
      case 'down':
        if (Date.now() < this.#retryAt) return false;
        this.#connect();
        return true;
      case 'closed':
        return false;
    }
  }

  #connect(): void {
    const { address, connectTimeoutMs, password } = this.#options;
    this.#setState('connecting');
    this.#scriptsLoaded.clear();
    const socket = connect({
      host: address.host,
      port: address.port,
      noDelay: true,
      onread: passingRead((chunk) => {
        tick();
        this.#stats.bytesIn += chunk.length;
        try {
          this.#scanner.feed(chunk);
        } catch (err) {
          this.destroy(`bad reply from ${nodeKey(address)}: ${(err as Error).message}`);
        }
      }),
    });
    this.#socket = socket;
    this.#writer = new SocketWriter(socket);
    socket.setTimeout(connectTimeoutMs);
    socket.on('connect', () => {
      socket.setTimeout(0);
      socket.setKeepAlive(true, 10_000);
      this.#backoffMs = MIN_BACKOFF_MS;
      this.#setState('ready');
      this.flush();
    });
    socket.on('timeout', () => {
      socket.destroy(new Error(`connect timeout after ${connectTimeoutMs} ms`));
    });
    socket.on('error', (err: Error) => {
      this.#lastError = err.message;
    });
    socket.on('close', () => {
      if (this.#socket !== socket) return;
      this.#socket = null;
      this.#writer = null;
      this.#scanner.reset();
      this.#out.clear();
      this.#durableWrites = [];
      this.#expired = 0;
      if (this.#state !== 'closed') {
        this.#setState('down');
        this.#retryAt = Date.now() + this.#backoffMs;
        if (this.#options.reconnectsInBackground === true) {
          const timer = setTimeout(() => {
            if (this.#state === 'down') this.#connect();
          }, this.#backoffMs);
          timer.unref();
        }
        this.#backoffMs = Math.min(this.#backoffMs * 2, MAX_BACKOFF_MS);
      }
      // A node that closed the connection cleanly gave no error: later requests name it too.
      if (this.#lastError === '') this.#lastError = 'connection lost';
      this.#failAll(this.#lastError);
      this.#options.pushSink?.onPushClosed(this.#lastError);
    });
    if (password !== null) {
      this.#out.push(encodeCommand(['AUTH', password]));
      this.#push(new AuthSink(this));
    }
  }

  #push(sink: ReplySink): void {
    this.#inFlight.push(sink);
    this.#queuedAt.push(turnTime());
    this.#stats.requests++;
    this.#stats.inFlight++;
    if (this.#options.commandTimeoutMs > 0) this.#timeoutTimer ??= this.#startTimeoutTimer();
  }

  /** Checks the oldest request a few times per timeout; one timer per connection, not per request. */
  #startTimeoutTimer(): NodeJS.Timeout {
    const limit = this.#options.commandTimeoutMs;
    const timer = setInterval(() => this.#expireOverdue(limit), Math.max(10, Math.floor(limit / 4)));
    timer.unref();
    return timer;
  }

  /**
   * Answers the requests waiting longer than `limit` with the timeout error, without closing
   * the connection. Their bytes may be with the node already (a paused process, a stalled
   * link), which then runs them once it goes on. On a new connection, a later request of the
   * same client could run before them, since Redis orders requests per connection only: an
   * acknowledged write overwritten by an earlier one the client was told had failed. So the
   * connection stays; their late replies are swallowed in turn, and new requests fail at once
   * until the node has answered them. A node silent for GIVE_UP_AFTER_MS is closed after all.
   */
  #expireOverdue(limit: number): void {
    if (this.#inFlight.length === 0) return;
    const now = tick();
    if (this.#expired > 0 && (now - this.#queuedAt.peek()) * 1000 > Math.max(GIVE_UP_AFTER_MS, limit)) {
      this.destroy(`no reply within ${Math.max(GIVE_UP_AFTER_MS, limit)} ms`);
      return;
    }
    if (this.#expired >= this.#inFlight.length || (now - this.#queuedAt.at(this.#expired)) * 1000 <= limit) return;
    const reason = `no reply within ${limit} ms (commandTimeoutMs)`;
    this.#lastError = reason;
    const overdue: ReplySink[] = [];
    while (this.#expired < this.#inFlight.length && (now - this.#queuedAt.at(this.#expired)) * 1000 > limit) {
      overdue.push(this.#inFlight.at(this.#expired)!);
      this.#inFlight.set(this.#expired, IGNORE_REPLY);
      this.#expired++;
    }
    this.#stats.failures += overdue.length;
    // Placeholders first, callbacks after: a callback may send on this connection or close it.
    const error = encodeError(`ERR shard ${this.#options.shardName} unavailable: ${reason}`);
    for (const sink of overdue) sink.onFailure(error);
  }

  #failAll(reason: string): void {
    this.#queuedAt.clear();
    if (this.#inFlight.length === 0) return;
    this.#stats.failures += this.#inFlight.length;
    this.#stats.inFlight -= this.#inFlight.length;
    const error = encodeError(`ERR shard ${this.#options.shardName} unavailable: ${reason}`);
    for (let sink = this.#inFlight.shift(); sink !== undefined; sink = this.#inFlight.shift()) {
      sink.onFailure(error);
    }
  }

  #unavailableReply(): Buffer {
    return encodeError(`ERR shard ${this.#options.shardName} unavailable: ${this.#lastError || this.#state}`);
  }

  #setState(state: ConnectionState): void {
    const stats = this.#stats;
    if (this.#state === 'ready') stats.connectionsReady--;
    else if (this.#state === 'down') stats.connectionsDown--;
    this.#state = state;
    if (state === 'ready') stats.connectionsReady++;
    else if (state === 'down') stats.connectionsDown++;
  }
}
