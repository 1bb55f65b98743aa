import { log } from '../log/logger';
import { keySlot } from '../routing/key-slot';
import {
  confirmsMoves,
  DUMP_KEYS_ARGS,
  DUMP_KEYS_SCRIPT,
  FENCED_MIGRATE_SCRIPT,
  FENCE_SKEW_MS,
  MOVING_KEYS,
  RELEASE_KEYS_SCRIPT,
  DELETE_RESTORED_SCRIPT,
  FLUSHED_IN_FLIGHT_SCRIPT,
  REPLICATED_NOOP,
  RESTORE_KEYS_SCRIPT,
} from '../topology/key-move-script';
import { nodeKey, writeConfirmation, type NodeAddress, type Topology, type WriteConfirmation } from '../topology/topology';
import { moveBigKey, UnchunkableKeyError } from './big-key-copier';
import { RawConnection } from './raw-connection';
import { KeyIndexUnavailableError, SlotKeyIndex, walkScanReply } from './slot-key-index';
import type { SlotMove } from './rebalance-planner';

/**
 * The background mover of online resharding. For slots moving from shard A to shard B:
 *
 * 1. It writes a snapshot with the slots in `migrations` to the state file, then publishes it.
 *    From then on every command on those slots moves its keys to B first (the data path's
 *    migrating router), so no key of them is created or changed on A any more. Writing before
 *    publishing means a restart always knows a slot whose keys may already be on both shards.
 * 2. After `settleMs` (commands routed by the older snapshot have reached A by then) it moves
 *    the slots' keys still on A in batches: marked and DUMPed on A, RESTOREd on B (with
 *    minReplicaAcks, confirmed by B's replicas), deleted on A (topology/key-move-script.ts). Big
 *    keys are copied in chunks (big-key-copier.ts) while the published snapshot locks them.
 * 3. When none of their keys is left on A, a snapshot with B as their owner is published.
 *
 * Finding the keys: a slot's keys on plain Redis can only be found by scanning the whole
 * keyspace. Each source is scanned once, and an index of the keys of every slot it gives away
 * is kept complete by Redis's new-key notifications (slot-key-index.ts); slots then migrate in
 * small groups (`slotsInFlight` in all), each moved straight from the index, so few client commands
 * pay the extra round trip of a migrating slot at any time. Where notifications cannot be
 * turned on, each group needs a SCAN of the whole source that begins after its settle time
 * (every key present from a SCAN's start to its end is returned, and none can appear), so the
 * groups are larger there.
 *
 * Sources are indexed one after another, and each starts moving as soon as its own index is
 * complete, so the scan of the next source overlaps the moves of the first: the shards see one
 * even load for the whole run instead of a scan of everything followed by the moves. Sources
 * move in parallel, each with one batch in flight, all paced together (`keysPerSecond`). A
 * failed batch leaves its slots migrating and its keys whole on A for the next attempt; nothing
 * is given up while the run lasts.
 */

export interface SlotMigratorOptions {
  /** The mover's connections' command timeout is this plus 10 s (MIGRATE's own timeout on the data path). */
  readonly migrateTimeoutMs: number;
  /** Backend password (control connections' AUTH and MIGRATE's AUTH); null when none. */
  readonly password: string | null;
  /** Keys per batch (one DUMP script, one RESTORE script, one release script). @default 50 */
  readonly batchKeys?: number;
  /**
   * Slots migrating at once over all sources, shared between them; each source has its share
   * in three groups: one moving, two settling. @default 192
   */
  readonly slotsInFlight?: number;
  /** Wait after publishing slots as migrating before a pass may finish them. @default 100 */
  readonly settleMs?: number;
  /**
   * Commands routed before a slot began migrating may reach its source on other connections
   * than the data path's key moves (connectionsPerNode > 1, or workers: N): the data path then
   * waits `settleMs` too before moving a key of the slot (SlotMigration.movesFrom). With one
   * connection per node in one process, every key move queues behind those commands anyway.
   */
  readonly onDemandSettle?: boolean;
  /** SCAN's COUNT. @default 1000 */
  readonly scanCount?: number;
  /**
   * Keys moved per second over all sources, at most (0 = as fast as it goes). The mover shares
   * the shards and the machine's cores with the clients' commands: pacing bounds the CPU a move
   * adds, which is what their p99 pays. @default 0
   */
  readonly keysPerSecond?: number;
  /**
   * The proxy's minReplicaAcks: a batch's restore on the target is confirmed by this many of
   * the target's replicas (WAIT) before it is deleted from the source, and that delete by this
   * many of the source's replicas before its keys are unmarked. @default 0 (not waited for)
   */
  readonly minReplicaAcks?: number;
  /** WAIT's timeout for those confirmations. @default 100 */
  readonly replicaAckTimeoutMs?: number;
  /**
   * The proxy's noReplicaWrites: with minReplicaAcks and a target with fewer healthy replicas,
   * `refuse` moves nothing there (as writes there are refused), `accept` moves unconfirmed.
   * @default refuse
   */
  readonly noReplicaWrites?: 'refuse' | 'accept';
}

/** Commands routed by a snapshot reach their shard within this long (the settle time). */
export const DEFAULT_SETTLE_MS = 100;

const DEFAULTS = {
  batchKeys: 50,
  slotsInFlight: 192,
  settleMs: DEFAULT_SETTLE_MS,
  onDemandSettle: false,
  scanCount: 1000,
  keysPerSecond: 0,
  minReplicaAcks: 0,
  replicaAckTimeoutMs: 100,
  noReplicaWrites: 'refuse',
} as const;
/** Keys scanned per key moved, at most, when pacing (a scanned key costs far less than a moved one). */
const SCAN_PER_MOVE = 10;
/** Elements of a big key copied in chunks count as one key at this rate, for pacing. */
const ELEMENTS_PER_KEY = 10;
/** Groups a source has migrating at once: one moving, the others settling. */
const GROUPS_IN_FLIGHT = 3;
/** Without an index each group costs a full SCAN of the source: groups are at least this large. */
const MIN_SCAN_GROUP = 256;
const MAX_BACKOFF_MS = 5_000;
/** MIGRATE timeout for a key no chunked copy exists for (moved whole, under its lock). */
const WHOLE_KEY_MIGRATE_TIMEOUT_MS = 60_000;
/** How long after it is sent the MIGRATE of a whole big key may begin (FENCED_MIGRATE_SCRIPT). */
const WHOLE_KEY_FENCE_MS = 2_000;

/** A chunked copy under way, as the journal stores it: a restart removes its temporary key. */
export interface BigKeyEntry {
  /** Shard names. */
  readonly source: string;
  readonly target: string;
  /** The key's bytes, base64. */
  readonly key: string;
}

/** What a run has done so far; read by the admin endpoint. */
export class MigrationProgress {
  slotsTotal = 0;
  slotsDone = 0;
  /** Keys the background mover moved (commands move some themselves; those are not counted). */
  keysMoved = 0;
  bigKeysMoved = 0;
  /** Keys expected to move, from DBSIZE and the share of slots moving; 0 until known. */
  keysEstimate = 0;
  errors = 0;
  lastError: string | null = null;
  readonly startedAt = Date.now();
  /** Slots published as migrating right now by this run. */
  slotsMigrating = 0;
}

/** The run was stopped (the proxy is closing); migrating slots resume at the next start. */
export class MigrationAbortedError extends Error {
  override readonly name = 'MigrationAbortedError';
}

/** Moved keys could not be confirmed on the target's replicas (or it has too few): they stay on the source. */
class TargetUnconfirmedError extends Error {
  override readonly name = 'TargetUnconfirmedError';
}

/** One slot of a source's queue. */
export interface QueuedSlot {
  readonly slot: number;
  /** Target shard name. */
  readonly to: string;
}

/** Slots published as migrating together. */
interface Group {
  /** Those not done yet. */
  slots: QueuedSlot[];
  /** Their keys may be moved from this time on (ms since the epoch). */
  readonly settledAt: number;
}

/** A source's drain: its key index (null: full scans) and failed attempts in a row. */
interface DrainState {
  index: SlotKeyIndex | null;
  failures: number;
}

/**
 * What a lean connection to a node is for: settings and DBSIZE, the key index's scan, batches on
 * the source, on the target, big keys.
 */
type RawPurpose = 'control' | 'scan' | 'move' | 'restore' | 'copy';

/** A big key found by a pass, moved after the pass's batches. */
interface FoundBigKey {
  readonly key: Buffer;
  readonly slot: number;
  readonly to: string;
}

/**
 * What the engine needs from where snapshots are published (the main thread): the current
 * snapshot, and the changes to make to it. Each change resolves once published (and, when it
 * begins migrations, written to the state file first).
 */
export interface MoverHost {
  readonly topology: Topology;
  /** `done` slots owned by their targets and `begun` slots migrating, in one snapshot. */
  change(source: string, done: readonly QueuedSlot[], begun: readonly QueuedSlot[]): Promise<void>;
  /** Locks (or unlocks) one key of a migrating slot: commands on it wait. */
  setLock(slot: number, key: string, isLocked: boolean): Promise<void>;
  /** Persists the chunked copies under way. */
  setBigKeys(entries: readonly BigKeyEntry[]): Promise<void>;
  /** Persists a node's notify-keyspace-events from before the plan changed it (the first one kept wins). */
  setNotifyFlags(node: string, flags: string): Promise<void>;
  /** A failed step, for the errors metric. */
  onError(kind: string): void;
}

export class SlotMover {
  readonly #host: MoverHost;
  readonly #options: Required<SlotMigratorOptions>;
  /**
   * Connections by `host:port`, then purpose (one per purpose, so a slow step never queues
   * behind another). All lean ones (raw-connection.ts): a closed one fails what waits on it at
   * once, which onTopology relies on. An ioredis client would keep a command issued while it
   * reconnects in its offline queue, and its disconnect() does not fail that command: a key
   * index built again on a source's dead primary just before the failover's snapshot arrived
   * waited out the command timeout (12 s) there.
   */
  readonly #rawConnections = new Map<string, Map<RawPurpose, RawConnection>>();
  /** The key indexes in use or being built (one per source), for onTopology. */
  readonly #indexes = new Set<SlotKeyIndex>();
  readonly #bigKeys = new Map<string, BigKeyEntry>();
  #isAborted = false;
  /** Ends the sleeps under way (abort). */
  readonly #wakers = new Set<() => void>();
  readonly #pacer: Pacer;
  /** Keys scanned per second over all sources (the first SCAN of each source), at most. */
  readonly #scanPacer: Pacer;
  /** The index build under way; the next source's waits for it (one scan at a time). */
  #indexing: Promise<unknown> = Promise.resolve();

  constructor(host: MoverHost, options: SlotMigratorOptions) {
    this.#host = host;
    this.#options = { ...DEFAULTS, ...options } as Required<SlotMigratorOptions>;
    this.#pacer = new Pacer(this.#options.keysPerSecond);
    this.#scanPacer = new Pacer(this.#options.keysPerSecond * SCAN_PER_MOVE);
  }

  /**
   * Moves every slot of `moves` (those already moved are skipped, those already migrating are
   * resumed); resolves when all are owned by their targets.
   * @throws MigrationAbortedError when abort() was called first
   */
  async run(moves: readonly SlotMove[], progress: MigrationProgress): Promise<void> {
    const bySource = new Map<string, QueuedSlot[]>();
    const current = this.#host.topology;
    for (const move of moves) {
      const from = current.indexOfShard(move.from);
      const to = current.indexOfShard(move.to);
      const migration = current.migrations.get(move.slot);
      const isResumed = migration !== undefined && migration.from === from && migration.to === to;
      if (!isResumed && (migration !== undefined || current.slotOwner[move.slot] !== from)) {
        if (current.slotOwner[move.slot] !== to || migration !== undefined) {
          log.warn('slot move skipped: the slot is not where the plan expects it', { slot: move.slot, from: move.from, to: move.to });
        }
        continue;
      }
      let queue = bySource.get(move.from);
      if (queue === undefined) bySource.set(move.from, (queue = []));
      queue.push({ slot: move.slot, to: move.to });
    }
    progress.slotsTotal = [...bySource.values()].reduce((sum, q) => sum + q.length, 0);
    await this.#estimateKeys(bySource, progress);
    try {
      // Marks a crash left behind would make commands on those keys wait for nothing.
      await this.#dropFlushedInFlight([...bySource.keys()]);
      await this.#clearMarks([...bySource.keys()]);
      const share = Math.max(GROUPS_IN_FLIGHT, Math.floor(this.#options.slotsInFlight / Math.max(1, bySource.size)));
      await Promise.all([...bySource].map(([source, queue]) => this.#drain(source, queue, share, progress)));
      await this.#clearMarks([...bySource.keys()]);
    } finally {
      this.#closeConnections();
    }
  }

  /**
   * Deletes on their targets the copies of keys a mover that died mid-batch had in flight and
   * that were flushed from the source meanwhile (FLUSHED_IN_FLIGHT_SCRIPT): the copy it restored
   * there is all that is left of a key the flush emptied.
   */
  async #dropFlushedInFlight(sources: readonly string[]): Promise<void> {
    const topology = this.#host.topology;
    for (const source of sources) {
      const address = this.#address(source);
      if (address === null) continue;
      const gone = (await this.#raw('move', address).send(['EVAL', FLUSHED_IN_FLIGHT_SCRIPT, '0'])) as Buffer[];
      const byTarget = keysByTarget(gone, (slot) => {
        const migration = topology.migrations.get(slot);
        return migration === undefined ? undefined : topology.shards[migration.to]?.name;
      });
      for (const [to, keys] of byTarget) {
        const target = this.#address(to);
        if (target !== null) await this.#dropFlushed(target, keys);
      }
    }
  }

  async #clearMarks(sources: readonly string[]): Promise<void> {
    await Promise.all(
      sources.map(async (source) => {
        const address = this.#address(source);
        if (address !== null) await this.#raw('move', address).send(['DEL', MOVING_KEYS]);
      }),
    );
  }

  /** Stops every source after its current step; slots left migrating resume on the next run. */
  abort(): void {
    this.#isAborted = true;
    for (const wake of this.#wakers) wake();
  }

  /**
   * One source, a group of slots at a time: the next group is published (and settles) while
   * the current one moves; a group is finished once none of its keys is left on the source.
   */
  async #drain(source: string, queue: QueuedSlot[], share: number, progress: MigrationProgress): Promise<void> {
    queue.sort((a, b) => a.slot - b.slot);
    const index = await this.#afterOtherIndexes(() => this.#buildIndex(source, queue.map((q) => q.slot), progress));
    const per = index === null ? Math.max(MIN_SCAN_GROUP, share) : Math.max(1, Math.floor(share / GROUPS_IN_FLIGHT));
    const depth = index === null ? 2 : GROUPS_IN_FLIGHT;
    const groups: Group[] = [];
    // Slots already migrating (a resumed run) form the first group.
    const resumed = queue.filter((q) => this.#host.topology.migrations.has(q.slot));
    if (resumed.length > 0) groups.push({ slots: resumed, settledAt: Date.now() + this.#options.settleMs });
    progress.slotsMigrating += resumed.length;
    let waiting = queue.filter((q) => !this.#host.topology.migrations.has(q.slot));
    let state: DrainState = { index, failures: 0 };
    /** The next group to publish, taken from `waiting`. */
    const nextGroup = (): QueuedSlot[] => {
      const slots = waiting.slice(0, per);
      waiting = waiting.slice(slots.length);
      progress.slotsMigrating += slots.length;
      return slots;
    };
    try {
      // Several groups from the start: one moves while the next ones settle.
      const first: QueuedSlot[][] = [];
      while (groups.length + first.length < depth && waiting.length > 0) first.push(nextGroup());
      if (first.length > 0) {
        await this.#host.change(source, [], first.flat());
        for (const slots of first) groups.push({ slots, settledAt: Date.now() + this.#options.settleMs });
      }
      while (groups.length > 0) {
        this.#checkAborted();
        const head = groups[0]!;
        const wait = head.settledAt - Date.now();
        if (wait > 0) {
          await this.#sleep(wait);
          continue;
        }
        state = await this.#ensureIndex(source, state, [...groups.flatMap((g) => g.slots), ...waiting], progress);
        let failed: Set<number>;
        try {
          failed = state.index === null ? await this.#pass(source, head.slots, progress) : await this.#moveFromIndex(source, head.slots, state.index, progress);
        } catch (err) {
          // A lost connection, a failed barrier: the group stays migrating and is tried again.
          this.#recordError(progress, 'migrate', source, err);
          failed = new Set(head.slots.map((q) => q.slot));
        }
        const done = head.slots.filter((q) => !failed.has(q.slot));
        head.slots = head.slots.filter((q) => failed.has(q.slot));
        // Finishing this group and starting the one after the next is one snapshot (one state-file write).
        const next = head.slots.length === 0 && waiting.length > 0 ? nextGroup() : [];
        if (done.length > 0 || next.length > 0) await this.#host.change(source, done, next);
        if (done.length > 0) {
          state.index?.forget(done.map((q) => q.slot));
          progress.slotsDone += done.length;
          progress.slotsMigrating -= done.length;
        }
        if (head.slots.length === 0) groups.shift();
        if (next.length > 0) groups.push({ slots: next, settledAt: Date.now() + this.#options.settleMs });
        if (failed.size > 0) {
          state.failures++;
          await this.#sleep(Math.min(MAX_BACKOFF_MS, 50 * 2 ** state.failures));
        } else {
          state.failures = 0;
        }
      }
    } finally {
      if (state.index !== null) await this.#closeIndex(source, state.index);
    }
  }

  /** Runs `build` once the index builds started before it are over (one source scanned at a time). */
  #afterOtherIndexes<T>(build: () => Promise<T>): Promise<T> {
    const built = this.#indexing.then(build);
    this.#indexing = built.catch(() => undefined);
    return built;
  }

  /**
   * The key index of a source; null (full scans) when the shard cannot send notifications at
   * all. Any other failure (a lost connection, a source failing over) is tried again with
   * backoff, at the address the topology names by then: falling back to full scans for the
   * rest of the plan because a node was briefly unreachable would make it slow for nothing.
   */
  async #buildIndex(source: string, slots: readonly number[], progress: MigrationProgress): Promise<SlotKeyIndex | null> {
    for (let failures = 0; ; failures++) {
      this.#checkAborted();
      const address = this.#address(source);
      if (address === null) return null;
      const startedAt = Date.now();
      const index = SlotKeyIndex.create({
        address,
        password: this.#options.password,
        slots,
        commandTimeoutMs: this.#options.migrateTimeoutMs + 10_000,
        keepOriginalFlags: (flags) => this.#host.setNotifyFlags(nodeKey(address), flags),
      });
      // Known to onTopology while it is built: a failover meanwhile closes it.
      this.#indexes.add(index);
      try {
        await index.build(this.#raw('control', address), this.#raw('scan', address), this.#scanPacer);
        log.info('source indexed', { source, node: nodeKey(address), slots: slots.length, keys: index.size, ms: Date.now() - startedAt });
        return index;
      } catch (err) {
        this.#indexes.delete(index);
        if (err instanceof KeyIndexUnavailableError) {
          log.warn('moving without a key index: one full SCAN of the source per group of slots', { source, reason: err.message });
          return null;
        }
        this.#recordError(progress, 'scan', source, err);
        await this.#sleep(Math.min(MAX_BACKOFF_MS, 50 * 2 ** failures));
      }
    }
  }

  /**
   * Unsubscribes; puts the notification setting back only on the source's current primary (a
   * node that no longer is may be frozen or gone, and is not ours to tidy).
   */
  async #closeIndex(source: string, index: SlotKeyIndex): Promise<void> {
    this.#indexes.delete(index);
    const address = this.#address(source);
    const isItsPrimary = address !== null && nodeKey(address) === nodeKey(index.address);
    await index.close(isItsPrimary ? this.#raw('control', index.address) : null);
  }

  /** A lost subscription (or a failed-over source) means events may be missing: index again. */
  async #ensureIndex(source: string, state: DrainState, remaining: readonly QueuedSlot[], progress: MigrationProgress): Promise<DrainState> {
    const index = state.index;
    if (index === null) return state;
    const address = this.#address(source);
    if (index.isValid && address !== null && nodeKey(address) === nodeKey(index.address)) return state;
    this.#recordError(progress, 'scan', source, new Error('the key index lost its notifications; indexing again'));
    await this.#closeIndex(source, index);
    return { index: await this.#buildIndex(source, remaining.map((q) => q.slot), progress), failures: state.failures };
  }

  /**
   * Moves a settled group's keys from the index, until the index has none left for it (after a
   * barrier, so every key created before now is in). Returns the slots that are not done.
   */
  async #moveFromIndex(source: string, slots: readonly QueuedSlot[], index: SlotKeyIndex, progress: MigrationProgress): Promise<Set<number>> {
    const targetOf = new Map(slots.map((q) => [q.slot, q.to]));
    const failed = new Set<number>();
    const held = new Set<string>();
    for (;;) {
      this.#checkAborted();
      await index.barrier();
      const keys = index.take(slots.filter((q) => !failed.has(q.slot)).map((q) => q.slot));
      if (keys.length === 0) return failed;
      const byTarget = keysByTarget(keys, (slot) => targetOf.get(slot));
      const bigKeys: FoundBigKey[] = [];
      for (const [to, list] of byTarget) {
        for (let i = 0; i < list.length; i += this.#options.batchKeys) {
          this.#checkAborted();
          const batch = list.slice(i, i + this.#options.batchKeys);
          if (!held.has(to)) await this.#pacer.take(batch.length);
          const kept = await this.#moveBatch(source, to, batch, bigKeys, progress, held);
          for (const key of kept) failed.add(keySlot(key, 0, key.length));
          index.restore(kept);
        }
      }
      for (const big of bigKeys) {
        this.#checkAborted();
        if (failed.has(big.slot)) index.restore([big.key]);
        else if (!(await this.#moveBig(source, big, progress, held))) {
          failed.add(big.slot);
          index.restore([big.key]);
        }
      }
    }
  }

  /**
   * Without an index: one SCAN of the source's whole keyspace, moving the keys of `slots` as
   * they are found (a batch in flight at a time), big keys afterwards. Returns the slots whose
   * keys could not all be moved.
   */
  async #pass(source: string, slots: readonly QueuedSlot[], progress: MigrationProgress): Promise<Set<number>> {
    const failed = new Set<number>();
    const address = this.#address(source);
    if (address === null) {
      this.#recordError(progress, 'scan', source, new Error(`shard ${source} is not in the topology`));
      return new Set(slots.map((q) => q.slot));
    }
    const targetOf = new Map(slots.map((q) => [q.slot, q.to]));
    const bigKeys: FoundBigKey[] = [];
    const batches = new Map<string, Buffer[]>();
    const held = new Set<string>();
    let inFlight: Promise<void> = Promise.resolve();
    const send = async (to: string, keys: Buffer[]): Promise<void> => {
      await inFlight;
      if (!held.has(to)) await this.#pacer.take(keys.length);
      inFlight = this.#moveBatch(source, to, keys, bigKeys, progress, held).then((kept) => {
        for (const key of kept) failed.add(keySlot(key, 0, key.length));
      });
    };
    try {
      let cursor = '0';
      do {
        this.#checkAborted();
        const reply = await this.#raw('scan', address).sendForBytes(['SCAN', cursor, 'COUNT', String(this.#options.scanCount)]);
        // The keys of this group's slots, copied out (they outlive the reply); the rest only looked at.
        const found: [key: Buffer, to: string][] = [];
        cursor = walkScanReply(reply, (bytes, start, end) => {
          const to = targetOf.get(keySlot(bytes, start, end));
          if (to !== undefined) found.push([Buffer.from(bytes.subarray(start, end)), to]);
        });
        for (const [key, to] of found) {
          const batch = batches.get(to) ?? batches.set(to, []).get(to)!;
          batch.push(key);
          if (batch.length >= this.#options.batchKeys) {
            batches.set(to, []);
            await send(to, batch);
          }
        }
      } while (cursor !== '0');
      for (const [to, batch] of batches) if (batch.length > 0) await send(to, batch);
      await inFlight;
    } catch (err) {
      if (err instanceof MigrationAbortedError) throw err;
      this.#recordError(progress, 'scan', source, err);
      return new Set(slots.map((q) => q.slot));
    }
    for (const big of bigKeys) {
      this.#checkAborted();
      if (!failed.has(big.slot) && !(await this.#moveBig(source, big, progress, held))) failed.add(big.slot);
    }
    return failed;
  }

  /**
   * One batch: the source marks the small keys as in flight and DUMPs them (one script), the
   * target RESTOREs them (REPLACE, with their absolute expiry) and, with minReplicaAcks, its
   * replicas confirm them (WAIT), the source deletes and unmarks them (one script). Big keys
   * found are added to `bigKeys`. Returns the keys that could not be moved: they stay whole on
   * the source. A target whose replicas did not confirm is added to `held`, and the pass sends
   * it nothing more (each batch would wait out WAIT's timeout in turn).
   */
  async #moveBatch(source: string, to: string, keys: Buffer[], bigKeys: FoundBigKey[], progress: MigrationProgress, held: Set<string>): Promise<Buffer[]> {
    const from = this.#address(source);
    const target = this.#address(to);
    if (from === null || target === null) {
      this.#recordError(progress, 'migrate', source, new Error(`shard ${from === null ? source : to} is not in the topology`));
      return keys;
    }
    if (held.has(to)) return keys;
    const confirmation = this.#targetConfirmation(to);
    if (confirmation === 'refused') {
      held.add(to);
      this.#recordError(progress, 'migrate', source, this.#refusal(to));
      return keys;
    }
    const sourceConnection = this.#raw('move', from);
    let dumped: (Buffer | number)[];
    try {
      dumped = (await sourceConnection.send(['EVAL', DUMP_KEYS_SCRIPT, String(keys.length), ...keys, ...DUMP_KEYS_ARGS])) as (Buffer | number)[];
    } catch (err) {
      this.#recordError(progress, 'migrate', source, err);
      return keys;
    }
    const count = dumped[0] as number;
    for (let i = 1 + 3 * count; i < dumped.length; i++) {
      const key = dumped[i] as Buffer;
      bigKeys.push({ key, slot: keySlot(key, 0, key.length), to });
    }
    if (count === 0) return [];
    const moved: Buffer[] = [];
    const args: (Buffer | string)[] = [];
    for (let k = 0; k < count; k++) {
      moved.push(dumped[1 + 3 * k] as Buffer);
      const expireAt = dumped[3 + 3 * k] as number;
      args.push(expireAt > 0 ? String(expireAt) : '0', dumped[2 + 3 * k] as Buffer);
    }
    let restored: Buffer[] = moved;
    let kept: Buffer[] = [];
    try {
      // One command for the whole batch (one round trip, one write), WAIT right behind it.
      const restoring = this.#raw('restore', target);
      const restore = restoring.send(['EVAL', RESTORE_KEYS_SCRIPT, String(count), ...moved, ...args]);
      await Promise.all([restore, confirmation === 'wait' ? this.#confirmOnTarget(restoring, to, false) : null]);
    } catch (err) {
      // Some may be restored (or not be on the target's replicas): none is deleted from the
      // source, which stays their authority (the copies on the target are replaced when they
      // move again, or by a command's move).
      restored = [];
      kept = moved;
      if (err instanceof TargetUnconfirmedError) held.add(to);
      this.#recordError(progress, 'migrate', source, err);
    }
    try {
      let gone: Buffer[];
      if (restored.length > 0 && this.#isDurable(source)) {
        // Deleted, still marked: commands on these keys wait (+MOVING) until the source's replicas
        // have the delete too. Unmarked earlier, a command could find a key gone, write it on the
        // target, and a failover of the source would bring the old copy back as the authority.
        gone = (await sourceConnection.send(['EVAL', DELETE_RESTORED_SCRIPT, String(restored.length), ...restored])) as Buffer[];
        await this.#confirmDeletes(sourceConnection, source, restored.length);
        await this.#dropFlushed(target, gone);
        await sourceConnection.send(['EVAL', RELEASE_KEYS_SCRIPT, '0', ...restored, ...kept]);
      } else {
        gone = (await sourceConnection.send(['EVAL', RELEASE_KEYS_SCRIPT, String(restored.length), ...restored, ...kept])) as Buffer[];
        if (gone.length > 0) {
          await this.#dropFlushed(target, gone);
          await sourceConnection.send(['EVAL', RELEASE_KEYS_SCRIPT, '0', ...gone]);
        }
      }
      progress.keysMoved += restored.length - gone.length;
      return kept;
    } catch (err) {
      // Still marked: marked, copied and released again by the next attempt.
      this.#recordError(progress, 'migrate', source, err);
      return [...restored, ...kept];
    }
  }

  /**
   * Deletes from the target the copies of keys that left the source while they were in flight (a
   * flush there, or their TTL): still marked, no command has touched them on the target.
   */
  async #dropFlushed(target: NodeAddress, gone: readonly Buffer[]): Promise<void> {
    if (gone.length === 0) return;
    await this.#raw('restore', target).send(['DEL', ...gone]);
    log.info('keys gone from the source while in flight: their copies deleted on the target', { keys: gone.length });
  }

  /** WAIT on the connection that deleted moved keys from the source (it covers that connection's writes). */
  async #confirmDeletes(connection: RawConnection, source: string, keys: number): Promise<void> {
    const { minReplicaAcks, replicaAckTimeoutMs } = this.#options;
    const acks = (await connection.send(['WAIT', String(minReplicaAcks), String(replicaAckTimeoutMs)])) as number;
    if (acks < minReplicaAcks) log.warn('moved keys deleted on the source without replica confirmation', { source, keys, acks, wanted: minReplicaAcks });
  }

  /** A move's deletes on `source` are confirmed by its replicas: minReplicaAcks is set and it has that many healthy ones. */
  #isDurable(source: string): boolean {
    return confirmsMoves(this.#host.topology.shardNamed(source), this.#options.minReplicaAcks);
  }

  /** Whether keys moving to `target` wait for its replicas before leaving the source, as a write there would. */
  #targetConfirmation(target: string): WriteConfirmation {
    return writeConfirmation(this.#host.topology.shardNamed(target), this.#options.minReplicaAcks, this.#options.noReplicaWrites);
  }

  #refusal(target: string): TargetUnconfirmedError {
    return new TargetUnconfirmedError(
      `target ${target} has fewer than ${this.#options.minReplicaAcks} healthy replica(s) to confirm moved keys (noReplicaWrites: refuse); they stay on the source`,
    );
  }

  /**
   * WAIT on the target, on the connection that wrote the moved keys there (WAIT covers that
   * connection's writes). `isAfterOthers`: another connection wrote them (MIGRATE's, from the
   * source), so a replicated no-op first carries this connection's offset past them.
   * @throws TargetUnconfirmedError when fewer than minReplicaAcks replicas confirm in time
   */
  async #confirmOnTarget(connection: RawConnection, target: string, isAfterOthers: boolean): Promise<void> {
    const { minReplicaAcks, replicaAckTimeoutMs } = this.#options;
    if (isAfterOthers) void connection.send(REPLICATED_NOOP).catch(() => undefined);
    const acks = (await connection.send(['WAIT', String(minReplicaAcks), String(replicaAckTimeoutMs)])) as number;
    if (acks < minReplicaAcks) {
      throw new TargetUnconfirmedError(`${acks} of ${minReplicaAcks} replica(s) of ${target} confirmed the moved keys within ${replicaAckTimeoutMs} ms; they stay on the source`);
    }
  }

  /** A big key: locked in the snapshot and journaled while it is copied in chunks. False when it failed. */
  async #moveBig(source: string, big: FoundBigKey, progress: MigrationProgress, held: Set<string>): Promise<boolean> {
    const from = this.#address(source);
    const target = this.#address(big.to);
    if (from === null || target === null || held.has(big.to)) return false;
    const confirmation = this.#targetConfirmation(big.to);
    if (confirmation === 'refused') {
      held.add(big.to);
      this.#recordError(progress, 'big_key', source, this.#refusal(big.to));
      return false;
    }
    const copy = this.#raw('copy', target);
    // With minReplicaAcks: the target's replicas have the key before the source lets it go.
    const confirm = confirmation === 'wait' ? (isAfterOthers: boolean) => this.#confirmOnTarget(copy, big.to, isAfterOthers) : null;
    const name = big.key.toString('latin1');
    const entry: BigKeyEntry = { source, target: big.to, key: big.key.toString('base64') };
    const journalKey = `${source}\u0000${entry.key}`;
    await this.#host.setLock(big.slot, name, true);
    const startedAt = Date.now();
    try {
      this.#bigKeys.set(journalKey, entry);
      await this.#host.setBigKeys([...this.#bigKeys.values()]);
      let outcome: string;
      try {
        const pace = (elements: number): Promise<void> => this.#pacer.take(elements / ELEMENTS_PER_KEY);
        outcome = await moveBigKey(this.#raw('copy', from), copy, big.key, pace, confirm === null ? null : () => confirm(false));
      } catch (err) {
        if (!(err instanceof UnchunkableKeyError)) throw err;
        // No chunked copy for it: one MIGRATE, under the lock (a COPY while the target's
        // replicas are to confirm it, the source's copy deleted after).
        const args = ['MIGRATE', target.host, String(target.port), '', '0', String(WHOLE_KEY_MIGRATE_TIMEOUT_MS), ...(confirm === null ? [] : ['COPY']), 'REPLACE'];
        if (this.#options.password !== null) args.push('AUTH', this.#options.password);
        // Fenced as the data path's key moves are (KEY_MOVE_SCRIPT): a source failed over with
        // the MIGRATE unread must not run it when it wakes, over the copy moved since.
        const fence = Date.now() + WHOLE_KEY_FENCE_MS;
        let reply: string;
        try {
          reply = String(await this.#raw('copy', from).send(['EVAL', FENCED_MIGRATE_SCRIPT, '0', String(fence), ...args, 'KEYS', big.key]));
        } catch (err) {
          // No reply: it may still run, until its fence. Nothing tries the key again before.
          await this.#sleep(Math.max(0, fence + FENCE_SKEW_MS - Date.now()));
          throw err;
        }
        if (reply === 'STALE') throw new Error('the MIGRATE of a whole big key ran after its fence');
        if (confirm !== null && reply !== 'NOKEY') {
          await confirm(true);
          await this.#raw('copy', from).send(['UNLINK', big.key]);
        }
        outcome = reply === 'NOKEY' ? 'gone' : 'moved whole';
      }
      if (outcome !== 'gone') {
        progress.keysMoved++;
        progress.bigKeysMoved++;
        // Unlocked only once the source's replicas have its delete (see #moveBatch).
        if (this.#isDurable(source)) await this.#confirmDeletes(this.#raw('copy', from), source, 1);
      }
      log.info('big key moved', { from: source, to: big.to, slot: big.slot, outcome, ms: Date.now() - startedAt });
      return true;
    } catch (err) {
      if (err instanceof TargetUnconfirmedError) held.add(big.to);
      this.#recordError(progress, 'big_key', source, err);
      return false;
    } finally {
      this.#bigKeys.delete(journalKey);
      await this.#host.setBigKeys([...this.#bigKeys.values()]).catch((err: unknown) => this.#recordError(progress, 'journal', source, err));
      await this.#host.setLock(big.slot, name, false);
    }
  }

  async #estimateKeys(bySource: ReadonlyMap<string, readonly QueuedSlot[]>, progress: MigrationProgress): Promise<void> {
    const topology = this.#host.topology;
    const owned = topology.shards.map(() => 0);
    for (let slot = 0; slot < topology.slotOwner.length; slot++) owned[topology.slotOwner[slot]!]!++;
    let estimate = 0;
    for (const [source, queue] of bySource) {
      const address = this.#address(source);
      if (address === null) continue;
      const keys = Number(await this.#raw('control', address).send(['DBSIZE']).catch(() => 0));
      estimate += Math.round((keys * queue.length) / Math.max(1, owned[topology.indexOfShard(source)]!));
    }
    progress.keysEstimate = estimate;
  }

  #recordError(progress: MigrationProgress, kind: string, source: string, err: unknown): void {
    if (err instanceof MigrationAbortedError) throw err;
    progress.errors++;
    progress.lastError = `${kind} on ${source}: ${(err as Error).message ?? String(err)}`;
    this.#host.onError(kind);
    log.warn('migration step failed; will retry', { kind, source, error: (err as Error).message ?? String(err) });
  }

  #checkAborted(): void {
    if (this.#isAborted) throw new MigrationAbortedError('the migration was stopped; it resumes at the next start');
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = (): void => {
        clearTimeout(timer);
        this.#wakers.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, Math.max(0, ms));
      this.#wakers.add(wake);
    });
  }

  /** The current primary of a shard, by name; null when the shard is gone. */
  #address(name: string): NodeAddress | null {
    return this.#host.topology.shardNamed(name)?.primary ?? null;
  }

  /** The node's connection for `purpose` (raw-connection.ts). */
  #raw(purpose: RawPurpose, address: NodeAddress): RawConnection {
    const node = nodeKey(address);
    let byPurpose = this.#rawConnections.get(node);
    if (byPurpose === undefined) this.#rawConnections.set(node, (byPurpose = new Map()));
    let connection = byPurpose.get(purpose);
    if (connection === undefined) {
      // A key with no chunked copy is MIGRATEd whole on the copy connection: give it that long.
      const timeoutMs = purpose === 'copy' ? WHOLE_KEY_MIGRATE_TIMEOUT_MS + 10_000 : this.#options.migrateTimeoutMs + 10_000;
      connection = new RawConnection({ address, password: this.#options.password, timeoutMs });
      byPurpose.set(purpose, connection);
    }
    return connection;
  }

  /**
   * A new snapshot: connections to a node that is no longer any shard's primary (a source that
   * failed over) are closed, so that commands waiting on a frozen node fail now and are retried
   * at the promoted one, instead of waiting out their timeout.
   */
  onTopology(): void {
    const primaries = new Set(this.#host.topology.shards.map((shard) => nodeKey(shard.primary)));
    for (const [node, byPurpose] of this.#rawConnections) {
      if (primaries.has(node)) continue;
      for (const connection of byPurpose.values()) connection.close();
      this.#rawConnections.delete(node);
    }
    // An index on such a node has lost its notifications (and its barrier would wait on the
    // node): invalid now, built again on the new primary by the source's next step.
    for (const index of this.#indexes) if (!primaries.has(nodeKey(index.address))) void index.close(null);
  }

  #closeConnections(): void {
    for (const byPurpose of this.#rawConnections.values()) for (const connection of byPurpose.values()) connection.close();
    this.#rawConnections.clear();
  }
}

/** A token bucket: take(n) waits until n more units fit in the rate (unlimited when the rate is 0). */
export class Pacer {
  readonly #perMs: number;
  /** When the units taken so far are paid for (ms, performance.now()). */
  #paidUntil = 0;

  constructor(perSecond: number) {
    this.#perMs = perSecond / 1000;
  }

  async take(units: number): Promise<void> {
    if (this.#perMs <= 0) return;
    const now = performance.now();
    // At most 20 ms of credit builds up while idle, so a pause is not followed by a burst.
    this.#paidUntil = Math.max(this.#paidUntil, now - 20) + units / this.#perMs;
    const wait = this.#paidUntil - now;
    if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait));
  }
}

/** `keys` grouped by the shard their slot goes to (`targetOf`); keys of no target are left out. */
function keysByTarget(keys: readonly Buffer[], targetOf: (slot: number) => string | undefined): Map<string, Buffer[]> {
  const byTarget = new Map<string, Buffer[]>();
  for (const key of keys) {
    const to = targetOf(keySlot(key, 0, key.length));
    if (to === undefined) continue;
    const list = byTarget.get(to);
    if (list === undefined) byTarget.set(to, [key]);
    else list.push(key);
  }
  return byTarget;
}
