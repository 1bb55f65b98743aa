import * as net from 'node:net';
import { encodeCommand } from './proxy-harness';

/**
 * Differential checks: the same random commands go to the proxy and to one Redis, and the
 * replies' bytes must be equal. Commands on the keys of one hash tag are a single shard's to
 * answer, so whatever the proxy does on the way (routing, a key moved first while its slot
 * migrates) must not show in the reply.
 */

/** A small deterministic generator, so a failure can be replayed with its seed. */
export class Random {
  #state: number;
  constructor(seed: number) {
    this.#state = seed;
  }
  next(): number {
    this.#state = (this.#state * 1103515245 + 12345) & 0x7fffffff;
    return this.#state / 0x7fffffff;
  }
  pick<T>(list: readonly T[]): T {
    return list[Math.floor(this.next() * list.length)]!;
  }
}

/** The names (after the hash tag) of the keys tagCommands uses. */
export const TAG_KEY_NAMES = ['a', 'b', 'c', 'l', 's', 'z', 'h', 'x'] as const;

/**
 * Makers of random commands on the keys `{tag}a`, `{tag}b`, ...: strings, lists, sets, sorted
 * sets, hashes, streams, HyperLogLogs, bits, scripts, transactions and WATCH, with arguments
 * that are often wrong (types, numbers), so errors are compared too.
 */
export function tagCommands(random: Random, tag: string): (() => string[])[] {
  const key = (): string => `{${tag}}${random.pick(TAG_KEY_NAMES)}`;
  const value = (): string => random.pick(['1', '2', '-3', '10', '0', 'v', 'hello', '', '3.5', 'inf', '999999999999999999999']);
  const member = (): string => random.pick(['a', 'b', 'c', '1', '2']);
  const either = <T,>(...choices: T[]): T => random.pick(choices);
  return [
    () => ['SET', key(), value(), ...either([], ['NX'], ['XX'], ['GET'], ['EX', '100'], ['KEEPTTL'], ['EX', '-1'])],
    () => ['GET', key()], () => ['GETDEL', key()], () => ['APPEND', key(), value()], () => ['INCR', key()], () => ['INCRBYFLOAT', key(), value()],
    () => ['GETRANGE', key(), value(), value()], () => ['SETRANGE', key(), either('0', '3', '-1'), value()], () => ['MSET', key(), value(), key(), value()],
    () => ['MGET', key(), key(), key()], () => ['MSETNX', key(), value(), key(), value()], () => ['DEL', key(), key()], () => ['EXISTS', key(), key()],
    () => ['TYPE', key()], () => ['RENAME', key(), key()], () => ['COPY', key(), key(), ...either([], ['REPLACE'])],
    () => ['LPUSH', key(), member(), member()], () => ['LPOP', key(), ...either([], ['2'], ['0'], ['-1'])], () => ['LRANGE', key(), value(), value()],
    () => ['LSET', key(), value(), member()], () => ['LREM', key(), value(), member()], () => ['LMOVE', key(), key(), either('LEFT', 'RIGHT'), either('LEFT', 'RIGHT')],
    () => ['LMPOP', '2', key(), key(), either('LEFT', 'RIGHT'), ...either([], ['COUNT', '2'])], () => ['LPOS', key(), member(), ...either([], ['RANK', '-1'])],
    () => ['SADD', key(), member(), member()], () => ['SMEMBERS', key()], () => ['SINTER', key(), key()], () => ['SUNIONSTORE', key(), key(), key()],
    () => ['SINTERCARD', '2', key(), key()], () => ['SMOVE', key(), key(), member()],
    () => ['ZADD', key(), ...either([], ['NX'], ['GT'], ['CH'], ['INCR']), value(), member()], () => ['ZRANGE', key(), '0', '-1', ...either([], ['WITHSCORES'], ['REV'])],
    () => ['ZUNIONSTORE', key(), '2', key(), key(), ...either([], ['WEIGHTS', '2', '3'], ['AGGREGATE', 'MAX'])], () => ['ZMPOP', '2', key(), key(), 'MIN'],
    () => ['HSET', key(), member(), value()], () => ['HGETALL', key()], () => ['HINCRBY', key(), member(), value()], () => ['HMGET', key(), member(), member()],
    () => ['EXPIRE', key(), either('100', '-1', '0', 'x'), ...either([], ['NX'], ['GT'])], () => ['TTL', key()], () => ['PERSIST', key()],
    () => ['SORT', key(), ...either([], ['ALPHA'], ['BY', 'nosort'], ['LIMIT', '0', '2'], ['STORE', key()])],
    () => ['PFADD', key(), member()], () => ['PFCOUNT', key(), key()], () => ['BITOP', either('AND', 'OR', 'XOR'), key(), key(), key()], () => ['SETBIT', key(), either('0', '7'), '1'],
    () => ['EVAL', either('return redis.call("GET", KEYS[1])', 'return redis.call("INCR", KEYS[1])', 'return {KEYS[1], ARGV[1]}'), '1', key(), value()],
    () => ['XADD', key(), either('1-1', '2-1', '5-0', '0-1'), member(), value()], () => ['XRANGE', key(), '-', '+'], () => ['XTRIM', key(), 'MAXLEN', '1'],
    () => ['MULTI'], () => ['EXEC'], () => ['DISCARD'], () => ['WATCH', key()], () => ['UNWATCH'], () => ['LCS', key(), key()], () => ['DUMP', key()],
  ];
}

/**
 * Whether two different replies differ only where one Redis differs from another: the order of
 * a set's members (Redis 7.0 keeps them in a hash table with a per-process seed), and DUMP
 * payloads, which hold that order.
 */
export function differsOnlyInOrder(command: readonly string[], got: string, want: string): boolean {
  if (got.length !== want.length) return false;
  if (command[0] === 'DUMP' || command[0] === 'EXEC') return true;
  return [...got].sort().join('') === [...want].sort().join('');
}

/** One raw connection, one command at a time: the reply's bytes as latin1 text. */
export class RawClient {
  readonly #socket: net.Socket;
  #buffer = Buffer.alloc(0);
  #waiter: (() => void) | null = null;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      this.#waiter?.();
    });
  }

  static open(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1', () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  send(args: readonly string[]): Promise<string> {
    this.#socket.write(encodeCommand(args));
    return new Promise((resolve) => {
      const take = (): void => {
        const end = replyEnd(this.#buffer, 0);
        if (end === null) {
          this.#waiter = take;
          return;
        }
        this.#waiter = null;
        const reply = this.#buffer.toString('latin1', 0, end);
        this.#buffer = this.#buffer.subarray(end);
        resolve(reply);
      };
      take();
    });
  }

  /** Sends the commands in one write (a pipeline) and resolves with their replies, in order. */
  sendMany(list: readonly (readonly string[])[]): Promise<string[]> {
    this.#socket.write(Buffer.concat(list.map((args) => encodeCommand(args))));
    const replies: string[] = [];
    return new Promise((resolve) => {
      const take = (): void => {
        for (;;) {
          const end = replyEnd(this.#buffer, 0);
          if (end === null) {
            this.#waiter = take;
            return;
          }
          replies.push(this.#buffer.toString('latin1', 0, end));
          this.#buffer = this.#buffer.subarray(end);
          if (replies.length === list.length) {
            this.#waiter = null;
            resolve(replies);
            return;
          }
        }
      };
      take();
    });
  }

  close(): void {
    this.#socket.destroy();
  }
}

/** Where the RESP2 reply starting at `at` ends, or null when it is not all there yet. */
function replyEnd(buf: Buffer, at: number): number | null {
  if (at >= buf.length) return null;
  const lineEnd = buf.indexOf('\r\n', at);
  if (lineEnd < 0) return null;
  const type = buf[at];
  if (type === 43 || type === 45 || type === 58) return lineEnd + 2;
  const count = Number(buf.toString('latin1', at + 1, lineEnd));
  if (type === 36) {
    if (count < 0) return lineEnd + 2;
    return buf.length >= lineEnd + 2 + count + 2 ? lineEnd + 2 + count + 2 : null;
  }
  let p: number | null = lineEnd + 2;
  for (let i = 0; i < count && p !== null; i++) p = replyEnd(buf, p);
  return p;
}
