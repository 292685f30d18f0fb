import { ApplicationFailure } from '@temporalio/common';
import { initBackend } from '../ml/backend';
import type { BatchSource } from '../ml/mixing';
import { runTraining, Trainer, TrainingDivergedError } from '../ml/train';
import type { ArtifactRef } from '../schemas/pipeline';
import type { TrainingStage } from './checkpoints';
import type { ActivityDeps } from './context';
import type { TrainingSession } from './trainingSession';

/** Where each stage's training settings live in a run spec, for messages that say what to change. */
const SPEC_SECTION: Record<TrainingStage, string> = { bootstrap: 'baseModel.bootstrap', dacp: 'dacp', instruct: 'instruct' };

/**
 * A diverged training as the failure the run ends with: not retryable (a retry of a deterministic
 * run diverges at the same step), typed `TrainingDiverged`, naming the stage, the step and the fix.
 */
export function divergedFailure(
  job: { stage: TrainingStage; round: number },
  d: { step: number; loss: number | null; message: string },
): ApplicationFailure {
  return ApplicationFailure.create({
    type: 'TrainingDiverged',
    nonRetryable: true,
    message: `${job.stage} ${d.message}; the settings are in the spec's "${SPEC_SECTION[job.stage]}" section`,
    details: [{ stage: job.stage, round: job.round, step: d.step, loss: d.loss === null ? null : String(d.loss) }],
  });
}

export interface EngineOutcome {
  model: ArtifactRef;
  finalStep: number;
  finalLoss: number;
  backend: string;
}

/** The built-in TensorFlow.js engine: resume from the checkpoint or start fresh, train, export. */
export async function trainBuiltin(
  deps: ActivityDeps,
  session: TrainingSession,
  o: {
    checkpointEvery: number;
    start: () => Promise<Trainer>;
    batches: (trainer: Trainer) => Promise<BatchSource>;
    modelMeta: Record<string, string>;
  },
): Promise<EngineOutcome> {
  const backend = await initBackend(deps.tfBackend);
  const resume = await session.begin(backend.name);
  const trainer = resume ? Trainer.fromCheckpointTensors(await deps.store.getSafetensors(resume)) : await o.start();
  try {
    const batches = await o.batches(trainer);
    session.heartbeat(trainer.step);
    if (trainer.step < session.job.totalSteps) {
      const outcome = await runTraining({
        trainer,
        batches,
        checkpointEvery: o.checkpointEvery,
        onStep: ({ step, loss, lr }) => session.progress(step, loss, { lr }),
        onCheckpoint: async ({ step, loss, checkpoint }) => {
          await session.checkpointSaved(step, loss, checkpoint, 'safetensors');
        },
        shouldStop: () => session.stopRequested(),
      }).catch((err: unknown) => {
        if (err instanceof TrainingDivergedError) throw divergedFailure(session.job, { step: err.step, loss: err.loss, message: err.message });
        throw err;
      });
      if (outcome.stoppedEarly) throw session.stopError(trainer.step);
    }
    const exported = trainer.exportModelTensors(o.modelMeta);
    const model = await deps.store.putSafetensors('models', exported.tensors, exported.metadata);
    return { model, finalStep: trainer.step, finalLoss: session.lastLoss ?? trainer.lastLoss ?? Number.NaN, backend: backend.name };
  } finally {
    trainer.dispose();
  }
}
