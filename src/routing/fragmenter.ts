import type { CommandSpec } from '../commands/handling';
import type { RequestFrame } from '../resp/request-parser';
import { copyRange } from '../resp/byte-copy';
import { arrayHeaderLength, writeArrayHeader } from '../resp/resp-writer';
import type { SlotMigration } from '../topology/topology';
import { argSlot } from './key-slot';

/** One shard's part of a split command. */
export interface Fragment {
  /** Index of the shard it goes to. */
  readonly shard: number;
  /** The sub-command as buffers to write in order: one copy, or the header and views of the request. */
  readonly parts: Buffer[];
  /** Number of keys in this fragment. */
  keyCount: number;
  /** Set when the fragment's keys are in a migrating slot: they move to `migration.to` first. */
  readonly migration: SlotMigration | null;
  /** The fragment's keys, kept only for a migrating fragment. */
  readonly keys: Buffer[];
}

/** A split command: the fragments, and for each key (in request order) which fragment holds it. */
export interface Fragmentation {
  readonly fragments: Fragment[];
  /** keyFragment[k] = index in `fragments` of key k (Twemproxy's frag_seq). */
  readonly keyFragment: Int32Array;
}

const NO_MIGRATIONS: ReadonlyMap<number, SlotMigration> = new Map();
const NO_RANGES: readonly number[] = [];

/**
 * Where argument i's bulk starts in the request, its `$len\r\n` header included: the header
 * follows the previous argument's CRLF, so the whole `$len\r\nbytes\r\n` is one view.
 */
function bulkStart(frame: RequestFrame, i: number): number {
  return frame.argEnd[i - 1]! + 2;
}

/**
 * A fragment at most this long is copied into one new buffer; a longer one (large MSET values)
 * is written as views of the request. Copying a few dozen bytes costs less than making a view.
 */
const COPY_LIMIT = 1024;

/**
 * Groups the keys of MGET/MSET/DEL/... per shard, one sub-command per shard (not one per key),
 * keeping the request's key order inside each. A key (with its MSET value) is a byte range of
 * the request, `$len` header included, and the ranges of keys that follow each other in the
 * request and in the fragment are one range; only the sub-command headers are new.
 */
export function fragment(
  frame: RequestFrame,
  spec: CommandSpec,
  slotOwner: Uint16Array,
  migrations: ReadonlyMap<number, SlotMigration> = NO_MIGRATIONS,
): Fragmentation {
  const step = spec.keyStep > 0 ? spec.keyStep : 1;
  const keyCount = Math.floor((frame.argc - 1) / step);
  const keyFragment = new Int32Array(keyCount);
  const fragments: Fragment[] = [];
  /** Per fragment: [start, end) byte ranges of the request, flattened. */
  const ranges: number[][] = [];
  /** Shard -> index in fragments (keys of stable slots). */
  const byShard: number[] = [];
  /** -1 - slot -> index in fragments: a migrating slot is a piece of its own. */
  let byMigratingSlot: Map<number, number> | null = null;
  const hasMigrations = migrations.size > 0;
  for (let k = 0; k < keyCount; k++) {
    const keyArg = 1 + k * step;
    const slot = argSlot(frame, keyArg);
    const migration = hasMigrations ? (migrations.get(slot) ?? null) : null;
    const shard = migration === null ? slotOwner[slot]! : migration.to;
    let f = migration === null ? byShard[shard] : (byMigratingSlot ??= new Map()).get(slot);
    if (f === undefined) {
      f = fragments.length;
      if (migration === null) byShard[shard] = f;
      else byMigratingSlot!.set(slot, f);
      fragments.push({ shard, parts: [], keyCount: 0, migration, keys: [] });
      ranges.push([]);
    }
    const piece = fragments[f]!;
    piece.keyCount++;
    keyFragment[k] = f;
    if (migration !== null) piece.keys.push(frame.arg(keyArg));
    const from = bulkStart(frame, keyArg);
    const to = frame.argEnd[keyArg + step - 1]! + 2;
    const own = ranges[f]!;
    if (own.length > 0 && own[own.length - 1] === from) own[own.length - 1] = to;
    else own.push(from, to);
  }
  const nameFrom = frame.argStart[0]! - headerLength(frame.argEnd[0]! - frame.argStart[0]!);
  const nameTo = frame.argEnd[0]! + 2;
  for (let f = 0; f < fragments.length; f++) {
    const piece = fragments[f]!;
    const own = ranges[f]!;
    let length = nameTo - nameFrom;
    for (let r = 0; r < own.length; r += 2) length += own[r + 1]! - own[r]!;
    const argc = 1 + piece.keyCount * step;
    if (length <= COPY_LIMIT) {
      piece.parts.push(copyFragment(frame.buf, argc, nameFrom, nameTo, own, length));
    } else {
      // The header and the command name copied, the (large) keys and values as views.
      piece.parts.push(copyFragment(frame.buf, argc, nameFrom, nameTo, NO_RANGES, nameTo - nameFrom));
      for (let r = 0; r < own.length; r += 2) piece.parts.push(frame.buf.subarray(own[r]!, own[r + 1]!));
    }
  }
  return { fragments, keyFragment };
}

/** `*argc\r\n`, the command name's bulk and the ranges (`length` bytes with the name), copied into one buffer. */
function copyFragment(buf: Buffer, argc: number, nameFrom: number, nameTo: number, ranges: readonly number[], length: number): Buffer {
  const out = Buffer.allocUnsafe(arrayHeaderLength(argc) + length);
  let at = writeArrayHeader(out, 0, argc);
  at = copyRange(buf, nameFrom, nameTo, out, at);
  for (let r = 0; r < ranges.length; r += 2) at = copyRange(buf, ranges[r]!, ranges[r + 1]!, out, at);
  return out;
}

/** Length of `$<n>\r\n`. */
function headerLength(n: number): number {
  return String(n).length + 3;
}
