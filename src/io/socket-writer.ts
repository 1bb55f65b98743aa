import type { Socket } from 'node:net';
import { getSystemErrorName } from 'node:util';

import type { OutputTarget } from './output-buffer';

/**
 * Writes a socket's output to its handle directly, skipping Node's `Writable` where that is safe.
 *
 * `socket.write` allocates per call a `WriteWrap` with six fields set, an after-write record and
 * a `process.nextTick` entry: ~215 bytes, 36% of all the proxy allocates per GET at `-P 1`
 * (one write per request there), and young-generation collections, which stall the requests in
 * flight, come in proportion. Here one write request object is reused for every write the kernel
 * takes at once (nearly all: loopback sockets with room in their buffer); only a write left
 * pending gets a new one, kept until it completes, as Node does.
 *
 * Order is kept by writing directly only while Node's own stream holds nothing
 * (`writableLength` 0): everything queued before is then already with libuv, which writes its
 * queue in order, and a later `socket.write` or `end()` queues behind ours. Where this Node lacks
 * the pieces (`process.binding('stream_wrap')`), every write goes through `socket.write`.
 */

interface WriteRequest {
  buffer: Buffer | readonly Buffer[] | null;
  oncomplete: ((this: WriteRequest, status: number) => void) | null;
  writer: SocketWriter | null;
  bytes: number;
}

interface StreamHandle {
  writeBuffer(req: WriteRequest, data: Buffer): number;
  writev(req: WriteRequest, chunks: readonly Buffer[], allBuffers: boolean): number;
}

interface StreamBinding {
  readonly WriteWrap: new () => WriteRequest;
  readonly streamBaseState: Int32Array;
  readonly kBytesWritten: number;
  readonly kLastWriteWasAsync: number;
}

function loadBinding(): StreamBinding | null {
  try {
    const binding = (process as unknown as { binding(name: string): Partial<StreamBinding> }).binding('stream_wrap');
    const { WriteWrap, streamBaseState, kBytesWritten, kLastWriteWasAsync } = binding;
    if (typeof WriteWrap !== 'function' || !(streamBaseState instanceof Int32Array)) return null;
    if (typeof kBytesWritten !== 'number' || typeof kLastWriteWasAsync !== 'number') return null;
    return { WriteWrap, streamBaseState, kBytesWritten, kLastWriteWasAsync };
  } catch {
    return null;
  }
}

const binding = loadBinding();
/** The request object reused while writes complete at once (the event loop is one thread). */
let spareRequest: WriteRequest | null = null;

/** True when writes skip `Writable` on this Node. */
export function canWriteDirectly(): boolean {
  return binding !== null;
}

/** As Node words it: `write EPIPE`. */
function writeError(status: number): Error {
  return new Error(`write ${getSystemErrorName(status)}`);
}

function takeRequest(): WriteRequest {
  const req = spareRequest;
  if (req !== null) {
    spareRequest = null;
    return req;
  }
  const fresh = new binding!.WriteWrap();
  fresh.oncomplete = onWriteComplete;
  return fresh;
}

/** A request the kernel finished with at once is kept for the next write. */
function releaseRequest(req: WriteRequest): void {
  spareRequest = req;
}

function onWriteComplete(this: WriteRequest, status: number): void {
  const writer = this.writer;
  this.writer = null;
  this.buffer = null;
  writer?.onWriteDone(this.bytes, status);
}

export class SocketWriter implements OutputTarget {
  readonly #socket: Socket;
  readonly #onDrain: () => void;
  /** TLS sockets (a later wave) keep Node's stream: their handle's writes encrypt there. */
  readonly #canWriteDirectly: boolean;
  /** Bytes handed to libuv by direct writes that have not reached the kernel yet. */
  #pendingBytes = 0;

  /** `onDrain` runs when output that had to wait has all been written. */
  constructor(socket: Socket, onDrain: () => void = () => undefined) {
    this.#socket = socket;
    this.#onDrain = onDrain;
    this.#canWriteDirectly = binding !== null && (socket as { encrypted?: boolean }).encrypted !== true;
    socket.on('drain', onDrain);
  }

  /** Output accepted but not yet taken by the kernel. */
  get pendingBytes(): number {
    return this.#pendingBytes + this.#socket.writableLength;
  }

  write(data: Buffer): boolean {
    const handle = this.#directHandle();
    if (handle === null) {
      this.#socket.write(data);
      return false;
    }
    const req = takeRequest();
    return this.#afterWrite(req, handle.writeBuffer(req, data), data);
  }

  /** Large output: one gathered write (`writev`) of the first `count` parts. */
  writeAll(parts: readonly Buffer[], count: number): boolean {
    const handle = this.#directHandle();
    if (handle !== null) {
      // A copy of the array: the output buffer clears and reuses its own, and a write left
      // pending needs its chunks alive until it completes. (Large output only: rare.)
      const chunks = parts.slice(0, count);
      const req = takeRequest();
      return this.#afterWrite(req, handle.writev(req, chunks, true), chunks);
    }
    const socket = this.#socket;
    socket.cork();
    for (let i = 0; i < count; i++) socket.write(parts[i]!);
    socket.uncork();
    return false;
  }

  /** The handle to write to directly, or null when this write must go through the stream. */
  #directHandle(): StreamHandle | null {
    const socket = this.#socket;
    if (!this.#canWriteDirectly || socket.writableLength !== 0 || socket.destroyed || socket.writableEnded) return null;
    return (socket as unknown as { _handle: StreamHandle | null })._handle;
  }

  /** True when the kernel took every byte at once (or the write failed): nothing reads `data` after this. */
  #afterWrite(req: WriteRequest, err: number, data: Buffer | readonly Buffer[]): boolean {
    if (err !== 0) {
      releaseRequest(req);
      this.#socket.destroy(writeError(err));
      return true;
    }
    if (binding!.streamBaseState[binding!.kLastWriteWasAsync] === 0) {
      releaseRequest(req);
      return true;
    }
    // Left pending in libuv's queue: the request is this write's until it completes, and the
    // bytes must stay alive as long.
    req.buffer = data;
    req.writer = this;
    req.bytes = binding!.streamBaseState[binding!.kBytesWritten]!;
    this.#pendingBytes += req.bytes;
    return false;
  }

  /** @internal Called when a pending direct write completes (or fails, status < 0). */
  onWriteDone(bytes: number, status: number): void {
    this.#pendingBytes -= bytes;
    if (status < 0) {
      if (!this.#socket.destroyed) this.#socket.destroy(writeError(status));
      return;
    }
    if (this.#pendingBytes === 0 && this.#socket.writableLength === 0) this.#onDrain();
  }
}
