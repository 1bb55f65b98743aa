import Redis from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { findFreePort } from '../../src/cli/local-redis';
import { DATA_PATH_METRICS } from '../../src/metrics/exporter';
import type { TopologyReport } from '../../src/metrics/metrics-server';
import { startProxyProcess, type ProxyProcess } from '../helpers/proxy-harness';
import { startShards, type Shards } from '../helpers/redis-harness';
import { waitFor } from './prometheus-harness';

/**
 * The admin HTTP endpoint of `dist/cli.js start` with `metrics:` set, over 3 shards with one
 * replica each: /healthz, /readyz (also while a shard has no reachable primary), /topology's
 * JSON, /metrics in the text format, and /metrics summed over `workers: 2`.
 */

const NODE_TIMEOUT_MS = 2_000;
const SHARD_NAMES = ['s1', 's2', 's3'] as const;
const PROMETHEUS_TEXT = 'text/plain; version=0.0.4; charset=utf-8';

let shards: Shards;

async function get(url: string, init?: RequestInit): Promise<{ status: number; type: string | null; body: string }> {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(5_000) });
  return { status: res.status, type: res.headers.get('content-type'), body: await res.text() };
}

/** The value of one series line of the text format, or undefined when absent. */
function sampleOf(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

function connect(port: number): Redis {
  const client = new Redis({ host: '127.0.0.1', port, protocol: 2, maxRetriesPerRequest: 1, retryStrategy: () => null, lazyConnect: true });
  client.on('error', () => undefined);
  return client;
}

async function startProxy(extra: Record<string, unknown> = {}): Promise<{ proxy: ProxyProcess; admin: string }> {
  const metricsPort = await findFreePort();
  const proxy = await startProxyProcess({
    shards: shards.primaries.map((primary, i) => ({ name: SHARD_NAMES[i]!, primary, replicas: shards.replicas[i]! })),
    extra: { metrics: `127.0.0.1:${metricsPort}`, nodeTimeoutMs: NODE_TIMEOUT_MS, ...extra },
  });
  return { proxy, admin: `http://127.0.0.1:${metricsPort}` };
}

beforeAll(async () => {
  shards = await startShards(3, { replicas: 1 });
});

afterAll(async () => {
  await shards?.stopAll();
});

describe('admin endpoint, one process', () => {
  let proxy: ProxyProcess;
  let admin: string;

  beforeAll(async () => {
    ({ proxy, admin } = await startProxy());
  });

  afterAll(async () => {
    await proxy?.stop();
  });

  afterEach(() => {
    // A test that failed mid-way must not leave nodes frozen for the next one.
    for (const node of [...shards.primaries, ...shards.replicas.flat()]) if (node.isRunning) node.kill('SIGCONT');
  });

  it('/healthz answers 200 ok', async () => {
    const res = await get(`${admin}/healthz`);
    expect(res).toMatchObject({ status: 200, body: 'ok\n' });
    expect(res.type).toMatch(/^text\/plain/);
  });

  it('/readyz answers 200 once every primary is healthy', async () => {
    const res = await waitFor('ready', async () => {
      const r = await get(`${admin}/readyz`);
      return r.status === 200 ? r : undefined;
    }, 10_000);
    expect(res.body).toBe('ready\n');
  });

  it('/topology: epoch, shards with slot ranges, nodes with roles and health, migrations', async () => {
    const report = await waitFor('every node health-checked', async () => {
      const r = JSON.parse((await get(`${admin}/topology`)).body) as TopologyReport;
      return r.shards.every((s) => s.nodes.every((n) => n.isUp === true)) ? r : undefined;
    }, 10_000);
    expect(report.epoch).toBeGreaterThanOrEqual(1);
    expect(report.isReady).toBe(true);
    expect(report.reasons).toEqual([]);
    expect(report.migrations).toEqual([]);
    expect(report.shards.map((s) => s.name)).toEqual([...SHARD_NAMES]);
    expect(report.shards.reduce((sum, s) => sum + s.slotCount, 0)).toBe(16384);
    expect(report.shards.map((s) => s.slots)).toEqual([[[0, 5460]], [[5461, 10922]], [[10923, 16383]]]);
    report.shards.forEach((shard, i) => {
      expect(shard.isFailingOver).toBe(false);
      expect(shard.nodes).toEqual([
        { address: `127.0.0.1:${shards.primaries[i]!.port}`, role: 'primary', isReadReplica: false, isUp: true, connections: expect.any(Object) },
        { address: `127.0.0.1:${shards.replicas[i]![0]!.port}`, role: 'replica', isReadReplica: true, isUp: true, connections: expect.any(Object) },
      ]);
      for (const node of shard.nodes) expect(node.connections).toEqual({ ready: expect.any(Number), down: expect.any(Number) });
    });
  });

  it('/metrics: Prometheus text format with every data-path family, and counts that follow the traffic', async () => {
    const client = connect(proxy.port);
    try {
      await client.connect();
      for (let i = 0; i < 25; i++) await client.set(`admin:${i}`, 'v');
      await client.mget('admin:1', 'admin:2', 'admin:3', 'admin:4', 'admin:5', 'admin:6');
      await client.lpush('admin:1', 'x').catch(() => undefined);
    } finally {
      client.disconnect();
    }
    const res = await get(`${admin}/metrics`);
    expect(res.status).toBe(200);
    expect(res.type).toBe(PROMETHEUS_TEXT);
    for (const { name, type } of DATA_PATH_METRICS) {
      expect(res.body).toContain(`# TYPE ${name} ${type}\n`);
    }
    expect(sampleOf(res.body, 'slotproxy_commands_total{command="set",outcome="ok"}')).toBe(25);
    expect(sampleOf(res.body, 'slotproxy_commands_total{command="lpush",outcome="error"}')).toBe(1);
    expect(sampleOf(res.body, 'slotproxy_commands_total{command="mget",outcome="ok"}')).toBe(1);
    expect(sampleOf(res.body, 'slotproxy_fanout_width_count')).toBe(1);
    expect(sampleOf(res.body, 'slotproxy_clients_accepted_total')).toBeGreaterThanOrEqual(1);
    expect(sampleOf(res.body, 'slotproxy_topology_epoch')).toBeGreaterThanOrEqual(1);
    expect(sampleOf(res.body, 'slotproxy_shard_slots{shard="s2"}')).toBe(5462);
    expect(res.body).toMatch(/^slotproxy_process_resident_memory_bytes \d+/m);
    expect(res.body).toMatch(/^slotproxy_nodejs_eventloop_lag_p99_seconds /m);
    // Bounded labels: no key name ever becomes a label value.
    expect(res.body).not.toContain('admin:');
  });

  it('answers 404 for other paths and 405 for other methods', async () => {
    expect((await get(`${admin}/nope`)).status).toBe(404);
    expect((await get(`${admin}/metrics`, { method: 'POST' })).status).toBe(405);
  });

  it('/readyz answers 503 naming the shard while it has no reachable primary, 200 again after', async () => {
    // Freeze s3's primary and its only replica: no candidate to promote.
    const primary = shards.primaries[2]!;
    const replica = shards.replicas[2]![0]!;
    primary.kill('SIGSTOP');
    replica.kill('SIGSTOP');
    try {
      const res = await waitFor('503', async () => {
        const r = await get(`${admin}/readyz`);
        return r.status === 503 ? r : undefined;
      }, NODE_TIMEOUT_MS * 4);
      expect(res.body).toMatch(/^not ready: .*shard s3/);
      const report = JSON.parse((await get(`${admin}/topology`)).body) as TopologyReport;
      expect(report.isReady).toBe(false);
      expect(report.shards[2]!.nodes.find((n) => n.role === 'primary')!.isUp).toBe(false);
    } finally {
      primary.kill('SIGCONT');
      replica.kill('SIGCONT');
    }
    await waitFor('ready again', async () => ((await get(`${admin}/readyz`)).status === 200 ? true : undefined), NODE_TIMEOUT_MS * 5);
  });
});

describe('admin endpoint, workers: 2', () => {
  let proxy: ProxyProcess;
  let admin: string;

  beforeAll(async () => {
    ({ proxy, admin } = await startProxy({ workers: 2 }));
  });

  afterAll(async () => {
    await proxy?.stop();
  });

  it('/metrics sums the workers: every SET of 8 connections counted once', async () => {
    const clients = Array.from({ length: 8 }, () => connect(proxy.port));
    try {
      await Promise.all(clients.map((c) => c.connect()));
      await Promise.all(clients.map(async (c, i) => {
        for (let n = 0; n < 50; n++) await c.set(`workers:${i}:${n}`, 'v');
      }));
    } finally {
      for (const c of clients) c.disconnect();
    }
    const res = await get(`${admin}/metrics`);
    expect(res.status).toBe(200);
    expect(res.type).toBe(PROMETHEUS_TEXT);
    expect(sampleOf(res.body, 'slotproxy_commands_total{command="set",outcome="ok"}')).toBe(400);
    // The harness's readiness PING was a connection too.
    expect(sampleOf(res.body, 'slotproxy_clients_accepted_total')).toBeGreaterThanOrEqual(8);
    // Topology gauges come from the primary alone, not summed over processes.
    expect(sampleOf(res.body, 'slotproxy_topology_epoch')).toBeGreaterThanOrEqual(1);
    expect(sampleOf(res.body, 'slotproxy_shard_slots{shard="s1"}')).toBe(5461);
    // One family per name: the aggregation merged the primary's and the workers' process metrics.
    const types = res.body.split('\n').filter((l) => l.startsWith('# TYPE '));
    expect(new Set(types).size).toBe(types.length);
    expect(res.body).toMatch(/^slotproxy_process_resident_memory_bytes \d+/m);
    expect((await get(`${admin}/readyz`)).status).toBe(200);
  });
});
