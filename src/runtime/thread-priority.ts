import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { constants, setPriority } from 'node:os';

/**
 * A background thread of the proxy (the slot mover's) in the SCHED_IDLE class: it only ever uses
 * a core no thread of the data path, shard or client is waiting for.
 *
 * Why not a nice value alone: on a machine of a few cores shared with the shards, the Linux
 * scheduler (EEVDF) lets a running thread finish its time slice, up to a 4 ms tick here, before
 * a thread that wakes up gets the core, whatever their nice values; SCHED_IDLE is the one class
 * a waking thread always preempts. Measured on 2 vCPUs, the same load with a busy loop beside it
 * at nice 19 for 40% of a core: client p99 2.1-2.9x, as at nice 0 (docs/resharding.md, "Limits").
 *
 * V8's helper threads (compiler, GC) are left in the normal class: in SCHED_IDLE they cut a slot
 * move's p99 by a third, but the event loop then did the parallel GC work alone when the cores
 * were saturated, and the benchmark lost ~10% at -P 16 (docs/resharding.md).
 *
 * Best effort: not Linux, or no `chrt` (util-linux), and the thread keeps its class.
 */

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
  try {
    execFileSync('chrt', ['--idle', '--pid', '0', String(threadId)], { stdio: 'ignore', timeout: 5_000 });
  } catch {
    // No chrt: the nice value alone.
  }
}
