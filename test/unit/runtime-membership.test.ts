import { describe, expect, it } from 'vitest';
import type { ProxyConfig, ShardConfig } from '../../src/config/config-types';
import { DEFAULT_SETTINGS } from '../../src/config/load-config';
import { withRuntimeMembership } from '../../src/control/runtime-membership';
import type { StateFileJson } from '../../src/control/state-file';
import { initialTopology } from '../../src/control/topology-builder';
import type { ShardInfo } from '../../src/topology/topology';
import type { TopologyJson } from '../../src/topology/topology-codec';

const node = (port: number): { host: string; port: number } => ({ host: '127.0.0.1', port });

function shardConfig(name: string, port: number): ShardConfig {
  return { name, primary: node(port), replicas: [node(port + 100)], slots: [] };
}

function config(...shards: ShardConfig[]): ProxyConfig {
  return { ...DEFAULT_SETTINGS, configFile: null, shards };
}

function shardInfo(index: number, name: string, port: number): ShardInfo {
  return { index, name, primary: node(port), replicas: [node(port + 100)], readReplicas: [node(port + 100)], isFailingOver: false };
}

/** a: 0-8191, b: 8192-16383 but slot 9000 migrating b -> c, c: nothing yet, d: nothing. */
function state(): StateFileJson {
  const topology: TopologyJson = {
    epoch: 12,
    shards: [shardInfo(0, 'a', 7001), shardInfo(1, 'b', 7002), shardInfo(2, 'c', 7003), shardInfo(3, 'd', 7004)],
    slots: [[[0, 8191]], [[8192, 16383]], [], []],
    migrations: [{ slot: 9000, from: 1, to: 2 }],
  };
  return { format: 'slotproxy-state', version: 1, savedAt: '2026-11-26T00:00:00.000Z', topology, nodes: [] };
}

describe('runtime membership: the YAML changed shards while the proxy was down', () => {
  it('leaves everything as it is when the YAML and the state file name the same shards, or no state file exists', () => {
    const same = config(shardConfig('a', 7001), shardConfig('b', 7002), shardConfig('c', 7003), shardConfig('d', 7004));
    expect(withRuntimeMembership(same, state())).toEqual({ config: same, state: state(), added: [], removed: [] });
    expect(withRuntimeMembership(same, null)).toEqual({ config: same, state: null, added: [], removed: [] });
  });

  it('leaves a state file of another deployment (no shard name in common) alone', () => {
    const other = config(shardConfig('x', 8001), shardConfig('y', 8002));
    expect(withRuntimeMembership(other, state())).toEqual({ config: other, state: state(), added: [], removed: [] });
  });

  it('adds a new shard with no slots, drops an empty departed one and renumbers, keeps departed ones that own or receive slots', () => {
    // The YAML lists a and e: b (owns slots) and c (receives a migrating slot) are kept to be
    // drained; d owns nothing and is dropped; e joins with no slots.
    const yaml = config(shardConfig('a', 7001), shardConfig('e', 7005));
    const membership = withRuntimeMembership(yaml, state());
    expect(membership.added).toEqual(['e']);
    expect(membership.removed).toEqual(['b', 'c']);
    expect(membership.config.shards.map((s) => s.name)).toEqual(['a', 'e', 'b', 'c']);
    const topology = membership.state!.topology;
    expect(topology.shards.map((s) => [s.index, s.name])).toEqual([[0, 'a'], [1, 'b'], [2, 'c'], [3, 'e']]);
    expect(topology.shards[3]).toMatchObject({ primary: node(7005), replicas: [node(7105)], isFailingOver: false });
    expect(topology.slots).toEqual([[[0, 8191]], [[8192, 16383]], [], []]);
    expect(topology.migrations).toEqual([{ slot: 9000, from: 1, to: 2 }]);
    expect(topology.epoch).toBe(12);

    // The proxy's first snapshot comes from this state (in the config's order), every slot
    // where the keys are.
    const initial = initialTopology(membership.config, membership.state);
    expect(initial.source).toBe('state-file');
    const names = initial.topology.shards.map((s) => s.name);
    expect(names).toEqual(['a', 'e', 'b', 'c']);
    expect(names[initial.topology.slotOwner[0]!]).toBe('a');
    expect(names[initial.topology.slotOwner[16383]!]).toBe('b');
    expect(initial.topology.migrations.get(9000)).toEqual({ from: names.indexOf('b'), to: names.indexOf('c') });
  });

  it('renumbers the migrations when an empty shard before them is dropped', () => {
    const stored = state();
    // d moves first in the list: dropping it shifts a, b and c down by one.
    const topology: TopologyJson = {
      ...stored.topology,
      shards: [shardInfo(0, 'd', 7004), shardInfo(1, 'a', 7001), shardInfo(2, 'b', 7002), shardInfo(3, 'c', 7003)],
      slots: [[], [[0, 8191]], [[8192, 16383]], []],
      migrations: [{ slot: 9000, from: 2, to: 3 }],
    };
    const yaml = config(shardConfig('a', 7001), shardConfig('b', 7002), shardConfig('c', 7003));
    const membership = withRuntimeMembership(yaml, { ...stored, topology });
    expect(membership.added).toEqual([]);
    expect(membership.removed).toEqual([]);
    const after = membership.state!.topology;
    expect(after.shards.map((s) => [s.index, s.name])).toEqual([[0, 'a'], [1, 'b'], [2, 'c']]);
    expect(after.slots).toEqual([[[0, 8191]], [[8192, 16383]], []]);
    expect(after.migrations).toEqual([{ slot: 9000, from: 1, to: 2 }]);
  });
});
