import Redis from 'ioredis';
import { describe, expect, it } from 'vitest';
import { HOST, ownerFromStateFile, planWindow, sleep, slotOf, useMigrationDeployment, type MigrationProxy } from './migration-harness';

/**
 * Transactions, WATCH and blocking commands run on one connection to one shard, so they cannot
 * follow a key mid-move: while their slot migrates they wait (dispatch/session-commands.ts),
 * then run on the slot's new owner, answered as usual, not with an error.
 */

/** s1's highest slot: what `reshard --slots 1` moves from s1 to s2 on an even split of two shards. */
const SLOT = 8191;
/** At 20 keys a second the slot migrates for about 3 s. */
const KEYS_IN_SLOT = 60;

/** `${prefix}${n}` for the first n for which `isWanted(slot of it)` holds. */
function nameWhere(prefix: string, isWanted: (slot: number) => boolean): string {
  let n = 0;
  while (!isWanted(slotOf(`${prefix}${n}`))) n++;
  return `${prefix}${n}`;
}

/** Submits a plan to the proxy's admin endpoint and waits until it has run to the end. */
async function runPlan(proxy: MigrationProxy, request: Record<string, unknown>): Promise<void> {
  const submitted = await proxy.submit(request);
  expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
  expect((await proxy.waitForPlan(30_000)).state).toBe('done');
}

/** The highest slot `shard` owns, by the proxy's state file. */
function highestSlot(proxy: MigrationProxy, shard: string): number {
  return ownerFromStateFile(proxy.stateFile).owner.lastIndexOf(shard);
}

/** s1's highest slot moves to s2 (redis-cli's reshard takes the giver's highest slots first). */
const RESHARD_ONE_SLOT = { op: 'reshard', from: 's1', to: 's2', slots: 1 } as const;

/** Writes KEYS_IN_SLOT keys under `tag` (of s1's highest slot), starts RESHARD_ONE_SLOT, and waits until the slot migrates. */
async function startMigratingFilled(proxy: MigrationProxy, client: Redis, tag: string): Promise<void> {
  const filled = client.pipeline();
  for (let i = 0; i < KEYS_IN_SLOT; i++) filled.set(`${tag}:${i}`, String(i));
  await filled.exec();
  const submitted = await proxy.submit(RESHARD_ONE_SLOT);
  expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
  const migratingBy = Date.now() + 10_000;
  while ((await proxy.status()).slotsMigrating === 0 && Date.now() < migratingBy) await sleep(10);
  expect((await proxy.status()).slotsMigrating).toBe(1);
}

describe('transactions, WATCH, blocking commands and Pub/Sub on slots being moved', () => {
  // A third server, not in the proxy's YAML: the shard the last test adds.
  const deployment = useMigrationDeployment({ shards: 3, proxyShards: 2, config: { migrateKeysPerSecond: 20 } });

  it('wait while the slot migrates, then run on its new owner', async () => {
    const { proxy, specs } = deployment;
    const tag = `{${nameWhere('t', (slot) => slot === SLOT)}}`;
    const [client, watcher, blocker, pusher, leaver] = [0, 1, 2, 3, 4].map(() => new Redis({ host: HOST, port: proxy.port }));
    const target = new Redis({ host: specs[1]!.node.host, port: specs[1]!.node.port });
    try {
      await startMigratingFilled(proxy, client, tag);

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

      // A script on keys of the slot does not wait: its keys move first (on demand), then it
      // runs on the target, while the slot still migrates.
      const scripter = new Redis({ host: HOST, port: proxy.port });
      try {
        const incremented = await scripter.eval("redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCRBY', KEYS[2], 10)", 2, `${tag}:ev`, `${tag}:7`, 'x');
        expect(incremented).toBe(17);
        expect((await proxy.status()).slotsMigrating).toBe(1);
        expect(await target.mget(`${tag}:ev`, `${tag}:7`)).toEqual(['x', '17']);
        expect(await scripter.evalsha(await scripter.script('LOAD', 'return redis.call("GET", KEYS[1])') as string, 1, `${tag}:8`)).toBe('8');
      } finally {
        scripter.disconnect();
      }

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

  /** A subscriber to `channel` (SUBSCRIBE and SSUBSCRIBE) and to the pattern `ch*`, and what it hears. */
  async function subscribe(port: number, channel: string): Promise<{ subscriber: Redis; heard: string[] }> {
    const subscriber = new Redis({ host: HOST, port });
    const heard: string[] = [];
    subscriber.on('message', (ch: string, m: string) => heard.push(`message ${ch} ${m}`));
    subscriber.on('smessage', (ch: string, m: string) => heard.push(`smessage ${ch} ${m}`));
    subscriber.on('pmessage', (pattern: string, ch: string, m: string) => heard.push(`pmessage ${pattern} ${ch} ${m}`));
    await subscriber.subscribe(channel);
    await subscriber.ssubscribe(channel);
    await subscriber.psubscribe('ch*');
    return { subscriber, heard };
  }

  /** PUBLISH and SPUBLISH through the proxy; resolves with the receiver counts once the subscriber heard all. */
  async function publish(publisher: Redis, channel: string, text: string, heard: string[]): Promise<number[]> {
    const before = heard.length;
    const counts = [await publisher.publish(channel, text), Number(await publisher.spublish(channel, text))];
    const by = Date.now() + 2_000;
    while (heard.length < before + 3 && Date.now() < by) await sleep(10);
    return counts;
  }

  it('keeps Pub/Sub subscribers where PUBLISH goes when their channel\'s slot moves', async () => {
    const { proxy } = deployment;
    // The test before moved slot 8191 to s2: `reshard --slots 1` moves 8190 now.
    const channel = nameWhere('ch', (slot) => slot === SLOT - 1);
    const { subscriber, heard } = await subscribe(proxy.port, channel);
    const publisher = new Redis({ host: HOST, port: proxy.port });
    try {
      expect(await publish(publisher, channel, 'before', heard)).toEqual([2, 1]);
      await runPlan(proxy, RESHARD_ONE_SLOT);
      expect((await proxy.status()).shards.map((s) => s.slots)).toEqual([8190, 8194]);
      expect(await publish(publisher, channel, 'after', heard)).toEqual([2, 1]);
      expect(heard.sort()).toEqual(
        [`message ${channel} before`, `pmessage ch* ${channel} before`, `smessage ${channel} before`, `message ${channel} after`, `pmessage ch* ${channel} after`, `smessage ${channel} after`].sort(),
      );
    } finally {
      subscriber.disconnect();
      publisher.disconnect();
    }
  }, 60_000);

  it('subscribes patterns on a shard added later, and moves channels onto it', async () => {
    const { proxy, specs } = deployment;
    const channel = 'ch:added';
    const { subscriber, heard } = await subscribe(proxy.port, channel);
    const publisher = new Redis({ host: HOST, port: proxy.port });
    try {
      await runPlan(proxy, { op: 'add-shard', name: 's3', primary: `${specs[2]!.node.host}:${specs[2]!.node.port}` });
      const { owner } = ownerFromStateFile(proxy.stateFile);
      // A channel whose slot the new shard owns: the pattern subscription must be there too.
      const onNewShard = nameWhere('ch:new:', (slot) => owner[slot] === 's3');
      expect(await publisher.publish(onNewShard, 'new')).toBe(1);
      const by = Date.now() + 2_000;
      while (heard.length < 1 && Date.now() < by) await sleep(10);
      // The subscribed channel, wherever its slot went.
      expect(await publish(publisher, channel, 'after', heard)).toEqual([2, 1]);
      expect(heard.sort()).toEqual([`message ${channel} after`, `pmessage ch* ${channel} after`, `pmessage ch* ${onNewShard} new`, `smessage ${channel} after`].sort());
    } finally {
      subscriber.disconnect();
      publisher.disconnect();
    }
  }, 60_000);

  it('moves the subscriptions of a shard being removed, and keeps the client connected', async () => {
    const { proxy } = deployment;
    const { owner } = ownerFromStateFile(proxy.stateFile);
    const channel = nameWhere('ch:gone:', (slot) => owner[slot] === 's3');
    const { subscriber, heard } = await subscribe(proxy.port, channel);
    const publisher = new Redis({ host: HOST, port: proxy.port });
    let isClosed = false;
    subscriber.on('close', () => (isClosed = true));
    try {
      await runPlan(proxy, { op: 'remove-shard', name: 's3' });
      expect((await proxy.status()).shards.map((s) => s.name)).toEqual(['s1', 's2']);
      expect(await publish(publisher, channel, 'after', heard)).toEqual([2, 1]);
      expect(heard.sort()).toEqual([`message ${channel} after`, `pmessage ch* ${channel} after`, `smessage ${channel} after`].sort());
      expect(isClosed).toBe(false);
      // Its counts are the client's own, as before.
      expect(await subscriber.psubscribe('other*')).toBe(3);
    } finally {
      subscriber.disconnect();
      publisher.disconnect();
    }
  }, 60_000);

  it('answers EXEC with null when the WATCHed slot moved since WATCH, and writes nothing', async () => {
    const { proxy, specs } = deployment;
    // s1's highest slot: the one `reshard --slots 1` moves to s2.
    const slot = highestSlot(proxy, 's1');
    // A key that does not exist: the move cannot touch it on s1, so WATCH on s1 sees nothing.
    const key = nameWhere('w', (s) => s === slot);
    const client = new Redis({ host: HOST, port: proxy.port });
    const source = new Redis({ host: specs[0]!.node.host, port: specs[0]!.node.port });
    try {
      expect(await client.watch(key)).toBe('OK');
      await runPlan(proxy, RESHARD_ONE_SLOT);
      expect(ownerFromStateFile(proxy.stateFile).owner[slot]).toBe('s2');
      expect(await client.multi().set(key, 'x').exec()).toBeNull();
      expect(await client.get(key)).toBeNull();
      expect(await source.exists(key)).toBe(0);
      // The next transaction runs where the slot is now.
      expect(await client.watch(key)).toBe('OK');
      expect(await client.multi().set(key, 'y').exec()).toEqual([[null, 'OK']]);
      expect(await client.get(key)).toBe('y');
      expect(await source.exists(key)).toBe(0);
    } finally {
      client.disconnect();
      source.disconnect();
    }
  }, 60_000);

  it('wakes a BLPOP blocked before its slot moved when a push arrives after', async () => {
    const { proxy } = deployment;
    const slot = highestSlot(proxy, 's1');
    const queue = nameWhere('q', (s) => s === slot);
    const [worker, producer] = [0, 1].map(() => new Redis({ host: HOST, port: proxy.port }));
    try {
      const popped = worker.blpop(queue, 0);
      popped.catch(() => undefined);
      await sleep(200);
      await runPlan(proxy, RESHARD_ONE_SLOT);
      expect(ownerFromStateFile(proxy.stateFile).owner[slot]).toBe('s2');
      await producer.lpush(queue, 'job');
      const result = await Promise.race([popped, sleep(3_000).then(() => 'still blocked')]);
      expect(result).toEqual([queue, 'job']);
    } finally {
      worker.disconnect();
      producer.disconnect();
    }
  }, 60_000);

  it('runs DBSIZE, KEYS, INFO, SCAN and RANDOMKEY pipelined behind a write to a migrating slot after that write', async () => {
    const { proxy } = deployment;
    const slot = highestSlot(proxy, 's1');
    const tag = `{${nameWhere('k', (s) => s === slot)}}`;
    const client = new Redis({ host: HOST, port: proxy.port });
    try {
      // On one Redis: a keyspace of KEYS_IN_SLOT keys, all in the slot about to migrate.
      await client.flushall();
      await startMigratingFilled(proxy, client, tag);

      // Each SET goes through the migrating router (its key moved first); what follows it in the
      // pipeline reads the keyspace, and must see the new key as one Redis would.
      const missed: string[] = [];
      let probes = 0;
      for (let i = 0; i < 12 && (await proxy.status()).slotsMigrating > 0; i++, probes++) {
        const fresh = `${tag}:fresh${i}`;
        const replies = (await client.pipeline().set(fresh, 'v').dbsize().keys(`${tag}:fresh*`).info('keyspace').exec())!;
        const [size, keys] = [replies[1]![1] as number, replies[2]![1] as string[]];
        const infoKeys = Number(/db0:keys=(\d+)/.exec(replies[3]![1] as string)?.[1] ?? 0);
        // Never fewer than the keys that exist (one batch in flight may count twice, and the mover's marker once).
        if (size < KEYS_IN_SLOT + i + 1) missed.push(`DBSIZE ${size} after SET ${fresh} (${KEYS_IN_SLOT + i + 1} keys)`);
        if (infoKeys < KEYS_IN_SLOT + i + 1) missed.push(`INFO keyspace keys=${infoKeys} after SET ${fresh} (${KEYS_IN_SLOT + i + 1} keys)`);
        if (!keys.includes(fresh)) missed.push(`KEYS without ${fresh}`);
        // SCAN and RANDOMKEY on an empty keyspace: the key the pipeline has just written is all there is.
        await client.flushall();
        const [, scanned, random] = (await client.pipeline().set(fresh, 'v').scan('0', 'COUNT', '1000').randomkey().exec())!;
        let [cursor, found] = scanned![1] as [string, string[]];
        while (cursor !== '0') {
          const [next, more] = await client.scan(cursor, 'COUNT', '1000');
          [cursor, found] = [next, [...found, ...more]];
        }
        if (!found.includes(fresh)) missed.push(`SCAN without ${fresh}`);
        if (random![1] !== fresh) missed.push(`RANDOMKEY ${String(random![1])}, not ${fresh}`);
        const refill = client.pipeline();
        for (let j = 0; j < KEYS_IN_SLOT; j++) refill.set(`${tag}:${j}`, String(j));
        for (let j = 0; j <= i; j++) refill.set(`${tag}:fresh${j}`, 'v');
        await refill.exec();
      }
      console.log('keyspace probes behind a migrating write', probes);
      expect(probes).toBeGreaterThan(3);
      expect(missed).toEqual([]);
      await proxy.waitForPlan(30_000);
    } finally {
      client.disconnect();
    }
  }, 60_000);
});
