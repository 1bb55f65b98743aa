/**
 * One redis-benchmark run: spawn with --csv, bound it in time, parse its CSV line.
 * redis-benchmark 7 prints: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",
 * "p95_latency_ms","p99_latency_ms","max_latency_ms".
 */
import type { ProcessRegistry } from './processes';
import { ownChildrenCpuSeconds } from './proc-stats';

/** What one run measured (latencies in milliseconds). */
export interface BenchFigures {
  readonly rps: number;
  readonly avgMs: number;
  readonly minMs: number;
  readonly p50Ms: number;
  readonly p95Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
}

export type BenchCommand =
  /** A built-in test: `-t set` / `-t get`. */
  | { readonly kind: 'builtin'; readonly test: 'set' | 'get' }
  /** A custom command line, e.g. `mget k1 ... k10`. */
  | { readonly kind: 'custom'; readonly args: readonly string[] };

export interface BenchRunOptions {
  readonly port: number;
  readonly clients: number;
  readonly pipeline: number;
  readonly requests: number;
  /** -r: the keyspace of __rand_int__ in built-in tests. */
  readonly randomKeys: number;
  readonly command: BenchCommand;
  readonly timeoutMs: number;
}

export type BenchRunResult =
  | {
      readonly ok: true;
      readonly figures: BenchFigures;
      readonly wallSeconds: number;
      /** CPU seconds of the redis-benchmark process itself (user + system). */
      readonly clientCpuSeconds: number;
    }
  | { readonly ok: false; readonly error: string; readonly wallSeconds: number };

export function benchmarkArgs(options: BenchRunOptions): string[] {
  const args = [
    '-h', '127.0.0.1',
    '-p', String(options.port),
    '-c', String(options.clients),
    '-P', String(options.pipeline),
    '-n', String(options.requests),
    '-r', String(options.randomKeys),
    '--csv',
  ];
  if (options.command.kind === 'builtin') args.push('-t', options.command.test);
  else args.push(...options.command.args);
  return args;
}

/** Parses the first data line of redis-benchmark's --csv output. */
export function parseBenchCsv(stdout: string): BenchFigures | null {
  for (const line of stdout.split('\n')) {
    const fields = splitCsvLine(line.trim());
    if (fields.length < 8 || fields[0] === 'test') continue;
    const numbers = fields.slice(1, 8).map(Number);
    if (numbers.some((value) => !Number.isFinite(value))) continue;
    const [rps, avgMs, minMs, p50Ms, p95Ms, p99Ms, maxMs] = numbers;
    return { rps, avgMs, minMs, p50Ms, p95Ms, p99Ms, maxMs };
  }
  return null;
}

/** redis-benchmark quotes every field and never puts a quote inside one. */
function splitCsvLine(line: string): string[] {
  return [...line.matchAll(/"([^"]*)"/g)].map((match) => match[1]);
}

/**
 * Runs redis-benchmark once. It hangs on a target that stops answering (or refuses connections), so
 * it is killed after `timeoutMs`. An error reply makes redis-benchmark 7 exit 1: reported as failed.
 */
export async function runRedisBenchmark(registry: ProcessRegistry, options: BenchRunOptions): Promise<BenchRunResult> {
  const started = Date.now();
  const cpuBefore = ownChildrenCpuSeconds();
  const run = registry.start('redis-benchmark', 'redis-benchmark', benchmarkArgs(options));
  let stdout = '';
  let stderr = '';
  run.child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  run.child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    void registry.stop(run, 500);
  }, options.timeoutMs);
  const exit = await run.exited;
  clearTimeout(timer);
  // 'exit' fires after the child was waited for, so its CPU is already in our cutime/cstime.
  const clientCpuSeconds = ownChildrenCpuSeconds() - cpuBefore;
  const wallSeconds = (Date.now() - started) / 1000;
  const problem = stderr
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('WARNING: Could not fetch server CONFIG'))
    .join(' | ')
    .slice(0, 300);
  if (timedOut) return { ok: false, error: `timed out after ${options.timeoutMs / 1000} s ${problem}`.trim(), wallSeconds };
  if (exit.code !== 0) {
    return { ok: false, error: `exit ${exit.code ?? exit.signal}: ${problem || stdout.slice(0, 200)}`, wallSeconds };
  }
  const figures = parseBenchCsv(stdout);
  if (figures === null) return { ok: false, error: `no CSV figures in output: ${stdout.slice(0, 200)}`, wallSeconds };
  return { ok: true, figures, wallSeconds, clientCpuSeconds };
}
