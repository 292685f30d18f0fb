import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type {
  ApprovalRequest,
  Decision,
  DecisionInput,
  RejectionInput,
  RunStatus,
  TrainingProgress,
} from '../schemas/pipeline';

/** The run's live status: `dacp run status` prints exactly this. */
export const statusQuery = defineQuery<RunStatus>('status');

/** Sent by training activities as they step, checkpoint and resume. */
export const trainingProgressSignal = defineSignal<[TrainingProgress]>('trainingProgress');

/** Approval gate messages (on the `<runId>-approval` child workflow). */
export const approveUpdate = defineUpdate<Decision, [DecisionInput]>('approve');
export const rejectUpdate = defineUpdate<Decision, [RejectionInput]>('reject');
export const approvalRequestQuery = defineQuery<{ request: ApprovalRequest; decisions: Decision[]; open: boolean }>(
  'approvalRequest',
);

export function approvalWorkflowId(runId: string): string {
  return `${runId}-approval`;
}
