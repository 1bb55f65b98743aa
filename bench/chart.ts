/**
 * A hand-written SVG grouped bar chart: one panel per pipeline depth (each with its own y scale,
 * since -P 16 is an order of magnitude above -P 1), one group per test, one bar per target.
 */

export interface ChartSeries {
  readonly id: string;
  readonly label: string;
  readonly color: string;
}

export interface ChartInput {
  readonly title: string;
  readonly subtitle: string;
  /** One panel each. */
  readonly panels: readonly { readonly id: number; readonly label: string }[];
  /** One bar group each, in every panel. */
  readonly groups: readonly { readonly id: string; readonly label: string }[];
  readonly series: readonly ChartSeries[];
  /** ops/s of one bar, or null when the cell was not measured. */
  readonly value: (panel: number, group: string, series: string) => number | null;
}

const WIDTH = 1200;
const HEIGHT = 560;
const PANEL_TOP = 110;
const PANEL_BOTTOM = HEIGHT - 60;
const PANEL_GAP = 60;
const MARGIN_LEFT = 80;
const MARGIN_RIGHT = 20;
const VALUE_FONT_SIZE = 9.5;
/** Bars narrower than this get vertical value labels ("82.2k" at 9.5 px is about 25 px wide). */
const MIN_BAR_WIDTH_FOR_FLAT_LABELS = 24;

export function formatOps(value: number): string {
  if (value >= 1e6) return `${(value / 1e6).toFixed(value >= 1e7 ? 1 : 2)}M`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(value >= 1e5 ? 0 : 1)}k`;
  return value.toFixed(0);
}

/** A tick step of 1, 2, 2.5 or 5 x 10^k giving about `count` ticks up to `max`. */
function niceStep(max: number, count: number): number {
  const raw = max / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const factor of [1, 2, 2.5, 5, 10]) if (factor * power >= raw) return factor * power;
  return 10 * power;
}

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

export function renderBarChart(input: ChartInput): string {
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="Helvetica, Arial, sans-serif">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="#ffffff"/>`,
    `<text x="${WIDTH / 2}" y="28" text-anchor="middle" font-size="20" font-weight="bold">${escapeXml(input.title)}</text>`,
    `<text x="${WIDTH / 2}" y="50" text-anchor="middle" font-size="12" fill="#555">${escapeXml(input.subtitle)}</text>`,
  );

  // Legend, centred under the title.
  const legendItemWidth = 150;
  let legendX = WIDTH / 2 - (legendItemWidth * input.series.length) / 2;
  for (const series of input.series) {
    out.push(
      `<rect x="${legendX}" y="64" width="14" height="14" fill="${series.color}"/>`,
      `<text x="${legendX + 20}" y="76" font-size="13">${escapeXml(series.label)}</text>`,
    );
    legendX += legendItemWidth;
  }

  const panelCount = input.panels.length;
  const panelWidth = (WIDTH - MARGIN_LEFT - MARGIN_RIGHT - PANEL_GAP * (panelCount - 1)) / panelCount;
  const plotHeight = PANEL_BOTTOM - PANEL_TOP;
  const groupWidth = panelWidth / input.groups.length;
  const barWidth = Math.min(34, (groupWidth * 0.8) / input.series.length);
  // Up to 4 bars per group (26 px each) the value labels fit above their bars. With more, they would
  // run into each other: they are written vertically, which needs more room above the highest bar.
  const isVertical = barWidth < MIN_BAR_WIDTH_FOR_FLAT_LABELS;
  const headroom = isVertical ? 1.14 : 1.08;
  input.panels.forEach((panel, panelIndex) => {
    const left = MARGIN_LEFT + panelIndex * (panelWidth + PANEL_GAP);
    let max = 0;
    for (const group of input.groups) {
      for (const series of input.series) max = Math.max(max, input.value(panel.id, group.id, series.id) ?? 0);
    }
    const step = niceStep(max > 0 ? max * headroom : 1, 5);
    const top = Math.max(step, Math.ceil((max * headroom) / step) * step);
    const y = (value: number): number => PANEL_BOTTOM - (value / top) * plotHeight;

    out.push(
      `<text x="${left + panelWidth / 2}" y="${PANEL_TOP - 10}" text-anchor="middle" font-size="14" font-weight="bold">${escapeXml(panel.label)}</text>`,
    );
    for (let tick = 0; tick <= top + step / 2; tick += step) {
      out.push(
        `<line x1="${left}" y1="${y(tick).toFixed(1)}" x2="${left + panelWidth}" y2="${y(tick).toFixed(1)}" stroke="${tick === 0 ? '#333' : '#e0e0e0'}"/>`,
        `<text x="${left - 6}" y="${(y(tick) + 4).toFixed(1)}" text-anchor="end" font-size="11" fill="#333">${formatOps(tick)}</text>`,
      );
    }
    out.push(
      `<line x1="${left}" y1="${PANEL_TOP}" x2="${left}" y2="${PANEL_BOTTOM}" stroke="#333"/>`,
      `<text transform="translate(${left - 58} ${(PANEL_TOP + PANEL_BOTTOM) / 2}) rotate(-90)" text-anchor="middle" font-size="12">ops/s (higher is better)</text>`,
    );

    input.groups.forEach((group, groupIndex) => {
      const groupLeft = left + groupIndex * groupWidth + (groupWidth - barWidth * input.series.length) / 2;
      input.series.forEach((series, seriesIndex) => {
        const x = groupLeft + seriesIndex * barWidth;
        const centre = x + barWidth / 2;
        const value = input.value(panel.id, group.id, series.id);
        if (value === null) {
          out.push(
            `<text transform="translate(${centre.toFixed(1)} ${PANEL_BOTTOM - 6}) rotate(-90)" font-size="10" fill="#999">n/a</text>`,
          );
          return;
        }
        const barTop = y(value);
        const valueLabel = isVertical
          ? `<text transform="translate(${(centre + VALUE_FONT_SIZE * 0.35).toFixed(1)} ${(barTop - 4).toFixed(1)}) rotate(-90)" font-size="${VALUE_FONT_SIZE}" fill="#222">${formatOps(value)}</text>`
          : `<text x="${centre.toFixed(1)}" y="${(barTop - 4).toFixed(1)}" text-anchor="middle" font-size="${VALUE_FONT_SIZE}" fill="#222">${formatOps(value)}</text>`;
        out.push(
          `<rect x="${(x + 1).toFixed(1)}" y="${barTop.toFixed(1)}" width="${(barWidth - 2).toFixed(1)}" height="${(PANEL_BOTTOM - barTop).toFixed(1)}" fill="${series.color}"><title>${escapeXml(`${series.label} ${group.label} ${panel.label}: ${Math.round(value)} ops/s`)}</title></rect>`,
          valueLabel,
        );
      });
      out.push(
        `<text x="${(left + groupIndex * groupWidth + groupWidth / 2).toFixed(1)}" y="${PANEL_BOTTOM + 18}" text-anchor="middle" font-size="12">${escapeXml(group.label)}</text>`,
      );
    });
    out.push(
      `<text x="${left + panelWidth / 2}" y="${PANEL_BOTTOM + 40}" text-anchor="middle" font-size="12" fill="#333">test</text>`,
    );
  });
  out.push('</svg>', '');
  return out.join('\n');
}
