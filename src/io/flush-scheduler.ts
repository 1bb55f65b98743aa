/** Something with buffered output to write once per event-loop turn. */
export interface Flushable {
  /** Set and cleared by the scheduler: true while queued for the next flush. */
  isFlushScheduled: boolean;
  flush(): void;
}

let queue: Flushable[] = [];
let isArmed = false;

function runFlushes(): void {
  isArmed = false;
  const due = queue;
  queue = [];
  for (const item of due) {
    item.isFlushScheduled = false;
    item.flush();
  }
}

/**
 * Coalesces writes: every socket that got data during this turn of the event loop is flushed
 * once, in the check phase (setImmediate), after all the turn's reads were handled. One
 * setImmediate serves every socket, so there is no closure or timer per write.
 */
export function scheduleFlush(item: Flushable): void {
  if (item.isFlushScheduled) return;
  item.isFlushScheduled = true;
  queue.push(item);
  if (!isArmed) {
    isArmed = true;
    setImmediate(runFlushes);
  }
}
