
import { describe, expect, it } from 'vitest';

import { OutputBuffer } from '../../src/io/output-buffer';
import { CommandStats } from '../../src/metrics/data-path-stats';
import { OrderedReplies } from '../../src/reply/ordered-replies';
import type { ReplySlot, SlotOwner } from '../../src/reply/reply-slot';

/** The client session, as a slot sees it: counts the slots that got their reply. */
class RecordingOwner implements SlotOwner {
  readonly done: ReplySlot[] = [];

  onSlotDone(slot: ReplySlot): void {
    this.done.push(slot);
  }

  onSlotReplyPassing(slot: ReplySlot, frame: Buffer): void {
    slot.reply = Buffer.from(frame);
    this.onSlotDone(slot);
  }
}

/** Command ids and class index the slots carry; their values do not matter to the ordering. */
const GET_ID = 0;
const SINGLE_CLASS = 0;

/** Appends an awaited slot, as a session does for a forwarded request. */
const awaitSlot = (replies: OrderedReplies, owner: SlotOwner, receivedAt = 0): ReplySlot =>
  replies.add(owner, GET_ID, SINGLE_CLASS, receivedAt);
/** Appends a reply known up front. */
const addKnown = (replies: OrderedReplies, owner: SlotOwner, reply: Buffer): void =>
  replies.addDone(owner, reply, GET_ID, SINGLE_CLASS, 0);

/** Drains the done head of `replies` and returns the bytes that would reach the client. */
function drain(replies: OrderedReplies, stats = new CommandStats(['get']), now = 0): { count: number; written: string } {
  const out = new OutputBuffer();
  const count = replies.drainInto(out, stats, now);
  const writes: Buffer[] = [];
  out.writeTo({
    write: (data: Buffer) => writes.push(data) > 0,
    writeAll: (parts: readonly Buffer[], count: number) => writes.push(...parts.slice(0, count)) > 0,
  });
  return { count, written: Buffer.concat(writes).toString('latin1') };
}

const reply = (i: number): Buffer => Buffer.from(`:${i}\r\n`);

/** Deterministic shuffle (Park-Miller), so a failure names a reproducible order. */
function shuffled(n: number, seed: number): number[] {
  const order = Array.from({ length: n }, (_, i) => i);
  let state = seed;
  for (let i = n - 1; i > 0; i--) {
    state = (state * 16807) % 2147483647;
    const j = state % (i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order;
}

describe('OrderedReplies', () => {
  it('flushes out-of-order completions strictly in request order', () => {
    const owner = new RecordingOwner();
    const replies = new OrderedReplies();
    const slots = Array.from({ length: 5 }, () => awaitSlot(replies, owner));
    expect(replies.length).toBe(5);

    // [fill order, what a drain right after it writes]
    const steps: [number, string][] = [
      [3, ''],
      [1, ''],
      [0, ':0\r\n:1\r\n'],
      [4, ''],
      [2, ':2\r\n:3\r\n:4\r\n'],
    ];
    for (const [index, expected] of steps) {
      slots[index]!.onReply(reply(index));
      expect(drain(replies).written, `after slot ${index}`).toBe(expected);
    }
    expect(replies.length).toBe(0);
    expect(owner.done).toEqual([slots[3], slots[1], slots[0], slots[4], slots[2]]);
  });

  it.each([1, 2, 3, 42, 1234])('keeps request order for 200 slots filled in shuffled order (seed %i)', (seed) => {
    const owner = new RecordingOwner();
    const replies = new OrderedReplies();
    const slots = Array.from({ length: 200 }, () => awaitSlot(replies, owner));
    let written = '';
    for (const index of shuffled(slots.length, seed)) {
      slots[index]!.onReply(reply(index));
      written += drain(replies).written;
    }
    expect(written).toBe(Array.from({ length: 200 }, (_, i) => `:${i}\r\n`).join(''));
    expect(replies.length).toBe(0);
  });

  it('mixes replies known up front (addDone) with awaited ones, in request order', () => {
    const owner = new RecordingOwner();
    const replies = new OrderedReplies();
    const first = awaitSlot(replies, owner);
    addKnown(replies, owner, Buffer.from('+PONG\r\n'));
    const third = awaitSlot(replies, owner);
    addKnown(replies, owner, Buffer.from('-CROSSSLOT\r\n'));
    expect(replies.isHeadDone).toBe(false);
    third.onReply(Buffer.from('$1\r\nx\r\n'));
    expect(drain(replies)).toEqual({ count: 0, written: '' });
    first.onReply(Buffer.from(':1\r\n'));
    expect(replies.isHeadDone).toBe(true);
    expect(drain(replies)).toEqual({ count: 4, written: ':1\r\n+PONG\r\n$1\r\nx\r\n-CROSSSLOT\r\n' });
    expect(owner.done).toEqual([third, first]); // addDone slots do not call back
  });

  it('reports the head state and length', () => {
    const owner = new RecordingOwner();
    const replies = new OrderedReplies();
    expect(replies.isHeadDone).toBe(false);
    expect(replies.length).toBe(0);
    const slot = awaitSlot(replies, owner);
    expect(replies.isHeadDone).toBe(false);
    slot.onReply(reply(1));
    expect(replies.isHeadDone).toBe(true);
    expect(replies.length).toBe(1);
    drain(replies);
    expect(replies.isHeadDone).toBe(false);
    expect(replies.length).toBe(0);
  });

  it('keeps working after it was emptied (tail reset)', () => {
    const owner = new RecordingOwner();
    const replies = new OrderedReplies();
    awaitSlot(replies, owner).onReply(reply(1));
    expect(drain(replies).written).toBe(':1\r\n');
    const a = awaitSlot(replies, owner);
    const b = awaitSlot(replies, owner);
    b.onReply(reply(3));
    a.onReply(reply(2));
    expect(drain(replies).written).toBe(':2\r\n:3\r\n');
  });

  it('a failure (onFailure) fills the slot with its error, in order', () => {
    const owner = new RecordingOwner();
    const replies = new OrderedReplies();
    const a = awaitSlot(replies, owner);
    const b = awaitSlot(replies, owner);
    b.onReply(reply(2));
    a.onFailure(Buffer.from('-ERR slotproxy: connection lost\r\n'));
    expect(drain(replies).written).toBe('-ERR slotproxy: connection lost\r\n:2\r\n');
  });

  it('takes the first reply of a slot and ignores later ones', () => {
    const owner = new RecordingOwner();
    const replies = new OrderedReplies();
    const slot = awaitSlot(replies, owner);
    slot.onReply(reply(1));
    slot.onReply(reply(2));
    slot.onFailure(Buffer.from('-ERR late\r\n'));
    expect(owner.done).toEqual([slot]);
    expect(drain(replies).written).toBe(':1\r\n');
  });

  it('cancelAll() empties the FIFO and makes late replies vanish without callbacks', () => {
    const owner = new RecordingOwner();
    const replies = new OrderedReplies();
    const slots = Array.from({ length: 4 }, () => awaitSlot(replies, owner));
    slots[1]!.onReply(reply(1));
    replies.cancelAll();
    expect(replies.length).toBe(0);
    expect(replies.isHeadDone).toBe(false);
    for (const slot of slots) expect(slot.isCanceled).toBe(true);

    slots[0]!.onReply(reply(0));
    slots[2]!.onFailure(Buffer.from('-ERR x\r\n'));
    expect(owner.done).toEqual([slots[1]]);
    expect(slots[0]!.reply).toBeNull();
    expect(drain(replies)).toEqual({ count: 0, written: '' });
  });

  it('counts each drained reply once in the per-command stats, errors and latency included', () => {
    const owner = new RecordingOwner();
    const replies = new OrderedReplies();
    const stats = new CommandStats(['get', 'set']);
    const a = replies.add(owner, 1, SINGLE_CLASS, 10);
    const b = replies.add(owner, 0, SINGLE_CLASS, 10.5);
    b.onReply(Buffer.from('-ERR x\r\n'));
    expect(drain(replies, stats, 11).count).toBe(0);
    expect(Array.from(stats.calls)).toEqual([0, 0, 0, 0]);
    a.onReply(Buffer.from('+OK\r\n'));
    expect(drain(replies, stats, 12).count).toBe(2);
    expect(Array.from(stats.calls)).toEqual([1, 1, 0, 0]);
    expect(Array.from(stats.errors)).toEqual([1, 0, 0, 0]);
    expect(stats.latency[SINGLE_CLASS]!.count).toBe(2);
    expect(stats.latency[SINGLE_CLASS]!.sum).toBeCloseTo(2 + 1.5);
  });

  it('accepts new slots after cancelAll()', () => {
    const owner = new RecordingOwner();
    const replies = new OrderedReplies();
    awaitSlot(replies, owner);
    replies.cancelAll();
    const slot = awaitSlot(replies, owner);
    slot.onReply(reply(7));
    expect(drain(replies)).toEqual({ count: 1, written: ':7\r\n' });
  });
});
