import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HealthChecker, parseReplicationInfo, probeIntervalFor, type NodeReport } from '../../src/control/health-checker';
import { startShards, type Shards } from '../helpers/redis-harness';

/** The health checker on its own, against real redis-server processes. */

const NODE_TIMEOUT_MS = 1000;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function until(what: string, isDone: () => boolean, timeoutMs: number): Promise<number> {
  const started = Date.now();
  while (!isDone()) {
    if (Date.now() - started > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(5);
  }
  return Date.now() - started;
}

describe('parseReplicationInfo', () => {
  it('reads a primary', () => {
    const text = '# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.0.1,port=7001,state=online,offset=42,lag=0\r\nmaster_repl_offset:42\r\n';
    expect(parseReplicationInfo(text)).toEqual({ role: 'master', offset: 42, masterLinkStatus: null, following: null });
  });

  it('reads a replica', () => {
    const text = '# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:7000\r\nmaster_link_status:up\r\nslave_read_repl_offset:40\r\nslave_repl_offset:40\r\nmaster_repl_offset:40\r\n';
    expect(parseReplicationInfo(text)).toEqual({ role: 'slave', offset: 40, masterLinkStatus: 'up', following: { host: '127.0.0.1', port: 7000 } });
  });

  it('refuses text without a role', () => {
    expect(() => parseReplicationInfo('# Server\r\nredis_version:7.0.0\r\n')).toThrow(/no role/);
  });

  it('derives the probe interval from the node timeout', () => {
    expect(probeIntervalFor(2000)).toBe(400);
    expect(probeIntervalFor(100)).toBe(50);
    expect(probeIntervalFor(60_000)).toBe(1000);
  });
});

describe('HealthChecker', () => {
  let shards: Shards;
  let checker: HealthChecker;
  const failures: NodeReport[] = [];

  beforeAll(async () => {
    shards = await startShards(2, { replicas: 1 });
    checker = new HealthChecker({ nodeTimeoutMs: NODE_TIMEOUT_MS });
    checker.on('report', (report, previous) => {
      if (report.state === 'failed' && previous !== 'failed') failures.push(report);
    });
    checker.watch([...shards.primaries, ...shards.replicas.flat()]);
    await checker.firstRound(NODE_TIMEOUT_MS);
  });

  afterAll(async () => {
    checker?.close();
    await shards?.stopAll();
  });

  it('reports every node up with its role, offset, link and primary', () => {
    const [primary] = shards.primaries;
    const replica = shards.replicas[0]![0]!;
    expect(checker.report(primary!)).toMatchObject({ state: 'up', role: 'master', following: null });
    expect(checker.report(replica)).toMatchObject({
      state: 'up',
      role: 'slave',
      masterLinkStatus: 'up',
      following: { host: primary!.host, port: primary!.port },
    });
    expect(checker.report(replica)!.lastOkAt).toBeGreaterThan(Date.now() - 2 * NODE_TIMEOUT_MS);
  });

  it('a node that stops answering for less than nodeTimeoutMs is not failed (slow reply, lost probes)', async () => {
    const replica = shards.replicas[1]![0]!;
    replica.kill('SIGSTOP');
    await sleep(NODE_TIMEOUT_MS * 0.7);
    replica.kill('SIGCONT');
    await sleep(NODE_TIMEOUT_MS);
    expect(failures.filter((f) => f.key.endsWith(`:${replica.port}`))).toEqual([]);
    expect(checker.report(replica)!.state).toBe('up');
  });

  it('a stopped node is failed once nodeTimeoutMs passes without a reply, and is up again after SIGCONT', async () => {
    const replica = shards.replicas[1]![0]!;
    const stoppedAt = Date.now();
    replica.kill('SIGSTOP');
    try {
      await until('stopped node failed', () => checker.report(replica)!.state === 'failed', NODE_TIMEOUT_MS * 3);
      const detectedMs = Date.now() - stoppedAt;
      expect(detectedMs).toBeGreaterThanOrEqual(NODE_TIMEOUT_MS - checker.probeIntervalMs);
      expect(detectedMs).toBeLessThan(NODE_TIMEOUT_MS + checker.probeIntervalMs + 200);
      expect(checker.report(replica)!.failReason).toMatch(/no successful probe/);
    } finally {
      replica.kill('SIGCONT');
    }
    await until('resumed node up', () => checker.report(replica)!.state === 'up', NODE_TIMEOUT_MS * 3);
  });

  it('a killed node (connection refused twice) is failed at once, well before nodeTimeoutMs', async () => {
    const primary = shards.primaries[1]!;
    const killedAt = Date.now();
    primary.kill('SIGKILL');
    await until('killed node failed', () => checker.report(primary)!.state === 'failed', NODE_TIMEOUT_MS * 2);
    const detectedMs = Date.now() - killedAt;
    expect(checker.report(primary)!.failReason).toMatch(/refused 2 times/);
    expect(detectedMs).toBeLessThan(NODE_TIMEOUT_MS / 2);
    // The replica of the killed primary sees its link down on a later probe.
    await until('replica link down', () => checker.report(shards.replicas[1]![0]!)!.masterLinkStatus === 'down', NODE_TIMEOUT_MS * 2);
    await primary.restart();
    await until('restarted node up', () => checker.report(primary)!.state === 'up', NODE_TIMEOUT_MS * 3);
  });

  it('sends commands on the control connection, and refreshes a report on demand', async () => {
    const replica = shards.replicas[0]![0]!;
    expect(await checker.command(replica, ['PING'])).toBe('PONG');
    const report = await checker.refresh(replica);
    expect(report.role).toBe('slave');
    await expect(checker.command(shards.primaries[1]!, ['NOSUCHCOMMAND'])).rejects.toThrow(/NOSUCHCOMMAND on 127\.0\.0\.1:\d+: ERR unknown command/);
  });
});
