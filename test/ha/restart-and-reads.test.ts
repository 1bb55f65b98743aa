import Redis from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { readStateFile } from '../../src/control/state-file';
import { startShards, type Shards } from '../helpers/redis-harness';
import { commandCalls, connect, logEvents, missingKeys, roleOf, sleep, startHaProxy, waitFor, type HaProxy } from './ha-harness';

/** The state file across a proxy restart, and replica reads (readFrom). */

let shards: Shards | undefined;
const proxies: HaProxy[] = [];
const clients: Redis[] = [];

afterEach(async () => {
  for (const client of clients.splice(0)) client.disconnect();
  for (const ha of proxies.splice(0)) await ha.stop();
  await shards?.stopAll();
  shards = undefined;
});

function viaProxy(ha: HaProxy): Redis {
  const client = new Redis({ host: '127.0.0.1', port: ha.proxy.port });
  client.on('error', () => undefined);
  clients.push(client);
  return client;
}

describe('state file across a restart', () => {
  it('a proxy restarted after a failover routes to the promoted primary and demotes the returning old one', async () => {
    shards = await startShards(3, { replicas: 1 });
    const first = await startHaProxy(shards);
    proxies.push(first);
    const client = viaProxy(first);
    const keys = Array.from({ length: 300 }, (_, i) => `before:${i}`);
    await client.mset(...keys.flatMap((k) => [k, 'v']));
    // Replicated before the kill: this test is about routing, not about the last writes' fate.
    const directToOld = connect(shards.primaries[0]!);
    clients.push(directToOld);
    expect(await directToOld.call('WAIT', '1', '2000')).toBe(1);

    const [oldPrimary, promoted] = [shards.primaries[0]!, shards.replicas[0]![0]!];
    oldPrimary.kill('SIGKILL');
    await waitFor('failover written to the state file', () => readStateFile(first.stateFile)?.topology.shards[0]!.primary.port === promoted.port, 5000);
    await first.proxy.stop();

    // The old primary comes back as a primary of its own, with whatever it had on disk: the
    // YAML still names it primary, and only the state file knows better.
    await oldPrimary.restart();
    expect((await roleOf(oldPrimary)).role).toBe('master');
    const second = await startHaProxy(shards, { stateFile: first.stateFile, isReplicationChecked: false });
    proxies.push(second);
    expect(logEvents(second.proxy, 'topology loaded')[0]).toMatchObject({ source: 'state-file' });
    const again = viaProxy(second);
    expect(await missingKeys(again, keys)).toEqual([]);
    const directToPromoted = connect(promoted);
    clients.push(directToPromoted);
    // Keys of every shard; the ones of s0 must land on the promoted node.
    await again.mset(...Array.from({ length: 300 }, (_, i) => [`after:${i}`, 'v']).flat());
    const onPromoted = await directToPromoted.keys('after:*');
    expect(onPromoted.length).toBeGreaterThan(50);
    await waitFor(
      'old primary demoted and linked',
      async () => {
        const role = await roleOf(oldPrimary);
        return role.role === 'slave' && role.primaryPort === promoted.port && role.link === 'connected';
      },
      5000,
    );
    expect(logEvents(second.proxy, 'node demoted')[0]).toMatchObject({ shard: 's0', node: `127.0.0.1:${oldPrimary.port}` });
    expect(logEvents(second.proxy, 'failover promoted')).toEqual([]);
    const state = readStateFile(second.stateFile)!;
    expect(state.topology.shards[0]).toMatchObject({ primary: { port: promoted.port }, replicas: [{ port: oldPrimary.port }] });
  });
});

describe('readFrom (1 shard x 2 replicas)', () => {
  it('readonly commands go to replicas (replica, preferReplica); a failed replica is skipped; with none left preferReplica reads the primary', async () => {
    shards = await startShards(1, { replicas: 2 });
    const onReplica = await startHaProxy(shards, { extra: { readFrom: 'replica' } });
    const preferReplica = await startHaProxy(shards, { extra: { readFrom: 'preferReplica' } });
    proxies.push(onReplica, preferReplica);
    const [r0, r1] = shards.replicas[0]!;
    const primary = shards.primaries[0]!;
    const writer = connect(primary);
    clients.push(writer);
    await writer.set('read:key', 'v');
    await writer.wait(2, 1000);

    // Several clients, so both replicas get some (a client keeps to one replica).
    const readers = [onReplica, preferReplica].flatMap((ha) => Array.from({ length: 4 }, () => viaProxy(ha)));
    const readAll = async (times: number): Promise<(string | null)[]> => {
      const values: (string | null)[] = [];
      for (let i = 0; i < times; i++) values.push(...(await Promise.all(readers.map((r) => r.get('read:key')))));
      return values;
    };
    const primaryGets = await commandCalls(primary, 'get');
    expect(new Set(await readAll(25))).toEqual(new Set(['v']));
    expect(await commandCalls(primary, 'get')).toBe(primaryGets);
    const [r0Gets, r1Gets] = [await commandCalls(r0!, 'get'), await commandCalls(r1!, 'get')];
    console.log(`readFrom: 200 GETs -> primary ${(await commandCalls(primary, 'get')) - primaryGets}, replicas ${r0Gets} + ${r1Gets}`);
    expect(r0Gets + r1Gets).toBe(200);
    expect(r0Gets).toBeGreaterThan(0);
    expect(r1Gets).toBeGreaterThan(0);

    // EVALSHA_RO of a script each proxy knows (SCRIPT LOAD through it, which only the primary
    // ran) reads on a replica as well; the replicas answer NOSCRIPT and the proxy loads it there.
    const script = "return redis.call('GET', KEYS[1])";
    const sha = (await readers[0]!.script('LOAD', script)) as string;
    expect(await readers[readers.length - 1]!.script('LOAD', script)).toBe(sha);
    const scripted = async (): Promise<unknown[]> => Promise.all(readers.map((r) => r.evalsha_ro(sha, 1, 'read:key')));
    const primaryEvalshas = await commandCalls(primary, 'evalsha_ro');
    expect(new Set(await scripted())).toEqual(new Set(['v']));
    expect(await commandCalls(primary, 'evalsha_ro')).toBe(primaryEvalshas);
    const replicaEvalshas = (await commandCalls(r0!, 'evalsha_ro')) + (await commandCalls(r1!, 'evalsha_ro'));
    expect(replicaEvalshas).toBeGreaterThanOrEqual(readers.length);

    // One replica dies: every read still succeeds, on the other replica.
    r0!.kill('SIGKILL');
    for (const ha of [onReplica, preferReplica]) {
      await waitFor('dead replica dropped', () => readStateFile(ha.stateFile)?.topology.shards[0]!.readReplicas.length === 1, 3000);
    }
    const r1Before = await commandCalls(r1!, 'get');
    expect(new Set(await readAll(25))).toEqual(new Set(['v']));
    expect(await commandCalls(r1!, 'get')).toBe(r1Before + 200);
    expect(await commandCalls(primary, 'get')).toBe(primaryGets);

    // The last replica dies: preferReplica reads the primary, replica refuses.
    r1!.kill('SIGKILL');
    for (const ha of [onReplica, preferReplica]) {
      await waitFor('no replica left', () => readStateFile(ha.stateFile)?.topology.shards[0]!.readReplicas.length === 0, 3000);
    }
    await sleep(50);
    expect(await viaProxy(preferReplica).get('read:key')).toBe('v');
    expect(await commandCalls(primary, 'get')).toBe(primaryGets + 1);
    await expect(viaProxy(onReplica).get('read:key')).rejects.toThrow(/no readable replica/);
  });
});
