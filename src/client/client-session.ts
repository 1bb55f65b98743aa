import type { Socket } from 'node:net';
import type { ClientContext } from '../dispatch/client-context';
import type { Dispatcher } from '../dispatch/dispatcher';
import { scheduleFlush, type Flushable } from '../io/flush-scheduler';
import { OutputBuffer } from '../io/output-buffer';
import { OrderedReplies } from '../reply/ordered-replies';
import type { ReplySlot, SlotOwner } from '../reply/reply-slot';
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
  readonly connectedAt = Date.now();
  isFlushScheduled = false;

  readonly #socket: Socket;
  readonly #dispatcher: Dispatcher;
  readonly #limits: SessionLimits;
  readonly #parser: RequestParser;
  readonly #replies = new OrderedReplies();
  readonly #out = new OutputBuffer();
  readonly #onClose: (session: ClientSession) => void;
  #state: SessionState = 'open';

  constructor(id: number, socket: Socket, dispatcher: Dispatcher, limits: SessionLimits, onClose: (session: ClientSession) => void) {
    this.id = id;
    this.#socket = socket;
    this.#dispatcher = dispatcher;
    this.#limits = limits;
    this.#onClose = onClose;
    this.#parser = new RequestParser(this);
    this.remoteAddress = formatHostPort(socket.remoteAddress ?? '?', socket.remotePort ?? 0);
    this.localHost = socket.localAddress ?? '127.0.0.1';
    this.localPort = socket.localPort ?? 0;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('drain', () => this.#maybeResume());
    socket.on('error', () => this.#close());
    socket.on('close', () => this.#close());
  }

  get state(): SessionState {
    return this.#state;
  }

  onRequest(frame: RequestFrame): void {
    if (this.#state !== 'open') return;
    this.#dispatcher.dispatch(frame, this);
    if (this.#replies.length >= this.#limits.maxPendingReplies) this.#pause();
  }

  awaitReply(): ReplySlot {
    return this.#replies.add(this);
  }

  reply(bytes: Buffer): void {
    this.#replies.addDone(this, bytes);
    if (this.#replies.isHeadDone) scheduleFlush(this);
  }

  onSlotDone(): void {
    if (this.#replies.isHeadDone) scheduleFlush(this);
  }

  closeAfterReplies(): void {
    this.#state = 'closing';
    this.#parser.pause();
  }

  flush(): void {
    if (this.#state === 'closed') return;
    this.#replies.drainInto(this.#out);
    this.#out.writeTo(this.#socket);
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
    try {
      this.#parser.feed(chunk);
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      // As redis-server: one error reply, then the connection closes after it is written.
      this.reply(encodeError(`ERR Protocol error: ${err.message}`));
      this.closeAfterReplies();
    }
  }

  #pause(): void {
    if (this.#parser.isPaused) return;
    this.#parser.pause();
    this.#socket.pause();
  }

  #maybeResume(): void {
    if (this.#state !== 'open') return;
    if (this.#socket.writableLength > this.#limits.maxOutputBytes) {
      this.#pause();
      return;
    }
    if (!this.#parser.isPaused || this.#replies.length >= this.#limits.maxPendingReplies / 2) return;
    this.#socket.resume();
    this.#parser.resume();
  }

  #close(): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    // Replies still owed by shared backend connections are swallowed when they arrive.
    this.#replies.cancelAll();
    this.#out.clear();
    this.#socket.destroy();
    this.#onClose(this);
  }
}

function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
