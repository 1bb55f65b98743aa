import * as dns from 'node:dns';
import { calculateSlot } from '../routing/key-slot';
import Redis from 'ioredis';
import { formatAddress } from '../config/address';
import type { Address, ProxyConfig } from '../config/config-types';
import { ConfigError, loadConfigFile } from '../config/load-config';
import { readStateFile } from '../control/state-file';
import { topologyFromJson } from '../topology/topology-codec';
import type { SlotMigration, Topology } from '../topology/topology';

/**
 * `slotproxy check --config FILE`, like `redis-cli --cluster check`: slot coverage, each node's
 * actual role against the topology, replication links and lag, and keys sitting on a shard that
 * does not own their slot. Prints [OK] / [WARN] / [ERR] lines and a summary; exit code 0 when
 * nothing is wrong (warnings included), 1 on any error, 2 on bad usage.
 *
 * Also home of the node probe `slotproxy create` shares: one short-lived ioredis connection per
 * node that fails fast instead of reconnecting, and INFO parsed into the fields both commands read.
 */

const USAGE = 'Usage: slotproxy check --config FILE\n';
const SLOT_COUNT = 16384;
/** Keys asked for per SCAN call, as the brief and redis-cli's own key scans use. */
const SCAN_COUNT = 1000;
/** A shard's key scan stops here and says so; a check must end even on a huge dataset. */
const SCAN_TIME_LIMIT_MS = 60_000;
/** Misplaced keys quoted per shard; the rest are only counted. */
const MISPLACED_EXAMPLES = 10;
/** Replication lag worth a warning. A busy primary is a few KB ahead at any moment. */
const LAG_WARN_BYTES = 1024 * 1024;
/**
 * A primary pings its replicas every repl-ping-replica-period (10 s by default), so an idle link
 * reports up to ~10 s since the last I/O; twice that is worth a warning.
 */
const LAST_IO_WARN_SECONDS = 20;

// ---------------------------------------------------------------------------------------------
// Node probe (shared with create.ts)

/** Connection settings for control connections to one node. */
export interface ProbeOptions {
  /** AUTH password, or null. */
  readonly password: string | null;
  /** @default 1000 */
  readonly connectTimeoutMs?: number;
  /** @default 5000 */
  readonly commandTimeoutMs?: number;
}

/** A replica as its primary lists it in INFO replication (`slaveN:ip=...,port=...`). */
export interface ConnectedReplica {
  readonly address: Address;
  /** `online`, `wait_bgsave`, `send_bulk`... */
  readonly state: string;
  /** Replication offset the replica last acknowledged. */
  readonly offset: number;
}

/** What INFO says about one node, the fields create and check decide on. */
export interface NodeInfo {
  /** INFO server run_id: equal for two addresses of the same process. */
  readonly runId: string;
  readonly role: 'primary' | 'replica';
  /** The primary a replica follows (master_host:master_port), null for a primary. */
  readonly primary: Address | null;
  /** master_link_status of a replica (`up`/`down`), null for a primary. */
  readonly linkStatus: string | null;
  /** master_last_io_seconds_ago of a replica; -1 while the link is down; null for a primary. */
  readonly lastIoSecondsAgo: number | null;
  /** slave_repl_offset of a replica, null for a primary. */
  readonly replicaOffset: number | null;
  /** master_repl_offset: the node's own replication offset. */
  readonly replOffset: number;
  /** Replicas connected to this node. */
  readonly replicas: readonly ConnectedReplica[];
  /** Key counts of every non-empty database, from INFO keyspace. */
  readonly keyspace: readonly { readonly db: number; readonly keys: number }[];
  /** cluster_enabled:1, a Redis Cluster node. */
  readonly isClusterEnabled: boolean;
}

/** Connects with short timeouts and no reconnection; rejects with the connect error. */
export async function connectNode(address: Address, options: ProbeOptions): Promise<Redis> {
  const redis = new Redis({
    host: address.host,
    port: address.port,
    password: options.password ?? undefined,
    lazyConnect: true,
    enableReadyCheck: false,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: options.connectTimeoutMs ?? 1_000,
    commandTimeout: options.commandTimeoutMs ?? 5_000,
  });
  // Failures surface through the rejected promises; without a listener ioredis prints them.
  redis.on('error', () => undefined);
  try {
    await redis.connect();
  } catch (err) {
    redis.disconnect();
    throw err;
  }
  return redis;
}

/** One connection for `use`, closed afterwards whatever happens. */
export async function withNode<T>(address: Address, options: ProbeOptions, use: (redis: Redis) => Promise<T>): Promise<T> {
  const redis = await connectNode(address, options);
  try {
    return await use(redis);
  } finally {
    redis.disconnect();
  }
}

/** INFO (default sections) parsed into the fields create and check use. */
export async function readNodeInfo(redis: Redis): Promise<NodeInfo> {
  return parseNodeInfo(await redis.info());
}

export function parseNodeInfo(text: string): NodeInfo {
  const fields = new Map<string, string>();
  for (const line of text.split(/\r?\n/)) {
    const colon = line.indexOf(':');
    if (colon > 0 && !line.startsWith('#')) fields.set(line.slice(0, colon), line.slice(colon + 1));
  }
  const isReplica = fields.get('role') === 'slave';
  const replicas: ConnectedReplica[] = [];
  const keyspace: { db: number; keys: number }[] = [];
  for (const [name, value] of fields) {
    if (/^slave\d+$/.test(name)) {
      const parts = new Map(value.split(',').map((kv) => kv.split('=') as [string, string]));
      const host = parts.get('ip') ?? '';
      replicas.push({
        address: { host, port: Number(parts.get('port') ?? 0) },
        state: parts.get('state') ?? '',
        offset: Number(parts.get('offset') ?? 0),
      });
    }
    const db = /^db(\d+)$/.exec(name);
    const keys = /(?:^|,)keys=(\d+)/.exec(value);
    if (db !== null && keys !== null && Number(keys[1]) > 0) keyspace.push({ db: Number(db[1]), keys: Number(keys[1]) });
  }
  const numberOr = (name: string, fallback: number): number => {
    const value = Number(fields.get(name));
    return Number.isFinite(value) ? value : fallback;
  };
  return {
    runId: fields.get('run_id') ?? '',
    role: isReplica ? 'replica' : 'primary',
    primary: isReplica ? { host: fields.get('master_host') ?? '', port: numberOr('master_port', 0) } : null,
    linkStatus: isReplica ? (fields.get('master_link_status') ?? 'unknown') : null,
    lastIoSecondsAgo: isReplica ? numberOr('master_last_io_seconds_ago', -1) : null,
    replicaOffset: isReplica ? numberOr('slave_repl_offset', 0) : null,
    replOffset: numberOr('master_repl_offset', 0),
    replicas,
    keyspace,
    isClusterEnabled: fields.get('cluster_enabled') === '1',
  };
}

/**
 * True when both name the same node: the same text, or hostnames that resolve to a common
 * address (INFO reports the host a replica was pointed at as written, `localhost` or an IP).
 */
export async function isSameAddress(a: Address, b: Address): Promise<boolean> {
  if (a.port !== b.port) return false;
  if (a.host.toLowerCase() === b.host.toLowerCase()) return true;
  try {
    const [left, right] = await Promise.all([dns.promises.lookup(a.host, { all: true }), dns.promises.lookup(b.host, { all: true })]);
    return left.some((x) => right.some((y) => x.address === y.address));
  } catch {
    return false;
  }
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

// ---------------------------------------------------------------------------------------------
// check

export class CheckUsageError extends Error {
  override readonly name = 'CheckUsageError';
}

/** The roles the check expects: the YAML's, or the state file's after a failover. */
interface ExpectedShard {
  readonly name: string;
  readonly primary: Address;
  readonly replicas: readonly Address[];
  readonly slots: readonly (readonly [number, number])[];
}

/** Collects the report lines and counts problems. */
class Report {
  errors = 0;
  warnings = 0;

  ok(text: string): void {
    this.#line(`[OK] ${text}`);
  }

  warn(text: string): void {
    this.warnings++;
    this.#line(`[WARN] ${text}`);
  }

  err(text: string): void {
    this.errors++;
    this.#line(`[ERR] ${text}`);
  }

  info(text: string): void {
    this.#line(text);
  }

  #line(text: string): void {
    process.stdout.write(`${text}\n`);
  }
}

export function parseCheckArgs(args: readonly string[]): { readonly config: string } {
  let config: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] ?? '';
    const eq = arg.indexOf('=');
    const name = eq === -1 ? arg : arg.slice(0, eq);
    if (name !== '--config') throw new CheckUsageError(`unknown argument '${arg}'`);
    const value = eq === -1 ? args[++i] : arg.slice(eq + 1);
    if (value === undefined || value === '') throw new CheckUsageError('--config needs a value');
    config = value;
  }
  if (config === undefined) throw new CheckUsageError('--config FILE is required');
  return { config };
}

/** Runs the check; resolves to the exit code. */
export async function runCheck(args: readonly string[]): Promise<number> {
  let file: string;
  try {
    file = parseCheckArgs(args).config;
  } catch (err) {
    if (!(err instanceof CheckUsageError)) throw err;
    process.stderr.write(`slotproxy check: ${err.message}\n${USAGE}`);
    return 2;
  }
  const report = new Report();
  let config: ProxyConfig;
  try {
    config = loadConfigFile(file);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    report.err(`config ${err.message}`);
    return summarize(report);
  }
  report.info(`>>> Checking the slotproxy topology in ${file}`);
  const { shards, migrating } = expectedShards(config, report);
  for (const shard of shards) {
    const slotCount = shard.slots.reduce((sum, [from, to]) => sum + to - from + 1, 0);
    report.info(
      `Shard ${shard.name}: primary ${formatAddress(shard.primary)}, slots ${formatRanges(shard.slots)} (${slotCount} slots), ` +
        `${shard.replicas.length} replica(s)${shard.replicas.length > 0 ? `: ${shard.replicas.map(formatAddress).join(', ')}` : ''}`,
    );
  }

  const slotOwner = checkCoverage(shards, report);
  const probe: ProbeOptions = { password: config.backendPassword, connectTimeoutMs: config.connectTimeoutMs };

  report.info('>>> Checking nodes, roles and replication');
  const primaryConnections = await checkNodes(shards, probe, report);
  try {
    report.info(`>>> Checking that every key sits on the shard owning its slot (SCAN COUNT ${SCAN_COUNT})`);
    await Promise.all(
      shards.map(async (shard, index) => {
        const redis = primaryConnections[index];
        if (redis === null || redis === undefined) {
          report.warn(`${shard.name}: keys not checked, the primary ${formatAddress(shard.primary)} is not usable`);
          return;
        }
        await checkKeyPlacement(shard, index, shards, slotOwner, migrating, redis, report);
      }),
    );
  } finally {
    for (const redis of primaryConnections) redis?.disconnect();
  }
  return summarize(report);
}

function summarize(report: Report): number {
  if (report.errors === 0) {
    report.info(`>>> Summary: healthy${report.warnings > 0 ? ` (${report.warnings} warning(s))` : ''}`);
    return 0;
  }
  report.info(`>>> Summary: ${report.errors} error(s), ${report.warnings} warning(s)`);
  return 1;
}

/** What the check expects: the shards, and the slots whose keys may sit on either of two shards. */
interface Expected {
  readonly shards: readonly ExpectedShard[];
  /** Slots migrating (source and target shard indexes), as the state file has them. */
  readonly migrating: ReadonlyMap<number, SlotMigration>;
}

/**
 * The deployment to expect. Once the proxy has written its state file, that file, not the YAML,
 * says who is primary (after a failover) and who owns which slots (after a reshard, an added or
 * removed shard), as nodes.conf does for a cluster: the running proxy routes by it.
 */
function expectedShards(config: ProxyConfig, report: Report): Expected {
  const fromConfig: ExpectedShard[] = config.shards.map((s) => ({ name: s.name, primary: s.primary, replicas: s.replicas, slots: s.slots }));
  const yamlOnly: Expected = { shards: fromConfig, migrating: new Map() };
  const file = config.stateFile;
  if (file === null) return yamlOnly;
  let topology: Topology;
  try {
    const state = readStateFile(file);
    if (state === null) {
      report.info(`State file ${file}: not written yet, roles and slots as in the YAML`);
      return yamlOnly;
    }
    topology = topologyFromJson(state.topology);
  } catch (err) {
    report.warn(`state file ${file} is not readable (${errorText(err)}); checking the YAML's roles and slots`);
    return yamlOnly;
  }
  report.info(`State file ${file}: roles and slots as the proxy last recorded them (topology epoch ${topology.epoch})`);
  const ranges = topology.slotRanges();
  const shards = topology.shards.map((info, index): ExpectedShard => {
    const yaml = fromConfig.find((shard) => shard.name === info.name);
    if (yaml === undefined) report.info(`  ${info.name}: not in the YAML (added while the proxy ran)`);
    else if (formatAddress(yaml.primary) !== formatAddress(info.primary)) {
      report.info(`  ${info.name}: primary is ${formatAddress(info.primary)} (the YAML says ${formatAddress(yaml.primary)})`);
    }
    return { name: info.name, primary: info.primary, replicas: info.replicas, slots: ranges[index]! };
  });
  for (const shard of fromConfig) {
    if (!shards.some((s) => s.name === shard.name)) report.info(`  ${shard.name}: in the YAML, not in the state file (not taken up by the proxy yet, or removed)`);
  }
  const migrating = topology.migrations;
  if (migrating.size > 0) report.info(`  ${migrating.size} slot(s) migrating: their keys may sit on the source or the target`);
  return { shards, migrating };
}

/** Reports coverage and returns the slot -> shard index table (-1 = unowned). */
function checkCoverage(shards: readonly ExpectedShard[], report: Report): Int32Array {
  const owner = new Int32Array(SLOT_COUNT).fill(-1);
  let overlaps = 0;
  shards.forEach((shard, index) => {
    for (const [from, to] of shard.slots) {
      for (let slot = from; slot <= to; slot++) {
        if (owner[slot] !== -1) overlaps++;
        owner[slot] = index;
      }
    }
  });
  const unowned = owner.reduce((n, o) => n + (o === -1 ? 1 : 0), 0);
  if (unowned === 0 && overlaps === 0) {
    report.ok(`All ${SLOT_COUNT} slots covered.`);
  } else {
    // The loader refuses both, so this only fires if that ever changes.
    if (unowned > 0) report.err(`${unowned} slot(s) are not owned by any shard`);
    if (overlaps > 0) report.err(`${overlaps} slot(s) are owned by more than one shard`);
  }
  return owner;
}

/** Probe result of one node: its connection (kept for primaries) and INFO, or why it failed. */
type Probe = { readonly redis: Redis; readonly info: NodeInfo } | { readonly error: string };

async function probe(address: Address, options: ProbeOptions): Promise<Probe> {
  let redis: Redis;
  try {
    redis = await connectNode(address, options);
  } catch (err) {
    return { error: errorText(err) };
  }
  try {
    return { redis, info: await readNodeInfo(redis) };
  } catch (err) {
    redis.disconnect();
    return { error: errorText(err) };
  }
}

/**
 * Reachability, roles and links of every node. Returns each shard's primary connection when
 * that node is reachable and really a primary (for the key scan), else null.
 */
async function checkNodes(shards: readonly ExpectedShard[], options: ProbeOptions, report: Report): Promise<(Redis | null)[]> {
  const primaries = await Promise.all(shards.map((shard) => probe(shard.primary, options)));
  const replicas = await Promise.all(shards.map((shard) => Promise.all(shard.replicas.map((r) => probe(r, options)))));
  const kept: (Redis | null)[] = [];

  for (const [index, shard] of shards.entries()) {
    const primaryProbe = primaries[index]!;
    const primaryName = formatAddress(shard.primary);
    let primaryInfo: NodeInfo | null = null;
    if ('error' in primaryProbe) {
      report.err(`${shard.name} primary ${primaryName} is not reachable: ${primaryProbe.error}`);
      kept.push(null);
    } else {
      primaryInfo = primaryProbe.info;
      if (primaryInfo.role === 'primary') {
        report.ok(`${shard.name} primary ${primaryName} is reachable and is a primary`);
        kept.push(primaryProbe.redis);
      } else {
        report.err(
          `${shard.name} primary ${primaryName} is a replica of ${formatAddress(primaryInfo.primary!)}, expected a primary`,
        );
        primaryProbe.redis.disconnect();
        kept.push(null);
      }
      if (primaryInfo.isClusterEnabled) report.err(`${shard.name} primary ${primaryName} runs in Redis Cluster mode`);
      for (const { db, keys } of primaryInfo.keyspace) {
        if (db !== 0) report.warn(`${shard.name} primary ${primaryName} holds ${keys} key(s) in db ${db}, which the proxy does not serve`);
      }
      await reportUnexpectedReplicas(shard, primaryInfo, report);
    }

    for (const [j, address] of shard.replicas.entries()) {
      const replicaProbe = replicas[index]![j]!;
      const name = `${shard.name} replica ${formatAddress(address)}`;
      if ('error' in replicaProbe) {
        report.err(`${name} is not reachable: ${replicaProbe.error}`);
        continue;
      }
      replicaProbe.redis.disconnect();
      const info = replicaProbe.info;
      if (info.role !== 'replica' || info.primary === null) {
        report.err(`${name} is a primary, expected a replica of ${primaryName}`);
        continue;
      }
      if (!(await isSameAddress(info.primary, shard.primary))) {
        report.err(`${name} replicates ${formatAddress(info.primary)}, expected a replica of ${primaryName}`);
        continue;
      }
      if (info.linkStatus !== 'up') {
        report.err(`${name} replicates ${primaryName} but its link is ${info.linkStatus ?? 'unknown'}`);
        continue;
      }
      const lastIo = info.lastIoSecondsAgo ?? -1;
      const lag = primaryInfo === null ? null : Math.max(0, primaryInfo.replOffset - (info.replicaOffset ?? 0));
      const detail = `link up, lag ${lag === null ? 'unknown' : `${lag} bytes`}, last I/O ${lastIo} s ago`;
      if (lag !== null && lag > LAG_WARN_BYTES) {
        report.warn(`${name} replicates ${primaryName}, ${detail}: more than ${LAG_WARN_BYTES} bytes behind`);
      } else if (lastIo > LAST_IO_WARN_SECONDS) {
        report.warn(`${name} replicates ${primaryName}, ${detail}: no I/O from the primary for over ${LAST_IO_WARN_SECONDS} s`);
      } else {
        report.ok(`${name} replicates ${primaryName}, ${detail}`);
      }
    }
  }
  return kept;
}

/** A replica attached to a primary but missing from the topology gets no reads and no failover. */
async function reportUnexpectedReplicas(shard: ExpectedShard, info: NodeInfo, report: Report): Promise<void> {
  for (const attached of info.replicas) {
    let isKnown = false;
    for (const expected of shard.replicas) {
      if (await isSameAddress(attached.address, expected)) isKnown = true;
    }
    if (!isKnown) {
      report.warn(
        `${shard.name} primary ${formatAddress(shard.primary)} has a replica ${formatAddress(attached.address)} ` +
          `(${attached.state}) that the topology does not list`,
      );
    }
  }
}

/** SCANs one primary and reports keys whose slot another shard owns. */
async function checkKeyPlacement(
  shard: ExpectedShard,
  index: number,
  shards: readonly ExpectedShard[],
  slotOwner: Int32Array,
  migrating: ReadonlyMap<number, SlotMigration>,
  redis: Redis,
  report: Report,
): Promise<void> {
  const deadline = Date.now() + SCAN_TIME_LIMIT_MS;
  let cursor = '0';
  let scanned = 0;
  let misplaced = 0;
  // SCAN may return a key twice while the keyspace rehashes; an example is quoted once.
  const examples = new Set<string>();
  try {
    do {
      const [next, keys] = await redis.scanBuffer(cursor, 'COUNT', SCAN_COUNT);
      cursor = next.toString('latin1');
      scanned += keys.length;
      for (const key of keys) {
        const slot = calculateSlot(key);
        const owner = slotOwner[slot] ?? -1;
        if (owner === index) continue;
        const migration = migrating.get(slot);
        if (migration !== undefined && (migration.from === index || migration.to === index)) continue;
        misplaced++;
        if (examples.size < MISPLACED_EXAMPLES) {
          examples.add(`${JSON.stringify(key.toString('utf8'))} (slot ${slot}, owned by ${shards[owner]?.name ?? 'no shard'})`);
        }
      }
      if (cursor !== '0' && Date.now() >= deadline) {
        report.warn(`${shard.name}: key scan stopped after ${scanned} keys (${SCAN_TIME_LIMIT_MS} ms limit); the rest is not checked`);
        break;
      }
    } while (cursor !== '0');
  } catch (err) {
    report.err(`${shard.name}: key scan of ${formatAddress(shard.primary)} failed after ${scanned} keys: ${errorText(err)}`);
    return;
  }
  if (misplaced === 0) {
    report.ok(`${shard.name}: ${scanned} key(s), all in slots it owns`);
    return;
  }
  report.err(
    `${shard.name}: ${misplaced} of ${scanned} key(s) sit in slots owned by other shards` +
      `${misplaced > examples.size ? ', for example' : ''}: ${[...examples].join(', ')}`,
  );
}

/** `0-5460, 5462` for ranges [[0, 5460], [5462, 5462]]. */
export function formatRanges(ranges: readonly (readonly [number, number])[]): string {
  return ranges.map(([from, to]) => (from === to ? String(from) : `${from}-${to}`)).join(', ');
}
