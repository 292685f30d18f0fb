import { readFileSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import type { Pool } from 'pg';
import {
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
  type Client,
} from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { readChoiceSet } from '../activities/choiceSets';
import { readSource } from '../activities/sources';
import { appendAuditEntry, runExists, storeRunSpec } from '../db/records';
import { stageInputs } from '../activities/inputs';
import { openArtifactStore } from '../activities/objectStore';
import { candidateHashes, decisionStatement, type StartStatement, type VoteSignature } from '../schemas/signing';
import { actingKey, signWith } from './keys';
import { sourceRoots } from '../workers/policy';
import { workflowSpec, type Decision, type PipelineInput, type PipelineResult } from '../schemas/pipeline';
import { InputError, parseRunSpec, type RunSpec } from '../schemas/runSpec';
import { approvalRequestQuery, approvalWorkflowId, approveUpdate, rejectUpdate } from '../workflows/messages';
import { runStatus, type RunContext } from './status';
import { dacpStageKey, dacpStateKey } from '../workflows/searchAttributes';
import { scheduledByKey } from './schedules';
import { TASK_QUEUES } from '../workers/options';

/** ':' for the runs a schedule starts, which Temporal names `<schedule>-<RFC 3339 time>`. */
const RUN_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$/;

/** The ids of a run's child workflows: a run id must not look like one. */
const CHILD_SUFFIX = /-(approval|candidate-\d+)$/;

export function checkRunId(id: string): string {
  if (!RUN_ID.test(id)) throw new InputError(`run id "${id}" is invalid: use 1–100 letters, digits, ".", "_", ":" or "-"`);
  if (CHILD_SUFFIX.test(id)) throw new InputError(`run id "${id}" ends like a run's approval gate or candidate (-approval, -candidate-N); choose another --id`);
  return id;
}

export function defaultPrincipal(): string {
  return process.env.DACP_USER ?? os.userInfo().username;
}

/** A spec names its sources and settings; anything bigger is a mistake (a data file passed as --spec, say). */
export const maxSpecBytes = 1024 * 1024;

/** Read and validate a spec file: size, UTF-8, JSON syntax, then every field. */
export function loadSpecFile(file: string): { spec: RunSpec; baseDir: string } {
  let bytes: Buffer;
  try {
    const stat = statSync(file);
    if (!stat.isFile()) throw new InputError(`spec ${file} is not a file; point --spec at a JSON file`);
    if (stat.size > maxSpecBytes) {
      throw new InputError(`spec ${file} is ${stat.size} bytes, over the ${maxSpecBytes}-byte (1 MiB) limit; a spec lists sources by path, it does not hold the data`);
    }
    bytes = readFileSync(file);
  } catch (err) {
    if (err instanceof InputError) throw err;
    throw new InputError(`cannot read spec ${file} (${(err as NodeJS.ErrnoException).code}); check --spec`);
  }
  let text: string;
  try {
    // fatal: refuse invalid UTF-8 rather than parse replacement characters; a leading BOM is dropped.
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new InputError(`spec ${file} is not UTF-8 text; give a JSON file`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    // V8 quotes the offending text; keep the error on one printable line.
    throw new InputError(`spec ${file} is not valid JSON: ${(err as Error).message.replace(/[\u0000-\u001f\u007f]+/g, ' ')}`);
  }
  return { spec: parseRunSpec(raw, `spec ${file}`), baseDir: path.dirname(path.resolve(file)) };
}

/**
 * Refuse a run whose sources cannot be read before anything starts: every file source must match
 * readable documents, every database source must have its connection variable set, and every
 * multiple-choice set the spec names must be a valid file inside the data roots.
 */
export async function preflightSources(spec: RunSpec, baseDir: string): Promise<void> {
  let allowedRoots: string[];
  try {
    allowedRoots = sourceRoots({ baseDir, specRoots: spec.dataRoots });
  } catch (err) {
    throw new InputError(`dataRoots: ${(err as Error).message}`);
  }
  for (const [index, source] of spec.sources.entries()) {
    if (source.kind === 'postgres') {
      if (!process.env[source.connectionEnv]) {
        throw new InputError(`sources[${index}]: environment variable ${source.connectionEnv} is not set; export the source database URL in it`);
      }
      continue;
    }
    try {
      // An s3 source is listed here (credentials, bucket, glob) and read by the collect stage.
      await readSource(source, { baseDir, allowedRoots, listOnly: source.kind === 's3' });
    } catch (err) {
      if (err instanceof ApplicationFailure || err instanceof Error) throw new InputError(`sources[${index}]: ${err.message}`);
      throw err;
    }
  }
  for (const name of ['domain', 'general'] as const) {
    const file = spec.evaluation.choices[name];
    if (file === undefined) continue;
    try {
      await readChoiceSet(file, { baseDir, allowedRoots });
    } catch (err) {
      if (err instanceof Error) throw new InputError(`evaluation.choices.${name}: ${err.message}`);
      throw err;
    }
  }
}

/**
 * Refuse a run that nobody could ever approve. The initiator may not vote on their own run
 * (separation of duties), so the other approvers alone must be able to reach the quorum. The spec
 * schema compares the quorum with all approvers; only at start is the initiator known.
 */
export function checkQuorumReachable(spec: Pick<RunSpec, 'approval'>, initiator: string): void {
  const { approvers, quorum } = spec.approval;
  const voters = new Set(approvers.filter((p) => p !== initiator));
  if (voters.size >= quorum) return;
  throw new InputError(
    `approval.quorum is ${quorum} but approval.approvers has only ${voters.size} approver(s) besides the initiator ${initiator}, ` +
      'who cannot vote on their own run: add approvers, lower the quorum, or start the run as someone else (--as)',
  );
}

export { runStatus, type RunContext };

/**
 * Start a run under a new id. An id that has ever been used — running, closed, or only in the
 * database after Temporal forgot it — is refused, so a second execution can never reuse the first
 * one's checkpoints, votes, alias moves or records. The validated spec is stored in the database by
 * its sha256; the workflow gets that reference and the few fields it reads.
 */
export async function startRun(
  ctx: RunContext,
  o: { spec: RunSpec; baseDir: string; runId?: string; initiator: string; keyDir?: string },
): Promise<string> {
  const runId = checkRunId(o.runId ?? `${o.spec.name}-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')}-${randomBytes(2).toString('hex')}`);
  // Only an operator starts runs, and signs the start with its key.
  const key = await actingKey(ctx.pool, o.initiator, 'operator', 'start runs', o.keyDir);
  const taken = () => new InputError(`run ${runId} already exists; a run id names one run for ever, so choose another --id`);
  if (await runExists(ctx.pool, runId)) throw taken();
  // The files the run reads go into the artifact store, so that a worker on any host reads these
  // bytes; the run carries the staged manifest's URI, never this machine's folder.
  const staged = await stageRunInputs(ctx, o.spec, o.baseDir);
  // In the database every worker reads, on whichever host it runs.
  const specBody = JSON.stringify(staged.spec);
  const specSha256 = createHash('sha256').update(specBody).digest('hex');
  const specRef = await storeRunSpec(ctx.pool, specBody, specSha256);
  const statement: StartStatement = { format: 'dacp-start/1', runId, specSha256, initiator: o.initiator, baseDir: staged.baseDir, signedAt: new Date().toISOString(), keyId: key.keyId };
  const startSignature = { statement, ...signWith(key, statement) };
  const input: PipelineInput = { runId, spec: workflowSpec(staged.spec), specRef, baseDir: staged.baseDir, initiator: o.initiator, startSignature };
  try {
    await ctx.client.workflow.start('dacpPipeline', {
      taskQueue: TASK_QUEUES.control,
      workflowId: runId,
      workflowIdReusePolicy: 'REJECT_DUPLICATE',
      args: [input],
      // For `run list` before the run's first activity has recorded it in the database.
      memo: { initiator: o.initiator },
      typedSearchAttributes: [
        { key: dacpStageKey, value: 'collect' },
        { key: dacpStateKey, value: 'running' },
      ],
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) throw taken();
    throw err;
  }
  return runId;
}

/** Stage the run's local files (see activities/inputs.ts); a source that cannot be staged is the user's to fix. */
async function stageRunInputs(ctx: RunContext, spec: RunSpec, baseDir: string): Promise<{ spec: RunSpec; baseDir: string }> {
  let allowedRoots: string[];
  try {
    allowedRoots = sourceRoots({ baseDir, specRoots: spec.dataRoots });
  } catch (err) {
    throw new InputError(`dataRoots: ${(err as Error).message}`);
  }
  try {
    return await stageInputs(openArtifactStore(ctx.artifactsDir), spec, baseDir, allowedRoots);
  } catch (err) {
    const type = (err as ApplicationFailure).type;
    if (err instanceof ApplicationFailure && type?.startsWith('Source')) throw new InputError(`sources: ${err.message}`);
    throw err;
  }
}

export async function waitForResult(client: Client, runId: string): Promise<PipelineResult> {
  return client.workflow.getHandle(runId).result() as Promise<PipelineResult>;
}

export interface RunListing {
  runId: string;
  /** dacp's state (running, awaiting_approval, completed, …), from the DacpState search attribute. */
  state: string | null;
  stage: string | null;
  startedAt: string;
  /** Who started it: `--as` of `run start`, or of `schedule create` for a scheduled run. */
  initiator: string | null;
  /** The schedule that started it (Temporal's TemporalScheduledById); null for a manual run. */
  scheduleId: string | null;
  /** Temporal's status of the workflow (Running, Completed, Failed, …). */
  status: string;
  closedAt: string | null;
}

/** Runs, newest first: Temporal's list with the search attributes, and each run's initiator from the database. */
export async function listRuns(ctx: Pick<RunContext, 'client' | 'pool'>, limit = 100): Promise<RunListing[]> {
  const runs: RunListing[] = [];
  for await (const wf of ctx.client.workflow.list({ query: `WorkflowType = 'dacpPipeline'` })) {
    runs.push({
      runId: wf.workflowId,
      state: wf.typedSearchAttributes.get(dacpStateKey) ?? null,
      stage: wf.typedSearchAttributes.get(dacpStageKey) ?? null,
      startedAt: wf.startTime.toISOString(),
      initiator: typeof wf.memo?.initiator === 'string' ? wf.memo.initiator : null,
      scheduleId: wf.typedSearchAttributes.get(scheduledByKey) ?? null,
      status: wf.status.name,
      closedAt: wf.closeTime?.toISOString() ?? null,
    });
    if (runs.length >= limit) break;
  }
  if (runs.length) {
    const { rows } = await ctx.pool.query('SELECT run_id, initiator FROM runs WHERE run_id = ANY($1)', [runs.map((r) => r.runId)]);
    const initiators = new Map(rows.map((r) => [r.run_id as string, r.initiator as string]));
    for (const run of runs) run.initiator = initiators.get(run.runId) ?? run.initiator;
  }
  return runs.sort((a, b) => b.startedAt.localeCompare(a.startedAt) || b.runId.localeCompare(a.runId));
}

/**
 * Ask Temporal to cancel a run; no worker needs to be running. The run records `cancelled` once a
 * worker has processed the request, after training has written its last checkpoint.
 */
export async function cancelRun(ctx: RunContext, runId: string): Promise<void> {
  const status = await runStatus(ctx, runId);
  if (status.state !== 'running' && status.state !== 'awaiting_approval') {
    throw new InputError(`run ${runId} is ${status.state}; only running runs can be cancelled`);
  }
  await ctx.client.workflow.getHandle(runId).cancel();
}

/**
 * Approve or reject through the run's approval gate, signed with the principal's key over the
 * gate's candidate hashes; the gate's validator verifies it and enforces the rules. A refused
 * attempt leaves no history, so it is written to the run's audit log here: who, why, when.
 */
export async function decide(
  ctx: { client: Client; pool: Pool },
  o: {
    runId: string;
    principal: string;
    decision: 'approve' | 'reject';
    comment?: string;
    reason?: string;
    keyDir?: string;
    /** The HTTP API: the server signs with its own key for the principal it authenticated (and checked the role of). */
    server?: { keyId: string; privateKey: string; publicKey: string };
  },
): Promise<{ decision: Decision; approvals: number; quorum: number }> {
  const { client, pool } = ctx;
  checkRunId(o.runId);
  const gate = client.workflow.getHandle(approvalWorkflowId(o.runId));
  // Only an open gate takes votes (its validator says why it refuses one). Otherwise say where the
  // run is, from its search attributes: no worker needs to answer.
  const notAwaiting = async () => {
    try {
      const run = await client.workflow.getHandle(o.runId).describe();
      const stage = run.typedSearchAttributes.get(dacpStageKey) ?? '?';
      const state = run.typedSearchAttributes.get(dacpStateKey) ?? run.status.name.toLowerCase();
      return new InputError(`run ${o.runId} is not awaiting approval (stage ${stage}, state ${state})`);
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) return new InputError(`no run with id ${o.runId}; see \`dacp run list\``);
      throw err;
    }
  };
  try {
    const described = await gate.describe();
    if (described.status.name !== 'RUNNING') throw await notAwaiting();
  } catch (err) {
    if (!(err instanceof WorkflowNotFoundError)) throw err;
    throw await notAwaiting();
  }
  const refused = async (reason: string) => {
    await appendAuditEntry(pool, {
      runId: o.runId,
      key: `${o.runId}:refused:${randomUUID()}`,
      event: 'vote_refused',
      stage: 'approval',
      actor: o.principal,
      details: { decision: o.decision, reason, ...(o.server ? { via: 'api' } : { via: 'cli', osUser: os.userInfo().username }) },
    }).catch(() => undefined); // a run the database does not know has nothing to append to
    return new InputError(reason);
  };
  // The candidate the gate asks about, and whether it takes signed votes (every gate since signed decisions).
  const { request } = await gate.query(approvalRequestQuery);
  let signature: VoteSignature | undefined;
  if (request.signing) {
    let key: { keyId: string; privateKey: string; publicKey: string };
    try {
      key = o.server ?? (await actingKey(pool, o.principal, 'approver', `vote on run ${o.runId}`, o.keyDir));
    } catch (err) {
      if (err instanceof InputError) throw await refused(err.message);
      throw err;
    }
    const unsigned = { keyId: key.keyId, signedAt: new Date().toISOString(), candidate: candidateHashes(request.artifacts), via: o.server ? ('api' as const) : ('cli' as const) };
    const statement = decisionStatement({ runId: o.runId, decision: o.decision, principal: o.principal, comment: o.comment, reason: o.reason, signature: unsigned });
    signature = { ...unsigned, signature: signWith(key, statement).signature };
  } else if (o.server) {
    throw await refused(`run ${o.runId}'s gate takes no signed votes (it opened before signed decisions); vote with \`dacp ${o.decision}\``);
  }
  let decision: Decision;
  try {
    decision =
      o.decision === 'approve'
        ? await gate.executeUpdate(approveUpdate, { args: [{ principal: o.principal, comment: o.comment, ...(signature ? { signature } : {}) }] })
        : await gate.executeUpdate(rejectUpdate, { args: [{ principal: o.principal, reason: o.reason ?? '', comment: o.comment, ...(signature ? { signature } : {}) }] });
  } catch (err) {
    if (err instanceof WorkflowUpdateFailedError) throw await refused((err.cause as Error | undefined)?.message ?? err.message);
    throw err;
  }
  let approvals = 0;
  let quorum = 0;
  try {
    const view = await gate.query(approvalRequestQuery);
    approvals = view.decisions.filter((d) => d.decision === 'approve').length;
    quorum = view.request.quorum;
  } catch {
    // The gate closes as soon as quorum is reached; a closed gate's counts are in the run's status.
  }
  return { decision, approvals, quorum };
}

export async function approvalRequest(client: Client, runId: string) {
  return client.workflow.getHandle(approvalWorkflowId(runId)).query(approvalRequestQuery);
}
