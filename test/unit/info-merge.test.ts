import { describe, expect, it } from 'vitest';
import { mergeSections, type ProxyFacts } from '../../src/reply/info-merge';

const FACTS: ProxyFacts = {
  tcpPort: 7000,
  processId: 42,
  uptimeSeconds: 90_000,
  connectedClients: 5,
  totalConnectionsReceived: 17,
  totalCommandsProcessed: 1234,
  instantaneousOpsPerSec: 99,
};

function shard(port: number, used: number, calls: number, extra = ''): string {
  return [
    '# Server', 'redis_version:7.0.15', `tcp_port:${port}`, 'process_id:1', 'uptime_in_seconds:5', 'uptime_in_days:0', '',
    '# Clients', 'connected_clients:3', 'blocked_clients:1', 'maxclients:10000', '',
    '# Memory', `used_memory:${used}`, 'used_memory_human:x', `used_memory_rss:${used * 2}`, 'used_memory_peak:4194304',
    'used_memory_peak_perc:1%', 'maxmemory:1048576', 'maxmemory_human:1.00M', 'mem_fragmentation_ratio:9.99', 'total_system_memory:1000', '',
    '# Stats', 'total_commands_processed:7', 'keyspace_hits:2', 'instantaneous_input_kbps:0.25', 'latest_fork_usec:300', 'pubsub_patterns:2', '',
    '# Replication', 'role:master', 'connected_slaves:1', 'slave0:ip=127.0.0.1,port=7101,state=online,offset=9,lag=0', 'master_repl_offset:9', '',
    '# CPU', 'used_cpu_sys:0.500000', 'used_cpu_user:1.250000', '',
    '# Commandstats', `cmdstat_get:calls=${calls},usec=${calls * 3},usec_per_call=3.00,rejected_calls=0,failed_calls=1`, extra, '',
    '# Cluster', 'cluster_enabled:0', '',
    '# Keyspace', 'db0:keys=1,expires=0,avg_ttl=0', '',
  ].join('\r\n');
}

function fields(parts: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of parts.join('\r\n').split('\r\n')) {
    const colon = line.indexOf(':');
    if (colon > 0) out.set(line.slice(0, colon), line.slice(colon + 1));
  }
  return out;
}

describe('INFO merged from the shards into one server', () => {
  const parts = mergeSections([shard(7001, 1048576, 10), shard(7002, 3145728, 30, 'cmdstat_set:calls=4,usec=8,usec_per_call=2.00,rejected_calls=0,failed_calls=0')], FACTS);
  const merged = fields(parts);

  it('keeps the first shard\'s sections in order, without Keyspace (summed apart)', () => {
    expect(parts.map((p) => p.split('\r\n')[0])).toEqual(['# Server', '# Clients', '# Memory', '# Stats', '# Replication', '# CPU', '# Commandstats', '# Cluster']);
  });

  it('adds up the deployment\'s counters and recomputes what derives from them', () => {
    expect(merged.get('used_memory')).toBe('4194304');
    expect(merged.get('used_memory_human')).toBe('4.00M');
    expect(merged.get('maxmemory')).toBe('2097152');
    expect(merged.get('maxmemory_human')).toBe('2.00M');
    expect(merged.get('mem_fragmentation_ratio')).toBe('2.00');
    expect(merged.get('used_memory_peak_perc')).toBe('50.00%');
    expect(merged.get('blocked_clients')).toBe('2');
    expect(merged.get('keyspace_hits')).toBe('4');
    expect(merged.get('instantaneous_input_kbps')).toBe('0.50');
    expect(merged.get('used_cpu_user')).toBe('2.500000');
    // Not added up: the machine, settings, what every shard has alike.
    expect(merged.get('total_system_memory')).toBe('1000');
    expect(merged.get('maxclients')).toBe('10000');
    expect(merged.get('latest_fork_usec')).toBe('300');
    expect(merged.get('pubsub_patterns')).toBe('2');
  });

  it('adds up command and error stats per name, usec_per_call recomputed', () => {
    expect(merged.get('cmdstat_get')).toBe('calls=40,usec=120,usec_per_call=3.00,rejected_calls=0,failed_calls=2');
    expect(merged.get('cmdstat_set')).toBe('calls=4,usec=8,usec_per_call=2.00,rejected_calls=0,failed_calls=0');
  });

  it('answers for the proxy where the client sees one server', () => {
    expect(merged.get('tcp_port')).toBe('7000');
    expect(merged.get('process_id')).toBe('42');
    expect(merged.get('uptime_in_seconds')).toBe('90000');
    expect(merged.get('uptime_in_days')).toBe('1');
    expect(merged.get('connected_clients')).toBe('5');
    expect(merged.get('total_commands_processed')).toBe('1234');
    expect(merged.get('role')).toBe('master');
    expect(merged.get('connected_slaves')).toBe('0');
    expect(merged.has('slave0')).toBe(false);
    expect(merged.get('master_repl_offset')).toBe('9');
    expect(merged.get('cluster_enabled')).toBe('1');
  });

  it('a shard without a memory limit means no limit', () => {
    const noLimit = shard(7002, 1, 1).replace('maxmemory:1048576', 'maxmemory:0');
    expect(fields(mergeSections([shard(7001, 1, 1), noLimit], FACTS)).get('maxmemory_human')).toBe('0B');
  });
});
