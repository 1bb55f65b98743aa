import { describe, expect, it } from 'vitest';

import { OutputBuffer, type OutputTarget } from '../../src/io/output-buffer';

/** What a socket's writer was handed: each write's bytes, and whether it came in a gathered write. */
class RecordingSocket implements OutputTarget {
  readonly writes: { bytes: Buffer; isCorked: boolean }[] = [];

  write(bytes: Buffer): void {
    this.writes.push({ bytes: Buffer.from(bytes), isCorked: false });
  }

  writeAll(parts: readonly Buffer[], count: number): void {
    for (let i = 0; i < count; i++) this.writes.push({ bytes: Buffer.from(parts[i]!), isCorked: true });
  }

  asSocket(): OutputTarget {
    return this;
  }
}

const text = (socket: RecordingSocket): string[] => socket.writes.map((w) => w.bytes.toString());

describe('OutputBuffer', () => {
  it('writes a turn of pieces as one joined write, and nothing of it again on the next turn', () => {
    const out = new OutputBuffer();
    const socket = new RecordingSocket();
    out.push(Buffer.from('+OK\r\n'));
    out.push(Buffer.from('$1\r\na\r\n'));
    expect(out.length).toBe(12);
    out.writeTo(socket.asSocket());
    out.push(Buffer.from(':1\r\n'));
    out.writeTo(socket.asSocket());
    out.writeTo(socket.asSocket());
    expect(text(socket)).toEqual(['+OK\r\n$1\r\na\r\n', ':1\r\n']);
    expect(out.length).toBe(0);
  });

  it('keeps every piece across turns of different sizes (its array is reused)', () => {
    const out = new OutputBuffer();
    const socket = new RecordingSocket();
    const expected: string[] = [];
    let n = 0;
    // Turns of 1..2000 pieces, shrinking and growing, across the size it stops keeping.
    for (const pieces of [5, 1, 2000, 3, 1500, 1, 40, 2, 1025, 7]) {
      const turn: string[] = [];
      for (let i = 0; i < pieces; i++) {
        const piece = `:${n++}\r\n`;
        turn.push(piece);
        out.push(Buffer.from(piece));
      }
      expected.push(turn.join(''));
      out.writeTo(socket.asSocket());
    }
    expect(text(socket)).toEqual(expected);
  });

  it('hands pieces over 64 KB in all to the writer as one gathered write, in order', () => {
    const out = new OutputBuffer();
    const socket = new RecordingSocket();
    const big = Buffer.alloc(40_000, 'x');
    out.push(Buffer.from('*2\r\n'));
    out.push(big);
    out.push(big);
    out.writeTo(socket.asSocket());
    expect(socket.writes.map((w) => [w.bytes.length, w.isCorked])).toEqual([
      [4, true],
      [40_000, true],
      [40_000, true],
    ]);
    out.push(Buffer.from('+OK\r\n'));
    out.writeTo(socket.asSocket());
    expect(socket.writes.at(-1)).toEqual({ bytes: Buffer.from('+OK\r\n'), isCorked: false });
  });

  it('drops what was queued on clear()', () => {
    const out = new OutputBuffer();
    const socket = new RecordingSocket();
    out.push(Buffer.from('+gone\r\n'));
    out.clear();
    out.writeTo(socket.asSocket());
    out.push(Buffer.from('+kept\r\n'));
    out.writeTo(socket.asSocket());
    expect(text(socket)).toEqual(['+kept\r\n']);
  });
});
