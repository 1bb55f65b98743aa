import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { LocalRedis } from '../../src/cli/local-redis';
import { findFreePort } from '../../src/cli/local-redis';
import {
  checkPlacement,
  expectPlacementClean,
  loadKeys,
  ownerFromStateFile,
  sleep,
  startLoad,
  useMigrationDeployment,
  type MigrationProxy,
} from './migration-harness';

/**
 * `watchConfig: true`: the proxy notices the YAML change by itself (no SIGHUP). A YAML that
 * does not load, or names a shard the proxy cannot take, changes nothing and says why in the
 * log; a change while a plan runs is taken up when it is done.
 */

const KEYS = 40_000;

async function waitForLog(proxy: MigrationProxy, text: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!proxy.logs().includes(text)) {
    if (Date.now() > deadline) throw new Error(`no "${text}" in the log within ${timeoutMs} ms:\n${proxy.logs().slice(-3000)}`);
    await sleep(50);
  }
}

describe('config changes noticed by the file watcher', () => {
  // The mover held to 3,000 keys a second, so the first rebalance lasts long enough to be edited under.
  const deployment = useMigrationDeployment({ shards: 5, proxyShards: 3, config: { watchConfig: true, migrateKeysPerSecond: 3_000 } });

  it('refuse a YAML that does not load or a shard that cannot be reached, rebalance onto an added one, and take up an edit made meanwhile', async () => {
    const { shards, proxy, specs } = deployment;
    await loadKeys(shards.primaries.slice(0, 3), KEYS);
    const load = await startLoad(proxy.port, { clients: 10, opsPerSecond: 1_000, keys: KEYS });
    const good = fs.readFileSync(proxy.configPath, 'utf8');

    fs.writeFileSync(proxy.configPath, `${good}\nshards: [unclosed\n`);
    await waitForLog(proxy, 'config reload failed; nothing changed', 5_000);

    const nobody = { host: '127.0.0.1', port: await findFreePort('127.0.0.1') } as LocalRedis;
    proxy.writeShards([...specs.slice(0, 3), { name: 's4', node: nobody }]);
    await waitForLog(proxy, 'config reload: plan refused', 10_000);
    let status = await proxy.status();
    expect(status.plan).toBeNull();
    expect(status.shards.map((s) => s.name)).toEqual(['s1', 's2', 's3']);

    // s4 added: the watcher starts the rebalance; s5 added while it runs waits for it.
    proxy.writeShards(specs.slice(0, 4));
    for (let deadline = Date.now() + 10_000; status.state !== 'running'; status = await proxy.status()) {
      if (Date.now() > deadline) throw new Error(`no plan started:\n${proxy.logs().slice(-3000)}`);
      await sleep(20);
    }
    expect(status.plan!.trigger).toBe('reload');
    expect(status.plan!.addShards.map((s) => s.name)).toEqual(['s4']);
    proxy.writeShards(specs.slice(0, 5));
    await waitForLog(proxy, 'config reload deferred until the running plan is done', 10_000);
    status = await proxy.waitForPlan(120_000, (s) => s.plan?.addShards.some((a) => a.name === 's5') === true);
    await sleep(300);
    const report = await load.stop();

    expect(status.state, proxy.logs().slice(-3000)).toBe('done');
    expect(status.shards.map((s) => s.name)).toEqual(['s1', 's2', 's3', 's4', 's5']);
    const counts = status.shards.map((s) => s.slots);
    expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);
    const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
    expect(migrations).toBe(0);
    expectPlacementClean(await checkPlacement(specs, owner, KEYS, load.expected));
    expect(report.errors.slice(0, 5)).toEqual([]);
    expect(report.staleReads.slice(0, 5)).toEqual([]);
  }, 180_000);
});
