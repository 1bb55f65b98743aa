import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { calculateSlot } from '../../src/routing/key-slot';
import { Topology } from '../../src/topology/topology';
import { startInProcessDataPath, type InProcessDataPath } from '../helpers/in-process-data-path';

/**
 * EVALSHA of a script the proxy knows, on a key of a migrating slot: the key moves to the
 * target, which never loaded the script (it ran by EVAL on the source only; Redis keeps a
 * script cache per node), so the target gets SCRIPT LOAD in front of the EVALSHA. The client
 * sees its result, not NOSCRIPT, and in its order with what it pipelined behind.
 */

const KEY = 'scripted:counter';
const SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])";

let deployment: InProcessDataPath;
let from = 0;

beforeAll(async () => {
  deployment = await startInProcessDataPath([]);
  from = deployment.base.slotOwner[calculateSlot(KEY)]!;
});

afterAll(async () => {
  await deployment?.close();
});

describe('EVALSHA on a key of a migrating slot', () => {
  it('runs on the target with the script loaded there first, in the client\'s order', async () => {
    const { shards, store, base } = deployment;
    const client = new Redis({ host: '127.0.0.1', port: deployment.proxy.port });
    const [source, target] = [shards.primaries[from]!, shards.primaries[1 - from]!].map((node) => new Redis({ host: node.host, port: node.port }));
    try {
      // EVAL loads the script on the key's owner only.
      expect(await client.eval(SCRIPT, 1, KEY, 5)).toBe(5);
      const sha = (await source!.script('LOAD', SCRIPT)) as string;
      expect(await target!.script('EXISTS', sha)).toEqual([0]);

      store.publish(new Topology(base.epoch + 1, base.shards, base.slotOwner, new Map([[calculateSlot(KEY), { from, to: 1 - from }]])));
      const replies = await client.pipeline().evalsha(sha, 1, KEY, 10).incrby(KEY, 100).evalsha(sha, 1, KEY, 1000).exec();
      expect(replies).toEqual([
        [null, 15],
        [null, 115],
        [null, 1115],
      ]);
      expect(await source!.exists(KEY)).toBe(0);
      expect(await target!.get(KEY)).toBe('1115');
      expect(await target!.script('EXISTS', sha)).toEqual([1]);
    } finally {
      client.disconnect();
      source!.disconnect();
      target!.disconnect();
    }
  });
});
