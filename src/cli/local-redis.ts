import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import Redis from 'ioredis';
import { findExecutable } from '../runtime/find-executable';

/**
 * Child redis-server processes on loopback ports, for `slotproxy demo` and the test harness.
 * Every process is owned by the PID we spawned: stopping never looks processes up by name, so
 * a system Redis or another test run on the same machine is never touched.
 */

/** The port a system Redis usually holds; never handed out by findFreePort. */
export const DEFAULT_REDIS_PORT = 6379;

export const REDIS_INSTALL_HINT =
  "redis-server not found: install it with 'apt-get install redis-server redis-tools' (Debian/Ubuntu)";

/** How long stop() waits for a signalled server before SIGKILL, and then for SIGKILL itself. */
const STOP_TIMEOUT_MS = 5_000;
const KILL_TIMEOUT_MS = 2_000;
/** Attempts at another free port when one found free was taken before redis-server bound it. */
const PORT_ATTEMPTS = 5;
/** Pause between readiness and replication polls. */
const POLL_INTERVAL_MS = 50;

export class RedisNotFoundError extends Error {
  override readonly name = 'RedisNotFoundError';

  constructor() {
    super(REDIS_INSTALL_HINT);
  }
}

/** redis-server exited or did not answer in time; the message carries the end of its log. */
export class RedisStartError extends Error {
  override readonly name = 'RedisStartError';

  constructor(
    message: string,
    /** The port it was started on. */
    readonly port: number,
    /** It could not bind because another process holds the port. */
    readonly isPortInUse: boolean,
  ) {
    super(message);
  }
}

export interface RedisServerOptions {
  /** Folder for the AOF, RDB and logs of this server; created when missing. */
  readonly dir: string;
  /** A port taken by another process fails the start. @default a free port, retried if raced */
  readonly port?: number;
  /** Loopback address to bind (`127.0.0.1` or `::1`). @default 127.0.0.1 */
  readonly host?: string;
  /** @default false */
  readonly appendonly?: boolean;
  /** Start as a replica of this node (`--replicaof`). @default null */
  readonly replicaOf?: { readonly host: string; readonly port: number };
  /** More `--name value` arguments, appended last so they win over ours. @default [] */
  readonly extraArgs?: readonly string[];
  /** requirepass, and masterauth so a replica can sync from a primary with the same password. */
  readonly password?: string;
  /** How long to wait for PING after spawning. @default 5000 */
  readonly startTimeoutMs?: number;
}

export interface LocalRedis {
  readonly host: string;
  readonly port: number;
  /** PID of the current process; a new one after restart(). */
  readonly pid: number;
  /** Absolute data folder (AOF, RDB, redis.log). */
  readonly dir: string;
  readonly password: string | null;
  /** False once the process has exited, whoever ended it. */
  readonly isRunning: boolean;
  /** Signal the PID (SIGTERM by default), wait for exit, SIGKILL if it takes too long. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Send a raw signal (SIGSTOP, SIGCONT, SIGKILL...) and return at once. */
  kill(signal: NodeJS.Signals): void;
  /** stop(), then start again on the same port and data folder. */
  restart(): Promise<void>;
}

/** A free TCP port on `host`, found by binding port 0 and closing again. */
export async function findFreePort(host = '127.0.0.1'): Promise<number> {
  for (;;) {
    const port = await tryListen(host, 0);
    // The kernel hands out ephemeral ports, so the default port is unlikely, but a test that
    // got it would talk to the machine's own Redis if ours then failed to bind.
    if (port !== null && port !== DEFAULT_REDIS_PORT) return port;
    if (port === null) throw new Error(`cannot bind any port on ${host}`);
  }
}

/** True when nothing listens on `host:port` right now (it may be taken a moment later). */
export async function isPortFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return (await tryListen(host, port)) !== null;
}

export async function startRedisServer(options: RedisServerOptions): Promise<LocalRedis> {
  const executable = findExecutable('redis-server');
  if (executable === null) throw new RedisNotFoundError();
  const host = options.host ?? '127.0.0.1';
  const dir = path.resolve(options.dir);
  fs.mkdirSync(dir, { recursive: true });

  if (options.port !== undefined) {
    const server = new RedisServerProcess(executable, options, host, dir, options.port);
    await server.start();
    return server;
  }
  for (let attempt = 1; ; attempt++) {
    const server = new RedisServerProcess(executable, options, host, dir, await findFreePort(host));
    try {
      await server.start();
      return server;
    } catch (err) {
      // Another process may bind the port between findFreePort closing it and redis-server binding it.
      if (!(err instanceof RedisStartError && err.isPortInUse) || attempt >= PORT_ATTEMPTS) throw err;
    }
  }
}

/** Resolves when the replica's INFO replication shows `master_link_status:up`. */
export async function waitForReplication(replica: LocalRedis, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastSeen = 'no reply';
  for (;;) {
    try {
      const info = await withConnection(replica, (redis) => redis.info('replication'));
      if (/^master_link_status:up\r?$/m.test(info)) return;
      lastSeen = /^master_link_status:(\S*)/m.exec(info)?.[0] ?? /^role:(\S*)/m.exec(info)?.[0] ?? info;
    } catch (err) {
      lastSeen = (err as Error).message;
    }
    if (Date.now() >= deadline) {
      throw new Error(
        `replica ${replica.host}:${replica.port} not linked to its primary after ${timeoutMs} ms (${lastSeen})`,
      );
    }
    await sleep(POLL_INTERVAL_MS);
  }
}

/** Servers still running, signalled when this process exits so none outlives a crashed caller. */
const liveServers = new Set<RedisServerProcess>();
let isExitHookInstalled = false;

function stopLeftoversOnExit(): void {
  for (const server of liveServers) server.signalOnExit();
}

class RedisServerProcess implements LocalRedis {
  readonly host: string;
  readonly port: number;
  readonly dir: string;
  readonly password: string | null;
  /** The redis-server binary found on PATH. */
  readonly #executable: string;
  /** Command line without the executable; the same for every restart. */
  readonly #args: readonly string[];
  readonly #startTimeoutMs: number;
  readonly #logFile: string;
  /** stdout and stderr of the process: what redis-server prints before its logfile is open. */
  readonly #outputFile: string;
  /** The current process; null before the first start. */
  #child: ChildProcess | null = null;
  /** Resolves when the current process has exited (or failed to spawn). */
  #exited: Promise<void> = Promise.resolve();
  #isRunning = false;

  constructor(executable: string, options: RedisServerOptions, host: string, dir: string, port: number) {
    this.#executable = executable;
    this.host = host;
    this.port = port;
    this.dir = dir;
    this.password = options.password ?? null;
    this.#startTimeoutMs = options.startTimeoutMs ?? 5_000;
    this.#logFile = path.join(dir, 'redis.log');
    this.#outputFile = path.join(dir, 'redis.out');
    const args = [
      '--port', String(port),
      '--bind', host,
      '--dir', dir,
      '--save', '',
      '--appendonly', options.appendonly === true ? 'yes' : 'no',
      '--daemonize', 'no',
      '--protected-mode', 'no',
      '--logfile', this.#logFile,
      // A primary otherwise waits 5 s for more replicas before a diskless full sync; these
      // servers are local and short-lived, so a replica's first sync should start at once.
      '--repl-diskless-sync-delay', '0',
    ];
    if (options.replicaOf !== undefined) {
      args.push('--replicaof', options.replicaOf.host, String(options.replicaOf.port));
    }
    if (options.password !== undefined) {
      // redis-server rewrites its process title at start, so the password does not stay visible in ps.
      args.push('--requirepass', options.password, '--masterauth', options.password);
    }
    args.push(...(options.extraArgs ?? []));
    this.#args = args;
  }

  get pid(): number {
    return this.#child?.pid ?? 0;
  }

  get isRunning(): boolean {
    return this.#isRunning;
  }

  /** Spawn the process and wait until it answers PING as itself. */
  async start(): Promise<void> {
    // Only the log written by this start explains a failure of this start.
    const logOffset = fileSize(this.#logFile);
    const outputOffset = fileSize(this.#outputFile);
    const child = this.#spawn();
    const deadline = Date.now() + this.#startTimeoutMs;
    for (;;) {
      if (!this.#isRunning) {
        throw this.#startError(`redis-server on port ${this.port} exited at start`, logOffset, outputOffset);
      }
      // Racing the exit: a probe that reached another process on a taken port would wait for
      // its command timeout although our server has already given up.
      const exitedFirst = this.#exited.then(() => false);
      if (await Promise.race([this.#answersAs(child.pid ?? 0), exitedFirst])) return;
      if (Date.now() >= deadline) {
        await this.stop('SIGKILL');
        throw this.#startError(
          `redis-server on port ${this.port} did not answer PING within ${this.#startTimeoutMs} ms`,
          logOffset,
          outputOffset,
        );
      }
      await sleep(POLL_INTERVAL_MS);
    }
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (!this.#isRunning) return;
    this.kill(signal);
    // A paused (SIGSTOP) server cannot act on SIGTERM until it runs again.
    this.kill('SIGCONT');
    if (await this.#waitForExit(STOP_TIMEOUT_MS)) return;
    this.kill('SIGKILL');
    if (await this.#waitForExit(KILL_TIMEOUT_MS)) return;
    throw new Error(`redis-server pid ${this.pid} on port ${this.port} did not exit after SIGKILL`);
  }

  kill(signal: NodeJS.Signals): void {
    if (!this.#isRunning) return;
    try {
      process.kill(this.pid, signal);
    } catch (err) {
      // ESRCH: it exited and the exit event is on its way; anything else is a real error.
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** Synchronous last resort from process 'exit': SIGTERM lets the server flush its AOF. */
  signalOnExit(): void {
    this.kill('SIGTERM');
    this.kill('SIGCONT');
  }

  #spawn(): ChildProcess {
    // A file rather than a pipe: nothing to drain, and nothing that keeps our event loop alive.
    const outputFd = fs.openSync(this.#outputFile, 'a');
    let child: ChildProcess;
    try {
      child = spawn(this.#executable, this.#args, { stdio: ['ignore', outputFd, outputFd] });
    } finally {
      fs.closeSync(outputFd);
    }
    this.#child = child;
    this.#isRunning = true;
    liveServers.add(this);
    if (!isExitHookInstalled) {
      isExitHookInstalled = true;
      process.once('exit', stopLeftoversOnExit);
    }
    this.#exited = new Promise((resolve) => {
      const onGone = (): void => {
        if (this.#child === child) {
          this.#isRunning = false;
          liveServers.delete(this);
        }
        resolve();
      };
      child.once('exit', onGone);
      // 'error' without 'exit' means the spawn itself failed (e.g. the binary vanished).
      child.once('error', onGone);
    });
    // The caller's own handles (a proxy, a test) decide when this process may end, not the child.
    child.unref();
    return child;
  }

  /** True when a server answers PING on our port and reports our PID, not some other server's. */
  async #answersAs(pid: number): Promise<boolean> {
    try {
      return await withConnection(this, async (redis) => {
        if ((await redis.ping()) !== 'PONG') return false;
        const info = await redis.info('server');
        return new RegExp(`^process_id:${pid}\\r?$`, 'm').test(info);
      });
    } catch {
      // Not listening yet, or LOADING its AOF: poll again.
      return false;
    }
  }

  async #waitForExit(timeoutMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    const isGone = await Promise.race([this.#exited.then(() => true as const), timedOut]);
    clearTimeout(timer);
    return isGone;
  }

  #startError(message: string, logOffset: number, outputOffset: number): RedisStartError {
    const output = `${readFrom(this.#outputFile, outputOffset)}\n${readFrom(this.#logFile, logOffset)}`.trim();
    const isPortInUse = /address already in use/i.test(output);
    const tail = output.split('\n').slice(-8).join('\n');
    return new RedisStartError(
      `${message}${tail === '' ? '' : `:\n${tail}`}\n(log: ${this.#logFile})`,
      this.port,
      isPortInUse,
    );
  }
}

/** One short-lived ioredis connection that gives up at once instead of reconnecting. */
async function withConnection<T>(node: LocalRedis, use: (redis: Redis) => Promise<T>): Promise<T> {
  const redis = new Redis({
    host: node.host,
    port: node.port,
    password: node.password ?? undefined,
    lazyConnect: true,
    enableReadyCheck: false,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: 500,
    commandTimeout: 1_000,
  });
  // Failures surface through the rejected promises below; without a listener ioredis prints them.
  redis.on('error', () => undefined);
  try {
    await redis.connect();
    return await use(redis);
  } finally {
    redis.disconnect();
  }
}

/** The port bound on `host` (0 = any), or null when it is taken; closed again before returning. */
function tryListen(host: string, port: number): Promise<number | null> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE' || err.code === 'EACCES') resolve(null);
      else reject(err);
    });
    server.listen({ host, port, exclusive: true }, () => {
      const address = server.address() as net.AddressInfo;
      server.close(() => resolve(address.port));
    });
  });
}

function fileSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

function readFrom(file: string, offset: number): string {
  try {
    return fs.readFileSync(file).subarray(offset).toString('utf8');
  } catch {
    return '';
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
