import type { Pool } from 'pg';
import { openArtifactStore } from '../activities/objectStore';
import type { Histogram, QualityDetails } from '../ml/quality';
import type { FinalCheckReport, ForgettingReport, InstructReport, InstructSummary, ModelScores } from '../schemas/pipeline';

/**
 * `dacp run report ID`: one self-contained HTML file (inline CSS and SVG, no script, nothing
 * fetched) that an approver or auditor opens anywhere: data quality, training curves, the
 * forgetting gate and the final check (base vs candidate), the instruction score, sample answers,
 * votes and every hash. Built from the database and the artifact store only, so it needs no
 * Temporal server.
 */

export interface RunReportData {
  runId: string;
  name: string;
  state: string;
  stage: string;
  initiator: string;
  specSha256: string;
  createdAt: string;
  finishedAt: string | null;
  error: string | null;
  generatedAt: string;
  quality: Record<string, { input: number; kept: number; removed: Record<string, number>; removedBytes?: Record<string, number>; redactions: Record<string, number>; train?: number; heldout?: number }> | null;
  /** From the stored quality report: a few redacted examples per removal reason, and histograms, by role. */
  qualityDetails: Record<string, QualityDetails> | null;
  /** Loss per step, per training stage and round. */
  curves: { stage: string; round: number; points: [number, number][] }[];
  forgetting: ForgettingReport[];
  finalCheck: FinalCheckReport | null;
  instruct: InstructSummary | null;
  samples: InstructReport['samples'];
  datasets: { stage: string; role: string; split: string; docs: number; tokens: number; sha256: string }[];
  versions: { versionId: string; sha256: string }[];
  deployments: { alias: string; versionId: string | null; kind: string; actor: string | null; at: string }[];
  votes: { principal: string; decision: string; comment: string | null; at: string; keyId: string | null }[];
  chainHead: string | null;
  auditRows: number;
}

const iso = (d: unknown) => (d instanceof Date ? d.toISOString() : d === null || d === undefined ? null : String(d));

export async function loadRunReport(pool: Pool, artifactsDir: string, runId: string): Promise<RunReportData | null> {
  const run = (await pool.query('SELECT * FROM runs WHERE run_id = $1', [runId])).rows[0] as Record<string, unknown> | undefined;
  if (!run) return null;
  const q = async (sql: string) => (await pool.query(sql, [runId])).rows as Record<string, unknown>[];
  const metrics = (run.metrics ?? {}) as Record<string, unknown>;
  const loss = await q(`SELECT stage, round, step, value FROM metrics WHERE run_id = $1 AND name = 'loss' ORDER BY stage, round, step`);
  const curves = new Map<string, RunReportData['curves'][number]>();
  for (const r of loss) {
    const key = `${String(r.stage)}:${String(r.round)}`;
    if (!curves.has(key)) curves.set(key, { stage: r.stage as string, round: r.round as number, points: [] });
    curves.get(key)!.points.push([r.step as number, r.value as number]);
  }
  const evaluations = await q('SELECT kind, round, report, report_uri, sha256 FROM evaluations WHERE run_id = $1 ORDER BY kind, round');
  const forgetting = evaluations.filter((e) => e.kind === 'forgetting').map((e) => e.report as ForgettingReport);
  const finals = evaluations.filter((e) => e.kind === 'final_check').map((e) => e.report as FinalCheckReport);
  const instructRow = evaluations.filter((e) => e.kind === 'instruct').pop();
  let samples: InstructReport['samples'] = [];
  if (instructRow) {
    try {
      samples = (await openArtifactStore(artifactsDir).getJson<InstructReport>({ uri: instructRow.report_uri as string, sha256: instructRow.sha256 as string })).samples;
    } catch {
      // the report file is elsewhere or pruned: its figures are in the row
    }
  }
  const quality = (metrics.quality as { perRole?: RunReportData['quality'] } | undefined)?.perRole ?? null;
  let qualityDetails: RunReportData['qualityDetails'] = null;
  const qualityRef = (metrics.quality as { report?: { uri: string; sha256: string } } | undefined)?.report;
  if (qualityRef) {
    try {
      qualityDetails = (await openArtifactStore(artifactsDir).getJson<{ details?: Record<string, QualityDetails> }>(qualityRef)).details ?? null;
    } catch {
      // the report file is elsewhere: its counts are in the run's metrics
    }
  }
  const audit = await q('SELECT count(*)::int AS n, (SELECT sha256 FROM audit_log WHERE run_id = $1 ORDER BY id DESC LIMIT 1) AS head FROM audit_log WHERE run_id = $1');
  return {
    runId,
    name: ((run.spec as { name?: string }).name ?? runId) as string,
    state: run.state as string,
    stage: run.stage as string,
    initiator: run.initiator as string,
    specSha256: run.spec_sha256 as string,
    createdAt: iso(run.created_at)!,
    finishedAt: iso(run.finished_at),
    error: (run.error as string | null) ?? null,
    generatedAt: new Date().toISOString(),
    quality,
    qualityDetails,
    curves: [...curves.values()],
    forgetting,
    finalCheck: finals.pop() ?? (metrics.finalCheck as FinalCheckReport | undefined) ?? null,
    instruct: (instructRow?.report as InstructSummary | undefined) ?? null,
    samples,
    datasets: (await q('SELECT stage, role, split, docs, tokens, sha256 FROM datasets WHERE run_id = $1 ORDER BY stage, role, split')).map((d) => ({
      stage: d.stage as string, role: d.role as string, split: d.split as string, docs: d.docs as number, tokens: Number(d.tokens), sha256: d.sha256 as string,
    })),
    versions: (await q('SELECT version_id, sha256 FROM model_versions WHERE run_id = $1 ORDER BY created_at')).map((v) => ({ versionId: v.version_id as string, sha256: v.sha256 as string })),
    deployments: (await q('SELECT alias, version_id, kind, actor, created_at FROM deployments WHERE run_id = $1 ORDER BY id')).map((d) => ({
      alias: d.alias as string, versionId: (d.version_id as string | null) ?? null, kind: d.kind as string, actor: (d.actor as string | null) ?? null, at: iso(d.created_at)!,
    })),
    votes: (await q('SELECT principal, decision, comment, decided_at, signature FROM approvals WHERE run_id = $1 ORDER BY id')).map((v) => ({
      principal: v.principal as string,
      decision: v.decision as string,
      comment: (v.comment as string | null) ?? null,
      at: iso(v.decided_at)!,
      keyId: (v.signature as { statement?: { keyId?: string } } | null)?.statement?.keyId ?? null,
    })),
    chainHead: (audit[0]?.head as string | null) ?? null,
    auditRows: (audit[0]?.n as number) ?? 0,
  };
}

// ---- HTML

const esc = (text: unknown) =>
  String(text ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] as string);
const num = (x: number | undefined) => (x === undefined || x === null ? '–' : Number.isFinite(x) ? Number(x.toPrecision(4)).toString() : String(x));
const pct = (x: number | undefined) => (x === undefined ? '–' : `${(x * 100).toFixed(1)} %`);

/** Long or blank-heavy text (a tiny model's answer, say) kept readable: runs of blank lines folded, 400 characters at most. */
const clip = (text: string) => {
  const folded = text.replace(/\s*\n\s*\n[\s\n]*/g, '\n\n').trim();
  return folded.length > 400 ? `${folded.slice(0, 400)}…` : folded || '(empty)';
};

const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b'];

/** A line chart as inline SVG: one polyline per series, axes with ticks, a legend. */
export function lineChartSvg(series: { label: string; points: [number, number][] }[], o: { title: string; xLabel: string; yLabel: string }): string {
  const W = 640;
  const H = 300;
  const m = { l: 60, r: 20, t: 30, b: 45 };
  const all = series.flatMap((s) => s.points).filter(([, y]) => Number.isFinite(y));
  if (!all.length) return `<p class="empty">${esc(o.title)}: no points recorded</p>`;
  const [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  const [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  const sx = (x: number) => m.l + ((x - x0) / (x1 - x0 || 1)) * (W - m.l - m.r);
  const sy = (y: number) => H - m.b - ((y - y0) / (y1 - y0 || 1)) * (H - m.t - m.b);
  const ticks = (a: number, b: number) => Array.from({ length: 5 }, (_, i) => a + ((b - a) * i) / 4);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-label="${esc(o.title)}" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}">`,
    `<text x="${W / 2}" y="18" text-anchor="middle" class="title">${esc(o.title)}</text>`,
    `<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" class="axis"/>`,
    `<line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${H - m.b}" class="axis"/>`,
  ];
  for (const x of ticks(x0, x1)) parts.push(`<text x="${sx(x).toFixed(1)}" y="${H - m.b + 16}" text-anchor="middle" class="tick">${esc(num(Math.round(x)))}</text>`);
  for (const y of ticks(y0, y1)) {
    parts.push(`<line x1="${m.l}" y1="${sy(y).toFixed(1)}" x2="${W - m.r}" y2="${sy(y).toFixed(1)}" class="grid"/>`);
    parts.push(`<text x="${m.l - 6}" y="${(sy(y) + 4).toFixed(1)}" text-anchor="end" class="tick">${esc(num(y))}</text>`);
  }
  parts.push(`<text x="${W / 2}" y="${H - 8}" text-anchor="middle" class="label">${esc(o.xLabel)}</text>`);
  parts.push(`<text x="14" y="${H / 2}" text-anchor="middle" class="label" transform="rotate(-90 14 ${H / 2})">${esc(o.yLabel)}</text>`);
  series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    const points = s.points.filter(([, y]) => Number.isFinite(y)).map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ');
    parts.push(`<polyline class="series" data-label="${esc(s.label)}" fill="none" stroke="${color}" stroke-width="2" points="${points}"/>`);
    parts.push(`<rect x="${W - m.r - 150}" y="${m.t + i * 16}" width="10" height="10" fill="${color}"/><text x="${W - m.r - 135}" y="${m.t + 9 + i * 16}" class="legend">${esc(s.label)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}

/** Bars for each measure, one per model, on a log scale (perplexities span orders of magnitude). */
export function barChartSvg(groups: { label: string; bars: { label: string; value: number }[] }[], o: { title: string; yLabel: string }): string {
  const values = groups.flatMap((g) => g.bars.map((b) => b.value)).filter((v) => Number.isFinite(v) && v > 0);
  if (!values.length) return `<p class="empty">${esc(o.title)}: nothing measured</p>`;
  const W = 640;
  const H = 280;
  const m = { l: 60, r: 20, t: 30, b: 50 };
  const lo = Math.log10(Math.min(...values)) - 0.1;
  const hi = Math.log10(Math.max(...values)) + 0.1;
  const sy = (v: number) => H - m.b - ((Math.log10(v) - lo) / (hi - lo || 1)) * (H - m.t - m.b);
  const groupWidth = (W - m.l - m.r) / groups.length;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-label="${esc(o.title)}" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}">`,
    `<text x="${W / 2}" y="18" text-anchor="middle" class="title">${esc(o.title)}</text>`,
    `<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" class="axis"/>`,
    `<text x="14" y="${H / 2}" text-anchor="middle" class="label" transform="rotate(-90 14 ${H / 2})">${esc(o.yLabel)} (log)</text>`,
  ];
  groups.forEach((g, gi) => {
    const barWidth = (groupWidth * 0.8) / g.bars.length;
    g.bars.forEach((b, bi) => {
      if (!(Number.isFinite(b.value) && b.value > 0)) return;
      const x = m.l + gi * groupWidth + groupWidth * 0.1 + bi * barWidth;
      const y = sy(b.value);
      parts.push(`<rect class="bar" data-label="${esc(`${g.label}: ${b.label}`)}" x="${x.toFixed(1)}" y="${y.toFixed(1)}" width="${(barWidth - 2).toFixed(1)}" height="${(H - m.b - y).toFixed(1)}" fill="${PALETTE[bi % PALETTE.length]}"/>`);
      parts.push(`<text x="${(x + barWidth / 2).toFixed(1)}" y="${(y - 4).toFixed(1)}" text-anchor="middle" class="tick">${esc(num(b.value))}</text>`);
    });
    parts.push(`<text x="${(m.l + gi * groupWidth + groupWidth / 2).toFixed(1)}" y="${H - m.b + 18}" text-anchor="middle" class="label">${esc(g.label)}</text>`);
  });
  const labels = groups[0]?.bars.map((b) => b.label) ?? [];
  labels.forEach((label, i) => parts.push(`<rect x="${m.l + i * 150}" y="${H - 16}" width="10" height="10" fill="${PALETTE[i % PALETTE.length]}"/><text x="${m.l + 15 + i * 150}" y="${H - 7}" class="legend">${esc(label)}</text>`));
  parts.push('</svg>');
  return parts.join('\n');
}

/** A histogram as bars over its bins, the bin edges under them. */
export function histogramSvg(h: Histogram, o: { title: string; xLabel: string }): string {
  const total = h.counts.reduce((a, b) => a + b, 0);
  if (!total) return `<p class="empty">${esc(o.title)}: no documents</p>`;
  const W = 640;
  const H = 220;
  const m = { l: 50, r: 20, t: 30, b: 50 };
  const top = Math.max(...h.counts);
  const bw = (W - m.l - m.r) / h.counts.length;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" class="chart histogram" role="img" aria-label="${esc(o.title)}" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}">`,
    `<text x="${W / 2}" y="18" text-anchor="middle" class="title">${esc(o.title)}</text>`,
    `<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" class="axis"/>`,
    `<text x="${W / 2}" y="${H - 8}" text-anchor="middle" class="label">${esc(o.xLabel)}</text>`,
    `<text x="${m.l - 6}" y="${m.t + 4}" text-anchor="end" class="tick">${top}</text>`,
  ];
  h.counts.forEach((count, i) => {
    const x = m.l + i * bw;
    const height = (count / top) * (H - m.t - m.b);
    if (count > 0) parts.push(`<rect class="bar" data-bin="${esc(`${num(h.edges[i])}–${num(h.edges[i + 1])}`)}" data-count="${count}" x="${x.toFixed(1)}" y="${(H - m.b - height).toFixed(1)}" width="${Math.max(1, bw - 1).toFixed(1)}" height="${height.toFixed(1)}" fill="${PALETTE[0]}"/>`);
    if (i % Math.ceil(h.counts.length / 6) === 0) parts.push(`<text x="${x.toFixed(1)}" y="${H - m.b + 14}" text-anchor="middle" class="tick">${esc(num(h.edges[i]))}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}

function table(head: string[], rows: (string | number)[][], cls = ''): string {
  return `<table${cls ? ` class="${cls}"` : ''}><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>${rows
    .map((r) => `<tr>${r.map((c) => `<td>${typeof c === 'number' ? esc(num(c)) : c}</td>`).join('')}</tr>`)
    .join('')}</tbody></table>`;
}

const hash = (h: string | null | undefined) => (h ? `<code class="hash">${esc(h)}</code>` : '–');

function scoresRows(before: ModelScores, after: ModelScores): (string | number)[][] {
  const rows: (string | number)[][] = [
    ['general perplexity', before.generalPerplexity, after.generalPerplexity],
    ['domain perplexity', before.domainPerplexity, after.domainPerplexity],
  ];
  if (before.domainAccuracy !== undefined) rows.push(['domain task accuracy', before.domainAccuracy, after.domainAccuracy ?? NaN]);
  if (before.generalAccuracy !== undefined) rows.push(['general task accuracy', before.generalAccuracy, after.generalAccuracy ?? NaN]);
  if (before.instructionTokenAccuracy !== undefined) rows.push(['instruction token accuracy', before.instructionTokenAccuracy, after.instructionTokenAccuracy ?? NaN]);
  return rows;
}

const CSS = `
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}.hash{font-size:12px;word-break:break-all}.pass{color:#197a19;font-weight:600}.fail{color:#b00;font-weight:600}
.chart{display:block;margin:.5rem 0;background:#fff;border:1px solid #eee}.chart .axis{stroke:#333}.chart .grid{stroke:#eee}
.chart text{font:11px system-ui,sans-serif;fill:#333}.chart .title{font-size:13px;font-weight:600}.empty{color:#777}
.sample td{white-space:pre-wrap}.meta td:first-child{font-weight:600}`;

export function runReportHtml(r: RunReportData): string {
  const verdict = (passed: boolean) => `<span class="${passed ? 'pass' : 'fail'}">${passed ? 'passed' : 'failed'}</span>`;
  const sections: string[] = [];
  sections.push(
    `<h1>dacp run ${esc(r.runId)}</h1>`,
    table(['', ''], [
      ['run', esc(r.runId)], ['spec', `${esc(r.name)} ${hash(r.specSha256)}`], ['state', `${esc(r.state)} (stage ${esc(r.stage)})`],
      ['initiator', esc(r.initiator)], ['started', esc(r.createdAt)], ['finished', esc(r.finishedAt ?? '–')],
      ...(r.error ? [['error', esc(r.error)]] : []), ['report written', esc(r.generatedAt)],
    ], 'meta'),
  );

  sections.push('<h2 id="quality">Data quality</h2>');
  if (!r.quality) sections.push('<p class="empty">no quality figures recorded</p>');
  else {
    const reasons = [...new Set(Object.values(r.quality).flatMap((q) => Object.keys(q.removed)))].sort();
    const pii = [...new Set(Object.values(r.quality).flatMap((q) => Object.keys(q.redactions)))].sort();
    sections.push(table(
      ['role', 'documents in', 'kept', 'train', 'held-out', ...reasons.map((x) => `removed: ${x}`), ...pii.map((x) => `redacted: ${x}`)],
      Object.entries(r.quality).map(([role, q]) => [esc(role), q.input, q.kept, q.train ?? NaN, q.heldout ?? NaN, ...reasons.map((x) => q.removed[x] ?? 0), ...pii.map((x) => q.redactions[x] ?? 0)]),
    ));
    const bytes = Object.entries(r.quality).filter(([, q]) => q.removedBytes && Object.values(q.removedBytes).some((b) => b > 0));
    if (bytes.length) {
      sections.push(table(['role', ...reasons.map((x) => `bytes removed: ${x}`)], bytes.map(([role, q]) => [esc(role), ...reasons.map((x) => q.removedBytes?.[x] ?? 0)])));
    }
  }
  for (const [role, d] of Object.entries(r.qualityDetails ?? {})) {
    sections.push(`<h3 class="quality-role">${esc(role)}</h3>`);
    sections.push(histogramSvg(d.histograms.length, { title: `${role}: document length`, xLabel: 'characters (log scale)' }));
    if (d.histograms.repetition) sections.push(histogramSvg(d.histograms.repetition, { title: `${role}: repetition score`, xLabel: 'share of characters in repeated lines or 5-grams' }));
    if (d.histograms.symbols) sections.push(histogramSvg(d.histograms.symbols, { title: `${role}: symbol score`, xLabel: 'share of symbols among visible characters' }));
    const examples = Object.entries(d.examples).filter(([, list]) => list.length);
    if (examples.length) {
      sections.push(`<p>Examples of removed documents (redacted, shortened):</p><ul class="examples">${examples
        .flatMap(([reason, list]) => list.map((text) => `<li><b>${esc(reason)}</b>: ${esc(text)}</li>`))
        .join('')}</ul>`);
    }
  }

  sections.push('<h2 id="training">Training</h2>');
  for (const stage of ['dacp', 'instruct', 'bootstrap']) {
    const series = r.curves.filter((c) => c.stage === stage).map((c) => ({ label: `round ${c.round}`, points: c.points }));
    if (series.length) sections.push(lineChartSvg(series, { title: `${stage === 'dacp' ? 'continual pretraining' : stage === 'instruct' ? 'instruction tuning' : 'bootstrap'}: training loss`, xLabel: 'step', yLabel: 'loss' }));
  }
  if (!r.curves.length) sections.push('<p class="empty">no training steps recorded</p>');

  sections.push('<h2 id="forgetting">Forgetting gate (after continual pretraining)</h2>');
  if (!r.forgetting.length) sections.push('<p class="empty">the run did not reach the forgetting check</p>');
  for (const f of r.forgetting) {
    sections.push(
      `<p>round ${f.round}, replay ratio ${num(f.replayRatio)}: ${verdict(f.passed)}; general perplexity change ${pct(f.generalRegression)} (budget ${pct(f.budgets.maxGeneralRegression)}), domain gain ${pct(f.domainGain)} (floor ${pct(f.budgets.minDomainGain)})</p>`,
      table(['measure', 'base', 'adapted'], scoresRows(f.base, f.adapted)),
      ...(f.reasons.length ? [`<ul>${f.reasons.map((x) => `<li>${esc(x)}</li>`).join('')}</ul>`] : []),
    );
  }
  const lastForgetting = r.forgetting[r.forgetting.length - 1];
  if (lastForgetting) {
    sections.push(barChartSvg(
      [
        { label: 'general perplexity', bars: [{ label: 'base', value: lastForgetting.base.generalPerplexity }, { label: 'adapted', value: lastForgetting.adapted.generalPerplexity }, ...(r.finalCheck ? [{ label: 'candidate', value: r.finalCheck.candidate.generalPerplexity }] : [])] },
        { label: 'domain perplexity', bars: [{ label: 'base', value: lastForgetting.base.domainPerplexity }, { label: 'adapted', value: lastForgetting.adapted.domainPerplexity }, ...(r.finalCheck ? [{ label: 'candidate', value: r.finalCheck.candidate.domainPerplexity }] : [])] },
      ],
      { title: 'perplexity: base, adapted and the candidate that would ship', yLabel: 'perplexity' },
    ));
  }

  sections.push('<h2 id="final">Final check (the candidate that would ship)</h2>');
  if (!r.finalCheck) sections.push('<p class="empty">no final check recorded</p>');
  else {
    const f = r.finalCheck;
    sections.push(
      `<p>against ${esc(f.reference.kind)} ${esc(f.reference.versionId)} ${hash(f.reference.sha256)}: ${verdict(f.passed)}</p>`,
      table(['measure', f.reference.kind, 'candidate'], scoresRows(f.referenceScores, f.candidate)),
      ...(f.reasons.length ? [`<ul>${f.reasons.map((x) => `<li>${esc(x)}</li>`).join('')}</ul>`] : []),
    );
  }

  sections.push('<h2 id="instruct">Instruction score</h2>');
  if (!r.instruct) sections.push('<p class="empty">no instruction evaluation recorded</p>');
  else {
    const { base, tuned } = r.instruct;
    sections.push(table(['measure', 'base', 'tuned'], [
      ['response perplexity', base.responsePerplexity, tuned.responsePerplexity],
      ['token accuracy', base.tokenAccuracy, tuned.tokenAccuracy],
      ['exact match', base.exactMatch, tuned.exactMatch],
      ['ROUGE-L', base.rougeL, tuned.rougeL],
    ]));
  }
  sections.push('<h2 id="samples">Sample answers</h2>');
  sections.push(r.samples.length
    ? table(['prompt', 'expected', 'generated (greedy)'], r.samples.slice(0, 8).map((s) => [esc(clip(s.prompt)), esc(clip(s.expected)), esc(clip(s.generated))]), 'sample')
    : '<p class="empty">no samples</p>');

  sections.push('<h2 id="approval">Approval</h2>');
  sections.push(r.votes.length
    ? table(['principal', 'decision', 'when', 'signed with key', 'comment'], r.votes.map((v) => [esc(v.principal), esc(v.decision), esc(v.at), v.keyId ? `<code>${esc(v.keyId)}</code>` : 'unsigned', esc(v.comment ?? '')]))
    : '<p class="empty">no votes yet</p>');
  if (r.deployments.length) sections.push(table(['alias', 'version', 'kind', 'by', 'when'], r.deployments.map((d) => [esc(d.alias), esc(d.versionId ?? 'removed'), esc(d.kind), esc(d.actor ?? 'dacp'), esc(d.at)])));

  sections.push('<h2 id="hashes">Hashes</h2>');
  sections.push(table(['what', 'sha256'], [
    ...r.datasets.map((d) => [esc(`dataset ${d.stage} ${d.role}/${d.split} (${d.docs} docs, ${d.tokens} tokens)`), hash(d.sha256)]),
    ...r.versions.map((v) => [esc(`model version ${v.versionId}`), hash(v.sha256)]),
    ['run spec', hash(r.specSha256)],
    [esc(`audit chain head (${r.auditRows} rows)`), hash(r.chainHead)],
  ]));

  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<title>dacp run ${esc(r.runId)}</title><style>${CSS}</style></head>
<body>
${sections.join('\n')}
</body></html>
`;
}
