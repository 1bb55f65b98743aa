import type Redis from 'ioredis';
import { keySlot } from '../routing/key-slot';
import { SLOT_COUNT } from '../topology/topology';

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
 * after a restart from the journal), and a crash between the RENAME and the UNLINK leaves a copy
 * on the target that the next attempt replaces. A completed move leaves the key on one shard.
 */

/** Bytes a chunk should hold, roughly: large enough to be quick, small enough not to hold a shard. */
const CHUNK_BYTES = 128 * 1024;
const MAX_CHUNK_ELEMENTS = 1000;
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

/**
 * Copies `key` from `source` to `target` in chunks, then replaces it on the target and removes
 * it from the source. 'gone' when the key no longer exists (or expired) on the source.
 * @throws UnchunkableKeyError before anything is written, for types it cannot chunk
 */
export async function moveBigKey(source: Redis, target: Redis, key: Buffer): Promise<BigKeyOutcome> {
  const temp = tempKeyFor(key);
  const type = String(await source.type(key));
  if (type === 'none') return 'gone';
  if (type === 'stream') {
    const groups = (await source.xinfo('GROUPS', key)) as unknown[];
    if (groups.length > 0) throw new UnchunkableKeyError('a stream with consumer groups is moved whole');
  } else if (!['string', 'hash', 'set', 'zset', 'list'].includes(type)) {
    throw new UnchunkableKeyError(`type ${type} has no chunked copy`);
  }
  await target.unlink(temp);
  try {
    const writes = new ChunkWriter();
    const expected = await copyChunks(type, source, target, key, temp, writes);
    await writes.drain();
    const copied = await sizeOf(type, target, temp);
    const [expireAt, exists] = (await source.multi().pexpiretime(key).exists(key).exec())!.map(([err, value]) => {
      if (err !== null) throw err;
      return Number(value);
    });
    if (exists === 0) {
      await target.unlink(temp);
      return 'gone';
    }
    const now = await sizeOf(type, source, key);
    if (copied !== expected || now !== expected) {
      throw new CopyMismatchError(`copied ${copied} of ${type} ${expected} (source now ${now})`);
    }
    // UNLINK first: a copy left on the target by an interrupted move is stale (the source is the authority).
    const finish = target.multi().unlink(key).rename(temp, key);
    if (expireAt! > 0) finish.pexpireat(key, expireAt!);
    const results = await finish.exec();
    for (const [err] of results ?? []) if (err !== null) throw err;
  } catch (err) {
    await target.unlink(temp).catch(() => undefined);
    throw err;
  }
  await source.unlink(key);
  return 'moved';
}

/** Removes a temporary key a crashed move left on the target (from the journal). */
export async function removeTempKey(target: Redis, key: Buffer): Promise<void> {
  await target.unlink(tempKeyFor(key));
}

/** Writes awaited a few at a time, so reading the next chunk overlaps writing the last. */
class ChunkWriter {
  #pending: Promise<unknown>[] = [];

  async add(write: Promise<unknown>): Promise<void> {
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

async function memoryUsage(redis: Redis, key: Buffer): Promise<number> {
  return Number((await redis.call('MEMORY', 'USAGE', key)) ?? 0);
}

/** Copies every element to `temp`; returns the source's size when the copy began. */
async function copyChunks(type: string, source: Redis, target: Redis, key: Buffer, temp: Buffer, writes: ChunkWriter): Promise<number> {
  switch (type) {
    case 'string': {
      const length = await source.strlen(key);
      for (let offset = 0; offset < length; offset += CHUNK_BYTES) {
        const piece = await source.getrangeBuffer(key, offset, Math.min(length, offset + CHUNK_BYTES) - 1);
        await writes.add(target.append(temp, piece));
      }
      return length;
    }
    case 'list': {
      const length = await source.llen(key);
      const step = chunkElements(length, await memoryUsage(source, key));
      for (let start = 0; start < length; start += step) {
        const items = await source.lrangeBuffer(key, start, start + step - 1);
        if (items.length > 0) await writes.add(target.rpush(temp, ...items));
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
        const [next, items] = (await source.callBuffer(SCAN_OF[type], key, cursor, 'COUNT', String(count))) as [Buffer, Buffer[]];
        cursor = next.toString();
        if (items.length === 0) continue;
        if (type === 'hash') await writes.add(target.hset(temp, ...items));
        else if (type === 'set') await writes.add(target.sadd(temp, ...items));
        else {
          // ZSCAN answers member, score; ZADD takes score, member.
          const args: Buffer[] = [];
          for (let i = 0; i < items.length; i += 2) args.push(items[i + 1]!, items[i]!);
          await writes.add(target.callBuffer('ZADD', temp, ...args));
        }
      } while (cursor !== '0');
      return length;
    }
    case 'stream': {
      const length = await source.xlen(key);
      const count = chunkElements(length, await memoryUsage(source, key));
      let start = '-';
      for (;;) {
        const entries = (await source.callBuffer('XRANGE', key, start, '+', 'COUNT', String(count))) as [Buffer, Buffer[]][];
        if (entries.length === 0) break;
        for (const [id, fields] of entries) await writes.add(target.callBuffer('XADD', temp, id, ...fields));
        start = `(${entries[entries.length - 1]![0].toString()}`;
        if (entries.length < count) break;
      }
      // Keep the stream's ID state, so new entries get the IDs they would have on the source.
      const info = (await source.call('XINFO', 'STREAM', key)) as unknown[];
      const field = (name: string): string => String(info[info.indexOf(name) + 1]);
      await writes.drain();
      if (length > 0 || field('last-generated-id') !== '0-0') {
        await target.call('XSETID', temp, field('last-generated-id'), 'ENTRIESADDED', field('entries-added'), 'MAXDELETEDID', field('max-deleted-entry-id'));
      }
      return length;
    }
    default:
      throw new UnchunkableKeyError(`type ${type} has no chunked copy`);
  }
}

const SCAN_OF = { hash: 'HSCAN', set: 'SSCAN', zset: 'ZSCAN' } as const;

async function sizeOf(type: string, redis: Redis, key: Buffer): Promise<number> {
  switch (type) {
    case 'string':
      return redis.strlen(key);
    case 'list':
      return redis.llen(key);
    case 'hash':
      return redis.hlen(key);
    case 'set':
      return redis.scard(key);
    case 'zset':
      return redis.zcard(key);
    case 'stream':
      return redis.xlen(key);
    default:
      return 0;
  }
}
