/**
 * INFO of several shards made into one server's: what the client, an exporter or redis-cli's
 * cluster tooling reads from the one endpoint the proxy is (dispatch/info-command.ts gathers
 * the shards' texts).
 */

/** Splits INFO text into sections by their `# Name` headers, keeping order. */
function sections(text: string): { name: string; body: string[] }[] {
  const out: { name: string; body: string[] }[] = [];
  for (const line of text.split('\r\n')) {
    if (line.startsWith('# ')) out.push({ name: line.slice(2), body: [] });
    else if (line !== '' && out.length > 0) out[out.length - 1]!.body.push(line);
  }
  return out;
}

/** `db0:keys=3,expires=1,avg_ttl=0` lines of every shard, added up per database. */
export function sumKeyspace(texts: readonly string[]): string[] {
  const totals = new Map<string, { keys: number; expires: number; ttlWeighted: number }>();
  for (const text of texts) {
    for (const section of sections(text)) {
      if (section.name !== 'Keyspace') continue;
      for (const line of section.body) {
        const match = /^(db\d+):keys=(\d+),expires=(\d+),avg_ttl=(\d+)/.exec(line);
        if (match === null) continue;
        const total = totals.get(match[1]!) ?? { keys: 0, expires: 0, ttlWeighted: 0 };
        total.keys += Number(match[2]);
        total.expires += Number(match[3]);
        total.ttlWeighted += Number(match[4]) * Number(match[3]);
        totals.set(match[1]!, total);
      }
    }
  }
  return [...totals].map(
    ([db, t]) => `${db}:keys=${t.keys},expires=${t.expires},avg_ttl=${t.expires > 0 ? Math.round(t.ttlWeighted / t.expires) : 0}`,
  );
}

/** What the proxy itself says in the shards' sections: the client's server is the proxy. */
export interface ProxyFacts {
  readonly tcpPort: number;
  readonly processId: number;
  readonly uptimeSeconds: number;
  readonly connectedClients: number;
  readonly totalConnectionsReceived: number;
  readonly totalCommandsProcessed: number;
  readonly instantaneousOpsPerSec: number;
}

/**
 * Fields added up over the shards, by section: the deployment's memory, CPU, traffic and
 * key events. Any other field is the first shard's (versions, settings, ratios, the machine).
 */
const SUMMED: ReadonlyMap<string, ReadonlySet<string>> = new Map(Object.entries({
  Clients: new Set(['blocked_clients', 'tracking_clients', 'pubsub_clients', 'watching_clients', 'clients_in_timeout_table', 'total_watched_keys', 'total_blocking_keys', 'total_blocking_keys_on_nokey']),
  Memory: new Set([
    'used_memory', 'used_memory_rss', 'used_memory_peak', 'used_memory_overhead', 'used_memory_startup', 'used_memory_dataset',
    'allocator_allocated', 'allocator_active', 'allocator_resident', 'used_memory_lua', 'used_memory_vm_eval', 'used_memory_scripts_eval',
    'used_memory_vm_functions', 'used_memory_vm_total', 'used_memory_functions', 'used_memory_scripts', 'maxmemory',
    'mem_fragmentation_bytes', 'allocator_frag_bytes', 'allocator_rss_bytes', 'rss_overhead_bytes', 'mem_not_counted_for_evict', 'mem_replication_backlog', 'mem_total_replication_buffers', 'mem_clients_slaves',
    'mem_clients_normal', 'mem_cluster_links', 'mem_aof_buffer', 'lazyfree_pending_objects', 'lazyfreed_objects',
  ]),
  // Patterns are subscribed on every shard and the shards' own counts know nothing of the
  // proxy's clients: those are the first shard's, or the proxy's (ProxyFacts).
  Stats: new Set([
    'total_net_input_bytes', 'total_net_output_bytes', 'total_net_repl_input_bytes', 'total_net_repl_output_bytes', 'instantaneous_input_kbps',
    'instantaneous_output_kbps', 'instantaneous_input_repl_kbps', 'instantaneous_output_repl_kbps', 'sync_full', 'sync_partial_ok',
    'sync_partial_err', 'expired_keys', 'expired_time_cap_reached_count', 'expire_cycle_cpu_milliseconds', 'evicted_keys', 'evicted_clients',
    'total_eviction_exceeded_time', 'keyspace_hits', 'keyspace_misses', 'pubsub_channels', 'pubsubshard_channels', 'total_forks',
    'active_defrag_hits', 'active_defrag_misses', 'active_defrag_key_hits', 'active_defrag_key_misses', 'total_active_defrag_time',
    'tracking_total_keys', 'tracking_total_items', 'tracking_total_prefixes', 'unexpected_error_replies', 'total_error_replies',
    'dump_payload_sanitizations', 'total_reads_processed', 'total_writes_processed', 'io_threaded_reads_processed', 'io_threaded_writes_processed',
  ]),
  CPU: new Set(['used_cpu_sys', 'used_cpu_user', 'used_cpu_sys_children', 'used_cpu_user_children', 'used_cpu_sys_main_thread', 'used_cpu_user_main_thread']),
}));

/** Memory ratios of the summed fields, as redis-server derives them: [numerator, denominator, what is subtracted from it]. */
const RATIOS: ReadonlyMap<string, readonly [string, string, string | null]> = new Map(Object.entries({
  mem_fragmentation_ratio: ['used_memory_rss', 'used_memory', null],
  allocator_frag_ratio: ['allocator_active', 'allocator_allocated', null],
  allocator_rss_ratio: ['allocator_resident', 'allocator_active', null],
  rss_overhead_ratio: ['used_memory_rss', 'allocator_resident', null],
  used_memory_peak_perc: ['used_memory', 'used_memory_peak', null],
  used_memory_dataset_perc: ['used_memory_dataset', 'used_memory', 'used_memory_startup'],
}));

/** Sections whose every line is `name:k=v,...` with counters added up per name (usec_per_call recomputed). */
const SUMMED_PER_NAME: ReadonlySet<string> = new Set(['Commandstats', 'Errorstats']);

/** Replication lines that describe a shard's own replicas or primary, not the one server the client sees. */
const SHARD_REPLICATION = /^(slave\d+|master_host|master_port|master_link_\w+|master_last_io_\w+|master_sync_\w+|slave_\w+|replica_\w+):/;

/** redis-server's bytesToHuman. */
function bytesToHuman(bytes: number): string {
  const units = ['B', 'K', 'M', 'G', 'T', 'P'];
  if (bytes < 1024) return `${bytes}B`;
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(2)}${units[unit]}`;
}

function fieldsOf(body: readonly string[]): Map<string, string> {
  const fields = new Map<string, string>();
  for (const line of body) {
    const colon = line.indexOf(':');
    if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 1));
  }
  return fields;
}

/** Adds up `value` over the shards that have the field; floats keep redis-server's two decimals (six for CPU). */
function sumField(name: string, all: readonly Map<string, string>[], decimals: number): string | null {
  let total = 0;
  let isFloat = false;
  for (const fields of all) {
    const text = fields.get(name);
    if (text === undefined) continue;
    const n = Number(text);
    if (!Number.isFinite(n)) return null;
    if (text.includes('.')) isFloat = true;
    total += n;
  }
  return isFloat ? total.toFixed(decimals) : String(total);
}

/** `cmdstat_get:calls=3,usec=9,usec_per_call=3.00,...` lines added up per name. */
function sumPerName(bodies: readonly (readonly string[])[]): string[] {
  const totals = new Map<string, Map<string, number>>();
  for (const body of bodies) {
    for (const line of body) {
      const colon = line.indexOf(':');
      if (colon <= 0) continue;
      const name = line.slice(0, colon);
      let counters = totals.get(name);
      if (counters === undefined) totals.set(name, (counters = new Map()));
      for (const pair of line.slice(colon + 1).split(',')) {
        const eq = pair.indexOf('=');
        if (eq > 0) counters.set(pair.slice(0, eq), (counters.get(pair.slice(0, eq)) ?? 0) + Number(pair.slice(eq + 1)));
      }
    }
  }
  return [...totals].map(([name, counters]) => {
    const calls = counters.get('calls');
    if (calls !== undefined && counters.has('usec_per_call')) counters.set('usec_per_call', calls > 0 ? (counters.get('usec') ?? 0) / calls : 0);
    const pairs = [...counters].map(([k, v]) => `${k}=${k === 'usec_per_call' ? v.toFixed(2) : v}`);
    return `${name}:${pairs.join(',')}`;
  });
}

/**
 * One server's INFO made of the shards': sections in the first shard's order, counters of
 * the deployment added up (SUMMED), the client-facing fields the proxy's own, the Replication
 * section that of a primary without replicas (as ROLE answers) and Cluster enabled (as CLUSTER
 * INFO answers). Keyspace is summed apart (sumKeyspace).
 */
export function mergeSections(texts: readonly string[], facts: ProxyFacts): string[] {
  const perShard = texts.map((text) => sections(text));
  const parts: string[] = [];
  for (const section of perShard[0] ?? []) {
    if (section.name === 'Keyspace') continue;
    const bodies = perShard.map((list) => list.find((s) => s.name === section.name)?.body ?? []);
    if (SUMMED_PER_NAME.has(section.name)) {
      parts.push([`# ${section.name}`, ...sumPerName(bodies)].join('\r\n'));
      continue;
    }
    const all = bodies.map((body) => fieldsOf(body));
    const summed = SUMMED.get(section.name);
    const lines: string[] = [];
    for (const line of section.body) {
      const colon = line.indexOf(':');
      const name = colon > 0 ? line.slice(0, colon) : line;
      const value = valueOf(section.name, name, all, summed, facts);
      if (value === undefined) lines.push(line);
      else if (value !== null) lines.push(`${name}:${value}`);
    }
    parts.push([`# ${section.name}`, ...lines].join('\r\n'));
  }
  return parts;
}

/** Fields whose value is the proxy's, whatever the shards say: the server the client talks to. */
const PROXY_FIELDS: ReadonlyMap<string, (facts: ProxyFacts) => string> = new Map([
  ['tcp_port', (facts: ProxyFacts) => String(facts.tcpPort)],
  ['process_id', (facts: ProxyFacts) => String(facts.processId)],
  ['uptime_in_seconds', (facts: ProxyFacts) => String(facts.uptimeSeconds)],
  ['uptime_in_days', (facts: ProxyFacts) => String(Math.floor(facts.uptimeSeconds / 86400))],
  ['connected_clients', (facts: ProxyFacts) => String(facts.connectedClients)],
  ['total_connections_received', (facts: ProxyFacts) => String(facts.totalConnectionsReceived)],
  ['total_commands_processed', (facts: ProxyFacts) => String(facts.totalCommandsProcessed)],
  ['instantaneous_ops_per_sec', (facts: ProxyFacts) => String(facts.instantaneousOpsPerSec)],
  ['connected_slaves', () => '0'],
  ['cluster_enabled', () => '1'],
]);

/** A field's merged value: undefined keeps the first shard's line, null drops it. */
function valueOf(
  section: string,
  name: string,
  all: readonly Map<string, string>[],
  summed: ReadonlySet<string> | undefined,
  facts: ProxyFacts,
): string | null | undefined {
  const own = PROXY_FIELDS.get(name);
  if (own !== undefined) return own(facts);
  if (name === 'role' && section === 'Replication') return 'master';
  if (section === 'Replication' && SHARD_REPLICATION.test(`${name}:`)) return null;
  if (name === 'maxmemory' && all.some((fields) => fields.get(name) === '0')) return '0';
  if (summed?.has(name) === true) return sumField(name, all, section === 'CPU' ? 6 : 2) ?? undefined;
  const ratio = RATIOS.get(name);
  if (ratio !== undefined) {
    const [numerator, denominator, less] = ratio;
    const total = (field: string): number => Number(sumField(field, all, 0));
    const base = total(denominator) - (less === null ? 0 : total(less));
    if (!(base > 0)) return undefined;
    const value = total(numerator) / base;
    return name.endsWith('_perc') ? `${(value * 100).toFixed(2)}%` : value.toFixed(2);
  }
  if (name.endsWith('_human') && summed?.has(name.slice(0, -'_human'.length)) === true) {
    const base = name.slice(0, -'_human'.length);
    const total = base === 'maxmemory' && all.some((fields) => fields.get(base) === '0') ? 0 : Number(sumField(base, all, 0));
    return Number.isFinite(total) ? bytesToHuman(total) : undefined;
  }
  return undefined;
}
