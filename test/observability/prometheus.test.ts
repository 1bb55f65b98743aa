import { execFile } from 'node:child_process';
import calculateSlot from 'cluster-key-slot';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findFreePort } from '../../src/cli/local-redis';
import type { TopologyReport } from '../../src/metrics/metrics-server';
import { startProxyProcess, type ProxyProcess } from '../helpers/proxy-harness';
import { startShards, type Shards } from '../helpers/redis-harness';
import { loadDashboard, panelQueries, substituteVariables } from './dashboard';
import { findPrometheus, sleep, startPrometheus, waitFor, type PrometheusServer } from './prometheus-harness';

/**
 * Issue 7's acceptance against the real thing: a Prometheus server (Debian's package) scrapes
 * `dist/cli.js start` every second while redis-benchmark and ioredis loops drive traffic
 * (errors and MGET fan-out included) over 3 shards with a replica each, and a shard primary is
 * killed with SIGKILL so the proxy fails over. Then Prometheus must show the target up, every
 * PromQL expression of every panel of grafana/slotproxy-dashboard.json must parse and return
 * at least one series, and the counters must match the traffic sent.
 */

const NODE_TIMEOUT_MS = 2_000;
const SHARD_NAMES = ['s1', 's2', 's3'] as const;
/** The proxy's even split when the YAML gives no slots. */
const SLOT_RANGES = [
  [0, 5460],
  [5461, 10922],
  [10923, 16383],
] as const;
/** The shard whose primary is killed. */
const FAULTY = 1;
const SETS = 2_000;
const MGETS = 200;
const ERRORS = 50;
const BENCH_REQUESTS = 20_000;
/** The whole file: well within vitest's and CI's patience. */
const SUITE_BOUND_MS = 90_000;

const prometheusBinary = findPrometheus();
if (prometheusBinary === null && process.env['CI'] !== undefined) {
  throw new Error('prometheus is not on PATH: scripts/ensure-prometheus.sh (npm pretest) installs it');
}

function ownerOf(key: string): number {
  const slot = calculateSlot(key);
  return SLOT_RANGES.findIndex(([from, to]) => slot >= from && slot <= to);
}

/** One key per shard, in shard order, so an MGET of them fans out to all 3. */
function keyPerShard(prefix: string): string[] {
  const keys: (string | undefined)[] = [undefined, undefined, undefined];
  for (let n = 0; keys.includes(undefined); n++) keys[ownerOf(`${prefix}${n}`)] ??= `${prefix}${n}`;
  return keys as string[];
}

function connect(port: number): Redis {
  const client = new Redis({ host: '127.0.0.1', port, protocol: 2, maxRetriesPerRequest: 1, retryStrategy: () => null, lazyConnect: true });
  client.on('error', () => undefined);
  return client;
}

function redisBenchmark(port: number, args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('redis-benchmark', ['-h', '127.0.0.1', '-p', String(port), ...args], { timeout: 30_000, killSignal: 'SIGKILL' }, (err, stdout, stderr) =>
      err === null ? resolve(stdout) : reject(new Error(`redis-benchmark failed: ${err.message}\n${stderr}`)),
    );
  });
}

describe.skipIf(prometheusBinary === null)('a real Prometheus scraping the proxy, and the Grafana dashboard', () => {
  let shards: Shards;
  let proxy: ProxyProcess;
  let prometheus: PrometheusServer;
  let admin: string;
  let metricsTarget: string;
  /** What the traffic did, for the counter checks. */
  const sent = { setsOk: 0, mgets: 0, errors: 0, clients: 0, benchSets: 0, benchGets: 0, afterFailoverSetsOk: 0 };

  beforeAll(async () => {
    shards = await startShards(3, { replicas: 1 });
    const metricsPort = await findFreePort();
    metricsTarget = `127.0.0.1:${metricsPort}`;
    admin = `http://${metricsTarget}`;
    proxy = await startProxyProcess({
      shards: shards.primaries.map((primary, i) => ({ name: SHARD_NAMES[i]!, primary, replicas: shards.replicas[i]! })),
      extra: { metrics: metricsTarget, nodeTimeoutMs: NODE_TIMEOUT_MS },
    });
    prometheus = await startPrometheus(prometheusBinary!, { targets: [metricsTarget] });
    await prometheus.waitForTargetsUp();
  }, 40_000);

  afterAll(async () => {
    await prometheus?.stop();
    await proxy?.stop();
    await shards?.stopAll();
  });

  it('drives traffic and a failover; Prometheus has the target up and every dashboard query returns data', async () => {
    const startedAt = Date.now();

    // 1. Traffic: ioredis (SET pipelines, MGET over all 3 shards, WRONGTYPE errors) and redis-benchmark.
    const client = connect(proxy.port);
    sent.clients++;
    await client.connect();
    const mgetKeys = keyPerShard('obs:mget:');
    for (let batch = 0; batch < SETS / 500; batch++) {
      const pipeline = client.pipeline();
      for (let i = 0; i < 500; i++) pipeline.set(`obs:${batch}:${i}`, 'value');
      for (const [err, reply] of (await pipeline.exec()) ?? []) if (err === null && reply === 'OK') sent.setsOk++;
    }
    for (let i = 0; i < MGETS; i++) {
      await client.mget(...mgetKeys);
      sent.mgets++;
    }
    await client.set('obs:string', 'x');
    sent.setsOk++;
    for (let i = 0; i < ERRORS; i++) {
      await client.lpush('obs:string', 'y').catch(() => (sent.errors++, undefined));
    }
    const bench = await redisBenchmark(proxy.port, ['-t', 'get,set', '-n', String(BENCH_REQUESTS), '-P', '16', '-c', '10', '-r', '100000', '-q']);
    expect(bench).toMatch(/SET: [\d.]+ requests per second/);
    sent.benchSets = BENCH_REQUESTS;
    sent.benchGets = BENCH_REQUESTS;
    sent.clients += 10;

    // 2. Failover: SIGKILL the primary of s2; wait until /topology names its replica as primary.
    const killed = shards.primaries[FAULTY]!;
    const replica = shards.replicas[FAULTY]![0]!;
    killed.kill('SIGKILL');
    await waitFor('the replica promoted', async () => {
      const report = (await (await fetch(`${admin}/topology`)).json()) as TopologyReport;
      const primary = report.shards[FAULTY]!.nodes.find((n) => n.role === 'primary');
      return primary?.address === `127.0.0.1:${replica.port}` && report.isReady ? report : undefined;
    }, NODE_TIMEOUT_MS * 5);
    // Writes to the new primary, so its backend series exist too.
    const onFaulty = Array.from({ length: 200 }, (_, n) => `obs:after:${n}`).filter((key) => ownerOf(key) === FAULTY);
    for (const key of onFaulty) if ((await client.set(key, 'v')) === 'OK') sent.afterFailoverSetsOk++;
    expect(sent.afterFailoverSetsOk).toBeGreaterThan(0);
    client.disconnect();

    // 3. Wait for a scrape that has seen everything.
    const expectedSets = sent.setsOk + sent.afterFailoverSetsOk + sent.benchSets;
    await waitFor('Prometheus to scrape the last SETs', async () => {
      const { result } = await prometheus.query('sum(slotproxy_commands_total{command="set",outcome="ok"})');
      return result.length === 1 && Number(result[0]!.value[1]) >= expectedSets ? true : undefined;
    }, 15_000);
    // Series born late (the failover's, the new primary's) need two samples for rate().
    await sleep(3_000);

    // 4. The target is up, scraped without error.
    const targets = await prometheus.api<{ activeTargets: { scrapeUrl: string; health: string; lastError: string }[] }>('/api/v1/targets');
    expect(targets.activeTargets).toHaveLength(1);
    expect(targets.activeTargets[0]).toMatchObject({ scrapeUrl: `${admin}/metrics`, health: 'up', lastError: '' });

    // 5. Every query of every panel parses and returns at least one series.
    const dashboard = loadDashboard();
    const queries = panelQueries(dashboard);
    expect(queries.length).toBeGreaterThan(40);
    const empty: string[] = [];
    for (const query of queries) {
      let result: readonly unknown[];
      try {
        result = (await prometheus.query(query.expr)).result;
      } catch (err) {
        throw new Error(`panel "${query.panel}" ${query.refId}: ${query.expr}\n  ${String(err)}`);
      }
      if (result.length === 0) empty.push(`panel "${query.panel}" ${query.refId}: ${query.expr}`);
    }
    expect(empty, 'queries that returned no series').toEqual([]);
    // The template variables' label_values() and the annotation's expression.
    for (const label of ['job', 'instance']) {
      const values = await prometheus.api<string[]>(`/api/v1/label/${label}/values?match[]=slotproxy_topology_epoch`);
      expect(values.length, label).toBe(1);
    }
    for (const annotation of dashboard.annotations.list) {
      if (annotation.expr !== undefined) await prometheus.query(substituteVariables(annotation.expr));
    }

    // 6. Counters moved as the traffic says.
    const value = async (expr: string): Promise<number> => {
      const { result } = await prometheus.query(expr);
      expect(result, expr).toHaveLength(1);
      return Number(result[0]!.value[1]);
    };
    expect(await value('sum(slotproxy_commands_total{command="set"})')).toBeGreaterThanOrEqual(expectedSets);
    expect(await value('sum(slotproxy_commands_total{command="get"})')).toBeGreaterThanOrEqual(sent.benchGets);
    expect(await value('sum(slotproxy_commands_total{command="mget",outcome="ok"})')).toBeGreaterThanOrEqual(sent.mgets);
    expect(await value('sum(slotproxy_commands_total{command="lpush",outcome="error"})')).toBe(sent.errors);
    expect(sent.errors).toBe(ERRORS);
    expect(await value('sum(slotproxy_backend_errors_total{kind="reply"})')).toBeGreaterThanOrEqual(ERRORS);
    expect(await value('sum(slotproxy_fanout_width_count)')).toBeGreaterThanOrEqual(sent.mgets);
    expect(await value('sum(slotproxy_fanout_width_bucket{le="3"}) - sum(slotproxy_fanout_width_bucket{le="2"})')).toBeGreaterThanOrEqual(sent.mgets);
    expect(await value('sum(slotproxy_backend_requests_total)')).toBeGreaterThanOrEqual(expectedSets + sent.benchGets + 3 * sent.mgets);
    expect(await value('sum(slotproxy_clients_accepted_total)')).toBeGreaterThanOrEqual(sent.clients);
    expect(await value('sum(slotproxy_command_duration_seconds_count)')).toBeGreaterThanOrEqual(expectedSets + sent.benchGets + sent.mgets + ERRORS);
    expect(await value('sum(slotproxy_client_bytes_received_total)')).toBeGreaterThan(expectedSets * 20);
    expect(await value('sum(slotproxy_pipeline_depth_count)')).toBeGreaterThan(0);
    // The failover: one promotion, the old replica now the primary, a newer topology epoch.
    expect(await value(`sum(slotproxy_failovers_total{shard="${SHARD_NAMES[FAULTY]}",outcome="promoted"})`)).toBe(1);
    expect(await value(`max(slotproxy_node_up{node="127.0.0.1:${killed.port}"})`)).toBe(0);
    expect(await value(`max(slotproxy_node_role{node="127.0.0.1:${replica.port}",role="primary"})`)).toBe(1);
    expect(await value('max(slotproxy_topology_epoch)')).toBeGreaterThan(1);
    expect(await value(`sum(slotproxy_backend_requests_total{node="127.0.0.1:${replica.port}"})`)).toBeGreaterThanOrEqual(sent.afterFailoverSetsOk);
    expect(await value('sum(slotproxy_shard_slots)')).toBe(16384);

    expect(Date.now() - startedAt).toBeLessThan(SUITE_BOUND_MS);
  }, SUITE_BOUND_MS);
});
