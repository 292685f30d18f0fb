import { formatDomainMix } from '../schemas/candidates';
import { WorkflowNotFoundError, type Client, type WorkflowExecutionDescription, type WorkflowHandle } from '@temporalio/client';
import type { Payload } from '@temporalio/common';
import { decodeFromPayloadsAtIndex } from '@temporalio/common/lib/internal-non-workflow';
import { tsToMs } from '@temporalio/common/lib/time';
import type { temporal } from '@temporalio/proto';
import { openArtifactStore } from '../activities/objectStore';
import type { ApprovalOutcome, ApprovalRequest, Decision, DecisionInput, GateNotice, FinalCheckReport, InstructReport, RejectionInput, TradeoffReport } from '../schemas/pipeline';
import { InputError } from '../schemas/runSpec';
import { approvalRequestQuery, approvalWorkflowId } from '../workflows/messages';
import { dacpStageKey, dacpStateKey } from '../workflows/searchAttributes';
import { gainBySourceLines, gateComparison } from './gateView';
import { checkRunId } from './runs';

/**
 * `dacp approval show`: what an approver reads before voting. Everything the gate was asked to
 * approve (hashes, reports, sample answers), who has voted, and how long the gate stays open.
 */
export interface ApprovalView {
  runId: string;
  gateWorkflowId: string;
  /**
   * `open` takes votes; `closing` has its outcome and is recording the last votes; the rest are
   * closed gates: their outcome, or how the gate workflow ended.
   */
  state: 'open' | 'closing' | 'approved' | 'rejected' | 'superseded' | 'cancelled' | 'terminated' | 'timed_out' | 'failed';
  reason: string | null;
  /** Where request and votes were read: the gate's query (a worker answered) or its history. */
  source: 'query' | 'history';
  /** Why the query was not used; null when it was. */
  queryError: string | null;
  initiator: string;
  approvers: string[];
  quorum: number;
  approvals: number;
  artifacts: ApprovalRequest['artifacts'];
  forgetting: ApprovalRequest['forgetting'];
  instruct: ApprovalRequest['instruct'];
  /** The gate on what ships, after instruction tuning; null for runs from before it existed. */
  finalCheck: FinalCheckReport | null;
  /** The replay trade-off when the spec listed several ratios: a table, and where its SVG plot is. */
  tradeoff: { candidates: NonNullable<ApprovalRequest['candidates']>; table: string | null; svgUri: string | null; svgFile: string | null } | null;
  /** The sample answers of the instruction report artifact; null when it cannot be read here. */
  samples: InstructReport['samples'] | null;
  samplesError: string | null;
  /** Where the run's HTML report from when the gate opened lies on this machine (verified); null when absent here. */
  runReportFile: string | null;
  votes: { principal: string; decision: Decision['decision']; at: string; comment: string | null }[];
  /** Reminders and escalation, for gates that have them (null otherwise, or when read from history). */
  reminders: {
    everyMs: number | null;
    escalation: { afterMs: number; approvers: string[]; escalated: boolean } | null;
    notices: GateNotice[];
    nextReminderAt: string | null;
  } | null;
  timeout: {
    timeoutMs: number;
    openedAt: string;
    deadline: string;
    /** Until the deadline; null once the gate has closed. */
    remainingMs: number | null;
    closedAt: string | null;
  };
}

interface GateReading {
  request: ApprovalRequest;
  decisions: Decision[];
  open: boolean;
  notices?: GateNotice[];
  escalated?: boolean;
  nextReminderAt?: string | null;
}

/** A query that no worker answers gives up after this long; the history then answers instead. */
const QUERY_DEADLINE_MS = { open: 5_000, closed: 3_000 };

export async function approvalView(client: Client, runId: string, o: { artifactsDir: string; now?: number }): Promise<ApprovalView> {
  checkRunId(runId);
  const gateId = approvalWorkflowId(runId);
  const handle = client.workflow.getHandle(gateId);
  const description = await describeGate(client, runId, handle);
  const running = description.status.name === 'RUNNING';

  let reading: GateReading;
  let source: ApprovalView['source'] = 'query';
  let queryError: string | null = null;
  const waitMs = running ? QUERY_DEADLINE_MS.open : QUERY_DEADLINE_MS.closed;
  try {
    reading = await client.connection.withDeadline(Date.now() + waitMs, () => handle.query(approvalRequestQuery));
  } catch (err) {
    source = 'history';
    queryError = `no answer within ${waitMs / 1000}s: ${(err as Error).message.split('\n')[0]}`;
    reading = await readFromHistory(client, handle, running);
  }
  const { request, decisions } = reading;

  let state: ApprovalView['state'];
  let reason: string | null = null;
  if (running) {
    state = reading.open ? 'open' : 'closing';
  } else if (description.status.name === 'COMPLETED') {
    const outcome = (await handle.result()) as ApprovalOutcome;
    state = outcome.outcome;
    reason = outcome.reason;
  } else {
    state = description.status.name.toLowerCase() as ApprovalView['state'];
  }

  const openedAt = description.startTime.getTime();
  const now = o.now ?? Date.now();
  const samples = await readSamples(o.artifactsDir, request);
  return {
    runId,
    gateWorkflowId: gateId,
    state,
    reason,
    source,
    queryError,
    initiator: request.initiator,
    approvers: request.approvers,
    quorum: request.quorum,
    approvals: decisions.filter((d) => d.decision === 'approve').length,
    artifacts: request.artifacts,
    forgetting: request.forgetting,
    instruct: request.instruct,
    finalCheck: request.finalCheck ?? null,
    tradeoff: await tradeoffOf(o.artifactsDir, request),
    samples: samples.samples,
    samplesError: samples.error,
    runReportFile: await localFile(o.artifactsDir, request.artifacts.runReport),
    votes: decisions.map((d) => ({ principal: d.principal, decision: d.decision, at: d.at, comment: d.comment ?? null })),
    reminders: request.reminders && reading.notices
      ? {
          everyMs: request.reminders.everyMs ?? null,
          escalation: request.reminders.escalation ? { ...request.reminders.escalation, escalated: Boolean(reading.escalated) } : null,
          notices: reading.notices,
          nextReminderAt: reading.nextReminderAt ?? null,
        }
      : null,
    timeout: {
      timeoutMs: request.timeoutMs,
      openedAt: new Date(openedAt).toISOString(),
      deadline: new Date(openedAt + request.timeoutMs).toISOString(),
      remainingMs: running ? Math.max(0, openedAt + request.timeoutMs - now) : null,
      closedAt: description.closeTime?.toISOString() ?? null,
    },
  };
}

/** The gate's description; a run that has no gate (yet) is told apart from a run that does not exist. */
async function describeGate(client: Client, runId: string, gate: WorkflowHandle): Promise<WorkflowExecutionDescription> {
  try {
    return await gate.describe();
  } catch (err) {
    if (!(err instanceof WorkflowNotFoundError)) throw err;
  }
  let run: WorkflowExecutionDescription;
  try {
    run = await client.workflow.getHandle(runId).describe();
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw new InputError(`no run with id ${runId}; see \`dacp run list\``);
    throw err;
  }
  const stage = run.typedSearchAttributes.get(dacpStageKey) ?? 'collect';
  const state = run.typedSearchAttributes.get(dacpStateKey) ?? run.status.name.toLowerCase();
  throw new InputError(`run ${runId} has not reached its approval gate (stage ${stage}, state ${state}); see \`dacp run status ${runId}\``);
}

/**
 * The gate's request and votes from its history, for when no worker answers the query. The history
 * is the authority on votes anyway: a vote counts once its Update is accepted.
 */
async function readFromHistory(client: Client, handle: WorkflowHandle, running: boolean): Promise<GateReading> {
  const converter = client.options.loadedDataConverter;
  const decode = <T>(payloads: Payload[] | null | undefined) => decodeFromPayloadsAtIndex<T>(converter, 0, payloads);
  const events = (await handle.fetchHistory()).events ?? [];
  const started = events[0]?.workflowExecutionStartedEventAttributes;
  if (!started) throw new Error(`the history of ${handle.workflowId} has no start event; it cannot be read`);
  const request = await decode<ApprovalRequest>(started.input?.payloads);

  const completed = new Map<string, Decision>();
  for (const event of events) {
    const attrs = event.workflowExecutionUpdateCompletedEventAttributes;
    const success = attrs?.outcome?.success?.payloads;
    if (attrs?.meta?.updateId && success) completed.set(attrs.meta.updateId, await decode<Decision>(success));
  }
  const decisions: Decision[] = [];
  for (const event of events) {
    const accepted = event.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest;
    if (!accepted?.input?.name || !accepted.meta?.updateId) continue;
    const done = completed.get(accepted.meta.updateId);
    if (done) {
      decisions.push(done);
      continue;
    }
    // Accepted and counted, still being recorded: the decision as the gate builds it.
    decisions.push(await pendingDecision(accepted.input, decode, event));
  }
  const approvals = decisions.filter((d) => d.decision === 'approve').length;
  const decided = decisions.some((d) => d.decision === 'reject') || approvals >= request.quorum;
  const open = running && !decided;
  if (!request.reminders) return { request, decisions, open };
  // The notices the gate sent are its notifyApprovers activities, in order.
  const notices: GateNotice[] = [];
  for (const event of events) {
    const scheduled = event.activityTaskScheduledEventAttributes;
    if (scheduled?.activityType?.name !== 'notifyApprovers') continue;
    const input = await decode<{ kind: GateNotice['kind']; at: string; to: string[] }>(scheduled.input?.payloads);
    notices.push({ kind: input.kind, at: input.at, to: input.to });
  }
  const everyMs = request.reminders.everyMs;
  const lastReminder = [...notices].reverse().find((n) => n.kind === 'requested' || n.kind === 'reminder');
  const nextReminderAt = open && everyMs && lastReminder && !notices.some((n) => n.kind === 'timed_out') ? new Date(Date.parse(lastReminder.at) + everyMs).toISOString() : null;
  return { request, decisions, open, notices, escalated: notices.some((n) => n.kind === 'escalated'), nextReminderAt };
}

async function pendingDecision(
  input: temporal.api.update.v1.IInput,
  decode: <T>(payloads: Payload[] | null | undefined) => Promise<T>,
  event: temporal.api.history.v1.IHistoryEvent,
): Promise<Decision> {
  const at = new Date(tsToMs(event.eventTime)).toISOString();
  if (input.name === 'reject') {
    const vote = await decode<RejectionInput>(input.args?.payloads);
    return { principal: vote.principal, decision: 'reject', comment: vote.reason + (vote.comment ? ` — ${vote.comment}` : ''), at };
  }
  const vote = await decode<DecisionInput>(input.args?.payloads);
  return { principal: vote.principal, decision: 'approve', comment: vote.comment, at };
}

/** The sample answers live in the instruction report artifact, not in history; read and verified here. */
async function readSamples(artifactsDir: string, request: ApprovalRequest): Promise<{ samples: InstructReport['samples'] | null; error: string | null }> {
  try {
    const report = await openArtifactStore(artifactsDir).getJson<InstructReport>(request.artifacts.instructReport);
    return { samples: report.samples, error: null };
  } catch (err) {
    return { samples: null, error: (err as Error).message.split('\n')[0] };
  }
}

/** The local path of a stored artifact, if it is here and intact. */
async function localFile(artifactsDir: string, ref: { uri: string; sha256: string } | undefined): Promise<string | null> {
  if (!ref) return null;
  const store = openArtifactStore(artifactsDir);
  try {
    return (await store.verify(ref)) ? store.pathOf(ref.uri) : null;
  } catch {
    return null;
  }
}

const SAMPLES_SHOWN = 5;

function duration(ms: number): string {
  const s = Math.floor(ms / 1000);
  const [d, h, m] = [Math.floor(s / 86_400), Math.floor((s % 86_400) / 3_600), Math.floor((s % 3_600) / 60)];
  if (d) return `${d}d ${h}h ${m}m`;
  if (h) return `${h}h ${m}m`;
  return `${m}m ${s % 60}s`;
}

const num = (x: number) => (Number.isFinite(x) ? Number(x.toPrecision(4)).toString() : String(x));
const pct = (x: number) => `${(x * 100).toFixed(1)} %`;

export function formatApprovalView(v: ApprovalView): string {
  const lines: string[] = [];
  const votesLine = `${v.approvals} of ${v.quorum} approvals`;
  if (v.state === 'open') {
    lines.push(`approval gate of run ${v.runId}: open, ${votesLine}; time left ${duration(v.timeout.remainingMs ?? 0)} (until ${v.timeout.deadline})`);
  } else if (v.state === 'closing') {
    lines.push(`approval gate of run ${v.runId}: decided, recording the last votes; ${votesLine}`);
  } else {
    lines.push(`approval gate of run ${v.runId}: closed, ${v.state}${v.reason ? ` (${v.reason})` : ''}; ${votesLine}; closed at ${v.timeout.closedAt ?? '–'}`);
  }
  if (v.source === 'history') lines.push(`no worker answered the gate's query (${v.queryError}); read from the gate's history instead`);
  lines.push(`initiator ${v.initiator}; approvers ${v.approvers.join(', ')}; quorum ${v.quorum}`);

  const a = v.artifacts;
  lines.push('', 'artifacts (sha256)');
  lines.push(`  base model         ${a.baseModel.sha256}  ${a.baseModel.versionId}`);
  lines.push(`  adapted model      ${a.adaptedModel.sha256}`);
  lines.push(`  tuned model        ${a.tunedModel.sha256}  (what ships)`);
  lines.push(`  forgetting report  ${a.forgettingReport.sha256}`);
  lines.push(`  instruct report    ${a.instructReport.sha256}`);
  if (a.finalCheckReport) lines.push(`  final check report ${a.finalCheckReport.sha256}`);
  if (a.tradeoffReport) lines.push(`  trade-off report   ${a.tradeoffReport.sha256}`);
  if (a.runReport) lines.push(`  run report (HTML)  ${a.runReport.sha256}${v.runReportFile ? `  ${v.runReportFile}` : ''}`);
  for (const d of a.datasets) lines.push(`  dataset            ${d.sha256}  ${d.role}/${d.split}, ${d.docs} docs`);

  if (v.finalCheck) {
    lines.push('', 'the gates side by side');
    lines.push(...gateComparison(v.forgetting, v.finalCheck));
  }
  if (v.tradeoff) {
    const mixes = v.tradeoff.candidates.some((c) => c.domainMix);
    lines.push('', `replay trade-off (one candidate per replay ratio${mixes ? ' and domain mix' : ''}; the chosen one goes on)`);
    if (v.tradeoff.table) lines.push(...v.tradeoff.table.split('\n').map((l) => `  ${l}`));
    if (v.tradeoff.svgFile) lines.push(`  plot: ${v.tradeoff.svgFile}`);
  }
  const f = v.forgetting;
  lines.push('', `forgetting check: ${f.passed ? 'passed' : 'failed'} (round ${f.round}, replay ratio ${num(f.replayRatio)}${f.domainMix ? `, domain mix ${formatDomainMix(f.domainMix)}` : ''})`);
  lines.push(...gainBySourceLines(f));
  lines.push(`  general perplexity  ${num(f.base.generalPerplexity)} → ${num(f.adapted.generalPerplexity)}  change ${pct(f.generalRegression)}, budget at most ${pct(f.budgets.maxGeneralRegression)}`);
  lines.push(`  domain perplexity   ${num(f.base.domainPerplexity)} → ${num(f.adapted.domainPerplexity)}  gain ${pct(f.domainGain)}, floor ${pct(f.budgets.minDomainGain)}`);
  for (const r of f.reasons) lines.push(`  ${r}`);

  const { base, tuned } = v.instruct;
  lines.push('', 'instruction following (base → tuned)');
  lines.push(`  response perplexity ${num(base.responsePerplexity)} → ${num(tuned.responsePerplexity)}, token accuracy ${num(base.tokenAccuracy)} → ${num(tuned.tokenAccuracy)}`);
  lines.push(`  exact match ${num(base.exactMatch)} → ${num(tuned.exactMatch)}, ROUGE-L ${num(base.rougeL)} → ${num(tuned.rougeL)}`);

  lines.push('', 'sample answers');
  if (!v.samples) lines.push(`  unavailable: ${v.samplesError}`);
  else {
    for (const s of v.samples.slice(0, SAMPLES_SHOWN)) {
      lines.push(`  prompt     ${JSON.stringify(s.prompt)}`, `  expected   ${JSON.stringify(s.expected)}`, `  generated  ${JSON.stringify(s.generated)}`, '');
    }
    if (v.samples.length > SAMPLES_SHOWN) lines.push(`  … ${v.samples.length - SAMPLES_SHOWN} more with --json`);
    else if (v.samples.length === 0) lines.push('  none in the report');
    if (lines[lines.length - 1] === '') lines.pop();
  }

  if (v.reminders) {
    const r = v.reminders;
    lines.push('', 'reminders and escalation');
    if (r.everyMs) lines.push(`  a reminder every ${duration(r.everyMs)} to approvers who have not voted${r.nextReminderAt ? `; next at ${r.nextReminderAt}` : ''}`);
    if (r.escalation) lines.push(`  escalation to ${r.escalation.approvers.join(', ')} after ${duration(r.escalation.afterMs)}: ${r.escalation.escalated ? 'done, they may vote' : 'not yet'}`);
    lines.push(`  at the deadline the gate rejects the run (${v.timeout.deadline})`);
    for (const n of r.notices) lines.push(`  ${n.at}  ${n.kind.padEnd(9)} to ${n.to.join(', ') || 'nobody left'}`);
  }
  lines.push('', 'votes');
  if (v.votes.length === 0) lines.push('  none yet');
  for (const vote of v.votes) lines.push(`  ${vote.principal}  ${vote.decision}  ${vote.at}${vote.comment ? `  ${JSON.stringify(vote.comment)}` : ''}`);
  return lines.join('\n');
}

/** The trade-off report and the local path of its plot, when the run trained several candidates. */
async function tradeoffOf(artifactsDir: string, request: ApprovalRequest): Promise<ApprovalView['tradeoff']> {
  if (!request.candidates || !request.artifacts.tradeoffReport) return null;
  const store = openArtifactStore(artifactsDir);
  let table: string | null = null;
  let svgFile: string | null = null;
  try {
    table = (await store.getJson<TradeoffReport>(request.artifacts.tradeoffReport)).table;
    if (request.artifacts.tradeoffSvg && (await store.verify(request.artifacts.tradeoffSvg))) svgFile = store.pathOf(request.artifacts.tradeoffSvg.uri);
  } catch {
    // The figures are in the request itself; the stored table and plot are a convenience.
  }
  return { candidates: request.candidates, table, svgUri: request.artifacts.tradeoffSvg?.uri ?? null, svgFile };
}
