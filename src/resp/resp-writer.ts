/**
 * RESP2 encoders for the replies the proxy builds itself. Constant replies are module-level
 * Buffers so the hot path never re-encodes them.
 */

export const OK = Buffer.from('+OK\r\n');
export const PONG = Buffer.from('+PONG\r\n');
export const QUEUED = Buffer.from('+QUEUED\r\n');
export const NULL_BULK = Buffer.from('$-1\r\n');
/** A null array: EXEC's answer when a watched key changed, a blocking command's on timeout. */
export const NULL_ARRAY = Buffer.from('*-1\r\n');
export const CRLF = Buffer.from('\r\n');
export const CROSSSLOT = Buffer.from("-CROSSSLOT Keys in request don't hash to the same slot\r\n");

/** Small integers are common in merged counts; keep their encodings. */
const SMALL_INTEGERS: readonly Buffer[] = Array.from({ length: 1024 }, (_, i) => Buffer.from(`:${i}\r\n`));

export function encodeInteger(n: number): Buffer {
  return n >= 0 && n < SMALL_INTEGERS.length ? SMALL_INTEGERS[n]! : Buffer.from(`:${n}\r\n`);
}

export function encodeSimple(text: string): Buffer {
  return Buffer.from(`+${text}\r\n`);
}

/** An error reply; CR/LF in the message would break framing, so they become spaces. */
export function encodeError(message: string): Buffer {
  return Buffer.from(`-${message.replace(/[\r\n]+/g, ' ')}\r\n`);
}

export function encodeBulk(value: Buffer | string): Buffer {
  const body = typeof value === 'string' ? Buffer.from(value) : value;
  const header = Buffer.from(`$${body.length}\r\n`);
  return Buffer.concat([header, body, CRLF], header.length + body.length + 2);
}

export function encodeArrayHeader(length: number): Buffer {
  return Buffer.from(`*${length}\r\n`);
}

/** Length of `*<count>\r\n`. */
export function arrayHeaderLength(count: number): number {
  return (count < 10 ? 1 : count < 100 ? 2 : String(count).length) + 3;
}

/** Writes `*<count>\r\n` into `out` at `at` (room for arrayHeaderLength(count) bytes); returns the offset after it. */
export function writeArrayHeader(out: Buffer, at: number, count: number): number {
  const end = at + arrayHeaderLength(count);
  out[at] = 0x2a;
  for (let n = count, i = end - 3; i > at; i--, n = Math.floor(n / 10)) out[i] = 0x30 + (n % 10);
  out[end - 2] = 0x0d;
  out[end - 1] = 0x0a;
  return end;
}

/** A decoded reply value as redis-parser returns it with returnBuffers. */
export type RespValue = Buffer | number | null | Error | readonly RespValue[];

/** Encodes a decoded value back to RESP2, appending the pieces to `out`. */
export function encodeValue(value: RespValue, out: Buffer[]): void {
  if (value === null) {
    out.push(NULL_BULK);
  } else if (typeof value === 'number') {
    out.push(encodeInteger(value));
  } else if (Buffer.isBuffer(value)) {
    out.push(Buffer.from(`$${value.length}\r\n`), value, CRLF);
  } else if (value instanceof Error) {
    out.push(encodeError(value.message));
  } else {
    out.push(encodeArrayHeader(value.length));
    for (const item of value) encodeValue(item, out);
  }
}

/** A decoded value as one RESP2 reply buffer. */
export function encodeReply(value: RespValue): Buffer {
  const out: Buffer[] = [];
  encodeValue(value, out);
  return Buffer.concat(out);
}

/** A command as a RESP multibulk request, for requests the proxy makes itself. */
export function encodeCommand(args: readonly (Buffer | string)[]): Buffer {
  const out: Buffer[] = [encodeArrayHeader(args.length)];
  for (const arg of args) {
    const body = typeof arg === 'string' ? Buffer.from(arg) : arg;
    out.push(Buffer.from(`$${body.length}\r\n`), body, CRLF);
  }
  return Buffer.concat(out);
}
