/**
 * What a backend connection calls back when a request completes. Declared here, by the callee;
 * reply slots and fan-out pieces implement it, so backend/ never imports them.
 */
export interface ReplySink {
  /** The complete reply frame: the sink's to keep. */
  onReply(frame: Buffer): void;
  /**
   * When present, called instead of onReply with a frame valid only during the call:
   * `buf[start..end)` of a read buffer the next read reuses (no view of it is made, one fewer
   * allocation per reply). The sink copies what it keeps. Sinks without it get a copy through
   * onReply.
   */
  onPassingReply?(buf: Buffer, start: number, end: number): void;
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
