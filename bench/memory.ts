/**
 * The memory part of the bench, run in a child process with a raised fd limit
 * (`node dist-bench/memory.js PLAN_JSON` under `ulimit -n`), because 10,000 client sockets do not fit
 * in a default limit of 1024 and should not count against the harness itself.
 *
 * Per proxy:
 *  (a) idle: RSS (VmRSS summed over the proxy's processes) before and with 10,000 idle connections,
 *      then after one PING on each of them, then after closing them.
 *  (b) slow reader: one client SETs a 1 MiB value, then pipelines 1,000 GETs of it (1 GiB of replies)
 *      on a raw socket that never reads; RSS is sampled every 250 ms for ~5 s. Then the socket closes
 *      and the proxy must still answer PING and a GET.
 */
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { delay, ProcessRegistry } from './processes';
import { countFds, processTree, readFdLimit, sumRssBytes } from './proc-stats';
import { encodeCommand, ping, RespConnection, runCommand } from './resp-client';

/** A proxy the memory part measures. */
export interface MemoryTarget {
  readonly id: string;
  readonly label: string;
  readonly port: number;
  /** Root pid: its descendants (forked workers) are found and summed. */
  readonly pid: number;
}

export interface MemoryPlan {
  readonly targets: readonly MemoryTarget[];
  /** The redis-server shards, to show where the slow reader's replies pile up instead. */
  readonly shardPids: readonly number[];
  readonly idleConnections: number;
  readonly bigValueBytes: number;
  readonly bigGets: number;
  readonly holdMs: number;
  readonly sampleEveryMs: number;
  /** Growth of the proxy's RSS under the slow reader at or above which it is reported unbounded. */
  readonly boundedGrowthBytes: number;
  /** The last part of the hold during which RSS must stay flat (within plateauSlackBytes) to count as bounded. */
  readonly plateauMs: number;
  readonly plateauSlackBytes: number;
}

export const DEFAULT_MEMORY_PLAN = {
  idleConnections: 10_000,
  bigValueBytes: 1024 * 1024,
  bigGets: 1000,
  holdMs: 5000,
  sampleEveryMs: 250,
  boundedGrowthBytes: 512 * 1024 * 1024,
  plateauMs: 2000,
  plateauSlackBytes: 16 * 1024 * 1024,
} as const satisfies Omit<MemoryPlan, 'targets' | 'shardPids'>;

export interface IdleResult {
  readonly target: string;
  readonly requested: number;
  /** Sockets whose connect succeeded on the client side. */
  readonly opened: number;
  readonly connectErrors: number;
  /** Open fds summed over the proxy's processes with all connections open. */
  readonly proxyFds: number;
  readonly proxyProcesses: number;
  readonly rssBeforeBytes: number;
  readonly rssIdleBytes: number;
  /** (rssIdle - rssBefore) / opened. */
  readonly bytesPerConnection: number;
  /** Connections that answered one PING each. */
  readonly pongs: number;
  readonly rssAfterPingBytes: number;
  readonly rssAfterCloseBytes: number;
  readonly seconds: number;
  readonly error: string | null;
}

export interface SlowReaderResult {
  readonly target: string;
  readonly requestedReplyBytes: number;
  readonly rssBeforeBytes: number;
  readonly maxRssBytes: number;
  readonly growthBytes: number;
  /** Proxy RSS every sampleEveryMs, in bytes. */
  readonly samples: readonly number[];
  /** Largest growth of the shards' summed RSS: replies the proxy did not take stay there. */
  readonly shardGrowthBytes: number;
  /** RSS still rose by more than plateauSlackBytes during the last plateauMs of the hold. */
  readonly isGrowingAtEnd: boolean;
  /** Not growing at the end, and growth below boundedGrowthBytes. */
  readonly isBounded: boolean;
  readonly pingAfterClose: boolean;
  readonly getAfterClose: boolean;
  readonly rssAfterCloseBytes: number;
  readonly error: string | null;
}

export interface MemoryResult {
  readonly idle: readonly IdleResult[];
  readonly slowReader: readonly SlowReaderResult[];
  readonly fdLimit: number | null;
  readonly error: string | null;
}

/** Runs the memory part in a child under a raised fd limit; never throws. */
export async function runMemoryPart(
  registry: ProcessRegistry,
  plan: MemoryPlan,
  timeoutMs: number,
): Promise<MemoryResult> {
  const empty = (error: string): MemoryResult => ({ idle: [], slowReader: [], fdLimit: null, error });
  if (plan.targets.length === 0) return empty('no proxy to measure');
  const child = registry.start('memory', process.execPath, [join(__dirname, 'memory.js'), JSON.stringify(plan)], {
    raiseFdLimit: true,
  });
  let stdout = '';
  child.child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.child.stderr?.setEncoding('utf8').on('data', (chunk: string) => process.stdout.write(chunk));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    void registry.stop(child, 1000);
  }, timeoutMs);
  const exit = await child.exited;
  clearTimeout(timer);
  const why = timedOut ? `timed out after ${timeoutMs / 1000} s` : `memory child exited ${exit.code ?? exit.signal}`;
  // The child prints its results so far after each measurement: keep the last complete line.
  for (const line of stdout.trim().split('\n').reverse()) {
    try {
      const result = JSON.parse(line) as MemoryResult;
      return timedOut || exit.code !== 0 ? { ...result, error: `${why}; partial results` } : result;
    } catch {
      // A line cut short by a kill: try the one before.
    }
  }
  return empty(`${why} without a result`);
}

function log(message: string): void {
  process.stderr.write(`  [memory] ${message}\n`);
}

function rssOf(target: MemoryTarget): number {
  return sumRssBytes(processTree(target.pid));
}

function fdsOf(target: MemoryTarget): number {
  return processTree(target.pid).reduce((sum, pid) => sum + (countFds(pid) ?? 0), 0);
}

/** Opens `count` sockets, `batch` connects in flight at a time. */
async function openIdleSockets(port: number, count: number, deadline: number): Promise<{ sockets: Socket[]; errors: number }> {
  const sockets: Socket[] = [];
  let errors = 0;
  const batch = 500;
  for (let first = 0; first < count && Date.now() < deadline; first += batch) {
    const size = Math.min(batch, count - first);
    const results = await Promise.all(
      Array.from(
        { length: size },
        () =>
          new Promise<Socket | null>((resolve) => {
            const socket = connect({ host: '127.0.0.1', port });
            const timer = setTimeout(() => {
              socket.destroy();
              resolve(null);
            }, 5000);
            socket.once('error', () => {
              clearTimeout(timer);
              resolve(null);
            });
            socket.once('connect', () => {
              clearTimeout(timer);
              // Later errors (a reset at close) must not crash the child.
              socket.on('error', () => undefined);
              resolve(socket);
            });
          }),
      ),
    );
    for (const socket of results) {
      if (socket === null) errors++;
      else sockets.push(socket);
    }
  }
  return { sockets, errors };
}

/** Waits until the proxy's fd count stops growing (it has accepted what the kernel queued). */
async function settleFds(target: MemoryTarget, atLeast: number, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let last = fdsOf(target);
  while (Date.now() < deadline) {
    await delay(250);
    const now = fdsOf(target);
    if (now >= atLeast && now === last) return now;
    last = now;
  }
  return last;
}

async function measureIdle(target: MemoryTarget, plan: MemoryPlan): Promise<IdleResult> {
  const started = Date.now();
  const deadline = started + 20_000;
  const rssBeforeBytes = rssOf(target);
  let sockets: Socket[] = [];
  const base = {
    target: target.label,
    requested: plan.idleConnections,
    proxyProcesses: processTree(target.pid).length,
    rssBeforeBytes,
  };
  try {
    const opened = await openIdleSockets(target.port, plan.idleConnections, deadline);
    sockets = opened.sockets;
    const proxyFds = await settleFds(target, sockets.length, 5000);
    await delay(500);
    const rssIdleBytes = rssOf(target);

    // One PING on every connection: are they all served, and what does one exchange leave behind?
    let pongs = 0;
    const allAnswered = new Promise<void>((resolve) => {
      if (sockets.length === 0) resolve();
      for (const socket of sockets) {
        let seen = '';
        const onData = (chunk: Buffer): void => {
          seen += chunk.toString('latin1');
          if (seen.includes('PONG')) {
            socket.off('data', onData);
            if (++pongs === sockets.length) resolve();
          }
        };
        socket.on('data', onData);
        socket.write('*1\r\n$4\r\nPING\r\n');
      }
    });
    await Promise.race([allAnswered, delay(Math.max(1000, Math.min(10_000, deadline - Date.now())))]);
    await delay(250);
    const rssAfterPingBytes = rssOf(target);
    for (const socket of sockets) socket.destroy();
    sockets = [];
    await delay(1000);
    return {
      ...base,
      opened: opened.sockets.length,
      connectErrors: opened.errors,
      proxyFds,
      rssIdleBytes,
      bytesPerConnection: opened.sockets.length > 0 ? (rssIdleBytes - rssBeforeBytes) / opened.sockets.length : 0,
      pongs,
      rssAfterPingBytes,
      rssAfterCloseBytes: rssOf(target),
      seconds: (Date.now() - started) / 1000,
      error: null,
    };
  } catch (error) {
    for (const socket of sockets) socket.destroy();
    return {
      ...base,
      opened: sockets.length,
      connectErrors: 0,
      proxyFds: 0,
      rssIdleBytes: 0,
      bytesPerConnection: 0,
      pongs: 0,
      rssAfterPingBytes: 0,
      rssAfterCloseBytes: 0,
      seconds: (Date.now() - started) / 1000,
      error: (error as Error).message,
    };
  }
}

async function measureSlowReader(target: MemoryTarget, plan: MemoryPlan): Promise<SlowReaderResult> {
  const bigKey = `bench:big:${target.id}`;
  const smallKey = `bench:small:${target.id}`;
  const base = { target: target.label, requestedReplyBytes: plan.bigValueBytes * plan.bigGets };
  let socket: Socket | null = null;
  try {
    const setup = await RespConnection.open(target.port, 3000);
    try {
      const bigSet = await setup.command(['SET', bigKey, Buffer.alloc(plan.bigValueBytes, 'x')], 10_000);
      if (bigSet !== 'OK') throw new Error(`SET of the 1 MiB value answered ${String(bigSet)}`);
      const smallSet = await setup.command(['SET', smallKey, 'still-here'], 3000);
      if (smallSet !== 'OK') throw new Error(`SET answered ${String(smallSet)}`);
    } finally {
      setup.close();
    }
    await delay(250);
    const rssBeforeBytes = rssOf(target);
    const shardsBefore = sumRssBytes(plan.shardPids);

    const get = encodeCommand(['GET', bigKey]);
    const requests = Buffer.concat(Array.from({ length: plan.bigGets }, () => get));
    const slow = connect({ host: '127.0.0.1', port: target.port });
    socket = slow;
    // Never read: no 'data' listener and paused, so Node stops reading once its small buffer is full.
    slow.pause();
    slow.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('slow reader connect timed out')), 3000);
      slow.once('connect', () => {
        clearTimeout(timer);
        resolve();
      });
    });
    slow.write(requests);

    const samples: number[] = [];
    let shardGrowthBytes = 0;
    const until = Date.now() + plan.holdMs;
    while (Date.now() < until) {
      await delay(plan.sampleEveryMs);
      samples.push(rssOf(target));
      shardGrowthBytes = Math.max(shardGrowthBytes, sumRssBytes(plan.shardPids) - shardsBefore);
    }
    slow.destroy();
    socket = null;
    await delay(500);
    const pingAfterClose = await ping(target.port, 5000);
    let getAfterClose = false;
    try {
      getAfterClose = (await runCommand(target.port, ['GET', smallKey], 5000)) === 'still-here';
    } catch {
      getAfterClose = false;
    }
    await delay(500);
    const maxRssBytes = Math.max(rssBeforeBytes, ...samples);
    const growthBytes = maxRssBytes - rssBeforeBytes;
    const tail = samples.slice(-Math.max(2, Math.round(plan.plateauMs / plan.sampleEveryMs) + 1));
    const isGrowingAtEnd = Math.max(...tail) - tail[0] > plan.plateauSlackBytes;
    return {
      ...base,
      rssBeforeBytes,
      maxRssBytes,
      growthBytes,
      samples,
      shardGrowthBytes,
      isGrowingAtEnd,
      isBounded: !isGrowingAtEnd && growthBytes < plan.boundedGrowthBytes,
      pingAfterClose,
      getAfterClose,
      rssAfterCloseBytes: rssOf(target),
      error: null,
    };
  } catch (error) {
    socket?.destroy();
    return {
      ...base,
      rssBeforeBytes: 0,
      maxRssBytes: 0,
      growthBytes: 0,
      samples: [],
      shardGrowthBytes: 0,
      isGrowingAtEnd: false,
      isBounded: false,
      pingAfterClose: await ping(target.port, 2000),
      getAfterClose: false,
      rssAfterCloseBytes: rssOf(target),
      error: (error as Error).message,
    };
  }
}

async function main(): Promise<void> {
  const plan = JSON.parse(process.argv[2] ?? '{}') as MemoryPlan;
  const idle: IdleResult[] = [];
  const slowReader: SlowReaderResult[] = [];
  const fdLimit = readFdLimit(process.pid);
  log(`fd limit of the memory client: ${fdLimit}`);
  // One JSON line after every measurement: if the parent's time bound kills us, it keeps what was done.
  const report = (): void => {
    const result: MemoryResult = { idle, slowReader, fdLimit: Number.isFinite(fdLimit) ? fdLimit : null, error: null };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  };
  for (const target of plan.targets) {
    log(`${target.label}: ${plan.idleConnections} idle connections`);
    idle.push(await measureIdle(target, plan));
    report();
    log(`${target.label}: slow reader, ${plan.bigGets} x GET of ${plan.bigValueBytes} bytes, not read for ${plan.holdMs} ms`);
    slowReader.push(await measureSlowReader(target, plan));
    report();
  }
}

if (require.main === module) {
  main().then(
    () => process.exit(0),
    (error: unknown) => {
      process.stderr.write(`memory part failed: ${(error as Error).stack ?? String(error)}\n`);
      process.exit(1);
    },
  );
}
