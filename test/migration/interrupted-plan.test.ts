import { describe, expect, it } from 'vitest';
import type { ReshardStatus } from '../../src/control/resharding';
import { PLAN_TIMEOUT_MS } from '../../src/control/slot-migrator';
import {
  checkPlacement,
  expectPlacementClean,
  type Load,
  loadKeys,
  type MigrationDeployment,
  moverProcesses,
  ownerFromStateFile,
  processThreads,
  type ProcessThreads,
  sleep,
  startLoad,
  useMigrationDeployment,
} from './migration-harness';

/**
 * A plan interrupted part-way, without the proxy crashing:
 * - the mover's process killed (kill -9, as the kernel's OOM killer would): the proxy starts a
 *   new one and the plan completes, the clients never noticing more than a pause of the moves;
 * - the proxy stopped with SIGTERM (a deploy, systemd stopping the service): it stops the mover
 *   after its current step, ends its process, keeps the plan and exits; started again, it
 *   finishes the plan.
 * Either way every acknowledged write is there afterwards and no key is on two shards.
 */

const KEYS = 60_000;
const CLIENTS = 10;
const OPS_PER_SECOND = 2_000;
/** Where the plan is interrupted: about a quarter of add-shard's 4096 slots moved. */
const SLOTS_BEFORE_INTERRUPTING = 1_000;

function useDeployment(): MigrationDeployment {
  // Paced slowly so the interruption lands in the middle of the move.
  return useMigrationDeployment({ shards: 4, proxyShards: 3, config: { migrateKeysPerSecond: 4_000 } });
}

/** Keys loaded, clients running, s4 being added: returns once SLOTS_BEFORE_INTERRUPTING have moved. */
async function addShardUntilPartWay(
  deployment: MigrationDeployment,
  tolerateDisconnects: boolean,
): Promise<{ load: Load; mover: ProcessThreads; status: ReshardStatus }> {
  const { shards, proxy, specs } = deployment;
  await loadKeys(shards.primaries.slice(0, 3), KEYS);
  const load = await startLoad(proxy.port, { clients: CLIENTS, opsPerSecond: OPS_PER_SECOND, keys: KEYS, tolerateDisconnects });
  await sleep(500);
  const submitted = await proxy.submit({ op: 'add-shard', name: 's4', primary: `${specs[3]!.node.host}:${specs[3]!.node.port}` });
  expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
  for (;;) {
    const status = await proxy.status();
    if ((status.progress?.slotsDone ?? 0) >= SLOTS_BEFORE_INTERRUPTING) {
      const [mover] = moverProcesses(proxy.pid);
      expect(mover).toBeDefined();
      return { load, mover: mover!, status };
    }
    expect(status.state).toBe('running');
    await sleep(50);
  }
}

/** The plan finished: even slot counts, nothing migrating, every acknowledged write in place. */
async function expectCompleted(deployment: MigrationDeployment, load: Load): Promise<{ status: ReshardStatus; ops: number; errors: readonly string[] }> {
  const { proxy, specs } = deployment;
  const status = await proxy.waitForPlan(120_000, (s) => s.plan !== null);
  await sleep(300);
  const report = await load.stop();
  expect(status.state, proxy.logs().slice(-3000)).toBe('done');
  expect(status.shards.map((s) => s.name)).toEqual(['s1', 's2', 's3', 's4']);
  const counts = status.shards.map((s) => s.slots);
  expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);
  const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
  expect(migrations).toBe(0);
  const placement = await checkPlacement(specs, owner, KEYS, load.expected);
  expectPlacementClean(placement);
  expect(report.staleReads.slice(0, 5)).toEqual([]);
  return { status, ops: report.ops, errors: report.errors };
}

// Left out of the suite for its time (SLOTPROXY_STRESS=1 runs it): test/migration/crash-churn.test.ts
// kills the mover process alone mid-plan, under heavier load, in every run.
describe.runIf(process.env['SLOTPROXY_STRESS'] === '1')('the mover process killed mid-plan', () => {
  const deployment = useDeployment();

  it('is replaced, and the plan completes with every acknowledged write', async () => {
    const { proxy } = deployment;
    const { load, mover, status: killedAt } = await addShardUntilPartWay(deployment, false);
    process.kill(mover.pid, 'SIGKILL');

    const { status, ops, errors } = await expectCompleted(deployment, load);
    expect(errors.slice(0, 5)).toEqual([]);
    expect(proxy.logs()).toMatch(/the mover process ended mid-run; starting a new one/);
    expect(processThreads(mover.pid)).toBeNull();
    const replacements = moverProcesses(proxy.pid);
    expect(replacements.map((child) => child.pid)).not.toContain(mover.pid);
    // The run's counts went on from where the killed process left them.
    expect(status.progress!.slotsTotal).toBe(killedAt.progress!.slotsTotal);
    expect(status.progress!.slotsDone).toBe(status.progress!.slotsTotal);
    expect(status.progress!.keysMoved).toBeGreaterThan(killedAt.progress!.keysMoved);
    console.log(
      'mover-killed figures',
      JSON.stringify({ slotsDoneAtKill: killedAt.progress?.slotsDone, keysMovedAtKill: killedAt.progress?.keysMoved, keysMoved: status.progress?.keysMoved, commands: ops }),
    );
  }, 180_000);
});

describe('a proxy stopped gracefully mid-plan', () => {
  const deployment = useDeployment();

  it('keeps the plan, and the restarted proxy finishes it with every acknowledged write', async () => {
    const { proxy } = deployment;
    const { load, mover } = await addShardUntilPartWay(deployment, true);
    const stoppedAt = Date.now();
    proxy.kill('SIGTERM');
    await proxy.exited();
    const stopMs = Date.now() - stoppedAt;
    expect(proxy.logs()).toMatch(/resharding plan stopped; it resumes at the next start/);
    expect(proxy.logs()).not.toMatch(/resharding plan failed/);
    expect(processThreads(mover.pid)).toBeNull();

    await sleep(300);
    await proxy.restart();
    const { ops, errors } = await expectCompleted(deployment, load);
    expect(proxy.logs()).toMatch(/resuming the resharding plan/);
    console.log('graceful-stop figures', JSON.stringify({ stopMs, clientErrorsWhileDown: errors.length, commands: ops }));
  }, 180_000);
});

describe('a plan asked for while the mover process is stopped', () => {
  const deployment = useMigrationDeployment({ shards: 3, proxyShards: 3 });

  /** A dry run of a 100-slot reshard, timed. */
  async function preview(): Promise<{ ms: number; status: number; body: unknown }> {
    const startedAt = Date.now();
    const response = await deployment.proxy.submit({ op: 'reshard', from: 's1', to: 's2', slots: 100, dryRun: true });
    return { ms: Date.now() - startedAt, ...response };
  }

  it('is worked out in the mover process, or on the proxy\'s thread once that process is silent for PLAN_TIMEOUT_MS or gone', async () => {
    const { proxy } = deployment;
    let movers: ProcessThreads[] = [];
    for (let i = 0; i < 100 && movers.length === 0; i++) {
      movers = moverProcesses(proxy.pid);
      if (movers.length === 0) await sleep(50);
    }
    expect(movers.length).toBe(1);
    const expected = { plan: expect.objectContaining({ op: 'reshard', slotsToMove: 100, moves: [{ from: 's1', to: 's2', count: 100, ranges: [[5361, 5460]] }] }) };

    const running = await preview();
    expect(running.status, JSON.stringify(running.body)).toBe(200);
    expect(running.body).toEqual(expected);
    expect(running.ms).toBeLessThan(PLAN_TIMEOUT_MS / 2);

    process.kill(movers[0]!.pid, 'SIGSTOP');
    try {
      const stopped = await preview();
      expect(stopped.status, JSON.stringify(stopped.body)).toBe(200);
      expect(stopped.body).toEqual(expected);
      // It waited for the mover, so the mover is where plans are worked out.
      expect(stopped.ms).toBeGreaterThanOrEqual(PLAN_TIMEOUT_MS - 100);
      expect(stopped.ms).toBeLessThan(PLAN_TIMEOUT_MS + 2_000);
      expect(proxy.logs()).toMatch(/did not work the plan out in time; working it out here/);
    } finally {
      process.kill(movers[0]!.pid, 'SIGCONT');
    }
    const resumed = await preview();
    expect(resumed.body).toEqual(expected);
    expect(resumed.ms).toBeLessThan(PLAN_TIMEOUT_MS / 2);

    // A mover process that dies with a plan pending: the proxy works that plan out at once, and
    // the next plan goes to a new mover process.
    process.kill(movers[0]!.pid, 'SIGSTOP');
    const pending = preview();
    await sleep(500);
    process.kill(movers[0]!.pid, 'SIGKILL');
    const orphaned = await pending;
    expect(orphaned.status, JSON.stringify(orphaned.body)).toBe(200);
    expect(orphaned.body).toEqual(expected);
    expect(orphaned.ms).toBeLessThan(PLAN_TIMEOUT_MS - 1_000);
    const next = await preview();
    expect(next.body).toEqual(expected);
    const replacements = moverProcesses(proxy.pid);
    expect(replacements.length).toBe(1);
    expect(replacements[0]!.pid).not.toBe(movers[0]!.pid);
  }, 60_000);
});
