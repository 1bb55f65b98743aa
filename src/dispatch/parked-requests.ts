import type { ReplySink } from '../backend/reply-sink';
import { encodeError } from '../resp/resp-writer';
import type { KnownScript } from './special-sinks';

/** A request held while its shard fails over. */
export interface ParkedRequest {
  /** Shard index; stable across a failover. */
  readonly shard: number;
  /** The request bytes (views of the client's chunks). */
  readonly request: Buffer | readonly Buffer[];
  readonly sink: ReplySink;
  readonly clientId: number;
  readonly isWrite: boolean;
  readonly isReadonly: boolean;
  /** Milliseconds since the epoch after which it fails instead of waiting longer. */
  readonly deadline: number;
  /** An EVALSHA whose script the proxy knows: sent again as one, so NOSCRIPT is healed (or avoided) on the new primary. */
  readonly script?: KnownScript;
}

/**
 * Requests for shards in failover, in arrival order. They are re-sent when a snapshot shows
 * the shard with its new primary, or failed once failoverWaitMs has passed.
 */
export class ParkedRequests {
  #requests: ParkedRequest[] = [];
  #timer: NodeJS.Timeout | null = null;
  readonly #onExpired: (expired: ParkedRequest[]) => void;

  constructor(onExpired: (expired: ParkedRequest[]) => void) {
    this.#onExpired = onExpired;
  }

  get length(): number {
    return this.#requests.length;
  }

  park(request: ParkedRequest): void {
    this.#requests.push(request);
    if (this.#timer === null) {
      this.#timer = setInterval(() => this.#expire(), 25);
      this.#timer.unref();
    }
  }

  /** Removes and returns the requests `isReady` accepts, keeping the others in order. */
  release(isReady: (shard: number) => boolean): ParkedRequest[] {
    const released: ParkedRequest[] = [];
    const kept: ParkedRequest[] = [];
    for (const request of this.#requests) (isReady(request.shard) ? released : kept).push(request);
    this.#requests = kept;
    this.#stopTimerIfIdle();
    return released;
  }

  close(): void {
    const all = this.#requests;
    this.#requests = [];
    this.#stopTimerIfIdle();
    const error = encodeError('ERR slotproxy is shutting down');
    for (const request of all) request.sink.onFailure(error);
  }

  #expire(): void {
    const now = Date.now();
    const expired = this.#requests.filter((r) => r.deadline <= now);
    if (expired.length === 0) return;
    this.#requests = this.#requests.filter((r) => r.deadline > now);
    this.#stopTimerIfIdle();
    this.#onExpired(expired);
  }

  #stopTimerIfIdle(): void {
    if (this.#requests.length === 0 && this.#timer !== null) {
      clearInterval(this.#timer);
      this.#timer = null;
    }
  }
}
