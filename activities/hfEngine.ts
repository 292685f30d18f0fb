import { existsSync } from 'node:fs';
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { projectRoot } from '../cli/paths';
import { isLlamaConfig, type AnyModelConfig } from '../ml/families';
import type { TrainSettings } from '../ml/train';
import type { ArtifactRef } from '../schemas/pipeline';
import type { EngineSpec } from '../schemas/runSpec';
import type { EngineOutcome } from './builtinEngine';
import { namedEnvironment, trainWithModelFolders, type PrepareTraining } from './commandEngine';
import type { ActivityDeps } from './context';
import type { TrainingSession } from './trainingSession';

/**
 * The Hugging Face engine: trainers/hf/dacp_hf_trainer.py (transformers + PyTorch) in the project's
 * Python environment, speaking dacp-trainer/2 like any command trainer (commandEngine.ts), plus its
 * own settings (LoRA, precision, gradient checkpointing, DDP or FSDP). Several processes run under
 * torchrun.
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
    prepare: PrepareTraining;
    settings: TrainSettings;
    checkpointEvery: number;
    /** Metadata of the stored model (run id, stage), as the built-in engine writes it. */
    modelMeta: Record<string, string>;
  },
): Promise<EngineOutcome> {
  const { engine } = o;
  const lora = engine.lora;
  return trainWithModelFolders(deps, session, {
    command: hfCommand(engine),
    env: namedEnvironment(engine.env),
    killGraceSeconds: engine.killGraceSeconds,
    backend: engine.processes > 1 ? `hf:${engine.parallel}×${engine.processes}` : 'hf',
    initModel: o.initModel,
    prepare: o.prepare,
    settings: o.settings,
    checkpointEvery: o.checkpointEvery,
    modelMeta: o.modelMeta,
    hf: (modelConfig) => ({
      lora: lora ? { r: lora.r, alpha: lora.alpha ?? 2 * lora.r, dropout: lora.dropout, targetModules: lora.targetModules ?? defaultTargets(modelConfig) } : null,
      gradientCheckpointing: engine.gradientCheckpointing,
      precision: engine.precision,
      parallel: engine.parallel,
    }),
    devicesNeeded: engine.processes,
    dropCheckpointFiles: true,
  });
}
