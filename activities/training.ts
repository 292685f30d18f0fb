import { Context, log } from '@temporalio/activity';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { insertCheckpoint, insertMetrics, listCheckpoints, recordTransition } from '../db/records';
import { initBackend } from '../ml/backend';
import { formatInstructionPrompt, mixedLmBatches, sftBatches, type BatchSource } from '../ml/mixing';
import { GPT } from '../ml/model';
import { deserializeModel } from '../ml/modelFile';
import { ByteTokenizer } from '../ml/tokenizer';
import { runTraining, Trainer, type TrainSettings } from '../ml/train';
import type { ArtifactRef, DatasetRef, TrainingProgress, TrainingResult } from '../schemas/pipeline';
import type { RunSpec, TrainingSettings } from '../schemas/runSpec';
import { trainingProgressSignal } from '../workflows/messages';
import type { ActivityDeps } from './context';
import { readDataset, type PairDoc, type TextDoc } from './datasets';

type TrainingStage = 'dacp' | 'instruct' | 'bootstrap';

/** What a training attempt heartbeats: enough for the next attempt to find where to resume. */
export interface TrainingHeartbeat {
  stage: TrainingStage;
  round: number;
  step: number;
  checkpointUri: string | null;
  sha256: string | null;
}

const SIGNAL_INTERVAL_MS = 2_000;

function trainSettings(s: TrainingSettings, seedOffset = 0): TrainSettings {
  return {
    totalSteps: s.steps,
    batchSize: s.batchSize,
    learningRate: s.learningRate,
    warmupSteps: Math.max(1, Math.round(s.steps * s.warmupFraction)),
    minLrRatio: s.minLrRatio,
    weightDecay: s.weightDecay,
    gradClip: s.gradClip,
    seed: s.seed + seedOffset,
  };
}

/** Documents → one token stream, each document closed by the end-of-text token. */
function tokenStream(tokenizer: ByteTokenizer, docs: TextDoc[]): number[] {
  const out: number[] = [];
  for (const doc of docs) {
    for (const id of tokenizer.encode(doc.text)) out.push(id);
    out.push(tokenizer.eosId);
  }
  return out;
}

interface TrainingJob {
  runId: string;
  stage: TrainingStage;
  round: number;
  settings: TrainSettings;
  checkpointEvery: number;
  /** A fresh trainer for an attempt that has no checkpoint to resume from. */
  start: () => Promise<Trainer>;
  batches: (trainer: Trainer) => Promise<BatchSource>;
}

/**
 * The part every training activity shares: pick the newest valid checkpoint (from the last
 * heartbeat or the database), train with periodic atomic checkpoints and heartbeats, report live
 * progress to the workflow, stop promptly on cancellation, and store the final model.
 */
async function trainDurably(deps: ActivityDeps, job: TrainingJob): Promise<TrainingResult> {
  const ctx = Context.current();
  const { info } = ctx;
  const started = Date.now();
  const backend = await initBackend(deps.tfBackend);

  // Resume candidates, newest first: the last heartbeat (it may be ahead of a lagging DB write) and the DB rows.
  const candidates: { step: number; uri: string; sha256: string }[] = [];
  const beat = info.heartbeatDetails as TrainingHeartbeat | undefined;
  if (beat && beat.stage === job.stage && beat.round === job.round && beat.checkpointUri && beat.sha256) {
    candidates.push({ step: beat.step, uri: beat.checkpointUri, sha256: beat.sha256 });
  }
  for (const row of await listCheckpoints(deps.pool, job.runId, job.stage, job.round)) candidates.push(row);
  candidates.sort((a, b) => b.step - a.step);

  let trainer: Trainer | undefined;
  let resumedFromStep: number | null = null;
  for (const candidate of candidates) {
    if (!(await deps.store.verify(candidate))) {
      log.warn('checkpoint failed verification; trying an older one', { step: candidate.step, uri: candidate.uri });
      await recordTransition(deps.pool, {
        runId: job.runId,
        key: `${job.runId}:${job.stage}:${job.round}:invalid-checkpoint:${candidate.sha256}`,
        event: 'checkpoint_invalid',
        stage: job.stage === 'instruct' ? 'instruct' : 'dacp',
        actor: 'dacp',
        details: { step: candidate.step, uri: candidate.uri },
      });
      continue;
    }
    trainer = Trainer.fromCheckpoint(await deps.store.get(candidate));
    resumedFromStep = trainer.step;
    break;
  }
  trainer ??= await job.start();
  const batches = await job.batches(trainer);

  let lastCheckpoint: ArtifactRef | null = null;
  let lastLoss: number | null = null;
  let lastSignalAt = 0;
  const pendingMetrics: { step: number; name: string; value: number }[] = [];

  const heartbeat = (step: number) =>
    ctx.heartbeat({
      stage: job.stage,
      round: job.round,
      step,
      checkpointUri: lastCheckpoint?.uri ?? null,
      sha256: lastCheckpoint?.sha256 ?? null,
    } satisfies TrainingHeartbeat);

  const signalProgress = async (step: number, force = false) => {
    const workflowId = info.workflowExecution?.workflowId;
    if (!deps.client || !workflowId || (!force && Date.now() - lastSignalAt < SIGNAL_INTERVAL_MS)) return;
    lastSignalAt = Date.now();
    const progress: TrainingProgress = {
      stage: job.stage,
      step,
      totalSteps: job.settings.totalSteps,
      loss: lastLoss,
      attempt: info.attempt,
      resumedFromStep,
    };
    try {
      await deps.client.workflow.getHandle(workflowId).signal(trainingProgressSignal, progress);
    } catch (err) {
      // Progress is informative only; training must not fail because a signal could not be sent.
      log.warn('could not signal training progress', { error: String(err) });
    }
  };

  if (resumedFromStep !== null) {
    log.info('resuming training from checkpoint', { stage: job.stage, step: resumedFromStep, attempt: info.attempt });
  }
  heartbeat(trainer.step);
  await signalProgress(trainer.step, true);

  let stoppedEarly = false;
  if (trainer.step < job.settings.totalSteps) {
    const outcome = await runTraining({
      trainer,
      batches,
      checkpointEvery: job.checkpointEvery,
      onStep: async ({ step, loss, lr }) => {
        lastLoss = loss;
        pendingMetrics.push({ step, name: 'loss', value: loss }, { step, name: 'lr', value: lr });
        heartbeat(step);
        await signalProgress(step);
      },
      onCheckpoint: async ({ step, loss, checkpoint }) => {
        const ref = await deps.store.put('checkpoints', checkpoint, 'safetensors');
        await insertCheckpoint(deps.pool, { runId: job.runId, stage: job.stage, round: job.round, step, loss, ...ref });
        lastCheckpoint = ref;
        heartbeat(step);
        await insertMetrics(deps.pool, job.runId, job.stage, job.round, pendingMetrics.splice(0));
        await signalProgress(step, true);
      },
      shouldStop: () => ctx.cancellationSignal.aborted || Boolean(deps.workerStopping?.()),
    });
    stoppedEarly = outcome.stoppedEarly;
  }
  if (stoppedEarly) {
    const step = trainer.step;
    trainer.dispose();
    if (ctx.cancellationSignal.aborted) throw new CancelledFailure(`training cancelled at step ${step}; the last checkpoint is kept`);
    // The worker is stopping: the checkpoint just written lets the next attempt, on another worker, resume here.
    throw ApplicationFailure.retryable(`worker stopping; training checkpointed at step ${step} and resumes on the next worker`, 'WorkerStopping');
  }
  if (!lastCheckpoint) {
    // Already complete on resume: the newest checkpoint is the final one.
    const ref = await deps.store.put('checkpoints', trainer.checkpoint(), 'safetensors');
    lastCheckpoint = ref;
  }
  const model = await deps.store.put('models', trainer.exportModel({ runId: job.runId, stage: job.stage }), 'safetensors');
  const result: TrainingResult = {
    model,
    checkpoint: lastCheckpoint,
    finalStep: trainer.step,
    finalLoss: lastLoss ?? Number.NaN,
    resumedFromStep,
    attempt: info.attempt,
    backend: backend.name,
    seconds: (Date.now() - started) / 1000,
  };
  trainer.dispose();
  return result;
}

/** Training activities; they run on the `dacp-gpu` task queue. */
export function trainingActivities(deps: ActivityDeps) {
  const { store } = deps;
  const loadModel = async (ref: ArtifactRef) => deserializeModel(await store.get(ref));

  return {
    /** Train a tiny base model from scratch on general text, for a registry that has none. */
    async bootstrapBaseModel(input: { runId: string; spec: RunSpec; corpus: DatasetRef }): Promise<TrainingResult> {
      const { spec } = input;
      const settings = trainSettings(spec.baseModel.bootstrap);
      return trainDurably(deps, {
        runId: input.runId,
        stage: 'bootstrap',
        round: 0,
        settings,
        checkpointEvery: spec.baseModel.bootstrap.checkpointEvery,
        start: async () => {
          const tokenizer = new ByteTokenizer();
          const model = GPT.create({ vocabSize: tokenizer.vocabSize, ...spec.baseModel.shape }, settings.seed);
          return Trainer.create(model, tokenizer, settings);
        },
        batches: async (trainer) =>
          mixedLmBatches({
            domain: [],
            replay: tokenStream(trainer.tokenizer, await readDataset<TextDoc>(store, input.corpus)),
            replayRatio: 1,
            batchSize: settings.batchSize,
            contextLength: trainer.model.config.contextLength,
            seed: settings.seed,
          }),
      });
    },

    /** dacp: continual pretraining of the base model on domain text mixed with replay text. */
    async continualPretrain(input: {
      runId: string;
      round: number;
      spec: RunSpec;
      replayRatio: number;
      baseModel: ArtifactRef;
      domain: DatasetRef;
      replay: DatasetRef;
    }): Promise<TrainingResult> {
      const settings = trainSettings(input.spec.dacp, input.round);
      return trainDurably(deps, {
        runId: input.runId,
        stage: 'dacp',
        round: input.round,
        settings,
        checkpointEvery: input.spec.dacp.checkpointEvery,
        start: async () => {
          const { model, tokenizer } = await loadModel(input.baseModel);
          return Trainer.create(model, tokenizer, settings);
        },
        batches: async (trainer) =>
          mixedLmBatches({
            domain: tokenStream(trainer.tokenizer, await readDataset<TextDoc>(store, input.domain)),
            replay: tokenStream(trainer.tokenizer, await readDataset<TextDoc>(store, input.replay)),
            replayRatio: input.replayRatio,
            batchSize: settings.batchSize,
            contextLength: trainer.model.config.contextLength,
            seed: settings.seed,
          }),
      });
    },

    /** instruct: supervised fine-tuning on prompt/response pairs, loss on the responses only. */
    async instructionTune(input: { runId: string; spec: RunSpec; model: ArtifactRef; pairs: DatasetRef }): Promise<TrainingResult> {
      const settings = trainSettings(input.spec.instruct);
      return trainDurably(deps, {
        runId: input.runId,
        stage: 'instruct',
        round: 0,
        settings,
        checkpointEvery: input.spec.instruct.checkpointEvery,
        start: async () => {
          const { model, tokenizer } = await loadModel(input.model);
          return Trainer.create(model, tokenizer, settings);
        },
        batches: async (trainer) => {
          const pairs = await readDataset<PairDoc>(store, input.pairs);
          const tk = trainer.tokenizer;
          return sftBatches({
            examples: pairs.map((p) => ({ prompt: tk.encode(formatInstructionPrompt(p.prompt)), response: tk.encode(p.response) })),
            batchSize: settings.batchSize,
            contextLength: trainer.model.config.contextLength,
            seed: settings.seed,
            padId: tk.padId,
            eosId: tk.eosId,
          });
        },
      });
    },
  };
}
