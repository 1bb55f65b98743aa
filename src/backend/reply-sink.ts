/**
 * What a backend connection calls back when a request completes. Declared here, by the callee;
 * reply slots and fan-out pieces implement it, so backend/ never imports them.
 */
export interface ReplySink {
  /** The complete reply frame, a view of the bytes read from the backend. */
  onReply(frame: Buffer): void;
  /**
   * The request got no reply (connection lost, shard unavailable). `error` is an encoded RESP
   * error; the command may or may not have run.
   */
  onFailure(error: Buffer): void;
}

/** Swallows a reply nobody waits for (MULTI's +OK inside a batch, a fire-and-forget UNWATCH). */
export const IGNORE_REPLY: ReplySink = {
  onReply(): void {},
  onFailure(): void {},
};
