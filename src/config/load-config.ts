import { readFileSync } from 'node:fs';
import * as nodePath from 'node:path';

import { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument, type Document } from 'yaml';

import { AddressError, addressKey, formatAddress, parseAddress } from './address';
import type { Address, LogLevel, NoReplicaWrites, ProxyConfig, ReadFrom, ShardConfig } from './config-types';

/** Redis Cluster's hash slot count; slots are 0..SLOT_COUNT-1. */
const SLOT_COUNT = 16384;
const MAX_SLOT = SLOT_COUNT - 1;

/** Longest delay `setTimeout` honours; longer ones fire at once, so a huge timeout would mean none. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Every setting but the topology, at its documented default. */
export const DEFAULT_SETTINGS = {
  listen: { host: '127.0.0.1', port: 7000 },
  metrics: null,
  admin: null,
  watchConfig: false,
  migrateBatchKeys: 50,
  migrateSlotsInFlight: 192,
  migrateKeysPerSecond: 12000,
  nodeTimeoutMs: 5000,
  stateFile: null,
  connectionsPerNode: 1,
  connectTimeoutMs: 1000,
  commandTimeoutMs: 0,
  failoverWaitMs: 5000,
  readFrom: 'primary',
  minReplicaAcks: 0,
  replicaAckTimeoutMs: 1000,
  noReplicaWrites: 'refuse',
  migrateTimeoutMs: 2000,
  keyMoveWaitMs: 30000,
  workers: 1,
  backendPassword: null,
  logLevel: 'info',
} as const satisfies Omit<ProxyConfig, 'shards' | 'configFile'>;

const NO_REPLICA_WRITES_VALUES = ['refuse', 'accept'] as const satisfies readonly NoReplicaWrites[];
const READ_FROM_VALUES = ['primary', 'preferReplica', 'replica'] as const satisfies readonly ReadFrom[];
const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const satisfies readonly LogLevel[];

const TOP_LEVEL_KEYS = [
  'listen',
  'metrics',
  'admin',
  'watchConfig',
  'migrateBatchKeys',
  'migrateSlotsInFlight',
  'migrateKeysPerSecond',
  'nodeTimeoutMs',
  'stateFile',
  'connectionsPerNode',
  'connectTimeoutMs',
  'commandTimeoutMs',
  'failoverWaitMs',
  'readFrom',
  'minReplicaAcks',
  'replicaAckTimeoutMs',
  'noReplicaWrites',
  'migrateTimeoutMs',
  'keyMoveWaitMs',
  'workers',
  'backendPassword',
  'logLevel',
  'shards',
] as const;
const SHARD_KEYS = ['name', 'primary', 'replicas', 'slots'] as const;

/**
 * An invalid config file. The message reads `file:line: yaml.path: what is wrong`, so editors
 * and terminals can jump to the line.
 */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';

  /** The file name as given to the loader. */
  readonly sourceName: string;
  /** YAML path of the offending value, like `shards[1].primary`; '' for the whole document. */
  readonly path: string;
  /** 1-based line of the offending value, or null when there is none (empty or unreadable file). */
  readonly line: number | null;
  /** The message without the location prefix. */
  readonly detail: string;

  constructor(sourceName: string, path: string, line: number | null, detail: string) {
    const where = line === null ? sourceName : `${sourceName}:${line}`;
    super(path === '' ? `${where}: ${detail}` : `${where}: ${path}: ${detail}`);
    this.sourceName = sourceName;
    this.path = path;
    this.line = line;
    this.detail = detail;
  }
}

/**
 * The even split `redis-cli --cluster create` makes for `n` primaries, one inclusive range per
 * shard: for 3 shards 0-5460, 5461-10922, 10923-16383. It is reproduced bit for bit (redis-cli
 * accumulates a single-precision float cursor and rounds with lround) so a proxy topology and a
 * native cluster created from the same node list put every key on the same shard. Every shard
 * gets at least one slot and the ranges cover 0..16383 exactly once, in shard order.
 */
export function evenSlotRanges(n: number): [number, number][][] {
  if (!Number.isInteger(n) || n < 1 || n > SLOT_COUNT) {
    throw new RangeError(`evenSlotRanges: shard count must be an integer in 1..${SLOT_COUNT}, got ${n}`);
  }
  const perShard = Math.fround(SLOT_COUNT / n);
  const ranges: [number, number][][] = [];
  let cursor = 0;
  let first = 0;
  for (let i = 0; i < n; i++) {
    // Math.round equals C's lround here: both round halves up for positive numbers.
    let last = Math.round(Math.fround(Math.fround(cursor + perShard) - 1));
    if (i === n - 1) last = MAX_SLOT;
    // redis-cli's float cursor drifts for thousands of shards (from n = 7542 on) and would hand
    // out empty or overlapping ranges. Leaving at least one slot for each shard still to come
    // changes nothing where redis-cli's split is valid and keeps every split a partition.
    last = Math.min(Math.max(last, first), MAX_SLOT - (n - 1 - i));
    ranges.push([[first, last]]);
    first = last + 1;
    cursor = Math.fround(cursor + perShard);
  }
  return ranges;
}

/**
 * Parses and validates a YAML topology.
 * @param sourceName the file name used in error messages
 * @param baseDir the folder `stateFile` is resolved against (the YAML file's folder)
 * @throws ConfigError naming the YAML path and line of the first problem
 */
export function loadConfig(yamlText: string, sourceName: string, baseDir: string): ProxyConfig {
  return new ConfigReader(yamlText, sourceName, baseDir).read();
}

/** Reads and validates the YAML file at `file`; `stateFile` is resolved against its folder. */
export function loadConfigFile(file: string): ProxyConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, '', null, `cannot read the file: ${err instanceof Error ? err.message : String(err)}`);
  }
  return { ...loadConfig(text, file, nodePath.dirname(nodePath.resolve(file))), configFile: nodePath.resolve(file) };
}

/** One value to validate: where it is in the YAML and the node holding it. */
interface Field {
  /** YAML path like `shards[1].primary`. */
  readonly path: string;
  /** The parsed node, or null when the key has no value at all. */
  readonly node: unknown;
  /** Line of the mapping key, or of the list item, that holds the value. */
  readonly line: number | null;
}

/** A slot range as written, kept with its location for overlap and coverage errors. */
interface SlotEntry {
  readonly from: number;
  readonly to: number;
  readonly shardIndex: number;
  readonly entryIndex: number;
  readonly field: Field;
}

/** A shard as read, before the cross-shard checks. */
interface ShardDraft {
  readonly field: Field;
  readonly name: string;
  readonly nameField: Field;
  readonly primary: Address;
  readonly primaryField: Field;
  readonly replicas: readonly { readonly address: Address; readonly field: Field }[];
  /** null when the shard leaves `slots` out. */
  readonly slots: readonly SlotEntry[] | null;
}

type Entries<K extends string> = Map<K, Field>;

/** Walks one parsed document; every check fails through `#fail` so errors carry path and line. */
class ConfigReader {
  readonly #sourceName: string;
  readonly #baseDir: string;
  readonly #lines = new LineCounter();
  readonly #doc: Document.Parsed;

  constructor(yamlText: string, sourceName: string, baseDir: string) {
    this.#sourceName = sourceName;
    this.#baseDir = baseDir;
    // prettyErrors would append a code excerpt to the message; we report file:line ourselves.
    this.#doc = parseDocument(yamlText, { lineCounter: this.#lines, prettyErrors: false });
    const syntaxError = this.#doc.errors[0];
    if (syntaxError !== undefined) {
      const line = this.#lines.linePos(syntaxError.pos[0]).line;
      throw new ConfigError(sourceName, '', line, this.#describeSyntaxError(yamlText, syntaxError.code, syntaxError.message, line));
    }
  }

  read(): ProxyConfig {
    const root: Field = { path: '', node: this.#doc.contents, line: this.#lineOf(this.#doc.contents) };
    if (this.#isEmpty(root.node)) this.#fail(root, 'the file is empty; it needs at least "shards"');
    const top = this.#entries(root, TOP_LEVEL_KEYS, 'a mapping of settings');

    const shardsField = top.get('shards');
    if (shardsField === undefined) this.#fail(root, '"shards" is required');

    const listen = this.#optional(top, 'listen', (f) => this.#address(f), DEFAULT_SETTINGS.listen);
    const metrics = this.#optional(top, 'metrics', (f) => this.#nullable(f, (g) => this.#address(g)), DEFAULT_SETTINGS.metrics);
    const admin = this.#optional(top, 'admin', (f) => this.#nullable(f, (g) => this.#address(g)), DEFAULT_SETTINGS.admin);
    const stateFile = this.#optional(
      top,
      'stateFile',
      (f) => this.#nullable(f, (g) => nodePath.resolve(this.#baseDir, this.#string(g))),
      DEFAULT_SETTINGS.stateFile,
    );
    const settings: Omit<ProxyConfig, 'shards' | 'configFile'> = {
      listen,
      metrics,
      admin,
      watchConfig: this.#optional(top, 'watchConfig', (f) => this.#boolean(f), DEFAULT_SETTINGS.watchConfig),
      migrateBatchKeys: this.#optional(top, 'migrateBatchKeys', (f) => this.#integer(f, 1, 10_000), DEFAULT_SETTINGS.migrateBatchKeys),
      migrateSlotsInFlight: this.#optional(top, 'migrateSlotsInFlight', (f) => this.#integer(f, 1, SLOT_COUNT), DEFAULT_SETTINGS.migrateSlotsInFlight),
      migrateKeysPerSecond: this.#optional(top, 'migrateKeysPerSecond', (f) => this.#integer(f, 0, 10_000_000), DEFAULT_SETTINGS.migrateKeysPerSecond),
      nodeTimeoutMs: this.#optional(top, 'nodeTimeoutMs', (f) => this.#integer(f, 1, MAX_TIMER_MS), DEFAULT_SETTINGS.nodeTimeoutMs),
      stateFile,
      connectionsPerNode: this.#optional(top, 'connectionsPerNode', (f) => this.#integer(f, 1, 64), DEFAULT_SETTINGS.connectionsPerNode),
      connectTimeoutMs: this.#optional(top, 'connectTimeoutMs', (f) => this.#integer(f, 1, MAX_TIMER_MS), DEFAULT_SETTINGS.connectTimeoutMs),
      commandTimeoutMs: this.#optional(top, 'commandTimeoutMs', (f) => this.#integer(f, 0, MAX_TIMER_MS), DEFAULT_SETTINGS.commandTimeoutMs),
      failoverWaitMs: this.#optional(top, 'failoverWaitMs', (f) => this.#integer(f, 0, MAX_TIMER_MS), DEFAULT_SETTINGS.failoverWaitMs),
      readFrom: this.#optional(top, 'readFrom', (f) => this.#oneOf(f, READ_FROM_VALUES), DEFAULT_SETTINGS.readFrom),
      minReplicaAcks: this.#optional(top, 'minReplicaAcks', (f) => this.#integer(f, 0, 16), DEFAULT_SETTINGS.minReplicaAcks),
      replicaAckTimeoutMs: this.#optional(top, 'replicaAckTimeoutMs', (f) => this.#integer(f, 1, MAX_TIMER_MS), DEFAULT_SETTINGS.replicaAckTimeoutMs),
      noReplicaWrites: this.#optional(top, 'noReplicaWrites', (f) => this.#oneOf(f, NO_REPLICA_WRITES_VALUES), DEFAULT_SETTINGS.noReplicaWrites),
      migrateTimeoutMs: this.#optional(top, 'migrateTimeoutMs', (f) => this.#integer(f, 1, MAX_TIMER_MS), DEFAULT_SETTINGS.migrateTimeoutMs),
      keyMoveWaitMs: this.#optional(top, 'keyMoveWaitMs', (f) => this.#integer(f, 1, MAX_TIMER_MS), DEFAULT_SETTINGS.keyMoveWaitMs),
      workers: this.#optional(top, 'workers', (f) => this.#integer(f, 1, 64), DEFAULT_SETTINGS.workers),
      backendPassword: this.#optional(top, 'backendPassword', (f) => this.#nullable(f, (g) => this.#password(g)), DEFAULT_SETTINGS.backendPassword),
      logLevel: this.#optional(top, 'logLevel', (f) => this.#oneOf(f, LOG_LEVELS), DEFAULT_SETTINGS.logLevel),
    };

    const drafts = this.#items(shardsField, 'a list of shards').map((f, i) => this.#shard(f, i));
    if (drafts.length === 0) this.#fail(shardsField, 'must list at least one shard');
    this.#checkNames(drafts);
    this.#checkAddresses(drafts, top, listen, metrics, admin);
    const slots = this.#assignSlots(drafts, shardsField);

    const shards: ShardConfig[] = drafts.map((d, i) => ({
      name: d.name,
      primary: d.primary,
      replicas: d.replicas.map((r) => r.address),
      slots: slots[i] ?? [],
    }));
    return { ...settings, shards, configFile: null };
  }

  #shard(field: Field, index: number): ShardDraft {
    const entries = this.#entries(field, SHARD_KEYS, 'a shard mapping with name and primary');
    const nameField = this.#required(entries, 'name', field);
    const primaryField = this.#required(entries, 'primary', field);
    const replicasField = entries.get('replicas');
    const slotsField = entries.get('slots');
    return {
      field,
      name: this.#string(nameField),
      nameField,
      primary: this.#address(primaryField),
      primaryField,
      replicas:
        replicasField === undefined || this.#isEmpty(replicasField.node)
          ? []
          : this.#items(replicasField, 'a list of host:port').map((f) => ({ address: this.#address(f), field: f })),
      slots:
        slotsField === undefined
          ? null
          : this.#items(slotsField, 'a list of slots or slot ranges like "0-5460"').map((f, entryIndex) =>
              this.#slotEntry(f, index, entryIndex),
            ),
    };
  }

  #slotEntry(field: Field, shardIndex: number, entryIndex: number): SlotEntry {
    const node = field.node;
    let from: number;
    let to: number;
    if (isScalar(node) && typeof node.value === 'number') {
      if (!Number.isInteger(node.value)) this.#fail(field, `${this.#show(node)} is not a whole slot number`);
      from = to = node.value;
    } else if (isScalar(node) && typeof node.value === 'string') {
      const match = /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/.exec(node.value);
      if (match === null) this.#fail(field, `${JSON.stringify(node.value)} is not a slot or slot range like "0-5460"`);
      from = Number(match[1]);
      to = match[2] === undefined ? from : Number(match[2]);
    } else {
      this.#fail(field, `${this.#show(node)} is not a slot or slot range like "0-5460"`);
    }
    for (const slot of [from, to]) {
      if (slot < 0 || slot > MAX_SLOT) this.#fail(field, `slot ${slot} is out of range 0..${MAX_SLOT}`);
    }
    if (from > to) this.#fail(field, `range ${from}-${to} ends before it starts`);
    return { from, to, shardIndex, entryIndex, field };
  }

  #checkNames(drafts: readonly ShardDraft[]): void {
    const seen = new Map<string, ShardDraft>();
    for (const draft of drafts) {
      const earlier = seen.get(draft.name);
      if (earlier !== undefined) {
        this.#fail(draft.nameField, `shard name ${JSON.stringify(draft.name)} is already used by ${earlier.field.path}`);
      }
      seen.set(draft.name, draft);
    }
  }

  /**
   * Two shards sharing a node would replicate into each other, and the proxy listening on a
   * node's own address would loop to itself, so every address appears once.
   */
  #checkAddresses(
    drafts: readonly ShardDraft[],
    top: Entries<(typeof TOP_LEVEL_KEYS)[number]>,
    listen: Address,
    metrics: Address | null,
    admin: Address | null,
  ): void {
    const seen = new Map<string, string>();
    const claim = (address: Address, field: Field, owner: string): void => {
      const key = addressKey(address);
      const earlier = seen.get(key);
      if (earlier !== undefined) this.#fail(field, `${formatAddress(address)} is already used by ${earlier}`);
      seen.set(key, owner);
    };
    const listenField = top.get('listen');
    seen.set(addressKey(listen), listenField === undefined ? 'listen (the default)' : 'listen');
    const metricsField = top.get('metrics');
    if (metrics !== null && metricsField !== undefined) claim(metrics, metricsField, 'metrics');
    const adminField = top.get('admin');
    if (admin !== null && adminField !== undefined) claim(admin, adminField, 'admin');
    for (const draft of drafts) {
      claim(draft.primary, draft.primaryField, `${draft.primaryField.path} (${draft.name})`);
      for (const replica of draft.replicas) claim(replica.address, replica.field, `${replica.field.path} (${draft.name})`);
    }
  }

  /** Checks the slot lists and returns each shard's normalized ranges, in shard order. */
  #assignSlots(drafts: readonly ShardDraft[], shardsField: Field): (readonly [number, number])[][] {
    const withSlots = drafts.filter((d) => d.slots !== null);
    if (withSlots.length === 0) {
      if (drafts.length > SLOT_COUNT) this.#fail(shardsField, `${drafts.length} shards cannot each own a slot; at most ${SLOT_COUNT}`);
      return evenSlotRanges(drafts.length);
    }
    const example = withSlots[0];
    const lacking = drafts.find((d) => d.slots === null);
    if (example !== undefined && lacking !== undefined) {
      this.#fail(
        { ...lacking.field, path: `${lacking.field.path}.slots` },
        `is missing, but ${example.field.path} (${example.name}) lists slots; give slots for every shard or for none`,
      );
    }

    const entries = drafts.flatMap((d) => d.slots ?? []);
    entries.sort((a, b) => a.from - b.from || a.shardIndex - b.shardIndex || a.entryIndex - b.entryIndex);
    this.#checkOverlap(entries, drafts);
    this.#checkCoverage(entries, shardsField);

    return drafts.map((d) => {
      // Overlaps are rejected above, so after sorting only touching ranges can merge.
      const sorted = [...(d.slots ?? [])].sort((a, b) => a.from - b.from);
      const merged: [number, number][] = [];
      for (const entry of sorted) {
        const last = merged[merged.length - 1];
        if (last !== undefined && entry.from === last[1] + 1) last[1] = entry.to;
        else merged.push([entry.from, entry.to]);
      }
      return merged;
    });
  }

  /**
   * Sweeps the ranges sorted by start. The first one starting inside the widest range seen so
   * far starts at the lowest overlapping slot, so that is the slot reported.
   */
  #checkOverlap(sorted: readonly SlotEntry[], drafts: readonly ShardDraft[]): void {
    let widest: SlotEntry | undefined;
    for (const entry of sorted) {
      if (widest !== undefined && entry.from <= widest.to) {
        // Point at whichever of the two comes later in the file: that is the one that collides.
        const [first, second] = isBefore(widest, entry) ? [widest, entry] : [entry, widest];
        const firstName = drafts[first.shardIndex]?.name ?? '';
        const secondName = drafts[second.shardIndex]?.name ?? '';
        this.#fail(
          second.field,
          first.shardIndex === second.shardIndex
            ? `slot ${entry.from} is listed twice for ${secondName} (also in ${first.field.path})`
            : `slot ${entry.from} is owned by both ${firstName} and ${secondName} (also in ${first.field.path})`,
        );
      }
      if (widest === undefined || entry.to > widest.to) widest = entry;
    }
  }

  #checkCoverage(sorted: readonly SlotEntry[], shardsField: Field): void {
    let next = 0;
    for (const entry of sorted) {
      if (entry.from > next) this.#fail(shardsField, describeUnowned(next, entry.from - 1));
      next = Math.max(next, entry.to + 1);
    }
    if (next <= MAX_SLOT) this.#fail(shardsField, describeUnowned(next, MAX_SLOT));
  }

  // ---- field readers ----

  /** The mapping's entries by key; unknown keys fail so a typo never silently means "default". */
  #entries<K extends string>(field: Field, allowed: readonly K[], expected: string): Entries<K> {
    const node = this.#deref(field.node);
    if (!isMap(node)) this.#fail(field, `must be ${expected}, not ${this.#show(node)}`);
    const entries: Entries<K> = new Map();
    const prefix = field.path === '' ? '' : `${field.path}.`;
    for (const pair of node.items) {
      const key = this.#deref(pair.key);
      const keyLine = this.#lineOf(key);
      if (!isScalar(key) || typeof key.value !== 'string') {
        this.#fail({ path: field.path, node: key, line: keyLine ?? field.line }, `keys must be plain names, not ${this.#show(key)}`);
      }
      const name = key.value;
      const path = `${prefix}${name}`;
      if (!isOneOf(name, allowed)) {
        const hint = closestName(name, allowed);
        this.#fail({ path, node: key, line: keyLine }, `unknown key${hint === undefined ? '' : ` (did you mean "${hint}"?)`}`);
      }
      // The key's line, not the value's: a block list or mapping starts on the next line, but
      // the path names the key, and that is where a reader looks.
      const value = this.#deref(pair.value);
      entries.set(name, { path, node: value, line: keyLine ?? this.#lineOf(value) });
    }
    return entries;
  }

  #items(field: Field, expected: string): Field[] {
    const node = this.#deref(field.node);
    if (!isSeq(node)) this.#fail(field, `must be ${expected}, not ${this.#show(node)}`);
    return node.items.map((item, i) => {
      const value = this.#deref(item);
      return { path: `${field.path}[${i}]`, node: value, line: this.#lineOf(value) ?? field.line };
    });
  }

  #optional<K extends string, T>(entries: Entries<K>, key: K, read: (field: Field) => T, fallback: T): T {
    const field = entries.get(key);
    return field === undefined ? fallback : read(field);
  }

  #required<K extends string>(entries: Entries<K>, key: K, parent: Field): Field {
    const field = entries.get(key);
    if (field === undefined) this.#fail({ ...parent, path: `${parent.path}.${key}` }, 'is required');
    return field;
  }

  /** An explicit `null`, `~` or empty value turns an optional feature off. */
  #nullable<T>(field: Field, read: (field: Field) => T): T | null {
    return this.#isEmpty(field.node) ? null : read(field);
  }

  #address(field: Field): Address {
    const node = field.node;
    if (!isScalar(node) || node.value === null) this.#fail(field, `must be host:port, not ${this.#show(node)}`);
    const text = typeof node.value === 'string' ? node.value : (node.source ?? String(node.value));
    try {
      return parseAddress(text);
    } catch (err) {
      if (err instanceof AddressError) this.#fail(field, err.message);
      throw err;
    }
  }

  #integer(field: Field, min: number, max: number): number {
    const node = field.node;
    const value = isScalar(node) ? node.value : undefined;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
      this.#fail(field, `must be a whole number in ${min}..${max}, not ${this.#show(node)}`);
    }
    return value;
  }

  #string(field: Field): string {
    const node = field.node;
    if (!isScalar(node) || typeof node.value !== 'string' || node.value === '') {
      this.#fail(field, `must be a non-empty string, not ${this.#show(node)}`);
    }
    return node.value;
  }

  /** A password may look like a number; keep it as written (`0123` stays `0123`). */
  #password(field: Field): string {
    const node = field.node;
    if (isScalar(node) && typeof node.value === 'string' && node.value !== '') return node.value;
    if (isScalar(node) && (typeof node.value === 'number' || typeof node.value === 'boolean') && node.source !== undefined) {
      return node.source;
    }
    // Never echo the value: it may be a real password with a typo in the quoting.
    this.#fail(field, 'must be a non-empty string');
  }

  #boolean(field: Field): boolean {
    const node = field.node;
    const value = isScalar(node) ? node.value : undefined;
    if (typeof value !== 'boolean') this.#fail(field, `must be true or false, not ${this.#show(node)}`);
    return value;
  }

  #oneOf<T extends string>(field: Field, values: readonly T[]): T {
    const node = field.node;
    const value = isScalar(node) ? node.value : undefined;
    if (typeof value !== 'string' || !isOneOf(value, values)) {
      this.#fail(field, `must be one of ${values.join(', ')}, not ${this.#show(node)}`);
    }
    return value;
  }

  // ---- helpers ----

  #fail(field: Field, detail: string): never {
    throw new ConfigError(this.#sourceName, field.path, field.line, detail);
  }

  /** Aliases (`*name`) stand for the anchored node; validate that node. */
  #deref(node: unknown): unknown {
    return isAlias(node) ? (node.resolve(this.#doc) ?? null) : node;
  }

  #isEmpty(node: unknown): boolean {
    return node === null || node === undefined || (isScalar(node) && node.value === null);
  }

  #lineOf(node: unknown): number | null {
    if (node === null || typeof node !== 'object' || !('range' in node)) return null;
    const range: unknown = node.range;
    if (!Array.isArray(range) || typeof range[0] !== 'number') return null;
    return this.#lines.linePos(range[0]).line;
  }

  /** A short rendering of a value for messages. */
  #show(node: unknown): string {
    if (this.#isEmpty(node)) return 'an empty value';
    if (isMap(node)) return 'a mapping';
    if (isSeq(node)) return 'a list';
    if (isScalar(node)) {
      return typeof node.value === 'string' ? JSON.stringify(node.value) : (node.source ?? String(node.value));
    }
    return 'this value';
  }

  #describeSyntaxError(text: string, code: string, message: string, line: number): string {
    if (code === 'MULTIPLE_DOCS') return 'the file must hold one YAML document (found a second "---")';
    // An unquoted [::1]:7001 starts a flow list, and the parser's complaint does not say so.
    const lineText = text.split(/\r?\n/)[line - 1] ?? '';
    const hint = /\[[0-9A-Fa-f:.%]*\]:\d/.test(lineText) ? ' (quote IPv6 addresses: "[::1]:7001")' : '';
    return `YAML syntax error: ${message}${hint}`;
  }
}

function isOneOf<T extends string>(value: string, values: readonly T[]): value is T {
  return (values as readonly string[]).includes(value);
}

function isBefore(a: SlotEntry, b: SlotEntry): boolean {
  return a.shardIndex < b.shardIndex || (a.shardIndex === b.shardIndex && a.entryIndex < b.entryIndex);
}

function describeUnowned(from: number, to: number): string {
  return from === to ? `slot ${from} is not owned by any shard` : `slots ${from}-${to} are not owned by any shard`;
}

/** The allowed name within two edits of `name`, for "did you mean" hints. */
function closestName(name: string, allowed: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const candidate of allowed) {
    const distance = editDistance(name.toLowerCase(), candidate.toLowerCase());
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = (previous[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length] ?? 0;
}
