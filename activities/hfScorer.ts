import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { ApplicationFailure } from '@temporalio/common';
import { folderFilesOfModelFile, writeFolder } from '../ml/hfFolder';
import type { GenerateOptions, Row, Scorer } from '../ml/scorer';
import type { ArtifactRef } from '../schemas/pipeline';
import { projectRoot } from '../cli/paths';
import type { ActivityDeps } from './context';
import { hfPython } from './hfEngine';

/**
 * The Hugging Face engine's evaluator (trainers/hf/dacp_hf_eval.py) as Scorers: one Python process
 * per evaluation, which holds the models it is asked to load (on the slot's GPU where there is one)
 * and answers forward-pass requests over JSON lines. dacp keeps the tokenizing, the rows and the
 * arithmetic of every figure (ml/evaluate.ts, ml/choices.ts), so both engines report the same
 * figures in the same way.
 */
export class HfEvaluator {
  private readonly lines: AsyncIterator<string>;
  private queue: Promise<unknown> = Promise.resolve();
  private exited: string | null = null;
  /** Settles (never rejects) when the evaluator has exited or could not start. */
  private readonly gone: Promise<void>;

  private constructor(
    private readonly deps: ActivityDeps,
    private readonly child: ChildProcess,
    private readonly workDir: string,
    private readonly release: () => void,
    private readonly precision: 'auto' | 'fp32' | 'bf16',
    private readonly signal?: AbortSignal,
  ) {
    this.lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
    this.gone = new Promise<void>((resolve) => {
      child.once('exit', (code, sig) => {
        this.exited ??= `the evaluator exited (${sig ?? `code ${code}`})`;
        resolve();
      });
      child.once('error', (error) => {
        this.exited ??= `the evaluator could not run (${error.message})`;
        resolve();
      });
    });
    child.stdin!.on('error', () => undefined); // a dead evaluator is reported by the next request
    // A cancelled activity stops its evaluator at once: it would hold the slot's GPU to the end.
    signal?.addEventListener('abort', () => child.kill('SIGKILL'), { once: true });
  }

  /**
   * Starts the evaluator for one evaluation of `runId`, on a slot of the gpu worker; its stderr goes
   * to the run's log folder. `signal` (the activity's cancellation) kills it.
   */
  static async start(deps: ActivityDeps, runId: string, what: string, o: { precision?: 'auto' | 'fp32' | 'bf16'; signal?: AbortSignal } = {}): Promise<HfEvaluator> {
    const python = hfPython();
    if (!existsSync(python)) {
      throw ApplicationFailure.nonRetryable(
        `engine "hf" evaluates with the project's Python at ${python}; run \`bash scripts/setup-python.sh\` on this gpu worker's host (or set DACP_PYTHON)`,
        'EngineUnavailable',
      );
    }
    const logsDir = deps.logsDir ?? path.join(deps.store.root, '..', 'logs');
    const workDir = path.join(logsDir, runId, 'eval', `${what}-${process.pid}-${Date.now()}`);
    await fs.mkdir(workDir, { recursive: true });
    const lease = await deps.slots?.acquire();
    try {
      const devices = lease?.slot.devices ?? [];
      const stderr = createWriteStream(path.join(logsDir, runId, `eval-${what}.stderr.log`), { flags: 'a' });
      // A log that cannot be written must not take the worker down with an unhandled 'error'.
      stderr.on('error', () => undefined);
      const child = spawn(python, [path.join(projectRoot(), 'trainers', 'hf', 'dacp_hf_eval.py')], {
        stdio: ['pipe', 'pipe', 'pipe'],
        env: {
          ...process.env,
          // It watches this pid and exits with the worker; it sees only its slot's GPUs.
          DACP_PARENT_PID: String(process.pid),
          ...(devices.length ? { CUDA_VISIBLE_DEVICES: devices.join(',') } : {}),
        },
      });
      child.stderr!.pipe(stderr);
      return new HfEvaluator(deps, child, workDir, () => lease?.release(), o.precision ?? 'auto', o.signal);
    } catch (error) {
      lease?.release();
      await fs.rm(workDir, { recursive: true, force: true }).catch(() => undefined);
      throw error;
    }
  }

  /** Writes the model as a folder and loads it; the Scorer answers for it until `close`. */
  async load(name: string, ref: ArtifactRef, contextLength: number): Promise<Scorer> {
    const dir = path.join(this.workDir, name);
    await writeFolder(dir, folderFilesOfModelFile(await this.deps.store.getSafetensors(ref)));
    await this.request({ op: 'load', name, modelDir: dir, precision: this.precision });
    // The folder was only for loading: the evaluator holds the model now.
    await fs.rm(dir, { recursive: true, force: true });
    const ask = <T>(body: Record<string, unknown>) => this.request<T>({ ...body, name });
    return {
      contextLength,
      nll: (rows: Row[]) => ask<{ nll: number; count: number; correct: number }>({ op: 'nll', rows }).then((a) => ({ nll: Number(a.nll), count: Number(a.count), correct: Number(a.correct) })),
      logLikelihoods: (rows: Row[]) => ask<{ values: (number | string)[] }>({ op: 'loglik', rows }).then((a) => a.values.map(Number)),
      generate: (promptIds: number[], o: GenerateOptions & { eosId: number }) =>
        ask<{ ids: number[] }>({ op: 'generate', prompt: promptIds, contextLength, ...o }).then((a) => a.ids),
    };
  }

  async unload(name: string): Promise<void> {
    await this.request({ op: 'unload', name });
  }

  async close(): Promise<void> {
    this.child.stdin!.end();
    if (this.child.exitCode === null && this.child.signalCode === null && this.exited === null) {
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
      await this.gone;
      clearTimeout(timer);
    }
    this.release();
    await fs.rm(this.workDir, { recursive: true, force: true });
  }

  /** One request at a time, in order; an answer with `error` fails the evaluation once (it would fail again). */
  private request<T>(body: Record<string, unknown>): Promise<T> {
    const next = this.queue.then(async () => {
      if (this.exited) throw ApplicationFailure.retryable(`hf evaluator: ${this.exited}; see the run's eval-*.stderr.log`, 'EvaluatorFailed');
      if (this.signal?.aborted) throw ApplicationFailure.retryable('hf evaluator: the evaluation was cancelled', 'EvaluatorCancelled');
      this.child.stdin!.write(`${JSON.stringify(body)}\n`);
      // An answer, or the evaluator's end (killed, crashed, cancelled): never a wait without end.
      const line = await Promise.race([this.lines.next(), this.gone.then(() => ({ done: true as const, value: undefined }))]);
      if (line.done) throw ApplicationFailure.retryable(`hf evaluator: ${this.exited ?? 'closed its output'} during "${String(body.op)}"; see the run's eval-*.stderr.log`, 'EvaluatorFailed');
      const answer = JSON.parse(line.value) as T & { error?: string };
      if (answer.error) throw ApplicationFailure.nonRetryable(`hf evaluator: "${String(body.op)}" failed: ${answer.error}`, 'EvaluatorFailed');
      return answer as T;
    });
    this.queue = next.catch(() => undefined);
    return next;
  }
}
