import { connect } from 'node:net';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeCommand } from '../../src/resp/resp-writer';
import { calculateSlot } from '../../src/routing/key-slot';
import { Topology } from '../../src/topology/topology';
import { startInProcessDataPath, type InProcessDataPath } from '../helpers/in-process-data-path';

/**
 * Many commands on one key of a migrating slot at once (one client's pipeline): the first
 * moves the key, every one is answered in order, none waits out keyMoveWaitMs. Five or more in
 * flight to one target used to wait for each other (each parked behind a later one on the key)
 * until keyMoveWaitMs, then all failed with TRYAGAIN.
 */

let deployment: InProcessDataPath;
/** The shard index the key's slot migrates from. */
let from = 0;
const KEY = 'pipelined:counter';

beforeAll(async () => {
  const slot = calculateSlot(KEY);
  deployment = await startInProcessDataPath(['keyMoveWaitMs: 5000'], (base) => {
    from = base.slotOwner[slot]!;
    return new Topology(base.epoch, base.shards, base.slotOwner, new Map([[slot, { from, to: 1 - from }]]));
  });
  const source = new Redis({ host: '127.0.0.1', port: deployment.shards.primaries[from]!.port });
  await source.set(KEY, '0');
  source.disconnect();
});

afterAll(async () => {
  await deployment?.close();
});

/** Sends `commands` in one write and resolves with the replies' text once `count` lines came. */
function pipeline(port: number, commands: readonly string[][], lines: number): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    let text = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`only ${text.split('\r\n').length - 1} of ${lines} lines within 10 s`));
    }, 10_000);
    socket.on('connect', () => socket.write(Buffer.concat(commands.map((c) => encodeCommand(c)))));
    socket.on('data', (chunk: Buffer) => {
      text += chunk.toString('latin1');
      const got = text.split('\r\n').slice(0, -1);
      if (got.length >= lines) {
        clearTimeout(timer);
        socket.destroy();
        resolve(got);
      }
    });
    socket.on('error', reject);
  });
}

describe('a pipeline on one key of a migrating slot', () => {
  it('gets 50 INCRs answered 1..50 in order, promptly, and the key ends on the target only', async () => {
    const startedAt = Date.now();
    const replies = await pipeline(deployment.proxy.port, Array.from({ length: 50 }, () => ['INCR', KEY]), 50);
    expect(replies).toEqual(Array.from({ length: 50 }, (_, i) => `:${i + 1}`));
    expect(Date.now() - startedAt).toBeLessThan(1_000);
    const [source, target] = [deployment.shards.primaries[from]!, deployment.shards.primaries[1 - from]!].map((node) => new Redis({ host: node.host, port: node.port }));
    try {
      expect(await source!.exists(KEY)).toBe(0);
      expect(await target!.get(KEY)).toBe('50');
    } finally {
      source!.disconnect();
      target!.disconnect();
    }
  });
});
