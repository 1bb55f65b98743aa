import { describe, expect, it } from 'vitest';

import { decodeReply } from '../../src/resp/reply-decoder';
import { copyRange } from '../../src/io/byte-copy';
import {
  arrayHeaderLength,
  encodeArrayHeader,
  encodeBulk,
  encodeCommand,
  encodeError,
  encodeInteger,
  encodeSimple,
  encodeValue,
  writeArrayHeader,
  type RespValue,
} from '../../src/resp/resp-writer';

const text = (frame: Buffer): string => frame.toString('latin1');

describe('resp-writer encoders', () => {
  it.each<[number, string]>([
    [0, ':0\r\n'],
    [1023, ':1023\r\n'],
    [1024, ':1024\r\n'],
    [-1, ':-1\r\n'],
    [8_000_000_000, ':8000000000\r\n'],
  ])('encodeInteger(%i)', (n, expected) => {
    expect(text(encodeInteger(n))).toBe(expected);
  });

  it('encodeError keeps one line whatever the message holds', () => {
    expect(text(encodeError('ERR a\r\nb\nc'))).toBe('-ERR a b c\r\n');
  });

  it('encodeSimple, encodeBulk and encodeArrayHeader', () => {
    expect(text(encodeSimple('OK'))).toBe('+OK\r\n');
    expect(text(encodeBulk('héllo'))).toBe('$6\r\nh\xc3\xa9llo\r\n');
    expect(text(encodeBulk(Buffer.from([0, 13, 10])))).toBe('$3\r\n\0\r\n\r\n');
    expect(text(encodeBulk(''))).toBe('$0\r\n\r\n');
    expect(text(encodeArrayHeader(3))).toBe('*3\r\n');
  });

  it.each([0, 1, 9, 10, 99, 100, 12345])('writeArrayHeader(%i) writes what encodeArrayHeader encodes, where it is told', (n) => {
    const out = Buffer.alloc(arrayHeaderLength(n) + 4, 0x2e);
    expect(writeArrayHeader(out, 2, n)).toBe(2 + arrayHeaderLength(n));
    expect(text(out)).toBe(`..${text(encodeArrayHeader(n))}..`);
  });

  it('copyRange copies short ranges by loop and long ones by Buffer#copy, byte-exact', () => {
    const source = Buffer.from(Array.from({ length: 300 }, (_, i) => (i * 7) & 0xff));
    for (const [from, to] of [[0, 0], [5, 9], [10, 74], [10, 75], [0, 300]] as const) {
      const out = Buffer.alloc(to - from + 3, 0);
      expect(copyRange(source, from, to, out, 3)).toBe(3 + to - from);
      expect(out.subarray(3).equals(source.subarray(from, to))).toBe(true);
    }
  });

  it('encodeCommand writes a multibulk request', () => {
    expect(text(encodeCommand(['SET', Buffer.from('k'), '']))).toBe('*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n');
  });
});

describe('decodeReply + encodeValue round trip (the merge path)', () => {
  it.each<[string, string]>([
    ['integer', ':42\r\n'],
    ['negative integer', ':-7\r\n'],
    ['bulk', '$5\r\nhello\r\n'],
    ['binary bulk', '$4\r\n\r\n\0\xff\r\n'],
    ['empty bulk', '$0\r\n\r\n'],
    ['null bulk', '$-1\r\n'],
    ['empty array', '*0\r\n'],
    ['array of bulks and nulls', '*3\r\n$1\r\na\r\n$-1\r\n$0\r\n\r\n'],
    ['nested arrays', '*2\r\n*1\r\n:1\r\n*2\r\n$1\r\nx\r\n:2\r\n'],
    ['array holding an error', '*2\r\n-ERR one\r\n:1\r\n'],
  ])('%s comes back byte-exact', (_name, frame) => {
    const out: Buffer[] = [];
    encodeValue(decodeReply(Buffer.from(frame, 'latin1')), out);
    expect(text(Buffer.concat(out))).toBe(frame);
  });

  it('decodes frames one after another with its shared parser', () => {
    const values: RespValue[] = [':1\r\n', '*1\r\n$1\r\na\r\n', '$-1\r\n', '-ERR x\r\n'].map((f) => decodeReply(Buffer.from(f)));
    expect(values[0]).toBe(1);
    expect(values[1]).toEqual([Buffer.from('a')]);
    expect(values[2]).toBeNull();
    expect(values[3]).toBeInstanceOf(Error);
    expect((values[3] as Error).message).toBe('ERR x');
  });
});
