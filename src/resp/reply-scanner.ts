/**
 * Backend bytes -> boundaries of complete reply frames, without decoding them. Replies that pass
 * through unchanged are handed on as views of the chunk fed; a frame that straddles chunks is
 * scanned incrementally and joined once, when complete (linear in its size). The scanner keeps
 * copies of the pieces it holds across chunks, so a chunk may be a read buffer that the next
 * read reuses.
 */

const CR = 13;

/** Malformed bytes from a backend: the connection can no longer be framed and must close. */
export class ReplyFramingError extends Error {
  override get name(): string {
    return 'ReplyFramingError';
  }
}

export interface ReplyFrameSink {
  /**
   * One complete reply: `buf.subarray(start, end)`. `isJoined`: `buf` is the scanner's own join
   * of a frame that spanned chunks (the sink's to keep); otherwise it is the chunk fed, valid as
   * long as the chunk is.
   */
  onReplyFrame(buf: Buffer, start: number, end: number, isJoined: boolean): void;
}

/**
 * A frame that spans chunks: the values still to read (an aggregate adds its element count), and
 * the one value cut by a chunk's end: its header line so far, or the bytes of its bulk body still
 * to skip. Whole values are scanned by the fast scanner (scanValues) in every chunk; only the cut
 * value is read byte by byte, so each byte is read once and the frame is joined once, complete.
 */
class SpanningFrame {
  /** Copies of the frame's bytes in earlier chunks. */
  readonly parts: Buffer[] = [];
  /** Values still to read, the cut one included. */
  pending: number;
  /** A header line is cut: its bytes so far (type byte first). */
  isInLine = false;
  line: number[] = [];
  /** The cut header line's CR was seen; the next byte is its LF. */
  isAfterCr = false;
  /** Bytes of a cut bulk body (plus its CRLF) still to skip. */
  bulkRemaining = 0;

  constructor(pending: number) {
    this.pending = pending;
  }

  get isInValue(): boolean {
    return this.isInLine || this.bulkRemaining > 0;
  }
}

export class ReplyScanner {
  readonly #sink: ReplyFrameSink;
  /** A frame that started in an earlier chunk and is not complete yet. */
  #spanning: SpanningFrame | null = null;

  constructor(sink: ReplyFrameSink) {
    this.#sink = sink;
  }

  /** Throws ReplyFramingError on bytes that are not RESP. */
  feed(chunk: Buffer): void {
    let pos = 0;
    if (this.#spanning !== null) {
      pos = this.#continueSpanning(this.#spanning, chunk);
      if (pos < 0) return;
    }
    const len = chunk.length;
    while (pos < len) {
      const end = scanValues(chunk, pos, 1);
      if (end < 0) {
        const frame = new SpanningFrame(stoppedPending);
        this.#keepCut(frame, chunk, pos, stoppedAt);
        return;
      }
      this.#sink.onReplyFrame(chunk, pos, end, false);
      pos = end;
    }
  }

  /** Drops buffered bytes (the connection closed). */
  reset(): void {
    this.#spanning = null;
  }

  /**
   * Advances the spanning frame through `chunk`. Returns where the frame ended in the chunk
   * (after emitting it), or -1 when the chunk was used up first.
   */
  #continueSpanning(frame: SpanningFrame, chunk: Buffer): number {
    const p = this.#readCut(frame, chunk, 0);
    if (frame.isInValue) {
      frame.parts.push(Buffer.from(chunk));
      return -1;
    }
    if (frame.pending === 0) return this.#finishSpanning(frame, chunk, p);
    const end = scanValues(chunk, p, frame.pending);
    if (end >= 0) return this.#finishSpanning(frame, chunk, end);
    frame.pending = stoppedPending;
    this.#keepCut(frame, chunk, 0, stoppedAt);
    return -1;
  }

  /**
   * The frame's bytes in `chunk` run from `from` to the chunk's end, where the value starting at
   * `cutAt` is cut (or, at the very end, the next value has not begun): reads that value's start
   * and keeps the frame for the next chunk.
   */
  #keepCut(frame: SpanningFrame, chunk: Buffer, from: number, cutAt: number): void {
    if (cutAt < chunk.length) {
      frame.isInLine = true;
      this.#readCut(frame, chunk, cutAt);
      if (!frame.isInValue) throw new ReplyFramingError('scanner disagreement on a frame boundary');
    }
    frame.parts.push(Buffer.from(from === 0 ? chunk : chunk.subarray(from)));
    this.#spanning = frame;
  }

  /** Reads the cut value's bytes from `from` until it is complete or the chunk ends; returns where it stopped. */
  #readCut(frame: SpanningFrame, chunk: Buffer, from: number): number {
    const len = chunk.length;
    let p = from;
    while (p < len) {
      if (frame.bulkRemaining > 0) {
        const take = Math.min(frame.bulkRemaining, len - p);
        frame.bulkRemaining -= take;
        p += take;
        if (frame.bulkRemaining === 0) frame.pending--;
        continue;
      }
      if (!frame.isInLine) break;
      const c = chunk[p++]!;
      if (frame.isAfterCr) {
        // The byte after CR (its LF) ends the header line.
        frame.isAfterCr = false;
        frame.isInLine = false;
        this.#endOfLine(frame);
      } else if (c === CR) {
        frame.isAfterCr = true;
      } else {
        frame.line.push(c);
      }
    }
    return p;
  }

  /** Interprets a complete header line: counts the value done, or sets the bulk body to skip. */
  #endOfLine(frame: SpanningFrame): void {
    const line = frame.line;
    frame.line = [];
    const type = line[0];
    if (type === undefined) throw new ReplyFramingError('empty reply line');
    switch (type) {
      case 43: case 45: case 58: case 44: case 95: case 35: case 40:
        frame.pending--;
        return;
      case 36: case 33: case 61: {
        const n = lineLength(line);
        if (n < 0) frame.pending--;
        else frame.bulkRemaining = n + 2;
        return;
      }
      case 42: case 126: case 62: {
        const n = lineLength(line);
        frame.pending += (n > 0 ? n : 0) - 1;
        return;
      }
      case 37: {
        const n = lineLength(line);
        frame.pending += (n > 0 ? 2 * n : 0) - 1;
        return;
      }
      case 124: {
        const n = lineLength(line);
        frame.pending += n > 0 ? 2 * n : 0;
        return;
      }
      default:
        throw new ReplyFramingError(`unexpected reply type byte 0x${type.toString(16)}`);
    }
  }

  #finishSpanning(frame: SpanningFrame, chunk: Buffer, end: number): number {
    this.#spanning = null;
    frame.parts.push(chunk.subarray(0, end));
    const whole = Buffer.concat(frame.parts);
    this.#sink.onReplyFrame(whole, 0, whole.length, true);
    return end;
  }
}

/** The decimal after a header line's type byte; -1 for RESP's null lengths. */
function lineLength(line: readonly number[]): number {
  if (line[1] === 45) return -1;
  if (line.length < 2) throw new ReplyFramingError('empty length');
  let n = 0;
  for (let i = 1; i < line.length; i++) {
    const c = line[i]!;
    if (c < 48 || c > 57) throw new ReplyFramingError('bad length');
    n = n * 10 + (c - 48);
  }
  return n;
}

/** Where scanValues stopped when the buffer ended first: the start of the first value not complete. */
let stoppedAt = 0;
/** The values still to read at stoppedAt, that one included. */
let stoppedPending = 0;

/**
 * Reads `pending` values from `start` (an aggregate's header adds its elements); returns where the
 * last one ends, or -1 when the buffer ends first (then stoppedAt and stoppedPending say where).
 * A bulk string, the most common value by far, has its length read in the same pass that finds
 * its header's end.
 */
function scanValues(buf: Buffer, start: number, pending: number): number {
  const len = buf.length;
  let p = start;
  while (pending > 0) {
    if (p >= len) break;
    const type = buf[p]!;
    if (type === 36) {
      // $ bulk string
      let q = p + 1;
      let n = 0;
      let c = q < len ? buf[q]! : CR;
      if (c === 45) {
        // $-1: null
        while (q < len && buf[q] !== CR) q++;
        if (q + 1 >= len) break;
        p = q + 2;
        pending--;
        continue;
      }
      while (c !== CR) {
        if (c < 48 || c > 57) throw new ReplyFramingError('bad length');
        n = n * 10 + (c - 48);
        if (++q >= len) break;
        c = buf[q]!;
      }
      if (q + 1 >= len) break;
      if (q === p + 1) throw new ReplyFramingError('empty length');
      const end = q + 4 + n;
      if (end > len) break;
      p = end;
      pending--;
      continue;
    }
    let cr = p + 1;
    while (cr < len && buf[cr] !== CR) cr++;
    if (cr + 1 >= len) break;
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
      case 33: // ! blob error (RESP3)
      case 61: {
        // = verbatim string (RESP3)
        const n = readLength(buf, p + 1, cr);
        if (n < 0) {
          p = next;
        } else {
          const end = next + n + 2;
          if (end > len) {
            stoppedAt = p;
            stoppedPending = pending;
            return -1;
          }
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
  if (pending > 0) {
    stoppedAt = p;
    stoppedPending = pending;
    return -1;
  }
  return p;
}

/** Parses the decimal between `from` and `to`; -1 for RESP's null lengths. */
export function readLength(buf: Buffer, from: number, to: number): number {
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
