import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import type { ProxyConfig } from '../config/config-types';
import type { ProxyIdentity } from '../dispatch/local-commands';
import { log } from '../log/logger';
import { COMMAND_NAMES } from '../commands/command-table';
import { DataPathStats } from '../metrics/data-path-stats';
import { ReplyScanner } from '../resp/reply-scanner';
import { encodeCommand } from '../resp/resp-writer';
import { calculateSlot } from '../routing/key-slot';
import { Topology } from '../topology/topology';
import { TopologyStore } from '../topology/topology-store';
import { assembleDataPath } from './data-path';

/**
 * Runs a few commands through the data path's migrating branches once, at start, so that V8
 * optimizes the hot path with them in view.
 *
 * The first plan used to throw away the optimized code of the data path's hottest functions
 * (the dispatcher's `#single` and `#queue`, `runFlushes`, the backend connection's
 * `onReplyFrame` and its FIFO's `#push`: branches never taken and reply sinks of a class never
 * seen before), and every command ran slower until V8 had optimized them again, in the
 * plan's first seconds, when clients' p99 was at its worst (docs/resharding-latency.md).
 * Type feedback belongs to the functions, not to one dispatcher, so a private data path
 * trains the real one: its own listener on a loopback port of its own, its own backend
 * connections, and its own snapshot in which the slot of a key no one has is migrating. The
 * commands only read or change nothing (GET, EXISTS, MGET, `SET ... XX` and DEL of keys that
 * do not exist, one in the migrating slot and one elsewhere), so nothing lands on a shard that
 * does not own the slot: the key-move script finds no key on the source (+NOKEY), and the
 * command runs on the target.
 */

/**
 * Rounds of the commands. V8 gives a function its feedback vector only after its first calls
 * (8 by default), and nothing is recorded before: these are the data path's first commands.
 */
const ROUNDS = 20;
/** A rehearsal that has not finished by then is given up (a shard down or slow at start). */
const TIMEOUT_MS = 1_000;

/** Resolves with the number of commands answered with no error (0 when skipped); never rejects. */
export async function rehearseMigratingPath(config: ProxyConfig, topology: Topology, identity: ProxyIdentity): Promise<number> {
  if (topology.shards.length < 2) return 0;
  // The {slotproxy} tag is ours (the mover's marks live there); the random part makes sure no
  // client has the key.
  const key = `{slotproxy}:rehearsal:${randomBytes(8).toString('hex')}`;
  const sameSlot = `${key}:2`;
  const slot = calculateSlot(key);
  // A key of a slot that is not migrating, for the branches a plan's other commands take.
  let elsewhere = `slotproxy:rehearsal:${randomBytes(8).toString('hex')}`;
  while (calculateSlot(elsewhere) === slot) elsewhere += '+';
  const from = topology.slotOwner[slot]!;
  const to = (from + 1) % topology.shards.length;
  const store = new TopologyStore(new Topology(topology.epoch, topology.shards, topology.slotOwner, new Map([[slot, { from, to }]])));
  // Nothing is written, so no replica has anything to confirm.
  const rehearsal = { ...config, listen: { host: '127.0.0.1', port: 0 }, connectionsPerNode: 1, minReplicaAcks: 0, keyMoveWaitMs: TIMEOUT_MS / 2 };
  const { dispatcher, listener } = assembleDataPath(rehearsal, store, identity, new DataPathStats(COMMAND_NAMES));
  const startedAt = Date.now();
  try {
    const address = await listener.listen();
    const commands = [
      ['GET', key],
      ['GET', elsewhere],
      ['EXISTS', key, sameSlot],
      ['MGET', key, elsewhere],
      ['SET', key, '', 'XX'],
      ['DEL', key],
      ['DEL', key, elsewhere],
    ];
    const request = Buffer.concat(Array.from({ length: ROUNDS }, () => commands.map((c) => encodeCommand(c))).flat());
    const answers = await exchange(address.port, request, ROUNDS * commands.length);
    log.debug('migrating path rehearsed', { answers, ms: Date.now() - startedAt });
    return answers;
  } catch (err) {
    // Only a warm-up: the data path works without it.
    log.debug('migrating path rehearsal skipped', { error: (err as Error).message });
    return 0;
  } finally {
    await listener.close();
    dispatcher.close();
  }
}

/** Sends `request` on a new connection; resolves with how many of the `count` replies are not errors once all have come. */
function exchange(port: number, request: Buffer, count: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    let replies = 0;
    let errors = 0;
    const scanner = new ReplyScanner({
      onReplyFrame(buf, start) {
        replies++;
        if (buf[start] === 45) errors++;
      },
    });
    const fail = (err: Error): void => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(new Error(`no answer within ${TIMEOUT_MS} ms`)), TIMEOUT_MS);
    socket.on('connect', () => socket.write(request));
    socket.on('data', (chunk: Buffer) => {
      try {
        scanner.feed(chunk);
      } catch (err) {
        fail(err as Error);
        return;
      }
      if (replies >= count) {
        clearTimeout(timer);
        socket.destroy();
        resolve(replies - errors);
      }
    });
    socket.on('error', fail);
  });
}
