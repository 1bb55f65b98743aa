import type { CommandSpec } from '../commands/handling';
import type { RequestFrame } from '../resp/request-parser';
import { CRLF } from '../resp/resp-writer';
import { argSlot } from './key-slot';

/** One shard's part of a split command. */
export interface Fragment {
  /** Index of the shard it goes to. */
  readonly shard: number;
  /** The sub-command as buffers to write in order (header, then argument views). */
  readonly parts: Buffer[];
  /** Number of keys in this fragment. */
  keyCount: number;
}

/** A split command: the fragments, and for each key (in request order) which fragment holds it. */
export interface Fragmentation {
  readonly fragments: Fragment[];
  /** keyFragment[k] = index in `fragments` of key k (Twemproxy's frag_seq). */
  readonly keyFragment: Int32Array;
}

/**
 * Groups the keys of MGET/MSET/DEL/... per shard, one sub-command per shard (not one per key),
 * keeping the request's key order inside each. Key and value bytes are views of the request.
 */
export function fragment(frame: RequestFrame, spec: CommandSpec, slotOwner: Uint16Array): Fragmentation {
  const step = spec.keyStep > 0 ? spec.keyStep : 1;
  const keyCount = Math.floor((frame.argc - 1) / step);
  const keyFragment = new Int32Array(keyCount);
  const fragments: Fragment[] = [];
  /** shard index -> index in fragments, or -1. */
  const byShard = new Map<number, number>();
  for (let k = 0; k < keyCount; k++) {
    const keyArg = 1 + k * step;
    const shard = slotOwner[argSlot(frame, keyArg)]!;
    let f = byShard.get(shard);
    if (f === undefined) {
      f = fragments.length;
      byShard.set(shard, f);
      fragments.push({ shard, parts: [], keyCount: 0 });
    }
    const piece = fragments[f]!;
    piece.keyCount++;
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
