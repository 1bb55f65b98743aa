import { ProtocolError } from './protocol-error';
import { encodeCommand } from './resp-writer';

/** Longest inline command or multibulk/bulk header line redis-server accepts (PROTO_INLINE_MAX_SIZE). */
const MAX_LINE = 64 * 1024;
/** redis-server's proto-max-bulk-len default. */
const MAX_BULK = 512 * 1024 * 1024;
const MAX_MULTIBULK = 1024 * 1024 * 1024;

const ASTERISK = 42;
const DOLLAR = 36;
const CR = 13;
const LF = 10;

/**
 * One parsed request, described by offsets into `buf`. The parser reuses this object for every
 * frame: it is valid only during `RequestSink.onRequest`, which takes the views it needs.
 */
export class RequestFrame {
  /** The bytes holding the frame; arguments are ranges of it. */
  buf: Buffer = Buffer.alloc(0);
  /** First byte of the frame in `buf`. */
  start = 0;
  /** One past the last byte of the frame in `buf`. */
  end = 0;
  /** Number of arguments, the command name included. */
  argc = 0;
  /** argStart[i]..argEnd[i] is argument i in `buf`. */
  argStart = new Int32Array(16);
  argEnd = new Int32Array(16);

  /** The frame's bytes as a view (no copy). */
  bytes(): Buffer {
    return this.buf.subarray(this.start, this.end);
  }

  arg(i: number): Buffer {
    return this.buf.subarray(this.argStart[i]!, this.argEnd[i]!);
  }

  argString(i: number): string {
    return this.buf.toString('utf8', this.argStart[i]!, this.argEnd[i]!);
  }

  argLength(i: number): number {
    return this.argEnd[i]! - this.argStart[i]!;
  }

  /** Case-insensitive comparison of argument i with a lowercase ASCII word, without a copy. */
  argIs(i: number, lowercase: string): boolean {
    const s = this.argStart[i]!;
    if (this.argEnd[i]! - s !== lowercase.length) return false;
    for (let k = 0; k < lowercase.length; k++) {
      if ((this.buf[s + k]! | 0x20) !== lowercase.charCodeAt(k)) return false;
    }
    return true;
  }

  /** All arguments as copies; for rare paths only (inline re-encoding, local commands). */
  args(): Buffer[] {
    const out: Buffer[] = [];
    for (let i = 0; i < this.argc; i++) out.push(Buffer.from(this.arg(i)));
    return out;
  }

  ensureCapacity(argc: number): void {
    if (argc <= this.argStart.length) return;
    let size = this.argStart.length;
    while (size < argc) size *= 2;
    this.argStart = new Int32Array(size);
    this.argEnd = new Int32Array(size);
  }
}

/** The parser's consumer; the frame is only valid during the call. */
export interface RequestSink {
  onRequest(frame: RequestFrame): void;
}

/** `parseAt` result meaning "need more bytes"; the byte count needed is in #needed. */
const INCOMPLETE = -1;

/**
 * Client bytes -> request frames, as views into the chunks Node hands us. A frame is copied
 * only when it straddles chunks, and then once: the parser waits until the bytes it knows it
 * needs (from bulk lengths) have arrived before joining, so a 100 MB value costs one copy,
 * not one per chunk.
 */
export class RequestParser {
  readonly #sink: RequestSink;
  readonly #frame = new RequestFrame();
  /** Buffer being parsed; bytes before #pos are consumed. */
  #buf: Buffer = Buffer.alloc(0);
  #pos = 0;
  /** Chunks that arrived after #buf, not yet joined to it. */
  #extra: Buffer[] = [];
  #extraLength = 0;
  /** Bytes (from #pos) a parse attempt needs before it can succeed. */
  #needed = 0;
  #isPaused = false;
  #isFailed = false;

  constructor(sink: RequestSink) {
    this.#sink = sink;
  }

  /** Bytes received and not yet parsed into frames. */
  get bufferedLength(): number {
    return this.#buf.length - this.#pos + this.#extraLength;
  }

  /** Throws ProtocolError on malformed input; the caller answers it and closes. */
  feed(chunk: Buffer): void {
    if (this.#isFailed) return;
    if (this.#pos === this.#buf.length && this.#extraLength === 0) {
      this.#buf = chunk;
      this.#pos = 0;
    } else {
      this.#extra.push(chunk);
      this.#extraLength += chunk.length;
    }
    if (!this.#isPaused) this.#drain();
  }

  /** Stops emitting frames (back-pressure); bytes keep being buffered until resume(). */
  pause(): void {
    this.#isPaused = true;
  }

  resume(): void {
    if (!this.#isPaused) return;
    this.#isPaused = false;
    if (!this.#isFailed) this.#drain();
  }

  get isPaused(): boolean {
    return this.#isPaused;
  }

  #drain(): void {
    try {
      for (;;) {
        const available = this.#buf.length - this.#pos + this.#extraLength;
        if (available === 0) return;
        if (this.#extraLength > 0) {
          if (available < this.#needed) return;
          this.#join();
        }
        const end = this.#parseAt(this.#buf, this.#pos);
        if (end === INCOMPLETE) {
          if (this.#extraLength === 0) return;
          continue;
        }
        this.#pos = end;
        this.#needed = 0;
        if (this.#frame.argc > 0) this.#sink.onRequest(this.#frame);
        if (this.#isPaused) return;
      }
    } catch (err) {
      this.#isFailed = true;
      throw err;
    }
  }

  /** Joins the unparsed tail of #buf with the extra chunks: the only copy the parser makes. */
  #join(): void {
    const parts = this.#pos < this.#buf.length ? [this.#buf.subarray(this.#pos), ...this.#extra] : this.#extra;
    this.#buf = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
    this.#pos = 0;
    this.#extra = [];
    this.#extraLength = 0;
  }

  /** Parses one frame at `pos`; returns its end, or INCOMPLETE with #needed set. */
  #parseAt(buf: Buffer, pos: number): number {
    return buf[pos] === ASTERISK ? this.#parseMultibulk(buf, pos) : this.#parseInline(buf, pos);
  }

  #parseMultibulk(buf: Buffer, start: number): number {
    const len = buf.length;
    const frame = this.#frame;
    let p = start + 1;
    // Multibulk count.
    let count = 0;
    let negative = false;
    if (p < len && buf[p] === 45) {
      negative = true;
      p++;
    }
    let digits = 0;
    for (;;) {
      if (p >= len) return this.#incompleteLine(buf, start, 'too big mbulk count string');
      const c = buf[p]!;
      if (c === CR) break;
      if (c < 48 || c > 57 || digits > 10) throw new ProtocolError('invalid multibulk length');
      count = count * 10 + (c - 48);
      digits++;
      p++;
    }
    if (p + 1 >= len) return this.#incomplete(p + 2 - start);
    if (buf[p + 1] !== LF || (digits === 0 && !negative)) throw new ProtocolError('invalid multibulk length');
    p += 2;
    if (negative || count === 0) {
      // redis-server skips empty and null multibulks silently.
      frame.argc = 0;
      return p;
    }
    if (count > MAX_MULTIBULK) throw new ProtocolError('invalid multibulk length');
    frame.ensureCapacity(count);
    const argStart = frame.argStart;
    const argEnd = frame.argEnd;
    for (let i = 0; i < count; i++) {
      if (p >= len) return this.#incomplete(p + 1 - start);
      if (buf[p] !== DOLLAR) {
        throw new ProtocolError(`expected '$', got '${String.fromCharCode(buf[p]!)}'`);
      }
      const lineStart = p;
      p++;
      let bulk = 0;
      digits = 0;
      for (;;) {
        if (p >= len) {
          if (p - lineStart > MAX_LINE) throw new ProtocolError('too big bulk count string');
          return this.#incomplete(p + 1 - start);
        }
        const c = buf[p]!;
        if (c === CR) break;
        if (c < 48 || c > 57 || digits > 10) throw new ProtocolError('invalid bulk length');
        bulk = bulk * 10 + (c - 48);
        digits++;
        p++;
      }
      if (digits === 0 || bulk > MAX_BULK) throw new ProtocolError('invalid bulk length');
      const dataStart = p + 2;
      const dataEnd = dataStart + bulk;
      // The bulk's trailing CRLF is skipped unchecked, exactly as redis-server does.
      if (dataEnd + 2 > len) return this.#incomplete(dataEnd + 2 - start);
      argStart[i] = dataStart;
      argEnd[i] = dataEnd;
      p = dataEnd + 2;
    }
    frame.buf = buf;
    frame.start = start;
    frame.end = p;
    frame.argc = count;
    return p;
  }

  #parseInline(buf: Buffer, start: number): number {
    const newline = buf.indexOf(LF, start);
    if (newline === -1) {
      if (buf.length - start > MAX_LINE) throw new ProtocolError('too big inline request');
      return this.#incomplete(buf.length - start + 1);
    }
    const lineEnd = newline > start && buf[newline - 1] === CR ? newline - 1 : newline;
    const args = splitInlineArgs(buf.subarray(start, lineEnd));
    if (args === null) throw new ProtocolError('unbalanced quotes in request');
    if (args.length === 0) {
      this.#frame.argc = 0;
      return newline + 1;
    }
    // Inline commands are rare (telnet, nc): re-encode as multibulk so backends get RESP.
    const encoded = encodeCommand(args);
    const saved = this.#needed;
    this.#parseMultibulk(encoded, 0);
    this.#needed = saved;
    return newline + 1;
  }

  #incompleteLine(buf: Buffer, start: number, tooBig: string): number {
    if (buf.length - start > MAX_LINE) throw new ProtocolError(tooBig);
    return this.#incomplete(buf.length - start + 1);
  }

  #incomplete(needed: number): number {
    this.#needed = needed;
    return INCOMPLETE;
  }
}

function isHexDigit(c: number): boolean {
  return (c >= 48 && c <= 57) || (c >= 97 && c <= 102) || (c >= 65 && c <= 70);
}

/**
 * redis-server's sdssplitargs: whitespace-separated words, "double quotes" with \n \r \t \b \a
 * \\ \" \xHH escapes, 'single quotes' with \'. Returns null on unbalanced quotes.
 */
export function splitInlineArgs(line: Buffer): Buffer[] | null {
  const args: Buffer[] = [];
  const len = line.length;
  let p = 0;
  for (;;) {
    while (p < len && (line[p] === 32 || line[p] === 9 || line[p] === 10 || line[p] === 13 || line[p] === 11 || line[p] === 12)) p++;
    if (p >= len) return args;
    const bytes: number[] = [];
    let inDouble = false;
    let inSingle = false;
    let done = false;
    while (!done) {
      const c = p < len ? line[p]! : -1;
      if (inDouble) {
        if (c === -1) return null;
        if (c === 92 && p + 3 < len && line[p + 1] === 120 && isHexDigit(line[p + 2]!) && isHexDigit(line[p + 3]!)) {
          bytes.push(parseInt(String.fromCharCode(line[p + 2]!, line[p + 3]!), 16));
          p += 3;
        } else if (c === 92 && p + 1 < len) {
          p++;
          const e = line[p]!;
          bytes.push(e === 110 ? 10 : e === 114 ? 13 : e === 116 ? 9 : e === 98 ? 8 : e === 97 ? 7 : e);
        } else if (c === 34) {
          // A closing quote must be followed by a space or the end.
          if (p + 1 < len && !isSpace(line[p + 1]!)) return null;
          done = true;
        } else {
          bytes.push(c);
        }
      } else if (inSingle) {
        if (c === -1) return null;
        if (c === 92 && p + 1 < len && line[p + 1] === 39) {
          p++;
          bytes.push(39);
        } else if (c === 39) {
          if (p + 1 < len && !isSpace(line[p + 1]!)) return null;
          done = true;
        } else {
          bytes.push(c);
        }
      } else if (c === -1 || isSpace(c)) {
        done = true;
      } else if (c === 34) {
        inDouble = true;
      } else if (c === 39) {
        inSingle = true;
      } else {
        bytes.push(c);
      }
      if (p < len) p++;
    }
    args.push(Buffer.from(bytes));
  }
}

function isSpace(c: number): boolean {
  return c === 32 || c === 9 || c === 10 || c === 13 || c === 11 || c === 12;
}
