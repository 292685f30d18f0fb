import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';

/** An activity attempt the server considers running, and on which worker. */
export interface StartedActivity {
  activityId: string;
  type: string;
  attempt: number;
  workerIdentity: string;
}

export async function startedActivities(client: Client, workflowId: string): Promise<StartedActivity[]> {
  const { raw } = await client.workflow.getHandle(workflowId).describe();
  return (raw.pendingActivities ?? [])
    .filter((p) => p.state === temporal.api.enums.v1.PendingActivityState.PENDING_ACTIVITY_STATE_STARTED)
    .map((p) => ({
      activityId: p.activityId ?? '',
      type: p.activityType?.name ?? '?',
      attempt: p.attempt ?? 1,
      workerIdentity: p.lastWorkerIdentity ?? '',
    }));
}

/** The SDK's default worker identity is `<pid>@<host>`. */
export const ranOnProcess = (a: StartedActivity, pid: number): boolean => a.workerIdentity.startsWith(`${pid}@`);

/** Seconds of the heartbeat timeout the workflow scheduled this activity with (0: none). */
export async function heartbeatTimeoutOf(client: Client, workflowId: string, activityId: string): Promise<number> {
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  let timeout = 0;
  for (const event of history.events ?? []) {
    const scheduled = event.activityTaskScheduledEventAttributes;
    if (scheduled?.activityId === activityId) timeout = Number(scheduled.heartbeatTimeout?.seconds ?? 0);
  }
  return timeout;
}

/**
 * An attempt whose worker was SIGKILLed stays "started" on the server until a timeout fires: the
 * heartbeat timeout if the workflow set one, else the start-to-close timeout (15 minutes for the
 * control activities). Without a heartbeat timeout this fails the dead attempt by id, as an operator
 * would (`temporal activity fail`); the activity's retry policy then schedules the next attempt.
 * Returns what released it.
 */
export async function releaseDeadAttempt(
  client: Client,
  workflowId: string,
  attempt: StartedActivity,
): Promise<'heartbeat timeout' | 'failed by id'> {
  if ((await heartbeatTimeoutOf(client, workflowId, attempt.activityId)) > 0) return 'heartbeat timeout';
  await client.activity.fail(
    { workflowId, activityId: attempt.activityId },
    new Error(`the worker ${attempt.workerIdentity} running this attempt was SIGKILLed`),
  );
  return 'failed by id';
}
