import { list as commandNames } from '@ioredis/commands';
import commandData from '@ioredis/commands/built/commands.json';
import type { CommandSpec, Handling, Merge } from './handling';

interface RawCommand {
  readonly arity: number;
  readonly flags: readonly string[];
  readonly keyStart: number;
  readonly keyStop: number;
  readonly step: number;
  readonly subcommands?: Readonly<Record<string, RawCommand>>;
}

interface Override {
  readonly handling: Handling;
  readonly merge?: Merge;
  readonly note?: string;
}

const refused = (note: string): Override => ({ handling: 'refused', note });
const CONTROL = 'would take the backends out of the proxy\'s control';
const SESSION = 'needs a connection pinned to the client (not supported yet)';

/**
 * Decisions that the command metadata alone cannot make. Everything not named here follows the
 * rules in `decide()`: commands with keys are `single`, keyless ones `any-shard`.
 */
const OVERRIDES: Readonly<Record<string, Override>> = {
  // The six split commands of the core (Twemproxy's fragmentation).
  mget: { handling: 'split', merge: 'mget' },
  mset: { handling: 'split', merge: 'all-ok' },
  del: { handling: 'split', merge: 'sum' },
  unlink: { handling: 'split', merge: 'sum' },
  exists: { handling: 'split', merge: 'sum' },
  touch: { handling: 'split', merge: 'sum' },

  // Broadcast to every shard.
  dbsize: { handling: 'broadcast', merge: 'sum' },
  keys: { handling: 'broadcast', merge: 'union' },
  flushall: { handling: 'broadcast', merge: 'all-ok' },
  flushdb: { handling: 'broadcast', merge: 'all-ok' },
  'script|load': { handling: 'broadcast', merge: 'first' },
  'script|flush': { handling: 'broadcast', merge: 'all-ok' },
  'function|load': { handling: 'broadcast', merge: 'first' },
  'function|delete': { handling: 'broadcast', merge: 'all-ok' },
  'function|flush': { handling: 'broadcast', merge: 'all-ok' },
  'function|restore': { handling: 'broadcast', merge: 'all-ok' },
  'config|resetstat': { handling: 'broadcast', merge: 'all-ok' },

  // The proxy answers these itself.
  ping: { handling: 'local' },
  echo: { handling: 'local' },
  quit: { handling: 'local' },
  hello: { handling: 'local' },
  select: { handling: 'local' },
  reset: { handling: 'local' },
  readonly: { handling: 'local' },
  readwrite: { handling: 'local' },
  auth: { handling: 'local' },
  asking: { handling: 'local' },
  'client|setname': { handling: 'local' },
  'client|getname': { handling: 'local' },
  'client|id': { handling: 'local' },
  'client|info': { handling: 'local' },
  'client|setinfo': { handling: 'local' },
  'client|no-evict': { handling: 'local' },
  'client|no-touch': { handling: 'local' },
  'cluster|info': { handling: 'local' },
  'cluster|keyslot': { handling: 'local' },
  'cluster|myid': { handling: 'local' },
  'cluster|myshardid': { handling: 'local' },
  'cluster|slots': { handling: 'local' },
  'cluster|shards': { handling: 'local' },
  'cluster|nodes': { handling: 'local' },

  // Refused: the backends are the proxy's to control.
  shutdown: refused(CONTROL),
  replicaof: refused(CONTROL),
  slaveof: refused(CONTROL),
  failover: refused(CONTROL),
  migrate: refused(CONTROL),
  sync: refused(CONTROL),
  psync: refused(CONTROL),
  replconf: refused(CONTROL),
  debug: refused(CONTROL),
  move: refused('moves keys between databases; the proxy serves database 0 only'),
  swapdb: refused('swaps databases; the proxy serves database 0 only'),
  monitor: refused('would stream one shard only'),
  'config|set': refused('not supported yet'),
  'config|rewrite': refused(CONTROL),
  'client|kill': refused('would act on the proxy\'s shared backend connections'),
  'client|pause': refused(CONTROL),
  'client|unpause': refused(CONTROL),
  'client|reply': refused('would desynchronise the shared backend connections'),
  'client|tracking': refused('needs a connection pinned to the client (not supported yet)'),
  'client|caching': refused('needs a connection pinned to the client (not supported yet)'),
  'client|unblock': refused('would act on the proxy\'s shared backend connections'),
  'client|getredir': refused('needs a connection pinned to the client (not supported yet)'),
  'client|list': refused('would list the proxy\'s shared backend connections'),
  module: refused(CONTROL),
  acl: refused(CONTROL),
  bgsave: refused(CONTROL),
  bgrewriteaof: refused(CONTROL),
  save: refused(CONTROL),
  waitaof: refused(SESSION),
  // Transactions, blocking commands and pub/sub change the state of the connection they run on;
  // on a shared connection they would disturb other clients.
  multi: refused(SESSION),
  exec: refused(SESSION),
  discard: refused(SESSION),
  watch: refused(SESSION),
  unwatch: refused(SESSION),
  wait: refused(SESSION),
  blpop: refused(SESSION),
  brpop: refused(SESSION),
  brpoplpush: refused(SESSION),
  blmove: refused(SESSION),
  blmovem: refused(SESSION),
  blmpop: refused(SESSION),
  bzpopmin: refused(SESSION),
  bzpopmax: refused(SESSION),
  bzmpop: refused(SESSION),
  subscribe: refused(SESSION),
  unsubscribe: refused(SESSION),
  psubscribe: refused(SESSION),
  punsubscribe: refused(SESSION),
  ssubscribe: refused(SESSION),
  sunsubscribe: refused(SESSION),
  'restore-asking': refused(CONTROL),
};

/** Subcommand groups where any subcommand not decided above is refused rather than guessed. */
const REFUSE_UNDECIDED_SUBCOMMANDS: ReadonlySet<string> = new Set(['cluster', 'debug', 'module', 'acl']);

function decide(name: string, raw: RawCommand, parent: string | null): Override {
  const override = OVERRIDES[name];
  if (override !== undefined) return override;
  if (parent !== null && REFUSE_UNDECIDED_SUBCOMMANDS.has(parent)) return refused(CONTROL);
  return { handling: 'any-shard' };
}

/** Names by spec id, filled as specs are built. */
const namesById: string[] = [];

function buildSpec(name: string, raw: RawCommand, parent: string | null): CommandSpec {
  const hasMovableKeys = raw.flags.includes('movablekeys');
  const hasKeys = raw.keyStart > 0 || hasMovableKeys;
  const decided = hasKeys && OVERRIDES[name] === undefined ? { handling: 'single' as const } : decide(name, raw, parent);
  let subcommands: Map<string, CommandSpec> | null = null;
  if (raw.subcommands !== undefined) {
    subcommands = new Map();
    for (const [sub, subRaw] of Object.entries(raw.subcommands)) {
      subcommands.set(sub, buildSpec(`${name}|${sub}`, subRaw, name));
    }
  }
  const id = namesById.length;
  namesById.push(name);
  return {
    id,
    name,
    handling: decided.handling,
    merge: decided.merge ?? null,
    firstKey: raw.keyStart,
    lastKey: raw.keyStop,
    keyStep: raw.step,
    hasMovableKeys,
    isReadonly: raw.flags.includes('readonly'),
    isWrite: raw.flags.includes('write'),
    arity: raw.arity,
    note: decided.note ?? '',
    subcommands,
  };
}

function buildTable(): ReadonlyMap<string, CommandSpec> {
  const table = new Map<string, CommandSpec>();
  const data = commandData as unknown as Readonly<Record<string, RawCommand>>;
  for (const name of commandNames) {
    const raw = data[name];
    if (raw === undefined) continue;
    const spec = buildSpec(name, raw, null);
    // Both cases, so that the hot path finds most names without lowercasing them.
    table.set(name, spec);
    table.set(name.toUpperCase(), spec);
  }
  return table;
}

/** Every command, by lowercase and by uppercase name. */
export const COMMAND_TABLE: ReadonlyMap<string, CommandSpec> = buildTable();

export function lookupCommand(name: string): CommandSpec | undefined {
  return COMMAND_TABLE.get(name) ?? COMMAND_TABLE.get(name.toLowerCase());
}

/** Command names by spec id (subcommands as `name|sub`), for labelling per-command counters. */
export const COMMAND_NAMES: readonly string[] = namesById;

/** The distinct specs (top-level commands), for documentation and tests. */
export function allCommands(): CommandSpec[] {
  const seen = new Set<CommandSpec>();
  for (const spec of COMMAND_TABLE.values()) seen.add(spec);
  return [...seen].sort((a, b) => a.name.localeCompare(b.name));
}
