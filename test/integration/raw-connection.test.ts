import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RawConnection, RawReplyError } from '../../src/control/raw-connection';
import { SlotKeyIndex } from '../../src/control/slot-key-index';
import { Pacer } from '../../src/control/slot-mover';
import { keySlot } from '../../src/routing/key-slot';
import { startShards, type Shards } from '../helpers/redis-harness';

/**
 * The slot mover's lean connection against a real redis-server: parsed replies and raw reply
 * bytes (sendForBytes) in one pipeline, replies larger than a socket read, an error failing only
 * its command; and the key index built from SCAN replies walked in place.
 */

let shards: Shards;
const connections: RawConnection[] = [];
const KEYS = 20_000;

beforeAll(async () => {
  shards = await startShards(1);
  const node = shards.primaries[0]!;
  const redis = new Redis({ host: node.host, port: node.port });
  const pipeline = redis.pipeline();
  // Long names, so one SCAN reply spans several socket reads.
  for (let n = 0; n < KEYS; n++) pipeline.set(`raw:${'x'.repeat(40)}:${n}`, String(n));
  await pipeline.exec();
  redis.disconnect();
});

afterAll(async () => {
  for (const connection of connections) connection.close();
  await shards.stopAll();
});

function connect(): RawConnection {
  const node = shards.primaries[0]!;
  const made = new RawConnection({ address: { host: node.host, port: node.port }, password: null, timeoutMs: 5_000 });
  connections.push(made);
  return made;
}

describe('RawConnection', () => {
  it('answers parsed and raw requests in one pipeline, in order, an error failing only its own', async () => {
    const connection = connect();
    const [pong, raw, error, rawError, value] = await Promise.allSettled([
      connection.send(['PING']),
      connection.sendForBytes(['MGET', 'raw:none', `raw:${'x'.repeat(40)}:7`]),
      connection.send(['NOSUCHCOMMAND']),
      connection.sendForBytes(['NOSUCHCOMMAND']),
      connection.send(['GET', `raw:${'x'.repeat(40)}:8`]),
    ]);
    expect(pong).toEqual({ status: 'fulfilled', value: Buffer.from('PONG') });
    expect(raw.status === 'fulfilled' && raw.value.toString()).toBe('*2\r\n$-1\r\n$1\r\n7\r\n');
    expect(error.status === 'rejected' && error.reason).toBeInstanceOf(RawReplyError);
    expect(rawError.status === 'rejected' && (rawError.reason as Error).message).toMatch(/^ERR unknown command/);
    expect(value).toEqual({ status: 'fulfilled', value: Buffer.from('8') });
  });

  it('gives a reply of many socket reads whole, as bytes or parsed', async () => {
    const connection = connect();
    const [bytes, parsed] = await Promise.all([
      connection.sendForBytes(['SCAN', '0', 'COUNT', String(KEYS * 2)]),
      connection.send(['SCAN', '0', 'COUNT', String(KEYS * 2)]),
    ]);
    const [cursor, keys] = parsed as [Buffer, Buffer[]];
    expect(cursor.toString()).toBe('0');
    expect(keys.length).toBe(KEYS);
    expect(bytes.length).toBeGreaterThan(64 * 1024);
    expect(bytes.subarray(0, 13).toString()).toBe('*2\r\n$1\r\n0\r\n*2');
    expect(bytes.subarray(bytes.length - 2).toString()).toBe('\r\n');
  });
});

describe('SlotKeyIndex', () => {
  it('holds exactly the keys of the wanted slots after one scan', async () => {
    const node = shards.primaries[0]!;
    const address = { host: node.host, port: node.port };
    const wanted = new Set<number>();
    for (let slot = 0; slot < 16384; slot += 4) wanted.add(slot);
    const expected: string[] = [];
    for (let n = 0; n < KEYS; n++) {
      const key = Buffer.from(`raw:${'x'.repeat(40)}:${n}`);
      if (wanted.has(keySlot(key, 0, key.length))) expected.push(key.toString('latin1'));
    }
    const index = SlotKeyIndex.create({ address, password: null, slots: wanted, commandTimeoutMs: 5_000 });
    const control = connect();
    await index.build(control, connect(), new Pacer(0));
    try {
      expect(index.size).toBe(expected.length);
      const taken = index.take(wanted).map((key) => key.toString('latin1'));
      expect(taken.sort()).toEqual(expected.sort());
      expect(index.size).toBe(0);
    } finally {
      await index.close(control);
    }
  });
});
