import { existsSync, promises as fs } from 'node:fs';
import { checkTrainerCommand, reservedNames } from '../workers/policy';
import { projectRoot } from '../cli/paths';
import path from 'node:path';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { createModel, parameterCountOf, specsOf, type AnyModelConfig } from '../ml/families';
import { folderFilesOfModelFile, modelFolderFiles, readHfWeights, UnsupportedModelError, writeFolder } from '../ml/hfFolder';
import { modelFileTensorsOf } from '../ml/modelFile';
import { tokenizerFromJSON, type TokenizerJson } from '../ml/tokenizer';
import { divergenceAdvice, TrainingDivergedError, type TrainSettings } from '../ml/train';
import {
  reportedDivergence,
  runExternalTrainer,
  TrainerExitError,
  TrainerProtocolError,
  TrainerStopped,
  sha256OfFile,
  TRAINER_PROTOCOL,
  writeSftFile,
  writeTokenFile,
  type TrainerDoneEvent,
  type TrainerJob,
  type TrainerLmData,
  type TrainerSftData,
} from '../ml/externalTrainer';
import type { DomainPart } from '../ml/mixing';
import type { ArtifactRef } from '../schemas/pipeline';
import type { EngineSpec } from '../schemas/runSpec';
import { divergedFailure, type EngineOutcome } from './builtinEngine';
import type { SlotPool } from '../workers/gpuSlots';
import type { ActivityDeps } from './context';
import type { TrainingSession } from './trainingSession';

export type TrainingData =
  | { kind: 'lm'; domain: number[]; domainParts?: DomainPart[]; replay: number[]; replayRatio: number }
  | {
      kind: 'sft';
      examples: { prompt: number[]; response: number[] }[];
      padId: number;
      eosId: number;
      /** General text trained as plain LM rows, `replayRatio` of each batch; ratio 0 is pure SFT. */
      replay: number[];
      replayRatio: number;
    };

/**
 * The sft job's optional replay fields (docs/trainer-protocol.md). They are written only when
 * replayRatio > 0, so a pure-SFT job file reads exactly as it did before replay existed.
 */
interface TrainerSftReplay {
  replay: string;
  replayRatio: number;
}

type CommandEngine = Extract<EngineSpec, { kind: 'command' }>;

/** Arguments naming files beside the spec are made absolute; everything else passes as written. */
function resolveCommand(command: string[], baseDir: string): string[] {
  return command.map((arg) => (!path.isAbsolute(arg) && existsSync(path.join(baseDir, arg)) ? path.join(baseDir, arg) : arg));
}

/** What a stage gives a protocol trainer: the model's shape, its tokenizer and the data as ids. */
export type PrepareTraining = () => Promise<{ modelConfig: AnyModelConfig; tokenizer: TokenizerJson; data: TrainingData }>;

/**
 * The external-command engine: any trainer speaking docs/trainer-protocol.md. Its checkpoints are
 * copied into the content-addressed store as they are announced, so a retried attempt (on any
 * worker) resumes from the newest one; its stderr is kept in the run's log folder.
 */
export async function trainWithCommand(
  deps: ActivityDeps,
  session: TrainingSession,
  o: {
    engine: CommandEngine;
    baseDir: string;
    initModel: ArtifactRef | null;
    /** Called once the attempt has begun (it heartbeats). */
    prepare: PrepareTraining;
    settings: TrainSettings;
    checkpointEvery: number;
    modelMeta: Record<string, string>;
  },
): Promise<EngineOutcome> {
  return trainWithModelFolders(deps, session, {
    command: allowedCommand(resolveCommand(o.engine.command, o.baseDir), o.baseDir),
    env: namedEnvironment(o.engine.env),
    killGraceSeconds: o.engine.killGraceSeconds,
    backend: `command:${path.basename(o.engine.command[0])}`,
    initModel: o.initModel,
    prepare: o.prepare,
    settings: o.settings,
    checkpointEvery: o.checkpointEvery,
    modelMeta: o.modelMeta,
  });
}

/**
 * One attempt of a protocol trainer (dacp-trainer/2): the start model goes in as a model folder
 * (for bootstrap, fresh weights initialised here from the seed, as the built-in engine would), the
 * trained model comes back as one, is checked against the shape it was given, and is stored as a
 * dacp model file with the run's own tokenizer, tensor by tensor (no TensorFlow.js model is built).
 */
export async function trainWithModelFolders(
  deps: ActivityDeps,
  session: TrainingSession,
  o: {
    command: string[];
    env: Record<string, string>;
    killGraceSeconds: number;
    backend: string;
    initModel: ArtifactRef | null;
    prepare: PrepareTraining;
    settings: TrainSettings;
    checkpointEvery: number;
    /** Metadata of the stored model (run id, stage), as the built-in engine writes it. */
    modelMeta: Record<string, string>;
    /** The hf engine's settings for the model being trained. */
    hf?: (modelConfig: AnyModelConfig) => TrainerJob['hf'];
    devicesNeeded?: number;
    dropCheckpointFiles?: boolean;
  },
): Promise<EngineOutcome> {
  const { stage } = session.job;
  const resume = await session.begin(o.backend);
  const prepared = await o.prepare();
  const { workDir, logsDir, data } = await writeJobData(deps, session, prepared.data);
  const initModelDir = path.join(workDir, 'init');
  if (o.initModel) {
    // The base as a model folder, from the stored model file (tensor by tensor).
    await writeFolder(initModelDir, folderFilesOfModelFile(await deps.store.getSafetensors(o.initModel)));
  } else {
    if (stage !== 'bootstrap') throw new Error(`${stage} training has no model to start from`);
    const fresh = createModel(prepared.modelConfig, o.settings.seed);
    try {
      await writeFolder(initModelDir, modelFolderFiles(fresh, tokenizerFromJSON(prepared.tokenizer)));
    } finally {
      fresh.dispose();
    }
  }
  const job: TrainerJob = {
    protocol: TRAINER_PROTOCOL,
    stage,
    initModelDir,
    contextLength: prepared.modelConfig.contextLength,
    data,
    settings: o.settings,
    checkpointEvery: o.checkpointEvery,
    checkpointDir: path.join(workDir, 'checkpoints'),
    resumeFrom: resume ? await deps.store.localFile(resume) : null,
    outputModelDir: path.join(workDir, 'model'),
    ...(o.hf ? { hf: o.hf(prepared.modelConfig) } : {}),
  };
  // The job each attempt ran stays beside its stderr log; the attempt's folder goes once the model is stored.
  const { runId, round } = session.job;
  await fs.mkdir(path.join(logsDir, runId), { recursive: true });
  await fs.writeFile(path.join(logsDir, runId, `${stage}-${round}-attempt-${session.attempt}.job.json`), `${JSON.stringify(job, null, 2)}\n`);
  return runTrainerAttempt(session, {
    command: o.command,
    // The trainer may watch this pid and exit when the worker is gone (an orphan would hold the GPU).
    env: { ...o.env, DACP_PARENT_PID: String(process.pid) },
    killGraceSeconds: o.killGraceSeconds,
    job,
    workDir,
    logsDir,
    settings: o.settings,
    slots: deps.slots,
    devicesNeeded: o.devicesNeeded ?? 1,
    dropCheckpointFiles: o.dropCheckpointFiles ?? false,
    backend: o.backend,
    accept: async (done) => {
      let loaded;
      try {
        // The done event's sha256 is that of the weights file (or of the shards' index).
        const single = path.join(done.model, 'model.safetensors');
        const weightsFile = existsSync(single) ? single : path.join(done.model, 'model.safetensors.index.json');
        const actual = await sha256OfFile(weightsFile);
        if (actual !== done.sha256) {
          throw ApplicationFailure.nonRetryable(`the trainer's done event says sha256 ${done.sha256}, but ${weightsFile} has ${actual}`, 'TrainerProtocolError');
        }
        loaded = await readHfWeights(done.model);
      } catch (err) {
        if (err instanceof UnsupportedModelError || (err as NodeJS.ErrnoException).code === 'ENOENT') {
          throw ApplicationFailure.nonRetryable(`the trainer wrote a model folder dacp cannot read (${done.model}): ${(err as Error).message}`, 'TrainerProtocolError');
        }
        throw err;
      }
      const count = specsOf(loaded.config).reduce((sum, spec) => sum + spec.shape.reduce((a, b) => a * b, 1), 0);
      if (count !== parameterCountOf(prepared.modelConfig) || loaded.config.vocabSize !== prepared.modelConfig.vocabSize) {
        throw ApplicationFailure.nonRetryable(
          `the trainer wrote a model of another shape (${count} parameters, vocabulary ${loaded.config.vocabSize}) than it was given (${done.model})`,
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

/** The attempt's scratch folder, with the stage's data written as the protocol's files. */
export async function writeJobData(
  deps: ActivityDeps,
  session: TrainingSession,
  training: TrainingData,
): Promise<{ workDir: string; logsDir: string; data: TrainerJob['data'] }> {
  const { runId, stage, round } = session.job;
  const logsDir = deps.logsDir ?? path.join(deps.store.root, '..', 'logs');
  const workDir = path.join(logsDir, runId, 'work', `${stage}-${round}-attempt-${session.attempt}`);
  await fs.rm(workDir, { recursive: true, force: true });
  await fs.mkdir(path.join(workDir, 'checkpoints'), { recursive: true });

  if (training.kind === 'lm') {
    await writeTokenFile(path.join(workDir, 'replay.i32'), training.replay);
    const lm = { kind: 'lm' as const, replay: path.join(workDir, 'replay.i32'), replayRatio: training.replayRatio };
    if (training.domainParts) {
      const domainParts: NonNullable<TrainerLmData['domainParts']> = [];
      for (const [i, part] of training.domainParts.entries()) {
        const tokens = path.join(workDir, `domain-${i}.i32`);
        await writeTokenFile(tokens, part.tokens);
        domainParts.push({ name: part.name, tokens, weight: part.weight });
      }
      return { workDir, logsDir, data: { ...lm, domainParts } };
    }
    await writeTokenFile(path.join(workDir, 'domain.i32'), training.domain);
    return { workDir, logsDir, data: { ...lm, domain: path.join(workDir, 'domain.i32') } };
  }
  await writeSftFile(path.join(workDir, 'sft.jsonl'), training.examples);
  const sft: TrainerSftData & Partial<TrainerSftReplay> = {
    kind: 'sft',
    examples: path.join(workDir, 'sft.jsonl'),
    padId: training.padId,
    eosId: training.eosId,
  };
  if (training.replayRatio > 0) {
    sft.replay = path.join(workDir, 'replay.i32');
    sft.replayRatio = training.replayRatio;
    await writeTokenFile(sft.replay, training.replay);
  }
  return { workDir, logsDir, data: sft };
}

/**
 * One attempt of a trainer process: its checkpoints stored as they are announced, cancellation and
 * worker shutdown passed on as SIGTERM (then SIGKILL), and every way it can end mapped to a failure
 * type. `accept` checks and stores the trained model.
 */
export async function runTrainerAttempt(
  session: TrainingSession,
  o: {
    command: string[];
    env: Record<string, string>;
    killGraceSeconds: number;
    job: TrainerJob;
    workDir: string;
    logsDir: string;
    settings: TrainSettings;
    backend: string;
    accept: (done: TrainerDoneEvent) => Promise<ArtifactRef>;
    /** The gpu worker's slots: the trainer sees only its slot's devices. */
    slots?: SlotPool;
    /** GPUs the trainer needs on a host that has them (one per process under torchrun). */
    devicesNeeded?: number;
    /** Delete the trainer's checkpoint files once stored (only for trainers dacp ships, which never reread them). */
    dropCheckpointFiles?: boolean;
  },
): Promise<EngineOutcome> {
  const { runId, stage, round } = session.job;
  // Cancellation and worker shutdown both ask the trainer to checkpoint and stop (SIGTERM, then SIGKILL).
  const abort = new AbortController();
  const poll = setInterval(() => session.stopRequested() && abort.abort(), 250);
  const heartbeatTimer = setInterval(() => session.heartbeat(), 1_000);
  const stderrFile = path.join(o.logsDir, runId, `${stage}-${round}-attempt-${session.attempt}.stderr.log`);
  let lease: Awaited<ReturnType<SlotPool['acquire']>> | undefined;
  try {
    lease = await o.slots?.acquire();
    const devices = lease?.slot.devices ?? [];
    if (devices.length > 0 && (o.devicesNeeded ?? 1) > devices.length) {
      throw ApplicationFailure.nonRetryable(
        `the trainer runs ${o.devicesNeeded} processes, one per GPU, but this gpu worker's training slot has ${devices.length} GPU(s) (${devices.join(', ')}); ` +
          `start the worker with DACP_GPU_SLOTS=1 to give one slot all its GPUs, or lower engine.processes`,
        'EngineUnsupported',
      );
    }
    const { done } = await runExternalTrainer({
      command: o.command,
      job: o.job,
      workDir: o.workDir,
      // Each slot's trainer sees only its own GPUs.
      env: devices.length > 0 ? { ...o.env, CUDA_VISIBLE_DEVICES: devices.join(',') } : o.env,
      stderrFile,
      signal: abort.signal,
      killGraceMs: o.killGraceSeconds * 1000,
      onProgress: (e) => {
        // Thrown from here, the error stops the trainer at once; the failure below names the step.
        if (!Number.isFinite(e.loss)) throw new TrainingDivergedError(e.step, e.loss, null, o.settings);
        return session.progress(e.step, e.loss, { tokens: e.tokens });
      },
      onCheckpoint: async (e) => {
        await session.checkpointSaved(e.step, session.lastLoss, { file: e.path }, path.extname(e.path).slice(1) || 'ckpt');
        // The store holds it now; a trainer we own never reads its old files again, and a long run of a
        // large model would otherwise fill the disk with them.
        if (o.dropCheckpointFiles && path.resolve(e.path).startsWith(path.resolve(o.workDir) + path.sep)) await fs.rm(e.path, { force: true });
      },
    });
    if (!Number.isFinite(done.loss)) throw new TrainingDivergedError(done.step, done.loss, null, o.settings);
    const model = await o.accept(done);
    return { model, finalStep: done.step, finalLoss: done.loss, backend: o.backend };
  } catch (err) {
    if (abort.signal.aborted) throw session.stopError(session.step);
    if (err instanceof TrainingDivergedError) throw divergedFailure(session.job, { step: err.step, loss: err.loss, message: err.message });
    const diverged = err instanceof TrainerExitError ? reportedDivergence(err.stderrTail) : null;
    if (diverged) {
      throw divergedFailure(session.job, {
        step: diverged.step,
        loss: null,
        message: `training diverged at step ${diverged.step}, the trainer reports ("${diverged.line}"); ${divergenceAdvice(o.settings)} (stderr: ${stderrFile})`,
      });
    }
    if (err instanceof TrainerProtocolError) {
      throw ApplicationFailure.nonRetryable(`trainer broke the protocol: ${err.message} (stderr: ${stderrFile})`, 'TrainerProtocolError');
    }
    if (err instanceof TrainerStopped) {
      throw ApplicationFailure.retryable(`trainer stopped at step ${session.step} without finishing; resuming`, 'TrainerStopped');
    }
    if (err instanceof TrainerExitError) {
      throw ApplicationFailure.retryable(`trainer failed (${err.message}); see ${stderrFile}`, 'TrainerFailed');
    }
    if (err instanceof CancelledFailure) throw err;
    throw err;
  } finally {
    clearInterval(poll);
    clearInterval(heartbeatTimer);
    lease?.release();
  }
}

/**
 * The variables a spec names (`engine.env`), with their values from this worker's environment.
 * The values are secrets: they are read here, on the worker, and go nowhere but the trainer.
 */
/** The spec's command, if this worker's configuration allows it (workers/policy.ts). */
function allowedCommand(argv: string[], baseDir: string): string[] {
  checkTrainerCommand(argv, { baseDir, trainersDir: path.join(projectRoot(), 'trainers') });
  return argv;
}

export function namedEnvironment(names: string[]): Record<string, string> {
  const reserved = reservedNames(names);
  if (reserved.length) {
    throw ApplicationFailure.nonRetryable(`engine.env names ${reserved.join(', ')}: dacp's own settings are never handed to a trainer`, 'TrainerNotAllowed');
  }
  const missing = names.filter((name) => process.env[name] === undefined);
  if (missing.length) {
    throw ApplicationFailure.nonRetryable(
      `engine.env names ${missing.join(', ')}, not set on this gpu worker; export ${missing.length > 1 ? 'them' : 'it'} in the worker's environment`,
      'EngineEnvMissing',
    );
  }
  return Object.fromEntries(names.map((name) => [name, process.env[name] as string]));
}
