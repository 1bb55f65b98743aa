import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { constants, setPriority } from 'node:os';
import { log } from '../log/logger';

/**
 * Background threads of the proxy in the SCHED_IDLE class: they only ever use a core no
 * thread of the data path, shard or client is waiting for.
 *
 * Why: on a machine of a few cores shared with the shards, the Linux scheduler (EEVDF) lets a
 * running thread finish its time slice, a millisecond or more, before a thread that wakes up
 * gets the core, whatever their nice values; SCHED_IDLE is the one class a waking thread always
 * preempts. Measured on 2 vCPUs, the same load with a busy loop beside it at nice 19 for 40% of
 * a core: client p99 2.1-2.9x, as at nice 0 (docs/resharding.md, "Limits").
 *
 * Best effort: not Linux, or no `chrt` (util-linux), and the threads keep their class.
 */

/**
 * V8's helper threads: its optimizing compiler, its parallel and concurrent GC. Their work is
 * background work by nature (compiling code that runs well enough meanwhile; GC work the event
 * loop does itself when no helper runs), and it comes in bursts when new code gets hot, as when
 * the first slot move of a run starts: the mover thread's code and its streams are compiled
 * afresh, ~0.5 s of compiling in a 5 s move.
 *
 * Called first thing at start, before anything uses libuv's thread pool: the threads that exist
 * then, other than the main one, are V8's. The pool's threads, started later by the main thread,
 * keep its normal class: they write the state file, which a failover waits for.
 */
export function idleHelperThreads(): void {
  if (process.platform !== 'linux') return;
  let helpers: string[];
  try {
    helpers = fs.readdirSync('/proc/self/task').filter((tid) => Number(tid) !== process.pid);
  } catch {
    return;
  }
  if (helpers.length > 0 && !idleThreads(helpers)) log.info('V8 helper threads left at their CPU priority (no chrt)');
}

/**
 * The calling thread (a worker thread doing background work) at the lowest nice value and in
 * SCHED_IDLE. On Linux both belong to the thread, and /proc/thread-self names this one's id.
 */
export function idleOwnThread(): void {
  let threadId: number;
  try {
    threadId = Number(fs.readlinkSync('/proc/thread-self').split('/').pop());
  } catch {
    return;
  }
  if (!Number.isInteger(threadId) || threadId <= 0) return;
  try {
    setPriority(threadId, constants.priority.PRIORITY_LOW);
  } catch {
    // Not allowed: SCHED_IDLE below still is.
  }
  idleThreads([String(threadId)]);
}

/** Puts the threads (ids of this process) in SCHED_IDLE; false when chrt could not be run. */
function idleThreads(threadIds: readonly string[]): boolean {
  try {
    // One shell for all of them; a thread gone meanwhile is no error.
    execFileSync('sh', ['-c', 'command -v chrt >/dev/null || exit 127; for t; do chrt --idle --pid 0 "$t" 2>/dev/null; done; exit 0', 'sh', ...threadIds], {
      stdio: 'ignore',
      timeout: 5_000,
    });
    return true;
  } catch {
    return false;
  }
}
