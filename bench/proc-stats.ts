/**
 * Readers of /proc for the bench: CPU ticks, RSS, open fds and the process tree.
 * Linux only; every reader returns null (or skips) for a process that is gone.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';

/** Clock ticks per second of utime/stime in /proc/<pid>/stat (sysconf(_SC_CLK_TCK)). */
export const CLOCK_TICKS_PER_SECOND: number = readClockTicks();

function readClockTicks(): number {
  try {
    const ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 2000 }).trim());
    return Number.isFinite(ticks) && ticks > 0 ? ticks : 100;
  } catch {
    return 100;
  }
}

/** The fields of /proc/<pid>/stat the bench uses. */
export interface ProcStat {
  readonly pid: number;
  /** Command name as the kernel keeps it (15 chars max). */
  readonly comm: string;
  /** R, S, D, Z, ... */
  readonly state: string;
  readonly ppid: number;
  /** User + system CPU of the process itself, in seconds. */
  readonly cpuSeconds: number;
  /** User + system CPU of its children that it has waited for, in seconds. */
  readonly childrenCpuSeconds: number;
  /** Start time in clock ticks after boot: with the pid, identifies a process across pid reuse. */
  readonly startTicks: number;
}

export function readStat(pid: number): ProcStat | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // comm may contain spaces and parentheses: split after the last ')'.
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < 0) return null;
  const rest = text.slice(close + 2).split(' ');
  // rest[0] is field 3 (state); utime is field 14, stime 15, cutime 16, cstime 17.
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  const cutime = Number(rest[13]);
  const cstime = Number(rest[14]);
  return {
    pid,
    comm: text.slice(open + 1, close),
    state: rest[0] ?? '?',
    ppid: Number(rest[1]),
    cpuSeconds: (utime + stime) / CLOCK_TICKS_PER_SECOND,
    childrenCpuSeconds: (cutime + cstime) / CLOCK_TICKS_PER_SECOND,
    startTicks: Number(rest[19]),
  };
}

/** True while the process exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  const stat = readStat(pid);
  return stat !== null && stat.state !== 'Z' && stat.state !== 'X';
}

/** VmRSS of one process in bytes, or null when it is gone. */
export function readRssBytes(pid: number): number | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return null;
  }
  const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(text);
  return match === null ? null : Number(match[1]) * 1024;
}

/** Sum of VmRSS over the given processes (the ones that are gone count 0). */
export function sumRssBytes(pids: readonly number[]): number {
  let total = 0;
  for (const pid of pids) total += readRssBytes(pid) ?? 0;
  return total;
}

/** Number of open file descriptors of one process, or null when it is gone / not readable. */
export function countFds(pid: number): number | null {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return null;
  }
}

/**
 * The process and all its living descendants, root first, then by pid.
 * /proc/<pid>/task/<tid>/children needs CONFIG_PROC_CHILDREN, which many kernels lack,
 * so this scans every /proc/<pid>/stat for its ppid instead (a few hundred small reads).
 */
export function processTree(rootPid: number): number[] {
  if (!isAlive(rootPid)) return [];
  const childrenOf = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = readStat(Number(entry));
    if (stat === null || stat.state === 'Z') continue;
    const siblings = childrenOf.get(stat.ppid);
    if (siblings === undefined) childrenOf.set(stat.ppid, [stat.pid]);
    else siblings.push(stat.pid);
  }
  const found: number[] = [];
  const queue = [rootPid];
  while (queue.length > 0) {
    const pid = queue.shift() as number;
    found.push(pid);
    for (const child of childrenOf.get(pid) ?? []) queue.push(child);
  }
  return [rootPid, ...found.slice(1).sort((a, b) => a - b)];
}

/** CPU seconds the current process has collected from children it waited for (redis-benchmark runs). */
export function ownChildrenCpuSeconds(): number {
  return readStat(process.pid)?.childrenCpuSeconds ?? 0;
}

/** Soft RLIMIT_NOFILE of a process (from /proc/<pid>/limits), or null. */
export function readFdLimit(pid: number): number | null {
  try {
    const match = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'));
    if (match === null) return null;
    return match[1] === 'unlimited' ? Number.POSITIVE_INFINITY : Number(match[1]);
  } catch {
    return null;
  }
}
