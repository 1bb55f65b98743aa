import Redis from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { readStateFile } from '../../src/control/state-file';
import { rawCommands } from '../helpers/proxy-harness';
import { startShards, type Shards } from '../helpers/redis-harness';
import { connect, replicationFlowing, startHaProxy, waitFor, type HaProxy } from './ha-harness';

/**
 * minReplicaAcks beyond plain commands: a transaction, a script (EVAL, EVALSHA, FCALL) or a
 * blocking pop that writes is confirmed by the replicas as SET is, or refused as SET is when
 * the shard has no healthy replica (noReplicaWrites: refuse). Their read-only forms are not
 * held. The replica is paused with SIGSTOP (shorter than nodeTimeoutMs, so it is not failed
 * over and stays a healthy replica that confirms nothing) and resumed in `finally`.
 */

/** WAIT's timeout in these tests: an unconfirmed write is answered after this long. */
const ACK_TIMEOUT_MS = 500;
/** A reply not held for replicas comes well before ACK_TIMEOUT_MS. */
const NOT_HELD_MS = 250;
const UNCONFIRMED = /^NOREPLICAS the write reached the primary but not 1 replica\(s\) within 500 ms/;
const REFUSED = /^NOREPLICAS shard s0 has fewer than 1 healthy replica\(s\); write refused/;

const SET_SCRIPT = "return redis.call('SET', KEYS[1], ARGV[1])";
const GET_SCRIPT = "return redis.call('GET', KEYS[1])";
const LIBRARY =
  "#!lua name=durability\n" +
  "redis.register_function('setit', function(keys, args) return redis.call('SET', keys[1], args[1]) end)\n" +
  "redis.register_function{function_name='getit', callback=function(keys) return redis.call('GET', keys[1]) end, flags={'no-writes'}}";

function viaProxy(ha: HaProxy): Redis {
  const client = new Redis({ host: '127.0.0.1', port: ha.proxy.port, maxRetriesPerRequest: 0 });
  client.on('error', () => undefined);
  return client;
}

/** An error reply's message (rawCommands decodes errors to Error objects); anything else as text. */
function messageOf(reply: unknown): string {
  return reply instanceof Error ? reply.message : String(reply);
}

/** The reply (or the error's message) and how long it took. */
async function timed(run: () => Promise<unknown>): Promise<{ reply: unknown; ms: number }> {
  const startedAt = Date.now();
  const reply = await run().catch((err: Error) => err);
  return { reply: reply instanceof Error ? reply.message : reply, ms: Date.now() - startedAt };
}

describe('minReplicaAcks: 1 confirms transactions, scripts and blocking pops (replica paused: NOREPLICAS)', () => {
  let shards: Shards;
  let ha: HaProxy;
  const clients: Redis[] = [];

  /** Runs `body` with the shard's replica stopped; resumes it and waits until it has caught up. */
  async function withReplicaPaused(body: () => Promise<void>): Promise<void> {
    const replica = shards.replicas[0]![0]!;
    replica.kill('SIGSTOP');
    try {
      await body();
    } finally {
      replica.kill('SIGCONT');
    }
    await replicationFlowing(shards);
  }

  beforeAll(async () => {
    shards = await startShards(1, { replicas: 1 });
    // nodeTimeoutMs well above the pauses: the paused replica stays readable, so writes get WAIT.
    ha = await startHaProxy(shards, { extra: { minReplicaAcks: 1, replicaAckTimeoutMs: ACK_TIMEOUT_MS, nodeTimeoutMs: 15_000 } });
  });

  afterAll(async () => {
    for (const client of clients.splice(0)) client.disconnect();
    for (const replica of shards?.replicas.flat() ?? []) if (replica.isRunning) replica.kill('SIGCONT');
    await ha?.stop();
    await shards?.stopAll();
  });

  afterEach(() => {
    for (const client of clients.splice(0)) client.disconnect();
  });

  it('MULTI/EXEC that writes (WATCHed or not) is answered NOREPLICAS, then its array; one of reads only and one aborted by WATCH are not held', async () => {
    const port = ha.proxy.port;
    const watcher = viaProxy(ha);
    const other = viaProxy(ha);
    clients.push(watcher, other);
    expect(await other.set('{tx}read', 'r')).toBe('OK');

    await withReplicaPaused(async () => {
      const write = await timed(() => rawCommands(port, [['MULTI'], ['SET', '{tx}a', '1'], ['INCR', '{tx}n'], ['EXEC']]));
      const replies = (write.reply as { replies: unknown[] }).replies;
      expect(replies.slice(0, 3)).toEqual(['OK', 'QUEUED', 'QUEUED']);
      expect(messageOf(replies[3])).toMatch(UNCONFIRMED);
      expect(write.ms).toBeGreaterThanOrEqual(ACK_TIMEOUT_MS - 50);

      // ioredis's multi().exec() rejects with it, as with EXECABORT.
      await expect(other.multi().set('{tx}b', '1').exec()).rejects.toThrow(UNCONFIRMED);

      // A WATCHed transaction runs on the client's own connection: confirmed there too.
      const watched = await rawCommands(port, [['WATCH', '{tx}c'], ['MULTI'], ['SET', '{tx}c', '1'], ['EXEC']]);
      expect(messageOf(watched.replies[3])).toMatch(UNCONFIRMED);

      const reads = await timed(() => rawCommands(port, [['MULTI'], ['GET', '{tx}read'], ['EXEC']]));
      expect((reads.reply as { replies: unknown[] }).replies[2]).toEqual(['r']);
      expect(reads.ms).toBeLessThan(NOT_HELD_MS);

      // EXEC answered null (a watched key changed) ran nothing: not held for the replicas.
      await watcher.watch('{tx}w');
      await other.set('{tx}w', 'theirs').catch(() => undefined);
      const aborted = await timed(() => watcher.multi().set('{tx}w', 'mine').exec());
      expect(aborted.reply).toBeNull();
      expect(aborted.ms).toBeLessThan(NOT_HELD_MS);
    });

    expect((await rawCommands(port, [['MULTI'], ['SET', '{tx}a', '2'], ['EXEC']])).replies).toEqual(['OK', 'QUEUED', ['OK']]);
    expect((await rawCommands(port, [['WATCH', '{tx}c'], ['MULTI'], ['SET', '{tx}c', '2'], ['EXEC']])).replies).toEqual(['OK', 'OK', 'QUEUED', ['OK']]);
    expect(await other.multi().set('{tx}b', '2').exec()).toEqual([[null, 'OK']]);
  });

  it('EVAL, EVALSHA and FCALL that write are answered NOREPLICAS, then their reply; EVAL_RO, EVALSHA_RO and FCALL_RO are not held', async () => {
    const client = viaProxy(ha);
    const primary = connect(shards.primaries[0]!);
    clients.push(client, primary);
    expect(await client.function('LOAD', 'REPLACE', LIBRARY)).toBe('durability');
    // Loaded through the proxy (which then knows the body) and behind its back (which it does not).
    const knownSha = (await client.script('LOAD', SET_SCRIPT)) as string;
    const unknownSha = (await primary.script('LOAD', `${SET_SCRIPT} -- loaded on the node`)) as string;
    const getSha = (await client.script('LOAD', GET_SCRIPT)) as string;
    expect(await client.set('script:read', 'r')).toBe('OK');

    await withReplicaPaused(async () => {
      const evaled = await timed(() => client.eval(SET_SCRIPT, 1, 'script:eval', 'v'));
      expect(evaled.reply).toMatch(UNCONFIRMED);
      expect(evaled.ms).toBeGreaterThanOrEqual(ACK_TIMEOUT_MS - 50);
      await expect(client.evalsha(knownSha, 1, 'script:known', 'v')).rejects.toThrow(UNCONFIRMED);
      await expect(client.evalsha(unknownSha, 1, 'script:unknown', 'v')).rejects.toThrow(UNCONFIRMED);
      await expect(client.fcall('setit', 1, 'script:fcall', 'v')).rejects.toThrow(UNCONFIRMED);

      for (const read of [
        () => client.eval_ro(GET_SCRIPT, 1, 'script:read'),
        () => client.evalsha_ro(getSha, 1, 'script:read'),
        () => client.fcall_ro('getit', 1, 'script:read'),
      ]) {
        const answer = await timed(read);
        expect(answer.reply).toBe('r');
        expect(answer.ms).toBeLessThan(NOT_HELD_MS);
      }
    });

    expect(await client.eval(SET_SCRIPT, 1, 'script:eval', 'v2')).toBe('OK');
    expect(await client.evalsha(knownSha, 1, 'script:known', 'v2')).toBe('OK');
    expect(await client.evalsha(unknownSha, 1, 'script:unknown', 'v2')).toBe('OK');
    expect(await client.fcall('setit', 1, 'script:fcall', 'v2')).toBe('OK');
  });

  it('BLMOVE, BLPOP and BZPOPMIN that pop are answered NOREPLICAS, then the item; a pop that times out answers nil unheld', async () => {
    const client = viaProxy(ha);
    const pusher = viaProxy(ha);
    clients.push(client, pusher);
    expect(await pusher.rpush('{q}src', 'a', 'b', 'c', 'd')).toBe(4);
    expect(await pusher.zadd('{q}z', 1, 'm1', 2, 'm2')).toBe(2);

    await withReplicaPaused(async () => {
      const moved = await timed(() => client.blmove('{q}src', '{q}dst', 'LEFT', 'RIGHT', 1));
      expect(moved.reply).toMatch(UNCONFIRMED);
      expect(moved.ms).toBeGreaterThanOrEqual(ACK_TIMEOUT_MS - 50);
      await expect(client.blpop('{q}src', 1)).rejects.toThrow(UNCONFIRMED);
      await expect(client.bzpopmin('{q}z', 1)).rejects.toThrow(UNCONFIRMED);

      // Blocked first, then fed: the pop's answer waits for the replicas all the same.
      const blocked = timed(() => client.blpop('{q}later', 5));
      await new Promise((resolve) => setTimeout(resolve, 100));
      await pusher.rpush('{q}later', 'x').catch(() => undefined);
      expect((await blocked).reply).toMatch(UNCONFIRMED);

      // Timed out: it popped nothing, so nil comes when the timeout ends, not after a WAIT.
      const empty = await timed(() => client.blpop('{q}empty', 0.2));
      expect(empty.reply).toBeNull();
      expect(empty.ms).toBeLessThan(200 + NOT_HELD_MS);
    });

    expect(await client.blmove('{q}src', '{q}dst', 'LEFT', 'RIGHT', 1)).toBe('c');
    expect(await client.blpop('{q}src', 1)).toEqual(['{q}src', 'd']);
    expect(await client.bzpopmin('{q}z', 1)).toEqual(['{q}z', 'm2', '2']);
  });
});

describe('noReplicaWrites: refuse, no healthy replica (minReplicaAcks: 1)', () => {
  let shards: Shards | undefined;
  let ha: HaProxy | undefined;
  const clients: Redis[] = [];

  afterAll(async () => {
    for (const client of clients.splice(0)) client.disconnect();
    await ha?.stop();
    await shards?.stopAll();
  });

  it('EXEC, EVAL, EVALSHA, FCALL and BLMOVE that write are refused and run nothing; reads still run; a refused WATCHed EXEC unwatches', async () => {
    shards = await startShards(1, { replicas: 1 });
    ha = await startHaProxy(shards, { extra: { minReplicaAcks: 1, noReplicaWrites: 'refuse' } });
    const client = viaProxy(ha);
    const other = viaProxy(ha);
    const primary = connect(shards.primaries[0]!);
    clients.push(client, other, primary);
    const port = ha.proxy.port;
    expect(await client.function('LOAD', 'REPLACE', LIBRARY)).toBe('durability');
    const sha = (await client.script('LOAD', SET_SCRIPT)) as string;
    expect(await client.rpush('{r}src', 'item')).toBe(1);
    expect(await client.set('{r}read', 'r')).toBe('OK');

    shards.replicas[0]![0]!.kill('SIGKILL');
    const stateFile = ha.stateFile;
    await waitFor('replica dropped', () => readStateFile(stateFile)?.topology.shards[0]!.readReplicas.length === 0, 5000);

    const exec = await rawCommands(port, [['MULTI'], ['SET', '{r}tx', '1'], ['EXEC']]);
    expect(messageOf(exec.replies[2])).toMatch(REFUSED);
    await expect(client.eval(SET_SCRIPT, 1, '{r}eval', 'v')).rejects.toThrow(REFUSED);
    await expect(client.evalsha(sha, 1, '{r}evalsha', 'v')).rejects.toThrow(REFUSED);
    await expect(client.fcall('setit', 1, '{r}fcall', 'v')).rejects.toThrow(REFUSED);
    const moved = await timed(() => client.blmove('{r}src', '{r}dst', 'LEFT', 'RIGHT', 5));
    expect(moved.reply).toMatch(REFUSED);
    expect(moved.ms).toBeLessThan(1000);
    expect(await primary.exists('{r}tx', '{r}eval', '{r}evalsha', '{r}fcall', '{r}dst')).toBe(0);
    expect(await primary.lrange('{r}src', 0, -1)).toEqual(['item']);

    // Reads are not writes.
    expect((await rawCommands(port, [['MULTI'], ['GET', '{r}read'], ['EXEC']])).replies[2]).toEqual(['r']);
    expect(await client.eval_ro(GET_SCRIPT, 1, '{r}read')).toBe('r');
    expect(await client.fcall_ro('getit', 1, '{r}read')).toBe('r');

    // The refused EXEC ends the WATCH, as any EXEC does: a later WATCH on the same connection
    // of the client's own is not aborted by a change to the key watched before.
    await client.watch('{r}w');
    await expect(client.multi().set('{r}w', 'mine').exec()).rejects.toThrow(REFUSED);
    expect(await primary.set('{r}w', 'changed')).toBe('OK');
    await client.watch('{r}other');
    expect(await client.multi().get('{r}read').exec()).toEqual([[null, 'r']]);
  });
});
