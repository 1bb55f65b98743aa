import Redis from 'ioredis';
import { readLength } from '../resp/reply-scanner';
import { keySlot } from '../routing/key-slot';
import type { NodeAddress } from '../topology/topology';
import { RawReplyError, type RawConnection } from './raw-connection';
import type { Pacer } from './slot-mover';

/**
 * The keys of the slots a source shard is giving away, found with one SCAN of the shard and
 * kept complete afterwards by Redis's "new key" notifications (notify-keyspace-events `En`,
 * Redis 7): a key created in one of those slots after the scan began arrives as an event. So
 * each group of slots can be moved from the index, with no further scan of the whole shard,
 * and the groups can be small, which keeps few slots (and few client commands) migrating at
 * any time.
 *
 * Completeness rests on the subscription being unbroken from before the scan to the last
 * take(): if the subscriber connection drops, the index says so (`isValid` false) and the
 * caller builds it again (or falls back to full scans).
 *
 * The settings and the scan go over the mover's lean connections (raw-connection.ts), which
 * never hold a command across a reconnect: closing one fails what waits on it at once, so a
 * build on a node that just failed over ends as soon as the mover drops that node.
 */

/** The shard cannot send the notifications (older than Redis 7, or CONFIG refused). */
export class KeyIndexUnavailableError extends Error {
  override readonly name = 'KeyIndexUnavailableError';
}

const CHANNEL = '__keyevent@0__:new';
/** Keys per SCAN step: small, so no step holds the shard or the proxy's event loop for long. */
const SCAN_COUNT = 250;

export interface KeyIndexOptions {
  readonly address: NodeAddress;
  readonly password: string | null;
  /** Slots whose keys to keep. */
  readonly slots: Iterable<number>;
  readonly commandTimeoutMs: number;
  /**
   * Keeps the node's notify-keyspace-events value from before it is changed, durably, so a
   * crash before close() does not leave the change for good (resolves once kept).
   */
  readonly keepOriginalFlags?: (flags: string) => Promise<void>;
}

export class SlotKeyIndex {
  readonly address: NodeAddress;
  /** slot -> its keys (as latin1 strings of their bytes: one small string each). Only wanted slots have an entry. */
  readonly #keys = new Map<number, Set<string>>();
  readonly #subscriber: Redis;
  /** The notify-keyspace-events value before we added `En`; null when we changed nothing. */
  #originalFlags: string | null = null;
  readonly #keepOriginalFlags: ((flags: string) => Promise<void>) | undefined;
  #isValid = true;

  private constructor(options: KeyIndexOptions, subscriber: Redis) {
    this.address = options.address;
    this.#keepOriginalFlags = options.keepOriginalFlags;
    this.#subscriber = subscriber;
    for (const slot of options.slots) this.#keys.set(slot, new Set());
  }

  /**
   * An index with nothing in it yet; build() fills it. Made first so the caller can close it
   * while it is being built (its node failed over meanwhile).
   */
  static create(options: KeyIndexOptions): SlotKeyIndex {
    const subscriber = new Redis({
      host: options.address.host,
      port: options.address.port,
      password: options.password ?? undefined,
      enableReadyCheck: false,
      maxRetriesPerRequest: 1,
      connectTimeout: 2_000,
      commandTimeout: options.commandTimeoutMs,
      // A dropped subscription loses events: the index is then invalid, never silently resumed.
      retryStrategy: () => null,
      autoResubscribe: false,
    });
    subscriber.on('error', () => undefined);
    const index = new SlotKeyIndex(options, subscriber);
    subscriber.on('close', () => (index.#isValid = false));
    subscriber.on('messageBuffer', (_channel: Buffer, key: Buffer) => index.#add(key));
    return index;
  }

  /**
   * Subscribes, turns the notifications on (through `control`), then scans the shard once.
   * On failure the index is closed.
   */
  async build(control: RawConnection, scanner: RawConnection, pacer: Pacer): Promise<void> {
    try {
      await this.#enableNotifications(control);
      await this.#subscriber.subscribe(CHANNEL);
      let cursor = '0';
      do {
        if (!this.#isValid) throw new Error('the key index was closed while it was built');
        const reply = await scanner.sendForBytes(['SCAN', cursor, 'COUNT', String(SCAN_COUNT)]);
        let scanned = 0;
        cursor = walkScanReply(reply, (bytes, start, end) => {
          scanned++;
          this.#addBytes(bytes, start, end);
        });
        await pacer.take(scanned);
      } while (cursor !== '0');
    } catch (err) {
      await this.close(control);
      throw err;
    }
  }

  get isValid(): boolean {
    return this.#isValid;
  }

  /** Keys indexed for the wanted slots, in all. */
  get size(): number {
    let n = 0;
    for (const keys of this.#keys.values()) n += keys.size;
    return n;
  }

  /**
   * Resolves once every notification the shard queued before this call has been received (a
   * PING answered on the subscriber connection comes after them).
   */
  async barrier(): Promise<void> {
    await this.#subscriber.ping();
  }

  /** Removes and returns the indexed keys of `slots`. */
  take(slots: Iterable<number>): Buffer[] {
    const keys: Buffer[] = [];
    for (const slot of slots) {
      const entry = this.#keys.get(slot);
      if (entry === undefined) continue;
      for (const key of entry) keys.push(Buffer.from(key, 'latin1'));
      entry.clear();
    }
    return keys;
  }

  /** Puts keys back (a batch failed: the next take() tries them again). */
  restore(keys: readonly Buffer[]): void {
    for (const key of keys) this.#add(key);
  }

  /** Stops watching `slots` (they are done). */
  forget(slots: Iterable<number>): void {
    for (const slot of slots) this.#keys.delete(slot);
  }

  /** Unsubscribes, and puts notify-keyspace-events back as it was through `control` (not when null). */
  async close(control: RawConnection | null): Promise<void> {
    this.#isValid = false;
    this.#subscriber.disconnect();
    if (this.#originalFlags !== null && control !== null) {
      await control.send(['CONFIG', 'SET', 'notify-keyspace-events', this.#originalFlags]).catch(() => undefined);
      this.#originalFlags = null;
    }
  }

  #add(key: Buffer): void {
    this.#addBytes(key, 0, key.length);
  }

  /** Indexes the key in `bytes[start, end)` when its slot is wanted (only then is it copied out). */
  #addBytes(bytes: Buffer, start: number, end: number): void {
    const entry = this.#keys.get(keySlot(bytes, start, end));
    if (entry !== undefined) entry.add(bytes.toString('latin1', start, end));
  }

  async #enableNotifications(control: RawConnection): Promise<void> {
    let flags: string;
    try {
      const reply = (await control.send(['CONFIG', 'GET', 'notify-keyspace-events'])) as Buffer[];
      flags = reply[1]?.toString() ?? '';
      const wanted = `${flags}${flags.includes('E') ? '' : 'E'}${flags.includes('n') ? '' : 'n'}`;
      if (wanted !== flags) {
        await this.#keepOriginalFlags?.(flags);
        await control.send(['CONFIG', 'SET', 'notify-keyspace-events', wanted]);
        this.#originalFlags = flags;
      }
    } catch (err) {
      // Only the shard's refusal means it cannot send them; a lost or timed-out connection (a
      // source failing over) is tried again by the mover.
      if (!(err instanceof RawReplyError)) throw err;
      throw new KeyIndexUnavailableError(`new-key notifications cannot be turned on: ${(err as Error).message}`);
    }
  }
}

/**
 * Walks a SCAN reply's bytes (`*2`, the cursor, then `*N` and N keys) in place: calls `onKey` with
 * each key's bounds and returns the next cursor. Three quarters or more of a source's keys are in
 * slots it keeps, so most keys are looked at (their slot) and never copied.
 */
export function walkScanReply(reply: Buffer, onKey: (bytes: Buffer, start: number, end: number) => void): string {
  let at = 0;
  const header = (type: number): number => {
    const lineEnd = reply.indexOf(13, at);
    if (reply[at] !== type || lineEnd < 0) throw new Error(`not a SCAN reply: ${reply.toString('latin1', at, at + 20)}`);
    let value: number;
    try {
      value = readLength(reply, at + 1, lineEnd);
    } catch {
      value = -1;
    }
    if (value < 0) throw new Error(`not a SCAN reply: ${reply.toString('latin1', at + 1, lineEnd)} is not a number`);
    at = lineEnd + 2;
    return value;
  };
  if (header(42) !== 2) throw new Error('not a SCAN reply: not a pair');
  const cursorLength = header(36);
  const cursor = reply.toString('latin1', at, at + cursorLength);
  at += cursorLength + 2;
  const count = header(42);
  for (let i = 0; i < count; i++) {
    const length = header(36);
    if (at + length + 2 > reply.length) throw new Error('not a SCAN reply: a key runs past its end');
    onKey(reply, at, at + length);
    at += length + 2;
  }
  return cursor;
}
