/** Something with buffered output to write once per event-loop turn. */
export interface Flushable {
  /** Set and cleared by the scheduler: true while queued for a flush (this turn's or the next). */
  isFlushScheduled: boolean;
  /** Set and cleared by the scheduler: true while queued for the next turn's flush only. */
  isFlushDeferred: boolean;
  /** Flushed before the others of its turn (backend connections). */
  readonly flushesFirst: boolean;
  /**
   * Asked of an item that flushes first, before its flush: true when its output is a batch
   * small enough that one more turn may grow it (requests arriving meanwhile go in the same
   * write). The scheduler then flushes it in the next turn without asking again, so a batch
   * waits one turn at most. Not asked of the others.
   */
  isWorthHolding?(): boolean;
  flush(): void;
}

let queue: Flushable[] = [];
let nextTurn: Flushable[] = [];
/** Held by this turn's flush (isWorthHolding): flushed by the next one, unasked. */
let held: Flushable[] = [];
let isArmed = false;

function runFlushes(): void {
  isArmed = false;
  const due = queue;
  queue = [];
  const deferred = nextTurn;
  nextTurn = [];
  const heldLastTurn = held;
  held = [];
  // Requests to the shards go out before the replies to the clients, so the shards work on
  // them while the proxy makes its (many, one per client) reply writes. A small batch may wait
  // one turn instead: the next poll does not block (this flush is armed), and takes in the
  // requests the clients sent while their replies were being written.
  for (const item of heldLastTurn) {
    if (item.isFlushScheduled) flushItem(item);
  }
  for (const item of due) {
    if (!item.isFlushScheduled || !item.flushesFirst) continue;
    if (item.isWorthHolding?.() === true) held.push(item);
    else flushItem(item);
  }
  for (const item of due) {
    // Flushed above already, or (the second time it is listed) brought forward.
    if (item.isFlushScheduled && !item.flushesFirst) flushItem(item);
  }
  // Deferred during this turn: due in the next one (unless brought forward and flushed above).
  for (const item of deferred) {
    if (!item.isFlushScheduled) continue;
    item.isFlushDeferred = false;
    queue.push(item);
  }
  if (queue.length > 0 || held.length > 0) arm();
}

function flushItem(item: Flushable): void {
  item.isFlushScheduled = false;
  item.isFlushDeferred = false;
  item.flush();
}

function arm(): void {
  if (isArmed) return;
  isArmed = true;
  setImmediate(runFlushes);
}

/**
 * Coalesces writes: every socket that got data during this turn of the event loop is flushed
 * once, in the check phase (setImmediate), after all the turn's reads were handled. One
 * setImmediate serves every socket, so there is no closure or timer per write.
 */
export function scheduleFlush(item: Flushable): void {
  if (item.isFlushScheduled && !item.isFlushDeferred) return;
  item.isFlushScheduled = true;
  item.isFlushDeferred = false;
  queue.push(item);
  arm();
}

/**
 * A flush for the next turn's check phase, not this one's: for output that is only part of
 * what its reader waits for (a pipeline's first replies while its others are still with other
 * shards), so that the rest, which mostly comes within a turn, goes in the same write. Brought
 * forward by a `scheduleFlush` meanwhile.
 */
export function scheduleFlushNextTurn(item: Flushable): void {
  if (item.isFlushScheduled) return;
  item.isFlushScheduled = true;
  item.isFlushDeferred = true;
  nextTurn.push(item);
  arm();
}
