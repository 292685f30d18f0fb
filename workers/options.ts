import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { Worker, type NativeConnection, type WorkerOptions } from '@temporalio/worker';
import type { Pool } from 'pg';
import { createActivities } from '../activities';
import { openArtifactStore, S3ArtifactStore } from '../activities/objectStore';
import { detectGpus, planSlots, SlotPool, type Slot } from './gpuSlots';
import { workerDataConverter } from './codec';

export const TASK_QUEUES = { control: 'dacp-control', gpu: 'dacp-gpu' } as const;
export type QueueName = keyof typeof TASK_QUEUES;

/** The workflow code: the bundle prebuilt by `npm run build` when present, else bundled from source at start. */
export function workflowSource(): Pick<WorkerOptions, 'workflowBundle' | 'workflowsPath'> {
  const prebuilt = path.resolve(__dirname, '..', 'workflow-bundle.js');
  if (__dirname.includes(`${path.sep}dist${path.sep}`) && existsSync(prebuilt)) return { workflowBundle: { codePath: prebuilt } };
  return { workflowsPath: require.resolve('../workflows') };
}

export interface WorkerDeps {
  connection: NativeConnection;
  namespace: string;
  pool: Pool;
  artifactsDir: string;
  client: Client;
  tfBackend?: string;
  /** Tests pass a bundle built once per file. */
  workflowBundle?: WorkerOptions['workflowBundle'];
  /** The gpu queue's training slots; planned from the host's GPUs (and DACP_GPU_SLOTS) when absent. */
  slots?: Slot[];
}

/**
 * `control` runs the workflows and the light activities; `gpu` runs training with one activity slot
 * per accelerator and a long shutdown grace time, so a stopping worker can checkpoint first.
 */
export async function createWorker(queue: QueueName, deps: WorkerDeps): Promise<Worker> {
  let worker: Worker | undefined;
  const slots = queue === 'gpu' ? (deps.slots ?? planSlots(detectGpus(), process.env.DACP_GPU_SLOTS)) : [];
  const store = openArtifactStore(deps.artifactsDir);
  if (store instanceof S3ArtifactStore) {
    // Multipart uploads left by a worker that died mid-upload (never visible as objects) are
    // aborted once they are a day old (DACP_S3_UPLOAD_MAX_AGE_HOURS); in the background, and an
    // unreachable store is not a reason to refuse to start.
    const hours = Number(process.env.DACP_S3_UPLOAD_MAX_AGE_HOURS ?? 24);
    void store.sweepUploads((Number.isFinite(hours) ? hours : 24) * 3_600_000).catch(() => undefined);
  }
  const activities = createActivities({
    ...(queue === 'gpu' ? { slots: new SlotPool(slots) } : {}),
    pool: deps.pool,
    store,
    client: deps.client,
    tfBackend: deps.tfBackend,
    workerStopping: () => worker !== undefined && worker.getState() !== 'RUNNING',
  });
  // With payload keys, everything sent to Temporal is sealed; workflow failures too, so the
  // workflows are bundled at start with the encoding failure converter instead of the prebuilt bundle.
  const dataConverter = workerDataConverter();
  const common = { connection: deps.connection, namespace: deps.namespace, taskQueue: TASK_QUEUES[queue], activities, ...(dataConverter ? { dataConverter } : {}) };
  if (queue === 'control') {
    worker = await Worker.create({
      ...common,
      ...(deps.workflowBundle && !dataConverter ? { workflowBundle: deps.workflowBundle } : dataConverter ? { workflowsPath: require.resolve('../workflows') } : workflowSource()),
      maxConcurrentActivityTaskExecutions: 4,
      shutdownGraceTime: '10s',
    });
    return worker;
  }
  worker = await Worker.create({
    ...common,
    // One training per slot: per GPU found, one without GPUs, or DACP_GPU_SLOTS.
    maxConcurrentActivityTaskExecutions: slots.length,
    // Training notices the shutdown at its next step and checkpoints; the grace time covers a slow step.
    shutdownGraceTime: '60s',
    // Live progress travels in heartbeat details (never in history); send them every few seconds
    // rather than the SDK's default of up to 80 % of the heartbeat timeout.
    maxHeartbeatThrottleInterval: '3s',
  });
  return worker;
}
