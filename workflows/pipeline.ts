import {
  ApplicationFailure,
  CancellationScope,
  executeChild,
  isCancellation,
  patched,
  setHandler,
  startChild,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { VersionedModel } from '../activities/registry';
import type {
  ApprovalOutcome,
  ArtifactRef,
  CandidateSummary,
  DatasetRef,
  FinalCheckReport,
  ForgettingReport,
  InstructSummary,
  PipelineInput,
  PipelineResult,
  RunState,
  Stage,
  TrainingResult,
} from '../schemas/pipeline';
import { qualityPartCount } from '../schemas/pipeline';
import { candidatePoints, formatDomainMix, type CandidatePoint, type DomainMix } from '../schemas/candidates';
import type { RunSpec } from '../schemas/runSpec';
import { approvalGate } from './approval';
import { candidateWorkflowId, chooseCandidate, dacpCandidate, type CandidateInput, type CandidateOutcome } from './candidate';
import { EVALUATION_IN_ENGINE, stageActivities } from './proxies';
import { approvalWorkflowId, statusQuery } from './messages';
import { dacpStageKey, dacpStateKey } from './searchAttributes';

function findDataset(datasets: DatasetRef[], role: DatasetRef['role'], split: DatasetRef['split']): DatasetRef {
  const found = datasets.find((d) => d.role === role && d.split === split);
  if (!found) throw ApplicationFailure.nonRetryable(`no ${split} ${role} dataset was produced`, 'DatasetMissing');
  return found;
}

type TradeoffCandidate = Omit<CandidateSummary, 'model' | 'reportRef'>;

/** A candidate whose child workflow failed: a point without figures, never chosen. */
interface FailedCandidate {
  round: number;
  replayRatio: number;
  domainMix?: DomainMix;
  adapted: null;
  error: string;
}

/** `domainMix` only where the run has one, so that runs without read as they always did. */
const withMix = (mix: DomainMix | undefined) => (mix ? { domainMix: mix } : {});

function failedCandidate(round: number, point: CandidatePoint, error: string): FailedCandidate {
  return { round, replayRatio: point.replayRatio, ...withMix(point.domainMix), adapted: null, error };
}

function summarize(c: CandidateOutcome | FailedCandidate): TradeoffCandidate {
  if (c.adapted === null) {
    return { round: c.round, replayRatio: c.replayRatio, ...withMix(c.domainMix), domainGain: 0, generalRegression: 0, passed: false, chosen: false, error: c.error };
  }
  return {
    round: c.round,
    replayRatio: c.replayRatio,
    ...withMix(c.domainMix),
    domainGain: c.report.domainGain,
    generalRegression: c.report.generalRegression,
    passed: c.report.passed,
    chosen: false,
  };
}

function failureType(err: unknown): string | undefined {
  let current: unknown = err;
  while (current instanceof Error && current.cause instanceof Error) current = current.cause;
  return current instanceof ApplicationFailure ? current.type ?? undefined : undefined;
}

function failureMessage(err: unknown): string {
  // Activity failures wrap the activity's own error as `cause`; that is the message a user can act on.
  let current: unknown = err;
  while (current instanceof Error && current.cause instanceof Error) current = current.cause;
  return current instanceof Error ? current.message : String(err);
}

/** Patch id: the quality stage in parts (quality.partMB); runs from before run it as one activity. */
export const QUALITY_PARTS = 'quality-parts';

/**
 * One DACP run: collect → quality → dacp → forgetting → instruct → approval → deploy.
 * Only URIs and sha256 hashes of data and models pass through here; every transition is recorded
 * in Postgres (runs + audit_log) by an idempotent activity.
 */
export async function dacpPipeline(input: PipelineInput): Promise<PipelineResult> {
  const { spec } = input;
  // A run a schedule starts has no run id in its input (the input is fixed when the schedule is
  // made): its workflow id, the schedule's id and the firing's time, is its run id.
  const runId = input.runId ?? workflowInfo().workflowId;
  // Runs recorded before this change replay without it (docs/reliability-replay.md): training
  // progress left history, cancellation waits for training's last checkpoint, the resolved base
  // model is recorded as soon as it is known.
  const progressOutOfHistory = patched('progress-out-of-history');
  // Activities load the spec from the artifact store; runs from before carry it inline.
  const specArg = input.specRef ? { specRef: input.specRef } : { spec: spec as unknown as RunSpec };
  // The DACP recipe (docs/recipe in the README): the final check on what ships, instruction tuning
  // with replay, two registry lines, and candidates per replay ratio. Runs from before replay without.
  const recipe = patched('dacp-recipe-final-check');
  const { control: controlActivities, gpu: gpuActivities, evaluation } = stageActivities(spec, { waitForTrainingCancellation: progressOutOfHistory });
  // Evaluations run in the engine that trains the model, on the gpu queue; runs from before on the control queue.
  const evaluateInEngine = patched(EVALUATION_IN_ENGINE);
  const evaluationActivities = evaluateInEngine ? evaluation : controlActivities;

  let stage: Stage = 'collect';
  let state: RunState = 'running';
  const metrics: Record<string, unknown> = {};
  const stageSeconds: PipelineResult['stageSeconds'] = {};
  let stageStartedAt = Date.now();
  let sequence = 0;

  setHandler(statusQuery, () => ({
    runId,
    stage,
    state,
    progress: { step: 0, totalSteps: 0, loss: null },
    metrics,
    attempts: {},
    resumedFromStep: null,
  }));

  // Each transition also stores the stage figures on the run's row, where `dacp run status` reads
  // them without a worker. Bounded: one write per stage, round and outcome.
  const record = (event: string, details: Record<string, unknown> = {}) =>
    controlActivities.recordTransition({
      runId,
      key: `${workflowInfo().workflowId}:${workflowInfo().runId}:${++sequence}`,
      event,
      stage,
      state,
      actor: 'dacp',
      details,
      snapshot: { metrics, stageSeconds },
    });

  const enter = async (next: Stage, nextState: RunState = 'running') => {
    const now = Date.now();
    stageSeconds[stage] = (stageSeconds[stage] ?? 0) + (now - stageStartedAt) / 1000;
    stageStartedAt = now;
    stage = next;
    state = nextState;
    upsertSearchAttributes([
      { key: dacpStageKey, value: stage },
      { key: dacpStateKey, value: state },
    ]);
    await record('stage_started');
  };

  const finish = async (finalState: RunState, details: Record<string, unknown>) => {
    const now = Date.now();
    stageSeconds[stage] = (stageSeconds[stage] ?? 0) + (now - stageStartedAt) / 1000;
    stageStartedAt = now;
    state = finalState;
    upsertSearchAttributes([{ key: dacpStateKey, value: state }]);
    await record(`run_${finalState}`, details);
  };

  /**
   * One candidate per replay ratio, trained and evaluated in parallel child workflows; the best
   * under the gate's rule goes on. The trade-off (domain gain against general regression per
   * ratio) is stored as a table and an SVG plot for the approval request. If none passes, the
   * forgetting policy applies: fail, or one more candidate with more replay than the most tried.
   */
  async function trainCandidates(
    ctx: {
      points: CandidatePoint[];
      startModel: VersionedModel;
      data: CandidateInput['data'];
      choiceSets: CandidateInput['choiceSets'];
    },
  ): Promise<{ adapted: TrainingResult; forgetting: ForgettingReport; forgettingRef: ArtifactRef; tradeoff: { reportRef: ArtifactRef; svg: ArtifactRef; candidates: TradeoffCandidate[] } }> {
    const tried: (CandidateOutcome | FailedCandidate)[] = [];
    let points = ctx.points;
    for (let attempt = 0; ; attempt++) {
      const first = tried.length;
      metrics.candidates = [
        ...tried.map(summarize),
        ...points.map((point, i) => ({ round: first + i, replayRatio: point.replayRatio, ...withMix(point.domainMix), state: 'training' })),
      ];
      const mixes = points.some((point) => point.domainMix) ? { mixes: points.map((point) => point.domainMix ?? null) } : {};
      await record('candidates_started', { ratios: points.map((point) => point.replayRatio), ...mixes, rounds: points.map((_, i) => first + i) });
      // Every candidate is awaited, so none is still training when the run records its end; one
      // that fails (it diverged, say) is a failed point on the curve, not the end of the run.
      const settled = await Promise.allSettled(
        points.map(({ replayRatio, domainMix }, i) =>
          executeChild(dacpCandidate, {
            workflowId: candidateWorkflowId(runId, first + i),
            taskQueue: 'dacp-control',
            args: [
              {
                runId,
                round: first + i,
                seedOffset: attempt,
                replayRatio,
                ...withMix(domainMix),
                spec: specArg,
                timeouts: { heartbeatTimeout: spec.heartbeatTimeout, controlHeartbeatTimeout: spec.controlHeartbeatTimeout },
                baseDir: input.baseDir,
                baseModel: ctx.startModel,
                data: ctx.data,
                choiceSets: ctx.choiceSets,
                ...(evaluateInEngine ? { evaluateInEngine: true } : {}),
              } satisfies CandidateInput,
            ],
          }),
        ),
      );
      const cancelled = settled.find((r) => r.status === 'rejected' && isCancellation(r.reason));
      if (cancelled) throw (cancelled as PromiseRejectedResult).reason;
      const outcomes = settled.map((r, i) =>
        r.status === 'fulfilled' ? r.value : failedCandidate(first + i, points[i] as CandidatePoint, failureMessage(r.reason)),
      );
      tried.push(...outcomes);
      const chosen = chooseCandidate(tried.filter((c) => c.adapted !== null) as CandidateOutcome[]);
      const candidates = tried.map((c) => ({ ...summarize(c), chosen: c === chosen }));
      metrics.candidates = candidates;
      const stored = await controlActivities.recordTradeoff({
        runId,
        budget: { maxGeneralRegression: spec.forgetting.maxGeneralRegression },
        candidates,
      });
      if (chosen) {
        metrics.forgetting = chosen.report;
        metrics.dacp = { round: chosen.round, replayRatio: chosen.replayRatio, ...withMix(chosen.domainMix), finalStep: chosen.adapted.finalStep, finalLoss: chosen.adapted.finalLoss, backend: chosen.adapted.backend };
        return { adapted: chosen.adapted, forgetting: chosen.report, forgettingRef: chosen.reportRef, tradeoff: { ...stored, candidates } };
      }
      const reasons = tried.map(
        (c) => `replay ${c.replayRatio}${c.domainMix ? ` (${formatDomainMix(c.domainMix)})` : ''}: ${c.adapted === null ? c.error : c.report.reasons.join(', ')}`,
      );
      if (spec.forgetting.onFail !== 'retry-with-more-replay' || attempt >= spec.forgetting.maxRetries) {
        throw ApplicationFailure.nonRetryable(`forgetting gate failed for every candidate — ${reasons.join('; ')}`, 'ForgettingGateFailed');
      }
      const most = Math.max(...tried.map((c) => c.replayRatio));
      if (most >= 0.95) throw ApplicationFailure.nonRetryable(`forgetting gate failed for every candidate, up to replay 0.95 — ${reasons.join('; ')}`, 'ForgettingGateFailed');
      // One more candidate, with more replay than the most tried, on the domain mix that forgot least.
      const gentlest = tried.reduce<CandidateOutcome | FailedCandidate | undefined>(
        (best, c) => (c.adapted !== null && (best === undefined || best.adapted === null || c.report.generalRegression < best.report.generalRegression) ? c : best),
        undefined,
      );
      points = [{ replayRatio: Math.min(0.95, most + spec.forgetting.replayIncrement), ...withMix(gentlest?.domainMix ?? points[0]?.domainMix) }];
      await record('forgetting_retry', { nextReplayRatio: points[0]?.replayRatio, ...(points[0]?.domainMix ? { nextDomainMix: points[0].domainMix } : {}), reasons });
    }
  }

  try {
    upsertSearchAttributes([
      { key: dacpStageKey, value: stage },
      { key: dacpStateKey, value: state },
    ]);
    // Refuses a second execution under a run id that has records; returns where the deploy alias
    // pointed now, which the deploy compares before moving it (undefined for runs from before).
    const registered = await controlActivities.registerRun({
      runId,
      workflowId: workflowInfo().workflowId,
      executionId: workflowInfo().runId,
      ...specArg,
      initiator: input.initiator,
      ...(input.scheduleId ? { scheduleId: input.scheduleId } : {}),
      ...(input.startSignature ? { startSignature: input.startSignature, baseDir: input.baseDir } : {}),
    });
    await record('stage_started');

    // collect
    const collected = await controlActivities.collectSources({ runId, ...specArg, baseDir: input.baseDir, ...(input.scheduleId ? { scheduleId: input.scheduleId } : {}) });
    metrics.collect = collected.summary;

    // quality
    await enter('quality');
    // A dataset of more than one part (quality.partMB) is judged part by part, as separate
    // activities any control worker may take, then merged in order by qualityFilter. Runs (and
    // schedules) from before, whose input has no part size, and runs whose datasets are one part
    // each, run the stage as one activity; so do runs that carry their spec inline, which every
    // part's input would repeat.
    const partMB = input.specRef ? spec.quality?.partMB : undefined;
    const partCounts = collected.datasets.map((raw) => (partMB === undefined ? 1 : qualityPartCount(raw, partMB)));
    const inParts = partCounts.some((n) => n > 1) && patched(QUALITY_PARTS);
    const parts = inParts
      ? await Promise.all(
          collected.datasets.map((raw, i) => {
            const n = partCounts[i] ?? 1;
            if (n === 1) return null;
            return Promise.all(Array.from({ length: n }, (_, part) => controlActivities.qualityPart({ runId, ...specArg, raw, part, parts: n })));
          }),
        )
      : undefined;
    const cleaned = await controlActivities.qualityFilter({ runId, ...specArg, raw: collected.datasets, ...(parts ? { parts } : {}) });
    metrics.quality = cleaned.summary;
    const data = {
      domainTrain: findDataset(cleaned.datasets, 'domain', 'train'),
      domainHeldout: findDataset(cleaned.datasets, 'domain', 'heldout'),
      replayTrain: findDataset(cleaned.datasets, 'replay', 'train'),
      replayHeldout: findDataset(cleaned.datasets, 'replay', 'heldout'),
      instructTrain: findDataset(cleaned.datasets, 'instruct', 'train'),
      instructHeldout: findDataset(cleaned.datasets, 'instruct', 'heldout'),
    };

    // dacp (with the base model resolved or, for a fresh registry, bootstrapped first)
    await enter('dacp');
    // The line a run continues: since the two-line registry, the adapted model behind production.
    const line = recipe ? (spec.baseModel.line ?? 'pretrained') : undefined;
    let base = await controlActivities.resolveBaseModel({ ref: spec.baseModel.ref, ...(line ? { line } : {}) });
    if (!base) {
      if (!spec.baseModel.bootstrapIfMissing) {
        throw ApplicationFailure.nonRetryable(
          `base model "${spec.baseModel.ref}" is not in the registry; deploy one first or set baseModel.bootstrapIfMissing: true`,
          'BaseModelNotFound',
        );
      }
      metrics.bootstrap = { status: 'training a base model on the replay data (the registry has none)' };
      if (progressOutOfHistory) await record('base_model_bootstrapping');
      const boot = await gpuActivities.bootstrapBaseModel({ runId, ...specArg, baseDir: input.baseDir, corpus: data.replayTrain });
      base = await controlActivities.registerBaseModel({ runId, ...specArg, model: boot.model, corpus: data.replayTrain });
      metrics.bootstrap = { status: 'done', versionId: base.versionId, finalLoss: boot.finalLoss, seconds: boot.seconds };
    }
    const startModel = base;
    metrics.baseModel = base.versionId;
    if (progressOutOfHistory) await record('base_model_resolved', { versionId: base.versionId });

    // Replay that keeps earlier updates: a sample of the domain data that trained the base's line
    // joins the general text (only in runs whose spec asks for it).
    let dacpReplay = data.replayTrain;
    const earlierShare = spec.replayFromEarlierUpdates ?? 0;
    if (earlierShare > 0 && patched('replay-earlier-updates')) {
      const mixed = await controlActivities.mixEarlierUpdates({ runId, share: earlierShare, baseVersionId: startModel.versionId, replayTrain: data.replayTrain });
      metrics.replay = { ...mixed.summary, sha256: mixed.replayTrain.sha256 };
      dacpReplay = mixed.replayTrain;
      await record('replay_mixed', { ...mixed.summary, sha256: mixed.replayTrain.sha256 });
    }

    const choiceSets = collected.choiceSets;
    const points = candidatePoints(spec);
    let adapted: TrainingResult;
    let forgetting: ForgettingReport;
    let forgettingRef: ArtifactRef;
    let tradeoff: { reportRef: ArtifactRef; svg: ArtifactRef; candidates: TradeoffCandidate[] } | undefined;
    if (recipe && points.length > 1) {
      // Find the balance point: one candidate per replay ratio and domain mix, in parallel child workflows.
      ({ adapted, forgetting, forgettingRef, tradeoff } = await trainCandidates({
        points,
        startModel,
        data: { domainTrain: data.domainTrain, replayTrain: dacpReplay, domainHeldout: data.domainHeldout, replayHeldout: data.replayHeldout },
        choiceSets,
      }));
    } else {
      let replayRatio = (points[0] as CandidatePoint).replayRatio;
      // One domain mix, or none (the domain sources as one pool); a pre-recipe run never has one.
      const domainMix = recipe ? points[0]?.domainMix : undefined;
      for (let round = 0; ; round++) {
        if (round > 0) await enter('dacp');
        const trained = await gpuActivities.continualPretrain({
          runId,
          round,
          ...specArg,
          baseDir: input.baseDir,
          replayRatio,
          ...withMix(domainMix),
          baseModel: startModel,
          domain: data.domainTrain,
          replay: dacpReplay,
        });
        metrics.dacp = {
          round,
          replayRatio,
          ...withMix(domainMix),
          finalStep: trained.finalStep,
          finalLoss: trained.finalLoss,
          backend: trained.backend,
          seconds: trained.seconds,
        };

        await enter('forgetting');
        const evaluation = await evaluationActivities.evaluateForgetting({
          runId,
          round,
          ...specArg,
          replayRatio,
          ...withMix(domainMix),
          baseModel: startModel,
          adaptedModel: trained.model,
          domainHeldout: data.domainHeldout,
          generalHeldout: data.replayHeldout,
          ...(choiceSets ? { choiceSets } : {}),
        });
        metrics.forgetting = evaluation.report;
        if (evaluation.report.passed) {
          adapted = trained;
          forgetting = evaluation.report;
          forgettingRef = evaluation.reportRef;
          break;
        }
        const retriesLeft = spec.forgetting.onFail === 'retry-with-more-replay' && round < spec.forgetting.maxRetries;
        if (!retriesLeft) {
          throw ApplicationFailure.nonRetryable(`forgetting gate failed: ${evaluation.report.reasons.join('; ')}`, 'ForgettingGateFailed');
        }
        replayRatio = Math.min(0.95, replayRatio + spec.forgetting.replayIncrement);
        await record('forgetting_retry', { nextReplayRatio: replayRatio, reasons: evaluation.report.reasons });
      }
    }

    // instruction tuning, then the final check on what would ship
    const reference = recipe
      ? ((await controlActivities.resolveReference({ alias: spec.deploy.alias, aliasAtStart: registered?.aliasAtStart })) ?? {
          ...startModel,
          kind: 'base' as const,
        })
      : undefined;
    let instructReplayRatio = recipe ? (spec.instruct?.replayRatio ?? 0) : 0;
    let tuned: TrainingResult;
    let instruct: { reportRef: ArtifactRef; summary: InstructSummary };
    let finalCheck: { report: FinalCheckReport; reportRef: ArtifactRef } | undefined;
    for (let round = 0; ; round++) {
      await enter('instruct');
      tuned = await gpuActivities.instructionTune({
        runId,
        ...specArg,
        baseDir: input.baseDir,
        model: adapted.model,
        pairs: data.instructTrain,
        ...(recipe ? { round, replay: data.replayTrain, replayRatio: instructReplayRatio } : {}),
      });
      instruct = await evaluationActivities.evaluateInstruction({
        runId,
        ...(recipe ? { round } : {}),
        ...specArg,
        baseModel: startModel,
        tunedModel: tuned.model,
        heldout: data.instructHeldout,
      });
      metrics.instruct = { ...instruct.summary, finalLoss: tuned.finalLoss, seconds: tuned.seconds, replayRatio: instructReplayRatio, round };
      if (!reference) break;

      await enter('final_check');
      finalCheck = await evaluationActivities.evaluateFinal({
        runId,
        round,
        ...specArg,
        instructReplayRatio,
        reference,
        candidateModel: tuned.model,
        domainHeldout: data.domainHeldout,
        generalHeldout: data.replayHeldout,
        instructHeldout: data.instructHeldout,
        ...(choiceSets ? { choiceSets } : {}),
      });
      metrics.finalCheck = finalCheck.report;
      if (finalCheck.report.passed) break;
      // A candidate that fails is never offered for approval. More general text in tuning helps
      // only what was forgotten of general text, and only while there is room to add more.
      const final = spec.forgetting.final;
      const forgotGeneral = finalCheck.report.generalRegression > final.maxGeneralRegression ||
        (finalCheck.report.generalAccuracyDrop ?? 0) > final.maxGeneralAccuracyDrop;
      const retriesLeft = final.onFail === 'retry-with-more-replay' && round < final.maxRetries && forgotGeneral && instructReplayRatio < 0.9;
      if (!retriesLeft) {
        throw ApplicationFailure.nonRetryable(`final check failed: ${finalCheck.report.reasons.join('; ')}`, 'FinalCheckFailed');
      }
      instructReplayRatio = Math.min(0.9, instructReplayRatio + final.replayIncrement);
      await record('final_check_retry', { nextInstructReplayRatio: instructReplayRatio, reasons: finalCheck.report.reasons });
    }

    // approval
    await enter('approval');
    // The approvers' keys as they are now: votes are checked against these, whatever changes later.
    const escalation = spec.approval.escalation;
    const signing = patched('signed-decisions')
      ? { keys: await controlActivities.approverKeys({ approvers: [...spec.approval.approvers, ...(escalation?.approvers ?? [])] }) }
      : undefined;
    const reminders = spec.approval.remindEvery !== undefined || escalation !== undefined
      ? { ...(spec.approval.remindEvery !== undefined ? { everyMs: spec.approval.remindEvery } : {}), ...(escalation ? { escalation: { afterMs: escalation.after, approvers: escalation.approvers } } : {}) }
      : undefined;
    // The run's HTML report as it stands now (quality, curves, both gates, samples), linked from the request.
    const runReport = patched('approval-run-report') ? await controlActivities.writeRunReport({ runId }) : undefined;
    const gate = await startChild(approvalGate, {
      workflowId: approvalWorkflowId(runId),
      taskQueue: 'dacp-control',
      args: [
        {
          runId,
          initiator: input.initiator,
          approvers: spec.approval.approvers,
          quorum: spec.approval.quorum,
          timeoutMs: spec.approval.timeout,
          artifacts: {
            baseModel: startModel,
            adaptedModel: adapted.model,
            tunedModel: tuned.model,
            datasets: cleaned.datasets.map((d) => ({ role: d.role, split: d.split, sha256: d.sha256, docs: d.docs })),
            forgettingReport: forgettingRef,
            instructReport: instruct.reportRef,
            ...(finalCheck ? { finalCheckReport: finalCheck.reportRef } : {}),
            ...(tradeoff ? { tradeoffReport: tradeoff.reportRef, tradeoffSvg: tradeoff.svg } : {}),
            ...(runReport ? { runReport } : {}),
          },
          forgetting,
          instruct: instruct.summary,
          ...(finalCheck ? { finalCheck: finalCheck.report } : {}),
          ...(tradeoff ? { candidates: tradeoff.candidates } : {}),
          ...(signing ? { signing } : {}),
          ...(reminders ? { reminders } : {}),
        },
      ],
    });
    // A newer update supersedes the older ones of its schedule still waiting at their gates.
    if (input.scheduleId && spec.approval.supersede !== false && patched('supersede-earlier-runs')) {
      const closed = await controlActivities.supersedeEarlierRuns({ runId, scheduleId: input.scheduleId });
      if (closed.length) metrics.supersedes = closed;
    }
    // Only now, with the gate open to votes, is the run awaiting approval.
    state = 'awaiting_approval';
    upsertSearchAttributes([{ key: dacpStateKey, value: state }]);
    await record('approval_requested', { approvers: spec.approval.approvers, quorum: spec.approval.quorum, ...(metrics.supersedes ? { supersedes: metrics.supersedes } : {}) });
    const approval: ApprovalOutcome = await gate.result();
    metrics.approval = {
      outcome: approval.outcome, reason: approval.reason, decisions: approval.decisions.length,
      ...(approval.supersededBy ? { supersededBy: approval.supersededBy } : {}),
    };
    if (approval.outcome === 'rejected' || approval.outcome === 'superseded') {
      await finish(approval.outcome, { reason: approval.reason, ...(approval.supersededBy ? { supersededBy: approval.supersededBy } : {}) });
      return { runId, state, reason: approval.reason, forgetting, instruct: instruct.summary, finalCheck: finalCheck?.report, stageSeconds };
    }

    // deploy
    await enter('deploy');
    const deployed = await controlActivities.deployModel({
      runId,
      ...specArg,
      aliasAtStart: registered?.aliasAtStart,
      model: tuned.model,
      ...(recipe ? { adaptedModel: adapted.model, finalCheck: finalCheck?.report } : {}),
      baseModel: startModel,
      datasets: cleaned.datasets,
      forgetting,
      instruct: instruct.summary,
    });
    metrics.deploy = deployed;
    // The deployed version, loaded and asked as `dacp serve` would; a failure puts the alias back.
    if (spec.deploy.smoke?.enabled !== false && patched('post-deploy-smoke')) {
      let smoke: { passed: boolean; reasons: string[] };
      try {
        smoke = await evaluationActivities.smokeTestDeployed({ runId, ...specArg, versionId: deployed.versionId, heldout: data.instructHeldout });
      } catch (err) {
        if (isCancellation(err)) throw err;
        // A smoke test that cannot run has not shown the version serves: it is rolled back too.
        smoke = { passed: false, reasons: [`the smoke test could not run (${failureMessage(err)})`] };
      }
      metrics.smoke = smoke;
      if (!smoke.passed) {
        const reason = `the smoke test of ${deployed.versionId} failed: ${smoke.reasons.join('; ')}`;
        const back = await controlActivities.rollbackDeploy({ runId, alias: deployed.alias, versionId: deployed.versionId, previousVersionId: deployed.previousVersionId, reason });
        metrics.rollback = back;
        await finish('rolled_back', { reason, versionId: deployed.versionId, alias: deployed.alias, restoredVersionId: back.restoredVersionId, rolledBack: back.rolledBack });
        return { runId, state, reason, versionId: deployed.versionId, forgetting, instruct: instruct.summary, finalCheck: finalCheck?.report, stageSeconds };
      }
    }
    await finish('completed', { versionId: deployed.versionId, alias: deployed.alias });
    return {
      runId,
      state,
      versionId: deployed.versionId,
      ...(deployed.adaptedVersionId ? { adaptedVersionId: deployed.adaptedVersionId } : {}),
      forgetting,
      instruct: instruct.summary,
      finalCheck: finalCheck?.report,
      stageSeconds,
    };
  } catch (err) {
    if (isCancellation(err)) {
      await CancellationScope.nonCancellable(() => finish('cancelled', { stage }));
      throw err;
    }
    // The run id belongs to another execution: its records are not ours to touch.
    if (failureType(err) === 'RunIdTaken') throw err;
    const reason = failureMessage(err);
    metrics.error = reason;
    await CancellationScope.nonCancellable(() => finish('failed', { reason }));
    throw err;
  }
}
