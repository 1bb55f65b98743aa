import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import Redis from 'ioredis';
import { AddressError, addressKey, parseAddress } from '../config/address';
import type { Address, ProxyConfig } from '../config/config-types';
import { ConfigError, loadConfigFile } from '../config/load-config';
import { log } from '../log/logger';
import { reshardPlansTotal } from '../metrics/metrics';
import { nodeKey, Topology, type ShardInfo } from '../topology/topology';
import type { TopologyStore } from '../topology/topology-store';
import { AdminServer } from './admin-server';
import { addShardToConfigFile, removeShardFromConfigFile, rewriteForWarmUp, writeSlotsToConfigFile } from './config-file-editor';
import type { PlanJob, PlanRequest, PlanTrigger, PlanView, ShardSpec, StoredPlan } from './plan-view';
import { PlanBusyError, PlanError, slotCounts, slotMapOf } from './rebalance-planner';
import type { RuntimeMembership } from './runtime-membership';
import { MigrationAbortedError, MigrationProgress, SlotMigrator, type BigKeyEntry } from './slot-migrator';
import { writeFileAtomic, type StateFile } from './state-file';

/**
 * Online resharding as a whole: it turns requests (from the admin endpoint, a config reload, or
 * what a restart finds unfinished) into plans, runs one plan at a time with the slot migrator,
 * and keeps the plan in a file next to the state file until it is done, so a proxy killed in
 * the middle resumes it at its next start.
 *
 * A stored plan is a goal, not a list of moves: "rebalance (these weights, draining these
 * shards)" or "move these slots from A to B". The moves are worked out again from the current
 * slot table whenever the plan (re)starts, so a resumed plan moves only what is left.
 */

export type { PlanRequest, PlanTrigger, PlanView } from './plan-view';

export type RunState = 'idle' | 'running' | 'done' | 'failed' | 'aborted';

/** GET /admin/status. */
export interface ReshardStatus {
  readonly state: RunState;
  readonly plan: PlanView | null;
  readonly error: string | null;
  readonly progress: {
    readonly slotsTotal: number;
    readonly slotsDone: number;
    readonly slotsMigrating: number;
    readonly keysMoved: number;
    readonly bigKeysMoved: number;
    readonly keysEstimate: number;
    readonly errors: number;
    readonly lastError: string | null;
    readonly elapsedMs: number;
    readonly keysPerSecond: number;
    readonly slotsPerSecond: number;
    /** null until something has moved. */
    readonly etaSeconds: number | null;
  } | null;
  readonly epoch: number;
  readonly shards: readonly { readonly name: string; readonly primary: string; readonly slots: number }[];
  readonly slotsMigrating: number;
}


const PLAN_FORMAT = 'slotproxy-reshard';
/** After a shard's last slot leaves it, commands routed by older snapshots get this long to finish there. */
const DROP_GRACE_MS = 200;
const WATCH_INTERVAL_MS = 1_000;

/** One plan being run (or the last one run). */
interface Run {
  /** Replaced as the journal in it grows (big keys, notification settings). */
  plan: StoredPlan;
  readonly view: PlanView;
  readonly progress: MigrationProgress;
  state: RunState;
  error: string | null;
  finishedAt: number | null;
}

/** Where the running plan is journaled: beside the state file. */
export function planFileOf(stateFile: string): string {
  return `${stateFile}.reshard`;
}

export class Resharding {
  readonly #store: TopologyStore;
  readonly #config: ProxyConfig;
  readonly #stateFile: StateFile | null;
  readonly #membership: RuntimeMembership;
  readonly #planFile: string | null;
  readonly #migrator: SlotMigrator;
  #run: Run | null = null;
  #running: Promise<void> | null = null;
  /** The id of the plan `#running` runs (or is working out). */
  #runningId = '';
  /** A reload arrived while a plan ran: reconcile the YAML's shards once it is done. */
  #isReloadPending = false;
  /** Reloads run one after another: each reads the topology the one before it left. */
  #reloads: Promise<void> = Promise.resolve();
  /** The plan file's last write or delete asked for. */
  #planWrites: Promise<void> = Promise.resolve();
  #admin: AdminServer | null = null;
  #isClosed = false;
  readonly #onSighup = (): void => {
    log.info('SIGHUP: reloading the config', { file: this.#config.configFile });
    void this.reload('reload');
  };
  #watchedMtime = 0;

  constructor(store: TopologyStore, config: ProxyConfig, stateFile: StateFile | null, membership: RuntimeMembership) {
    this.#store = store;
    this.#config = config;
    this.#stateFile = stateFile;
    this.#membership = membership;
    this.#planFile = stateFile === null ? null : planFileOf(stateFile.file);
    this.#migrator = new SlotMigrator(
      store,
      (topology) => this.#persist(topology),
      { setBigKeys: (entries) => this.#saveBigKeys(entries), setNotifyFlags: (node, flags) => this.#saveNotifyFlags(node, flags) },
      {
        migrateTimeoutMs: config.migrateTimeoutMs,
        password: config.backendPassword,
        batchKeys: config.migrateBatchKeys,
        slotsInFlight: config.migrateSlotsInFlight,
        keysPerSecond: config.migrateKeysPerSecond,
        minReplicaAcks: config.minReplicaAcks,
        replicaAckTimeoutMs: config.replicaAckTimeoutMs,
        noReplicaWrites: config.noReplicaWrites,
        // Commands can reach a source on connections other than the key moves' then.
        onDemandSettle: config.connectionsPerNode > 1 || config.workers > 1,
      },
      config.logLevel,
    );
  }

  /**
   * Begun once the control plane has settled the roles: the admin endpoint, config reloads
   * (SIGHUP, and the file watcher when watchConfig is on), then whatever the last run left:
   * a stored plan resumes; slots left migrating without one are finished; shards the YAML
   * added or removed while the proxy was down are rebalanced.
   */
  async start(): Promise<void> {
    try {
      await this.#start();
    } catch (err) {
      log.error('resharding start failed', { error: (err as Error).message ?? String(err) });
    }
  }

  async #start(): Promise<void> {
    if (this.#isClosed) return;
    if (this.#stateFile !== null) {
      this.#migrator.warmUp();
      this.#warmUp();
    }
    if (this.#config.admin !== null) {
      try {
        this.#admin = await AdminServer.start({ host: this.#config.admin.host, port: this.#config.admin.port, resharding: this });
        log.info('admin listening', { address: `${this.#admin.host}:${this.#admin.port}` });
      } catch (err) {
        log.error('admin endpoint failed to start', { error: (err as Error).message });
      }
    }
    if (this.#config.configFile !== null) {
      process.on('SIGHUP', this.#onSighup);
      if (this.#config.watchConfig) this.#watch(this.#config.configFile);
    }
    const stored = this.#readPlan();
    if (stored !== null) {
      log.info('resuming the resharding plan the last run left', { id: stored.id, op: stored.op });
      if (stored.bigKeys.length > 0) await this.#migrator.cleanUp(stored.bigKeys);
      this.#startQuietly({ ...stored, bigKeys: [] });
      return;
    }
    const { added, removed } = this.#membership;
    if (added.length > 0 || removed.length > 0) {
      log.info('the YAML adds or removes shards: rebalancing', { added: [...added], removed: [...removed] });
      this.#startQuietly({ ...this.#newPlan('rebalance', 'startup'), removeShards: removed });
    } else if (this.#store.current.migrations.size > 0) {
      log.info('finishing slots left migrating', { slots: this.#store.current.migrations.size });
      this.#startQuietly({ ...this.#newPlan('resume', 'startup'), weights: null });
    }
  }

  /** The plan a request would run, without running it. */
  async preview(request: PlanRequest): Promise<PlanView> {
    const job = await this.#planFor(request, 'admin');
    return (await this.#migrator.plan(job)).view;
  }

  /** Starts the plan; resolves with its view once it has begun. */
  async submit(request: PlanRequest, trigger: PlanTrigger = 'admin'): Promise<PlanView> {
    if (this.#running !== null) throw new PlanBusyError(`plan ${this.#runningId} is still running`);
    const job = await this.#planFor(request, trigger);
    return this.#launch(job);
  }

  status(): ReshardStatus {
    const topology = this.#store.current;
    const counts = slotCounts(slotMapOf(topology));
    const run = this.#run;
    let progress: ReshardStatus['progress'] = null;
    if (run !== null) {
      const p = run.progress;
      const elapsedMs = (run.finishedAt ?? Date.now()) - p.startedAt;
      const seconds = Math.max(0.001, elapsedMs / 1000);
      const slotsPerSecond = p.slotsDone / seconds;
      const keysPerSecond = p.keysMoved / seconds;
      let etaSeconds: number | null = null;
      if (run.state === 'running' && p.slotsDone > 0) {
        etaSeconds = (p.slotsTotal - p.slotsDone) / slotsPerSecond;
        if (p.keysEstimate > p.keysMoved && keysPerSecond > 0) etaSeconds = Math.max(etaSeconds, (p.keysEstimate - p.keysMoved) / keysPerSecond);
      } else if (run.state !== 'running') {
        etaSeconds = 0;
      }
      progress = {
        slotsTotal: p.slotsTotal,
        slotsDone: p.slotsDone,
        slotsMigrating: p.slotsMigrating,
        keysMoved: p.keysMoved,
        bigKeysMoved: p.bigKeysMoved,
        keysEstimate: p.keysEstimate,
        errors: p.errors,
        lastError: p.lastError,
        elapsedMs,
        keysPerSecond: Math.round(keysPerSecond),
        slotsPerSecond: Math.round(slotsPerSecond * 10) / 10,
        etaSeconds: etaSeconds === null ? null : Math.round(etaSeconds * 10) / 10,
      };
    }
    return {
      state: run?.state ?? 'idle',
      plan: run?.view ?? null,
      error: run?.error ?? null,
      progress,
      epoch: topology.epoch,
      shards: topology.shards.map((s, i) => ({ name: s.name, primary: nodeKey(s.primary), slots: counts[i]! })),
      slotsMigrating: topology.migrations.size,
    };
  }

  /** Re-reads the YAML: shards it adds are rebalanced onto, shards it drops are drained and removed. */
  reload(trigger: PlanTrigger): Promise<void> {
    const done = this.#reloads.then(() => this.#reloadNow(trigger));
    this.#reloads = done.catch(() => undefined);
    return done;
  }

  async #reloadNow(trigger: PlanTrigger): Promise<void> {
    const file = this.#config.configFile;
    if (file === null || this.#isClosed) return;
    if (this.#running !== null) {
      this.#isReloadPending = true;
      log.info('config reload deferred until the running plan is done', { file });
      return;
    }
    let config: ProxyConfig;
    try {
      config = loadConfigFile(file);
    } catch (err) {
      reshardPlansTotal.inc({ trigger, outcome: 'failed' });
      log.error('config reload failed; nothing changed', { file, error: err instanceof ConfigError ? err.message : String(err) });
      return;
    }
    const topology = this.#store.current;
    const notApplied = changesNotApplied(this.#config, config, topology);
    if (notApplied.length > 0) log.warn('config reload: these changes take effect at the next start only', { file, changed: notApplied });
    const names = new Set(topology.shards.map((s) => s.name));
    const wanted = new Set(config.shards.map((s) => s.name));
    const added = config.shards.filter((s) => !names.has(s.name)).map((s) => ({ name: s.name, primary: s.primary, replicas: s.replicas }));
    const removed = topology.shards.filter((s) => !wanted.has(s.name)).map((s) => s.name);
    if (added.length === 0 && removed.length === 0) {
      log.info('config reloaded: no shard added or removed', { file });
      return;
    }
    log.info('config reloaded: rebalancing', { file, added: added.map((s) => s.name), removed });
    try {
      for (const spec of added) await this.#checkNewShard(spec, topology);
    } catch (err) {
      reshardPlansTotal.inc({ trigger, outcome: 'failed' });
      log.error('config reload: plan refused', { file, error: (err as Error).message });
      return;
    }
    const plan: StoredPlan = { ...this.#newPlan('rebalance', trigger), addShards: added, removeShards: removed };
    try {
      await this.#launch({ plan });
    } catch (err) {
      if (err instanceof PlanBusyError) {
        // A plan (an admin's) began while the new shard was being checked: this one follows it.
        log.info('config reload deferred until the running plan is done', { file, running: this.#runningId });
        if (this.#running !== null) this.#isReloadPending = true;
        else void this.reload(trigger);
        return;
      }
      reshardPlansTotal.inc({ trigger, outcome: 'failed' });
      log.error('config reload: plan refused', { file, error: (err as Error).message });
    }
  }

  /** Stops the running plan after its current step (it resumes at the next start) and the admin endpoint. */
  async close(): Promise<void> {
    this.#isClosed = true;
    process.off('SIGHUP', this.#onSighup);
    if (this.#config.configFile !== null) fs.unwatchFile(this.#config.configFile);
    this.#migrator.abort();
    await this.#admin?.close();
    await this.#running;
    await this.#migrator.close();
  }

  /**
   * Runs the YAML writer once, on a copy, at start: its first run is slow (cold code), and it
   * would otherwise come at the start of a plan, on the data path's thread, while clients wait.
   * (Plans themselves are worked out in the mover's process.)
   */
  #warmUp(): void {
    try {
      if (this.#config.configFile !== null) rewriteForWarmUp(fs.readFileSync(this.#config.configFile, 'utf8'));
    } catch {
      // Only a warm-up.
    }
  }

  // ---- plans ----

  #newPlan(op: StoredPlan['op'], trigger: PlanTrigger): StoredPlan {
    return {
      format: PLAN_FORMAT,
      version: 1,
      id: randomBytes(4).toString('hex'),
      op,
      trigger,
      createdAt: new Date().toISOString(),
      addShards: [],
      removeShards: [],
      weights: {},
      reshard: null,
      bigKeys: [],
    };
  }

  /** The plan a request makes; worked out (and refused when it cannot be made) by `SlotMigrator.plan()`. */
  async #planFor(request: PlanRequest, trigger: PlanTrigger): Promise<PlanJob> {
    if (this.#stateFile === null) {
      throw new PlanError('resharding needs stateFile in the config: without it a restart would route by the YAML\'s slots, not where keys were moved');
    }
    const topology = this.#store.current;
    const names = topology.shards.map((s) => s.name);
    switch (request.op) {
      case 'reshard': {
        return { plan: { ...this.#newPlan('reshard', trigger), weights: null, reshard: { from: request.from, to: request.to, slots: [] } }, reshardCount: request.slots };
      }
      case 'rebalance': {
        return { plan: { ...this.#newPlan('rebalance', trigger), weights: request.weights ?? {} } };
      }
      case 'add-shard': {
        const spec = parseShardSpec(request.name, request.primary, request.replicas ?? []);
        await this.#checkNewShard(spec, topology);
        const plan = { ...this.#newPlan('add-shard', trigger), addShards: [spec] };
        return { plan: request.rebalance === false ? { ...plan, weights: null } : plan };
      }
      case 'remove-shard': {
        if (!names.includes(request.name)) throw new PlanError(`no shard named ${request.name}`);
        if (names.length < 2) throw new PlanError('cannot remove the only shard');
        return { plan: { ...this.#newPlan('remove-shard', trigger), removeShards: [request.name] } };
      }
    }
  }

  /** Refuses a shard the topology cannot take: a taken name or address, a node that is not an empty primary. */
  async #checkNewShard(spec: ShardSpec, topology: Topology): Promise<void> {
    if (topology.shardNamed(spec.name) !== undefined) throw new PlanError(`a shard named ${spec.name} exists already`);
    const used = new Map<string, string>();
    for (const shard of topology.shards) for (const node of [shard.primary, ...shard.replicas]) used.set(addressKey(node), shard.name);
    for (const node of [spec.primary, ...spec.replicas]) {
      const owner = used.get(addressKey(node));
      if (owner !== undefined) throw new PlanError(`${nodeKey(node)} already belongs to shard ${owner}`);
    }
    const redis = this.#controlConnection(spec.primary);
    try {
      await redis.connect();
      const role = (await redis.call('ROLE')) as unknown[];
      if (role[0] !== 'master') throw new PlanError(`${nodeKey(spec.primary)} is a ${String(role[0])}, not a primary`);
      const keys = await redis.dbsize();
      if (keys > 0) throw new PlanError(`${nodeKey(spec.primary)} holds ${keys} keys; a new shard must start empty`);
    } catch (err) {
      if (err instanceof PlanError) throw err;
      throw new PlanError(`cannot reach ${nodeKey(spec.primary)}: ${(err as Error).message}`);
    } finally {
      redis.disconnect();
    }
  }

  /** A one-off connection to a node (call connect()): no retries, no queue, every failure reported at once. */
  #controlConnection(address: { readonly host: string; readonly port: number }): Redis {
    const redis = new Redis({
      host: address.host,
      port: address.port,
      password: this.#config.backendPassword ?? undefined,
      lazyConnect: true,
      enableReadyCheck: false,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
      connectTimeout: this.#config.connectTimeoutMs,
      commandTimeout: 5_000,
    });
    redis.on('error', () => undefined);
    return redis;
  }

  // ---- running ----

  /** Starts a plan built elsewhere (startup, reload), logging instead of throwing. */
  #startQuietly(plan: StoredPlan): void {
    this.#launch({ plan }).catch((err: unknown) => {
      log.error('resharding plan refused', { id: plan.id, error: (err as Error).message });
    });
  }

  /**
   * Works the plan out (in the mover's process), then runs it; resolves with its view once it
   * has begun. The plan counts as running from this call on: one runs at a time.
   */
  #launch(job: PlanJob): Promise<PlanView> {
    if (this.#running !== null) return Promise.reject(new PlanBusyError(`plan ${this.#runningId} is still running`));
    this.#runningId = job.plan.id;
    const planned = this.#migrator.plan(job);
    this.#running = planned
      .then(
        ({ plan, view }) => {
          // Synchronously, before the caller hears of the view: a status asked next sees the run.
          const run: Run = { plan, view, progress: new MigrationProgress(), state: 'running', error: null, finishedAt: null };
          this.#run = run;
          log.info('resharding plan started', {
            id: plan.id,
            op: plan.op,
            trigger: plan.trigger,
            slots: view.slotsToMove,
            added: plan.addShards.map((s) => s.name),
            removed: [...plan.removeShards],
          });
          return this.#execute(run);
        },
        // Refused: the caller hears why from the promise returned.
        () => undefined,
      )
      .finally(() => {
        this.#running = null;
        if (this.#isReloadPending && !this.#isClosed) {
          this.#isReloadPending = false;
          void this.reload('reload');
        }
      });
    return planned.then(({ view }) => view);
  }

  async #execute(run: Run): Promise<void> {
    const { plan, progress } = run;
    try {
      await this.#savePlan(plan);
      const file = this.#config.configFile;
      for (const spec of plan.addShards) {
        if (file !== null && plan.trigger === 'admin') await addShardToConfigFile(file, spec, this.#rangesByShard());
        await this.#ensureShard(spec);
      }
      // Let the data path run between the synchronous steps of a plan's start.
      await new Promise((resolve) => setImmediate(resolve));
      await this.#migrator.run(run.view.moves, progress);
      for (const name of plan.removeShards) await this.#dropShard(name);
      // Finishing a slot is published first and saved after; a plan reported done has its end on
      // disk, so the state file a caller reads next (or a restart) holds no migration of it.
      await this.#persist(this.#store.current);
      if (file !== null) await this.#updateConfigFile(file, plan);
      await this.#restoreNotifyFlags(run.plan);
      await this.#deletePlan();
      run.state = 'done';
      log.info('resharding plan done', {
        id: plan.id,
        slots: progress.slotsDone,
        keys: progress.keysMoved,
        bigKeys: progress.bigKeysMoved,
        errors: progress.errors,
        ms: Date.now() - progress.startedAt,
      });
    } catch (err) {
      if (err instanceof MigrationAbortedError) {
        run.state = 'aborted';
        run.error = err.message;
        log.info('resharding plan stopped; it resumes at the next start', { id: plan.id });
      } else {
        run.state = 'failed';
        run.error = (err as Error).message ?? String(err);
        log.error('resharding plan failed', { id: plan.id, error: run.error });
        await this.#restoreNotifyFlags(run.plan);
        await this.#deletePlan().catch(() => undefined);
      }
    } finally {
      run.finishedAt = Date.now();
      reshardPlansTotal.inc({ trigger: plan.trigger, outcome: run.state });
    }
  }

  /** Adds a shard (no slots yet) to the topology, durably, unless it is there. */
  async #ensureShard(spec: ShardSpec): Promise<void> {
    const isNew = this.#store.current.shardNamed(spec.name) === undefined;
    if (isNew) await this.#copyFunctions(spec, 'REPLACE');
    await this.#publishDurably((base) => {
      if (base.shardNamed(spec.name) !== undefined) return null;
      const shard: ShardInfo = {
        index: base.shards.length,
        name: spec.name,
        primary: spec.primary,
        replicas: spec.replicas,
        readReplicas: spec.replicas,
        isFailingOver: false,
      };
      return new Topology(base.epoch + 1, [...base.shards, shard], base.slotOwner, base.migrations);
    });
    // Once more, now that FUNCTION LOAD/DELETE through the proxy reach it too: what changed
    // between the first copy and the publish reached only the other shards.
    if (isNew) await this.#copyFunctions(spec, 'FLUSH');
    log.info('shard added', { shard: spec.name, primary: nodeKey(spec.primary) });
  }

  /**
   * Gives a new shard the function libraries the others have (FUNCTION DUMP / RESTORE), before it
   * takes any slot: FUNCTION LOAD through the proxy went to every shard there was, and an FCALL
   * routed to the new one must find its library. (Scripts need nothing: the data path sends
   * SCRIPT LOAD in front of an EVALSHA a node has not seen.) A failure is logged; the shard is
   * added all the same.
   */
  async #copyFunctions(spec: ShardSpec, policy: 'REPLACE' | 'FLUSH'): Promise<void> {
    const from = this.#store.current.shards[0]?.primary;
    if (from === undefined) return;
    const source = this.#controlConnection(from);
    const target = this.#controlConnection(spec.primary);
    try {
      await Promise.all([source.connect(), target.connect()]);
      const payload = (await source.callBuffer('FUNCTION', 'DUMP')) as Buffer | null;
      if (payload !== null) await target.call('FUNCTION', 'RESTORE', payload, policy);
    } catch (err) {
      log.warn('function libraries not copied to the new shard', { shard: spec.name, from: nodeKey(from), error: (err as Error).message });
    } finally {
      source.disconnect();
      target.disconnect();
    }
  }

  /** Removes a drained shard from the topology, renumbering the shards after it. */
  async #dropShard(name: string): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, DROP_GRACE_MS));
    await this.#publishDurably((base) => {
      const index = base.shardNamed(name)?.index;
      if (index === undefined) return null;
      if (base.slotOwner.includes(index)) throw new PlanError(`shard ${name} still owns slots; not removed`);
      for (const m of base.migrations.values()) if (m.from === index || m.to === index) throw new PlanError(`shard ${name} is in a migration; not removed`);
      const renumber = (i: number): number => (i > index ? i - 1 : i);
      const shards = base.shards.filter((s) => s.index !== index).map((s) => ({ ...s, index: renumber(s.index) }));
      const owner = base.slotOwner.map(renumber);
      const migrations = new Map([...base.migrations].map(([slot, m]) => [slot, { ...m, from: renumber(m.from), to: renumber(m.to) }]));
      return new Topology(base.epoch + 1, shards, owner, migrations);
    });
    log.info('shard removed', { shard: name });
  }

  /** Writes the next snapshot to the state file, then publishes it (again if one was published meanwhile). */
  async #publishDurably(build: (base: Topology) => Topology | null): Promise<void> {
    for (;;) {
      const base = this.#store.current;
      const next = build(base);
      if (next === null) return;
      await this.#persist(next);
      if (this.#store.current === base) {
        this.#store.publish(next);
        return;
      }
    }
  }

  async #persist(topology: Topology): Promise<void> {
    if (this.#stateFile === null) throw new PlanError('resharding needs stateFile');
    await this.#stateFile.save(topology);
  }

  /**
   * Keeps the YAML true after a plan: the shards an admin plan removed leave its list (a plan
   * the YAML itself asked for leaves the list as the operator wrote it, since they may have put a
   * shard back meanwhile: the reload that follows takes that up), and `slots:` lists follow the
   * ownership. The data has moved by now whatever the file holds: a YAML that does not parse at
   * this moment (an edit half done) is left alone and said so, and the plan is still done.
   */
  async #updateConfigFile(file: string, plan: StoredPlan): Promise<void> {
    try {
      if (plan.trigger === 'admin') for (const name of plan.removeShards) await removeShardFromConfigFile(file, name, this.#rangesByShard());
      await writeSlotsToConfigFile(file, this.#rangesByShard());
    } catch (err) {
      log.warn('config file not updated after the plan', { id: plan.id, file, error: (err as Error).message });
    }
  }

  #rangesByShard(): Map<string, [number, number][]> {
    const topology = this.#store.current;
    const ranges = topology.slotRanges();
    return new Map(topology.shards.map((s, i) => [s.name, ranges[i]!]));
  }

  // ---- the plan file ----

  #readPlan(): StoredPlan | null {
    if (this.#planFile === null) return null;
    let text: string;
    try {
      text = fs.readFileSync(this.#planFile, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') log.error('resharding plan file unreadable', { file: this.#planFile, error: (err as Error).message });
      return null;
    }
    try {
      const plan = JSON.parse(text) as StoredPlan;
      if (plan.format !== PLAN_FORMAT || plan.version !== 1) throw new Error('not a slotproxy resharding plan');
      return plan;
    } catch (err) {
      log.error('resharding plan file ignored', { file: this.#planFile, error: (err as Error).message });
      return null;
    }
  }

  async #savePlan(plan: StoredPlan): Promise<void> {
    const file = this.#planFile;
    if (file === null) throw new PlanError('resharding needs stateFile');
    await this.#onPlanFile(() => writeFileAtomic(file, `${JSON.stringify(plan, null, 2)}\n`));
  }

  /** Runs plan-file writes and the delete one at a time, in the order asked: the last one asked is what the file holds. */
  #onPlanFile(write: () => Promise<void>): Promise<void> {
    const done = this.#planWrites.then(write);
    this.#planWrites = done.catch(() => undefined);
    return done;
  }

  async #saveBigKeys(entries: readonly BigKeyEntry[]): Promise<void> {
    const run = this.#run;
    if (run === null) return;
    run.plan = { ...run.plan, bigKeys: entries };
    await this.#savePlan(run.plan);
  }

  async #saveNotifyFlags(node: string, flags: string): Promise<void> {
    const run = this.#run;
    if (run === null) return;
    // A run resumed after a crash finds the flags it set itself: the first value kept is the original.
    if (run.plan.notifyFlags?.[node] !== undefined) return;
    run.plan = { ...run.plan, notifyFlags: { ...run.plan.notifyFlags, [node]: flags } };
    await this.#savePlan(run.plan);
  }

  /**
   * Puts back notify-keyspace-events on every node the plan's key indexes changed. An index
   * closed normally has done so already; this covers the ones a crash (of the proxy or of the
   * mover process) left changed. A node that does not answer keeps the setting, and the log says so.
   */
  async #restoreNotifyFlags(plan: StoredPlan): Promise<void> {
    // Only on nodes known to answer (primaries, healthy replicas): a frozen old primary would hold
    // the plan's end for the whole command timeout. The others keep the setting, and the log says so.
    const answering = new Set(this.#store.current.shards.flatMap((s) => [s.primary, ...s.readReplicas].map(nodeKey)));
    await Promise.all(
      Object.entries(plan.notifyFlags ?? {}).map(async ([node, flags]) => {
        if (!answering.has(node)) {
          log.warn('notify-keyspace-events not put back: the node is not a healthy member', { node, flags });
          return;
        }
        const at = node.lastIndexOf(':');
        const redis = this.#controlConnection({ host: node.slice(0, at), port: Number(node.slice(at + 1)) });
        try {
          await redis.connect();
          await redis.config('SET', 'notify-keyspace-events', flags);
        } catch (err) {
          log.warn('notify-keyspace-events not put back', { node, flags, error: (err as Error).message });
        } finally {
          redis.disconnect();
        }
      }),
    );
  }

  async #deletePlan(): Promise<void> {
    const file = this.#planFile;
    if (file === null) return;
    await this.#onPlanFile(() =>
      fs.promises.unlink(file).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      }),
    );
  }

  #watch(file: string): void {
    this.#watchedMtime = fs.statSync(file, { throwIfNoEntry: false })?.mtimeMs ?? 0;
    fs.watchFile(file, { interval: WATCH_INTERVAL_MS }, (stats) => {
      if (stats.mtimeMs === this.#watchedMtime) return;
      this.#watchedMtime = stats.mtimeMs;
      log.info('config file changed: reloading', { file });
      void this.reload('reload');
    });
  }
}

function parseShardSpec(name: string, primary: string, replicas: readonly string[]): ShardSpec {
  if (typeof name !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(name)) throw new PlanError(`shard name ${JSON.stringify(name)} must be 1-64 letters, digits, _ . -`);
  let spec: ShardSpec;
  try {
    spec = { name, primary: parseAddress(primary), replicas: replicas.map((r) => parseAddress(r)) };
  } catch (err) {
    if (err instanceof AddressError) throw new PlanError(err.message);
    throw err;
  }
  // The YAML the plan writes would not load with a node twice in one shard.
  const seen = new Set<string>();
  for (const node of [spec.primary, ...spec.replicas]) {
    const key = addressKey(node);
    if (seen.has(key)) throw new PlanError(`${nodeKey(node)} is named twice in shard ${name}`);
    seen.add(key);
  }
  return spec;
}

/**
 * What a reload reads but does not apply: settings (a reload adds and removes shards, nothing
 * else), and the addresses of shards both lists name (the topology follows failovers, not the
 * YAML's addresses). Said in the log, so an edit is not taken for applied.
 */
function changesNotApplied(running: ProxyConfig, next: ProxyConfig, topology: Topology): string[] {
  const changed: string[] = [];
  for (const key of Object.keys(next) as (keyof ProxyConfig)[]) {
    if (key === 'shards' || key === 'configFile') continue;
    if (JSON.stringify(next[key]) !== JSON.stringify(running[key])) changed.push(key);
  }
  for (const shard of next.shards) {
    const current = topology.shardNamed(shard.name);
    if (current === undefined) continue;
    const members = new Set([current.primary, ...current.replicas].map(addressKey));
    if (![shard.primary, ...shard.replicas].every((node) => members.has(addressKey(node)))) changed.push(`shards.${shard.name} addresses`);
  }
  return changed;
}
