import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { AddressError, formatAddress, parseAddress } from '../config/address';
import type { Address } from '../config/config-types';
import { ConfigError, evenSlotRanges, loadConfig } from '../config/load-config';
import { errorText, formatRanges, readNodeInfo, withNode, type NodeInfo, type ProbeOptions } from './check';

/**
 * `slotproxy create ADDR... --replicas N`, like `redis-cli --cluster create`: checks that every
 * node is a blank standalone primary, picks primaries and replicas spread across hosts, runs
 * REPLICAOF, waits for the links, splits the 16384 slots evenly and writes the YAML topology.
 * Nothing is changed on any node until every check has passed and the plan is confirmed; if a
 * link does not come up, the replicas are switched back (REPLICAOF NO ONE) and no YAML is written.
 */

const USAGE = `Usage: slotproxy create HOST:PORT... --replicas N [options]

  --replicas N        replicas per primary (0 for primaries only); the first
                      count/(N+1) nodes become primaries, spread across hosts
  --out FILE          YAML to write (default ./slotproxy.yaml); its state file
                      goes next to it as FILE's name with .state.json
  --listen HOST:PORT  the proxy's address in the YAML (default 127.0.0.1:7000)
  --metrics HOST:PORT the /metrics address in the YAML (default 127.0.0.1:9121)
  --force             go ahead with fewer than 3 primaries, and replace an
                      existing --out file and its state file
  --yes               do not ask for confirmation (required when stdin is not a terminal)
`;

const DEFAULT_OUT = 'slotproxy.yaml';
const DEFAULT_LISTEN: Address = { host: '127.0.0.1', port: 7000 };
const DEFAULT_METRICS: Address = { host: '127.0.0.1', port: 9121 };
const NODE_TIMEOUT_MS = 5000;
/** redis-cli's floor for a cluster, and ours for a sharded deployment worth the name. */
const MIN_PRIMARIES = 3;
/** The nodes are empty, so a first sync takes well under a second; this is the bound. */
const LINK_TIMEOUT_MS = 30_000;
const LINK_POLL_MS = 100;
const PROBE: ProbeOptions = { password: null, connectTimeoutMs: 1_000, commandTimeoutMs: 3_000 };

export class CreateUsageError extends Error {
  override readonly name = 'CreateUsageError';
}

export interface CreateOptions {
  /** The nodes in the order given. */
  readonly nodes: readonly Address[];
  /** Replicas per primary. */
  readonly replicas: number;
  /** Absolute path of the YAML to write. */
  readonly out: string;
  readonly listen: Address;
  readonly metrics: Address;
  /** --force: fewer than 3 primaries, and overwriting --out, are warnings instead of errors. */
  readonly isForced: boolean;
  /** --yes: no confirmation prompt. */
  readonly isConfirmed: boolean;
}

/** One shard of the plan. */
export interface ShardPlan {
  readonly name: string;
  readonly primary: Address;
  readonly replicas: readonly Address[];
  /** Inclusive slot ranges. */
  readonly slots: readonly (readonly [number, number])[];
}

export interface CreatePlan {
  readonly shards: readonly ShardPlan[];
  /** False when some replica shares a host with its primary although the nodes span several hosts. */
  readonly isAntiAffinityMet: boolean;
  /** Nodes beyond primaries x (replicas + 1), added as extra replicas, one per shard in turn. */
  readonly extraReplicas: number;
}

export function parseCreateArgs(args: readonly string[]): CreateOptions {
  const nodes: Address[] = [];
  let replicas: number | undefined;
  let out = DEFAULT_OUT;
  let listen = DEFAULT_LISTEN;
  let metrics = DEFAULT_METRICS;
  let isForced = false;
  let isConfirmed = false;
  const address = (name: string, text: string): Address => {
    try {
      return parseAddress(text);
    } catch (err) {
      if (err instanceof AddressError) throw new CreateUsageError(`${name}: ${err.message}`);
      throw err;
    }
  };
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] ?? '';
    if (!arg.startsWith('--')) {
      nodes.push(address('node', arg));
      continue;
    }
    const eq = arg.indexOf('=');
    const name = eq === -1 ? arg : arg.slice(0, eq);
    if (name === '--force' || name === '--yes') {
      if (eq !== -1) throw new CreateUsageError(`${name} takes no value`);
      if (name === '--force') isForced = true;
      else isConfirmed = true;
      continue;
    }
    if (!['--replicas', '--out', '--listen', '--metrics'].includes(name)) throw new CreateUsageError(`unknown option '${arg}'`);
    const value = eq === -1 ? args[++i] : arg.slice(eq + 1);
    if (value === undefined || value === '') throw new CreateUsageError(`${name} needs a value`);
    switch (name) {
      case '--replicas':
        if (!/^[0-9]+$/.test(value) || Number(value) > 16) throw new CreateUsageError(`--replicas must be a whole number 0..16, got '${value}'`);
        replicas = Number(value);
        break;
      case '--out':
        out = value;
        break;
      case '--listen':
        listen = address('--listen', value);
        break;
      default:
        metrics = address('--metrics', value);
    }
  }
  if (nodes.length === 0) throw new CreateUsageError('give the nodes as HOST:PORT...');
  if (replicas === undefined) throw new CreateUsageError('--replicas N is required (0 for primaries only)');
  const seen = new Set<string>();
  for (const node of nodes) {
    const key = formatAddress(node).toLowerCase();
    if (seen.has(key)) throw new CreateUsageError(`${formatAddress(node)} is listed twice`);
    seen.add(key);
  }
  return { nodes, replicas, out: path.resolve(out), listen, metrics, isForced, isConfirmed };
}

/** Primaries per redis-cli: every group of replicas + 1 nodes makes one shard. */
export function primaryCount(nodeCount: number, replicas: number): number {
  return Math.floor(nodeCount / (replicas + 1));
}

/**
 * Picks primaries and replicas as `redis-cli --cluster create` does: the nodes are interleaved
 * across hosts (one from each host in turn, hosts in order of first appearance), the first
 * count/(replicas+1) become primaries, and each primary takes the first remaining node on
 * another host as its replica, else the first remaining node. Nodes left over become extra
 * replicas, one per shard in turn. Then replicas are swapped between shards until none shares a
 * host with its primary, where the hosts allow it. On one host this keeps the given order:
 * with 6 nodes and one replica, shard i is node i with replica node 3 + i.
 *
 * Unlike redis-cli, whose anti-affinity pass swaps at random, the result is deterministic.
 */
export function planShards(nodes: readonly Address[], replicas: number): CreatePlan {
  const primaries = primaryCount(nodes.length, replicas);
  if (primaries < 1) throw new RangeError(`${nodes.length} node(s) cannot make a shard of 1 primary and ${replicas} replica(s)`);
  const hostOf = (node: Address): string => node.host.toLowerCase();

  const byHost = new Map<string, Address[]>();
  for (const node of nodes) {
    const group = byHost.get(hostOf(node)) ?? [];
    group.push(node);
    byHost.set(hostOf(node), group);
  }
  const interleaved: Address[] = [];
  for (let i = 0; interleaved.length < nodes.length; i++) {
    for (const group of byHost.values()) {
      const node = group[i];
      if (node !== undefined) interleaved.push(node);
    }
  }

  const shardPrimaries = interleaved.slice(0, primaries);
  const remaining = interleaved.slice(primaries);
  const shardReplicas: Address[][] = shardPrimaries.map(() => []);
  const take = (primary: Address): Address | undefined => {
    const elsewhere = remaining.findIndex((node) => hostOf(node) !== hostOf(primary));
    return remaining.splice(elsewhere === -1 ? 0 : elsewhere, 1)[0];
  };
  for (const [i, primary] of shardPrimaries.entries()) {
    for (let j = 0; j < replicas; j++) {
      const node = take(primary);
      if (node !== undefined) shardReplicas[i]!.push(node);
    }
  }
  const extraReplicas = remaining.length;
  for (let i = 0; remaining.length > 0; i = (i + 1) % primaries) {
    const node = take(shardPrimaries[i]!);
    if (node !== undefined) shardReplicas[i]!.push(node);
  }

  // Anti-affinity: swap a replica on its primary's host with one of another shard when neither
  // ends up on its new primary's host. Each swap removes at least one bad pairing, so it ends.
  const isBad = (shard: number, node: Address): boolean => hostOf(node) === hostOf(shardPrimaries[shard]!);
  for (let isSwapped = true; isSwapped; ) {
    isSwapped = false;
    for (let a = 0; a < primaries && !isSwapped; a++) {
      const list = shardReplicas[a]!;
      for (let x = 0; x < list.length && !isSwapped; x++) {
        if (!isBad(a, list[x]!)) continue;
        for (let b = 0; b < primaries && !isSwapped; b++) {
          if (b === a) continue;
          const other = shardReplicas[b]!;
          const y = other.findIndex((node) => !isBad(a, node) && !isBad(b, list[x]!));
          if (y === -1) continue;
          [list[x], other[y]] = [other[y]!, list[x]!];
          isSwapped = true;
        }
      }
    }
  }

  const ranges = evenSlotRanges(primaries);
  const shards = shardPrimaries.map((primary, i) => ({
    name: `s${i + 1}`,
    primary,
    replicas: shardReplicas[i]!,
    slots: ranges[i]!,
  }));
  const isAntiAffinityMet = byHost.size === 1 || shards.every((s, i) => s.replicas.every((r) => !isBad(i, r)));
  return { shards, isAntiAffinityMet, extraReplicas };
}

/** The state file's name next to the YAML: `slotproxy.yaml` -> `slotproxy.state.json`. */
export function stateFileName(out: string): string {
  return `${path.basename(out).replace(/\.ya?ml$/i, '')}.state.json`;
}

/** The YAML `create` writes: the brief's settings, then every shard with its slots spelled out. */
export function renderCreateYaml(plan: CreatePlan, options: Pick<CreateOptions, 'listen' | 'metrics' | 'out' | 'replicas'>, nodes: number): string {
  const quoted = (address: Address): string => (address.host.includes(':') ? JSON.stringify(formatAddress(address)) : formatAddress(address));
  const lines = [
    `# Written by \`slotproxy create\` from ${nodes} nodes with --replicas ${options.replicas}.`,
    '# The 16384 hash slots are split as `redis-cli --cluster create` splits them. Once the proxy',
    '# runs, the state file (not this YAML) records which node of each shard is primary.',
    `listen: ${quoted(options.listen)}`,
    `metrics: ${quoted(options.metrics)}`,
    `nodeTimeoutMs: ${NODE_TIMEOUT_MS}`,
    `stateFile: ${JSON.stringify(stateFileName(options.out))}`,
    'shards:',
  ];
  for (const shard of plan.shards) {
    lines.push(
      `  - name: ${shard.name}`,
      `    primary: ${quoted(shard.primary)}`,
      `    replicas: [${shard.replicas.map(quoted).join(', ')}]`,
      `    slots: [${shard.slots.map(([from, to]) => JSON.stringify(`${from}-${to}`)).join(', ')}]`,
    );
  }
  return `${lines.join('\n')}\n`;
}

/** Lines of output; errors to stderr so a script's stdout holds only the plan and progress. */
const out = {
  info: (text: string): void => void process.stdout.write(`${text}\n`),
  ok: (text: string): void => void process.stdout.write(`[OK] ${text}\n`),
  warn: (text: string): void => void process.stderr.write(`[WARNING] ${text}\n`),
  err: (text: string): void => void process.stderr.write(`[ERR] ${text}\n`),
};

/** Runs `slotproxy create`; resolves to the exit code. */
export async function runCreate(args: readonly string[]): Promise<number> {
  let options: CreateOptions;
  try {
    options = parseCreateArgs(args);
  } catch (err) {
    if (!(err instanceof CreateUsageError)) throw err;
    process.stderr.write(`slotproxy create: ${err.message}\n\n${USAGE}`);
    return 2;
  }
  const { nodes, replicas } = options;
  let problems = 0;

  const primaries = primaryCount(nodes.length, replicas);
  if (primaries < 1) {
    out.err(`${nodes.length} node(s) cannot make even one shard of 1 primary and ${replicas} replica(s).`);
    return 1;
  }
  if (primaries < MIN_PRIMARIES) {
    const text =
      `${nodes.length} nodes with --replicas ${replicas} make only ${primaries} primar${primaries === 1 ? 'y' : 'ies'}; ` +
      `a sharded deployment needs at least ${MIN_PRIMARIES} (${MIN_PRIMARIES * (replicas + 1)} nodes)`;
    if (options.isForced) {
      out.warn(`${text}. Going ahead because of --force.`);
    } else {
      out.err(`${text}. Add nodes, lower --replicas, or pass --force.`);
      problems++;
    }
  }
  const stateFile = path.join(path.dirname(options.out), stateFileName(options.out));
  for (const file of [options.out, stateFile]) {
    if (!fs.existsSync(file)) continue;
    if (options.isForced) {
      out.warn(`${file} exists and will be replaced (--force).`);
    } else {
      out.err(`${file} already exists; pick another --out, remove it, or pass --force to replace it.`);
      problems++;
    }
  }

  out.info(`>>> Checking ${nodes.length} nodes`);
  problems += await checkNodesAreBlank(nodes);
  if (problems > 0) {
    out.err(`Refusing to create: ${problems} problem(s) above. Nothing was changed.`);
    return 1;
  }

  const plan = planShards(nodes, replicas);
  const yamlText = renderCreateYaml(plan, options, nodes.length);
  try {
    // The loader's own checks (listen or metrics on a node's address, ...) before anything changes.
    loadConfig(yamlText, options.out, path.dirname(options.out));
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    out.err(`The YAML would not load: ${err.detail}. Pass --listen / --metrics to move the proxy's addresses. Nothing was changed.`);
    return 1;
  }

  printPlan(plan);
  if (!plan.isAntiAffinityMet) out.warn('Some replicas are on the same host as their primary: there are not enough hosts to avoid it.');
  if (!options.isConfirmed) {
    if (!process.stdin.isTTY) {
      out.err('stdin is not a terminal, so the plan cannot be confirmed: pass --yes. Nothing was changed.');
      return 1;
    }
    if (!(await confirm("Can I set the above configuration? (type 'yes' to accept): "))) {
      out.info('Not confirmed. Nothing was changed.');
      return 1;
    }
  }

  const pairs = plan.shards.flatMap((shard) => shard.replicas.map((replica) => ({ replica, primary: shard.primary })));
  if (pairs.length > 0) {
    out.info(`>>> Sending REPLICAOF to ${pairs.length} replica(s)`);
    const linked = await linkReplicas(pairs);
    if (!linked) {
      await unlinkReplicas(pairs.map((p) => p.replica));
      return 1;
    }
  }

  writeFileAtomically(options.out, yamlText);
  if (options.isForced && fs.existsSync(stateFile)) {
    // A stale state file would win over the new YAML at the next start.
    fs.rmSync(stateFile);
    out.warn(`Removed the old state file ${stateFile}.`);
  }
  out.ok(`Wrote ${options.out}: ${plan.shards.length} shard(s), all 16384 slots covered.`);
  out.info(`Start the proxy with:\n  slotproxy start --config ${options.out}\nand check the deployment with:\n  slotproxy check --config ${options.out}`);
  return 0;
}

/** Reports every node that is unreachable or not a blank standalone primary; returns the count. */
async function checkNodesAreBlank(nodes: readonly Address[]): Promise<number> {
  const results = await Promise.all(
    nodes.map(async (node): Promise<{ readonly info: NodeInfo; readonly dbsize: number } | { readonly error: string }> => {
      try {
        return await withNode(node, PROBE, async (redis) => ({ info: await readNodeInfo(redis), dbsize: await redis.dbsize() }));
      } catch (err) {
        return { error: errorText(err) };
      }
    }),
  );
  let problems = 0;
  const byRunId = new Map<string, Address>();
  for (const [i, result] of results.entries()) {
    const name = formatAddress(nodes[i]!);
    const refuse = (why: string): void => {
      out.err(`Node ${name} ${why}`);
      problems++;
    };
    if ('error' in result) {
      refuse(`is not reachable: ${result.error}`);
      continue;
    }
    const { info, dbsize } = result;
    const keys = info.keyspace.reduce((sum, db) => sum + db.keys, 0);
    if (dbsize > 0 || keys > 0) {
      const where = info.keyspace.map((db) => `db${db.db}=${db.keys}`).join(', ');
      refuse(`is not empty: it holds ${Math.max(dbsize, keys)} key(s) (${where || `dbsize ${dbsize}`}). Use empty nodes (FLUSHALL if the data is not needed).`);
    }
    if (info.role === 'replica') refuse(`is already a replica of ${formatAddress(info.primary!)}. Run REPLICAOF NO ONE on it first.`);
    if (info.replicas.length > 0) {
      refuse(`already has ${info.replicas.length} replica(s): ${info.replicas.map((r) => formatAddress(r.address)).join(', ')}.`);
    }
    if (info.isClusterEnabled) refuse('runs in Redis Cluster mode (cluster-enabled yes); slotproxy needs standalone nodes.');
    const twin = byRunId.get(info.runId);
    if (twin !== undefined && info.runId !== '') refuse(`is the same redis-server as ${formatAddress(twin)} (run_id ${info.runId}).`);
    byRunId.set(info.runId, nodes[i]!);
  }
  if (problems === 0) out.ok(`All ${nodes.length} nodes are reachable, empty standalone primaries.`);
  return problems;
}

function printPlan(plan: CreatePlan): void {
  out.info(`>>> Performing hash slots allocation on ${plan.shards.reduce((n, s) => n + 1 + s.replicas.length, 0)} nodes...`);
  if (plan.extraReplicas > 0) out.info(`Adding ${plan.extraReplicas} extra replica(s)...`);
  for (const shard of plan.shards) {
    const slotCount = shard.slots.reduce((sum, [from, to]) => sum + to - from + 1, 0);
    out.info(`Shard ${shard.name}: primary ${formatAddress(shard.primary)}, slots ${formatRanges(shard.slots)} (${slotCount} slots)`);
    for (const replica of shard.replicas) out.info(`  replica ${formatAddress(replica)} -> ${formatAddress(shard.primary)}`);
  }
}

/** Asks on the terminal; anything but `yes` (or a closed stdin) is a no. */
function confirm(question: string): Promise<boolean> {
  return new Promise((resolve) => {
    const rl = readline.createInterface({ input: process.stdin, output: process.stdout });
    let isAnswered = false;
    rl.once('close', () => {
      if (!isAnswered) resolve(false);
    });
    rl.question(question, (answer) => {
      isAnswered = true;
      rl.close();
      resolve(answer.trim() === 'yes');
    });
  });
}

interface Pair {
  readonly replica: Address;
  readonly primary: Address;
}

/** REPLICAOF on every replica, then waits until every link is up; false (reported) on failure. */
async function linkReplicas(pairs: readonly Pair[]): Promise<boolean> {
  const sent = await Promise.all(
    pairs.map(async ({ replica, primary }) => {
      try {
        await withNode(replica, PROBE, (redis) => redis.replicaof(primary.host, primary.port));
        return true;
      } catch (err) {
        out.err(`REPLICAOF ${formatAddress(primary)} on ${formatAddress(replica)} failed: ${errorText(err)}`);
        return false;
      }
    }),
  );
  if (sent.includes(false)) return false;

  out.info(`>>> Waiting up to ${LINK_TIMEOUT_MS / 1000} s for the replication links`);
  const deadline = Date.now() + LINK_TIMEOUT_MS;
  const linked = await Promise.all(
    pairs.map(async ({ replica, primary }) => {
      let lastSeen = 'no reply';
      for (;;) {
        try {
          const info = await withNode(replica, PROBE, readNodeInfo);
          if (info.linkStatus === 'up') {
            out.ok(`${formatAddress(replica)} replicates ${formatAddress(primary)} (master_link_status:up)`);
            return true;
          }
          lastSeen = `master_link_status:${info.linkStatus ?? 'none'}`;
        } catch (err) {
          lastSeen = errorText(err);
        }
        if (Date.now() >= deadline) {
          out.err(`${formatAddress(replica)} did not link to ${formatAddress(primary)} within ${LINK_TIMEOUT_MS / 1000} s (${lastSeen})`);
          return false;
        }
        await new Promise((resolve) => setTimeout(resolve, LINK_POLL_MS));
      }
    }),
  );
  return !linked.includes(false);
}

/** Undo after a failed link: the replicas were empty, so switching them back loses nothing. */
async function unlinkReplicas(replicas: readonly Address[]): Promise<void> {
  const results = await Promise.all(
    replicas.map(async (replica) => {
      try {
        await withNode(replica, PROBE, (redis) => redis.replicaof('NO', 'ONE'));
        return true;
      } catch (err) {
        out.err(`REPLICAOF NO ONE on ${formatAddress(replica)} failed: ${errorText(err)}; switch it back by hand`);
        return false;
      }
    }),
  );
  out.err(
    results.every(Boolean)
      ? 'Not created: every replica was switched back to a primary (REPLICAOF NO ONE). No YAML was written.'
      : 'Not created, and some replicas are still linked (see above). No YAML was written.',
  );
}

/** Write to a temp file in the same folder, then rename: readers never see half a YAML. */
function writeFileAtomically(file: string, text: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const temp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(temp, text);
  fs.renameSync(temp, file);
}
