import { ApplicationFailure } from '@temporalio/common';
import { mixedLmBatches, sftBatches } from '../ml/mixing';
import { createModel, type AnyModelConfig, type CausalLM } from '../ml/families';
import type { ModelConfig } from '../ml/model';
import { modelFromFileTensors, readModelFileHeader } from '../ml/modelFile';
import { BpeTokenizer, ByteTokenizer, type Tokenizer } from '../ml/tokenizer';
import { Trainer, type TrainSettings } from '../ml/train';
import type { DomainMix } from '../schemas/candidates';
import type { ArtifactRef, DatasetRef, TrainingResult } from '../schemas/pipeline';
import type { RunSpec, TrainingSettings } from '../schemas/runSpec';
import { trainBuiltin, type EngineOutcome } from './builtinEngine';
import type { TrainingStage } from './checkpoints';
import { trainWithCommand, type PrepareTraining, type TrainingData } from './commandEngine';
import { trainWithHf } from './hfEngine';
import { inputsFolder } from './inputs';
import type { ActivityDeps } from './context';
import { readDataset, sftExamplesOf, sourceStreamsOf, tokenStreamOf, type TextDoc } from './datasets';
import { TrainingSession } from './trainingSession';

export type { TrainingHeartbeat } from './checkpoints';

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

interface StageJob {
  runId: string;
  stage: TrainingStage;
  round: number;
  spec: RunSpec;
  baseDir: string;
  settings: TrainSettings;
  checkpointEvery: number;
  /** The model to start from; null for bootstrap (fresh weights with `config` and `tokenizer`). */
  initModel: ArtifactRef | null;
  /** For bootstrap: the shape and the tokenizer trained on its corpus. */
  fresh?: { config: Omit<ModelConfig, 'vocabSize'>; tokenizer: (heartbeat: () => void) => Promise<Tokenizer> };
  /** The stage's data as ids; it calls `heartbeat` between slices of tokenizing. */
  data: (tokenizer: Tokenizer, heartbeat: () => void) => Promise<TrainingData>;
  /** Share of general text in the batches, recorded with each attempt. */
  replayRatio?: number;
  /** The domain sources' weights, recorded with each attempt. */
  domainMix?: DomainMix;
}

/**
 * Where a stage starts: the base model's weights and tokenizer, or (bootstrap) fresh weights and a
 * tokenizer trained now. Called only once the attempt has begun (and knows where it resumes), so a
 * built-in attempt that resumes from a checkpoint loads nothing and trains no tokenizer.
 */
async function startingPoint(
  deps: ActivityDeps,
  job: StageJob,
  heartbeat: () => void,
): Promise<{ model: CausalLM | null; tokenizer: Tokenizer; config: AnyModelConfig }> {
  if (job.initModel) {
    const base = modelFromFileTensors(await deps.store.getSafetensors(job.initModel));
    return { model: base.model, tokenizer: base.tokenizer, config: base.model.config };
  }
  if (!job.fresh) throw new Error(`${job.stage} training has neither a model to start from nor a fresh shape`);
  const tokenizer = await job.fresh.tokenizer(heartbeat);
  return { model: null, tokenizer, config: { vocabSize: tokenizer.vocabSize, ...job.fresh.config } };
}

/** One training stage on the spec's engine, durable through the shared session. */
async function trainStage(deps: ActivityDeps, job: StageJob): Promise<TrainingResult> {
  const started = Date.now();
  const session = new TrainingSession(deps, {
    runId: job.runId,
    stage: job.stage,
    round: job.round,
    totalSteps: job.settings.totalSteps,
    retention: job.spec.checkpoints,
    ...(job.replayRatio !== undefined ? { replayRatio: job.replayRatio } : {}),
    ...(job.domainMix !== undefined ? { domainMix: job.domainMix } : {}),
  });
  // Reading, tokenizing and training a tokenizer are long synchronous work: they pause to heartbeat.
  const heartbeat = () => session.heartbeat();
  let outcome: EngineOutcome;
  // Between the paced steps too (reading datasets and models, loading cached tokens), a timer keeps
  // the attempt's heartbeat going; the SDK throttles what reaches the server.
  const keepAlive = setInterval(heartbeat, Math.max(200, Math.min(5_000, job.spec.heartbeatTimeout / 4)));
  try {
    if (job.spec.engine.kind === 'hf' || job.spec.engine.kind === 'command') {
      // Protocol trainers load the weights themselves, from a folder written from the same file: here
      // only the config and the tokenizer are read, from the file's header, never a GB-sized model.
      // A bootstrap trains its tokenizer here and leaves the fresh weights to the engine.
      const prepare: PrepareTraining = async () => {
        const { config, tokenizer } = job.initModel
          ? await readModelFileHeader(await deps.store.localFile(job.initModel))
          : await startingPoint(deps, job, heartbeat);
        return { modelConfig: config, tokenizer: tokenizer.toJSON(), data: await job.data(tokenizer, heartbeat) };
      };
      const common = {
        initModel: job.initModel,
        settings: job.settings,
        checkpointEvery: job.checkpointEvery,
        modelMeta: { runId: job.runId, stage: job.stage },
        prepare,
      };
      outcome =
        job.spec.engine.kind === 'hf'
          ? await trainWithHf(deps, session, { ...common, engine: job.spec.engine })
          : await trainWithCommand(deps, session, { ...common, engine: job.spec.engine, baseDir: await inputsFolder(deps.store, job.baseDir) });
    } else {
      outcome = await trainBuiltin(deps, session, {
        checkpointEvery: job.checkpointEvery,
        modelMeta: { runId: job.runId, stage: job.stage },
        start: async () => {
          const start = await startingPoint(deps, job, heartbeat);
          try {
            // The trainer owns (and disposes) the weights it is given.
            return Trainer.create(start.model ?? createModel(start.config, job.settings.seed), start.tokenizer, job.settings);
          } catch (err) {
            start.model?.dispose();
            throw err;
          }
        },
        batches: async (trainer) => {
          const data = await job.data(trainer.tokenizer, heartbeat);
          const contextLength = trainer.model.config.contextLength;
          const { batchSize, seed } = job.settings;
          return data.kind === 'lm'
            ? mixedLmBatches({ domain: data.domain, ...(data.domainParts ? { domainParts: data.domainParts } : {}), replay: data.replay, replayRatio: data.replayRatio, batchSize, contextLength, seed })
            : sftBatches({
              examples: data.examples, batchSize, contextLength, seed, padId: data.padId, eosId: data.eosId, replay: data.replay, replayRatio: data.replayRatio,
            });
        },
      });
    }
  } finally {
    clearInterval(keepAlive);
  }
  return {
    model: outcome.model,
    checkpoint: session.lastCheckpoint ?? outcome.model,
    finalStep: outcome.finalStep,
    finalLoss: outcome.finalLoss,
    resumedFromStep: session.resumedFromStep,
    attempt: session.attempt,
    backend: outcome.backend,
    seconds: (Date.now() - started) / 1000,
  };
}

export interface InstructionTuneInput {
  runId: string;
  spec: RunSpec;
  baseDir: string;
  model: ArtifactRef;
  pairs: DatasetRef;
  /** General text mixed into every batch as LM rows: the run's replay train set. */
  replay?: DatasetRef;
  /** Share of each batch's rows that are replay text, in [0, 1); absent is 0 (pure SFT). */
  replayRatio?: number;
  /** Which tuning of the run (a final-check retry tunes again, with more replay); absent is 0. */
  round?: number;
}

/** A ratio the batches cannot honour fails the activity once, naming the input to fix. */
function checkInstructReplay(replay: DatasetRef | undefined, replayRatio: number): void {
  if (!(replayRatio >= 0 && replayRatio < 1)) {
    throw ApplicationFailure.nonRetryable(
      `instructionTune: replayRatio must be in [0, 1) so every batch keeps instruction pairs, got ${replayRatio}; fix instruct.replayRatio in the spec`,
      'InstructReplayInvalid',
    );
  }
  if (replayRatio > 0 && replay === undefined) {
    throw ApplicationFailure.nonRetryable(
      `instructionTune: replayRatio is ${replayRatio} but no replay dataset was given; pass replay (the run's replay train set) or replayRatio 0`,
      'InstructReplayInvalid',
    );
  }
}

/** Training activities; they run on the `dacp-gpu` task queue. */
export function trainingActivities(deps: ActivityDeps) {
  const { store } = deps;

  return {
    /** Train a tiny base model (and its tokenizer) from scratch on general text, for a registry that has none. */
    async bootstrapBaseModel(input: { runId: string; spec: RunSpec; baseDir: string; corpus: DatasetRef }): Promise<TrainingResult> {
      const { spec } = input;
      const tokenizerSpec = spec.baseModel.tokenizer;
      const trainTokenizer = async (heartbeat: () => void): Promise<Tokenizer> => {
        if (tokenizerSpec.kind !== 'bpe') return new ByteTokenizer();
        const texts = (await readDataset<TextDoc>(store, input.corpus)).map((d) => d.text);
        return BpeTokenizer.trainAsync(texts, { vocabSize: tokenizerSpec.vocabSize, onProgress: heartbeat });
      };
      return trainStage(deps, {
        runId: input.runId,
        stage: 'bootstrap',
        round: 0,
        spec,
        baseDir: input.baseDir,
        settings: trainSettings(spec.baseModel.bootstrap),
        checkpointEvery: spec.baseModel.bootstrap.checkpointEvery,
        initModel: null,
        fresh: { config: spec.baseModel.shape, tokenizer: trainTokenizer },
        data: async (tokenizer, heartbeat) => ({
          kind: 'lm',
          domain: [],
          replay: await tokenStreamOf(deps, tokenizer, input.corpus, { onProgress: heartbeat }),
          replayRatio: 1,
        }),
      });
    },

    /** dacp: continual pretraining of the base model on domain text mixed with replay text. */
    async continualPretrain(input: {
      runId: string;
      round: number;
      spec: RunSpec;
      baseDir: string;
      replayRatio: number;
      baseModel: ArtifactRef;
      domain: DatasetRef;
      replay: DatasetRef;
      /**
       * The domain sources' weights (by source name), where the run weighs several: each domain row
       * draws its source by weight. Absent: the domain documents are one pool.
       */
      domainMix?: DomainMix;
      /**
       * Added to the seed (default: the round). Candidates of one batch share it, so that they
       * differ only in their replay ratio, not in their data order and initial noise.
       */
      seedOffset?: number;
    }): Promise<TrainingResult> {
      return trainStage(deps, {
        runId: input.runId,
        stage: 'dacp',
        round: input.round,
        spec: input.spec,
        baseDir: input.baseDir,
        settings: trainSettings(input.spec.dacp, input.seedOffset ?? input.round),
        replayRatio: input.replayRatio,
        ...(input.domainMix ? { domainMix: input.domainMix } : {}),
        checkpointEvery: input.spec.dacp.checkpointEvery,
        initModel: input.baseModel,
        data: async (tokenizer, heartbeat) => {
          const replay = await tokenStreamOf(deps, tokenizer, input.replay, { onProgress: heartbeat });
          const mix = input.domainMix;
          if (!mix) return { kind: 'lm', domain: await tokenStreamOf(deps, tokenizer, input.domain, { onProgress: heartbeat }), replay, replayRatio: input.replayRatio };
          const names = Object.keys(mix);
          const streams = await sourceStreamsOf(deps, tokenizer, input.domain, names, { onProgress: heartbeat });
          const empty = names.filter((name) => (mix[name] as number) > 0 && (streams[name] as number[]).length < 2);
          if (empty.length) {
            throw ApplicationFailure.nonRetryable(
              `continualPretrain: domain source ${empty.map((n) => `"${n}"`).join(', ')} has weight in domainRatio but no training text; add documents to it or give it weight 0`,
              'DomainSourceEmpty',
            );
          }
          const domainParts = names.map((name) => ({ name, tokens: streams[name] as number[], weight: mix[name] as number }));
          return { kind: 'lm', domain: [], domainParts, replay, replayRatio: input.replayRatio };
        },
      });
    },

    /**
     * instruct: supervised fine-tuning on prompt/response pairs, loss on the responses only, with
     * `replayRatio` of each batch general (replay) text trained as plain language modelling.
     */
    async instructionTune(input: InstructionTuneInput): Promise<TrainingResult> {
      // Absent means 0: a run begun before replay existed resumes with exactly its old batches.
      const replayRatio = input.replayRatio ?? 0;
      checkInstructReplay(input.replay, replayRatio);
      return trainStage(deps, {
        runId: input.runId,
        stage: 'instruct',
        round: input.round ?? 0,
        spec: input.spec,
        baseDir: input.baseDir,
        // A retry after a failed final check is a new tuning from the same model: a new seed offset too.
        replayRatio,
        settings: trainSettings(input.spec.instruct, input.round ?? 0),
        checkpointEvery: input.spec.instruct.checkpointEvery,
        initModel: input.model,
        data: async (tokenizer, heartbeat) => ({
          kind: 'sft',
          examples: await sftExamplesOf(deps, tokenizer, input.pairs, { onProgress: heartbeat }),
          padId: tokenizer.padId,
          eosId: tokenizer.eosId,
          // Read (from the token cache, which the dacp stage filled) only when batches use it.
          replay: input.replay && replayRatio > 0 ? await tokenStreamOf(deps, tokenizer, input.replay, { onProgress: heartbeat }) : [],
          replayRatio,
        }),
      });
    },
  };
}
