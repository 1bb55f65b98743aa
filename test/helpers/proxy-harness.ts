import { execFile, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import RedisParser from 'redis-parser';
import { stringify } from 'yaml';
import { findFreePort } from '../../src/cli/local-redis';

/**
 * The proxy as a user runs it: `node dist/cli.js start --config FILE` in a child process, on a
 * free loopback port, stopped by the PID we spawned. Plus the two low-level clients the
 * protocol tests need: `redis-cli`, and a raw socket that collects reply bytes.
 */

/** The repository root, whatever the cwd of the test run. */
export const REPO_ROOT = path.resolve(__dirname, '..', '..');
/** The compiled CLI (`npm run build`). */
export const CLI_PATH = path.join(REPO_ROOT, 'dist', 'cli.js');

/** How long the proxy may take to answer PING after spawning. */
const START_TIMEOUT_MS = 10_000;
/** How long stop() waits after SIGTERM before SIGKILL, and then after SIGKILL. */
const STOP_TIMEOUT_MS = 3_000;
const KILL_TIMEOUT_MS = 2_000;
/** Attempts on another free port when the one found was taken before the proxy bound it. */
const PORT_ATTEMPTS = 3;
const POLL_INTERVAL_MS = 50;

export interface NodeAddress {
  readonly host: string;
  readonly port: number;
}

export interface ProxyShard {
  readonly name: string;
  readonly primary: NodeAddress;
  readonly replicas?: readonly NodeAddress[];
  /** Inclusive ranges such as "0-5460"; absent everywhere = the proxy's even split. */
  readonly slots?: readonly string[];
}

export interface ProxyProcessOptions {
  readonly shards: readonly ProxyShard[];
  /** More top-level YAML keys (`connectTimeoutMs`, `connectionsPerNode`, ...). */
  readonly extra?: Readonly<Record<string, unknown>>;
  /** @default 10000 */
  readonly startTimeoutMs?: number;
}

export interface ProxyProcess {
  readonly host: string;
  readonly port: number;
  readonly pid: number;
  /** The YAML file the proxy was started with (inside its temp folder). */
  readonly configPath: string;
  /** Everything the process wrote to stdout and stderr so far. */
  logs(): string;
  /** False once the process has exited, whoever ended it. */
  readonly isRunning: boolean;
  /** SIGTERM, SIGKILL after 3 s, then remove the temp folder; safe to call twice. */
  stop(): Promise<void>;
  /** Send a raw signal to the PID and return at once. */
  kill(signal: NodeJS.Signals): void;
}

/** The proxy failed to start; the message carries its output. */
export class ProxyStartError extends Error {
  override readonly name = 'ProxyStartError';

  constructor(
    message: string,
    /** It could not bind because another process took the port. */
    readonly isPortInUse: boolean,
  ) {
    super(message);
  }
}

/** Processes still running, signalled if the test process exits without stopping them. */
const liveChildren = new Set<ChildProcess>();
let isExitHookInstalled = false;

/**
 * SIGKILLs `child` by PID when the test's process exits with it still running (a test that
 * failed before its stop, a hook that outlived its timeout: test/helpers/exit-on-sigterm.ts).
 */
export function killWithTestProcess(child: ChildProcess): void {
  liveChildren.add(child);
  const forget = (): void => void liveChildren.delete(child);
  child.once('exit', forget);
  child.once('error', forget);
  if (isExitHookInstalled) return;
  isExitHookInstalled = true;
  process.once('exit', () => {
    for (const leftover of liveChildren) signal(leftover.pid, 'SIGKILL');
  });
}

export async function startProxyProcess(options: ProxyProcessOptions): Promise<ProxyProcess> {
  if (!fs.existsSync(CLI_PATH)) throw new Error(`${CLI_PATH} is missing: run \`npm run build\` first`);
  for (let attempt = 1; ; attempt++) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'slotproxy-proxy-'));
    try {
      return await startOnce(options, dir, await findFreePort());
    } catch (err) {
      fs.rmSync(dir, { recursive: true, force: true });
      if (!(err instanceof ProxyStartError && err.isPortInUse) || attempt >= PORT_ATTEMPTS) throw err;
    }
  }
}

async function startOnce(options: ProxyProcessOptions, dir: string, port: number): Promise<ProxyProcess> {
  const host = '127.0.0.1';
  const configPath = path.join(dir, 'slotproxy.yaml');
  const config = {
    listen: `${host}:${port}`,
    ...options.extra,
    shards: options.shards.map((shard) => ({
      name: shard.name,
      primary: formatNode(shard.primary),
      ...(shard.replicas === undefined ? {} : { replicas: shard.replicas.map(formatNode) }),
      ...(shard.slots === undefined ? {} : { slots: [...shard.slots] }),
    })),
  };
  fs.writeFileSync(configPath, stringify(config));

  const child = spawn(process.execPath, [CLI_PATH, 'start', '--config', configPath], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const collect = (chunk: Buffer): void => {
    output += chunk.toString('utf8');
  };
  child.stdout!.on('data', collect);
  child.stderr!.on('data', collect);
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

  const kill = (sig: NodeJS.Signals): void => {
    if (isRunning) signal(child.pid, sig);
  };
  const waitForExit = async (timeoutMs: number): Promise<boolean> => {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    const isGone = await Promise.race([exited.then(() => true as const), timedOut]);
    clearTimeout(timer);
    return isGone;
  };
  let isStopped = false;
  const stop = async (): Promise<void> => {
    if (isStopped) return;
    isStopped = true;
    try {
      if (!isRunning) return;
      kill('SIGTERM');
      if (await waitForExit(STOP_TIMEOUT_MS)) return;
      kill('SIGKILL');
      if (!(await waitForExit(KILL_TIMEOUT_MS))) {
        throw new Error(`slotproxy pid ${child.pid} did not exit after SIGKILL`);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  };

  const deadline = Date.now() + (options.startTimeoutMs ?? START_TIMEOUT_MS);
  for (;;) {
    if (!isRunning) {
      throw new ProxyStartError(
        `slotproxy exited at start (code ${child.exitCode}, signal ${child.signalCode}):\n${output}`,
        /EADDRINUSE/.test(output),
      );
    }
    // Our child must have said it listens: a PONG alone could come from another process on the port.
    if (/"event":"listening"/.test(output) && (await answersPing(host, port))) break;
    if (Date.now() >= deadline) {
      const log = output;
      kill('SIGKILL');
      await waitForExit(KILL_TIMEOUT_MS);
      throw new ProxyStartError(`slotproxy did not answer PING on ${host}:${port} within the start timeout:\n${log}`, false);
    }
    await sleep(POLL_INTERVAL_MS);
  }

  return {
    host,
    port,
    pid: child.pid ?? 0,
    configPath,
    logs: () => output,
    get isRunning() {
      return isRunning;
    },
    stop,
    kill,
  };
}

function formatNode(node: NodeAddress): string {
  return node.host.includes(':') ? `[${node.host}]:${node.port}` : `${node.host}:${node.port}`;
}

function signal(pid: number | undefined, sig: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(pid, sig);
  } catch (err) {
    // ESRCH: already gone and its exit event is on the way.
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}

async function answersPing(host: string, port: number): Promise<boolean> {
  const reply = await rawExchange(port, 'PING\r\n', { host, timeoutMs: 500, until: (data) => data.includes('\r\n') }).catch(
    () => null,
  );
  return reply !== null && reply.data.toString('latin1') === '+PONG\r\n';
}

// ---------------------------------------------------------------------------------------------
// redis-cli

export interface RedisCliOptions {
  /** @default 127.0.0.1 */
  readonly host?: string;
  /** @default 10000 */
  readonly timeoutMs?: number;
}

/** Runs `redis-cli -h HOST -p PORT ...args` and returns its stdout; rejects on a non-zero exit. */
export function runRedisCli(port: number, args: readonly string[], options: RedisCliOptions = {}): Promise<string> {
  const cliArgs = ['-h', options.host ?? '127.0.0.1', '-p', String(port), ...args];
  return new Promise((resolve, reject) => {
    execFile('redis-cli', cliArgs, { timeout: options.timeoutMs ?? 10_000, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (err !== null) {
        reject(new Error(`redis-cli ${cliArgs.join(' ')} failed: ${err.message}\n${stderr}`));
        return;
      }
      resolve(stdout);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Raw sockets

export interface RawExchangeOptions {
  /** @default 127.0.0.1 */
  readonly host?: string;
  /** Stop collecting once this holds for the bytes so far; without it, wait for the peer to close. */
  readonly until?: (data: Buffer) => boolean;
  /** Give up collecting after this long (not an error: see `isTimedOut`). @default 2000 */
  readonly timeoutMs?: number;
  /**
   * Write the payload in pieces of this many bytes, one per event-loop turn, so the peer's
   * parser sees frames split at every offset. @default the whole payload in one write
   */
  readonly chunkSize?: number;
}

export interface RawExchange {
  /** Every byte received. */
  readonly data: Buffer;
  /** The peer closed the connection (before `until` held, if it held). */
  readonly isClosed: boolean;
  /** Neither `until` held nor the peer closed within the timeout. */
  readonly isTimedOut: boolean;
  /** Milliseconds from connect to the end of collection. */
  readonly elapsedMs: number;
}

/**
 * Connects, writes `payload` (one buffer, or several written as separate writes), and collects
 * the bytes that come back until `until` holds, the peer closes, or the timeout passes.
 * Rejects only when the connection itself fails.
 */
export function rawExchange(
  port: number,
  payload: string | Buffer | readonly (string | Buffer)[],
  options: RawExchangeOptions = {},
): Promise<RawExchange> {
  const host = options.host ?? '127.0.0.1';
  const timeoutMs = options.timeoutMs ?? 2_000;
  const parts = Array.isArray(payload) ? payload : [payload as string | Buffer];
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let isConnected = false;
    let isDone = false;
    const started = Date.now();
    const socket = net.connect({ host, port });
    const finish = (isClosed: boolean, isTimedOut: boolean): void => {
      if (isDone) return;
      isDone = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ data: Buffer.concat(chunks, size), isClosed, isTimedOut, elapsedMs: Date.now() - started });
    };
    const timer = setTimeout(() => finish(false, true), timeoutMs);
    socket.setNoDelay(true);
    socket.on('connect', () => {
      isConnected = true;
      if (options.chunkSize === undefined) {
        for (const part of parts) socket.write(part);
        return;
      }
      void writeInChunks(socket, Buffer.concat(parts.map((part) => Buffer.from(part))), options.chunkSize);
    });
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      size += chunk.length;
      if (options.until !== undefined && options.until(Buffer.concat(chunks, size))) finish(false, false);
    });
    // A reset after the peer's reply still counts as the peer closing.
    socket.on('error', (err) => {
      if (!isConnected && !isDone) {
        isDone = true;
        clearTimeout(timer);
        reject(err);
      }
    });
    socket.on('close', () => finish(true, false));
  });
}

async function writeInChunks(socket: net.Socket, bytes: Buffer, chunkSize: number): Promise<void> {
  for (let offset = 0; offset < bytes.length && !socket.destroyed; offset += chunkSize) {
    socket.write(bytes.subarray(offset, offset + chunkSize));
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** `until` for rawExchange: stop once `count` complete RESP2 replies are in. */
export function repliesComplete(count: number): (data: Buffer) => boolean {
  return (data) => countReplies(data) >= count;
}

/** How many complete RESP2 replies `data` starts with (a trailing partial one is not counted). */
export function countReplies(data: Buffer): number {
  let offset = 0;
  let count = 0;
  for (;;) {
    const end = replyEnd(data, offset);
    if (end === -1) return count;
    count++;
    offset = end;
  }
}

/** Offset just past the reply that starts at `offset`, or -1 when it is not complete yet. */
function replyEnd(data: Buffer, offset: number): number {
  if (offset >= data.length) return -1;
  const lineEnd = data.indexOf('\r\n', offset, 'latin1');
  if (lineEnd === -1) return -1;
  const type = String.fromCharCode(data[offset]!);
  const after = lineEnd + 2;
  switch (type) {
    case '+':
    case '-':
    case ':':
      return after;
    case '$': {
      const length = Number(data.toString('latin1', offset + 1, lineEnd));
      if (length < 0) return after;
      return data.length >= after + length + 2 ? after + length + 2 : -1;
    }
    case '*': {
      const length = Number(data.toString('latin1', offset + 1, lineEnd));
      let next = after;
      for (let i = 0; i < length; i++) {
        next = replyEnd(data, next);
        if (next === -1) return -1;
      }
      return next;
    }
    default:
      throw new Error(`not a RESP2 reply at offset ${offset}: ${JSON.stringify(data.toString('latin1', offset, offset + 40))}`);
  }
}

/** Encodes a command as a RESP multibulk request. */
export function encodeCommand(args: readonly (string | Buffer | number)[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const arg of args) {
    const bytes = Buffer.isBuffer(arg) ? arg : Buffer.from(String(arg));
    parts.push(Buffer.from(`$${bytes.length}\r\n`), bytes, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

/** A decoded RESP2 reply: errors as Error objects (message without the leading '-'). */
export type DecodedReply = string | number | null | Error | DecodedReply[];

/** Decodes every complete reply in `data` with redis-parser (strings as utf8). */
export function decodeReplies(data: Buffer): DecodedReply[] {
  const replies: DecodedReply[] = [];
  const parser = new RedisParser({
    returnReply: (reply: DecodedReply) => replies.push(reply),
    returnError: (err: Error) => replies.push(err),
    returnFatalError: (err: Error) => {
      throw err;
    },
  });
  parser.execute(data);
  return replies;
}

/**
 * Sends the commands in one write on a new connection and returns the raw bytes of their
 * replies and the decoded replies; rejects when they are not all in within the timeout.
 */
export async function rawCommands(
  port: number,
  commands: readonly (readonly (string | Buffer | number)[])[],
  options: { readonly host?: string; readonly timeoutMs?: number; readonly chunkSize?: number } = {},
): Promise<{ readonly data: Buffer; readonly replies: DecodedReply[] }> {
  const payload = Buffer.concat(commands.map((command) => encodeCommand(command)));
  const result = await rawExchange(port, payload, {
    host: options.host,
    timeoutMs: options.timeoutMs ?? 5_000,
    chunkSize: options.chunkSize,
    until: repliesComplete(commands.length),
  });
  const count = countReplies(result.data);
  if (count < commands.length) {
    throw new Error(
      `${count} of ${commands.length} replies from port ${port} ` +
        `(${result.isTimedOut ? 'timed out' : 'connection closed'}): ${JSON.stringify(result.data.toString('latin1').slice(-300))}`,
    );
  }
  return { data: result.data, replies: decodeReplies(result.data) };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
