import Redis from 'ioredis';
import { describe, expect, it } from 'vitest';
import { replicationFlowing, roleOf } from '../ha/ha-harness';
import {
  expectNoMoverKeys,
  checkPlacement,
  expectPlacementClean,
  loadKeys,
  ownerFromStateFile,
  planWindow,
  sleep,
  slotOf,
  startLoad,
  useMigrationDeployment,
} from './migration-harness';

/**
 * The primary of a SOURCE shard is killed (kill -9) in the middle of a reshard: the proxy's
 * health checker promotes that shard's replica, the mover carries on from the promoted node,
 * and the plan completes with no lost or reverted acknowledged write and no key on a shard
 * that does not own its slot.
 *
 * Durability: plain Redis replication is asynchronous, so a write the dead primary acknowledged
 * before its replica had it could be lost by Redis itself. The proxy runs with minReplicaAcks: 1
 * (every acknowledged write is on a replica too), which makes "no acknowledged write lost" a
 * claim about the proxy. After the promotion s1 has no replica left (its only one is now its
 * primary and the old primary stays dead), so noReplicaWrites is 'accept': with 'refuse' every
 * write to s1 would be refused, by design, for the rest of the test.
 */

const KEYS = 60_000;
const CLIENTS = 20;
const OPS_PER_SECOND = 4_000;
/** Slots moved away from s1 (it owns 0-5460): its highest ones, 2461-5460, go to s2. */
const SLOTS = 3_000;
/** kill -9 once this many slots are done. */
const KILL_AFTER_SLOTS = 600;
const NODE_TIMEOUT_MS = 2_000;
/** s1's slots at the start (the even split of 3 shards). */
const S1_LAST_SLOT = 5460;

/**
 * SIGKILL: connections reset, the failure is found at once. SIGSTOP: nothing resets; the health
 * checker finds the node failed only after nodeTimeoutMs, and the mover's commands to it hang
 * until their timeout (the key index must then be built again on the promoted node, not given
 * up for full scans).
 */
describe.each([
  ['killed (kill -9)', 'SIGKILL'],
  ['frozen (SIGSTOP)', 'SIGSTOP'],
] as const)('the primary of a source shard %s mid-reshard', (_how, signal) => {
  const deployment = useMigrationDeployment({
    shards: 3,
    replicas: 1,
    config: {
      nodeTimeoutMs: NODE_TIMEOUT_MS,
      failoverWaitMs: 5_000,
      minReplicaAcks: 1,
      noReplicaWrites: 'accept',
      // Paced so the move lasts several seconds and the kill lands in the middle of it.
      migrateKeysPerSecond: 3_500,
    },
  });

  it('promotes the replica and completes the plan with every acknowledged write', async () => {
    const { shards, proxy, specs } = deployment;
    await loadKeys(shards.primaries, KEYS);
    // The replicas have everything loadKeys wrote (WAIT on each primary, after the load).
    await replicationFlowing(shards);
    for (const [i, primary] of shards.primaries.entries()) {
      const [p, r] = [primary, shards.replicas[i]![0]!].map((n) => new Redis({ host: n.host, port: n.port }));
      try {
        expect(await r!.dbsize()).toBe(await p!.dbsize());
      } finally {
        p!.disconnect();
        r!.disconnect();
      }
    }

    const load = await startLoad(proxy.port, { clients: CLIENTS, opsPerSecond: OPS_PER_SECOND, keys: KEYS });
    await sleep(1_000);
    const submitted = await proxy.submit({ op: 'reshard', from: 's1', to: 's2', slots: SLOTS });
    expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
    for (;;) {
      const status = await proxy.status();
      if ((status.progress?.slotsDone ?? 0) >= KILL_AFTER_SLOTS) break;
      expect(status.state, proxy.logs().slice(-3000)).toBe('running');
      await sleep(20);
    }
    const atKill = await proxy.status();
    const stateAtKill = ownerFromStateFile(proxy.stateFile);
    const oldPrimary = shards.primaries[0]!;
    const replica = shards.replicas[0]![0]!;
    const killedAt = Date.now();
    oldPrimary.kill(signal);

    const status = await proxy.waitForPlan(45_000);
    await sleep(500);
    const report = await load.stop();
    const logs = proxy.logs();
    // A frozen node would come back as a stale primary; this test is about the move, not that.
    if (signal === 'SIGSTOP') oldPrimary.kill('SIGKILL');

    // The kill landed in the middle of the move, and the plan finished anyway.
    expect(atKill.state).toBe('running');
    expect(atKill.progress!.slotsDone).toBeLessThan(SLOTS);
    expect(stateAtKill.migrations, 'slots were migrating at the kill').toBeGreaterThan(0);
    expect(status.state, `${status.error}\n${logs.slice(-3000)}`).toBe('done');
    expect(status.progress?.slotsDone).toBe(SLOTS);

    // The health checker failed the primary over to its replica.
    const promoted = events(logs, 'failover promoted');
    expect(promoted, logs.slice(-3000)).toHaveLength(1);
    expect(promoted[0]).toMatchObject({ shard: 's1', failed: `127.0.0.1:${oldPrimary.port}`, promoted: `127.0.0.1:${replica.port}` });
    expect((await roleOf(replica)).role).toBe('master');
    expect(status.shards.find((s) => s.name === 's1')!.primary).toBe(`127.0.0.1:${replica.port}`);
    expect(status.shards.map((s) => [s.name, s.slots])).toEqual([
      ['s1', S1_LAST_SLOT + 1 - SLOTS],
      ['s2', 5462 + SLOTS],
      ['s3', 5461],
    ]);

    // Placement and values, with the promoted replica as s1 (the old primary is dead).
    const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
    expect(migrations).toBe(0);
    const now = [{ name: 's1', node: replica }, specs[1]!, specs[2]!];
    const placement = await checkPlacement(now, owner, KEYS, load.expected);
    expectPlacementClean(placement);
    expect(report.staleReads.slice(0, 5)).toEqual([]);
    // No key but the test's anywhere: the mover's in-flight marks (which the promoted node
    // inherited from the dead one) are gone, and were not moved along with the slots' keys.
    await expectNoMoverKeys(now);
    expect(Object.values(placement.keysPerShard).reduce((a, b) => a + b, 0)).toBe(KEYS);

    // Clients saw errors only in the failover window, on keys of slots s1 still owned: commands
    // sent to the dead primary before the shard was published as failing over (after that they
    // wait for the promotion). Commands on migrating slots wait and retry their key moves
    // instead, and keys of slots already moved or on s3 see nothing.
    const promotedMs = Date.parse(String(promoted[0]!['time'])) - killedAt;
    expect(promotedMs).toBeLessThan(NODE_TIMEOUT_MS + 1_000);
    expect(report.errors.filter((e) => stateAtKill.owner[slotOf(e.slice(0, e.indexOf(': ')))] !== 's1').slice(0, 5)).toEqual([]);
    expect(report.errors.filter((e) => !/: ERR shard s1 unavailable: /.test(e)).slice(0, 5)).toEqual([]);
    // s1's key index was built again on the promoted node (not given up for full scans).
    const indexed = events(logs, 'source indexed').filter((e) => e['source'] === 's1' && Date.parse(String(e['time'])) > killedAt);
    expect(indexed.map((e) => e['node']), logs.slice(-3000)).toContain(`127.0.0.1:${replica.port}`);
    expect(events(logs, 'moving without a key index: one full SCAN of the source per group of slots')).toEqual([]);

    const { start, end } = planWindow(logs);
    const failed = events(logs, 'node failed').find((e) => e['node'] === `127.0.0.1:${oldPrimary.port}`);
    console.log(
      'failover-during-reshard figures',
      JSON.stringify({
        slotsDoneAtKill: atKill.progress?.slotsDone,
        migratingAtKill: stateAtKill.migrations,
        detectedMs: failed === undefined ? null : Date.parse(String(failed['time'])) - killedAt,
        promotedMs,
        planSeconds: (end - start) / 1000,
        afterKillSeconds: (end - killedAt) / 1000,
        keysMoved: status.progress?.keysMoved,
        migrationErrors: status.progress?.errors,
        clientErrors: report.errorCount,
        clientErrorKinds: [...new Set(report.errors.map((e) => e.slice(e.indexOf(': ') + 2, e.indexOf(': ') + 50)))],
        commands: report.ops,
        keysPerShard: placement.keysPerShard,
      }),
    );
  }, 120_000);
});

/** The proxy's JSON log lines with `event`. */
function events(logs: string, event: string): Record<string, unknown>[] {
  return logs
    .split('\n')
    .filter((line) => line.startsWith('{') && line.includes(`"event":"${event}"`))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}
