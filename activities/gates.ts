import type { GateBudgets, GateFigures, ModelScores } from '../schemas/pipeline';

/**
 * The rule both gates apply, as pure functions: after continual pretraining (adapted model vs the
 * model it started from) and before approval (the candidate that would ship vs the production
 * model it would replace, or the base). Figures are relative for perplexity (0.1 = +10 %) and
 * absolute for accuracies (0.05 = 5 points).
 */

/** Round for reports: evidence should read cleanly, and 4 significant digits are plenty. */
export const r4 = (x: number) => Number(x.toPrecision(4));
const pct = (x: number) => `${(x * 100).toFixed(1)} %`;
const points = (x: number) => `${(x * 100).toFixed(1)} points`;

export function gateFigures(before: ModelScores, after: ModelScores): GateFigures {
  const figures: GateFigures = {
    generalRegression: r4(after.generalPerplexity / before.generalPerplexity - 1),
    domainGain: r4(1 - after.domainPerplexity / before.domainPerplexity),
  };
  if (before.domainAccuracy !== undefined && after.domainAccuracy !== undefined) {
    figures.domainAccuracyGain = r4(after.domainAccuracy - before.domainAccuracy);
  }
  if (before.generalAccuracy !== undefined && after.generalAccuracy !== undefined) {
    figures.generalAccuracyDrop = r4(before.generalAccuracy - after.generalAccuracy);
  }
  if (before.instructionTokenAccuracy !== undefined && after.instructionTokenAccuracy !== undefined && before.instructionTokenAccuracy > 0) {
    figures.instructionRegression = r4(1 - after.instructionTokenAccuracy / before.instructionTokenAccuracy);
  }
  return figures;
}

/** Every budget the figures break, in words an approver reads; empty when the gate passes. */
export function gateReasons(figures: GateFigures, budgets: GateBudgets): string[] {
  const reasons: string[] = [];
  // A figure that is not a number (a diverged model, a zero perplexity) fails the gate: it must never pass by default.
  for (const [name, value] of Object.entries(figures)) {
    if (value !== undefined && !Number.isFinite(value)) reasons.push(`${name} could not be measured (${value}); the model's evaluation is not a number`);
  }
  if (figures.generalRegression > budgets.maxGeneralRegression) {
    reasons.push(`general perplexity rose ${pct(figures.generalRegression)} (budget ${pct(budgets.maxGeneralRegression)})`);
  }
  if (figures.domainGain < budgets.minDomainGain) {
    reasons.push(`domain perplexity fell only ${pct(figures.domainGain)} (floor ${pct(budgets.minDomainGain)})`);
  }
  if (figures.domainAccuracyGain !== undefined && figures.domainAccuracyGain < budgets.minDomainAccuracyGain) {
    reasons.push(`domain task accuracy changed ${points(figures.domainAccuracyGain)} (floor ${points(budgets.minDomainAccuracyGain)})`);
  }
  if (figures.generalAccuracyDrop !== undefined && figures.generalAccuracyDrop > budgets.maxGeneralAccuracyDrop) {
    reasons.push(`general task accuracy fell ${points(figures.generalAccuracyDrop)} (budget ${points(budgets.maxGeneralAccuracyDrop)})`);
  }
  if (
    budgets.maxInstructionRegression !== undefined &&
    figures.instructionRegression !== undefined &&
    figures.instructionRegression > budgets.maxInstructionRegression
  ) {
    reasons.push(`instruction token accuracy fell ${pct(figures.instructionRegression)} (budget ${pct(budgets.maxInstructionRegression)})`);
  }
  return reasons;
}
