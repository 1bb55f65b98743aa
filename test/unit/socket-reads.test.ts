import { createServer, connect, type Server, type Socket } from 'node:net';

import { afterEach, describe, expect, it } from 'vitest';

import { canReadIntoSharedBuffer, startReading } from '../../src/client/socket-reads';

/** A loopback server whose accepted sockets are handed to `onSocket` not yet reading. */
async function listen(onSocket: (socket: Socket) => void): Promise<{ server: Server; port: number }> {
  const server = createServer({ pauseOnConnect: true }, onSocket);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return { server, port: address.port };
}

const open: { close: () => void }[] = [];
afterEach(() => {
  for (const thing of open.splice(0)) thing.close();
});

async function connected(port: number): Promise<Socket> {
  const socket = connect(port, '127.0.0.1');
  open.push({ close: () => socket.destroy() });
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  return socket;
}

const until = async (check: () => boolean, what: string): Promise<void> => {
  const deadline = Date.now() + 5_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
};

describe('client socket reads through one shared buffer', () => {
  it('is available on the Node.js this project runs on (else every client falls back to data events)', () => {
    expect(canReadIntoSharedBuffer()).toBe(true);
  });

  it('hands each socket its own copies: chunks kept across many interleaved reads stay intact', async () => {
    const received = new Map<number, Buffer[]>();
    let next = 0;
    const { server, port } = await listen((socket) => {
      const chunks: Buffer[] = [];
      received.set(next++, chunks);
      startReading(socket, (chunk) => chunks.push(chunk));
    });
    open.push({ close: () => server.close() });
    const clients = [await connected(port), await connected(port), await connected(port)];
    await until(() => received.size === 3, 'three accepted sockets');
    const sent = clients.map(() => [] as Buffer[]);
    // Interleaved writes of different sizes, some beyond the shared buffer's 64 KiB.
    for (let round = 0; round < 60; round++) {
      clients.forEach((client, c) => {
        const size = round % 20 === 19 ? 100_000 + c : 1 + ((round * 37 + c * 11) % 500);
        const bytes = Buffer.alloc(size, 97 + ((round + c) % 26));
        sent[c]!.push(bytes);
        client.write(bytes);
      });
      await new Promise((resolve) => setImmediate(resolve));
    }
    const total = (chunks: readonly Buffer[]): number => chunks.reduce((sum, chunk) => sum + chunk.length, 0);
    await until(() => [0, 1, 2].every((c) => total(received.get(c)!) === total(sent[c]!)), 'every byte');
    for (let c = 0; c < 3; c++) expect(Buffer.concat(received.get(c)!).equals(Buffer.concat(sent[c]!))).toBe(true);
  });

  it('stops delivering while the socket is paused, goes on after resume, and ends with the peer', async () => {
    let socket: Socket | null = null;
    const chunks: string[] = [];
    let isClosed = false;
    const { server, port } = await listen((accepted) => {
      socket = accepted;
      accepted.on('close', () => (isClosed = true));
      startReading(accepted, (chunk) => chunks.push(chunk.toString()));
    });
    open.push({ close: () => server.close() });
    const client = await connected(port);
    client.write('first');
    await until(() => chunks.length === 1, 'the first chunk');
    socket!.pause();
    client.write('second');
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(chunks).toEqual(['first']);
    socket!.resume();
    await until(() => chunks.join('') === 'firstsecond', 'the second chunk');
    client.end();
    await until(() => isClosed, 'close after the peer ended');
  });

  it("falls back to 'data' events where the handle cannot read into a caller's buffer", async () => {
    const chunks: Buffer[] = [];
    const { server, port } = await listen((socket) => {
      // As on a Node.js without useUserBuffer.
      const handle = (socket as unknown as { _handle: Record<string, unknown> })._handle;
      handle['useUserBuffer'] = undefined;
      startReading(socket, (chunk) => chunks.push(chunk));
    });
    open.push({ close: () => server.close() });
    const client = await connected(port);
    client.write('*1\r\n$4\r\nPING\r\n');
    await until(() => Buffer.concat(chunks).toString() === '*1\r\n$4\r\nPING\r\n', 'the request');
  });
});
