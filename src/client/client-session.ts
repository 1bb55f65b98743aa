import type { Socket } from 'node:net';
import type { CommandSpec, Handling } from '../commands/handling';
import type { ClientContext } from '../dispatch/client-context';
import type { ClientPins } from '../dispatch/client-pins';
import type { Dispatcher } from '../dispatch/dispatcher';
import { scheduleFlush, scheduleFlushNextTurn, type Flushable } from '../io/flush-scheduler';
import { copyOfRange } from '../io/byte-copy';
import { OutputBuffer } from '../io/output-buffer';
import { SocketWriter } from '../io/socket-writer';
import { startReading } from './socket-reads';
import { tick, turnTime } from '../io/turn-clock';
import { CLASS_INDEX, type DataPathStats } from '../metrics/data-path-stats';
import { OrderedReplies } from '../reply/ordered-replies';
import { PASSED_ON, type ReplySlot, type SlotOwner } from '../reply/reply-slot';
import { log } from '../log/logger';
import { ProtocolError } from '../resp/protocol-error';
import { RequestParser, type RequestFrame, type RequestSink } from '../resp/request-parser';
import { encodeError } from '../resp/resp-writer';

export interface SessionLimits {
  /** Replies a client may await at once before the proxy stops reading its requests. */
  readonly maxPendingReplies: number;
  /** Unsent reply bytes above which the proxy stops reading the client's requests. */
  readonly maxOutputBytes: number;
}

export const DEFAULT_SESSION_LIMITS: SessionLimits = {
  maxPendingReplies: 256,
  maxOutputBytes: 8 * 1024 * 1024,
};

export type SessionState = 'open' | 'closing' | 'closed';

/** Bytes a paused client may have waiting in the parser before its socket stops reading. */
const READ_AHEAD_BYTES = 64 * 1024;
/**
 * The same while it waits for a reply that may take for ever (BLPOP ... 0, WAIT): a socket that
 * does not read never sees its client leave, and the blocked command would hold its backend
 * connection (and pop for nobody) after the client had gone. Redis reads a blocked client's
 * socket on (up to its 1 GB query buffer limit); this reads on up to 16 MiB.
 */
const HELD_READ_AHEAD_BYTES = 16 * 1024 * 1024;

/** Latency-histogram class of each handling kind (the classes are the kinds, plus 'error'). */
const CLASS_OF: Readonly<Record<Handling, number>> = CLASS_INDEX;

/**
 * One client: bytes -> parse -> dispatch -> ordered replies -> socket. Reading stops (the
 * parser pauses) while the client has too many replies pending or too many unsent bytes, so a
 * client that pipelines without reading holds bounded memory.
 */
export class ClientSession implements ClientContext, RequestSink, SlotOwner, Flushable {
  readonly id: number;
  name = '';
  libName = '';
  libVersion = '';
  readonly remoteAddress: string;
  readonly localHost: string;
  readonly localPort: number;
  readonly localAddress: string;
  readonly connectedAt = Date.now();
  lastActiveAt = performance.now() / 1000;
  lastCommandId = -1;
  isFlushScheduled = false;
  isFlushDeferred = false;
  readonly flushesFirst = false;
  pins: ClientPins | null = null;
  /** Reading is held until every awaited reply is written. */
  #isHeld = false;
  /** A send waiting for its slot to reach the head of the FIFO (sendWhenFirst). */
  #deferred: { readonly slot: ReplySlot; readonly send: () => void } | null = null;

  readonly #socket: Socket;
  readonly #dispatcher: Dispatcher;
  readonly #limits: SessionLimits;
  readonly #parser: RequestParser;
  readonly #replies = new OrderedReplies();
  readonly #out = new OutputBuffer();
  readonly #writer: SocketWriter;
  readonly #onClose: (session: ClientSession) => void;
  readonly #stats: DataPathStats;
  #state: SessionState = 'open';
  /** Requests parsed from the current socket read (pipeline depth). */
  #requestsThisRead = 0;
  /** Replies awaited from shards and not yet in (the reply FIFO also holds done ones). */
  #awaiting = 0;

  constructor(
    id: number,
    socket: Socket,
    dispatcher: Dispatcher,
    limits: SessionLimits,
    stats: DataPathStats,
    onClose: (session: ClientSession) => void,
  ) {
    this.id = id;
    this.#stats = stats;
    this.#socket = socket;
    this.#dispatcher = dispatcher;
    this.#limits = limits;
    this.#onClose = onClose;
    this.#parser = new RequestParser(this);
    this.remoteAddress = formatHostPort(socket.remoteAddress ?? '?', socket.remotePort ?? 0);
    this.localHost = socket.localAddress ?? '127.0.0.1';
    this.localPort = socket.localPort ?? 0;
    this.localAddress = formatHostPort(this.localHost, this.localPort);
    socket.setNoDelay(true);
    this.#writer = new SocketWriter(socket, () => this.#maybeResume());
    socket.on('error', () => this.#close());
    socket.on('close', () => this.#close());
    startReading(socket, (chunk) => this.#onData(chunk));
  }

  get state(): SessionState {
    return this.#state;
  }

  onRequest(frame: RequestFrame): void {
    if (this.#state !== 'open') return;
    this.#requestsThisRead++;
    try {
      this.#dispatcher.dispatch(frame, this);
    } catch (err) {
      // A bug must cost this client its connection, not every client the proxy.
      log.error('dispatch failed', { client: this.id, command: frame.argString(0).slice(0, 32), error: String((err as Error).stack ?? err) });
      this.reply(encodeError('ERR slotproxy internal error; the connection is closed'), null);
      this.closeAfterReplies();
      return;
    }
    if (this.#replies.length >= this.#limits.maxPendingReplies) this.#pause();
  }

  awaitReply(spec: CommandSpec): ReplySlot {
    this.#awaiting++;
    return this.#replies.add(this, spec.id, CLASS_OF[spec.handling], turnTime());
  }

  reply(bytes: Buffer, spec: CommandSpec | null): void {
    if (spec === null) this.#replies.addDone(this, bytes, this.#stats.commands.unknownId, CLASS_INDEX.error, turnTime());
    else this.#replies.addDone(this, bytes, spec.id, CLASS_OF[spec.handling], turnTime());
    this.#scheduleFlush();
  }

  push(bytes: Buffer): void {
    this.#replies.addDone(this, bytes, this.#stats.commands.pushId, CLASS_INDEX.pubsub, turnTime());
    this.#scheduleFlush();
  }

  holdUntilReplied(): void {
    this.#isHeld = true;
    this.#pause();
    // Stopped at READ_AHEAD_BYTES before it was held: reads on, up to HELD_READ_AHEAD_BYTES.
    if (this.#socket.isPaused() && this.#parser.bufferedLength < HELD_READ_AHEAD_BYTES && this.#state === 'open') this.#socket.resume();
  }

  sendWhenFirst(slot: ReplySlot, send: () => void): void {
    if (this.#replies.head === slot) {
      send();
      return;
    }
    this.#deferred = { slot, send };
  }

  onSlotDone(): void {
    this.#awaiting--;
    this.#scheduleFlush();
  }

  onSlotReplyPassing(slot: ReplySlot, buf: Buffer, start: number, end: number): void {
    if (this.#replies.head === slot) {
      // Every reply before it has gone to the output: it follows them now, copied in.
      this.#replies.takeHead(buf[start] === 45, this.#stats.commands, turnTime());
      this.#out.append(buf, start, end);
      slot.reply = PASSED_ON;
    } else {
      slot.reply = copyOfRange(buf, start, end);
    }
    this.onSlotDone();
  }

  /**
   * Replies go out in the turn's flush once every reply the client awaits is in. While some
   * are still with other shards, the done ones wait one more turn (at most), which is mostly
   * enough for the rest: a pipeline spread over 3 shards then mostly goes back in one write,
   * not in one per shard's answer, and its reader wakes once (GET -P 16 over 3 shards: 1.20
   * client writes per 16-request batch, 1.43 when every done prefix went out at once).
   */
  #scheduleFlush(): void {
    if (!this.#replies.isHeadDone && this.#out.length === 0) return;
    if (this.#awaiting === 0) scheduleFlush(this);
    else scheduleFlushNextTurn(this);
  }

  closeAfterReplies(): void {
    this.#state = 'closing';
    this.#parser.pause();
  }

  flush(): void {
    if (this.#state === 'closed') return;
    this.#replies.drainInto(this.#out, this.#stats.commands, tick());
    this.#stats.clients.bytesOut += this.#out.length;
    this.#out.writeTo(this.#writer);
    const deferred = this.#deferred;
    if (deferred !== null && this.#replies.head === deferred.slot) {
      this.#deferred = null;
      deferred.send();
    }
    if (this.#state === 'closing' && this.#replies.length === 0) {
      this.#socket.end();
      return;
    }
    this.#maybeResume();
  }

  /** Closes the connection now (proxy shutdown). */
  destroy(): void {
    this.#socket.destroy();
  }

  #onData(chunk: Buffer): void {
    this.lastActiveAt = tick();
    this.#stats.clients.bytesIn += chunk.length;
    this.#requestsThisRead = 0;
    this.#parse(chunk);
    if (this.#requestsThisRead > 0) this.#stats.clients.recordPipelineDepth(this.#requestsThisRead);
    this.#stopReadingWhenFull();
  }

  /** Feeds a chunk (or, with null, resumes a paused parser); a protocol error ends the client. */
  #parse(chunk: Buffer | null): void {
    try {
      if (chunk === null) this.#parser.resume();
      else this.#parser.feed(chunk);
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      // As redis-server: one error reply, then the connection closes after it is written.
      this.reply(encodeError(`ERR Protocol error: ${err.message}`), null);
      this.closeAfterReplies();
    }
  }

  /**
   * Stops taking requests. The socket itself stops reading once READ_AHEAD_BYTES wait in the
   * parser, not at once: a client that goes away meanwhile (one blocked in BLPOP, say) must
   * still be seen leaving (Node's readable stream read ahead the same way for 'data' sockets).
   */
  #pause(): void {
    if (this.#parser.isPaused) return;
    this.#parser.pause();
    this.#stopReadingWhenFull();
  }

  #stopReadingWhenFull(): void {
    if (this.#parser.isPaused && this.#parser.bufferedLength >= (this.#isHeld ? HELD_READ_AHEAD_BYTES : READ_AHEAD_BYTES)) this.#socket.pause();
  }

  #maybeResume(): void {
    if (this.#state !== 'open') return;
    if (this.#isHeld) {
      if (this.#replies.length > 0) return;
      this.#isHeld = false;
    }
    if (this.#writer.pendingBytes > this.#limits.maxOutputBytes) {
      this.#pause();
      return;
    }
    if (!this.#parser.isPaused || this.#replies.length >= this.#limits.maxPendingReplies / 2) return;
    this.#socket.resume();
    this.#parse(null);
  }

  #close(): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    // Replies still owed by shared backend connections are swallowed when they arrive.
    this.#replies.cancelAll();
    this.#out.clear();
    this.#socket.destroy();
    this.#stats.clients.connected--;
    this.#dispatcher.release(this);
    this.#onClose(this);
  }
}

function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
