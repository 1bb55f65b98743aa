import Redis from 'ioredis';
import { describe, expect, it } from 'vitest';
import { replicationFlowing } from '../ha/ha-harness';
import {
  HOST,
  loadKeys,
  migratingSlots,
  sleep,
  slotOf,
  stateFileMigrations,
  useMigrationDeployment,
} from './migration-harness';

/**
 * With minReplicaAcks, moving a key deletes it from the source, and that delete must be on the
 * source's replicas before any command on the key reaches the target: otherwise a failover of
 * the source right then brings the old copy back, the source's copy counts as the authority,
 * and the next move overwrites a write the target had acknowledged.
 *
 * Made visible by stopping the source's replica (SIGSTOP, then SIGCONT) while a command on a key
 * of a migrating slot goes through the proxy: its answer has to wait for the replica.
 */

const KEYS = 2_000;
const REPLICA_STOP_MS = 600;

describe('moves under minReplicaAcks', () => {
  const deployment = useMigrationDeployment({
    shards: 2,
    replicas: 1,
    config: {
      minReplicaAcks: 1,
      // WAIT's timeout: longer than the replica's sleep, so the answer is the replica's ack.
      replicaAckTimeoutMs: 3_000,
      // Slow, so the slots stay migrating while the test looks.
      migrateKeysPerSecond: 50,
    },
  });

  it('answers a command on a migrating key only once the source replica has the move', async () => {
    const { shards, proxy } = deployment;
    await loadKeys(shards.primaries, KEYS);
    await replicationFlowing(shards);
    const submitted = await proxy.submit({ op: 'reshard', from: 's1', to: 's2', slots: 2_000 });
    expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);

    // A slot that is migrating now, and a key of it that no one wrote yet.
    const migrating = await migratingSlots(proxy.stateFile);
    const slot = migrating[0]!;
    // Two keys of that slot, written on the source directly, so that the command's move
    // deletes something there (a key the source does not hold needs no confirmation).
    const keys: string[] = [];
    for (let n = 0; keys.length < 2; n++) if (slotOf(`fresh:${n}`) === slot) keys.push(`fresh:${n}`);
    const [quickKey, key] = keys as [string, string];
    const source = new Redis({ host: shards.primaries[0]!.host, port: shards.primaries[0]!.port });
    await source.mset(quickKey, 'v0', key, 'v0');
    expect(await source.call('WAIT', '1', '2000')).toBe(1);
    source.disconnect();

    const client = new Redis({ host: HOST, port: proxy.port, maxRetriesPerRequest: 0 });
    const sourceReplica = shards.replicas[0]![0]!;
    try {
      const quick = performance.now();
      expect(await client.set(quickKey, 'v1')).toBe('OK');
      const quickMs = performance.now() - quick;

      sourceReplica.kill('SIGSTOP');
      const resumed = sleep(REPLICA_STOP_MS).then(() => sourceReplica.kill('SIGCONT'));
      await sleep(50);
      const start = performance.now();
      expect(await client.set(key, 'v2')).toBe('OK');
      const tookMs = performance.now() - start;
      await resumed;
      console.log('replicated moves', JSON.stringify({ slot, quickMs: Number(quickMs.toFixed(1)), withReplicaAsleepMs: Number(tookMs.toFixed(1)) }));

      // The key's slot was still migrating (else the command had no move to confirm).
      expect(stateFileMigrations(proxy.stateFile)).toContain(slot);
      expect(quickMs).toBeLessThan(300);
      // The replica was stopped from ~50 ms before the command: the answer waited for it.
      expect(tookMs).toBeGreaterThan(REPLICA_STOP_MS - 150);
      expect(await client.get(key)).toBe('v2');
    } finally {
      sourceReplica.kill('SIGCONT');
      client.disconnect();
    }
  }, 60_000);
});
