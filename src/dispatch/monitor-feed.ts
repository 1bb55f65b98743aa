import type { RequestFrame } from '../resp/request-parser';
import type { ClientContext } from './client-context';

/**
 * MONITOR through the proxy: every command its clients send, as redis-server writes it for its
 * monitors (`+<unix time>.<us> [0 <client address>] "arg" ...`), pushed to the clients that
 * asked. It shows what reaches the proxy (one line per client command, a fan-out included),
 * not the sub-commands it sends the shards; with `workers: N`, each worker's own clients.
 */
export class MonitorFeed {
  readonly #monitors = new Set<ClientContext>();

  get size(): number {
    return this.#monitors.size;
  }

  has(client: ClientContext): boolean {
    return this.#monitors.has(client);
  }

  add(client: ClientContext): void {
    this.#monitors.add(client);
  }

  delete(client: ClientContext): void {
    this.#monitors.delete(client);
  }

  /** One line for `frame`, sent by `client`, to every monitor. */
  feed(frame: RequestFrame, client: ClientContext): void {
    const micros = Math.round((performance.timeOrigin + performance.now()) * 1000);
    let line = `+${Math.floor(micros / 1e6)}.${String(micros % 1e6).padStart(6, '0')} [0 ${client.remoteAddress}]`;
    for (let i = 0; i < frame.argc; i++) line += ` ${repr(frame.arg(i))}`;
    const bytes = Buffer.from(`${line}\r\n`, 'latin1');
    for (const monitor of this.#monitors) monitor.push(bytes);
  }
}

/** redis-server's sdscatrepr: quoted, with \\n \\r \\t \\a \\b, \\" and \\\\ escaped, other non-printables as \\xHH. */
function repr(bytes: Uint8Array): string {
  let out = '"';
  for (const c of bytes) {
    if (c === 0x5c) out += '\\\\';
    else if (c === 0x22) out += '\\"';
    else if (c === 0x0a) out += '\\n';
    else if (c === 0x0d) out += '\\r';
    else if (c === 0x09) out += '\\t';
    else if (c === 0x07) out += '\\a';
    else if (c === 0x08) out += '\\b';
    else if (c >= 0x20 && c <= 0x7e) out += String.fromCharCode(c);
    else out += `\\x${c.toString(16).padStart(2, '0')}`;
  }
  return `${out}"`;
}
