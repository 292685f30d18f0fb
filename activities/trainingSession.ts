import { Context, log } from '@temporalio/activity';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { insertCheckpoint, insertMetrics, recordTransition } from '../db/records';
import type { CheckpointTensors } from '../ml/train';
import type { ArtifactRef } from '../schemas/pipeline';
import { findResumePoint, pruneCheckpoints, type ResumePoint, type TrainingHeartbeat, type TrainingStage } from './checkpoints';
import type { ActivityDeps } from './context';

export interface SessionJob {
  runId: string;
  stage: TrainingStage;
  round: number;
  totalSteps: number;
  retention: { keepLast: number; keepBest: boolean };
  /** The share of general text in this stage's batches, recorded with each attempt. */
  replayRatio?: number;
  /** The domain sources' weights, where the run weighs several; recorded with each attempt. */
  domainMix?: Record<string, number>;
}

/**
 * What every training attempt does around its engine: find the newest valid checkpoint, heartbeat
 * `{step, checkpointUri, sha256}` plus live progress (loss, totalSteps, warnings), store checkpoints
 * (content-addressed, recorded, pruned), and notice cancellation or a stopping worker.
 *
 * Progress never goes through the workflow's history: heartbeats add no events, and `dacp run
 * status` reads them from the pending activity (`describe()`) and the metrics rows in Postgres. A
 * run that trains for days keeps a history the size of its stages.
 */
export class TrainingSession {
  readonly ctx = Context.current();
  readonly attempt = this.ctx.info.attempt;
  resumedFromStep: number | null = null;
  /** The newest step reached (trained, checkpointed or resumed from) in this attempt. */
  step = 0;
  lastCheckpoint: ArtifactRef | null = null;
  /** The step `lastCheckpoint` holds (the heartbeat's `step` runs ahead of it). */
  private lastCheckpointStep: number | null = null;
  lastLoss: number | null = null;
  private readonly warnings: string[] = [];
  private readonly pendingMetrics: { step: number; name: string; value: number }[] = [];

  constructor(
    private readonly deps: ActivityDeps,
    readonly job: SessionJob,
  ) {}

  /**
   * The checkpoint to resume from, if any. The attempt is logged and recorded in the audit log with
   * the engine/backend that runs it and where it resumed.
   */
  async begin(backend: string): Promise<ResumePoint | null> {
    const { point, warnings } = await findResumePoint(this.deps, this.job, this.ctx.info.heartbeatDetails as TrainingHeartbeat | undefined);
    this.warnings.push(...warnings);
    if (point) {
      this.resumedFromStep = point.step;
      this.step = point.step;
      this.lastCheckpoint = { uri: point.uri, sha256: point.sha256, bytes: 0 };
      this.lastCheckpointStep = point.step;
    }
    log.info('training attempt', { stage: this.job.stage, round: this.job.round, attempt: this.attempt, backend, resumedFromStep: this.resumedFromStep });
    await recordTransition(this.deps.pool, {
      runId: this.job.runId,
      key: `${this.job.runId}:${this.job.stage}:${this.job.round}:attempt:${this.attempt}`,
      event: 'training_attempt',
      stage: this.job.stage === 'instruct' ? 'instruct' : 'dacp',
      actor: 'dacp',
      details: {
        trainingStage: this.job.stage,
        round: this.job.round,
        attempt: this.attempt,
        backend,
        resumedFromStep: this.resumedFromStep,
        totalSteps: this.job.totalSteps,
        ...(this.job.replayRatio !== undefined ? { replayRatio: this.job.replayRatio } : {}),
        ...(this.job.domainMix !== undefined ? { domainMix: this.job.domainMix } : {}),
        warnings: this.warnings,
      },
    });
    return point;
  }

  heartbeat(step: number = this.step): void {
    this.step = Math.max(this.step, step);
    this.ctx.heartbeat({
      stage: this.job.stage,
      round: this.job.round,
      step,
      checkpointStep: this.lastCheckpointStep,
      checkpointUri: this.lastCheckpoint?.uri ?? null,
      sha256: this.lastCheckpoint?.sha256 ?? null,
      totalSteps: this.job.totalSteps,
      loss: this.lastLoss,
      resumedFromStep: this.resumedFromStep,
      warnings: this.warnings,
    } satisfies TrainingHeartbeat);
  }

  async progress(step: number, loss: number, extra: Record<string, number> = {}): Promise<void> {
    this.lastLoss = loss;
    this.pendingMetrics.push({ step, name: 'loss', value: loss });
    for (const [name, value] of Object.entries(extra)) this.pendingMetrics.push({ step, name, value });
    this.heartbeat(step);
  }

  /** Store a checkpoint, record it, heartbeat it, prune old ones. */
  async checkpointSaved(step: number, loss: number | null, data: { file: string } | CheckpointTensors, ext: string): Promise<ArtifactRef> {
    // Never one Buffer: the built-in engine's checkpoints are written tensor by tensor, a trainer's file is streamed in.
    const ref = 'file' in data ? await this.deps.store.putFile('checkpoints', data.file, ext) : await this.deps.store.putSafetensors('checkpoints', data.tensors, data.metadata);
    await insertCheckpoint(this.deps.pool, { runId: this.job.runId, stage: this.job.stage, round: this.job.round, step, loss, ...ref });
    this.lastCheckpoint = ref;
    this.lastCheckpointStep = step;
    this.heartbeat(step);
    await insertMetrics(this.deps.pool, this.job.runId, this.job.stage, this.job.round, this.pendingMetrics.splice(0));
    await pruneCheckpoints(this.deps, this.job, this.job.retention);
    return ref;
  }

  /** Between steps: has the run been cancelled, or is this worker shutting down? */
  stopRequested(): boolean {
    return this.ctx.cancellationSignal.aborted || Boolean(this.deps.workerStopping?.());
  }

  /** The error an attempt ends with when it stopped early, after its final checkpoint. */
  stopError(step: number): Error {
    if (this.ctx.cancellationSignal.aborted) return new CancelledFailure(`training cancelled at step ${step}; the last checkpoint is kept`);
    // The worker is stopping: the next attempt, on another worker, resumes from the checkpoint just written.
    return ApplicationFailure.retryable(`worker stopping; training checkpointed at step ${step} and resumes on the next worker`, 'WorkerStopping');
  }
}
