import { SINGLE_WRITE, type BackendConnection, type DurableReplies } from '../backend/backend-connection';
import type { ReplySink } from '../backend/reply-sink';
import { PieceSink, type PieceOwner } from '../reply/gather';
import { decodeReply } from '../resp/reply-decoder';
import { encodeCommand, encodeError, encodeReply, NULL_BULK, type RespValue } from '../resp/resp-writer';
import type { ShardInfo } from '../topology/topology';
import type { WriteDurability } from './write-durability';

/**
 * Reply sinks for the commands whose reply the proxy must look at before the client sees it.
 * Each is one object per command, holding what the next step needs.
 */

/** Bits of a virtual SCAN cursor that carry the shard index (up to 1024 shards). */
export const SCAN_SHARD_BITS = 10n;
const SCAN_SHARD_MASK = (1n << SCAN_SHARD_BITS) - 1n;

/** A virtual SCAN cursor split into the shard and that shard's own cursor; null if malformed. */
export function decodeScanCursor(text: string): { shard: number; cursor: bigint } | null {
  if (!/^\d+$/.test(text)) return null;
  const value = BigInt(text);
  if (value >= 1n << 64n) return null;
  return { shard: Number(value & SCAN_SHARD_MASK), cursor: value >> SCAN_SHARD_BITS };
}

/**
 * Rewrites a shard's SCAN reply: its next cursor becomes a virtual one carrying the shard;
 * a finished shard hands over to the next shard, and the last one ends the scan with 0.
 */
export class ScanSink implements ReplySink {
  readonly #target: ReplySink;
  readonly #shard: number;
  readonly #shardCount: number;

  constructor(target: ReplySink, shard: number, shardCount: number) {
    this.#target = target;
    this.#shard = shard;
    this.#shardCount = shardCount;
  }

  onReply(frame: Buffer): void {
    const value = decodeReply(frame);
    if (!Array.isArray(value) || value.length !== 2 || !Buffer.isBuffer(value[0])) {
      this.#target.onReply(frame);
      return;
    }
    const next = BigInt((value[0] as Buffer).toString('latin1'));
    let virtual: bigint;
    if (next !== 0n) virtual = (next << SCAN_SHARD_BITS) | BigInt(this.#shard);
    else virtual = this.#shard + 1 < this.#shardCount ? BigInt(this.#shard + 1) : 0n;
    this.#target.onReply(encodeReply([Buffer.from(virtual.toString()), value[1] as RespValue]));
  }

  onFailure(error: Buffer): void {
    this.#target.onFailure(error);
  }
}

/** Sends a keyless request to the next shard; what RANDOMKEY's retries need of the dispatcher. */
export interface ShardSender {
  sendToShard(shard: number, request: Buffer, sink: ReplySink, clientId: number): void;
}

/** RANDOMKEY: a shard with no keys answers nil; then the next shard is asked, until all were. */
export class FirstNonEmptySink implements ReplySink {
  readonly #target: ReplySink;
  readonly #sender: ShardSender;
  readonly #request: Buffer;
  readonly #clientId: number;
  readonly #shardCount: number;
  #shard: number;
  #tried = 1;

  constructor(target: ReplySink, sender: ShardSender, request: Buffer, clientId: number, firstShard: number, shardCount: number) {
    this.#target = target;
    this.#sender = sender;
    this.#request = request;
    this.#clientId = clientId;
    this.#shard = firstShard;
    this.#shardCount = shardCount;
  }

  onReply(frame: Buffer): void {
    if (frame.equals(NULL_BULK) && this.#tried < this.#shardCount) {
      this.#tried++;
      this.#shard = (this.#shard + 1) % this.#shardCount;
      this.#sender.sendToShard(this.#shard, this.#request, this, this.#clientId);
      return;
    }
    this.#target.onReply(frame);
  }

  onFailure(error: Buffer): void {
    this.#target.onFailure(error);
  }
}

/** SCRIPT LOAD's reply before the EVALSHA's, swallowed; the EVALSHA's is the write's own. */
const LOADED_THEN_RUN: DurableReplies = { ignored: 1, isNullUnwritten: false };

/** A script the proxy has seen (EVAL or SCRIPT LOAD), by the sha1 EVALSHA names it by. */
export interface KnownScript {
  readonly sha: string;
  readonly body: Buffer;
}

/**
 * EVALSHA of a script the proxy has seen (EVAL or SCRIPT LOAD) answered NOSCRIPT by a shard
 * that never ran it: load it there and run the EVALSHA again, so the client never sees it.
 * An EVALSHA that may write (not EVALSHA_RO) goes, both times, as writeDurability says.
 */
export class NoScriptSink implements ReplySink {
  readonly #target: ReplySink;
  readonly #connection: BackendConnection;
  readonly #body: Buffer;
  readonly #request: Buffer;
  readonly #durability: WriteDurability;
  /** The shard the connection writes to; null for EVALSHA_RO, which writes nothing. */
  readonly #writesTo: ShardInfo | null;
  #isRetried = false;

  constructor(target: ReplySink, connection: BackendConnection, body: Buffer, request: Buffer, durability: WriteDurability, writesTo: ShardInfo | null) {
    this.#target = target;
    this.#connection = connection;
    this.#body = body;
    this.#request = request;
    this.#durability = durability;
    this.#writesTo = writesTo;
  }

  /**
   * Sends the EVALSHA; with `load` (a SCRIPT LOAD of its body) in front of it, in the same place
   * on the connection, when the connection has not loaded the script on its node yet: a NOSCRIPT
   * healed after the fact would run the script after commands the client sent behind it.
   */
  send(load: Buffer | null = null): void {
    if (load === null) this.#send(this.#request, SINGLE_WRITE);
    else this.#send([load, this.#request], LOADED_THEN_RUN);
  }

  onReply(frame: Buffer): void {
    if (!this.#isRetried && frame.toString('latin1', 0, 9) === '-NOSCRIPT') {
      this.#isRetried = true;
      // SCRIPT LOAD's reply is swallowed; the EVALSHA's comes back here.
      this.#send([encodeCommand(['SCRIPT', 'LOAD', this.#body]), this.#request], LOADED_THEN_RUN);
      return;
    }
    this.#target.onReply(frame);
  }

  onFailure(error: Buffer): void {
    this.#target.onFailure(error);
  }

  #send(request: Buffer | readonly Buffer[], replies: DurableReplies): void {
    if (this.#writesTo === null) this.#connection.sendBatch(request, replies.ignored, this);
    else this.#durability.send(this.#connection, this.#writesTo, request, this, replies);
  }
}

/** CONFIG SET on every node: +OK when all agree, else an error naming the nodes that refused. */
export class EveryNodeSink implements PieceOwner {
  readonly #target: ReplySink;
  readonly #names: readonly string[];
  readonly #replies: (Buffer | undefined)[];
  #received = 0;

  constructor(target: ReplySink, nodeNames: readonly string[]) {
    this.#target = target;
    this.#names = nodeNames;
    this.#replies = new Array<Buffer | undefined>(nodeNames.length);
  }

  piece(index: number): ReplySink {
    return new PieceSink(this, index);
  }

  onPiece(index: number, frame: Buffer): void {
    this.#replies[index] = frame;
    if (++this.#received < this.#names.length) return;
    const refused: string[] = [];
    this.#replies.forEach((reply, i) => {
      if (reply![0] === 45) refused.push(`${this.#names[i]}: ${reply!.toString('utf8', 1, reply!.length - 2)}`);
    });
    this.#target.onReply(refused.length === 0 ? this.#replies[0]! : encodeError(`ERR CONFIG SET refused by ${refused.join('; ')}`));
  }
}

/** How long SCRIPT KILL waits for a shard (one mid-script answers only past its busy-reply-threshold, 5 s by default). */
export const KILL_WAIT_MS = 10_000;

/**
 * SCRIPT KILL / FUNCTION KILL on every shard's primary, each on a connection opened for it
 * (closed once it answered): +OK as soon as one shard killed its script; otherwise, once all
 * answered (or KILL_WAIT_MS passed), the most telling refusal: UNKILLABLE, then any other error,
 * then NOTBUSY (no shard was running one).
 */
export class KillScriptSink {
  readonly #target: ReplySink;
  readonly #names: readonly string[];
  readonly #replies: (Buffer | undefined)[];
  readonly #connections: BackendConnection[] = [];
  readonly #timer: NodeJS.Timeout;
  #received = 0;
  #isAnswered = false;

  constructor(target: ReplySink, shardNames: readonly string[]) {
    this.#target = target;
    this.#names = shardNames;
    this.#replies = new Array<Buffer | undefined>(shardNames.length);
    this.#timer = setTimeout(() => this.#answer(), KILL_WAIT_MS);
    this.#timer.unref();
  }

  /** The sink for shard `index`'s reply on `connection`, which it closes. */
  piece(index: number, connection: BackendConnection): ReplySink {
    this.#connections[index] = connection;
    return new PieceSink(this, index);
  }

  onPiece(index: number, frame: Buffer): void {
    if (this.#isAnswered || this.#replies[index] !== undefined) return;
    this.#replies[index] = frame;
    this.#connections[index]?.close();
    if (frame.toString('latin1', 0, 3) === '+OK' || ++this.#received === this.#names.length) this.#answer();
  }

  #answer(): void {
    if (this.#isAnswered) return;
    this.#isAnswered = true;
    clearTimeout(this.#timer);
    for (const connection of this.#connections) connection?.close();
    const replies = this.#replies;
    const pick = (prefix: string): Buffer | undefined => replies.find((r) => r !== undefined && r.toString('latin1', 0, prefix.length) === prefix);
    const silent = this.#names.filter((_, i) => replies[i] === undefined);
    const reply =
      pick('+OK') ??
      pick('-UNKILLABLE') ??
      replies.find((r) => r !== undefined && r[0] === 45 && r.toString('latin1', 0, 8) !== '-NOTBUSY') ??
      (silent.length > 0 ? encodeError(`ERR shard(s) ${silent.join(', ')} did not answer within ${KILL_WAIT_MS} ms`) : undefined) ??
      replies[0]!;
    this.#target.onReply(reply);
  }
}
