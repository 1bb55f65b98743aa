import calculateSlot from 'cluster-key-slot';
import { Cluster, type Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { keysOnEveryShard, ownerOf, startDeployment, type Deployment } from '../helpers/deployment';
import { runRedisCli, type ProxyProcess } from '../helpers/proxy-harness';
import type { SingleRedis } from '../helpers/redis-harness';

/**
 * Issue 6, cluster-aware clients: the proxy answers CLUSTER SLOTS / NODES as one node owning all
 * 16384 slots at its own address, so ioredis `Cluster` and `redis-cli -c` work unchanged, while
 * the proxy spreads their keys over 3 shards (1 replica each). Replies compared with one direct
 * redis-server.
 */

let deployment: Deployment;
let single: SingleRedis;
let proxy: ProxyProcess;
let cluster: Cluster;
let direct: Redis;
let primaries: readonly Redis[] = [];

const flushEverything = (): Promise<void> => deployment.flushEverything();

/** A Cluster client through the proxy, ready. */
async function openCluster(): Promise<Cluster> {
  const client = new Cluster([{ host: '127.0.0.1', port: proxy.port }], { slotsRefreshTimeout: 2_000, clusterRetryStrategy: () => null });
  client.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    client.once('ready', resolve);
    client.once('end', () => reject(new Error('ioredis Cluster ended before it was ready')));
  });
  return client;
}

describe('cluster-aware clients through slotproxy (issue 6)', () => {
  beforeAll(async () => {
    deployment = await startDeployment();
    ({ single, proxy, direct, primaries } = deployment);
    cluster = await openCluster();
  }, 40_000);

  afterAll(async () => {
    cluster?.disconnect();
    await deployment?.stop();
  }, 30_000);

  describe('ioredis Cluster', () => {
    it('sees one primary at the proxy\'s address owning every slot', () => {
      const masters = cluster.nodes('master');
      expect(masters).toHaveLength(1);
      expect([masters[0]!.options.host, masters[0]!.options.port]).toEqual(['127.0.0.1', proxy.port]);
      expect(cluster.nodes('slave')).toHaveLength(0);
    });

    it('MSET / MGET / DEL / EXISTS over keys of every shard answer as one Redis, and the keys land on their owners', async () => {
      await flushEverything();
      const keys = keysOnEveryShard('cl:', 20);
      const values = Object.fromEntries(keys.map((key, i) => [key, `value ${i}`]));
      expect(await cluster.mset(values)).toBe(await direct.mset(values));
      const asked = [...keys, 'cl:missing', keys[0]!];
      expect(await cluster.mget(...asked)).toEqual(await direct.mget(...asked));
      expect(await cluster.exists(...asked)).toBe(await direct.exists(...asked));
      for (const key of keys) expect(await primaries[ownerOf(key)]!.get(key), key).toBe(values[key]);
      expect(await Promise.all(primaries.map((p) => p.dbsize()))).toEqual([20, 20, 20]);
      expect(await cluster.del(...keys.slice(0, 30))).toBe(await direct.del(...keys.slice(0, 30)));
      expect(await cluster.dbsize()).toBe(await direct.dbsize());
    });

    it('pipelines over keys of every shard answer as one Redis, in order', async () => {
      await flushEverything();
      const keys = keysOnEveryShard('clp:', 50);
      const run = async (client: Redis | Cluster): Promise<unknown[]> => {
        const pipeline = client.pipeline();
        for (const [i, key] of keys.entries()) {
          pipeline.set(key, String(i));
          pipeline.incrby(key, i);
          pipeline.rpush(`${key}:l`, 'a', 'b');
          pipeline.lrange(`${key}:l`, 0, -1);
          // ioredis Cluster itself refuses a multi-key command across slots inside a pipeline
          // (outside pipelines it sends it, and the proxy splits it: see the MGET test above).
          if (i % 10 === 0) pipeline.mset(`{${key}}a`, String(i), `{${key}}b`, 'b').mget(`{${key}}a`, `{${key}}b`, `{${key}}c`);
        }
        pipeline.get(keys[0]!);
        return (await pipeline.exec())!.map(([err, reply]) => (err === null ? reply : `error: ${err.message}`));
      };
      const viaCluster = await run(cluster);
      expect(viaCluster).toEqual(await run(direct));
      expect(viaCluster.length).toBeGreaterThan(200);
    });

    it('transactions with hash-tagged keys run on the shard owning the tag, as on one Redis', async () => {
      await flushEverything();
      for (const tag of keysOnEveryShard('cltx', 1)) {
        const run = (client: Redis | Cluster): Promise<unknown> =>
          client.multi().set(`{${tag}}a`, '1').incr(`{${tag}}a`).sadd(`{${tag}}s`, 'x').scard(`{${tag}}s`).get(`{${tag}}a`).exec();
        expect(await run(cluster), tag).toEqual(await run(direct));
        expect(await primaries[ownerOf(tag)]!.get(`{${tag}}a`)).toBe('2');
      }
    });

    it('scripts and Pub/Sub work through the Cluster client', async () => {
      const [key] = keysOnEveryShard('cls:', 1);
      expect(await cluster.eval("return redis.call('SET', KEYS[1], ARGV[1])", 1, key!, 'scripted')).toBe('OK');
      expect(await cluster.get(key!)).toBe('scripted');
      const subscriber = cluster.duplicate();
      subscriber.on('error', () => undefined);
      try {
        const received: string[] = [];
        subscriber.on('message', (channel: string, message: string) => received.push(`${channel}=${message}`));
        const channels = keysOnEveryShard('clch.', 1);
        await subscriber.subscribe(...channels);
        for (const channel of channels) await cluster.publish(channel, 'hi');
        const deadline = Date.now() + 2_000;
        while (received.length < channels.length && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
        expect(received.sort()).toEqual(channels.map((channel) => `${channel}=hi`).sort());
      } finally {
        subscriber.disconnect();
      }
    });

    it('a second Cluster client connects while the first keeps working (slot cache refresh)', async () => {
      const second = await openCluster();
      try {
        await second.set('second-client', 'yes');
        expect(await cluster.get('second-client')).toBe('yes');
        await cluster.refreshSlotsCache();
        expect(await cluster.get('second-client')).toBe('yes');
      } finally {
        second.disconnect();
      }
    });
  });

  describe('redis-cli -c', () => {
    it('SET / GET on keys of every shard, with the output of one Redis', async () => {
      await flushEverything();
      for (const key of keysOnEveryShard('cli-c:', 2)) {
        for (const args of [['SET', key, 'via redis-cli -c'], ['GET', key], ['INCR', key], ['DEL', key], ['GET', key]]) {
          const [p, d] = await Promise.all([runRedisCli(proxy.port, ['-c', ...args]), runRedisCli(single.redis.port, ['-c', ...args])]);
          expect(p, args.join(' ')).toBe(d);
        }
      }
      await runRedisCli(proxy.port, ['-c', 'SET', 'cli-c:kept', 'v']);
      expect(await primaries[ownerOf('cli-c:kept')]!.get('cli-c:kept')).toBe('v');
      expect(await runRedisCli(proxy.port, ['-c', 'CLUSTER', 'KEYSLOT', 'cli-c:kept'])).toBe(`${calculateSlot('cli-c:kept')}\n`);
    });
  });
});
