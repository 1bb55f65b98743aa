import { describe, expect, it } from 'vitest';

import { OutputBuffer, type OutputTarget } from '../../src/io/output-buffer';

/** What a socket's writer was handed: each write's bytes, and whether it came in a gathered write. */
class RecordingSocket implements OutputTarget {
  readonly writes: { bytes: Buffer; isCorked: boolean }[] = [];

  /** What the writes answer: true, the kernel took the bytes; false, a write left pending keeps them. */
  isTaking = true;
  /** The buffers handed over, as they were handed (not copies). */
  readonly handed: Buffer[] = [];

  write(bytes: Buffer): boolean {
    this.handed.push(bytes);
    this.writes.push({ bytes: Buffer.from(bytes), isCorked: false });
    return this.isTaking;
  }

  writeAll(parts: readonly Buffer[], count: number): boolean {
    for (let i = 0; i < count; i++) {
      this.handed.push(parts[i]!);
      this.writes.push({ bytes: Buffer.from(parts[i]!), isCorked: true });
    }
    return this.isTaking;
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

  it('copies what is appended: the source may change once append() returns', () => {
    const out = new OutputBuffer();
    const socket = new RecordingSocket();
    const read = Buffer.from('$3\r\nfoo\r\n:1\r\n');
    out.append(read.subarray(0, 9));
    read.write('$3\r\nbar', 0, 'latin1');
    out.append(read.subarray(9));
    out.writeTo(socket.asSocket());
    expect(text(socket)).toEqual(['$3\r\nfoo\r\n:1\r\n']);
  });

  it('keeps appended and pushed pieces in the order they came', () => {
    const out = new OutputBuffer();
    const socket = new RecordingSocket();
    out.append(Buffer.from('+a\r\n'));
    out.push(Buffer.from('+b\r\n'));
    out.append(Buffer.from('+c\r\n'));
    out.append(Buffer.from('+d\r\n'));
    out.push(Buffer.from('+e\r\n'));
    expect(out.length).toBe(20);
    out.writeTo(socket.asSocket());
    expect(text(socket)).toEqual(['+a\r\n+b\r\n+c\r\n+d\r\n+e\r\n']);
  });

  it('lends its block again only after a write the kernel took at once', () => {
    const socket = new RecordingSocket();
    const first = new OutputBuffer();
    first.append(Buffer.from('+first\r\n'));
    socket.isTaking = false;
    first.writeTo(socket.asSocket());
    const pending = socket.handed[0]!;
    // A write left pending keeps its block: later output, on this socket or another, must not overwrite it.
    const second = new OutputBuffer();
    for (let i = 0; i < 200; i++) second.append(Buffer.from(`+second ${i}\r\n`));
    socket.isTaking = true;
    second.writeTo(socket.asSocket());
    expect(pending.toString()).toBe('+first\r\n');
    // A taken write gives its block back; the next output reuses it and writes its own bytes.
    const taken = socket.handed[1]!;
    const third = new OutputBuffer();
    third.append(Buffer.from('+third\r\n'));
    third.writeTo(socket.asSocket());
    expect(socket.handed[2]!.buffer).toBe(taken.buffer);
    expect(text(socket)).toEqual(['+first\r\n', Array.from({ length: 200 }, (_, i) => `+second ${i}\r\n`).join(''), '+third\r\n']);
  });

  it('spans several blocks, and gives a large appended piece a copy of its own, in order', () => {
    const out = new OutputBuffer();
    const socket = new RecordingSocket();
    const expected: string[] = [];
    for (let i = 0; i < 3_000; i++) {
      const piece = i % 500 === 0 ? `$12000\r\n${'x'.repeat(12_000)}\r\n` : `+piece ${i}\r\n`;
      expected.push(piece);
      out.append(Buffer.from(piece));
    }
    out.writeTo(socket.asSocket());
    expect(socket.writes.map((w) => w.bytes.toString()).join('')).toBe(expected.join(''));
  });
});
