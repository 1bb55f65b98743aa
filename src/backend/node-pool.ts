import { nodeKey, type NodeAddress } from '../topology/topology';
import { BackendConnection, type BackendConnectionOptions } from './backend-connection';

/**
 * A small, fixed set of pipelined connections to one node, shared by all clients. A client
 * always uses the same one (by its id), so its commands to a node keep their order.
 */
export class NodePool {
  readonly address: NodeAddress;
  readonly key: string;
  readonly #connections: BackendConnection[];

  constructor(options: BackendConnectionOptions, size: number) {
    this.address = options.address;
    this.key = nodeKey(options.address);
    this.#connections = Array.from({ length: size }, () => new BackendConnection(options));
  }

  connection(clientId: number): BackendConnection {
    return this.#connections[clientId % this.#connections.length]!;
  }

  get connections(): readonly BackendConnection[] {
    return this.#connections;
  }

  close(): void {
    for (const connection of this.#connections) connection.close();
  }
}
