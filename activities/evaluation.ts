import { Context } from '@temporalio/activity';
import { insertEvaluation } from '../db/records';
import { initBackend } from '../ml/backend';
import { instructionScore, perplexity } from '../ml/evaluate';
import { deserializeModel } from '../ml/modelFile';
import type { Tokenizer } from '../ml/tokenizer';
import type { ArtifactRef, DatasetRef, ForgettingReport, InstructReport, InstructSummary } from '../schemas/pipeline';
import type { RunSpec } from '../schemas/runSpec';
import type { ActivityDeps } from './context';
import { readDataset, type PairDoc, type TextDoc } from './datasets';

const MAX_INSTRUCT_PAIRS = 24;
const SAMPLE_NEW_TOKENS = 48;

function tokens(tokenizer: Tokenizer, docs: TextDoc[]): number[] {
  const out: number[] = [];
  for (const doc of docs) out.push(...tokenizer.encode(doc.text), tokenizer.eosId);
  return out;
}

/** Round for reports: evidence should read cleanly, and 4 significant digits are plenty. */
const r4 = (x: number) => Number(x.toPrecision(4));

/** forgetting and instruction-score evaluations; they run on `dacp-control`. */
export function evaluationActivities(deps: ActivityDeps) {
  const { store, pool } = deps;
  const load = async (ref: ArtifactRef) => deserializeModel(await store.get(ref));

  return {
    /** Perplexity of base vs adapted on held-out general and domain text, against the spec's budgets. */
    async evaluateForgetting(input: {
      runId: string;
      round: number;
      spec: RunSpec;
      replayRatio: number;
      baseModel: ArtifactRef;
      adaptedModel: ArtifactRef;
      domainHeldout: DatasetRef;
      generalHeldout: DatasetRef;
    }): Promise<{ report: ForgettingReport; reportRef: ArtifactRef }> {
      await initBackend(deps.tfBackend);
      const ctx = Context.current();
      const base = await load(input.baseModel);
      const adapted = await load(input.adaptedModel);
      const maxWindows = input.spec.forgetting.maxEvalWindows;
      const domain = tokens(base.tokenizer, await readDataset<TextDoc>(store, input.domainHeldout));
      const general = tokens(base.tokenizer, await readDataset<TextDoc>(store, input.generalHeldout));
      ctx.heartbeat('base');
      const before = {
        generalPerplexity: r4(perplexity(base.model, general, { maxWindows }).perplexity),
        domainPerplexity: r4(perplexity(base.model, domain, { maxWindows }).perplexity),
      };
      ctx.heartbeat('adapted');
      const after = {
        generalPerplexity: r4(perplexity(adapted.model, general, { maxWindows }).perplexity),
        domainPerplexity: r4(perplexity(adapted.model, domain, { maxWindows }).perplexity),
      };
      base.model.dispose();
      adapted.model.dispose();
      const budgets = {
        maxGeneralRegression: input.spec.forgetting.maxGeneralRegression,
        minDomainGain: input.spec.forgetting.minDomainGain,
      };
      const generalRegression = r4(after.generalPerplexity / before.generalPerplexity - 1);
      const domainGain = r4(1 - after.domainPerplexity / before.domainPerplexity);
      const reasons: string[] = [];
      if (generalRegression > budgets.maxGeneralRegression) {
        reasons.push(
          `general perplexity rose ${(generalRegression * 100).toFixed(1)} % (budget ${(budgets.maxGeneralRegression * 100).toFixed(1)} %)`,
        );
      }
      if (domainGain < budgets.minDomainGain) {
        reasons.push(`domain perplexity fell only ${(domainGain * 100).toFixed(1)} % (floor ${(budgets.minDomainGain * 100).toFixed(1)} %)`);
      }
      const report: ForgettingReport = {
        round: input.round,
        replayRatio: input.replayRatio,
        base: before,
        adapted: after,
        generalRegression,
        domainGain,
        budgets,
        passed: reasons.length === 0,
        reasons,
      };
      const reportRef = await store.putJson('reports', { kind: 'forgetting', runId: input.runId, ...report });
      await insertEvaluation(pool, { runId: input.runId, kind: 'forgetting', round: input.round, passed: report.passed, report, ref: reportRef });
      return { report, reportRef };
    },

    /** Instruction-following score of the tuned model vs the base on held-out pairs. */
    async evaluateInstruction(input: {
      runId: string;
      spec: RunSpec;
      baseModel: ArtifactRef;
      tunedModel: ArtifactRef;
      heldout: DatasetRef;
    }): Promise<{ reportRef: ArtifactRef; summary: InstructSummary }> {
      await initBackend(deps.tfBackend);
      const ctx = Context.current();
      const pairs = await readDataset<PairDoc>(store, input.heldout);
      const base = await load(input.baseModel);
      const tuned = await load(input.tunedModel);
      const options = { maxPairs: MAX_INSTRUCT_PAIRS, maxNewTokens: SAMPLE_NEW_TOKENS };
      ctx.heartbeat('base');
      const b = instructionScore(base.model, base.tokenizer, pairs, options);
      ctx.heartbeat('tuned');
      const t = instructionScore(tuned.model, tuned.tokenizer, pairs, options);
      base.model.dispose();
      tuned.model.dispose();
      const pick = (s: typeof b) => ({
        responsePerplexity: r4(s.responsePerplexity),
        tokenAccuracy: r4(s.tokenAccuracy),
        exactMatch: r4(s.exactMatch),
        rougeL: r4(s.rougeL),
      });
      const summary: InstructSummary = { base: pick(b), tuned: pick(t) };
      const report: InstructReport = { kind: 'instruct', runId: input.runId, ...summary, samples: t.samples };
      const reportRef = await store.putJson('reports', report);
      await insertEvaluation(pool, {
        runId: input.runId,
        kind: 'instruct',
        round: 0,
        passed: summary.tuned.responsePerplexity <= summary.base.responsePerplexity,
        report: summary,
        ref: reportRef,
      });
      return { reportRef, summary };
    },
  };
}
