import { createServer, connect, type Server, type Socket } from 'node:net';

import { afterEach, describe, expect, it } from 'vitest';

import { canWriteDirectly, SocketWriter } from '../../src/io/socket-writer';

const open: { close: () => void }[] = [];
afterEach(() => {
  for (const thing of open.splice(0)) thing.close();
});

/** A loopback pair: `accepted` is the server's side, `peer` the client's (not reading until asked). */
async function socketPair(): Promise<{ accepted: Socket; peer: Socket }> {
  let accepted: Socket | null = null;
  const server: Server = createServer((socket) => (accepted = socket));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  open.push({ close: () => server.close() });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  const peer = connect(address.port, '127.0.0.1');
  peer.pause();
  open.push({ close: () => peer.destroy() });
  await new Promise<void>((resolve, reject) => peer.once('connect', resolve).once('error', reject));
  await until(() => accepted !== null, 'the accepted socket');
  open.push({ close: () => accepted!.destroy() });
  return { accepted: accepted!, peer };
}

const until = async (check: () => boolean, what: string): Promise<void> => {
  const deadline = Date.now() + 5_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
};

function collect(peer: Socket): Buffer[] {
  const chunks: Buffer[] = [];
  peer.on('data', (chunk: Buffer) => chunks.push(chunk));
  return chunks;
}

const total = (chunks: readonly Buffer[]): number => chunks.reduce((sum, chunk) => sum + chunk.length, 0);

describe('SocketWriter: writes to the handle directly, in order, with backpressure seen', () => {
  it('is available on the Node.js this project runs on (else every write goes through socket.write)', () => {
    expect(canWriteDirectly()).toBe(true);
  });

  it('writes without Node\'s stream holding anything while the kernel takes it at once', async () => {
    const { accepted, peer } = await socketPair();
    const writer = new SocketWriter(accepted);
    const chunks = collect(peer);
    peer.resume();
    for (let i = 0; i < 100; i++) writer.write(Buffer.from(`+reply ${i}\r\n`));
    expect(accepted.writableLength).toBe(0);
    expect(writer.pendingBytes).toBe(0);
    const expected = Array.from({ length: 100 }, (_, i) => `+reply ${i}\r\n`).join('');
    await until(() => total(chunks) === expected.length, 'every reply');
    expect(Buffer.concat(chunks).toString()).toBe(expected);
  });

  it('counts what the kernel could not take, keeps order across direct and stream writes, and calls onDrain', async () => {
    const { accepted, peer } = await socketPair();
    let drains = 0;
    const writer = new SocketWriter(accepted, () => drains++);
    // The peer reads nothing: the socket buffers fill and writes are left pending in libuv.
    const sent: Buffer[] = [];
    for (let i = 0; i < 200 && writer.pendingBytes === 0; i++) {
      const bytes = Buffer.alloc(64 * 1024, 65 + (i % 26));
      sent.push(bytes);
      writer.write(bytes);
    }
    expect(writer.pendingBytes).toBeGreaterThan(0);
    // Later writes queue behind what waits, direct ones in libuv's queue, stream ones after them.
    for (let i = 0; i < 5; i++) {
      const bytes = Buffer.from(`tail ${i};`);
      sent.push(bytes);
      writer.write(bytes);
    }
    const cork = Buffer.alloc(200_000, 122);
    sent.push(cork);
    accepted.cork();
    accepted.write(cork);
    accepted.uncork();
    const pendingBeforeRead = writer.pendingBytes;
    expect(pendingBeforeRead).toBeGreaterThan(200_000);
    const chunks = collect(peer);
    peer.resume();
    const expected = Buffer.concat(sent);
    await until(() => total(chunks) === expected.length, 'every byte');
    expect(Buffer.concat(chunks).equals(expected)).toBe(true);
    await until(() => writer.pendingBytes === 0, 'the writes to complete');
    expect(drains).toBeGreaterThan(0);
    // With nothing waiting, writes go direct again.
    writer.write(Buffer.from('after'));
    expect(accepted.writableLength).toBe(0);
  });

  it('a write after the peer has gone, or after destroy, neither throws nor crashes; the socket closes', async () => {
    const { accepted, peer } = await socketPair();
    const writer = new SocketWriter(accepted);
    let closed = false;
    accepted.on('error', () => undefined);
    accepted.on('close', () => (closed = true));
    peer.destroy();
    await new Promise((resolve) => setTimeout(resolve, 20));
    for (let i = 0; i < 20 && !accepted.destroyed; i++) {
      writer.write(Buffer.alloc(16 * 1024, 1));
      await new Promise((resolve) => setImmediate(resolve));
    }
    await until(() => closed, 'the socket to close');
    expect(() => writer.write(Buffer.from('late'))).not.toThrow();
  });
});
