import type { CommandSpec } from '../commands/handling';
import type { RequestFrame } from '../resp/request-parser';
import { CRLF, encodeArrayHeader } from '../resp/resp-writer';
import type { SlotMigration } from '../topology/topology';
import { argSlot } from './key-slot';

/** One shard's part of a split command. */
export interface Fragment {
  /** Index of the shard it goes to. */
  readonly shard: number;
  /** The sub-command as buffers to write in order (header, then argument views). */
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

/**
 * Where argument i's bulk starts in the request, its `$len\r\n` header included: the header
 * follows the previous argument's CRLF, so the whole `$len\r\nbytes\r\n` is one view.
 */
function bulkStart(frame: RequestFrame, i: number): number {
  return frame.argEnd[i - 1]! + 2;
}

/**
 * Groups the keys of MGET/MSET/DEL/... per shard, one sub-command per shard (not one per key),
 * keeping the request's key order inside each. Each key (with its MSET value) travels as one
 * view of the request bytes, header included; only the sub-command headers are new.
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
  /** Group -> index in fragments: a shard index, or -1 - slot for a migrating slot (a piece of its own). */
  const byGroup = new Map<number, number>();
  const hasMigrations = migrations.size > 0;
  for (let k = 0; k < keyCount; k++) {
    const keyArg = 1 + k * step;
    const slot = argSlot(frame, keyArg);
    const migration = hasMigrations ? (migrations.get(slot) ?? null) : null;
    const shard = migration === null ? slotOwner[slot]! : migration.to;
    const group = migration === null ? shard : -1 - slot;
    let f = byGroup.get(group);
    if (f === undefined) {
      f = fragments.length;
      byGroup.set(group, f);
      // Slot 0 holds the header, written once the key count is known.
      fragments.push({ shard, parts: [CRLF], keyCount: 0, migration, keys: [] });
    }
    const piece = fragments[f]!;
    piece.keyCount++;
    keyFragment[k] = f;
    if (migration !== null) piece.keys.push(frame.arg(keyArg));
    piece.parts.push(frame.buf.subarray(bulkStart(frame, keyArg), frame.argEnd[keyArg + step - 1]! + 2));
  }
  const nameLength = frame.argEnd[0]! - frame.argStart[0]!;
  const nameBulk = frame.buf.subarray(frame.argStart[0]! - headerLength(nameLength), frame.argEnd[0]! + 2);
  for (const piece of fragments) {
    piece.parts[0] = Buffer.concat([encodeArrayHeader(1 + piece.keyCount * step), nameBulk]);
  }
  return { fragments, keyFragment };
}

/** Length of `$<n>\r\n`. */
function headerLength(n: number): number {
  return String(n).length + 3;
}
