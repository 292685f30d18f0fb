import { Context } from '@temporalio/activity';
import { insertEvaluation } from '../db/records';
import { initBackend } from '../ml/backend';
import { instructionScore, perplexity, type EvalProgress } from '../ml/evaluate';
import { modelFromFileTensors, readModelFileHeader } from '../ml/modelFile';
import { tfScorer, type Scorer } from '../ml/scorer';
import { choiceAccuracy, type ChoiceItem } from '../ml/choices';
import type { Tokenizer } from '../ml/tokenizer';
import { tradeoffSvg, tradeoffTable } from '../reports/tradeoff';
import type {
  ArtifactRef,
  CandidateSummary,
  DatasetRef,
  FinalCheckReport,
  ForgettingReport,
  GateBudgets,
  InstructReport,
  InstructSummary,
  ModelScores,
  TradeoffReport,
} from '../schemas/pipeline';
import type { DomainMix } from '../schemas/candidates';
import type { RunSpec } from '../schemas/runSpec';
import { loadChoiceSet } from './choiceSets';
import type { ActivityDeps } from './context';
import { gateFigures, gateReasons, r4 } from './gates';
import { readDataset, sourceStreamsOf, tokenStreamOf, type PairDoc } from './datasets';
import { HfEvaluator } from './hfScorer';

const MAX_INSTRUCT_PAIRS = 24;
const SAMPLE_NEW_TOKENS = 48;

/**
 * Heartbeats `{model, set, done, total}` between forward passes: the evaluation functions yield to
 * the event loop there, so the heartbeat reaches the server however long the evaluation runs.
 */
function evalHeartbeat(ctx: Context, model: string, set: string): EvalProgress {
  ctx.heartbeat({ model, set, done: 0, total: null });
  return ({ done, total }) => ctx.heartbeat({ model, set, done, total });
}

/** The multiple-choice sets collect stored for the run, if the spec named any. */
export interface ChoiceSetRefs {
  domain?: ArtifactRef;
  general?: ArtifactRef;
}

/** Relative fall of domain perplexity per source scored on both models. */
function gainBySource(before: ModelScores, after: ModelScores): Record<string, number> {
  const gains: Record<string, number> = {};
  for (const [name, ppl] of Object.entries(after.domainPerplexityBySource ?? {})) {
    const was = before.domainPerplexityBySource?.[name];
    if (was !== undefined) gains[name] = r4(1 - ppl / was);
  }
  return gains;
}

/** A model ready to be scored, in the engine that trains it. */
interface Loaded {
  scorer: Scorer;
  tokenizer: Tokenizer;
}

/**
 * Opens models for one evaluation in the spec's engine: the built-in engine's in this process
 * (TensorFlow.js), the hf engine's in its evaluator process (PyTorch, on the slot's GPU where
 * there is one). `close` frees everything, whatever happened.
 */
async function openModels(deps: ActivityDeps, spec: RunSpec, runId: string, what: string) {
  const open = new Map<string, () => Promise<void>>();
  if (spec.engine.kind === 'hf') {
    const evaluator = await HfEvaluator.start(deps, runId, what, { precision: spec.engine.precision, signal: Context.current().cancellationSignal });
    return {
      engine: 'hf' as const,
      load: async (name: string, ref: ArtifactRef): Promise<Loaded> => {
        const { config, tokenizer } = await readModelFileHeader(await deps.store.localFile(ref));
        const scorer = await evaluator.load(name, ref, config.contextLength);
        open.set(name, () => evaluator.unload(name));
        return { scorer, tokenizer };
      },
      free: async (name: string) => {
        await open.get(name)?.();
        open.delete(name);
      },
      close: () => evaluator.close(),
    };
  }
  await initBackend(deps.tfBackend);
  return {
    engine: 'builtin' as const,
    load: async (name: string, ref: ArtifactRef): Promise<Loaded> => {
      const { model, tokenizer } = modelFromFileTensors(await deps.store.getSafetensors(ref));
      open.set(name, async () => model.dispose());
      return { scorer: tfScorer(model), tokenizer };
    },
    free: async (name: string) => {
      await open.get(name)?.();
      open.delete(name);
    },
    close: async () => {
      for (const dispose of open.values()) await dispose();
      open.clear();
    },
  };
}

/**
 * Forgetting and instruction-score evaluations. They run in the engine that trains the model: on
 * `dacp-gpu` for runs started since evaluation moved there, on `dacp-control` for older ones.
 */
export function evaluationActivities(deps: ActivityDeps) {
  const { store, pool } = deps;

  /** Multiple-choice sets as collect stored them. */
  const loadChoices = async (ref: ArtifactRef | undefined): Promise<ChoiceItem[] | undefined> =>
    ref ? loadChoiceSet(store, ref) : undefined;

  /**
   * What a gate measures of one model: perplexity on held-out general and domain text and, where
   * the run has them, multiple-choice accuracy and instruction token accuracy. Each model reads the
   * sets with its own tokenizer.
   */
  const scoreModel = async (
    ctx: Context,
    name: string,
    loaded: Loaded,
    sets: {
      spec: RunSpec;
      domainHeldout: DatasetRef;
      generalHeldout: DatasetRef;
      choices?: { domain?: ChoiceItem[]; general?: ChoiceItem[] };
      instructPairs?: PairDoc[];
      /** Domain source names to score one by one (a run with domainRatio). */
      bySource?: string[];
    },
  ): Promise<ModelScores> => {
    const maxWindows = sets.spec.forgetting.maxEvalWindows;
    const onProgress = () => ctx.heartbeat({ model: name, set: 'tokenizing' });
    const domain = await tokenStreamOf(deps, loaded.tokenizer, sets.domainHeldout, { onProgress });
    const general = await tokenStreamOf(deps, loaded.tokenizer, sets.generalHeldout, { onProgress });
    const ppl = async (set: 'general' | 'domain', tokens: number[]) =>
      r4((await perplexity(loaded.scorer, tokens, { maxWindows, onProgress: evalHeartbeat(ctx, name, set) })).perplexity);
    const scores: ModelScores = { generalPerplexity: await ppl('general', general), domainPerplexity: await ppl('domain', domain) };
    if (sets.bySource?.length) {
      // Which source gained: each weighted domain source's own held-out text (the gate reads the pool's).
      const streams = await sourceStreamsOf(deps, loaded.tokenizer, sets.domainHeldout, sets.bySource, { onProgress });
      const bySource: Record<string, number> = {};
      for (const source of sets.bySource) {
        const tokens = streams[source] as number[];
        if (tokens.length >= 2) {
          bySource[source] = r4((await perplexity(loaded.scorer, tokens, { maxWindows, onProgress: evalHeartbeat(ctx, name, `domain:${source}`) })).perplexity);
        }
      }
      scores.domainPerplexityBySource = bySource;
    }
    const maxItems = sets.spec.evaluation.maxChoiceItems;
    for (const kind of ['domain', 'general'] as const) {
      const items = sets.choices?.[kind];
      if (!items?.length) continue;
      // Length-normalised (lm-evaluation-harness's acc_norm): choices of different lengths compete fairly.
      const { normalizedAccuracy } = await choiceAccuracy(loaded.scorer, loaded.tokenizer, items, { maxItems, onProgress: evalHeartbeat(ctx, name, `choices-${kind}`) });
      scores[kind === 'domain' ? 'domainAccuracy' : 'generalAccuracy'] = r4(normalizedAccuracy);
    }
    if (sets.instructPairs?.length) {
      const score = await instructionScore(loaded.scorer, loaded.tokenizer, sets.instructPairs, {
        maxPairs: MAX_INSTRUCT_PAIRS,
        maxNewTokens: 1,
        onProgress: evalHeartbeat(ctx, name, 'instruct'),
      });
      scores.instructionTokenAccuracy = r4(score.tokenAccuracy);
    }
    return scores;
  };

  const loadChoiceSets = async (refs: ChoiceSetRefs | undefined) => ({ domain: await loadChoices(refs?.domain), general: await loadChoices(refs?.general) });

  /** Both models scored on the same sets (one loaded at a time) in the run's engine, and the gate's verdict on the difference. */
  const judge = async (
    ctx: Context,
    runId: string,
    sets: Parameters<typeof scoreModel>[3],
    first: { name: string; ref: ArtifactRef },
    second: { name: string; ref: ArtifactRef },
    budgets: GateBudgets,
  ) => {
    const models = await openModels(deps, sets.spec, runId, second.name);
    try {
      const score = async (m: { name: string; ref: ArtifactRef }) => {
        const loaded = await models.load(m.name, m.ref);
        return scoreModel(ctx, m.name, loaded, sets).finally(() => models.free(m.name));
      };
      const before = await score(first);
      const after = await score(second);
      const figures = gateFigures(before, after);
      const reasons = gateReasons(figures, budgets);
      return { before, after, evaluatedBy: models.engine, gate: { ...figures, budgets, passed: reasons.length === 0, reasons } };
    } finally {
      await models.close();
    }
  };

  /** A gate's report: stored as an artifact (what approvers' decisions are bound to) and as an evaluation row. */
  const storeReport = async (kind: 'forgetting' | 'final_check', runId: string, round: number, report: ForgettingReport | FinalCheckReport) => {
    const ref = await store.putJson('reports', { kind, runId, ...report });
    await insertEvaluation(pool, { runId, kind, round, passed: report.passed, report, ref });
    return ref;
  };

  const gateBudgets = (b: Omit<GateBudgets, 'maxInstructionRegression'> & { maxInstructionRegression?: number }): GateBudgets => ({
    maxGeneralRegression: b.maxGeneralRegression,
    minDomainGain: b.minDomainGain,
    minDomainAccuracyGain: b.minDomainAccuracyGain,
    maxGeneralAccuracyDrop: b.maxGeneralAccuracyDrop,
    ...(b.maxInstructionRegression !== undefined ? { maxInstructionRegression: b.maxInstructionRegression } : {}),
  });

  return {
    /**
     * The forgetting gate: the adapted model against the model it started from, on held-out general
     * and domain text (and the run's multiple-choice sets), against the spec's `forgetting` budgets.
     */
    async evaluateForgetting(input: {
      runId: string;
      round: number;
      spec: RunSpec;
      replayRatio: number;
      domainMix?: DomainMix;
      baseModel: ArtifactRef;
      adaptedModel: ArtifactRef;
      domainHeldout: DatasetRef;
      generalHeldout: DatasetRef;
      choiceSets?: ChoiceSetRefs;
    }): Promise<{ report: ForgettingReport; reportRef: ArtifactRef }> {
      const ctx = Context.current();
      const bySource = input.domainMix ? Object.keys(input.domainMix) : undefined;
      const sets = {
        spec: input.spec,
        domainHeldout: input.domainHeldout,
        generalHeldout: input.generalHeldout,
        choices: await loadChoiceSets(input.choiceSets),
        ...(bySource ? { bySource } : {}),
      };
      const { before, after, gate, evaluatedBy } = await judge(ctx, input.runId, sets, { name: 'base', ref: input.baseModel }, { name: 'adapted', ref: input.adaptedModel }, gateBudgets(input.spec.forgetting));
      const report: ForgettingReport = {
        round: input.round,
        evaluatedBy,
        replayRatio: input.replayRatio,
        ...(input.domainMix ? { domainMix: input.domainMix, domainGainBySource: gainBySource(before, after) } : {}),
        base: before,
        adapted: after,
        ...gate,
      };
      return { report, reportRef: await storeReport('forgetting', input.runId, input.round, report) };
    },

    /**
     * The final check: the instruction-tuned candidate, which is what would ship, against the
     * production model it would replace (or the base on a first run), on general and domain
     * perplexity, instruction token accuracy and task accuracy, against `forgetting.final`.
     */
    async evaluateFinal(input: {
      runId: string;
      round: number;
      spec: RunSpec;
      instructReplayRatio: number;
      reference: ArtifactRef & { versionId: string; kind: 'production' | 'base' };
      candidateModel: ArtifactRef;
      domainHeldout: DatasetRef;
      generalHeldout: DatasetRef;
      instructHeldout: DatasetRef;
      choiceSets?: ChoiceSetRefs;
    }): Promise<{ report: FinalCheckReport; reportRef: ArtifactRef }> {
      const ctx = Context.current();
      const sets = {
        spec: input.spec,
        domainHeldout: input.domainHeldout,
        generalHeldout: input.generalHeldout,
        choices: await loadChoiceSets(input.choiceSets),
        instructPairs: await readDataset<PairDoc>(store, input.instructHeldout),
      };
      const { before, after, gate, evaluatedBy } = await judge(
        ctx,
        input.runId,
        sets,
        { name: input.reference.kind, ref: input.reference },
        { name: 'candidate', ref: input.candidateModel },
        gateBudgets(input.spec.forgetting.final),
      );
      const report: FinalCheckReport = {
        round: input.round,
        evaluatedBy,
        instructReplayRatio: input.instructReplayRatio,
        reference: { kind: input.reference.kind, versionId: input.reference.versionId, sha256: input.reference.sha256 },
        referenceScores: before,
        candidate: after,
        ...gate,
      };
      return { report, reportRef: await storeReport('final_check', input.runId, input.round, report) };
    },

    /** The replay trade-off of a list of candidates: a table and an SVG plot, stored for the approval request. */
    async recordTradeoff(input: {
      runId: string;
      budget: { maxGeneralRegression: number };
      candidates: Omit<CandidateSummary, 'model' | 'reportRef'>[];
    }): Promise<{ reportRef: ArtifactRef; svg: ArtifactRef }> {
      const points = input.candidates.map((c) => ({ ...c }));
      const svg = await store.put('reports', Buffer.from(tradeoffSvg(points, input.budget)), 'svg');
      const report: TradeoffReport = {
        kind: 'tradeoff',
        runId: input.runId,
        budget: input.budget,
        candidates: input.candidates,
        table: tradeoffTable(points),
        svg,
      };
      const reportRef = await store.putJson('reports', report);
      const chosen = input.candidates.find((c) => c.chosen);
      await insertEvaluation(pool, { runId: input.runId, kind: 'tradeoff', round: chosen?.round ?? 0, passed: Boolean(chosen), report, ref: reportRef });
      return { reportRef, svg };
    },

    /** Instruction-following score of the tuned model vs the base on held-out pairs. */
    async evaluateInstruction(input: {
      runId: string;
      /** Which instruction tuning (a final-check retry tunes again); 0 for runs from before. */
      round?: number;
      spec: RunSpec;
      baseModel: ArtifactRef;
      tunedModel: ArtifactRef;
      heldout: DatasetRef;
    }): Promise<{ reportRef: ArtifactRef; summary: InstructSummary }> {
      const ctx = Context.current();
      const pairs = await readDataset<PairDoc>(store, input.heldout);
      const options = { maxPairs: MAX_INSTRUCT_PAIRS, maxNewTokens: SAMPLE_NEW_TOKENS };
      const models = await openModels(deps, input.spec, input.runId, 'instruct');
      let b: Awaited<ReturnType<typeof instructionScore>>;
      let t: Awaited<ReturnType<typeof instructionScore>>;
      try {
        const base = await models.load('base', input.baseModel);
        b = await instructionScore(base.scorer, base.tokenizer, pairs, { ...options, onProgress: evalHeartbeat(ctx, 'base', 'instruct') });
        await models.free('base');
        const tuned = await models.load('tuned', input.tunedModel);
        t = await instructionScore(tuned.scorer, tuned.tokenizer, pairs, { ...options, onProgress: evalHeartbeat(ctx, 'tuned', 'instruct') });
      } finally {
        await models.close();
      }
      const pick = (s: typeof b) => ({
        responsePerplexity: r4(s.responsePerplexity),
        tokenAccuracy: r4(s.tokenAccuracy),
        exactMatch: r4(s.exactMatch),
        rougeL: r4(s.rougeL),
      });
      const summary: InstructSummary = { base: pick(b), tuned: pick(t) };
      const report: InstructReport = { kind: 'instruct', runId: input.runId, evaluatedBy: models.engine, ...summary, samples: t.samples };
      const reportRef = await store.putJson('reports', report);
      await insertEvaluation(pool, {
        runId: input.runId,
        kind: 'instruct',
        round: input.round ?? 0,
        passed: summary.tuned.responsePerplexity <= summary.base.responsePerplexity,
        report: summary,
        ref: reportRef,
      });
      return { reportRef, summary };
    },
  };
}
