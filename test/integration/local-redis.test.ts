import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import Redis from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  DEFAULT_REDIS_PORT,
  REDIS_INSTALL_HINT,
  RedisNotFoundError,
  RedisStartError,
  findFreePort,
  isPortFree,
  startRedisServer,
  type LocalRedis,
} from '../../src/cli/local-redis';
import { isAlive, startShards, startSingleRedis, type Shards } from '../helpers/redis-harness';

/** Every case is bounded: a hang here means a leaked or stuck redis-server. */
const CASE_TIMEOUT_MS = 20_000;

async function withClient<T>(node: LocalRedis, use: (redis: Redis) => Promise<T>): Promise<T> {
  // No ready check: it would hide a NOAUTH reply behind 'Connection is closed'.
  const redis = new Redis({
    host: node.host,
    port: node.port,
    lazyConnect: true,
    enableReadyCheck: false,
    retryStrategy: () => null,
  });
  redis.on('error', () => undefined);
  try {
    await redis.connect();
    return await use(redis);
  } finally {
    redis.disconnect();
  }
}

/** The first reply line to an inline PING, without any client library's connect handshake. */
async function rawPing(port: number): Promise<string> {
  const socket = net.connect(port, '127.0.0.1');
  try {
    socket.write('PING\r\n');
    let reply = '';
    for await (const chunk of socket) {
      reply += String(chunk);
      if (reply.includes('\r\n')) return reply.slice(0, reply.indexOf('\r\n'));
    }
    return reply;
  } finally {
    socket.destroy();
  }
}

describe('findFreePort', () => {
  it('returns a loopback port that can be bound, never the default Redis port', async () => {
    const port = await findFreePort();
    expect(port).toBeGreaterThan(0);
    expect(port).not.toBe(DEFAULT_REDIS_PORT);
    expect(await isPortFree(port)).toBe(true);
  });

  it('isPortFree sees a port another socket holds', async () => {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as net.AddressInfo).port;
    try {
      expect(await isPortFree(port)).toBe(false);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

describe('startRedisServer', () => {
  let dir: string;
  const started: LocalRedis[] = [];

  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'slotproxy-local-redis-'));
  });

  afterEach(async () => {
    await Promise.all(started.splice(0).map((server) => server.stop()));
  });

  afterAll(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('starts on 127.0.0.1 with the data folder and log, and stops by PID', async () => {
    const server = await startRedisServer({ dir: path.join(dir, 'plain') });
    started.push(server);
    expect(server.host).toBe('127.0.0.1');
    expect(server.isRunning).toBe(true);
    expect(isAlive(server.pid)).toBe(true);
    const info = await withClient(server, async (redis) => {
      expect(await redis.ping()).toBe('PONG');
      return redis.info('server');
    });
    expect(info).toContain(`process_id:${server.pid}`);
    expect(fs.existsSync(path.join(server.dir, 'redis.log'))).toBe(true);

    const pid = server.pid;
    await server.stop();
    expect(server.isRunning).toBe(false);
    expect(isAlive(pid)).toBe(false);
    expect(await isPortFree(server.port)).toBe(true);
    await server.stop(); // a second stop is a no-op
  }, CASE_TIMEOUT_MS);

  it('restarts on the same port and keeps AOF data', async () => {
    const server = await startRedisServer({ dir: path.join(dir, 'aof'), appendonly: true });
    started.push(server);
    await withClient(server, async (redis) => {
      await redis.set('greeting', 'hello');
    });
    const { port, pid } = server;
    await server.restart();
    expect(server.port).toBe(port);
    expect(server.pid).not.toBe(pid);
    expect(isAlive(pid)).toBe(false);
    expect(await withClient(server, (redis) => redis.get('greeting'))).toBe('hello');
  }, CASE_TIMEOUT_MS);

  it('stops a paused (SIGSTOP) server and restarts one killed with SIGKILL', async () => {
    const server = await startRedisServer({ dir: path.join(dir, 'signals') });
    started.push(server);
    server.kill('SIGSTOP');
    const begin = Date.now();
    await server.stop();
    expect(Date.now() - begin).toBeLessThan(4_000);
    expect(server.isRunning).toBe(false);

    await server.restart();
    const pid = server.pid;
    server.kill('SIGKILL');
    await server.restart();
    expect(isAlive(pid)).toBe(false);
    expect(await withClient(server, (redis) => redis.ping())).toBe('PONG');
  }, CASE_TIMEOUT_MS);

  it('requires the password when one is set', async () => {
    const server = await startRedisServer({ dir: path.join(dir, 'auth'), password: 's3cret' });
    started.push(server);
    expect(await rawPing(server.port)).toMatch(/^-NOAUTH/);
    const authed = new Redis({ port: server.port, password: 's3cret', lazyConnect: true });
    try {
      await authed.connect();
      expect(await authed.ping()).toBe('PONG');
    } finally {
      authed.disconnect();
    }
  }, CASE_TIMEOUT_MS);

  it('fails with isPortInUse when the requested port is taken', async () => {
    // Dropping each connection lets close() finish: the start-up probe connects here too.
    const holder = net.createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const port = (holder.address() as net.AddressInfo).port;
    try {
      const attempt = startRedisServer({ dir: path.join(dir, 'taken'), port });
      await expect(attempt).rejects.toBeInstanceOf(RedisStartError);
      await expect(attempt).rejects.toMatchObject({ isPortInUse: true, port });
    } finally {
      await new Promise<void>((resolve) => holder.close(() => resolve()));
    }
  }, CASE_TIMEOUT_MS);

  it('names the install command when redis-server is not on PATH', async () => {
    const savedPath = process.env['PATH'];
    process.env['PATH'] = path.join(dir, 'no-such-bin');
    try {
      const attempt = startRedisServer({ dir: path.join(dir, 'missing') });
      await expect(attempt).rejects.toBeInstanceOf(RedisNotFoundError);
      await expect(attempt).rejects.toThrow(REDIS_INSTALL_HINT);
    } finally {
      process.env['PATH'] = savedPath;
    }
  });
});

describe('redis harness', () => {
  let shards: Shards | undefined;

  afterEach(async () => {
    await shards?.stopAll();
    shards = undefined;
  });

  it('starts primaries with linked replicas and stops every PID', async () => {
    shards = await startShards(2, { replicas: 1 });
    expect(shards.primaries).toHaveLength(2);
    expect(shards.replicas.map((list) => list.length)).toEqual([1, 1]);
    const primary = shards.primaries[0]!;
    const replica = shards.replicas[0]![0]!;
    await withClient(primary, async (redis) => {
      await redis.set('k', 'v');
      // WAIT returns once the write reached the replica, so the read below is not a race.
      expect(await redis.wait(1, 5_000)).toBe(1);
    });
    expect(await withClient(replica, (redis) => redis.get('k'))).toBe('v');
    expect(await withClient(replica, (redis) => redis.info('replication'))).toContain(`master_port:${primary.port}`);

    const all = [...shards.primaries, ...shards.replicas.flat()];
    const root = path.dirname(primary.dir);
    await shards.stopAll();
    expect(all.filter((node) => isAlive(node.pid))).toEqual([]);
    expect(fs.existsSync(root)).toBe(false);
  }, CASE_TIMEOUT_MS);

  it('startSingleRedis gives a plain server and cleans up', async () => {
    const single = await startSingleRedis();
    const { pid, dir } = single.redis;
    try {
      expect(await withClient(single.redis, (redis) => redis.ping())).toBe('PONG');
    } finally {
      await single.stopAll();
    }
    expect(isAlive(pid)).toBe(false);
    expect(fs.existsSync(dir)).toBe(false);
  }, CASE_TIMEOUT_MS);
});
