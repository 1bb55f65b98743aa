import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackendConnection } from '../../src/backend/backend-connection';
import type { ReplySink } from '../../src/backend/reply-sink';
import { NodeStats } from '../../src/metrics/data-path-stats';
import { encodeCommand } from '../../src/resp/resp-writer';
import { startShards, type Shards } from '../helpers/redis-harness';

/**
 * Which batches a backend connection finds worth holding one turn (`isWorthHolding`, asked by
 * the flush scheduler before it flushes the connection, which then holds it once: see
 * flush-scheduler.test.ts): a small one; never a large one or durable writes. Against a real
 * redis-server, so the held requests are seen to be answered.
 */

let shards: Shards;
const connections: BackendConnection[] = [];

beforeAll(async () => {
  shards = await startShards(1);
});

afterAll(async () => {
  for (const connection of connections) connection.close();
  await shards.stopAll();
});

function connection(minReplicaAcks = 0): BackendConnection {
  const node = shards.primaries[0]!;
  const made = new BackendConnection({
    address: { host: node.host, port: node.port },
    shardName: 's0',
    connectTimeoutMs: 1000,
    password: null,
    minReplicaAcks,
    replicaAckTimeoutMs: 50,
    commandTimeoutMs: 0,
    stats: new NodeStats('s0', `${node.host}:${node.port}`),
  });
  connections.push(made);
  return made;
}

/** A sink whose promise settles with the reply (or failure) as text. */
function reply(): { sink: ReplySink; text: Promise<string> } {
  let settle!: (text: string) => void;
  const text = new Promise<string>((resolve) => (settle = resolve));
  return { sink: { onReply: (frame) => settle(frame.toString('latin1')), onFailure: (error) => settle(error.toString('latin1')) }, text };
}

async function ready(backend: BackendConnection): Promise<void> {
  const ping = reply();
  backend.send(encodeCommand(['PING']), ping.sink);
  expect(await ping.text).toBe('+PONG\r\n');
}

describe('backend connection: small batches wait one turn', () => {
  it('finds a small batch worth holding, and its requests are answered (held once by the scheduler)', async () => {
    const backend = connection();
    await ready(backend);
    const set = reply();
    backend.send(encodeCommand(['SET', 'held', 'v']), set.sink);
    expect(backend.isWorthHolding()).toBe(true);
    expect(await set.text).toBe('+OK\r\n');
    // Nothing queued: nothing to hold.
    expect(backend.isWorthHolding()).toBe(false);
  });

  it('never holds a batch of 512 bytes or more', async () => {
    const backend = connection();
    await ready(backend);
    const set = reply();
    backend.send(encodeCommand(['SET', 'large', 'x'.repeat(600)]), set.sink);
    expect(backend.isWorthHolding()).toBe(false);
    expect(await set.text).toBe('+OK\r\n');
  });

  it('never holds durable writes (their WAIT goes with them)', async () => {
    const backend = connection(1);
    await ready(backend);
    const set = reply();
    backend.sendDurable(encodeCommand(['SET', 'durable', 'v']), set.sink);
    expect(backend.isWorthHolding()).toBe(false);
    // No replica: the write is refused confirmation once WAIT times out, as without the hold.
    expect(await set.text).toMatch(/^-NOREPLICAS /);
  });

  it('holds nothing on a connection that is not up yet', () => {
    const backend = connection();
    backend.send(encodeCommand(['PING']), reply().sink);
    expect(backend.isWorthHolding()).toBe(false);
  });
});
