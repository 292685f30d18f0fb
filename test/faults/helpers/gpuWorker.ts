import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { eventually } from '../../helpers/temporal';

const repoRoot = path.resolve(__dirname, '..', '..', '..');
const dacpBin = path.join(repoRoot, 'bin', 'dacp.js');
const compiledTrainer = path.join(repoRoot, 'dist', 'ml', 'train.js');

/**
 * A preload for the worker process that only observes: after every optimizer step it writes
 * `dacp-probe step=<n> of=<total>` to fd 1 with a synchronous write, so the line is in the pipe
 * before the next step starts. The test can then SIGKILL at an exact step and know, after the
 * process is gone, the last step it completed. Nothing in the worker reads or reports this; the
 * status query only sees progress every 2 s and at checkpoints, too coarse to aim a kill.
 */
function probeSource(): string {
  return [
    "'use strict';",
    "const { writeSync } = require('node:fs');",
    `const { Trainer } = require(${JSON.stringify(compiledTrainer)});`,
    'const trainStep = Trainer.prototype.trainStep;',
    'Trainer.prototype.trainStep = function probedTrainStep(batch) {',
    '  const result = trainStep.call(this, batch);',
    "  writeSync(1, `dacp-probe step=${this.step} of=${this.settings.totalSteps}\\n`);",
    '  return result;',
    '};',
    '',
  ].join('\n');
}

/** Writes the step probe into `dir` and returns its path (for `node --require`). */
export function writeStepProbe(dir: string): string {
  if (!existsSync(compiledTrainer)) throw new Error('run `npm run build` first: the gpu worker runs from dist/');
  const file = path.join(dir, 'dacp-step-probe.js');
  writeFileSync(file, probeSource());
  return file;
}

export interface ProbedStep {
  step: number;
  totalSteps: number;
  /** Date.now() when the test read the line. */
  at: number;
}

export interface KillRecord {
  /** Pid of the killed worker. */
  pid: number;
  /** The step the kill was aimed at. */
  target: number;
  /** The last step the worker completed before it died (from the probe, read after exit). */
  killedAtStep: number;
  /** Date.now() when SIGKILL was sent. */
  killedAtMs: number;
}

const PROBE_LINE = /^dacp-probe step=(\d+) of=(\d+)$/;

/** A `dacp worker --queue gpu` process, as an operator runs it, with the step probe preloaded. */
export class GpuWorkerProcess {
  readonly steps: ProbedStep[] = [];
  readonly ready: Promise<void>;
  readonly exited: Promise<void>;
  private readonly child: ChildProcess;
  private output = '';
  private pending = '';
  private aim: { totalSteps: number; target: number } | null = null;
  private killedAtMs: number | null = null;

  /** `prefix` runs the worker through another command, e.g. `ip netns exec gpu1` (which execs it: the pid is the worker's). */
  constructor(env: NodeJS.ProcessEnv, probeFile: string, prefix: string[] = [], queue: 'gpu' | 'control' = 'gpu') {
    const argv = [process.execPath, '--require', probeFile, dacpBin, 'worker', '--queue', queue];
    this.child = spawn(prefix[0] ?? argv[0], [...prefix.slice(1), ...(prefix.length ? argv : argv.slice(1))], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    // 'close', not 'exit': every line the worker wrote before it died has been read by then.
    this.exited = new Promise((resolve) => this.child.once('close', () => resolve()));
    this.ready = new Promise<void>((resolve, reject) => {
      this.child.stdout!.on('data', (chunk: Buffer) => {
        this.read(chunk.toString('utf8'));
        if (this.output.includes('polling')) resolve();
      });
      this.child.once('exit', (code, signal) => reject(new Error(`gpu worker exited (${code ?? signal}) before polling: ${this.output}`)));
    });
    this.ready.catch(() => undefined);
    this.child.stderr!.on('data', (chunk: Buffer) => {
      this.output += chunk.toString('utf8');
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Everything the worker wrote except probe lines (its logs, for failure messages). */
  get log(): string {
    return this.output;
  }

  /** The newest step seen in a loop of `totalSteps` steps, or null. */
  lastStep(totalSteps: number): number | null {
    for (let i = this.steps.length - 1; i >= 0; i--) if (this.steps[i].totalSteps === totalSteps) return this.steps[i].step;
    return null;
  }

  /**
   * SIGKILL the worker as soon as the probe reports step ≥ `target` of a `totalSteps`-step loop
   * (from the stdout handler itself, so within a fraction of a step), then wait for it to exit.
   * Only steps reported after this call count: arm it before the run's training starts.
   */
  async killAtStep(totalSteps: number, target: number, timeoutMs = 180_000): Promise<KillRecord> {
    if (this.aim) throw new Error(`gpu worker ${this.pid} is already aimed at step ${this.aim.target}`);
    this.aim = { totalSteps, target };
    await eventually(async () => (this.killedAtMs !== null ? true : undefined), `the gpu worker to reach step ${target}/${totalSteps}`, timeoutMs, 20);
    await this.exited;
    return { pid: this.pid, target, killedAtStep: this.lastStep(totalSteps) ?? 0, killedAtMs: this.killedAtMs! };
  }

  /** Send a signal now (SIGSTOP/SIGCONT to freeze the worker, SIGKILL to crash it). */
  signal(signal: NodeJS.Signals): void {
    if (this.alive) this.child.kill(signal);
  }

  /** SIGKILL (if still running) and wait for the exit. */
  async stop(): Promise<void> {
    if (this.alive) {
      this.child.kill('SIGCONT');
      this.child.kill('SIGKILL');
    }
    await this.exited;
  }

  private fire(): void {
    if (this.killedAtMs !== null) return;
    this.killedAtMs = Date.now();
    this.child.kill('SIGKILL');
  }

  private read(text: string): void {
    const lines = (this.pending + text).split('\n');
    this.pending = lines.pop() ?? '';
    for (const line of lines) {
      const match = PROBE_LINE.exec(line);
      if (!match) {
        this.output += line + '\n';
        continue;
      }
      const probed = { step: Number(match[1]), totalSteps: Number(match[2]), at: Date.now() };
      this.steps.push(probed);
      if (this.aim && probed.totalSteps === this.aim.totalSteps && probed.step >= this.aim.target) this.fire();
    }
  }
}
