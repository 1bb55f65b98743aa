import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startShards, type Shards } from '../helpers/redis-harness';
import { logEvents, shardOfKey, sleep, startHaProxy, waitFor, type HaProxy } from './ha-harness';

/**
 * Blocking commands and Pub/Sub hold a connection of their own to the shard's primary. When the
 * primary fails by freezing (or being cut off) rather than dying, that connection stays up, so
 * nothing tells them the shard failed over: the BLPOP waits where no push will come, the
 * subscriptions hear nothing of what is published on the new primary, and a (P)SUBSCRIBE sent
 * meanwhile waits for a confirmation that never comes. After the failover a BLPOP is sent again
 * on the new primary, and a subscribed client is disconnected, as its own Redis failing would
 * do, so it subscribes again (ioredis does by itself). A transaction WATCHed on the old primary
 * answers EXEC with null, as for a modified key.
 */

describe('blocking commands and Pub/Sub across the failover of a frozen primary', () => {
  let shards: Shards | undefined;
  let ha: HaProxy | undefined;
  beforeAll(async () => {
    shards = await startShards(3, { replicas: 1 });
    ha = await startHaProxy(shards);
  }, 60_000);
  afterAll(async () => {
    shards?.primaries[1]?.kill('SIGCONT');
    await ha?.stop();
    await shards?.stopAll();
  });

  it('a BLPOP gets the push made on the new primary; subscribers hear what is published there; a WATCH made before aborts EXEC', async () => {
    const port = ha!.proxy.port;
    const onShard1 = (prefix: string): string => {
      for (let n = 0; ; n++) if (shardOfKey(`${prefix}${n}`, 3) === 1) return `${prefix}${n}`;
    };
    const [queue, channel] = [onShard1('queue'), onShard1('news')];
    const [worker, subscriber, lateSubscriber, producer, watcher] = [0, 1, 2, 3, 4].map(() => new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 1 }));
    const counter = onShard1('counter');
    try {
      for (const client of [worker, subscriber, lateSubscriber, producer, watcher]) client.on('error', () => undefined);
      await Promise.all([worker, subscriber, lateSubscriber, producer, watcher].map((c) => c.ping()));
      const heard: string[] = [];
      subscriber.on('message', (ch: string, message: string) => heard.push(`message ${ch} ${message}`));
      subscriber.on('pmessage', (_pattern: string, ch: string, message: string) => heard.push(`pmessage ${ch} ${message}`));
      lateSubscriber.on('pmessage', (_pattern: string, ch: string, message: string) => heard.push(`late ${ch} ${message}`));
      await subscriber.subscribe(channel);
      await subscriber.psubscribe('news*');
      const popped = worker.blpop(queue, 0);
      // A WATCH taken on the primary that is about to freeze.
      await producer.set(counter, '1');
      expect(await watcher.watch(counter)).toBe('OK');
      await sleep(200);

      const frozen = shards!.primaries[1]!;
      frozen.kill('SIGSTOP');
      // Sent while the primary is frozen: confirmed only once the shard has failed over.
      const lateConfirmed = lateSubscriber.psubscribe('news*');
      await waitFor('failed over', () => logEvents(ha!.proxy, 'failover promoted').length === 1, 15_000);
      expect(await Promise.race([lateConfirmed.then(() => 'confirmed'), sleep(10_000).then(() => 'not confirmed in 10 s')])).toBe('confirmed');
      await waitFor('writable again', async () => (await producer.set(`${queue}:probe`, '1').catch(() => null)) === 'OK', 10_000);

      // The transaction watched on the old primary: EXEC answers null (as for a modified key:
      // what the old primary acknowledged may be gone), at once; done again, it commits.
      const aborted = await Promise.race([watcher.multi().incr(counter).exec(), sleep(5_000).then(() => 'EXEC still waiting')]);
      expect(aborted).toBeNull();
      await watcher.watch(counter);
      expect(await watcher.multi().incr(counter).exec()).toEqual([[null, 2]]);

      expect(await producer.rpush(queue, 'job-1')).toBe(1);
      expect(await Promise.race([popped, sleep(5_000).then(() => 'still blocked')])).toEqual([queue, 'job-1']);
      // Every subscription back in place (the subscriber reconnects and subscribes again)...
      let probes = 0;
      await waitFor('resubscribed', async () => (await producer.publish(channel, `probe-${probes++}`)) === 3, 10_000);
      // ...then one message, heard once by each.
      expect(await producer.publish(channel, 'after')).toBe(3);
      const after = (): string[] => heard.filter((line) => line.endsWith(' after')).sort();
      await waitFor('heard', () => after().length >= 3, 5_000);
      await sleep(100);
      expect(after()).toEqual([`late ${channel} after`, `message ${channel} after`, `pmessage ${channel} after`]);
    } finally {
      for (const client of [worker, subscriber, lateSubscriber, producer, watcher]) client.disconnect();
    }
  }, 60_000);
  it('a BLPOP waiting on a primary that dies (its connection lost) is sent again on the promoted replica, and gets the push made there', async () => {
    const port = ha!.proxy.port;
    const onShard2 = (prefix: string): string => {
      for (let n = 0; ; n++) if (shardOfKey(`${prefix}${n}`, 3) === 2) return `${prefix}${n}`;
    };
    const queue = onShard2('dying-queue');
    const [worker, producer] = [0, 1].map(() => new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 1 }));
    try {
      for (const client of [worker, producer]) client.on('error', () => undefined);
      await Promise.all([worker.ping(), producer.ping()]);
      const popped = worker.blpop(queue, 0).then(
        (value) => ({ value }),
        (err: Error) => ({ error: err.message }),
      );
      await sleep(200);
      const promotedBefore = logEvents(ha!.proxy, 'failover promoted').length;
      shards!.primaries[2]!.kill('SIGKILL');
      await waitFor('failed over', () => logEvents(ha!.proxy, 'failover promoted').length > promotedBefore, 10_000);
      await waitFor('writable again', async () => (await producer.set(`${queue}:probe`, '1').catch(() => null)) === 'OK', 10_000);
      expect(await producer.rpush(queue, 'job-after-the-failover')).toBe(1);
      expect(await Promise.race([popped, sleep(5_000).then(() => ({ error: 'no answer in 5 s' }))])).toEqual({ value: [queue, 'job-after-the-failover'] });
    } finally {
      worker.disconnect();
      producer.disconnect();
    }
  }, 60_000);
});
