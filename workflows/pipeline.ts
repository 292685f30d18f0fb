import {
  ApplicationFailure,
  CancellationScope,
  isCancellation,
  proxyActivities,
  setHandler,
  startChild,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { DacpActivities } from '../activities';
import type {
  ApprovalOutcome,
  ArtifactRef,
  DatasetRef,
  ForgettingReport,
  PipelineInput,
  PipelineResult,
  RunState,
  RunStatus,
  Stage,
  TrainingResult,
} from '../schemas/pipeline';
import { approvalGate } from './approval';
import { approvalWorkflowId, statusQuery, trainingProgressSignal } from './messages';
import { dacpStageKey, dacpStateKey } from './searchAttributes';


function findDataset(datasets: DatasetRef[], role: DatasetRef['role'], split: DatasetRef['split']): DatasetRef {
  const found = datasets.find((d) => d.role === role && d.split === split);
  if (!found) throw ApplicationFailure.nonRetryable(`no ${split} ${role} dataset was produced`, 'DatasetMissing');
  return found;
}

function failureMessage(err: unknown): string {
  // Activity failures wrap the activity's own error as `cause`; that is the message a user can act on.
  let current: unknown = err;
  while (current instanceof Error && current.cause instanceof Error) current = current.cause;
  return current instanceof Error ? current.message : String(err);
}

/**
 * One DACP run: collect → quality → dacp → forgetting → instruct → approval → deploy.
 * Only URIs and sha256 hashes of data and models pass through here; every transition is recorded
 * in Postgres (runs + audit_log) by an idempotent activity.
 */
export async function dacpPipeline(input: PipelineInput): Promise<PipelineResult> {
  const { runId, spec } = input;
  const controlActivities = proxyActivities<DacpActivities>({
    taskQueue: 'dacp-control',
    startToCloseTimeout: '15 minutes',
    // A killed control worker is noticed within this, not after the 15 minutes (specs recorded
    // before the field existed have none, and replay as they ran).
    heartbeatTimeout: spec.controlHeartbeatTimeout,
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s', maximumAttempts: 30 },
  });
  const gpuActivities = proxyActivities<DacpActivities>({
    taskQueue: 'dacp-gpu',
    startToCloseTimeout: '12 hours',
    heartbeatTimeout: spec.heartbeatTimeout,
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '15s', maximumAttempts: 20 },
  });

  let stage: Stage = 'collect';
  let state: RunState = 'running';
  let progress: RunStatus['progress'] = { step: 0, totalSteps: 0, loss: null };
  let trainingStage: string | null = null;
  const metrics: Record<string, unknown> = {};
  const attempts: RunStatus['attempts'] = {};
  let resumedFromStep: number | null = null;
  const stageSeconds: PipelineResult['stageSeconds'] = {};
  let stageStartedAt = Date.now();
  let sequence = 0;

  setHandler(statusQuery, () => ({ runId, stage, state, progress, metrics, attempts, resumedFromStep }));
  setHandler(trainingProgressSignal, (p) => {
    if (p.stage !== trainingStage) return; // a late signal from a stage that has already finished
    progress = { step: p.step, totalSteps: p.totalSteps, loss: p.loss };
    const statusStage: Stage = p.stage === 'instruct' ? 'instruct' : 'dacp';
    attempts[statusStage] = Math.max(attempts[statusStage] ?? 0, p.attempt);
    if (p.resumedFromStep !== null && p.resumedFromStep > 0) resumedFromStep = p.resumedFromStep;
    if (p.warnings?.length) {
      const known = (metrics.warnings as string[] | undefined) ?? [];
      metrics.warnings = [...known, ...p.warnings.filter((w) => !known.includes(w))];
    }
  });

  const record = (event: string, details: Record<string, unknown> = {}) =>
    controlActivities.recordTransition({
      runId,
      key: `${workflowInfo().workflowId}:${workflowInfo().runId}:${++sequence}`,
      event,
      stage,
      state,
      actor: 'dacp',
      details,
    });

  const enter = async (next: Stage, nextState: RunState = 'running') => {
    const now = Date.now();
    stageSeconds[stage] = (stageSeconds[stage] ?? 0) + (now - stageStartedAt) / 1000;
    stageStartedAt = now;
    stage = next;
    state = nextState;
    progress = { step: 0, totalSteps: 0, loss: null };
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

  const train = async <T>(which: 'dacp' | 'instruct' | 'bootstrap', run: () => Promise<T>): Promise<T> => {
    trainingStage = which;
    try {
      return await run();
    } finally {
      trainingStage = null;
    }
  };

  try {
    upsertSearchAttributes([
      { key: dacpStageKey, value: stage },
      { key: dacpStateKey, value: state },
    ]);
    await controlActivities.registerRun({ runId, workflowId: workflowInfo().workflowId, spec, initiator: input.initiator });
    await record('stage_started');

    // collect
    const collected = await controlActivities.collectSources({ runId, spec, baseDir: input.baseDir });
    metrics.collect = collected.summary;

    // quality
    await enter('quality');
    const cleaned = await controlActivities.qualityFilter({ runId, spec, raw: collected.datasets });
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
    let base = await controlActivities.resolveBaseModel({ ref: spec.baseModel.ref });
    if (!base) {
      if (!spec.baseModel.bootstrapIfMissing) {
        throw ApplicationFailure.nonRetryable(
          `base model "${spec.baseModel.ref}" is not in the registry; deploy one first or set baseModel.bootstrapIfMissing: true`,
          'BaseModelNotFound',
        );
      }
      metrics.bootstrap = { status: 'training a base model on the replay data (the registry has none)' };
      const boot = await train('bootstrap', () =>
        gpuActivities.bootstrapBaseModel({ runId, spec, baseDir: input.baseDir, corpus: data.replayTrain }),
      );
      base = await controlActivities.registerBaseModel({ runId, spec, model: boot.model, corpus: data.replayTrain });
      metrics.bootstrap = { status: 'done', versionId: base.versionId, finalLoss: boot.finalLoss, seconds: boot.seconds };
    }
    metrics.baseModel = base.versionId;

    let replayRatio = spec.replayRatio;
    let adapted: TrainingResult | undefined;
    let forgetting: ForgettingReport | undefined;
    let forgettingRef: ArtifactRef | undefined;
    for (let round = 0; ; round++) {
      if (round > 0) await enter('dacp');
      adapted = await train('dacp', () =>
        gpuActivities.continualPretrain({
          runId,
          round,
          spec,
          baseDir: input.baseDir,
          replayRatio,
          baseModel: base!,
          domain: data.domainTrain,
          replay: data.replayTrain,
        }),
      );
      metrics.dacp = {
        round,
        replayRatio,
        finalStep: adapted.finalStep,
        finalLoss: adapted.finalLoss,
        backend: adapted.backend,
        seconds: adapted.seconds,
      };

      await enter('forgetting');
      const evaluation = await controlActivities.evaluateForgetting({
        runId,
        round,
        spec,
        replayRatio,
        baseModel: base,
        adaptedModel: adapted.model,
        domainHeldout: data.domainHeldout,
        generalHeldout: data.replayHeldout,
      });
      forgetting = evaluation.report;
      forgettingRef = evaluation.reportRef;
      metrics.forgetting = forgetting;
      if (forgetting.passed) break;
      const retriesLeft = spec.forgetting.onFail === 'retry-with-more-replay' && round < spec.forgetting.maxRetries;
      if (!retriesLeft) {
        throw ApplicationFailure.nonRetryable(`forgetting gate failed: ${forgetting.reasons.join('; ')}`, 'ForgettingGateFailed');
      }
      replayRatio = Math.min(0.95, replayRatio + spec.forgetting.replayIncrement);
      await record('forgetting_retry', { nextReplayRatio: replayRatio, reasons: forgetting.reasons });
    }

    // instruction tuning
    await enter('instruct');
    const tuned = await train('instruct', () =>
      gpuActivities.instructionTune({ runId, spec, baseDir: input.baseDir, model: adapted!.model, pairs: data.instructTrain }),
    );
    const instruct = await controlActivities.evaluateInstruction({
      runId,
      spec,
      baseModel: base,
      tunedModel: tuned.model,
      heldout: data.instructHeldout,
    });
    metrics.instruct = { ...instruct.summary, finalLoss: tuned.finalLoss, seconds: tuned.seconds };

    // approval
    await enter('approval');
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
            baseModel: base,
            adaptedModel: adapted.model,
            tunedModel: tuned.model,
            datasets: cleaned.datasets.map((d) => ({ role: d.role, split: d.split, sha256: d.sha256, docs: d.docs })),
            forgettingReport: forgettingRef!,
            instructReport: instruct.reportRef,
          },
          forgetting: forgetting!,
          instruct: instruct.summary,
        },
      ],
    });
    // Only now, with the gate open to votes, is the run awaiting approval.
    state = 'awaiting_approval';
    upsertSearchAttributes([{ key: dacpStateKey, value: state }]);
    await record('approval_requested', { approvers: spec.approval.approvers, quorum: spec.approval.quorum });
    const approval: ApprovalOutcome = await gate.result();
    metrics.approval = { outcome: approval.outcome, reason: approval.reason, decisions: approval.decisions.length };
    if (approval.outcome === 'rejected') {
      await finish('rejected', { reason: approval.reason });
      return { runId, state, reason: approval.reason, forgetting, instruct: instruct.summary, stageSeconds };
    }

    // deploy
    await enter('deploy');
    const deployed = await controlActivities.deployModel({
      runId,
      spec,
      model: tuned.model,
      baseModel: base,
      datasets: cleaned.datasets,
      forgetting: forgetting!,
      instruct: instruct.summary,
    });
    metrics.deploy = deployed;
    await finish('completed', { versionId: deployed.versionId, alias: deployed.alias });
    return { runId, state, versionId: deployed.versionId, forgetting, instruct: instruct.summary, stageSeconds };
  } catch (err) {
    if (isCancellation(err)) {
      await CancellationScope.nonCancellable(() => finish('cancelled', { stage }));
      throw err;
    }
    const reason = failureMessage(err);
    metrics.error = reason;
    await CancellationScope.nonCancellable(() => finish('failed', { reason }));
    throw err;
  }
}
