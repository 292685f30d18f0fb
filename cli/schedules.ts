import { actingKey } from './keys';
import { createHash } from 'node:crypto';
import {
  ScheduleAlreadyRunning,
  ScheduleNotFoundError,
  ScheduleOverlapPolicy,
  type Client,
  type ScheduleDescription,
} from '@temporalio/client';
import { ApplicationFailure, defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import path from 'node:path';
import type { Pool } from 'pg';
import { openArtifactStore } from '../activities/objectStore';
import { stageInputs, type LiveFolder } from '../activities/inputs';
import { namedRootOf, sourceRoots, workerPolicy } from '../workers/policy';
import { storeRunSpec } from '../db/records';
import { workflowSpec, type PipelineInput } from '../schemas/pipeline';
import { Duration, InputError, watermarkProblems, type RunSpec } from '../schemas/runSpec';
import { dacpStageKey, dacpStateKey } from '../workflows/searchAttributes';
import { TASK_QUEUES } from '../workers/options';

/**
 * `dacp schedule …`: recurring runs as Temporal Schedules. Each firing starts the pipeline with the
 * same stored spec; Temporal names the run `<schedule id>-<time of the firing>` and marks it with
 * the `TemporalScheduledById` search attribute, which is how `dacp run list` tells scheduled runs
 * from manual ones. A run resolves its base model when it starts, so each update continues from
 * what production serves then.
 */

/** Temporal's own search attribute on every workflow a schedule started. */
export const scheduledByKey = defineSearchAttributeKey('TemporalScheduledById', SearchAttributeType.KEYWORD);

const SCHEDULE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export const OVERLAP_POLICIES = {
  skip: ScheduleOverlapPolicy.SKIP,
  'buffer-one': ScheduleOverlapPolicy.BUFFER_ONE,
  'buffer-all': ScheduleOverlapPolicy.BUFFER_ALL,
  'cancel-other': ScheduleOverlapPolicy.CANCEL_OTHER,
  'terminate-other': ScheduleOverlapPolicy.TERMINATE_OTHER,
  'allow-all': ScheduleOverlapPolicy.ALLOW_ALL,
} as const;
export type OverlapName = keyof typeof OVERLAP_POLICIES;

export interface ScheduleContext {
  client: Client;
  pool: Pool;
  /** The artifact store's folder or `s3://` location (DACP_ARTIFACTS), where a schedule's inputs are staged. */
  artifactsDir: string;
}

export function checkScheduleId(id: string): string {
  if (!SCHEDULE_ID.test(id)) throw new InputError(`schedule id "${id}" is invalid: use 1–64 letters, digits, ".", "_" or "-"`);
  return id;
}

function duration(text: string, flag: string): number {
  const parsed = Duration.safeParse(text);
  if (!parsed.success) throw new InputError(`${flag} "${text}": ${parsed.error.issues[0]?.message ?? 'not a duration'}`);
  return parsed.data;
}

export async function createSchedule(
  ctx: ScheduleContext,
  o: {
    spec: RunSpec;
    baseDir: string;
    id?: string;
    every?: string;
    cron?: string;
    initiator: string;
    overlap?: string;
    catchupWindow?: string;
    pauseOnFailure?: boolean;
    note?: string;
    keyDir?: string;
  },
): Promise<{ scheduleId: string; nextRuns: string[]; reads: ScheduleReads }> {
  const scheduleId = checkScheduleId(o.id ?? o.spec.name);
  // Only an operator creates schedules; its runs are started as that operator.
  await actingKey(ctx.pool, o.initiator, 'operator', 'create schedules', o.keyDir);
  const problems = watermarkProblems(o.spec);
  if (problems.length) throw new InputError(problems[0] as string);
  if ((o.every === undefined) === (o.cron === undefined)) throw new InputError('give exactly one of --every DURATION (e.g. 7d) or --cron EXPR (e.g. "0 3 * * 1")');
  const overlapName = (o.overlap ?? 'skip') as OverlapName;
  if (!(overlapName in OVERLAP_POLICIES)) throw new InputError(`--overlap "${o.overlap}": use one of ${Object.keys(OVERLAP_POLICIES).join(', ')}`);
  const every = o.every !== undefined ? duration(o.every, '--every') : undefined;
  const catchupWindow = duration(o.catchupWindow ?? '1d', '--catchup-window');
  // Its choice sets and trainer script are staged now, as for `run start`; its file sources are
  // read anew at each firing, from the named data root that holds the spec (or the spec's folder),
  // so its runs carry an artifact URI and no machine's folder.
  const staged = await stageScheduleInputs(ctx, o.spec, o.baseDir);
  const specBody = JSON.stringify(staged.spec);
  const specRef = await storeRunSpec(ctx.pool, specBody, createHash('sha256').update(specBody).digest('hex'));
  // No runId: each firing's run id is its workflow id, which Temporal makes from the schedule's id and the time.
  const input: PipelineInput = { spec: workflowSpec(staged.spec), specRef, baseDir: staged.baseDir, initiator: o.initiator, scheduleId };
  try {
    const handle = await ctx.client.schedule.create({
      scheduleId,
      spec: every !== undefined ? { intervals: [{ every }] } : { cronExpressions: [o.cron as string] },
      action: {
        type: 'startWorkflow',
        workflowType: 'dacpPipeline',
        workflowId: scheduleId,
        taskQueue: TASK_QUEUES.control,
        args: [input],
        memo: { initiator: o.initiator },
        typedSearchAttributes: [
          { key: dacpStageKey, value: 'collect' },
          { key: dacpStateKey, value: 'running' },
        ],
      },
      policies: { overlap: OVERLAP_POLICIES[overlapName], catchupWindow, pauseOnFailure: Boolean(o.pauseOnFailure) },
      state: { note: o.note ?? `created by ${o.initiator}` },
      // As the user wrote them (the server keeps a cron expression as calendar ranges).
      memo: { dacpTiming: o.every !== undefined ? { every: o.every } : { cron: o.cron } },
    });
    const described = await handle.describe();
    return { scheduleId, nextRuns: described.info.nextActionTimes.slice(0, 5).map((t) => t.toISOString()), reads: staged.reads };
  } catch (err) {
    if (err instanceof ScheduleAlreadyRunning) throw new InputError(`schedule ${scheduleId} already exists; choose another --id, or delete it first`);
    const message = (err as Error).message ?? '';
    if (/cron|invalid.*spec|calendar/i.test(message)) throw new InputError(`--cron "${o.cron}": ${message.split('\n')[0]}`);
    throw err;
  }
}

/** Where a schedule's firings read its file sources: a named data root, or a folder. */
export type ScheduleReads = { dataRoot: string } | { folder: string } | null;

async function stageScheduleInputs(ctx: ScheduleContext, spec: RunSpec, baseDir: string): Promise<{ spec: RunSpec; baseDir: string; reads: ScheduleReads }> {
  const policy = workerPolicy();
  let allowedRoots: string[];
  try {
    allowedRoots = sourceRoots({ baseDir, specRoots: spec.dataRoots, policy });
  } catch (err) {
    throw new InputError(`dataRoots: ${(err as Error).message}`);
  }
  const named = namedRootOf(baseDir, policy);
  const live: LiveFolder = named ? { root: named.name, folder: named.folder } : { folder: path.resolve(baseDir) };
  try {
    const staged = await stageInputs(openArtifactStore(ctx.artifactsDir), spec, baseDir, allowedRoots, { live });
    const hasFiles = spec.sources.some((s) => s.kind === 'files');
    return { ...staged, reads: !hasFiles ? null : named ? { dataRoot: named.name } : { folder: path.resolve(baseDir) } };
  } catch (err) {
    const type = (err as ApplicationFailure).type;
    if (err instanceof ApplicationFailure && type?.startsWith('Source')) throw new InputError(`sources: ${err.message}`);
    throw err;
  }
}

export interface ScheduleView {
  scheduleId: string;
  paused: boolean;
  note: string | null;
  every: string | null;
  cron: string | null;
  overlap: string;
  catchupWindowMs: number;
  pauseOnFailure: boolean;
  initiator: string | null;
  nextRuns: string[];
  /** The latest firings, newest first, with each run's state. */
  recentRuns: { runId: string; scheduledAt: string; state: string | null; stage: string | null }[];
}

const overlapNameOf = (policy: string) => (Object.entries(OVERLAP_POLICIES).find(([, p]) => p === policy)?.[0] ?? policy.toLowerCase());

async function view(ctx: ScheduleContext, scheduleId: string, d: ScheduleDescription): Promise<ScheduleView> {
  const recent = [...d.info.recentActions].reverse();
  const ids = recent.map((a) => a.action.workflow.workflowId);
  const states = new Map<string, { state: string; stage: string }>();
  if (ids.length) {
    const { rows } = await ctx.pool.query('SELECT run_id, state, stage FROM runs WHERE run_id = ANY($1)', [ids]);
    for (const r of rows) states.set(r.run_id as string, { state: r.state as string, stage: r.stage as string });
  }
  const action = d.action as { args?: unknown[] };
  const input = (action.args?.[0] ?? {}) as Partial<PipelineInput>;
  const timing = (d.memo?.dacpTiming ?? {}) as { every?: string; cron?: string };
  return {
    scheduleId,
    paused: d.state.paused,
    note: d.state.note ?? null,
    every: timing.every ?? null,
    cron: timing.cron ?? null,
    overlap: overlapNameOf(d.policies.overlap ?? 'SKIP'),
    catchupWindowMs: d.policies.catchupWindow,
    pauseOnFailure: d.policies.pauseOnFailure,
    initiator: input.initiator ?? null,
    nextRuns: d.info.nextActionTimes.slice(0, 5).map((t) => t.toISOString()),
    recentRuns: recent.map((a) => ({
      runId: a.action.workflow.workflowId,
      scheduledAt: a.scheduledAt.toISOString(),
      state: states.get(a.action.workflow.workflowId)?.state ?? null,
      stage: states.get(a.action.workflow.workflowId)?.stage ?? null,
    })),
  };
}

function formatMs(ms: number): string {
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1_000]] as const) if (ms % size === 0) return `${ms / size}${unit}`;
  return `${ms}ms`;
}

async function described(ctx: ScheduleContext, scheduleId: string): Promise<ScheduleDescription> {
  try {
    return await ctx.client.schedule.getHandle(checkScheduleId(scheduleId)).describe();
  } catch (err) {
    if (err instanceof ScheduleNotFoundError) throw new InputError(`no schedule "${scheduleId}"; see \`dacp schedule list\``);
    throw err;
  }
}

export async function describeSchedule(ctx: ScheduleContext, scheduleId: string): Promise<ScheduleView> {
  return view(ctx, scheduleId, await described(ctx, scheduleId));
}

export async function listSchedules(ctx: ScheduleContext): Promise<ScheduleView[]> {
  const ids: string[] = [];
  for await (const s of ctx.client.schedule.list()) ids.push(s.scheduleId);
  const out: ScheduleView[] = [];
  for (const id of ids.sort()) {
    try {
      out.push(await describeSchedule(ctx, id));
    } catch (err) {
      if (!(err instanceof InputError)) throw err; // deleted between list and describe
    }
  }
  return out;
}

export async function pauseSchedule(ctx: ScheduleContext, scheduleId: string, o: { pause: boolean; note: string; actor: string; keyDir?: string }): Promise<ScheduleView> {
  await actingKey(ctx.pool, o.actor, 'operator', `${o.pause ? 'pause' : 'unpause'} schedules`, o.keyDir);
  await described(ctx, scheduleId);
  const handle = ctx.client.schedule.getHandle(scheduleId);
  await (o.pause ? handle.pause(o.note) : handle.unpause(o.note));
  return describeSchedule(ctx, scheduleId);
}

/** Fire now, as the schedule would (the run still resolves its base when it starts); overlapping runs are allowed. */
export async function triggerSchedule(ctx: ScheduleContext, scheduleId: string, o: { actor: string; keyDir?: string }): Promise<void> {
  await actingKey(ctx.pool, o.actor, 'operator', 'trigger schedules', o.keyDir);
  await described(ctx, scheduleId);
  await ctx.client.schedule.getHandle(scheduleId).trigger(ScheduleOverlapPolicy.ALLOW_ALL);
}

export async function deleteSchedule(ctx: ScheduleContext, scheduleId: string, o: { actor: string; keyDir?: string }): Promise<void> {
  await actingKey(ctx.pool, o.actor, 'operator', 'delete schedules', o.keyDir);
  await described(ctx, scheduleId);
  await ctx.client.schedule.getHandle(scheduleId).delete();
}

export function formatSchedule(s: ScheduleView): string {
  const lines = [
    `${s.scheduleId}  ${s.paused ? 'PAUSED' : 'active'}  ${s.every ? `every ${s.every}` : `cron "${s.cron}"`}  overlap ${s.overlap}  catch-up ${formatMs(s.catchupWindowMs)}${s.pauseOnFailure ? '  pauses on failure' : ''}`,
    `  runs as ${s.initiator ?? '?'}${s.note ? `; note: ${s.note}` : ''}`,
    `  next: ${s.nextRuns.length ? s.nextRuns.slice(0, 3).join(', ') : '–'}`,
  ];
  if (s.recentRuns.length) {
    lines.push('  recent runs:');
    for (const r of s.recentRuns) lines.push(`    ${r.runId.padEnd(48)} ${String(r.state ?? 'starting').padEnd(18)} ${r.stage ?? ''}`);
  }
  return lines.join('\n');
}
