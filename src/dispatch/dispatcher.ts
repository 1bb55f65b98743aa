import { IGNORE_REPLY, type ReplySink } from '../backend/reply-sink';
import type { NodePool } from '../backend/node-pool';
import type { ShardPool, BackendPools } from '../backend/shard-pool';
import { lookupCommandBytes } from '../commands/command-table';
import type { CommandSpec } from '../commands/handling';
import { createHash } from 'node:crypto';
import type { PushSink } from '../backend/backend-connection';
import type { DataPathStats } from '../metrics/data-path-stats';
import { encodeCommand } from '../resp/resp-writer';
import { FLUSH_KEEPING_MARKS_SCRIPT } from '../topology/key-move-script';
import { includesSection, InfoSink, requestedSections } from './info-command';
import type { ProxyFacts } from '../reply/info-merge';
import { SessionCommands } from './session-commands';
import type { ShardAccess } from './shard-access';
import { decodeScanCursor, scanNameToken, scanNodeToken, EveryNodeSink, FirstNonEmptySink, KillScriptSink, NoScriptSink, ScanSink, type KnownScript, type ShardSender } from './special-sinks';
import { Gather } from '../reply/gather';
import type { ReplySlot } from '../reply/reply-slot';
import { slowlogLimit } from '../reply/reducers';
import type { RequestFrame } from '../resp/request-parser';
import { CROSSSLOT, encodeBulk, encodeError, encodeReply } from '../resp/resp-writer';
import { decodeReply } from '../resp/reply-decoder';
import { fragment } from '../routing/fragmenter';
import { commandKeys, commandSlot, CROSS_SLOT, NO_KEYS, movableKeysRefusal } from '../routing/route-planner';
import type { BackendConnection } from '../backend/backend-connection';
import { nodeKey, type NodeAddress } from '../topology/topology';
import { MigratingRouter, type ShardConnections } from './migrating-router';
import type { Topology } from '../topology/topology';
import type { TopologyStore } from '../topology/topology-store';
import type { ClientContext } from './client-context';
import { LocalCommands, notAllowed, wrongArity, type ProxyIdentity } from './local-commands';
import { killClients, listLines } from './client-admin';
import { MonitorFeed } from './monitor-feed';
import type { PeerAnswer, PeerHandler, PeerQuestion, WorkerCounts, WorkerPeers } from './worker-peers';
import { ParkedRequests, type ParkedRequest } from './parked-requests';
import { WriteDurability } from './write-durability';

/** The settings the dispatcher acts on (a subset of ProxyConfig). */
export interface DispatcherOptions {
  readonly readFrom: 'primary' | 'preferReplica' | 'replica';
  readonly failoverWaitMs: number;
  readonly minReplicaAcks: number;
  readonly replicaAckTimeoutMs: number;
  readonly noReplicaWrites: 'refuse' | 'accept';
  /** MIGRATE timeout for keys moved on demand from a migrating slot. */
  readonly migrateTimeoutMs: number;
  /** How long a command waits for its key to reach the target of a migrating slot. */
  readonly keyMoveWaitMs: number;
  readonly backendPassword: string | null;
}

/**
 * Carries out each request: looks the command up, asks routing where it goes, sends it to the
 * shard pools, and wires the reply (or the gather of a fan-out) to the client's reply slot.
 */
/**
 * CONFIG SET parameters that shape data and its encodings, applied to every node. Anything
 * else (port, bind, dir, replicaof, requirepass, save, appendonly, cluster-*, ...) would take the
 * backends out of the proxy's hands and is refused.
 */
const CONFIG_SET_ALLOWED: readonly RegExp[] = [
  /^notify-keyspace-events$/,
  /^(hash|zset|set|list|stream)-max-(listpack|ziplist|intset)-(entries|value|size)$/,
  /^set-max-intset-entries$/,
  /^list-compress-depth$/,
  /^stream-node-max-(bytes|entries)$/,
  /^(lua-time-limit|busy-reply-threshold)$/,
  /^slowlog-(log-slower-than|max-len)$/,
  /^latency-(monitor-threshold|tracking|tracking-info-percentiles)$/,
  /^hll-sparse-max-bytes$/,
  /^active-?defrag.*$/,
  /^lazyfree-.*$/,
  /^maxmemory-(policy|samples|eviction-tenacity)$/,
  /^lfu-(log-factor|decay-time)$/,
  /^activerehashing$/,
  /^hz$/,
  /^dynamic-hz$/,
  /^timeout$/,
  /^tcp-keepalive$/,
];

export class Dispatcher implements ShardConnections, ShardAccess, ShardSender, PeerHandler {
  readonly #pools: BackendPools;
  readonly #local: LocalCommands;
  #topology: Topology;
  /** Shard pools of the current topology, by shard index. */
  #shards: ShardPool[];
  /** Rotates keyless commands over the shards. */
  #nextShard = 0;
  readonly #options: DispatcherOptions;
  /** Requests waiting for a shard's failover to finish. */
  readonly #parked: ParkedRequests;
  /** minReplicaAcks and noReplicaWrites, for every path a write takes (SessionCommands' too). */
  readonly writeDurability: WriteDurability;

  readonly #stats: DataPathStats;
  /** Commands on keys of migrating slots. */
  readonly #migrating: MigratingRouter;
  /** Transactions, WATCH, blocking commands and Pub/Sub. */
  readonly #session: SessionCommands;
  /** Script bodies by lowercase sha1, from EVAL and SCRIPT LOAD, to heal NOSCRIPT. */
  readonly #scripts = new Map<string, Buffer>();
  readonly #identity: ProxyIdentity;
  /** Every connected client of this process (the listener keeps it), for CLIENT LIST and KILL. */
  readonly clients = new Set<ClientContext>();
  /** Clients in MONITOR mode, fed every command. */
  readonly #monitors: MonitorFeed;
  /** The proxy's other workers (`workers: N`); null in a proxy of one process. */
  readonly #peers: WorkerPeers | null;
  readonly #startedAt = Date.now();
  /** Commands answered, sampled each second for INFO's instantaneous_ops_per_sec. */
  #opsSample = { at: Date.now(), total: 0, perSecond: 0 };

  constructor(
    store: TopologyStore,
    pools: BackendPools,
    identity: ProxyIdentity,
    options: DispatcherOptions,
    stats: DataPathStats,
    peers: WorkerPeers | null = null,
  ) {
    this.#pools = pools;
    this.#peers = peers;
    this.#monitors = new MonitorFeed(peers);
    this.#stats = stats;
    this.#identity = identity;
    this.#options = options;
    this.writeDurability = new WriteDurability(options);
    this.#session = new SessionCommands(this);
    this.#local = new LocalCommands(identity, this.clients, this.#monitors, peers);
    this.#topology = store.current;
    this.#shards = pools.update(store.current);
    this.#parked = new ParkedRequests((expired) => this.#failExpired(expired));
    this.#migrating = new MigratingRouter(this, {
      migrateTimeoutMs: options.migrateTimeoutMs,
      keyMoveWaitMs: options.keyMoveWaitMs,
      password: options.backendPassword,
      minReplicaAcks: options.minReplicaAcks,
      replicaAckTimeoutMs: options.replicaAckTimeoutMs,
      noReplicaWrites: options.noReplicaWrites,
    });
    store.on('change', (next) => {
      this.#topology = next;
      this.#shards = pools.update(next);
      if (this.#parked.length > 0) {
        for (const r of this.#parked.release((shard) => !this.#shards[shard]!.info.isFailingOver)) {
          if (r.script === undefined) this.#send(r.shard, r.request, r.sink, r.clientId, r.isWrite, r.isReadonly);
          else this.#sendScript(r.shard, r.request, r.sink, r.clientId, r.isWrite, r.isReadonly, r.script);
        }
      }
      this.#migrating.onTopology();
      this.#session.onTopology();
    });
    peers?.attach(this);
  }

  /**
   * The proxy's process, as INFO names it: with workers, their primary (the one to signal: SIGHUP
   * reloads the YAML there, SIGTERM stops them all).
   */
  get #processId(): number {
    return this.#peers === null ? process.pid : process.ppid;
  }

  /** Another worker asks about this one's clients or counts (PeerHandler). */
  answer(question: PeerQuestion): PeerAnswer {
    switch (question.kind) {
      case 'client-list':
        return { kind: 'client-list', lines: listLines(question.filter, this.clients) };
      case 'client-kill':
        return { kind: 'client-kill', killed: killClients(question.filter, this.clients, null) };
      case 'counts':
        return { kind: 'counts', counts: this.#ownCounts() };
    }
  }

  onMonitorLines(lines: string): void {
    this.#monitors.pushRemote(lines);
  }

  onRemoteMonitors(count: number): void {
    this.#monitors.setRemoteMonitors(count);
  }

  get topology(): Topology {
    return this.#topology;
  }

  get failoverWaitMs(): number {
    return this.#options.failoverWaitMs;
  }

  dispatch(frame: RequestFrame, client: ClientContext): void {
    let spec = lookupCommandBytes(frame.buf, frame.argStart[0]!, frame.argEnd[0]!);
    if (spec !== undefined && spec.subcommands !== null && frame.argc >= 2) {
      const sub = spec.subcommands.get(frame.argString(1).toLowerCase());
      if (sub === undefined) {
        this.#session.abortTransaction(client);
        client.reply(unknownSubcommand(frame, spec), spec);
        return;
      }
      spec = sub;
    }
    const pins = client.pins;
    if (pins !== null && this.#session.intercept(frame, spec, client, pins)) return;
    if (spec === undefined) {
      this.#session.abortTransaction(client);
      client.reply(unknownCommand(frame), null);
      return;
    }
    client.lastCommandId = spec.id;
    if (this.#monitors.isWatched) {
      const isShown = !isHiddenFromMonitors(spec.name);
      if (this.#monitors.has(client)) {
        // As redis-server answers a monitor's own commands: the connection is a replica's now.
        if (spec.handling !== 'local') {
          client.reply(MONITOR_KEYSPACE_REFUSED, spec);
          return;
        }
        // Its own command's line after its reply, as redis-server feeds monitors after the call.
        this.#carryOut(frame, spec, client);
        if (isShown) this.#monitors.feed(frame, client);
        return;
      }
      if (isShown) this.#monitors.feed(frame, client);
    }
    this.#carryOut(frame, spec, client);
  }

  /** The command, known and past the checks that apply to every client, by its handling. */
  #carryOut(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    // A command with subcommands named alone: COMMAND (arity -1) is valid and keeps its own
    // handling; for the others Redis answers an arity error.
    if (spec.subcommands !== null && spec.arity !== -1) {
      client.reply(wrongArity(spec.name), spec);
      return;
    }
    switch (spec.handling) {
      case 'single':
        this.#single(frame, spec, client);
        return;
      case 'split':
        this.#split(frame, spec, client);
        return;
      case 'broadcast':
        this.#broadcast(frame, spec, client);
        return;
      case 'any-shard':
        this.#send(this.#anyShard(), frame.bytes(), client.awaitReply(spec), client.id, spec.isWrite, spec.isReadonly);
        return;
      case 'local':
        if (spec.name === 'reset') this.#session.reset(client);
        if (spec.name === 'role') client.reply(ROLE_REPLY, spec);
        else this.#local.handle(frame, spec, client);
        return;
      case 'refused':
        client.reply(notAllowed(spec.name, spec.note), spec);
        return;
      case 'transaction':
        this.#session.transaction(frame, spec, client);
        return;
      case 'blocking':
        this.#session.blocking(frame, spec, client);
        return;
      case 'pubsub':
        this.#session.pubsub(frame, spec, client);
        return;
      case 'scan':
        this.#scan(frame, spec, client);
        return;
      case 'first-non-empty': {
        const slot = client.awaitReply(spec);
        const request = frame.bytes();
        this.#afterHeldCommands(client, slot, () => {
          const shard = this.#anyShard();
          this.sendToShard(shard, request, new FirstNonEmptySink(slot, this, request, client.id, shard, this.#shards.length), client.id);
        });
        return;
      }
      case 'script':
        this.#script(frame, spec, client);
        return;
      case 'config-set':
        this.#configSet(frame, spec, client);
        return;
      case 'info':
        this.#info(frame, spec, client);
        return;
      case 'kill-script':
        this.#killScript(frame, spec, client);
        return;
    }
  }

  /** A client closed: its own backend connections (blocking, WATCH, Pub/Sub) close too. */
  release(client: ClientContext): void {
    this.#monitors.delete(client);
    client.pins?.close();
    client.pins = null;
  }

  /**
   * SCAN over every shard in turn, on each shard's primary (a Redis cursor is its node's alone).
   * The virtual cursor (special-sinks.ts) carries the shard's position, a token of its name and
   * one of the node that answered, then that shard's own cursor: a full iteration visits every
   * shard's keyspace as each shard's SCAN guarantees, across shards removed (the shard is found
   * again by its name; one that left starts the scan over) and failovers (another node answering
   * starts that shard over).
   */
  #scan(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    if (frame.argc < 2) {
      client.reply(wrongArity('scan'), spec);
      return;
    }
    const parsed = decodeScanCursor(frame.argString(1));
    if (parsed === null) {
      client.reply(encodeError('ERR invalid cursor'), spec);
      return;
    }
    const slot = client.awaitReply(spec);
    const name = frame.arg(0);
    const options: Buffer[] = [];
    for (let i = 2; i < frame.argc; i++) options.push(frame.arg(i));
    this.#afterHeldCommands(client, slot, () => {
      const shards = this.#shards;
      let shard = 0;
      let cursor = 0n;
      if (!parsed.isStart) {
        const at = parsed.position < shards.length && scanNameToken(shards[parsed.position]!.info.name) === parsed.nameToken
          ? parsed.position
          : shards.findIndex((s) => scanNameToken(s.info.name) === parsed.nameToken);
        if (at >= 0) {
          shard = at;
          const info = shards[at]!.info;
          if (!info.isFailingOver && scanNodeToken(nodeKey(info.primary)) === parsed.nodeToken) cursor = parsed.cursor;
        }
      }
      const args: Buffer[] = [name, Buffer.from(cursor.toString()), ...options];
      const info = shards[shard]!.info;
      const next = shard + 1 < shards.length ? { position: shard + 1, nameToken: scanNameToken(shards[shard + 1]!.info.name) } : null;
      this.#send(shard, encodeCommand(args), new ScanSink(slot, shard, scanNameToken(info.name), scanNodeToken(nodeKey(info.primary)), next), client.id, false, false);
    });
  }

  /** EVAL / EVALSHA routed by their keys; script bodies remembered so NOSCRIPT heals itself. */
  #script(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    if (frame.argc < 3) {
      client.reply(wrongArity(spec.name), spec);
      return;
    }
    const isSha = spec.name === 'evalsha' || spec.name === 'evalsha_ro';
    if (!isSha) this.rememberScript(frame.arg(1));
    const slot = commandSlot(frame, spec);
    if (slot === CROSS_SLOT) {
      client.reply(CROSSSLOT, spec);
      return;
    }
    const sha = isSha ? frame.argString(1).toLowerCase() : '';
    const body = isSha ? this.#scripts.get(sha) : undefined;
    const script = body === undefined ? null : { sha, body };
    if (slot !== NO_KEYS && this.#viaMigratingRouter(slot)) {
      this.#migrating.send(commandKeys(frame, spec), this.#topology.migrations.get(slot) ?? null, frame.bytes(), client.awaitReply(spec), client.id, spec.isWrite, script);
      return;
    }
    const shard = slot === NO_KEYS ? this.#anyShard() : this.#topology.slotOwner[slot]!;
    if (script === null) this.#send(shard, frame.bytes(), client.awaitReply(spec), client.id, spec.isWrite, spec.isReadonly);
    else this.#sendScript(shard, frame.bytes(), client.awaitReply(spec), client.id, spec.isWrite, spec.isReadonly, script);
  }

  /**
   * An EVALSHA of a script the proxy knows, as #send sends any command. A connection that has
   * not loaded the script on its node since it connected sends SCRIPT LOAD just in front of it,
   * in the client's order: a NOSCRIPT healed after the fact (still done, for a script flushed
   * behind the proxy's back) would run the script after the commands the client pipelined
   * behind it. Parked during a failover as a script: the promoted replica has no script cache
   * (Redis does not replicate it), and a bare EVALSHA would answer NOSCRIPT there.
   */
  #sendScript(shard: number, request: Buffer | readonly Buffer[], sink: ReplySink, clientId: number, isWrite: boolean, isReadonly: boolean, script: KnownScript, isRetry = false): void {
    if (this.#shards[shard]!.info.isFailingOver) {
      const deadline = Date.now() + this.#options.failoverWaitMs;
      this.#parked.park({ shard, request, sink, clientId, isWrite, isReadonly, deadline, script });
      return;
    }
    // EVALSHA_RO reads where any readonly command would (readFrom); SCRIPT LOAD runs on replicas too.
    const node = this.#nodeFor(shard, clientId, isReadonly, sink);
    if (node === null) return;
    const info = this.#shards[shard]!.info;
    const writesTo = isWrite ? info : null;
    if (writesTo !== null) {
      const refusal = this.writeDurability.refusal(writesTo);
      if (refusal !== null) {
        sink.onFailure(refusal);
        return;
      }
    }
    const connection = node.connection(clientId);
    const load = connection.hasScript(script.sha) ? null : encodeCommand(['SCRIPT', 'LOAD', script.body]);
    if (node !== this.#shards[shard]!.primary && !isRetry) sink = new ReplicaRead(this, sink, shard, request, clientId, script);
    new NoScriptSink(sink, connection, script.body, Buffer.isBuffer(request) ? request : Buffer.concat(request), this.writeDurability, writesTo).send(load);
    if (load !== null) connection.addScript(script.sha);
  }

  /** Keeps a script body by its sha1 (what EVALSHA names it by). */
  rememberScript(body: Buffer): void {
    const sha = createHash('sha1').update(body).digest('hex');
    if (!this.#scripts.has(sha)) this.#scripts.set(sha, Buffer.from(body));
  }

  /** CONFIG SET of allowed parameters on every node (primaries and replicas) of every shard. */
  #configSet(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    if (frame.argc < 4 || frame.argc % 2 !== 0) {
      client.reply(wrongArity('config|set'), spec);
      return;
    }
    for (let i = 2; i < frame.argc; i += 2) {
      const name = frame.argString(i).toLowerCase();
      if (!CONFIG_SET_ALLOWED.some((pattern) => pattern.test(name))) {
        client.reply(encodeError(`ERR CONFIG SET parameter '${name}' is not allowed through slotproxy`), spec);
        return;
      }
    }
    const nodes = this.#shards.flatMap((shard) => [shard.primary, ...shard.replicas]);
    const gather = new EveryNodeSink(client.awaitReply(spec), nodes.map((node) => node.key));
    const request = frame.bytes();
    nodes.forEach((node, i) => node.connection(client.id).send(request, gather.piece(i)));
  }

  /**
   * INFO: the proxy's section, the shards' sections, and the keyspace summed over shards. With
   * `workers: N` the client and command counts are the whole proxy's: the other workers are
   * asked for theirs first (a round trip over the IPC channel).
   */
  #info(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    const requested = requestedSections(frame.argStrings(1));
    const slot = client.awaitReply(spec);
    const request = frame.bytes();
    const answer = (others: readonly WorkerCounts[]): void => {
      const counts = others.reduce(addCounts, this.#ownCounts());
      const proxySection = includesSection(requested, 'proxy') ? this.#proxySection(counts, 1 + others.length) : null;
      const onlyProxy = !requested.all && [...requested.names].every((name) => name === 'proxy');
      if (onlyProxy) {
        slot.onReply(encodeBulk(`${proxySection}\r\n`));
        return;
      }
      const facts: ProxyFacts = {
        tcpPort: client.localPort,
        processId: this.#processId,
        uptimeSeconds: Math.floor((Date.now() - this.#startedAt) / 1000),
        ...counts,
      };
      const names = this.#shards.map((shard) => shard.info.name);
      const gather = new InfoSink(slot, names, proxySection, facts, includesSection(requested, 'keyspace'));
      for (let s = 0; s < names.length; s++) this.#send(s, request, gather.piece(s), client.id, false, true);
    };
    const peers = this.#peers;
    // Its keyspace section counts keys as DBSIZE does: behind the client's own held commands too.
    this.#afterHeldCommands(client, slot, () => {
      if (peers === null) {
        answer([]);
        return;
      }
      void peers.ask({ kind: 'counts' }).then((answers) => {
        answer(answers.flatMap((a) => (a.kind === 'counts' ? [a.counts] : [])));
      });
    });
  }

  /** This worker's clients and commands so far; also samples the rate for instantaneous_ops_per_sec. */
  #ownCounts(): WorkerCounts {
    const now = Date.now();
    const total = this.#stats.commands.calls.reduce((sum, n) => sum + n, 0);
    const sample = this.#opsSample;
    if (now - sample.at >= 1000) {
      this.#opsSample = { at: now, total, perSecond: Math.round(((total - sample.total) * 1000) / (now - sample.at)) };
    }
    return {
      connectedClients: this.#stats.clients.connected,
      totalConnectionsReceived: this.#stats.clients.accepted,
      totalCommandsProcessed: total,
      instantaneousOpsPerSec: this.#opsSample.perSecond,
    };
  }

  /** The Proxy section; `workers`: the data-path processes that answered (this one included). */
  #proxySection(counts: WorkerCounts, workers: number): string {
    const uptime = Math.floor((Date.now() - this.#startedAt) / 1000);
    const lines = [
      '# Proxy',
      `slotproxy_version:${this.#identity.version}`,
      `proxy_id:${this.#identity.nodeId}`,
      `process_id:${this.#processId}`,
      `workers:${workers}`,
      `uptime_in_seconds:${uptime}`,
      `connected_clients:${counts.connectedClients}`,
      `total_connections_received:${counts.totalConnectionsReceived}`,
      `total_commands_processed:${counts.totalCommandsProcessed}`,
      `instantaneous_ops_per_sec:${counts.instantaneousOpsPerSec}`,
      `topology_epoch:${this.#topology.epoch}`,
      `shards:${this.#shards.length}`,
      `slots_migrating:${this.#topology.migrations.size}`,
    ];
    const ranges = this.#topology.slotRanges();
    this.#shards.forEach((shard, i) => {
      const states = shard.primary.connections.map((c) => c.state);
      const health = shard.info.isFailingOver ? 'failing_over' : states.includes('down') ? 'down' : 'ok';
      const slots = ranges[i]!.reduce((sum, [from, to]) => sum + to - from + 1, 0);
      lines.push(
        `shard${i}:name=${shard.info.name},primary=${shard.primary.key},replicas=${shard.info.replicas.length},` +
          `readable_replicas=${shard.replicas.length},slots=${slots},health=${health}`,
      );
    });
    return lines.join('\r\n');
  }

  /**
   * Whether a command on `slot` goes through the migrating router: the slot migrates, or the
   * router still holds earlier commands on it (their slot settled while they waited), which
   * this one must not overtake.
   */
  #viaMigratingRouter(slot: number): boolean {
    return this.#topology.migrations.has(slot) || this.isHeldByRouter(slot);
  }

  /** Every key in one slot: the original bytes go to the owner's primary untouched. */
  #single(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    if (spec.hasMovableKeys) {
      const refusal = movableKeysRefusal(frame, spec);
      if (refusal !== null) {
        client.reply(refusal, spec);
        return;
      }
    }
    const slot = commandSlot(frame, spec);
    if (slot === CROSS_SLOT) {
      client.reply(CROSSSLOT, spec);
      return;
    }
    const topology = this.#topology;
    if (slot !== NO_KEYS && (topology.migrations.size > 0 || this.#migrating.isHolding) && this.#viaMigratingRouter(slot)) {
      this.#migrating.send(commandKeys(frame, spec), topology.migrations.get(slot) ?? null, frame.bytes(), client.awaitReply(spec), client.id, spec.isWrite);
      return;
    }
    const shard = slot === NO_KEYS ? this.#anyShard() : topology.slotOwner[slot]!;
    this.#send(shard, frame.bytes(), client.awaitReply(spec), client.id, spec.isWrite, spec.isReadonly);
  }

  /** MGET, MSET, DEL, ...: one sub-command per shard, merged by the gather. */
  #split(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    const step = spec.keyStep > 0 ? spec.keyStep : 1;
    if (frame.argc < 2 || (frame.argc - 1) % step !== 0) {
      client.reply(wrongArity(spec.name), spec);
      return;
    }
    const { fragments, keyFragment } = fragment(frame, spec, this.#topology.slotOwner, this.#topology.migrations, this.#migrating.isHolding ? this.#migrating : null);
    if (fragments.length === 1 && !fragments[0]!.viaMigratingRouter) {
      // All keys on one shard: no merge needed, forward the request as it came.
      this.#send(fragments[0]!.shard, frame.bytes(), client.awaitReply(spec), client.id, spec.isWrite, spec.isReadonly);
      return;
    }
    this.#stats.commands.recordFanOut(fragments.length);
    const gather = new Gather(client.awaitReply(spec), spec.merge!, fragments.length, keyFragment);
    for (let f = 0; f < fragments.length; f++) {
      const piece = fragments[f]!;
      if (piece.viaMigratingRouter) this.#migrating.send(piece.keys, piece.migration, piece.request, gather.piece(f), client.id, spec.isWrite);
      else this.#send(piece.shard, piece.request, gather.piece(f), client.id, spec.isWrite, spec.isReadonly);
    }
  }

  /**
   * SCRIPT KILL / FUNCTION KILL: a shard running a long script answers nothing on the shared
   * connection the script came by, and other connections only once it is past its
   * busy-reply-threshold; so each primary gets the request on a connection of its own.
   */
  #killScript(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    const bytes = frame.bytes();
    // Replicas too: EVAL_RO, EVALSHA_RO and FCALL_RO run there when readFrom says so.
    const nodes = this.#shards.flatMap((shard) => [
      { address: shard.info.primary, name: shard.info.name, shard: shard.info.name },
      ...shard.replicas.map((replica) => ({ address: replica.address, name: `${shard.info.name} replica ${replica.key}`, shard: shard.info.name })),
    ]);
    const sink = new KillScriptSink(client.awaitReply(spec), nodes.map((node) => node.name));
    nodes.forEach((node, i) => {
      const connection = this.#pools.dedicated(node.address, node.shard);
      connection.send(bytes, sink.piece(i, connection));
    });
  }

  /** Keyless commands every shard must run (DBSIZE, FLUSHALL, SCRIPT LOAD, ...). */
  #broadcast(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    if (spec.name === 'flushall' || spec.name === 'flushdb') {
      this.#flush(frame, spec, client);
      return;
    }
    if (spec.name === 'script|load' && frame.argc === 3) this.rememberScript(frame.arg(2));
    const limit = spec.merge === 'newest-first' ? slowlogLimit(frame.argc > 2 ? frame.argString(2) : null) : Number.POSITIVE_INFINITY;
    const slot = client.awaitReply(spec);
    // A script the proxy remembers runs on every shard (SCRIPT LOAD goes in front of its EVALSHA),
    // including one added, or a promoted replica, that has not loaded it yet.
    const reply: ReplySink = spec.name === 'script|exists' ? new KnownScriptsSink(slot, frame.argStrings(2).map((sha) => this.#scripts.has(sha.toLowerCase()))) : slot;
    const request = frame.bytes();
    this.#afterHeldCommands(client, slot, () => {
      // After SCRIPT FLUSH, EVALSHA must answer NOSCRIPT as Redis does: forget the bodies too
      // (not before: an EVALSHA the client sent earlier may still be held, and must run).
      if (spec.name === 'script|flush') {
        this.#scripts.clear();
        for (const pool of this.#pools.nodes.values()) for (const connection of pool.connections) connection.forgetScripts();
        // Redis does not replicate it, and EVALSHA_RO may be read from a replica: flushed there too,
        // on the client's connection, ahead of its next commands.
        for (const shard of this.#shards) for (const replica of shard.replicas) replica.connection(client.id).send(request, IGNORE_REPLY);
      }
      // The shards when it goes: a deferred one may find a shard added or removed meanwhile.
      const count = this.#shards.length;
      this.#stats.commands.recordFanOut(count);
      const gather = new Gather(reply, spec.merge!, count, null, limit);
      for (let s = 0; s < count; s++) this.#send(s, request, gather.piece(s), client.id, spec.isWrite, spec.isReadonly);
    });
  }

  /**
   * Runs `send` now; or, while the migrating router holds commands (their keys being moved
   * first), once the client's earlier commands have run (`send` may keep views of the request's
   * bytes, which live in the client's own chunk, but not the parser's reused frame). A keyless
   * command over the whole keyspace (DBSIZE, KEYS, SCAN, RANDOMKEY, INFO, SCRIPT and FUNCTION
   * changes) would otherwise overtake the client's own commands held there: DBSIZE pipelined
   * behind a SET would not count the key, as one Redis does. The client's next requests wait
   * meanwhile (as behind FLUSHALL), so none overtakes it either.
   */
  #afterHeldCommands(client: ClientContext, slot: ReplySlot, send: () => void): void {
    if (!this.#migrating.isHolding) {
      send();
      return;
    }
    client.holdUntilReplied();
    client.sendWhenFirst(slot, send);
  }

  /**
   * FLUSHALL / FLUSHDB. One Redis empties itself at once; here each shard empties in its own
   * time while keys move between them: a key copied off a shard the flush had not reached yet,
   * onto one it had already emptied, would outlive it. So the flush runs twice over every shard
   * (the second, once the first is done everywhere, empties what such a move brought; a move
   * that straddles both finds its source emptied, below), each time keeping the mover's marks
   * (FLUSH_KEEPING_MARKS_SCRIPT): a batch in flight then finds its keys gone from the source and
   * deletes their copies on the target. It goes once the client's earlier replies are in (its
   * own commands on migrating keys may be moving them still), and nothing more is read from the
   * client until it is answered.
   */
  #flush(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    const option = frame.argc === 2 ? frame.argString(1).toUpperCase() : null;
    // Anything but the one known option goes as it is: Redis's own error, byte for byte.
    const request =
      frame.argc === 1 || option === 'ASYNC' || option === 'SYNC'
        ? encodeCommand(['EVAL', FLUSH_KEEPING_MARKS_SCRIPT, '0', spec.name.toUpperCase(), ...(option === null ? [] : [option])])
        : Buffer.from(frame.bytes());
    const reply = client.awaitReply(spec);
    client.holdUntilReplied();
    client.sendWhenFirst(reply, () => this.#flushRound(request, spec, client.id, reply, 2));
  }

  #flushRound(request: Buffer, spec: CommandSpec, clientId: number, reply: ReplySink, rounds: number): void {
    const count = this.#shards.length;
    this.#stats.commands.recordFanOut(count);
    const then = rounds <= 1 ? reply : new AfterSuccess(reply, () => this.#flushRound(request, spec, clientId, reply, rounds - 1));
    const gather = new Gather(then, spec.merge!, count, null, Number.POSITIVE_INFINITY);
    for (let s = 0; s < count; s++) this.#send(s, request, gather.piece(s), clientId, true, false);
  }

  /**
   * The one place requests leave for a shard through the shared pools: parks them while the
   * shard fails over, sends readonly commands to a replica when readFrom says so, and hands
   * writes to writeDurability (WAIT or refusal, as minReplicaAcks and noReplicaWrites say).
   */
  #send(shardIndex: number, request: Buffer | readonly Buffer[], sink: ReplySink, clientId: number, isWrite: boolean, isReadonly: boolean, isRetry = false): void {
    const shard = this.#shards[shardIndex]!;
    if (shard.info.isFailingOver) {
      const deadline = Date.now() + this.#options.failoverWaitMs;
      this.#parked.park({ shard: shardIndex, request, sink, clientId, isWrite, isReadonly, deadline });
      return;
    }
    const node = this.#nodeFor(shardIndex, clientId, isReadonly, sink);
    if (node === null) return;
    const connection = node.connection(clientId);
    if (isWrite) this.writeDurability.send(connection, shard.info, request, sink);
    else if (node === shard.primary || isRetry) connection.send(request, sink);
    else connection.send(request, new ReplicaRead(this, sink, shardIndex, request, clientId, null));
  }

  /**
   * The node a command goes to: the primary, or for a readonly command a replica when readFrom
   * says so. Null (the sink answered with the error) when readFrom is replica and none is readable.
   */
  #nodeFor(shardIndex: number, clientId: number, isReadonly: boolean, sink: ReplySink): NodePool | null {
    const shard = this.#shards[shardIndex]!;
    const readFrom = this.#options.readFrom;
    if (!isReadonly || readFrom === 'primary') return shard.primary;
    const replica = readableReplica(shard, clientId);
    if (replica !== null) return replica;
    if (readFrom === 'preferReplica') return shard.primary;
    sink.onFailure(encodeError(`ERR shard ${shard.info.name} has no readable replica (readFrom: replica)`));
    return null;
  }

  send(shard: number, request: Buffer | readonly Buffer[], sink: ReplySink, clientId: number, isWrite: boolean, isReadonly: boolean): void {
    this.#send(shard, request, sink, clientId, isWrite, isReadonly);
  }

  sendSingle(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    this.#single(frame, spec, client);
  }

  sendToShard(shard: number, request: Buffer, sink: ReplySink, clientId: number): void {
    this.#send(shard, request, sink, clientId, false, true);
  }

  dedicatedConnection(shard: number, pushSink?: PushSink): BackendConnection {
    const info = this.#shards[shard]!.info;
    return this.#pools.dedicated(info.primary, info.name, pushSink);
  }

  anyShard(): number {
    return this.#anyShard();
  }

  /** A read that got no reply from its replica, sent once more where reads go now (ReplicaRead). */
  resendRead(read: ReplicaRead): void {
    if (read.script === null) this.#send(read.shard, read.request, read.sink, read.clientId, false, true, true);
    else this.#sendScript(read.shard, read.request, read.sink, read.clientId, false, true, read.script, true);
  }

  isHeldByRouter(slot: number): boolean {
    return this.#migrating.isHolding && this.#migrating.holdsSlot(slot);
  }

  #failExpired(expired: ParkedRequest[]): void {
    for (const r of expired) {
      const name = this.#shards[r.shard]?.info.name ?? String(r.shard);
      r.sink.onFailure(encodeError(`TRYAGAIN shard ${name} is failing over; no new primary within ${this.#options.failoverWaitMs} ms`));
    }
  }

  primaryConnection(shard: number, clientId: number): BackendConnection {
    return this.#shards[shard]!.primary.connection(clientId);
  }

  primaryAddress(shard: number): NodeAddress {
    return this.#shards[shard]!.info.primary;
  }

  /** For the migrating router: the target's primary, reads included (a replica may lag the move). */
  sendToPrimary(shard: number, request: Buffer | readonly Buffer[], sink: ReplySink, clientId: number, isWrite: boolean, script: KnownScript | null = null): void {
    if (script === null) this.#send(shard, request, sink, clientId, isWrite, false);
    else this.#sendScript(shard, request, sink, clientId, isWrite, false, script);
  }

  /**
   * The next shard in turn that looks able to answer now: not failing over, its primary's
   * connection not down, and no reply there overdue by ANY_SHARD_STALL_SECONDS (a frozen or
   * cut-off node keeps its connection up; a keyless command such as redis-cli's COMMAND DOCS at
   * start-up must not wait for it when another shard can answer). Round robin when none does.
   */
  #anyShard(): number {
    const count = this.#shards.length;
    for (let i = 1; i <= count; i++) {
      const index = (this.#nextShard + i) % count;
      const shard = this.#shards[index]!;
      if (shard.info.isFailingOver) continue;
      if (shard.primary.connections.some((c) => c.state === 'down' || c.oldestWaitSeconds() > ANY_SHARD_STALL_SECONDS)) continue;
      this.#nextShard = index;
      return index;
    }
    this.#nextShard = (this.#nextShard + 1) % count;
    return this.#nextShard;
  }

  close(): void {
    this.#migrating.close();
    this.#parked.close();
    this.#pools.close();
  }
}

/** Administrative commands, which redis-server does not show its monitors (CONFIG SET could carry a password). */
const HIDDEN_FROM_MONITORS = /^(monitor|debug|shutdown|sync|psync|replconf|replicaof|slaveof|failover|save|bgsave|bgrewriteaof|pfdebug|pfselftest|config\||acl\||slowlog\||latency\||module\||client\|(kill|list|pause|unpause|no-evict|no-touch)$)/;

function isHiddenFromMonitors(name: string): boolean {
  return HIDDEN_FROM_MONITORS.test(name);
}
const MONITOR_KEYSPACE_REFUSED = encodeError("ERR Replica can't interact with the keyspace");

/** A shard whose oldest reply is this overdue is passed over by keyless commands any shard can answer. */
const ANY_SHARD_STALL_SECONDS = 0.5;

/** ROLE through the proxy: a primary without replicas, as cluster-aware tooling expects of one node. */
const ROLE_REPLY = Buffer.from('*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n');

/**
 * A read sent to a replica. When it gets no reply (the replica was found failed and left the
 * topology, or its connection dropped), it is sent once more, to wherever readFrom sends reads
 * now: it changes nothing, so running it twice is harmless, and "failed replicas are skipped"
 * holds for the reads already on their way too.
 */
class ReplicaRead implements ReplySink {
  readonly #dispatcher: Dispatcher;
  readonly sink: ReplySink;
  readonly shard: number;
  readonly request: Buffer | readonly Buffer[];
  readonly clientId: number;
  /** An EVALSHA_RO's script, sent with it again; null for any other read. */
  readonly script: KnownScript | null;

  constructor(dispatcher: Dispatcher, sink: ReplySink, shard: number, request: Buffer | readonly Buffer[], clientId: number, script: KnownScript | null) {
    this.#dispatcher = dispatcher;
    this.sink = sink;
    this.shard = shard;
    this.request = request;
    this.clientId = clientId;
    this.script = script;
  }

  onReply(frame: Buffer): void {
    this.sink.onReply(frame);
  }

  onFailure(): void {
    // After the call that failed it returns: a pool closed by a new snapshot fails its reads
    // while the dispatcher is still taking the snapshot's pools.
    queueMicrotask(() => this.#dispatcher.resendRead(this));
  }
}

/** Runs `next` when the reply is not an error; an error (or a failure) goes to `sink` as it is. */
class AfterSuccess implements ReplySink {
  readonly #sink: ReplySink;
  readonly #next: () => void;

  constructor(sink: ReplySink, next: () => void) {
    this.#sink = sink;
    this.#next = next;
  }

  onReply(frame: Buffer): void {
    if (frame[0] === 45) this.#sink.onReply(frame);
    else this.#next();
  }

  onFailure(error: Buffer): void {
    this.#sink.onFailure(error);
  }
}

/** SCRIPT EXISTS: the shards' answer (every shard has it), with 1 for each script the proxy remembers. */
class KnownScriptsSink implements ReplySink {
  readonly #sink: ReplySink;
  readonly #isKnown: readonly boolean[];

  constructor(sink: ReplySink, isKnown: readonly boolean[]) {
    this.#sink = sink;
    this.#isKnown = isKnown;
  }

  onReply(frame: Buffer): void {
    const flags = decodeReply(frame);
    if (!Array.isArray(flags) || flags.length !== this.#isKnown.length) {
      this.#sink.onReply(frame);
      return;
    }
    this.#sink.onReply(encodeReply(flags.map((flag, i) => (this.#isKnown[i] ? 1 : flag))));
  }

  onFailure(error: Buffer): void {
    this.#sink.onFailure(error);
  }
}

/** A replica of the shard whose connection is not down, preferring the client's own. */
function readableReplica(shard: ShardPool, clientId: number): NodePool | null {
  const replicas = shard.replicas;
  for (let i = 0; i < replicas.length; i++) {
    const replica = replicas[(clientId + i) % replicas.length]!;
    if (replica.connection(clientId).state !== 'down') return replica;
  }
  return null;
}

/** redis-server's wording, with up to a few arguments quoted. */
function unknownCommand(frame: RequestFrame): Buffer {
  return encodeError(`ERR unknown command '${clip(frame.argString(0))}', with args beginning with: ${argsPreview(frame, 1)}`);
}

function unknownSubcommand(frame: RequestFrame, spec: CommandSpec): Buffer {
  return encodeError(
    `ERR unknown subcommand '${clip(frame.argString(1))}'. Try ${spec.name.toUpperCase()} HELP.`,
  );
}

function argsPreview(frame: RequestFrame, from: number): string {
  let text = '';
  for (let i = from; i < frame.argc && text.length < 128; i++) text += `'${clip(frame.argString(i))}' `;
  return text;
}

function clip(text: string): string {
  return text.length > 128 ? text.slice(0, 128) : text;
}

function addCounts(sum: WorkerCounts, other: WorkerCounts): WorkerCounts {
  return {
    connectedClients: sum.connectedClients + other.connectedClients,
    totalConnectionsReceived: sum.totalConnectionsReceived + other.totalConnectionsReceived,
    totalCommandsProcessed: sum.totalCommandsProcessed + other.totalCommandsProcessed,
    instantaneousOpsPerSec: sum.instantaneousOpsPerSec + other.instantaneousOpsPerSec,
  };
}
