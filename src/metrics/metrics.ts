import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * Every metric of the proxy, declared once. Names follow Prometheus conventions: `slotproxy_`
 * prefix, `_total` counters, `_seconds` histograms, base units; labels are bounded (shard, node,
 * command name from the command table, outcome), never keys.
 */
export const registry = new Registry();

let isProcessMetricsEnabled = false;

/** prom-client's process metrics (CPU, memory, event loop lag, GC) as `slotproxy_*`; idempotent. */
export function enableProcessMetrics(): void {
  if (isProcessMetricsEnabled) return;
  isProcessMetricsEnabled = true;
  collectDefaultMetrics({ register: registry, prefix: 'slotproxy_' });
}

// The data path's own metrics (commands, latency, backends, clients) are read from
// DataPathStats at scrape time: their declarations are the table in metrics/exporter.ts.

// Control plane: health and failover.
export const nodeUp = new Gauge({
  name: 'slotproxy_node_up',
  help: 'Whether the node answers health checks (1) or is failed (0).',
  labelNames: ['shard', 'node'] as const,
  registers: [registry],
});

export const nodeRole = new Gauge({
  name: 'slotproxy_node_role',
  help: 'The role the topology gives the node: 1 for the one matching the role label.',
  labelNames: ['shard', 'node', 'role'] as const,
  registers: [registry],
});

export const failoversTotal = new Counter({
  name: 'slotproxy_failovers_total',
  help: 'Replica promotions after a primary failed, by outcome (promoted, no_candidate, error).',
  labelNames: ['shard', 'outcome'] as const,
  registers: [registry],
});

export const nodeFailuresTotal = new Counter({
  name: 'slotproxy_node_failures_total',
  help: 'Times a node was marked failed by the health checker.',
  labelNames: ['shard', 'node'] as const,
  registers: [registry],
});

export const demotionsTotal = new Counter({
  name: 'slotproxy_demotions_total',
  help: 'Returning old primaries made replicas of the new primary.',
  labelNames: ['shard'] as const,
  registers: [registry],
});

export const replicaRepointsTotal = new Counter({
  name: 'slotproxy_replica_repoints_total',
  help: 'REPLICAOF commands sent to point replicas at a new primary.',
  labelNames: ['shard'] as const,
  registers: [registry],
});

export const failoverDurationSeconds = new Histogram({
  name: 'slotproxy_failover_duration_seconds',
  help: 'From the primary being marked failed to the promoted replica serving.',
  labelNames: ['shard'] as const,
  buckets: [0.1, 0.25, 0.5, 1, 2, 5, 10, 30],
  registers: [registry],
});

// Topology, set from the control plane's current snapshot at every scrape (metrics/exporter.ts).
export const shardSlots = new Gauge({
  name: 'slotproxy_shard_slots',
  help: 'Hash slots the shard owns in the current topology.',
  labelNames: ['shard'] as const,
  registers: [registry],
});

export const shardFailingOver = new Gauge({
  name: 'slotproxy_shard_failing_over',
  help: 'Whether the shard is replacing a failed primary (1) or not (0).',
  labelNames: ['shard'] as const,
  registers: [registry],
});

export const slotsMigrating = new Gauge({
  name: 'slotproxy_slots_migrating',
  help: 'Slots being moved between shards right now.',
  // Only the control plane's process sets it: with workers, the others report 0.
  aggregator: 'max',
  registers: [registry],
});

export const topologyEpoch = new Gauge({
  name: 'slotproxy_topology_epoch',
  help: 'Epoch of the current topology snapshot; it increases with every published change.',
  aggregator: 'max',
  registers: [registry],
});

// Migration (slot-migrator): no labels, so both series exist at 0 before the first move.
export const migratedSlotsTotal = new Counter({
  name: 'slotproxy_migrated_slots_total',
  help: 'Slots whose ownership moved to another shard.',
  registers: [registry],
});

export const migratedKeysTotal = new Counter({
  name: 'slotproxy_migrated_keys_total',
  help: 'Keys moved between shards by slot migration (MIGRATE).',
  registers: [registry],
});

// Control plane: state file.
export const stateFileWritesTotal = new Counter({
  name: 'slotproxy_state_file_writes_total',
  help: 'Writes of the runtime topology to stateFile, by outcome (ok, error).',
  labelNames: ['outcome'] as const,
  registers: [registry],
});

// Online resharding (control/slot-migrator.ts, control/resharding.ts).
export const migrationErrorsTotal = new Counter({
  name: 'slotproxy_migration_errors_total',
  help: 'Failed steps of the background slot mover, retried (kind: scan, migrate, big_key, journal, mover_exit, mover_starved).',
  labelNames: ['kind'] as const,
  registers: [registry],
});

export const bigKeysMovedTotal = new Counter({
  name: 'slotproxy_migrated_big_keys_total',
  help: 'Big keys moved by chunked copy (also counted in slotproxy_migrated_keys_total).',
  registers: [registry],
});

export const reshardPlansTotal = new Counter({
  name: 'slotproxy_reshard_plans_total',
  help: 'Resharding plans run, by what started them (admin, reload, startup) and outcome (done, failed, aborted).',
  labelNames: ['trigger', 'outcome'] as const,
  registers: [registry],
});

/**
 * prom-client keeps each labelled series as a `{ value, labels }` object. V8 treats a field no
 * code has yet changed as a constant, and the first `+=` on one (the second increment of any
 * series) throws away all compiled code that relied on it: that was the data path's `dispatch`,
 * `lookupCommandBytes` and `runFlushes`, at the first slot move or failover, under client
 * traffic (`--trace-deopt`, `--trace-generalization`; docs/resharding-latency.md). Changing one
 * such field here, before anything is compiled, makes that happen at load instead.
 */
function settleSeriesShape(): void {
  const scratch = new Counter({ name: 'slotproxy_scratch', help: 'not exported', labelNames: ['at'] as const, registers: [] });
  scratch.inc({ at: 'load' });
  scratch.inc({ at: 'load' });
}
settleSeriesShape();
