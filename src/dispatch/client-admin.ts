import { COMMAND_NAMES } from '../commands/command-table';
import type { RequestFrame } from '../resp/request-parser';
import { encodeBulk, encodeError, encodeInteger, OK } from '../resp/resp-writer';
import type { ClientContext } from './client-context';

/**
 * CLIENT INFO, LIST and KILL about the proxy's own clients, in redis-server's formats: the
 * shards' client lists hold only the proxy's shared connections, which say nothing about who
 * is connected. With `workers: N` each worker knows its own clients.
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

type ClientType = 'normal' | 'master' | 'replica' | 'pubsub';

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

/** CLIENT LIST [TYPE type] [ID id ...] */
export function clientList(frame: RequestFrame, clients: Iterable<ClientContext>): Buffer {
  let type: ClientType | null = null;
  let ids: Set<number> | null = null;
  for (let i = 2; i < frame.argc; i++) {
    const option = frame.argString(i).toLowerCase();
    if (option === 'type' && i + 1 < frame.argc) {
      type = clientType(frame.argString(++i));
      if (type === null) return encodeError(`ERR Unknown client type '${frame.argString(i)}'`);
    } else if (option === 'id' && i + 1 < frame.argc) {
      ids = new Set();
      for (i++; i < frame.argc; i++) {
        const id = clientId(frame.argString(i));
        if (id === null) return encodeError('ERR Invalid client ID');
        ids.add(id);
      }
    } else {
      return encodeError('ERR syntax error');
    }
  }
  const now = Date.now();
  let text = '';
  for (const client of clients) {
    if (type !== null && !isOfType(client, type)) continue;
    if (ids !== null && !ids.has(client.id)) continue;
    text += `${clientLine(client, now)}\n`;
  }
  return encodeBulk(text);
}

/** What CLIENT KILL's filters ask for; every one given must match. */
interface KillFilter {
  id?: number;
  addr?: string;
  laddr?: string;
  type?: ClientType;
  maxAgeSeconds?: number;
  skipMe: boolean;
}

/**
 * CLIENT KILL addr:port (the old form: +OK or an error) or CLIENT KILL <filter value> ...
 * (the count killed). The caller itself, when it matches (SKIPME no), is closed once its reply
 * is written, as redis-server does.
 */
export function clientKill(frame: RequestFrame, clients: Iterable<ClientContext>, self: ClientContext): Buffer {
  if (frame.argc === 3) {
    const addr = frame.argString(2);
    const victim = [...clients].find((client) => client.remoteAddress === addr);
    if (victim === undefined) return encodeError('ERR No such client');
    kill(victim, self);
    return OK;
  }
  if (frame.argc % 2 !== 0) return encodeError('ERR syntax error');
  const filter: KillFilter = { skipMe: true };
  for (let i = 2; i < frame.argc; i += 2) {
    const option = frame.argString(i).toLowerCase();
    const value = frame.argString(i + 1);
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
  for (const victim of victims) kill(victim, self);
  return encodeInteger(victims.length);
}

function kill(victim: ClientContext, self: ClientContext): void {
  if (victim === self) victim.closeAfterReplies();
  else victim.destroy();
}
