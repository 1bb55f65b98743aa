import type { OutputBuffer } from '../io/output-buffer';
import type { CommandStats } from '../metrics/data-path-stats';
import { ReplySlot, type SlotOwner } from './reply-slot';

/** Replies up to this long are copied into the output block when drained (see drainInto). */
const APPEND_LIMIT = 1024;

/**
 * A client's FIFO of awaited replies. Slots fill in any order (different shards answer at
 * different times) and leave strictly in request order.
 */
export class OrderedReplies {
  #head: ReplySlot | null = null;
  #tail: ReplySlot | null = null;
  /** Slots in the FIFO, done or not. */
  #length = 0;

  get length(): number {
    return this.#length;
  }

  /** The oldest slot still waiting to be written, or null. */
  get head(): ReplySlot | null {
    return this.#head;
  }

  get isHeadDone(): boolean {
    return this.#head !== null && this.#head.reply !== null;
  }

  /** Appends a new awaited slot. */
  add(owner: SlotOwner, commandId: number, commandClass: number, receivedAt: number): ReplySlot {
    const slot = new ReplySlot(owner, commandId, commandClass, receivedAt);
    this.#append(slot);
    return slot;
  }

  /** Appends a reply that is already known (local commands, errors). */
  addDone(owner: SlotOwner, reply: Buffer, commandId: number, commandClass: number, receivedAt: number): void {
    const slot = new ReplySlot(owner, commandId, commandClass, receivedAt);
    slot.reply = reply;
    this.#append(slot);
  }

  /**
   * Moves the done replies at the head into `out`, counting each in `stats` with its latency
   * up to `now`; returns how many left.
   */
  drainInto(out: OutputBuffer, stats: CommandStats, now: number): number {
    let count = 0;
    let slot = this.#head;
    while (slot !== null && slot.reply !== null) {
      const reply = slot.reply;
      // Short replies are copied next to the ones appended as they came, so the turn's output
      // stays one run of bytes (one write, no join); long ones are not copied again.
      if (reply.length <= APPEND_LIMIT) out.append(reply);
      else out.push(reply);
      stats.record(slot.commandId, slot.commandClass, reply[0] === 45, now - slot.receivedAt);
      slot = slot.next;
      count++;
    }
    this.#head = slot;
    if (slot === null) this.#tail = null;
    this.#length -= count;
    return count;
  }

  /**
   * Takes the head slot out, its reply already passed on by the caller, and counts it in
   * `stats` (an error when `isError`) with its latency up to `now`.
   */
  takeHead(isError: boolean, stats: CommandStats, now: number): void {
    const slot = this.#head!;
    stats.record(slot.commandId, slot.commandClass, isError, now - slot.receivedAt);
    this.#head = slot.next;
    if (this.#head === null) this.#tail = null;
    this.#length--;
  }

  /** The client is gone: outstanding replies are swallowed when they arrive. */
  cancelAll(): void {
    for (let slot = this.#head; slot !== null; slot = slot.next) slot.cancel();
    this.#head = null;
    this.#tail = null;
    this.#length = 0;
  }

  #append(slot: ReplySlot): void {
    if (this.#tail === null) this.#head = slot;
    else this.#tail.next = slot;
    this.#tail = slot;
    this.#length++;
  }
}
