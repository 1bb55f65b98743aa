import Redis from 'ioredis';
import { describe, expect, it } from 'vitest';
import { HOST, planWindow, sleep, slotOf, useMigrationDeployment } from './migration-harness';

/**
 * Transactions, WATCH and blocking commands run on one connection to one shard, so they cannot
 * follow a key mid-move: while their slot migrates they wait (dispatch/session-commands.ts),
 * then run on the slot's new owner, answered as usual, not with an error.
 */

/** s1's highest slot: what `reshard --slots 1` moves from s1 to s2 on an even split of two shards. */
const SLOT = 8191;
/** At 20 keys a second the slot migrates for about 3 s. */
const KEYS_IN_SLOT = 60;

describe('transactions, WATCH and blocking commands on a slot being moved', () => {
  const deployment = useMigrationDeployment({ shards: 2, config: { migrateKeysPerSecond: 20 } });

  it('wait while the slot migrates, then run on its new owner', async () => {
    const { proxy, specs } = deployment;
    let n = 0;
    while (slotOf(`{t${n}}`) !== SLOT) n++;
    const tag = `{t${n}}`;
    const [client, watcher, blocker, pusher, leaver] = [0, 1, 2, 3, 4].map(() => new Redis({ host: HOST, port: proxy.port }));
    const target = new Redis({ host: specs[1]!.node.host, port: specs[1]!.node.port });
    try {
      const filled = client.pipeline();
      for (let i = 0; i < KEYS_IN_SLOT; i++) filled.set(`${tag}:${i}`, String(i));
      await filled.exec();

      const submitted = await proxy.submit({ op: 'reshard', from: 's1', to: 's2', slots: 1 });
      expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
      const migratingBy = Date.now() + 10_000;
      while ((await proxy.status()).slotsMigrating === 0 && Date.now() < migratingBy) await sleep(10);
      expect((await proxy.status()).slotsMigrating).toBe(1);

      const sentAt = Date.now();
      const answeredAt = (promise: Promise<unknown>): Promise<{ value: unknown; at: number; migrating: number }> =>
        promise.then(async (value) => ({ value, at: Date.now(), migrating: (await proxy.status()).slotsMigrating }));
      const exec = answeredAt(client.multi().set(`${tag}:tx`, 'a').incr(`${tag}:0`).exec());
      const watched = answeredAt(watcher.watch(`${tag}:w`));
      const popped = answeredAt(blocker.blpop(`${tag}:list`, 20));
      // Awaited below; a failed assertion before that must not leave it rejecting unhandled.
      popped.catch(() => undefined);
      // A client that leaves while its BLPOP waits for the slot: the BLPOP must not run for it later.
      leaver.blpop(`${tag}:left`, 20).catch(() => undefined);
      await sleep(100);
      leaver.disconnect();

      const [execDone, watchDone] = await Promise.all([exec, watched]);
      // Answered only once the slot stopped migrating (a status asked after the answer says so).
      expect(execDone.value).toEqual([
        [null, 'OK'],
        [null, 1],
      ]);
      expect(execDone.migrating).toBe(0);
      expect(watchDone.value).toBe('OK');
      expect(watchDone.migrating).toBe(0);
      expect(execDone.at - sentAt).toBeGreaterThan(1_000);
      // ...and at once after: before the plan's end is logged (which comes after the slot's
      // last snapshot, the YAML rewrite and the plan file's removal), or within a second of it.
      await proxy.waitForPlan(20_000);
      const loggedBy = Date.now() + 5_000;
      let planEnd = planWindow(proxy.logs()).end;
      while (planEnd === 0 && Date.now() < loggedBy) {
        await sleep(20);
        planEnd = planWindow(proxy.logs()).end;
      }
      expect(planEnd).toBeGreaterThan(0);
      expect(execDone.at).toBeLessThan(planEnd + 1_000);
      expect(watchDone.at).toBeLessThan(planEnd + 1_000);

      // The watch is on the new owner: a transaction after it commits.
      expect(await watcher.multi().set(`${tag}:w`, 'w').exec()).toEqual([[null, 'OK']]);
      // BLPOP blocks on the new owner, where the push goes.
      await pusher.lpush(`${tag}:list`, 'x');
      const popDone = await popped;
      expect(popDone.value).toEqual([`${tag}:list`, 'x']);

      expect(await target.mget(`${tag}:tx`, `${tag}:0`, `${tag}:w`)).toEqual(['a', '1', 'w']);
      // Nobody is waiting on the list the leaver blocked on: what is pushed there stays.
      await pusher.lpush(`${tag}:left`, 'kept');
      await sleep(300);
      expect(await target.lrange(`${tag}:left`, 0, -1)).toEqual(['kept']);
      const source = new Redis({ host: specs[0]!.node.host, port: specs[0]!.node.port });
      try {
        expect(await source.keys(`${tag}*`)).toEqual([]);
      } finally {
        source.disconnect();
      }
    } finally {
      for (const c of [client, watcher, blocker, pusher, leaver, target]) c.disconnect();
    }
  }, 60_000);
});
