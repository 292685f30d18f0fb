import { ActivityCancellationType, proxyActivities } from '@temporalio/workflow';
import type { DacpActivities } from '../activities';

/**
 * The activity options of a run: light activities on `dacp-control`; training, and the evaluations
 * of runs started since they moved there, on `dacp-gpu` (`evaluation`: in the engine that trains the
 * model, on the gpu worker's slot). Shared by the pipeline and its candidate children, so a
 * candidate trains and is judged exactly as the pipeline's own dacp stage is.
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
  const evaluation = proxyActivities<DacpActivities>({
    taskQueue: 'dacp-gpu',
    // Scoring a 1 B model on a GPU takes minutes; a dead evaluation is noticed by its heartbeat.
    startToCloseTimeout: '2 days',
    heartbeatTimeout: timeouts.heartbeatTimeout,
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s', maximumAttempts: 30 },
  });
  return { control, gpu, evaluation };
}

/** Patch id: evaluations run on `dacp-gpu`, in the engine that trains; runs from before evaluate on `dacp-control`. */
export const EVALUATION_IN_ENGINE = 'evaluation-in-engine';
