import { getKeyIndexes } from '@ioredis/commands';
import type { CommandSpec } from '../commands/handling';
import type { RequestFrame } from '../resp/request-parser';
import { encodeError } from '../resp/resp-writer';
import { argSlot, patternHashSlot } from './key-slot';

/** `commandSlot` result: the command names no key. */
export const NO_KEYS = -1;
/** `commandSlot` result: keys in different slots. */
export const CROSS_SLOT = -2;

/**
 * Where each command that counts its keys has the count (frame index), and how many arguments
 * each key takes (MSETEX's pairs).
 */
const NUMKEYS_AT: ReadonlyMap<string, readonly [position: number, argsPerKey: number]> = new Map<string, readonly [number, number]>([
  ...['eval', 'evalsha', 'eval_ro', 'evalsha_ro', 'fcall', 'fcall_ro', 'blmpop', 'bzmpop', 'zunionstore', 'zinterstore', 'zdiffstore'].map(
    (name): [string, readonly [number, number]] => [name, [2, 1]],
  ),
  ...['sintercard', 'sdiffcard', 'sunioncard', 'lmpop', 'zmpop', 'zunion', 'zinter', 'zintercard', 'zdiff'].map(
    (name): [string, readonly [number, number]] => [name, [1, 1]],
  ),
  ['msetex', [1, 2]],
]);

/**
 * Whether the key count a command gives is one its arguments can hold. `@ioredis/commands`
 * loops up to the count as given: `EVAL "" 200000000` made it build an array until V8 aborted
 * the process (and a count of 1e19 would never end). An impossible count names no key here,
 * and the shard answers it with Redis's own error.
 */
function isPossibleKeyCount(frame: RequestFrame, name: string): boolean {
  const at = NUMKEYS_AT.get(name);
  if (at === undefined) return true;
  const [position, argsPerKey] = at;
  if (position >= frame.argc) return false;
  const text = frame.argString(position);
  if (!/^\d{1,10}$/.test(text)) return false;
  return Number(text) * argsPerKey <= frame.argc - 1 - position;
}

/** Key argument indexes of a command whose keys move with its arguments (EVAL numkeys, XREAD STREAMS, ...). */
export function movableKeyIndexes(frame: RequestFrame, spec: CommandSpec): number[] {
  if (spec.name === 'sort' || spec.name === 'sort_ro') return sortKeyIndexes(frame);
  if (!isPossibleKeyCount(frame, spec.name)) return [];
  // Strings, not Buffers: getKeyIndexes skips non-string arguments when it parses SORT's options.
  const args = frame.argStrings(1);
  const name = spec.name.includes('|') ? spec.name.slice(0, spec.name.indexOf('|')) : spec.name;
  let indexes: number[];
  try {
    indexes = getKeyIndexes(name, args);
  } catch {
    // Malformed arguments (say, a numkeys that is not a number): let the shard answer the error.
    return [];
  }
  return indexes.map((i) => i + 1).filter((i) => i < frame.argc);
}

/** The slot every key of the command hashes to, NO_KEYS, or CROSS_SLOT. */
export function commandSlot(frame: RequestFrame, spec: CommandSpec): number {
  if (spec.hasMovableKeys) {
    let slot = NO_KEYS;
    for (const i of movableKeyIndexes(frame, spec)) {
      const s = argSlot(frame, i);
      if (slot === NO_KEYS) slot = s;
      else if (s !== slot) return CROSS_SLOT;
    }
    return slot;
  }
  const first = spec.firstKey;
  if (first <= 0 || first >= frame.argc) return NO_KEYS;
  const slot = argSlot(frame, first);
  const last = spec.lastKey < 0 ? frame.argc + spec.lastKey : Math.min(spec.lastKey, frame.argc - 1);
  const step = spec.keyStep > 0 ? spec.keyStep : 1;
  for (let i = first + step; i <= last; i += step) {
    if (argSlot(frame, i) !== slot) return CROSS_SLOT;
  }
  return slot;
}

/** The key arguments of a command, as views of the request (for moving them during a migration). */
export function commandKeys(frame: RequestFrame, spec: CommandSpec): Buffer[] {
  if (spec.hasMovableKeys) return movableKeyIndexes(frame, spec).map((i) => frame.arg(i));
  const keys: Buffer[] = [];
  const first = spec.firstKey;
  if (first <= 0 || first >= frame.argc) return keys;
  const last = spec.lastKey < 0 ? frame.argc + spec.lastKey : Math.min(spec.lastKey, frame.argc - 1);
  const step = spec.keyStep > 0 ? spec.keyStep : 1;
  for (let i = first; i <= last; i += step) keys.push(frame.arg(i));
  return keys;
}

/** Where SORT's options put their arguments: STORE's destination, BY's and GET's patterns (frame indexes). */
interface SortArguments {
  readonly store: number | null;
  readonly by: readonly number[];
  readonly get: readonly number[];
}

function sortArguments(frame: RequestFrame): SortArguments {
  let store: number | null = null;
  const by: number[] = [];
  const get: number[] = [];
  for (let i = 2; i < frame.argc - 1; i++) {
    const option = frame.argString(i).toLowerCase();
    if (option === 'store') store = ++i;
    else if (option === 'by') by.push(++i);
    else if (option === 'get') get.push(++i);
    else if (option === 'limit') i += 2;
  }
  return { store, by, get };
}

/**
 * SORT / SORT_RO: the sorted key and STORE's destination, as Redis counts them. BY and GET take
 * patterns, not keys (`@ioredis/commands` takes them for keys, so `SORT list BY nosort` looked
 * cross-slot); whether a pattern may be used is movableKeysRefusal's to say.
 */
function sortKeyIndexes(frame: RequestFrame): number[] {
  const { store } = sortArguments(frame);
  return store === null ? [1] : [1, store];
}

const SORT_BY_DENIED = encodeError('ERR BY option of SORT denied in Cluster mode when keys formed by the pattern may be in different slots.');
const SORT_GET_DENIED = encodeError('ERR GET option of SORT denied in Cluster mode when keys formed by the pattern may be in different slots.');

/**
 * The error Redis Cluster answers a command with movable keys before it runs, or null. Only
 * SORT has one (7.4's rule for its patterns): a BY pattern with `*` or a GET pattern other than
 * `#` names keys the shard reads on its own, so their slot must be the sorted key's (a hash
 * tag); otherwise the shard would answer from the keys it happens to hold.
 */
export function movableKeysRefusal(frame: RequestFrame, spec: CommandSpec): Buffer | null {
  if ((spec.name !== 'sort' && spec.name !== 'sort_ro') || frame.argc < 2) return null;
  const slot = argSlot(frame, 1);
  const { by, get } = sortArguments(frame);
  for (const i of by) {
    const pattern = frame.arg(i);
    if (pattern.includes(0x2a) && patternHashSlot(pattern) !== slot) return SORT_BY_DENIED;
  }
  for (const i of get) {
    const pattern = frame.arg(i);
    if (!(pattern.length === 1 && pattern[0] === 0x23) && patternHashSlot(pattern) !== slot) return SORT_GET_DENIED;
  }
  return null;
}
