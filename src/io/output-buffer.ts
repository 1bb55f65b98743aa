import { copyOfRange, copyRange } from './byte-copy';

/**
 * Where a turn's output goes (a socket's `SocketWriter`). Each call says whether the bytes were
 * taken at once (true), so the caller may reuse their memory, or are kept until written later.
 */
export interface OutputTarget {
  write(data: Buffer): boolean;
  /** Writes the first `count` parts back to back as one gathered write. */
  writeAll(parts: readonly Buffer[], count: number): boolean;
}

/** Below this many bytes, joining the pieces is cheaper than handing Node a writev of many. */
const JOIN_LIMIT = 64 * 1024;
/** A burst that queued more pieces than this does not keep an array that large afterwards. */
const KEPT_PARTS = 1024;
const NO_PART = Buffer.alloc(0);
/** Bytes copied in by append() go into a block of this size, lent for the turn. */
const BLOCK_BYTES = 16 * 1024;
/** Blocks kept for the next turn's output, at most (the rest are left to the collector). */
const KEPT_BLOCKS = 64;
/** Blocks no output holds: each goes to a socket with output to copy and comes back once written. */
const spareBlocks: Buffer[] = [];

/**
 * Bytes queued for one socket during an event-loop turn, written in one go.
 *
 * The array of pieces is kept from one write to the next (its entries cleared): a new array per
 * write was ~11% of what the proxy allocates per GET at -P 1, and young-generation collections
 * land in the latency tail.
 */
export class OutputBuffer {
  #parts: Buffer[] = [];
  #count = 0;
  #length = 0;
  /** The block append() copies into (null until it needs one), and its bytes not yet in #parts. */
  #block: Buffer | null = null;
  #blockStart = 0;
  #blockUsed = 0;

  get length(): number {
    return this.#length;
  }

  /** Queues `part` itself: the caller keeps it unchanged until it is written. */
  push(part: Buffer): void {
    this.#sealBlock();
    this.#parts[this.#count++] = part;
    this.#length += part.length;
  }

  /**
   * Queues a copy of `bytes`, which may change once this returns (a view of a read buffer that
   * the next read reuses). The copy goes into a block lent for the turn and given back once the
   * kernel has taken it, so a reply passed on this way costs no memory of its own; the backend
   * reads behind it need none either (backend/backend-connection.ts).
   */
  append(bytes: Uint8Array, from = 0, to = bytes.length): void {
    const length = to - from;
    let block = this.#block;
    if (block === null || block.length - this.#blockUsed < length) {
      if (length > BLOCK_BYTES / 2) {
        this.push(copyOfRange(bytes, from, to));
        return;
      }
      // A block sealed into #parts stays with them (the write may keep it); a new one follows.
      this.#sealBlock();
      block = spareBlocks.pop() ?? Buffer.allocUnsafeSlow(BLOCK_BYTES);
      this.#block = block;
      this.#blockStart = 0;
      this.#blockUsed = 0;
    }
    this.#blockUsed = copyRange(bytes, from, to, block, this.#blockUsed);
    this.#length += length;
  }

  /** Writes everything queued as one write (joined when small, one gathered write when large). */
  writeTo(writer: OutputTarget): void {
    const block = this.#block;
    this.#sealBlock();
    const count = this.#count;
    if (count === 0) return;
    const parts = this.#parts;
    // Whether the block's bytes are free once the write call returns.
    let isBlockFree: boolean;
    if (count === 1) {
      const only = parts[0]!;
      this.clear();
      isBlockFree = writer.write(only);
    } else if (this.#length <= JOIN_LIMIT) {
      const joined = Buffer.allocUnsafe(this.#length);
      let offset = 0;
      for (let i = 0; i < count; i++) {
        const part = parts[i]!;
        joined.set(part, offset);
        offset += part.length;
      }
      this.clear();
      writer.write(joined);
      isBlockFree = true;
    } else {
      isBlockFree = writer.writeAll(parts, count);
      this.clear();
    }
    // The block goes back to be lent again, unless a write left pending still reads it (a block
    // replaced mid-turn stays with the parts that held it, for the collector).
    if (block !== null && isBlockFree && spareBlocks.length < KEPT_BLOCKS) spareBlocks.push(block);
  }

  /** Moves the block's bytes appended since the last seal into #parts, as one view. */
  #sealBlock(): void {
    if (this.#blockUsed === this.#blockStart) return;
    this.#parts[this.#count++] = this.#block!.subarray(this.#blockStart, this.#blockUsed);
    this.#blockStart = this.#blockUsed;
  }

  clear(): void {
    if (this.#count > KEPT_PARTS) {
      this.#parts = [];
    } else {
      const parts = this.#parts;
      for (let i = 0; i < this.#count; i++) parts[i] = NO_PART;
    }
    this.#count = 0;
    this.#length = 0;
    this.#block = null;
    this.#blockStart = 0;
    this.#blockUsed = 0;
  }
}
