import type { BackendConnection, PushSink } from '../backend/backend-connection';
import type { ReplySink } from '../backend/reply-sink';
import type { CommandSpec } from '../commands/handling';
import type { RequestFrame } from '../resp/request-parser';
import type { ClientContext } from './client-context';
import type { Topology } from '../topology/topology';
import type { WriteDurability } from './write-durability';

/** What the command handlers beside the dispatcher need of it: the shards and how to reach them. */
export interface ShardAccess {
  readonly topology: Topology;
  /** How long requests wait for a shard's failover (parked) before they fail. */
  readonly failoverWaitMs: number;
  /** minReplicaAcks and noReplicaWrites, for writes sent on a connection the caller holds (EXEC, blocking pops). */
  readonly writeDurability: WriteDurability;
  /** Sends through the shared pools (failover parking, readFrom and durable writes apply). */
  send(shard: number, request: Buffer | readonly Buffer[], sink: ReplySink, clientId: number, isWrite: boolean, isReadonly: boolean): void;
  /** The client's shared connection to a shard's primary. */
  primaryConnection(shard: number, clientId: number): BackendConnection;
  /** A new connection of the client's own to a shard's primary; the caller closes it. */
  dedicatedConnection(shard: number, pushSink?: PushSink): BackendConnection;
  /** Routes a command by the slot of its keys, exactly as plain commands go (migrations too). */
  sendSingle(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void;
  /** A shard for a keyless command, rotating. */
  anyShard(): number;
  /**
   * Whether the migrating router holds commands on `slot` (its slot settled while they waited):
   * a command sent past the router (EXEC, WATCH) must not overtake the client's own held ones.
   */
  isHeldByRouter(slot: number): boolean;
}
