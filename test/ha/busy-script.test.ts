import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, keysOnShard, startDeployment, type Deployment } from '../helpers/deployment';

/**
 * A script or function that runs long: its node answers nothing until its busy-reply-threshold,
 * then -BUSY to everything but SCRIPT KILL, FUNCTION KILL and SHUTDOWN NOSAVE. It is alive and
 * is not failed over (a failover would throw the script's work away, as Redis Cluster does
 * not either); SCRIPT KILL and FUNCTION KILL through the proxy reach it on connections of their
 * own, since the shared one waits behind the script.
 */

/** The shards' busy-reply-threshold; nodeTimeoutMs is well above it. */
const BUSY_REPLY_MS = 300;
const NODE_TIMEOUT_MS = 1_000;

/** Lua: spins for ARGV[1] ms (after writing KEYS[1] = ARGV[2] when given). */
const SPIN = `
if ARGV[2] then redis.call('SET', KEYS[1], ARGV[2]) end
local start = redis.call('TIME')
while true do
  local now = redis.call('TIME')
  if (now[1] - start[1]) * 1000 + (now[2] - start[2]) / 1000 >= tonumber(ARGV[1]) then break end
end
return 'done'
`;

describe('a long script on a shard', () => {
  let deployment: Deployment | undefined;
  beforeAll(async () => {
    deployment = await startDeployment({ replicas: 1, extra: { nodeTimeoutMs: NODE_TIMEOUT_MS } });
    for (const redis of [...deployment.primaries, ...deployment.replicas]) await redis.config('SET', 'lua-time-limit', String(BUSY_REPLY_MS));
  }, 60_000);
  afterAll(async () => {
    await deployment?.stop();
  });

  /** The replica of shard 1 is still a replica, and the proxy still names the same primary. */
  async function expectNoFailover(): Promise<void> {
    const { replicas, viaProxy, shards } = deployment!;
    expect(((await replicas[1]!.role()) as unknown[])[0]).toBe('slave');
    const info = await viaProxy.info('proxy');
    expect(info).toContain(`primary=127.0.0.1:${shards.primaries[1]!.port}`);
    expect(deployment!.proxy.logs()).not.toMatch(/node failed|failover started/);
  }

  it('is not failed over while it answers BUSY, and its writes stay', async () => {
    const { proxy, viaProxy } = deployment!;
    const [key] = keysOnShard(1, 'busy-write', 1);
    const [other] = keysOnShard(0, 'busy-other', 1);
    const client = connect({ host: '127.0.0.1', port: proxy.port });
    try {
      const startedAt = Date.now();
      // Writes first, so it cannot be killed: it must run to its end, 2.5 nodeTimeoutMs later.
      const running = client.eval(SPIN, 1, key!, String(NODE_TIMEOUT_MS * 2.5), 'written-by-script');
      await new Promise((resolve) => setTimeout(resolve, 200));
      // Another shard's keys are served meanwhile.
      await viaProxy.set(other!, 'v');
      expect(await viaProxy.get(other!)).toBe('v');
      const unkillable = await viaProxy.call('SCRIPT', 'KILL').catch((err: Error) => err.message);
      expect(unkillable).toMatch(/^UNKILLABLE/);
      expect(await running).toBe('done');
      expect(Date.now() - startedAt).toBeGreaterThanOrEqual(NODE_TIMEOUT_MS * 2.5);
      expect(await viaProxy.get(key!)).toBe('written-by-script');
      expect(proxy.logs()).toContain('node busy running a script');
      await expectNoFailover();
    } finally {
      client.disconnect();
    }
  }, 30_000);

  it('is stopped by SCRIPT KILL through the proxy, the shard unharmed', async () => {
    const { proxy, viaProxy } = deployment!;
    const [key] = keysOnShard(1, 'busy-read', 1);
    await viaProxy.set(key!, 'before');
    const client = connect({ host: '127.0.0.1', port: proxy.port });
    try {
      const running = client.eval(SPIN, 1, key!, '20000').catch((err: Error) => err.message);
      await new Promise((resolve) => setTimeout(resolve, 200));
      const startedAt = Date.now();
      expect(await viaProxy.call('SCRIPT', 'KILL')).toBe('OK');
      // It answers once its node is past the busy-reply-threshold.
      expect(Date.now() - startedAt).toBeLessThan(BUSY_REPLY_MS + 1_000);
      expect(await running).toMatch(/Script killed by user/);
      expect(await client.get(key!)).toBe('before');
      await expectNoFailover();
      // Nothing running any more: NOTBUSY, as from one Redis.
      await expect(viaProxy.call('SCRIPT', 'KILL')).rejects.toThrow(/^NOTBUSY/);
    } finally {
      client.disconnect();
    }
  }, 30_000);

  it('stops a function with FUNCTION KILL', async () => {
    const { proxy, viaProxy } = deployment!;
    const [key] = keysOnShard(2, 'busy-fn', 1);
    const library = `#!lua name=spinlib
redis.register_function{function_name='spin', flags={'no-writes'}, callback=function(keys, args)
  local start = redis.call('TIME')
  while true do
    local now = redis.call('TIME')
    if (now[1] - start[1]) * 1000 + (now[2] - start[2]) / 1000 >= tonumber(args[1]) then break end
  end
  return 'done'
end}`;
    expect(await viaProxy.call('FUNCTION', 'LOAD', 'REPLACE', library)).toBe('spinlib');
    const client = connect({ host: '127.0.0.1', port: proxy.port });
    try {
      const running = client.call('FCALL', 'spin', '1', key!, '20000').catch((err: Error) => err.message);
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(await viaProxy.call('FUNCTION', 'KILL')).toBe('OK');
      expect(await running).toMatch(/killed/i);
      expect(await client.ping()).toBe('PONG');
    } finally {
      client.disconnect();
    }
  }, 30_000);
});
