import * as fs from 'node:fs';
import Redis from 'ioredis';
import { describe, expect, it } from 'vitest';
import {
  checkPlacement,
  expectPlacementClean,
  loadKeys,
  ownerFromStateFile,
  planWindow,
  runCli,
  sleep,
  startLoad,
  useMigrationDeployment,
} from './migration-harness';

/**
 * `slotproxy remove-shard s2 --yes` under load: s2's slots and keys end on the other three
 * shards, s2 leaves the topology and the YAML, and no acknowledged write is lost.
 */

const KEYS = 100_000;
const CLIENTS = 20;
const OPS_PER_SECOND = 5_000;

describe('remove a shard under load', () => {
  const deployment = useMigrationDeployment({ shards: 4 });

  it('drains s2 onto the others, then drops it', async () => {
    const { shards, proxy, specs } = deployment;
    await loadKeys(shards.primaries, KEYS);
    const load = await startLoad(proxy.port, { clients: CLIENTS, opsPerSecond: OPS_PER_SECOND, keys: KEYS });
    // The load's first seconds are its warm-up; the baseline is the 1.5 s after them, before any CLI starts.
    await sleep(3_500);
    const baselineEnd = Date.now();
    // Without --yes and without a terminal, the CLI shows the plan and refuses.
    const refused = await runCli(['remove-shard', 's2', '--config', proxy.configPath]);
    expect(refused.code).toBe(2);
    expect(refused.stdout).toMatch(/move 136\d slots s2 -> s1/);
    expect(refused.stderr).toMatch(/refusing to run without --yes/);

    const cli = await runCli(['remove-shard', 's2', '--proxy', `127.0.0.1:${proxy.adminPort}`, '--yes']);
    await sleep(500);
    const report = await load.stop();

    expect(cli.code, `${cli.stdout}\n${cli.stderr}\n${proxy.logs().slice(-3000)}`).toBe(0);
    expect(cli.stdout).toMatch(/then remove shard s2/);
    const status = await proxy.status();
    expect(status.state).toBe('done');
    expect(status.shards.map((s) => s.name)).toEqual(['s1', 's3', 's4']);
    const counts = status.shards.map((s) => s.slots);
    expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);
    expect(fs.readFileSync(proxy.configPath, 'utf8')).not.toMatch(/name: s2/);

    const { owner, migrations } = ownerFromStateFile(proxy.stateFile);
    expect(migrations).toBe(0);
    expect(owner.includes('s2')).toBe(false);
    const placement = await checkPlacement(specs, owner, KEYS, load.expected);
    expectPlacementClean(placement);
    expect(placement.keysPerShard['s2']).toBe(0);
    expect(report.errors.slice(0, 5)).toEqual([]);
    expect(report.staleReads.slice(0, 5)).toEqual([]);

    // Through the proxy every key reads back (s2's included).
    const client = new Redis({ host: '127.0.0.1', port: proxy.port });
    try {
      expect(await client.dbsize()).toBe(KEYS);
    } finally {
      client.disconnect();
    }
    const { start, end } = planWindow(proxy.logs());
    console.log(
      'remove-shard figures',
      JSON.stringify({
        keysMoved: status.progress?.keysMoved,
        keysPerSecond: status.progress?.keysPerSecond,
        planSeconds: (end - start) / 1000,
        p99BeforeMs: Number(report.p99(baselineEnd - 1_500, baselineEnd).toFixed(2)),
        p99DuringMs: Number(report.p99(start, end).toFixed(2)),
        keysPerShard: placement.keysPerShard,
      }),
    );
  }, 240_000);
});
