import { collectActivities } from './collect';
import type { ActivityDeps } from './context';
import { evaluationActivities } from './evaluation';
import { qualityActivities } from './quality';
import { recordActivities } from './records';
import { registryActivities } from './registry';
import { trainingActivities } from './training';

export type { ActivityDeps } from './context';

/** Every activity, bound to the worker's database pool, artifact store and client. */
export function createActivities(deps: ActivityDeps) {
  return {
    ...recordActivities(deps),
    ...collectActivities(deps),
    ...qualityActivities(deps),
    ...registryActivities(deps),
    ...evaluationActivities(deps),
    ...trainingActivities(deps),
  };
}

export type DacpActivities = ReturnType<typeof createActivities>;
