import * as fs from 'node:fs';
import * as path from 'node:path';
import { nodeKey, type NodeAddress, type Topology } from '../topology/topology';
import { topologyFromJson, topologyToJson, type TopologyJson } from '../topology/topology-codec';

/**
 * The runtime topology the control plane rewrites on every change it makes, like Redis
 * Cluster's nodes.conf: which node is each shard's primary now, which are replicas, and who owns
 * each slot. A restarted proxy reads it back so it routes to the promoted primary, not to the
 * YAML's original one.
 */

/** Written into every state file so a stray JSON file is never taken for one. */
const FORMAT = 'slotproxy-state';
const VERSION = 1;

export type StoredRole = 'primary' | 'replica';

/** One node's role as the control plane last decided it (for people reading the file). */
export interface StoredNode {
  readonly shard: string;
  /** `host:port` (`[ipv6]:port`). */
  readonly node: string;
  readonly role: StoredRole;
}

/** The file's contents. */
export interface StateFileJson {
  readonly format: typeof FORMAT;
  readonly version: typeof VERSION;
  /** ISO time of the write. */
  readonly savedAt: string;
  /** The whole snapshot, slots and migrations included. */
  readonly topology: TopologyJson;
  readonly nodes: readonly StoredNode[];
}

/** A state file that exists but cannot be used; the proxy refuses to guess its roles. */
export class StateFileError extends Error {
  override readonly name = 'StateFileError';

  constructor(
    /** The file's absolute path. */
    readonly file: string,
    reason: string,
  ) {
    super(`state file ${file}: ${reason}`);
  }
}

/** The file's contents for `topology`. Failovers in progress are not stored: they restart. */
export function encodeState(topology: Topology, now: Date = new Date()): string {
  const json = topologyToJson(topology);
  const state: StateFileJson = {
    format: FORMAT,
    version: VERSION,
    savedAt: now.toISOString(),
    topology: { ...json, shards: json.shards.map((shard) => ({ ...shard, isFailingOver: false })) },
    nodes: topology.shards.flatMap((shard) => [
      { shard: shard.name, node: nodeKey(shard.primary), role: 'primary' as const },
      ...shard.replicas.map((replica) => ({ shard: shard.name, node: nodeKey(replica), role: 'replica' as const })),
    ]),
  };
  return `${JSON.stringify(state, null, 2)}\n`;
}

/** Parses and checks a state file's text; the topology it names is validated (every slot owned). */
export function decodeState(file: string, text: string): StateFileJson {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new StateFileError(file, `not JSON (${(err as Error).message})`);
  }
  if (!isObject(value) || value['format'] !== FORMAT) throw new StateFileError(file, `not a ${FORMAT} file`);
  if (value['version'] !== VERSION) throw new StateFileError(file, `version ${String(value['version'])} is not ${VERSION}`);
  const topology = value['topology'];
  if (!isObject(topology) || typeof topology['epoch'] !== 'number' || !Array.isArray(topology['shards'])) {
    throw new StateFileError(file, 'has no topology');
  }
  if (!Array.isArray(topology['slots']) || !Array.isArray(topology['migrations'])) {
    throw new StateFileError(file, 'topology has no slots or migrations');
  }
  topology['shards'].forEach((shard: unknown, i: number) => checkShard(file, shard, i));
  const json = value as unknown as StateFileJson;
  try {
    topologyFromJson(json.topology);
  } catch (err) {
    throw new StateFileError(file, (err as Error).message);
  }
  return json;
}

/** The state file's contents, or null when there is none yet. */
export function readStateFile(file: string): StateFileJson | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new StateFileError(file, (err as Error).message);
  }
  return decodeState(file, text);
}

/**
 * Replaces `file` with `text` so that a reader (or a crash at any moment) sees either the old
 * contents or the new, never a mix: write a temp file in the same folder, fsync it, rename it
 * over the target (atomic within one file system), then fsync the folder so the rename is durable.
 */
export async function writeFileAtomic(file: string, text: string): Promise<void> {
  const dir = path.dirname(file);
  const temp = path.join(dir, `.${path.basename(file)}.${process.pid}.${++tempCounter}.tmp`);
  try {
    const handle = await fs.promises.open(temp, 'w', 0o644);
    try {
      await handle.writeFile(text, 'utf8');
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.promises.rename(temp, file);
  } catch (err) {
    await fs.promises.unlink(temp).catch(() => undefined);
    throw err;
  }
  const folder = await fs.promises.open(dir, 'r');
  try {
    await folder.sync();
  } catch {
    // Some file systems refuse fsync on a folder; the rename has happened either way.
  } finally {
    await folder.close();
  }
}

let tempCounter = 0;

interface Waiter {
  resolve(): void;
  reject(err: unknown): void;
}

/**
 * Writes of one state file, one at a time. A save while a write runs is folded into the next
 * write (only the newest topology matters), and resolves when a write holding it, or a newer
 * snapshot, is on disk. Saving the snapshot the file already holds, or is being written with,
 * writes nothing: the resharding mover writes each snapshot that begins migrations before
 * publishing it, and the control plane then saves every snapshot published.
 */
export class StateFile {
  /** Absolute path of the file. */
  readonly file: string;
  /** The newest topology not yet being written; null when none waits. */
  #pending: Topology | null = null;
  /** Callers waiting for `#pending` to be on disk. */
  #waiters: Waiter[] = [];
  /** The running write loop; null when idle. */
  #draining: Promise<void> | null = null;
  /** The topology the write under way holds, and the callers waiting for it; null when none runs. */
  #writing: { readonly topology: Topology; readonly waiters: Waiter[] } | null = null;
  /** The topology the last write put on disk; null before one, or after a write failed. */
  #written: Topology | null = null;

  constructor(file: string) {
    this.file = file;
  }

  /** Reads the file; null when it does not exist. */
  read(): StateFileJson | null {
    return readStateFile(this.file);
  }

  save(topology: Topology): Promise<void> {
    if (this.#pending === null) {
      const writing = this.#writing;
      if (writing !== null && writing.topology === topology) return new Promise<void>((resolve, reject) => writing.waiters.push({ resolve, reject }));
      if (writing === null && this.#written === topology) return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      this.#pending = topology;
      this.#waiters.push({ resolve, reject });
      this.#draining ??= this.#drain();
    });
  }

  /** Resolves once no write is running or waiting (failed writes included). */
  flush(): Promise<void> {
    return this.#draining ?? Promise.resolve();
  }

  async #drain(): Promise<void> {
    while (this.#pending !== null) {
      const topology = this.#pending;
      const waiters = this.#waiters;
      this.#pending = null;
      this.#waiters = [];
      this.#writing = { topology, waiters };
      try {
        await writeFileAtomic(this.file, encodeState(topology));
        this.#written = topology;
        this.#writing = null;
        for (const waiter of waiters) waiter.resolve();
      } catch (err) {
        this.#written = null;
        this.#writing = null;
        for (const waiter of waiters) waiter.reject(err);
      }
    }
    this.#draining = null;
  }
}

/** Address of a stored node, checked. */
function checkAddress(file: string, value: unknown, where: string): NodeAddress {
  if (!isObject(value) || typeof value['host'] !== 'string' || !Number.isInteger(value['port'])) {
    throw new StateFileError(file, `${where} is not a {host, port} address`);
  }
  return value as unknown as NodeAddress;
}

function checkShard(file: string, value: unknown, index: number): void {
  const where = `topology.shards[${index}]`;
  if (!isObject(value)) throw new StateFileError(file, `${where} is not an object`);
  if (value['index'] !== index) throw new StateFileError(file, `${where}.index is not ${index}`);
  if (typeof value['name'] !== 'string') throw new StateFileError(file, `${where}.name is not a string`);
  checkAddress(file, value['primary'], `${where}.primary`);
  for (const list of ['replicas', 'readReplicas'] as const) {
    const items = value[list];
    if (!Array.isArray(items)) throw new StateFileError(file, `${where}.${list} is not a list`);
    items.forEach((item: unknown, i: number) => checkAddress(file, item, `${where}.${list}[${i}]`));
  }
  if (typeof value['isFailingOver'] !== 'boolean') throw new StateFileError(file, `${where}.isFailingOver is not a boolean`);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
