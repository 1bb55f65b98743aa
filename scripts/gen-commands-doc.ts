import * as fs from 'node:fs';
import * as path from 'node:path';
import commandData from '@ioredis/commands/built/commands.json';
import { allCommands } from '../src/commands/command-table';
import type { CommandSpec, Handling, Merge } from '../src/commands/handling';

/**
 * Writes docs/commands.md from the proxy's own command table (src/commands/command-table.ts),
 * so the page cannot drift from what the proxy does. Everything on the page is read from code:
 * - each command's handling, merge, key positions, flags and refusal note from the table;
 * - the explanation of each handling and merge from their JSDoc in src/commands/handling.ts;
 * - Redis's own routing tips (request_policy / response_policy) from @ioredis/commands;
 * - the CONFIG SET allow-list and the handlings refused inside MULTI from the dispatch sources.
 *
 * Run it with `npm run docs:commands`; `--check` exits 1 when docs/commands.md is out of date.
 * test/unit/commands-doc.test.ts renders the page in memory and fails when the file differs.
 */

/** Where the page lives, relative to the repository root. */
export const DOC_PATH = 'docs/commands.md';

/** The metadata @ioredis/commands ships, as far as the page reads it. */
interface RawCommand {
  readonly flags: readonly string[];
  readonly requestPolicy?: string;
  readonly responsePolicy?: string;
  readonly subcommands?: Readonly<Record<string, RawCommand>>;
}

/** One documented value of a string-literal union: its name and its JSDoc text. */
export interface UnionMember {
  readonly name: string;
  readonly description: string;
}

/** One row of the page: a top-level command or a `name|sub` subcommand. */
interface Row {
  readonly spec: CommandSpec;
  readonly raw: RawCommand | undefined;
  /** A container command named without a subcommand (COMMAND), which Redis's arity allows. */
  readonly isAlone?: boolean;
}

/**
 * The members of `export type NAME = /** doc *\/ | 'a' | ...` in `source`, in declaration order,
 * each with its JSDoc. Throws when the type is missing or a member has no JSDoc, so an
 * undocumented kind fails the doc test instead of printing an empty line.
 */
export function unionMembers(source: string, typeName: string): UnionMember[] {
  const start = source.indexOf(`export type ${typeName} =`);
  if (start < 0) throw new Error(`type ${typeName} not found`);
  // The union ends at the first `'member';` (JSDoc text may hold semicolons of its own).
  const tail = /'[^'\n]*';/.exec(source.slice(start));
  if (tail === null) throw new Error(`type ${typeName} has no end`);
  const body = source.slice(start, start + tail.index + tail[0].length);
  const members: UnionMember[] = [];
  const pattern = /(?:\/\*\*([\s\S]*?)\*\/\s*)?\|\s*'([^']+)'/g;
  for (const match of body.matchAll(pattern)) {
    const name = match[2]!;
    if (match[1] === undefined) throw new Error(`${typeName} '${name}' has no JSDoc comment to document it by`);
    const description = match[1]
      .split('\n')
      .map((line) => line.replace(/^\s*\*?\s?/, '').trim())
      .filter((line) => line !== '')
      .join(' ');
    members.push({ name, description });
  }
  if (members.length === 0) throw new Error(`type ${typeName} has no members`);
  return members;
}

/** The items of `const NAME ... = [ ... ]` or `new Set([ ... ])` in `source`, as their source text. */
export function arrayItems(source: string, constName: string, itemPattern: RegExp): string[] {
  const start = source.search(new RegExp(`const ${constName}\\b`));
  if (start < 0) throw new Error(`const ${constName} not found`);
  const open = source.indexOf('[', source.indexOf('=', start));
  const closing = /\]\)?;/.exec(source.slice(open));
  const close = closing === null ? -1 : open + closing.index;
  if (open < 0 || close < 0) throw new Error(`const ${constName} is not an array literal`);
  const items = [...source.slice(open + 1, close).matchAll(itemPattern)].map((m) => m[1]!);
  if (items.length === 0) throw new Error(`const ${constName} has no items`);
  return items;
}

/** `config|set` -> `CONFIG SET`, as Redis's documentation names commands. */
function displayName(spec: CommandSpec): string {
  return spec.name.split('|').join(' ').toUpperCase();
}

function keysText(spec: CommandSpec): string {
  if (spec.hasMovableKeys && spec.firstKey <= 0) return 'movable';
  if (spec.firstKey <= 0) return '';
  const last = spec.lastKey < 0 ? (spec.lastKey === -1 ? 'last' : `last${spec.lastKey + 1}`) : String(spec.lastKey);
  const range = spec.lastKey === spec.firstKey ? String(spec.firstKey) : `${spec.firstKey}..${last}`;
  const step = spec.keyStep > 1 ? ` step ${spec.keyStep}` : '';
  return `${range}${step}${spec.hasMovableKeys ? ' + movable' : ''}`;
}

function flagsText(spec: CommandSpec, raw: RawCommand | undefined): string {
  const flags: string[] = [];
  if (spec.isReadonly) flags.push('read');
  if (spec.isWrite) flags.push('write');
  if (raw?.flags.includes('blocking') === true) flags.push('blocking');
  return flags.join(', ');
}

function tipText(raw: RawCommand | undefined): string {
  const tips: string[] = [];
  if (raw?.requestPolicy !== undefined) tips.push(`request_policy:${raw.requestPolicy}`);
  if (raw?.responsePolicy !== undefined) tips.push(`response_policy:${raw.responsePolicy}`);
  return tips.join(' ');
}

/**
 * The table's note (why a command is refused), or, for a keyless command answered by one shard
 * that Redis's tip would send to every shard or node, the fact that the reply covers one shard.
 */
function noteText({ spec, raw, isAlone }: Row): string {
  if (spec.note !== '') return spec.note;
  if (isAlone === true) return 'without a subcommand';
  const policy = raw?.requestPolicy;
  if (spec.handling === 'any-shard' && (policy === 'all_shards' || policy === 'all_nodes')) {
    return `one shard's reply only (Redis sends it to ${policy === 'all_shards' ? 'all shards' : 'all nodes'})`;
  }
  return '';
}

/** Table cells must not break the Markdown row. */
function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

/** Every command and subcommand of the table, with its @ioredis/commands metadata. */
function rows(): { readonly leaves: Row[]; readonly containers: Row[] } {
  const data = commandData as unknown as Readonly<Record<string, RawCommand>>;
  const leaves: Row[] = [];
  const containers: Row[] = [];
  for (const spec of allCommands()) {
    const raw = data[spec.name];
    if (spec.subcommands === null) {
      leaves.push({ spec, raw });
      continue;
    }
    containers.push({ spec, raw });
    // Arity -1 (no argument needed): the container alone is a command of its own, as COMMAND is.
    if (spec.arity === -1) leaves.push({ spec, raw, isAlone: true });
    for (const sub of spec.subcommands.values()) {
      const subName = sub.name.slice(spec.name.length + 1);
      leaves.push({ spec: sub, raw: raw?.subcommands?.[subName] });
    }
  }
  const byName = (a: Row, b: Row): number => (a.spec.name < b.spec.name ? -1 : a.spec.name > b.spec.name ? 1 : 0);
  return { leaves: leaves.sort(byName), containers: containers.sort(byName) };
}

function readSource(root: string, file: string): string {
  return fs.readFileSync(path.join(root, file), 'utf8');
}

/** The whole page. `root` is the repository root (the sources read for the explanations). */
export function renderCommandsDoc(root: string): string {
  const handlingSource = readSource(root, 'src/commands/handling.ts');
  const handlings = unionMembers(handlingSource, 'Handling') as (UnionMember & { name: Handling })[];
  const merges = unionMembers(handlingSource, 'Merge') as (UnionMember & { name: Merge })[];
  const configSetAllowed = arrayItems(readSource(root, 'src/dispatch/dispatcher.ts'), 'CONFIG_SET_ALLOWED', /(\/\^[^\n]*?\$\/)/g);
  const notInTransaction = arrayItems(readSource(root, 'src/dispatch/session-commands.ts'), 'NOT_IN_TRANSACTION', /'([^']+)'/g);
  const packageVersion = (
    JSON.parse(fs.readFileSync(require.resolve('@ioredis/commands/package.json'), 'utf8')) as { version: string }
  ).version;

  const { leaves, containers } = rows();
  const known = new Set(handlings.map((h) => h.name));
  for (const { spec } of leaves) {
    if (!known.has(spec.handling)) throw new Error(`${spec.name}: handling '${spec.handling}' is not documented in handling.ts`);
  }
  const count = (handling: Handling): number => leaves.filter((r) => r.spec.handling === handling).length;
  const topLevel = leaves.filter((r) => !r.spec.name.includes('|') && r.isAlone !== true).length;
  const subcommandCount = leaves.filter((r) => r.spec.name.includes('|')).length;

  const out: string[] = [];
  out.push('# Commands through slotproxy');
  out.push('');
  out.push('<!-- Generated by `npm run docs:commands` (scripts/gen-commands-doc.ts) from src/commands/command-table.ts. Do not edit by hand: test/unit/commands-doc.test.ts fails when this page is out of date. -->');
  out.push('');
  out.push(
    `Every command and subcommand that \`@ioredis/commands\` ${packageVersion} knows (${topLevel} commands without subcommands, ` +
      `${subcommandCount} subcommands of ${containers.length} container commands), and what the proxy does with it. ` +
      'The aim: a command either gives the reply one Redis would give, or is refused with a clear error. ' +
      'A command that is not in this list is answered `ERR unknown command`, as Redis does.',
  );
  out.push('');
  out.push('Conventions used in the tables:');
  out.push('');
  out.push('- **keys**: the argument positions the proxy routes by (`1..last step 2` is MSET\'s key-value pairs; `movable` means keys are found by parsing the arguments, as EVAL\'s numkeys or XREAD\'s STREAMS).');
  out.push('- **same slot**: a command routed by its keys needs them all in one hash slot (use `{hash tags}`); otherwise it is answered `-CROSSSLOT Keys in request don\'t hash to the same slot`, as Redis Cluster does. It is never sent silently to one shard.');
  out.push('- **Redis tip**: Redis\'s own `request_policy` / `response_policy` for the command, for comparison with the handling chosen here.');
  out.push('');
  out.push('## Kinds of handling');
  out.push('');
  out.push('| handling | commands | what the proxy does |');
  out.push('|---|---:|---|');
  for (const h of handlings) out.push(`| [\`${h.name}\`](#${h.name}) | ${count(h.name)} | ${cell(h.description)} |`);
  out.push('');
  out.push('## Merges');
  out.push('');
  out.push('How the replies of a `split` or `broadcast` command become one reply:');
  out.push('');
  out.push('| merge | meaning |');
  out.push('|---|---|');
  for (const m of merges) out.push(`| \`${m.name}\` | ${cell(m.description)} |`);
  out.push('');
  out.push('## Rules that apply across kinds');
  out.push('');
  out.push(
    '- **Transactions**: MULTI ... EXEC is queued by the proxy and run on the shard owning the slot of its keys; a queued command ' +
      'for another slot is answered CROSSSLOT and EXEC then answers EXECABORT. These handlings cannot be queued inside MULTI ' +
      `(the command is answered with an error and EXEC aborts): ${notInTransaction.map((h) => `\`${h}\``).join(', ')}, ` +
      'and `local` commands other than PING and ECHO.',
  );
  out.push(
    `- **CONFIG SET** applies only parameters matching this allow-list (anything else is refused with ` +
      `\`ERR CONFIG SET parameter 'x' is not allowed through slotproxy\`): ${configSetAllowed.map((p) => `\`${p}\``).join(', ')}.`,
  );
  out.push(
    '- **SORT / SORT_RO**: the keys are the sorted key and the STORE destination. As in Redis Cluster (7.4), a BY pattern ' +
      "with `*` or a GET pattern other than `#` must hash to the sorted key's slot (a hash tag); otherwise it is refused with " +
      "`ERR BY (GET) option of SORT denied in Cluster mode when keys formed by the pattern may be in different slots.` " +
      '`BY nosort` (no `*`) and `GET #` are always allowed.',
  );
  out.push(
    `- **Container commands** (${containers.map((r) => `\`${displayName(r.spec)}\``).join(', ')}) are looked up by their subcommand, ` +
      'listed below as `CONTAINER SUB`; an unknown subcommand is answered `ERR unknown subcommand`. Named alone, a container is ' +
      "answered Redis's arity error, unless Redis's arity allows it alone (arity -1, as COMMAND): then it is listed in its own section.",
  );
  out.push('');

  for (const h of handlings) {
    const group = leaves.filter((r) => r.spec.handling === h.name);
    out.push(`## ${h.name}`);
    out.push('');
    out.push(`${h.description} (${group.length} command${group.length === 1 ? '' : 's'})`);
    out.push('');
    if (group.length === 0) {
      out.push('_No command has this handling._');
      out.push('');
      continue;
    }
    const withMerge = h.name === 'split' || h.name === 'broadcast';
    const withNote = group.some((r) => noteText(r) !== '');
    const header = ['command', 'keys', 'flags'];
    if (withMerge) header.push('merge');
    if (withNote) header.push('note');
    header.push('Redis tip');
    out.push(`| ${header.join(' | ')} |`);
    out.push(`|${header.map(() => '---').join('|')}|`);
    for (const row of group) {
      const { spec, raw } = row;
      const cells = [`\`${displayName(spec)}\``, keysText(spec), flagsText(spec, raw)];
      if (withMerge) cells.push(spec.merge === null ? '' : `\`${spec.merge}\``);
      if (withNote) cells.push(noteText(row));
      cells.push(tipText(raw));
      out.push(`| ${cells.map(cell).join(' | ')} |`);
    }
    out.push('');
  }
  return out.join('\n');
}

function main(argv: readonly string[]): number {
  const root = process.cwd();
  const target = path.join(root, DOC_PATH);
  const text = renderCommandsDoc(root);
  if (argv.includes('--check')) {
    const current = fs.existsSync(target) ? fs.readFileSync(target, 'utf8') : '';
    if (current === text) return 0;
    process.stderr.write(`${DOC_PATH} is out of date: run \`npm run docs:commands\`\n`);
    return 1;
  }
  fs.writeFileSync(target, text);
  process.stdout.write(`wrote ${DOC_PATH}\n`);
  return 0;
}

// Run as a script (npm run docs:commands), not when a test imports the renderer.
if (typeof require !== 'undefined' && typeof module !== 'undefined' && require.main === module) {
  process.exitCode = main(process.argv.slice(2));
}
