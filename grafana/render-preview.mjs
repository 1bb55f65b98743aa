#!/usr/bin/env node
// Renders a static preview of slotproxy-dashboard.json: the dashboard's own PromQL, run as range
// queries against a Prometheus that scraped a proxy, drawn as SVG charts in one HTML page. For
// places without Grafana; take a PNG of the page with headless Chromium (grafana/README.md).
//
//   node grafana/render-preview.mjs --prometheus http://127.0.0.1:9090 --minutes 5 --out preview.html
//
// Plain Node (>= 18: global fetch), no dependencies. Grafana's variables are replaced as the
// "All" selection would set them.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => (arg.startsWith('--') ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs), []),
);
const prometheus = args.prometheus ?? 'http://127.0.0.1:9090';
const minutes = Number(args.minutes ?? 5);
const out = args.out ?? 'dashboard-preview.html';
const rateInterval = args['rate-interval'] ?? '15s';
const dashboard = JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), 'slotproxy-dashboard.json'), 'utf8'));

/** The panels shown, by title: one or two per row of the dashboard. */
const SHOWN = [
  'Commands/s by command',
  'Client bytes/s',
  'Command latency p50 / p99 by class',
  'Command latency heatmap',
  'Error ratio by command',
  'Backend errors/s by shard and kind',
  'Backend requests/s by node',
  'Node up (health checks)',
  'Node role (1 = primary)',
  'Failovers by shard and outcome',
  'Connected clients',
  'Pipeline depth p50 / p99',
  'CPU',
  'Event loop lag',
];
const COLORS = ['#7eb26d', '#eab839', '#6ed0e0', '#ef843c', '#e24d42', '#1f78c1', '#ba43a9', '#705da0', '#508642', '#cca300', '#447ebc', '#c15c17'];
const WIDTH = 620;
const HEIGHT = 250;
const PLOT = { left: 60, right: 10, top: 10, bottom: 24 };

const end = Math.floor(Date.now() / 1000);
const start = end - minutes * 60;
const step = Math.max(1, Math.round((minutes * 60) / 300));

function substitute(expr) {
  return expr
    .replace(/\$\{?__rate_interval\}?/g, rateInterval)
    .replace(/\$\{?__range\}?/g, `${minutes}m`)
    .replace(/\$\{?__interval\}?/g, `${step}s`)
    .replace(/\$\{?job\}?/g, '.+')
    .replace(/\$\{?instance\}?/g, '.+');
}

async function rangeQuery(expr) {
  const url = `${prometheus}/api/v1/query_range?query=${encodeURIComponent(substitute(expr))}&start=${start}&end=${end}&step=${step}`;
  const body = await (await fetch(url)).json();
  if (body.status !== 'success') throw new Error(`${expr}: ${body.error}`);
  return body.data.result;
}

function legendOf(format, metric) {
  if (!format || format === '__auto') return Object.entries(metric).filter(([k]) => k !== '__name__').map(([k, v]) => `${k}=${v}`).join(' ') || 'value';
  return format.replace(/\{\{\s*(\w+)\s*\}\}/g, (_, label) => metric[label] ?? '');
}

function formatValue(value, unit) {
  const abs = Math.abs(value);
  const si = (v, suffix) => (abs >= 1e9 ? `${(v / 1e9).toFixed(1)}G` : abs >= 1e6 ? `${(v / 1e6).toFixed(1)}M` : abs >= 1e3 ? `${(v / 1e3).toFixed(1)}k` : `${+v.toFixed(2)}`) + suffix;
  switch (unit) {
    case 's':
      return abs >= 1 ? `${+value.toFixed(2)} s` : abs >= 1e-3 ? `${+(value * 1e3).toFixed(2)} ms` : `${+(value * 1e6).toFixed(0)} µs`;
    case 'percentunit':
      return `${+(value * 100).toFixed(1)}%`;
    case 'Bps':
      return si(value, 'B/s');
    case 'bytes':
      return si(value, 'B');
    case 'ops':
      return si(value, ' ops/s');
    case 'cps':
      return si(value, '/s');
    default:
      return si(value, '');
  }
}

function escape(text) {
  return String(text).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function axes(maxY, unit) {
  const w = WIDTH - PLOT.left - PLOT.right;
  const h = HEIGHT - PLOT.top - PLOT.bottom;
  const parts = [];
  for (let i = 0; i <= 4; i++) {
    const y = PLOT.top + h - (h * i) / 4;
    parts.push(`<line x1="${PLOT.left}" x2="${PLOT.left + w}" y1="${y}" y2="${y}" stroke="#2c3235"/>`);
    parts.push(`<text x="${PLOT.left - 6}" y="${y + 4}" text-anchor="end">${escape(formatValue((maxY * i) / 4, unit))}</text>`);
  }
  for (let i = 0; i <= 5; i++) {
    const t = start + ((end - start) * i) / 5;
    const x = PLOT.left + (w * i) / 5;
    const label = new Date(t * 1000).toISOString().slice(11, 19);
    parts.push(`<text x="${x}" y="${HEIGHT - 6}" text-anchor="middle">${label}</text>`);
  }
  return parts.join('');
}

function lineChart(panel, series) {
  const unit = panel.fieldConfig?.defaults?.unit;
  const w = WIDTH - PLOT.left - PLOT.right;
  const h = HEIGHT - PLOT.top - PLOT.bottom;
  let maxY = panel.fieldConfig?.defaults?.max ?? 0;
  for (const s of series) for (const [, v] of s.values) if (Number.isFinite(v) && v > maxY) maxY = v;
  if (maxY === 0) maxY = 1;
  const x = (t) => PLOT.left + ((t - start) / (end - start)) * w;
  const y = (v) => PLOT.top + h - (v / maxY) * h;
  const paths = series.map((s, i) => {
    let d = '';
    let isDrawing = false;
    for (const [t, v] of s.values) {
      if (!Number.isFinite(v)) {
        isDrawing = false;
        continue;
      }
      d += `${isDrawing ? 'L' : 'M'}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      isDrawing = true;
    }
    return `<path d="${d}" fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="1.5"/>`;
  });
  return `<svg width="${WIDTH}" height="${HEIGHT}">${axes(maxY, unit)}${paths.join('')}</svg>`;
}

function heatmapChart(panel, series) {
  const w = WIDTH - PLOT.left - PLOT.right;
  const h = HEIGHT - PLOT.top - PLOT.bottom;
  const buckets = series
    .map((s) => ({ le: s.metric.le === '+Inf' ? Infinity : Number(s.metric.le), values: new Map(s.values) }))
    .sort((a, b) => a.le - b.le);
  const times = [...new Set(series.flatMap((s) => s.values.map(([t]) => t)))].sort((a, b) => a - b);
  const rows = buckets.length;
  const cellW = w / Math.max(1, times.length);
  const cellH = h / Math.max(1, rows);
  let max = 0;
  const counts = times.map((t) =>
    buckets.map((b, i) => {
      const c = (b.values.get(t) ?? 0) - (i > 0 ? buckets[i - 1].values.get(t) ?? 0 : 0);
      if (c > max) max = c;
      return c;
    }),
  );
  const cells = [];
  counts.forEach((column, ti) =>
    column.forEach((c, bi) => {
      if (!(c > 0)) return;
      const alpha = Math.sqrt(c / max);
      cells.push(
        `<rect x="${(PLOT.left + ti * cellW).toFixed(1)}" y="${(PLOT.top + h - (bi + 1) * cellH).toFixed(1)}" width="${(cellW + 0.5).toFixed(1)}" height="${(cellH - 1).toFixed(1)}" fill="rgba(255,120,10,${alpha.toFixed(3)})"/>`,
      );
    }),
  );
  const labels = buckets.map(
    (b, i) => `<text x="${PLOT.left - 6}" y="${(PLOT.top + h - i * cellH - cellH / 2 + 4).toFixed(1)}" text-anchor="end">${b.le === Infinity ? '+Inf' : escape(formatValue(b.le, 's'))}</text>`,
  );
  return `<svg width="${WIDTH}" height="${HEIGHT}">${cells.join('')}${labels.join('')}</svg>`;
}

const panels = [];
for (const title of SHOWN) {
  const panel = dashboard.panels.find((p) => p.title === title);
  if (panel === undefined) throw new Error(`no panel "${title}" in the dashboard`);
  const series = [];
  for (const target of panel.targets) {
    for (const s of await rangeQuery(target.expr)) {
      series.push({ metric: s.metric, legend: legendOf(target.legendFormat, s.metric), values: s.values.map(([t, v]) => [Number(t), Number(v)]) });
    }
  }
  const chart = panel.type === 'heatmap' ? heatmapChart(panel, series) : lineChart(panel, series);
  const legend =
    panel.type === 'heatmap'
      ? ''
      : series
          .slice(0, 10)
          .map((s, i) => `<span><i style="background:${COLORS[i % COLORS.length]}"></i>${escape(s.legend)}</span>`)
          .join('') + (series.length > 10 ? `<span>+${series.length - 10} more</span>` : '');
  panels.push(`<div class="panel"><h3>${escape(title)}</h3>${chart}<div class="legend">${legend}</div></div>`);
}

const html = `<!doctype html><html><head><meta charset="utf-8"><title>slotproxy dashboard preview</title><style>
body { background:#111217; color:#ccccdc; font:12px Helvetica, Arial, sans-serif; margin:16px; width:${2 * (WIDTH + 26)}px }
h1 { font-size:18px; margin:0 0 4px } p { margin:0 0 12px; color:#8e8e9e }
.grid { display:grid; grid-template-columns:repeat(2, ${WIDTH + 16}px); gap:10px }
.panel { background:#181b1f; border:1px solid #2c3235; border-radius:3px; padding:6px 8px }
h3 { font-size:13px; margin:0 0 4px; font-weight:500 } svg text { fill:#8e8e9e; font-size:10px }
.legend span { margin-right:10px; white-space:nowrap; display:inline-block } .legend i { display:inline-block; width:10px; height:3px; margin-right:4px; vertical-align:middle }
</style></head><body>
<h1>slotproxy</h1><p>grafana/slotproxy-dashboard.json queries, ${minutes} min from ${escape(prometheus.replace(/^https?:\/\//, ''))}, ${new Date(end * 1000).toISOString().slice(0, 16)} UTC</p>
<div class="grid">${panels.join('\n')}</div></body></html>`;
writeFileSync(out, html);
console.log(`wrote ${out}: ${panels.length} panels`);
