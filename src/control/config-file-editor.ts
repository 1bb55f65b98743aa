import * as fs from 'node:fs';
import { isMap, isSeq, parseDocument, type Document, type YAMLMap, type YAMLSeq } from 'yaml';
import { formatAddress } from '../config/address';
import type { Address } from '../config/config-types';
import { writeFileAtomic } from './state-file';

/**
 * Keeps the YAML's shard list true when the proxy adds or removes a shard itself (`slotproxy
 * add-shard` / `remove-shard`), so the next start finds the same shards there as in the state
 * file. Comments and layout are kept (yaml's Document API); the file is replaced atomically.
 *
 * A YAML that lists `slots:` must list them for every shard and cover every slot, so there the
 * slot lists are rewritten to the proxy's current ownership (the state file is what a restart
 * routes by; the YAML's lists stay valid and truthful).
 */

/** A shard to write into the YAML. */
export interface ShardEntry {
  readonly name: string;
  readonly primary: Address;
  readonly replicas: readonly Address[];
}

/** The YAML cannot be edited (unreadable, or not the shape the loader accepts). */
export class ConfigEditError extends Error {
  override readonly name = 'ConfigEditError';
}

/** Appends `shard` (no-op when a shard of that name is listed already). */
export async function addShardToConfigFile(file: string, shard: ShardEntry, slotsByShard: ReadonlyMap<string, readonly (readonly [number, number])[]>): Promise<boolean> {
  const { doc, shards } = read(file);
  if (items(shards).some((item) => item.get('name') === shard.name)) return false;
  const entry: Record<string, unknown> = { name: shard.name, primary: formatAddress(shard.primary) };
  if (shard.replicas.length > 0) entry['replicas'] = shard.replicas.map((r) => formatAddress(r));
  if (listsSlots(shards)) entry['slots'] = [];
  shards.add(doc.createNode(entry));
  if (listsSlots(shards)) writeSlots(doc, shards, slotsByShard);
  await writeFileAtomic(file, doc.toString());
  return true;
}

/** Removes the shard named `name` (no-op when it is not listed). */
export async function removeShardFromConfigFile(file: string, name: string, slotsByShard: ReadonlyMap<string, readonly (readonly [number, number])[]>): Promise<boolean> {
  const { doc, shards } = read(file);
  const index = items(shards).findIndex((item) => item.get('name') === name);
  if (index < 0) return false;
  shards.delete(index);
  if (listsSlots(shards)) writeSlots(doc, shards, slotsByShard);
  await writeFileAtomic(file, doc.toString());
  return true;
}

function read(file: string): { doc: Document; shards: YAMLSeq } {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigEditError(`cannot read ${file}: ${(err as Error).message}`);
  }
  const doc = parseDocument(text);
  if (doc.errors.length > 0) throw new ConfigEditError(`${file} is not valid YAML: ${doc.errors[0]!.message}`);
  const shards = doc.get('shards', true);
  if (!isSeq(shards)) throw new ConfigEditError(`${file} has no shards list`);
  return { doc, shards };
}

function items(shards: YAMLSeq): YAMLMap[] {
  return shards.items.filter((item): item is YAMLMap => isMap(item));
}

function listsSlots(shards: YAMLSeq): boolean {
  return items(shards).some((item) => item.has('slots'));
}

/**
 * Every listed shard's `slots:` from the proxy's ownership, as "a-b" ranges. Only when the YAML
 * lists exactly the proxy's shards: otherwise it holds an operator's edit not taken up yet (a
 * shard removed while a plan ran), and rewriting the slots of the listed shards alone would
 * leave the slots of an unlisted one to no shard, a file that no longer loads.
 */
function writeSlots(doc: Document, shards: YAMLSeq, slotsByShard: ReadonlyMap<string, readonly (readonly [number, number])[]>): void {
  const listed = items(shards).map((item) => String(item.get('name')));
  if (listed.length !== slotsByShard.size || !listed.every((name) => slotsByShard.has(name))) return;
  for (const item of items(shards)) {
    const ranges = slotsByShard.get(String(item.get('name'))) ?? [];
    const node = doc.createNode(ranges.map(([from, to]) => (from === to ? String(from) : `${from}-${to}`)));
    node.flow = true;
    item.set('slots', node);
  }
}

/** Brings the YAML's `slots:` lists to the proxy's ownership, when the YAML lists slots at all. */
export async function writeSlotsToConfigFile(file: string, slotsByShard: ReadonlyMap<string, readonly (readonly [number, number])[]>): Promise<boolean> {
  const { doc, shards } = read(file);
  if (!listsSlots(shards)) return false;
  const before = doc.toString();
  writeSlots(doc, shards, slotsByShard);
  const after = doc.toString();
  if (after === before) return false;
  await writeFileAtomic(file, after);
  return true;
}

/** Parses and writes YAML text in memory (nothing is saved): the editor's code paths, warmed. */
export function rewriteForWarmUp(text: string): string {
  const doc = parseDocument(text);
  const shards = doc.get('shards', true);
  if (isSeq(shards)) {
    const node = doc.createNode({ name: 'warm-up', primary: '127.0.0.1:1', slots: ['0-1'] });
    node.flow = false;
    shards.add(node);
  }
  return doc.toString();
}
