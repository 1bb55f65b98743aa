import type { CommandSpec } from '../commands/handling';
import type { RequestFrame } from '../resp/request-parser';
import { encodeBulk, encodeError, encodeInteger, encodeReply, NULL_BULK, OK, PONG } from '../resp/resp-writer';
import { calculateSlot } from '../routing/key-slot';
import { clientInfo, killClients, killReply, listLines, parseKillFilter, parseListFilter } from './client-admin';
import type { ClientContext } from './client-context';
import type { MonitorFeed } from './monitor-feed';
import type { WorkerPeers } from './worker-peers';

/** Who the proxy says it is. */
export interface ProxyIdentity {
  readonly version: string;
  /** 40 hex characters, stable for the process: CLUSTER MYID and the node id clients see. */
  readonly nodeId: string;
}

const RESET = Buffer.from('+RESET\r\n');
const WRONGPASS = encodeError('WRONGPASS invalid username-password pair or user is disabled.');
const AUTH_WITHOUT_PASSWORD = encodeError(
  'ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?',
);
const NOPROTO = encodeError('NOPROTO unsupported protocol version');

export function wrongArity(name: string): Buffer {
  return encodeError(`ERR wrong number of arguments for '${name}' command`);
}

export function notAllowed(name: string, why: string): Buffer {
  return encodeError(`ERR command '${name}' is not allowed through slotproxy${why ? ` (${why})` : ''}`);
}

const b = (text: string | number): Buffer => Buffer.from(String(text));

/**
 * Replies the proxy makes itself: connection state that lives in the proxy (name, protocol,
 * database) and the single-node cluster picture cluster-aware clients ask for.
 */
export class LocalCommands {
  readonly #identity: ProxyIdentity;
  readonly #clients: ReadonlySet<ClientContext>;
  readonly #monitors: MonitorFeed;
  readonly #peers: WorkerPeers | null;

  constructor(identity: ProxyIdentity, clients: ReadonlySet<ClientContext>, monitors: MonitorFeed, peers: WorkerPeers | null) {
    this.#identity = identity;
    this.#clients = clients;
    this.#monitors = monitors;
    this.#peers = peers;
  }

  handle(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    if (spec.name === 'client|list') this.#clientList(frame, spec, client);
    else if (spec.name === 'client|kill') this.#clientKill(frame, spec, client);
    else client.reply(this.#answer(frame, spec, client), spec);
  }

  /** CLIENT LIST: this process's clients, and with `workers: N` the other workers' (asked with the same filter). */
  #clientList(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    const filter = parseListFilter(frame.argStrings(2));
    if (Buffer.isBuffer(filter)) {
      client.reply(filter, spec);
      return;
    }
    const own = listLines(filter, this.#clients);
    if (this.#peers === null) {
      client.reply(encodeBulk(own), spec);
      return;
    }
    const slot = client.awaitReply(spec);
    void this.#peers.ask({ kind: 'client-list', filter }).then((answers) => {
      slot.onReply(encodeBulk(answers.reduce((text, a) => (a.kind === 'client-list' ? text + a.lines : text), own)));
    });
  }

  /** CLIENT KILL: on this process's clients, and with `workers: N` on the other workers' too. */
  #clientKill(frame: RequestFrame, spec: CommandSpec, client: ClientContext): void {
    if (frame.argc < 3) {
      client.reply(wrongArity('client|kill'), spec);
      return;
    }
    const filter = parseKillFilter(frame.argStrings(2));
    if (Buffer.isBuffer(filter)) {
      client.reply(filter, spec);
      return;
    }
    const own = killClients(filter, this.#clients, client);
    // An id or an address names one client of the whole proxy: found here, no other has it.
    if (this.#peers === null || (own > 0 && (filter.id !== undefined || filter.isOldForm))) {
      client.reply(killReply(filter, own), spec);
      return;
    }
    const slot = client.awaitReply(spec);
    void this.#peers.ask({ kind: 'client-kill', filter }).then((answers) => {
      slot.onReply(killReply(filter, answers.reduce((sum, a) => (a.kind === 'client-kill' ? sum + a.killed : sum), own)));
    });
  }

  #answer(frame: RequestFrame, spec: CommandSpec, client: ClientContext): Buffer {
    const argc = frame.argc;
    switch (spec.name) {
      case 'ping':
        if (argc === 1) return PONG;
        return argc === 2 ? encodeBulk(frame.arg(1)) : wrongArity('ping');
      case 'echo':
        return argc === 2 ? encodeBulk(frame.arg(1)) : wrongArity('echo');
      case 'quit':
        client.closeAfterReplies();
        return OK;
      case 'reset':
        client.name = '';
        this.#monitors.delete(client);
        return RESET;
      case 'monitor':
        if (argc !== 1) return wrongArity('monitor');
        this.#monitors.add(client);
        return OK;
      case 'readonly':
      case 'readwrite':
      case 'asking':
        return argc === 1 ? OK : wrongArity(spec.name);
      case 'auth':
        // As a Redis with no password: the default user takes any password, no other user exists.
        if (argc === 2) return AUTH_WITHOUT_PASSWORD;
        if (argc === 3) return frame.argString(1) === 'default' ? OK : WRONGPASS;
        return wrongArity('auth');
      case 'select': {
        if (argc !== 2) return wrongArity('select');
        const db = frame.argString(1);
        if (!/^-?\d+$/.test(db)) return encodeError('ERR value is not an integer or out of range');
        return Number(db) === 0 ? OK : notAllowed('select', 'only database 0 is served');
      }
      case 'hello':
        return this.#hello(frame, client);
      case 'client|setname': {
        if (argc !== 3) return wrongArity('client|setname');
        const name = frame.argString(2);
        if (!isValidClientName(name)) {
          return encodeError('ERR Client names cannot contain spaces, newlines or special characters.');
        }
        client.name = name;
        return OK;
      }
      case 'client|getname':
        return client.name === '' ? NULL_BULK : encodeBulk(client.name);
      case 'client|id':
        return encodeInteger(client.id);
      case 'client|info':
        return clientInfo(client);
      case 'client|setinfo': {
        if (argc !== 4) return wrongArity('client|setinfo');
        const attribute = frame.argString(2).toLowerCase();
        const value = frame.argString(3);
        if (!isValidClientName(value) && value !== '') {
          return encodeError(`ERR ${attribute} cannot contain spaces, newlines or special characters.`);
        }
        if (attribute === 'lib-name') client.libName = value;
        else if (attribute === 'lib-ver') client.libVersion = value;
        else return encodeError(`ERR Unrecognized option '${frame.argString(2)}'`);
        return OK;
      }
      case 'client|no-evict':
      case 'client|no-touch': {
        if (argc !== 3) return wrongArity(spec.name);
        const mode = frame.argString(2).toLowerCase();
        return mode === 'on' || mode === 'off' ? OK : encodeError('ERR syntax error');
      }
      case 'cluster|keyslot':
        return argc === 3 ? encodeInteger(calculateSlot(frame.arg(2))) : wrongArity('cluster|keyslot');
      case 'cluster|myid':
        return encodeBulk(this.#identity.nodeId);
      case 'cluster|myshardid':
        return encodeBulk(this.#identity.nodeId);
      case 'cluster|info':
        return encodeBulk(this.#clusterInfo());
      case 'cluster|slots':
        return encodeReply([[0, 16383, [b(client.localHost), client.localPort, b(this.#identity.nodeId), []]]]);
      case 'cluster|shards':
        return encodeReply([
          [
            b('slots'),
            [0, 16383],
            b('nodes'),
            [
              [
                b('id'), b(this.#identity.nodeId),
                b('port'), client.localPort,
                b('ip'), b(client.localHost),
                b('endpoint'), b(client.localHost),
                b('role'), b('master'),
                b('replication-offset'), 0,
                b('health'), b('online'),
              ],
            ],
          ],
        ]);
      case 'cluster|nodes': {
        // As Redis writes it: the address as is, IPv6 without brackets (clients split at the last colon).
        return encodeBulk(
          `${this.#identity.nodeId} ${client.localHost}:${client.localPort}@${client.localPort + 10000} myself,master - 0 0 1 connected 0-16383\n`,
        );
      }
      default:
        return encodeError(`ERR slotproxy has no local handler for '${spec.name}'`);
    }
  }

  /** HELLO as a RESP2-only Redis 7.0 answers it: protocol 3 is refused so clients fall back. */
  #hello(frame: RequestFrame, client: ClientContext): Buffer {
    let i = 1;
    if (frame.argc >= 2) {
      const text = frame.argString(1);
      if (!/^-?\d+$/.test(text)) return encodeError('ERR Protocol version is not an integer or out of range');
      const version = Number(text);
      if (version !== 2) return NOPROTO;
      i = 2;
    }
    let name: string | null = null;
    for (; i < frame.argc; i++) {
      const option = frame.argString(i).toLowerCase();
      const more = frame.argc - i - 1;
      if (option === 'auth' && more >= 2) {
        // No password is configured on the proxy: the default user accepts any, no other user exists.
        if (frame.argString(i + 1) !== 'default') return WRONGPASS;
        i += 2;
      } else if (option === 'setname' && more >= 1) {
        name = frame.argString(++i);
        if (!isValidClientName(name)) {
          return encodeError('ERR Client names cannot contain spaces, newlines or special characters.');
        }
      } else {
        return encodeError(`ERR Syntax error in HELLO option '${frame.argString(i)}'`);
      }
    }
    if (name !== null) client.name = name;
    return encodeReply([
      b('server'), b('redis'),
      b('version'), b(this.#identity.version),
      b('proto'), 2,
      b('id'), client.id,
      b('mode'), b('standalone'),
      b('role'), b('master'),
      b('modules'), [],
    ]);
  }

  #clusterInfo(): string {
    return [
      'cluster_enabled:1',
      'cluster_state:ok',
      'cluster_slots_assigned:16384',
      'cluster_slots_ok:16384',
      'cluster_slots_pfail:0',
      'cluster_slots_fail:0',
      'cluster_known_nodes:1',
      'cluster_size:1',
      'cluster_current_epoch:1',
      'cluster_my_epoch:1',
      'cluster_stats_messages_sent:0',
      'cluster_stats_messages_received:0',
      'total_cluster_links_buffer_limit_exceeded:0',
      '',
    ].join('\r\n');
  }
}

/** Redis allows printable ASCII without spaces in client names. */
function isValidClientName(name: string): boolean {
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c < 33 || c > 126) return false;
  }
  return true;
}
