import { describe, expect, it } from 'vitest';

import { lookupCommand } from '../../src/commands/command-table';
import type { CommandSpec } from '../../src/commands/handling';
import { RequestParser, type RequestFrame } from '../../src/resp/request-parser';
import { encodeCommand } from '../../src/resp/resp-writer';
import { fragment } from '../../src/routing/fragmenter';
import { argSlot, calculateSlot, patternHashSlot } from '../../src/routing/key-slot';
import { commandSlot, CROSS_SLOT, movableKeyIndexes, NO_KEYS } from '../../src/routing/route-planner';
import { SLOT_COUNT, Topology, type ShardInfo } from '../../src/topology/topology';

/** A parsed request; each call has its own parser, so frames never share the reused object. */
function frameOf(args: readonly (string | Buffer)[]): RequestFrame {
  let captured: RequestFrame | null = null;
  new RequestParser({
    onRequest(frame) {
      captured = frame;
    },
  }).feed(encodeCommand(args));
  if (captured === null) throw new Error(`no frame for ${args.join(' ')}`);
  return captured;
}

/** The spec the dispatcher would use, subcommand included. */
/** The bytes a fragment's request would write. */
function bytesOf(request: Buffer | readonly Buffer[]): Buffer {
  return Buffer.isBuffer(request) ? request : Buffer.concat(request);
}

function specOf(frame: RequestFrame): CommandSpec {
  const spec = lookupCommand(frame.argString(0));
  if (spec === undefined) throw new Error(`unknown command ${frame.argString(0)}`);
  if (spec.subcommands === null) return spec;
  const sub = spec.subcommands.get(frame.argString(1).toLowerCase());
  if (sub === undefined) throw new Error(`unknown subcommand ${frame.argString(1)}`);
  return sub;
}

/** CRC16/XMODEM, written from the Redis Cluster spec (bitwise, no table), as a reference. */
function crc16(data: Buffer): number {
  let crc = 0;
  for (const byte of data) {
    crc ^= byte << 8;
    for (let bit = 0; bit < 8; bit++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc;
}

/** redis-server's keyHashSlot (cluster.c), transcribed: the reference for every slot below. */
function referenceSlot(key: Buffer): number {
  const s = key.indexOf(0x7b); // '{'
  if (s === -1) return crc16(key) & 0x3fff;
  const e = key.indexOf(0x7d, s + 1); // first '}' after it
  if (e === -1 || e === s + 1) return crc16(key) & 0x3fff; // no '}', or nothing between: whole key
  return crc16(key.subarray(s + 1, e)) & 0x3fff;
}

/** Slot of a key given as text, through the proxy's own code path (a frame argument). */
const proxySlot = (key: string | Buffer): number => argSlot(frameOf(['GET', key]), 1);

/** Three shards over even ranges, as `slotproxy create` lays them out. */
const SHARD_RANGES: readonly [number, number][] = [
  [0, 5460],
  [5461, 10922],
  [10923, 16383],
];
function evenSlotOwner(): Uint16Array {
  const owner = new Uint16Array(SLOT_COUNT);
  SHARD_RANGES.forEach(([from, to], shard) => owner.fill(shard, from, to + 1));
  return owner;
}
const shardOfSlot = (slot: number): number => SHARD_RANGES.findIndex(([from, to]) => slot >= from && slot <= to);

describe('key slots (CLUSTER KEYSLOT reference values)', () => {
  it.each<[string, number]>([
    ['foo', 12182],
    ['bar', 5061],
    ['somekey', 11058],
    ['foo{hash_tag}', 2515],
    ['bar{hash_tag}', 2515],
    ['123456789', 12739], // CRC16/XMODEM check value 0x31C3
    ['', 0],
  ])('%j is slot %i', (key, slot) => {
    expect(proxySlot(key)).toBe(slot);
    expect(referenceSlot(Buffer.from(key))).toBe(slot);
  });

  it('{user1000}.following and {user1000}.followers share a slot: the tag is hashed', () => {
    expect(proxySlot('{user1000}.following')).toBe(proxySlot('{user1000}.followers'));
    expect(proxySlot('{user1000}.following')).toBe(proxySlot('user1000'));
  });

  it.each<[string, string]>([
    ['foo{}{bar}: an empty first tag means the whole key is hashed', 'foo{}{bar}'],
    ['foo{{bar}}zap: the tag is "{bar"', 'foo{{bar}}zap'],
    ['{}: empty tag', '{}'],
    ['x{}}: empty tag followed by another }', 'x{}}'],
    ['{}{a}: empty tag, then a non-empty one', '{}{a}'],
    ['a}b{c: } before {', 'a}b{c'],
    ['{a}{b}: the first tag wins', '{a}{b}'],
    ['{abc: no closing brace', '{abc'],
    ['tag at the end: x{y}', 'x{y}'],
  ])('%s', (_name, key) => {
    expect(proxySlot(key)).toBe(referenceSlot(Buffer.from(key)));
  });

  it('"foo{}{bar}" hashes the whole key, not "bar" and not "{bar"', () => {
    const whole = crc16(Buffer.from('foo{}{bar}')) & 0x3fff;
    expect(whole).toBe(8363);
    expect(proxySlot('foo{}{bar}')).toBe(whole);
  });

  it('"foo{{bar}}zap" hashes "{bar"', () => {
    expect(proxySlot('foo{{bar}}zap')).toBe(crc16(Buffer.from('{bar')) & 0x3fff);
  });

  it('hashes binary keys as raw bytes (not re-encoded as UTF-8)', () => {
    for (const key of [Buffer.from([0xff, 0xfe]), Buffer.from([0xc3, 0xa9]), Buffer.from('k\r\n\0{\xff}', 'latin1')]) {
      expect(proxySlot(key)).toBe(referenceSlot(key));
    }
    expect(calculateSlot(Buffer.from([0xff, 0xfe]) as unknown as string)).toBe(referenceSlot(Buffer.from([0xff, 0xfe])));
  });

  it('matches redis-server keyHashSlot on 20,000 pseudo-random keys rich in braces', () => {
    let seed = 12345;
    const next = (): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed;
    };
    const mismatches: string[] = [];
    for (let n = 0; n < 20_000; n++) {
      const key = Buffer.alloc(next() % 12);
      for (let i = 0; i < key.length; i++) {
        const r = next() % 10;
        key[i] = r < 2 ? 0x7b : r < 4 ? 0x7d : 0x61 + (next() % 4);
      }
      if (proxySlot(key) !== referenceSlot(key)) mismatches.push(key.toString('latin1'));
    }
    expect(mismatches.length, `${mismatches.length} keys differ, e.g. ${JSON.stringify(mismatches.slice(0, 5))}`).toBe(0);
  });
});

describe('commandSlot', () => {
  const foo = 12182;
  const user1000 = proxySlot('user1000');
  const tag = (t: string): number => proxySlot(t);

  it.each<[string, (string | Buffer)[], () => number]>([
    ['single key', ['GET', 'foo'], () => foo],
    ['single key, lowercase command', ['get', 'foo'], () => foo],
    ['key then value', ['SET', 'foo', 'bar'], () => foo],
    ['key missing: no keys to route by', ['GET'], () => NO_KEYS],
    ['keyless command', ['PING'], () => NO_KEYS],
    ['keyless with arguments', ['ECHO', 'foo'], () => NO_KEYS],
    ['multi-key, same slot by tag', ['MGET', '{user1000}.following', '{user1000}.followers'], () => user1000],
    ['multi-key, different slots', ['MGET', 'foo', 'bar'], () => CROSS_SLOT],
    ['DEL, different slots', ['DEL', 'foo', '{foo}x', 'bar'], () => CROSS_SLOT],
    ['MSET values do not count', ['MSET', '{t}a', 'foo', '{t}b', 'bar'], () => tag('t')],
    ['MSET keys in different slots', ['MSET', 'foo', '1', 'bar', '2'], () => CROSS_SLOT],
    ['BLPOP: the timeout is not a key', ['BLPOP', 'foo', '{foo}2', '0'], () => foo],
    ['BITOP: the operation is not a key', ['BITOP', 'AND', '{b}dest', '{b}k1', '{b}k2'], () => tag('b')],
    ['BITOP across slots', ['BITOP', 'AND', 'foo', 'bar'], () => CROSS_SLOT],
    ['LMOVE, two keys', ['LMOVE', '{l}a', '{l}b', 'LEFT', 'RIGHT'], () => tag('l')],
    ['RPOPLPUSH across slots', ['RPOPLPUSH', 'foo', 'bar'], () => CROSS_SLOT],
    ['subcommand with a key (OBJECT ENCODING)', ['OBJECT', 'ENCODING', 'foo'], () => foo],
    ['subcommand with a key (XINFO STREAM)', ['XINFO', 'STREAM', 'foo'], () => foo],
    // Movable keys: found by parsing the arguments.
    ['EVAL numkeys 2, ARGV ignored', ['EVAL', 'return 1', '2', 'foo', '{foo}x', 'bar'], () => foo],
    ['EVAL numkeys 0', ['EVAL', 'return 1', '0', 'foo'], () => NO_KEYS],
    ['EVAL keys across slots', ['EVAL', 'return 1', '2', 'foo', 'bar'], () => CROSS_SLOT],
    ['EVAL numkeys not a number: the shard answers the error', ['EVAL', 'return 1', 'x', 'foo'], () => NO_KEYS],
    ['EVALSHA numkeys 1', ['EVALSHA', 'e0e1f9fabfc9d4800c877a703b823ac0578ff8db', '1', 'foo'], () => foo],
    ['FCALL numkeys 1', ['FCALL', 'myfunc', '1', 'foo', 'bar'], () => foo],
    ['XREAD STREAMS, ids ignored', ['XREAD', 'COUNT', '2', 'STREAMS', 'foo', '{foo}b', '0', '0'], () => foo],
    ['xread streams, lowercase', ['xread', 'count', '2', 'streams', 'foo', '{foo}b', '0', '0'], () => foo],
    ['XREAD STREAMS across slots', ['XREAD', 'STREAMS', 'foo', 'bar', '0-0', '0-0'], () => CROSS_SLOT],
    ['XREADGROUP', ['XREADGROUP', 'GROUP', 'g', 'c', 'STREAMS', 'foo', '>'], () => foo],
    ['ZUNIONSTORE, weights ignored', ['ZUNIONSTORE', '{z}d', '2', '{z}a', '{z}b', 'WEIGHTS', '1', '2'], () => tag('z')],
    ['ZUNIONSTORE destination counts', ['ZUNIONSTORE', 'bar', '1', 'foo'], () => CROSS_SLOT],
    ['ZUNIONSTORE sources across slots', ['ZUNIONSTORE', 'foo', '2', 'foo', 'bar'], () => CROSS_SLOT],
    // SORT's STORE destination is a key: sent to foo's shard, the result would land on a shard not owning bar.
    ['SORT ... STORE across slots', ['SORT', 'foo', 'STORE', 'bar'], () => CROSS_SLOT],
    ['SORT ... STORE across slots, lowercase', ['sort', 'foo', 'limit', '0', '10', 'store', 'bar'], () => CROSS_SLOT],
    ['GEORADIUS ... STORE across slots', ['GEORADIUS', 'foo', '15', '37', '200', 'km', 'STORE', 'bar'], () => CROSS_SLOT],
    ['GEORADIUS ... STORE same slot', ['GEORADIUS', 'foo', '15', '37', '200', 'km', 'STORE', '{foo}near'], () => foo],
    ['SORT ... STORE same slot', ['SORT', 'foo', 'STORE', '{foo}sorted'], () => foo],
  ])('%s', (_name, args, expected) => {
    const frame = frameOf(args);
    expect(commandSlot(frame, specOf(frame))).toBe(expected());
  });

  it.each<[string, string[], number[]]>([
    ['EVAL', ['EVAL', 's', '2', 'a', 'b', 'c'], [3, 4]],
    ['XREAD', ['XREAD', 'COUNT', '2', 'STREAMS', 'a', 'b', '0', '0'], [4, 5]],
    ['ZUNIONSTORE', ['ZUNIONSTORE', 'd', '2', 'a', 'b', 'WEIGHTS', '1', '2'], [1, 3, 4]],
    ['EVAL with a numkeys beyond the arguments (none: the shard answers Redis\'s error)', ['EVAL', 's', '5', 'a'], []],
    ['EVAL with a numkeys no key list could hold', ['EVAL', 's', '99999999999999999999', 'a'], []],
  ])('movableKeyIndexes for %s are frame argument indexes', (_name, args, expected) => {
    const frame = frameOf(args);
    expect(movableKeyIndexes(frame, specOf(frame))).toEqual(expected);
  });
});

describe('fragment', () => {
  const owner = evenSlotOwner();
  /** Keys with known shards under the even layout (slot in comments). */
  const ON = {
    s0: ['bar', 'b', 'hello', 'k2'], // 5061, 3300, 866, 449
    s1: ['c', 'z', 'world'], // 7365, 8157, 9059
    s2: ['foo', 'a', 'somekey'], // 12182, 15495, 11058
  } as const;

  it('places the fixture keys where the test says', () => {
    for (const [shard, keys] of [ON.s0, ON.s1, ON.s2].entries()) {
      for (const key of keys) expect(shardOfSlot(referenceSlot(Buffer.from(key))), key).toBe(shard);
    }
  });

  /** The bytes a fragment would write. */
  const wire = (request: Buffer | readonly Buffer[]): string => bytesOf(request).toString('latin1');

  it('groups MGET keys per shard, in first-seen shard order, keeping key order inside each', () => {
    const frame = frameOf(['MGET', 'foo', 'bar', 'a', 'c', 'hello', 'somekey']);
    const { fragments, keyFragment } = fragment(frame, specOf(frame), owner);
    expect(fragments.map((f) => f.shard)).toEqual([2, 0, 1]);
    expect(fragments.map((f) => f.keyCount)).toEqual([3, 2, 1]);
    expect(Array.from(keyFragment!)).toEqual([0, 1, 0, 2, 1, 0]);
    expect(wire(fragments[0]!.request)).toBe(encodeCommand(['MGET', 'foo', 'a', 'somekey']).toString('latin1'));
    expect(wire(fragments[1]!.request)).toBe(encodeCommand(['MGET', 'bar', 'hello']).toString('latin1'));
    expect(wire(fragments[2]!.request)).toBe(encodeCommand(['MGET', 'c']).toString('latin1'));
  });

  it('keeps the command name as the client spelled it', () => {
    const frame = frameOf(['mGeT', 'foo', 'bar']);
    const { fragments } = fragment(frame, specOf(frame), owner);
    expect(wire(fragments[0]!.request)).toBe(encodeCommand(['mGeT', 'foo']).toString('latin1'));
  });

  it('keeps MSET key/value pairs together, binary values byte-exact', () => {
    const binary = Buffer.from([0, 13, 10, 0x24, 0x2a, 0xff]);
    const frame = frameOf(['MSET', 'foo', '1', 'bar', binary, 'c', '', 'a', 'x'.repeat(300)]);
    const { fragments, keyFragment } = fragment(frame, specOf(frame), owner);
    expect(fragments.map((f) => [f.shard, f.keyCount])).toEqual([
      [2, 2],
      [0, 1],
      [1, 1],
    ]);
    // Only MGET's merge needs to know which fragment answers each key.
    expect(keyFragment).toBeNull();
    expect(bytesOf(fragments[0]!.request).equals(encodeCommand(['MSET', 'foo', '1', 'a', 'x'.repeat(300)]))).toBe(true);
    expect(bytesOf(fragments[1]!.request).equals(encodeCommand(['MSET', 'bar', binary]))).toBe(true);
    expect(bytesOf(fragments[2]!.request).equals(encodeCommand(['MSET', 'c', '']))).toBe(true);
  });

  it('sends keys sharing a hash tag to one shard', () => {
    const frame = frameOf(['DEL', '{user1000}.a', 'foo', '{user1000}.b', '{user1000}.c']);
    const { fragments, keyFragment } = fragment(frame, specOf(frame), owner);
    expect(fragments).toHaveLength(2);
    // Only MGET's merge needs to know which fragment answers each key.
    expect(keyFragment).toBeNull();
    expect(wire(fragments[0]!.request)).toBe(encodeCommand(['DEL', '{user1000}.a', '{user1000}.b', '{user1000}.c']).toString('latin1'));
  });

  it('makes one fragment when every key is on one shard', () => {
    const frame = frameOf(['EXISTS', ...ON.s1]);
    const { fragments, keyFragment } = fragment(frame, specOf(frame), owner);
    expect(fragments).toHaveLength(1);
    expect(fragments[0]!.shard).toBe(1);
    // Only MGET's merge needs to know which fragment answers each key.
    expect(keyFragment).toBeNull();
    expect(bytesOf(fragments[0]!.request).equals(frame.bytes())).toBe(true);
  });

  it('takes key and value bytes as views of the request (no copies)', () => {
    const frame = frameOf(['MSET', 'foo', 'v'.repeat(1000), 'bar', 'w']);
    const { fragments } = fragment(frame, specOf(frame), owner);
    // Each key (with its value) is one view of the request, `$len` header included; only the
    // sub-command header (the first part) is new.
    const views = fragments.flatMap((f) => (Array.isArray(f.request) ? f.request.slice(1) : []));
    expect(views.map((v) => v.toString())).toEqual(expect.arrayContaining(['$3\r\nfoo\r\n$1000\r\n' + 'v'.repeat(1000) + '\r\n']));
    for (const view of views) expect(view.buffer).toBe(frame.buf.buffer);
  });

  it('copies a small fragment into one buffer; a large one joins neighbouring keys into one view', () => {
    const small = frameOf(['MGET', 'foo', 'a', 'bar', 'somekey']);
    const { fragments } = fragment(small, specOf(small), owner);
    for (const piece of fragments) expect(Buffer.isBuffer(piece.request)).toBe(true);
    small.buf.fill(0); // a copy, not a view: the request's bytes may be reused
    expect(wire(fragments[0]!.request)).toBe(encodeCommand(['MGET', 'foo', 'a', 'somekey']).toString('latin1'));
    // foo and a follow each other in the request and go to one shard: one view for both.
    const large = frameOf(['MSET', 'foo', 'v'.repeat(2000), 'a', 'w', 'bar', 'x', 'somekey', 'y']);
    const { fragments: parts } = fragment(large, specOf(large), owner);
    const request = parts[0]!.request as Buffer[];
    expect(request).toHaveLength(3);
    expect(request[1]!.toString()).toBe(`$3\r\nfoo\r\n$2000\r\n${'v'.repeat(2000)}\r\n$1\r\na\r\n$1\r\nw\r\n`);
    expect(Buffer.concat(request).equals(encodeCommand(['MSET', 'foo', 'v'.repeat(2000), 'a', 'w', 'somekey', 'y']))).toBe(true);
  });

  it('follows the slot owner table it is given (after a slot moved)', () => {
    const moved = evenSlotOwner();
    moved[12182] = 0; // 'foo' now lives on shard 0, with 'bar'
    const frame = frameOf(['MGET', 'foo', 'bar', 'a']);
    const { fragments, keyFragment } = fragment(frame, specOf(frame), moved);
    expect(fragments.map((f) => f.shard)).toEqual([0, 2]);
    expect(Array.from(keyFragment!)).toEqual([0, 0, 1]);
  });

  it('covers every key exactly once, for 1,000 keys over 3 shards', () => {
    const keys = Array.from({ length: 1000 }, (_, i) => `key:${i}`);
    const frame = frameOf(['MGET', ...keys]);
    const { fragments, keyFragment } = fragment(frame, specOf(frame), owner);
    expect(fragments).toHaveLength(3);
    const perFragment: string[][] = fragments.map(() => []);
    keys.forEach((key, k) => perFragment[keyFragment![k]!]!.push(key));
    fragments.forEach((f, i) => {
      expect(f.keyCount).toBe(perFragment[i]!.length);
      for (const key of perFragment[i]!) expect(shardOfSlot(referenceSlot(Buffer.from(key)))).toBe(f.shard);
      expect(wire(f.request)).toBe(encodeCommand(['MGET', ...perFragment[i]!]).toString('latin1'));
    });
  });
});

/**
 * The fragmenter keeps scratch tables between calls (which fragment each shard's keys went to,
 * cleared for the shards a call touched before it returns): any call must see nothing of the
 * ones before it. Compared with a plain
 * model (keys grouped by owner in first-seen order, each group re-encoded) over random commands:
 * up to 300 shards (past the tables' first size), migrating slots, small and large MSET values.
 */
describe('fragment() against a model, over many calls in a row', () => {
  it('matches the model for 3,000 random MGET/MSET/DEL commands', () => {
    let seed = 7;
    const random = (): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x80000000;
    };
    for (let round = 0; round < 3000; round++) {
      const shardCount = 1 + Math.floor(random() * (round % 10 === 0 ? 300 : 8));
      const slotOwner = new Uint16Array(SLOT_COUNT).map(() => Math.floor(random() * shardCount));
      const migrations = new Map<number, { from: number; to: number }>();
      const command = ['MGET', 'MSET', 'DEL'][round % 3]!;
      const step = command === 'MSET' ? 2 : 1;
      const keyCount = 1 + Math.floor(random() * 12);
      const keys = Array.from({ length: keyCount }, () => `k${Math.floor(random() * 50)}`);
      if (random() < 0.3) for (const key of keys) if (random() < 0.3) migrations.set(calculateSlot(Buffer.from(key)), { from: 0, to: Math.floor(random() * shardCount) });
      const args: string[] = [command];
      for (const key of keys) {
        args.push(key);
        if (step === 2) args.push('v'.repeat(random() < 0.1 ? 1500 : Math.floor(random() * 20)));
      }
      const frame = frameOf(args);
      const { fragments, keyFragment } = fragment(frame, specOf(frame), slotOwner, migrations);

      // The model: one group per owner (a migrating slot a group of its own), in first-seen order.
      const groups: { shard: number; slot: number | null; args: string[]; keys: string[] }[] = [];
      const expectedFragment: number[] = [];
      keys.forEach((key, k) => {
        const slot = calculateSlot(Buffer.from(key));
        const migration = migrations.get(slot);
        const shard = migration === undefined ? slotOwner[slot]! : migration.to;
        let g = groups.findIndex((group) => (migration === undefined ? group.slot === null && group.shard === shard : group.slot === slot));
        if (g < 0) {
          g = groups.length;
          groups.push({ shard, slot: migration === undefined ? null : slot, args: [command], keys: [] });
        }
        groups[g]!.args.push(...args.slice(1 + k * step, 1 + (k + 1) * step));
        if (migration !== undefined) groups[g]!.keys.push(key);
        expectedFragment.push(g);
      });
      expect(keyFragment === null ? null : Array.from(keyFragment), `round ${round}`).toEqual(command === 'MGET' ? expectedFragment : null);
      expect(fragments.map((f) => [f.shard, f.keyCount, f.migration === null, f.keys.map(String)]), `round ${round}`).toEqual(
        groups.map((g) => [g.shard, (g.args.length - 1) / step, g.slot === null, g.keys]),
      );
      fragments.forEach((f, i) => expect(bytesOf(f.request).equals(encodeCommand(groups[i]!.args)), `round ${round} fragment ${i}`).toBe(true));
    }
  });
});

describe('Topology', () => {
  const shard = (index: number): ShardInfo => ({
    index,
    name: `s${index}`,
    primary: { host: '127.0.0.1', port: 7000 + index },
    replicas: [],
    readReplicas: [],
    isFailingOver: false,
  });

  it('reports the slot ranges of each shard', () => {
    const topology = new Topology(1, [shard(0), shard(1), shard(2)], evenSlotOwner());
    expect(topology.slotRanges()).toEqual([[[0, 5460]], [[5461, 10922]], [[10923, 16383]]]);
  });

  it('reports split ranges', () => {
    const owner = new Uint16Array(SLOT_COUNT);
    owner.fill(1, 100, 200);
    const topology = new Topology(1, [shard(0), shard(1)], owner);
    expect(topology.slotRanges()).toEqual([
      [
        [0, 99],
        [200, 16383],
      ],
      [[100, 199]],
    ]);
  });

  it.each<[string, () => Topology]>([
    ['a slot table of the wrong size', () => new Topology(1, [shard(0)], new Uint16Array(100))],
    ['a slot pointing at a missing shard', () => new Topology(1, [shard(0)], new Uint16Array(SLOT_COUNT).fill(1))],
    ['shards out of index order', () => new Topology(1, [shard(1), shard(0)], new Uint16Array(SLOT_COUNT))],
  ])('refuses %s', (_name, build) => {
    expect(build).toThrow(RangeError);
  });

  it('is frozen', () => {
    const topology = new Topology(3, [shard(0)], new Uint16Array(SLOT_COUNT));
    expect(Object.isFrozen(topology)).toBe(true);
    expect(Object.isFrozen(topology.shards)).toBe(true);
  });
});

describe('SORT keys and patterns', () => {
  const spec = (name: string): CommandSpec => lookupCommand(name)!;

  it('patternHashSlot is redis-server\'s: the hash tag before any wildcard, else -1 when a wildcard or escape comes first', () => {
    const slotOf = (text: string): number => patternHashSlot(Buffer.from(text));
    expect(slotOf('{user1}:*')).toBe(calculateSlot('user1'));
    expect(slotOf('foo')).toBe(calculateSlot('foo'));
    expect(slotOf('{}x*')).toBe(-1);
    expect(slotOf('{}x')).toBe(calculateSlot('{}x'));
    expect(slotOf('w_*')).toBe(-1);
    expect(slotOf('a?{t}')).toBe(-1);
    expect(slotOf('[ab]{t}')).toBe(-1);
    expect(slotOf('a\\*')).toBe(-1);
    expect(slotOf('x{t}*{u}')).toBe(calculateSlot('t'));
  });

  it('its keys are the sorted key and STORE\'s destination, not the BY and GET patterns', () => {
    expect(movableKeyIndexes(frameOf(['SORT', 'list', 'BY', 'nosort']), spec('sort'))).toEqual([1]);
    expect(movableKeyIndexes(frameOf(['SORT', 'list', 'LIMIT', '0', '10', 'GET', '#', 'GET', 'o_*', 'STORE', 'dest', 'ALPHA']), spec('sort'))).toEqual([1, 10]);
    expect(movableKeyIndexes(frameOf(['SORT_RO', 'list', 'BY', 'w_*', 'DESC']), spec('sort_ro'))).toEqual([1]);
    expect(commandSlot(frameOf(['SORT', 'list', 'BY', 'nosort']), spec('sort'))).toBe(calculateSlot('list'));
    expect(commandSlot(frameOf(['SORT', '{t}list', 'STORE', '{u}dest']), spec('sort'))).toBe(CROSS_SLOT);
  });
});
