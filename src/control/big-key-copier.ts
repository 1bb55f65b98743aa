import { keySlot } from '../routing/key-slot';
import { SLOT_COUNT } from '../topology/topology';
import type { RawReply } from './raw-connection';

/**
 * Moves one big key (a collection of thousands of elements, a multi-megabyte value) from the
 * source shard to the target in small steps, as Codis's async migration does, so neither shard
 * is held by one long MIGRATE: the value is read in chunks (HSCAN/SSCAN/ZSCAN, LRANGE ranges,
 * XRANGE, GETRANGE) and written to a temporary key on the target in the same slot; then, on the
 * target, RENAME makes it the real key (with its TTL) in one MULTI, and the source copy is
 * UNLINKed (freed off the main thread).
 *
 * The caller makes every command on the key wait while this runs (the key is locked in the
 * published snapshot, and the key-move script answers BIG for it), so the copy sees no writes.
 * Until the final UNLINK the source holds the whole key and stays its authority: a failure or a
 * crash before it leaves the key whole on the source (the temporary key is removed here, or
 * after a restart from the journal), and a crash between the RENAME and the UNLINK, or a copy
 * the target's replicas did not confirm (minReplicaAcks), leaves a copy on the target that the
 * next attempt replaces. A completed move leaves the key on one shard.
 */

/** Bytes a chunk should hold, roughly: large enough to be quick, small enough not to hold a shard. */
const CHUNK_BYTES = 64 * 1024;
const MAX_CHUNK_ELEMENTS = 500;
/** A string's bytes count as elements at this rate, for pacing. */
const BYTES_PER_ELEMENT = 100;
const MIN_CHUNK_ELEMENTS = 10;
/** Chunk writes awaited at once: reads of the next chunk overlap them. */
const WRITES_IN_FLIGHT = 2;

/** The key's type has no chunked copy here (a module type, a stream with consumer groups). */
export class UnchunkableKeyError extends Error {
  override readonly name = 'UnchunkableKeyError';
}

/** The copy did not come out the size of the source (it changed meanwhile); nothing was moved. */
export class CopyMismatchError extends Error {
  override readonly name = 'CopyMismatchError';
}

export type BigKeyOutcome = 'moved' | 'gone';

/** A tag per slot: `{tag}` makes any key name hash to that slot. */
let slotTags: string[] | null = null;

function tagForSlot(slot: number): string {
  if (slotTags === null) {
    const tags: string[] = new Array<string>(SLOT_COUNT);
    let found = 0;
    for (let n = 0; found < SLOT_COUNT; n++) {
      const tag = n.toString(36);
      const bytes = Buffer.from(tag);
      const s = keySlot(bytes, 0, bytes.length);
      if (tags[s] === undefined) {
        tags[s] = tag;
        found++;
      }
    }
    slotTags = tags;
  }
  return slotTags[slot]!;
}

/** The temporary name on the target: same slot as `key`, and unmistakably slotproxy's. */
export function tempKeyFor(key: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`{${tagForSlot(keySlot(key, 0, key.length))}}slotproxy:moving:`), key]);
}

/** Waits before a chunk of `elements` elements is read (the mover's pacing). */
export type Pace = (elements: number) => Promise<void>;

/** A connection to send commands on (RawConnection; anything with the same send()). */
export interface CommandSender {
  send(args: readonly (Buffer | string)[]): Promise<RawReply>;
}

/**
 * Copies `key` from `source` to `target` in chunks, then replaces it on the target and removes
 * it from the source. 'gone' when the key no longer exists (or expired) on the source.
 * `confirm`, when given, runs between the two (the target's replicas have the key); if it
 * throws, the key stays on the source.
 * @throws UnchunkableKeyError before anything is written, for types it cannot chunk
 */
export async function moveBigKey(source: CommandSender, target: CommandSender, key: Buffer, pace: Pace, confirm: (() => Promise<void>) | null = null): Promise<BigKeyOutcome> {
  const temp = tempKeyFor(key);
  const type = String(await source.send(['TYPE', key]));
  if (type === 'none') return 'gone';
  if (type === 'stream') {
    const groups = (await source.send(['XINFO', 'GROUPS', key])) as RawReply[];
    if (groups.length > 0) throw new UnchunkableKeyError('a stream with consumer groups is moved whole');
  } else if (!['string', 'hash', 'set', 'zset', 'list'].includes(type)) {
    throw new UnchunkableKeyError(`type ${type} has no chunked copy`);
  }
  await target.send(['UNLINK', temp]);
  try {
    const writes = new ChunkWriter();
    const expected = await copyChunks(type, source, target, key, temp, writes, pace);
    await writes.drain();
    const copied = await sizeOf(type, target, temp);
    const [expireAt, exists] = (await source.send(['EVAL', EXPIRY_AND_EXISTENCE_SCRIPT, '1', key])) as number[];
    if (exists === 0) {
      await target.send(['UNLINK', temp]);
      return 'gone';
    }
    const now = await sizeOf(type, source, key);
    if (copied !== expected || now !== expected) {
      throw new CopyMismatchError(`copied ${copied} of ${type} ${expected} (source now ${now})`);
    }
    // UNLINK first: a copy left on the target by an interrupted move is stale (the source is the authority).
    const finish: (Buffer | string)[][] = [
      ['UNLINK', key],
      ['RENAME', temp, key],
    ];
    if (expireAt! > 0) finish.push(['PEXPIREAT', key, String(expireAt)]);
    await transaction(target, finish);
  } catch (err) {
    await target.send(['UNLINK', temp]).catch(() => undefined);
    throw err;
  }
  if (confirm !== null) await confirm();
  await source.send(['UNLINK', key]);
  return 'moved';
}

/** Removes a temporary key a crashed move left on the target (from the journal). */
export async function removeTempKey(target: CommandSender, key: Buffer): Promise<void> {
  await target.send(['UNLINK', tempKeyFor(key)]);
}

/**
 * The key's expire-at and whether it exists, read together. A script, not MULTI: a shard out of
 * memory refuses every command queued in a transaction, and a full source is what a move must
 * still be able to empty (a script declared without writes runs).
 */
const EXPIRY_AND_EXISTENCE_SCRIPT = `#!lua flags=no-writes
return {redis.call('PEXPIRETIME', KEYS[1]), redis.call('EXISTS', KEYS[1])}`;

/** MULTI, the commands, EXEC: EXEC's replies (an error in any rejects). */
async function transaction(connection: CommandSender, commands: readonly (readonly (Buffer | string)[])[]): Promise<RawReply[]> {
  const queued = [connection.send(['MULTI']), ...commands.map((c) => connection.send(c))];
  const exec = connection.send(['EXEC']);
  // A refused MULTI or command rejects the wait below first: EXEC's rejection is then nobody's.
  exec.catch(() => undefined);
  for (const q of queued) q.catch(() => undefined);
  await Promise.all(queued);
  return (await exec) as RawReply[];
}

/** Writes awaited a few at a time, so reading the next chunk overlaps writing the last. */
class ChunkWriter {
  #pending: Promise<unknown>[] = [];

  async add(write: Promise<unknown>): Promise<void> {
    // Its failure is seen where it is awaited; until then (or if an older write's failure ends
    // the copy first) it must not count as unhandled, which ends the mover's process.
    write.catch(() => undefined);
    this.#pending.push(write);
    if (this.#pending.length >= WRITES_IN_FLIGHT) await this.#pending.shift();
  }

  async drain(): Promise<void> {
    const pending = this.#pending;
    this.#pending = [];
    await Promise.all(pending);
  }
}

/** Elements per chunk for a collection of `count` elements using about `bytes`. */
function chunkElements(count: number, bytes: number): number {
  const perElement = count > 0 ? Math.max(1, bytes / count) : 64;
  return Math.max(MIN_CHUNK_ELEMENTS, Math.min(MAX_CHUNK_ELEMENTS, Math.floor(CHUNK_BYTES / perElement)));
}

async function memoryUsage(connection: CommandSender, key: Buffer): Promise<number> {
  return Number((await connection.send(['MEMORY', 'USAGE', key])) ?? 0);
}

/** Copies every element to `temp`; returns the source's size when the copy began. */
async function copyChunks(type: string, source: CommandSender, target: CommandSender, key: Buffer, temp: Buffer, writes: ChunkWriter, pace: Pace): Promise<number> {
  switch (type) {
    case 'string': {
      const length = (await source.send(['STRLEN', key])) as number;
      for (let offset = 0; offset < length; offset += CHUNK_BYTES) {
        await pace(CHUNK_BYTES / BYTES_PER_ELEMENT);
        const piece = (await source.send(['GETRANGE', key, String(offset), String(Math.min(length, offset + CHUNK_BYTES) - 1)])) as Buffer;
        await writes.add(target.send(['APPEND', temp, piece]));
      }
      return length;
    }
    case 'list': {
      const length = (await source.send(['LLEN', key])) as number;
      const step = chunkElements(length, await memoryUsage(source, key));
      for (let start = 0; start < length; start += step) {
        await pace(step);
        const items = (await source.send(['LRANGE', key, String(start), String(start + step - 1)])) as Buffer[];
        if (items.length > 0) await writes.add(target.send(['RPUSH', temp, ...items]));
      }
      return length;
    }
    case 'hash':
    case 'set':
    case 'zset': {
      const length = await sizeOf(type, source, key);
      const count = chunkElements(length, await memoryUsage(source, key));
      let cursor = '0';
      do {
        await pace(count);
        const [next, items] = (await source.send([SCAN_OF[type], key, cursor, 'COUNT', String(count)])) as [Buffer, Buffer[]];
        cursor = next.toString();
        if (items.length === 0) continue;
        if (type === 'hash') await writes.add(target.send(['HSET', temp, ...items]));
        else if (type === 'set') await writes.add(target.send(['SADD', temp, ...items]));
        else {
          // ZSCAN answers member, score; ZADD takes score, member.
          const args: Buffer[] = [];
          for (let i = 0; i < items.length; i += 2) args.push(items[i + 1]!, items[i]!);
          await writes.add(target.send(['ZADD', temp, ...args]));
        }
      } while (cursor !== '0');
      return length;
    }
    case 'stream': {
      const length = (await source.send(['XLEN', key])) as number;
      const count = chunkElements(length, await memoryUsage(source, key));
      let start = '-';
      for (;;) {
        await pace(count);
        const entries = (await source.send(['XRANGE', key, start, '+', 'COUNT', String(count)])) as [Buffer, Buffer[]][];
        if (entries.length === 0) break;
        for (const [id, fields] of entries) await writes.add(target.send(['XADD', temp, id, ...fields]));
        start = `(${entries[entries.length - 1]![0].toString()}`;
        if (entries.length < count) break;
      }
      // Keep the stream's ID state, so new entries get the IDs they would have on the source.
      const info = (await source.send(['XINFO', 'STREAM', key])) as RawReply[];
      const field = (name: string): string => String(info[info.findIndex((item) => Buffer.isBuffer(item) && item.toString() === name) + 1]);
      await writes.drain();
      if (length > 0) {
        await target.send(['XSETID', temp, field('last-generated-id'), 'ENTRIESADDED', field('entries-added'), 'MAXDELETEDID', field('max-deleted-entry-id')]);
      }
      return length;
    }
    default:
      throw new UnchunkableKeyError(`type ${type} has no chunked copy`);
  }
}

const SCAN_OF = { hash: 'HSCAN', set: 'SSCAN', zset: 'ZSCAN' } as const;

async function sizeOf(type: string, connection: CommandSender, key: Buffer): Promise<number> {
  const command = SIZE_OF[type as keyof typeof SIZE_OF];
  return command === undefined ? 0 : ((await connection.send([command, key])) as number);
}

const SIZE_OF = { string: 'STRLEN', list: 'LLEN', hash: 'HLEN', set: 'SCARD', zset: 'ZCARD', stream: 'XLEN' } as const;
