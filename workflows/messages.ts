import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type {
  ApprovalRequest,
  Decision,
  DecisionInput,
  GateNotice,
  RejectionInput,
  RunStatus,
} from '../schemas/pipeline';

/**
 * The run's stage, state and stage figures as the workflow holds them. `dacp run status` does not
 * need it (it reads Postgres and the pending activity, and answers with no worker running); it stays
 * for tools that ask a running workflow directly. Training progress is not in it: progress never
 * passes through history.
 */
export const statusQuery = defineQuery<RunStatus>('status');

/** Approval gate messages (on the `<runId>-approval` child workflow). */
export const approveUpdate = defineUpdate<Decision, [DecisionInput]>('approve');
export const rejectUpdate = defineUpdate<Decision, [RejectionInput]>('reject');
export const approvalRequestQuery = defineQuery<{
  request: ApprovalRequest;
  decisions: Decision[];
  open: boolean;
  supersededBy?: string;
  /** Gates since reminders: the notices sent, whether it escalated, and when it next reminds. */
  notices?: GateNotice[];
  escalated?: boolean;
  nextReminderAt?: string | null;
}>(
  'approvalRequest',
);
/** A newer run of the same schedule reached its gate: this request closes, naming it. */
export const supersedeSignal = defineSignal<[{ by: string; reason: string }]>('supersede');

export function approvalWorkflowId(runId: string): string {
  return `${runId}-approval`;
}
