import { ProtocolError } from './protocol-error';
import { encodeCommand } from './resp-writer';

/** Longest inline command or multibulk/bulk header line redis-server accepts (PROTO_INLINE_MAX_SIZE). */
const MAX_LINE = 64 * 1024;
/** redis-server's proto-max-bulk-len default. */
const MAX_BULK = 512 * 1024 * 1024;
const MAX_MULTIBULK = 1024 * 1024 * 1024;
/** The shortest argument on the wire: `$0\r\n\r\n`. */
const MIN_ARGUMENT_BYTES = 6;

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
    // A read that holds exactly one request (every request at -P 1) needs no view of itself.
    const buf = this.buf;
    return this.start === 0 && this.end === buf.length ? buf : buf.subarray(this.start, this.end);
  }

  arg(i: number): Buffer {
    return this.buf.subarray(this.argStart[i]!, this.argEnd[i]!);
  }

  argString(i: number): string {
    return this.buf.toString('utf8', this.argStart[i]!, this.argEnd[i]!);
  }

  /** The arguments from `first` on, as strings. */
  argStrings(first: number): string[] {
    const args: string[] = [];
    for (let i = first; i < this.argc; i++) args.push(this.argString(i));
    return args;
  }

  argLength(i: number): number {
    return this.argEnd[i]! - this.argStart[i]!;
  }

  /** Case-insensitive comparison of argument i with a lowercase ASCII word, without a copy. */
  argIs(i: number, lowercase: string): boolean {
    const s = this.argStart[i]!;
    if (this.argEnd[i]! - s !== lowercase.length) return false;
    for (let k = 0; k < lowercase.length; k++) {
      const c = this.buf[s + k]!;
      // Only A-Z fold to lowercase; '_' | 0x20 would not be '_'.
      if ((c >= 65 && c <= 90 ? c | 0x20 : c) !== lowercase.charCodeAt(k)) return false;
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

/** `#parseAt` result meaning "the frame does not end in this buffer". */
const INCOMPLETE = -1;

/**
 * A request that started in an earlier chunk: parsed incrementally as chunks arrive, so each
 * byte is read once, and joined once, when complete. Argument positions are offsets from the
 * frame's first byte, which stay right after the join.
 */
class SpanningRequest {
  /** Slices of chunks holding the frame so far. */
  readonly parts: Buffer[] = [];
  /** Bytes in `parts`. */
  length = 0;
  readonly isInline: boolean;
  /** Arguments announced by the multibulk header; -1 until it is read. */
  count = -1;
  readonly argStart: number[] = [];
  readonly argEnd: number[] = [];
  /** Bytes of the current argument's body (plus its CRLF) still to come. */
  bulkRemaining = 0;
  /** The header line being read (`*N` or `$N`, type byte included). */
  line: number[] = [];
  /** Its CR was seen; the next byte (LF, unchecked like redis-server) ends it. */
  isAfterCr = false;

  constructor(isInline: boolean) {
    this.isInline = isInline;
  }
}

/**
 * Client bytes -> request frames, as views into the chunks Node hands us. A frame that
 * straddles chunks is parsed as the chunks come and joined once when complete (one copy, linear
 * in its size, whether it is one 100 MB value or 200,000 small arguments).
 */
export class RequestParser {
  readonly #sink: RequestSink;
  readonly #frame = new RequestFrame();
  /** The chunk being parsed; bytes before #pos are consumed. */
  #buf: Buffer = Buffer.alloc(0);
  #pos = 0;
  /** Chunks that arrived while paused, in order. */
  #queue: Buffer[] = [];
  /** Bytes in #queue. */
  #queuedLength = 0;
  #spanning: SpanningRequest | null = null;
  #isPaused = false;
  #isFailed = false;

  constructor(sink: RequestSink) {
    this.#sink = sink;
  }

  /** Bytes received and not yet parsed into frames. */
  get bufferedLength(): number {
    return this.#buf.length - this.#pos + this.#queuedLength + (this.#spanning?.length ?? 0);
  }

  /** Throws ProtocolError on malformed input; the caller answers it and closes. */
  feed(chunk: Buffer): void {
    if (this.#isFailed) return;
    this.#queue.push(chunk);
    this.#queuedLength += chunk.length;
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
        while (this.#pos >= this.#buf.length) {
          const next = this.#queue.shift();
          if (next === undefined) return;
          this.#queuedLength -= next.length;
          this.#buf = next;
          this.#pos = 0;
        }
        let end: number;
        if (this.#spanning !== null) {
          end = this.#continue(this.#spanning, this.#buf, this.#pos);
        } else {
          end = this.#parseAt(this.#buf, this.#pos);
          if (end === INCOMPLETE) {
            const spanning = new SpanningRequest(this.#buf[this.#pos] !== ASTERISK);
            end = this.#continue(spanning, this.#buf, this.#pos);
          }
        }
        if (end === INCOMPLETE) {
          this.#pos = this.#buf.length;
          continue;
        }
        this.#pos = end;
        if (this.#frame.argc > 0) this.#sink.onRequest(this.#frame);
        if (this.#isPaused) return;
      }
    } catch (err) {
      this.#isFailed = true;
      throw err;
    }
  }

  /** Parses one frame lying wholly in `buf` at `pos`; returns its end, or INCOMPLETE. */
  #parseAt(buf: Buffer, pos: number): number {
    return buf[pos] === ASTERISK ? this.#parseMultibulk(buf, pos) : this.#parseInline(buf, pos);
  }

  /**
   * Advances a spanning request through `chunk` from `from`; returns where the frame ended in
   * the chunk (with #frame filled), or INCOMPLETE when the chunk ran out first.
   */
  #continue(request: SpanningRequest, chunk: Buffer, from: number): number {
    this.#spanning = request;
    const len = chunk.length;
    if (request.isInline) {
      const newline = chunk.indexOf(LF, from);
      if (newline === -1) {
        this.#keep(request, chunk, from, len);
        if (request.length > MAX_LINE) throw new ProtocolError('too big inline request');
        return INCOMPLETE;
      }
      const whole = this.#join(request, chunk, from, newline + 1);
      this.#parseInline(whole, 0);
      return newline + 1;
    }
    let p = from;
    while (p < len) {
      if (request.bulkRemaining > 0) {
        const take = Math.min(request.bulkRemaining, len - p);
        request.bulkRemaining -= take;
        p += take;
        if (request.bulkRemaining === 0 && request.argStart.length === request.count) return this.#finish(request, chunk, from, p);
        continue;
      }
      const c = chunk[p]!;
      const offset = request.length + (p - from);
      p++;
      if (request.isAfterCr) {
        request.isAfterCr = false;
        const line = request.line;
        request.line = [];
        if (request.count < 0) {
          const count = decimalOf(line);
          if (count === null || count > MAX_MULTIBULK) throw new ProtocolError('invalid multibulk length');
          if (count <= 0) {
            // An empty or null multibulk: skipped, as redis-server does.
            this.#spanning = null;
            this.#frame.argc = 0;
            return p;
          }
          request.count = count;
        } else {
          const bulk = decimalOf(line);
          if (bulk === null || bulk < 0 || bulk > MAX_BULK) throw new ProtocolError('invalid bulk length');
          request.argStart.push(offset + 1);
          request.argEnd.push(offset + 1 + bulk);
          request.bulkRemaining = bulk + 2;
        }
      } else if (c === CR) {
        request.isAfterCr = true;
      } else {
        if (request.line.length === 0 && request.count >= 0 && c !== DOLLAR) {
          throw new ProtocolError(`expected '$', got '${String.fromCharCode(c)}'`);
        }
        request.line.push(c);
        if (request.line.length > MAX_LINE) {
          throw new ProtocolError(request.count < 0 ? 'too big mbulk count string' : 'too big bulk count string');
        }
      }
    }
    this.#keep(request, chunk, from, len);
    return INCOMPLETE;
  }

  #keep(request: SpanningRequest, chunk: Buffer, from: number, to: number): void {
    request.parts.push(chunk.subarray(from, to));
    request.length += to - from;
  }

  #join(request: SpanningRequest, chunk: Buffer, from: number, end: number): Buffer {
    this.#spanning = null;
    this.#keep(request, chunk, from, end);
    return request.parts.length === 1 ? request.parts[0]! : Buffer.concat(request.parts, request.length);
  }

  #finish(request: SpanningRequest, chunk: Buffer, from: number, end: number): number {
    const whole = this.#join(request, chunk, from, end);
    const frame = this.#frame;
    frame.ensureCapacity(request.count);
    for (let i = 0; i < request.count; i++) {
      frame.argStart[i] = request.argStart[i]!;
      frame.argEnd[i] = request.argEnd[i]!;
    }
    frame.buf = whole;
    frame.start = 0;
    frame.end = whole.length;
    frame.argc = request.count;
    return end;
  }

  #parseMultibulk(buf: Buffer, start: number): number {
    const len = buf.length;
    const frame = this.#frame;
    // Multibulk count: like redis-server, find the line end first, then judge the number.
    let cr = start + 1;
    while (cr < len && buf[cr] !== CR) cr++;
    if (cr + 1 >= len) return INCOMPLETE;
    const count = parseDecimal(buf, start + 1, cr);
    if (count === null || count > MAX_MULTIBULK) throw new ProtocolError('invalid multibulk length');
    // The byte after CR is skipped unchecked, as redis-server does.
    let p = cr + 2;
    if (count <= 0) {
      // redis-server skips empty and null multibulks silently.
      frame.argc = 0;
      return p;
    }
    // Each argument takes at least 6 bytes (`$0\r\n\r\n`). A count this chunk cannot hold is
    // parsed as a spanning request, whose offsets grow with the arguments that do arrive: sized
    // by the count a client declares, `*1000000000` reserved 8 GB of offsets for nothing
    // (redis-server likewise preallocates at most 1024 arguments).
    if (count * MIN_ARGUMENT_BYTES > len - p) return INCOMPLETE;
    frame.ensureCapacity(count);
    const argStart = frame.argStart;
    const argEnd = frame.argEnd;
    for (let i = 0; i < count; i++) {
      if (p >= len) return INCOMPLETE;
      if (buf[p] !== DOLLAR) {
        throw new ProtocolError(`expected '$', got '${String.fromCharCode(buf[p]!)}'`);
      }
      cr = p + 1;
      while (cr < len && buf[cr] !== CR) cr++;
      if (cr + 1 >= len) return INCOMPLETE;
      const bulk = parseDecimal(buf, p + 1, cr);
      if (bulk === null || bulk < 0 || bulk > MAX_BULK) throw new ProtocolError('invalid bulk length');
      const dataStart = cr + 2;
      const dataEnd = dataStart + bulk;
      // The bulk's trailing CRLF is skipped unchecked, exactly as redis-server does.
      if (dataEnd + 2 > len) return INCOMPLETE;
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
    if (newline === -1) return INCOMPLETE;
    const lineEnd = newline > start && buf[newline - 1] === CR ? newline - 1 : newline;
    const args = splitInlineArgs(buf.subarray(start, lineEnd));
    if (args === null) throw new ProtocolError('unbalanced quotes in request');
    if (args.length === 0) {
      this.#frame.argc = 0;
      return newline + 1;
    }
    // Inline commands are rare (telnet, nc): re-encode as multibulk so backends get RESP.
    this.#parseMultibulk(encodeCommand(args), 0);
    return newline + 1;
  }
}

/** parseDecimal over a header line held as bytes (type byte first). */
function decimalOf(line: readonly number[]): number | null {
  return parseDecimal(Buffer.from(line), 1, line.length);
}

/**
 * redis-server's string2ll: an optional minus, then "0" alone or digits without a leading zero,
 * at most 19 of them. Returns null when the text is not such a number.
 */
function parseDecimal(buf: Buffer, from: number, to: number): number | null {
  let p = from;
  const negative = p < to && buf[p] === 45;
  if (negative) p++;
  const digits = to - p;
  if (digits === 0 || digits > 19) return null;
  if (buf[p] === 48) return digits === 1 && !negative ? 0 : null;
  let n = 0;
  for (; p < to; p++) {
    const c = buf[p]!;
    if (c < 48 || c > 57) return null;
    n = n * 10 + (c - 48);
  }
  return negative ? -n : n;
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
      } else if (c === -1 || c === 32 || c === 10 || c === 13 || c === 9 || c === 0) {
        // Inside a bare word only these end it (sdssplitargs); \v and \f belong to the word.
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
