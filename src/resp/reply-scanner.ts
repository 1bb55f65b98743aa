/**
 * Backend bytes -> boundaries of complete reply frames, without decoding them. Replies that pass
 * through unchanged are forwarded as views of the chunks Node hands us; a frame that straddles
 * chunks is scanned incrementally and joined once, when complete (linear in its size).
 */

const CR = 13;

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

/**
 * Resumable scan state for a frame that spans chunks: a flat count of values still to read
 * (an aggregate adds its element count), the bytes of a bulk body still to skip, and the header
 * line read so far. Scanning across chunks this way reads each byte once, and the frame is
 * joined once, when it is complete.
 */
class SpanningFrame {
  /** Slices of earlier chunks holding the frame's bytes so far. */
  parts: Buffer[] = [];
  /** Values still to read. */
  pending = 1;
  /** Bytes of a bulk body (plus its CRLF) still to skip. */
  bulkRemaining = 0;
  /** The current header line (type byte first), while it is being read. */
  line: number[] = [];
  /** The header line's CR was seen; the next byte is its LF. */
  isAfterCr = false;
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
      pos = this.#continueSpanning(this.#spanning, chunk, 0);
      if (pos < 0) return;
    }
    while (pos < chunk.length) {
      const end = scanFrame(chunk, pos);
      if (end < 0) {
        // Incomplete in this chunk: read it again as a spanning frame, once, and carry on.
        const spanning = new SpanningFrame();
        const tail = chunk.subarray(pos);
        const done = this.#continueSpanning(spanning, tail, 0);
        if (done >= 0) throw new ReplyFramingError('scanner disagreement on a frame boundary');
        return;
      }
      this.#sink.onReplyFrame(chunk, pos, end);
      pos = end;
    }
  }

  /** Drops buffered bytes (the connection closed). */
  reset(): void {
    this.#spanning = null;
  }

  /**
   * Advances a spanning frame through `chunk` from `from`. Returns where the frame ended in
   * the chunk (after emitting it), or -1 when the chunk was used up first.
   */
  #continueSpanning(frame: SpanningFrame, chunk: Buffer, from: number): number {
    const len = chunk.length;
    let p = from;
    while (p < len) {
      if (frame.bulkRemaining > 0) {
        const take = Math.min(frame.bulkRemaining, len - p);
        frame.bulkRemaining -= take;
        p += take;
        if (frame.bulkRemaining === 0 && --frame.pending === 0) return this.#finishSpanning(frame, chunk, p);
        continue;
      }
      const c = chunk[p++]!;
      if (frame.isAfterCr) {
        // The byte after CR (its LF) ends the header line.
        frame.isAfterCr = false;
        if (this.#endOfLine(frame) && frame.pending === 0) return this.#finishSpanning(frame, chunk, p);
      } else if (c === CR) {
        frame.isAfterCr = true;
      } else {
        frame.line.push(c);
      }
    }
    frame.parts.push(chunk.subarray(from, len));
    this.#spanning = frame;
    return -1;
  }

  /** Interprets a complete header line; returns true when it completed a value. */
  #endOfLine(frame: SpanningFrame): boolean {
    const line = frame.line;
    frame.line = [];
    const type = line[0];
    if (type === undefined) throw new ReplyFramingError('empty reply line');
    switch (type) {
      case 43: case 45: case 58: case 44: case 95: case 35: case 40:
        frame.pending--;
        return true;
      case 36: case 33: case 61: {
        const n = lineLength(line);
        if (n < 0) {
          frame.pending--;
          return true;
        }
        frame.bulkRemaining = n + 2;
        return false;
      }
      case 42: case 126: case 62: {
        const n = lineLength(line);
        frame.pending += (n > 0 ? n : 0) - 1;
        return true;
      }
      case 37: {
        const n = lineLength(line);
        frame.pending += (n > 0 ? 2 * n : 0) - 1;
        return true;
      }
      case 124: {
        const n = lineLength(line);
        frame.pending += n > 0 ? 2 * n : 0;
        return false;
      }
      default:
        throw new ReplyFramingError(`unexpected reply type byte 0x${type.toString(16)}`);
    }
  }

  #finishSpanning(frame: SpanningFrame, chunk: Buffer, end: number): number {
    this.#spanning = null;
    frame.parts.push(chunk.subarray(0, end));
    const whole = Buffer.concat(frame.parts);
    this.#sink.onReplyFrame(whole, 0, whole.length);
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

/** The end of the complete frame starting at `start`, or -1 when the buffer ends first. */
function scanFrame(buf: Buffer, start: number): number {
  const len = buf.length;
  let p = start;
  /** Values still to be read before the frame is complete. */
  let pending = 1;
  while (pending > 0) {
    if (p >= len) return -1;
    const type = buf[p]!;
    let cr = p + 1;
    while (cr < len && buf[cr] !== CR) cr++;
    if (cr + 1 >= len) return -1;
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
          if (end > len) return -1;
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
