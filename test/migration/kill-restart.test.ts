import Redis from 'ioredis';
import { describe, expect, it } from 'vitest';
import {
  checkPlacement,
  evenOwner,
  expectPlacementClean,
  loadKeys,
  moverProcesses,
  ownerFromStateFile,
  processThreads,
  sleep,
  slotOf,
  startLoad,
  useMigrationDeployment,
} from './migration-harness';

/**
 * kill -9 in the middle of a reshard: the restarted proxy reads the migrating slots from its
 * state file and the plan from the plan file beside it, and finishes the move; every
 * acknowledged write is still there, and no key is on two shards.
 */

const KEYS = 100_000;
const CLIENTS = 20;
const OPS_PER_SECOND = 5_000;
const HASH_FIELDS = 50_000;

describe('a proxy killed mid-reshard', () => {
  const deployment = useMigrationDeployment({
    shards: 4,
    proxyShards: 3,
    // Paced slowly so the kill lands in the middle of the move.
    config: { migrateKeysPerSecond: 4_000 },
  });

  it('resumes after kill -9 and completes with every acknowledged write', async () => {
    const { shards, proxy, specs } = deployment;
    await loadKeys(shards.primaries.slice(0, 3), KEYS);
    // A big hash among the moving slots: the kill may land in its chunked copy.
    let tag = 0;
    while (slotOf(`{b${tag}}`) < 4300 || slotOf(`{b${tag}}`) > 5400) tag++;
    const hashKey = `{b${tag}}:hash`;
    const direct = new Redis({ host: specs[0]!.node.host, port: specs[0]!.node.port });
    expect(evenOwner(3)[slotOf(hashKey)]).toBe(0);
    for (let start = 0; start < HASH_FIELDS; start += 5_000) {
      await direct.hset(hashKey, Object.fromEntries(Array.from({ length: 5_000 }, (_, i) => [`f${start + i}`, 'v'])));
    }
    direct.disconnect();

    const load = await startLoad(proxy.port, { clients: CLIENTS, opsPerSecond: OPS_PER_SECOND, keys: KEYS, tolerateDisconnects: true });
    await sleep(1_000);
    const submitted = await proxy.submit({ op: 'add-shard', name: 's4', primary: `${specs[3]!.node.host}:${specs[3]!.node.port}` });
    expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
    // Kill once about a third of the slots have moved.
    for (;;) {
      const status = await proxy.status();
      if ((status.progress?.slotsDone ?? 0) >= 1_300) break;
      expect(status.state).toBe('running');
      await sleep(50);
    }
    const before = await proxy.status();
    const movers = moverProcesses(proxy.pid);
    expect(movers.length).toBe(1);
    proxy.kill('SIGKILL');
    await proxy.exited();
    // The killed proxy's mover goes with it (its parent-death signal): one left running could
    // RESTORE an old copy over a key the restarted proxy has moved and written since.
    const moverGoneBy = Date.now() + 2_000;
    while (processThreads(movers[0]!.pid) !== null && Date.now() < moverGoneBy) await sleep(20);
    expect(processThreads(movers[0]!.pid), 'the mover process outlived its proxy').toBeNull();
    const stateAtKill = ownerFromStateFile(proxy.stateFile);
    await sleep(300);
    await proxy.restart();
    const status = await proxy.waitForPlan(120_000, (s) => s.plan !== null);
    await sleep(500);
    const report = await load.stop();

    expect(stateAtKill.migrations, 'the kill landed in the middle of the move').toBeGreaterThan(0);
    expect(status.state, proxy.logs().slice(-3000)).toBe('done');
    expect(proxy.logs()).toMatch(/resuming the resharding plan/);
    const counts = status.shards.map((s) => s.slots);
    expect(status.shards.map((s) => s.name)).toEqual(['s1', 's2', 's3', 's4']);
    expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);

    const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
    expect(migrations).toBe(0);
    const placement = await checkPlacement(specs, owner, KEYS, load.expected, [hashKey]);
    expectPlacementClean(placement);
    expect(report.staleReads.slice(0, 5)).toEqual([]);
    const s4 = new Redis({ host: specs[3]!.node.host, port: specs[3]!.node.port });
    try {
      expect(await s4.hlen(hashKey)).toBe(HASH_FIELDS);
      expect(await s4.keys('*slotproxy:moving*')).toEqual([]);
    } finally {
      s4.disconnect();
    }
    console.log(
      'kill-restart figures',
      JSON.stringify({
        slotsDoneAtKill: before.progress?.slotsDone,
        migratingAtKill: stateAtKill.migrations,
        slotsAfterRestart: status.progress?.slotsTotal,
        clientErrorsWhileDown: report.errors.length,
        commands: report.ops,
      }),
    );
  }, 240_000);
});
