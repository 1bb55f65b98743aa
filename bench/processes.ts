/**
 * Every process the bench starts goes through one ProcessRegistry, which stops them all by PID
 * (SIGTERM, then SIGKILL after a grace period) at the end, on error and on SIGINT.
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { isAlive, processTree, readStat } from './proc-stats';

/** Open files asked for the proxies and the memory client (10,000 idle connections need more than 10k). */
export const WANTED_FD_LIMIT = 65536;

/** How a started process ended. */
export interface ExitInfo {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface SpawnOptions {
  readonly cwd?: string;
  /** stdout and stderr are appended to this file; otherwise they are piped for the caller to read. */
  readonly logPath?: string;
  /** Run under `ulimit -n` of WANTED_FD_LIMIT (or the hard limit when that is lower). */
  readonly raiseFdLimit?: boolean;
  readonly env?: NodeJS.ProcessEnv;
}

/** One process started by the bench. */
export class ManagedProcess {
  readonly name: string;
  readonly pid: number;
  readonly child: ChildProcess;
  /** Where its output goes, when it goes to a file. */
  readonly logPath: string | null;
  /** Resolves once it has exited (never rejects). */
  readonly exited: Promise<ExitInfo>;
  #exit: ExitInfo | null = null;

  constructor(name: string, child: ChildProcess, logPath: string | null) {
    if (child.pid === undefined) throw new Error(`${name}: spawn returned no pid`);
    this.name = name;
    this.pid = child.pid;
    this.child = child;
    this.logPath = logPath;
    this.exited = new Promise<ExitInfo>((resolve) => {
      child.once('exit', (code, signal) => {
        this.#exit = { code, signal };
        resolve(this.#exit);
      });
    });
  }

  get hasExited(): boolean {
    return this.#exit !== null;
  }

  get exitInfo(): ExitInfo | null {
    return this.#exit;
  }

  /** Last lines of its log file, for error messages. */
  logTail(lines = 15): string {
    if (this.logPath === null) return '';
    try {
      return readFileSync(this.logPath, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }
}

/** A process seen at some point (pid + start time, so a reused pid is never signalled). */
interface KnownProcess {
  readonly pid: number;
  readonly startTicks: number;
}

export class ProcessRegistry {
  readonly #started: ManagedProcess[] = [];
  /** Descendants seen while sampling (e.g. the proxy's forked workers), keyed by pid. */
  readonly #known = new Map<number, KnownProcess>();
  #isStopping = false;

  /** Starts a process; throws when it cannot be spawned at all. */
  start(name: string, command: string, args: readonly string[], options: SpawnOptions = {}): ManagedProcess {
    // Nothing new may start once stopAll() has taken its list of processes to stop.
    if (this.#isStopping) throw new Error(`not starting ${name}: stopping`);
    let file = command;
    let argv: string[] = [...args];
    if (options.raiseFdLimit === true) {
      // `exec` keeps the pid: the pid we track is the real process, not a shell.
      file = 'bash';
      argv = [
        '-c',
        'ulimit -n "$BENCH_NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"',
        'bench-fd-limit',
        command,
        ...args,
      ];
    }
    let logFd: number | null = null;
    let stdio: StdioOptions = ['ignore', 'pipe', 'pipe'];
    if (options.logPath !== undefined) {
      logFd = openSync(options.logPath, 'a');
      stdio = ['ignore', logFd, logFd];
    }
    try {
      const child = spawn(file, argv, {
        cwd: options.cwd,
        stdio,
        env: { ...(options.env ?? process.env), BENCH_NOFILE: String(WANTED_FD_LIMIT) },
      });
      // A failed exec is reported as an 'error' event; the 'exit' handler still fires.
      child.on('error', () => undefined);
      if (child.pid === undefined) throw new Error(`cannot start ${command}`);
      const managed = new ManagedProcess(name, child, options.logPath ?? null);
      this.#started.push(managed);
      this.remember(managed.pid);
      return managed;
    } finally {
      if (logFd !== null) closeSync(logFd);
    }
  }

  /** Records a pid (e.g. a forked worker) so that stopAll() signals it too. */
  remember(pid: number): void {
    const stat = readStat(pid);
    if (stat !== null) this.#known.set(pid, { pid, startTicks: stat.startTicks });
  }

  /** The process and its living descendants, all remembered for stopAll(). */
  treeOf(started: ManagedProcess): number[] {
    if (started.hasExited) return [];
    const pids = processTree(started.pid);
    for (const pid of pids) if (!this.#known.has(pid)) this.remember(pid);
    return pids;
  }

  /** Stops one started process and its descendants. */
  async stop(target: ManagedProcess, graceMs = 3000): Promise<void> {
    await this.#stopPids(this.treeOf(target), graceMs);
    await Promise.race([target.exited, delay(1000)]);
  }

  /** Stops everything ever started or seen; safe to call more than once. */
  async stopAll(graceMs = 3000): Promise<void> {
    this.#isStopping = true;
    for (const started of this.#started) this.treeOf(started);
    await this.#stopPids([...this.#known.keys()], graceMs);
  }

  get isStopping(): boolean {
    return this.#isStopping;
  }

  /** Last resort from a synchronous 'exit' handler: SIGKILL whatever is still alive. */
  killAllNow(): void {
    for (const pid of this.#stillOurs([...this.#known.keys()])) signal(pid, 'SIGKILL');
  }

  /** Pids still alive and still the process we saw (same start time). */
  #stillOurs(pids: readonly number[]): number[] {
    return pids.filter((pid) => {
      const known = this.#known.get(pid);
      const stat = readStat(pid);
      if (stat === null || stat.state === 'Z') return false;
      return known === undefined || known.startTicks === stat.startTicks;
    });
  }

  async #stopPids(pids: readonly number[], graceMs: number): Promise<void> {
    const targets = this.#stillOurs(pids);
    for (const pid of targets) signal(pid, 'SIGTERM');
    const deadline = Date.now() + graceMs;
    while (Date.now() < deadline && targets.some(isAlive)) await delay(50);
    const stubborn = this.#stillOurs(targets);
    for (const pid of stubborn) signal(pid, 'SIGKILL');
    const killDeadline = Date.now() + 2000;
    while (Date.now() < killDeadline && stubborn.some(isAlive)) await delay(50);
  }
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // Already gone.
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
