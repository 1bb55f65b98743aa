import * as http from 'node:http';
import * as readline from 'node:readline';
import { formatAddress, parseAddress } from '../config/address';
import { loadConfigFile } from '../config/load-config';
import type { PlanRequest, PlanView, ReshardStatus } from '../control/resharding';

/**
 * `slotproxy reshard | add-shard | remove-shard | rebalance`: drive a running proxy's admin
 * endpoint (control/admin-server.ts). Each prints the plan, asks before running it (or takes
 * --yes; without a terminal it refuses without --yes), then follows it with a progress bar
 * until it is done.
 *
 * The proxy is found from `--config FILE` (its `admin:` address) or `--proxy HOST:PORT` (the
 * admin address itself).
 */

export type ReshardCommand = 'reshard' | 'add-shard' | 'remove-shard' | 'rebalance';

const USAGE: Record<ReshardCommand, string> = {
  reshard: 'slotproxy reshard --from SHARD --to SHARD --slots N [--yes] (--config FILE | --proxy HOST:PORT)',
  'add-shard': 'slotproxy add-shard NAME PRIMARY [--replicas HOST:PORT,...] [--no-rebalance] [--yes] (--config FILE | --proxy HOST:PORT)',
  'remove-shard': 'slotproxy remove-shard NAME [--yes] (--config FILE | --proxy HOST:PORT)',
  rebalance: 'slotproxy rebalance [--weights SHARD=W,...] [--yes] (--config FILE | --proxy HOST:PORT)',
};

const POLL_MS = 250;
/** Without a terminal, a progress line at most this often. */
const LINE_EVERY_MS = 1_000;

/** A usage error: printed with the usage line, exit code 2. */
class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** The admin endpoint did not answer: printed on one line, exit code 1. */
class AdminUnreachableError extends Error {
  override readonly name = 'AdminUnreachableError';
}

export async function runResharding(command: ReshardCommand, args: readonly string[]): Promise<number> {
  let request: PlanRequest;
  let base: string;
  try {
    request = parseRequest(command, args);
    base = adminUrl(args);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`slotproxy ${command}: ${err.message}\nUsage: ${USAGE[command]}\n`);
    return 2;
  }
  try {
    return await runPlan(command, request, base, args.includes('--yes'));
  } catch (err) {
    if (!(err instanceof AdminUnreachableError)) throw err;
    process.stderr.write(`slotproxy ${command}: ${err.message}\n`);
    return 1;
  }
}

/** Previews the plan, asks (unless `isYes`), runs it and follows it; the exit code. */
async function runPlan(command: ReshardCommand, request: PlanRequest, base: string, isYes: boolean): Promise<number> {
  const preview = await call(base, 'POST', '/admin/plan', { ...request, dryRun: true });
  if (preview.status !== 200) return fail(command, preview.body);
  const plan = (preview.body as { plan: PlanView }).plan;
  process.stdout.write(describePlan(plan));
  if (plan.slotsToMove === 0 && plan.addShards.length === 0 && plan.removeShards.length === 0) {
    process.stdout.write('Nothing to do.\n');
    return 0;
  }
  if (!isYes) {
    if (!process.stdin.isTTY) {
      process.stderr.write(`slotproxy ${command}: refusing to run without --yes when stdin is not a terminal\n`);
      return 2;
    }
    if (!(await confirm('Type yes to run this plan: '))) {
      process.stdout.write('Not run.\n');
      return 1;
    }
  }
  const started = await call(base, 'POST', '/admin/plan', request);
  if (started.status !== 202) return fail(command, started.body);
  const id = (started.body as { plan: PlanView }).plan.id;
  return follow(base, id);
}

/** Polls the status until plan `id` ends, drawing the progress bar; the exit code. */
async function follow(base: string, id: string): Promise<number> {
  const isTty = process.stderr.isTTY === true;
  let lastLine = 0;
  for (;;) {
    const reply = await call(base, 'GET', '/admin/status');
    const status = reply.body as ReshardStatus;
    if (status.plan === null || status.plan.id !== id) {
      process.stderr.write('\nslotproxy: the proxy no longer reports this plan (restarted?); it resumes on its own\n');
      return 1;
    }
    const isOver = status.state !== 'running';
    if (isTty) process.stderr.write(`\r${progressLine(status)}\u001b[K${isOver ? '\n' : ''}`);
    else if (isOver || Date.now() - lastLine >= LINE_EVERY_MS) {
      process.stderr.write(`${progressLine(status)}\n`);
      lastLine = Date.now();
    }
    if (isOver) {
      if (status.state === 'done') {
        process.stdout.write(`Done: ${status.shards.map((s) => `${s.name} ${s.slots}`).join(', ')} slots.\n`);
        return 0;
      }
      process.stderr.write(`slotproxy: plan ${id} ${status.state}: ${status.error ?? 'no reason given'}\n`);
      return 1;
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/** `[#####-----] 1234/4096 slots  45210 keys  12000 keys/s  ETA 3.1s` */
export function progressLine(status: ReshardStatus): string {
  const p = status.progress;
  if (p === null) return 'waiting...';
  const width = 30;
  // Until the mover's first report the run's own count is 0: the plan's is the one to show.
  const total = p.slotsTotal > 0 ? p.slotsTotal : (status.plan?.slotsToMove ?? 0);
  const isFinished = status.state !== 'running';
  const done = total === 0 ? (isFinished ? width : 0) : Math.round((width * p.slotsDone) / total);
  const bar = `[${'#'.repeat(done)}${'-'.repeat(width - done)}]`;
  const eta = p.etaSeconds === null ? 'ETA ?' : `ETA ${formatSeconds(p.etaSeconds)}`;
  const big = p.bigKeysMoved > 0 ? ` (${p.bigKeysMoved} big)` : '';
  const errors = p.errors > 0 ? `  ${p.errors} retried errors` : '';
  return `${bar} ${p.slotsDone}/${total} slots  ${p.keysMoved} keys${big}  ${p.keysPerSecond} keys/s  ${p.slotsPerSecond} slots/s  ${eta}${errors}`;
}

export function describePlan(plan: PlanView): string {
  const lines = [`Plan ${plan.id} (${plan.op}):`];
  for (const shard of plan.addShards) {
    lines.push(`  add shard ${shard.name}: primary ${shard.primary}${shard.replicas.length > 0 ? `, replicas ${shard.replicas.join(' ')}` : ''}`);
  }
  for (const group of plan.moves) {
    const ranges = group.ranges.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`));
    const shown = ranges.length > 6 ? `${ranges.slice(0, 6).join(' ')} ... (${ranges.length} ranges)` : ranges.join(' ');
    lines.push(`  move ${group.count} slot${group.count === 1 ? '' : 's'} ${group.from} -> ${group.to}: ${shown}`);
  }
  for (const name of plan.removeShards) lines.push(`  then remove shard ${name}`);
  const names = Object.keys(plan.countsAfter);
  lines.push(`  slots per shard: ${names.map((n) => `${n} ${plan.countsBefore[n] ?? 0} -> ${plan.countsAfter[n]}`).join(', ')}`);
  lines.push(`  ${plan.slotsToMove} slots to move`);
  return `${lines.join('\n')}\n`;
}

function parseRequest(command: ReshardCommand, args: readonly string[]): PlanRequest {
  switch (command) {
    case 'reshard': {
      const from = value(args, '--from');
      const to = value(args, '--to');
      const slots = value(args, '--slots');
      if (from === undefined || to === undefined || slots === undefined) throw new UsageError('--from, --to and --slots are required');
      const count = Number(slots);
      if (!Number.isInteger(count) || count < 1) throw new UsageError(`--slots must be a whole number >= 1, not ${slots}`);
      return { op: 'reshard', from, to, slots: count };
    }
    case 'add-shard': {
      const [name, primary] = positionals(args);
      if (name === undefined || primary === undefined) throw new UsageError('NAME and PRIMARY are required');
      const replicas = value(args, '--replicas');
      const list = replicas === undefined ? [] : replicas.split(',').filter((r) => r !== '');
      for (const address of [primary, ...list]) checkAddress(address);
      return { op: 'add-shard', name, primary, replicas: list, rebalance: !args.includes('--no-rebalance') };
    }
    case 'remove-shard': {
      const [name] = positionals(args);
      if (name === undefined) throw new UsageError('NAME is required');
      return { op: 'remove-shard', name };
    }
    case 'rebalance': {
      const text = value(args, '--weights');
      if (text === undefined) return { op: 'rebalance' };
      const weights: Record<string, number> = {};
      for (const pair of text.split(',')) {
        const match = /^([^=]+)=([0-9.]+)$/.exec(pair.trim());
        if (match === null) throw new UsageError(`--weights takes SHARD=NUMBER,...; not ${pair}`);
        weights[match[1]!] = Number(match[2]);
      }
      return { op: 'rebalance', weights };
    }
  }
}

/** The admin endpoint's base URL, from --proxy or the config's `admin:`. */
function adminUrl(args: readonly string[]): string {
  const proxy = value(args, '--proxy');
  if (proxy !== undefined) return `http://${formatAddress(checkAddress(proxy))}`;
  const file = value(args, '--config');
  if (file === undefined) throw new UsageError('--config FILE or --proxy HOST:PORT is required to find the proxy');
  const config = loadConfigFile(file);
  if (config.admin === null) {
    throw new UsageError(`${file} has no admin: address; set one (e.g. admin: 127.0.0.1:9122), restart the proxy, or pass --proxy`);
  }
  // A wildcard bind is reached on loopback.
  const host = config.admin.host === '0.0.0.0' ? '127.0.0.1' : config.admin.host === '::' ? '::1' : config.admin.host;
  return `http://${formatAddress({ host, port: config.admin.port })}`;
}

function checkAddress(text: string): { host: string; port: number } {
  try {
    return parseAddress(text);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

/** Options that take a value; positionals are the other words. */
const VALUE_OPTIONS = new Set(['--from', '--to', '--slots', '--replicas', '--weights', '--config', '--proxy']);

function value(args: readonly string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

function positionals(args: readonly string[]): string[] {
  const words: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (VALUE_OPTIONS.has(args[i]!)) i++;
    else if (!args[i]!.startsWith('--')) words.push(args[i]!);
  }
  return words;
}

interface Reply {
  readonly status: number;
  readonly body: unknown;
}

/**
 * One connection for all of a command's requests, and node:http rather than fetch: the CLI polls
 * a proxy that may share its cores with the shards, and each poll should cost it (and the
 * proxy's admin endpoint) as little as it can.
 */
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const REQUEST_TIMEOUT_MS = 30_000;

function call(base: string, method: 'GET' | 'POST', path: string, body?: unknown): Promise<Reply> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const unreachable = (err: Error): void => reject(new AdminUnreachableError(`cannot reach the proxy's admin endpoint at ${base}: ${err.message}`));
    const request = http.request(`${base}${path}`, {
      method,
      agent,
      timeout: REQUEST_TIMEOUT_MS,
      headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
    });
    request.on('timeout', () => request.destroy(new Error(`no answer within ${REQUEST_TIMEOUT_MS / 1000} s`)));
    request.on('error', unreachable);
    request.on('response', (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('error', unreachable);
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown;
        try {
          parsed = JSON.parse(text);
        } catch {
          parsed = { error: text };
        }
        resolve({ status: response.statusCode ?? 0, body: parsed });
      });
    });
    request.end(payload);
  });
}

function fail(command: string, body: unknown): number {
  const error = typeof body === 'object' && body !== null && 'error' in body ? String((body as { error: unknown }).error) : JSON.stringify(body);
  process.stderr.write(`slotproxy ${command}: ${error}\n`);
  return 1;
}

function confirm(question: string): Promise<boolean> {
  const rl = readline.createInterface({ input: process.stdin, output: process.stdout });
  return new Promise((resolve) => {
    rl.question(question, (answer) => {
      rl.close();
      resolve(answer.trim().toLowerCase() === 'yes');
    });
  });
}

function formatSeconds(seconds: number): string {
  if (seconds < 60) return `${seconds.toFixed(1)}s`;
  const m = Math.floor(seconds / 60);
  return `${m}m${Math.round(seconds - m * 60)}s`;
}
