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

let isStopping = false;
/** Per command: when it was sent (ms since the epoch), how long it took (ms), its slot. */
const wall = [];
const took = [];
const slots = [];
const errors = [];
const staleReads = [];
/** key number -> last acknowledged value written by the load. */
const acked = new Map();
/** key number -> writes with no answer since the last acknowledged one. */
const unsure = new Map();

function expected(n) {
  return [acked.get(n) ?? initialValue(n), ...(unsure.get(n) ?? [])];
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
    const value = `c${c}-${seq++}`;
    const sentAt = performance.now();
    try {
      if (isWrite) {
        let list = unsure.get(n);
        if (list === undefined) unsure.set(n, (list = []));
        list.push(value);
        await redis.set(key, value);
        acked.set(n, value);
        unsure.delete(n);
      } else {
        const got = await redis.get(key);
        const ok = expected(n);
        if (got === null || !ok.includes(got)) staleReads.push(`${key}: got ${got}, expected one of ${ok.join(' | ')}`);
      }
      const now = performance.now();
      wall.push(Date.now() - (now - sentAt));
      took.push(now - sentAt);
      const bytes = Buffer.from(key);
      slots.push(keySlot(bytes, 0, bytes.length));
    } catch (err) {
      errors.push(`${key}: ${err.message}`);
      if (options.tolerateDisconnects === true) await sleep(20);
    }
  }
  redis.disconnect();
}

process.on('message', (message) => {
  if (message.type === 'start') {
    const options = message.options;
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
          wall,
          took,
          slots,
          errors: errors.slice(0, 1000),
          errorCount: errors.length,
          staleReads: staleReads.slice(0, 1000),
          acked: [...acked],
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
