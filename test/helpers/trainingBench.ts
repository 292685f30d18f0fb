import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Info } from '@temporalio/activity';
import { MockActivityEnvironment } from '@temporalio/testing';
import { DefaultLogger } from '@temporalio/worker';
import { ArtifactStore } from '../../activities/artifacts';
import type { ActivityDeps } from '../../activities/context';
import { writeDataset, type DatasetDoc } from '../../activities/datasets';
import { trainingActivities } from '../../activities/training';
import { migrate } from '../../db/migrate';
import { insertRun } from '../../db/records';
import { initBackend } from '../../ml/backend';
import { GPT } from '../../ml/model';
import { serializeModel } from '../../ml/modelFile';
import type { Tokenizer } from '../../ml/tokenizer';
import type { ArtifactRef, DatasetRef, DatasetRole } from '../../schemas/pipeline';
import { parseRunSpec, type RunSpec, type RunSpecInput } from '../../schemas/runSpec';
import { createTestDatabase, type TestDatabase } from './db';
import { tinySpec } from './fixtures';

/**
 * The training activities as a worker runs them, without a Temporal server: a real Postgres
 * database, a real artifact store, and MockActivityEnvironment for the activity context (attempt,
 * heartbeat details in; heartbeats out, with the time each was sent).
 */
export interface TrainingBench {
  db: TestDatabase;
  store: ArtifactStore;
  deps: ActivityDeps;
  activities: ReturnType<typeof trainingActivities>;
  /** A fresh run row (the session records its attempts against it). */
  newRun(prefix: string): Promise<string>;
  dataset(role: DatasetRole, texts: string[]): Promise<DatasetRef>;
  pairs(pairs: { prompt: string; response: string }[]): Promise<DatasetRef>;
  /** A freshly initialised base model in the dacp model format, stored as an artifact. */
  baseModel(tokenizer: Tokenizer, shape?: { contextLength: number; dModel: number; nLayers: number; nHeads: number }): Promise<ArtifactRef>;
  spec(over?: Partial<RunSpecInput>): RunSpec;
  /** Run `fn` as one activity attempt; resolves with its outcome (never rejects) and the heartbeats it sent. */
  attempt<T>(fn: () => Promise<T>, info?: Partial<Info>): Promise<Attempt<T>>;
  stop(): Promise<void>;
}

export interface Attempt<T> {
  result?: T;
  error?: unknown;
  heartbeats: { at: number; details: unknown }[];
  startedAt: number;
}

/** Activity logs are noise here; failures reach the test as values. */
const quietLogger = new DefaultLogger('ERROR');

export async function startTrainingBench(): Promise<TrainingBench> {
  await initBackend('wasm');
  const db = await createTestDatabase();
  await migrate(db.pool);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dacp-training-'));
  const store = new ArtifactStore(path.join(dir, 'artifacts'));
  const deps: ActivityDeps = { pool: db.pool, store, tfBackend: 'wasm', logsDir: path.join(dir, 'logs') };
  let runs = 0;
  return {
    db,
    store,
    deps,
    activities: trainingActivities(deps),
    newRun: async (prefix) => {
      const runId = `${prefix}-${++runs}`;
      await insertRun(db.pool, { runId, workflowId: runId, spec: {}, specSha256: 'test', initiator: 'engineer' });
      return runId;
    },
    dataset: (role, texts) => writeDataset(store, role, 'train', texts.map((text): DatasetDoc => ({ text }))),
    pairs: (pairs) => writeDataset(store, 'instruct', 'train', pairs),
    baseModel: async (tokenizer, shape = { contextLength: 32, dModel: 32, nLayers: 1, nHeads: 2 }) => {
      const model = GPT.create({ vocabSize: tokenizer.vocabSize, ...shape }, 7);
      try {
        return await store.put('models', serializeModel(model, tokenizer), 'safetensors');
      } finally {
        model.dispose();
      }
    },
    spec: (over = {}) => parseRunSpec(tinySpec(over)),
    attempt: async <T>(fn: () => Promise<T>, info: Partial<Info> = {}) => {
      const env = new MockActivityEnvironment({ attempt: 1, ...info }, { logger: quietLogger });
      const heartbeats: { at: number; details: unknown }[] = [];
      env.on('heartbeat', (details: unknown) => heartbeats.push({ at: Date.now(), details }));
      const startedAt = Date.now();
      try {
        return { result: await env.run<[], T, () => Promise<T>>(fn), heartbeats, startedAt };
      } catch (error) {
        return { error, heartbeats, startedAt };
      }
    },
    stop: async () => {
      await db.drop();
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}
