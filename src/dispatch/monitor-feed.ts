import type { RequestFrame } from '../resp/request-parser';
import type { ClientContext } from './client-context';
import type { WorkerPeers } from './worker-peers';

/**
 * MONITOR through the proxy: every command its clients send, as redis-server writes it for its
 * monitors (`+<unix time>.<us> [0 <client address>] "arg" ...`), pushed to the clients that
 * asked. It shows what reaches the proxy (one line per client command, a fan-out included),
 * not the sub-commands it sends the shards. With `workers: N`, a worker feeds its own monitors
 * and, while other workers have some, sends them its lines once per event-loop turn.
 */
export class MonitorFeed {
  readonly #monitors = new Set<ClientContext>();
  readonly #peers: WorkerPeers | null;
  /** Monitors on other workers. */
  #remoteMonitors = 0;
  /** Lines of this turn for the other workers' monitors. */
  #remoteLines = '';
  /** Whether any monitor, on this worker or another, wants lines: the one check per command. */
  isWatched = false;

  constructor(peers: WorkerPeers | null) {
    this.#peers = peers;
  }

  has(client: ClientContext): boolean {
    return this.#monitors.has(client);
  }

  add(client: ClientContext): void {
    if (this.#monitors.has(client)) return;
    this.#monitors.add(client);
    this.#changed();
  }

  delete(client: ClientContext): void {
    if (this.#monitors.delete(client)) this.#changed();
  }

  /** One line for `frame`, sent by `client`, to every monitor. */
  feed(frame: RequestFrame, client: ClientContext): void {
    const micros = Math.round((performance.timeOrigin + performance.now()) * 1000);
    let line = `+${Math.floor(micros / 1e6)}.${String(micros % 1e6).padStart(6, '0')} [0 ${client.remoteAddress}]`;
    for (let i = 0; i < frame.argc; i++) line += ` ${repr(frame.arg(i))}`;
    line += '\r\n';
    if (this.#monitors.size > 0) this.#push(line);
    if (this.#remoteMonitors > 0) {
      if (this.#remoteLines === '') setImmediate(this.#sendRemoteLines);
      this.#remoteLines += line;
    }
  }

  /** Lines from another worker's clients. */
  pushRemote(lines: string): void {
    if (this.#monitors.size > 0) this.#push(lines);
  }

  /** The other workers' monitor count changed. */
  setRemoteMonitors(count: number): void {
    this.#remoteMonitors = count;
    this.#updateWatched();
  }

  /** Lines are ASCII (repr escapes the rest), so latin1 is their exact bytes. */
  #push(lines: string): void {
    const bytes = Buffer.from(lines, 'latin1');
    for (const monitor of this.#monitors) monitor.push(bytes);
  }

  readonly #sendRemoteLines = (): void => {
    const lines = this.#remoteLines;
    this.#remoteLines = '';
    if (lines !== '' && this.#remoteMonitors > 0) this.#peers?.sendMonitorLines(lines);
  };

  #changed(): void {
    this.#updateWatched();
    this.#peers?.monitorsChanged(this.#monitors.size);
  }

  #updateWatched(): void {
    this.isWatched = this.#monitors.size > 0 || this.#remoteMonitors > 0;
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
