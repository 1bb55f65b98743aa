import { EventEmitter } from 'node:events';
import Redis from 'ioredis';
import { log } from '../log/logger';
import { nodeKey, type NodeAddress } from '../topology/topology';

/** What the health checker believes about a node. */
export type NodeState = 'unknown' | 'up' | 'failed';

/** The role a node reports itself (INFO replication `role:`). */
export type ReportedRole = 'master' | 'slave';

/** One node as its last successful probe described it. */
export interface NodeReport {
  readonly address: NodeAddress;
  /** `host:port`. */
  readonly key: string;
  readonly state: NodeState;
  /** null until a probe succeeded. */
  readonly role: ReportedRole | null;
  /** master_repl_offset on a primary, slave_repl_offset on a replica: what a promotion compares. */
  readonly offset: number;
  /** master_link_status on a replica; null on a primary. */
  readonly masterLinkStatus: 'up' | 'down' | null;
  /** The primary it replicates from (master_host:master_port); null on a primary. */
  readonly following: NodeAddress | null;
  /** When a probe last succeeded (ms since the epoch); 0 = never. */
  readonly lastOkAt: number;
  /** When the node was marked failed; 0 while it is not. */
  readonly failedAt: number;
  /** Why it was marked failed; null while it is not. */
  readonly failReason: string | null;
}

/** The fields of INFO replication a decision needs. */
export interface ReplicationInfo {
  readonly role: ReportedRole;
  readonly offset: number;
  readonly masterLinkStatus: 'up' | 'down' | null;
  readonly following: NodeAddress | null;
}

/** Parses the text of `INFO replication`. */
export function parseReplicationInfo(text: string): ReplicationInfo {
  const fields = new Map<string, string>();
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 1).trim());
  }
  const role = fields.get('role');
  if (role === 'slave') {
    const port = Number(fields.get('master_port'));
    const host = fields.get('master_host');
    return {
      role,
      offset: Number(fields.get('slave_repl_offset') ?? 0),
      masterLinkStatus: fields.get('master_link_status') === 'up' ? 'up' : 'down',
      following: host === undefined || !Number.isInteger(port) ? null : { host, port },
    };
  }
  if (role === 'master') {
    return { role, offset: Number(fields.get('master_repl_offset') ?? 0), masterLinkStatus: null, following: null };
  }
  throw new Error(`INFO replication has no role (got ${JSON.stringify(text.slice(0, 80))})`);
}

export interface HealthCheckerOptions {
  /** A node with no successful probe for this long is failed, like cluster-node-timeout. */
  readonly nodeTimeoutMs: number;
  /** Time between probes of a node. @default min(1000, nodeTimeoutMs / 5), at least 50 */
  readonly probeIntervalMs?: number;
  /** AUTH for the control connections; never logged. @default null */
  readonly password?: string | null;
  /** Timeout of one command sent with `command()`. @default min(nodeTimeoutMs, 2000) */
  readonly commandTimeoutMs?: number;
}

/** Pause between the two connection attempts whose refusals prove a dead process. */
const REFUSED_RETRY_MS = 10;
/** Refused connections in a row that fail a node at once. */
const REFUSALS_TO_FAIL = 2;
const MIN_PROBE_INTERVAL_MS = 50;
const MAX_PROBE_INTERVAL_MS = 1000;

export function probeIntervalFor(nodeTimeoutMs: number): number {
  return Math.max(MIN_PROBE_INTERVAL_MS, Math.min(MAX_PROBE_INTERVAL_MS, Math.floor(nodeTimeoutMs / 5)));
}

/** A command on a node's control connection failed or took too long. */
export class NodeCommandError extends Error {
  override readonly name = 'NodeCommandError';

  constructor(
    /** `host:port`. */
    readonly node: string,
    readonly command: string,
    reason: string,
  ) {
    super(`${command} on ${node}: ${reason}`);
  }
}

interface HealthEvents {
  /** After every successful probe, and whenever a node's state changes. */
  report: [report: NodeReport, previous: NodeState];
}

/**
 * Probes every node it is given (primaries and replicas) with PING and INFO replication on its
 * own ioredis connection, and keeps what each node last said. A node is failed when no probe
 * has succeeded for `nodeTimeoutMs`: a slow reply is not a failure until then, and one lost
 * probe is not either. A connection refused twice in a row fails the node at once: nothing
 * listens on the port, so the process is dead, and waiting out the timeout would only delay the
 * failover (Redis Cluster and Sentinel wait; slotproxy need not).
 *
 * A node running a script or function past its busy-reply-threshold (`lua-time-limit`) answers
 * every probe with -BUSY: it is alive, and its script may be writing. Like a Redis Cluster node
 * (which keeps answering the cluster bus then), it is not failed over for it: a failover would
 * throw the script's work away and demote a node that is about to be well again. SCRIPT KILL or
 * FUNCTION KILL through the proxy stops a runaway one. Before that threshold the node answers
 * nothing at all, like a frozen one, so a threshold at or above `nodeTimeoutMs` is warned about.
 */
export class HealthChecker extends EventEmitter<HealthEvents> {
  readonly #options: Required<HealthCheckerOptions>;
  readonly #nodes = new Map<string, NodeProbe>();
  #timer: NodeJS.Timeout | null = null;
  #isClosed = false;

  constructor(options: HealthCheckerOptions) {
    super();
    this.#options = {
      nodeTimeoutMs: options.nodeTimeoutMs,
      probeIntervalMs: options.probeIntervalMs ?? probeIntervalFor(options.nodeTimeoutMs),
      password: options.password ?? null,
      commandTimeoutMs: options.commandTimeoutMs ?? Math.min(options.nodeTimeoutMs, 2000),
    };
  }

  get probeIntervalMs(): number {
    return this.#options.probeIntervalMs;
  }

  /** Starts probing `nodes` (the ones already watched are kept, the others dropped). */
  watch(nodes: readonly NodeAddress[]): void {
    const wanted = new Set(nodes.map((n) => nodeKey(n)));
    for (const [key, probe] of this.#nodes) {
      if (!wanted.has(key)) {
        probe.close();
        this.#nodes.delete(key);
      }
    }
    for (const node of nodes) {
      const key = nodeKey(node);
      if (this.#nodes.has(key) || this.#isClosed) continue;
      const probe = new NodeProbe(node, key, this.#options, (report, previous) => this.emit('report', report, previous));
      this.#nodes.set(key, probe);
      probe.tick();
    }
    if (this.#timer === null && !this.#isClosed) {
      this.#timer = setInterval(() => {
        for (const probe of this.#nodes.values()) probe.tick();
      }, this.#options.probeIntervalMs);
      this.#timer.unref();
    }
  }

  report(node: NodeAddress): NodeReport | undefined {
    return this.#nodes.get(nodeKey(node))?.report;
  }

  get reports(): readonly NodeReport[] {
    return [...this.#nodes.values()].map((p) => p.report);
  }

  /**
   * Resolves once every node has answered a probe or been marked failed, or after `timeoutMs`:
   * the first decisions wait for the first picture of the deployment.
   */
  async firstRound(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline && [...this.#nodes.values()].some((p) => p.report.state === 'unknown')) {
      await sleep(10);
    }
  }

  /** Probes the node now and returns the fresh report; rejects when it does not answer in time. */
  refresh(node: NodeAddress): Promise<NodeReport> {
    return this.#probe(node).refresh();
  }

  /** Sends one command on the node's control connection (REPLICAOF ...), bounded by the command timeout. */
  command(node: NodeAddress, args: readonly string[]): Promise<unknown> {
    return this.#probe(node).command(args);
  }

  close(): void {
    this.#isClosed = true;
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    for (const probe of this.#nodes.values()) probe.close();
    this.#nodes.clear();
  }

  #probe(node: NodeAddress): NodeProbe {
    const probe = this.#nodes.get(nodeKey(node));
    if (probe === undefined) throw new Error(`node ${nodeKey(node)} is not watched`);
    return probe;
  }
}

/** The probing of one node: its control connection and what it last said. */
class NodeProbe {
  readonly #address: NodeAddress;
  readonly #key: string;
  readonly #options: Required<HealthCheckerOptions>;
  readonly #onReport: (report: NodeReport, previous: NodeState) => void;
  readonly #redis: Redis;
  #report: NodeReport;
  /** When the probe awaiting its reply was sent; null when none is outstanding. */
  #probeSentAt: number | null = null;
  /** Fails the node when no probe succeeds in time; re-armed by every success. */
  readonly #deadline: NodeJS.Timeout;
  #isConnecting = false;
  /** When the running connection attempt began. */
  #connectStartedAt = 0;
  /** The connection reached 'ready' since it was last (re)opened. */
  #wasReady = false;
  /** Refused connection attempts in a row. */
  #refusals = 0;
  /** The error code of the last connection error (ECONNREFUSED, ETIMEDOUT, ...). */
  #lastErrorCode: string | null = null;
  #retryTimer: NodeJS.Timeout | null = null;
  #isClosed = false;
  /** The node's lua-time-limit was asked for (once per node, at its first probe). */
  #isThresholdChecked = false;
  /** The last probe was answered -BUSY (logged once per busy spell). */
  #isBusy = false;

  constructor(
    address: NodeAddress,
    key: string,
    options: Required<HealthCheckerOptions>,
    onReport: (report: NodeReport, previous: NodeState) => void,
  ) {
    this.#address = address;
    this.#key = key;
    this.#options = options;
    this.#onReport = onReport;
    this.#report = {
      address,
      key,
      state: 'unknown',
      role: null,
      offset: 0,
      masterLinkStatus: null,
      following: null,
      lastOkAt: 0,
      failedAt: 0,
      failReason: null,
    };
    this.#redis = new Redis({
      host: address.host,
      port: address.port,
      password: options.password ?? undefined,
      lazyConnect: true,
      // Our own retry: a refused reconnect is evidence, so the probe decides when to try again.
      retryStrategy: () => null,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      enableReadyCheck: false,
      connectTimeout: options.nodeTimeoutMs,
      protocol: 2,
      // No handshake commands: a stopped node accepts the TCP connection, and a handshake
      // waiting on it would hold the connection in 'connect' with no timeout.
      disableClientInfo: true,
    });
    this.#redis.on('error', (err: NodeJS.ErrnoException) => {
      this.#lastErrorCode = err.code ?? null;
    });
    this.#redis.on('end', () => this.#onEnd());
    this.#deadline = setTimeout(() => this.#fail(`no successful probe for ${options.nodeTimeoutMs} ms`), options.nodeTimeoutMs);
    this.#deadline.unref();
  }

  get report(): NodeReport {
    return this.#report;
  }

  /** Called every probe interval. */
  tick(): void {
    if (this.#isClosed) return;
    const status = this.#redis.status;
    if (status === 'ready') {
      if (this.#probeSentAt === null) this.#probe();
      else if (Date.now() - this.#probeSentAt > this.#options.nodeTimeoutMs) {
        // The node took a probe and never answered (stopped, or a dead link): start afresh.
        this.#redis.disconnect();
      }
      return;
    }
    if (this.#isConnecting) {
      // A handshake (AUTH) on a node that accepted the TCP connection but never answers would
      // otherwise hold the attempt open for good.
      if (Date.now() - this.#connectStartedAt > this.#options.nodeTimeoutMs) this.#redis.disconnect();
      return;
    }
    if (this.#retryTimer === null && (status === 'wait' || status === 'end' || status === 'close')) this.#connect();
  }

  async refresh(): Promise<NodeReport> {
    const info = (await this.command(['INFO', 'replication'])) as string;
    this.#onInfo(info);
    return this.#report;
  }

  command(args: readonly string[]): Promise<unknown> {
    const [name, ...rest] = args;
    const text = args.join(' ');
    if (this.#redis.status !== 'ready') {
      return Promise.reject(new NodeCommandError(this.#key, text, `no control connection (${this.#redis.status})`));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new NodeCommandError(this.#key, text, `no reply within ${this.#options.commandTimeoutMs} ms`)),
        this.#options.commandTimeoutMs,
      );
      this.#redis.call(name!, rest).then(
        (reply) => {
          clearTimeout(timer);
          resolve(reply);
        },
        (err: Error) => {
          clearTimeout(timer);
          reject(new NodeCommandError(this.#key, text, err.message));
        },
      );
    });
  }

  close(): void {
    this.#isClosed = true;
    clearTimeout(this.#deadline);
    if (this.#retryTimer !== null) clearTimeout(this.#retryTimer);
    this.#redis.disconnect();
  }

  #connect(): void {
    this.#isConnecting = true;
    this.#connectStartedAt = Date.now();
    this.#wasReady = false;
    this.#lastErrorCode = null;
    this.#redis.connect().then(
      () => {
        this.#isConnecting = false;
        this.#wasReady = true;
        this.#refusals = 0;
        this.#probe();
      },
      () => {
        this.#isConnecting = false;
        if (this.#isClosed) return;
        if (this.#lastErrorCode !== 'ECONNREFUSED') {
          this.#refusals = 0;
          return;
        }
        this.#refusals++;
        if (this.#refusals >= REFUSALS_TO_FAIL) {
          this.#fail(`connection refused ${this.#refusals} times in a row`);
          return;
        }
        // One refusal could be a restart racing us; a second one a moment later is a dead process.
        this.#retryTimer = setTimeout(() => {
          this.#retryTimer = null;
          this.tick();
        }, REFUSED_RETRY_MS);
      },
    );
  }

  /** The connection ended: when it had been working, try again now, not at the next tick. */
  #onEnd(): void {
    this.#probeSentAt = null;
    if (this.#isClosed || !this.#wasReady) return;
    this.#wasReady = false;
    setImmediate(() => this.tick());
  }

  #probe(): void {
    const sentAt = Date.now();
    this.#probeSentAt = sentAt;
    const redis = this.#redis;
    Promise.all([redis.ping(), redis.info('replication')]).then(
      ([, info]) => {
        if (this.#probeSentAt === sentAt) this.#probeSentAt = null;
        if (this.#isClosed) return;
        try {
          this.#onInfo(info);
        } catch {
          // A reply we cannot read (a proxy, a sentinel on the port) is not a healthy node.
        }
      },
      (err: Error) => {
        // A lost probe is not a failure: the deadline decides.
        if (this.#probeSentAt === sentAt) this.#probeSentAt = null;
        if (!this.#isClosed && err.message.startsWith('BUSY')) this.#onBusy(err.message);
      },
    );
    if (!this.#isThresholdChecked) this.#checkBusyThreshold();
  }

  /** Alive, running a long script: the deadline is put off for as long as it answers. */
  #onBusy(message: string): void {
    this.#deadline.refresh();
    if (this.#isBusy) return;
    this.#isBusy = true;
    log.warn('node busy running a script; not failed over while it answers BUSY (SCRIPT KILL or FUNCTION KILL through the proxy stops it)', {
      node: this.#key,
      reply: message.slice(0, 120),
    });
  }

  /**
   * A node answers nothing for its busy-reply-threshold while a script runs; at or above
   * nodeTimeoutMs, a long script looks like a failure and is failed over before it can say BUSY.
   */
  #checkBusyThreshold(): void {
    this.#isThresholdChecked = true;
    // lua-time-limit is busy-reply-threshold's name before Redis 7 and its alias since.
    (this.#redis.config('GET', 'lua-time-limit') as Promise<string[]>).then(
      (reply) => {
        const thresholdMs = Number(reply[1]);
        if (!(thresholdMs > 0) || thresholdMs + this.#options.probeIntervalMs < this.#options.nodeTimeoutMs) return;
        log.warn('a script running longer than nodeTimeoutMs on this node will be taken for a failure: its busy-reply-threshold is not below nodeTimeoutMs', {
          node: this.#key,
          busyReplyThresholdMs: thresholdMs,
          nodeTimeoutMs: this.#options.nodeTimeoutMs,
        });
      },
      // CONFIG may be refused (managed Redis, ACL): nothing to warn about then.
      () => undefined,
    );
  }

  #onInfo(text: string): void {
    const info = parseReplicationInfo(text);
    this.#deadline.refresh();
    this.#isBusy = false;
    const previous = this.#report.state;
    this.#report = { ...this.#report, ...info, state: 'up', lastOkAt: Date.now(), failedAt: 0, failReason: null };
    this.#onReport(this.#report, previous);
  }

  #fail(reason: string): void {
    if (this.#isClosed || this.#report.state === 'failed') return;
    const previous = this.#report.state;
    this.#report = { ...this.#report, state: 'failed', failedAt: Date.now(), failReason: reason };
    this.#onReport(this.#report, previous);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
