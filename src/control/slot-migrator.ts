import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import type { LogLevel } from '../log/logger';
import { log } from '../log/logger';
import { bigKeysMovedTotal, migratedKeysTotal, migratedSlotsTotal, migrationErrorsTotal } from '../metrics/metrics';
import { backgroundCommand, runQueueWaitMs } from '../runtime/background-process';
import { topologyToJson, type TopologyJson } from '../topology/topology-codec';
import { nodeKey, Topology, type SlotMigration } from '../topology/topology';
import type { TopologyStore } from '../topology/topology-store';
import { removeTempKey } from './big-key-copier';
import { movesOf, workOutPlan, type PlanJob, type PlannedWork } from './plan-view';
import { RawConnection } from './raw-connection';
import { PlanError, type MoveGroup } from './rebalance-planner';
import {
  DEFAULT_SETTLE_MS,
  MigrationAbortedError,
  MigrationProgress,
  SlotMover,
  type BigKeyEntry,
  type MoverHost,
  type QueuedSlot,
  type SlotMigratorOptions,
} from './slot-mover';

export { MigrationAbortedError, MigrationProgress, type BigKeyEntry, type SlotMigratorOptions } from './slot-mover';

/**
 * Runs the slot mover (slot-mover.ts) for the control plane and makes the snapshot changes it
 * asks for: each begins with the state file written, then the snapshot published.
 *
 * The mover runs in a process of its own when the compiled mover-process.js is there (it is, in
 * the built proxy), in the SCHED_IDLE class (runtime/background-process.ts): its scanning, key
 * copying, compiling and garbage then never hold up the data path's event loop or take a core a
 * client's command waits for; the data path only sees the snapshots it publishes. Without it
 * (sources run by a test runner) the mover runs on this thread.
 *
 * Plans are worked out there too (plan-view.ts): on the data path's thread their cold passes
 * over the slot table held clients up for 5-15 ms at a plan's start.
 */

/** Where the migrator keeps what a restart must clean up. */
export interface MigrationJournal {
  /** Persists the chunked copies under way; resolves once durable. */
  setBigKeys(entries: readonly BigKeyEntry[]): Promise<void>;
  /** Persists a node's notify-keyspace-events from before the plan changed it; resolves once durable. */
  setNotifyFlags(node: string, flags: string): Promise<void>;
}

/** Messages to the mover process. */
export type ToMover =
  | { readonly type: 'start'; readonly moves: readonly MoveGroup[]; readonly options: SlotMigratorOptions; readonly topology: TopologyJson; readonly logLevel: LogLevel }
  | { readonly type: 'plan'; readonly id: number; readonly job: PlanJob; readonly topology: TopologyJson }
  | { readonly type: 'topology'; readonly topology: TopologyJson }
  | { readonly type: 'reply'; readonly id: number; readonly error: string | null }
  | { readonly type: 'abort' };

/** Messages from the mover process. */
export type FromMover =
  | { readonly type: 'call'; readonly id: number; readonly call: HostCall }
  | { readonly type: 'error'; readonly kind: string }
  | { readonly type: 'progress'; readonly progress: ProgressFields }
  | { readonly type: 'planned'; readonly id: number; readonly work: PlannedWork | null; readonly error: string | null; readonly isPlanError: boolean }
  | { readonly type: 'end'; readonly error: string | null; readonly isAborted: boolean };

/** A MoverHost call made from the mover process. */
export type HostCall =
  | { readonly method: 'change'; readonly source: string; readonly done: readonly QueuedSlot[]; readonly begun: readonly QueuedSlot[] }
  | { readonly method: 'setLock'; readonly slot: number; readonly key: string; readonly isLocked: boolean }
  | { readonly method: 'setBigKeys'; readonly entries: readonly BigKeyEntry[] }
  | { readonly method: 'setNotifyFlags'; readonly node: string; readonly flags: string };

/** MigrationProgress's counters, as the mover process reports them. */
export type ProgressFields = Omit<MigrationProgress, 'startedAt'>;

const MOVER_FILE = path.join(__dirname, 'mover-process.js');
/**
 * V8 without helper threads: the mover's garbage collection and optimizing compiles run on its
 * one thread. SCHED_IDLE does not keep an idle-class thread from holding a core while a normal
 * one waits: the kernel's scheduler (EEVDF) picks it over a woken thread that has had more than
 * its share of late, and nothing takes the core back before the next tick (4 ms here). With
 * helpers, the mover could hold both cores that way (its helpers ran 1-3.8 ms bursts, 99 of
 * them in one add-shard plan); with one thread, one at most. Client p99 during an add-shard plan
 * was 5-12% lower, in 17 of 19 alternating runs (docs/resharding-latency.md).
 */
const MOVER_NODE_FLAGS = ['--single-threaded'];
/** How long a slot change waits for others to share its snapshot. */
const COMMIT_GATHER_MS = 10;
/**
 * How long a plan waits for the mover process to work it out before it is worked out here: the
 * process is in SCHED_IDLE, and on saturated cores (or stopped) it may not run for a long time.
 */
export const PLAN_TIMEOUT_MS = 5_000;
/** Times a run starts a new mover process after its process died, before the run fails. */
const MOVER_RESTARTS = 5;
/**
 * The mover in SCHED_IDLE is starved of CPU when every core is busy with normal threads: it gets
 * a fraction of a percent of one (a reshard that takes a tenth of a second on idle cores had not
 * indexed its source after 15 s). A mover that waited, runnable, for a core this share of the
 * last STARVATION_WINDOW_MS (or, where the kernel does not say, sent nothing for that long; it
 * reports progress every 100 ms) is replaced by one at the proxy's own priority, so the run ends
 * in bounded time. The key pacing (keysPerSecond) still bounds what it takes then.
 */
const STARVED_WAIT_SHARE = 0.75;
const STARVATION_WINDOW_MS = 3_000;
/** How often a run looks for a starved mover. */
const STARVATION_CHECK_MS = 500;

/** The mover process ended (or could not start) while a run needed it. */
class MoverExitedError extends Error {
  override readonly name = 'MoverExitedError';
}

/** The mover process was replaced because it was starved of CPU (a MoverExitedError that is not a fault). */
class MoverStarvedError extends MoverExitedError {}

export class SlotMigrator {
  readonly #store: TopologyStore;
  readonly #persist: (topology: Topology) => Promise<void>;
  readonly #journal: MigrationJournal;
  readonly #options: SlotMigratorOptions;
  readonly #logLevel: LogLevel;
  /** Snapshot changes, one at a time. */
  #commits: Promise<unknown> = Promise.resolve();
  /** Slot changes asked for while a snapshot was being written: made together in the next one. */
  #pendingChanges: PendingChange[] = [];
  /** Stops the run under way; null when none runs. */
  #abort: (() => void) | null = null;
  /** The mover process; null until started (or after it died). */
  #child: ChildProcess | null = null;
  /** Whether the mover process runs at the proxy's priority: the run under way found one in SCHED_IDLE starved. */
  #isChildNormalPriority = false;
  /** Whether new mover processes start at the proxy's priority (for the rest of the run under way). */
  #wantsNormalPriority = false;
  /** Stops watching the run's mover for starvation; null when not watching. */
  #stopStarvationWatch: (() => void) | null = null;
  /** Ends the run in the mover process (with its error); null when none runs. */
  #onRunEnd: ((err: Error | null) => void) | null = null;
  /** The mover process the run under way is in; null when none runs. A process replaced meanwhile ends no run. */
  #runChild: ChildProcess | null = null;
  /** The run's progress (with what earlier mover processes of it did), and what of it the metrics have counted. */
  #runProgress: { readonly progress: MigrationProgress; readonly before: RunningTotals } | null = null;
  #counted: Counted = { keys: 0, slots: 0, bigKeys: 0 };
  #isAborted = false;
  /** Plans being worked out in the mover process, by request id. */
  readonly #plans = new Map<number, PendingPlan>();
  #nextPlanId = 1;

  constructor(store: TopologyStore, persist: (topology: Topology) => Promise<void>, journal: MigrationJournal, options: SlotMigratorOptions, logLevel: LogLevel = 'info') {
    this.#store = store;
    this.#persist = persist;
    this.#journal = journal;
    this.#options = options;
    this.#logLevel = logLevel;
  }

  /**
   * Works out `job` against the current snapshot, in the mover process when there is one (here
   * when it cannot: none, gone, or silent for PLAN_TIMEOUT_MS).
   * @throws PlanError when the plan cannot be made
   */
  plan(job: PlanJob): Promise<PlannedWork> {
    const child = fs.existsSync(MOVER_FILE) ? this.#moverProcess() : null;
    if (child === null || !child.connected) return new Promise((resolve) => resolve(workOutPlan(this.#store.current, job)));
    const id = this.#nextPlanId++;
    const topology = this.#store.current;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const pending = this.#plans.get(id);
        if (pending === undefined) return;
        this.#plans.delete(id);
        log.warn('the mover process did not work the plan out in time; working it out here', { ms: PLAN_TIMEOUT_MS });
        workOutHere(pending);
      }, PLAN_TIMEOUT_MS);
      this.#plans.set(id, {
        topology,
        job,
        resolve: (work) => {
          clearTimeout(timer);
          resolve(work);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      });
      send(child, { type: 'plan', id, job, topology: topologyToJson(topology) } satisfies ToMover);
    });
  }

  /**
   * Moves every slot of `moves` (those already moved are skipped, those already migrating are
   * resumed); resolves when all are owned by their targets.
   * @throws MigrationAbortedError when abort() was called first
   */
  run(moves: readonly MoveGroup[], progress: MigrationProgress): Promise<void> {
    if (this.#isAborted) return Promise.reject(new MigrationAbortedError('the migration was stopped'));
    return fs.existsSync(MOVER_FILE) ? this.#runInProcesses(moves, progress) : this.#runHere(moves, progress);
  }

  /** Stops the run after its current step; slots left migrating resume at the next start. */
  abort(): void {
    this.#isAborted = true;
    this.#abort?.();
  }

  /** Removes the temporary keys of chunked copies a crash interrupted (from the journal). */
  async cleanUp(entries: readonly BigKeyEntry[]): Promise<void> {
    for (const entry of entries) {
      const target = this.#store.current.shardNamed(entry.target)?.primary;
      if (target === undefined) continue;
      const connection = new RawConnection({ address: target, password: this.#options.password, timeoutMs: 10_000 });
      try {
        await removeTempKey(connection, Buffer.from(entry.key, 'base64'));
        log.info('interrupted big-key copy cleaned up', { target: entry.target, source: entry.source });
      } finally {
        connection.close();
      }
    }
  }

  /** The MoverHost calls, made on the real store. */
  call(call: HostCall): Promise<void> {
    switch (call.method) {
      case 'change':
        return this.#change(call.source, call.done, call.begun);
      case 'setLock':
        return this.#commit(() => this.#setLock(call.slot, call.key, call.isLocked));
      case 'setBigKeys':
        return this.#journal.setBigKeys(call.entries);
      case 'setNotifyFlags':
        return this.#journal.setNotifyFlags(call.node, call.flags);
    }
  }

  async #runHere(moves: readonly MoveGroup[], progress: MigrationProgress): Promise<void> {
    const before = snapshotOf(progress);
    const store = this.#store;
    const host: MoverHost = {
      get topology() {
        return store.current;
      },
      change: (source, done, begun) => this.call({ method: 'change', source, done, begun }),
      setLock: (slot, key, isLocked) => this.call({ method: 'setLock', slot, key, isLocked }),
      setBigKeys: (entries) => this.call({ method: 'setBigKeys', entries }),
      setNotifyFlags: (node, flags) => this.call({ method: 'setNotifyFlags', node, flags }),
      onError: (kind) => migrationErrorsTotal.inc({ kind }),
    };
    const mover = new SlotMover(host, this.#options);
    this.#abort = () => mover.abort();
    const onChange = (): void => mover.onTopology();
    store.on('change', onChange);
    try {
      await mover.run(movesOf(moves), progress);
    } finally {
      store.off('change', onChange);
      this.#abort = null;
      countProgress(before, snapshotOf(progress));
    }
  }

  /**
   * Starts the mover process ahead of a run, so its start-up (a Node process loading ioredis)
   * is not paid while slots move. No-op when the mover's file is missing.
   */
  warmUp(): void {
    if (fs.existsSync(MOVER_FILE)) this.#moverProcess();
  }

  /** Ends the mover process (after abort(), when the proxy closes). */
  async close(): Promise<void> {
    const child = this.#child;
    this.#child = null;
    if (child === null || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  }

  /** The mover process, started once and kept (idle between runs). */
  #moverProcess(): ChildProcess {
    if (this.#child !== null) return this.#child;
    const isNormalPriority = this.#wantsNormalPriority;
    const command = backgroundCommand(process.execPath, [...MOVER_NODE_FLAGS, MOVER_FILE], isNormalPriority ? 'normal' : 'idle');
    // Its log lines go where the proxy's go.
    const child = spawn(command.file, command.args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    // Neither the process nor its channel keeps the proxy alive: close() ends it.
    child.unref();
    child.channel?.unref();
    child.on('message', (message: FromMover) => this.#onMoverMessage(child, message));
    const onGone = (err: Error): void => {
      if (this.#child === child) this.#child = null;
      if (this.#runChild === child) this.#onRunEnd?.(err);
      // Plans it was working out are worked out here instead: a plan must not fail for that.
      const plans = [...this.#plans.values()];
      this.#plans.clear();
      for (const pending of plans) workOutHere(pending);
    };
    child.on('error', (err) => onGone(new MoverExitedError(`the mover process could not run: ${err.message}`)));
    child.on('exit', (code, signal) => onGone(new MoverExitedError(`the mover process exited (${signal ?? `code ${code}`})`)));
    this.#child = child;
    this.#isChildNormalPriority = isNormalPriority;
    return child;
  }

  /**
   * Runs the moves in the mover process. A process that dies mid-run (killed, out of memory) is
   * replaced and the run resumed, as a restarted proxy resumes one: moves done are skipped, slots
   * left migrating are finished, marks left on the sources are cleared first.
   */
  async #runInProcesses(moves: readonly MoveGroup[], progress: MigrationProgress): Promise<void> {
    try {
      // Restarts after a process died; a starved one replaced (at once) is not counted.
      for (let restarts = 0; ; ) {
        try {
          await this.#runInProcess(moves, progress, runningTotals(progress));
          return;
        } catch (err) {
          if (!(err instanceof MoverExitedError)) throw err;
          // Stopping anyway (the proxy is closing): the plan resumes at the next start.
          if (this.#isAborted) throw new MigrationAbortedError('the migration was stopped');
          if (err instanceof MoverStarvedError) continue;
          if (restarts >= MOVER_RESTARTS) throw err;
          progress.errors++;
          progress.lastError = err.message;
          migrationErrorsTotal.inc({ kind: 'mover_exit' });
          log.warn('the mover process ended mid-run; starting a new one', { error: err.message, restart: restarts + 1 });
          await new Promise((resolve) => setTimeout(resolve, Math.min(5_000, 500 * 2 ** restarts)));
          restarts++;
          if (this.#isAborted) throw new MigrationAbortedError('the migration was stopped');
        }
      }
    } finally {
      // The next run starts in SCHED_IDLE again (the machine may not be saturated then), with a
      // mover started ahead of it as usual.
      if (this.#wantsNormalPriority) {
        this.#wantsNormalPriority = false;
        if (this.#isChildNormalPriority) {
          await this.close();
          if (!this.#isAborted) this.warmUp();
        }
      }
    }
  }

  /** One mover process's part of a run; `before` holds what earlier processes of the run did. */
  #runInProcess(moves: readonly MoveGroup[], progress: MigrationProgress, before: RunningTotals): Promise<void> {
    return new Promise((resolve, reject) => {
      const child = this.#moverProcess();
      // The mover reads shard names, primaries and healthy replicas (whether a move waits for
      // them) from its snapshot (slot ownership it was given at the start): only snapshots that
      // change those are worth sending.
      let sent = shardsKey(this.#store.current);
      const onChange = (next: Topology): void => {
        const key = shardsKey(next);
        if (key === sent) return;
        sent = key;
        send(child, { type: 'topology', topology: topologyToJson(next) } satisfies ToMover);
      };
      this.#store.on('change', onChange);
      this.#runProgress = { progress, before };
      this.#counted = snapshotOf(progress);
      this.#runChild = child;
      this.#onRunEnd = (err) => {
        this.#onRunEnd = null;
        this.#runChild = null;
        this.#stopStarvationWatch?.();
        this.#runProgress = null;
        this.#abort = null;
        this.#store.off('change', onChange);
        if (err === null) resolve();
        else reject(err);
      };
      this.#abort = () => send(child, { type: 'abort' } satisfies ToMover);
      this.#watchForStarvation(child);
      send(child, {
        type: 'start',
        moves,
        options: this.#options,
        topology: topologyToJson(this.#store.current),
        logLevel: this.#logLevel,
      } satisfies ToMover);
      if (this.#isAborted) this.#abort();
    });
  }

  /**
   * Replaces the run's mover process by one at the proxy's priority when it is starved of CPU
   * (see STARVED_WAIT_SHARE).
   */
  #watchForStarvation(child: ChildProcess): void {
    if (this.#isChildNormalPriority) return;
    const pid = child.pid;
    /** Samples of the window: when (ms), and the mover's run-queue wait so far then (ms; null when unknown). */
    const samples: { at: number; waitMs: number | null }[] = [];
    let heardAt = Date.now();
    const onMessage = (): void => {
      heardAt = Date.now();
    };
    child.on('message', onMessage);
    const timer = setInterval(() => {
      const now = Date.now();
      // A late check: this process was not running either (stopped, or as starved): silence
      // counts from now. The run-queue wait is the mover's own, whenever it is read.
      const last = samples[samples.length - 1];
      if (last !== undefined && now - last.at > 2 * STARVATION_CHECK_MS) heardAt = now;
      samples.push({ at: now, waitMs: pid === undefined ? null : runQueueWaitMs(pid) });
      while (samples.length > 1 && now - samples[1]!.at >= STARVATION_WINDOW_MS) samples.shift();
      const first = samples[0]!;
      const spanMs = now - first.at;
      if (spanMs < STARVATION_WINDOW_MS || this.#runChild !== child) return;
      const latest = samples[samples.length - 1]!.waitMs;
      const waitedMs = first.waitMs === null || latest === null ? null : latest - first.waitMs;
      const isStarved = waitedMs === null ? now - heardAt >= STARVATION_WINDOW_MS : waitedMs >= STARVED_WAIT_SHARE * spanMs;
      if (!isStarved) return;
      this.#stopStarvationWatch?.();
      this.#wantsNormalPriority = true;
      migrationErrorsTotal.inc({ kind: 'mover_starved' });
      log.warn('the mover process (SCHED_IDLE) got no CPU for a while: every core is busy; going on at the proxy\'s own priority', {
        waitedMs: waitedMs === null ? null : Math.round(waitedMs),
        silentMs: now - heardAt,
        windowMs: spanMs,
      });
      this.#child = null;
      child.kill('SIGKILL');
      this.#onRunEnd?.(new MoverStarvedError('the mover process was starved of CPU'));
    }, STARVATION_CHECK_MS);
    timer.unref();
    this.#stopStarvationWatch = () => {
      this.#stopStarvationWatch = null;
      clearInterval(timer);
      child.off('message', onMessage);
    };
  }

  #onMoverMessage(child: ChildProcess, message: FromMover): void {
    switch (message.type) {
      case 'call':
        this.call(message.call).then(
          () => send(child, { type: 'reply', id: message.id, error: null } satisfies ToMover),
          (err: unknown) => send(child, { type: 'reply', id: message.id, error: (err as Error).message ?? String(err) } satisfies ToMover),
        );
        return;
      case 'error':
        migrationErrorsTotal.inc({ kind: message.kind });
        return;
      case 'planned': {
        const pending = this.#plans.get(message.id);
        if (pending === undefined) return;
        this.#plans.delete(message.id);
        if (message.work !== null) pending.resolve(message.work);
        else pending.reject(message.isPlanError ? new PlanError(message.error ?? 'no plan') : new Error(message.error ?? 'no plan'));
        return;
      }
      case 'progress': {
        const run = this.#runProgress;
        if (run === null || child !== this.#runChild) return;
        const { progress } = run;
        continueRun(progress, run.before, message.progress);
        const now = snapshotOf(progress);
        countProgress(this.#counted, now);
        this.#counted = now;
        return;
      }
      case 'end':
        if (child !== this.#runChild) return;
        this.#onRunEnd?.(message.error === null ? null : message.isAborted ? new MigrationAbortedError(message.error) : new Error(message.error));
        return;
    }
  }

  /**
   * `done` slots owned by their targets, `begun` slots migrating. Changes asked for by several
   * sources while a snapshot is being written go into the next snapshot together, so the
   * state file is written once for them. A snapshot that begins slots is written to the state
   * file before it is published, so a restart always knows a slot whose keys may be on both
   * shards; finishing alone is published, then saved by the control plane (a crash in between
   * finds the slots migrating with no key left on the source, and finishes them again).
   */
  #change(source: string, done: readonly QueuedSlot[], begun: readonly QueuedSlot[]): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#pendingChanges.push({ source, done, begun, resolve, reject });
      // Changes from several sources arriving within COMMIT_GATHER_MS share one snapshot (and one
      // state-file write): each write costs the data path's thread a few milliseconds.
      if (this.#pendingChanges.length === 1) setTimeout(() => void this.#commit(() => this.#applyChanges()), COMMIT_GATHER_MS);
    });
  }

  async #applyChanges(): Promise<void> {
    const changes = this.#pendingChanges;
    this.#pendingChanges = [];
    try {
      for (;;) {
        const base = this.#store.current;
        const owner = changes.some((c) => c.done.length > 0) ? Uint16Array.from(base.slotOwner) : base.slotOwner;
        const migrations = new Map(base.migrations);
        /** Slots this snapshot begins. */
        const begins: number[] = [];
        for (const change of changes) {
          for (const q of change.done) {
            const migration = migrations.get(q.slot);
            if (migration === undefined) continue;
            owner[q.slot] = migration.to;
            migrations.delete(q.slot);
          }
          const from = base.indexOfShard(change.source);
          for (const q of change.begun) {
            if (!migrations.has(q.slot) && owner[q.slot] === from) {
              migrations.set(q.slot, { from, to: base.indexOfShard(q.to) });
              begins.push(q.slot);
            }
          }
        }
        const next = new Topology(base.epoch + 1, base.shards, owner, migrations);
        if (changes.some((c) => c.begun.length > 0)) await this.#persist(next);
        // A snapshot published meanwhile (a failover) is not to be lost: apply the changes to it.
        if (this.#store.current === base) {
          this.#store.publish(this.#options.onDemandSettle === true && begins.length > 0 ? settling(next, begins, Date.now() + (this.#options.settleMs ?? DEFAULT_SETTLE_MS)) : next);
          break;
        }
      }
    } catch (err) {
      for (const change of changes) change.reject(err as Error);
      return;
    }
    for (const change of changes) change.resolve();
  }

  #setLock(slot: number, key: string, isLocked: boolean): void {
    const base = this.#store.current;
    const migration = base.migrations.get(slot);
    if (migration === undefined) return;
    const locked = new Set(migration.lockedKeys ?? []);
    if (isLocked) locked.add(key);
    else locked.delete(key);
    const next: SlotMigration = {
      from: migration.from,
      to: migration.to,
      ...(locked.size > 0 ? { lockedKeys: locked } : {}),
      ...(migration.movesFrom === undefined ? {} : { movesFrom: migration.movesFrom }),
    };
    const migrations = new Map(base.migrations);
    migrations.set(slot, next);
    this.#store.publish(new Topology(base.epoch + 1, base.shards, base.slotOwner, migrations));
  }

  /** Runs snapshot changes one at a time (each reads the store, builds and publishes). */
  #commit(change: () => Promise<void> | void): Promise<void> {
    const result = this.#commits.then(change);
    this.#commits = result.catch(() => undefined);
    return result;
  }
}

/** A plan sent to the mover process to be worked out, with what working it out here needs. */
interface PendingPlan {
  readonly topology: Topology;
  readonly job: PlanJob;
  resolve(work: PlannedWork): void;
  reject(err: Error): void;
}

/** Works a plan the mover process did not answer out on this thread. */
function workOutHere(pending: PendingPlan): void {
  try {
    pending.resolve(workOutPlan(pending.topology, pending.job));
  } catch (err) {
    pending.reject(err as Error);
  }
}

/** A slot change waiting for the next snapshot. */
interface PendingChange {
  readonly source: string;
  readonly done: readonly QueuedSlot[];
  readonly begun: readonly QueuedSlot[];
  resolve(): void;
  reject(err: Error): void;
}

/** What a run had done when its current mover process started. */
type RunningTotals = Pick<MigrationProgress, 'slotsTotal' | 'slotsDone' | 'keysMoved' | 'bigKeysMoved' | 'keysEstimate' | 'errors' | 'lastError'>;

function runningTotals(progress: MigrationProgress): RunningTotals {
  const { slotsTotal, slotsDone, keysMoved, bigKeysMoved, keysEstimate, errors, lastError } = progress;
  return { slotsTotal, slotsDone, keysMoved, bigKeysMoved, keysEstimate, errors, lastError };
}

/** The counters the metrics follow. */
interface Counted {
  readonly keys: number;
  readonly slots: number;
  readonly bigKeys: number;
}

/**
 * Sets the run's progress from what its current mover process reports. A replacement process
 * counts from zero over the slots not done yet: the slots done are the run's total less those it
 * still has (a dead process may not have reported its last ones); keys moved in a dead process's
 * last moments go uncounted.
 */
function continueRun(progress: MigrationProgress, before: RunningTotals, reported: ProgressFields): void {
  Object.assign(progress, reported);
  if (before.slotsTotal > 0) {
    progress.slotsTotal = before.slotsTotal;
    progress.slotsDone = reported.slotsTotal > 0 ? before.slotsTotal - reported.slotsTotal + reported.slotsDone : before.slotsDone;
  }
  progress.keysMoved = before.keysMoved + reported.keysMoved;
  progress.bigKeysMoved = before.bigKeysMoved + reported.bigKeysMoved;
  progress.errors = before.errors + reported.errors;
  if (before.keysEstimate > 0) progress.keysEstimate = before.keysEstimate;
  if (reported.lastError === null) progress.lastError = before.lastError;
}

/** A message to the mover process; one whose channel has closed is gone (its 'exit' ends the run). */
function send(child: ChildProcess, message: ToMover): void {
  if (child.connected) child.send(message);
}

function snapshotOf(progress: MigrationProgress): Counted {
  return { keys: progress.keysMoved, slots: progress.slotsDone, bigKeys: progress.bigKeysMoved };
}

function countProgress(before: Counted, after: Counted): void {
  if (after.keys > before.keys) migratedKeysTotal.inc(after.keys - before.keys);
  if (after.slots > before.slots) migratedSlotsTotal.inc(after.slots - before.slots);
  if (after.bigKeys > before.bigKeys) bigKeysMovedTotal.inc(after.bigKeys - before.bigKeys);
}

/** What the mover process needs of a snapshot: shard names and primaries, in order. */
function shardsKey(topology: Topology): string {
  return topology.shards.map((s) => `${s.name} ${nodeKey(s.primary)} ${s.readReplicas.map(nodeKey).join(',')}`).join('\n');
}

/** `topology` with the migrations of `slots` moving no key before `movesFrom` (SlotMigration.movesFrom). */
function settling(topology: Topology, slots: readonly number[], movesFrom: number): Topology {
  const migrations = new Map(topology.migrations);
  for (const slot of slots) migrations.set(slot, { ...migrations.get(slot)!, movesFrom });
  return new Topology(topology.epoch, topology.shards, topology.slotOwner, migrations);
}
