import { formatDomainMix } from '../schemas/candidates';

/**
 * The replay trade-off an approver looks at: for each candidate replay ratio, how much domain
 * perplexity it gained and how much general perplexity it gave up, against the gate's budget.
 * Pure functions: a table (for text and JSON) and a self-contained SVG plot.
 */

export interface TradeoffPoint {
  replayRatio: number;
  /** The domain sources' weights, where the run weighs several. */
  domainMix?: Record<string, number>;
  /** Relative fall of domain perplexity vs the base (0.4 = −40 %). */
  domainGain: number;
  /** Relative rise of general perplexity vs the base (0.1 = +10 %). */
  generalRegression: number;
  passed: boolean;
  chosen: boolean;
  /** A candidate that failed to train or evaluate: listed in the table, not plotted. */
  error?: string;
}

const pct = (x: number) => `${(x * 100).toFixed(1)} %`;

/** "manuals 0.70 / tickets 0.30"; empty for a run whose domain sources are one pool. */
export function mixLabel(mix: Record<string, number> | undefined): string {
  return mix ? formatDomainMix(mix) : '';
}

/** By domain mix, then by replay ratio: the order of the table and of each mix's curve. */
const byMixThenRatio = (a: TradeoffPoint, b: TradeoffPoint) => mixLabel(a.domainMix).localeCompare(mixLabel(b.domainMix)) || a.replayRatio - b.replayRatio;

/** Rows of the trade-off table, sorted by domain mix and replay ratio; the chosen one is marked. */
export function tradeoffTable(points: TradeoffPoint[]): string {
  const rows = [...points].sort(byMixThenRatio);
  const mixes = rows.some((p) => p.domainMix);
  const width = Math.max('domain mix'.length, ...rows.map((p) => mixLabel(p.domainMix).length));
  const mixColumn = (p: TradeoffPoint | null) => (mixes ? `${(p ? mixLabel(p.domainMix) : 'domain mix').padEnd(width)}  ` : '');
  const header = `${mixColumn(null)}replay ratio  domain gain  general change  gate     `;
  const lines = rows.map((p) =>
    p.error !== undefined
      ? `${mixColumn(p)}${p.replayRatio.toFixed(2).padStart(12)}  ${'–'.padStart(11)}  ${'–'.padStart(14)}  failed: ${p.error}`
      : `${mixColumn(p)}${p.replayRatio.toFixed(2).padStart(12)}  ${pct(p.domainGain).padStart(11)}  ${pct(p.generalRegression).padStart(14)}  ${(p.passed ? 'passed' : 'failed').padEnd(7)}${p.chosen ? '  ← chosen' : ''}`,
  );
  return [header.trimEnd(), ...lines].join('\n');
}

const escapeXml = (text: string) => text.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** A round, readable step for an axis spanning `span`. */
function niceStep(span: number): number {
  const raw = span / 5;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * magnitude) return m * magnitude;
  return 10 * magnitude;
}

/**
 * Domain gain (y) against general regression (x), one labelled point per replay ratio, the
 * general budget as a vertical line, the chosen point ringed. Width × height in CSS pixels.
 */
export function tradeoffSvg(all: TradeoffPoint[], budget: { maxGeneralRegression: number }, size = { width: 520, height: 340 }): string {
  const points = all.filter((p) => p.error === undefined);
  const { width, height } = size;
  const margin = { left: 64, right: 24, top: 28, bottom: 48 };
  const xs = [...points.map((p) => p.generalRegression), budget.maxGeneralRegression, 0];
  const ys = [...points.map((p) => p.domainGain), 0];
  const pad = (lo: number, hi: number) => {
    const span = hi - lo || Math.abs(hi) || 0.1;
    return [lo - span * 0.1, hi + span * 0.1] as const;
  };
  const [x0, x1] = pad(Math.min(...xs), Math.max(...xs));
  const [y0, y1] = pad(Math.min(...ys), Math.max(...ys));
  const px = (x: number) => margin.left + ((x - x0) / (x1 - x0)) * (width - margin.left - margin.right);
  const py = (y: number) => height - margin.bottom - ((y - y0) / (y1 - y0)) * (height - margin.top - margin.bottom);
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`);
  parts.push(`<title>Replay trade-off: domain gain against general regression per replay ratio</title>`);
  parts.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="white"/>`);
  // Axes and ticks.
  for (const [axis, lo, hi] of [['x', x0, x1], ['y', y0, y1]] as const) {
    const step = niceStep(hi - lo);
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-12; v += step) {
      if (axis === 'x') {
        parts.push(`<line x1="${px(v).toFixed(1)}" y1="${margin.top}" x2="${px(v).toFixed(1)}" y2="${height - margin.bottom}" stroke="#eee"/>`);
        parts.push(`<text x="${px(v).toFixed(1)}" y="${height - margin.bottom + 16}" text-anchor="middle">${escapeXml(pct(v))}</text>`);
      } else {
        parts.push(`<line x1="${margin.left}" y1="${py(v).toFixed(1)}" x2="${width - margin.right}" y2="${py(v).toFixed(1)}" stroke="#eee"/>`);
        parts.push(`<text x="${margin.left - 6}" y="${(py(v) + 4).toFixed(1)}" text-anchor="end">${escapeXml(pct(v))}</text>`);
      }
    }
  }
  parts.push(`<line x1="${margin.left}" y1="${height - margin.bottom}" x2="${width - margin.right}" y2="${height - margin.bottom}" stroke="#333"/>`);
  parts.push(`<line x1="${margin.left}" y1="${margin.top}" x2="${margin.left}" y2="${height - margin.bottom}" stroke="#333"/>`);
  parts.push(`<text x="${(margin.left + width - margin.right) / 2}" y="${height - 10}" text-anchor="middle">general perplexity change (lower is better)</text>`);
  parts.push(`<text transform="translate(16 ${(margin.top + height - margin.bottom) / 2}) rotate(-90)" text-anchor="middle">domain perplexity gain</text>`);
  // The budget: points right of it forget too much.
  const bx = px(budget.maxGeneralRegression).toFixed(1);
  parts.push(`<line class="budget" x1="${bx}" y1="${margin.top}" x2="${bx}" y2="${height - margin.bottom}" stroke="#c0392b" stroke-dasharray="5 4"/>`);
  parts.push(`<text x="${bx}" y="${margin.top - 8}" text-anchor="middle" fill="#c0392b">budget ${escapeXml(pct(budget.maxGeneralRegression))}</text>`);
  // One curve per domain mix, in replay order, then the points.
  const ordered = [...points].sort(byMixThenRatio);
  for (const label of new Set(ordered.map((p) => mixLabel(p.domainMix)))) {
    const curve = ordered.filter((p) => mixLabel(p.domainMix) === label);
    if (curve.length < 2) continue;
    const path = curve.map((p, i) => `${i ? 'L' : 'M'}${px(p.generalRegression).toFixed(1)} ${py(p.domainGain).toFixed(1)}`).join(' ');
    parts.push(`<path class="curve" d="${path}" fill="none" stroke="#2c7fb8" stroke-width="1.5"/>`);
  }
  for (const p of ordered) {
    const cx = px(p.generalRegression).toFixed(1);
    const cy = py(p.domainGain).toFixed(1);
    const mix = mixLabel(p.domainMix);
    parts.push(
      `<circle class="candidate" data-replay-ratio="${p.replayRatio}"${mix ? ` data-domain-mix="${escapeXml(mix)}"` : ''} cx="${cx}" cy="${cy}" r="5" fill="${p.passed ? '#2c7fb8' : '#aaa'}"/>`,
    );
    if (p.chosen) parts.push(`<circle class="chosen" cx="${cx}" cy="${cy}" r="10" fill="none" stroke="#27ae60" stroke-width="2.5"/>`);
    parts.push(`<text x="${(Number(cx) + 8).toFixed(1)}" y="${(Number(cy) - 8).toFixed(1)}">replay ${p.replayRatio}${mix ? ` · ${escapeXml(mix)}` : ''}${p.chosen ? ' (chosen)' : ''}</text>`);
  }
  parts.push('</svg>');
  return parts.join('\n');
}
