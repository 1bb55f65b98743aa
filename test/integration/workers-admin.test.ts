import * as net from 'node:net';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDeployment, type Deployment } from '../helpers/deployment';

/**
 * With `workers: 2` each worker process holds the clients node:cluster handed it, yet CLIENT
 * LIST, CLIENT KILL, MONITOR and INFO's client and command counts are about the whole proxy,
 * as about one redis-server: the workers ask each other through the primary. Client ids tell
 * the workers apart (the second worker's start at 1e12 + 1).
 */

const SECOND_WORKER_IDS = 1e12;

let deployment: Deployment;

beforeAll(async () => {
  deployment = await startDeployment({ replicas: 0, extra: { workers: 2 } });
}, 60_000);

afterAll(async () => {
  await deployment?.stop();
});

/** An ioredis client that does not reconnect (a killed one must stay closed). */
function client(): Redis {
  const redis = new Redis({ host: deployment.proxy.host, port: deployment.proxy.port, retryStrategy: () => null, maxRetriesPerRequest: 0 });
  redis.on('error', () => undefined);
  return redis;
}

interface Placed {
  readonly redis: Redis;
  readonly id: number;
  readonly isSecondWorker: boolean;
}

/** `count` named clients, opened until both workers hold at least two of them (at most 40 tries). */
async function clientsOnBothWorkers(count: number, prefix: string): Promise<Placed[]> {
  const placed: Placed[] = [];
  for (let tries = 0; tries < 40; tries++) {
    const redis = client();
    const id = (await redis.call('CLIENT', 'ID')) as number;
    await redis.call('CLIENT', 'SETNAME', `${prefix}${placed.length}`);
    placed.push({ redis, id, isSecondWorker: id > SECOND_WORKER_IDS });
    const second = placed.filter((p) => p.isSecondWorker).length;
    if (placed.length >= count && second >= 2 && placed.length - second >= 2) return placed;
  }
  throw new Error(`clients did not spread over both workers: ${placed.map((p) => p.id).join(',')}`);
}

function closeAll(clients: readonly Placed[]): void {
  for (const c of clients) c.redis.disconnect();
}

function listedIds(list: string, prefix: string): number[] {
  return list
    .trimEnd()
    .split('\n')
    .filter((line) => line.includes(` name=${prefix}`))
    .map((line) => Number(/^id=(\d+) /.exec(line)![1]))
    .sort((a, b) => a - b);
}

function infoField(info: string, field: string): number {
  const match = new RegExp(`^${field}:(\\d+)\\r?$`, 'm').exec(info);
  if (match === null) throw new Error(`no ${field} in INFO`);
  return Number(match[1]);
}

describe('workers: 2, one proxy as its clients see it', () => {
  it('CLIENT LIST from either worker lists the clients of both, and INFO counts them all', async () => {
    const clients = await clientsOnBothWorkers(6, 'lister-');
    try {
      const expected = clients.map((c) => c.id).sort((a, b) => a - b);
      for (const asker of [clients.find((c) => !c.isSecondWorker)!, clients.find((c) => c.isSecondWorker)!]) {
        expect(listedIds((await asker.redis.call('CLIENT', 'LIST')) as string, 'lister-')).toEqual(expected);
        // Filters apply on every worker: ID picks one of each, TYPE pubsub none of these.
        const two = [clients[0]!.id, clients.find((c) => c.isSecondWorker !== clients[0]!.isSecondWorker)!.id];
        expect(listedIds((await asker.redis.call('CLIENT', 'LIST', 'ID', ...two.map(String))) as string, 'lister-')).toEqual(two.sort((a, b) => a - b));
        expect(listedIds((await asker.redis.call('CLIENT', 'LIST', 'TYPE', 'pubsub')) as string, 'lister-')).toEqual([]);
        // A malformed filter is refused where it is read, as by redis-server.
        await expect(asker.redis.call('CLIENT', 'LIST', 'TYPE', 'nosuch')).rejects.toThrow("ERR Unknown client type 'nosuch'");

        const all = ((await asker.redis.call('CLIENT', 'LIST')) as string).trimEnd().split('\n').length;
        const info = (await asker.redis.info()) as string;
        expect(infoField(info, 'connected_clients')).toBe(all);
        const proxySection = (await asker.redis.info('proxy')) as string;
        expect(infoField(proxySection, 'connected_clients')).toBe(all);
        expect(proxySection.endsWith('\r\n')).toBe(true);
        // The process to signal is the primary, whichever worker answers.
        expect(infoField(proxySection, 'process_id')).toBe(deployment.proxy.pid);
        expect(infoField(proxySection, 'workers')).toBe(2);
        expect(infoField(info, 'process_id')).toBe(deployment.proxy.pid);
        // Every client above sent CLIENT ID and SETNAME, on whichever worker it is.
        expect(infoField(info, 'total_commands_processed')).toBeGreaterThanOrEqual(2 * clients.length);
        expect(infoField(info, 'total_connections_received')).toBeGreaterThanOrEqual(clients.length);
      }
    } finally {
      closeAll(clients);
    }
  });

  it('CLIENT KILL closes clients of the other worker too: by id, by address, by type', async () => {
    const clients = await clientsOnBothWorkers(6, 'killer-');
    try {
      const asker = clients.find((c) => !c.isSecondWorker)!;
      const elsewhere = clients.filter((c) => c.isSecondWorker);
      const [byId, byAddr] = elsewhere as [Placed, Placed];
      const closed = (victim: Placed): Promise<void> => new Promise((resolve) => victim.redis.once('end', () => resolve()));

      const idClosed = closed(byId);
      expect(await asker.redis.call('CLIENT', 'KILL', 'ID', String(byId.id))).toBe(1);
      await idClosed;
      expect(await asker.redis.call('CLIENT', 'KILL', 'ID', String(byId.id))).toBe(0);

      // One of the asker's own worker: answered there, without asking the other.
      const neighbour = clients.find((c) => !c.isSecondWorker && c !== asker)!;
      const neighbourClosed = closed(neighbour);
      expect(await asker.redis.call('CLIENT', 'KILL', 'ID', String(neighbour.id))).toBe(1);
      await neighbourClosed;

      const lines = ((await asker.redis.call('CLIENT', 'LIST')) as string).split('\n');
      const addr = /addr=(\S+)/.exec(lines.find((line) => line.startsWith(`id=${byAddr.id} `))!)![1]!;
      const addrClosed = closed(byAddr);
      expect(await asker.redis.call('CLIENT', 'KILL', addr)).toBe('OK');
      await addrClosed;
      await expect(asker.redis.call('CLIENT', 'KILL', addr)).rejects.toThrow('ERR No such client');

      // Every other normal client, on both workers; the asker is skipped (SKIPME yes).
      const others = ((await asker.redis.call('CLIENT', 'LIST', 'TYPE', 'normal')) as string).trimEnd().split('\n').length - 1;
      expect(others).toBeGreaterThanOrEqual(clients.length - 4);
      expect(await asker.redis.call('CLIENT', 'KILL', 'TYPE', 'normal', 'SKIPME', 'yes')).toBe(others);
      expect(listedIds((await asker.redis.call('CLIENT', 'LIST')) as string, 'killer-')).toEqual([asker.id]);
      expect(await asker.redis.ping()).toBe('PONG');
    } finally {
      closeAll(clients);
    }
  });

  it('MONITOR on one worker sees the commands of clients on both workers', async () => {
    const clients = await clientsOnBothWorkers(4, 'monitored-');
    const monitor = net.connect(deployment.proxy.port, '127.0.0.1');
    const seen: Buffer[] = [];
    monitor.on('data', (chunk: Buffer) => seen.push(chunk));
    try {
      await new Promise<void>((resolve) => monitor.once('connect', () => resolve()));
      monitor.write('MONITOR\r\n');
      // The other worker learns of the monitor through the primary.
      const deadline = Date.now() + 5_000;
      while (!Buffer.concat(seen).toString().startsWith('+OK\r\n') && Date.now() < deadline) await sleep(20);
      await sleep(200);
      await Promise.all(clients.map((c, i) => c.redis.set(`monitored:${i}`, `v${i}`)));
      const expected = clients.map((_, i) => `"set" "monitored:${i}" "v${i}"`);
      while (Date.now() < deadline && !expected.every((line) => Buffer.concat(seen).toString().includes(line))) await sleep(20);
      const stream = Buffer.concat(seen).toString();
      for (const line of expected) expect(stream).toContain(line);
      expect(stream).toMatch(/^\+OK\r\n(\+\d+\.\d{6} \[0 127\.0\.0\.1:\d+\] "[^\r\n]*\r\n)+$/);
    } finally {
      monitor.destroy();
    }
    // The monitor gone, both workers serve on.
    await sleep(200);
    expect(await clients[0]!.redis.set('monitored:after', 'x')).toBe('OK');
    expect(await clients.find((c) => c.isSecondWorker)!.redis.get('monitored:after')).toBe('x');
    closeAll(clients);
  });
});

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
