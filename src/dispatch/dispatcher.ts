import type { ReplySink } from '../backend/reply-sink';
import type { NodePool } from '../backend/node-pool';
import type { ShardPool, BackendPools } from '../backend/shard-pool';
import { lookupCommand } from '../commands/command-table';
import type { CommandSpec } from '../commands/handling';
import type { CommandStats } from '../metrics/data-path-stats';
import { Gather } from '../reply/gather';
import type { RequestFrame } from '../resp/request-parser';
import { CROSSSLOT, encodeError } from '../resp/resp-writer';
import { fragment } from '../routing/fragmenter';
import { commandKeys, commandSlot, CROSS_SLOT, NO_KEYS } from '../routing/route-planner';
import type { BackendConnection } from '../backend/backend-connection';
import type { NodeAddress } from '../topology/topology';
import { MigratingRouter, type ShardConnections } from './migrating-router';
import type { Topology } from '../topology/topology';
import type { TopologyStore } from '../topology/topology-store';
import type { ClientContext } from './client-context';
import { LocalCommands, notAllowed, wrongArity, type ProxyIdentity } from './local-commands';
import { ParkedRequests, type ParkedRequest } from './parked-requests';

/** The settings the dispatcher acts on (a subset of ProxyConfig). */
export interface DispatcherOptions {
  readonly readFrom: 'primary' | 'preferReplica' | 'replica';
  readonly failoverWaitMs: number;
  readonly minReplicaAcks: number;
  readonly noReplicaWrites: 'refuse' | 'accept';
  /** MIGRATE timeout for keys moved on demand from a migrating slot. */
  readonly migrateTimeoutMs: number;
  readonly backendPassword: string | null;
}

/**
 * Carries out each request: looks the command up, asks routing where it goes, sends it to the
 * shard pools, and wires the reply (or the gather of a fan-out) to the client's reply slot.
 */
export class Dispatcher implements ShardConnections {
  readonly #pools: BackendPools;
  readonly #local: LocalCommands;
  #topology: Topology;
  /** Shard pools of the current topology, by shard index. */
  #shards: ShardPool[];
  /** Rotates keyless commands over the shards. */
  #nextShard = 0;
  readonly #options: DispatcherOptions;
  /** Requests waiting for a shard's failover to finish. */
  readonly #parked: ParkedRequests;

  readonly #stats: CommandStats;
  /** Commands on keys of migrating slots. */
  readonly #migrating: MigratingRouter;

  constructor(store: TopologyStore, pools: BackendPools, identity: ProxyIdentity, options: DispatcherOptions, stats: CommandStats) {
    this.#pools = pools;
    this.#stats = stats;
    this.#options = options;
    this.#local = new LocalCommands(identity);
    this.#topology = store.current;
    this.#shards = pools.update(store.current);
    this.#parked = new ParkedRequests((expired) => this.#failExpired(expired));
    this.#migrating = new MigratingRouter(this, { migrateTimeoutMs: options.migrateTimeoutMs, password: options.backendPassword });
    store.on('change', (next) => {
      this.#topology = next;
      this.#shards = pools.update(next);
      if (this.#parked.length > 0) {
        for (const r of this.#parked.release((shard) => !this.#shards[shard]!.info.isFailingOver)) {
          this.#send(r.shard, r.request, r.sink, r.clientId, r.isWrite, r.isReadonly);
        }
      }
    });
  }

  get topology(): Topology {
    return this.#topology;
  }

  dispatch(frame: RequestFrame, client: ClientContext): void {
    const start = frame.argStart[0]!;
    let spec = lookupCommand(frame.buf.toString('latin1', start, frame.argEnd[0]!));
    if (spec === undefined) {
      client.reply(unknownCommand(frame), null);
      return;
    }
    if (spec.subcommands !== null) {
      if (frame.argc < 2) {
        client.reply(wrongArity(spec.name), spec);
        return;
      }
      const sub = spec.subcommands.get(frame.argString(1).toLowerCase());
      if (sub === undefined) {
        client.reply(unknownSubcommand(frame, spec), spec);
        return;
      }
      spec = sub;
    }
    switch (spec.handling) {
      case 'single':
        this.#single(frame, spec, client);
        return;
      case 'split':
        this.#split(frame, spec, client);
        return;
      case 'broadcast':
        this.#broadcast(frame, spec, client);
        return;
      case 'any-shard':
        this.#send(this.#anyShard(), frame.bytes(), client.awaitReply(spec), client.id, spec.isWrite, spec.isReadonly);
        return;
      case 'local':
        this.#local.handle(frame, spec, client);
        return;
      case 'refused':
        client.reply(notAllowed(spec.name, spec.note), spec);
        return;
    }
  }

  /** Every key in one slot: the original bytes go to the owner's primary untouched. */
  #single(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    const slot = commandSlot(frame, spec);
    if (slot === CROSS_SLOT) {
      client.reply(CROSSSLOT, spec);
      return;
    }
    const topology = this.#topology;
    if (slot !== NO_KEYS && topology.migrations.size > 0) {
      const migration = topology.migrations.get(slot);
      if (migration !== undefined) {
        this.#migrating.send(commandKeys(frame, spec), migration, frame.bytes(), client.awaitReply(spec), client.id);
        return;
      }
    }
    const shard = slot === NO_KEYS ? this.#anyShard() : topology.slotOwner[slot]!;
    this.#send(shard, frame.bytes(), client.awaitReply(spec), client.id, spec.isWrite, spec.isReadonly);
  }

  /** MGET, MSET, DEL, ...: one sub-command per shard, merged by the gather. */
  #split(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    const step = spec.keyStep > 0 ? spec.keyStep : 1;
    if (frame.argc < 2 || (frame.argc - 1) % step !== 0) {
      client.reply(wrongArity(spec.name), spec);
      return;
    }
    const { fragments, keyFragment } = fragment(frame, spec, this.#topology.slotOwner, this.#topology.migrations);
    if (fragments.length === 1 && fragments[0]!.migration === null) {
      // All keys on one shard: no merge needed, forward the request as it came.
      this.#send(fragments[0]!.shard, frame.bytes(), client.awaitReply(spec), client.id, spec.isWrite, spec.isReadonly);
      return;
    }
    this.#stats.recordFanOut(fragments.length);
    const gather = new Gather(client.awaitReply(spec), spec.merge!, fragments.length, keyFragment);
    for (let f = 0; f < fragments.length; f++) {
      const piece = fragments[f]!;
      if (piece.migration !== null) this.#migrating.send(piece.keys, piece.migration, piece.parts, gather.piece(f), client.id);
      else this.#send(piece.shard, piece.parts, gather.piece(f), client.id, spec.isWrite, spec.isReadonly);
    }
  }

  /** Keyless commands every shard must run (DBSIZE, FLUSHALL, SCRIPT LOAD, ...). */
  #broadcast(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    const count = this.#shards.length;
    const bytes = frame.bytes();
    this.#stats.recordFanOut(count);
    const gather = new Gather(client.awaitReply(spec), spec.merge!, count, null);
    for (let s = 0; s < count; s++) this.#send(s, bytes, gather.piece(s), client.id, spec.isWrite, spec.isReadonly);
  }

  /**
   * The one place requests leave for a shard: parks them while the shard fails over, sends
   * readonly commands to a replica when readFrom says so, and confirms writes with WAIT when
   * minReplicaAcks asks for it.
   */
  #send(shardIndex: number, request: Buffer | readonly Buffer[], sink: ReplySink, clientId: number, isWrite: boolean, isReadonly: boolean): void {
    const shard = this.#shards[shardIndex]!;
    if (shard.info.isFailingOver) {
      const deadline = Date.now() + this.#options.failoverWaitMs;
      this.#parked.park({ shard: shardIndex, request, sink, clientId, isWrite, isReadonly, deadline });
      return;
    }
    const options = this.#options;
    let node: NodePool = shard.primary;
    if (isReadonly && options.readFrom !== 'primary') {
      const replica = readableReplica(shard, clientId);
      if (replica !== null) node = replica;
      else if (options.readFrom === 'replica') {
        sink.onFailure(encodeError(`ERR shard ${shard.info.name} has no readable replica (readFrom: replica)`));
        return;
      }
    }
    const connection = node.connection(clientId);
    if (isWrite && options.minReplicaAcks > 0) {
      if (shard.info.readReplicas.length >= options.minReplicaAcks) {
        connection.sendDurable(request, sink);
        return;
      }
      if (options.noReplicaWrites === 'refuse') {
        sink.onFailure(
          encodeError(`NOREPLICAS shard ${shard.info.name} has fewer than ${options.minReplicaAcks} healthy replica(s); write refused`),
        );
        return;
      }
    }
    if (Buffer.isBuffer(request)) connection.send(request, sink);
    else connection.sendParts(request, sink);
  }

  #failExpired(expired: ParkedRequest[]): void {
    for (const r of expired) {
      const name = this.#shards[r.shard]?.info.name ?? String(r.shard);
      r.sink.onFailure(encodeError(`TRYAGAIN shard ${name} is failing over; no new primary within ${this.#options.failoverWaitMs} ms`));
    }
  }

  primaryConnection(shard: number, clientId: number): BackendConnection {
    return this.#shards[shard]!.primary.connection(clientId);
  }

  primaryAddress(shard: number): NodeAddress {
    return this.#shards[shard]!.info.primary;
  }

  #anyShard(): number {
    this.#nextShard = (this.#nextShard + 1) % this.#shards.length;
    return this.#nextShard;
  }

  close(): void {
    this.#parked.close();
    this.#pools.close();
  }
}

/** A replica of the shard whose connection is not down, preferring the client's own. */
function readableReplica(shard: ShardPool, clientId: number): NodePool | null {
  const replicas = shard.replicas;
  for (let i = 0; i < replicas.length; i++) {
    const replica = replicas[(clientId + i) % replicas.length]!;
    if (replica.connection(clientId).state !== 'down') return replica;
  }
  return null;
}

/** redis-server's wording, with up to a few arguments quoted. */
function unknownCommand(frame: RequestFrame): Buffer {
  return encodeError(`ERR unknown command '${clip(frame.argString(0))}', with args beginning with: ${argsPreview(frame, 1)}`);
}

function unknownSubcommand(frame: RequestFrame, spec: CommandSpec): Buffer {
  return encodeError(
    `ERR unknown subcommand '${clip(frame.argString(1))}'. Try ${spec.name.toUpperCase()} HELP.`,
  );
}

function argsPreview(frame: RequestFrame, from: number): string {
  let text = '';
  for (let i = from; i < frame.argc && text.length < 128; i++) text += `'${clip(frame.argString(i))}' `;
  return text;
}

function clip(text: string): string {
  return text.length > 128 ? text.slice(0, 128) : text;
}
