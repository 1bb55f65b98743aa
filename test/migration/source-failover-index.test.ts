import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MigrationProgress, SlotMover, type MoverHost, type QueuedSlot } from '../../src/control/slot-mover';
import type { SlotMove } from '../../src/control/rebalance-planner';
import { Topology, type ShardInfo, type SlotMigration } from '../../src/topology/topology';
import { startShards, type Shards } from '../helpers/redis-harness';
import { initialValue, keyName, loadKeys, lockMigrationTests, sleep, slotOf } from './migration-harness';

/**
 * The source's primary dies mid-reshard and the mover notices (its key index lost its
 * subscription) before the failover's snapshot reaches it: it starts indexing the source again
 * at the dead node's address, and that snapshot arrives while those commands wait. They must
 * fail at once then, so the index is built on the promoted node right away. (The mover's
 * ioredis control connection kept such a command in its offline queue while it reconnected,
 * and disconnect() did not fail it: the plan stalled for the command timeout, 12 s.)
 *
 * In the proxy the race is a matter of milliseconds (the health checker promotes the replica
 * ~10-200 ms after a kill -9). Here the mover runs in the test's process with a host that
 * publishes the failover's snapshot exactly then: right after the mover reports that its key
 * index lost its notifications.
 */

const KEYS = 20_000;
/** Slots 0..MOVED-1 move from s1 (slots 0-8191) to s2. */
const MOVED = 2_000;
const KEYS_PER_SECOND = 2_000;
/** The plan's commands time out after this plus 10 s: a stall on one would be 12 s. */
const MIGRATE_TIMEOUT_MS = 2_000;
/** kill -9 once the mover has moved this many keys. */
const KILL_AFTER_KEYS = 400;

/** Makes the snapshot changes the mover asks for, as the proxy's main process does. */
class TestHost implements MoverHost {
  topology: Topology;
  mover: SlotMover | null = null;
  readonly errors: string[] = [];
  /** Runs once, on the next 'scan' error. */
  onScanError: (() => void) | null = null;

  constructor(topology: Topology) {
    this.topology = topology;
  }

  publish(next: Topology): void {
    this.topology = next;
    this.mover?.onTopology();
  }

  change(source: string, done: readonly QueuedSlot[], begun: readonly QueuedSlot[]): Promise<void> {
    const base = this.topology;
    const owner = Uint16Array.from(base.slotOwner);
    const migrations = new Map<number, SlotMigration>(base.migrations);
    for (const q of done) {
      owner[q.slot] = base.indexOfShard(q.to);
      migrations.delete(q.slot);
    }
    for (const q of begun) migrations.set(q.slot, { from: base.indexOfShard(source), to: base.indexOfShard(q.to) });
    this.publish(new Topology(base.epoch + 1, base.shards, owner, migrations));
    return Promise.resolve();
  }

  setLock(): Promise<void> {
    return Promise.resolve();
  }

  setBigKeys(): Promise<void> {
    return Promise.resolve();
  }

  setNotifyFlags(): Promise<void> {
    return Promise.resolve();
  }

  onError(kind: string): void {
    this.errors.push(kind);
    const hook = this.onScanError;
    if (kind !== 'scan' || hook === null) return;
    this.onScanError = null;
    // Right after the mover's own reaction to the error, in the same turn: what it sent to
    // the dead node is waiting when the snapshot arrives.
    setImmediate(hook);
  }
}

function shard(index: number, name: string, primary: { host: string; port: number }, replicas: readonly { host: string; port: number }[]): ShardInfo {
  const nodes = replicas.map((r) => ({ host: r.host, port: r.port }));
  return { index, name, primary: { host: primary.host, port: primary.port }, replicas: nodes, readReplicas: nodes, isFailingOver: false };
}

describe('the source primary killed while the mover indexes it again', () => {
  let shards: Shards | undefined;
  let unlock: (() => void) | undefined;

  beforeAll(async () => {
    unlock = await lockMigrationTests();
    shards = await startShards(2, { replicas: 1 });
  }, 300_000);

  afterAll(async () => {
    try {
      await shards?.stopAll();
    } finally {
      unlock?.();
    }
  });

  it('builds the index on the promoted node at once (no command waits out its timeout on the dead one)', async () => {
    const { primaries, replicas } = shards!;
    const [oldPrimary, target] = [primaries[0]!, primaries[1]!];
    const promoted = replicas[0]![0]!;
    // Slots 0-8191 on the first primary, the rest on the second (what loadKeys writes).
    await loadKeys(primaries, KEYS);
    const direct = new Redis({ host: oldPrimary.host, port: oldPrimary.port });
    expect(await direct.call('WAIT', '1', '5000')).toBe(1);
    direct.disconnect();

    const owner = new Uint16Array(16384).fill(1, 8192);
    const host = new TestHost(new Topology(1, [shard(0, 's1', oldPrimary, [promoted]), shard(1, 's2', target, [])], owner));
    const mover = new SlotMover(host, { migrateTimeoutMs: MIGRATE_TIMEOUT_MS, password: null, keysPerSecond: KEYS_PER_SECOND });
    host.mover = mover;
    const moves: SlotMove[] = Array.from({ length: MOVED }, (_, slot) => ({ slot, from: 's1', to: 's2' }));
    const progress = new MigrationProgress();
    let doneAt = 0;
    const run = mover.run(moves, progress).then(() => (doneAt = Date.now()));
    run.catch(() => undefined);

    for (const deadline = Date.now() + 30_000; progress.keysMoved < KILL_AFTER_KEYS; await sleep(5)) {
      expect(Date.now(), `${progress.keysMoved} keys moved`).toBeLessThan(deadline);
    }
    const toPromote = new Redis({ host: promoted.host, port: promoted.port });
    await toPromote.ping();
    let failedOverAt = 0;
    host.onScanError = () => {
      failedOverAt = Date.now();
      host.publish(new Topology(host.topology.epoch + 1, [shard(0, 's1', promoted, []), host.topology.shards[1]!], host.topology.slotOwner, host.topology.migrations));
    };
    const killedAt = Date.now();
    oldPrimary.kill('SIGKILL');
    // Promoted before the mover can notice the kill (its first retry comes 100 ms after it).
    await toPromote.call('REPLICAOF', 'NO', 'ONE');
    toPromote.disconnect();

    await Promise.race([run, sleep(40_000)]);
    expect(doneAt, `plan not done 40 s after the kill: ${JSON.stringify(progress)}`).toBeGreaterThan(0);
    const afterKillMs = doneAt - killedAt;
    console.log(
      'source failover during indexing',
      JSON.stringify({ keysMovedAtKill: KILL_AFTER_KEYS, failedOverMs: failedOverAt - killedAt, afterKillMs, keysMoved: progress.keysMoved, errors: host.errors }),
    );
    // The snapshot came while the mover was reacting to the index's loss (the race).
    expect(failedOverAt).toBeGreaterThan(0);
    // The ~1,600 keys left move in under a second at this pace; the index is built again at once.
    expect(afterKillMs).toBeLessThan(5_000);

    // Every key of the moved slots is on the target, with its value; none is left on the promoted node.
    const check = new Redis({ host: target.host, port: target.port });
    const left = new Redis({ host: promoted.host, port: promoted.port });
    try {
      const moved = Array.from({ length: KEYS }, (_, n) => n).filter((n) => slotOf(keyName(n)) < MOVED);
      const values = await check.mget(...moved.map(keyName));
      expect(moved.filter((n, i) => values[i] !== initialValue(n)).slice(0, 5)).toEqual([]);
      const remaining = await left.mget(...moved.map(keyName));
      expect(remaining.filter((v) => v !== null)).toEqual([]);
      expect(await left.keys('*slotproxy*')).toEqual([]);
    } finally {
      check.disconnect();
      left.disconnect();
    }
  }, 120_000);
});
