import { list as commandNames } from '@ioredis/commands';
import commandData from '@ioredis/commands/built/commands.json';
import { describe, expect, it } from 'vitest';

import { allCommands, COMMAND_NAMES, COMMAND_TABLE, lookupCommand } from '../../src/commands/command-table';
import type { CommandSpec, Handling, Merge } from '../../src/commands/handling';

/** The metadata @ioredis/commands ships, as far as these tests read it. */
interface RawCommand {
  readonly flags: readonly string[];
  readonly keyStart: number;
  readonly requestPolicy?: string;
  readonly responsePolicy?: string;
  readonly subcommands?: Readonly<Record<string, RawCommand>>;
}
const DATA = commandData as unknown as Readonly<Record<string, RawCommand>>;

/** Every member of the Handling union; `satisfies` fails to compile when the union changes. */
const HANDLINGS = Object.keys({
  single: true,
  split: true,
  broadcast: true,
  'any-shard': true,
  local: true,
  refused: true,
  transaction: true,
  blocking: true,
  pubsub: true,
  scan: true,
  'first-non-empty': true,
  script: true,
  'config-set': true,
  info: true,
  'kill-script': true,
} as const satisfies Record<Handling, true>);
const MERGES = Object.keys({
  mget: true,
  sum: true,
  'all-ok': true,
  first: true,
  union: true,
  'logical-and': true,
  'pair-sum': true,
  'distinct-union': true,
  'newest-first': true,
  'latest-per-event': true,
} as const satisfies Record<Merge, true>);

/** Every command and subcommand: [full name, spec, raw metadata]. */
const ENTRIES: readonly [string, CommandSpec, RawCommand][] = (() => {
  const out: [string, CommandSpec, RawCommand][] = [];
  for (const name of commandNames) {
    const spec = lookupCommand(name);
    const raw = DATA[name]!;
    if (spec === undefined) continue; // reported by the first test
    out.push([name, spec, raw]);
    for (const [sub, subRaw] of Object.entries(raw.subcommands ?? {})) {
      const subSpec = spec.subcommands?.get(sub);
      if (subSpec !== undefined) out.push([`${name}|${sub}`, subSpec, subRaw]);
    }
  }
  return out;
})();
const SUBCOMMAND_NAMES: readonly [string, string][] = commandNames.flatMap((name) =>
  Object.keys(DATA[name]?.subcommands ?? {}).map((sub): [string, string] => [name, sub]),
);

const hasKeys = (spec: CommandSpec): boolean => spec.firstKey > 0 || spec.hasMovableKeys;
/** Handlings that send the command on a backend connection shared with other clients. */
const ON_SHARED_CONNECTION: readonly Handling[] = ['single', 'any-shard', 'split', 'broadcast'];

describe('command table: coverage of @ioredis/commands', () => {
  it('knows more than a handful of commands (the list is not empty)', () => {
    expect(commandNames.length).toBeGreaterThan(200);
    expect(SUBCOMMAND_NAMES.length).toBeGreaterThan(100);
  });

  it.each(commandNames)('%s has a spec with a decided handling', (name) => {
    const spec = lookupCommand(name);
    expect(spec, `no spec for ${name}`).toBeDefined();
    expect(spec!.name).toBe(name);
    expect(HANDLINGS).toContain(spec!.handling);
    expect(lookupCommand(name.toUpperCase())).toBe(spec);
    expect(COMMAND_TABLE.get(name)).toBe(spec);
  });

  it.each(SUBCOMMAND_NAMES)('%s|%s has a spec with a decided handling', (name, sub) => {
    const spec = lookupCommand(name)?.subcommands?.get(sub);
    expect(spec, `no spec for ${name}|${sub}`).toBeDefined();
    expect(spec!.name).toBe(`${name}|${sub}`);
    expect(HANDLINGS).toContain(spec!.handling);
  });

  it('allCommands() lists each top-level command once', () => {
    expect(allCommands().map((s) => s.name)).toEqual([...commandNames].sort((a, b) => a.localeCompare(b)));
  });

  it('numbers every spec densely: COMMAND_NAMES[spec.id] is its name', () => {
    const ids = ENTRIES.map(([, spec]) => spec.id);
    expect(new Set(ids).size).toBe(ENTRIES.length);
    expect(COMMAND_NAMES).toHaveLength(ENTRIES.length);
    for (const [name, spec] of ENTRIES) expect(COMMAND_NAMES[spec.id], name).toBe(name);
  });

  it.each(['GeT', 'mGET', 'Cluster', 'EVAL'])('finds %s whatever its case', (name) => {
    expect(lookupCommand(name)).toBe(lookupCommand(name.toLowerCase()));
    expect(lookupCommand(name)).toBeDefined();
  });

  it('returns undefined for an unknown command', () => {
    expect(lookupCommand('nosuchcommand')).toBeUndefined();
  });
});

describe('command table: decisions are coherent', () => {
  it.each(ENTRIES)('%s: merge is set exactly for split and broadcast', (_name, spec) => {
    if (spec.handling === 'split' || spec.handling === 'broadcast') {
      expect(spec.merge).not.toBeNull();
      expect(MERGES).toContain(spec.merge);
    } else {
      expect(spec.merge).toBeNull();
    }
  });

  it.each(ENTRIES.filter(([, spec]) => spec.handling === 'refused'))('%s: refused with a reason', (_name, spec) => {
    expect(spec.note.length).toBeGreaterThan(0);
  });

  it.each(ENTRIES.filter(([, spec]) => spec.handling === 'split'))('%s: split keys run from argument 1 to the end', (_name, spec) => {
    // The fragmenter takes keys at 1, 1 + step, ... up to the last argument.
    expect(spec.firstKey).toBe(1);
    expect(spec.lastKey).toBe(-1);
    expect(spec.keyStep).toBeGreaterThanOrEqual(1);
    expect(spec.hasMovableKeys).toBe(false);
  });

  it.each(ENTRIES.filter(([, spec]) => spec.handling === 'broadcast'))('%s: broadcast commands are keyless', (_name, spec) => {
    expect(hasKeys(spec)).toBe(false);
  });

  it.each(ENTRIES.filter(([, spec]) => hasKeys(spec)))('%s: a command with keys is never sent to just any shard', (_name, spec) => {
    expect(spec.handling).not.toBe('any-shard');
  });

  it.each(ENTRIES.filter(([, spec]) => spec.handling === 'single'))('%s: single commands have keys to route by', (_name, spec) => {
    expect(hasKeys(spec)).toBe(true);
  });

  it.each<[string, Merge, number]>([
    ['mget', 'mget', 1],
    ['mset', 'all-ok', 2],
    ['del', 'sum', 1],
    ['unlink', 'sum', 1],
    ['exists', 'sum', 1],
    ['touch', 'sum', 1],
  ])('core split command %s is split with merge %s (key step %i)', (name, merge, step) => {
    const spec = lookupCommand(name)!;
    expect(spec.handling).toBe('split');
    expect(spec.merge).toBe(merge);
    expect(spec.keyStep).toBe(step);
  });

  const WITH_POLICY = ENTRIES.filter(([, spec, raw]) => spec.merge !== null && raw.responsePolicy !== undefined);
  it.each(WITH_POLICY)('%s: the merge follows Redis response_policy', (_name, spec, raw) => {
    const expected: Readonly<Record<string, readonly Merge[]>> = {
      agg_sum: ['sum'],
      all_succeeded: ['all-ok', 'first'],
      agg_logical_and: ['logical-and'],
      // Redis leaves the merge to the client; ours is per command (LATENCY LATEST).
      special: ['latest-per-event'],
    };
    expect(expected[raw.responsePolicy!], `no merge known for ${raw.responsePolicy}`).toBeDefined();
    expect(expected[raw.responsePolicy!]).toContain(spec.merge);
  });
});

describe('command table: commands that change the state of their connection', () => {
  // On a backend connection shared by many clients, these would block it, or change its
  // protocol mode, for everybody: they must be answered locally, refused, or pinned.
  const BLOCKING = ENTRIES.filter(([, , raw]) => raw.flags.includes('blocking'));
  const TRANSACTION = ['multi', 'exec', 'discard', 'watch', 'unwatch'];
  const SUBSCRIPTION = ['subscribe', 'unsubscribe', 'psubscribe', 'punsubscribe', 'ssubscribe', 'sunsubscribe'];
  const CONNECTION = ['select', 'hello', 'auth', 'reset', 'readonly', 'readwrite', 'quit', 'monitor', 'client|reply', 'client|tracking', 'client|setname'];

  it('finds the blocking commands in the metadata', () => {
    expect(BLOCKING.map(([name]) => name)).toEqual(expect.arrayContaining(['blpop', 'brpop', 'bzpopmin', 'blmove', 'xread', 'xreadgroup', 'wait']));
  });

  it.each(BLOCKING)('blocking %s does not run on a shared connection', (_name, spec) => {
    expect(ON_SHARED_CONNECTION).not.toContain(spec.handling);
  });

  it.each(TRANSACTION)('transaction command %s does not run on a shared connection', (name) => {
    expect(ON_SHARED_CONNECTION).not.toContain(lookupCommand(name)!.handling);
  });

  it.each(SUBSCRIPTION)('pub/sub command %s does not run on a shared connection', (name) => {
    expect(ON_SHARED_CONNECTION).not.toContain(lookupCommand(name)!.handling);
  });

  it.each(CONNECTION)('connection command %s does not run on a shared connection', (fullName) => {
    const [name, sub] = fullName.split('|') as [string, string | undefined];
    const spec = sub === undefined ? lookupCommand(name)! : lookupCommand(name)!.subcommands!.get(sub)!;
    expect(ON_SHARED_CONNECTION).not.toContain(spec.handling);
  });
});
