import type { CommandSpec } from '../commands/handling';
import type { RequestFrame } from '../resp/request-parser';
import { CRLF } from '../resp/resp-writer';
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
 * Groups the keys of MGET/MSET/DEL/... per shard, one sub-command per shard (not one per key),
 * keeping the request's key order inside each. Key and value bytes are views of the request.
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
  /** shard index -> index in fragments; a migrating slot s is keyed -1 - s, a piece of its own. */
  const byShard = new Map<number, number>();
  const hasMigrations = migrations.size > 0;
  for (let k = 0; k < keyCount; k++) {
    const keyArg = 1 + k * step;
    const slot = argSlot(frame, keyArg);
    const migration = hasMigrations ? (migrations.get(slot) ?? null) : null;
    const shard = migration === null ? slotOwner[slot]! : migration.to;
    const group = migration === null ? shard : -1 - slot;
    let f = byShard.get(group);
    if (f === undefined) {
      f = fragments.length;
      byShard.set(group, f);
      fragments.push({ shard, parts: [], keyCount: 0, migration, keys: [] });
    }
    const piece = fragments[f]!;
    piece.keyCount++;
    if (migration !== null) piece.keys.push(frame.arg(keyArg));
    keyFragment[k] = f;
    for (let a = keyArg; a < keyArg + step; a++) {
      piece.parts.push(Buffer.from(`$${frame.argLength(a)}\r\n`), frame.arg(a), CRLF);
    }
  }
  const name = frame.arg(0);
  const nameHeader = Buffer.from(`$${name.length}\r\n`);
  for (const piece of fragments) {
    piece.parts.unshift(Buffer.from(`*${1 + piece.keyCount * step}\r\n`), nameHeader, name, CRLF);
  }
  return { fragments, keyFragment };
}
