import { Context } from '@temporalio/activity';
import { collectActivities } from './collect';
import type { ActivityDeps } from './context';
import { evaluationActivities } from './evaluation';
import { qualityActivities } from './quality';
import { recordActivities } from './records';
import { registryActivities } from './registry';
import { trainingActivities } from './training';

export type { ActivityDeps } from './context';

/**
 * Heartbeat on a timer while a light activity runs, so that a killed control worker is noticed
 * within the heartbeat timeout. CPU-bound stretches block the timer; those activities also beat
 * between their chunks. Outside an activity (a direct call) this is a plain call.
 */
function withHeartbeats<A extends unknown[], R>(fn: (...args: A) => Promise<R>): (...args: A) => Promise<R> {
  return async (...args: A) => {
    let ctx: Context;
    try {
      ctx = Context.current();
    } catch {
      return fn(...args);
    }
    const every = Math.max(200, Math.min(5_000, (ctx.info.heartbeatTimeoutMs ?? 15_000) / 4));
    const timer = setInterval(() => ctx.heartbeat(), every);
    try {
      return await fn(...args);
    } finally {
      clearInterval(timer);
    }
  };
}

function heartbeating<T extends Record<string, (...args: never[]) => Promise<unknown>>>(activities: T): T {
  return Object.fromEntries(
    Object.entries(activities).map(([name, fn]) => [name, withHeartbeats(fn as (...args: unknown[]) => Promise<unknown>)]),
  ) as unknown as T;
}

/** Every activity, bound to the worker's database pool, artifact store and client. */
export function createActivities(deps: ActivityDeps) {
  return {
    ...heartbeating(recordActivities(deps)),
    ...heartbeating(collectActivities(deps)),
    ...heartbeating(qualityActivities(deps)),
    ...heartbeating(registryActivities(deps)),
    ...heartbeating(evaluationActivities(deps)),
    // Training heartbeats every step with its checkpoint: it needs no timer.
    ...trainingActivities(deps),
  };
}

export type DacpActivities = ReturnType<typeof createActivities>;
