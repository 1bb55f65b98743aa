import { describe, expect, it } from 'vitest';
import { findFreePort } from '../../src/cli/local-redis';
import Redis from 'ioredis';
import { calculateSlot } from '../../src/routing/key-slot';
import { loadKeys, ownerFromStateFile, runCli, sleep, useMigrationDeployment } from './migration-harness';

/**
 * The operator's side of resharding, where it says no: the CLI's usage errors and refusals
 * (exit codes 2 and 1, the reason on stderr), the admin endpoint's answers to requests it
 * cannot take (400, 404, 409 while a plan runs), an endpoint that is not there, and a weighted
 * rebalance run to the end.
 */

const KEYS = 40_000;

describe('resharding CLI and admin endpoint', () => {
  // A slow mover, so a plan is still running when the second request comes.
  const deployment = useMigrationDeployment({ shards: 3, config: { migrateKeysPerSecond: 2_000 } });

  it('say what is wrong with a request, refuse a second plan while one runs, and run a weighted rebalance', async () => {
    const { shards, proxy } = deployment;
    await loadKeys(shards.primaries, KEYS);
    const config = ['--config', proxy.configPath];

    // Usage errors: exit 2 and the usage line.
    let cli = await runCli(['reshard', '--from', 's1', '--to', 's2', '--slots', '10']);
    expect(cli.code).toBe(2);
    expect(cli.stderr).toMatch(/--config FILE or --proxy HOST:PORT is required[\s\S]*Usage: slotproxy reshard/);
    cli = await runCli(['reshard', '--from', 's1', '--to', 's2', '--slots', 'many', ...config]);
    expect(cli.code).toBe(2);
    expect(cli.stderr).toContain('--slots must be a whole number >= 1, not many');
    // Plans the proxy refuses: exit 1 and its reason; nothing runs.
    cli = await runCli(['reshard', '--from', 's1', '--to', 's9', '--slots', '10', '--yes', ...config]);
    expect(cli.code).toBe(1);
    expect(cli.stderr).toContain('no shard named s9');
    cli = await runCli(['reshard', '--from', 's1', '--to', 's2', '--slots', '99999', '--yes', ...config]);
    expect(cli.code).toBe(1);
    expect(cli.stderr).toContain('s1 owns 5461 slots; cannot move 99999');
    cli = await runCli(['rebalance', '--weights', 's1=2,s7=1', '--yes', ...config]);
    expect(cli.code).toBe(1);
    expect(cli.stderr).toContain('no shard named s7');
    // No endpoint there: exit 1, one line.
    cli = await runCli(['rebalance', '--yes', '--proxy', `127.0.0.1:${await findFreePort('127.0.0.1')}`]);
    expect(cli.code).toBe(1);
    expect(cli.stderr.trim().split('\n')).toHaveLength(1);
    expect((await proxy.status()).plan).toBeNull();

    // The admin endpoint's own answers.
    const base = `http://127.0.0.1:${proxy.adminPort}`;
    const post = async (body: string): Promise<{ status: number; error: string }> => {
      const response = await fetch(`${base}/admin/plan`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      return { status: response.status, error: ((await response.json()) as { error: string }).error };
    };
    expect(await post('{"op": "reshard",')).toMatchObject({ status: 400, error: expect.stringContaining('the body is not JSON') });
    expect(await post('[1, 2]')).toEqual({ status: 400, error: 'the body must be a JSON object' });
    expect(await post('{"op": "split"}')).toEqual({ status: 400, error: 'op must be one of reshard, rebalance, add-shard, remove-shard' });
    expect(await post('{"op": "reshard", "from": "s1", "to": "s2", "slots": "10"}')).toEqual({ status: 400, error: 'reshard needs slots (a number)' });
    expect(await post('{"op": "rebalance", "weights": {"s1": "heavy"}}')).toEqual({ status: 400, error: 'weight of s1 must be a number' });
    expect(await post('{"op": "add-shard", "name": "s4", "primary": "127.0.0.1:1", "replicas": [1]}')).toEqual({ status: 400, error: 'replicas must be a list of host:port' });
    expect(await post('{"op": "remove-shard"}')).toEqual({ status: 400, error: 'remove-shard needs name' });
    const notFound = await fetch(`${base}/admin/nothing`);
    expect(notFound.status).toBe(404);
    const index = await fetch(`${base}/`);
    expect(await index.text()).toContain('GET /admin/status, POST /admin/plan');

    // A weighted rebalance (s1 twice the others) through the CLI; a second plan meanwhile: 409.
    const running = runCli(['rebalance', '--weights', 's1=2', '--yes', ...config]);
    let status = await proxy.status();
    for (let deadline = Date.now() + 10_000; status.state !== 'running'; status = await proxy.status()) {
      if (Date.now() > deadline) throw new Error(`the rebalance did not start:\n${proxy.logs().slice(-3000)}`);
      await sleep(20);
    }
    const busy = await post('{"op": "reshard", "from": "s2", "to": "s3", "slots": 10}');
    expect(busy.status).toBe(409);
    expect(busy.error).toMatch(/^plan \w+ is still running$/);
    const busyCli = await runCli(['reshard', '--from', 's2', '--to', 's3', '--slots', '10', '--yes', ...config]);
    expect(busyCli.code).toBe(1);
    expect(busyCli.stderr).toMatch(/is still running/);
    cli = await running;
    expect(cli.code, cli.stderr).toBe(0);
    expect(cli.stdout).toContain('slots per shard: s1 5461 -> 8192, s2 5462 -> 4096, s3 5461 -> 4096');
    status = await proxy.status();
    expect(status.state).toBe('done');
    expect(status.shards.map((s) => s.slots)).toEqual([8192, 4096, 4096]);
  }, 180_000);

  it('check reads who owns which slot from the state file after the plans: healthy, and a key put on the wrong shard by hand is named', async () => {
    const { proxy, shards } = deployment;
    const config = ['--config', proxy.configPath];
    let cli = await runCli(['check', ...config]);
    // The YAML still says 5461 slots each; the proxy routes by the state file.
    expect(cli.code, cli.stdout).toBe(0);
    expect(cli.stdout).toContain('roles and slots as the proxy last recorded them');
    expect(cli.stdout).toMatch(/Shard s1: .*\(8192 slots\)/);
    expect(cli.stdout).toMatch(/\[OK\] s1: \d+ key\(s\), all in slots it owns/);
    // A key of one of s2's slots, written straight onto s1.
    const { owner } = ownerFromStateFile(proxy.stateFile);
    let stray = '';
    for (let n = 0; stray === ''; n++) if (owner[calculateSlot(`stray:${n}`)] === 's2') stray = `stray:${n}`;
    const s1 = new Redis({ host: shards.primaries[0]!.host, port: shards.primaries[0]!.port });
    try {
      await s1.set(stray, 'misplaced');
      cli = await runCli(['check', ...config]);
      expect(cli.code).toBe(1);
      expect(cli.stdout).toContain(`[ERR] s1: 1 of`);
      expect(cli.stdout).toContain(`"${stray}" (slot ${calculateSlot(stray)}, owned by s2)`);
    } finally {
      await s1.del(stray);
      s1.disconnect();
    }
  }, 60_000);
});
