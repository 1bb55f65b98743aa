import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { calculateSlot } from '../../src/routing/key-slot';
import { Topology } from '../../src/topology/topology';
import { startInProcessDataPath, type InProcessDataPath } from '../helpers/in-process-data-path';

/**
 * A slot that has just begun migrating, with several connections per node: a command routed to
 * the source by the snapshot before may still be on its way there on another connection than
 * the key moves', so no key of the slot moves before the snapshot's `movesFrom`. Commands on
 * the slot wait until then (the key stays whole on the source meanwhile), then move it and run
 * on the target; commands on other slots go on as usual.
 */

const SETTLE_MS = 400;
const KEY = 'settling:counter';
const OTHER = 'settling:elsewhere';

let deployment: InProcessDataPath;
let from = 0;

beforeAll(async () => {
  deployment = await startInProcessDataPath(['connectionsPerNode: 2']);
  from = deployment.base.slotOwner[calculateSlot(KEY)]!;
  const source = new Redis({ host: '127.0.0.1', port: deployment.shards.primaries[from]!.port });
  await source.set(KEY, '10');
  source.disconnect();
});

afterAll(async () => {
  await deployment?.close();
});

describe('a slot that has just begun migrating, with movesFrom', () => {
  it('moves no key of it before movesFrom, then runs its commands on the target; other slots do not wait', async () => {
    const { shards, proxy, store, base } = deployment;
    const [source, target] = [shards.primaries[from]!, shards.primaries[1 - from]!].map((node) => new Redis({ host: node.host, port: node.port }));
    const client = new Redis({ host: '127.0.0.1', port: proxy.port });
    // Replies come in order per client: the command on another slot goes on a connection of its own.
    const other = new Redis({ host: '127.0.0.1', port: proxy.port });
    try {
      await client.set(OTHER, 'x');
      const slot = calculateSlot(KEY);
      const publishedAt = Date.now();
      store.publish(new Topology(base.epoch + 1, base.shards, base.slotOwner, new Map([[slot, { from, to: 1 - from, movesFrom: publishedAt + SETTLE_MS }]])));

      const incr = client.incr(KEY).then((value) => ({ value, at: Date.now() }));
      // Meanwhile: the key is whole on the source, and a command on another slot is answered at once.
      const otherStartedAt = Date.now();
      expect(await other.get(OTHER)).toBe('x');
      expect(Date.now() - otherStartedAt).toBeLessThan(SETTLE_MS / 2);
      await new Promise((resolve) => setTimeout(resolve, SETTLE_MS / 2));
      expect(await source!.get(KEY)).toBe('10');
      expect(await target!.exists(KEY)).toBe(0);

      const answered = await incr;
      expect(answered.value).toBe(11);
      expect(answered.at - publishedAt).toBeGreaterThanOrEqual(SETTLE_MS - 5);
      expect(answered.at - publishedAt).toBeLessThan(SETTLE_MS + 1_000);
      expect(await source!.exists(KEY)).toBe(0);
      expect(await target!.get(KEY)).toBe('11');
    } finally {
      client.disconnect();
      other.disconnect();
      source!.disconnect();
      target!.disconnect();
    }
  });
});
