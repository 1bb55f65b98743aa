import type { ReplySink } from '../backend/reply-sink';
import { PieceSink, type PieceOwner } from '../reply/gather';
import { decodeReply } from '../resp/reply-decoder';
import { encodeBulk, encodeError } from '../resp/resp-writer';
import { mergeSections, sumKeyspace, type ProxyFacts } from '../reply/info-merge';

/** Sections the proxy writes itself; every other section comes from the shards. */
export const PROXY_SECTION = 'proxy';

/** Which sections an INFO argument list asks for (Redis 7 semantics, lowercased). */
export function requestedSections(args: readonly string[]): { all: boolean; names: ReadonlySet<string> } {
  if (args.length === 0) return { all: false, names: new Set(['default']) };
  const names = new Set(args.map((a) => a.toLowerCase()));
  return { all: names.has('all') || names.has('everything'), names };
}

export function includesSection(requested: { all: boolean; names: ReadonlySet<string> }, section: string): boolean {
  return requested.all || requested.names.has('default') || requested.names.has(section);
}

/**
 * How long INFO waits for every shard. A shard that does not answer (frozen, cut off: its
 * connection is not down, so nothing fails its requests) must not hold INFO: ioredis sends it
 * as its ready check on every connect, and a client held there holds its commands for every
 * shard. After this the shards that answered speak, and the Proxy section names the others.
 */
export const INFO_WAIT_MS = 1_000;

/**
 * Gathers every shard's INFO and answers with the proxy's section first, then the shards'
 * sections merged into one server's (mergeSections), and the keyspace summed over all shards.
 */
export class InfoSink implements PieceOwner {
  readonly #target: ReplySink;
  readonly #proxySection: string | null;
  readonly #facts: ProxyFacts;
  readonly #wantsKeyspace: boolean;
  readonly #shardNames: readonly string[];
  readonly #replies: (Buffer | undefined)[];
  #received = 0;
  #timer: NodeJS.Timeout | null;

  constructor(target: ReplySink, shardNames: readonly string[], proxySection: string | null, facts: ProxyFacts, wantsKeyspace: boolean) {
    this.#target = target;
    this.#proxySection = proxySection;
    this.#facts = facts;
    this.#wantsKeyspace = wantsKeyspace;
    this.#shardNames = shardNames;
    this.#replies = new Array<Buffer | undefined>(shardNames.length);
    this.#timer = setTimeout(() => this.#answer(), INFO_WAIT_MS);
    this.#timer.unref();
  }

  piece(index: number): ReplySink {
    return new PieceSink(this, index);
  }

  onPiece(index: number, frame: Buffer): void {
    // A shard answering after INFO was answered without it: too late.
    if (this.#timer === null) return;
    this.#replies[index] = frame;
    if (++this.#received === this.#replies.length) this.#answer();
  }

  #answer(): void {
    if (this.#timer === null) return;
    clearTimeout(this.#timer);
    this.#timer = null;
    const silent = this.#shardNames.filter((_, i) => this.#replies[i] === undefined);
    const replies = this.#replies.filter((r): r is Buffer => r !== undefined);
    // A shard that is down must not make INFO fail: clients (ioredis's ready check) and
    // operators need it most then. The healthy shards speak; the Proxy section shows the rest.
    const texts = replies
      .filter((r) => r[0] !== 45)
      .map((r) => {
        const value = decodeReply(r);
        return Buffer.isBuffer(value) ? value.toString('utf8') : '';
      });
    if (texts.length === 0 && this.#proxySection === null) {
      this.#target.onReply(replies[0] ?? encodeError(`ERR no shard answered INFO within ${INFO_WAIT_MS} ms`));
      return;
    }
    const parts: string[] = [];
    if (this.#proxySection !== null) {
      parts.push(silent.length === 0 ? this.#proxySection : `${this.#proxySection}\r\ninfo_shards_not_answering:${silent.join(',')}`);
    }
    parts.push(...mergeSections(texts, this.#facts));
    if (this.#wantsKeyspace) parts.push(['# Keyspace', ...sumKeyspace(texts)].join('\r\n'));
    this.#target.onReply(encodeBulk(`${parts.join('\r\n\r\n')}\r\n`));
  }
}
