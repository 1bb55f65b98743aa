import * as fs from 'node:fs';
import Redis from 'ioredis';
import { describe, expect, it } from 'vitest';
import {
  checkPlacement,
  childProcesses,
  expectPlacementClean,
  loadKeys,
  ownerFromStateFile,
  sleep,
  startLoad,
  useMigrationDeployment,
} from './migration-harness';

/**
 * Resharding with `workers: 2`: two processes run the data path and get each snapshot over the
 * IPC channel, after the primary (which alone plans and publishes) has; a command a worker routes
 * by the snapshot before a slot started migrating must still reach the source within the settle
 * time, and each worker's migrating router moves the keys its clients touch. A reshard under load
 * must lose nothing and leave no key on two shards, as with one process.
 */

const KEYS = 40_000;
const CLIENTS = 10;
const OPS_PER_SECOND = 2_000;
const SLOTS = 2_000;

/** CPU time (clock ticks, user + system) of a process so far. */
function cpuTicks(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
  return Number(fields[11]) + Number(fields[12]);
}

describe('a reshard with workers: 2', () => {
  const deployment = useMigrationDeployment({ shards: 3, proxyShards: 3, config: { workers: 2 } });

  it('moves 2,000 slots s1 -> s3 under load with no error, no lost write and every key on its owner', async () => {
    const { shards, proxy, specs } = deployment;
    const workers = childProcesses(proxy.pid).filter((child) => child.commandLine.includes('cli.js'));
    expect(workers.length).toBe(2);
    const ticksBefore = workers.map((w) => cpuTicks(w.pid));
    await loadKeys(shards.primaries, KEYS);
    const load = await startLoad(proxy.port, { clients: CLIENTS, opsPerSecond: OPS_PER_SECOND, keys: KEYS });
    await sleep(1_000);

    const submitted = await proxy.submit({ op: 'reshard', from: 's1', to: 's3', slots: SLOTS });
    expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
    const status = await proxy.waitForPlan(120_000);
    await sleep(300);
    const report = await load.stop();

    expect(status.state, proxy.logs().slice(-3000)).toBe('done');
    expect(status.shards.map((s) => [s.name, s.slots])).toEqual([
      ['s1', 5461 - SLOTS],
      ['s2', 5462],
      ['s3', 5461 + SLOTS],
    ]);
    expect(status.progress!.keysMoved).toBeGreaterThan(0);
    const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
    expect(migrations).toBe(0);
    const placement = await checkPlacement(specs, owner, KEYS, load.expected);
    expectPlacementClean(placement);
    expect(report.errors.slice(0, 5)).toEqual([]);
    expect(report.staleReads.slice(0, 5)).toEqual([]);
    // Both workers served the clients (node:cluster hands connections out in turn).
    const ticksAfter = workers.map((w) => cpuTicks(w.pid));
    ticksAfter.forEach((ticks, i) => expect(ticks - ticksBefore[i]!).toBeGreaterThan(2));

    const client = new Redis({ host: '127.0.0.1', port: proxy.port });
    try {
      expect(await client.dbsize()).toBe(KEYS);
    } finally {
      client.disconnect();
    }
    console.log('workers-2 reshard figures', JSON.stringify({ keysMoved: status.progress?.keysMoved, keysPerSecond: status.progress?.keysPerSecond, commands: report.ops, keysPerShard: placement.keysPerShard }));
  }, 120_000);
});
