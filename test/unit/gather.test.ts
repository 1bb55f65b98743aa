import { describe, expect, it } from 'vitest';

import type { ReplySink } from '../../src/backend/reply-sink';
import { Gather } from '../../src/reply/gather';
import { encodeBulk } from '../../src/resp/resp-writer';

const bytes = (text: string): Buffer => Buffer.from(text, 'latin1');

/** The client's reply slot, as the gather sees it: records what it is handed. */
class RecordingSink implements ReplySink {
  readonly replies: string[] = [];
  readonly failures: string[] = [];

  onReply(frame: Buffer): void {
    this.replies.push(frame.toString('latin1'));
  }

  onFailure(error: Buffer): void {
    this.failures.push(error.toString('latin1'));
  }
}

/** All orderings of 0..n-1. */
function permutations(n: number): number[][] {
  if (n === 0) return [[]];
  const out: number[][] = [];
  for (const rest of permutations(n - 1)) {
    for (let at = 0; at <= rest.length; at++) out.push([...rest.slice(0, at), n - 1, ...rest.slice(at)]);
  }
  return out;
}

const bulkArray = (items: readonly (string | null)[]): Buffer =>
  Buffer.concat([bytes(`*${items.length}\r\n`), ...items.map((i) => (i === null ? bytes('$-1\r\n') : encodeBulk(i)))]);

describe('Gather', () => {
  const SUM_PIECES = [':1\r\n', ':20\r\n', ':300\r\n', ':4000\r\n'];

  it.each(permutations(SUM_PIECES.length).map((order) => [order.join(',') as string, order] as const))(
    'completes once, after the last piece, for arrival order %s',
    (_name, order) => {
      const target = new RecordingSink();
      const gather = new Gather(target, 'sum', SUM_PIECES.length, null);
      const sinks = SUM_PIECES.map((_, i) => gather.piece(i));
      for (let n = 0; n < order.length; n++) {
        expect(target.replies, `before piece ${n + 1} of ${order.length}`).toEqual([]);
        sinks[order[n]!]!.onReply(bytes(SUM_PIECES[order[n]!]!));
      }
      expect(target.replies).toEqual([':4321\r\n']);
      expect(target.failures).toEqual([]);
    },
  );

  it('ignores a second reply for a piece already in (it does not count twice)', () => {
    const target = new RecordingSink();
    const gather = new Gather(target, 'sum', 2, null);
    const first = gather.piece(0);
    first.onReply(bytes(':1\r\n'));
    first.onReply(bytes(':1\r\n'));
    expect(target.replies).toEqual([]);
    gather.piece(1).onReply(bytes(':5\r\n'));
    expect(target.replies).toEqual([':6\r\n']);
  });

  it('does not complete again when pieces answer after completion', () => {
    const target = new RecordingSink();
    const gather = new Gather(target, 'all-ok', 2, null);
    gather.piece(0).onReply(bytes('+OK\r\n'));
    gather.piece(1).onReply(bytes('+OK\r\n'));
    gather.piece(1).onReply(bytes('+OK\r\n'));
    gather.piece(0).onFailure(bytes('-ERR late\r\n'));
    expect(target.replies).toEqual(['+OK\r\n']);
  });

  it.each(permutations(3).map((order) => [order.join(','), order] as const))(
    'one error piece makes the whole reply that error (arrival order %s)',
    (_name, order) => {
      const pieces = ['+OK\r\n', '-OOM command not allowed when used memory > maxmemory\r\n', '+OK\r\n'];
      const target = new RecordingSink();
      const gather = new Gather(target, 'all-ok', 3, null);
      for (const i of order) gather.piece(i).onReply(bytes(pieces[i]!));
      expect(target.replies).toEqual(['-OOM command not allowed when used memory > maxmemory\r\n']);
    },
  );

  it('a failed piece (no reply: connection lost) fails the whole command with its error', () => {
    const target = new RecordingSink();
    const gather = new Gather(target, 'mget', 2, Array.from([0, 1]));
    gather.piece(0).onReply(bulkArray(['a']));
    expect(target.replies).toEqual([]);
    gather.piece(1).onFailure(bytes('-ERR slotproxy: shard s2 unavailable\r\n'));
    expect(target.replies).toEqual(['-ERR slotproxy: shard s2 unavailable\r\n']);
  });

  it('with several error pieces, answers the one of the lowest piece index', () => {
    const target = new RecordingSink();
    const gather = new Gather(target, 'sum', 3, null);
    gather.piece(2).onReply(bytes('-ERR third\r\n'));
    gather.piece(1).onReply(bytes('-ERR second\r\n'));
    gather.piece(0).onReply(bytes(':1\r\n'));
    expect(target.replies).toEqual(['-ERR second\r\n']);
  });

  it.each<[string, 'mget' | 'sum' | 'all-ok' | 'first' | 'union', number[] | null, Buffer[], string]>([
    ['mget', 'mget', Array.from([1, 0, 1]), [bulkArray(['b']), bulkArray(['a', null])], '*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n'],
    ['sum', 'sum', null, [bytes(':2\r\n'), bytes(':3\r\n')], ':5\r\n'],
    ['all-ok', 'all-ok', null, [bytes('+OK\r\n'), bytes('+OK\r\n')], '+OK\r\n'],
    ['first', 'first', null, [encodeBulk('sha'), encodeBulk('sha')], '$3\r\nsha\r\n'],
    ['union', 'union', null, [bulkArray(['k1']), bulkArray(['k2', 'k3'])], '*3\r\n$2\r\nk1\r\n$2\r\nk2\r\n$2\r\nk3\r\n'],
  ])('applies the %s merge', (_name, merge, keyFragment, pieces, expected) => {
    const target = new RecordingSink();
    const gather = new Gather(target, merge, pieces.length, keyFragment);
    // Last piece first: the merge works by piece index, not arrival order.
    for (let i = pieces.length - 1; i >= 0; i--) gather.piece(i).onReply(pieces[i]!);
    expect(target.replies).toEqual([expected]);
  });

  it('completes with a single piece', () => {
    const target = new RecordingSink();
    new Gather(target, 'sum', 1, null).piece(0).onReply(bytes(':9\r\n'));
    expect(target.replies).toEqual([':9\r\n']);
  });
});
