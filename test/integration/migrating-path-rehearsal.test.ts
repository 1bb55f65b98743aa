import * as fs from 'node:fs';
import { createServer } from 'node:net';
import * as os from 'node:os';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rehearseMigratingPath } from '../../src/cli/migrating-path-rehearsal';
import { newIdentity } from '../../src/cli/start';
import { loadConfig } from '../../src/config/load-config';
import type { ProxyConfig } from '../../src/config/config-types';
import { topologyFromConfig } from '../../src/control/topology-builder';
import { startShards, type Shards } from '../helpers/redis-harness';

/**
 * The data path's rehearsal at start (cli/migrating-path-rehearsal.ts): its commands go through
 * the migrating branches of a private data path against the real shards and are all answered,
 * and it leaves nothing behind: no key on any shard, no connection open. A shard that is down
 * only makes it give up, in bounded time.
 */

let shards: Shards;
let dir: string;

beforeAll(async () => {
  shards = await startShards(2);
  dir = fs.mkdtempSync(`${os.tmpdir()}/slotproxy-rehearsal-`);
});

afterAll(async () => {
  await shards.stopAll();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The listen address is never bound: the rehearsal listens on a port of its own. */
function configFor(addresses: readonly string[]): ProxyConfig {
  const yaml = ['listen: 127.0.0.1:7000', 'shards:', ...addresses.flatMap((address, i) => [`  - name: s${i + 1}`, `    primary: ${address}`])].join('\n');
  return loadConfig(yaml, 'rehearsal.yaml', dir);
}

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function shardState(port: number): Promise<{ keys: number; clients: number }> {
  const redis = new Redis({ host: '127.0.0.1', port, lazyConnect: true });
  await redis.connect();
  try {
    const keys = await redis.dbsize();
    const info = await redis.info('clients');
    return { keys, clients: Number(/connected_clients:(\d+)/.exec(info)![1]) };
  } finally {
    redis.disconnect();
  }
}

describe('the migrating path rehearsal', () => {
  it('gets a reply that is not an error to each of its 140 commands through a migrating slot, and leaves no key and no connection behind', async () => {
    const config = configFor(shards.primaries.map((p) => `${p.host}:${p.port}`));
    const startedAt = Date.now();
    const answers = await rehearseMigratingPath(config, topologyFromConfig(config), newIdentity());
    expect(answers).toBe(140);
    expect(Date.now() - startedAt).toBeLessThan(1_000);
    for (const primary of shards.primaries) {
      // The rehearsal's connections close as it returns; the server sees it a moment later.
      let state = await shardState(primary.port);
      for (let i = 0; i < 20 && state.clients > 1; i++) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        state = await shardState(primary.port);
      }
      expect(state).toEqual({ keys: 0, clients: 1 });
    }
  });

  it('gives up within its bound when a shard is down, without throwing', async () => {
    const config = configFor([`${shards.primaries[0]!.host}:${shards.primaries[0]!.port}`, `127.0.0.1:${await closedPort()}`]);
    const startedAt = Date.now();
    const answers = await rehearseMigratingPath(config, topologyFromConfig(config), newIdentity());
    // Those on the shard that is down are answered with an error.
    expect(answers).toBeLessThan(140);
    expect(Date.now() - startedAt).toBeLessThan(2_000);
    expect((await shardState(shards.primaries[0]!.port)).keys).toBe(0);
  });

  it('does nothing with one shard', async () => {
    const config = configFor([`${shards.primaries[0]!.host}:${shards.primaries[0]!.port}`]);
    expect(await rehearseMigratingPath(config, topologyFromConfig(config), newIdentity())).toBe(0);
  });
});
