import type { ShardPool, BackendPools } from '../backend/shard-pool';
import { lookupCommand } from '../commands/command-table';
import type { CommandSpec } from '../commands/handling';
import { Gather } from '../reply/gather';
import type { RequestFrame } from '../resp/request-parser';
import { CROSSSLOT, encodeError } from '../resp/resp-writer';
import { fragment } from '../routing/fragmenter';
import { commandSlot, CROSS_SLOT, NO_KEYS } from '../routing/route-planner';
import type { Topology } from '../topology/topology';
import type { TopologyStore } from '../topology/topology-store';
import type { ClientContext } from './client-context';
import { LocalCommands, notAllowed, wrongArity, type ProxyIdentity } from './local-commands';

/**
 * Carries out each request: looks the command up, asks routing where it goes, sends it to the
 * shard pools, and wires the reply (or the gather of a fan-out) to the client's reply slot.
 */
export class Dispatcher {
  readonly #pools: BackendPools;
  readonly #local: LocalCommands;
  #topology: Topology;
  /** Shard pools of the current topology, by shard index. */
  #shards: ShardPool[];
  /** Rotates keyless commands over the shards. */
  #nextShard = 0;

  constructor(store: TopologyStore, pools: BackendPools, identity: ProxyIdentity) {
    this.#pools = pools;
    this.#local = new LocalCommands(identity);
    this.#topology = store.current;
    this.#shards = pools.update(store.current);
    store.on('change', (next) => {
      this.#topology = next;
      this.#shards = pools.update(next);
    });
  }

  get topology(): Topology {
    return this.#topology;
  }

  dispatch(frame: RequestFrame, client: ClientContext): void {
    const start = frame.argStart[0]!;
    let spec = lookupCommand(frame.buf.toString('latin1', start, frame.argEnd[0]!));
    if (spec === undefined) {
      client.reply(unknownCommand(frame));
      return;
    }
    if (spec.subcommands !== null) {
      if (frame.argc < 2) {
        client.reply(wrongArity(spec.name));
        return;
      }
      const sub = spec.subcommands.get(frame.argString(1).toLowerCase());
      if (sub === undefined) {
        client.reply(unknownSubcommand(frame, spec));
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
        this.#anyShard().primary.connection(client.id).send(frame.bytes(), client.awaitReply());
        return;
      case 'local':
        this.#local.handle(frame, spec, client);
        return;
      case 'refused':
        client.reply(notAllowed(spec.name, spec.note));
        return;
    }
  }

  /** Every key in one slot: the original bytes go to the owner's primary untouched. */
  #single(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    const slot = commandSlot(frame, spec);
    if (slot === CROSS_SLOT) {
      client.reply(CROSSSLOT);
      return;
    }
    const shard = slot === NO_KEYS ? this.#anyShard() : this.#shards[this.#topology.slotOwner[slot]!]!;
    shard.primary.connection(client.id).send(frame.bytes(), client.awaitReply());
  }

  /** MGET, MSET, DEL, ...: one sub-command per shard, merged by the gather. */
  #split(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    const step = spec.keyStep > 0 ? spec.keyStep : 1;
    if (frame.argc < 2 || (frame.argc - 1) % step !== 0) {
      client.reply(wrongArity(spec.name));
      return;
    }
    const { fragments, keyFragment } = fragment(frame, spec, this.#topology.slotOwner);
    if (fragments.length === 1) {
      // All keys on one shard: no merge needed, forward the request as it came.
      this.#shards[fragments[0]!.shard]!.primary.connection(client.id).send(frame.bytes(), client.awaitReply());
      return;
    }
    const gather = new Gather(client.awaitReply(), spec.merge!, fragments.length, keyFragment);
    for (let f = 0; f < fragments.length; f++) {
      const piece = fragments[f]!;
      this.#shards[piece.shard]!.primary.connection(client.id).sendParts(piece.parts, gather.piece(f));
    }
  }

  /** Keyless commands every shard must run (DBSIZE, FLUSHALL, SCRIPT LOAD, ...). */
  #broadcast(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    const shards = this.#shards;
    const bytes = frame.bytes();
    const gather = new Gather(client.awaitReply(), spec.merge!, shards.length, null);
    for (let s = 0; s < shards.length; s++) shards[s]!.primary.connection(client.id).send(bytes, gather.piece(s));
  }

  #anyShard(): ShardPool {
    const shards = this.#shards;
    this.#nextShard = (this.#nextShard + 1) % shards.length;
    return shards[this.#nextShard]!;
  }

  close(): void {
    this.#pools.close();
  }
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
