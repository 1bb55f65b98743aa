import { connect, type Socket } from 'node:net';

import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { encodeCommand, startProxyProcess, type ProxyProcess } from '../helpers/proxy-harness';
import { startShards, type Shards } from '../helpers/redis-harness';

/**
 * A client that pipelines requests for large replies and does not read them: the proxy must
 * stop taking its requests once its unsent output passes the bound (8 MB), not buffer every
 * reply (the benchmark's slow-reader figure, here as a test), while other clients are served
 * as usual; and once the client reads, every reply arrives whole and in order.
 */

const VALUE_BYTES = 256 * 1024;
const REQUESTS = 2_000;

describe('a client that does not read its replies', () => {
  let shards: Shards | undefined;
  let proxy: ProxyProcess | undefined;
  const closers: (() => void)[] = [];

  beforeAll(async () => {
    shards = await startShards(1);
    proxy = await startProxyProcess({ shards: [{ name: 's1', primary: shards.primaries[0]! }] });
  }, 30_000);
  afterAll(async () => {
    for (const close of closers) close();
    await proxy?.stop();
    await shards?.stopAll();
  });

  const open = (port: number): Redis => {
    const redis = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 0 });
    redis.on('error', () => undefined);
    closers.push(() => redis.disconnect());
    return redis;
  };

  it('holds its requests once its unsent replies pass the bound, serves others meanwhile, then delivers every reply', async () => {
    const shard = open(shards!.primaries[0]!.port);
    const value = Buffer.alloc(VALUE_BYTES);
    for (let i = 0; i < VALUE_BYTES; i++) value[i] = i % 251;
    await shard.set('slow:big', value);
    await shard.config('RESETSTAT');
    const getCalls = async (): Promise<number> => {
      const stats = await shard.info('commandstats');
      return Number(/cmdstat_get:calls=(\d+)/.exec(stats)?.[1] ?? 0);
    };

    const reader: Socket = connect(proxy!.port, '127.0.0.1');
    closers.push(() => reader.destroy());
    reader.pause();
    await new Promise<void>((resolve, reject) => reader.once('connect', resolve).once('error', reject));
    const request = encodeCommand(['GET', 'slow:big']);
    reader.write(Buffer.concat(Array.from({ length: REQUESTS }, () => request)));

    await new Promise((resolve) => setTimeout(resolve, 1_500));
    const heldAt = await getCalls();
    // Other clients are served while it waits.
    const other = open(proxy!.port);
    const started = Date.now();
    for (let i = 0; i < 20; i++) expect(await other.set(`slow:other:${i}`, 'v')).toBe('OK');
    expect(Date.now() - started).toBeLessThan(2_000);
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const stillAt = await getCalls();
    // A bounded share of the 2,000 (the replies awaited at once, 256, and what the socket
    // buffers hold), and no more taken while the client still reads nothing.
    expect(heldAt).toBeGreaterThan(0);
    expect(heldAt).toBeLessThan(REQUESTS / 2);
    expect(stillAt).toBe(heldAt);

    const header = Buffer.from(`$${VALUE_BYTES}\r\n`);
    const replyBytes = header.length + VALUE_BYTES + 2;
    let received = 0;
    let checkedReplies = 0;
    let pending: Buffer = Buffer.alloc(0);
    let isIntact = true;
    const done = new Promise<void>((resolve) => {
      reader.on('data', (chunk: Buffer) => {
        received += chunk.length;
        pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
        while (pending.length >= replyBytes) {
          const reply = pending.subarray(0, replyBytes);
          if (!reply.subarray(0, header.length).equals(header) || !reply.subarray(header.length, header.length + VALUE_BYTES).equals(value)) {
            isIntact = false;
          }
          checkedReplies++;
          pending = pending.subarray(replyBytes);
        }
        if (received >= REQUESTS * replyBytes) resolve();
      });
    });
    reader.resume();
    await done;
    expect(checkedReplies).toBe(REQUESTS);
    expect(isIntact).toBe(true);
    expect(await getCalls()).toBe(REQUESTS);
  }, 60_000);

  it('clients that leave with replies still being written (reset mid-output) do not take the proxy or its other clients down', async () => {
    const shard = open(shards!.primaries[0]!.port);
    await shard.set('slow:big', Buffer.alloc(VALUE_BYTES, 7));
    const steady = open(proxy!.port);
    const clientCount = async (): Promise<number> => String(await steady.call('CLIENT', 'LIST')).trim().split('\n').length;
    const clientsBefore = await clientCount();
    const request = encodeCommand(['GET', 'slow:big']);
    for (let round = 0; round < 5; round++) {
      const leavers = await Promise.all(
        Array.from({ length: 10 }, async () => {
          const socket = connect(proxy!.port, '127.0.0.1');
          closers.push(() => socket.destroy());
          await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
          socket.on('error', () => undefined);
          socket.write(Buffer.concat(Array.from({ length: 40 }, () => request)));
          return socket;
        }),
      );
      // Each has 10 MB of replies coming and reads none: writes to it are left pending in
      // the proxy when it resets.
      await new Promise((resolve) => setTimeout(resolve, 100));
      for (const socket of leavers) socket.resetAndDestroy();
      // Behind the shared backend connection's queue, but answered, and right.
      expect(await steady.set('slow:steady', String(round))).toBe('OK');
      expect(await steady.get('slow:steady')).toBe(String(round));
    }
    expect(proxy!.isRunning).toBe(true);
    await new Promise((resolve) => setTimeout(resolve, 200));
    // Every one of the 50 that left is gone from the proxy's clients.
    expect(await clientCount()).toBe(clientsBefore);
    expect(await steady.strlen('slow:big')).toBe(VALUE_BYTES);
  }, 60_000);
});
