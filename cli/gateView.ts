import { formatDomainMix } from '../schemas/candidates';
import type { FinalCheckReport, ForgettingReport, GateBudgets, ModelScores } from '../schemas/pipeline';

/**
 * Both gates side by side, as approvers and operators read them: after continual pretraining (the
 * adapted model against the model it started from) and after instruction tuning (the candidate
 * that would ship against the production model it would replace, or the base). One row per
 * measure: before → after, the change, and the budget.
 */

const fmt = (x: number) => (x >= 100 ? x.toFixed(1) : x.toFixed(2));
const pct = (x: number) => `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)} %`;
const pts = (x: number) => `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)} pt`;

type Row = { label: string; cell: (r: GateColumn) => string };

interface GateColumn {
  title: string;
  before: ModelScores;
  after: ModelScores;
  budgets: Partial<GateBudgets>;
  passed: boolean;
  reasons: string[];
  note: string;
}

const rows: Row[] = [
  {
    label: 'general perplexity',
    cell: (c) => `${fmt(c.before.generalPerplexity)} → ${fmt(c.after.generalPerplexity)} (${pct(c.after.generalPerplexity / c.before.generalPerplexity - 1)}, budget ${pct(c.budgets.maxGeneralRegression ?? NaN)})`,
  },
  {
    label: 'domain perplexity',
    cell: (c) => `${fmt(c.before.domainPerplexity)} → ${fmt(c.after.domainPerplexity)} (${pct(c.after.domainPerplexity / c.before.domainPerplexity - 1)}, gain floor ${pct(c.budgets.minDomainGain ?? NaN)})`,
  },
  {
    label: 'domain task accuracy',
    cell: (c) =>
      c.before.domainAccuracy === undefined || c.after.domainAccuracy === undefined
        ? '–'
        : `${fmt(c.before.domainAccuracy)} → ${fmt(c.after.domainAccuracy)} (${pts(c.after.domainAccuracy - c.before.domainAccuracy)}, floor ${pts(c.budgets.minDomainAccuracyGain ?? NaN)})`,
  },
  {
    label: 'general task accuracy',
    cell: (c) =>
      c.before.generalAccuracy === undefined || c.after.generalAccuracy === undefined
        ? '–'
        : `${fmt(c.before.generalAccuracy)} → ${fmt(c.after.generalAccuracy)} (${pts(c.after.generalAccuracy - c.before.generalAccuracy)}, budget −${((c.budgets.maxGeneralAccuracyDrop ?? NaN) * 100).toFixed(1)} pt)`,
  },
  {
    label: 'instruction accuracy',
    cell: (c) =>
      c.before.instructionTokenAccuracy === undefined || c.after.instructionTokenAccuracy === undefined
        ? '–'
        : `${fmt(c.before.instructionTokenAccuracy)} → ${fmt(c.after.instructionTokenAccuracy)} (budget −${((c.budgets.maxInstructionRegression ?? NaN) * 100).toFixed(1)} %)`,
  },
  { label: 'gate', cell: (c) => `${c.passed ? 'passed' : `FAILED: ${c.reasons.join('; ')}`} (${c.note})` },
];

function columns(forgetting: ForgettingReport | undefined, final: FinalCheckReport | undefined): GateColumn[] {
  const out: GateColumn[] = [];
  if (forgetting?.base) {
    out.push({
      title: 'after DACP: adapted vs base',
      before: forgetting.base,
      after: forgetting.adapted,
      budgets: forgetting.budgets,
      passed: forgetting.passed,
      reasons: forgetting.reasons,
      note: `round ${forgetting.round}, replay ratio ${forgetting.replayRatio}${forgetting.domainMix ? `, domain mix ${formatDomainMix(forgetting.domainMix)}` : ''}`,
    });
  }
  if (final?.candidate) {
    out.push({
      title: `after instruction tuning: candidate vs ${final.reference.kind} ${final.reference.versionId}`,
      before: final.referenceScores,
      after: final.candidate,
      budgets: final.budgets,
      passed: final.passed,
      reasons: final.reasons,
      note: `round ${final.round}, instruct replay ratio ${final.instructReplayRatio}`,
    });
  }
  return out;
}

/** Lines of text, indented by `indent`: a header row, then one row per measure. */
/** "  gain by source      legal +92.0 %, telecom -34.5 %": a weighted-domain run's gain per source; none otherwise. */
export function gainBySourceLines(f: ForgettingReport | undefined): string[] {
  const gains = Object.entries(f?.domainGainBySource ?? {});
  return gains.length ? [`  gain by source      ${gains.map(([name, gain]) => `${name} ${pct(gain)}`).join(', ')}`] : [];
}

export function gateComparison(forgetting: ForgettingReport | undefined, final: FinalCheckReport | undefined, indent = '  '): string[] {
  const cols = columns(forgetting, final);
  if (cols.length === 0) return [];
  const cells = rows.map((row) => cols.map((c) => row.cell(c)));
  const width = cols.map((c, i) => Math.max(c.title.length, ...cells.map((r) => (r[i] as string).length)));
  const line = (label: string, parts: string[]) => `${indent}${label.padEnd(22)}${parts.map((p, i) => p.padEnd(width[i] as number)).join('   ')}`.trimEnd();
  return [line('', cols.map((c) => c.title)), ...rows.map((row, r) => line(row.label, cells[r] as string[]))];
}
