import { log } from '@temporalio/activity';
import { listCheckpoints, markCheckpointsPruned, recordTransition, type CheckpointRow } from '../db/records';
import type { ActivityDeps } from './context';

export type TrainingStage = 'dacp' | 'instruct' | 'bootstrap';

/** What a training attempt heartbeats: enough for the next attempt to find where to resume. */
export interface TrainingHeartbeat {
  stage: TrainingStage;
  round: number;
  /** The newest step trained: progress, not where a retry can resume. */
  step: number;
  /** The step `checkpointUri` holds: where a retry resumes. */
  checkpointStep: number | null;
  checkpointUri: string | null;
  sha256: string | null;
  /**
   * Live progress for `dacp run status`, read from the pending activity (`describe()`), never
   * from history: heartbeats do not add events. Optional: attempts from before carried none.
   */
  totalSteps?: number;
  loss?: number | null;
  resumedFromStep?: number | null;
  warnings?: string[];
}

/**
 * Retention: the newest `keepLast` checkpoints and, with `keepBest`, the one with the lowest loss.
 * Pure, so the policy reads (and is tested) on its own.
 */
export function checkpointsToPrune(rows: CheckpointRow[], policy: { keepLast: number; keepBest: boolean }): CheckpointRow[] {
  const newestFirst = [...rows].sort((a, b) => b.step - a.step);
  const keep = new Set(newestFirst.slice(0, policy.keepLast).map((r) => r.step));
  if (policy.keepBest) {
    const scored = rows.filter((r) => r.loss !== null && Number.isFinite(r.loss));
    if (scored.length) keep.add(scored.reduce((best, r) => ((r.loss as number) < (best.loss as number) ? r : best)).step);
  }
  return newestFirst.filter((r) => !keep.has(r.step));
}

export async function pruneCheckpoints(
  deps: ActivityDeps,
  job: { runId: string; stage: TrainingStage; round: number },
  policy: { keepLast: number; keepBest: boolean },
): Promise<void> {
  const rows = await listCheckpoints(deps.pool, job.runId, job.stage, job.round);
  const prune = checkpointsToPrune(rows, policy);
  const orphans = await markCheckpointsPruned(deps.pool, job.runId, job.stage, job.round, prune.map((r) => r.step));
  for (const orphan of orphans) await deps.store.remove(orphan);
}

export interface ResumePoint {
  step: number;
  uri: string;
  sha256: string;
}

/**
 * The newest checkpoint that verifies, from the last heartbeat (it may be ahead of the database)
 * or the database. Every newer one that fails its sha256 check is reported as a warning and in the
 * audit log, and an older one is used instead.
 */
export async function findResumePoint(
  deps: ActivityDeps,
  job: { runId: string; stage: TrainingStage; round: number },
  heartbeat: TrainingHeartbeat | undefined,
): Promise<{ point: ResumePoint | null; warnings: string[] }> {
  const candidates: ResumePoint[] = [];
  const fromHeartbeat = heartbeat && heartbeat.stage === job.stage && heartbeat.round === job.round ? heartbeat : undefined;
  if (fromHeartbeat?.checkpointUri && fromHeartbeat.sha256 && typeof fromHeartbeat.checkpointStep === 'number') {
    candidates.push({ step: fromHeartbeat.checkpointStep, uri: fromHeartbeat.checkpointUri, sha256: fromHeartbeat.sha256 });
  }
  for (const row of await listCheckpoints(deps.pool, job.runId, job.stage, job.round)) {
    if (!candidates.some((c) => c.sha256 === row.sha256 && c.step === row.step)) candidates.push(row);
  }
  candidates.sort((a, b) => b.step - a.step);
  const warnings: string[] = [];
  for (const candidate of candidates) {
    if (await deps.store.verify(candidate)) return { point: candidate, warnings };
    const warning = `${job.stage} checkpoint at step ${candidate.step} is missing or corrupted (sha256 mismatch); trying an older one`;
    warnings.push(warning);
    log.warn(warning, { uri: candidate.uri });
    await recordTransition(deps.pool, {
      runId: job.runId,
      key: `${job.runId}:${job.stage}:${job.round}:invalid-checkpoint:${candidate.step}:${candidate.sha256}`,
      event: 'checkpoint_invalid',
      stage: job.stage === 'instruct' ? 'instruct' : 'dacp',
      actor: 'dacp',
      details: { step: candidate.step, uri: candidate.uri, sha256: candidate.sha256 },
    });
  }
  return { point: null, warnings };
}
