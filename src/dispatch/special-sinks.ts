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

/**
 * A virtual SCAN cursor: the shard's position (10 bits, up to 1024 shards), a token of the
 * shard's name (8 bits) and one of the node that issued the shard's cursor (12 bits), then that
 * cursor (34 bits: a table of 2^34 buckets). A Redis cursor means something only on the
 * process that issued it (each hashes with a seed of its own), and positions change when a
 * shard is removed: the tokens let a SCAN find its shard again, and start that shard over when
 * another node now answers for it (SCAN may return a key twice, never skip one that stayed).
 */
const POSITION_BITS = 10n;
const NAME_BITS = 8n;
const NODE_BITS = 12n;
const CURSOR_SHIFT = POSITION_BITS + NAME_BITS + NODE_BITS;
const SHARD_CURSOR_LIMIT = 1n << (64n - CURSOR_SHIFT);

export interface ScanCursor {
  /** 0: the scan begins (shard 0, its cursor 0). */
  readonly isStart: boolean;
  readonly position: number;
  readonly nameToken: number;
  readonly nodeToken: number;
  /** The shard's own cursor. */
  readonly cursor: bigint;
}

/** A virtual SCAN cursor taken apart; null if it is not one (not a number, or 2^64 or more). */
export function decodeScanCursor(text: string): ScanCursor | null {
  if (!/^\d+$/.test(text)) return null;
  const value = BigInt(text);
  if (value >= 1n << 64n) return null;
  return {
    isStart: value === 0n,
    position: Number(value & ((1n << POSITION_BITS) - 1n)),
    nameToken: Number((value >> POSITION_BITS) & ((1n << NAME_BITS) - 1n)),
    nodeToken: Number((value >> (POSITION_BITS + NAME_BITS)) & ((1n << NODE_BITS) - 1n)),
    cursor: value >> CURSOR_SHIFT,
  };
}

/** The token of a shard's name, as a virtual cursor carries it. */
export function scanNameToken(name: string): number {
  return Number(BigInt(fnv1a(name)) & ((1n << NAME_BITS) - 1n));
}

/** The token of a node ("host:port"), as a virtual cursor carries it. */
export function scanNodeToken(node: string): number {
  return Number(BigInt(fnv1a(node)) & ((1n << NODE_BITS) - 1n));
}

function encodeScanCursor(position: number, nameToken: number, nodeToken: number, cursor: bigint): bigint {
  return (cursor << CURSOR_SHIFT) | (BigInt(nodeToken) << (POSITION_BITS + NAME_BITS)) | (BigInt(nameToken) << POSITION_BITS) | BigInt(position);
}

function fnv1a(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return hash;
}

/** Where a SCAN reply hands over once its shard is done: the next shard's position and name token; null after the last. */
export interface NextScanShard {
  readonly position: number;
  readonly nameToken: number;
}

/**
 * Rewrites a shard's SCAN reply: its next cursor becomes a virtual one carrying the shard and
 * the node that answered; a finished shard hands over to the next shard, and the last one ends
 * the scan with 0.
 */
export class ScanSink implements ReplySink {
  readonly #target: ReplySink;
  readonly #position: number;
  readonly #nameToken: number;
  readonly #nodeToken: number;
  readonly #next: NextScanShard | null;

  constructor(target: ReplySink, position: number, nameToken: number, nodeToken: number, next: NextScanShard | null) {
    this.#target = target;
    this.#position = position;
    this.#nameToken = nameToken;
    this.#nodeToken = nodeToken;
    this.#next = next;
  }

  onReply(frame: Buffer): void {
    const value = decodeReply(frame);
    if (!Array.isArray(value) || value.length !== 2 || !Buffer.isBuffer(value[0])) {
      this.#target.onReply(frame);
      return;
    }
    const next = BigInt((value[0] as Buffer).toString('latin1'));
    if (next >= SHARD_CURSOR_LIMIT) {
      this.#target.onReply(encodeError('ERR the shard\'s SCAN cursor does not fit in a slotproxy cursor'));
      return;
    }
    let virtual: bigint;
    if (next !== 0n) virtual = encodeScanCursor(this.#position, this.#nameToken, this.#nodeToken, next);
    else virtual = this.#next === null ? 0n : encodeScanCursor(this.#next.position, this.#next.nameToken, 0, 0n);
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
