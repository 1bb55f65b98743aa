import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readStateFile } from '../../src/control/state-file';
import { startShards, type Shards } from '../helpers/redis-harness';
import { connect, logEvents, roleOf, shardOfKey, startHaProxy, waitFor, type HaProxy } from './ha-harness';

/**
 * An operator swaps a shard's primary and replica by hand (REPLICAOF on the nodes, not through
 * the proxy). The recorded primary now answers writes with READONLY; the health checker sees
 * it report role replica, following the other member, which says it is a primary, and the
 * proxy adopts that node as the shard's primary (failover.ts, "primary adopted"): writes
 * through the proxy work again, and the state file records the swap. Done in two steps slower
 * than a probe, the proxy demotes the node promoted first (two primaries look like an old one
 * come back) and the second step makes a loop; the proxy breaks it the way the old primary points.
 */

describe('roles moved by hand', () => {
  let shards: Shards | undefined;
  let ha: HaProxy | undefined;
  beforeAll(async () => {
    shards = await startShards(3, { replicas: 1 });
    ha = await startHaProxy(shards);
  }, 60_000);
  afterAll(async () => {
    await ha?.stop();
    await shards?.stopAll();
  });

  it('are followed: the node that takes writes becomes the recorded primary', async () => {
    const [oldPrimary, oldReplica] = [shards!.primaries[1]!, shards!.replicas[1]![0]!];
    let key = '';
    for (let n = 0; key === ''; n++) if (shardOfKey(`hand:${n}`, 3) === 1) key = `hand:${n}`;
    const client = connect({ host: '127.0.0.1', port: ha!.proxy.port });
    try {
      expect(await client.set(key, 'before')).toBe('OK');
      // The swap, as an operator would do it.
      const [p, r] = [connect(oldPrimary), connect(oldReplica)];
      try {
        await r.call('REPLICAOF', 'NO', 'ONE');
        await p.call('REPLICAOF', oldReplica.host, String(oldReplica.port));
      } finally {
        p.disconnect();
        r.disconnect();
      }
      expect((await roleOf(oldPrimary)).role).toBe('slave');

      await waitFor('writes through the proxy work again', async () => (await client.set(key, 'after').catch(() => null)) === 'OK', 15_000);
      expect(await client.get(key)).toBe('after');
      const adopted = logEvents(ha!.proxy, 'primary adopted');
      expect(adopted).toHaveLength(1);
      expect(adopted[0]).toMatchObject({ shard: 's1', recorded: `127.0.0.1:${oldPrimary.port}`, actual: `127.0.0.1:${oldReplica.port}` });
      // The state file is written after the snapshot is published: a moment later.
      const shard = await waitFor(
        'state file records the swap',
        () => {
          const recorded = readStateFile(ha!.stateFile)?.topology.shards[1];
          return recorded?.primary.port === oldReplica.port ? recorded : undefined;
        },
        5_000,
      );
      expect(shard.replicas.map((n) => n.port)).toContain(oldPrimary.port);
      // The old primary, now a replica, has the write.
      await waitFor('replicated', async () => {
        const c = connect(oldPrimary);
        try {
          return (await c.get(key)) === 'after';
        } finally {
          c.disconnect();
        }
      }, 5_000);
    } finally {
      client.disconnect();
    }
  }, 60_000);

  it('are followed when swapped back in two slow steps: the loop the proxy\'s demotion makes is broken the way the operator pointed', async () => {
    // After the first test shard 1's primary is its first replica's node; swap them back.
    const [current, next] = [shards!.replicas[1]![0]!, shards!.primaries[1]!];
    let key = '';
    for (let n = 0; key === ''; n++) if (shardOfKey(`slow-hand:${n}`, 3) === 1) key = `slow-hand:${n}`;
    const client = connect({ host: '127.0.0.1', port: ha!.proxy.port });
    const demotedBefore = logEvents(ha!.proxy, 'node demoted').length;
    // The first test's swap may have gone through a loop too (a probe between its two steps).
    const loopsBefore = logEvents(ha!.proxy, 'replication loop broken').length;
    try {
      expect(await client.set(key, 'before')).toBe('OK');
      const [p, r] = [connect(current), connect(next)];
      try {
        await r.call('REPLICAOF', 'NO', 'ONE');
        // The operator is slower than a probe: the proxy sees two primaries and demotes the
        // new one, as it would an old primary coming back.
        await waitFor('the proxy demotes the node promoted by hand', () => logEvents(ha!.proxy, 'node demoted').length > demotedBefore, 10_000);
        await waitFor('demoted', async () => (await roleOf(next)).role === 'slave', 5_000);
        // The operator's second step closes a loop: each node follows the other.
        await p.call('REPLICAOF', next.host, String(next.port));
      } finally {
        p.disconnect();
        r.disconnect();
      }
      await waitFor('writes through the proxy work again', async () => (await client.set(key, 'after').catch(() => null)) === 'OK', 15_000);
      expect(logEvents(ha!.proxy, 'replication loop broken').slice(loopsBefore)).toEqual([expect.objectContaining({ shard: 's1', promoted: `127.0.0.1:${next.port}` })]);
      expect((await roleOf(next)).role).toBe('master');
      await waitFor('the old primary follows the new one', async () => (await roleOf(current)).primaryPort === next.port, 5_000);
      expect(await client.get(key)).toBe('after');
      const adopted = logEvents(ha!.proxy, 'primary adopted');
      expect(adopted.at(-1)).toMatchObject({ shard: 's1', recorded: `127.0.0.1:${current.port}`, actual: `127.0.0.1:${next.port}` });
    } finally {
      client.disconnect();
    }
  }, 60_000);
});
