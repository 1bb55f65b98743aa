import type { ProxyConfig } from '../config/config-types';
import { log } from '../log/logger';
import { stateFileWritesTotal } from '../metrics/metrics';
import { nodeKey, type Topology } from '../topology/topology';
import { TopologyStore } from '../topology/topology-store';
import { Failover, nodesOf } from './failover';
import { HealthChecker } from './health-checker';
import { StateFile } from './state-file';
import { initialTopology } from './topology-builder';
import { Resharding } from './resharding';
import { withRuntimeMembership } from './runtime-membership';

/**
 * Everything off the hot path, run once per proxy (in the primary process when there are
 * workers): it owns the topology store, health-checks every node, fails over failed primaries,
 * demotes returning ones, and writes every snapshot it publishes to the state file.
 *
 * The first snapshot comes from the state file when it names the YAML's shards (a restarted
 * proxy routes to the primary promoted before the restart), otherwise from the YAML.
 */
export class ControlPlane {
  readonly store: TopologyStore;
  readonly #config: ProxyConfig;
  readonly #stateFile: StateFile | null;
  #checker: HealthChecker | null = null;
  #failover: Failover | null = null;
  /** The startup begun by the constructor; start() returns it. */
  readonly #started: Promise<void>;
  #isClosed = false;
  /** Online resharding (plans, slot mover, admin endpoint, config reloads): resharding.ts. */
  readonly resharding: Resharding;

  /**
   * Loads the first snapshot and begins health checks at once (see start()).
   * @throws StateFileError when the state file exists but cannot be read: its roles are not guessed.
   */
  constructor(config: ProxyConfig) {
    this.#config = config;
    this.#stateFile = config.stateFile === null ? null : new StateFile(config.stateFile);
    // Resharding: shards the YAML added or dropped since the state file was written keep the stored slots (runtime-membership.ts).
    const membership = withRuntimeMembership(config, this.#stateFile?.read() ?? null);
    const initial = initialTopology(membership.config, membership.state);
    for (const note of initial.notes) log.warn('state file not used as is', { file: config.stateFile, note });
    this.store = new TopologyStore(initial.topology);
    log.info('topology loaded', {
      source: initial.source,
      file: initial.source === 'state-file' ? config.stateFile : null,
      epoch: initial.topology.epoch,
      primaries: initial.topology.shards.map((s) => `${s.name}=${nodeKey(s.primary)}`),
    });
    this.store.on('change', (next) => {
      this.#checker?.watch(nodesOf(next));
      void this.#save(next);
    });
    this.#started = this.#start().catch((err: unknown) => {
      log.error('control plane start failed', { error: String(err) });
    });
    // Resharding starts (or resumes) once the roles are settled.
    this.resharding = new Resharding(this.store, config, this.#stateFile, membership);
    void this.#started.then(() => this.resharding.start());
  }

  /**
   * Health checks and failover, begun by the constructor. Resolves once every node has answered
   * a first probe (or been found failed, at most nodeTimeoutMs), the roles found have been
   * reconciled (a returning old primary demoted, readable replicas confirmed, a dead primary
   * failed over) and the state file written: the data path should start serving after it, so
   * that nothing is routed on roles the YAML or the state file only remember. Never rejects.
   */
  start(): Promise<void> {
    return this.#started;
  }

  async #start(): Promise<void> {
    // Let the constructor return (and its caller subscribe to the store) before the first decision.
    await Promise.resolve();
    if (this.#isClosed) return;
    const { nodeTimeoutMs, backendPassword } = this.#config;
    const checker = new HealthChecker({ nodeTimeoutMs, password: backendPassword });
    const failover = new Failover(this.store, checker, { nodeTimeoutMs });
    this.#checker = checker;
    this.#failover = failover;
    checker.on('report', (report, previous) => failover.onReport(report, previous));
    checker.watch(nodesOf(this.store.current));
    log.info('health checks started', { nodes: checker.reports.length, nodeTimeoutMs, probeIntervalMs: checker.probeIntervalMs });
    await checker.firstRound(nodeTimeoutMs);
    if (this.#isClosed) return;
    failover.begin();
    await failover.idle();
    await this.#save(this.store.current);
  }

  /** Stops probing; resolves when the state file has its last write. */
  async close(): Promise<void> {
    this.#isClosed = true;
    await this.resharding.close();
    this.#failover?.close();
    this.#checker?.close();
    await this.#failover?.idle();
    await this.#stateFile?.flush();
  }

  async #save(topology: Topology): Promise<void> {
    if (this.#stateFile === null) return;
    try {
      await this.#stateFile.save(topology);
      stateFileWritesTotal.inc({ outcome: 'ok' });
      log.debug('state file written', { file: this.#stateFile.file, epoch: topology.epoch });
    } catch (err) {
      stateFileWritesTotal.inc({ outcome: 'error' });
      log.error('state file write failed', { file: this.#stateFile.file, epoch: topology.epoch, error: (err as Error).message });
    }
  }
}
