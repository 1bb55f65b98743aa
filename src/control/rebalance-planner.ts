import { SLOT_COUNT, type Topology } from '../topology/topology';

/**
 * Which slots move where: pure decisions over a slot table, tested with tables. Shards are
 * named, not indexed, because removing a shard renumbers the ones after it.
 */

/** One slot to move. */
export interface SlotMove {
  readonly slot: number;
  /** Shard names. */
  readonly from: string;
  readonly to: string;
}

/** Who owns what, as the planner sees it. */
export interface SlotMap {
  /** Shard names, by index. */
  readonly names: readonly string[];
  /** slot -> index in `names`. Slots already migrating count as their target's. */
  readonly owner: Uint16Array;
}

/** A planning request that cannot be met (unknown shard, too many slots, ...). */
export class PlanError extends Error {
  override readonly name = 'PlanError';
}

/** Another plan is running; one runs at a time. */
export class PlanBusyError extends Error {
  override readonly name = 'PlanBusyError';
}

/** The slot map of a snapshot, each migrating slot given to the shard it is moving to. */
export function slotMapOf(topology: Topology): SlotMap {
  const owner = Uint16Array.from(topology.slotOwner);
  for (const [slot, migration] of topology.migrations) owner[slot] = migration.to;
  return { names: topology.shards.map((s) => s.name), owner };
}

/** Slots owned per shard index. */
export function slotCounts(map: SlotMap): number[] {
  const counts = map.names.map(() => 0);
  for (let slot = 0; slot < SLOT_COUNT; slot++) counts[map.owner[slot]!]!++;
  return counts;
}

/**
 * How many slots each shard should own: shares of 16384 in proportion to the weights, rounded
 * down, and the slots left over given by largest remainder (ties to the shard that owns more now,
 * so fewer slots move, then to the lower index). Equal weights give counts that differ by at most 1.
 */
export function targetCounts(weights: readonly number[], current: readonly number[]): number[] {
  // Scaled to the largest first: weights near Number.MAX_VALUE must not sum to Infinity.
  const largest = Math.max(0, ...weights);
  if (largest > 0) weights = weights.map((w) => w / largest);
  const total = weights.reduce((sum, w) => sum + w, 0);
  if (weights.length === 0 || !(total > 0)) throw new PlanError('at least one shard needs a weight above 0');
  const exact = weights.map((w) => (SLOT_COUNT * w) / total);
  const counts = exact.map((x) => Math.floor(x));
  let left = SLOT_COUNT - counts.reduce((sum, n) => sum + n, 0);
  const order = weights
    .map((_, i) => i)
    .filter((i) => weights[i]! > 0)
    .sort((a, b) => exact[b]! - counts[b]! - (exact[a]! - counts[a]!) || current[b]! - current[a]! || a - b);
  for (let k = 0; left > 0; k = (k + 1) % order.length, left--) counts[order[k]!]!++;
  return counts;
}

/**
 * The fewest moves that give every shard its target count. A shard with too many slots gives
 * its highest ones (its remaining ranges stay contiguous from the bottom); shards with too few
 * take them in index order, so each receives a few contiguous runs.
 */
export function planToCounts(map: SlotMap, targets: readonly number[]): SlotMove[] {
  const counts = slotCounts(map);
  const surplus = counts.map((n, i) => n - targets[i]!);
  /** Slots each giving shard hands over, highest first, then put back in ascending order. */
  const given: number[][] = map.names.map(() => []);
  for (let slot = SLOT_COUNT - 1; slot >= 0; slot--) {
    const owner = map.owner[slot]!;
    if (given[owner]!.length < surplus[owner]!) given[owner]!.push(slot);
  }
  const moves: SlotMove[] = [];
  let taker = 0;
  for (let giver = 0; giver < map.names.length; giver++) {
    for (const slot of given[giver]!.reverse()) {
      while (surplus[taker]! >= 0) taker++;
      moves.push({ slot, from: map.names[giver]!, to: map.names[taker]! });
      surplus[taker]!++;
    }
  }
  return moves;
}

/**
 * Even slot counts (or in proportion to `weights`, by shard name; unnamed shards weigh 1).
 * Shards named in `drain` get weight 0: every slot they own moves to the others.
 */
export function planRebalance(map: SlotMap, weights: Readonly<Record<string, number>> = {}, drain: readonly string[] = []): SlotMove[] {
  for (const name of [...Object.keys(weights), ...drain]) {
    if (!map.names.includes(name)) throw new PlanError(`no shard named ${name}`);
  }
  const values = map.names.map((name) => {
    if (drain.includes(name)) return 0;
    const w = weights[name] ?? 1;
    if (!Number.isFinite(w) || w < 0) throw new PlanError(`weight of ${name} must be a number >= 0, got ${w}`);
    return w;
  });
  return planToCounts(map, targetCounts(values, slotCounts(map)));
}

/** `count` slots from one shard to another (redis-cli's reshard), the giver's highest first. */
export function planReshard(map: SlotMap, from: string, to: string, count: number): SlotMove[] {
  const fromIndex = map.names.indexOf(from);
  const toIndex = map.names.indexOf(to);
  if (fromIndex < 0) throw new PlanError(`no shard named ${from}`);
  if (toIndex < 0) throw new PlanError(`no shard named ${to}`);
  if (fromIndex === toIndex) throw new PlanError('--from and --to name the same shard');
  const owned = slotCounts(map)[fromIndex]!;
  if (!Number.isInteger(count) || count < 1) throw new PlanError(`--slots must be a whole number >= 1, got ${count}`);
  if (count > owned) throw new PlanError(`${from} owns ${owned} slots; cannot move ${count}`);
  const slots: number[] = [];
  for (let slot = SLOT_COUNT - 1; slot >= 0 && slots.length < count; slot--) {
    if (map.owner[slot] === fromIndex) slots.push(slot);
  }
  return slots.reverse().map((slot) => ({ slot, from, to }));
}

/** The slot counts per shard name once `moves` are done. */
export function countsAfter(map: SlotMap, moves: readonly SlotMove[]): Record<string, number> {
  const counts = slotCounts(map);
  const result: Record<string, number> = {};
  map.names.forEach((name, i) => (result[name] = counts[i]!));
  for (const move of moves) {
    result[move.from]!--;
    result[move.to]!++;
  }
  return result;
}

/** Moves grouped by (from, to) with their slots as inclusive ranges: what a plan prints. */
export interface MoveGroup {
  readonly from: string;
  readonly to: string;
  readonly count: number;
  readonly ranges: readonly (readonly [number, number])[];
}

export function groupMoves(moves: readonly SlotMove[]): MoveGroup[] {
  const byPair = new Map<string, { from: string; to: string; slots: number[] }>();
  for (const move of moves) {
    const key = `${move.from}\u0000${move.to}`;
    let group = byPair.get(key);
    if (group === undefined) {
      group = { from: move.from, to: move.to, slots: [] };
      byPair.set(key, group);
    }
    group.slots.push(move.slot);
  }
  return [...byPair.values()].map((g) => ({ from: g.from, to: g.to, count: g.slots.length, ranges: toRanges(g.slots) }));
}

/** Sorted inclusive ranges of a set of slots. */
export function toRanges(slots: readonly number[]): [number, number][] {
  const sorted = [...slots].sort((a, b) => a - b);
  const ranges: [number, number][] = [];
  for (const slot of sorted) {
    const last = ranges[ranges.length - 1];
    if (last !== undefined && slot === last[1] + 1) last[1] = slot;
    else if (last === undefined || slot > last[1]) ranges.push([slot, slot]);
  }
  return ranges;
}

export function fromRanges(ranges: readonly (readonly [number, number])[]): number[] {
  const slots: number[] = [];
  for (const [from, to] of ranges) for (let slot = from; slot <= to; slot++) slots.push(slot);
  return slots;
}
