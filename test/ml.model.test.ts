import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../ml/backend';
import { generate, instructionScore, perplexity, rougeL } from '../ml/evaluate';
import { formatInstructionPrompt } from '../ml/mixing';
import { crossEntropy, embeddingLookup, GPT, ModelConfig, transpose2d } from '../ml/model';
import { deserializeModel, serializeModel } from '../ml/modelFile';
import { BpeTokenizer, ByteTokenizer } from '../ml/tokenizer';

const tokenizer = new ByteTokenizer();
const config: ModelConfig = { vocabSize: tokenizer.vocabSize, contextLength: 16, dModel: 16, nLayers: 2, nHeads: 2 };
const ids = (rows: number[][]): tf.Tensor2D => tf.tensor2d(rows, undefined, 'int32');

beforeAll(async () => {
  await initBackend('wasm');
});

describe('GPT', () => {
  test('logits map [B,T] ids to [B,T,V]', () => {
    const model = GPT.create(config, 1);
    const logits = model.logits(ids([[1, 2, 3], [4, 5, 6]]));
    expect(logits.shape).toEqual([2, 3, tokenizer.vocabSize]);
    tf.dispose(logits);
    model.dispose();
  });

  test('is causal: a later token does not change earlier logits', () => {
    const model = GPT.create(config, 1);
    const [a, b] = tf.tidy(() => [model.logits(ids([[1, 2, 3, 4]])), model.logits(ids([[1, 2, 3, 99]]))]
      .map((logits) => ({ prefix: Array.from(logits.slice([0, 0, 0], [1, 3, -1]).dataSync()), all: Array.from(logits.dataSync()) })));
    expect(a?.prefix).toEqual(b?.prefix);
    expect(a?.all).not.toEqual(b?.all);
    model.dispose();
  });

  test('create is deterministic per seed and has stable parameter names', () => {
    const [a, b, c] = [GPT.create(config, 7), GPT.create(config, 7), GPT.create(config, 8)];
    expect(a.weights()).toEqual(b.weights());
    expect(a.weights().wte).not.toEqual(c.weights().wte);
    expect([...a.variables.keys()].slice(0, 4)).toEqual(['wte', 'wpe', 'h.0.ln1.gamma', 'h.0.ln1.beta']);
    // 2 embeddings + 12 per block + final norm, tied head adds nothing.
    expect(a.parameterCount()).toBe(258 * 16 + 16 * 16 + 2 * (4 * 16 + 16 * 48 + 48 + 16 * 16 + 16 + 16 * 64 + 64 + 64 * 16 + 16) + 2 * 16);
    [a, b, c].forEach((m) => m.dispose());
  });

  test('fromWeights rejects missing, unexpected and mis-shaped tensors', () => {
    const model = GPT.create(config, 1);
    const weights = model.weights();
    const missing = { ...weights };
    delete missing.wpe;
    expect(() => GPT.fromWeights(config, missing)).toThrow(/missing "wpe"/);
    expect(() => GPT.fromWeights(config, { ...weights, extra: new Float32Array(1) })).toThrow(/unexpected "extra"/);
    expect(() => GPT.fromWeights(config, { ...weights, wte: new Float32Array(3) })).toThrow(/"wte" has 3 values/);
    expect(() => GPT.create({ ...config, nHeads: 3 }, 1)).toThrow(/dModel must be divisible by nHeads/);
    model.dispose();
  });

  test('a model file round trip gives bitwise identical logits, tokenizer and metadata', () => {
    const model = GPT.create(config, 3);
    const file = serializeModel(model, tokenizer, { run: 'r-1' });
    const restored = deserializeModel(file);
    expect(restored.meta).toEqual({ run: 'r-1' });
    expect(restored.model.config).toEqual(config);
    expect(restored.tokenizer.toJSON()).toEqual(tokenizer.toJSON());
    const input = ids([[5, 6, 7, 8, 9]]);
    const [a, b] = [model.logits(input), restored.model.logits(input)];
    expect(Buffer.from(a.dataSync().buffer).equals(Buffer.from(b.dataSync().buffer))).toBe(true);
    tf.dispose([a, b, input]);
    model.dispose();
    restored.model.dispose();
  });

  test('a model file stores a BPE tokenizer and rejects one whose vocabulary does not match', () => {
    const bpe = BpeTokenizer.train(['the cat sat on the mat; the cat sat on the hat'], { vocabSize: 270 });
    const model = GPT.create({ ...config, vocabSize: bpe.vocabSize }, 3);
    const restored = deserializeModel(serializeModel(model, bpe));
    expect(restored.tokenizer).toBeInstanceOf(BpeTokenizer);
    expect(restored.tokenizer.toJSON()).toEqual(bpe.toJSON());
    expect(restored.tokenizer.encode('the cat')).toEqual(bpe.encode('the cat'));
    expect(() => serializeModel(model, tokenizer)).not.toThrow();
    expect(() => deserializeModel(serializeModel(model, tokenizer))).toThrow(/vocabSize \d+ does not match the tokenizer's 258/);
    [model, restored.model].forEach((m) => m.dispose());
  });

  test('a model file with a flipped weight byte is rejected', () => {
    const model = GPT.create(config, 3);
    const file = Buffer.from(serializeModel(model, tokenizer));
    file[file.length - 3] ^= 0x40;
    expect(() => deserializeModel(file)).toThrow(/does not match its sha256/);
    expect(() => serializeModel(model, tokenizer, { format: 'mine' })).toThrow(/reserved/);
    model.dispose();
  });
});

describe('embedding lookup on the wasm backend', () => {
  test('its gradient is the per-id sum of upstream gradients (tf.gather grad is missing on wasm)', () => {
    expect(tf.getBackend()).toBe('wasm');
    const table = tf.variable(tf.randomNormal([5, 3], 0, 1, 'float32', 1));
    const tokenIds = ids([[0, 2, 2], [4, 2, 0]]);
    const upstream = tf.tensor3d(Array.from({ length: 18 }, (_, i) => i), [2, 3, 3]);
    const { value, grads } = tf.variableGrads(() => embeddingLookup(table, tokenIds).mul(upstream).sum() as tf.Scalar, [table]);
    const grad = Array.from(grads[table.name]?.dataSync() ?? []);
    const up = Array.from(upstream.dataSync());
    const row = (positions: number[]): number[] => [0, 1, 2].map((c) => positions.reduce((s, p) => s + (up[p * 3 + c] as number), 0));
    expect(grad).toEqual([...row([0, 5]), 0, 0, 0, ...row([1, 2, 4]), 0, 0, 0, ...row([3])]);
    tf.dispose([table, tokenIds, upstream, value, grads[table.name] as tf.Tensor]);
  });
});

describe('kernels chosen for speed', () => {
  test('transpose2d equals tf.transpose, tiled or not', () => {
    for (const shape of [[32, 48], [5, 3]] as [number, number][]) {
      const x = tf.tensor2d(Array.from({ length: shape[0] * shape[1] }, (_, i) => i), shape);
      const [fast, plain] = [transpose2d(x), x.transpose()];
      expect(fast.shape).toEqual(plain.shape);
      expect(Array.from(fast.dataSync())).toEqual(Array.from(plain.dataSync()));
      tf.dispose([x, fast, plain]);
    }
  });

  test('crossEntropy matches −logSoftmax at the target, and its gradient softmax − oneHot', () => {
    const logits = tf.tensor2d([[2, -1, 0.5, 30], [0, 0, 0, 0], [-50, 40, 1, 2]]);
    const targets = tf.tensor1d([1, 2, 0], 'int32');
    const variable = tf.variable(logits, true, 'ce-logits');
    const { value, grads } = tf.variableGrads(() => crossEntropy(variable, targets).sum() as tf.Scalar, [variable]);
    const expected = tf.tidy(() => tf.oneHot(targets, 4).toFloat().mul(tf.logSoftmax(logits)).sum(-1).neg().dataSync());
    const got = tf.tidy(() => crossEntropy(logits, targets).dataSync());
    got.forEach((nll, i) => expect(nll).toBeCloseTo(expected[i] as number, 4));
    const expectedGrad = tf.tidy(() => Array.from(tf.softmax(logits).sub(tf.oneHot(targets, 4).toFloat()).dataSync()));
    Array.from(grads['ce-logits']?.dataSync() ?? []).forEach((g, i) => expect(g).toBeCloseTo(expectedGrad[i] as number, 6));
    tf.dispose([logits, targets, variable, value, ...Object.values(grads)]);
  });
});

describe('evaluation', () => {
  test('a fresh model has perplexity of the order of the vocabulary size', async () => {
    const model = GPT.create(config, 1);
    const text = tokenizer.encode('Continual pretraining keeps small models current. '.repeat(4));
    const result = await perplexity(model, text);
    expect(result.tokens).toBe(text.length - 1);
    expect(result.perplexity).toBeGreaterThan(258 / 3);
    expect(result.perplexity).toBeLessThan(258 * 3);
    expect((await perplexity(model, text, { maxWindows: 2 })).tokens).toBe(32);
    model.dispose();
  });

  test('generation is greedy by default, seeded when sampling, and bounded by maxNewTokens', async () => {
    const model = GPT.create(config, 1);
    const greedy = await generate(model, tokenizer, 'abc', { maxNewTokens: 5 });
    expect(await generate(model, tokenizer, 'abc', { maxNewTokens: 5 })).toBe(greedy);
    const sampled = await generate(model, tokenizer, 'abc', { maxNewTokens: 20, temperature: 1, seed: 4 });
    expect(await generate(model, tokenizer, 'abc', { maxNewTokens: 20, temperature: 1, seed: 4 })).toBe(sampled);
    expect(tokenizer.encode(sampled).length).toBeLessThanOrEqual(20 * 3);
    expect(await generate(model, tokenizer, 'abc', { maxNewTokens: 5, temperature: 1, topK: 1, seed: 4 })).toBe(greedy);
    model.dispose();
  });

  test('instructionScore shows a greedy and a seeded sampled generation per pair, the same on every call', async () => {
    const model = GPT.create(config, 1);
    const pairs = [{ prompt: 'Say hi', response: 'hi' }, { prompt: 'Count', response: '1 2 3' }];
    const first = await instructionScore(model, tokenizer, pairs, { maxNewTokens: 12 });
    const again = await instructionScore(model, tokenizer, [...pairs].reverse(), { maxNewTokens: 12 });
    expect(first.samples.map((sample) => Object.keys(sample).sort())).toEqual([0, 1].map(() => ['expected', 'generated', 'prompt', 'sampled']));
    expect(again.samples.reverse()).toEqual(first.samples);
    expect(first.samples[0]?.generated).toBe(await generate(model, tokenizer, formatInstructionPrompt('Say hi'), { maxNewTokens: 12 }));
    expect(first.samples.some((sample) => sample.sampled !== sample.generated)).toBe(true);
    model.dispose();
  });

  test('instructionScore reports bounded metrics and samples without leaking tensors', async () => {
    const model = GPT.create(config, 1);
    const pairs = [{ prompt: 'Say hi', response: 'hi' }, { prompt: 'Count', response: '1 2 3' }, { prompt: 'x', response: 'y' }];
    const before = tf.memory().numTensors;
    const score = await instructionScore(model, tokenizer, pairs, { maxNewTokens: 4, maxPairs: 2 });
    expect(tf.memory().numTensors).toBe(before);
    expect(score.samples).toHaveLength(2);
    expect(score.responsePerplexity).toBeGreaterThan(1);
    for (const metric of [score.tokenAccuracy, score.exactMatch, score.rougeL]) expect(metric).toBeGreaterThanOrEqual(0);
    model.dispose();
  });

  test('ROUGE-L is the F1 of the longest common word subsequence', () => {
    expect(rougeL('the cat sat', 'the cat sat')).toBe(1);
    expect(rougeL('the dog sat down', 'the cat sat')).toBeCloseTo((2 * 0.5 * (2 / 3)) / (0.5 + 2 / 3));
    expect(rougeL('', 'x')).toBe(0);
  });
});
