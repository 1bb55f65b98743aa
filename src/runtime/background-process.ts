import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { constants, setPriority } from 'node:os';
import { findExecutable } from './find-executable';

/**
 * A process of the proxy for background work (the slot mover): killed with its parent, so it
 * never outlives the proxy that started it, and in the SCHED_IDLE class, every thread of it, so
 * it takes a core only when no thread of the data path, shard or client wants one.
 *
 * Why SCHED_IDLE: on a machine of a few cores shared with the shards, a normal thread's bursts
 * of CPU, whatever its nice value, make threads that wake meanwhile wait for a time slice (up to
 * a 4 ms tick here). Measured with the slot mover beside a paced client load
 * (docs/resharding-latency.md): client p99 during a move 1.8-1.9 ms in SCHED_IDLE, 2.0-2.3 in
 * SCHED_BATCH or at nice 19, 2.5-3.0 at nice 0. Idle-class bursts still cost a little (a thread
 * woken onto that core waits for the burst to end), so the work should come in short ones.
 *
 * Why a process, not a worker thread: a worker shares V8's helper threads (compiler, GC) with
 * the data path. The mover's code keeps them busy (~165 optimizing compilations in a plan), and
 * they cannot be made idle without starving the data path's own parallel GC under load. A
 * process of its own has helpers of its own, idle like its main thread, or none (the mover runs
 * with `--single-threaded`: slot-migrator.ts says why).
 *
 * Both come from util-linux (`setpriv` 2.33 or later for --pdeathsig, `chrt`), on every current
 * Debian. Best effort: without them (not Linux, an older setpriv) the process has no parent-death
 * signal, ends itself when its IPC channel closes, and runs at the lowest nice value.
 */

/** Tells idleThisProcess() to leave the process at its parent's priority. */
const NORMAL_PRIORITY_ARG = '--normal-priority';

/**
 * The command line that runs `file args` as a background process of this one; at `priority`
 * 'normal', idleThisProcess() leaves it at this process's priority (for work that must not
 * starve on saturated cores).
 */
export function backgroundCommand(file: string, args: readonly string[], priority: 'idle' | 'normal' = 'idle'): { file: string; args: string[] } {
  const setpriv = deathSignalWrapper();
  const all = priority === 'normal' ? [...args, NORMAL_PRIORITY_ARG] : [...args];
  // The parent whose death counts is the thread that forked: Node's main thread, alive as long as the proxy.
  if (setpriv === null) return { file, args: all };
  return { file: setpriv, args: ['--pdeathsig', 'KILL', '--', file, ...all] };
}

/** `setpriv` when it is there and knows --pdeathsig (util-linux 2.33 and later); undefined until checked, once. */
let deathSignalWrapperPath: string | null | undefined;

function deathSignalWrapper(): string | null {
  if (deathSignalWrapperPath !== undefined) return deathSignalWrapperPath;
  deathSignalWrapperPath = findExecutable('setpriv');
  if (deathSignalWrapperPath !== null) {
    try {
      execFileSync(deathSignalWrapperPath, ['--pdeathsig', 'KILL', '--', 'true'], { stdio: 'ignore', timeout: 5_000 });
    } catch {
      deathSignalWrapperPath = null;
    }
  }
  return deathSignalWrapperPath;
}

/**
 * Puts every thread of this process in SCHED_IDLE at the lowest nice value; threads started
 * later inherit both from the thread that starts them. Called first thing by the process; does
 * nothing in one started at 'normal' priority.
 */
export function idleThisProcess(): void {
  if (process.argv.includes(NORMAL_PRIORITY_ARG)) return;
  try {
    setPriority(0, constants.priority.PRIORITY_LOW);
  } catch {
    // Not allowed: SCHED_IDLE below still is.
  }
  const chrt = findExecutable('chrt');
  if (chrt === null) return;
  try {
    execFileSync(chrt, ['--idle', '--all-tasks', '--pid', '0', String(process.pid)], { stdio: 'ignore', timeout: 5_000 });
  } catch {
    // Not allowed here: the nice value alone.
  }
}

/**
 * How long the main thread of process `pid` has waited, runnable, for a core (ms in all, from
 * /proc/PID/schedstat's second field); null where the kernel does not say (not Linux, or
 * without CONFIG_SCHED_INFO). A process that waits most of a while this way is starved of CPU.
 */
export function runQueueWaitMs(pid: number): number | null {
  try {
    const fields = readFileSync(`/proc/${pid}/schedstat`, 'latin1').split(' ');
    const waitNs = Number(fields[1]);
    return Number.isFinite(waitNs) ? waitNs / 1e6 : null;
  } catch {
    return null;
  }
}
