import * as fs from 'node:fs';
import Redis from 'ioredis';
import { describe, expect, it } from 'vitest';
import {
  checkPlacement,
  expectPlacementClean,
  HOST,
  initialValue,
  keyName,
  loadKeys,
  ownerFromStateFile,
  useMigrationDeployment,
} from './migration-harness';

/**
 * The YAML edited while the proxy is down: one shard added, one removed. The state file still
 * says where every slot is, so the proxy starts from it, keeps the removed shard until its
 * slots are drained, and rebalances onto the new one by itself (runtime-membership.ts,
 * resharding.ts), instead of routing by the YAML while the keys sit elsewhere.
 */

const KEYS = 20_000;

describe('shards added to and removed from the YAML while the proxy was down', () => {
  const deployment = useMigrationDeployment({ shards: 4, proxyShards: 3 });

  it('are rebalanced onto and drained at the next start, with every key kept', async () => {
    const { shards, proxy, specs } = deployment;
    await loadKeys(shards.primaries.slice(0, 3), KEYS);
    expect(ownerFromStateFile(proxy.stateFile).owner.filter((name) => name === 's3').length).toBe(5461);

    proxy.kill('SIGTERM');
    await proxy.exited();
    proxy.writeShards([specs[0]!, specs[1]!, specs[3]!]);
    await proxy.restart();
    // Routed by the state file from the first command: s3's keys are read where they are.
    const client = new Redis({ host: HOST, port: proxy.port, maxRetriesPerRequest: 0 });
    try {
      const sample = Array.from({ length: 200 }, (_, i) => keyName(i * 97));
      expect(await client.mget(...sample)).toEqual(sample.map((_, i) => initialValue(i * 97)));

      const status = await proxy.waitForPlan(120_000, (s) => s.plan?.trigger === 'startup');
      const logs = proxy.logs();
      expect(status.state, logs.slice(-3000)).toBe('done');
      expect(logs).toContain('the YAML adds or removes shards: rebalancing');
      // s4 joined the stored topology with no slots; the plan rebalances onto it and drains s3.
      expect(status.plan!.op).toBe('rebalance');
      expect(status.plan!.removeShards).toEqual(['s3']);
      expect(status.plan!.countsBefore).toEqual({ s1: 5461, s2: 5462, s3: 5461, s4: 0 });
      expect(status.shards.map((s) => s.name)).toEqual(['s1', 's2', 's4']);
      const counts = status.shards.map((s) => s.slots);
      expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);

      const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
      expect(migrations).toBe(0);
      expect(new Set(owner)).toEqual(new Set(['s1', 's2', 's4']));
      const placement = await checkPlacement(specs, owner, KEYS, (n) => [initialValue(n)]);
      expectPlacementClean(placement);
      expect(placement.keysPerShard['s3']).toBe(0);
      expect(placement.keysPerShard['s4']!).toBeGreaterThan(KEYS / 4);
      expect(await client.dbsize()).toBe(KEYS);
      // The YAML is as the operator left it: s3 is not written back.
      expect(fs.readFileSync(proxy.configPath, 'utf8')).not.toMatch(/name: s3/);
    } finally {
      client.disconnect();
    }
  }, 180_000);
});
