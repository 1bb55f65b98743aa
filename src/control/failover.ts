import { log as defaultLog, type Logger } from '../log/logger';
import { demotionsTotal, failoverDurationSeconds, failoversTotal, nodeFailuresTotal, nodeRole, nodeUp, replicaRepointsTotal } from '../metrics/metrics';
import { nodeKey, sameNode, Topology, type NodeAddress, type ShardInfo } from '../topology/topology';
import type { TopologyStore } from '../topology/topology-store';
import { probeIntervalFor, type NodeReport, type NodeState } from './health-checker';

/**
 * What failover needs of the health checker: the last report of a node, a fresh one, and a
 * command on its control connection. An interface, so the decisions can be tested without sockets.
 */
export interface NodeControl {
  report(node: NodeAddress): NodeReport | undefined;
  refresh(node: NodeAddress): Promise<NodeReport>;
  command(node: NodeAddress, args: readonly string[]): Promise<unknown>;
}

export interface FailoverOptions {
  /** How long a REPLICAOF is given to take effect before it is sent again, and how long a
   * replica re-pointed by a promotion stays readable before its probe confirms the new link. */
  readonly nodeTimeoutMs: number;
}

/** A REPLICAOF the control plane sent, so it is not repeated while the node catches up. */
interface SentReplicaOf {
  /** `host:port` of the primary it was pointed at, or NO_ONE. */
  readonly target: string;
  readonly at: number;
}

/** SentReplicaOf's target for a REPLICAOF NO ONE. */
const NO_ONE = 'no one';

/** The one reconcile pass allowed to run per shard, and whether another is wanted after it. */
interface ShardRun {
  isBusy: boolean;
  isWanted: boolean;
}

/**
 * Keeps each shard's roles right, from the health checker's reports:
 * - a failed primary is replaced by the healthy replica with the greatest replication offset
 *   (ties: configured order): the shard is published as failing over at once (commands wait,
 *   bounded by failoverWaitMs), the replica gets `REPLICAOF NO ONE`, routing switches to it,
 *   and the other healthy replicas are pointed at it;
 * - a node recorded as a replica that answers as a primary, or follows another primary (the old
 *   primary coming back), gets `REPLICAOF <current primary>` before anything is routed to it;
 * - `readReplicas` holds exactly the healthy replicas linked to the current primary.
 * Every decision is logged with the shard, nodes and offsets, and counted in metrics.
 */
export class Failover {
  readonly #store: TopologyStore;
  readonly #nodes: NodeControl;
  readonly #options: FailoverOptions;
  readonly #log: Logger;
  /**
   * Reconcile passes by shard name: one at a time per shard. Shards are known by name here, never
   * by index: removing a shard renumbers the ones after it, also while a pass awaits a node.
   */
  readonly #runs = new Map<string, ShardRun>();
  /** Running passes, for idle(). */
  readonly #running = new Set<Promise<void>>();
  /** When the control plane last changed each shard's roles: reports older than that are stale for role decisions. */
  readonly #rolesChangedAt = new Map<string, number>();
  /** REPLICAOF sent, by node key. */
  readonly #sentReplicaOf = new Map<string, SentReplicaOf>();
  /** When #freshReports last probed a shard's nodes, by shard name. */
  readonly #refreshedAt = new Map<string, number>();
  /** Replicas re-pointed by a promotion: readable until this time even before a probe shows the new link. */
  readonly #graceUntil = new Map<string, { readonly primary: string; readonly until: number }>();
  /** Shards whose last failover attempt found no candidate (logged and counted once per episode). */
  readonly #noCandidate = new Set<string>();
  /** Shards whose primary reports itself a replica of a node outside the shard (warned once). */
  readonly #warnedPrimaryIsReplica = new Set<string>();
  /** False until begin(): reports before the first round is complete are logged, not acted on. */
  #isActive = false;
  #isClosed = false;

  constructor(store: TopologyStore, nodes: NodeControl, options: FailoverOptions, logger: Logger = defaultLog) {
    this.#store = store;
    this.#nodes = nodes;
    this.#options = options;
    this.#log = logger;
    for (const shard of store.current.shards) this.#setRoleMetrics(shard);
  }

  /** The health checker's report hook: logs state changes, then reconciles the node's shard. */
  onReport(report: NodeReport, previous: NodeState): void {
    if (this.#isClosed) return;
    const shard = shardOf(this.#store.current, report.address);
    if (shard === undefined) return;
    const labels = { shard: shard.name, node: report.key };
    if (report.state !== previous) {
      if (report.state === 'failed') {
        nodeUp.set(labels, 0);
        nodeFailuresTotal.inc(labels);
        this.#log.warn('node failed', {
          shard: shard.name,
          node: report.key,
          role: sameNode(shard.primary, report.address) ? 'primary' : 'replica',
          reason: report.failReason,
          lastOkMsAgo: report.lastOkAt === 0 ? null : report.failedAt - report.lastOkAt,
          offset: report.offset,
        });
      } else if (report.state === 'up') {
        nodeUp.set(labels, 1);
        this.#log.info(previous === 'failed' ? 'node recovered' : 'node up', {
          shard: shard.name,
          node: report.key,
          reportedRole: report.role,
          offset: report.offset,
          following: report.following === null ? null : nodeKey(report.following),
          link: report.masterLinkStatus,
        });
      }
    }
    if (this.#isActive) this.reconcile(shard.name);
  }

  /**
   * Acts on reports from now on, starting with a pass over every shard. Called once the first
   * probe round is in, so a replica not probed yet is not taken for a failed one.
   */
  begin(): void {
    this.#isActive = true;
    this.reconcileAll();
  }

  /** Schedules a reconcile pass of every shard. */
  reconcileAll(): void {
    for (const shard of this.#store.current.shards) this.reconcile(shard.name);
  }

  /** Schedules a reconcile pass of one shard (after the running one, if any). */
  reconcile(name: string): void {
    if (this.#isClosed) return;
    let run = this.#runs.get(name);
    if (run === undefined) {
      run = { isBusy: false, isWanted: false };
      this.#runs.set(name, run);
    }
    if (run.isBusy) {
      run.isWanted = true;
      return;
    }
    run.isBusy = true;
    const shardRun = run;
    const pass = (async () => {
      try {
        do {
          shardRun.isWanted = false;
          await this.#reconcileShard(name);
        } while (shardRun.isWanted && !this.#isClosed);
      } catch (err) {
        this.#log.error('reconcile failed', { shard: name, error: String(err) });
      } finally {
        shardRun.isBusy = false;
      }
    })();
    this.#running.add(pass);
    void pass.finally(() => this.#running.delete(pass));
  }

  /** Resolves when no reconcile pass is running. */
  async idle(): Promise<void> {
    while (this.#running.size > 0) await Promise.all([...this.#running]);
  }

  close(): void {
    this.#isClosed = true;
  }

  async #reconcileShard(name: string): Promise<void> {
    const shard = this.#store.current.shardNamed(name);
    if (shard === undefined) return;
    const primary = this.#nodes.report(shard.primary);
    if (primary === undefined || primary.state === 'unknown') return;
    if (primary.state === 'failed') {
      await this.#failover(shard, primary);
      return;
    }
    this.#noCandidate.delete(name);
    if (shard.isFailingOver) {
      // The primary answers again before a replica could be promoted: it keeps the shard.
      this.#log.info('failover cancelled', { shard: shard.name, primary: nodeKey(shard.primary), reason: 'primary answers again' });
      this.#publish(name, (s) => ({ ...s, isFailingOver: false }));
    }
    const changedAt = this.#rolesChangedAt.get(name) ?? 0;
    if (primary.lastOkAt <= changedAt) return;
    if (primary.role === 'slave') {
      await this.#adoptRealPrimary(shard, primary);
      return;
    }
    this.#warnedPrimaryIsReplica.delete(name);
    await this.#fixReplicas(shard, changedAt);
    this.#updateReadReplicas(name);
  }

  /**
   * The recorded primary says it replicates from another member of the shard that says it is
   * a primary: someone (an earlier run without a state file, an operator) moved the role, and
   * routing follows the node that really takes writes.
   */
  async #adoptRealPrimary(shard: ShardInfo, primary: NodeReport): Promise<void> {
    const following = primary.following;
    const real = following === null ? undefined : shard.replicas.find((r) => sameNode(r, following));
    const reports = real === undefined ? undefined : await this.#freshReports(shard, real);
    if (reports === null) return;
    const [primaryNow, realNow] = reports ?? [primary, undefined];
    if (real !== undefined && realNow !== undefined) {
      // Since the last probe the primary may have stopped following it: its next report decides.
      if (primaryNow.role !== 'slave' || primaryNow.following === null || !sameNode(primaryNow.following, real)) return;
      if (realNow.state === 'up' && realNow.role === 'slave' && realNow.following !== null && sameNode(realNow.following, shard.primary)) {
        await this.#breakLoop(shard, real, realNow);
        return;
      }
    }
    if (real === undefined || realNow?.state !== 'up' || realNow.role !== 'master') {
      if (!this.#warnedPrimaryIsReplica.has(shard.name)) {
        this.#warnedPrimaryIsReplica.add(shard.name);
        this.#log.warn('primary reports role replica', {
          shard: shard.name,
          primary: nodeKey(shard.primary),
          following: following === null ? null : nodeKey(following),
          action: 'none: the node it follows is not a primary of this shard',
        });
      }
      return;
    }
    this.#log.warn('primary adopted', {
      shard: shard.name,
      recorded: nodeKey(shard.primary),
      actual: nodeKey(real),
      offset: realNow.offset,
      reason: 'the recorded primary replicates from it',
    });
    this.#rolesChangedAt.set(shard.name, Date.now());
    this.#publish(shard.name, (s) => ({
      ...s,
      primary: real,
      replicas: [...s.replicas.filter((r) => !sameNode(r, real)), s.primary],
      readReplicas: s.readReplicas.filter((r) => !sameNode(r, real)),
    }));
  }

  /**
   * The recorded primary's and `real`'s reports, probed now: the last probes may predate a
   * role change (the proxy's own REPLICAOF, an operator's), and adopting a node as primary, or
   * promoting one, on a stale report undoes the very change it should follow. Probed at most
   * once per probe interval per shard (a probe's report starts another reconcile pass); null
   * when a node did not answer or the shard changed meanwhile.
   */
  async #freshReports(shard: ShardInfo, real: NodeAddress): Promise<[NodeReport, NodeReport | undefined] | null> {
    const last = this.#refreshedAt.get(shard.name) ?? 0;
    if (Date.now() - last < probeIntervalFor(this.#options.nodeTimeoutMs)) {
      const primary = this.#nodes.report(shard.primary);
      const realReport = this.#nodes.report(real);
      // Older than a REPLICAOF the proxy sent it since: stale until the next probe.
      const sent = realReport === undefined ? undefined : this.#sentReplicaOf.get(realReport.key);
      if (primary === undefined || (sent !== undefined && realReport!.lastOkAt <= sent.at)) return null;
      return [primary, realReport];
    }
    this.#refreshedAt.set(shard.name, Date.now());
    let reports: [NodeReport, NodeReport];
    try {
      reports = await Promise.all([this.#nodes.refresh(shard.primary), this.#nodes.refresh(real)]);
    } catch {
      return null;
    }
    const current = this.#store.current.shardNamed(shard.name);
    return current !== undefined && sameNode(current.primary, shard.primary) ? reports : null;
  }

  /**
   * The recorded primary follows `real`, which follows the recorded primary: no node of the
   * shard takes writes. It happens when an operator swaps the roles by hand in two steps
   * (REPLICAOF NO ONE on the replica, then REPLICAOF on the primary) and a probe between them
   * saw two primaries, so the proxy demoted the new one as it would a returning old primary.
   * The loop ends the way the recorded primary points: the node it follows is promoted (the
   * operator's last word) and adopted once a probe says so. Both hold the same data (a loop
   * takes no writes).
   */
  async #breakLoop(shard: ShardInfo, real: NodeAddress, report: NodeReport): Promise<void> {
    const sent = this.#sentReplicaOf.get(report.key);
    if (sent !== undefined && sent.target === NO_ONE && Date.now() - sent.at < this.#options.nodeTimeoutMs) return;
    this.#sentReplicaOf.set(report.key, { target: NO_ONE, at: Date.now() });
    const fields = { shard: shard.name, recorded: nodeKey(shard.primary), promoted: report.key, reason: 'each follows the other: no node takes writes' };
    try {
      await this.#nodes.command(real, ['REPLICAOF', 'NO', 'ONE']);
      this.#log.warn('replication loop broken', fields);
    } catch (err) {
      this.#sentReplicaOf.delete(report.key);
      this.#log.error('replication loop not broken', { ...fields, error: (err as Error).message, action: 'retry on the next probe' });
    }
  }

  async #failover(shard: ShardInfo, failed: NodeReport): Promise<void> {
    const name = shard.name;
    const candidates = shard.replicas.filter((r) => {
      const report = this.#nodes.report(r);
      return report?.state === 'up' && report.role === 'slave';
    });
    if (candidates.length === 0) {
      this.#noCandidateFound(shard, failed, 'no healthy replica');
      return;
    }
    if (!shard.isFailingOver) {
      this.#log.warn('failover started', {
        shard: shard.name,
        failed: nodeKey(shard.primary),
        reason: failed.failReason,
        candidates: candidates.map((c) => nodeKey(c)),
      });
      this.#publish(name, (s) => ({ ...s, isFailingOver: true }));
    }

    // Offsets as they are now: the replicas stopped receiving when the primary did.
    const fresh = await Promise.all(
      candidates.map((node, order) =>
        this.#nodes.refresh(node).then(
          (report) => ({ node, order, report }),
          () => null,
        ),
      ),
    );
    const ranked = fresh
      .filter((c): c is NonNullable<typeof c> => c !== null && c.report.state === 'up' && c.report.role === 'slave')
      .sort((a, b) => b.report.offset - a.report.offset || a.order - b.order);
    const offsets = ranked.map((c) => `${c.report.key}@${c.report.offset}`);
    if (ranked.length === 0) {
      this.#noCandidateFound(shard, failed, 'no replica answered');
      return;
    }
    if (this.#nodes.report(shard.primary)?.state === 'up') {
      this.#log.info('failover cancelled', { shard: shard.name, primary: nodeKey(shard.primary), reason: 'primary answers again' });
      this.#publish(name, (s) => ({ ...s, isFailingOver: false }));
      return;
    }
    const best = ranked[0]!;
    try {
      await this.#nodes.command(best.node, ['REPLICAOF', 'NO', 'ONE']);
    } catch (err) {
      failoversTotal.inc({ shard: shard.name, outcome: 'error' });
      this.#log.error('failover error', {
        shard: shard.name,
        failed: nodeKey(shard.primary),
        candidate: best.report.key,
        offsets,
        error: (err as Error).message,
        action: 'retry on the next probe; commands fail fast meanwhile',
      });
      this.#publish(name, (s) => ({ ...s, isFailingOver: false }));
      return;
    }

    const others = ranked.slice(1);
    const now = Date.now();
    const promotedKey = nodeKey(best.node);
    for (const other of others) this.#graceUntil.set(nodeKey(other.node), { primary: promotedKey, until: now + this.#options.nodeTimeoutMs });
    this.#rolesChangedAt.set(name, now);
    this.#noCandidate.delete(name);
    const next = this.#publish(name, (s) => ({
      ...s,
      primary: best.node,
      // The old primary stays a member, as a replica, but not a readable one: it is demoted
      // (REPLICAOF) when it answers again, and readable only once its link to the new one is up.
      replicas: [...s.replicas.filter((r) => !sameNode(r, best.node)), s.primary],
      readReplicas: others.map((o) => o.node),
      isFailingOver: false,
    }));
    const tookMs = failed.failedAt === 0 ? 0 : now - failed.failedAt;
    failoversTotal.inc({ shard: shard.name, outcome: 'promoted' });
    failoverDurationSeconds.observe({ shard: shard.name }, tookMs / 1000);
    this.#log.warn('failover promoted', {
      shard: shard.name,
      failed: nodeKey(shard.primary),
      promoted: promotedKey,
      offset: best.report.offset,
      offsets,
      epoch: next.epoch,
      tookMs,
    });

    await Promise.all([
      this.#nodes.refresh(best.node).catch(() => undefined),
      ...others.map((other) => this.#replicaOf(next.shardNamed(name) ?? shard, other.node, 'replica repointed', other.report)),
    ]);
  }

  #noCandidateFound(shard: ShardInfo, failed: NodeReport, reason: string): void {
    if (shard.isFailingOver) this.#publish(shard.name, (s) => ({ ...s, isFailingOver: false }));
    if (this.#noCandidate.has(shard.name)) return;
    this.#noCandidate.add(shard.name);
    failoversTotal.inc({ shard: shard.name, outcome: 'no_candidate' });
    this.#log.error('failover no candidate', {
      shard: shard.name,
      failed: nodeKey(shard.primary),
      reason,
      replicas: shard.replicas.map((r) => {
        const report = this.#nodes.report(r);
        return `${nodeKey(r)}:${report?.state ?? 'unknown'}/${report?.role ?? '?'}`;
      }),
      lastOkMsAgo: failed.lastOkAt === 0 ? null : Date.now() - failed.lastOkAt,
      action: 'commands fail fast; retried when a replica is healthy',
    });
  }

  /** Replicas that answer as primaries or follow another node are pointed at the current primary. */
  async #fixReplicas(shard: ShardInfo, changedAt: number): Promise<void> {
    const primaryKey = nodeKey(shard.primary);
    const work: Promise<void>[] = [];
    for (const replica of shard.replicas) {
      const report = this.#nodes.report(replica);
      if (report === undefined || report.state !== 'up' || report.lastOkAt <= changedAt || report.role === null) continue;
      if (report.role === 'slave' && report.following !== null && sameNode(report.following, shard.primary)) {
        this.#sentReplicaOf.delete(report.key);
        continue;
      }
      const sent = this.#sentReplicaOf.get(report.key);
      if (sent !== undefined && sent.target === primaryKey && Date.now() - sent.at < this.#options.nodeTimeoutMs) continue;
      work.push(this.#replicaOf(shard, replica, report.role === 'master' ? 'node demoted' : 'replica repointed', report));
    }
    await Promise.all(work);
  }

  /** `REPLICAOF <shard's primary>` on `node`; logs and counts it. Never rejects. */
  async #replicaOf(shard: ShardInfo, node: NodeAddress, event: 'node demoted' | 'replica repointed', report: NodeReport): Promise<void> {
    const key = nodeKey(node);
    const primaryKey = nodeKey(shard.primary);
    this.#sentReplicaOf.set(key, { target: primaryKey, at: Date.now() });
    const fields = {
      shard: shard.name,
      node: key,
      primary: primaryKey,
      reportedRole: report.role,
      following: report.following === null ? null : nodeKey(report.following),
      offset: report.offset,
    };
    try {
      await this.#nodes.command(node, ['REPLICAOF', shard.primary.host, String(shard.primary.port)]);
    } catch (err) {
      this.#sentReplicaOf.delete(key);
      this.#graceUntil.delete(key);
      // Usually a node just back (SIGCONT, restart) whose control connection is still coming
      // up: the next probe, a few milliseconds on, sends it again.
      this.#log.warn(`${event} failed`, { ...fields, error: (err as Error).message, action: 'retry on the next probe' });
      return;
    }
    if (event === 'node demoted') demotionsTotal.inc({ shard: shard.name });
    else replicaRepointsTotal.inc({ shard: shard.name });
    this.#log.warn(event, fields);
  }

  /** Publishes the shard's readable replicas when they changed. */
  #updateReadReplicas(name: string): void {
    const shard = this.#store.current.shardNamed(name);
    if (shard === undefined) return;
    const readable = shard.replicas.filter((r) => this.#isReadable(shard, r));
    if (sameList(readable, shard.readReplicas)) return;
    this.#log.info('read replicas changed', {
      shard: shard.name,
      readReplicas: readable.map((r) => nodeKey(r)),
      added: readable.filter((r) => !shard.readReplicas.some((x) => sameNode(x, r))).map((r) => nodeKey(r)),
      removed: shard.readReplicas.filter((r) => !readable.some((x) => sameNode(x, r))).map((r) => nodeKey(r)),
    });
    this.#publish(name, (s) => ({ ...s, readReplicas: readable }));
  }

  /** Healthy, a replica of the current primary, and linked to it (or just re-pointed to it by a promotion). */
  #isReadable(shard: ShardInfo, replica: NodeAddress): boolean {
    const report = this.#nodes.report(replica);
    if (report === undefined || report.state !== 'up') return false;
    const key = nodeKey(replica);
    const isLinked =
      report.role === 'slave' && report.following !== null && sameNode(report.following, shard.primary) && report.masterLinkStatus === 'up';
    const grace = this.#graceUntil.get(key);
    if (grace !== undefined) {
      if (isLinked || grace.primary !== nodeKey(shard.primary) || Date.now() >= grace.until) this.#graceUntil.delete(key);
      else return true;
    }
    if (isLinked) return true;
    // A link that just went down says as much about the primary as about the replica: when the
    // primary dies, every replica reports it before the primary is found failed, and dropping
    // them would refuse writes (minReplicaAcks) for nothing just before the failover. Such a
    // replica stays readable until the primary has answered a probe after the replica's report.
    // (Not one just told to follow this primary: it is syncing, not waiting on a dying primary.)
    const primary = this.#nodes.report(shard.primary);
    return (
      !this.#sentReplicaOf.has(key) &&
      report.role === 'slave' &&
      report.following !== null &&
      sameNode(report.following, shard.primary) &&
      shard.readReplicas.some((r) => sameNode(r, replica)) &&
      (primary === undefined || primary.lastOkAt <= report.lastOkAt)
    );
  }

  /**
   * Publishes the current topology with one shard changed; returns the new snapshot (the
   * current one, unchanged, when the shard was removed meanwhile).
   */
  #publish(name: string, change: (shard: ShardInfo) => ShardInfo): Topology {
    const current = this.#store.current;
    const before = current.shardNamed(name);
    if (before === undefined) {
      this.#log.warn('shard change dropped: the shard was removed', { shard: name });
      return current;
    }
    const shard = change(before);
    const next = new Topology(
      current.epoch + 1,
      current.shards.map((s) => (s.name === name ? shard : s)),
      current.slotOwner,
      current.migrations,
    );
    this.#store.publish(next);
    this.#setRoleMetrics(shard);
    return next;
  }

  #setRoleMetrics(shard: ShardInfo): void {
    nodeRole.set({ shard: shard.name, node: nodeKey(shard.primary), role: 'primary' }, 1);
    nodeRole.set({ shard: shard.name, node: nodeKey(shard.primary), role: 'replica' }, 0);
    for (const replica of shard.replicas) {
      nodeRole.set({ shard: shard.name, node: nodeKey(replica), role: 'primary' }, 0);
      nodeRole.set({ shard: shard.name, node: nodeKey(replica), role: 'replica' }, 1);
    }
  }
}

/** The shard that has `node` as primary or replica. */
export function shardOf(topology: Topology, node: NodeAddress): ShardInfo | undefined {
  return topology.shards.find((s) => sameNode(s.primary, node) || s.replicas.some((r) => sameNode(r, node)));
}

/** Every node the topology names, primaries and replicas. */
export function nodesOf(topology: Topology): NodeAddress[] {
  return topology.shards.flatMap((s) => [s.primary, ...s.replicas]);
}

function sameList(a: readonly NodeAddress[], b: readonly NodeAddress[]): boolean {
  return a.length === b.length && a.every((node, i) => sameNode(node, b[i]!));
}
