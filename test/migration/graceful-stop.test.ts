import { describe, expect, it } from 'vitest';
import { checkPlacement, childProcesses, loadKeys, ownerFromStateFile, processThreads, sleep, startLoad, useMigrationDeployment } from './migration-harness';

/**
 * SIGTERM in the middle of a plan (a deploy, systemd stopping the service): the proxy stops the
 * mover after its current step, ends its process, keeps the plan for the next start and exits;
 * started again, it finishes the plan with every acknowledged write.
 */

const KEYS = 60_000;
const CLIENTS = 10;
const OPS_PER_SECOND = 2_000;

describe('a proxy stopped gracefully mid-plan', () => {
  const deployment = useMigrationDeployment({
    shards: 4,
    proxyShards: 3,
    // Paced slowly so the stop lands in the middle of the move.
    config: { migrateKeysPerSecond: 4_000 },
  });

  it('keeps the plan, and the restarted proxy finishes it with every acknowledged write', async () => {
    const { shards, proxy, specs } = deployment;
    await loadKeys(shards.primaries.slice(0, 3), KEYS);
    const load = await startLoad(proxy.port, { clients: CLIENTS, opsPerSecond: OPS_PER_SECOND, keys: KEYS, tolerateDisconnects: true });
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
    const stoppedAt = Date.now();
    proxy.kill('SIGTERM');
    await proxy.exited();
    const stopMs = Date.now() - stoppedAt;
    expect(proxy.logs()).toMatch(/resharding plan stopped; it resumes at the next start/);
    expect(proxy.logs()).not.toMatch(/resharding plan failed/);
    expect(processThreads(mover!.pid)).toBeNull();

    await sleep(300);
    await proxy.restart();
    const status = await proxy.waitForPlan(120_000, (s) => s.plan !== null);
    await sleep(300);
    const report = await load.stop();

    expect(status.state, proxy.logs().slice(-3000)).toBe('done');
    expect(proxy.logs()).toMatch(/resuming the resharding plan/);
    expect(status.shards.map((s) => s.name)).toEqual(['s1', 's2', 's3', 's4']);
    const counts = status.shards.map((s) => s.slots);
    expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);
    const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
    expect(migrations).toBe(0);
    const placement = await checkPlacement(specs, owner, KEYS, load.expected);
    expect(placement.misplaced.slice(0, 5)).toEqual([]);
    expect(placement.missing.slice(0, 5)).toEqual([]);
    expect(placement.wrongValues.slice(0, 5)).toEqual([]);
    expect(report.staleReads.slice(0, 5)).toEqual([]);
    console.log('graceful-stop figures', JSON.stringify({ stopMs, clientErrorsWhileDown: report.errors.length, commands: report.ops }));
  }, 180_000);
});
