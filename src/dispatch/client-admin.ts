import { COMMAND_NAMES } from '../commands/command-table';
import { encodeBulk, encodeError, encodeInteger, OK } from '../resp/resp-writer';
import type { ClientContext } from './client-context';

/**
 * CLIENT INFO, LIST and KILL about the proxy's own clients, in redis-server's formats: the
 * shards' client lists hold only the proxy's shared connections, which say nothing about who
 * is connected. With `workers: N` each worker knows its own clients; LocalCommands asks the
 * others (WorkerPeers) with the same filters, which is why they are plain data.
 */

/** One `CLIENT LIST` line (without its newline). */
export function clientLine(client: ClientContext, now: number): string {
  const age = Math.floor((now - client.connectedAt) / 1000);
  const idle = Math.floor(performance.now() / 1000 - client.lastActiveAt);
  const laddr = client.localAddress;
  const pins = client.pins;
  const subscriptions = pins?.pubsub?.counts() ?? { channels: 0, patterns: 0, shardChannels: 0 };
  const transaction = pins?.transaction ?? null;
  let flags = '';
  if (subscriptions.channels + subscriptions.patterns + subscriptions.shardChannels > 0) flags += 'P';
  if (transaction !== null) flags += 'x';
  const cmd = client.lastCommandId < 0 ? 'NULL' : COMMAND_NAMES[client.lastCommandId] ?? 'NULL';
  return (
    `id=${client.id} addr=${client.remoteAddress} laddr=${laddr} fd=-1 name=${client.name} age=${age} idle=${idle} ` +
    `flags=${flags === '' ? 'N' : flags} db=0 sub=${subscriptions.channels} psub=${subscriptions.patterns} ssub=${subscriptions.shardChannels} ` +
    `multi=${transaction === null ? -1 : transaction.count} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 obl=0 oll=0 omem=0 ` +
    `tot-mem=0 events=r cmd=${cmd} user=default redir=-1 resp=2 lib-name=${client.libName} lib-ver=${client.libVersion}`
  );
}

export function clientInfo(client: ClientContext): Buffer {
  return encodeBulk(`${clientLine(client, Date.now())}\n`);
}

export type ClientType = 'normal' | 'master' | 'replica' | 'pubsub';

function clientType(text: string): ClientType | null {
  const type = text.toLowerCase();
  if (type === 'normal' || type === 'master' || type === 'replica' || type === 'pubsub') return type;
  return type === 'slave' ? 'replica' : null;
}

/** Through the proxy every client is normal or, while subscribed, pubsub (redis-server's getClientType). */
function isOfType(client: ClientContext, type: ClientType): boolean {
  const isSubscribed = client.pins?.pubsub?.isSubscribed === true;
  return type === 'pubsub' ? isSubscribed : type === 'normal' && !isSubscribed;
}

function clientId(text: string): number | null {
  return /^\d+$/.test(text) && Number(text) > 0 ? Number(text) : null;
}

/** Which clients CLIENT LIST asks for; plain data, so another worker can apply it too. */
export interface ListFilter {
  readonly type: ClientType | null;
  readonly ids: readonly number[] | null;
}

/** CLIENT LIST's options (`args`: the arguments after LIST): the filter, or the error reply. */
export function parseListFilter(args: readonly string[]): ListFilter | Buffer {
  let type: ClientType | null = null;
  let ids: number[] | null = null;
  for (let i = 0; i < args.length; i++) {
    const option = args[i]!.toLowerCase();
    if (option === 'type' && i + 1 < args.length) {
      type = clientType(args[++i]!);
      if (type === null) return encodeError(`ERR Unknown client type '${args[i]!}'`);
    } else if (option === 'id' && i + 1 < args.length) {
      ids = [];
      for (i++; i < args.length; i++) {
        const id = clientId(args[i]!);
        if (id === null) return encodeError('ERR Invalid client ID');
        ids.push(id);
      }
    } else {
      return encodeError('ERR syntax error');
    }
  }
  return { type, ids };
}

/** CLIENT LIST's lines (each ending in a newline) for the clients `filter` selects. */
export function listLines(filter: ListFilter, clients: Iterable<ClientContext>): string {
  const now = Date.now();
  let text = '';
  for (const client of clients) {
    if (filter.type !== null && !isOfType(client, filter.type)) continue;
    if (filter.ids !== null && !filter.ids.includes(client.id)) continue;
    text += `${clientLine(client, now)}\n`;
  }
  return text;
}

/** What CLIENT KILL's filters ask for; every one given must match. Plain data, as ListFilter. */
export interface KillFilter {
  /** CLIENT KILL addr:port: answers +OK or an error instead of a count. */
  readonly isOldForm: boolean;
  readonly id?: number;
  readonly addr?: string;
  readonly laddr?: string;
  readonly type?: ClientType;
  readonly maxAgeSeconds?: number;
  readonly skipMe: boolean;
}

/**
 * CLIENT KILL's arguments after KILL: `addr:port` (the old form) or `<filter> <value> ...`;
 * the filter, or the error reply.
 */
export function parseKillFilter(args: readonly string[]): KillFilter | Buffer {
  if (args.length === 1) return { isOldForm: true, addr: args[0]!, skipMe: false };
  if (args.length % 2 !== 0) return encodeError('ERR syntax error');
  const filter: { -readonly [K in keyof KillFilter]: KillFilter[K] } = { isOldForm: false, skipMe: true };
  for (let i = 0; i < args.length; i += 2) {
    const option = args[i]!.toLowerCase();
    const value = args[i + 1]!;
    switch (option) {
      case 'id': {
        const id = clientId(value);
        if (id === null) return encodeError('ERR client-id should be greater than 0');
        filter.id = id;
        break;
      }
      case 'addr':
        filter.addr = value;
        break;
      case 'laddr':
        filter.laddr = value;
        break;
      case 'type': {
        const type = clientType(value);
        if (type === null) return encodeError(`ERR Unknown client type '${value}'`);
        filter.type = type;
        break;
      }
      case 'user':
        // The proxy has one user, as a redis-server without ACL rules.
        if (value !== 'default') return encodeError(`ERR No such user '${value}'`);
        break;
      case 'skipme': {
        const answer = value.toLowerCase();
        if (answer !== 'yes' && answer !== 'no') return encodeError('ERR syntax error');
        filter.skipMe = answer === 'yes';
        break;
      }
      case 'maxage':
        if (!/^\d+$/.test(value)) return encodeError('ERR syntax error');
        filter.maxAgeSeconds = Number(value);
        break;
      default:
        return encodeError('ERR syntax error');
    }
  }
  return filter;
}

/**
 * Closes the clients `filter` selects and returns how many. `self` is the client that asked
 * (null on another worker than its own): when it matches (SKIPME no) it is closed once its
 * reply is written, as redis-server does.
 */
export function killClients(filter: KillFilter, clients: Iterable<ClientContext>, self: ClientContext | null): number {
  const now = Date.now();
  const victims = [...clients].filter((client) => {
    if (filter.skipMe && client === self) return false;
    if (filter.id !== undefined && client.id !== filter.id) return false;
    if (filter.addr !== undefined && client.remoteAddress !== filter.addr) return false;
    if (filter.laddr !== undefined && client.localAddress !== filter.laddr) return false;
    if (filter.type !== undefined && !isOfType(client, filter.type)) return false;
    if (filter.maxAgeSeconds !== undefined && (now - client.connectedAt) / 1000 < filter.maxAgeSeconds) return false;
    return true;
  });
  // The old form closes one client, the first that matches.
  if (filter.isOldForm) victims.length = Math.min(victims.length, 1);
  for (const victim of victims) {
    if (victim === self) victim.closeAfterReplies();
    else victim.destroy();
  }
  return victims.length;
}

/** CLIENT KILL's reply once `killed` clients were closed (over every worker). */
export function killReply(filter: KillFilter, killed: number): Buffer {
  if (!filter.isOldForm) return encodeInteger(killed);
  return killed > 0 ? OK : encodeError('ERR No such client');
}
