import type { ReplySink } from '../backend/reply-sink';

/** A slot's reply once it went straight to the client's output (SlotOwner.onSlotReplyPassing). */
export const PASSED_ON = Buffer.alloc(0);

/** Told when a slot it owns gets its reply. */
export interface SlotOwner {
  onSlotDone(slot: ReplySlot): void;
  /** The slot's reply is `buf[start..end)`, valid only during this call: used now or copied. */
  onSlotReplyPassing(slot: ReplySlot, buf: Buffer, start: number, end: number): void;
}

/**
 * One awaited reply in a client's FIFO (Envoy's PendingRequest, Twemproxy's msg in the client
 * out-queue). It is its own callback object, so a send needs no closure; it is also the cancel
 * handle: a cancelled slot drops the reply when it comes.
 */
export class ReplySlot implements ReplySink {
  /** The next slot in the client's FIFO. */
  next: ReplySlot | null = null;
  /** The reply bytes once known (its own copy, or built by the proxy); PASSED_ON once it went straight to the output. */
  reply: Buffer | null = null;
  isCanceled = false;
  /** Command table id of the request, for per-command counters. */
  readonly commandId: number;
  /** Index of the command's class (handling kind), for the latency histograms. */
  readonly commandClass: number;
  /** When the request was read (turn clock, seconds). */
  readonly receivedAt: number;
  readonly #owner: SlotOwner;

  constructor(owner: SlotOwner, commandId: number, commandClass: number, receivedAt: number) {
    this.#owner = owner;
    this.commandId = commandId;
    this.commandClass = commandClass;
    this.receivedAt = receivedAt;
  }

  onReply(frame: Buffer): void {
    if (this.isCanceled || this.reply !== null) return;
    this.reply = frame;
    this.#owner.onSlotDone(this);
  }

  /**
   * The reply as `buf[start..end)`, part of a backend read that the next read reuses
   * (backend-connection.ts): the owner copies it straight into the client's output when its turn
   * has come, or keeps a copy.
   */
  onPassingReply(buf: Buffer, start: number, end: number): void {
    if (this.isCanceled || this.reply !== null) return;
    this.#owner.onSlotReplyPassing(this, buf, start, end);
  }

  onFailure(error: Buffer): void {
    this.onReply(error);
  }

  cancel(): void {
    this.isCanceled = true;
  }
}
