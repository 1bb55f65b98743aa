import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { findFreePort } from '../../src/cli/local-redis';
import { newIdentity, startDataPath, type RunningProxy } from '../../src/cli/start';
import { loadConfig } from '../../src/config/load-config';
import { topologyFromConfig } from '../../src/control/topology-builder';
import type { Topology } from '../../src/topology/topology';
import { TopologyStore } from '../../src/topology/topology-store';
import { startShards, type Shards } from './redis-harness';

/**
 * Real shards and the proxy's data path in the test's own process, with no control plane: the
 * test publishes the snapshots itself (a slot migrating, or beginning to), to drive the
 * migrating router exactly.
 */
export interface InProcessDataPath {
  readonly shards: Shards;
  readonly proxy: RunningProxy;
  /** The snapshot the YAML gives: every slot stable. */
  readonly base: Topology;
  readonly store: TopologyStore;
  /** Stops the data path and the shards, and removes the folder. */
  close(): Promise<void>;
}

/**
 * Starts `shardCount` shards and a data path over them, listening on a free loopback port, with
 * `settings` (YAML lines) in its config; its first snapshot is `initial(base)`.
 */
export async function startInProcessDataPath(
  settings: readonly string[],
  initial: (base: Topology) => Topology = (base) => base,
  shardCount = 2,
): Promise<InProcessDataPath> {
  const shards = await startShards(shardCount);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'slotproxy-data-path-'));
  try {
    const yaml = [
      `listen: 127.0.0.1:${await findFreePort()}`,
      ...settings,
      'shards:',
      ...shards.primaries.flatMap((p, i) => [`  - name: s${i + 1}`, `    primary: ${p.host}:${p.port}`]),
    ].join('\n');
    const config = loadConfig(yaml, 'data-path.yaml', dir);
    const base = topologyFromConfig(config);
    const store = new TopologyStore(initial(base));
    const proxy = await startDataPath(config, store, newIdentity());
    return {
      shards,
      proxy,
      base,
      store,
      async close() {
        await proxy.close();
        await shards.stopAll();
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await shards.stopAll();
    fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}
