import { Context } from '@temporalio/activity';
import { createHash } from 'node:crypto';
import { ApplicationFailure } from '@temporalio/common';
import type { Pool } from 'pg';
import { loadRunSpecBody } from '../db/records';
import type { ArtifactRef, SpecSource } from '../schemas/pipeline';
import type { RunSpec } from '../schemas/runSpec';
import { collectActivities } from './collect';
import type { ActivityDeps } from './context';
import { evaluationActivities } from './evaluation';
import { qualityActivities } from './quality';
import { recordActivities } from './records';
import { earlierUpdatesActivities, registryActivities } from './registry';
import { smokeActivities } from './smoke';
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

/** An activity that takes the run's spec takes, from the workflow, where to find it instead. */
type SpecFromStore<F> = F extends (input: infer I) => Promise<infer R>
  ? I extends { spec: RunSpec }
    ? (input: Omit<I, 'spec'> & SpecSource) => Promise<R>
    : F
  : F;
type SpecsFromStore<T> = { [K in keyof T]: SpecFromStore<T[K]> };

/**
 * A spec carried inline by a run from before `specRef`, brought up to today's fields: `engine.env`
 * was a map of values (now only names are passed on; the values stay with the old spec), and
 * near-duplicate removal did not run (it stays off for such runs).
 */
function upgradeInlineSpec(spec: RunSpec): RunSpec {
  const legacy = spec as unknown as { engine: { env?: unknown }; quality: { nearDuplicateThreshold?: number | null } };
  const engine = spec.engine.kind === 'command' && legacy.engine.env && !Array.isArray(legacy.engine.env)
    ? { ...spec.engine, env: Object.keys(legacy.engine.env as Record<string, string>) }
    : spec.engine;
  const quality = legacy.quality.nearDuplicateThreshold === undefined ? { ...spec.quality, nearDuplicateThreshold: null } : spec.quality;
  // No task sets, and no replay in instruction tuning, for runs that had neither.
  const evaluation = spec.evaluation ?? { choices: {}, maxChoiceItems: 200 };
  const instruct = spec.instruct.replayRatio === undefined ? { ...spec.instruct, replayRatio: 0 } : spec.instruct;
  return { ...spec, engine, quality, evaluation, instruct } as RunSpec;
}

/**
 * The workflow passes the spec by reference (`postgres:run_specs/<sha256>`): history stays small
 * and holds none of the spec's paths, queries or settings beyond what the workflow reads.
 * Activities load it here, verify its sha256, and keep it once per worker per spec.
 */
function loadingSpecs<T extends Record<string, (...args: never[]) => Promise<unknown>>>(pool: Pool, activities: T): SpecsFromStore<T> {
  const cache = new Map<string, Promise<RunSpec>>();
  const fetch = async (ref: ArtifactRef): Promise<RunSpec> => {
    const body = await loadRunSpecBody(pool, ref.sha256);
    if (body === null || createHash('sha256').update(body).digest('hex') !== ref.sha256) {
      throw ApplicationFailure.nonRetryable(`run spec ${ref.uri} is missing or does not match its sha256`, 'SpecMissing');
    }
    return JSON.parse(body) as RunSpec;
  };
  const load = (source: SpecSource): Promise<RunSpec> => {
    if (!source.specRef) return Promise.resolve(upgradeInlineSpec(source.spec));
    const { sha256 } = source.specRef;
    let spec = cache.get(sha256);
    if (!spec) {
      spec = fetch(source.specRef);
      spec.catch(() => cache.delete(sha256));
      cache.set(sha256, spec);
    }
    return spec;
  };
  return Object.fromEntries(
    Object.entries(activities).map(([name, fn]) => [
      name,
      async (input: unknown, ...rest: unknown[]) => {
        const call = fn as (...args: unknown[]) => Promise<unknown>;
        if (!input || typeof input !== 'object' || !('specRef' in input || 'spec' in input)) return call(input, ...rest);
        const { specRef, ...others } = input as Partial<SpecSource> & Record<string, unknown>;
        const spec = await load(specRef ? { specRef } : { spec: (input as { spec: RunSpec }).spec });
        return call({ ...others, spec }, ...rest);
      },
    ]),
  ) as unknown as SpecsFromStore<T>;
}

/** Every activity, bound to the worker's database pool, artifact store and client. */
export function createActivities(deps: ActivityDeps) {
  return loadingSpecs(deps.pool, {
    ...heartbeating(recordActivities(deps)),
    ...heartbeating(collectActivities(deps)),
    ...heartbeating(qualityActivities(deps)),
    ...heartbeating(registryActivities(deps)),
    ...heartbeating(earlierUpdatesActivities(deps)),
    ...heartbeating(evaluationActivities(deps)),
    ...heartbeating(smokeActivities(deps)),
    // Training heartbeats every step with its checkpoint: it needs no timer.
    ...trainingActivities(deps),
  });
}

export type DacpActivities = ReturnType<typeof createActivities>;
