import * as net from 'node:net';
import { ReplyScanner } from '../resp/reply-scanner';
import type { NodeAddress } from '../topology/topology';

/**
 * A lean pipelined RESP2 connection for the slot mover's hot loop (DUMP, RESTORE and release
 * scripts, SCAN): one Buffer written per command, replies decoded by a small parser into
 * Buffers, numbers and arrays, or handed over as the reply's own bytes for a caller that walks
 * them in place (sendForBytes). ioredis does the same work with several objects and promises per
 * argument; the mover shares the machine's cores with the proxy and the shards, so what it costs
 * per key is CPU the clients' commands wait for.
 *
 * Errors come back as RawReplyError (rejecting that command only); a closed socket rejects
 * every command in flight and the next send reconnects.
 */

export type RawReply = Buffer | number | null | RawReply[];

/** An error reply (`-ERR ...`). */
export class RawReplyError extends Error {
  override readonly name = 'RawReplyError';
}

interface Pending {
  resolve(reply: RawReply): void;
  reject(err: Error): void;
  /** Resolve with the reply's bytes, not parsed (sendForBytes). */
  readonly asBytes?: boolean;
}

export interface RawConnectionOptions {
  readonly address: NodeAddress;
  readonly password: string | null;
  /** A command without a reply for this long fails, and the connection closes. */
  readonly timeoutMs: number;
}

const CRLF = Buffer.from('\r\n');

export class RawConnection {
  readonly #options: RawConnectionOptions;
  #socket: net.Socket | null = null;
  #pending: Pending[] = [];
  /** Finds each reply's bytes, across reads (views of the chunks, which are never reused). */
  readonly #replies = new ReplyScanner({ onReplyFrame: (buf, start, end) => this.#onReply(buf, start, end) });
  #timer: NodeJS.Timeout | null = null;
  #lastReplyAt = 0;
  #isClosed = false;

  constructor(options: RawConnectionOptions) {
    this.#options = options;
  }

  /** Sends one command; resolves with its reply. */
  send(args: readonly (Buffer | string)[]): Promise<RawReply> {
    return this.#send(args, false);
  }

  /**
   * Sends one command; resolves with its reply's bytes as they came (a view, never written to),
   * for a reply the caller walks in place, such as SCAN's thousands of keys of which the mover
   * keeps a few: parsed, each would be two Buffers and a record. An error reply still rejects.
   */
  sendForBytes(args: readonly (Buffer | string)[]): Promise<Buffer> {
    return this.#send(args, true) as Promise<Buffer>;
  }

  #send(args: readonly (Buffer | string)[], asBytes: boolean): Promise<RawReply> {
    if (this.#isClosed) return Promise.reject(new Error('connection closed'));
    const socket = this.#connect();
    return new Promise((resolve, reject) => {
      this.#pending.push({ resolve, reject, asBytes });
      if (this.#pending.length === 1) this.#lastReplyAt = Date.now();
      socket.write(encode(args));
    });
  }

  close(): void {
    this.#isClosed = true;
    this.#socket?.destroy();
  }

  #connect(): net.Socket {
    if (this.#socket !== null) return this.#socket;
    const socket = net.connect({ host: this.#options.address.host, port: this.#options.address.port });
    socket.setNoDelay(true);
    this.#socket = socket;
    this.#replies.reset();
    if (this.#options.password !== null) {
      // Queued first: its reply comes first, and an error fails the commands behind it too.
      this.#pending.push({ resolve: () => undefined, reject: () => undefined });
      socket.write(encode(['AUTH', this.#options.password]));
    }
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => this.#onClose(socket));
    this.#timer = setInterval(() => {
      if (this.#pending.length > 0 && Date.now() - this.#lastReplyAt > this.#options.timeoutMs) socket.destroy(new Error('timed out'));
    }, Math.min(1_000, this.#options.timeoutMs));
    this.#timer.unref();
    return socket;
  }

  #onClose(socket: net.Socket): void {
    if (this.#socket !== socket) return;
    this.#socket = null;
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    const pending = this.#pending;
    this.#pending = [];
    const err = new Error(`connection to ${this.#options.address.host}:${this.#options.address.port} closed`);
    for (const p of pending) p.reject(err);
  }

  #onData(chunk: Buffer): void {
    try {
      this.#replies.feed(chunk);
    } catch (err) {
      // Not RESP: nothing after this can be matched to its command.
      this.#socket?.destroy(err as Error);
    }
  }

  #onReply(buf: Buffer, start: number, end: number): void {
    this.#lastReplyAt = Date.now();
    const pending = this.#pending.shift();
    if (pending === undefined) {
      this.#socket?.destroy();
      return;
    }
    if (pending.asBytes === true) {
      // An error reply is decoded as send()'s are, by parse.
      if (buf[start] === 45) pending.reject(parse(buf, start)!.value as RawReplyError);
      else pending.resolve(buf.subarray(start, end));
      return;
    }
    let value: RawReply | RawReplyError;
    try {
      // Never null: the scanner hands over whole replies only.
      value = parse(buf, start)!.value;
    } catch (err) {
      // A reply type this parser does not know (RESP3): the command fails, the rest go on.
      pending.reject(err as Error);
      return;
    }
    if (value instanceof RawReplyError) pending.reject(value);
    else pending.resolve(value);
  }
}

function encode(args: readonly (Buffer | string)[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const arg of args) {
    const body = typeof arg === 'string' ? Buffer.from(arg) : arg;
    parts.push(Buffer.from(`$${body.length}\r\n`), body, CRLF);
  }
  return Buffer.concat(parts);
}

interface Parsed {
  readonly value: RawReply | RawReplyError;
  readonly end: number;
}

/** One reply starting at `offset`, or null when `buf` does not hold all of it yet. */
function parse(buf: Buffer, offset: number): Parsed | null {
  if (offset >= buf.length) return null;
  const lineEnd = buf.indexOf(13, offset);
  if (lineEnd < 0 || lineEnd + 1 >= buf.length) return null;
  const type = buf[offset];
  const after = lineEnd + 2;
  switch (type) {
    case 43: // +
      return { value: Buffer.from(buf.subarray(offset + 1, lineEnd)), end: after };
    case 45: // -
      return { value: new RawReplyError(buf.toString('utf8', offset + 1, lineEnd)), end: after };
    case 58: // :
      return { value: Number(buf.toString('latin1', offset + 1, lineEnd)), end: after };
    case 36: {
      // $
      const length = Number(buf.toString('latin1', offset + 1, lineEnd));
      if (length < 0) return { value: null, end: after };
      if (buf.length < after + length + 2) return null;
      // A copy: the value outlives the chunk it arrived in (it is sent on to another shard).
      return { value: Buffer.from(buf.subarray(after, after + length)), end: after + length + 2 };
    }
    case 42: {
      // *
      const length = Number(buf.toString('latin1', offset + 1, lineEnd));
      if (length < 0) return { value: null, end: after };
      const items: RawReply[] = [];
      let next = after;
      let error: RawReplyError | null = null;
      for (let i = 0; i < length; i++) {
        const item = parse(buf, next);
        if (item === null) return null;
        if (item.value instanceof RawReplyError) error ??= item.value;
        else items.push(item.value);
        next = item.end;
      }
      return { value: error ?? items, end: next };
    }
    default:
      throw new Error(`not a RESP2 reply: byte ${type}`);
  }
}
