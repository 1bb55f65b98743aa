/**
 * Pure helpers of the report: medians, ratios and plain-text tables.
 */
import type { BenchFigures } from './redis-benchmark';

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** Median of every figure independently over the rounds; null when no round succeeded. */
export function medianFigures(runs: readonly BenchFigures[]): BenchFigures | null {
  if (runs.length === 0) return null;
  const of = (pick: (figures: BenchFigures) => number): number => median(runs.map(pick));
  return {
    rps: of((f) => f.rps),
    avgMs: of((f) => f.avgMs),
    minMs: of((f) => f.minMs),
    p50Ms: of((f) => f.p50Ms),
    p95Ms: of((f) => f.p95Ms),
    p99Ms: of((f) => f.p99Ms),
    maxMs: of((f) => f.maxMs),
  };
}

/** Throughput ratio (higher is better for the first) and p99 ratio (lower is better for the first). */
export interface Ratio {
  readonly throughput: number;
  readonly p99: number;
}

export function ratio(of: BenchFigures | null, to: BenchFigures | null): Ratio | null {
  if (of === null || to === null || to.rps === 0 || to.p99Ms === 0) return null;
  return { throughput: of.rps / to.rps, p99: of.p99Ms / to.p99Ms };
}

export function formatRps(value: number): string {
  return Math.round(value).toLocaleString('en-US');
}

export function formatMs(value: number): string {
  return value.toFixed(3);
}

export function formatRatio(value: number | null | undefined): string {
  return value === null || value === undefined ? '-' : `${value.toFixed(2)}x`;
}

export function formatMiB(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

/**
 * A plain-text table. `groups` optionally spans header cells over several columns
 * (e.g. a target name over its ops/s, p50 and p99 columns). The first column is left-aligned.
 */
export function formatTable(
  header: readonly string[],
  rows: readonly (readonly string[])[],
  groups: readonly { readonly label: string; readonly span: number }[] = [],
): string {
  const widths = header.map((cell, column) => Math.max(cell.length, ...rows.map((row) => (row[column] ?? '').length)));
  // Widen the spanned columns when a group label is longer than them.
  let column = 0;
  for (const group of groups) {
    const spanned = widths.slice(column, column + group.span);
    const available = spanned.reduce((sum, width) => sum + width, 0) + 3 * (group.span - 1);
    if (group.label.length > available) widths[column + group.span - 1] += group.label.length - available;
    column += group.span;
  }
  const line = (cells: readonly string[]): string =>
    cells.map((cell, index) => (index === 0 ? cell.padEnd(widths[index]) : cell.padStart(widths[index]))).join(' | ');
  const out: string[] = [];
  if (groups.length > 0) {
    let start = 0;
    const parts: string[] = [];
    for (const group of groups) {
      const width = widths.slice(start, start + group.span).reduce((sum, value) => sum + value, 0) + 3 * (group.span - 1);
      parts.push(group.label.length >= width ? group.label : centre(group.label, width));
      start += group.span;
    }
    out.push(parts.join(' | '));
  }
  out.push(line(header));
  out.push(widths.map((width) => '-'.repeat(width)).join('-+-'));
  for (const row of rows) out.push(line(row));
  return out.join('\n');
}

function centre(text: string, width: number): string {
  const left = Math.floor((width - text.length) / 2);
  return `${' '.repeat(left)}${text}`.padEnd(width);
}
