import type { CommandSpec } from '../commands/handling';
import type { ReplySlot } from '../reply/reply-slot';
import type { ClientPins } from './client-pins';

/**
 * What the dispatcher needs of a client connection. Declared here, by the callee, so dispatch/
 * never imports client/.
 */
export interface ClientContext {
  /** Unique per proxy process; also picks the client's connection in each node pool. */
  readonly id: number;
  /** Name set with CLIENT SETNAME / HELLO SETNAME. */
  name: string;
  /** `host:port` of the client. */
  readonly remoteAddress: string;
  /** The proxy address the client connected to (what cluster clients are told to use). */
  readonly localHost: string;
  readonly localPort: number;
  /** `host:port` of that address (`[ipv6]:port`), as CLIENT LIST's laddr. */
  readonly localAddress: string;
  /** Milliseconds since the epoch when the client connected. */
  readonly connectedAt: number;
  /** When the client last sent something (turn clock: monotonic seconds; CLIENT LIST's idle). */
  readonly lastActiveAt: number;
  /** Command table id of the client's last command, -1 before any (CLIENT LIST's cmd). */
  lastCommandId: number;
  /** Library name and version from CLIENT SETINFO. */
  libName: string;
  libVersion: string;
  /** Appends an awaited reply slot for a command of `spec` to the client's FIFO. */
  awaitReply(spec: CommandSpec): ReplySlot;
  /** Appends a reply the proxy already has; `spec` is null for a command not in the table. */
  reply(bytes: Buffer, spec: CommandSpec | null): void;
  /** Closes the connection once every reply queued so far is written (QUIT). */
  closeAfterReplies(): void;
  /** Closes the connection now. */
  destroy(): void;
  /** Stops reading the client's requests until every awaited reply is written (blocking commands). */
  holdUntilReplied(): void;
  /**
   * Runs `send` once every reply before `slot` is in, i.e. once the client's earlier commands
   * have run: a blocking command or WAIT on the client's own connection must not overtake
   * writes the client pipelined before it on the shared ones.
   */
  sendWhenFirst(slot: ReplySlot, send: () => void): void;
  /** Appends a Pub/Sub message for the client, in order with its replies. */
  push(bytes: Buffer): void;
  /**
   * The dispatcher's per-client state beyond plain commands (transaction, WATCH, blocking and
   * Pub/Sub connections); null for almost every client.
   */
  pins: ClientPins | null;
}
