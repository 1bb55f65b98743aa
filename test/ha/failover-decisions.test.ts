import { describe, expect, it } from 'vitest';
import type { NodeReport } from '../../src/control/health-checker';
import { Failover, type NodeControl } from '../../src/control/failover';
import { Logger } from '../../src/log/logger';
import { failoversTotal } from '../../src/metrics/metrics';
import { nodeKey, SLOT_COUNT, Topology, type NodeAddress, type ShardInfo } from '../../src/topology/topology';
import { TopologyStore } from '../../src/topology/topology-store';

/**
 * Failover's decisions with a fake health checker: no sockets, no timers beyond the test's.
 * Shard "a": primary P, replicas R1, R2 (configured order).
 */

const P = { host: '127.0.0.11', port: 7379 };
const R1 = { host: '127.0.0.12', port: 7379 };
const R2 = { host: '127.0.0.13', port: 7379 };
const NODE_TIMEOUT_MS = 1000;

type Partial = Omit<NodeReport, 'address' | 'key' | 'lastOkAt' | 'failedAt' | 'failReason' | 'offset' | 'masterLinkStatus' | 'following'> &
  Readonly<{ offset?: number; masterLinkStatus?: 'up' | 'down' | null; following?: NodeAddress | null }>;

class FakeNodes implements NodeControl {
  readonly reports = new Map<string, NodeReport>();
  readonly commands: string[] = [];
  /** Commands that fail: `host:port COMMAND...` -> error message. */
  readonly failing = new Map<string, string>();

  set(node: NodeAddress, report: Partial): NodeReport {
    const full: NodeReport = {
      address: node,
      key: nodeKey(node),
      offset: 0,
      masterLinkStatus: null,
      following: null,
      lastOkAt: report.state === 'up' ? Date.now() + 1 : 0,
      failedAt: report.state === 'failed' ? Date.now() : 0,
      failReason: report.state === 'failed' ? 'test' : null,
      ...report,
    };
    this.reports.set(full.key, full);
    return full;
  }

  replica(node: NodeAddress, of: NodeAddress, offset: number, link: 'up' | 'down' = 'up'): NodeReport {
    return this.set(node, { state: 'up', role: 'slave', following: of, offset, masterLinkStatus: link });
  }

  primary(node: NodeAddress, offset = 0): NodeReport {
    return this.set(node, { state: 'up', role: 'master', offset });
  }

  failed(node: NodeAddress): NodeReport {
    return this.set(node, { state: 'failed', role: 'master' });
  }

  report(node: NodeAddress): NodeReport | undefined {
    return this.reports.get(nodeKey(node));
  }

  async refresh(node: NodeAddress): Promise<NodeReport> {
    const report = this.report(node);
    if (report === undefined || report.state !== 'up') throw new Error(`${nodeKey(node)} does not answer`);
    return report;
  }

  async command(node: NodeAddress, args: readonly string[]): Promise<unknown> {
    const text = `${nodeKey(node)} ${args.join(' ')}`;
    this.commands.push(text);
    const error = this.failing.get(text);
    if (error !== undefined) throw new Error(error);
    // The node does what it was told, as the next probe would show.
    const report = this.report(node)!;
    if (args[0] === 'REPLICAOF' && args[1] === 'NO') this.set(node, { state: 'up', role: 'master', offset: report.offset });
    else if (args[0] === 'REPLICAOF') {
      this.set(node, { state: 'up', role: 'slave', following: { host: args[1]!, port: Number(args[2]) }, offset: report.offset, masterLinkStatus: 'down' });
    }
    return 'OK';
  }
}

function setup(replicas: readonly NodeAddress[] = [R1, R2]): { store: TopologyStore; nodes: FakeNodes; failover: Failover; published: Topology[] } {
  const shard: ShardInfo = { index: 0, name: 'a', primary: P, replicas, readReplicas: replicas, isFailingOver: false };
  const store = new TopologyStore(new Topology(1, [shard], new Uint16Array(SLOT_COUNT)));
  const published: Topology[] = [];
  store.on('change', (next) => published.push(next));
  const nodes = new FakeNodes();
  const failover = new Failover(store, nodes, { nodeTimeoutMs: NODE_TIMEOUT_MS }, new Logger('error'));
  failover.begin();
  return { store, nodes, failover, published };
}

async function reconcile(failover: Failover): Promise<void> {
  failover.reconcileAll();
  await failover.idle();
}

async function outcome(name: string): Promise<number> {
  const { values } = await failoversTotal.get();
  return values.find((v) => v.labels['shard'] === 'a' && v.labels['outcome'] === name)?.value ?? 0;
}

describe('Failover decisions', () => {
  it('promotes the replica with the greatest offset, re-points the other, keeps the old primary as an unreadable replica', async () => {
    const { store, nodes, failover, published } = setup();
    nodes.failed(P);
    nodes.replica(R1, P, 100);
    nodes.replica(R2, P, 250);
    await reconcile(failover);
    // First the shard is marked failing over (commands wait), then the promotion.
    expect(published[0]!.shards[0]!.isFailingOver).toBe(true);
    expect(published[0]!.shards[0]!.primary).toEqual(P);
    const shard = store.current.shards[0]!;
    expect(shard).toMatchObject({ primary: R2, replicas: [R1, P], readReplicas: [R1], isFailingOver: false });
    expect(nodes.commands).toEqual([`${nodeKey(R2)} REPLICAOF NO ONE`, `${nodeKey(R1)} REPLICAOF 127.0.0.13 7379`]);
  });

  it('applies a promotion to its own shard when a shard before it is removed meanwhile (shards renumber)', async () => {
    // Shards "z" (index 0) and "a" (index 1). a's primary fails; while REPLICAOF NO ONE is on
    // its way, z is dropped (as remove-shard does) and a becomes index 0.
    const Z = { host: '127.0.0.21', port: 7379 };
    const z: ShardInfo = { index: 0, name: 'z', primary: Z, replicas: [], readReplicas: [], isFailingOver: false };
    const a: ShardInfo = { index: 1, name: 'a', primary: P, replicas: [R1], readReplicas: [R1], isFailingOver: false };
    const store = new TopologyStore(new Topology(1, [z, a], new Uint16Array(SLOT_COUNT)));
    const nodes = new FakeNodes();
    nodes.primary(Z);
    nodes.failed(P);
    nodes.replica(R1, P, 100);
    const command = nodes.command.bind(nodes);
    let release: () => void = () => undefined;
    const held = new Promise<void>((resolve) => (release = resolve));
    nodes.command = async (node, args) => {
      if (args[0] === 'REPLICAOF' && args[1] === 'NO') await held;
      return command(node, args);
    };
    const failover = new Failover(store, nodes, { nodeTimeoutMs: NODE_TIMEOUT_MS }, new Logger('error'));
    failover.begin();
    await new Promise((resolve) => setTimeout(resolve, 20));
    const current = store.current;
    store.publish(new Topology(current.epoch + 1, [{ ...current.shards[1]!, index: 0 }], current.slotOwner));
    release();
    await failover.idle();
    expect(store.current.shards).toHaveLength(1);
    expect(store.current.shards[0]).toMatchObject({ name: 'a', index: 0, primary: R1, replicas: [P], isFailingOver: false });
  });

  it('breaks an offset tie by configured order', async () => {
    const { store, nodes, failover } = setup();
    nodes.failed(P);
    nodes.replica(R1, P, 300);
    nodes.replica(R2, P, 300);
    await reconcile(failover);
    expect(store.current.shards[0]!.primary).toEqual(R1);
  });

  it('never promotes a failed replica or one that answers as a primary', async () => {
    const { store, nodes, failover } = setup();
    nodes.failed(P);
    nodes.failed(R1);
    nodes.primary(R2, 999);
    await reconcile(failover);
    expect(store.current.shards[0]).toMatchObject({ primary: P, isFailingOver: false });
    expect(nodes.commands).toEqual([]);
  });

  it('with no candidate: the shard is not left failing over (commands fail fast), counted once, retried when a replica is healthy', async () => {
    const { store, nodes, failover } = setup([R1]);
    const before = await outcome('no_candidate');
    nodes.failed(P);
    nodes.failed(R1);
    await reconcile(failover);
    await reconcile(failover);
    expect(store.current.shards[0]).toMatchObject({ primary: P, isFailingOver: false });
    expect((await outcome('no_candidate')) - before).toBe(1);
    nodes.replica(R1, P, 10, 'down');
    await reconcile(failover);
    expect(store.current.shards[0]).toMatchObject({ primary: R1, replicas: [P], readReplicas: [] });
  });

  it('a failed promotion is counted as an error, the shard stops failing over, and the next pass retries', async () => {
    const { store, nodes, failover } = setup([R1]);
    const before = await outcome('error');
    nodes.failed(P);
    nodes.replica(R1, P, 10);
    nodes.failing.set(`${nodeKey(R1)} REPLICAOF NO ONE`, 'ERR busy');
    await reconcile(failover);
    expect(store.current.shards[0]).toMatchObject({ primary: P, isFailingOver: false });
    expect((await outcome('error')) - before).toBe(1);
    nodes.failing.clear();
    await reconcile(failover);
    expect(store.current.shards[0]!.primary).toEqual(R1);
  });

  it('cancels the failover when the primary answers again before a promotion', async () => {
    const { store, nodes, failover } = setup([R1]);
    nodes.failed(P);
    nodes.replica(R1, P, 10);
    nodes.refresh = async (node) => {
      nodes.primary(P);
      return nodes.report(node)!;
    };
    await reconcile(failover);
    expect(store.current.shards[0]).toMatchObject({ primary: P, isFailingOver: false });
    expect(nodes.commands).toEqual([]);
  });

  it('demotes a returning old primary before it is readable, and makes it readable only once linked', async () => {
    const { store, nodes, failover } = setup([R1]);
    nodes.failed(P);
    nodes.replica(R1, P, 10);
    await reconcile(failover);
    expect(store.current.shards[0]).toMatchObject({ primary: R1, replicas: [P], readReplicas: [] });
    await new Promise((resolve) => setTimeout(resolve, 5));
    // The old primary resumes, still believing it is a primary.
    nodes.primary(R1, 20);
    nodes.primary(P, 15);
    await reconcile(failover);
    expect(nodes.commands.at(-1)).toBe(`${nodeKey(P)} REPLICAOF 127.0.0.12 7379`);
    expect(store.current.shards[0]!.readReplicas).toEqual([]);
    // Not sent again while it syncs.
    const sent = nodes.commands.length;
    nodes.replica(P, R1, 0, 'down');
    await reconcile(failover);
    expect(nodes.commands).toHaveLength(sent);
    expect(store.current.shards[0]!.readReplicas).toEqual([]);
    nodes.replica(P, R1, 20, 'up');
    await reconcile(failover);
    expect(store.current.shards[0]!.readReplicas).toEqual([P]);
  });

  it('re-points a replica that follows another node; drops a failed replica from the readable ones', async () => {
    const { store, nodes, failover } = setup();
    nodes.primary(P);
    nodes.replica(R1, R2, 5);
    nodes.replica(R2, P, 5);
    await reconcile(failover);
    expect(nodes.commands).toEqual([`${nodeKey(R1)} REPLICAOF 127.0.0.11 7379`]);
    expect(store.current.shards[0]!.readReplicas).toEqual([R2]);
    nodes.failed(R2);
    nodes.replica(R1, P, 5);
    await reconcile(failover);
    expect(store.current.shards[0]!.readReplicas).toEqual([R1]);
  });

  it('keeps a replica whose link went down readable until the primary answers after it (the primary may be dying)', async () => {
    const { store, nodes, failover } = setup([R1]);
    nodes.primary(P);
    nodes.replica(R1, P, 5);
    await reconcile(failover);
    expect(store.current.shards[0]!.readReplicas).toEqual([R1]);
    await new Promise((resolve) => setTimeout(resolve, 2));
    nodes.replica(R1, P, 5, 'down');
    await reconcile(failover);
    expect(store.current.shards[0]!.readReplicas).toEqual([R1]);
    await new Promise((resolve) => setTimeout(resolve, 2));
    nodes.primary(P);
    await reconcile(failover);
    expect(store.current.shards[0]!.readReplicas).toEqual([]);
    // Not readable again until linked.
    nodes.replica(R1, P, 5, 'down');
    await reconcile(failover);
    expect(store.current.shards[0]!.readReplicas).toEqual([]);
  });

  it('adopts the node the recorded primary replicates from when that node is a primary of the shard', async () => {
    const { store, nodes, failover } = setup([R1]);
    nodes.replica(P, R1, 40);
    nodes.primary(R1, 40);
    await reconcile(failover);
    expect(store.current.shards[0]).toMatchObject({ primary: R1, replicas: [P] });
    expect(nodes.commands).toEqual([]);
  });

  it('does not act on reports older than its own last role change', async () => {
    const { store, nodes, failover } = setup([R1]);
    // Stale pictures from before a promotion: R1 still "follows" P, P still "a primary".
    const staleP = nodes.failed(P);
    nodes.replica(R1, P, 10);
    await reconcile(failover);
    expect(store.current.shards[0]!.primary).toEqual(R1);
    nodes.reports.set(staleP.key, { ...staleP, state: 'up', role: 'master', lastOkAt: 1 });
    const sent = nodes.commands.length;
    await reconcile(failover);
    expect(nodes.commands).toHaveLength(sent);
  });
});
