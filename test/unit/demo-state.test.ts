import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { carriedState, type DemoTopology } from '../../src/cli/demo';
import { decodeState, encodeState } from '../../src/control/state-file';
import { topologyFromJson } from '../../src/topology/topology-codec';
import { SLOT_COUNT, Topology, type ShardInfo } from '../../src/topology/topology';

/**
 * `slotproxy demo` restarted after a reshard: its nodes keep their data, so the slot table (and
 * the moves under way) must come back with them, on this run's node addresses.
 */

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'slotproxy-demo-state-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const node = (port: number): { host: string; port: number } => ({ host: '127.0.0.1', port });

const thisRun: DemoTopology = {
  listen: node(7000),
  metrics: node(9121),
  admin: node(9122),
  shards: ['s1', 's2', 's3'].map((name, i) => ({ name, primary: node(7001 + i), replica: node(7004 + i) })),
};

/** An earlier run's snapshot: other ports, s1's replica promoted, slots 0-99 moved to s3, slot 200 moving s1 -> s2. */
function earlierState(names: readonly string[]): string {
  const shards: ShardInfo[] = names.map((name, index) => ({
    index,
    name,
    primary: node(index === 0 ? 8104 : 8101 + index),
    replicas: [node(index === 0 ? 8101 : 8104 + index)],
    readReplicas: [],
    isFailingOver: false,
  }));
  const owner = new Uint16Array(SLOT_COUNT);
  const per = Math.ceil(SLOT_COUNT / names.length);
  for (let slot = 0; slot < SLOT_COUNT; slot++) owner[slot] = Math.floor(slot / per);
  owner.fill(2, 0, 100);
  return encodeState(new Topology(41, shards, owner, new Map([[200, { from: 0, to: 1 }]])));
}

function writeState(name: string, text: string): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, text);
  return file;
}

describe('the demo\'s state file across restarts', () => {
  it('keeps the slot table and the moves under way, on this run\'s nodes and roles', () => {
    const file = writeState('same-shards.json', earlierState(['s1', 's2', 's3']));
    const carried = carriedState(file, thisRun);
    expect(carried).not.toBeNull();
    // As the demo writes it and the proxy reads it back.
    const topology = topologyFromJson(decodeState(file, encodeState(carried!)).topology);
    expect(topology.epoch).toBe(42);
    expect(Array.from(topology.slotOwner.subarray(0, 100)).every((owner) => owner === 2)).toBe(true);
    expect(topology.slotOwner[100]).toBe(0);
    expect(topology.slotOwner[SLOT_COUNT - 1]).toBe(2);
    expect([...topology.migrations]).toEqual([[200, { from: 0, to: 1 }]]);
    expect(topology.shards.map((s) => [s.name, s.primary.port, s.replicas.map((r) => r.port), s.readReplicas.map((r) => r.port)])).toEqual([
      ['s1', 7001, [7004], [7004]],
      ['s2', 7002, [7005], [7005]],
      ['s3', 7003, [7006], [7006]],
    ]);
  });

  it('gives up on a state file of other shards (a shard added since), or none, or a broken one', () => {
    expect(carriedState(writeState('four-shards.json', earlierState(['s1', 's2', 's3', 's4'])), thisRun)).toBeNull();
    expect(carriedState(path.join(dir, 'missing.json'), thisRun)).toBeNull();
    expect(carriedState(writeState('broken.json', '{"format":'), thisRun)).toBeNull();
  });
});
