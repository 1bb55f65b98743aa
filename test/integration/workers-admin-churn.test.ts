import * as fs from 'node:fs';
import * as net from 'node:net';
import Redis, { Cluster } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { childProcesses, ownerFromStateFile, sleep, slotOf, useMigrationDeployment } from '../migration/migration-harness';
import { tagsFor } from '../migration/contended-load';
import { seededRandom } from '../helpers/seeded-random';
import { isAlive } from '../helpers/redis-harness';

/**
 * The proxy's own admin commands with `workers: 2` while the deployment churns: worker 1 is
 * killed (SIGKILL) and forked again by the primary, shard s2's primary is killed (kill -9, its
 * replica promoted), and 4 slots are resharded s1 -> s2 onto the promoted primary. Throughout,
 * a client on worker 0 samples CLUSTER SLOTS (one node owning all 16384 slots, always), CLIENT
 * LIST (ids unique; every live client of worker 0 listed; no client of the killed worker once
 * its connection ended), while steady clients INCR their own counters (replies must be exactly
 * previous + 1 on worker 0, which never dies) and an ioredis Cluster client does the same.
 * Afterwards: the respawned worker's client ids are new (CLIENT ID never repeats), CLIENT LIST
 * through either worker lists exactly the connected clients, INFO's connected_clients counts
 * them, CLIENT KILL by id reaches the other worker and a stale id kills nobody, MONITOR on one
 * worker sees each command of both workers once, CONFIG SET reached every live node (the
 * promoted replica too), DBSIZE and INFO keyspace count the keys, the primary never exited.
 *
 * WORKERS_ADMIN_CHURN_SEED=n replays a run.
 */

const SEED = Number(process.env['WORKERS_ADMIN_CHURN_SEED'] ?? Date.now() % 1_000_000);
const ID_SPAN = 1e12;
const MOVING = 4;
const STEADY = 4;
const FILLER_PER_SLOT = 20;

/**
 * The worker process a client id came from, by fork: each fork gets ids of its own
 * (src/cli/workers.ts): 0 and 1 the first two, 2 worker 1 forked again after its kill.
 */
const workerOf = (id: number): number => Math.floor((id - 1) / ID_SPAN);
/** Worker 1's second process (forked again after the kill), by its ids. */
const RESPAWNED_WORKER_1 = 2;

function workerPids(proxyPid: number): Map<number, number> {
  const pids = new Map<number, number>();
  for (const child of childProcesses(proxyPid)) {
    try {
      const env = fs.readFileSync(`/proc/${child.pid}/environ`, 'utf8').split('\0');
      const index = env.find((e) => e.startsWith('SLOTPROXY_WORKER='));
      if (index !== undefined) pids.set(Number(index.split('=')[1]), child.pid);
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

interface Named {
  readonly name: string;
  readonly redis: Redis;
  readonly id: number;
  readonly worker: number;
  endedAt: number | null;
}

function infoField(info: string, field: string): number {
  const match = new RegExp(`^${field}:(\\d+)\\r?$`, 'm').exec(info);
  if (match === null) throw new Error(`no ${field} in INFO`);
  return Number(match[1]);
}

function listLines(list: string): { id: number; name: string }[] {
  return list
    .trimEnd()
    .split('\n')
    .filter((l) => l !== '')
    .map((line) => ({ id: Number(/^id=(\d+) /.exec(line)![1]), name: /(?:^| )name=(\S*)/.exec(line)?.[1] ?? '' }));
}

/** A raw socket on worker `wanted` that has sent MONITOR and got +OK; lines it receives after. */
async function monitorOn(port: number, wanted: number): Promise<{ socket: net.Socket; text: () => string }> {
  for (let tries = 0; tries < 40; tries++) {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => undefined);
    let data = '';
    socket.on('data', (c: Buffer) => (data += c.toString('latin1')));
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    socket.write('CLIENT ID\r\n');
    const deadline = Date.now() + 2_000;
    while (!data.includes('\r\n') && Date.now() < deadline) await sleep(5);
    const id = Number(/^:(\d+)\r\n/.exec(data)![1]);
    if (workerOf(id) !== wanted) {
      socket.destroy();
      continue;
    }
    data = '';
    socket.write('MONITOR\r\n');
    while (!data.startsWith('+OK\r\n') && Date.now() < deadline) await sleep(5);
    expect(data.startsWith('+OK\r\n')).toBe(true);
    // The other worker learns of the monitor through the primary.
    await sleep(100);
    return { socket, text: () => data };
  }
  throw new Error(`no connection landed on worker ${wanted}`);
}

describe('admin commands with workers: 2 through a worker kill, a failover and a reshard', () => {
  const deployment = useMigrationDeployment({
    shards: 2,
    replicas: 1,
    config: { workers: 2, nodeTimeoutMs: 1_000, failoverWaitMs: 3_000, migrateKeysPerSecond: 200, migrateBatchKeys: 5 },
  });

  it('CLIENT LIST/KILL/ID, MONITOR, INFO, CONFIG SET, DBSIZE and CLUSTER SLOTS stay those of one proxy', async () => {
    console.log(`workers-admin-churn seed ${SEED} (WORKERS_ADMIN_CHURN_SEED=${SEED} replays it)`);
    const random = seededRandom(SEED);
    const { proxy, shards } = deployment;
    const primaryPid = proxy.pid;
    const { owner } = ownerFromStateFile(proxy.stateFile);
    const s1Slots = owner.flatMap((o, s) => (o === 's1' ? [s] : []));
    const movingSlots = s1Slots.slice(-MOVING);
    const stableSlot = s1Slots[Math.floor(random() * (s1Slots.length - 100))]!;
    const movingTags = tagsFor(movingSlots);
    const [stableTag] = tagsFor([stableSlot]);

    const everIssued = new Set<number>();
    /** CLIENT ID must never repeat (redis-server's guarantee); checked last, after the rest. */
    const reusedIds: string[] = [];
    const named: Named[] = [];
    let seq = 0;
    const open = async (prefix: string): Promise<Named> => {
      const name = `${prefix}${seq++}`;
      const redis = new Redis({ host: '127.0.0.1', port: proxy.port, retryStrategy: () => null, maxRetriesPerRequest: 0, enableOfflineQueue: false, connectionName: name, lazyConnect: true });
      redis.on('error', () => undefined);
      await redis.connect();
      const id = Number(await redis.client('ID'));
      if (everIssued.has(id)) reusedIds.push(`${name} got CLIENT ID ${id}, already issued to a client of the killed worker`);
      everIssued.add(id);
      const n: Named = { name, redis, id, worker: workerOf(id), endedAt: null };
      redis.once('end', () => (n.endedAt = Date.now()));
      named.push(n);
      return n;
    };
    const openOn = async (prefix: string, worker: number, count: number): Promise<Named[]> => {
      const got: Named[] = [];
      for (let tries = 0; got.length < count && tries < 60; tries++) {
        const n = await open(prefix);
        if (n.worker === worker) got.push(n);
        else n.redis.disconnect();
      }
      expect(got.length, `clients on worker ${worker}`).toBe(count);
      return got;
    };
    const cluster = new Cluster([{ host: '127.0.0.1', port: proxy.port }], { redisOptions: { connectionName: 'cluster' } });
    cluster.on('error', () => undefined);
    const problems: string[] = [];

    try {
      // Keys on the moving slots (so the reshard moves something), written straight to s1.
      const s1 = new Redis({ host: shards.primaries[0]!.host, port: shards.primaries[0]!.port });
      const fillers: string[] = [];
      for (const tag of movingTags) for (let i = 0; i < FILLER_PER_SLOT; i++) fillers.push(`{${tag}}:f${i}`);
      await s1.mset(...fillers.flatMap((k) => [k, 'x']));
      s1.disconnect();

      const admin = (await openOn('admin-', 0, 1))[0]!;
      const admin1 = (await openOn('admin-', 1, 1))[0]!;
      const idle0 = await openOn('idle-', 0, 3);
      const idle1 = await openOn('idle-', 1, 3);
      const steady = [...(await openOn('steady-', 0, STEADY / 2)), ...(await openOn('steady-', 1, STEADY / 2))];
      const monitor1 = await monitorOn(proxy.port, 1);

      // CONFIG SET before the failover: every node, the replica about to be promoted too.
      expect(await admin.redis.config('SET', 'hz', '17')).toBe('OK');
      for (const node of [...shards.primaries, ...shards.replicas.flat()]) {
        const direct = new Redis({ host: node.host, port: node.port });
        expect((await direct.config('GET', 'hz'))[1], `hz on ${node.port}`).toBe('17');
        direct.disconnect();
      }

      // Steady clients: one counter each (only they write it); worker 0 never dies.
      const steadyKeys = steady.map((_, i) => `{${i % 2 === 0 ? stableTag : movingTags[i % MOVING]}}:steady:${i}`);
      const acked = steady.map(() => 0);
      const unknown = steady.map(() => 0);
      let isRunning = true;
      const steadyLoops = steady.map(async (c, i) => {
        let last = 0;
        while (isRunning && c.endedAt === null) {
          try {
            const reply = await c.redis.incr(steadyKeys[i]!);
            if (reply !== last + 1) problems.push(`${c.name} (worker ${c.worker}) INCR ${steadyKeys[i]} replied ${reply} after ${last}`);
            last = reply;
            acked[i]!++;
          } catch (err) {
            if (c.worker === 0) problems.push(`${c.name} (worker 0): ${(err as Error).message}`);
            unknown[i]!++;
            break;
          }
          await sleep(2 + random() * 5);
        }
      });
      // The cluster client: counters of its own, replies growing.
      const clusterKeys = [`{${stableTag}}:cl`, `{${movingTags[0]}}:cl`];
      const clusterLast = [0, 0];
      let clusterAcked = 0;
      let clusterUnknown = 0;
      const clusterLoop = (async () => {
        let k = 0;
        while (isRunning) {
          const i = k++ % 2;
          try {
            const reply = await cluster.incr(clusterKeys[i]!);
            if (!(reply > clusterLast[i]!)) problems.push(`cluster INCR ${clusterKeys[i]} replied ${reply} after ${clusterLast[i]}`);
            clusterLast[i] = reply;
            clusterAcked++;
          } catch (err) {
            const message = (err as Error).message;
            if (!/Connection is closed|ECONNRESET|EPIPE/.test(message)) problems.push(`cluster: ${message}`);
            clusterUnknown++;
            await sleep(20);
          }
          await sleep(3);
        }
      })();

      // Admin sampler on worker 0.
      const host = '127.0.0.1';
      let samples = 0;
      let workerKilledAt = Infinity;
      const samplerLoop = (async () => {
        while (isRunning) {
          const sentAt = Date.now();
          try {
            const slots = (await admin.redis.call('CLUSTER', 'SLOTS')) as unknown[];
            if (slots.length !== 1 || JSON.stringify((slots[0] as unknown[]).slice(0, 2)) !== '[0,16383]' || JSON.stringify(((slots[0] as unknown[])[2] as unknown[]).slice(0, 2)) !== JSON.stringify([host, proxy.port])) {
              problems.push(`CLUSTER SLOTS at +${sentAt}: ${JSON.stringify(slots)}`);
            }
            const lines = listLines((await admin.redis.call('CLIENT', 'LIST')) as string);
            const ids = lines.map((l) => l.id);
            if (new Set(ids).size !== ids.length) problems.push(`CLIENT LIST with a repeated id: ${ids.join(',')}`);
            for (const n of named) {
              const listed = ids.includes(n.id);
              if (n.worker === 0 && n.endedAt === null && !listed) problems.push(`CLIENT LIST missed live worker-0 client ${n.name} (${n.id})`);
              if (n.endedAt !== null && n.endedAt < sentAt - 50 && listed && n.worker === 1 && sentAt > workerKilledAt + 50) problems.push(`CLIENT LIST lists ${n.name} (${n.id}) of the killed worker, gone since ${sentAt - n.endedAt} ms`);
            }
            samples++;
          } catch (err) {
            problems.push(`admin on worker 0: ${(err as Error).message}`);
          }
          await sleep(30);
        }
      })();

      // The churn: s2's primary killed, worker 1 killed, a reshard onto the promoted replica.
      await sleep(200);
      const oldWorker1 = workerPids(primaryPid).get(1)!;
      shards.primaries[1]!.kill('SIGKILL');
      await sleep(150);
      workerKilledAt = Date.now();
      process.kill(oldWorker1, 'SIGKILL');
      // Wait for the failover (s2's primary the former replica) before the reshard moves keys onto s2.
      const failoverDeadline = Date.now() + 4_000;
      while (Date.now() < failoverDeadline) {
        const status = await proxy.status();
        const s2 = status.shards.find((s) => s.name === "s2");
        if (s2?.primary?.endsWith(`:${shards.replicas[1]![0]!.port}`)) break;
        await sleep(25);
      }
      const submitted = await proxy.submit({ op: 'reshard', from: 's1', to: 's2', slots: MOVING }).catch((err: unknown) => {
        throw new Error(`POST /admin/plan: ${String(err)} (${String((err as Error).cause)}); primary alive: ${isAlive(primaryPid)}\n${proxy.logs().slice(-2500)}`);
      });
      expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
      const plan = await proxy.waitForPlan(5_000);
      expect(plan.state, JSON.stringify(plan)).toBe('done');
      // Worker 1 forked again and serving.
      const respawnDeadline = Date.now() + 3_000;
      while (!(workerPids(primaryPid).get(1) !== undefined && workerPids(primaryPid).get(1) !== oldWorker1) && Date.now() < respawnDeadline) await sleep(20);
      expect(workerPids(primaryPid).get(1), 'worker 1 forked again').not.toBe(oldWorker1);
      const fresh1 = await openOn('fresh-', RESPAWNED_WORKER_1, 4);
      isRunning = false;
      await Promise.all([...steadyLoops, clusterLoop, samplerLoop]);
      expect(samples).toBeGreaterThan(10);
      expect(problems.slice(0, 10)).toEqual([]);

      // Worker 1's old clients (idle, admin1, steady, monitor) all ended with it.
      for (const n of [...idle1, admin1, ...steady.filter((s) => s.worker === 1)]) expect(n.endedAt, `${n.name} ended with worker 1`).not.toBeNull();
      expect(monitor1.socket.destroyed || monitor1.socket.readableEnded).toBe(true);

      // CLIENT LIST through either worker: exactly the live clients, ids never reused.
      const live = named.filter((n) => n.endedAt === null);
      const expectedIds = live.map((n) => n.id).sort((a, b) => a - b);
      for (const asker of [admin, fresh1[0]!]) {
        const lines = listLines((await asker.redis.call('CLIENT', 'LIST')) as string);
        const mine = lines.filter((l) => l.name !== 'cluster');
        expect(mine.map((l) => l.id).sort((a, b) => a - b), `CLIENT LIST through worker ${asker.worker}`).toEqual(expectedIds);
        expect(new Set(lines.map((l) => l.id)).size).toBe(lines.length);
        const info = (await asker.redis.info()) as string;
        expect(infoField(info, 'connected_clients'), `INFO connected_clients through worker ${asker.worker}`).toBe(lines.length);
        expect(infoField(info, 'workers')).toBe(2);
        expect(infoField(info, 'process_id')).toBe(primaryPid);
      }

      // A stale id (a client of the killed worker) kills nobody; a live one on the other worker is killed.
      // The lowest id the killed worker ever issued (its first client, long gone).
      const staleId = Math.min(...named.filter((n) => n.worker === 1 && !fresh1.includes(n)).map((n) => n.id));
      const staleKill = Number(await admin.redis.call('CLIENT', 'KILL', 'ID', String(staleId)));
      await sleep(100);
      const wronglyKilled = fresh1.filter((n) => n.endedAt !== null).map((n) => `${n.name} (id ${n.id})`);
      const staleKillOutcome = { staleKill, wronglyKilled };
      const victim = fresh1.filter((n) => n.id !== staleId && n.endedAt === null).at(-1)!;
      const victimEnded = new Promise<void>((resolve) => (victim.endedAt !== null ? resolve() : victim.redis.once('end', () => resolve())));
      expect(Number(await admin.redis.call('CLIENT', 'KILL', 'ID', String(victim.id)))).toBe(1);
      await victimEnded;

      await sleep(50);
      const liveFresh = fresh1.filter((n) => n.endedAt === null);
      expect(liveFresh.length).toBeGreaterThanOrEqual(2);
      // MONITOR on worker 0 sees each command of both workers exactly once.
      const monitor0 = await monitorOn(proxy.port, 0);
      const markers = [admin, liveFresh[0]!, idle0[0]!, liveFresh[1]!].map((n, i) => ({ n, line: `"set" "marker:${SEED}:${i}" "w${n.worker}"` }));
      for (const [i, m] of markers.entries()) expect(await m.n.redis.set(`marker:${SEED}:${i}`, `w${m.n.worker}`)).toBe('OK');
      const monitorDeadline = Date.now() + 2_000;
      while (!markers.every((m) => monitor0.text().includes(m.line)) && Date.now() < monitorDeadline) await sleep(10);
      monitor0.socket.destroy();
      for (const m of markers) expect(monitor0.text().split(m.line).length - 1, `${m.line} seen once by the monitor`).toBe(1);

      // CONFIG SET now: every node the topology lists answers (the dead one refuses); the promoted replica has the earlier one.
      const promoted = shards.replicas[1]![0]!;
      const promotedClient = new Redis({ host: promoted.host, port: promoted.port });
      expect((await promotedClient.config('GET', 'hz'))[1]).toBe('17');
      promotedClient.disconnect();

      // DBSIZE and INFO keyspace: every key once.
      const keyCount = fillers.length + steadyKeys.length + clusterKeys.length + markers.length;
      expect(await admin.redis.dbsize()).toBe(keyCount);
      expect(await liveFresh[0]!.redis.dbsize()).toBe(keyCount);
      const keyspace = /^db0:keys=(\d+),/m.exec((await admin.redis.info('keyspace')) as string);
      expect(Number(keyspace?.[1])).toBe(keyCount);

      // Counters: acknowledged increments, plus at most the unknown ones.
      for (const [i, k] of steadyKeys.entries()) {
        const value = Number(await admin.redis.get(k));
        expect(value, `${k}`).toBeGreaterThanOrEqual(acked[i]!);
        expect(value, `${k}`).toBeLessThanOrEqual(acked[i]! + unknown[i]!);
      }
      const clusterTotal = Number(await admin.redis.get(clusterKeys[0]!)) + Number(await admin.redis.get(clusterKeys[1]!));
      expect(clusterTotal).toBeGreaterThanOrEqual(clusterAcked);
      expect(clusterTotal).toBeLessThanOrEqual(clusterAcked + clusterUnknown);
      for (const k of [...steadyKeys, ...clusterKeys]) expect(ownerFromStateFile(proxy.stateFile).owner[slotOf(k)]).toBeDefined();

      // The primary never exited; only worker 1 did, once.
      expect(isAlive(primaryPid)).toBe(true);
      const exits = proxy.logs().split('\n').filter((l) => l.includes('"event":"worker exited"'));
      expect(exits.length, exits.join('\n')).toBe(1);
      console.log('workers-admin-churn figures', JSON.stringify({ reusedIds, staleKillOutcome }));
      expect(staleKillOutcome, `CLIENT KILL ID ${staleId} (a client gone with the killed worker)`).toEqual({ staleKill: 0, wronglyKilled: [] });
      expect(reusedIds).toEqual([]);
      console.log('workers-admin-churn figures', JSON.stringify({ samples, acked, unknown, clusterAcked, clusterUnknown }));
    } finally {
      cluster.disconnect();
      for (const n of named) n.redis.disconnect();
    }
  }, 20_000);
});
