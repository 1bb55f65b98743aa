'use strict';
/**
 * The clients of the migration tests, in a process of their own (forked by migration-harness.ts)
 * so the test runner's own work and garbage collection never show up as client latency.
 *
 * Each of `clients` connections sends paced commands (half SET, half GET) to keys
 * `c + clients * i` of its own share, so every key has one writer and "the last acknowledged
 * value" is well defined. A GET must return the last acknowledged value, or one of the writes
 * that got no answer since (an error or a lost connection leaves them unsure).
 *
 * IPC: the parent sends {type:'start', options}; the child answers {type:'ready'} once every
 * connection is up; {type:'stop'} ends the load and the child answers {type:'report', ...}.
 */
const Redis = require('ioredis').default;
const { keySlot } = require('../../dist/routing/key-slot.js');

const keyName = (n) => `k:${n}`;
const initialValue = (n) => `v0-${n}`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * What this process keeps lives in typed arrays made once (or in chunks that are never copied),
 * so its heap hardly grows while it measures: with plain arrays and Maps growing by the
 * thousands a second, a mark-compact of the load process itself (~5 ms, with every command in
 * flight waiting on it) fell ~7 s into the load, at the end of the tests' baseline window.
 */
const CHUNK = 65_536;

/** Appends numbers into fixed-size chunks (no copying as it grows). */
class Column {
  constructor(Type) {
    this.Type = Type;
    this.chunks = [];
    this.length = 0;
  }
  push(value) {
    const at = this.length % CHUNK;
    if (at === 0) this.chunks.push(new this.Type(CHUNK));
    this.chunks[this.chunks.length - 1][at] = value;
    this.length++;
  }
  toArray() {
    const out = new Array(this.length);
    for (let i = 0; i < this.length; i++) out[i] = this.chunks[Math.floor(i / CHUNK)][i % CHUNK];
    return out;
  }
}

let isStopping = false;
/** Per command: when it was sent (ms since the epoch), how long it took (ms), its slot. */
const wall = new Column(Float64Array);
const took = new Column(Float64Array);
const slots = new Column(Uint16Array);
const errors = [];
const staleReads = [];
/** Filled at start: key number -> the sequence number of its last acknowledged write (-1: none yet), and its slot (-1: not computed yet). */
let ackedSeq = new Int32Array(0);
let slotOfKey = new Int32Array(0);
let clientCount = 1;
/** key number -> writes with no answer since the last acknowledged one (rare: only after errors). */
const unsure = new Map();

/** Client c writes `c${c}-${seq}` to its own keys n (n % clients === c). */
const writtenValue = (n, seq) => `c${n % clientCount}-${seq}`;

function ackedValue(n) {
  const seq = ackedSeq[n];
  return seq < 0 ? initialValue(n) : writtenValue(n, seq);
}

function expected(n) {
  return [ackedValue(n), ...(unsure.get(n) ?? [])];
}

function slotOf(n, key) {
  let slot = slotOfKey[n];
  if (slot < 0) {
    const bytes = Buffer.from(key);
    slotOfKey[n] = slot = keySlot(bytes, 0, bytes.length);
  }
  return slot;
}

async function client(c, options, ready) {
  const redis = new Redis({
    host: options.host,
    port: options.port,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: options.tolerateDisconnects === true,
    retryStrategy: () => 50,
    commandTimeout: 10_000,
    lazyConnect: true,
  });
  redis.on('error', () => undefined);
  await redis.connect();
  ready();
  const interval = (1000 * options.clients) / options.opsPerSecond;
  const mine = Math.floor(options.keys / options.clients);
  let seq = 0;
  let next = performance.now() + Math.random() * interval;
  while (!isStopping) {
    const wait = next - performance.now();
    if (wait > 0) await sleep(wait);
    next += interval;
    if (next < performance.now() - 50 * interval) next = performance.now();
    const n = c + options.clients * Math.floor(Math.random() * mine);
    const key = keyName(n);
    const isWrite = Math.random() < 0.5;
    const writeSeq = seq++;
    const sentAt = performance.now();
    try {
      if (isWrite) {
        try {
          await redis.set(key, writtenValue(n, writeSeq));
        } catch (err) {
          let list = unsure.get(n);
          if (list === undefined) unsure.set(n, (list = []));
          list.push(writtenValue(n, writeSeq));
          throw err;
        }
        ackedSeq[n] = writeSeq;
        unsure.delete(n);
      } else {
        const got = await redis.get(key);
        if (got === null || (got !== ackedValue(n) && !(unsure.get(n) ?? []).includes(got))) {
          staleReads.push(`${key}: got ${got}, expected one of ${expected(n).join(' | ')}`);
        }
      }
      const now = performance.now();
      wall.push(Date.now() - (now - sentAt));
      took.push(now - sentAt);
      slots.push(slotOf(n, key));
    } catch (err) {
      errors.push(`${key}: ${err.message}`);
      if (options.tolerateDisconnects === true) await sleep(20);
    }
  }
  redis.disconnect();
}

/** [key number, last acknowledged value] for every key the load wrote. */
function ackedPairs() {
  const pairs = [];
  for (let n = 0; n < ackedSeq.length; n++) if (ackedSeq[n] >= 0) pairs.push([n, writtenValue(n, ackedSeq[n])]);
  return pairs;
}

process.on('message', (message) => {
  if (message.type === 'start') {
    const options = message.options;
    ackedSeq = new Int32Array(options.keys).fill(-1);
    slotOfKey = new Int32Array(options.keys).fill(-1);
    clientCount = options.clients;
    let connected = 0;
    const ready = () => {
      if (++connected === options.clients) process.send({ type: 'ready', now: performance.now(), wall: Date.now() });
    };
    const running = Array.from({ length: options.clients }, (_, c) => client(c, options, ready));
    process.on('message', async (next) => {
      if (next.type !== 'stop') return;
      isStopping = true;
      await Promise.all(running);
      process.send(
        {
          type: 'report',
          wall: wall.toArray(),
          took: took.toArray(),
          slots: slots.toArray(),
          errors: errors.slice(0, 1000),
          errorCount: errors.length,
          staleReads: staleReads.slice(0, 1000),
          acked: ackedPairs(),
          unsure: [...unsure],
        },
        () => process.exit(0),
      );
    });
  }
});

// A test that fails before stop() must not leave this process loading the machine: the channel
// closes when the test's process ends, and so does this one.
process.on('disconnect', () => process.exit(0));
