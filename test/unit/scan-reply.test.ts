import { describe, expect, it } from 'vitest';

import { walkScanReply } from '../../src/control/slot-key-index';

const bytes = (text: string): Buffer => Buffer.from(text, 'latin1');

/** The keys walkScanReply reports, as latin1 text, and the cursor it returns. */
function walk(reply: Buffer): { cursor: string; keys: string[] } {
  const keys: string[] = [];
  const cursor = walkScanReply(reply, (buf, start, end) => keys.push(buf.toString('latin1', start, end)));
  return { cursor, keys };
}

describe('walkScanReply: the keys of a SCAN reply, in place', () => {
  it('returns the cursor and every key, binary bytes and CRLF inside a key included', () => {
    const reply = bytes('*2\r\n$5\r\n17152\r\n*4\r\n$3\r\nfoo\r\n$0\r\n\r\n$4\r\na\r\nb\r\n$3\r\n\x00\xff{\r\n');
    expect(walk(reply)).toEqual({ cursor: '17152', keys: ['foo', '', 'a\r\nb', '\x00\xff{'] });
  });

  it('reads the last page (cursor 0, no keys)', () => {
    expect(walk(bytes('*2\r\n$1\r\n0\r\n*0\r\n'))).toEqual({ cursor: '0', keys: [] });
  });

  it('reads a reply that is a view into a larger buffer', () => {
    const whole = bytes('+OK\r\n*2\r\n$1\r\n0\r\n*1\r\n$1\r\nk\r\n:1\r\n');
    expect(walk(whole.subarray(5, whole.length - 4))).toEqual({ cursor: '0', keys: ['k'] });
  });

  it('throws on what is not a SCAN reply, or a key that runs past the end', () => {
    expect(() => walk(bytes('-ERR nope\r\n'))).toThrow(/not a SCAN reply/);
    expect(() => walk(bytes('*3\r\n$1\r\n0\r\n*0\r\n:1\r\n'))).toThrow(/not a SCAN reply/);
    expect(() => walk(bytes('*2\r\n$1\r\n0\r\n*1\r\n$9\r\nshort\r\n'))).toThrow(/runs past its end/);
    expect(() => walk(bytes('*2\r\n$x\r\n0\r\n*0\r\n'))).toThrow(/not a number/);
  });
});
