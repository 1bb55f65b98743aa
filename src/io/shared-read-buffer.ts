import { copyRange } from './byte-copy';

/** The most one read takes: as much as Node's own reads (libuv suggests 64 KiB). */
const READ_BUFFER_BYTES = 64 * 1024;

let sharedBuffer: Buffer | null = null;

/** Node's `onread` option: where a socket reads into, and what it calls per read (false pauses). */
export interface SharedRead {
  readonly buffer: Buffer;
  readonly callback: (length: number, bytes: Buffer) => boolean;
}

/**
 * Reads through one buffer shared by every socket of the process (client and backend alike),
 * instead of Node's stream path, which makes a new ArrayBuffer with its own malloc'd backing
 * store per read, plus a `Readable` push and a `maybeReadMore` tick. Those ArrayBuffers are what
 * young-generation collections spend a quarter of their pause sweeping. The event loop is one
 * thread and each read is copied out before the callback returns, so one buffer serves all:
 * `onChunk` gets a chunk of its own (pooled memory for small reads) to keep views of.
 */
export function sharedRead(onChunk: (chunk: Buffer) => void): SharedRead {
  return {
    buffer: theSharedBuffer(),
    callback: (length: number, bytes: Buffer): boolean => {
      const chunk = Buffer.allocUnsafe(length);
      copyRange(bytes, 0, length, chunk, 0);
      onChunk(chunk);
      return true;
    },
  };
}

/**
 * The same buffer without the copy: `onPassing` gets a view of the shared buffer, valid only
 * during the call (the next read, of any socket, overwrites it). For the backend connections,
 * whose replies are copied once, into the client's output (io/output-buffer.ts append), or kept
 * as copies by whatever holds them longer: the proxy then makes no memory per backend read,
 * where a new Buffer per read (~1 GB per 200,000 LRANGE 0 599 replies) kept V8 marking for it.
 */
export function passingRead(onPassing: (chunk: Buffer) => void): SharedRead {
  return {
    buffer: theSharedBuffer(),
    callback: (length: number, bytes: Buffer): boolean => {
      onPassing(bytes.subarray(0, length));
      return true;
    },
  };
}

function theSharedBuffer(): Buffer {
  if (sharedBuffer === null) sharedBuffer = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
  return sharedBuffer;
}
