import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findFreePort } from '../../src/cli/local-redis';
import { keySlot } from '../../src/routing/key-slot';
import { startProxyProcess, type ProxyProcess } from '../helpers/proxy-harness';
import { startShards, type Shards } from '../helpers/redis-harness';
import { sleep, waitFor } from './ha-harness';

/**
 * Backends that require a password (`requirepass`), the proxy given it as `backendPassword`:
 * every connection the proxy opens authenticates (the data path's, the health checker's, the
 * slot mover's), and so do the MIGRATEs a command's key moves run on a source (MIGRATE ...
 * AUTH). Clients of the proxy give none. One test walks the paths: commands and fan-out, a
 * reshard under writes with a big key among the moving keys, and a failover.
 */

const PASSWORD = 'correct horse battery staple';
const KEYS = 3_000;
const BIG_LIST = 5_000;

const slotOf = (key: string): number => {
  const bytes = Buffer.from(key);
  return keySlot(bytes, 0, bytes.length);
};

describe('backends with a password', () => {
  let shards: Shards | undefined;
  let proxy: ProxyProcess | undefined;
  let adminPort = 0;
  const clients: Redis[] = [];
  const direct = (node: { host: string; port: number }): Redis => {
    const redis = new Redis({ host: node.host, port: node.port, password: PASSWORD, maxRetriesPerRequest: 0 });
    redis.on('error', () => undefined);
    clients.push(redis);
    return redis;
  };

  beforeAll(async () => {
    shards = await startShards(3, { replicas: 1, password: PASSWORD });
    adminPort = await findFreePort('127.0.0.1');
    proxy = await startProxyProcess({
      shards: shards.primaries.map((primary, i) => ({ name: `s${i + 1}`, primary, replicas: shards!.replicas[i] })),
      extra: { backendPassword: PASSWORD, admin: `127.0.0.1:${adminPort}`, stateFile: 'state.json', nodeTimeoutMs: 1_000, migrateKeysPerSecond: 100, logLevel: 'info' },
    });
  }, 60_000);
  afterAll(async () => {
    for (const client of clients) client.disconnect();
    await proxy?.stop();
    await shards?.stopAll();
  });

  it('serves, reshards (keys moved on demand and in the background, a big key in chunks) and fails over', async () => {
    const client = new Redis({ host: '127.0.0.1', port: proxy!.port, maxRetriesPerRequest: 0 });
    clients.push(client);
    // A client gives no password: the proxy's own AUTH to the backends is what makes this work.
    const values = new Map<string, string>();
    for (let n = 0; n < KEYS; n += 500) {
      const pairs: string[] = [];
      for (let i = n; i < n + 500; i++) {
        values.set(`pw:${i}`, `v${i}`);
        pairs.push(`pw:${i}`, `v${i}`);
      }
      expect(await client.mset(...pairs)).toBe('OK');
    }
    expect(await client.dbsize()).toBe(KEYS);
    // A list of 5,000 elements on s1, in the slots the reshard below takes (the highest of s1's).
    let listKey = '';
    for (let n = 0; listKey === ''; n++) if (slotOf(`{pwl${n}}`) >= 4000 && slotOf(`{pwl${n}}`) <= 5460) listKey = `{pwl${n}}:list`;
    for (let n = 0; n < BIG_LIST; n += 1_000) await client.rpush(listKey, ...Array.from({ length: 1_000 }, (_, i) => `e${n + i}`));

    // Writes and reads of the moving slots' keys the whole time, while the background mover is
    // held to 100 keys a second: many of these keys move on demand, by MIGRATE ... AUTH on the
    // source (with that AUTH left out, none does and the mover moves them all).
    const moving = [...values.keys()].filter((key) => slotOf(key) >= 5461 - 2_000 && slotOf(key) <= 5460);
    let isStopping = false;
    const errors: string[] = [];
    let writes = 0;
    let longestMs = 0;
    const writer = (async (): Promise<void> => {
      for (let n = 0; !isStopping; n++) {
        const key = moving[(n * 7) % moving.length]!;
        const value = `w${n}`;
        const startedAt = Date.now();
        try {
          await client.set(key, value);
          longestMs = Math.max(longestMs, Date.now() - startedAt);
          values.set(key, value);
          writes++;
          const got = await client.get(key);
          if (got !== value) errors.push(`${key}: read ${got}, wrote ${value}`);
        } catch (err) {
          errors.push(`${key}: ${(err as Error).message}`);
        }
      }
    })();
    const response = await fetch(`http://127.0.0.1:${adminPort}/admin/plan`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ op: 'reshard', from: 's1', to: 's2', slots: 2_000 }),
    });
    expect(response.status).toBe(202);
    const status = await waitFor(
      'reshard done',
      async () => {
        const s = (await (await fetch(`http://127.0.0.1:${adminPort}/admin/status`)).json()) as { state: string; progress: { bigKeysMoved: number; keysMoved: number; errors: number; lastError: string | null } | null };
        return s.state !== 'running' && s.progress !== null ? s : undefined;
      },
      60_000,
    );
    await sleep(200);
    isStopping = true;
    await writer;
    expect(status.state, proxy!.logs().slice(-3000)).toBe('done');
    expect(status.progress!.errors, status.progress!.lastError ?? '').toBe(0);
    expect(status.progress!.bigKeysMoved).toBe(1);
    // The mover found keys the commands had moved already.
    expect(status.progress!.keysMoved).toBeLessThan(moving.length);
    expect(errors.slice(0, 5)).toEqual([]);
    expect(writes).toBeGreaterThan(100);
    expect(longestMs).toBeLessThan(1_000);
    expect(proxy!.logs()).not.toMatch(/NOAUTH|WRONGPASS|AUTH refused/);

    // Every key where the slot table says, with its last value; the list whole on s2.
    const [s1, s2] = [direct(shards!.primaries[0]!), direct(shards!.primaries[1]!)];
    expect(await s2.llen(listKey)).toBe(BIG_LIST);
    expect(await s1.exists(listKey)).toBe(0);
    const keys = [...values.keys()];
    const got = await client.mget(...keys);
    expect(keys.filter((key, i) => got[i] !== values.get(key)).slice(0, 5)).toEqual([]);
    expect(moving.length).toBeGreaterThan(100);
    expect(await s1.exists(...moving)).toBe(0);
    expect(await s2.exists(...moving)).toBe(moving.length);

    // Failover: s3's primary killed; the health checker (authenticated) promotes its replica.
    const s3Key = keys.find((key) => slotOf(key) > 10922)!;
    shards!.primaries[2]!.kill('SIGKILL');
    await waitFor('s3 writable again', async () => (await client.set(s3Key, 'after-failover').catch(() => null)) === 'OK', 15_000);
    expect(await client.get(s3Key)).toBe('after-failover');
    const promoted = direct(shards!.replicas[2]![0]!);
    expect(((await promoted.role()) as unknown[])[0]).toBe('master');
  }, 120_000);
});
