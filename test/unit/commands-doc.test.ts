import * as fs from 'node:fs';
import * as path from 'node:path';
import { list as commandNames } from '@ioredis/commands';
import commandData from '@ioredis/commands/built/commands.json';
import { describe, expect, it } from 'vitest';

import { arrayItems, DOC_PATH, renderCommandsDoc, unionMembers } from '../../scripts/gen-commands-doc';
import { lookupCommand } from '../../src/commands/command-table';
import type { CommandSpec } from '../../src/commands/handling';

/**
 * docs/commands.md is generated from the command table: it must be up to date, and every
 * command @ioredis/commands knows must have a handling the page documents.
 */

const ROOT = path.resolve(__dirname, '..', '..');

interface RawCommand {
  readonly flags: readonly string[];
  readonly keyStart: number;
  readonly subcommands?: Readonly<Record<string, RawCommand>>;
}
const DATA = commandData as unknown as Readonly<Record<string, RawCommand>>;

const HANDLING_SOURCE = fs.readFileSync(path.join(ROOT, 'src/commands/handling.ts'), 'utf8');
const DOCUMENTED_HANDLINGS = unionMembers(HANDLING_SOURCE, 'Handling').map((m) => m.name);

/** Every command and subcommand name of @ioredis/commands (`name` and `name|sub`), with its raw metadata. */
const ALL_NAMES: readonly [string, RawCommand][] = commandNames.flatMap((name): [string, RawCommand][] => {
  const raw = DATA[name];
  if (raw === undefined) return [[name, { flags: [], keyStart: 0 }]];
  return [[name, raw], ...Object.entries(raw.subcommands ?? {}).map(([sub, subRaw]): [string, RawCommand] => [`${name}|${sub}`, subRaw])];
});

function specOf(fullName: string): CommandSpec | undefined {
  const [name, sub] = fullName.split('|') as [string, string | undefined];
  const spec = lookupCommand(name);
  return sub === undefined ? spec : spec?.subcommands?.get(sub);
}

/** Commands that change the state of the connection they run on (Redis keeps it per client). */
const CONNECTION_STATE: readonly string[] = [
  'auth', 'hello', 'select', 'reset', 'readonly', 'readwrite', 'asking', 'monitor',
  'client|setname', 'client|setinfo', 'client|reply', 'client|tracking', 'client|caching', 'client|no-evict', 'client|no-touch',
  // SCRIPT DEBUG YES|SYNC puts the connection's next EVAL into the Lua debugger.
  'script|debug',
  'multi', 'exec', 'discard', 'watch', 'unwatch',
  'subscribe', 'unsubscribe', 'psubscribe', 'punsubscribe', 'ssubscribe', 'sunsubscribe',
];
/** Handlings that put the command on a backend connection shared with other clients. */
const ON_SHARED_CONNECTION = ['single', 'split', 'broadcast', 'any-shard', 'script', 'first-non-empty', 'scan', 'info'];

describe('docs/commands.md', () => {
  it('is what `npm run docs:commands` generates from the current table (run it when this fails)', () => {
    const file = path.join(ROOT, DOC_PATH);
    expect(fs.existsSync(file), `${DOC_PATH} is missing: run \`npm run docs:commands\``).toBe(true);
    const current = fs.readFileSync(file, 'utf8');
    const generated = renderCommandsDoc(ROOT);
    // Compare line by line first, so a failure names the first line that drifted.
    const currentLines = current.split('\n');
    const generatedLines = generated.split('\n');
    const first = generatedLines.findIndex((line, i) => currentLines[i] !== line);
    expect(first, `${DOC_PATH} is out of date from line ${first + 1}: run \`npm run docs:commands\``).toBe(-1);
    expect(current).toBe(generated);
  });

  it('lists every command and subcommand in the section of its handling', () => {
    const page = renderCommandsDoc(ROOT);
    const sections = new Map<string, string>();
    for (const part of page.split(/^## /m).slice(1)) sections.set(part.slice(0, part.indexOf('\n')), part);
    const missing: string[] = [];
    for (const [fullName] of ALL_NAMES) {
      const spec = specOf(fullName);
      if (spec === undefined || spec.subcommands !== null) continue;
      const display = `\`${fullName.split('|').join(' ').toUpperCase()}\``;
      if (!sections.get(spec.handling)?.includes(`| ${display} |`)) missing.push(`${fullName} (${spec.handling})`);
    }
    expect(missing).toEqual([]);
  });

  it('explains every handling and merge from their JSDoc in handling.ts', () => {
    expect(DOCUMENTED_HANDLINGS).toEqual(expect.arrayContaining(['single', 'split', 'broadcast', 'any-shard', 'local', 'refused']));
    for (const member of [...unionMembers(HANDLING_SOURCE, 'Handling'), ...unionMembers(HANDLING_SOURCE, 'Merge')]) {
      expect(member.description.length, member.name).toBeGreaterThan(10);
    }
  });

  it('reads the CONFIG SET allow-list and the transaction restrictions from the dispatch sources', () => {
    const dispatcher = fs.readFileSync(path.join(ROOT, 'src/dispatch/dispatcher.ts'), 'utf8');
    const allowed = arrayItems(dispatcher, 'CONFIG_SET_ALLOWED', /(\/\^[^\n]*?\$\/)/g);
    expect(allowed).toContain('/^notify-keyspace-events$/');
    const page = renderCommandsDoc(ROOT);
    for (const pattern of allowed) expect(page).toContain(`\`${pattern}\``);
  });

  it('fails loudly, rather than printing nothing, when a union member has no JSDoc', () => {
    expect(() => unionMembers("export type T =\n  /** documented */\n  | 'a'\n  | 'b';\n", 'T')).toThrow(/'b' has no JSDoc/);
    expect(unionMembers("export type T =\n  /** A; with a semicolon. */\n  | 'a'\n  /**\n   * Two\n   * lines.\n   */\n  | 'b';\n", 'T')).toEqual([
      { name: 'a', description: 'A; with a semicolon.' },
      { name: 'b', description: 'Two lines.' },
    ]);
  });
});

describe('every command of @ioredis/commands has a decided handling', () => {
  it('the metadata is not empty', () => {
    expect(ALL_NAMES.length).toBeGreaterThan(300);
  });

  it.each(ALL_NAMES.map(([name]) => name))('%s', (fullName) => {
    expect(DATA[fullName.split('|')[0]!], `@ioredis/commands lists ${fullName} but ships no metadata for it`).toBeDefined();
    const spec = specOf(fullName);
    expect(spec, `${fullName} is not in the command table`).toBeDefined();
    expect(spec!.name).toBe(fullName);
    if (spec!.subcommands !== null) {
      // A container: each of its subcommands is decided on its own (checked as `name|sub`).
      expect(spec!.subcommands.size).toBeGreaterThan(0);
      return;
    }
    expect(DOCUMENTED_HANDLINGS, `${fullName}: handling '${spec!.handling}' is not one handling.ts documents`).toContain(spec!.handling);
    if (spec!.handling === 'refused') expect(spec!.note, `${fullName} is refused without a reason`).not.toBe('');
  });

  it('no keyless write command is left to the default rule that sends it to any one shard', () => {
    // Such a command changes data on one arbitrary shard: it must be broadcast, routed or refused.
    const undecided = ALL_NAMES.filter(([fullName, raw]) => {
      const spec = specOf(fullName);
      return spec !== undefined && spec.subcommands === null && spec.handling === 'any-shard' && raw.flags.includes('write');
    }).map(([fullName]) => fullName);
    expect(undecided, 'keyless write commands sent to any one shard').toEqual([]);
  });

  it('no command that changes its connection\'s state runs on a shared backend connection', () => {
    const shared = CONNECTION_STATE.filter((fullName) => {
      const spec = specOf(fullName);
      return spec !== undefined && ON_SHARED_CONNECTION.includes(spec.handling);
    }).map((fullName) => `${fullName} (${specOf(fullName)!.handling})`);
    expect(shared, 'connection-state commands on a connection every client shares').toEqual([]);
  });
});
