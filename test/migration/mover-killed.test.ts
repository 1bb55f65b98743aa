import { describe, expect, it } from 'vitest';
import { checkPlacement, childProcesses, loadKeys, ownerFromStateFile, processThreads, sleep, startLoad, useMigrationDeployment } from './migration-harness';

/**
 * The mover's process killed in the middle of a plan (kill -9, as the kernel's OOM killer would):
 * the proxy starts a new one and the plan completes, with every acknowledged write and no key on
 * two shards. The proxy itself, and its clients, never notice more than a pause of the moves.
 */

const KEYS = 60_000;
const CLIENTS = 10;
const OPS_PER_SECOND = 2_000;

describe('the mover process killed mid-plan', () => {
  const deployment = useMigrationDeployment({
    shards: 4,
    proxyShards: 3,
    // Paced slowly so the kill lands in the middle of the move.
    config: { migrateKeysPerSecond: 4_000 },
  });

  it('is replaced, and the plan completes with every acknowledged write', async () => {
    const { shards, proxy, specs } = deployment;
    await loadKeys(shards.primaries.slice(0, 3), KEYS);
    const load = await startLoad(proxy.port, { clients: CLIENTS, opsPerSecond: OPS_PER_SECOND, keys: KEYS });
    await sleep(500);
    const submitted = await proxy.submit({ op: 'add-shard', name: 's4', primary: `${specs[3]!.node.host}:${specs[3]!.node.port}` });
    expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
    for (;;) {
      const status = await proxy.status();
      if ((status.progress?.slotsDone ?? 0) >= 1_000) break;
      expect(status.state).toBe('running');
      await sleep(50);
    }
    const [mover] = childProcesses(proxy.pid).filter((child) => child.commandLine.includes('mover-process.js'));
    expect(mover).toBeDefined();
    const killedAt = await proxy.status();
    process.kill(mover!.pid, 'SIGKILL');

    const status = await proxy.waitForPlan(120_000);
    await sleep(300);
    const report = await load.stop();

    expect(status.state, proxy.logs().slice(-3000)).toBe('done');
    expect(proxy.logs()).toMatch(/the mover process ended mid-run; starting a new one/);
    expect(processThreads(mover!.pid)).toBeNull();
    const replacements = childProcesses(proxy.pid).filter((child) => child.commandLine.includes('mover-process.js'));
    expect(replacements.map((child) => child.pid)).not.toContain(mover!.pid);
    // The run's counts went on from where the killed process left them.
    expect(status.progress!.slotsTotal).toBe(killedAt.progress!.slotsTotal);
    expect(status.progress!.slotsDone).toBe(status.progress!.slotsTotal);
    expect(status.progress!.keysMoved).toBeGreaterThan(killedAt.progress!.keysMoved);
    const counts = status.shards.map((s) => s.slots);
    expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);

    const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
    expect(migrations).toBe(0);
    const placement = await checkPlacement(specs, owner, KEYS, load.expected);
    expect(placement.misplaced.slice(0, 5)).toEqual([]);
    expect(placement.missing.slice(0, 5)).toEqual([]);
    expect(placement.wrongValues.slice(0, 5)).toEqual([]);
    expect(report.errors.slice(0, 5)).toEqual([]);
    expect(report.staleReads.slice(0, 5)).toEqual([]);
    console.log(
      'mover-killed figures',
      JSON.stringify({ slotsDoneAtKill: killedAt.progress?.slotsDone, keysMovedAtKill: killedAt.progress?.keysMoved, keysMoved: status.progress?.keysMoved, commands: report.ops }),
    );
  }, 180_000);
});
