import { afterEach, describe, expect, it, vi } from 'vitest';

import { ReplyFramingError, ReplyScanner } from '../../src/resp/reply-scanner';
import { Random } from '../helpers/differential';

/** Feeds `chunks` in order; returns each frame's bytes (copied) as latin1 text. */
function scan(chunks: readonly Buffer[]): string[] {
  const frames: string[] = [];
  const scanner = new ReplyScanner({
    onReplyFrame(buf, start, end) {
      frames.push(buf.toString('latin1', start, end));
    },
  });
  for (const chunk of chunks) scanner.feed(chunk);
  return frames;
}

const bytes = (text: string): Buffer => Buffer.from(text, 'latin1');
const oneByteAtATime = (input: Buffer): Buffer[] => Array.from(input, (b) => Buffer.from([b]));
/** Copies of the slices, as separate socket reads would be. */
const inChunks = (input: Buffer, size: number): Buffer[] => {
  const out: Buffer[] = [];
  for (let i = 0; i < input.length; i += size) out.push(Buffer.from(input.subarray(i, i + size)));
  return out;
};

/** One complete reply per row: [name, frame]. */
const RESP2_FRAMES: readonly [string, string][] = [
  ['simple string', '+OK\r\n'],
  ['empty simple string', '+\r\n'],
  ['error', '-ERR unknown command\r\n'],
  ['MOVED error', '-MOVED 3999 127.0.0.1:6381\r\n'],
  ['integer', ':1000\r\n'],
  ['negative integer', ':-42\r\n'],
  ['bulk string', '$5\r\nhello\r\n'],
  ['empty bulk string', '$0\r\n\r\n'],
  ['bulk holding CRLF and RESP lookalikes', '$14\r\n\r\n*1\r\n$1\r\n\r\n+x\r\n'],
  ['bulk holding NUL bytes', '$3\r\n\0\0\0\r\n'],
  ['null bulk', '$-1\r\n'],
  ['null array', '*-1\r\n'],
  ['empty array', '*0\r\n'],
  ['array of bulks', '*2\r\n$3\r\nfoo\r\n$3\r\nbar\r\n'],
  ['array with nulls', '*3\r\n$1\r\na\r\n$-1\r\n*-1\r\n'],
  ['array with errors', '*2\r\n-ERR one\r\n-WRONGTYPE two\r\n'],
  ['nested arrays', '*2\r\n*2\r\n:1\r\n:2\r\n*1\r\n*0\r\n'],
  ['deeply nested', '*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n+deep\r\n'],
  ['EXEC-like mixed array', '*4\r\n+OK\r\n:3\r\n-ERR x\r\n*2\r\n$1\r\na\r\n$-1\r\n'],
  ['SCAN-like reply', '*2\r\n$1\r\n0\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n'],
];

const RESP3_FRAMES: readonly [string, string][] = [
  ['null', '_\r\n'],
  ['boolean true', '#t\r\n'],
  ['boolean false', '#f\r\n'],
  ['double', ',3.14\r\n'],
  ['double inf', ',inf\r\n'],
  ['big number', '(3492890328409238509324850943850943825024385\r\n'],
  ['blob error', '!21\r\nSYNTAX invalid syntax\r\n'],
  ['verbatim string', '=15\r\ntxt:Some string\r\n'],
  ['map', '%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n'],
  ['empty map', '%0\r\n'],
  ['set', '~3\r\n+a\r\n+b\r\n+c\r\n'],
  ['empty set', '~0\r\n'],
  ['push', '>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n'],
  ['attribute then its value', '|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:2039123\r\n:9543892\r\n'],
  ['map with nested aggregates', '%1\r\n+k\r\n*2\r\n~1\r\n_\r\n%1\r\n#t\r\n,1.5\r\n'],
];

const ALL_FRAMES = [...RESP2_FRAMES, ...RESP3_FRAMES];
const STREAM = bytes(ALL_FRAMES.map(([, frame]) => frame).join(''));

afterEach(() => {
  vi.restoreAllMocks();
});

describe('ReplyScanner: one frame per type', () => {
  it.each(RESP2_FRAMES)('RESP2 %s', (_name, frame) => {
    expect(scan([bytes(frame)])).toEqual([frame]);
    expect(scan(oneByteAtATime(bytes(frame)))).toEqual([frame]);
  });

  it.each(RESP3_FRAMES)('RESP3 %s', (_name, frame) => {
    expect(scan([bytes(frame)])).toEqual([frame]);
    expect(scan(oneByteAtATime(bytes(frame)))).toEqual([frame]);
  });

  it.each(ALL_FRAMES)('%s is not complete until its last byte', (_name, frame) => {
    const input = bytes(frame);
    for (let length = 1; length < input.length; length++) {
      expect(scan([input.subarray(0, length)]), `prefix of ${length} bytes`).toEqual([]);
    }
  });
});

describe('ReplyScanner: boundaries', () => {
  const expected = ALL_FRAMES.map(([, frame]) => frame);

  it('finds every frame of a stream given in one chunk', () => {
    expect(scan([STREAM])).toEqual(expected);
  });

  it('gives the same boundaries fed one byte at a time', () => {
    expect(scan(oneByteAtATime(STREAM))).toEqual(expected);
  });

  it('gives the same boundaries split in two at every position', () => {
    for (let at = 0; at <= STREAM.length; at++) {
      expect(scan([STREAM.subarray(0, at), STREAM.subarray(at)]), `split at ${at}`).toEqual(expected);
    }
  });

  it('gives the same boundaries split in three at every pair of positions (small stream)', () => {
    const small = bytes('*2\r\n$3\r\nfoo\r\n$-1\r\n+OK\r\n:7\r\n$2\r\n\r\n\r\n');
    const want = ['*2\r\n$3\r\nfoo\r\n$-1\r\n', '+OK\r\n', ':7\r\n', '$2\r\n\r\n\r\n'];
    for (let i = 0; i <= small.length; i++) {
      for (let j = i; j <= small.length; j++) {
        expect(scan([small.subarray(0, i), small.subarray(i, j), small.subarray(j)]), `splits at ${i}, ${j}`).toEqual(want);
      }
    }
  });

  it('hands frames that fit one chunk as views of that chunk (no copy)', () => {
    const chunk = bytes('+OK\r\n:1\r\n');
    const seen: { buf: Buffer; start: number; end: number }[] = [];
    new ReplyScanner({
      onReplyFrame(buf, start, end) {
        seen.push({ buf, start, end });
      },
    }).feed(chunk);
    expect(seen).toHaveLength(2);
    expect(seen[0]!.buf).toBe(chunk);
    expect(seen[1]!.buf).toBe(chunk);
    expect([seen[0]!.start, seen[0]!.end, seen[1]!.start, seen[1]!.end]).toEqual([0, 5, 5, 9]);
  });

  it('keeps earlier views valid after later chunks arrive', () => {
    const views: Buffer[] = [];
    const scanner = new ReplyScanner({
      onReplyFrame(buf, start, end) {
        views.push(buf.subarray(start, end));
      },
    });
    scanner.feed(bytes('$3\r\nabc\r\n$3\r\nd'));
    scanner.feed(bytes('ef\r\n+OK\r\n'));
    expect(views.map((v) => v.toString())).toEqual(['$3\r\nabc\r\n', '$3\r\ndef\r\n', '+OK\r\n']);
  });

  it('reset() drops a partial frame so the next connection starts clean', () => {
    const frames: string[] = [];
    const scanner = new ReplyScanner({
      onReplyFrame(buf, start, end) {
        frames.push(buf.toString('latin1', start, end));
      },
    });
    scanner.feed(bytes('*3\r\n$1\r\na\r\n'));
    scanner.reset();
    scanner.feed(bytes('+OK\r\n'));
    expect(frames).toEqual(['+OK\r\n']);
  });
});

describe('ReplyScanner: random frames in random chunks', () => {
  /** A random RESP2/RESP3 value, aggregates nested up to `depth`; bulks hold CR, LF and type bytes. */
  function randomValue(random: Random, depth: number): string {
    const kind = Math.floor(random.next() * (depth > 0 ? 12 : 7));
    const count = (): number => Math.floor(random.next() * random.pick([1, 4, 40]));
    const text = (): string => random.pick(['', 'OK', 'x', '$3', '*2', '\r\n', 'a\rb\nc', '-1', 'hello world']);
    switch (kind) {
      case 0: return `+${text().replace(/[\r\n]/g, '')}\r\n`;
      case 1: return `-ERR ${text().replace(/[\r\n]/g, '')}\r\n`;
      case 2: return `:${Math.floor(random.next() * 2e6) - 1e6}\r\n`;
      case 3: return '$-1\r\n';
      case 4: {
        const body = Array.from({ length: count() }, text).join('');
        return `$${Buffer.byteLength(body, 'latin1')}\r\n${body}\r\n`;
      }
      case 5: return random.pick(['_\r\n', '#t\r\n', ',1.5\r\n', '(123456789012345678901234567890\r\n']);
      case 6: {
        const body = text();
        return `${random.pick(['!', '='])}${body.length}\r\n${body}\r\n`;
      }
      case 7: return '*-1\r\n';
      case 11: {
        const n = count();
        return `|${n}\r\n${Array.from({ length: 2 * n }, () => randomValue(random, depth - 1)).join('')}${randomValue(random, depth - 1)}`;
      }
      default: {
        const n = count();
        const type = random.pick(['*', '*', '~', '>', '%']);
        const values = Array.from({ length: type === '%' ? 2 * n : n }, () => randomValue(random, depth - 1));
        return `${type}${n}\r\n${values.join('')}`;
      }
    }
  }

  it.each([1, 2, 3])('finds the frames of a random stream split at random places (seed %i)', (seed) => {
    const random = new Random(seed);
    const frames = Array.from({ length: 1_500 }, () => randomValue(random, 3));
    const stream = bytes(frames.join(''));
    for (const maxChunk of [3, 40, 700, 64 * 1024]) {
      const chunks: Buffer[] = [];
      for (let at = 0; at < stream.length; ) {
        const size = 1 + Math.floor(random.next() * maxChunk);
        chunks.push(Buffer.from(stream.subarray(at, at + size)));
        at += size;
      }
      const found = scan(chunks);
      expect(found.length, `chunks of at most ${maxChunk} bytes`).toBe(frames.length);
      expect(found, `chunks of at most ${maxChunk} bytes`).toEqual(frames);
    }
  });
});

describe('ReplyScanner: large replies', () => {
  /** Builds a 200,000-element array reply (say LRANGE 0 -1) from one element encoder. */
  function bigArray(count: number, element: (i: number) => string): Buffer {
    const parts: Buffer[] = [bytes(`*${count}\r\n`)];
    for (let i = 0; i < count; i++) parts.push(bytes(element(i)));
    return Buffer.concat(parts);
  }

  it.each<[string, (i: number) => string]>([
    ['integers', (i) => `:${i}\r\n`],
    ['10-byte bulks', (i) => `$10\r\n${String(i).padStart(10, '0')}\r\n`],
    ['100-byte bulks', () => `$100\r\n${'x'.repeat(100)}\r\n`],
    ['pairs (HGETALL-like nested arrays)', (i) => `*2\r\n$3\r\nkey\r\n:${i}\r\n`],
  ])(
    'frames a 200,000-element array of %s fed in 64 KB chunks without rescanning per chunk',
    (_name, element) => {
      const reply = bigArray(200_000, element);
      const chunks = inChunks(reply, 64 * 1024);
      const frames: number[] = [];
      const scanner = new ReplyScanner({
        onReplyFrame(buf, start, end) {
          frames.push(end - start);
          expect(buf.subarray(start, end).equals(reply)).toBe(true);
        },
      });
      const concat = vi.spyOn(Buffer, 'concat');
      const started = Date.now();
      for (const chunk of chunks) scanner.feed(chunk);
      const elapsed = Date.now() - started;
      const joins = concat.mock.calls.length;
      concat.mockRestore();
      expect(frames).toEqual([reply.length]);
      expect(elapsed).toBeLessThan(10_000);
      // Each join copies and rescans everything buffered so far; one per chunk is quadratic.
      expect(joins, `${joins} joins for ${chunks.length} chunks`).toBeLessThan(Math.min(30, chunks.length / 4));
    },
    60_000,
  );

  it(
    'frames a 50 MB bulk fed in 64 KB chunks with one join, and the reply behind it',
    () => {
      const size = 50 * 1024 * 1024;
      const header = bytes(`$${size}\r\n`);
      const reply = Buffer.alloc(header.length + size + 2, 0x7a);
      header.copy(reply);
      reply.write('\r\n', header.length + size, 'latin1');
      const input = Buffer.concat([reply, bytes('+OK\r\n')]);
      const chunks = inChunks(input, 64 * 1024);
      const frames: { length: number; isExact: boolean }[] = [];
      const scanner = new ReplyScanner({
        onReplyFrame(buf, start, end) {
          const frame = buf.subarray(start, end);
          frames.push({ length: frame.length, isExact: frame.length === 5 ? frame.toString() === '+OK\r\n' : frame.equals(reply) });
        },
      });
      const concat = vi.spyOn(Buffer, 'concat');
      for (const chunk of chunks) scanner.feed(chunk);
      const joins = concat.mock.calls.length;
      concat.mockRestore();
      expect(frames).toEqual([
        { length: reply.length, isExact: true },
        { length: 5, isExact: true },
      ]);
      expect(joins).toBeLessThanOrEqual(1);
    },
    60_000,
  );
});

describe('ReplyScanner: malformed bytes', () => {
  it.each<[string, string]>([
    ['an unknown type byte', 'x\r\n'],
    ['a digit as type byte', '1\r\n'],
    ['an unknown type byte inside an array', '*2\r\n+OK\r\n?\r\n'],
    ['a bulk length that is not a number', '$abc\r\n'],
    ['an empty bulk length', '$\r\n'],
    ['an array length that is not a number', '*x\r\n'],
  ])('%s throws ReplyFramingError', (_name, input) => {
    let thrown: unknown = null;
    try {
      scan([bytes(input)]);
    } catch (err) {
      thrown = err;
    }
    expect(thrown).toBeInstanceOf(ReplyFramingError);
    expect((thrown as ReplyFramingError).name).toBe('ReplyFramingError');
  });

  it('delivers the good frames in front of the bad one before throwing', () => {
    const frames: string[] = [];
    const scanner = new ReplyScanner({
      onReplyFrame(buf, start, end) {
        frames.push(buf.toString('latin1', start, end));
      },
    });
    expect(() => scanner.feed(bytes('+OK\r\n:1\r\n@bad\r\n'))).toThrow(ReplyFramingError);
    expect(frames).toEqual(['+OK\r\n', ':1\r\n']);
  });
});
