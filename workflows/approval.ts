import { condition, proxyActivities, setHandler, workflowInfo } from '@temporalio/workflow';
import type { DacpActivities } from '../activities';
import { DecisionInput, RejectionInput } from '../schemas/pipeline';
import type { ApprovalOutcome, ApprovalRequest, Decision } from '../schemas/pipeline';
import { approvalRequestQuery, approveUpdate, rejectUpdate } from './messages';

const { recordDecision, recordTransition } = proxyActivities<DacpActivities>({
  taskQueue: 'dacp-control',
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s' },
});

/**
 * The human gate. Runs as a child of the pipeline (`<runId>-approval`) so that approvers address it
 * directly. Rules, enforced by the update validators before anything reaches history:
 * the principal must be one of the run's approvers, must not be the run's initiator, votes only while
 * the gate is open, and votes once. `quorum` approvals approve; any rejection rejects; the timeout rejects.
 */
export async function approvalGate(request: ApprovalRequest): Promise<ApprovalOutcome> {
  const decisions: Decision[] = [];
  // Marked synchronously when a vote is accepted, so a second vote racing the first is refused.
  const voted = new Set<string>();
  let open = true;
  let rejection: Decision | undefined;

  const approvals = () => decisions.filter((d) => d.decision === 'approve').length;

  const validateVoter = (principal: string) => {
    if (!open) throw new Error(`run ${request.runId} is not awaiting approval any more`);
    if (principal === request.initiator) {
      throw new Error(`${principal} started run ${request.runId} and cannot approve or reject it (separation of duties)`);
    }
    if (!request.approvers.includes(principal)) {
      throw new Error(`${principal} is not an approver of run ${request.runId}; approvers: ${request.approvers.join(', ')}`);
    }
    if (voted.has(principal)) {
      throw new Error(`${principal} has already decided on run ${request.runId}; each approver votes once`);
    }
  };

  const decide = async (decision: Decision): Promise<Decision> => {
    voted.add(decision.principal);
    // Recorded in the database before the vote counts, so the audit trail never misses a counted vote.
    await recordDecision({ runId: request.runId, decision, request });
    decisions.push(decision);
    if (decision.decision === 'reject') rejection = decision;
    return decision;
  };

  setHandler(
    approveUpdate,
    (input) =>
      decide({
        principal: input.principal,
        decision: 'approve',
        comment: input.comment,
        at: new Date().toISOString(),
      }),
    {
      validator: (input) => {
        const parsed = DecisionInput.safeParse(input);
        if (!parsed.success) throw new Error(`approval is malformed: ${parsed.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ')}`);
        validateVoter(parsed.data.principal);
      },
    },
  );

  setHandler(
    rejectUpdate,
    (input) =>
      decide({
        principal: input.principal,
        decision: 'reject',
        comment: input.reason + (input.comment ? ` — ${input.comment}` : ''),
        at: new Date().toISOString(),
      }),
    {
      validator: (input) => {
        const parsed = RejectionInput.safeParse(input);
        if (!parsed.success) throw new Error(`rejection is malformed: ${parsed.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ')}`);
        validateVoter(parsed.data.principal);
      },
    },
  );

  setHandler(approvalRequestQuery, () => ({ request, decisions, open }));

  const decided = await condition(() => rejection !== undefined || approvals() >= request.quorum, request.timeoutMs);
  open = false;

  let outcome: ApprovalOutcome;
  if (!decided) {
    outcome = {
      outcome: 'rejected',
      reason: `approval timed out after ${Math.round(request.timeoutMs / 1000)}s with ${approvals()} of ${request.quorum} approvals`,
      decisions,
    };
  } else if (rejection) {
    outcome = { outcome: 'rejected', reason: `rejected by ${rejection.principal}: ${rejection.comment ?? ''}`.trim(), decisions };
  } else {
    outcome = { outcome: 'approved', reason: `approved by ${decisions.map((d) => d.principal).join(', ')}`, decisions };
  }
  await recordTransition({
    runId: request.runId,
    key: `${workflowInfo().workflowId}:outcome`,
    event: `approval_${outcome.outcome}`,
    stage: 'approval',
    actor: 'dacp',
    details: { reason: outcome.reason, approvals: approvals(), quorum: request.quorum },
  });
  return outcome;
}
