import {
  allHandlersFinished,
  CancellationScope,
  condition,
  isCancellation,
  patched,
  proxyActivities,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import type { DacpActivities } from '../activities';
import { DecisionInput, RejectionInput } from '../schemas/pipeline';
import type { ApprovalOutcome, ApprovalRequest, Decision } from '../schemas/pipeline';
import type { GateNotice, SignedDecision } from '../schemas/pipeline';
import { candidateDifferences, candidateHashes, decisionStatement, MAX_SIGNING_SKEW_MS, SERVER_SIGNER, verifyStatement, type VoteSignature } from '../schemas/signing';
import { approvalRequestQuery, approveUpdate, rejectUpdate, supersedeSignal } from './messages';

const { recordDecision, recordTransition } = proxyActivities<DacpActivities>({
  taskQueue: 'dacp-control',
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s' },
});

// A notice is written to the outbox and its webhook tried a few times inside the activity; a
// webhook that stays down never holds the gate up.
const { notifyApprovers } = proxyActivities<DacpActivities>({
  taskQueue: 'dacp-control',
  startToCloseTimeout: '2 minutes',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s', maximumAttempts: 10 },
});

/** Patch id: reminders, escalation and the outbox; gates from before only wait for their timeout. */
export const GATE_REMINDERS = 'approval-reminders';

/**
 * Votes count the moment they are accepted and are recorded afterwards; the deciding vote closes
 * the gate and the gate waits for every accepted vote to be recorded before it returns. Gates whose
 * first vote was cast by the first version of this code (which recorded first and counted after,
 * and could return with a vote still being recorded) replay that way: docs/reliability-replay.md.
 */
export const VOTES_COUNT_ON_ACCEPTANCE = 'approval-gate-votes-count-on-acceptance';

/**
 * The human gate. Runs as a child of the pipeline (`<runId>-approval`) so that approvers address it
 * directly. Rules, enforced by the update validators before anything reaches history:
 * the principal must be one of the run's approvers, must not be the run's initiator, votes only while
 * the gate is open, and votes once. `quorum` approvals approve; any rejection rejects; the timeout rejects.
 *
 * Concurrent votes: validators and the synchronous start of each handler run one update at a time,
 * so an accepted vote is counted before the next vote is validated. The vote that decides closes
 * the gate; every vote after it is refused and never recorded. Hence an approve and a reject that
 * race give exactly one outcome, and the votes it lists are exactly the votes recorded.
 */
export async function approvalGate(request: ApprovalRequest): Promise<ApprovalOutcome> {
  const decisions: Decision[] = [];
  // Marked synchronously when a vote is accepted, so a second vote by the same principal is refused.
  const voted = new Set<string>();
  let open = true;
  let closedBecause = '';
  let rejection: Decision | undefined;
  // Fixed by the first vote (see VOTES_COUNT_ON_ACCEPTANCE); undefined while nobody has voted.
  let countsOnAcceptance: boolean | undefined;

  // Reminders and escalation (gates since GATE_REMINDERS whose request asks for them).
  const withReminders = request.reminders !== undefined && patched(GATE_REMINDERS);
  const notices: GateNotice[] = [];
  let escalated = false;
  let nextReminderAt: number | null = null;
  const escalationApprovers = request.reminders?.escalation?.approvers ?? [];
  /** Who may vote now: the run's approvers, and after an escalation its escalation approvers too. */
  const voters = () => (escalated ? [...new Set([...request.approvers, ...escalationApprovers])] : request.approvers);

  const approvals = () => decisions.filter((d) => d.decision === 'approve').length;
  const decided = () => rejection !== undefined || approvals() >= request.quorum;

  const close = (why: string) => {
    if (!open) return;
    open = false;
    closedBecause = why;
  };

  const validateVoter = (principal: string) => {
    if (!open) throw new Error(`run ${request.runId} is not awaiting approval any more${closedBecause ? ` (${closedBecause})` : ''}`);
    if (principal === request.initiator) {
      throw new Error(`${principal} started run ${request.runId} and cannot approve or reject it (separation of duties)`);
    }
    if (!voters().includes(principal)) {
      if (withReminders && escalationApprovers.includes(principal)) {
        throw new Error(`${principal} may vote on run ${request.runId} only after its escalation, ${Math.round((request.reminders?.escalation?.afterMs ?? 0) / 60_000)} minutes after the gate opened`);
      }
      throw new Error(`${principal} is not an approver of run ${request.runId}; approvers: ${voters().join(', ')}`);
    }
    if (voted.has(principal)) {
      throw new Error(`${principal} has already decided on run ${request.runId}; each approver votes once`);
    }
  };

  /**
   * Gates that opened with captured keys take signed votes only: by a key of the principal's that
   * was active when the gate opened, over this run, this decision and this candidate's hashes,
   * signed within MAX_SIGNING_SKEW_MS of the gate's clock. Pure code: @noble/curves, no I/O.
   */
  const checkSignature = (vote: { principal: string; comment?: string; reason?: string; signature?: VoteSignature }, decision: 'approve' | 'reject'): SignedDecision | undefined => {
    if (!request.signing) return undefined;
    const { principal, signature } = vote;
    if (!signature) throw new Error(`votes on run ${request.runId} must be signed: vote with \`dacp ${decision} ${request.runId} --as ${principal}\` holding the key from \`dacp keys init --as ${principal}\``);
    // A vote through the HTTP API is signed by the server's key, for the approver it authenticated.
    const viaApi = signature.via === 'api';
    const keys = request.signing.keys[viaApi ? SERVER_SIGNER : principal] ?? [];
    if (keys.length === 0) {
      if (viaApi) throw new Error(`run ${request.runId}'s gate opened before dacp serve had a key; vote with \`dacp ${decision} ${request.runId} --as ${principal}\``);
      throw new Error(`${principal} had no active key and approver role when the gate of run ${request.runId} opened; register with \`dacp principals add\` and \`dacp keys init\` before a gate opens`);
    }
    const key = keys.find((k) => k.keyId === signature.keyId);
    if (!key) throw new Error(`the vote is signed with key ${signature.keyId}, which is not one of ${viaApi ? "the API server's" : `${principal}'s`} keys captured when the gate opened (${keys.map((k) => k.keyId).join(', ')})`);
    const differences = candidateDifferences(signature.candidate, candidateHashes(request.artifacts));
    if (differences.length) {
      throw new Error(`the vote is bound to other artifacts than the candidate of run ${request.runId} (${differences.join('; ')}); read \`dacp approval show ${request.runId}\` and vote again`);
    }
    const skew = Math.abs(Date.parse(signature.signedAt) - Date.now());
    if (!(skew <= MAX_SIGNING_SKEW_MS)) {
      throw new Error(`the vote was signed at ${signature.signedAt}, more than ${MAX_SIGNING_SKEW_MS / 60_000} minutes from the gate's clock (${new Date(Date.now()).toISOString()}); sign it again`);
    }
    const signed = signedDecision(vote, decision);
    if (!signed || !verifyStatement(signed.statement, signed.signature, signed.publicKey)) {
      throw new Error(`the signature on ${principal}'s vote does not verify with key ${key.keyId}: the vote was altered or signed with another key`);
    }
    return signed;
  };

  /**
   * The signed decision a vote carries, as the handler records it. It never throws: the validator
   * has verified the vote already, and a handler replays with every accepted vote, so a later
   * change to the rules must not make an accepted vote fail on replay.
   */
  const signedDecision = (vote: { principal: string; comment?: string; reason?: string; signature?: VoteSignature }, decision: 'approve' | 'reject'): SignedDecision | undefined => {
    if (!request.signing || !vote.signature) return undefined;
    const { signature: sig, ...unsigned } = vote.signature;
    const key = (request.signing.keys[unsigned.via === 'api' ? SERVER_SIGNER : vote.principal] ?? []).find((k) => k.keyId === unsigned.keyId);
    if (!key) return undefined;
    const statement = decisionStatement({ runId: request.runId, decision, principal: vote.principal, comment: vote.comment, reason: vote.reason, signature: unsigned });
    return { statement, signature: sig, publicKey: key.publicKey };
  };

  const count = (decision: Decision) => {
    decisions.push(decision);
    if (decision.decision === 'reject') rejection ??= decision;
  };

  const decide = async (decision: Decision): Promise<Decision> => {
    voted.add(decision.principal);
    countsOnAcceptance ??= patched(VOTES_COUNT_ON_ACCEPTANCE);
    if (!countsOnAcceptance) {
      // The first version, kept for gates whose first vote it handled: recorded, then counted.
      await recordDecision({ runId: request.runId, decision, request });
      count(decision);
      return decision;
    }
    // Counted before the first await: the next update's validator already sees this vote.
    count(decision);
    if (decided()) close(rejection ? `rejected by ${rejection.principal}` : `quorum of ${request.quorum} reached`);
    // An accepted vote is part of the outcome, so it is recorded even if the gate is cancelled meanwhile.
    await CancellationScope.nonCancellable(() => recordDecision({ runId: request.runId, decision, request }));
    return decision;
  };

  setHandler(
    approveUpdate,
    (input) => {
      const signature = signedDecision(input, 'approve');
      return decide({
        principal: input.principal,
        decision: 'approve',
        comment: input.comment,
        at: new Date().toISOString(),
        ...(signature ? { signature } : {}),
      });
    },
    {
      validator: (input) => {
        const parsed = DecisionInput.safeParse(input);
        if (!parsed.success) throw new Error(`approval is malformed: ${parsed.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ')}`);
        validateVoter(parsed.data.principal);
        checkSignature(parsed.data, 'approve');
      },
    },
  );

  setHandler(
    rejectUpdate,
    (input) => {
      const signature = signedDecision(input, 'reject');
      return decide({
        principal: input.principal,
        decision: 'reject',
        comment: input.reason + (input.comment ? ` — ${input.comment}` : ''),
        at: new Date().toISOString(),
        ...(signature ? { signature } : {}),
      });
    },
    {
      validator: (input) => {
        const parsed = RejectionInput.safeParse(input);
        if (!parsed.success) throw new Error(`rejection is malformed: ${parsed.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ')}`);
        validateVoter(parsed.data.principal);
        checkSignature(parsed.data, 'reject');
      },
    },
  );

  // A newer run of the same schedule reached its own gate: this request closes, naming it. Votes
  // already accepted still count; one that decided before the signal wins.
  let superseded: { by: string; reason: string } | undefined;
  setHandler(supersedeSignal, (input) => {
    if (!open || decided()) return;
    superseded = input;
    close(`superseded by run ${input.by}`);
  });

  setHandler(approvalRequestQuery, () => ({
    request,
    decisions,
    open,
    ...(superseded ? { supersededBy: superseded.by } : {}),
    ...(withReminders ? { notices, escalated, nextReminderAt: open && nextReminderAt !== null ? new Date(nextReminderAt).toISOString() : null } : {}),
  }));

  const openedAt = Date.now();
  const deadline = openedAt + request.timeoutMs;
  /** Approvers who may still vote and have not. */
  const pending = () => voters().filter((p) => !voted.has(p) && p !== request.initiator);
  const notify = async (kind: GateNotice['kind'], to: string[]) => {
    const at = new Date(Date.now()).toISOString();
    notices.push({ kind, at, to });
    // A notice that cannot be written (a long database outage) is in the query's list still; the gate goes on.
    await notifyApprovers({
      runId: request.runId,
      key: `${workflowInfo().workflowId}:notice:${notices.length}`,
      kind,
      to,
      at,
      deadline: new Date(deadline).toISOString(),
      approvals: approvals(),
      quorum: request.quorum,
    }).catch((err: unknown) => {
      if (isCancellation(err)) throw err;
    });
  };

  try {
    if (!withReminders) {
      await condition(() => decided() || superseded !== undefined, request.timeoutMs);
    } else {
      const everyMs = request.reminders?.everyMs;
      const escalateAt = request.reminders?.escalation ? openedAt + request.reminders.escalation.afterMs : null;
      await notify('requested', pending());
      nextReminderAt = everyMs ? openedAt + everyMs : null;
      for (;;) {
        const wakeAt = Math.min(deadline, nextReminderAt ?? Infinity, escalateAt !== null && !escalated ? escalateAt : Infinity);
        if (await condition(() => decided() || superseded !== undefined, Math.max(1, wakeAt - Date.now()))) break;
        const now = Date.now();
        if (now >= deadline) {
          // Auto-reject: closed first, so no vote counts after the deadline; the outcome below says it timed out.
          nextReminderAt = null;
          close(`timed out after ${Math.round(request.timeoutMs / 1000)}s`);
          await notify('timed_out', [...new Set([request.initiator, ...voters()])]);
          break;
        }
        if (escalateAt !== null && !escalated && now >= escalateAt) {
          escalated = true;
          await notify('escalated', pending());
        }
        if (everyMs && nextReminderAt !== null && now >= nextReminderAt) {
          await notify('reminder', pending());
          nextReminderAt = now + everyMs;
        }
      }
    }
  } catch (err) {
    if (!isCancellation(err)) throw err;
    close('the run was cancelled');
    // Votes accepted before the cancellation still land in the records before the gate ends.
    if (countsOnAcceptance) await CancellationScope.nonCancellable(() => condition(allHandlersFinished));
    throw err;
  }
  close(decided() ? 'decided' : `timed out after ${Math.round(request.timeoutMs / 1000)}s`);
  // Every accepted vote is in the outcome and recorded before the outcome is. (Gates of the first
  // version returned without waiting; their histories hold no such wait.)
  if (countsOnAcceptance !== false) await condition(allHandlersFinished);

  // From the votes, not from whether the timer fired: a vote accepted together with the timeout counts.
  let outcome: ApprovalOutcome;
  if (superseded && !decided()) {
    outcome = { outcome: 'superseded', reason: superseded.reason, decisions, supersededBy: superseded.by };
  } else if (rejection) {
    outcome = { outcome: 'rejected', reason: `rejected by ${rejection.principal}: ${rejection.comment ?? ''}`.trim(), decisions };
  } else if (approvals() >= request.quorum) {
    outcome = { outcome: 'approved', reason: `approved by ${decisions.map((d) => d.principal).join(', ')}`, decisions };
  } else {
    outcome = {
      outcome: 'rejected',
      reason: `approval timed out after ${Math.round(request.timeoutMs / 1000)}s with ${approvals()} of ${request.quorum} approvals`,
      decisions,
    };
  }
  await recordTransition({
    runId: request.runId,
    key: `${workflowInfo().workflowId}:outcome`,
    event: `approval_${outcome.outcome}`,
    stage: 'approval',
    actor: 'dacp',
    details: { reason: outcome.reason, approvals: approvals(), quorum: request.quorum, ...(outcome.supersededBy ? { supersededBy: outcome.supersededBy } : {}) },
  });
  return outcome;
}
