import Redis from 'ioredis';
import { describe, expect, it } from 'vitest';
import { MOVING_KEYS } from '../../src/topology/key-move-script';
import { replicationFlowing } from '../ha/ha-harness';
import {
  checkPlacement,
  expectPlacementClean,
  HOST,
  initialValue,
  loadKeys,
  moverProcesses,
  ownerFromStateFile,
  sleep,
  useMigrationDeployment,
} from './migration-harness';

/**
 * A flush through the proxy keeps the mover's marks of keys in flight, so that the mover, once it
 * finds those keys gone from the source, deletes the copies it restored on the target. Here the
 * mover dies in between: its batch is marked and read on the source, the flush is acknowledged,
 * the copies land on the target, and the mover is killed before it releases them (as a crash, an
 * OOM kill, or its replacement when starved of CPU would). The next mover must not take those
 * copies for moved keys: a flushed key would come back. Found with a busy machine under
 * keyspace-commands-churn's flush test, where the starved mover was replaced at that moment.
 */

const KEYS = 20_000;

describe('keys flushed while in flight, the mover killed before it releases them', () => {
  const deployment = useMigrationDeployment({ shards: 2, config: { migrateKeysPerSecond: 6_000 } });

  it('do not come back on the target when the next mover resumes the plan', async () => {
    const { shards, proxy } = deployment;
    await loadKeys(shards.primaries, KEYS);
    const [sourceNode, targetNode] = [shards.primaries[0]!, shards.primaries[1]!];
    const source = new Redis({ host: sourceNode.host, port: sourceNode.port, commandTimeout: 10_000 });
    const target = new Redis({ host: targetNode.host, port: targetNode.port, commandTimeout: 10_000 });
    const client = new Redis({ host: HOST, port: proxy.port, maxRetriesPerRequest: 0, commandTimeout: 20_000 });
    let stopped: number | null = null;
    let isSourceFrozen = false;
    try {
      const submitted = await proxy.submit({ op: 'reshard', from: 's1', to: 's2', slots: 2_000 });
      expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);

      // The mover stopped with a batch marked and read on the source, not yet restored.
      let marked: string[] = [];
      let mover = -1;
      for (const deadline = Date.now() + 10_000; marked.length === 0 && Date.now() < deadline; await sleep(Math.floor(Math.random() * 3))) {
        if ((await proxy.status()).state !== 'running') break;
        mover = moverProcesses(proxy.pid)[0]?.pid ?? -1;
        if (mover < 0) continue;
        process.kill(mover, 'SIGSTOP');
        stopped = mover;
        const inFlight = await source.hkeys(MOVING_KEYS);
        // A RESTORE written before the stop has run on the target by now.
        if (inFlight.length > 0 && (await sleep(5), await target.exists(...inFlight)) === 0) {
          marked = inFlight;
        } else {
          process.kill(mover, 'SIGCONT');
          stopped = null;
        }
      }
      expect(marked.length, 'a batch caught in flight').toBeGreaterThan(0);

      expect(await client.flushall()).toBe('OK');
      expect(await source.exists(...marked)).toBe(0);
      // The source frozen, the mover goes on: it restores the batch on the target, then waits
      // for the source to release it, and is killed there.
      sourceNode.kill('SIGSTOP');
      isSourceFrozen = true;
      process.kill(mover, 'SIGCONT');
      stopped = null;
      let restored = 0;
      for (const deadline = Date.now() + 5_000; restored < marked.length && Date.now() < deadline; await sleep(10)) restored = await target.exists(...marked);
      expect(restored, 'the flushed batch restored on the target').toBe(marked.length);
      process.kill(mover, 'SIGKILL');
      sourceNode.kill('SIGCONT');
      isSourceFrozen = false;

      const status = await proxy.waitForPlan(30_000);
      expect(status.state, proxy.logs().slice(-3000)).toBe('done');
      const left = [...(await source.keys('*')).map((k) => `${k} on s1`), ...(await target.keys('*')).map((k) => `${k} on s2`)];
      console.log('flushed in flight', JSON.stringify({ marked: marked.length, left: left.length }));
      expect(left.slice(0, 5), `${left.length} keys after an acknowledged FLUSHALL`).toEqual([]);
      expect(await client.dbsize()).toBe(0);
    } finally {
      if (stopped !== null) process.kill(stopped, 'SIGCONT');
      if (isSourceFrozen) sourceNode.kill('SIGCONT');
      for (const redis of [source, target, client]) redis.disconnect();
    }
  }, 60_000);
});

/**
 * The other side of the same marks: under minReplicaAcks a batch is deleted from the source and
 * stays marked until the source's replicas confirm the delete; those keys live on the target
 * only. A mover killed while it waits for that confirmation must leave them there.
 */
describe('keys deleted from the source under minReplicaAcks, the mover killed before their marks go', () => {
  const deployment = useMigrationDeployment({ shards: 2, replicas: 1, config: { minReplicaAcks: 1, replicaAckTimeoutMs: 10_000, migrateKeysPerSecond: 6_000 } });

  it('stay on the target, with their values, when the next mover resumes the plan', async () => {
    const { shards, proxy, specs } = deployment;
    await loadKeys(shards.primaries, KEYS);
    await replicationFlowing(shards);
    const sourceNode = shards.primaries[0]!;
    const sourceReplica = shards.replicas[0]![0]!;
    const source = new Redis({ host: sourceNode.host, port: sourceNode.port, commandTimeout: 10_000 });
    let isReplicaStopped = false;
    try {
      const submitted = await proxy.submit({ op: 'reshard', from: 's1', to: 's2', slots: 2_000 });
      expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
      // The source's replica stopped: the first batch deleted from the source waits for it.
      sourceReplica.kill('SIGSTOP');
      isReplicaStopped = true;
      let left: string[] = [];
      for (const deadline = Date.now() + 8_000; left.length === 0 && Date.now() < deadline; await sleep(5)) {
        const marked = await source.hkeys(MOVING_KEYS);
        const onSource = await Promise.all(marked.map((key) => source.exists(key)));
        left = marked.filter((_, i) => onSource[i] === 0);
      }
      expect(left.length, 'a batch deleted from the source, waiting for its replica').toBeGreaterThan(0);
      const mover = moverProcesses(proxy.pid)[0]!.pid;
      process.kill(mover, 'SIGKILL');
      sourceReplica.kill('SIGCONT');
      isReplicaStopped = false;

      const status = await proxy.waitForPlan(30_000);
      expect(status.state, proxy.logs().slice(-3000)).toBe('done');
      const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
      expect(migrations).toBe(0);
      console.log('deleted awaiting replicas', JSON.stringify({ marked: left.length }));
      expectPlacementClean(await checkPlacement(specs, owner, KEYS, (n) => [initialValue(n)]));
    } finally {
      if (isReplicaStopped) sourceReplica.kill('SIGCONT');
      source.disconnect();
    }
  }, 60_000);
});
