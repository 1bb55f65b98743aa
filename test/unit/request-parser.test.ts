import { afterEach, describe, expect, it, vi } from 'vitest';

import { ProtocolError } from '../../src/resp/protocol-error';
import { RequestParser, splitInlineArgs, type RequestFrame } from '../../src/resp/request-parser';
import { encodeCommand } from '../../src/resp/resp-writer';

/** What a test keeps of one frame: copies, because the parser reuses the frame object. */
interface Parsed {
  readonly args: Buffer[];
  readonly bytes: Buffer;
}

/** Feeds `chunks` in order; returns the frames (copied) and the ProtocolError message, if any. */
function parse(chunks: readonly Buffer[]): { frames: Parsed[]; error: string | null } {
  const frames: Parsed[] = [];
  const parser = new RequestParser({
    onRequest(frame: RequestFrame): void {
      frames.push({ args: frame.args(), bytes: Buffer.from(frame.bytes()) });
    },
  });
  try {
    for (const chunk of chunks) parser.feed(chunk);
  } catch (err) {
    expect(err).toBeInstanceOf(ProtocolError);
    return { frames, error: (err as ProtocolError).message };
  }
  return { frames, error: null };
}

const bytes = (text: string): Buffer => Buffer.from(text, 'latin1');
const whole = (input: Buffer): Buffer[] => [input];
const oneByteAtATime = (input: Buffer): Buffer[] => Array.from(input, (b) => Buffer.from([b]));
const splitAt = (input: Buffer, at: number): Buffer[] => [input.subarray(0, at), input.subarray(at)];
/** Copies of the slices, so no chunk shares memory with another (as socket reads do not). */
const inChunks = (input: Buffer, size: number): Buffer[] => {
  const out: Buffer[] = [];
  for (let i = 0; i < input.length; i += size) out.push(Buffer.from(input.subarray(i, i + size)));
  return out;
};
const argsOf = (result: { frames: Parsed[] }): string[][] => result.frames.map((f) => f.args.map((a) => a.toString('latin1')));

/** Every byte value, so binary arguments cover CR, LF, NUL, '*' and '$'. */
const ALL_BYTES = Buffer.from(Array.from({ length: 256 }, (_, i) => i));

/**
 * A pipeline mixing every request shape the parser accepts, and the arguments each frame
 * must carry. Used to check that chunk boundaries never change the output.
 */
const MIXED_STREAM = Buffer.concat([
  encodeCommand(['SET', 'k', 'v']),
  bytes('*0\r\n'),
  encodeCommand(['SET', Buffer.from('bin\r\n\0key'), Buffer.from('\r\n*1\r\n$3\r\nGET\r\n')]),
  bytes('PING\r\n'),
  bytes('*-1\r\n'),
  bytes('set "a b" \'c d\' "\\x41\\n"\n'),
  bytes('\r\n'),
  encodeCommand(['MGET', ...Array.from({ length: 20 }, (_, i) => `key:${i}`)]),
  encodeCommand(['SET', 'empty', '']),
  encodeCommand(['ECHO', ALL_BYTES]),
]);
const MIXED_ARGS: string[][] = [
  ['SET', 'k', 'v'],
  ['SET', 'bin\r\n\0key', '\r\n*1\r\n$3\r\nGET\r\n'],
  ['PING'],
  ['set', 'a b', 'c d', 'A\n'],
  ['MGET', ...Array.from({ length: 20 }, (_, i) => `key:${i}`)],
  ['SET', 'empty', ''],
  ['ECHO', ALL_BYTES.toString('latin1')],
];

afterEach(() => {
  vi.restoreAllMocks();
});

describe('RequestParser: multibulk frames', () => {
  it('records the offsets of the frame and of every argument in the chunk', () => {
    const chunk = bytes('*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n');
    let seen: { start: number; end: number; argc: number; ranges: [number, number][]; buf: Buffer } | null = null;
    new RequestParser({
      onRequest(frame) {
        const ranges: [number, number][] = [];
        for (let i = 0; i < frame.argc; i++) ranges.push([frame.argStart[i]!, frame.argEnd[i]!]);
        seen = { start: frame.start, end: frame.end, argc: frame.argc, ranges, buf: frame.buf };
      },
    }).feed(chunk);
    expect(seen).not.toBeNull();
    const frame = seen!;
    expect(frame.buf).toBe(chunk); // parsed in place: no copy of a frame that fits one chunk
    expect(frame.start).toBe(0);
    expect(frame.end).toBe(chunk.length);
    expect(frame.argc).toBe(3);
    expect(frame.ranges).toEqual([
      [8, 11],
      [17, 18],
      [24, 29],
    ]);
  });

  it('gives arguments as views, and bytes() as a view of the chunk', () => {
    const first = encodeCommand(['PING']);
    const second = encodeCommand(['GET', 'some-key']);
    const chunk = Buffer.concat([first, second]);
    const checks: (() => void)[] = [];
    new RequestParser({
      onRequest(frame) {
        if (frame.argc !== 2) return;
        const view = frame.bytes();
        const key = frame.arg(1);
        checks.push(() => {
          expect(frame.start).toBe(first.length);
          expect(frame.end).toBe(chunk.length);
          expect(view.buffer).toBe(chunk.buffer);
          expect(view.byteOffset).toBe(chunk.byteOffset + first.length);
          expect(view.equals(second)).toBe(true);
          expect(key.buffer).toBe(chunk.buffer);
          expect(frame.argString(1)).toBe('some-key');
          expect(frame.argLength(1)).toBe(8);
          // A view, not a copy: writing through the chunk shows in the argument.
          chunk[frame.argStart[1]!] = 0x53; // 'S'
          expect(key.toString()).toBe('Some-key');
        });
      },
    }).feed(chunk);
    expect(checks).toHaveLength(1);
    checks[0]!();
  });

  it.each([
    ['get', 'GET', true],
    ['get', 'get', true],
    ['get', 'GeT', true],
    ['get', 'GETX', false],
    ['get', 'GE', false],
    ['get', 'SET', false],
    ['keyslot', 'KEYSLOT', true],
    ['no-evict', 'NO-EVICT', true],
  ])('argIs(%j) on %j is %s', (word, arg, expected) => {
    let result: boolean | null = null;
    new RequestParser({
      onRequest(frame) {
        result = frame.argIs(0, word);
      },
    }).feed(encodeCommand([arg]));
    expect(result).toBe(expected);
  });

  it('parses many frames from one chunk, back to back, in order', () => {
    const commands = Array.from({ length: 1000 }, (_, i) => ['SET', `key:${i}`, `value:${i}`]);
    const chunk = Buffer.concat(commands.map((c) => encodeCommand(c)));
    const offsets: [number, number][] = [];
    const args: string[][] = [];
    new RequestParser({
      onRequest(frame) {
        offsets.push([frame.start, frame.end]);
        args.push(frame.args().map(String));
      },
    }).feed(chunk);
    expect(args).toEqual(commands);
    expect(offsets[0]![0]).toBe(0);
    for (let i = 1; i < offsets.length; i++) expect(offsets[i]![0]).toBe(offsets[i - 1]![1]);
    expect(offsets[offsets.length - 1]![1]).toBe(chunk.length);
  });

  it('handles more arguments than the frame preallocates', () => {
    const command = ['MSET', ...Array.from({ length: 500 }, (_, i) => [`k${i}`, `v${i}`]).flat()];
    expect(argsOf(parse(whole(encodeCommand(command))))).toEqual([command]);
  });

  it.each([
    ['NUL, CR and LF inside a value', Buffer.from('a\0b\r\nc\n\rd')],
    ['a value that looks like RESP', bytes('*2\r\n$3\r\nGET\r\n$1\r\nx\r\n')],
    ['every byte value', ALL_BYTES],
    ['an empty value', Buffer.alloc(0)],
    ['a value that is only CRLF', bytes('\r\n')],
  ])('keeps binary arguments intact: %s', (_name, value) => {
    const input = encodeCommand(['SET', value, value]);
    for (const chunks of [whole(input), oneByteAtATime(input)]) {
      const { frames, error } = parse(chunks);
      expect(error).toBeNull();
      expect(frames).toHaveLength(1);
      expect(frames[0]!.args[1]!.equals(value)).toBe(true);
      expect(frames[0]!.args[2]!.equals(value)).toBe(true);
      expect(frames[0]!.bytes.equals(input)).toBe(true);
    }
  });

  it.each([
    ['*0', '*0\r\n'],
    ['*-1', '*-1\r\n'],
    ['*-10 (redis-server: "Negative multibulk length" is skipped)', '*-10\r\n'],
    ['several empty multibulks', '*0\r\n*-1\r\n*0\r\n'],
  ])('ignores %s and parses what follows', (_name, empty) => {
    const input = Buffer.concat([bytes(empty), encodeCommand(['PING'])]);
    for (const chunks of [whole(input), oneByteAtATime(input)]) {
      expect(argsOf(parse(chunks))).toEqual([['PING']]);
    }
  });
});

describe('RequestParser: chunk boundaries', () => {
  it('parses the mixed stream whole', () => {
    const result = parse(whole(MIXED_STREAM));
    expect(result.error).toBeNull();
    expect(argsOf(result)).toEqual(MIXED_ARGS);
  });

  it('gives the same frames when fed one byte at a time', () => {
    const reference = parse(whole(MIXED_STREAM));
    const result = parse(oneByteAtATime(MIXED_STREAM));
    expect(result.error).toBeNull();
    expect(argsOf(result)).toEqual(argsOf(reference));
    expect(result.frames.map((f) => f.bytes.toString('latin1'))).toEqual(reference.frames.map((f) => f.bytes.toString('latin1')));
  });

  it('gives the same frames when split in two at every position', () => {
    const reference = parse(whole(MIXED_STREAM));
    const expected = reference.frames.map((f) => f.bytes.toString('latin1'));
    for (let at = 0; at <= MIXED_STREAM.length; at++) {
      const result = parse(splitAt(MIXED_STREAM, at));
      expect(result.error, `split at ${at}`).toBeNull();
      expect(result.frames.map((f) => f.bytes.toString('latin1')), `split at ${at}`).toEqual(expected);
    }
  });

  it('gives the same frames when split in three at every pair of positions (small pipeline)', () => {
    const input = Buffer.concat([
      encodeCommand(['SET', 'a\r\nb', 'x']),
      bytes('GET "q"\r\n'),
      bytes('*0\r\n'),
      encodeCommand(['DEL', 'a', 'b']),
    ]);
    const expected = argsOf(parse(whole(input)));
    expect(expected).toEqual([['SET', 'a\r\nb', 'x'], ['GET', 'q'], ['DEL', 'a', 'b']]);
    for (let i = 0; i <= input.length; i++) {
      for (let j = i; j <= input.length; j++) {
        const chunks = [input.subarray(0, i), input.subarray(i, j), input.subarray(j)];
        expect(argsOf(parse(chunks)), `splits at ${i}, ${j}`).toEqual(expected);
      }
    }
  });

  it('joins a frame that straddles chunks into one contiguous frame', () => {
    const input = encodeCommand(['SET', 'key', 'x'.repeat(1000)]);
    let seen: { bytes: Buffer; isSameAsInput: boolean } | null = null;
    const parser = new RequestParser({
      onRequest(frame) {
        seen = { bytes: Buffer.from(frame.bytes()), isSameAsInput: frame.bytes().equals(input) };
      },
    });
    parser.feed(input.subarray(0, 10));
    expect(parser.bufferedLength).toBe(10);
    parser.feed(input.subarray(10, 500));
    expect(seen).toBeNull();
    parser.feed(input.subarray(500));
    expect(seen!.isSameAsInput).toBe(true);
    expect(parser.bufferedLength).toBe(0);
  });
});

describe('RequestParser: inline commands (redis-server sdssplitargs)', () => {
  it.each<[string, string, string[][]]>([
    ['CRLF terminated', 'PING\r\n', [['PING']]],
    ['LF terminated', 'set a b\n', [['set', 'a', 'b']]],
    ['extra blanks and tabs', '  set \t a   b  \r\n', [['set', 'a', 'b']]],
    ['double quotes with a space', 'set "hello world" x\r\n', [['set', 'hello world', 'x']]],
    ['single quotes with a space', "set 'hello world' x\r\n", [['set', 'hello world', 'x']]],
    ['hex escapes', 'echo "\\x41\\x42\\x7a"\r\n', [['echo', 'ABz']]],
    ['uppercase hex digits', 'echo "\\xFF\\x0a"\r\n', [['echo', '\xff\n']]],
    ['\\n \\r \\t \\b \\a escapes', 'echo "1\\n2\\r3\\t4\\b5\\a6"\r\n', [['echo', '1\n2\r3\t4\b5\x076']]],
    ['escaped quote and backslash', 'echo "say \\"hi\\" \\\\o/"\r\n', [['echo', 'say "hi" \\o/']]],
    ['\\x without two hex digits is a plain x', 'echo "\\xZZ" "\\x4"\r\n', [['echo', 'xZZ', 'x4']]],
    ['an unknown escape keeps the character', 'echo "\\q"\r\n', [['echo', 'q']]],
    ['escaped single quote in single quotes', "echo 'it\\'s'\r\n", [['echo', "it's"]]],
    ['single quotes do not interpret \\n', "echo 'a\\nb'\r\n", [['echo', 'a\\nb']]],
    ['empty quoted argument', 'echo "" \'\'\r\n', [['echo', '', '']]],
    ['a double quote inside a word joins it', 'set a"b c" e\r\n', [['set', 'ab c', 'e']]],
    ['a single quote inside a word joins it', "set ab'c d' e\r\n", [['set', 'abc d', 'e']]],
    ['a CR that does not end the line separates words', 'set a\rb\r\n', [['set', 'a', 'b']]],
    ['empty CRLF line is ignored', '\r\nPING\r\n', [['PING']]],
    ['empty LF line is ignored', '\nPING\n', [['PING']]],
    ['blank line is ignored', '   \t \r\nPING\r\n', [['PING']]],
    ['two commands in one chunk', 'PING\r\nECHO x\r\n', [['PING'], ['ECHO', 'x']]],
    ['inline then multibulk', 'PING\r\n*1\r\n$4\r\nPING\r\n', [['PING'], ['PING']]],
    // sdssplitargs ends an unquoted word only at ' ', \n, \r, \t and \0; \v and \f belong to it.
    ['vertical tab inside a word', 'set a\vb c\r\n', [['set', 'a\vb', 'c']]],
    ['form feed inside a word', 'set a\fb c\r\n', [['set', 'a\fb', 'c']]],
  ])('%s', (_name, input, expected) => {
    const chunks = bytes(input);
    expect(argsOf(parse(whole(chunks)))).toEqual(expected);
    expect(argsOf(parse(oneByteAtATime(chunks)))).toEqual(expected);
  });

  it('re-encodes an inline command as multibulk, so backends always get RESP', () => {
    const { frames } = parse(whole(bytes('set "a b" c\r\n')));
    expect(frames[0]!.bytes.equals(encodeCommand(['set', 'a b', 'c']))).toBe(true);
  });

  it.each([
    ['unterminated double quote', '"abc'],
    ['unterminated single quote', "'abc"],
    ['closing double quote followed by a letter', '"a"b'],
    ['closing single quote followed by a letter', "'a'b"],
    ['escaped closing quote leaves it open', '"a\\"'],
    ['escaped closing single quote leaves it open', "'a\\'"],
  ])('splitInlineArgs rejects %s', (_name, line) => {
    expect(splitInlineArgs(bytes(line))).toBeNull();
  });

  it('splitInlineArgs returns no words for a blank line', () => {
    expect(splitInlineArgs(bytes(' \t '))).toEqual([]);
  });
});

describe('RequestParser: protocol errors (redis-server wording)', () => {
  const TOO_LONG = 64 * 1024;
  it.each<[string, Buffer, string]>([
    ['*abc', bytes('*abc\r\n'), 'invalid multibulk length'],
    ['* with no digits', bytes('*\r\n'), 'invalid multibulk length'],
    ['* with a sign only (string2ll rejects "-")', bytes('*-\r\n'), 'invalid multibulk length'],
    ['*1x', bytes('*1x\r\n'), 'invalid multibulk length'],
    ['*+1', bytes('*+1\r\n'), 'invalid multibulk length'],
    ['a count above the limit', bytes('*99999999999\r\n'), 'invalid multibulk length'],
    // string2ll accepts no leading zero; the proxy would otherwise forward bytes redis-server rejects.
    ['a count with a leading zero', bytes('*01\r\n$4\r\nPING\r\n'), 'invalid multibulk length'],
    ['no $ before an argument', bytes('*1\r\nx\r\n'), "expected '$', got 'x'"],
    ['redis-server test "Wrong multibulk payload header"', bytes('*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n'), "expected '$', got 'f'"],
    ['redis-server test "Multi bulk request not followed by bulk arguments"', bytes('*1\r\nfoo\r\n'), "expected '$', got 'f'"],
    ['$-1 in a request', bytes('*1\r\n$-1\r\n'), 'invalid bulk length'],
    ['negative bulk length', bytes('*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n'), 'invalid bulk length'],
    ['$abc', bytes('*1\r\n$abc\r\n'), 'invalid bulk length'],
    ['$ with no digits', bytes('*1\r\n$\r\n\r\n'), 'invalid bulk length'],
    ['bulk of 512 MB + 1', bytes(`*1\r\n$${512 * 1024 * 1024 + 1}\r\n`), 'invalid bulk length'],
    ['bulk of 2000000000', bytes('*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$2000000000\r\n'), 'invalid bulk length'],
    ['a bulk length with a leading zero', bytes('*1\r\n$04\r\nPING\r\n'), 'invalid bulk length'],
    ['unbalanced double quote', bytes('set "abc\r\n'), 'unbalanced quotes in request'],
    ['unbalanced single quote', bytes("set 'abc\r\n"), 'unbalanced quotes in request'],
    ['closing quote not followed by a space', bytes('set "a"b\r\n'), 'unbalanced quotes in request'],
    ['inline line over 64 KB without newline', Buffer.alloc(TOO_LONG + 1, 'a'), 'too big inline request'],
    ['multibulk count line over 64 KB without CR', Buffer.concat([bytes('*'), Buffer.alloc(TOO_LONG, '1')]), 'too big mbulk count string'],
    ['bulk length line over 64 KB without CR', Buffer.concat([bytes('*1\r\n$'), Buffer.alloc(TOO_LONG, '1')]), 'too big bulk count string'],
  ])('%s', (_name, input, message) => {
    expect(parse(whole(input)).error).toBe(message);
  });

  it.each<[string, string, string]>([
    ['*abc', '*abc\r\n', 'invalid multibulk length'],
    ['$-1', '*1\r\n$-1\r\n', 'invalid bulk length'],
    ["expected '$'", '*2\r\n$3\r\nGET\r\n:1\r\n', "expected '$', got ':'"],
    ['unbalanced quotes', 'get "x\r\n', 'unbalanced quotes in request'],
  ])('%s fed one byte at a time gives the same error', (_name, input, message) => {
    expect(parse(oneByteAtATime(bytes(input))).error).toBe(message);
  });

  it('emits the frames before the bad one, then nothing after the error', () => {
    const input = Buffer.concat([encodeCommand(['PING']), bytes('*1\r\n$x\r\n'), encodeCommand(['PING'])]);
    const frames: string[] = [];
    const parser = new RequestParser({
      onRequest(frame) {
        frames.push(frame.argString(0));
      },
    });
    expect(() => parser.feed(input)).toThrow(ProtocolError);
    expect(frames).toEqual(['PING']);
    parser.feed(encodeCommand(['PING'])); // ignored: the connection is closing
    expect(frames).toEqual(['PING']);
  });

  it('exposes the error name and a RedisError base', () => {
    const error = new ProtocolError('invalid bulk length');
    expect(error.name).toBe('ProtocolError');
    expect(error.message).toBe('invalid bulk length');
    expect(error).toBeInstanceOf(Error);
  });

  it('accepts a 64 KB inline line (the limit itself)', () => {
    const line = Buffer.concat([bytes('ECHO '), Buffer.alloc(TOO_LONG - 5, 'a')]);
    const parser = new RequestParser({ onRequest() {} });
    expect(() => parser.feed(line)).not.toThrow();
    const result = parse([line, bytes('\r\n')]);
    expect(result.error).toBeNull();
    expect(result.frames[0]!.args[1]!.length).toBe(TOO_LONG - 5);
  });

  it('accepts a bulk of exactly 512 MB as a header (waits for the data)', () => {
    const parser = new RequestParser({ onRequest() {} });
    expect(() => parser.feed(bytes(`*1\r\n$${512 * 1024 * 1024}\r\n`))).not.toThrow();
  });
});

describe('RequestParser: large frames', () => {
  it(
    'parses a 100 MB value fed in 64 KB chunks with at most 2 joins',
    () => {
      const value = Buffer.alloc(100 * 1024 * 1024, 0x61);
      value.write('head', 0);
      value.write('tail', value.length - 4);
      const input = encodeCommand(['SET', 'big', value]);
      const chunks = inChunks(input, 64 * 1024);
      let argLength = -1;
      let isExact = false;
      const parser = new RequestParser({
        onRequest(frame) {
          argLength = frame.argLength(2);
          isExact = frame.arg(2).equals(value) && frame.argString(1) === 'big';
        },
      });
      const concat = vi.spyOn(Buffer, 'concat');
      const started = Date.now();
      for (const chunk of chunks) parser.feed(chunk);
      const elapsed = Date.now() - started;
      const joins = concat.mock.calls.length;
      concat.mockRestore();
      expect(argLength).toBe(value.length);
      expect(isExact).toBe(true);
      expect(joins).toBeLessThanOrEqual(2);
      expect(elapsed).toBeLessThan(5_000);
    },
    30_000,
  );

  it(
    'parses a 12 MB MSET of 100,000 pairs fed in 64 KB chunks without rejoining it per chunk',
    () => {
      // The bulk lengths only tell the parser about the next argument, so a naive "need one
      // more byte" joins (and rescans) the whole frame on every chunk: quadratic in its size.
      const pairs = 100_000;
      const args: string[] = ['MSET'];
      for (let i = 0; i < pairs; i++) args.push(`key:${i}`, 'v'.repeat(100));
      const input = encodeCommand(args);
      const chunks = inChunks(input, 64 * 1024);
      let argc = 0;
      const parser = new RequestParser({
        onRequest(frame) {
          argc = frame.argc;
        },
      });
      const concat = vi.spyOn(Buffer, 'concat');
      for (const chunk of chunks) parser.feed(chunk);
      const joins = concat.mock.calls.length;
      concat.mockRestore();
      expect(argc).toBe(1 + 2 * pairs);
      expect(chunks.length).toBeGreaterThan(150);
      expect(joins, `${joins} joins for ${chunks.length} chunks`).toBeLessThan(30);
    },
    60_000,
  );
});

describe('RequestParser: pause and resume', () => {
  it('stops emitting on pause() from inside onRequest, buffers, and continues on resume()', () => {
    const seen: string[] = [];
    let shouldPause = true;
    const parser = new RequestParser({
      onRequest(frame) {
        seen.push(frame.argString(1));
        if (shouldPause) parser.pause();
      },
    });
    const first = Buffer.concat([encodeCommand(['GET', 'a']), encodeCommand(['GET', 'b']), encodeCommand(['GET', 'c'])]);
    parser.feed(first);
    expect(seen).toEqual(['a']);
    expect(parser.isPaused).toBe(true);
    const rest = first.length - encodeCommand(['GET', 'a']).length;
    expect(parser.bufferedLength).toBe(rest);

    // Bytes keep arriving while paused: buffered, not parsed.
    const more = Buffer.concat([encodeCommand(['GET', 'd']), encodeCommand(['GET', 'e']).subarray(0, 5)]);
    parser.feed(more);
    expect(seen).toEqual(['a']);
    expect(parser.bufferedLength).toBe(rest + more.length);

    shouldPause = false;
    parser.resume();
    expect(parser.isPaused).toBe(false);
    expect(seen).toEqual(['a', 'b', 'c', 'd']);
    parser.feed(encodeCommand(['GET', 'e']).subarray(5));
    expect(seen).toEqual(['a', 'b', 'c', 'd', 'e']);
    expect(parser.bufferedLength).toBe(0);
  });

  it('emits one frame per resume() while the sink keeps pausing', () => {
    const seen: string[] = [];
    const parser = new RequestParser({
      onRequest(frame) {
        seen.push(frame.argString(1));
        parser.pause();
      },
    });
    parser.feed(Buffer.concat(['a', 'b', 'c'].map((k) => encodeCommand(['GET', k]))));
    expect(seen).toEqual(['a']);
    parser.resume();
    expect(seen).toEqual(['a', 'b']);
    parser.resume();
    expect(seen).toEqual(['a', 'b', 'c']);
    parser.resume();
    expect(seen).toEqual(['a', 'b', 'c']);
  });

  it('buffers everything fed before the first resume() when paused up front', () => {
    const seen: string[] = [];
    const parser = new RequestParser({
      onRequest(frame) {
        seen.push(frame.argString(0));
      },
    });
    parser.pause();
    const input = Buffer.concat([encodeCommand(['PING']), bytes('ECHO x\r\n'), encodeCommand(['QUIT'])]);
    for (const chunk of oneByteAtATime(input)) parser.feed(chunk);
    expect(seen).toEqual([]);
    expect(parser.bufferedLength).toBe(input.length);
    parser.resume();
    expect(seen).toEqual(['PING', 'ECHO', 'QUIT']);
  });

  it('resume() is a no-op when not paused', () => {
    const seen: string[] = [];
    const parser = new RequestParser({
      onRequest(frame) {
        seen.push(frame.argString(0));
      },
    });
    parser.feed(encodeCommand(['PING']));
    parser.resume();
    expect(seen).toEqual(['PING']);
  });

  it('surfaces a ProtocolError from resume() for bad bytes buffered while paused', () => {
    // Callers must guard resume() as they guard feed(): the bad bytes are only parsed now.
    const parser = new RequestParser({ onRequest() {} });
    parser.pause();
    parser.feed(bytes('*abc\r\n'));
    expect(() => parser.resume()).toThrow(ProtocolError);
  });
});
