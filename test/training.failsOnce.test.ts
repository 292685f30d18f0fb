import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { parseTrainerLine, reportedDivergence } from '../ml/externalTrainer';
import { ByteTokenizer } from '../ml/tokenizer';
import type { RunSpec } from '../schemas/runSpec';
import { startTrainingBench, type TrainingBench } from './helpers/trainingBench';

/**
 * Training that fails for a reason fails once: a diverged loss is a non-retryable failure of type
 * TrainingDiverged that names the stage and the step, on both engines.
 */

const root = path.resolve(__dirname, '..');
const python = path.join(root, '.tools', 'venv', 'bin', 'python');
const pythonTrainer = path.join(root, 'trainers', 'hf', 'dacp_hf_trainer.py');

const text = (i: number) => `Document ${i} says the cat sat on the mat and the dog sat on the log. `.repeat(4);

let bench: TrainingBench;

beforeAll(async () => {
  bench = await startTrainingBench();
});

afterAll(async () => {
  await bench?.stop();
});

/** A spec whose dacp learning rate no schema would allow: training really diverges within a few steps. */
function absurd(spec: RunSpec): RunSpec {
  return { ...spec, dacp: { ...spec.dacp, learningRate: 1e6, gradClip: 1000, warmupFraction: 0 } };
}

async function divergingRun(engine: RunSpec['engine']) {
  const tokenizer = new ByteTokenizer();
  const runId = await bench.newRun('diverge');
  const spec = absurd({ ...bench.spec({ dacp: { steps: 40, batchSize: 4, learningRate: 1e-3, checkpointEvery: 5 } }), engine });
  const input = {
    runId,
    round: 0,
    spec,
    baseDir: root,
    replayRatio: 0.25,
    baseModel: await bench.baseModel(tokenizer),
    domain: await bench.dataset('domain', Array.from({ length: 20 }, (_, i) => text(i))),
    replay: await bench.dataset('replay', Array.from({ length: 20 }, (_, i) => text(100 + i))),
  };
  return { runId, attempt: await bench.attempt(() => bench.activities.continualPretrain(input)) };
}

function expectDiverged(error: unknown): { step: number } {
  expect(error).toBeInstanceOf(ApplicationFailure);
  const failure = error as ApplicationFailure;
  expect(failure.type).toBe('TrainingDiverged');
  expect(failure.nonRetryable).toBe(true);
  const match = /^dacp training diverged at step (\d+)\b.*lower learningRate \(now 1000000\).*"dacp" section/.exec(failure.message);
  expect(match).not.toBeNull();
  const step = Number(match?.[1]);
  expect(failure.details?.[0]).toMatchObject({ stage: 'dacp', round: 0, step });
  return { step };
}

describe('a diverged loss fails the training activity once, naming the stage and the step', () => {
  test('the built-in engine: non-retryable TrainingDiverged at the step whose loss stopped being finite', async () => {
    const { runId, attempt } = await divergingRun({ kind: 'builtin' });
    const { step } = expectDiverged(attempt.error);
    expect(step).toBeGreaterThan(0);
    expect(step).toBeLessThanOrEqual(40);
    // Only finite states were checkpointed: every checkpoint lies before the diverged step.
    const { rows } = await bench.db.pool.query('SELECT max(step)::int AS step FROM checkpoints WHERE run_id = $1', [runId]);
    expect(rows[0].step ?? 0).toBeLessThan(step);
  });

  test('the command engine: a PyTorch trainer reports divergence and the attempt fails the same way', async () => {
    if (!existsSync(python)) throw new Error('no .tools/venv: run `bash scripts/setup-python.sh` (CI does)');
    process.env.DACP_TORCH_THREADS = '1';
    const { attempt } = await divergingRun(bench.spec({ engine: { kind: 'command', command: [python, pythonTrainer] } }).engine);
    const { step } = expectDiverged(attempt.error);
    expect(step).toBeLessThanOrEqual(40);
    expect((attempt.error as Error).message).toMatch(/the trainer reports/);
  }, 120_000);

  test('the command engine: a progress event with a NaN loss stops the trainer and fails the attempt at that step', async () => {
    // A trainer that reports a NaN loss at step 3 the way Python's json.dumps writes it, then keeps running.
    const dir = mkdtempSync(path.join(os.tmpdir(), 'dacp-nan-trainer-'));
    const script = path.join(dir, 'nan-trainer.js');
    writeFileSync(script, [
      "process.stdout.write('{\"event\": \"progress\", \"step\": 1, \"loss\": 5.5, \"tokens\": 8}\\n');",
      "process.stdout.write('{\"event\": \"progress\", \"step\": 3, \"loss\": NaN, \"tokens\": 24}\\n');",
      'setInterval(() => undefined, 1000);',
    ].join('\n'));
    // A script outside the spec's folder runs only where the worker's configuration allows it (docs/security.md).
    process.env.DACP_TRAINER_COMMANDS = JSON.stringify([[process.execPath, script]]);
    const { attempt } = await divergingRun(bench.spec({ engine: { kind: 'command', command: [process.execPath, script] } }).engine);
    delete process.env.DACP_TRAINER_COMMANDS;
    const { step } = expectDiverged(attempt.error);
    expect(step).toBe(3);
    expect((attempt.error as Error).message).toMatch(/loss is NaN/);
    rmSync(dir, { recursive: true, force: true });
    // The trainer never ends on its own: settling within the timeout shows the attempt stopped it.
  }, 60_000);
});

describe('the trainer protocol carries a loss that is not a number', () => {
  test.each([
    ['JavaScript null', '{"event":"progress","step":3,"loss":null,"tokens":8}', Number.NaN],
    ["Python's bare NaN", '{"event": "progress", "step": 3, "loss": NaN, "tokens": 8}', Number.NaN],
    ["Python's bare -Infinity", '{"event": "progress", "step": 3, "loss": -Infinity, "tokens": 8}', Number.NEGATIVE_INFINITY],
    ['the string "Infinity"', '{"event":"progress","step":3,"loss":"Infinity","tokens":8}', Number.POSITIVE_INFINITY],
  ])('%s is read as a non-finite loss', (_, line, loss) => {
    expect(parseTrainerLine(line)).toEqual({ event: 'progress', step: 3, loss, tokens: 8 });
  });

  test('NaN inside a string is left alone, and a bare NaN elsewhere is still a protocol error', () => {
    expect(parseTrainerLine('{"event":"log","level":"warn","message":"loss: NaN"}')).toEqual({ event: 'log', level: 'warn', message: 'loss: NaN' });
    expect(() => parseTrainerLine('{"event":"progress","step":NaN,"loss":1,"tokens":8}')).toThrow(/"progress" event is invalid \(step: /);
  });

  test("a trainer's stderr saying it diverged names the step; other failures name none", () => {
    expect(reportedDivergence('loading\ndacp-trainer: training diverged at step 12: loss nan, gradient norm nan; lower learningRate\n')).toEqual({
      step: 12,
      line: 'dacp-trainer: training diverged at step 12: loss nan, gradient norm nan; lower learningRate',
    });
    expect(reportedDivergence('Traceback (most recent call last):\nMemoryError')).toBeNull();
  });
});
