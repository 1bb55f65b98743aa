import type { Address } from '../config/config-types';
import { nodeKey, type Topology } from '../topology/topology';
import {
  countsAfter,
  fromRanges,
  groupMoves,
  planRebalance,
  planReshard,
  slotCounts,
  slotMapOf,
  toRanges,
  type MoveGroup,
  type SlotMap,
  type SlotMove,
} from './rebalance-planner';
import type { BigKeyEntry } from './slot-mover';

/**
 * A resharding plan worked out against a slot table: which slots move where, and the view an
 * operator is shown. Pure, so it can run where its cost does not matter: in the mover's
 * process (slot-migrator.ts). On the data path's thread, cold (a plan runs rarely), these passes
 * over 16,384 slots and thousands of moves took 5-15 ms at a time while clients waited.
 */

/** What a client of the admin endpoint (or a reload) asks for. */
export type PlanRequest =
  | { readonly op: 'reshard'; readonly from: string; readonly to: string; readonly slots: number }
  | { readonly op: 'rebalance'; readonly weights?: Readonly<Record<string, number>> }
  | { readonly op: 'add-shard'; readonly name: string; readonly primary: string; readonly replicas?: readonly string[]; readonly rebalance?: boolean }
  | { readonly op: 'remove-shard'; readonly name: string };

export type PlanTrigger = 'admin' | 'reload' | 'startup';

/** A shard a plan adds. */
export interface ShardSpec {
  readonly name: string;
  readonly primary: Address;
  readonly replicas: readonly Address[];
}

/** The plan file's contents. */
export interface StoredPlan {
  readonly format: 'slotproxy-reshard';
  readonly version: 1;
  readonly id: string;
  readonly op: PlanRequest['op'] | 'resume';
  readonly trigger: PlanTrigger;
  readonly createdAt: string;
  readonly addShards: readonly ShardSpec[];
  readonly removeShards: readonly string[];
  /** Rebalance goal (weights by shard name, 1 when absent); null for an explicit reshard or none. */
  readonly weights: Readonly<Record<string, number>> | null;
  /** Explicit slots to move (reshard), as inclusive ranges. */
  readonly reshard: { readonly from: string; readonly to: string; readonly slots: readonly (readonly [number, number])[] } | null;
  /** Chunked copies under way: their temporary keys are removed before resuming. */
  readonly bigKeys: readonly BigKeyEntry[];
  /**
   * notify-keyspace-events of each node ("host:port") the plan's key indexes changed, as it was
   * before: put back when the plan ends, also after a crash (absent in plan files of older builds).
   */
  readonly notifyFlags?: Readonly<Record<string, string>>;
}

/** A plan as shown before it runs and while it runs. */
export interface PlanView {
  readonly id: string;
  readonly op: StoredPlan['op'];
  readonly trigger: PlanTrigger;
  readonly addShards: readonly { readonly name: string; readonly primary: string; readonly replicas: readonly string[] }[];
  readonly removeShards: readonly string[];
  readonly slotsToMove: number;
  /** Every move of the plan, grouped by (from, to) with the slots as ranges. */
  readonly moves: readonly MoveGroup[];
  /** Slots per shard now and once the plan is done. */
  readonly countsBefore: Readonly<Record<string, number>>;
  readonly countsAfter: Readonly<Record<string, number>>;
}

/** A plan to work out; `reshardCount` set for a new reshard, whose slots are chosen here. */
export interface PlanJob {
  readonly plan: StoredPlan;
  readonly reshardCount?: number;
}

/** A worked-out plan: the plan to store (a reshard's slots filled in) and its view. */
export interface PlannedWork {
  readonly plan: StoredPlan;
  readonly view: PlanView;
}

/**
 * Works out a plan against `topology`: the moves it needs from the current slot table (plus the
 * slots left migrating, to finish them) and its view.
 * @throws PlanError when the plan cannot be made (unknown shard, bad weight, too many slots)
 */
export function workOutPlan(topology: Topology, job: PlanJob): PlannedWork {
  let plan = job.plan;
  const map = planMap(topology, plan);
  if (job.reshardCount !== undefined && plan.reshard !== null) {
    const { from, to } = plan.reshard;
    const chosen = planReshard(map, from, to, job.reshardCount);
    plan = { ...plan, reshard: { from, to, slots: toRanges(chosen.map((m) => m.slot)) } };
  }
  let moves: SlotMove[];
  if (plan.reshard !== null) {
    const { from, to } = plan.reshard;
    moves = fromRanges(plan.reshard.slots).map((slot) => ({ slot, from, to }));
  } else if (plan.weights === null) {
    moves = [];
  } else {
    moves = planRebalance(map, plan.weights, plan.removeShards.filter((name) => map.names.includes(name)));
  }
  const planned = new Set(moves.map((m) => m.slot));
  for (const [slot, m] of topology.migrations) {
    if (!planned.has(slot)) moves.push({ slot, from: topology.shards[m.from]!.name, to: topology.shards[m.to]!.name });
  }
  return { plan, view: viewOf(topology, plan, map, moves) };
}

/** The moves a view lists, one per slot. */
export function movesOf(groups: readonly MoveGroup[]): SlotMove[] {
  const moves: SlotMove[] = [];
  for (const group of groups) {
    for (const slot of fromRanges(group.ranges)) moves.push({ slot, from: group.from, to: group.to });
  }
  return moves;
}

function viewOf(topology: Topology, plan: StoredPlan, map: SlotMap, moves: readonly SlotMove[]): PlanView {
  // Slots already migrating count as their source's until they are moved (on a copy: `map`
  // has them as their targets').
  const fromMap: SlotMap = { names: map.names, owner: Uint16Array.from(map.owner) };
  for (const [slot, m] of topology.migrations) fromMap.owner[slot] = m.from;
  const before: Record<string, number> = {};
  slotCounts(fromMap).forEach((n, i) => (before[fromMap.names[i]!] = n));
  return {
    id: plan.id,
    op: plan.op,
    trigger: plan.trigger,
    addShards: plan.addShards.map((s) => ({ name: s.name, primary: nodeKey(s.primary), replicas: s.replicas.map((r) => nodeKey(r)) })),
    removeShards: plan.removeShards,
    slotsToMove: moves.length,
    moves: groupMoves(moves),
    countsBefore: before,
    countsAfter: countsAfter(fromMap, moves),
  };
}

/** The slot map the plan works on: the snapshot's (migrating slots as their targets'), plus the shards the plan adds. */
function planMap(topology: Topology, plan: StoredPlan): SlotMap {
  const map = slotMapOf(topology);
  const added = plan.addShards.filter((s) => !map.names.includes(s.name)).map((s) => s.name);
  return added.length === 0 ? map : { names: [...map.names, ...added], owner: map.owner };
}
