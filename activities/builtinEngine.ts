import { initBackend } from '../ml/backend';
import type { BatchSource } from '../ml/mixing';
import { runTraining, Trainer } from '../ml/train';
import type { ArtifactRef } from '../schemas/pipeline';
import type { ActivityDeps } from './context';
import type { TrainingSession } from './trainingSession';

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
  const trainer = resume ? Trainer.fromCheckpoint(await deps.store.get(resume)) : await o.start();
  try {
    const batches = await o.batches(trainer);
    session.heartbeat(trainer.step);
    await session.signal(trainer.step, true);
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
      });
      if (outcome.stoppedEarly) throw session.stopError(trainer.step);
    }
    const model = await deps.store.put('models', trainer.exportModel(o.modelMeta), 'safetensors');
    return { model, finalStep: trainer.step, finalLoss: session.lastLoss ?? trainer.lastLoss ?? Number.NaN, backend: backend.name };
  } finally {
    trainer.dispose();
  }
}
