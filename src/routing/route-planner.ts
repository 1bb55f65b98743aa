import { getKeyIndexes } from '@ioredis/commands';
import type { CommandSpec } from '../commands/handling';
import type { RequestFrame } from '../resp/request-parser';
import { argSlot } from './key-slot';

/** `commandSlot` result: the command names no key. */
export const NO_KEYS = -1;
/** `commandSlot` result: keys in different slots. */
export const CROSS_SLOT = -2;

/** Key argument indexes of a command whose keys move with its arguments (EVAL numkeys, XREAD STREAMS, ...). */
export function movableKeyIndexes(frame: RequestFrame, spec: CommandSpec): number[] {
  // Strings, not Buffers: getKeyIndexes skips non-string arguments when it parses SORT's options.
  const args: string[] = [];
  for (let i = 1; i < frame.argc; i++) args.push(frame.argString(i));
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
