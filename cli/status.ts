import { formatDomainMix } from '../schemas/candidates';
import { WorkflowNotFoundError, type Client, type WorkflowExecutionDescription } from '@temporalio/client';
import type { Payload } from '@temporalio/common';
import { decodeFromPayloadsAtIndex } from '@temporalio/common/lib/internal-non-workflow';
import type { Pool } from 'pg';
import type { TrainingHeartbeat } from '../activities/checkpoints';
import { gainBySourceLines, gateComparison } from './gateView';
import { STAGES, TERMINAL_STATES, type FinalCheckReport, type ForgettingReport, type InstructSummary, type PipelineResult, type RunState, type RunStatus, type Stage } from '../schemas/pipeline';
import { InputError } from '../schemas/runSpec';
import { dacpStageKey, dacpStateKey } from '../workflows/searchAttributes';

/** What the CLI needs to start runs and read them: Temporal, the database and the artifact folder. */
export interface RunContext {
  client: Client;
  pool: Pool;
  artifactsDir: string;
}

const TRAINING_ACTIVITIES: Record<string, Stage> = {
  bootstrapBaseModel: 'dacp',
  continualPretrain: 'dacp',
  instructionTune: 'instruct',
};
const TERMINAL: readonly RunState[] = TERMINAL_STATES;

interface RunRow {
  stage: Stage;
  state: RunState;
  metrics: Record<string, unknown>;
  stage_seconds: Record<string, number>;
  error: string | null;
  initiator: string;
  created_at: Date;
  finished_at: Date | null;
}

interface AttemptDetails {
  trainingStage: 'dacp' | 'instruct' | 'bootstrap';
  round: number;
  attempt: number;
  resumedFromStep: number | null;
  totalSteps?: number;
  warnings?: string[];
}

/**
 * A run's status, without asking the workflow: stage, state and stage figures from its row in
 * Postgres, training attempts and resumes from its audit log, and live progress from the pending
 * training activity's last heartbeat (`describe()`), else from its newest metric rows. Nothing here
 * needs a worker, and nothing here went through the run's history.
 */
/** What status needs; with no Temporal client (the server is down) it answers from the database alone. */
export type StatusContext = Omit<RunContext, 'client'> & { client: Client | null };

export async function runStatus(ctx: StatusContext, runId: string): Promise<RunStatus> {
  const row = await loadRun(ctx.pool, runId);
  const description = await describe(ctx.client, runId);
  if (!row && !description) throw new InputError(`no run with id ${runId}; see \`dacp run list\``);

  const { attempts, resumedFromStep, warnings, totalSteps, current } = await trainingAttempts(ctx.pool, runId);
  const metrics: Record<string, unknown> = { ...(row?.metrics ?? {}) };
  if (warnings.length) metrics.warnings = warnings;
  if (row && Object.keys(row.stage_seconds).length) metrics.stageSeconds = row.stage_seconds;
  let stage: Stage = row?.stage ?? ((description?.typedSearchAttributes.get(dacpStageKey) as Stage | undefined) ?? 'collect');
  let state: RunState = row?.state ?? ((description?.typedSearchAttributes.get(dacpStateKey) as RunState | undefined) ?? 'running');
  if (row?.error && metrics.error === undefined) metrics.error = row.error;
  // The approval gate's notices (its outbox): request, reminders, escalation, timeout.
  const notices = await ctx.pool.query(
    `SELECT kind, recipients, created_at, webhook_status FROM approval_notifications WHERE run_id = $1 ORDER BY id`,
    [runId],
  ).catch(() => ({ rows: [] as Record<string, unknown>[] }));
  if (notices.rows.length) {
    metrics.approvalNotices = notices.rows.map((n) => ({ kind: n.kind, to: n.recipients, at: (n.created_at as Date).toISOString(), webhook: n.webhook_status ?? null }));
  }

  let progress: RunStatus['progress'] = { step: 0, totalSteps: 0, loss: null };
  if (ctx.client && description && description.status.name === 'RUNNING') {
    const live = await liveTraining(ctx.client, description);
    if (live) {
      // Attempts count from the audit rows an attempt writes when it begins: a retry that Temporal
      // has scheduled but no worker has started yet is not an attempt (and has no resume point).
      progress = live.progress;
      if (!progress.totalSteps) progress.totalSteps = totalSteps[live.stage] ?? 0;
    }
    // Heartbeats reach the server throttled (at most one per 80 % of the heartbeat timeout), and
    // metric rows land with each checkpoint: the newer of the two is the progress.
    if ((stage === 'dacp' || stage === 'instruct') && current) {
      const newest = await newestMetric(ctx.pool, runId, current.trainingStage, current.round);
      if (newest && newest.step > progress.step) progress = { step: newest.step, totalSteps: progress.totalSteps || (totalSteps[stage] ?? 0), loss: newest.loss };
    }
  } else if (ctx.client && description && !TERMINAL.includes(state)) {
    // The execution closed without the workflow recording its end (terminated, timed out, or it
    // was never picked up): say so rather than show it running for ever.
    ({ state, stage } = await closedOutcome(ctx.client, runId, description, stage, metrics));
  } else if (ctx.client && !row && description) {
    ({ state, stage } = await closedOutcome(ctx.client, runId, description, stage, metrics));
  }
  if (Array.isArray(metrics.candidates) && state === 'running') await candidateProgress(ctx.pool, runId, metrics.candidates as CandidateView[]);
  return { runId, stage, state, progress, metrics, attempts, resumedFromStep };
}

interface CandidateView {
  round: number;
  replayRatio: number;
  state?: string;
  domainGain?: number;
  step?: number;
  totalSteps?: number;
  loss?: number | null;
}

/** Candidates still training: each one's newest step and loss, from its round's metric rows. */
async function candidateProgress(pool: Pool, runId: string, candidates: CandidateView[]): Promise<void> {
  const { rows } = await pool.query(
    `SELECT details FROM audit_log WHERE run_id = $1 AND event = 'training_attempt' AND details->>'trainingStage' = 'dacp'`,
    [runId],
  );
  for (const c of candidates) {
    if (c.domainGain !== undefined) continue;
    const attempt = (rows as { details: AttemptDetails }[]).find((r) => r.details.round === c.round);
    const newest = await newestMetric(pool, runId, 'dacp', c.round);
    c.totalSteps = attempt?.details.totalSteps ?? 0;
    c.step = newest?.step ?? 0;
    c.loss = newest?.loss ?? null;
  }
}

async function loadRun(pool: Pool, runId: string): Promise<RunRow | null> {
  const { rows } = await pool.query(
    `SELECT stage, state, metrics, stage_seconds, error, initiator, created_at, finished_at FROM runs WHERE run_id = $1`,
    [runId],
  );
  return (rows[0] as RunRow | undefined) ?? null;
}

async function describe(client: Client | null, runId: string): Promise<WorkflowExecutionDescription | null> {
  if (!client) return null;
  try {
    return await client.workflow.getHandle(runId).describe();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return null;
    throw err;
  }
}

/** Attempts per stage, the newest resume and every warning, from the `training_attempt` audit rows. */
async function trainingAttempts(pool: Pool, runId: string) {
  const { rows } = await pool.query(`SELECT details FROM audit_log WHERE run_id = $1 AND event = 'training_attempt' ORDER BY id`, [runId]);
  const attempts: RunStatus['attempts'] = {};
  const totalSteps: Partial<Record<Stage, number>> = {};
  const warnings: string[] = [];
  let resumedFromStep: number | null = null;
  let current: { trainingStage: string; round: number } | null = null;
  for (const { details } of rows as { details: AttemptDetails }[]) {
    current = { trainingStage: details.trainingStage, round: details.round };
    const stage: Stage = details.trainingStage === 'instruct' ? 'instruct' : 'dacp';
    attempts[stage] = Math.max(attempts[stage] ?? 0, details.attempt);
    if (details.resumedFromStep) resumedFromStep = details.resumedFromStep;
    if (details.totalSteps) totalSteps[stage] = details.totalSteps;
    for (const w of details.warnings ?? []) if (!warnings.includes(w)) warnings.push(w);
  }
  return { attempts, resumedFromStep, warnings, totalSteps, current };
}

/** The running training activity, if any, with its attempt and last heartbeat. */
async function liveTraining(client: Client, description: WorkflowExecutionDescription) {
  for (const pending of description.raw.pendingActivities ?? []) {
    const stage = TRAINING_ACTIVITIES[pending.activityType?.name ?? ''];
    if (!stage) continue;
    let heartbeat: TrainingHeartbeat | undefined;
    const payloads = pending.heartbeatDetails?.payloads as Payload[] | undefined;
    if (payloads?.length) {
      heartbeat = await decodeFromPayloadsAtIndex<TrainingHeartbeat>(client.options.loadedDataConverter, 0, payloads).catch(() => undefined);
    }
    return {
      stage,
      attempt: pending.attempt ?? 1,
      heartbeat,
      progress: {
        step: heartbeat?.step ?? 0,
        totalSteps: heartbeat?.totalSteps ?? 0,
        loss: heartbeat?.loss ?? null,
      },
    };
  }
  return null;
}

/** The newest loss of the training that runs now (its stage and round), by step. */
async function newestMetric(pool: Pool, runId: string, trainingStage: string, round: number): Promise<{ step: number; loss: number } | null> {
  const { rows } = await pool.query(
    `SELECT step, value FROM metrics WHERE run_id = $1 AND stage = $2 AND round = $3 AND name = 'loss' ORDER BY step DESC LIMIT 1`,
    [runId, trainingStage, round],
  );
  return rows.length ? { step: rows[0].step, loss: rows[0].value } : null;
}

/** The outcome of a closed execution the database does not know the end of. */
async function closedOutcome(
  client: Client,
  runId: string,
  description: WorkflowExecutionDescription,
  stage: Stage,
  metrics: Record<string, unknown>,
): Promise<{ state: RunState; stage: Stage }> {
  const status = description.status.name;
  if (status === 'CANCELLED') return { state: 'cancelled', stage };
  if (status === 'COMPLETED') {
    const result = (await client.workflow.getHandle(runId).result()) as PipelineResult;
    if (result.forgetting && !metrics.forgetting) metrics.forgetting = result.forgetting;
    if (result.instruct && !metrics.instruct) metrics.instruct = result.instruct;
    if (result.finalCheck && !metrics.finalCheck) metrics.finalCheck = result.finalCheck;
    if (result.versionId && !metrics.deploy) metrics.deploy = { versionId: result.versionId };
    if (result.reason && !metrics.approval) metrics.approval = { outcome: 'rejected', reason: result.reason };
    if (!metrics.stageSeconds) metrics.stageSeconds = result.stageSeconds;
    return { state: result.state, stage };
  }
  try {
    await client.workflow.getHandle(runId).result();
  } catch (err) {
    let cause: unknown = err;
    while (cause instanceof Error && cause.cause instanceof Error) cause = cause.cause;
    if (metrics.error === undefined) metrics.error = cause instanceof Error ? cause.message : String(cause);
  }
  if (metrics.error === undefined) metrics.error = `workflow execution ${status.toLowerCase()}`;
  return { state: 'failed', stage };
}

const fmt = (x: number) => (x >= 100 ? x.toFixed(1) : x.toFixed(2));
const pct = (x: number) => `${(x * 100).toFixed(1)} %`;

/** One line a person reads while a run is under way. */
export function progressLine(s: RunStatus): string {
  const p = s.progress.totalSteps ? ` step ${s.progress.step}/${s.progress.totalSteps} loss ${s.progress.loss?.toFixed(3) ?? '–'}` : '';
  return `[${s.state}] ${s.stage}${p}`;
}

/**
 * The plain-text status: for a run under way its stage and progress; for a finished run a summary
 * a person can read — outcome, gate figures, version, time per stage, attempts and resumes.
 */
export function formatStatus(s: RunStatus): string {
  const lines = [`run ${s.runId}: ${s.state}, stage ${s.stage}`];
  const m = s.metrics;
  if (s.progress.totalSteps) lines.push(`  progress            step ${s.progress.step}/${s.progress.totalSteps}, loss ${s.progress.loss?.toFixed(4) ?? '–'}`);
  if (typeof m.baseModel === 'string') lines.push(`  base model          ${m.baseModel}`);
  if (Array.isArray(m.approvalNotices)) {
    const notices = m.approvalNotices as { kind: string; at: string }[];
    lines.push(`  approval notices    ${notices.map((n) => `${n.kind} ${n.at}`).join(', ')}`);
  }
  const f = m.forgetting as ForgettingReport | undefined;
  const finalCheck = m.finalCheck as FinalCheckReport | undefined;
  if (f?.base) {
    lines.push(`  domain perplexity   ${fmt(f.base.domainPerplexity)} → ${fmt(f.adapted.domainPerplexity)}  (gain ${pct(f.domainGain)}, floor ${pct(f.budgets.minDomainGain)})`);
    lines.push(`  general perplexity  ${fmt(f.base.generalPerplexity)} → ${fmt(f.adapted.generalPerplexity)}  (change ${pct(f.generalRegression)}, budget ${pct(f.budgets.maxGeneralRegression)})`);
    lines.push(`  forgetting gate     ${f.passed ? 'passed' : `failed: ${f.reasons.join('; ')}`} (round ${f.round}, replay ratio ${f.replayRatio}${f.domainMix ? `, domain mix ${formatDomainMix(f.domainMix)}` : ''})`);
    lines.push(...gainBySourceLines(f));
  }
  if (finalCheck?.candidate) {
    lines.push(`  final check         ${finalCheck.passed ? 'passed' : `failed: ${finalCheck.reasons.join('; ')}`} (against ${finalCheck.reference.kind} ${finalCheck.reference.versionId}, instruct replay ratio ${finalCheck.instructReplayRatio})`);
  }
  const candidates = m.candidates as { round: number; replayRatio: number; domainMix?: Record<string, number>; state?: string; domainGain?: number; generalRegression?: number; passed?: boolean; chosen?: boolean; step?: number; totalSteps?: number }[] | undefined;
  if (candidates?.length) {
    const mixes = candidates.some((c) => c.domainMix);
    lines.push(`  candidates          replay ratio${mixes ? ' (domain mix)' : ''} → domain gain, general change`);
    for (const c of candidates) {
      const figures = c.domainGain !== undefined ? `${pct(c.domainGain)}, ${pct(c.generalRegression ?? NaN)}, ${c.passed ? 'passed' : 'failed'}` : `training${c.totalSteps ? ` step ${c.step ?? 0}/${c.totalSteps}` : ''}`;
      const point = `${c.replayRatio}${c.domainMix ? ` (${formatDomainMix(c.domainMix)})` : ''}`;
      lines.push(`                      ${point.padEnd(5)} → ${figures}${c.chosen ? '  ← chosen' : ''}`);
    }
  }
  if (f?.base || finalCheck?.candidate) {
    lines.push('  gates side by side');
    lines.push(...gateComparison(f, finalCheck, '    '));
  }
  const i = m.instruct as (InstructSummary & { finalLoss?: number }) | undefined;
  if (i?.base && i.tuned) {
    lines.push(
      `  instruction score   response perplexity ${fmt(i.base.responsePerplexity)} → ${fmt(i.tuned.responsePerplexity)}, token accuracy ${fmt(i.base.tokenAccuracy)} → ${fmt(i.tuned.tokenAccuracy)}, ROUGE-L ${fmt(i.base.rougeL)} → ${fmt(i.tuned.rougeL)}`,
    );
  }
  const a = m.approval as { outcome?: string; reason?: string } | undefined;
  if (a?.outcome) lines.push(`  approval gate       ${a.outcome}: ${a.reason ?? ''}`.trimEnd());
  const d = m.deploy as { versionId?: string; alias?: string; previousVersionId?: string | null } | undefined;
  if (d?.versionId) lines.push(`  model version       ${d.versionId}${d.alias ? ` (alias ${d.alias}${d.previousVersionId ? `, replaced ${d.previousVersionId}` : ''})` : ''}`);
  const smoke = m.smoke as { passed?: boolean; prompts?: number; reasons?: string[] } | undefined;
  if (smoke?.passed !== undefined) lines.push(`  smoke test          ${smoke.passed ? `passed (${smoke.prompts} prompts, answered through dacp serve's code)` : `failed: ${(smoke.reasons ?? []).join('; ')}`}`);
  const back = m.rollback as { rolledBack?: boolean; restoredVersionId?: string | null } | undefined;
  if (back?.rolledBack) lines.push(`  rolled back         ${d?.alias ?? 'the alias'} → ${back.restoredVersionId ?? '(removed: nothing served before)'}`);
  const sup = m.approval as { supersededBy?: string } | undefined;
  if (sup?.supersededBy) lines.push(`  superseded by       ${sup.supersededBy}`);
  const seconds = m.stageSeconds as Record<string, number> | undefined;
  if (seconds && Object.keys(seconds).length && TERMINAL.includes(s.state)) {
    const ordered = STAGES.filter((stage) => seconds[stage] !== undefined);
    lines.push(`  time per stage      ${ordered.map((stage) => `${stage} ${seconds[stage].toFixed(1)}s`).join(', ')}`);
  }
  if (Object.keys(s.attempts).length) {
    lines.push(`  training attempts   ${Object.entries(s.attempts).map(([stage, n]) => `${stage} ${n}`).join(', ')}${s.resumedFromStep !== null ? `; resumed from step ${s.resumedFromStep}` : ''}`);
  }
  for (const w of (m.warnings as string[] | undefined) ?? []) lines.push(`  warning             ${w}`);
  if (m.error) lines.push(`  error               ${String(m.error)}`);
  return lines.join('\n');
}
