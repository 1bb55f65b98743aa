import { Socket } from 'node:net';
import { sharedRead } from '../io/shared-read-buffer';

/**
 * Client sockets read through one shared buffer instead of Node's stream path.
 *
 * Node's `onread` option (a caller's buffer, a callback per read, no `'data'` event) is public
 * for sockets a program connects, not for those a server accepts. Its stream path costs, per
 * socket read: a new ArrayBuffer with its own malloc'd backing store, a `Readable` push, a
 * `maybeReadMore` tick and a `processPromiseRejections` pass that allocates a Map. At `-P 1`
 * that is one read per request and 39% of everything the proxy allocated (1,500 -> 920 bytes
 * per GET); the young generation's collections that follow (a quarter of their pause spent
 * sweeping the dead ArrayBuffers) stall the ~1% of requests in flight at the time: the p99.
 *
 * This turns the same `onread` machinery on for an accepted socket: the two keys Node keeps the
 * buffer and callback under are found once on a probe socket made with `onread`, and the handle
 * is told to read into the buffer (`useUserBuffer`, what Node itself calls for `onread`
 * sockets). Node then keeps driving pause/resume, EOF and errors as for any `onread` socket.
 * The buffer is the one every socket shares (io/shared-read-buffer.ts). Where this Node does
 * not offer the pieces, sockets keep `'data'`.
 */

interface UserBufferKeys {
  readonly buffer: symbol;
  readonly callback: symbol;
}

type OnChunk = (chunk: Buffer) => void;
type HandleWithUserBuffer = { useUserBuffer?: (buffer: Uint8Array) => void };

let keys: UserBufferKeys | null | undefined;

function findUserBufferKeys(): UserBufferKeys | null {
  const buffer = Buffer.alloc(1);
  const callback = (): void => undefined;
  // @types/node lists `onread` for connect options only; Node's Socket constructor reads it.
  const probe = new Socket({ onread: { buffer, callback } } as ConstructorParameters<typeof Socket>[0]);
  try {
    const fields = probe as unknown as Record<symbol, unknown>;
    const own = Object.getOwnPropertySymbols(probe);
    const bufferKey = own.find((key) => fields[key] === buffer);
    const callbackKey = own.find((key) => fields[key] === callback);
    if (bufferKey === undefined || callbackKey === undefined) return null;
    return { buffer: bufferKey, callback: callbackKey };
  } finally {
    probe.destroy();
  }
}

/** True when accepted sockets can read through the shared buffer on this Node. */
export function canReadIntoSharedBuffer(): boolean {
  if (keys === undefined) keys = findUserBufferKeys();
  return keys !== null;
}

/**
 * Delivers `socket`'s bytes to `onChunk`, each chunk the caller's to keep, and starts reading.
 * The socket must not be reading yet (the server's `pauseOnConnect`).
 */
export function startReading(socket: Socket, onChunk: OnChunk): void {
  const handle = (socket as unknown as { _handle: HandleWithUserBuffer | null })._handle;
  if (canReadIntoSharedBuffer() && handle !== null && typeof handle.useUserBuffer === 'function') {
    const read = sharedRead(onChunk);
    const fields = socket as unknown as Record<symbol, unknown>;
    fields[keys!.buffer] = read.buffer;
    fields[keys!.callback] = read.callback;
    handle.useUserBuffer(read.buffer);
  } else {
    socket.on('data', onChunk);
  }
  socket.resume();
}
