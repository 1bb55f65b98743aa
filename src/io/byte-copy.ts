/**
 * Below this many bytes a plain loop beats Buffer#copy, which makes a new typed-array view of
 * the source for every call (most keys, values and reply items on the hot path are this small).
 */
const LOOP_LIMIT = 64;

/** Copies `source[from..to)` into `target` at `at`; returns the offset after the copy. */
export function copyRange(source: Uint8Array, from: number, to: number, target: Buffer, at: number): number {
  if (to - from > LOOP_LIMIT) return at + (source as Buffer).copy(target, at, from, to);
  for (let i = from; i < to; i++) target[at++] = source[i]!;
  return at;
}

/** A copy of `bytes` of its own (pooled memory when small): Buffer.from(buffer) takes twice as long for a short one. */
export function copyOf(bytes: Uint8Array): Buffer {
  return copyOfRange(bytes, 0, bytes.length);
}

/** A copy of `source[from..to)` of its own, with no view of the source made on the way. */
export function copyOfRange(source: Uint8Array, from: number, to: number): Buffer {
  const copy = Buffer.allocUnsafe(to - from);
  copyRange(source, from, to, copy, 0);
  return copy;
}
