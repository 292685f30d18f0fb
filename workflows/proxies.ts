import { ActivityCancellationType, proxyActivities } from '@temporalio/workflow';
import type { DacpActivities } from '../activities';

/**
 * The activity options of a run: light activities and evaluations on `dacp-control`, training on
 * `dacp-gpu`. Shared by the pipeline and its candidate children, so a candidate trains
 * exactly as the pipeline's own dacp stage does.
 */
export function stageActivities(
  timeouts: { heartbeatTimeout: number; controlHeartbeatTimeout?: number },
  o: { waitForTrainingCancellation: boolean },
) {
  const control = proxyActivities<DacpActivities>({
    taskQueue: 'dacp-control',
    startToCloseTimeout: '15 minutes',
    // A killed control worker is noticed within this, not after the 15 minutes (specs recorded
    // before the field existed have none, and replay as they ran).
    heartbeatTimeout: timeouts.controlHeartbeatTimeout,
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s', maximumAttempts: 30 },
  });
  const gpu = proxyActivities<DacpActivities>({
    taskQueue: 'dacp-gpu',
    // A training attempt may run for days; a dead one is noticed by its heartbeat timeout instead.
    startToCloseTimeout: '30 days',
    heartbeatTimeout: timeouts.heartbeatTimeout,
    // A cancelled run ends only after training has written its last checkpoint, so nothing is
    // written for the run after its terminal state.
    cancellationType: o.waitForTrainingCancellation ? ActivityCancellationType.WAIT_CANCELLATION_COMPLETED : ActivityCancellationType.TRY_CANCEL,
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '15s', maximumAttempts: 20 },
  });
  return { control, gpu };
}
