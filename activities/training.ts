import { formatInstructionPrompt, mixedLmBatches, sftBatches } from '../ml/mixing';
import { GPT, type ModelConfig } from '../ml/model';
import { deserializeModel } from '../ml/modelFile';
import { BpeTokenizer, ByteTokenizer, type Tokenizer } from '../ml/tokenizer';
import { Trainer, type TrainSettings } from '../ml/train';
import type { ArtifactRef, DatasetRef, TrainingResult } from '../schemas/pipeline';
import type { RunSpec, TrainingSettings } from '../schemas/runSpec';
import { trainBuiltin, type EngineOutcome } from './builtinEngine';
import type { TrainingStage } from './checkpoints';
import { trainWithCommand, type TrainingData } from './commandEngine';
import type { ActivityDeps } from './context';
import { readDataset, type PairDoc, type TextDoc } from './datasets';
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

/** Documents → one token stream, each document closed by the end-of-text token. */
function tokenStream(tokenizer: Tokenizer, docs: TextDoc[]): number[] {
  const out: number[] = [];
  for (const doc of docs) {
    for (const id of tokenizer.encode(doc.text)) out.push(id);
    out.push(tokenizer.eosId);
  }
  return out;
}

function sftExamples(tokenizer: Tokenizer, pairs: PairDoc[]) {
  return pairs.map((p) => ({ prompt: tokenizer.encode(formatInstructionPrompt(p.prompt)), response: tokenizer.encode(p.response) }));
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
  fresh?: { config: Omit<ModelConfig, 'vocabSize'>; tokenizer: () => Promise<Tokenizer> };
  data: (tokenizer: Tokenizer) => Promise<TrainingData>;
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
  });
  const modelMeta = { runId: job.runId, stage: job.stage };
  const base = job.initModel ? deserializeModel(await deps.store.get(job.initModel)) : null;
  let outcome: EngineOutcome;
  let baseHandedToTrainer = false;
  try {
    const tokenizer = base ? base.tokenizer : await job.fresh!.tokenizer();
    const config: ModelConfig = base ? base.model.config : { vocabSize: tokenizer.vocabSize, ...job.fresh!.config };
    if (job.spec.engine.kind === 'command') {
      outcome = await trainWithCommand(deps, session, {
        engine: job.spec.engine,
        baseDir: job.baseDir,
        initModel: job.initModel,
        modelConfig: config,
        tokenizer: tokenizer.toJSON(),
        data: await job.data(tokenizer),
        settings: job.settings,
        checkpointEvery: job.checkpointEvery,
      });
    } else {
      outcome = await trainBuiltin(deps, session, {
        checkpointEvery: job.checkpointEvery,
        modelMeta,
        start: async () => {
          baseHandedToTrainer = base !== null;
          return Trainer.create(base ? base.model : GPT.create(config, job.settings.seed), tokenizer, job.settings);
        },
        batches: async (trainer) => {
          const data = await job.data(trainer.tokenizer);
          const contextLength = trainer.model.config.contextLength;
          const { batchSize, seed } = job.settings;
          return data.kind === 'lm'
            ? mixedLmBatches({ domain: data.domain, replay: data.replay, replayRatio: data.replayRatio, batchSize, contextLength, seed })
            : sftBatches({ examples: data.examples, batchSize, contextLength, seed, padId: data.padId, eosId: data.eosId });
        },
      });
    }
  } finally {
    // A trainer started from the base model owns (and disposes) its weights; otherwise they are ours.
    if (base && !baseHandedToTrainer) base.model.dispose();
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

/** Training activities; they run on the `dacp-gpu` task queue. */
export function trainingActivities(deps: ActivityDeps) {
  const { store } = deps;

  return {
    /** Train a tiny base model (and its tokenizer) from scratch on general text, for a registry that has none. */
    async bootstrapBaseModel(input: { runId: string; spec: RunSpec; baseDir: string; corpus: DatasetRef }): Promise<TrainingResult> {
      const { spec } = input;
      const texts = async () => (await readDataset<TextDoc>(store, input.corpus)).map((d) => d.text);
      const tokenizerSpec = spec.baseModel.tokenizer;
      return trainStage(deps, {
        runId: input.runId,
        stage: 'bootstrap',
        round: 0,
        spec,
        baseDir: input.baseDir,
        settings: trainSettings(spec.baseModel.bootstrap),
        checkpointEvery: spec.baseModel.bootstrap.checkpointEvery,
        initModel: null,
        fresh: {
          config: spec.baseModel.shape,
          tokenizer: async () =>
            tokenizerSpec.kind === 'bpe' ? BpeTokenizer.train(await texts(), { vocabSize: tokenizerSpec.vocabSize }) : new ByteTokenizer(),
        },
        data: async (tokenizer) => ({
          kind: 'lm',
          domain: [],
          replay: tokenStream(tokenizer, await readDataset<TextDoc>(store, input.corpus)),
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
    }): Promise<TrainingResult> {
      return trainStage(deps, {
        runId: input.runId,
        stage: 'dacp',
        round: input.round,
        spec: input.spec,
        baseDir: input.baseDir,
        settings: trainSettings(input.spec.dacp, input.round),
        checkpointEvery: input.spec.dacp.checkpointEvery,
        initModel: input.baseModel,
        data: async (tokenizer) => ({
          kind: 'lm',
          domain: tokenStream(tokenizer, await readDataset<TextDoc>(store, input.domain)),
          replay: tokenStream(tokenizer, await readDataset<TextDoc>(store, input.replay)),
          replayRatio: input.replayRatio,
        }),
      });
    },

    /** instruct: supervised fine-tuning on prompt/response pairs, loss on the responses only. */
    async instructionTune(input: { runId: string; spec: RunSpec; baseDir: string; model: ArtifactRef; pairs: DatasetRef }): Promise<TrainingResult> {
      return trainStage(deps, {
        runId: input.runId,
        stage: 'instruct',
        round: 0,
        spec: input.spec,
        baseDir: input.baseDir,
        settings: trainSettings(input.spec.instruct),
        checkpointEvery: input.spec.instruct.checkpointEvery,
        initModel: input.model,
        data: async (tokenizer) => ({
          kind: 'sft',
          examples: sftExamples(tokenizer, await readDataset<PairDoc>(store, input.pairs)),
          padId: tokenizer.padId,
          eosId: tokenizer.eosId,
        }),
      });
    },
  };
}
