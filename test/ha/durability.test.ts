import Redis from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { findFreePort } from '../../src/cli/local-redis';
import { readStateFile } from '../../src/control/state-file';
import { startShards, type Shards } from '../helpers/redis-harness';
import {
  connect,
  logEvents,
  missingKeys,
  RECOVERY_BOUND_MS,
  roleOf,
  sleep,
  startHaProxy,
  waitFor,
  Writers,
  type HaProxy,
} from './ha-harness';

/**
 * minReplicaAcks: an acknowledged write survives the loss of its primary; and what writes do
 * when a shard has no healthy replica left (noReplicaWrites: refuse | accept).
 */

let shards: Shards | undefined;
const proxies: HaProxy[] = [];
let writers: Writers | undefined;
const clients: Redis[] = [];

afterEach(async () => {
  await writers?.stop();
  writers?.close();
  writers = undefined;
  for (const client of clients.splice(0)) client.disconnect();
  for (const node of [...(shards?.primaries ?? []), ...(shards?.replicas.flat() ?? [])]) if (node.isRunning) node.kill('SIGCONT');
  for (const ha of proxies.splice(0)) await ha.stop();
  await shards?.stopAll();
  shards = undefined;
});

describe('minReplicaAcks: 1 (3 shards x 2 replicas, 9 writers)', () => {
  it('every acknowledged write reads back after kill -9 of one primary and SIGSTOP of another', async () => {
    shards = await startShards(3, { replicas: 2 });
    const ha = await startHaProxy(shards, { extra: { minReplicaAcks: 1 } });
    proxies.push(ha);
    const w = new Writers(ha.proxy.port, 9, 3);
    writers = w;
    w.start();
    await sleep(1000);

    const killed = shards.primaries[0]!;
    const stopped = shards.primaries[1]!;
    const killedAt = Date.now();
    killed.kill('SIGKILL');
    await sleep(300);
    const stoppedAt = Date.now();
    stopped.kill('SIGSTOP');
    const killRecoveryMs = await waitFor('s0 recovery', () => w.recoveryMs(0, killedAt) ?? undefined, RECOVERY_BOUND_MS + 2000);
    const stopRecoveryMs = await waitFor('s1 recovery', () => w.recoveryMs(1, stoppedAt) ?? undefined, RECOVERY_BOUND_MS + 2000);
    await sleep(5000 - (Date.now() - stoppedAt));
    stopped.kill('SIGCONT');
    await waitFor('resumed node demoted', async () => (await roleOf(stopped)).role === 'slave', 10_000);
    await sleep(500);
    await w.stop();

    const viaProxy = new Redis({ host: '127.0.0.1', port: ha.proxy.port });
    clients.push(viaProxy);
    const acked = w.acked;
    const missing = await missingKeys(viaProxy, acked);
    const errors = w.ops.filter((op) => !op.isOk);
    console.log(
      `minReplicaAcks 1: kill -9 recovered in ${killRecoveryMs} ms, SIGSTOP in ${stopRecoveryMs} ms; ` +
        `${acked.length} acknowledged, ${missing.length} lost, ${errors.length} errors ` +
        `(${[...new Set(errors.map((op) => op.error?.slice(0, 60)))].join(' | ')})`,
    );
    expect(missing).toEqual([]);
    expect(killRecoveryMs).toBeLessThan(RECOVERY_BOUND_MS);
    expect(stopRecoveryMs).toBeLessThan(RECOVERY_BOUND_MS);
    // Each failover promoted one replica and re-pointed the other at it.
    const promoted = logEvents(ha.proxy, 'failover promoted');
    expect(promoted.map((e) => e['shard']).sort()).toEqual(['s0', 's1']);
    expect(logEvents(ha.proxy, 'replica repointed').length).toBeGreaterThanOrEqual(2);
    const state = readStateFile(ha.stateFile)!;
    for (const shard of [0, 1]) {
      const newPrimary = state.topology.shards[shard]!.primary;
      const other = shards.replicas[shard]!.find((r) => r.port !== newPrimary.port)!;
      expect((await roleOf(other)).primaryPort).toBe(newPrimary.port);
    }
  });
});

/** slotproxy_unconfirmed_writes_total summed over its series, from the proxy's /metrics. */
async function unconfirmedWrites(metricsPort: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  return text
    .split('\n')
    .filter((line) => line.startsWith('slotproxy_unconfirmed_writes_total{'))
    .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(' ') + 1)), 0);
}

describe('noReplicaWrites when a shard has no healthy replica (minReplicaAcks: 1)', () => {
  it('refuse: writes fail with NOREPLICAS and are not run; accept: writes are answered OK', async () => {
    shards = await startShards(1, { replicas: 1 });
    const refuse = await startHaProxy(shards, { extra: { minReplicaAcks: 1, noReplicaWrites: 'refuse' } });
    proxies.push(refuse);
    const metricsPort = await findFreePort();
    const accept = await startHaProxy(shards, { extra: { minReplicaAcks: 1, noReplicaWrites: 'accept', metrics: `127.0.0.1:${metricsPort}` } });
    proxies.push(accept);
    const viaRefuse = new Redis({ host: '127.0.0.1', port: refuse.proxy.port });
    const viaAccept = new Redis({ host: '127.0.0.1', port: accept.proxy.port });
    const primary = connect(shards.primaries[0]!);
    clients.push(viaRefuse, viaAccept, primary);
    expect(await viaRefuse.set('before:refuse', '1')).toBe('OK');
    expect(await viaAccept.set('before:accept', '1')).toBe('OK');

    const replica = shards.replicas[0]![0]!;
    const killedAt = Date.now();
    replica.kill('SIGKILL');
    // The proxies see the replica gone (refused twice) and drop it from the readable replicas.
    for (const ha of [refuse, accept]) {
      await waitFor('replica dropped', () => readStateFile(ha.stateFile)?.topology.shards[0]!.readReplicas.length === 0, 3000);
    }
    console.log(`noReplicaWrites: replica dropped from readReplicas ${Date.now() - killedAt} ms after kill -9`);

    await expect(viaRefuse.set('during:refuse', '1')).rejects.toThrow(/^NOREPLICAS shard s0 has fewer than 1 healthy replica\(s\); write refused/);
    expect(await primary.exists('during:refuse')).toBe(0);
    expect(await unconfirmedWrites(metricsPort)).toBe(0);
    expect(await viaAccept.set('during:accept', '1')).toBe('OK');
    expect(await viaAccept.eval("return redis.call('SET', KEYS[1], '2')", 1, 'during:accept:eval')).toBe('OK');
    expect(await primary.get('during:accept')).toBe('1');
    // Counted, as the config says: the two writes that went unconfirmed; reads are not.
    expect(await viaAccept.get('during:accept')).toBe('1');
    expect(await unconfirmedWrites(metricsPort)).toBe(2);
    // Reads are not writes: both still serve them.
    expect(await viaRefuse.get('before:refuse')).toBe('1');

    // The replica comes back: once linked it counts again and the refusing proxy takes writes.
    await replica.restart();
    await waitFor('refuse proxy writes again', async () => (await viaRefuse.set('after:refuse', '1').catch(() => null)) === 'OK', 10_000);
    expect(logEvents(refuse.proxy, 'read replicas changed').length).toBeGreaterThanOrEqual(2);
  });
});
