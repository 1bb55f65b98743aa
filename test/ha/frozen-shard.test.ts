import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { INFO_WAIT_MS } from '../../src/dispatch/info-command';
import { connect, keysOnShard, startDeployment, type Deployment } from '../helpers/deployment';

/**
 * A shard that stops answering without going down (frozen, cut off by the network): its
 * connection stays up, so nothing fails its requests until the health checker acts
 * (nodeTimeoutMs) or commandTimeoutMs, when set. Commands for its keys wait; the other shards'
 * clients must not. ioredis sends INFO as its ready check on every connect, and INFO asks every
 * shard: it answers after INFO_WAIT_MS with the shards that did, or no new client could start.
 */

describe('a shard that stops answering (frozen, not down)', () => {
  let deployment: Deployment | undefined;
  beforeAll(async () => {
    // The health checker kept out of it: this is about the time before it acts.
    deployment = await startDeployment({ replicas: 0, extra: { nodeTimeoutMs: 30_000 } });
  }, 60_000);
  afterAll(async () => {
    deployment?.shards.primaries[1]?.kill('SIGCONT');
    await deployment?.stop();
  });

  it('does not hold INFO: a new ioredis client gets ready and serves the other shards', async () => {
    const { shards, proxy, viaProxy } = deployment!;
    const [key] = keysOnShard(0, 'frozen-shard', 1);
    const frozen = shards.primaries[1]!;
    frozen.kill('SIGSTOP');
    try {
      const startedAt = Date.now();
      // ioredis's defaults: the ready check (INFO) runs before any command is sent.
      const client = connect({ host: '127.0.0.1', port: proxy.port });
      try {
        await client.set(key!, 'v');
        expect(await client.get(key!)).toBe('v');
        const readyMs = Date.now() - startedAt;
        expect(readyMs).toBeLessThan(INFO_WAIT_MS + 2_000);
        // INFO names the shard that did not answer, and sums the keyspace of the others.
        const info = await client.info();
        expect(info).toContain('info_shards_not_answering:s2');
        expect(info).toMatch(/# Keyspace\r\ndb0:keys=\d+/);
        expect(info).toMatch(/# Server\r\nredis_version:/);
      } finally {
        client.disconnect();
      }
    } finally {
      frozen.kill('SIGCONT');
    }
    // Answering again: every shard speaks, no note.
    const info = await viaProxy.info();
    expect(info).not.toContain('info_shards_not_answering');
    expect(info).toContain('# Keyspace');
  }, 30_000);

  it('passes it over for keyless commands any shard can answer (COMMAND DOCS, TIME) once a reply there is overdue', async () => {
    const { shards, proxy } = deployment!;
    const [onFrozen] = keysOnShard(1, 'frozen-shard', 1);
    const waiting = connect({ host: '127.0.0.1', port: proxy.port });
    const client = connect({ host: '127.0.0.1', port: proxy.port });
    await Promise.all([waiting.ping(), client.ping()]);
    const frozen = shards.primaries[1]!;
    frozen.kill('SIGSTOP');
    try {
      const stuck = waiting.get(onFrozen!);
      stuck.catch(() => undefined);
      await new Promise((resolve) => setTimeout(resolve, 700));
      // Round robin would send every third one to the frozen shard.
      const startedAt = Date.now();
      for (let i = 0; i < 9; i++) {
        expect(Array.isArray(await client.call('COMMAND', 'DOCS', 'GET'))).toBe(true);
        expect(((await client.call('TIME')) as string[]).length).toBe(2);
      }
      expect(Date.now() - startedAt).toBeLessThan(1_000);
    } finally {
      frozen.kill('SIGCONT');
      waiting.disconnect();
      client.disconnect();
    }
  }, 30_000);
});

describe('commandTimeoutMs with a shard that stops answering', () => {
  let deployment: Deployment | undefined;
  beforeAll(async () => {
    deployment = await startDeployment({ replicas: 0, extra: { nodeTimeoutMs: 30_000, commandTimeoutMs: 500 } });
  }, 60_000);
  afterAll(async () => {
    deployment?.shards.primaries[1]?.kill('SIGCONT');
    await deployment?.stop();
  });

  it('fails what waits on it after the timeout, leaves the other shards alone, and reconnects once it answers', async () => {
    const { shards, viaProxy } = deployment!;
    const [onFrozen] = keysOnShard(1, 'timeout', 1);
    const [onOther] = keysOnShard(0, 'timeout', 1);
    await viaProxy.set(onFrozen!, 'before');
    const frozen = shards.primaries[1]!;
    frozen.kill('SIGSTOP');
    try {
      const startedAt = Date.now();
      const [frozenResult, otherResult] = await Promise.allSettled([viaProxy.get(onFrozen!), viaProxy.set(onOther!, 'meanwhile')]);
      const failedAfterMs = Date.now() - startedAt;
      expect(frozenResult.status).toBe('rejected');
      expect(String((frozenResult as PromiseRejectedResult).reason)).toMatch(/s2.*no reply within 500 ms \(commandTimeoutMs\)/);
      expect(failedAfterMs).toBeGreaterThanOrEqual(450);
      expect(failedAfterMs).toBeLessThan(2_000);
      expect(otherResult).toEqual({ status: 'fulfilled', value: 'OK' });
    } finally {
      frozen.kill('SIGCONT');
    }
    // The next command reconnects (after the connection's backoff) and finds the value.
    expect(await waitForValue(() => viaProxy.get(onFrozen!), 'before', 5_000)).toBe('before');
    expect(await viaProxy.get(onOther!)).toBe('meanwhile');
  }, 30_000);
});

async function waitForValue<T>(read: () => Promise<T>, wanted: T, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await read().catch(() => undefined);
    if (value === wanted || Date.now() > deadline) return value as T;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
