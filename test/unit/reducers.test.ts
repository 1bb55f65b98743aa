import { describe, expect, it } from 'vitest';

import { firstErrorIndex, mergeAllOk, mergeFirst, mergeMget, mergeSum, mergeUnion } from '../../src/reply/reducers';
import { encodeBulk } from '../../src/resp/resp-writer';

const bytes = (text: string): Buffer => Buffer.from(text, 'latin1');
/** A RESP array of bulk strings (null for a null bulk), as a shard would send it. */
function bulkArray(items: readonly (Buffer | string | null)[]): Buffer {
  return Buffer.concat([
    bytes(`*${items.length}\r\n`),
    ...items.map((item) => (item === null ? bytes('$-1\r\n') : encodeBulk(item))),
  ]);
}
const text = (frame: Buffer): string => frame.toString('latin1');
const MERGE_ERROR = /^-ERR slotproxy could not merge a shard reply: .*\r\n$/;

describe('firstErrorIndex', () => {
  it.each<[string, string[], number]>([
    ['no pieces', [], -1],
    ['no error', ['+OK\r\n', ':1\r\n', '*0\r\n'], -1],
    ['error first', ['-ERR a\r\n', '+OK\r\n'], 0],
    ['error in the middle', [':1\r\n', '-MOVED 1 h:1\r\n', '-ERR c\r\n'], 1],
    ['error last', ['$1\r\n-\r\n', '-ERR x\r\n'], 1],
    ['an array holding an error is not an error reply', ['*1\r\n-ERR x\r\n'], -1],
  ])('%s', (_name, replies, expected) => {
    expect(firstErrorIndex(replies.map(bytes))).toBe(expected);
  });
});

describe('mergeSum (agg_sum)', () => {
  it.each<[string, string[], string]>([
    ['one piece', [':3\r\n'], ':3\r\n'],
    ['adds the pieces', [':1\r\n', ':2\r\n', ':0\r\n'], ':3\r\n'],
    ['all zero', [':0\r\n', ':0\r\n'], ':0\r\n'],
    ['beyond the cached small integers', [':1000\r\n', ':24\r\n', ':5000\r\n'], ':6024\r\n'],
    ['negative pieces', [':-5\r\n', ':2\r\n'], ':-3\r\n'],
    ['large counts', [':4000000000\r\n', ':4000000000\r\n'], ':8000000000\r\n'],
  ])('%s', (_name, replies, expected) => {
    expect(text(mergeSum(replies.map(bytes)))).toBe(expected);
  });

  it.each([['+OK\r\n'], ['$1\r\n1\r\n'], ['*0\r\n']])('answers an error, not a number, when a piece is %j', (odd) => {
    const merged = text(mergeSum([bytes(':1\r\n'), bytes(odd)]));
    expect(merged).toMatch(MERGE_ERROR);
  });
});

describe('mergeAllOk (all_succeeded)', () => {
  it('is +OK when every piece is +OK', () => {
    expect(text(mergeAllOk([bytes('+OK\r\n'), bytes('+OK\r\n'), bytes('+OK\r\n')]))).toBe('+OK\r\n');
  });

  it.each([['+QUEUED\r\n'], [':1\r\n'], ['$2\r\nOK\r\n'], ['+OK \r\n']])('is an error when a piece is %j', (odd) => {
    const merged = text(mergeAllOk([bytes('+OK\r\n'), bytes(odd)]));
    expect(merged).toMatch(MERGE_ERROR);
    expect(merged).not.toContain('\r\n-');
    expect(merged.indexOf('\r\n')).toBe(merged.length - 2); // the piece's CRLF cannot break framing
  });
});

describe('mergeFirst', () => {
  it('answers the first piece when all agree (SCRIPT LOAD sha)', () => {
    const sha = encodeBulk('e0e1f9fabfc9d4800c877a703b823ac0578ff8db');
    const merged = mergeFirst([sha, Buffer.from(sha), Buffer.from(sha)]);
    expect(merged.equals(sha)).toBe(true);
  });

  it('is an error when the pieces disagree', () => {
    expect(text(mergeFirst([encodeBulk('aaa'), encodeBulk('bbb')]))).toMatch(MERGE_ERROR);
  });
});

describe('mergeUnion (KEYS)', () => {
  it.each<[string, (Buffer | string | null)[][], string]>([
    ['concatenates in piece order', [['a', 'b'], ['c']], '*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n'],
    ['skips empty pieces', [[], ['x'], []], '*1\r\n$1\r\nx\r\n'],
    ['all empty', [[], []], '*0\r\n'],
    ['keeps binary keys', [[Buffer.from('k\r\n\0')], [Buffer.from([0xff])]], '*2\r\n$4\r\nk\r\n\0\r\n$1\r\n\xff\r\n'],
  ])('%s', (_name, pieces, expected) => {
    expect(text(mergeUnion(pieces.map(bulkArray)))).toBe(expected);
  });

  it('keeps no state between merges: 2,000 random ones in a row, malformed ones among them, up to 40 pieces and 600 keys', () => {
    let seed = 11;
    const random = (): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x80000000;
    };
    for (let round = 0; round < 2000; round++) {
      const pieceCount = 1 + Math.floor(random() * (round % 50 === 0 ? 40 : 4));
      const keyCount = 1 + Math.floor(random() * (round % 7 === 0 ? 600 : 12));
      const keyFragment = Array.from({ length: keyCount }, () => Math.floor(random() * pieceCount));
      const perPiece: (string | null)[][] = Array.from({ length: pieceCount }, () => []);
      const inOrder: (string | null)[] = [];
      for (let k = 0; k < keyCount; k++) {
        const value = random() < 0.2 ? null : `r${round}-k${k}`;
        perPiece[keyFragment[k]!]!.push(value);
        inOrder.push(value);
      }
      if (round % 13 === 5) {
        // One piece short of an item: an error, and the merges after it still right.
        const short = keyFragment[0]!;
        perPiece[short]!.pop();
        expect(text(mergeMget(perPiece.map(bulkArray), keyFragment)), `round ${round}`).toMatch(MERGE_ERROR);
        continue;
      }
      expect(mergeMget(perPiece.map(bulkArray), keyFragment).equals(bulkArray(inOrder)), `round ${round}`).toBe(true);
    }
  });

  it('is an error when a piece is not an array', () => {
    expect(text(mergeUnion([bulkArray(['a']), bytes(':1\r\n')]))).toMatch(MERGE_ERROR);
  });
});

describe('mergeMget', () => {
  it('puts the items back in key order from per-shard pieces', () => {
    // Keys k0..k5 went to pieces [1, 0, 1, 2, 0, 1]; each piece answered its keys in order.
    const keyFragment = Array.from([1, 0, 1, 2, 0, 1]);
    const pieces = [bulkArray(['v1', 'v4']), bulkArray(['v0', 'v2', 'v5']), bulkArray(['v3'])];
    expect(text(mergeMget(pieces, keyFragment))).toBe(text(bulkArray(['v0', 'v1', 'v2', 'v3', 'v4', 'v5'])));
  });

  it('keeps nulls, empty values and binary values byte-exact', () => {
    const binary = Buffer.from([0, 13, 10, 0x24, 0x2a, 0xff, 0xfe]);
    const keyFragment = Array.from([0, 1, 0, 1, 2]);
    const pieces = [bulkArray([null, binary]), bulkArray(['', null]), bulkArray(['last'])];
    const expected = bulkArray([null, '', binary, null, 'last']);
    expect(mergeMget(pieces, keyFragment).equals(expected)).toBe(true);
  });

  it('handles the same key asked twice, on the same piece', () => {
    const keyFragment = Array.from([0, 1, 0]);
    expect(text(mergeMget([bulkArray(['a', 'a']), bulkArray([null])], keyFragment))).toBe(text(bulkArray(['a', null, 'a'])));
  });

  it('writes a header of several digits (12 and 150 keys)', () => {
    for (const n of [12, 150]) {
      const values = Array.from({ length: n }, (_, i) => `value-${i}`);
      const keyFragment = Array.from(values, (_, i) => i % 3);
      const pieces = [0, 1, 2].map((f) => bulkArray(values.filter((_, i) => i % 3 === f)));
      expect(text(mergeMget(pieces, keyFragment))).toBe(text(bulkArray(values)));
    }
  });

  it('keeps a 1 MB value byte-exact', () => {
    const big = Buffer.alloc(1024 * 1024, 0x5a);
    big.write('\r\n$-1\r\n', 1000, 'latin1');
    const keyFragment = Array.from([1, 0]);
    const merged = mergeMget([bulkArray(['small']), bulkArray([big])], keyFragment);
    expect(merged.equals(bulkArray([big, 'small']))).toBe(true);
  });

  it('matches what one Redis would answer for 1,000 keys over 3 pieces', () => {
    const keyCount = 1000;
    const keyFragment = new Array<number>(keyCount).fill(0);
    const perPiece: (string | null)[][] = [[], [], []];
    const inOrder: (string | null)[] = [];
    for (let k = 0; k < keyCount; k++) {
      const piece = (k * 7 + (k >> 3)) % 3;
      const value = k % 5 === 0 ? null : `value-${k}`;
      keyFragment[k] = piece;
      perPiece[piece]!.push(value);
      inOrder.push(value);
    }
    expect(mergeMget(perPiece.map(bulkArray), keyFragment).equals(bulkArray(inOrder))).toBe(true);
  });

  it('is an error when a piece answers fewer items than it was given keys', () => {
    const keyFragment = Array.from([0, 1, 1]);
    expect(text(mergeMget([bulkArray(['a']), bulkArray(['b'])], keyFragment))).toMatch(MERGE_ERROR);
  });

  it('is an error when a piece is not an array', () => {
    const keyFragment = Array.from([0, 1]);
    expect(text(mergeMget([bulkArray(['a']), bytes('+OK\r\n')], keyFragment))).toMatch(MERGE_ERROR);
  });
});
