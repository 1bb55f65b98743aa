import { createServer, type Server, type Socket } from 'node:net';
import type { Dispatcher } from '../dispatch/dispatcher';
import type { DataPathStats } from '../metrics/data-path-stats';
import { ClientSession, DEFAULT_SESSION_LIMITS, type SessionLimits } from './client-session';

export interface ListenerOptions {
  readonly host: string;
  readonly port: number;
  readonly limits?: SessionLimits;
  /** Ids start here; workers use disjoint ranges so CLIENT ID stays unique per proxy. */
  readonly firstClientId?: number;
  /** Connections beyond this are closed at once (counted as rejected). @default 100000 */
  readonly maxClients?: number;
}

/** The one RESP endpoint: a net.Server with one ClientSession per socket. */
export class Listener {
  readonly #server: Server;
  readonly #dispatcher: Dispatcher;
  readonly #options: ListenerOptions;
  readonly #stats: DataPathStats;
  #nextId: number;

  constructor(dispatcher: Dispatcher, options: ListenerOptions, stats: DataPathStats) {
    this.#dispatcher = dispatcher;
    this.#stats = stats;
    this.#options = options;
    this.#nextId = options.firstClientId ?? 1;
    // Not reading until the session has chosen how (io/socket-reads.ts).
    this.#server = createServer({ pauseOnConnect: true }, (socket) => this.#accept(socket));
  }

  listen(): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen({ host: this.#options.host, port: this.#options.port, backlog: 4096 }, () => {
        this.#server.off('error', reject);
        const address = this.#server.address();
        if (address === null || typeof address === 'string') throw new Error('unexpected listen address');
        resolve({ host: address.address, port: address.port });
      });
    });
  }

  /** Stops accepting and closes every client. */
  close(): Promise<void> {
    for (const client of [...this.#dispatcher.clients]) client.destroy();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  #accept(socket: Socket): void {
    const clients = this.#stats.clients;
    const connected = this.#dispatcher.clients;
    if (connected.size >= (this.#options.maxClients ?? 100_000)) {
      clients.rejected++;
      // redis-server's wording for maxclients. The socket is not reading (pauseOnConnect), so it
      // would not see the peer's FIN: closed once the error is written.
      socket.end('-ERR max number of clients reached\r\n', () => socket.destroy());
      return;
    }
    clients.accepted++;
    clients.connected++;
    const session = new ClientSession(
      this.#nextId++,
      socket,
      this.#dispatcher,
      this.#options.limits ?? DEFAULT_SESSION_LIMITS,
      this.#stats,
      (closed) => connected.delete(closed),
    );
    connected.add(session);
  }
}
