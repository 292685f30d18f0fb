import { existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { deserializeModel } from '../ml/modelFile';
import type { ModelConfig } from '../ml/model';
import type { TokenizerJson } from '../ml/tokenizer';
import type { TrainSettings } from '../ml/train';
import {
  runExternalTrainer,
  TrainerExitError,
  TrainerProtocolError,
  TrainerStopped,
  writeSftFile,
  writeTokenFile,
  type TrainerJob,
} from '../ml/externalTrainer';
import type { ArtifactRef } from '../schemas/pipeline';
import type { EngineSpec } from '../schemas/runSpec';
import type { EngineOutcome } from './builtinEngine';
import type { ActivityDeps } from './context';
import type { TrainingSession } from './trainingSession';

export type TrainingData =
  | { kind: 'lm'; domain: number[]; replay: number[]; replayRatio: number }
  | { kind: 'sft'; examples: { prompt: number[]; response: number[] }[]; padId: number; eosId: number };

type CommandEngine = Extract<EngineSpec, { kind: 'command' }>;

/** Arguments naming files beside the spec are made absolute; everything else passes as written. */
function resolveCommand(command: string[], baseDir: string): string[] {
  return command.map((arg) => (!path.isAbsolute(arg) && existsSync(path.join(baseDir, arg)) ? path.join(baseDir, arg) : arg));
}

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
    modelConfig: ModelConfig;
    tokenizer: TokenizerJson;
    data: TrainingData;
    settings: TrainSettings;
    checkpointEvery: number;
  },
): Promise<EngineOutcome> {
  const { runId, stage, round } = session.job;
  const resume = await session.begin(`command:${path.basename(o.engine.command[0])}`);
  const logsDir = deps.logsDir ?? path.join(deps.store.root, '..', 'logs');
  const workDir = path.join(logsDir, runId, 'work', `${stage}-${round}-attempt-${session.attempt}`);
  await fs.rm(workDir, { recursive: true, force: true });
  await fs.mkdir(path.join(workDir, 'checkpoints'), { recursive: true });

  let data: TrainerJob['data'];
  if (o.data.kind === 'lm') {
    await writeTokenFile(path.join(workDir, 'domain.i32'), o.data.domain);
    await writeTokenFile(path.join(workDir, 'replay.i32'), o.data.replay);
    data = { kind: 'lm', domain: path.join(workDir, 'domain.i32'), replay: path.join(workDir, 'replay.i32'), replayRatio: o.data.replayRatio };
  } else {
    await writeSftFile(path.join(workDir, 'sft.jsonl'), o.data.examples);
    data = { kind: 'sft', examples: path.join(workDir, 'sft.jsonl'), padId: o.data.padId, eosId: o.data.eosId };
  }
  const initModel = o.initModel ? deps.store.pathOf(o.initModel.uri) : null;
  const job: TrainerJob = {
    protocol: 'dacp-trainer/1',
    stage,
    initModel,
    modelConfig: o.modelConfig,
    tokenizer: o.tokenizer,
    data,
    settings: o.settings,
    checkpointEvery: o.checkpointEvery,
    checkpointDir: path.join(workDir, 'checkpoints'),
    resumeFrom: resume ? deps.store.pathOf(resume.uri) : null,
    outputModel: path.join(workDir, 'model.safetensors'),
  };

  // Cancellation and worker shutdown both ask the trainer to checkpoint and stop (SIGTERM, then SIGKILL).
  const abort = new AbortController();
  const poll = setInterval(() => session.stopRequested() && abort.abort(), 250);
  const heartbeatTimer = setInterval(() => session.heartbeat(), 1_000);
  const stderrFile = path.join(logsDir, runId, `${stage}-${round}-attempt-${session.attempt}.stderr.log`);
  try {
    const { done } = await runExternalTrainer({
      command: resolveCommand(o.engine.command, o.baseDir),
      job,
      workDir,
      env: o.engine.env,
      stderrFile,
      signal: abort.signal,
      killGraceMs: o.engine.killGraceSeconds * 1000,
      onProgress: (e) => session.progress(e.step, e.loss, { tokens: e.tokens }),
      onCheckpoint: async (e) => {
        await session.checkpointSaved(e.step, session.lastLoss, await fs.readFile(e.path), path.extname(e.path).slice(1) || 'ckpt');
      },
    });
    const bytes = await fs.readFile(done.model);
    // The trainer's model must be a valid dacp model (format, config, tokenizer, tensor digest).
    try {
      deserializeModel(bytes).model.dispose();
    } catch (err) {
      throw ApplicationFailure.nonRetryable(`the trainer wrote an invalid model ${done.model}: ${(err as Error).message}`, 'TrainerProtocolError');
    }
    const model = await deps.store.put('models', bytes, 'safetensors');
    return { model, finalStep: done.step, finalLoss: done.loss, backend: `command:${path.basename(o.engine.command[0])}` };
  } catch (err) {
    if (abort.signal.aborted) throw session.stopError(session.step);
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
  }
}
