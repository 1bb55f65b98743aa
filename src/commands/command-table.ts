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
  /** Key positions for a command the metadata calls keyless but the proxy routes by an argument. */
  readonly keys?: { readonly first: number; readonly last: number; readonly step: number };
}

const refused = (note: string): Override => ({ handling: 'refused', note });
const CONTROL = 'would take the backends out of the proxy\'s control';

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
  monitor: { handling: 'local' },
  'config|rewrite': refused(CONTROL),
  'client|kill': { handling: 'local' },
  'client|pause': refused(CONTROL),
  'client|unpause': refused(CONTROL),
  'client|reply': refused('would desynchronise the shared backend connections'),
  'client|tracking': refused('client-side caching is not supported through the proxy'),
  'client|caching': refused('client-side caching is not supported through the proxy'),
  'client|getredir': refused('client-side caching is not supported through the proxy'),
  'client|unblock': refused("would act on the proxy's shared backend connections"),
  'client|list': { handling: 'local' },
  module: refused(CONTROL),
  acl: refused(CONTROL),
  bgsave: refused(CONTROL),
  bgrewriteaof: refused(CONTROL),
  save: refused(CONTROL),
  waitaof: refused('needs AOF fsync tracking per shard (Redis 7.2+)'),
  'restore-asking': refused(CONTROL),
  trimslots: refused('a Redis Cluster slot command; the proxy owns slot placement'),
  'script|debug': refused('puts the connection into the Lua debugger, which a shared connection cannot be'),

  // Transactions: queued in the proxy, run on one shard.
  multi: { handling: 'transaction' },
  exec: { handling: 'transaction' },
  discard: { handling: 'transaction' },
  watch: { handling: 'transaction' },
  unwatch: { handling: 'transaction' },

  // Blocking commands: a connection of the client's own. XREAD/XREADGROUP block only with BLOCK.
  blpop: { handling: 'blocking' },
  brpop: { handling: 'blocking' },
  brpoplpush: { handling: 'blocking' },
  blmove: { handling: 'blocking' },
  blmovem: { handling: 'blocking' },
  blmpop: { handling: 'blocking' },
  bzpopmin: { handling: 'blocking' },
  bzpopmax: { handling: 'blocking' },
  bzmpop: { handling: 'blocking' },
  xread: { handling: 'blocking' },
  xreadgroup: { handling: 'blocking' },
  wait: { handling: 'blocking' },

  // Pub/Sub: channels live on the shard owning the channel name's slot (as Redis 7's sharded
  // Pub/Sub places them), so PUBLISH through the proxy reaches every proxy subscriber once.
  subscribe: { handling: 'pubsub' },
  unsubscribe: { handling: 'pubsub' },
  psubscribe: { handling: 'pubsub' },
  punsubscribe: { handling: 'pubsub' },
  ssubscribe: { handling: 'pubsub' },
  sunsubscribe: { handling: 'pubsub' },
  publish: { handling: 'single', keys: { first: 1, last: 1, step: 1 } },
  'pubsub|channels': { handling: 'broadcast', merge: 'distinct-union' },
  'pubsub|shardchannels': { handling: 'broadcast', merge: 'distinct-union' },
  'pubsub|numsub': { handling: 'broadcast', merge: 'pair-sum' },
  'pubsub|shardnumsub': { handling: 'broadcast', merge: 'pair-sum' },

  // Keyless commands that need every shard, or more than one.
  scan: { handling: 'scan' },
  randomkey: { handling: 'first-non-empty' },
  'script|exists': { handling: 'broadcast', merge: 'logical-and' },
  'script|kill': { handling: 'kill-script' },
  'function|kill': { handling: 'kill-script' },
  'memory|purge': { handling: 'broadcast', merge: 'all-ok' },
  'slowlog|reset': { handling: 'broadcast', merge: 'all-ok' },
  'slowlog|len': { handling: 'broadcast', merge: 'sum' },
  'slowlog|get': { handling: 'broadcast', merge: 'newest-first' },
  'latency|reset': { handling: 'broadcast', merge: 'sum' },
  'latency|latest': { handling: 'broadcast', merge: 'latest-per-event' },
  eval: { handling: 'script' },
  evalsha: { handling: 'script' },
  eval_ro: { handling: 'script' },
  evalsha_ro: { handling: 'script' },
  'config|set': { handling: 'config-set' },
  info: { handling: 'info' },
  role: { handling: 'local' },
  lastsave: { handling: 'any-shard' },
};

/** Subcommand groups where any subcommand not decided above is refused rather than guessed. */
const REFUSE_UNDECIDED_SUBCOMMANDS: ReadonlySet<string> = new Set(['cluster', 'debug', 'module', 'acl']);

function decide(name: string, raw: RawCommand, parent: string | null): Override {
  const override = OVERRIDES[name];
  if (override !== undefined) return override;
  if (parent !== null && REFUSE_UNDECIDED_SUBCOMMANDS.has(parent)) return refused(CONTROL);
  return { handling: 'any-shard' };
}

/**
 * EVAL, EVALSHA and FCALL: Redis gives them no `write` flag, since what a script does is known
 * only as it runs, but they may write, and minReplicaAcks must confirm that as it confirms SET.
 * Their _RO forms carry `readonly` (Redis refuses a write in them) and stay reads.
 */
function runsScriptThatMayWrite(raw: RawCommand): boolean {
  return raw.flags.includes('script_runner') && !raw.flags.includes('readonly');
}

/** Names by spec id, filled as specs are built. */
const namesById: string[] = [];

function buildSpec(name: string, raw: RawCommand, parent: string | null): CommandSpec {
  const hasMovableKeys = raw.flags.includes('movablekeys');
  const hasKeys = raw.keyStart > 0 || hasMovableKeys;
  const decided: Override = hasKeys && OVERRIDES[name] === undefined ? { handling: 'single' } : decide(name, raw, parent);
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
    firstKey: decided.keys?.first ?? raw.keyStart,
    lastKey: decided.keys?.last ?? raw.keyStop,
    keyStep: decided.keys?.step ?? raw.step,
    hasMovableKeys,
    isReadonly: raw.flags.includes('readonly'),
    isWrite: raw.flags.includes('write') || runsScriptThatMayWrite(raw),
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

/** FNV-1a over the bytes with A-Z folded to lowercase. */
function nameHash(buf: Uint8Array, start: number, end: number): number {
  let hash = 0x811c9dc5;
  for (let i = start; i < end; i++) {
    const c = buf[i]!;
    hash = Math.imul(hash ^ (c >= 65 && c <= 90 ? c | 0x20 : c), 0x01000193);
  }
  return hash >>> 0;
}

/** Top-level specs by the hash of their name, for lookups that make no string. */
const BY_HASH: ReadonlyMap<number, readonly CommandSpec[]> = (() => {
  const map = new Map<number, CommandSpec[]>();
  for (const spec of allCommands()) {
    const bytes = Buffer.from(spec.name, 'latin1');
    const hash = nameHash(bytes, 0, bytes.length);
    const list = map.get(hash);
    if (list === undefined) map.set(hash, [spec]);
    else list.push(spec);
  }
  return map;
})();

/**
 * The spec of the command named by `buf[start..end)`, case-insensitively, without building a
 * string: the hot path looks up every request's command name.
 */
export function lookupCommandBytes(buf: Uint8Array, start: number, end: number): CommandSpec | undefined {
  const candidates = BY_HASH.get(nameHash(buf, start, end));
  if (candidates === undefined) return undefined;
  outer: for (const spec of candidates) {
    const name = spec.name;
    if (name.length !== end - start) continue;
    for (let k = 0; k < name.length; k++) {
      const c = buf[start + k]!;
      if ((c >= 65 && c <= 90 ? c | 0x20 : c) !== name.charCodeAt(k)) continue outer;
    }
    return spec;
  }
  return undefined;
}

/** Command names by spec id (subcommands as `name|sub`), for labelling per-command counters. */
export const COMMAND_NAMES: readonly string[] = namesById;

/** The distinct specs (top-level commands), for documentation and tests. */
export function allCommands(): CommandSpec[] {
  const seen = new Set<CommandSpec>();
  for (const spec of COMMAND_TABLE.values()) seen.add(spec);
  return [...seen].sort((a, b) => a.name.localeCompare(b.name));
}
