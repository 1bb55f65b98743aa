/**
 * Backend bytes -> boundaries of complete reply frames, without decoding them. Replies that pass
 * through unchanged are forwarded as views of the chunks Node hands us; a frame is joined (one
 * copy) only when it straddles chunks, and not before the bytes it is known to need are in.
 */

const CR = 13;
/** The shortest RESP value (`+\r\n`); bounds what an unfinished aggregate still needs. */
const MIN_VALUE_BYTES = 3;
const INCOMPLETE = -1;

/** Malformed bytes from a backend: the connection can no longer be framed and must close. */
export class ReplyFramingError extends Error {
  override get name(): string {
    return 'ReplyFramingError';
  }
}

export interface ReplyFrameSink {
  /** One complete reply: `buf.subarray(start, end)`; the view stays valid (chunks are not reused). */
  onReplyFrame(buf: Buffer, start: number, end: number): void;
}

export class ReplyScanner {
  readonly #sink: ReplyFrameSink;
  #buf: Buffer = Buffer.alloc(0);
  #pos = 0;
  #extra: Buffer[] = [];
  #extraLength = 0;
  /** Bytes (from #pos) that the unfinished frame needs at least. */
  #needed = 0;

  constructor(sink: ReplyFrameSink) {
    this.#sink = sink;
  }

  /** Throws ReplyFramingError on bytes that are not RESP. */
  feed(chunk: Buffer): void {
    if (this.#pos === this.#buf.length && this.#extraLength === 0) {
      this.#buf = chunk;
      this.#pos = 0;
    } else {
      this.#extra.push(chunk);
      this.#extraLength += chunk.length;
      if (this.#buf.length - this.#pos + this.#extraLength < this.#needed) return;
    }
    for (;;) {
      if (this.#extraLength > 0) {
        if (this.#buf.length - this.#pos + this.#extraLength < this.#needed) return;
        const parts = this.#pos < this.#buf.length ? [this.#buf.subarray(this.#pos), ...this.#extra] : this.#extra;
        this.#buf = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
        this.#pos = 0;
        this.#extra = [];
        this.#extraLength = 0;
      }
      const buf = this.#buf;
      while (this.#pos < buf.length) {
        const start = this.#pos;
        const end = this.#scan(buf, start);
        if (end === INCOMPLETE) break;
        this.#pos = end;
        this.#needed = 0;
        this.#sink.onReplyFrame(buf, start, end);
      }
      if (this.#extraLength === 0) return;
    }
  }

  /** Drops buffered bytes (the connection closed). */
  reset(): void {
    this.#buf = Buffer.alloc(0);
    this.#pos = 0;
    this.#extra = [];
    this.#extraLength = 0;
    this.#needed = 0;
  }

  #scan(buf: Buffer, start: number): number {
    const len = buf.length;
    let p = start;
    /** Values still to be read before the frame is complete. */
    let pending = 1;
    while (pending > 0) {
      if (p >= len) return this.#incomplete(p - start + pending * MIN_VALUE_BYTES);
      const type = buf[p]!;
      let cr = p + 1;
      while (cr < len && buf[cr] !== CR) cr++;
      if (cr + 1 >= len) return this.#incomplete(len - start + 1);
      const next = cr + 2;
      switch (type) {
        case 43: // + simple string
        case 45: // - error
        case 58: // : integer
        case 44: // , double (RESP3)
        case 95: // _ null (RESP3)
        case 35: // # boolean (RESP3)
        case 40: // ( big number (RESP3)
          p = next;
          pending--;
          break;
        case 36: // $ bulk string
        case 33: // ! blob error (RESP3)
        case 61: {
          // = verbatim string (RESP3)
          const n = readLength(buf, p + 1, cr);
          if (n < 0) {
            p = next;
          } else {
            const end = next + n + 2;
            if (end > len) return this.#incomplete(end - start + (pending - 1) * MIN_VALUE_BYTES);
            p = end;
          }
          pending--;
          break;
        }
        case 42: // * array
        case 126: // ~ set (RESP3)
        case 62: {
          // > push (RESP3)
          const n = readLength(buf, p + 1, cr);
          p = next;
          pending += (n > 0 ? n : 0) - 1;
          break;
        }
        case 37: {
          // % map (RESP3)
          const n = readLength(buf, p + 1, cr);
          p = next;
          pending += (n > 0 ? 2 * n : 0) - 1;
          break;
        }
        case 124: {
          // | attribute (RESP3): a map that precedes the value it describes
          const n = readLength(buf, p + 1, cr);
          p = next;
          pending += n > 0 ? 2 * n : 0;
          break;
        }
        default:
          throw new ReplyFramingError(`unexpected reply type byte 0x${type.toString(16)}`);
      }
    }
    return p;
  }

  #incomplete(needed: number): number {
    this.#needed = needed;
    return INCOMPLETE;
  }
}

/** Parses the decimal between `from` and `to`; -1 for RESP's null lengths. */
function readLength(buf: Buffer, from: number, to: number): number {
  let p = from;
  if (buf[p] === 45) return -1;
  let n = 0;
  if (p === to) throw new ReplyFramingError('empty length');
  for (; p < to; p++) {
    const c = buf[p]!;
    if (c < 48 || c > 57) throw new ReplyFramingError('bad length');
    n = n * 10 + (c - 48);
  }
  return n;
}
