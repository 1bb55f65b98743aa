import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { stringify } from 'yaml';
import { findFreePort } from '../../src/cli/local-redis';
import { killWithTestProcess } from '../helpers/proxy-harness';

/**
 * A real Prometheus server (Debian's `prometheus` package, installed by
 * scripts/ensure-prometheus.sh) on a free loopback port, with a generated config scraping the
 * given targets every second and its TSDB in a temp folder. Stopped by the PID we spawned.
 */

/** How long Prometheus may take to answer /-/ready. */
const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 5_000;
const KILL_TIMEOUT_MS = 2_000;
const PORT_ATTEMPTS = 3;
const POLL_INTERVAL_MS = 100;

/** The `prometheus` binary on PATH, or null. */
export function findPrometheus(): string | null {
  const found = spawnSync('sh', ['-c', 'command -v prometheus'], { encoding: 'utf8' });
  const binary = found.stdout.trim();
  return found.status === 0 && binary !== '' ? binary : null;
}

export interface PrometheusOptions {
  /** `host:port` addresses scraped at /metrics under job "slotproxy". */
  readonly targets: readonly string[];
  /** @default 1s */
  readonly scrapeInterval?: string;
}

/** One sample of an instant vector. */
export interface VectorSample {
  readonly metric: Readonly<Record<string, string>>;
  readonly value: readonly [number, string];
}

export interface PrometheusServer {
  readonly port: number;
  readonly url: string;
  /** Output so far (Prometheus logs to stderr). */
  logs(): string;
  /** GET `path` of the HTTP API and return its JSON `data`; throws on an HTTP or API error. */
  api<T>(pathAndQuery: string): Promise<T>;
  /**
   * Resolves once every target has been scraped successfully. Prometheus applies its first
   * targets about 5 s after it starts (the discovery manager's update throttle), so wait for
   * this before traffic that rate() windows must see.
   */
  waitForTargetsUp(timeoutMs?: number): Promise<void>;
  /** Instant query at the current time. Throws with Prometheus's error text when it does not parse. */
  query(expr: string): Promise<{ readonly resultType: string; readonly result: readonly VectorSample[] }>;
  /** SIGTERM, SIGKILL after 5 s, remove the temp folder; safe to call twice. */
  stop(): Promise<void>;
}

export async function startPrometheus(binary: string, options: PrometheusOptions): Promise<PrometheusServer> {
  for (let attempt = 1; ; attempt++) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'slotproxy-prometheus-'));
    try {
      return await startOnce(binary, options, dir, await findFreePort());
    } catch (err) {
      fs.rmSync(dir, { recursive: true, force: true });
      if (!/address already in use/i.test(String(err)) || attempt >= PORT_ATTEMPTS) throw err;
    }
  }
}

async function startOnce(binary: string, options: PrometheusOptions, dir: string, port: number): Promise<PrometheusServer> {
  const interval = options.scrapeInterval ?? '1s';
  const configFile = path.join(dir, 'prometheus.yml');
  fs.writeFileSync(
    configFile,
    stringify({
      global: { scrape_interval: interval, evaluation_interval: interval, scrape_timeout: interval },
      scrape_configs: [{ job_name: 'slotproxy', metrics_path: '/metrics', static_configs: [{ targets: [...options.targets] }] }],
    }),
  );
  const child: ChildProcess = spawn(
    binary,
    [
      `--config.file=${configFile}`,
      `--storage.tsdb.path=${path.join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ],
    { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  let isRunning = true;
  const exited = new Promise<void>((resolve) => {
    const onGone = (): void => {
      isRunning = false;
      resolve();
    };
    child.once('exit', onGone);
    child.once('error', onGone);
  });
  killWithTestProcess(child);

  const waitForExit = async (ms: number): Promise<boolean> => {
    let timer: NodeJS.Timeout | undefined;
    const gone = await Promise.race([exited.then(() => true), new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)))]);
    clearTimeout(timer);
    return gone;
  };
  const signal = (sig: NodeJS.Signals): void => {
    if (!isRunning || child.pid === undefined) return;
    try {
      process.kill(child.pid, sig);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  };
  let isStopped = false;
  const stop = async (): Promise<void> => {
    if (isStopped) return;
    isStopped = true;
    try {
      signal('SIGTERM');
      if (!(await waitForExit(STOP_TIMEOUT_MS))) {
        signal('SIGKILL');
        if (!(await waitForExit(KILL_TIMEOUT_MS))) throw new Error(`prometheus pid ${child.pid} did not exit after SIGKILL`);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  };

  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (!isRunning) throw new Error(`prometheus exited at start (code ${child.exitCode}):\n${output}`);
    const ready = await fetch(`${url}/-/ready`).then(
      (res) => res.ok,
      () => false,
    );
    if (ready) break;
    if (Date.now() >= deadline) {
      await stop();
      throw new Error(`prometheus did not become ready on ${url} within ${START_TIMEOUT_MS} ms:\n${output}`);
    }
    await sleep(POLL_INTERVAL_MS);
  }

  const api = async <T>(pathAndQuery: string): Promise<T> => {
    const res = await fetch(`${url}${pathAndQuery}`);
    const body = (await res.json()) as { status: string; data?: T; errorType?: string; error?: string };
    if (body.status !== 'success') throw new Error(`${pathAndQuery}: ${body.errorType ?? res.status}: ${body.error ?? 'no error text'}`);
    return body.data as T;
  };
  return {
    port,
    url,
    logs: () => output,
    api,
    query: (expr) => api(`/api/v1/query?query=${encodeURIComponent(expr)}`),
    async waitForTargetsUp(timeoutMs = 15_000) {
      await waitFor('every target scraped', async () => {
        const { activeTargets } = await api<{ activeTargets: { health: string }[] }>('/api/v1/targets');
        return activeTargets.length === options.targets.length && activeTargets.every((t) => t.health === 'up') ? true : undefined;
      }, timeoutMs);
    },
    stop,
  };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `probe` until it returns a value other than undefined; throws after `timeoutMs`. */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs: number, intervalMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown = null;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError === null ? '' : `: ${String(lastError)}`}`);
    await sleep(intervalMs);
  }
}
