import { spawn, type ChildProcess } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { describe, expect, it } from 'vitest';
import {
  checkPlacement,
  childProcesses,
  expectPlacementClean,
  initialValue,
  loadKeys,
  moverProcesses,
  ownerFromStateFile,
  type ProcessThreads,
  sleep,
  useMigrationDeployment,
} from './migration-harness';

/**
 * The slot mover runs in SCHED_IDLE so that it takes a core only when nothing else wants one.
 * With every core busy with normal threads it gets a fraction of a percent of one: before the
 * proxy watched for that, a reshard that takes a tenth of a second on an idle machine had not
 * indexed its source after 15 s (a CI run timed out on it). Now a mover silent for 3 s is
 * replaced by one at the proxy's own priority, and the next plan starts in SCHED_IDLE again.
 */

const SCHED_OTHER = 0;
const SCHED_IDLE = 5;
const KEYS = 6_000;

describe('a slot mover on saturated cores', () => {
  const deployment = useMigrationDeployment({ shards: 3 });

  it('is replaced by one at the proxy priority and finishes the plan; the next plan starts idle', async () => {
    const { shards, proxy, specs } = deployment;
    await loadKeys(shards.primaries, KEYS);
    // A busy loop per core, at the proxy's priority, for 60 s at most; stopped by PID below.
    const hogs: ChildProcess[] = [];
    for (let i = 0; i < availableParallelism(); i++) {
      hogs.push(spawn(process.execPath, ['-e', 'const end = Date.now() + 60000; while (Date.now() < end);'], { stdio: 'ignore' }));
    }
    let startedAt = 0;
    let planMs = 0;
    const seen = new Map<number, ProcessThreads>();
    try {
      await sleep(200);
      startedAt = Date.now();
      const submitted = await proxy.submit({ op: 'reshard', from: 's1', to: 's2', slots: 2_000 });
      expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
      // The mover processes seen while the plan runs (the proxy's children), looked at every 100 ms.
      const watching = (async (): Promise<void> => {
        while (planMs === 0) {
          for (const child of childProcesses(proxy.pid)) {
            if (child.commandLine.includes('mover-process.js')) seen.set(child.pid, child);
          }
          await sleep(100);
        }
      })();
      const status = await proxy.waitForPlan(40_000).finally(() => {
        planMs = Date.now() - startedAt;
      });
      await watching;
      expect(status.state, proxy.logs().slice(-3000)).toBe('done');
    } finally {
      for (const hog of hogs) hog.kill('SIGKILL');
    }
    const logs = proxy.logs();
    const starved = logs.split('\n').filter((line) => line.includes('got no CPU for a while'));
    console.log('starved-mover figures', JSON.stringify({ planMs, starvedWarnings: starved.length, hogs: hogs.length }));
    expect(starved.length).toBe(1);
    // The first mover in SCHED_IDLE, its replacement at the proxy's priority (SCHED_OTHER).
    const movers = [...seen.values()];
    expect(movers.some((m) => m.policies.every((p) => p === SCHED_IDLE))).toBe(true);
    const replacement = movers.find((m) => m.commandLine.includes('--normal-priority'));
    expect(replacement, JSON.stringify(movers)).toBeDefined();
    expect(new Set(replacement!.policies)).toEqual(new Set([SCHED_OTHER]));
    expect(logs).not.toContain('the mover process ended mid-run');
    const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
    expect(migrations).toBe(0);
    expect(owner.filter((name) => name === 's2').length).toBe(5_462 + 2_000);
    expectPlacementClean(await checkPlacement(specs, owner, KEYS, (i) => [initialValue(i)]));

    // The cores are free again: the next plan's mover is in SCHED_IDLE, and is not replaced.
    const again = await proxy.submit({ op: 'reshard', from: 's2', to: 's1', slots: 100 });
    expect(again.status, JSON.stringify(again.body)).toBe(202);
    // A new mover was started ahead of it (its threads idled first thing: looked at until then, 5 s at most).
    let next = moverProcesses(proxy.pid);
    for (const deadline = Date.now() + 5_000; Date.now() < deadline && !(next.length === 1 && next[0]!.policies.every((p) => p === SCHED_IDLE)); await sleep(50)) {
      next = moverProcesses(proxy.pid);
    }
    expect(next.length).toBe(1);
    expect(new Set(next[0]!.policies)).toEqual(new Set([SCHED_IDLE]));
    expect(next[0]!.commandLine).not.toContain('--normal-priority');
    expect((await proxy.waitForPlan(20_000)).state).toBe('done');
    expect(proxy.logs().split('\n').filter((line) => line.includes('got no CPU for a while')).length).toBe(1);
  }, 120_000);
});
