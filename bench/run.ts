/**
 * `npm run bench`: one run comparing direct Redis, Twemproxy (as shipped, and with `-v 4`) and
 * slotproxy (workers 1 and 2) with redis-benchmark, then the proxies' memory under 10,000 idle
 * connections and under a slow reader (Twemproxy as shipped only).
 * Loopback only, bounded in time, every process stopped by PID at the end (also on error / SIGINT).
 * See bench/README.md for what each number means.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, release, tmpdir, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { renderBarChart } from './chart';
import { CANDIDATE_KEYS, chooseMultiKeys, MULTI_KEY_VALUE, type MultiKey } from './keys';
import { DEFAULT_MEMORY_PLAN, runMemoryPart, type MemoryResult } from './memory';
import { ProcessRegistry } from './processes';
import { readStat, sumRssBytes } from './proc-stats';
import { runRedisBenchmark, type BenchCommand, type BenchFigures } from './redis-benchmark';
import {
  formatMiB,
  formatMs,
  formatRatio,
  formatRps,
  formatTable,
  medianFigures,
  ratio,
  type Ratio,
} from './report';
import { ping, runCommand } from './resp-client';
import {
  checkSlotRouting,
  freePorts,
  probeTwemproxyPlacement,
  startRedis,
  startSlotproxy,
  startTwemproxy,
  TARGET_IDS,
  TARGET_LABELS,
  type RedisNode,
  type Target,
  type TargetId,
} from './targets';

// ---------------------------------------------------------------------------------------------
// Settings (env overrides for quick local runs: BENCH_ROUNDS, BENCH_SCALE, BENCH_SKIP_MEMORY=1,
// BENCH_KEEP_TMP=1).

// nutcracker is installed in /usr/sbin, which a non-root PATH may lack.
process.env.PATH = `${process.env.PATH ?? ''}:/usr/local/sbin:/usr/sbin:/sbin`;

const REPO_ROOT = resolve(__dirname, '..');
const RESULTS_DIR = join(REPO_ROOT, 'bench', 'results');
const ROUNDS = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 3));
const SCALE = Math.max(0.01, Number(process.env.BENCH_SCALE ?? 1));
const SKIP_MEMORY = process.env.BENCH_SKIP_MEMORY === '1';
const CLIENTS = 50;
const RANDOM_KEYS = 100_000;
const PIPELINES = [1, 16] as const;
/** Requests per run: each run takes about 0.5-2 s here (2 cores); lowered per cell when a target is slower. */
const REQUESTS_BY_PIPELINE: Readonly<Record<(typeof PIPELINES)[number], number>> = { 1: 100_000, 16: 300_000 };
/** A run longer than this makes the next runs of the same target and cell smaller ... */
const SLOW_RUN_SECONDS = 2.5;
/** ... aiming at this duration. */
const AIM_RUN_SECONDS = 1.5;
const MIN_REQUESTS = 5_000;
/**
 * Requests per target, test and pipeline depth run once before round 1 and not recorded: a Node
 * proxy compiles its hot path in its first tens of thousands of requests (round 1 of SET -P 1
 * was ~10% slower with a 3x p99 without it); a C proxy and Redis are unaffected.
 */
const WARM_UP_REQUESTS_BY_PIPELINE: Readonly<Record<(typeof PIPELINES)[number], number>> = { 1: 5_000, 16: 30_000 };
const RUN_TIMEOUT_MS = 15_000;
/** Whole-run budget (the task asks < 5 min including the build): the phases get slices of it. */
const TOTAL_BUDGET_MS = 285_000;
const THROUGHPUT_BUDGET_MS = 170_000;
const MEMORY_TIMEOUT_MS = 70_000;

const COLORS: Readonly<Record<TargetId, string>> = {
  direct: '#4e79a7',
  twemproxy: '#f28e2b',
  'twemproxy-v4': '#ffbe7d',
  'slotproxy-w1': '#2e8540',
  'slotproxy-w2': '#8cd17d',
};

interface TestSpec {
  readonly id: 'SET' | 'GET' | 'MSET10' | 'MGET10';
  readonly label: string;
  readonly command: BenchCommand;
}

function testSpecs(keys: readonly MultiKey[]): readonly TestSpec[] {
  return [
    { id: 'SET', label: 'SET', command: { kind: 'builtin', test: 'set' } },
    { id: 'GET', label: 'GET', command: { kind: 'builtin', test: 'get' } },
    {
      id: 'MSET10',
      label: 'MSET 10 keys',
      command: { kind: 'custom', args: ['mset', ...keys.flatMap((k) => [k.key, MULTI_KEY_VALUE])] },
    },
    { id: 'MGET10', label: 'MGET 10 keys', command: { kind: 'custom', args: ['mget', ...keys.map((k) => k.key)] } },
  ];
}

/** One (test, pipeline) pair: a row of the table. */
interface Cell {
  readonly id: string;
  readonly test: TestSpec;
  readonly pipeline: number;
}

/** One redis-benchmark run (or a skipped one) as stored in latest.json. */
interface RunRecord {
  readonly round: number;
  readonly cell: string;
  readonly target: TargetId;
  readonly requests: number;
  readonly ok: boolean;
  readonly figures: BenchFigures | null;
  readonly wallSeconds: number;
  readonly error: string | null;
  /** CPU seconds used during the run, per process label (redis-benchmark included). */
  readonly cpuSeconds: Readonly<Record<string, number>>;
}

// ---------------------------------------------------------------------------------------------
// Lifecycle: one registry, stopped on every way out.

const registry = new ProcessRegistry();
const startedAt = Date.now();
let tempDir: string | null = null;
let isShuttingDown = false;

let shutdownInProgress: Promise<never> | null = null;

/** Stops everything and exits; later calls (a second SIGINT, the failing main) wait for the first. */
function shutdown(code: number, why: string | null): Promise<never> {
  isShuttingDown = true;
  shutdownInProgress ??= (async (): Promise<never> => {
    if (why !== null) console.error(`\nbench: ${why}; stopping every process it started ...`);
    await registry.stopAll(3000);
    if (code === 0) say('every started process stopped');
    if (tempDir !== null) {
      if (code === 0 && process.env.BENCH_KEEP_TMP !== '1') rmSync(tempDir, { recursive: true, force: true });
      else console.error(`bench: logs and configs kept in ${tempDir}`);
    }
    process.exit(code);
  })();
  return shutdownInProgress;
}

process.on('SIGINT', () => void shutdown(130, 'interrupted (SIGINT)'));
process.on('SIGTERM', () => void shutdown(143, 'terminated (SIGTERM)'));
process.on('uncaughtException', (error) => void shutdown(1, `uncaught: ${error.stack ?? error.message}`));
process.on('unhandledRejection', (error) => void shutdown(1, `unhandled rejection: ${String(error)}`));
// Last resort if the process exits some other way: nothing it started may survive it.
process.on('exit', () => registry.killAllNow());
setTimeout(() => void shutdown(1, `time limit of ${TOTAL_BUDGET_MS / 1000} s reached`), TOTAL_BUDGET_MS).unref();

/** Once shutdown has begun, the main flow stops here (shutdown exits the process): no report from a cut run. */
async function haltIfShuttingDown(): Promise<void> {
  if (isShuttingDown) await new Promise<never>(() => undefined);
}

function elapsed(): string {
  return `${((Date.now() - startedAt) / 1000).toFixed(1)}s`;
}

function say(message: string): void {
  console.log(`[${elapsed()}] ${message}`);
}

// ---------------------------------------------------------------------------------------------
// Machine facts.

function commandOutput(command: string, args: readonly string[]): string {
  try {
    const out = execFileSync(command, args, { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'pipe'] });
    return out.trim();
  } catch (error) {
    // nutcracker -V prints to stderr.
    const stderr = (error as { stderr?: string }).stderr;
    return typeof stderr === 'string' ? stderr.trim() : 'unknown';
  }
}

function machineInfo(): Record<string, string | number> {
  const cpuModel = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpus()[0]?.model ?? 'unknown';
  const nutcracker = execNutcrackerVersion();
  return {
    cpuModel,
    nproc: availableParallelism(),
    memoryGiB: Math.round((totalmem() / 1024 ** 3) * 10) / 10,
    kernel: release(),
    node: process.version,
    redis: /v=(\S+)/.exec(commandOutput('redis-server', ['--version']))?.[1] ?? 'unknown',
    redisBenchmark: commandOutput('redis-benchmark', ['--version']),
    nutcracker,
    gitCommit: commandOutput('git', ['-C', REPO_ROOT, 'rev-parse', '--short', 'HEAD']),
    date: new Date().toISOString(),
  };
}

function execNutcrackerVersion(): string {
  // `nutcracker -V` prints "This is nutcracker-0.5.0" on stderr.
  const result = spawnSync('nutcracker', ['-V'], { encoding: 'utf8', timeout: 5000 });
  return /nutcracker-(\S+)/.exec(`${result.stdout ?? ''} ${result.stderr ?? ''}`)?.[1] ?? 'unknown';
}

// ---------------------------------------------------------------------------------------------
// CPU accounting: /proc/<pid>/stat of every process of the topology, before and after each run.

interface CpuProbe {
  readonly label: string;
  readonly pid: number;
}

function cpuProbes(shards: readonly RedisNode[], direct: RedisNode, targets: readonly Target[]): CpuProbe[] {
  const probes: CpuProbe[] = [{ label: 'redis direct', pid: direct.process.pid }];
  for (const shard of shards) probes.push({ label: `redis shard ${shard.name}`, pid: shard.process.pid });
  for (const target of targets) {
    if (target.id === 'direct' || target.process === null || target.process.hasExited) continue;
    const tree = registry.treeOf(target.process);
    tree.forEach((pid, index) => {
      const role = tree.length === 1 ? '' : index === 0 ? ' primary' : ` child ${index}`;
      probes.push({ label: `${target.label}${role}`, pid });
    });
  }
  return probes;
}

function readCpu(probes: readonly CpuProbe[]): Map<string, number> {
  const seconds = new Map<string, number>();
  for (const probe of probes) {
    const stat = readStat(probe.pid);
    if (stat !== null) seconds.set(probe.label, stat.cpuSeconds);
  }
  return seconds;
}

// ---------------------------------------------------------------------------------------------

/** The multi-key test keys, split 4 + 3 + 3 by both proxies; by slotproxy's split alone if Twemproxy's placement cannot be had. */
async function chooseKeysForBoth(twemproxy: Target, shards: readonly RedisNode[]): Promise<readonly MultiKey[]> {
  if (twemproxy.unavailableReason !== null) return chooseMultiKeys();
  try {
    return chooseMultiKeys(await probeTwemproxyPlacement(twemproxy, shards, CANDIDATE_KEYS));
  } catch (error) {
    say(`multi-key test keys by slotproxy's split only: Twemproxy's placement could not be used (${(error as Error).message})`);
    return chooseMultiKeys();
  }
}

async function main(): Promise<void> {
  say(`slotproxy bench: ${ROUNDS} rounds, -c ${CLIENTS}, -P ${PIPELINES.join('/')}, scale ${SCALE}`);
  const machine = machineInfo();
  say(`machine: ${machine.cpuModel}, ${machine.nproc} cpus, node ${machine.node}, redis ${machine.redis}, nutcracker ${machine.nutcracker}`);
  tempDir = mkdtempSync(join(tmpdir(), 'slotproxy-bench-'));

  // 1. The topology.
  const [p1, p2, p3, directPort, twemPort, twemStatsPort, twemV4Port, twemV4StatsPort, sp1Port, sp2Port] =
    await freePorts(10);
  const shards = await Promise.all([
    startRedis(registry, tempDir, 's1', p1),
    startRedis(registry, tempDir, 's2', p2),
    startRedis(registry, tempDir, 's3', p3),
  ]);
  const direct = await startRedis(registry, tempDir, 'direct', directPort);
  say(`redis-server shards on ${shards.map((s) => s.port).join(', ')}, direct on ${direct.port}`);
  // Twemproxy twice over the same shards: as shipped (default verbosity) and tuned (-v 4).
  const twemproxy = await startTwemproxy(registry, tempDir, 'twemproxy', twemPort, twemStatsPort, shards);
  say(`${twemproxy.label} (default verbosity) on ${twemPort} (stats ${twemStatsPort}), fd limit ${twemproxy.fdLimit}`);
  const twemproxyV4 = await startTwemproxy(registry, tempDir, 'twemproxy-v4', twemV4Port, twemV4StatsPort, shards);
  say(`${twemproxyV4.label} on ${twemV4Port} (stats ${twemV4StatsPort}), fd limit ${twemproxyV4.fdLimit}`);
  const [slotproxyW1, slotproxyW2] = await Promise.all([
    startSlotproxy(registry, REPO_ROOT, tempDir, 'slotproxy-w1', sp1Port, 1, shards),
    startSlotproxy(registry, REPO_ROOT, tempDir, 'slotproxy-w2', sp2Port, 2, shards),
  ]);
  const directTarget: Target = {
    id: 'direct',
    label: TARGET_LABELS.direct,
    port: direct.port,
    process: direct.process,
    unavailableReason: null,
    fdLimit: null,
  };
  const targets: readonly Target[] = [directTarget, twemproxy, twemproxyV4, slotproxyW1, slotproxyW2];
  for (const target of [slotproxyW1, slotproxyW2]) {
    if (target.unavailableReason === null) {
      const processes = target.process === null ? 0 : registry.treeOf(target.process).length;
      const workers = target.id === 'slotproxy-w2' ? 2 : 1;
      const note = processes < workers ? ` (asked for ${workers} workers: the proxy does not fork them yet)` : '';
      say(`${target.label} on ${target.port}: up, ${processes} process(es)${note}, fd limit ${target.fdLimit}`);
    } else {
      say(`${target.label}: UNAVAILABLE - ${target.unavailableReason}`);
    }
  }

  // 2. Keys for MSET/MGET that both proxies split 4 + 3 + 3, pre-populated through every target;
  // slotproxy's routing checked.
  const keys = await chooseKeysForBoth(twemproxy, shards);
  say(
    `multi-key test keys: ${keys.map((k) => `${k.key}(slot ${k.slot}->s${k.shard + 1}${k.twemproxyShard === null ? '' : `, twemproxy->s${k.twemproxyShard + 1}`})`).join(' ')}`,
  );
  const routingChecks: Record<string, string> = {};
  for (const target of targets) {
    if (target.unavailableReason !== null) continue;
    try {
      const reply = await runCommand(target.port, ['MSET', ...keys.flatMap((k) => [k.key, MULTI_KEY_VALUE])], 5000);
      if (reply !== 'OK') say(`${target.label}: pre-populating MSET answered ${String(reply)}`);
    } catch (error) {
      // No reply at all (not an error reply): the benchmark runs would only time out one by one.
      target.unavailableReason = `pre-populating MSET failed: ${(error as Error).message}`;
      say(`${target.label}: UNAVAILABLE - ${target.unavailableReason}`);
      continue;
    }
    if (target.id.startsWith('slotproxy')) {
      const problem = await checkSlotRouting(target, shards);
      routingChecks[target.id] = problem ?? 'ok';
      say(`${target.label}: routing by the even slot split: ${problem ?? 'ok'}`);
    }
  }

  // 3. Rounds: every cell, targets alternating within the cell.
  const tests = testSpecs(keys);
  const cells: Cell[] = PIPELINES.flatMap((pipeline) =>
    tests.map((test) => ({ id: `${test.id} P${pipeline}`, test, pipeline })),
  );
  const runs: RunRecord[] = [];
  const requestsFor = new Map<string, number>();
  const timeoutsOf = new Map<TargetId, number>();
  /** target|cell pairs that timed out once: not run again (each would cost RUN_TIMEOUT_MS). */
  const abandoned = new Map<string, string>();
  const throughputStarted = Date.now();
  const throughputDeadline = throughputStarted + THROUGHPUT_BUDGET_MS;
  const skipped = (round: number, cell: Cell, target: Target, why: string): RunRecord => ({
    round,
    cell: cell.id,
    target: target.id,
    requests: 0,
    ok: false,
    figures: null,
    wallSeconds: 0,
    error: why,
    cpuSeconds: {},
  });

  say('warm-up (not recorded)');
  for (const target of targets) {
    for (const cell of cells) {
      await haltIfShuttingDown();
      if (target.unavailableReason !== null) continue;
      await runCell(registry, target, cell, Math.max(1_000, Math.round(WARM_UP_REQUESTS_BY_PIPELINE[cell.pipeline as 1 | 16] * SCALE)));
    }
  }

  for (let round = 1; round <= ROUNDS; round++) {
    say(`round ${round}/${ROUNDS}`);
    for (const cell of cells) {
      const line: string[] = [];
      for (const target of targets) {
        await haltIfShuttingDown();
        if (target.unavailableReason !== null) {
          runs.push(skipped(round, cell, target, `unavailable: ${target.unavailableReason}`));
          continue;
        }
        if (Date.now() > throughputDeadline) {
          runs.push(skipped(round, cell, target, 'skipped: throughput time budget used up'));
          continue;
        }
        if (target.process !== null && target.process.hasExited) {
          target.unavailableReason = `exited during the bench (${JSON.stringify(target.process.exitInfo)})`;
          runs.push(skipped(round, cell, target, target.unavailableReason));
          continue;
        }
        const key = `${target.id}|${cell.id}`;
        const abandonedBecause = abandoned.get(key);
        if (abandonedBecause !== undefined) {
          runs.push(skipped(round, cell, target, `skipped: ${abandonedBecause} in an earlier round`));
          continue;
        }
        const requests =
          requestsFor.get(key) ??
          Math.max(MIN_REQUESTS, Math.round(REQUESTS_BY_PIPELINE[cell.pipeline as 1 | 16] * SCALE));
        const probes = cpuProbes(shards, direct, targets);
        const before = readCpu(probes);
        const result = await runCell(registry, target, cell, requests);
        const after = readCpu(probes);
        const cpuSeconds: Record<string, number> = {};
        for (const [label, value] of after) {
          const start = before.get(label);
          if (start !== undefined) cpuSeconds[label] = round3(value - start);
        }
        if (result.ok) cpuSeconds['redis-benchmark'] = round3(result.clientCpuSeconds);
        runs.push({
          round,
          cell: cell.id,
          target: target.id,
          requests,
          ok: result.ok,
          figures: result.ok ? result.figures : null,
          wallSeconds: round3(result.wallSeconds),
          error: result.ok ? null : result.error,
          cpuSeconds,
        });
        if (result.ok) {
          line.push(`${target.label} ${formatRps(result.figures.rps)}/s`);
          if (result.wallSeconds > SLOW_RUN_SECONDS) {
            requestsFor.set(key, Math.max(MIN_REQUESTS, Math.round((requests * AIM_RUN_SECONDS) / result.wallSeconds)));
          }
        } else {
          line.push(`${target.label} FAILED`);
          say(`  ${cell.id} ${target.label}: ${result.error}`);
          if (result.error.startsWith('timed out')) {
            abandoned.set(key, result.error);
            const timeouts = (timeoutsOf.get(target.id) ?? 0) + 1;
            timeoutsOf.set(target.id, timeouts);
            if (timeouts >= 2) target.unavailableReason = `${timeouts} runs timed out`;
          }
          if (target.unavailableReason === null && !(await ping(target.port, 2000))) {
            target.unavailableReason = `stopped answering PING after ${cell.id}`;
          }
        }
      }
      say(`  ${cell.id.padEnd(10)} ${line.join('  ')}`);
    }
  }
  const throughputSeconds = (Date.now() - throughputStarted) / 1000;

  // 4. Medians, ratios and CPU per target.
  const medians: Record<string, Record<string, { figures: BenchFigures | null; okRuns: number; errors: string[] }>> = {};
  for (const cell of cells) {
    medians[cell.id] = {};
    for (const target of targets) {
      const mine = runs.filter((run) => run.cell === cell.id && run.target === target.id);
      const ok = mine.filter((run) => run.ok && run.figures !== null);
      medians[cell.id][target.id] = {
        figures: medianFigures(ok.map((run) => run.figures as BenchFigures)),
        okRuns: ok.length,
        errors: [...new Set(mine.filter((run) => !run.ok).map((run) => run.error ?? ''))],
      };
    }
  }
  const figuresOf = (cell: Cell, id: TargetId): BenchFigures | null => medians[cell.id][id].figures;
  const ratios: Record<string, Record<string, Ratio | null>> = {};
  for (const cell of cells) {
    ratios[cell.id] = Object.fromEntries(
      RATIO_PAIRS.map(([of, to]) => [ratioName(of, to), ratio(figuresOf(cell, of), figuresOf(cell, to))]),
    );
  }
  // The same ratio round by round (each round's runs of the two targets are minutes apart at
  // most): how far one run's medians can be from another's on a shared machine.
  const roundRatios: Record<string, (number | null)[]> = {};
  for (const cell of cells) {
    roundRatios[cell.id] = Array.from({ length: ROUNDS }, (_, i) => {
      const [of, to] = [ROUND_RATIO_PAIR[0], ROUND_RATIO_PAIR[1]].map((id) => runs.find((run) => run.cell === cell.id && run.target === id && run.round === i + 1)?.figures ?? null);
      return ratio(of ?? null, to ?? null)?.throughput ?? null;
    });
  }
  const cpuByTarget: Record<string, { runs: number; requests: number; processes: Record<string, number> }> = {};
  for (const target of targets) {
    const mine = runs.filter((run) => run.target === target.id && run.ok);
    const processes: Record<string, number> = {};
    for (const run of mine) {
      for (const [label, seconds] of Object.entries(run.cpuSeconds)) processes[label] = round3((processes[label] ?? 0) + seconds);
    }
    cpuByTarget[target.id] = { runs: mine.length, requests: mine.reduce((sum, run) => sum + run.requests, 0), processes };
  }

  // 5. Memory, in a child with a raised fd limit.
  let memory: MemoryResult | null = null;
  const memoryStarted = Date.now();
  // Memory: Twemproxy as shipped only; the -v 4 instance is there for the per-request cost.
  const memoryTargets = targets.filter(
    (t) => t.id !== 'direct' && t.id !== 'twemproxy-v4' && t.unavailableReason === null && t.process !== null,
  );
  if (SKIP_MEMORY) {
    say('memory part skipped (BENCH_SKIP_MEMORY=1)');
  } else if (memoryTargets.length === 0) {
    say('memory part skipped: no proxy is up');
  } else {
    say(`memory part: ${memoryTargets.map((t) => t.label).join(', ')}`);
    memory = await runMemoryPart(
      registry,
      {
        ...DEFAULT_MEMORY_PLAN,
        targets: memoryTargets.map((t) => ({ id: t.id, label: t.label, port: t.port, pid: (t.process as { pid: number }).pid })),
        shardPids: shards.map((s) => s.process.pid),
      },
      MEMORY_TIMEOUT_MS,
    );
    if (memory.error !== null) say(`memory part: ${memory.error}`);
  }
  const memorySeconds = (Date.now() - memoryStarted) / 1000;
  await haltIfShuttingDown();

  // 6. Report.
  const shownTargets = TARGET_IDS.map((id) => targets.find((t) => t.id === id) as Target);
  console.log('');
  console.log(
    `Throughput and latency: median of ${ROUNDS} rounds, redis-benchmark -c ${CLIENTS} -r ${RANDOM_KEYS}; ops/s, p50/p99 in ms`,
  );
  const header = ['test', ...shownTargets.flatMap(() => ['ops/s', 'p50', 'p99'])];
  const rows = cells.map((cell) => [
    `${cell.test.label} -P ${cell.pipeline}`,
    ...shownTargets.flatMap((target) => {
      const entry = medians[cell.id][target.id];
      if (entry.figures === null) return [target.unavailableReason !== null ? 'n/a' : 'failed', '-', '-'];
      return [formatRps(entry.figures.rps), formatMs(entry.figures.p50Ms), formatMs(entry.figures.p99Ms)];
    }),
  ]);
  console.log(
    formatTable(header, rows, [{ label: '', span: 1 }, ...shownTargets.map((t) => ({ label: t.label, span: 3 }))]),
  );
  console.log('');
  console.log('Ratios: throughput (higher is better for the first) and p99 (lower is better for the first)');
  // Two tables (against the Twemproxys, against direct), so that each stays readable in a terminal.
  const ratioTables = [
    RATIO_PAIRS.filter(([, to]) => to !== 'direct'),
    RATIO_PAIRS.filter(([, to]) => to === 'direct'),
  ].map((pairs) => pairs.map(([of, to]) => ratioName(of, to)));
  for (const ratioNames of ratioTables) {
    console.log(
      formatTable(
        ['test', ...ratioNames.flatMap(() => ['ops/s', 'p99'])],
        cells.map((cell) => [
          `${cell.test.label} -P ${cell.pipeline}`,
          ...ratioNames.flatMap((name) => {
            const r = ratios[cell.id][name];
            return [formatRatio(r?.throughput), formatRatio(r?.p99)];
          }),
        ]),
        [{ label: '', span: 1 }, ...ratioNames.map((name) => ({ label: name, span: 2 }))],
      ),
    );
  }
  const [roundOf, roundTo] = ROUND_RATIO_PAIR.map((id) => shownTargets.find((t) => t.id === id)!.label);
  console.log(`${roundOf}/${roundTo} ops/s round by round (the medians above are of these rounds' figures):`);
  console.log(
    formatTable(
      ['test', ...Array.from({ length: ROUNDS }, (_, i) => `round ${i + 1}`)],
      cells.map((cell) => [`${cell.test.label} -P ${cell.pipeline}`, ...roundRatios[cell.id]!.map((r) => formatRatio(r))]),
    ),
  );
  for (const target of shownTargets) {
    if (target.unavailableReason !== null) console.log(`${target.label}: not measured - ${target.unavailableReason}`);
  }
  for (const cell of cells) {
    for (const target of shownTargets) {
      const entry = medians[cell.id][target.id];
      if (target.unavailableReason === null && entry.errors.length > 0) {
        console.log(`${cell.id} ${target.label}: ${entry.okRuns} ok run(s); errors: ${entry.errors.join(' / ')}`);
      }
    }
  }

  console.log('');
  console.log('CPU seconds per process, summed over all runs of each target (where the CPU goes)');
  const cpuLabels = [...new Set(Object.values(cpuByTarget).flatMap((entry) => Object.keys(entry.processes)))]
    .filter((label) => shownTargets.some((t) => (cpuByTarget[t.id].processes[label] ?? 0) >= 0.01))
    .sort(cpuLabelOrder);
  const cpuRows = cpuLabels.map((label) => [
    label,
    ...shownTargets.map((t) => (cpuByTarget[t.id].runs === 0 ? '-' : (cpuByTarget[t.id].processes[label] ?? 0).toFixed(2))),
  ]);
  const totalCpu = (id: TargetId): number => Object.values(cpuByTarget[id].processes).reduce((sum, value) => sum + value, 0);
  cpuRows.push(
    ['total', ...shownTargets.map((t) => (cpuByTarget[t.id].runs === 0 ? '-' : totalCpu(t.id).toFixed(2)))],
    ['requests (all runs)', ...shownTargets.map((t) => (cpuByTarget[t.id].runs === 0 ? '-' : formatRps(cpuByTarget[t.id].requests)))],
    [
      'CPU us per request',
      ...shownTargets.map((t) =>
        cpuByTarget[t.id].runs === 0 ? '-' : ((totalCpu(t.id) / cpuByTarget[t.id].requests) * 1e6).toFixed(2),
      ),
    ],
  );
  console.log(formatTable(['process', ...shownTargets.map((t) => t.label)], cpuRows));

  if (memory !== null) {
    console.log('');
    console.log(`Memory (a): ${DEFAULT_MEMORY_PLAN.idleConnections.toLocaleString('en-US')} idle client connections; RSS summed over the proxy's processes`);
    console.log(
      formatTable(
        ['proxy', 'opened', 'proxy fds', 'RSS before', 'RSS idle', 'per conn', 'PONGs', 'RSS after PING', 'RSS after close'],
        memory.idle.map((r) =>
          r.error !== null
            ? [r.target, `error: ${r.error}`, '', '', '', '', '', '', '']
            : [
                r.target,
                formatRps(r.opened),
                formatRps(r.proxyFds),
                formatMiB(r.rssBeforeBytes),
                formatMiB(r.rssIdleBytes),
                `${(r.bytesPerConnection / 1024).toFixed(1)} KiB`,
                formatRps(r.pongs),
                formatMiB(r.rssAfterPingBytes),
                formatMiB(r.rssAfterCloseBytes),
              ],
        ),
      ),
    );
    console.log('');
    console.log(
      `Memory (b): slow reader, ${DEFAULT_MEMORY_PLAN.bigGets} x GET of a 1 MiB value (1 GiB of replies) not read for ${DEFAULT_MEMORY_PLAN.holdMs / 1000} s`,
    );
    console.log(
      formatTable(
        ['proxy', 'RSS before', 'max RSS', 'growth', 'growing at end', 'bounded', 'shards growth', 'PING after', 'GET after', 'RSS after close'],
        memory.slowReader.map((r) =>
          r.error !== null
            ? [r.target, `error: ${r.error}`, '', '', '', '', '', r.pingAfterClose ? 'ok' : 'NO', '', '']
            : [
                r.target,
                formatMiB(r.rssBeforeBytes),
                formatMiB(r.maxRssBytes),
                formatMiB(r.growthBytes),
                r.isGrowingAtEnd ? 'yes' : 'no',
                r.isBounded ? 'yes' : 'NO',
                formatMiB(r.shardGrowthBytes),
                r.pingAfterClose ? 'ok' : 'NO',
                r.getAfterClose ? 'ok' : 'NO',
                formatMiB(r.rssAfterCloseBytes),
              ],
        ),
      ),
    );
    console.log(
      `("bounded" = RSS flat over the last ${DEFAULT_MEMORY_PLAN.plateauMs / 1000} s (< ${formatMiB(DEFAULT_MEMORY_PLAN.plateauSlackBytes)}) and growth < ${formatMiB(DEFAULT_MEMORY_PLAN.boundedGrowthBytes)}, half the replies;`,
    );
    console.log('  "shards growth" = RSS growth of the redis-servers, where replies the proxy does not take wait)');
  }

  // 7. Files.
  mkdirSync(RESULTS_DIR, { recursive: true });
  const totalSeconds = (Date.now() - startedAt) / 1000;
  const json = {
    machine,
    settings: {
      rounds: ROUNDS,
      clients: CLIENTS,
      randomKeys: RANDOM_KEYS,
      pipelines: PIPELINES,
      requestsByPipeline: REQUESTS_BY_PIPELINE,
      scale: SCALE,
      runTimeoutMs: RUN_TIMEOUT_MS,
      twemproxy: { hash: 'fnv1a_64', distribution: 'ketama', serverConnections: 1 },
      slotproxy: { nodeTimeoutMs: 5000, workers: [1, 2] },
    },
    multiKeys: keys,
    targets: targets.map((t) => ({
      id: t.id,
      label: t.label,
      port: t.port,
      available: t.unavailableReason === null,
      unavailableReason: t.unavailableReason,
      fdLimit: t.fdLimit,
    })),
    shards: shards.map((s) => ({ name: s.name, port: s.port, rssBytes: sumRssBytes([s.process.pid]) })),
    routingChecks,
    runs,
    medians,
    ratios,
    roundRatios: { of: ROUND_RATIO_PAIR[0], to: ROUND_RATIO_PAIR[1], throughput: roundRatios },
    cpuByTarget,
    memory,
    timings: { throughputSeconds: round3(throughputSeconds), memorySeconds: round3(memorySeconds), totalSeconds: round3(totalSeconds) },
  };
  writeFileSync(join(RESULTS_DIR, 'latest.json'), `${JSON.stringify(json, null, 2)}\n`);
  writeFileSync(
    join(RESULTS_DIR, 'latest.svg'),
    renderBarChart({
      title: 'Redis ops/s: direct vs Twemproxy (as shipped, -v 4) vs slotproxy',
      subtitle: `median of ${ROUNDS} rounds, redis-benchmark -c ${CLIENTS}; ${machine.cpuModel}, ${machine.nproc} cpus, node ${machine.node}, redis ${machine.redis}; ${String(machine.date).slice(0, 10)}`,
      panels: PIPELINES.map((pipeline) => ({ id: pipeline, label: `pipeline ${pipeline} (-P ${pipeline})` })),
      groups: tests.map((test) => ({ id: test.id, label: test.label })),
      series: shownTargets.map((t) => ({
        id: t.id,
        label: t.unavailableReason === null ? t.label : `${t.label} (n/a)`,
        color: COLORS[t.id],
      })),
      value: (pipeline, testId, targetId) => medians[`${testId} P${pipeline}`][targetId].figures?.rps ?? null,
    }),
  );
  console.log('');
  say(`wrote bench/results/latest.json and bench/results/latest.svg`);
  say(`total ${totalSeconds.toFixed(1)} s (throughput ${throughputSeconds.toFixed(1)} s, memory ${memorySeconds.toFixed(1)} s)`);
}

/** One redis-benchmark run of a cell against a target. */
function runCell(registry: ProcessRegistry, target: Target, cell: Cell, requests: number): ReturnType<typeof runRedisBenchmark> {
  return runRedisBenchmark(registry, {
    port: target.port,
    clients: CLIENTS,
    pipeline: cell.pipeline,
    requests,
    randomKeys: RANDOM_KEYS,
    command: cell.test.command,
    timeoutMs: RUN_TIMEOUT_MS,
  });
}

/**
 * The ratios of every cell, as [first, second]: each slotproxy against both Twemproxys and direct,
 * then each Twemproxy against direct. Named `label/label` in latest.json and the tables.
 */
/** The pair whose throughput ratio is also shown round by round: issue 4's targets are read on it. */
const ROUND_RATIO_PAIR: readonly [TargetId, TargetId] = ['slotproxy-w1', 'twemproxy'];
const RATIO_PAIRS: readonly (readonly [TargetId, TargetId])[] = [
  ['slotproxy-w1', 'twemproxy'],
  ['slotproxy-w1', 'twemproxy-v4'],
  ['slotproxy-w1', 'direct'],
  ['slotproxy-w2', 'twemproxy'],
  ['slotproxy-w2', 'twemproxy-v4'],
  ['slotproxy-w2', 'direct'],
  ['twemproxy', 'direct'],
  ['twemproxy-v4', 'direct'],
];

function ratioName(of: TargetId, to: TargetId): string {
  return `${TARGET_LABELS[of]}/${TARGET_LABELS[to]}`;
}

/** Rows of the CPU table: client first, then proxies, then the redis-servers. */
function cpuLabelOrder(a: string, b: string): number {
  const rank = (label: string): number =>
    label === 'redis-benchmark' ? 0 : label.startsWith('twemproxy') ? 1 : label.startsWith('slotproxy') ? 2 : 3;
  return rank(a) - rank(b) || a.localeCompare(b);
}

function round3(value: number): number {
  return Math.round(value * 1000) / 1000;
}

main().then(
  () => shutdown(0, null),
  (error: unknown) => shutdown(1, `failed: ${(error as Error).stack ?? String(error)}`),
);
