import type { BackendConnection } from '../backend/backend-connection';
import type { ReplySink } from '../backend/reply-sink';
import { encodeCommand, encodeError } from '../resp/resp-writer';
import type { NodeAddress, SlotMigration } from '../topology/topology';

/** What the router needs of the dispatcher: the client's connection to a shard's primary. */
export interface ShardConnections {
  primaryConnection(shard: number, clientId: number): BackendConnection;
  primaryAddress(shard: number): NodeAddress;
}

export interface MigratingRouterOptions {
  /** MIGRATE's timeout for keys moved on demand. @default 2000 */
  readonly migrateTimeoutMs: number;
  /** Backend password for MIGRATE's AUTH; null when none. */
  readonly password: string | null;
}

/**
 * Waits for the MIGRATE that moves a command's keys off the source, then sends the command to
 * the target. MIGRATE is atomic on the source, and a key already moved answers NOKEY, so a
 * command never runs while its key exists on both shards.
 */
class MoveThenSend implements ReplySink {
  readonly #router: MigratingRouter;
  readonly #migration: SlotMigration;
  readonly #request: Buffer | readonly Buffer[];
  readonly #sink: ReplySink;
  readonly #clientId: number;

  constructor(router: MigratingRouter, migration: SlotMigration, request: Buffer | readonly Buffer[], sink: ReplySink, clientId: number) {
    this.#router = router;
    this.#migration = migration;
    this.#request = request;
    this.#sink = sink;
    this.#clientId = clientId;
  }

  onReply(frame: Buffer): void {
    // +OK: moved. +NOKEY: nothing left on the source (moved before, or never there).
    if (frame[0] === 45) {
      this.#sink.onReply(encodeError(`ERR slotproxy could not move the key to its new shard: ${frame.toString('utf8', 1, frame.length - 2)}`));
      return;
    }
    this.#router.sendToTarget(this.#migration, this.#request, this.#sink, this.#clientId);
  }

  onFailure(error: Buffer): void {
    this.#sink.onFailure(error);
  }
}

/**
 * Commands on keys of a slot migrating from shard A to shard B: each key is moved to B first
 * (Codis's way over plain Redis), then the command runs on B. A client's commands to one slot
 * keep their order: their MIGRATEs queue on one source connection, and each command leaves for
 * the target when its MIGRATE answers, in that order, on one target connection.
 */
export class MigratingRouter {
  readonly #shards: ShardConnections;
  readonly #options: MigratingRouterOptions;

  constructor(shards: ShardConnections, options: MigratingRouterOptions) {
    this.#shards = shards;
    this.#options = options;
  }

  send(keys: readonly Buffer[], migration: SlotMigration, request: Buffer | readonly Buffer[], sink: ReplySink, clientId: number): void {
    if (keys.length === 0) {
      this.sendToTarget(migration, request, sink, clientId);
      return;
    }
    const target = this.#shards.primaryAddress(migration.to);
    const args: (Buffer | string)[] = ['MIGRATE', target.host, String(target.port), '', '0', String(this.#options.migrateTimeoutMs)];
    if (this.#options.password !== null) args.push('AUTH', this.#options.password);
    args.push('KEYS', ...keys);
    this.#shards
      .primaryConnection(migration.from, clientId)
      .send(encodeCommand(args), new MoveThenSend(this, migration, request, sink, clientId));
  }

  sendToTarget(migration: SlotMigration, request: Buffer | readonly Buffer[], sink: ReplySink, clientId: number): void {
    const connection = this.#shards.primaryConnection(migration.to, clientId);
    if (Buffer.isBuffer(request)) connection.send(request, sink);
    else connection.sendParts(request, sink);
  }
}
