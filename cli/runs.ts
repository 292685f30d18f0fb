import { readFileSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import {
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
  type Client,
  type WorkflowExecutionDescription,
} from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import { readSource } from '../activities/sources';
import type { Decision, PipelineInput, PipelineResult, RunStatus } from '../schemas/pipeline';
import { InputError, parseRunSpec, type RunSpec } from '../schemas/runSpec';
import { approvalRequestQuery, approvalWorkflowId, approveUpdate, rejectUpdate, statusQuery } from '../workflows/messages';
import { dacpStageKey, dacpStateKey } from '../workflows/searchAttributes';
import { TASK_QUEUES } from '../workers/options';

const RUN_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;

export function checkRunId(id: string): string {
  if (!RUN_ID.test(id)) throw new InputError(`run id "${id}" is invalid: use 1–100 letters, digits, ".", "_" or "-"`);
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
 * readable documents, and every database source must have its connection variable set.
 */
export async function preflightSources(spec: RunSpec, baseDir: string): Promise<void> {
  const allowedRoots = spec.dataRoots?.map((root) => path.resolve(baseDir, root));
  for (const [index, source] of spec.sources.entries()) {
    if (source.kind === 'postgres') {
      if (!process.env[source.connectionEnv]) {
        throw new InputError(`sources[${index}]: environment variable ${source.connectionEnv} is not set; export the source database URL in it`);
      }
      continue;
    }
    try {
      await readSource(source, { baseDir, allowedRoots });
    } catch (err) {
      if (err instanceof ApplicationFailure || err instanceof Error) throw new InputError(`sources[${index}]: ${err.message}`);
      throw err;
    }
  }
}

export async function startRun(
  client: Client,
  o: { spec: RunSpec; baseDir: string; runId?: string; initiator: string },
): Promise<string> {
  const runId = checkRunId(o.runId ?? `${o.spec.name}-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')}-${randomBytes(2).toString('hex')}`);
  const input: PipelineInput = { runId, spec: o.spec, baseDir: o.baseDir, initiator: o.initiator };
  try {
    await client.workflow.start('dacpPipeline', {
      taskQueue: TASK_QUEUES.control,
      workflowId: runId,
      args: [input],
      typedSearchAttributes: [
        { key: dacpStageKey, value: 'collect' },
        { key: dacpStateKey, value: 'running' },
      ],
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) throw new InputError(`run ${runId} already exists; choose another --id`);
    throw err;
  }
  return runId;
}

/** The run's status from its workflow; needs a control worker to answer. */
export async function runStatus(client: Client, runId: string): Promise<RunStatus> {
  checkRunId(runId);
  const handle = client.workflow.getHandle(runId);
  let description: WorkflowExecutionDescription;
  try {
    description = await handle.describe();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw new InputError(`no run with id ${runId}; see \`dacp run list\``);
    throw err;
  }
  const closed = description.status.name !== 'RUNNING';
  try {
    return await client.connection.withDeadline(Date.now() + (closed ? 3_000 : 15_000), () => handle.query(statusQuery));
  } catch (err) {
    // A finished run needs no worker: its outcome is in its result and search attributes.
    if (closed) return closedRunStatus(client, runId, description);
    throw new Error(
      `run ${runId} did not answer its status query (${(err as Error).message.split('\n')[0]}); is a control worker running (\`dacp dev\` or \`dacp worker --queue control\`)?`,
    );
  }
}

/**
 * Status of a finished run when no worker answers queries (e.g. after `dacp demo` has stopped):
 * stage and state from the search attributes, outcome figures from the result or the failure.
 */
async function closedRunStatus(client: Client, runId: string, description: WorkflowExecutionDescription): Promise<RunStatus> {
  const stage = (description.typedSearchAttributes.get(dacpStageKey) ?? 'collect') as RunStatus['stage'];
  const recordedState = description.typedSearchAttributes.get(dacpStateKey) as RunStatus['state'] | undefined;
  const metrics: Record<string, unknown> = {};
  let state: RunStatus['state'] = recordedState ?? 'failed';
  try {
    const result = (await client.workflow.getHandle(runId).result()) as PipelineResult;
    state = result.state;
    if (result.forgetting) metrics.forgetting = result.forgetting;
    if (result.instruct) metrics.instruct = result.instruct;
    if (result.versionId) metrics.deploy = { versionId: result.versionId };
    if (result.reason) metrics.approval = { outcome: 'rejected', reason: result.reason };
  } catch (err) {
    let cause: unknown = err;
    while (cause instanceof Error && cause.cause instanceof Error) cause = cause.cause;
    metrics.error = cause instanceof Error ? cause.message : String(cause);
    if (description.status.name === 'CANCELLED') state = 'cancelled';
    else if (!recordedState || recordedState === 'running' || recordedState === 'awaiting_approval') state = 'failed';
  }
  return { runId, stage, state, progress: { step: 0, totalSteps: 0, loss: null }, metrics, attempts: {}, resumedFromStep: null };
}

export async function waitForResult(client: Client, runId: string): Promise<PipelineResult> {
  return client.workflow.getHandle(runId).result() as Promise<PipelineResult>;
}

export interface RunListing {
  runId: string;
  status: string;
  stage: string | null;
  state: string | null;
  startTime: string;
  closeTime: string | null;
}

export async function listRuns(client: Client, limit = 100): Promise<RunListing[]> {
  const runs: RunListing[] = [];
  for await (const wf of client.workflow.list({ query: `WorkflowType = 'dacpPipeline'` })) {
    runs.push({
      runId: wf.workflowId,
      status: wf.status.name,
      stage: wf.typedSearchAttributes.get(dacpStageKey) ?? null,
      state: wf.typedSearchAttributes.get(dacpStateKey) ?? null,
      startTime: wf.startTime.toISOString(),
      closeTime: wf.closeTime?.toISOString() ?? null,
    });
    if (runs.length >= limit) break;
  }
  return runs;
}

export async function cancelRun(client: Client, runId: string): Promise<void> {
  const status = await runStatus(client, runId);
  if (status.state !== 'running' && status.state !== 'awaiting_approval') {
    throw new InputError(`run ${runId} is ${status.state}; only running runs can be cancelled`);
  }
  await client.workflow.getHandle(runId).cancel();
}

/** Approve or reject through the run's approval gate; the gate's validator enforces the rules. */
export async function decide(
  client: Client,
  o: { runId: string; principal: string; decision: 'approve' | 'reject'; comment?: string; reason?: string },
): Promise<{ decision: Decision; approvals: number; quorum: number }> {
  const status = await runStatus(client, o.runId);
  if (status.state !== 'awaiting_approval') {
    throw new InputError(`run ${o.runId} is not awaiting approval (stage ${status.stage}, state ${status.state})`);
  }
  const gate = client.workflow.getHandle(approvalWorkflowId(o.runId));
  let decision: Decision;
  try {
    decision =
      o.decision === 'approve'
        ? await gate.executeUpdate(approveUpdate, { args: [{ principal: o.principal, comment: o.comment }] })
        : await gate.executeUpdate(rejectUpdate, { args: [{ principal: o.principal, reason: o.reason ?? '', comment: o.comment }] });
  } catch (err) {
    if (err instanceof WorkflowUpdateFailedError) throw new InputError((err.cause as Error | undefined)?.message ?? err.message);
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
