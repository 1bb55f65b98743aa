/**
 * A tiny RESP client for the bench's control traffic (PING, pre-population, checks).
 * Every operation has a time bound; redis-parser decodes the replies.
 */
import { connect, type Socket } from 'node:net';
import RedisParser from 'redis-parser';
import { delay } from './processes';

export type RespValue = string | number | null | Buffer | Error | readonly RespValue[];

/** One command waiting for its reply. */
interface Pending {
  readonly resolve: (value: RespValue) => void;
  readonly reject: (error: Error) => void;
  readonly timer: NodeJS.Timeout;
}

export function encodeCommand(args: readonly (string | Buffer)[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const arg of args) {
    const bytes = typeof arg === 'string' ? Buffer.from(arg) : arg;
    parts.push(Buffer.from(`$${bytes.length}\r\n`), bytes, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

export class RespConnection {
  readonly #socket: Socket;
  readonly #pending: Pending[] = [];
  readonly #parser: RedisParser;
  #closedError: Error | null = null;

  private constructor(socket: Socket) {
    this.#socket = socket;
    this.#parser = new RedisParser({
      returnReply: (reply: RespValue) => this.#settle(reply),
      returnError: (error: Error) => this.#settle(error),
      returnFatalError: (error: Error) => this.#failAll(error),
    });
    socket.on('data', (chunk: Buffer) => this.#parser.execute(chunk));
    socket.on('error', (error) => this.#failAll(error));
    socket.on('close', () => this.#failAll(new Error('connection closed')));
  }

  static open(port: number, timeoutMs: number, host = '127.0.0.1'): Promise<RespConnection> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host, port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`connect to ${host}:${port} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        socket.setNoDelay(true);
        resolve(new RespConnection(socket));
      });
    });
  }

  /** Sends one command; an error reply resolves as an Error value, a timeout rejects and closes. */
  command(args: readonly (string | Buffer)[], timeoutMs: number): Promise<RespValue> {
    if (this.#closedError !== null) return Promise.reject(this.#closedError);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#failAll(new Error(`${String(args[0])} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.push({ resolve, reject, timer });
      this.#socket.write(encodeCommand(args));
    });
  }

  close(): void {
    this.#socket.destroy();
  }

  #settle(value: RespValue): void {
    const pending = this.#pending.shift();
    if (pending === undefined) return;
    clearTimeout(pending.timer);
    pending.resolve(value);
  }

  #failAll(error: Error): void {
    if (this.#closedError === null) this.#closedError = error;
    this.#socket.destroy();
    for (const pending of this.#pending.splice(0)) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
  }
}

/** Opens a connection, runs one command, closes. */
export async function runCommand(
  port: number,
  args: readonly (string | Buffer)[],
  timeoutMs: number,
): Promise<RespValue> {
  const connection = await RespConnection.open(port, timeoutMs);
  try {
    return await connection.command(args, timeoutMs);
  } finally {
    connection.close();
  }
}

/** True when the port answers PING with PONG within the time. */
export async function ping(port: number, timeoutMs: number): Promise<boolean> {
  try {
    return (await runCommand(port, ['PING'], timeoutMs)) === 'PONG';
  } catch {
    return false;
  }
}

/**
 * Polls PING until PONG, the deadline, or `isGone()` (the process died: no point waiting).
 * Returns null on success, else why it gave up.
 */
export async function waitForPing(
  port: number,
  timeoutMs: number,
  isGone: () => boolean = () => false,
): Promise<string | null> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (isGone()) return 'process exited';
    if (await ping(port, Math.min(1000, Math.max(100, deadline - Date.now())))) return null;
    await delay(100);
  }
  return `no PONG on port ${port} within ${timeoutMs} ms`;
}
