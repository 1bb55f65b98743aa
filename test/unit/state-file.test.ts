import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { ProxyConfig } from '../../src/config/config-types';
import { DEFAULT_SETTINGS } from '../../src/config/load-config';
import { decodeState, encodeState, readStateFile, StateFile, StateFileError, writeFileAtomic } from '../../src/control/state-file';
import { initialTopology, topologyFromConfig } from '../../src/control/topology-builder';
import { Topology, type ShardInfo } from '../../src/topology/topology';

const A = { host: '127.0.0.1', port: 7001 };
const A1 = { host: '127.0.0.1', port: 7101 };
const B = { host: '127.0.0.1', port: 7002 };
const B1 = { host: '127.0.0.1', port: 7102 };
const B2 = { host: '127.0.0.1', port: 7202 };

function config(overrides: Partial<ProxyConfig> = {}): ProxyConfig {
  return {
    ...DEFAULT_SETTINGS,
    configFile: null,
    shards: [
      { name: 'a', primary: A, replicas: [A1], slots: [[0, 8191]] },
      { name: 'b', primary: B, replicas: [B1, B2], slots: [[8192, 16383]] },
    ],
    ...overrides,
  };
}

/** The topology after shard b's primary B failed over to B1, slot 100 moved to b, slot 200 migrating. */
function afterFailover(): Topology {
  const start = topologyFromConfig(config());
  const slotOwner = start.slotOwner.slice();
  slotOwner[100] = 1;
  const shards: ShardInfo[] = [
    start.shards[0]!,
    { index: 1, name: 'b', primary: B1, replicas: [B2, B], readReplicas: [B2], isFailingOver: false },
  ];
  return new Topology(7, shards, slotOwner, new Map([[200, { from: 0, to: 1 }]]));
}

let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'slotproxy-state-'));
});
afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('state file: read and write', () => {
  it('round-trips the topology, slots, migrations and node roles', async () => {
    const file = path.join(dir, 'state.json');
    await new StateFile(file).save(afterFailover());
    const state = readStateFile(file)!;
    expect(state.format).toBe('slotproxy-state');
    expect(state.topology.epoch).toBe(7);
    expect(state.topology.shards[1]).toMatchObject({ primary: B1, replicas: [B2, B], readReplicas: [B2] });
    expect(state.topology.slots[1]).toEqual([[100, 100], [8192, 16383]]);
    expect(state.topology.migrations).toEqual([{ slot: 200, from: 0, to: 1 }]);
    expect(state.nodes).toEqual([
      { shard: 'a', node: '127.0.0.1:7001', role: 'primary' },
      { shard: 'a', node: '127.0.0.1:7101', role: 'replica' },
      { shard: 'b', node: '127.0.0.1:7102', role: 'primary' },
      { shard: 'b', node: '127.0.0.1:7202', role: 'replica' },
      { shard: 'b', node: '127.0.0.1:7002', role: 'replica' },
    ]);
  });

  it('never stores a failover in progress', () => {
    const t = afterFailover();
    const failing = new Topology(8, [t.shards[0]!, { ...t.shards[1]!, isFailingOver: true }], t.slotOwner, t.migrations);
    expect(decodeState('x', encodeState(failing)).topology.shards[1]!.isFailingOver).toBe(false);
  });

  it('returns null when the file does not exist', () => {
    expect(readStateFile(path.join(dir, 'missing.json'))).toBeNull();
  });

  it.each([
    ['not JSON', '{'],
    ['another JSON file', '{"hello": 1}'],
    ['a newer version', JSON.stringify({ format: 'slotproxy-state', version: 2 })],
    ['a shard without a primary', encodeState(afterFailover()).replace('"primary": {', '"primaryX": {')],
    ['a slot without an owner', encodeState(afterFailover()).replace('8191', '8190')],
  ])('refuses %s with a StateFileError naming the file', (_what, text) => {
    const file = path.join(dir, 'bad.json');
    fs.writeFileSync(file, text);
    expect(() => readStateFile(file)).toThrow(StateFileError);
    expect(() => readStateFile(file)).toThrow(file);
  });

  it('writes atomically: a reader sees the old or the new file, never a mix, and no temp file stays', async () => {
    const file = path.join(dir, 'state.json');
    const big = (n: number): string => `${JSON.stringify({ n, pad: 'x'.repeat(50_000) })}\n`;
    await writeFileAtomic(file, big(0));
    let isWriting = true;
    const seen = new Set<number>();
    const writer = (async () => {
      for (let n = 1; n <= 12; n++) await writeFileAtomic(file, big(n));
      isWriting = false;
    })();
    while (isWriting) {
      const parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as { n: number; pad: string };
      expect(parsed.pad.length).toBe(50_000);
      seen.add(parsed.n);
      await new Promise((resolve) => setImmediate(resolve));
    }
    await writer;
    expect(JSON.parse(fs.readFileSync(file, 'utf8')).n).toBe(12);
    expect(seen.size).toBeGreaterThan(1);
    expect(fs.readdirSync(dir)).toEqual(['state.json']);
  });

  it('a failed write leaves the previous file and no temp file', async () => {
    const file = path.join(dir, 'state.json');
    await writeFileAtomic(file, 'old\n');
    // A folder where the file should be makes the rename fail.
    const blocked = path.join(dir, 'blocked');
    fs.mkdirSync(path.join(blocked, 'x'), { recursive: true });
    await expect(writeFileAtomic(blocked, 'new\n')).rejects.toThrow();
    expect(fs.readFileSync(file, 'utf8')).toBe('old\n');
    expect(fs.readdirSync(dir).sort()).toEqual(['blocked', 'state.json']);
  });

  it('folds saves made during a write into one later write of the newest topology', async () => {
    const file = path.join(dir, 'state.json');
    const states = new StateFile(file);
    const t = afterFailover();
    const next = (epoch: number): Topology => new Topology(epoch, t.shards, t.slotOwner, t.migrations);
    const saves = [states.save(next(10)), states.save(next(11)), states.save(next(12)), states.save(next(13))];
    await Promise.all(saves);
    await states.flush();
    expect(readStateFile(file)!.topology.epoch).toBe(13);
  });

  it('writes a snapshot once, however often it is saved (before it is published, and when it is)', async () => {
    const file = path.join(dir, 'state.json');
    const states = new StateFile(file);
    const t = afterFailover();
    const renames = vi.spyOn(fs.promises, 'rename');
    try {
      await states.save(t);
      await states.save(t);
      expect(renames).toHaveBeenCalledTimes(1);
      // Saved again while its own write runs: that write answers both.
      const next = new Topology(8, t.shards, t.slotOwner, t.migrations);
      await Promise.all([states.save(next), states.save(next)]);
      expect(renames).toHaveBeenCalledTimes(2);
      expect(readStateFile(file)!.topology.epoch).toBe(8);
      // An older snapshot saved again after a newer one is written again: the file holds the last saved.
      await states.save(t);
      expect(renames).toHaveBeenCalledTimes(3);
      expect(readStateFile(file)!.topology.epoch).toBe(7);
    } finally {
      renames.mockRestore();
    }
  });

  it('writes a snapshot again after its write failed', async () => {
    const folder = path.join(dir, 'later');
    const states = new StateFile(path.join(folder, 'state.json'));
    const t = afterFailover();
    await expect(states.save(t)).rejects.toThrow(/ENOENT/);
    fs.mkdirSync(folder);
    await states.save(t);
    expect(readStateFile(path.join(folder, 'state.json'))!.topology.epoch).toBe(7);
  });

  it('rejects the saves of a write that failed', async () => {
    const states = new StateFile(path.join(dir, 'no-such-folder', 'state.json'));
    await expect(states.save(afterFailover())).rejects.toThrow(/ENOENT/);
  });
});

describe('state file: precedence over the YAML', () => {
  it('without a state file the YAML is the topology', () => {
    const first = initialTopology(config(), null);
    expect(first.source).toBe('config');
    expect(first.topology.shards[1]!.primary).toEqual(B);
  });

  it('with one for the same shards, its roles, slots, migrations and epoch win', () => {
    const state = decodeState('x', encodeState(afterFailover()));
    const first = initialTopology(config(), state);
    expect(first.source).toBe('state-file');
    expect(first.notes).toEqual([]);
    expect(first.topology.epoch).toBe(7);
    expect(first.topology.shards[1]).toMatchObject({ primary: B1, replicas: [B2, B], readReplicas: [B2], isFailingOver: false });
    expect(first.topology.slotOwner[100]).toBe(1);
    expect(first.topology.slotOwner[101]).toBe(0);
    expect(first.topology.migrations.get(200)).toEqual({ from: 0, to: 1 });
  });

  it('matches shards by name when the YAML lists them in another order', () => {
    const state = decodeState('x', encodeState(afterFailover()));
    const yaml = config();
    const first = initialTopology({ ...yaml, shards: [yaml.shards[1]!, yaml.shards[0]!] }, state);
    expect(first.topology.shards.map((s) => s.name)).toEqual(['b', 'a']);
    expect(first.topology.shards[0]!.primary).toEqual(B1);
    expect(first.topology.slotOwner[100]).toBe(0);
    expect(first.topology.slotOwner[9000]).toBe(0);
    expect(first.topology.slotOwner[0]).toBe(1);
    expect(first.topology.migrations.get(200)).toEqual({ from: 1, to: 0 });
  });

  it('ignores a state file for other shard names', () => {
    const state = decodeState('x', encodeState(afterFailover()));
    const yaml = config();
    const renamed = { ...yaml, shards: [yaml.shards[0]!, { ...yaml.shards[1]!, name: 'c' }] };
    const first = initialTopology(renamed, state);
    expect(first.source).toBe('config');
    expect(first.notes[0]).toMatch(/state file names shards \[a, b\], the YAML \[a, c\]/);
    expect(first.topology.shards[1]!.primary).toEqual(B);
  });

  it('keeps the YAML authoritative on membership: dropped nodes go, new nodes join as replicas', () => {
    const state = decodeState('x', encodeState(afterFailover()));
    const B3 = { host: '127.0.0.1', port: 7302 };
    const yaml = config();
    const changed = { ...yaml, shards: [yaml.shards[0]!, { ...yaml.shards[1]!, replicas: [B1, B3] }] };
    const first = initialTopology(changed, state);
    expect(first.topology.shards[1]).toMatchObject({ primary: B1, replicas: [B, B3], readReplicas: [] });
    expect(first.notes.join('\n')).toMatch(/7202 is no longer in the YAML/);
    expect(first.notes.join('\n')).toMatch(/7302 is new in the YAML/);
  });

  it('falls back to the YAML primary when the stored one is no longer listed', () => {
    const state = decodeState('x', encodeState(afterFailover()));
    const yaml = config();
    const changed = { ...yaml, shards: [yaml.shards[0]!, { ...yaml.shards[1]!, replicas: [B2] }] };
    const first = initialTopology(changed, state);
    expect(first.topology.shards[1]).toMatchObject({ primary: B, replicas: [B2] });
    expect(first.notes.join('\n')).toMatch(/stored primary 127.0.0.1:7102 is not in the YAML/);
  });
});
