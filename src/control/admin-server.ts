import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { ConfigEditError } from './config-file-editor';
import { PlanBusyError, PlanError } from './rebalance-planner';
import type { PlanRequest, PlanView, ReshardStatus } from './resharding';

/**
 * The HTTP admin endpoint on the `admin:` address, what the resharding CLI talks to:
 *   GET  /admin/status   the running (or last) plan, its progress, and slots per shard
 *   POST /admin/plan     body: a PlanRequest as JSON plus `"dryRun": true|false`;
 *                        a dry run answers the plan (200), otherwise the plan starts (202)
 * Errors are JSON `{ "error": "..." }`: 400 for a plan that cannot be made, 409 while another
 * plan runs. It runs with the control plane (the primary process when there are workers).
 * It has no authentication: bind it to loopback or a management network.
 */

/** What the endpoint serves; Resharding implements it. */
export interface AdminBackend {
  preview(request: PlanRequest): Promise<PlanView>;
  submit(request: PlanRequest): Promise<PlanView>;
  status(): ReshardStatus;
}

export interface AdminServerOptions {
  readonly host: string;
  /** 0 picks a free port (see `port` once started). */
  readonly port: number;
  readonly resharding: AdminBackend;
}

const MAX_BODY_BYTES = 64 * 1024;
/** Of a body too large, read and dropped at most this much, for at most DROP_MS, before the refusal. */
const MAX_DROPPED_BYTES = 64 * 1024 * 1024;
const DROP_MS = 5_000;
const JSON_TYPE = 'application/json; charset=utf-8';
const OPS = ['reshard', 'rebalance', 'add-shard', 'remove-shard'] as const;

export class AdminServer {
  readonly host: string;
  readonly port: number;
  readonly #server: http.Server;
  readonly #backend: AdminBackend;

  private constructor(server: http.Server, backend: AdminBackend) {
    const address = server.address() as AddressInfo;
    this.host = address.address;
    this.port = address.port;
    this.#server = server;
    this.#backend = backend;
    server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      this.#handle(req, res).catch((err: unknown) => send(res, 500, { error: String(err) }));
    });
  }

  /** Listens on host:port; rejects when it cannot bind. */
  static async start(options: AdminServerOptions): Promise<AdminServer> {
    const server = http.createServer();
    server.keepAliveTimeout = 5_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port, options.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return new AdminServer(server, options.resharding);
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/admin/status' && req.method === 'GET') {
      send(res, 200, this.#backend.status());
      return;
    }
    if (path === '/admin/plan' && req.method === 'POST') {
      let text: string;
      try {
        text = await readBody(req);
      } catch (err) {
        if (!(err instanceof BodyTooLargeError)) throw err;
        // The body was read to its end (or for as long as readBody drops it): then closed.
        res.setHeader('connection', 'close');
        send(res, 413, { error: err.message });
        res.on('finish', () => req.destroy());
        return;
      }
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch (err) {
        send(res, 400, { error: `the body is not JSON: ${(err as Error).message}` });
        return;
      }
      const request = toPlanRequest(body);
      if (typeof request === 'string') {
        send(res, 400, { error: request });
        return;
      }
      const isDryRun = (body as Record<string, unknown>)['dryRun'] === true;
      try {
        const plan = isDryRun ? await this.#backend.preview(request) : await this.#backend.submit(request);
        send(res, isDryRun ? 200 : 202, { plan });
      } catch (err) {
        if (err instanceof PlanBusyError) send(res, 409, { error: err.message });
        else if (err instanceof PlanError || err instanceof ConfigEditError) send(res, 400, { error: err.message });
        else throw err;
      }
      return;
    }
    if (path === '/' || path === '/admin') {
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
      res.end('slotproxy admin endpoint: GET /admin/status, POST /admin/plan\n');
      return;
    }
    send(res, 404, { error: `no ${req.method} ${path}` });
  }
}

/** Checks the JSON a client sent; a string says what is wrong. */
export function toPlanRequest(body: unknown): PlanRequest | string {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return 'the body must be a JSON object';
  const b = body as Record<string, unknown>;
  const op = b['op'];
  if (typeof op !== 'string' || !(OPS as readonly string[]).includes(op)) return `op must be one of ${OPS.join(', ')}`;
  const str = (name: string): string | null => (typeof b[name] === 'string' && b[name] !== '' ? (b[name] as string) : null);
  switch (op as (typeof OPS)[number]) {
    case 'reshard': {
      const from = str('from');
      const to = str('to');
      const slots = b['slots'];
      if (from === null || to === null) return 'reshard needs from and to (shard names)';
      if (typeof slots !== 'number' || !Number.isFinite(slots)) return 'reshard needs slots (a number)';
      return { op: 'reshard', from, to, slots };
    }
    case 'rebalance': {
      const weights = b['weights'];
      if (weights === undefined || weights === null) return { op: 'rebalance' };
      if (typeof weights !== 'object' || Array.isArray(weights)) return 'weights must be an object of shard name -> number';
      // Finite here: the plan is worked out in the mover's process, and JSON would carry Infinity as null.
      for (const [name, w] of Object.entries(weights)) {
        if (typeof w !== 'number') return `weight of ${name} must be a number`;
        if (!Number.isFinite(w)) return `weight of ${name} must be a finite number`;
      }
      return { op: 'rebalance', weights: weights as Record<string, number> };
    }
    case 'add-shard': {
      const name = str('name');
      const primary = str('primary');
      const replicas = b['replicas'] ?? [];
      if (name === null || primary === null) return 'add-shard needs name and primary (host:port)';
      if (!Array.isArray(replicas) || !replicas.every((r) => typeof r === 'string')) return 'replicas must be a list of host:port';
      return { op: 'add-shard', name, primary, replicas: replicas as string[], rebalance: b['rebalance'] !== false };
    }
    case 'remove-shard': {
      const name = str('name');
      if (name === null) return 'remove-shard needs name';
      return { op: 'remove-shard', name };
    }
  }
}

class BodyTooLargeError extends Error {
  override readonly name = 'BodyTooLargeError';
}

/**
 * The request's body as text. A body over MAX_BODY_BYTES is read to its end and dropped before
 * the refusal is sent (up to MAX_DROPPED_BYTES or DROP_MS): a connection closed with a body
 * still arriving is reset, and the client's write fails before it reads the refusal.
 */
function readBody(req: http.IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let chunks: Buffer[] = [];
    let size = 0;
    let dropTimer: NodeJS.Timeout | null = null;
    const refuse = (): void => {
      if (dropTimer !== null) clearTimeout(dropTimer);
      reject(new BodyTooLargeError(`the body is too large (more than ${MAX_BODY_BYTES} bytes)`));
    };
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) {
        chunks.push(chunk);
        return;
      }
      chunks = [];
      if (dropTimer === null) dropTimer = setTimeout(refuse, DROP_MS);
      if (size > MAX_BODY_BYTES + MAX_DROPPED_BYTES) refuse();
    });
    req.on('end', () => {
      if (size > MAX_BODY_BYTES) refuse();
      else resolve(Buffer.concat(chunks).toString('utf8'));
    });
    req.on('error', reject);
  });
}

function send(res: http.ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) return;
  res.writeHead(status, { 'content-type': JSON_TYPE });
  res.end(`${JSON.stringify(body)}\n`);
}
