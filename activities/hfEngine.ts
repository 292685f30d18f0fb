import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { projectRoot } from '../cli/paths';
import { isLlamaConfig, parameterCountOf, specsOf, type AnyModelConfig } from '../ml/families';
import { folderFilesOfModelFile, readHfWeights, UnsupportedModelError, writeFolder } from '../ml/hfFolder';
import type { HfTrainerJob } from '../ml/externalTrainer';
import { modelFileTensorsOf } from '../ml/modelFile';
import { tokenizerFromJSON, type TokenizerJson } from '../ml/tokenizer';
import type { TrainSettings } from '../ml/train';
import type { ArtifactRef } from '../schemas/pipeline';
import type { EngineSpec } from '../schemas/runSpec';
import type { EngineOutcome } from './builtinEngine';
import { namedEnvironment, runTrainerAttempt, writeJobData, type TrainingData } from './commandEngine';
import type { ActivityDeps } from './context';
import type { TrainingSession } from './trainingSession';

/**
 * The Hugging Face engine: trainers/hf/dacp_hf_trainer.py (transformers + PyTorch) in the project's
 * Python environment, speaking dacp-trainer/2. The base model goes in as a model folder, the
 * trained one comes back as one and is stored as a dacp model file (with the run's tokenizer) for
 * the stages that follow. Several processes run under torchrun (DDP).
 */

export type HfEngine = Extract<EngineSpec, { kind: 'hf' }>;

/** The project's Python (scripts/setup-python.sh), or DACP_PYTHON. */
export function hfPython(): string {
  return process.env.DACP_PYTHON ?? path.join(projectRoot(), '.tools', 'venv', 'bin', 'python');
}

export function hfTrainerScript(): string {
  return path.join(projectRoot(), 'trainers', 'hf', 'dacp_hf_trainer.py');
}

/** The trainer's argv: one process, or `processes` under torchrun on this host. */
export function hfCommand(engine: Pick<HfEngine, 'processes'>): string[] {
  const python = hfPython();
  if (!existsSync(python)) {
    throw ApplicationFailure.nonRetryable(
      `engine "hf" needs the project's Python at ${python}; run \`bash scripts/setup-python.sh\` on this gpu worker's host (or set DACP_PYTHON)`,
      'EngineUnavailable',
    );
  }
  return engine.processes > 1
    ? [python, '-m', 'torch.distributed.run', '--standalone', `--nproc_per_node=${engine.processes}`, hfTrainerScript()]
    : [python, hfTrainerScript()];
}

/** LoRA's default target modules: the attention projections of each family. */
function defaultTargets(config: AnyModelConfig): string[] {
  return isLlamaConfig(config) ? ['q_proj', 'k_proj', 'v_proj', 'o_proj'] : ['c_attn'];
}

export async function trainWithHf(
  deps: ActivityDeps,
  session: TrainingSession,
  o: {
    engine: HfEngine;
    initModel: ArtifactRef | null;
    prepare: () => Promise<{ modelConfig: AnyModelConfig; tokenizer: TokenizerJson; data: TrainingData }>;
    settings: TrainSettings;
    checkpointEvery: number;
    /** Metadata of the stored model (run id, stage), as the built-in engine writes it. */
    modelMeta: Record<string, string>;
  },
): Promise<EngineOutcome> {
  const { stage } = session.job;
  if (o.initModel === null || stage === 'bootstrap') {
    throw ApplicationFailure.nonRetryable(
      'engine "hf" continues a model folder and cannot bootstrap a base model; import one with `dacp models import`, or bootstrap with engine "builtin"',
      'EngineUnsupported',
    );
  }
  const command = hfCommand(o.engine);
  const backend = o.engine.processes > 1 ? `hf:${o.engine.parallel}×${o.engine.processes}` : 'hf';
  const resume = await session.begin(backend);
  const prepared = await o.prepare();
  const { workDir, logsDir, data } = await writeJobData(deps, session, prepared.data);
  // The base as a model folder, from the stored model file (tensor by tensor).
  const initModelDir = path.join(workDir, 'init');
  await writeFolder(initModelDir, folderFilesOfModelFile(await deps.store.getSafetensors(o.initModel)));
  const lora = o.engine.lora;
  const job: HfTrainerJob = {
    protocol: 'dacp-trainer/2',
    stage,
    initModelDir,
    contextLength: prepared.modelConfig.contextLength,
    data,
    settings: o.settings,
    checkpointEvery: o.checkpointEvery,
    checkpointDir: path.join(workDir, 'checkpoints'),
    resumeFrom: resume ? deps.store.pathOf(resume.uri) : null,
    outputModelDir: path.join(workDir, 'model'),
    hf: {
      lora: lora ? { r: lora.r, alpha: lora.alpha ?? 2 * lora.r, dropout: lora.dropout, targetModules: lora.targetModules ?? defaultTargets(prepared.modelConfig) } : null,
      gradientCheckpointing: o.engine.gradientCheckpointing,
      precision: o.engine.precision,
      parallel: o.engine.parallel,
    },
  };
  return runTrainerAttempt(session, {
    command,
    // The trainer watches this pid and exits when the worker is gone (an orphan would hold the GPU).
    env: { ...namedEnvironment(o.engine.env), DACP_PARENT_PID: String(process.pid) },
    killGraceSeconds: o.engine.killGraceSeconds,
    job,
    workDir,
    logsDir,
    settings: o.settings,
    slots: deps.slots,
    devicesNeeded: o.engine.processes,
    dropCheckpointFiles: true,
    backend,
    accept: async (done) => {
      // Read as weights and stored tensor by tensor: no TensorFlow.js model is built in the worker.
      let loaded;
      try {
        loaded = await readHfWeights(done.model);
      } catch (err) {
        if (err instanceof UnsupportedModelError) {
          throw ApplicationFailure.nonRetryable(`the hf trainer wrote a model folder dacp cannot read (${done.model}): ${err.message}`, 'TrainerProtocolError');
        }
        throw err;
      }
      const count = specsOf(loaded.config).reduce((sum, spec) => sum + spec.shape.reduce((a, b) => a * b, 1), 0);
      if (count !== parameterCountOf(prepared.modelConfig) || loaded.config.vocabSize !== prepared.modelConfig.vocabSize) {
        throw ApplicationFailure.nonRetryable(
          `the hf trainer wrote a model of another shape (${count} parameters, vocabulary ${loaded.config.vocabSize}) than it was given (${done.model})`,
          'TrainerProtocolError',
        );
      }
      // The run's own tokenizer goes with the weights, so later stages tokenize exactly as this one did.
      const file = modelFileTensorsOf(loaded.config, loaded.weights, tokenizerFromJSON(prepared.tokenizer), o.modelMeta);
      const model = await deps.store.putSafetensors('models', file.tensors, file.metadata);
      // The trainer's folders (the base it started from, what it wrote) are copies: the store holds the model.
      await fs.rm(workDir, { recursive: true, force: true }).catch(() => undefined);
      return model;
    },
  });
}
