import type { ReplySink } from '../backend/reply-sink';
import type { Merge } from '../commands/handling';
import {
  firstErrorIndex,
  mergeAllOk,
  mergeDistinctUnion,
  mergeFirst,
  mergeLogicalAnd,
  mergeMget,
  mergePairSum,
  mergeSum,
  mergeUnion,
  mergeLatestPerEvent,
  mergeNewestFirst,
} from './reducers';

/** Whatever collects the replies of several pieces (a fan-out's gather, INFO, CONFIG SET). */
export interface PieceOwner {
  onPiece(index: number, frame: Buffer): void;
}

/** One piece's callback object: tells its owner which piece answered, without a closure. */
export class PieceSink implements ReplySink {
  readonly #gather: PieceOwner;
  readonly #index: number;

  constructor(gather: PieceOwner, index: number) {
    this.#gather = gather;
    this.#index = index;
  }

  onReply(frame: Buffer): void {
    this.#gather.onPiece(this.#index, frame);
  }

  onFailure(error: Buffer): void {
    this.#gather.onPiece(this.#index, error);
  }
}

/**
 * The parent of a fan-out (Twemproxy's frag_owner): counts the pieces' replies and, once all are
 * in, builds the one reply and hands it to the client's slot. One failed piece fails the whole
 * command with its error.
 */
export class Gather implements PieceOwner {
  readonly #target: ReplySink;
  readonly #merge: Merge;
  readonly #keyFragment: readonly number[] | null;
  /** Items the merged reply holds at most (SLOWLOG GET's count). */
  readonly #limit: number;
  /** Reply frame of each piece, by piece index. */
  readonly #replies: Buffer[];
  #received = 0;

  constructor(target: ReplySink, merge: Merge, pieceCount: number, keyFragment: readonly number[] | null, limit = Number.POSITIVE_INFINITY) {
    this.#target = target;
    this.#merge = merge;
    this.#keyFragment = keyFragment;
    this.#limit = limit;
    this.#replies = new Array<Buffer>(pieceCount);
  }

  piece(index: number): ReplySink {
    return new PieceSink(this, index);
  }

  onPiece(index: number, frame: Buffer): void {
    if (this.#replies[index] !== undefined) return;
    this.#replies[index] = frame;
    if (++this.#received === this.#replies.length) this.#target.onReply(this.#build());
  }

  #build(): Buffer {
    const replies = this.#replies;
    const failed = firstErrorIndex(replies);
    if (failed >= 0) return replies[failed]!;
    switch (this.#merge) {
      case 'mget':
        return mergeMget(replies, this.#keyFragment!);
      case 'sum':
        return mergeSum(replies);
      case 'all-ok':
        return mergeAllOk(replies);
      case 'first':
        return mergeFirst(replies);
      case 'union':
        return mergeUnion(replies);
      case 'logical-and':
        return mergeLogicalAnd(replies);
      case 'pair-sum':
        return mergePairSum(replies);
      case 'distinct-union':
        return mergeDistinctUnion(replies);
      case 'newest-first':
        return mergeNewestFirst(replies, this.#limit);
      case 'latest-per-event':
        return mergeLatestPerEvent(replies);
    }
  }
}
