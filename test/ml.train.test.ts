import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../ml/backend';
import { mixedLmBatches } from '../ml/mixing';
import { GPT, ModelConfig } from '../ml/model';
import { deserializeModel } from '../ml/modelFile';
import { runTraining, Trainer, TrainingDivergedError, TrainSettings, type CheckpointTensors } from '../ml/train';
import { BpeTokenizer, ByteTokenizer } from '../ml/tokenizer';

const tokenizer = new ByteTokenizer();
const config: ModelConfig = { vocabSize: tokenizer.vocabSize, contextLength: 16, dModel: 16, nLayers: 2, nHeads: 2 };
const settings: TrainSettings = {
  totalSteps: 40, batchSize: 4, learningRate: 1e-2, warmupSteps: 3, minLrRatio: 0.1, weightDecay: 0.1, gradClip: 1, seed: 9,
};
const text = tokenizer.encode('the cat sat on the mat. '.repeat(40));
const batches = mixedLmBatches({ domain: text, replay: tokenizer.encode('general text about many things. '.repeat(10)), replayRatio: 0.25, batchSize: 4, contextLength: 16, seed: 2 });
const freshTrainer = (s: Partial<TrainSettings> = {}): Trainer => Trainer.create(GPT.create(config, 1), tokenizer, { ...settings, ...s });
const bytesOf = (weights: Record<string, Float32Array>): Buffer =>
  Buffer.concat(Object.keys(weights).sort().map((name) => Buffer.from((weights[name] as Float32Array).buffer)));

beforeAll(async () => {
  await initBackend('wasm');
});

describe('Trainer', () => {
  test('loss decreases when training on a repetitive text', () => {
    const trainer = freshTrainer();
    const losses = Array.from({ length: 30 }, (_, step) => trainer.trainStep(batches(step)).loss);
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(mean(losses.slice(-5))).toBeLessThan(mean(losses.slice(0, 5)) * 0.6);
    expect(trainer.step).toBe(30);
    trainer.dispose();
  });

  test('tensor count and memory stay flat across steps and checkpoints', () => {
    const trainer = freshTrainer();
    trainer.trainStep(batches(0));
    const after = tf.memory();
    for (let step = 1; step < 4; step++) trainer.trainStep(batches(step));
    trainer.checkpoint();
    trainer.exportModel();
    expect(tf.memory().numTensors).toBe(after.numTensors);
    expect(tf.memory().numBytes).toBe(after.numBytes);
    trainer.dispose();
  });

  test('learning rate re-warms linearly, then decays by cosine to minLrRatio × peak', () => {
    const trainer = freshTrainer({ totalSteps: 13, warmupSteps: 3 });
    const lr = (s: number): number => trainer.learningRateAt(s);
    [1 / 3, 2 / 3, 1].forEach((fraction, step) => expect(lr(step)).toBeCloseTo(1e-2 * fraction, 12));
    expect(lr(3)).toBeCloseTo(1e-2);
    expect(lr(8)).toBeCloseTo(1e-2 * (0.1 + 0.9 * 0.5));
    expect(lr(13)).toBeCloseTo(1e-3);
    for (let s = 3; s < 13; s++) expect(lr(s + 1)).toBeLessThan(lr(s));
    trainer.dispose();
  });

  test.each(['cpu', 'wasm'])('on %s, 3 steps + checkpoint + restore + 3 steps is bitwise equal to 6 straight steps', async (backend) => {
    await initBackend(backend);
    expect(tf.getBackend()).toBe(backend);
    const straight = freshTrainer();
    for (let step = 0; step < 6; step++) straight.trainStep(batches(step));

    const first = freshTrainer();
    for (let step = 0; step < 3; step++) first.trainStep(batches(step));
    const checkpoint = Buffer.from(first.checkpoint({ attempt: '1' }));
    first.dispose();

    const resumed = Trainer.fromCheckpoint(checkpoint);
    expect(resumed.step).toBe(3);
    expect(resumed.meta).toEqual({ attempt: '1' });
    expect(resumed.settings).toEqual(settings);
    while (resumed.step < 6) resumed.trainStep(batches(resumed.step));

    expect(bytesOf(resumed.model.weights()).equals(bytesOf(straight.model.weights()))).toBe(true);
    expect(resumed.checkpoint().equals(straight.checkpoint())).toBe(true);
    straight.dispose();
    resumed.dispose();
    await initBackend('wasm');
  });

  test('a checkpoint keeps a BPE tokenizer', () => {
    const bpe = BpeTokenizer.train(['the cat sat on the mat. '.repeat(20)], { vocabSize: 280 });
    const trainer = Trainer.create(GPT.create({ ...config, vocabSize: bpe.vocabSize }, 1), bpe, settings);
    const resumed = Trainer.fromCheckpoint(trainer.checkpoint());
    expect(resumed.tokenizer.toJSON()).toEqual(bpe.toJSON());
    expect(resumed.tokenizer.encode('the mat')).toEqual(bpe.encode('the mat'));
    [trainer, resumed].forEach((t) => t.dispose());
  });

  test('fromCheckpoint rejects a model file, a flipped byte and a truncated buffer', () => {
    const trainer = freshTrainer();
    trainer.trainStep(batches(0));
    const checkpoint = trainer.checkpoint();
    expect(() => Trainer.fromCheckpoint(trainer.exportModel())).toThrow(/format is "dacp-gpt\/1", expected "dacp-checkpoint\/1"/);
    const flipped = Buffer.from(checkpoint);
    flipped[flipped.length - 1] ^= 0x01;
    expect(() => Trainer.fromCheckpoint(flipped)).toThrow(/corrupted/);
    expect(() => Trainer.fromCheckpoint(checkpoint.subarray(0, checkpoint.length - 100))).toThrow(/truncated/);
    trainer.dispose();
  });

  test('exportModel writes a model file of the current weights', () => {
    const trainer = freshTrainer();
    trainer.trainStep(batches(0));
    const { model } = deserializeModel(trainer.exportModel({ stage: 'dacp' }));
    expect(bytesOf(model.weights()).equals(bytesOf(trainer.model.weights()))).toBe(true);
    model.dispose();
    trainer.dispose();
  });

  test('a diverging step throws and leaves the weights untouched', () => {
    const trainer = freshTrainer();
    const before = bytesOf(trainer.model.weights());
    const bad = batches(0);
    bad.mask = bad.mask.map((row) => row.map(() => Number.NaN));
    expect(() => trainer.trainStep(bad)).toThrow(/training diverged at step 1: loss is NaN.*lower learningRate \(now 0\.01\)/);
    expect(bytesOf(trainer.model.weights()).equals(before)).toBe(true);
    expect(trainer.step).toBe(0);
    trainer.dispose();
  });
});

describe('runTraining', () => {
  test('checkpoints every N steps and at the final step, reporting each step', async () => {
    const trainer = freshTrainer({ totalSteps: 5 });
    const steps: number[] = [];
    const checkpoints: number[] = [];
    const result = await runTraining({
      trainer, batches, checkpointEvery: 2,
      onStep: ({ step }) => { steps.push(step); },
      onCheckpoint: async ({ step, checkpoint }) => { checkpoints.push(step); expect(Trainer.fromCheckpointTensors(checkpoint).step).toBe(step); },
    });
    expect(result).toEqual({ stoppedEarly: false, finalStep: 5, lastLoss: trainer.lastLoss });
    expect(steps).toEqual([1, 2, 3, 4, 5]);
    expect(checkpoints).toEqual([2, 4, 5]);
    trainer.dispose();
  });

  test('a stop request ends after the current step with a checkpoint a retry resumes from', async () => {
    const trainer = freshTrainer({ totalSteps: 6 });
    let saved: CheckpointTensors | undefined;
    const first = await runTraining({
      trainer, batches, checkpointEvery: 10,
      shouldStop: () => trainer.step >= 3,
      onCheckpoint: async ({ checkpoint }) => { saved = checkpoint; },
    });
    expect(first).toMatchObject({ stoppedEarly: true, finalStep: 3 });
    trainer.dispose();

    const resumed = Trainer.fromCheckpointTensors(saved as CheckpointTensors);
    const second = await runTraining({ trainer: resumed, batches, checkpointEvery: 10, onCheckpoint: async () => undefined });
    expect(second).toMatchObject({ stoppedEarly: false, finalStep: 6 });
    resumed.dispose();
  });

  test('an absurd learning rate diverges: the run rejects with TrainingDivergedError naming the step, and never checkpoints it', async () => {
    const trainer = freshTrainer({ totalSteps: 40, learningRate: 1e6, gradClip: 1000, warmupSteps: 1 });
    const steps: number[] = [];
    const checkpointed: number[] = [];
    const failure = await runTraining({
      trainer, batches, checkpointEvery: 1,
      onStep: ({ step }) => { steps.push(step); },
      onCheckpoint: async ({ step }) => { checkpointed.push(step); },
    }).then(() => null, (err: unknown) => err);
    expect(failure).toBeInstanceOf(TrainingDivergedError);
    const diverged = failure as TrainingDivergedError;
    // The step that diverged is the one after the last good step, and it is named in the message.
    expect(diverged.step).toBe(steps.length + 1);
    expect(diverged.step).toBeLessThan(40);
    expect(diverged.message).toMatch(new RegExp(`^training diverged at step ${diverged.step}: .*lower learningRate \\(now 1000000\\)`));
    expect(checkpointed).toEqual(steps);
    expect(trainer.step).toBe(diverged.step - 1);
    trainer.dispose();
  });
});
