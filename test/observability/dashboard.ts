import * as fs from 'node:fs';
import * as path from 'node:path';

/** Reading grafana/slotproxy-dashboard.json the way Grafana would, for the tests. */

export const DASHBOARD_PATH = path.resolve(__dirname, '..', '..', 'grafana', 'slotproxy-dashboard.json');

export interface DashboardTarget {
  readonly refId: string;
  readonly expr: string;
  readonly datasource?: { readonly type?: string; readonly uid?: string };
}

export interface DashboardPanel {
  readonly id: number;
  readonly type: string;
  readonly title: string;
  readonly datasource?: { readonly type?: string; readonly uid?: string };
  readonly targets?: readonly DashboardTarget[];
  /** Panels of a collapsed row. */
  readonly panels?: readonly DashboardPanel[];
}

export interface Dashboard {
  readonly __inputs: readonly { readonly name: string; readonly type: string; readonly pluginId: string }[];
  readonly panels: readonly DashboardPanel[];
  readonly templating: {
    readonly list: readonly { readonly name: string; readonly type: string; readonly datasource?: { readonly uid?: string }; readonly definition?: string }[];
  };
  readonly annotations: { readonly list: readonly { readonly name: string; readonly expr?: string; readonly datasource?: { readonly uid?: string } }[] };
}

export function loadDashboard(): Dashboard {
  return JSON.parse(fs.readFileSync(DASHBOARD_PATH, 'utf8')) as Dashboard;
}

/** Every panel, those inside collapsed rows included. */
export function allPanels(dashboard: Dashboard): DashboardPanel[] {
  return dashboard.panels.flatMap((panel) => [panel, ...(panel.panels ?? [])]);
}

/** One query of one panel, with Grafana's variables replaced for a direct Prometheus query. */
export interface PanelQuery {
  readonly panel: string;
  readonly refId: string;
  readonly expr: string;
}

/**
 * Grafana's template variables as the dashboard's "All" selection and a time range would set
 * them: `$job`/`$instance` become the variables' allValue `.+`, `$__rate_interval` a window
 * that holds many 1 s scrapes, `$__range` the last few minutes.
 */
export function substituteVariables(expr: string, rateInterval = '30s', range = '5m'): string {
  return expr
    .replace(/\$\{?__rate_interval\}?/g, rateInterval)
    .replace(/\$\{?__range\}?/g, range)
    .replace(/\$\{?__interval\}?/g, '5s')
    .replace(/\$\{?job\}?/g, '.+')
    .replace(/\$\{?instance\}?/g, '.+');
}

export function panelQueries(dashboard: Dashboard, rateInterval?: string): PanelQuery[] {
  return allPanels(dashboard).flatMap((panel) =>
    (panel.targets ?? []).map((target) => ({ panel: panel.title, refId: target.refId, expr: substituteVariables(target.expr, rateInterval) })),
  );
}
