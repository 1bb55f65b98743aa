/** A backend's address; structurally the config's Address, kept here so topology stays a leaf. */
export interface NodeAddress {
  readonly host: string;
  readonly port: number;
}

export function nodeKey(address: NodeAddress): string {
  return address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

export function sameNode(a: NodeAddress, b: NodeAddress): boolean {
  return a.port === b.port && a.host === b.host;
}

/** One shard of a snapshot. */
export interface ShardInfo {
  /** Position in `Topology.shards`; what the slot table holds. */
  readonly index: number;
  readonly name: string;
  readonly primary: NodeAddress;
  /** Every replica the shard has, failed or demoted ones included (what the state file records). */
  readonly replicas: readonly NodeAddress[];
  /**
   * The replicas readonly commands may go to (readFrom): healthy and replicating from the
   * current primary. The control plane fills it; a topology from config alone trusts them all.
   */
  readonly readReplicas: readonly NodeAddress[];
  /**
   * True while the control plane is replacing a failed primary: commands wait for the next
   * snapshot (bounded by failoverWaitMs) instead of failing.
   */
  readonly isFailingOver: boolean;
}

/** A slot moving between shards: keys are moved to `to` before a command touches them. */
/** How a write to a shard is confirmed under minReplicaAcks (writeConfirmation). */
export type WriteConfirmation = 'none' | 'wait' | 'refused';

/**
 * The one rule for a write to `shard`'s primary, be it a client's command or a key moved there:
 * - 'wait': minReplicaAcks is set and the shard has that many healthy replicas: WAIT for them;
 * - 'refused': it has fewer and noReplicaWrites refuses writes there (a replica found failed may
 *   come back and be promoted, so nothing unconfirmed may land);
 * - 'none': minReplicaAcks is 0, or too few replicas and noReplicaWrites accepts the write
 *   unconfirmed.
 */
export function writeConfirmation(shard: ShardInfo | undefined, minReplicaAcks: number, noReplicaWrites: 'refuse' | 'accept'): WriteConfirmation {
  if (minReplicaAcks <= 0 || shard === undefined) return 'none';
  if (shard.readReplicas.length >= minReplicaAcks) return 'wait';
  return noReplicaWrites === 'refuse' ? 'refused' : 'none';
}

export interface SlotMigration {
  readonly from: number;
  readonly to: number;
  /**
   * Keys of the slot being copied to `to` in chunks (big collections), each as the latin1
   * string of its bytes: commands on them wait in the data path until a snapshot without the
   * lock. Absent when none.
   */
  readonly lockedKeys?: ReadonlySet<string>;
  /**
   * No key of the slot moves before this time (ms since the epoch): commands routed to `from`
   * by the snapshots before this one may still be on their way there, on other connections than
   * the data path's key moves (with several connections per node, or several workers), and a
   * key moved before one of them lands would be written on both shards. Commands on the slot
   * wait until then. Absent when the control plane sees no such risk, or for a migration
   * resumed at start.
   */
  readonly movesFrom?: number;
}

export const SLOT_COUNT = 16384;

/**
 * An immutable picture of the deployment: shards, their nodes and which shard owns each slot.
 * The control plane builds a new one and publishes it whole; the data path only reads it.
 */
export class Topology {
  /** Increases with every published change. */
  readonly epoch: number;
  readonly shards: readonly ShardInfo[];
  /** slot -> index in `shards` of its owner. */
  readonly slotOwner: Uint16Array;
  /** Slots being migrated, by slot. Empty almost always. */
  readonly migrations: ReadonlyMap<number, SlotMigration>;

  constructor(epoch: number, shards: readonly ShardInfo[], slotOwner: Uint16Array, migrations: ReadonlyMap<number, SlotMigration> = new Map()) {
    if (slotOwner.length !== SLOT_COUNT) throw new RangeError(`slot table has ${slotOwner.length} entries, not ${SLOT_COUNT}`);
    for (let i = 0; i < shards.length; i++) {
      if (shards[i]!.index !== i) throw new RangeError(`shard ${shards[i]!.name} has index ${shards[i]!.index}, expected ${i}`);
    }
    for (let slot = 0; slot < SLOT_COUNT; slot++) {
      if (slotOwner[slot]! >= shards.length) throw new RangeError(`slot ${slot} points at shard ${slotOwner[slot]}, which does not exist`);
    }
    this.epoch = epoch;
    this.shards = Object.freeze([...shards]);
    this.slotOwner = slotOwner;
    this.migrations = migrations;
    Object.freeze(this);
  }

  /** Inclusive slot ranges owned by each shard, in shard order. */
  slotRanges(): [number, number][][] {
    const ranges: [number, number][][] = this.shards.map(() => []);
    let from = 0;
    for (let slot = 1; slot <= SLOT_COUNT; slot++) {
      if (slot === SLOT_COUNT || this.slotOwner[slot] !== this.slotOwner[from]) {
        ranges[this.slotOwner[from]!]!.push([from, slot - 1]);
        from = slot;
      }
    }
    return ranges;
  }

  /**
   * The shard named `name`, or undefined. The control plane keys shards by name: removing a
   * shard renumbers the ones after it, also while a step awaits a node.
   */
  shardNamed(name: string): ShardInfo | undefined {
    return this.shards.find((s) => s.name === name);
  }

  /** The shard commands on `slot` go to now: its owner, or its target while it migrates. */
  homeOf(slot: number): number {
    const migration = this.migrations.get(slot);
    return migration === undefined ? this.slotOwner[slot]! : migration.to;
  }

  /** Index of the shard named `name`; throws when there is none. */
  indexOfShard(name: string): number {
    const shard = this.shardNamed(name);
    if (shard === undefined) throw new Error(`shard ${name} is not in the topology`);
    return shard.index;
  }
}
