import type { Socket } from 'node:net';

/** Below this many bytes, joining the pieces is cheaper than handing Node a writev of many. */
const JOIN_LIMIT = 64 * 1024;

/** Bytes queued for one socket during an event-loop turn, written in one go. */
export class OutputBuffer {
  #parts: Buffer[] = [];
  #length = 0;

  get length(): number {
    return this.#length;
  }

  push(part: Buffer): void {
    this.#parts.push(part);
    this.#length += part.length;
  }

  /** Writes everything queued as one write (joined when small, corked writev when large). */
  writeTo(socket: Socket): void {
    const parts = this.#parts;
    if (parts.length === 0) return;
    const length = this.#length;
    this.#parts = [];
    this.#length = 0;
    if (parts.length === 1) {
      socket.write(parts[0]!);
    } else if (length <= JOIN_LIMIT) {
      socket.write(Buffer.concat(parts, length));
    } else {
      socket.cork();
      for (const part of parts) socket.write(part);
      socket.uncork();
    }
  }

  clear(): void {
    this.#parts = [];
    this.#length = 0;
  }
}
