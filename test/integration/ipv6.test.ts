import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Redis from 'ioredis';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findFreePort, startRedisServer, type LocalRedis } from '../../src/cli/local-redis';
import { CLI_PATH, REPO_ROOT } from '../helpers/proxy-harness';

/**
 * IPv6 end to end, on ::1: shards bound to ::1 and named `[::1]:port` in the YAML, the proxy
 * listening on `[::1]:port` (admin too), cluster-aware replies in Redis's own format, and a
 * reshard through the CLI, whose keys move by MIGRATE to an IPv6 target.
 */

const HOST = '::1';

describe('IPv6 (::1) shards and listener', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'slotproxy-ipv6-'));
  const servers: LocalRedis[] = [];
  let child: ChildProcess | undefined;
  let output = '';
  let port = 0;
  let configPath = '';

  beforeAll(async () => {
    for (let i = 0; i < 2; i++) servers.push(await startRedisServer({ dir: path.join(dir, `s${i}`), host: HOST }));
    port = await findFreePort(HOST);
    const adminPort = await findFreePort(HOST);
    configPath = path.join(dir, 'slotproxy.yaml');
    fs.writeFileSync(
      configPath,
      stringify({
        listen: `[::1]:${port}`,
        admin: `[::1]:${adminPort}`,
        stateFile: 'state.json',
        shards: servers.map((s, i) => ({ name: `s${i + 1}`, primary: `[::1]:${s.port}` })),
      }),
    );
    child = spawn(process.execPath, [CLI_PATH, 'start', '--config', configPath], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    for (const deadline = Date.now() + 15_000; ; ) {
      const probe = new Redis({ host: HOST, port, lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
      probe.on('error', () => undefined);
      const isUp = await probe.connect().then(() => probe.ping().then(() => true), () => false).catch(() => false);
      probe.disconnect();
      if (isUp) break;
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`the proxy did not start on [::1]:${port}:\n${output.slice(-3000)}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }, 60_000);

  afterAll(async () => {
    if (child !== undefined && child.exitCode === null) {
      const exited = new Promise((resolve) => child!.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
    for (const server of servers) await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('serves, answers cluster commands in Redis format, and reshards', async () => {
    const client = new Redis({ host: HOST, port, maxRetriesPerRequest: 0 });
    try {
      const pairs = Array.from({ length: 200 }, (_, i) => [`v6:${i}`, `value${i}`]).flat();
      expect(await client.mset(...pairs)).toBe('OK');
      const keys = Array.from({ length: 200 }, (_, i) => `v6:${i}`);
      expect(await client.mget(...keys)).toEqual(keys.map((_, i) => `value${i}`));

      // Redis writes node addresses unbracketed ("::1:7000@17000"): clients split at the last colon.
      const nodes = (await client.call('CLUSTER', 'NODES')) as string;
      const address = nodes.split(' ')[1]!;
      expect(address).toBe(`${HOST}:${port}@${port + 10000}`);
      const hostPort = address.split('@')[0]!;
      expect([hostPort.slice(0, hostPort.lastIndexOf(':')), Number(hostPort.slice(hostPort.lastIndexOf(':') + 1))]).toEqual([HOST, port]);
      const slots = (await client.call('CLUSTER', 'SLOTS')) as unknown[][];
      expect((slots[0]![2] as unknown[]).slice(0, 2)).toEqual([HOST, port]);

      const cli = await new Promise<{ code: number | null; out: string }>((resolve) => {
        const run = spawn(process.execPath, [CLI_PATH, 'reshard', '--from', 's1', '--to', 's2', '--slots', '4000', '--yes', '--config', configPath], { cwd: REPO_ROOT });
        let out = '';
        run.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
        run.stderr.on('data', (chunk: Buffer) => (out += chunk.toString()));
        run.on('exit', (code) => resolve({ code, out }));
      });
      expect(cli.code, `${cli.out}\n${output.slice(-2000)}`).toBe(0);
      expect(cli.out).toContain('Done: s1 4192, s2 12192 slots.');
      expect(await client.mget(...keys)).toEqual(keys.map((_, i) => `value${i}`));
      // The moved keys are on s2 now, and only there.
      const [s1, s2] = servers.map((s) => new Redis({ host: HOST, port: s.port }));
      try {
        expect((await s1!.dbsize()) + (await s2!.dbsize())).toBe(200);
        expect(await s2!.dbsize()).toBeGreaterThan(100);
      } finally {
        s1!.disconnect();
        s2!.disconnect();
      }
    } finally {
      client.disconnect();
    }
  }, 60_000);
});
