import { describe, expect, it } from 'vitest';

import { scheduleFlush, scheduleFlushNextTurn, type Flushable } from '../../src/io/flush-scheduler';

/** Records the event-loop turn (counted by the test) of each of its flushes. */
class Recorder implements Flushable {
  isFlushScheduled = false;
  isFlushDeferred = false;
  readonly flushesFirst: boolean;
  readonly flushedAt: number[] = [];
  /** Turns in which the scheduler asked whether to hold it. */
  readonly askedAt: number[] = [];
  onFlush: (() => void) | null = null;
  /** Whether it is worth holding whenever asked. */
  wantsHold = false;

  constructor(
    private readonly turn: () => number,
    flushesFirst = false,
  ) {
    this.flushesFirst = flushesFirst;
  }

  isWorthHolding(): boolean {
    this.askedAt.push(this.turn());
    return this.wantsHold;
  }

  flush(): void {
    this.flushedAt.push(this.turn());
    this.onFlush?.();
  }
}

/** Runs `steps[i]` in turn i (each in its own macrotask, so each flush phase falls between). */
async function inTurns(steps: readonly (() => void)[]): Promise<void> {
  for (const step of steps) {
    step();
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  await new Promise((resolve) => setTimeout(resolve, 5));
}

describe('flush scheduler', () => {
  it('flushes an item once in the turn it was scheduled, however often it was scheduled', async () => {
    let turn = 0;
    const item = new Recorder(() => turn);
    await inTurns([
      () => {
        scheduleFlush(item);
        scheduleFlush(item);
      },
      () => (turn = 1),
    ]);
    expect(item.flushedAt).toEqual([0]);
    expect(item.isFlushScheduled).toBe(false);
  });

  it('flushes a deferred item in the next turn, not this one', async () => {
    let turn = 0;
    const now = new Recorder(() => turn);
    const later = new Recorder(() => turn);
    let laterFlushesAtFirstFlush = -1;
    now.onFlush = () => {
      laterFlushesAtFirstFlush = later.flushedAt.length;
      // Queued during this turn's flush phase: runs in the next turn's check phase, first.
      setImmediate(() => (turn = 1));
    };
    await inTurns([
      () => {
        scheduleFlushNextTurn(later);
        scheduleFlushNextTurn(later);
        scheduleFlush(now);
      },
    ]);
    expect(now.flushedAt).toEqual([0]);
    expect(laterFlushesAtFirstFlush).toBe(0);
    expect(later.flushedAt).toEqual([1]);
  });

  it('brings a deferred flush forward when the item is scheduled for this turn, and flushes it only once', async () => {
    let turn = 0;
    const item = new Recorder(() => turn);
    await inTurns([
      () => {
        scheduleFlushNextTurn(item);
        scheduleFlush(item);
        setImmediate(() => setImmediate(() => (turn = 1)));
      },
    ]);
    expect(item.flushedAt).toEqual([0]);
  });

  it('does not defer what is already due this turn, and takes items scheduled during a flush in the next run', async () => {
    let turn = 0;
    const first = new Recorder(() => turn);
    const second = new Recorder(() => turn);
    first.onFlush = () => {
      if (first.flushedAt.length === 1) scheduleFlush(second);
    };
    await inTurns([
      () => {
        scheduleFlush(first);
        scheduleFlushNextTurn(first);
        setImmediate(() => (turn = 1));
      },
    ]);
    expect(first.flushedAt).toEqual([0]);
    expect(second.flushedAt).toEqual([1]);
  });

  it('flushes the items marked to go first (backend connections) before the others of the turn', async () => {
    const order: string[] = [];
    const item = (name: string, flushesFirst: boolean): Flushable => ({
      isFlushScheduled: false,
      isFlushDeferred: false,
      flushesFirst,
      flush: () => order.push(name),
    });
    const client1 = item('client 1', false);
    const backend = item('backend', true);
    const client2 = item('client 2', false);
    await inTurns([
      () => {
        scheduleFlush(client1);
        scheduleFlush(backend);
        scheduleFlush(client2);
      },
    ]);
    expect(order).toEqual(['backend', 'client 1', 'client 2']);
  });

  it('keeps a first-flushing item worth holding for the next turn, once (it still wants holding then), flushes the clients now, and asks only first-flushing items', async () => {
    let turn = 0;
    const backend = new Recorder(() => turn, true);
    const client = new Recorder(() => turn);
    backend.wantsHold = true;
    client.wantsHold = true;
    // Queued during this turn's flush phase, before the held item's flush: runs first next turn.
    client.onFlush = () =>
      setImmediate(() => {
        turn = 1;
        // More output for the held item: it joins the held flush, no second one.
        scheduleFlush(backend);
      });
    await inTurns([
      () => {
        scheduleFlush(backend);
        scheduleFlush(client);
      },
    ]);
    expect(client.flushedAt).toEqual([0]);
    expect(client.askedAt).toEqual([]);
    // Asked in turn 0 only: held once, flushed in turn 1 although it would still hold.
    expect(backend.askedAt).toEqual([0]);
    expect(backend.flushedAt).toEqual([1]);
    expect(backend.isFlushScheduled).toBe(false);
  });
});
