import type { CommandSpec } from '../commands/handling';
import type { RequestFrame } from '../resp/request-parser';
import { copyRange } from '../io/byte-copy';
import { arrayHeaderLength, writeArrayHeader } from '../resp/resp-writer';
import type { SlotMigration } from '../topology/topology';
import { argSlot } from './key-slot';

/** One shard's part of a split command. */
export class Fragment {
  /** The sub-command: one copy, or (a large one) the header and views of the request, to write in order. */
  request: Buffer | Buffer[] = NO_BYTES;
  /** Number of keys in this fragment. */
  keyCount = 0;
  /** Bytes of its keys (with their MSET values), `$len` headers included. */
  byteLength = 0;

  constructor(
    /** Index of the shard it goes to. */
    readonly shard: number,
    /** Set when the fragment's keys are in a migrating slot: they move to `migration.to` first. */
    readonly migration: SlotMigration | null,
    /**
     * The fragment is one slot's keys for the migrating router: a migrating slot's, or a slot
     * the router holds earlier commands on (`HeldSlots`).
     */
    readonly viaMigratingRouter: boolean,
    /** The fragment's keys, kept only for the migrating router (empty and frozen otherwise). */
    readonly keys: Buffer[],
  ) {}
}

/** Slots with commands still held by the migrating router (their slot settled while they waited): later ones on them go there too. */
export interface HeldSlots {
  holdsSlot(slot: number): boolean;
}

/** A split command: the fragments, and for MGET which fragment holds each key (in request order). */
export interface Fragmentation {
  readonly fragments: Fragment[];
  /**
   * keyFragment[k] = index in `fragments` of key k (Twemproxy's frag_seq). Only for the merge
   * that puts the keys' replies back in order (MGET's); null for the others, which need none.
   */
  readonly keyFragment: number[] | null;
}

const NO_BYTES = Buffer.alloc(0);
const NO_KEYS: Buffer[] = Object.freeze([]) as unknown as Buffer[];
const NO_MIGRATIONS: ReadonlyMap<number, SlotMigration> = new Map();

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

// Scratch state of one fragment() call, kept between calls: fragment() runs to its end before
// another can start, and a split command's fragments then need no arrays of their own (an
// allocation profile of MGET of 10 keys over 3 shards put 39% of the proxy's allocations in the
// per-fragment range and part arrays this replaces).

/** Per shard: 1 + the index of its fragment in this call, 0 for none; put back to 0 before the call returns. */
let fragmentOfShard = new Int32Array(64);
/** Per fragment: where its next key's bytes go in its copy, or the end of its last view. */
let cursor = new Int32Array(16);
/** Per key: index of its fragment (returned as a copy for MGET's merge). */
let keyFragmentOf = new Int32Array(64);
/** The fragments as they are found, until the call copies them into an array of the right length. */
const found: (Fragment | undefined)[] = [];

/**
 * Groups the keys of MGET/MSET/DEL/... per shard, one sub-command per shard (not one per key),
 * keeping the request's key order inside each. A key (with its MSET value) is a byte range of
 * the request, `$len` header included; a small fragment is those ranges copied after a new
 * header, a large one the header and views of the ranges (neighbouring ones joined).
 */
export function fragment(
  frame: RequestFrame,
  spec: CommandSpec,
  slotOwner: Uint16Array,
  migrations: ReadonlyMap<number, SlotMigration> = NO_MIGRATIONS,
  held: HeldSlots | null = null,
): Fragmentation {
  const step = spec.keyStep > 0 ? spec.keyStep : 1;
  const keyCount = Math.floor((frame.argc - 1) / step);
  if (keyCount > keyFragmentOf.length) keyFragmentOf = new Int32Array(Math.max(keyCount, 2 * keyFragmentOf.length));
  const keyFragment = keyFragmentOf;
  let count = 0;
  /** Slot -> index in fragments, for the migrating router's slots: each is a piece of its own. */
  let byRouterSlot: Map<number, number> | null = null;
  const hasMigrations = migrations.size > 0;
  try {
    for (let k = 0; k < keyCount; k++) {
      const keyArg = 1 + k * step;
      const slot = argSlot(frame, keyArg);
      const migration = hasMigrations ? (migrations.get(slot) ?? null) : null;
      const shard = migration === null ? slotOwner[slot]! : migration.to;
      const isRouters = migration !== null || (held !== null && held.holdsSlot(slot));
      let f: number | undefined;
      if (!isRouters) {
        if (shard >= fragmentOfShard.length) growShardTable(shard);
        const known = fragmentOfShard[shard]!;
        if (known > 0) f = known - 1;
      } else {
        f = (byRouterSlot ??= new Map()).get(slot);
      }
      if (f === undefined) {
        f = count++;
        found[f] = new Fragment(shard, migration, isRouters, isRouters ? [] : NO_KEYS);
        if (!isRouters) fragmentOfShard[shard] = f + 1;
        else byRouterSlot!.set(slot, f);
      }
      const piece = found[f]!;
      piece.keyCount++;
      piece.byteLength += frame.argEnd[keyArg + step - 1]! + 2 - bulkStart(frame, keyArg);
      keyFragment[k] = f;
      if (isRouters) piece.keys.push(frame.arg(keyArg));
    }
  } finally {
    // Only the shards this call touched: the table is clean for the next one, whatever happened.
    for (let f = 0; f < count; f++) {
      const piece = found[f]!;
      if (!piece.viaMigratingRouter) fragmentOfShard[piece.shard] = 0;
    }
  }
  const fragments = found.slice(0, count) as Fragment[];
  found.fill(undefined, 0, count);

  const nameFrom = frame.argStart[0]! - headerLength(frame.argEnd[0]! - frame.argStart[0]!);
  const nameTo = frame.argEnd[0]! + 2;
  const nameLength = nameTo - nameFrom;
  if (fragments.length > cursor.length) cursor = new Int32Array(Math.max(fragments.length, 2 * cursor.length));
  for (let f = 0; f < fragments.length; f++) {
    const piece = fragments[f]!;
    const argc = 1 + piece.keyCount * step;
    const isCopied = nameLength + piece.byteLength <= COPY_LIMIT;
    // The header and the command name; a copied fragment's keys follow in the same buffer.
    const head = Buffer.allocUnsafe(arrayHeaderLength(argc) + nameLength + (isCopied ? piece.byteLength : 0));
    const at = copyRange(frame.buf, nameFrom, nameTo, head, writeArrayHeader(head, 0, argc));
    piece.request = isCopied ? head : [head];
    cursor[f] = isCopied ? at : -1;
  }
  for (let k = 0; k < keyCount; k++) {
    const f = keyFragment[k]!;
    const keyArg = 1 + k * step;
    const from = bulkStart(frame, keyArg);
    const to = frame.argEnd[keyArg + step - 1]! + 2;
    const request = fragments[f]!.request;
    if (!Array.isArray(request)) {
      cursor[f] = copyRange(frame.buf, from, to, request, cursor[f]!);
    } else if (cursor[f] === from) {
      // Follows the fragment's last view in the request: one view for both.
      const last = request.length - 1;
      request[last] = frame.buf.subarray(from - request[last]!.length, to);
      cursor[f] = to;
    } else {
      request.push(frame.buf.subarray(from, to));
      cursor[f] = to;
    }
  }
  return { fragments, keyFragment: spec.merge === 'mget' ? copyOfKeyFragments(keyCount) : null };
}

/**
 * The call's first `keyCount` entries of keyFragmentOf, as a plain array: one of small integers
 * takes 8 bytes an entry and a header, a typed array of its own ~240 bytes whatever its length.
 */
function copyOfKeyFragments(keyCount: number): number[] {
  const copy = new Array<number>(keyCount);
  for (let k = 0; k < keyCount; k++) copy[k] = keyFragmentOf[k]!;
  return copy;
}

function growShardTable(shard: number): void {
  const grown = new Int32Array(Math.max(shard + 1, 2 * fragmentOfShard.length));
  grown.set(fragmentOfShard);
  fragmentOfShard = grown;
}

/** Length of `$<n>\r\n`. */
function headerLength(n: number): number {
  return String(n).length + 3;
}
