import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { DATA_PATH_METRICS } from '../../src/metrics/exporter';
import { enableProcessMetrics, registry } from '../../src/metrics/metrics';
import { allPanels, DASHBOARD_PATH, loadDashboard, panelQueries } from './dashboard';

/**
 * grafana/slotproxy-dashboard.json without sockets: importable (the datasource is an input,
 * used everywhere), the rows the issue asks for, and no query naming a metric the proxy does
 * not export. prometheus.test.ts runs every query against a real Prometheus.
 */

const ROWS = ['Traffic', 'Latency', 'Errors', 'Backends & health', 'Failovers & migrations', 'Clients', 'Process'];
const DATASOURCE = { type: 'prometheus', uid: '${DS_PROMETHEUS}' };

/** Every metric name the proxy serves: data-path families (histogram series included), registry, process metrics. */
function exportedNames(): Set<string> {
  enableProcessMetrics();
  const names = new Set<string>();
  const add = (name: string, type: string): void => {
    names.add(name);
    if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(`${name}${suffix}`);
  };
  for (const { name, type } of DATA_PATH_METRICS) add(name, type);
  for (const metric of registry.getMetricsAsArray()) add(metric.name, String((metric as unknown as { type: string }).type));
  return names;
}

describe('grafana/slotproxy-dashboard.json', () => {
  const dashboard = loadDashboard();
  const panels = allPanels(dashboard);

  it('takes its datasource as the DS_PROMETHEUS input and uses it everywhere', () => {
    expect(dashboard.__inputs).toEqual([expect.objectContaining({ name: 'DS_PROMETHEUS', type: 'datasource', pluginId: 'prometheus' })]);
    for (const panel of panels.filter((p) => p.type !== 'row')) {
      expect(panel.datasource, panel.title).toEqual(DATASOURCE);
      for (const target of panel.targets ?? []) expect(target.datasource, `${panel.title} ${target.refId}`).toEqual(DATASOURCE);
    }
    for (const variable of dashboard.templating.list) expect(variable.datasource, variable.name).toEqual(DATASOURCE);
    for (const annotation of dashboard.annotations.list) expect(annotation.datasource, annotation.name).toEqual(DATASOURCE);
    // No datasource uid of some particular Grafana left behind.
    const uids = [...fs.readFileSync(DASHBOARD_PATH, 'utf8').matchAll(/"uid":\s*"([^"]*)"/g)].map((m) => m[1]);
    expect(new Set(uids)).toEqual(new Set(['${DS_PROMETHEUS}', 'slotproxy']));
  });

  it('has the rows traffic, latency, errors, backends & health, failovers & migrations, clients, process', () => {
    expect(panels.filter((p) => p.type === 'row').map((p) => p.title)).toEqual(ROWS);
  });

  it('gives every panel a query and a unique id; a heatmap for latency', () => {
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const panel of panels.filter((p) => p.type !== 'row')) {
      expect(panel.targets?.length, panel.title).toBeGreaterThan(0);
      for (const target of panel.targets ?? []) expect(target.expr.trim(), panel.title).not.toBe('');
    }
    expect(panels.some((p) => p.type === 'heatmap' && /duration_seconds_bucket/.test(p.targets![0]!.expr))).toBe(true);
  });

  it('queries only metrics the proxy exports', () => {
    const exported = exportedNames();
    const unknown = new Set<string>();
    for (const query of panelQueries(dashboard)) {
      for (const [name] of query.expr.matchAll(/\bslotproxy_[a-z0-9_]+/g)) if (!exported.has(name)) unknown.add(`${query.panel}: ${name}`);
    }
    expect([...unknown]).toEqual([]);
  });
});
