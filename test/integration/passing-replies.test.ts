import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { startProxyProcess, type ProxyProcess } from '../helpers/proxy-harness';
import { startShards, type Shards } from '../helpers/redis-harness';
import { seededRandom } from '../helpers/seeded-random';

/**
 * Backend replies are handed on as views of a read buffer that the next read reuses, and copied
 * once: into the client's output when their turn has come, or into a copy of their own while
 * they wait behind a reply from another shard (docs/architecture.md). A reply kept past its read
 * without that copy would come back with another read's bytes. Here many clients pipeline small
 * and large replies from three shards at once (frames cut by reads' ends among them), some
 * reading late so their writes are left pending, and every reply is checked against what the
 * keys hold.
 */

const STRINGS = 300;
const LISTS = 20;
const HASHES = 20;
const CLIENTS = 16;
const ROUNDS = 25;
const PIPELINE = 32;

const stringValue = (i: number): string => `v${i}:`.repeat(1 + ((i * 37) % 1_500));
const listValue = (i: number): string[] => Array.from({ length: 200 + ((i * 53) % 600) }, (_, j) => `e${i}-${j}`);
const hashValue = (i: number): Record<string, string> =>
  Object.fromEntries(Array.from({ length: 50 + ((i * 31) % 250) }, (_, j) => [`f${j}`, `h${i}-${j}`.repeat(1 + (j % 7))]));

describe('replies handed on from the backends read buffer', () => {
  let shards: Shards | undefined;
  let proxy: ProxyProcess | undefined;
  const clients: Redis[] = [];

  beforeAll(async () => {
    shards = await startShards(3);
    proxy = await startProxyProcess({
      shards: shards.primaries.map((primary, i) => ({ name: `s${i + 1}`, primary })),
    });
    const loader = new Redis({ host: '127.0.0.1', port: proxy.port, maxRetriesPerRequest: 0 });
    clients.push(loader);
    const load = loader.pipeline();
    for (let i = 0; i < STRINGS; i++) load.set(`pr:s:${i}`, stringValue(i));
    for (let i = 0; i < LISTS; i++) load.rpush(`pr:l:${i}`, ...listValue(i));
    for (let i = 0; i < HASHES; i++) load.hset(`pr:h:${i}`, hashValue(i));
    const loaded = await load.exec();
    expect(loaded!.filter(([err]) => err !== null)).toEqual([]);
  }, 30_000);

  afterAll(async () => {
    for (const client of clients) client.disconnect();
    await proxy?.stop();
    await shards?.stopAll();
  });

  it('come back whole and in order to many clients pipelining small and large replies, late readers among them', async () => {
    const port = proxy!.port;
    let checked = 0;
    const wrong: string[] = [];
    await Promise.all(
      Array.from({ length: CLIENTS }, async (_, c) => {
        const next = seededRandom(c + 1);
        const pick = (n: number): number => Math.floor(next() * n);
        const client = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 0 });
        clients.push(client);
        await client.ping();
        for (let round = 0; round < ROUNDS; round++) {
          const pipeline = client.pipeline();
          const expected: unknown[] = [];
          for (let n = 0; n < PIPELINE; n++) {
            switch (pick(5)) {
              case 0: {
                const i = pick(LISTS);
                pipeline.lrange(`pr:l:${i}`, 0, -1);
                expected.push(listValue(i));
                break;
              }
              case 1: {
                const i = pick(HASHES);
                pipeline.hgetall(`pr:h:${i}`);
                expected.push(hashValue(i));
                break;
              }
              case 2: {
                const keys = Array.from({ length: 5 }, () => pick(STRINGS));
                pipeline.mget(...keys.map((i) => `pr:s:${i}`));
                expected.push(keys.map(stringValue));
                break;
              }
              default: {
                const i = pick(STRINGS);
                pipeline.get(`pr:s:${i}`);
                expected.push(stringValue(i));
              }
            }
          }
          // A late reader: the proxy's writes to it are left pending (their memory kept), while
          // the other clients' replies go on through the same read buffer and output blocks.
          const isLate = c % 4 === 0 && round % 5 === 0;
          if (isLate) client.stream.pause();
          const done = pipeline.exec();
          if (isLate) setTimeout(() => client.stream.resume(), 200);
          const replies = (await done)!;
          replies.forEach(([err, value], n) => {
            checked++;
            if (err !== null) wrong.push(`client ${c} round ${round} #${n}: ${err.message}`);
            else if (JSON.stringify(value) !== JSON.stringify(expected[n])) wrong.push(`client ${c} round ${round} #${n}: ${JSON.stringify(value).slice(0, 80)}`);
          });
        }
      }),
    );
    expect(wrong.slice(0, 5)).toEqual([]);
    expect(checked).toBe(CLIENTS * ROUNDS * PIPELINE);
  }, 60_000);
});
