import { describe, expect, it } from 'vitest';
import { mergeLatestPerEvent, mergeNewestFirst, slowlogLimit } from '../../src/reply/reducers';
import { decodeReply } from '../../src/resp/reply-decoder';
import { encodeValue, type RespValue } from '../../src/resp/resp-writer';

function frame(value: RespValue): Buffer {
  const out: Buffer[] = [];
  encodeValue(value, out);
  return Buffer.concat(out);
}

const entry = (id: number, time: number, name: string): RespValue => [id, time, 5, [Buffer.from('GET'), Buffer.from(name)], Buffer.from('127.0.0.1:1'), Buffer.from('')];

describe('SLOWLOG GET merged over the shards', () => {
  it('lists every shard\'s entries newest first, as many as asked', () => {
    const s1 = frame([entry(2, 300, 'a'), entry(1, 100, 'b')]);
    const s2 = frame([entry(7, 200, 'c'), entry(6, 50, 'd')]);
    const names = (reply: Buffer): string[] => (decodeReply(reply) as RespValue[][]).map((e) => String((e[3] as Buffer[])[1]));
    expect(names(mergeNewestFirst([s1, s2], Infinity))).toEqual(['a', 'c', 'b', 'd']);
    expect(names(mergeNewestFirst([s1, s2], 3))).toEqual(['a', 'c', 'b']);
    expect(names(mergeNewestFirst([frame([]), frame([])], 10))).toEqual([]);
  });

  it('reads the count as redis-server does: 10 by default, all when negative', () => {
    expect(slowlogLimit(null)).toBe(10);
    expect(slowlogLimit('3')).toBe(3);
    expect(slowlogLimit('-1')).toBe(Infinity);
  });

  it('answers an error for a reply it cannot read, not a wrong list', () => {
    expect(mergeNewestFirst([frame(5)], 10).toString()).toMatch(/^-ERR slotproxy could not merge/);
  });
});

describe('LATENCY LATEST merged over the shards', () => {
  it('keeps one row per event: the latest spike\'s time and size, the greatest max', () => {
    const s1 = frame([[Buffer.from('command'), 100, 30, 50], [Buffer.from('fork'), 90, 2, 2]]);
    const s2 = frame([[Buffer.from('command'), 120, 10, 40]]);
    expect(decodeReply(mergeLatestPerEvent([s1, s2]))).toEqual([
      [Buffer.from('command'), 120, 10, 50],
      [Buffer.from('fork'), 90, 2, 2],
    ]);
    expect(decodeReply(mergeLatestPerEvent([frame([]), frame([])]))).toEqual([]);
  });
});
