import type { RequestFrame } from '../resp/request-parser';

/**
 * Redis Cluster's hash slot, as redis-server's keyHashSlot computes it: CRC16 (XMODEM) mod 16384
 * of the key, or of the part between the first `{` and the first `}` after it when that part is
 * not empty.
 *
 * Written here rather than taken from `cluster-key-slot` for two reasons (docs/performance.md):
 * that package hashes `foo{}{bar}` as `{bar` where Redis hashes the whole key (it keeps looking
 * past an empty tag), and it needs the key as its own Buffer, which costs an allocation per key
 * on the hot path; this works on offsets into the request.
 */

const CRC16_TABLE = (() => {
  const table = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let crc = i << 8;
    for (let bit = 0; bit < 8; bit++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
    table[i] = crc;
  }
  return table;
})();

function crc16(buf: Uint8Array, start: number, end: number): number {
  let crc = 0;
  for (let i = start; i < end; i++) crc = ((crc << 8) & 0xffff) ^ CRC16_TABLE[((crc >> 8) ^ buf[i]!) & 0xff]!;
  return crc;
}

/** The slot of the key in `buf[start..end)`. */
export function keySlot(buf: Uint8Array, start: number, end: number): number {
  let open = start;
  while (open < end && buf[open] !== 0x7b) open++;
  if (open < end) {
    let close = open + 1;
    while (close < end && buf[close] !== 0x7d) close++;
    if (close < end && close > open + 1) return crc16(buf, open + 1, close) & 0x3fff;
  }
  return crc16(buf, start, end) & 0x3fff;
}

/**
 * redis-server's patternHashSlot: the one slot every key matching a glob pattern is in (its
 * non-empty hash tag, before any wildcard), or -1 when they may be in any slot.
 */
export function patternHashSlot(pattern: Uint8Array): number {
  let open = -1;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    // '*', '?', '[' (wildcards) and a backslash (an escape) before a tag: any slot.
    if (c === 0x2a || c === 0x3f || c === 0x5b || c === 0x5c) return -1;
    if (open === -1 && c === 0x7b) open = i;
    else if (open >= 0 && c === 0x7d && i === open + 1) open = -2;
    else if (open >= 0 && c === 0x7d) return crc16(pattern, open + 1, i) & 0x3fff;
  }
  return crc16(pattern, 0, pattern.length) & 0x3fff;
}

/** The slot of a key given as a string (UTF-8) or bytes. */
export function calculateSlot(key: string | Uint8Array): number {
  const bytes = typeof key === 'string' ? Buffer.from(key) : key;
  return keySlot(bytes, 0, bytes.length);
}

/** The slot of argument i of a request. */
export function argSlot(frame: RequestFrame, i: number): number {
  return keySlot(frame.buf, frame.argStart[i]!, frame.argEnd[i]!);
}
