import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../ml/backend';
import { createModel } from '../ml/families';
import type { LlamaConfig } from '../ml/llama';
import { batchedMatMul, layerNorm, matMul, matMulTransposed, rmsNorm, sigmoidGate } from '../ml/model';

/**
 * The kernels written for speed (hand-written gradients, one BatchMatMul per product on the native
 * backend) against tfjs autodiff of the textbook formulas, on every backend this host has. A whole
 * model's gradient is then compared across backends.
 */

function nativeAvailable(): string | null {
  try {
    require.resolve('@tensorflow/tfjs-node');
    return null;
  } catch {
    return 'tfjs-node is not built here (run `bash scripts/build-tfjs-node.sh`)';
  }
}

const backends = ['tensorflow', 'wasm', 'cpu'] as const;

function seeded(shape: number[], seed: number): tf.Tensor {
  return tf.randomNormal(shape, 0, 1, 'float32', seed);
}

/** Value and gradients of sum(f(inputs) · upstream) with respect to every input. */
function gradientsOf(f: (...xs: tf.Tensor[]) => tf.Tensor, inputs: tf.Tensor[], seed: number): { value: number[]; grads: number[][] } {
  return tf.tidy(() => {
    const out = f(...inputs);
    const upstream = seeded(out.shape, seed);
    const g = tf.grads((...xs: tf.Tensor[]) => f(...xs).mul(upstream).sum());
    return { value: Array.from(out.dataSync()), grads: g(inputs).map((t) => Array.from(t.dataSync())) };
  });
}

function expectClose(got: number[], want: number[], tolerance: number, what: string): void {
  expect(got.length).toBe(want.length);
  const scale = Math.max(1, ...want.map(Math.abs));
  const worst = Math.max(...got.map((x, i) => Math.abs(x - (want[i] as number))));
  if (worst > tolerance * scale) throw new Error(`${what}: largest difference ${worst} exceeds ${tolerance * scale}`);
}

describe.each(backends)('kernels on %s', (backend) => {
  const skip = backend === 'tensorflow' ? nativeAvailable() : null;
  const it = skip ? test.skip : test;
  if (skip) test.skip(`skipped: ${skip}`, () => undefined);

  beforeAll(async () => {
    if (!skip) await initBackend(backend);
  });

  const cases: { name: string; fast: (...xs: tf.Tensor[]) => tf.Tensor; plain: (...xs: tf.Tensor[]) => tf.Tensor; shapes: number[][] }[] = [
    {
      name: 'layerNorm',
      fast: (x, g, b) => layerNorm(x as tf.Tensor3D, g as tf.Tensor, b as tf.Tensor, 1e-5),
      plain: (x, g, b) => {
        const { mean, variance } = tf.moments(x as tf.Tensor, -1, true);
        return (x as tf.Tensor).sub(mean).mul(variance.add(1e-5).rsqrt()).mul(g as tf.Tensor).add(b as tf.Tensor);
      },
      shapes: [[2, 5, 8], [8], [8]],
    },
    {
      name: 'rmsNorm',
      fast: (x, w) => rmsNorm(x as tf.Tensor3D, w as tf.Tensor, 1e-6),
      plain: (x, w) => (x as tf.Tensor).mul((x as tf.Tensor).square().mean(-1, true).add(1e-6).rsqrt()).mul(w as tf.Tensor),
      shapes: [[2, 5, 8], [8]],
    },
    {
      name: 'GELU (tanh form)',
      fast: (x) => sigmoidGate(x as tf.Tensor, Math.sqrt(8 / Math.PI), 0.044715 * Math.sqrt(8 / Math.PI)),
      plain: (x) => {
        const t = x as tf.Tensor;
        return t.mul(0.5).mul(t.add(t.pow(3).mul(0.044715)).mul(Math.sqrt(2 / Math.PI)).tanh().add(1));
      },
      shapes: [[3, 4, 6]],
    },
    {
      name: 'SiLU',
      fast: (x) => sigmoidGate(x as tf.Tensor, 1, 0),
      plain: (x) => (x as tf.Tensor).mul((x as tf.Tensor).sigmoid()),
      shapes: [[3, 4, 6]],
    },
    {
      name: 'matMul with bias',
      fast: (a, b, c) => matMul(a as tf.Tensor, b as tf.Tensor, c as tf.Tensor),
      plain: (a, b, c) => tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D).add(c as tf.Tensor),
      shapes: [[6, 32], [32, 16], [16]],
    },
    {
      name: 'matMul without bias',
      fast: (a, b) => matMul(a as tf.Tensor, b as tf.Tensor),
      plain: (a, b) => tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D),
      shapes: [[7, 5], [5, 3]],
    },
    {
      name: 'matMulTransposed',
      fast: (a, b) => matMulTransposed(a as tf.Tensor2D, b as tf.Tensor2D),
      plain: (a, b) => tf.matMul(a as tf.Tensor2D, (b as tf.Tensor2D).transpose()),
      shapes: [[6, 32], [48, 32]],
    },
    {
      name: 'batchedMatMul (attention scores)',
      fast: (a, b) => batchedMatMul(a as tf.Tensor4D, b as tf.Tensor4D, true),
      plain: (a, b) => tf.matMul(a as tf.Tensor4D, (b as tf.Tensor4D).transpose([0, 1, 3, 2])),
      shapes: [[2, 3, 5, 4], [2, 3, 5, 4]],
    },
    {
      name: 'batchedMatMul (attention mix)',
      fast: (a, b) => batchedMatMul(a as tf.Tensor4D, b as tf.Tensor4D),
      plain: (a, b) => tf.matMul(a as tf.Tensor4D, b as tf.Tensor4D),
      shapes: [[2, 3, 5, 5], [2, 3, 5, 4]],
    },
  ];

  it.each(cases.map((c) => [c.name, c] as const))('%s: value and gradients equal autodiff of the formula', (_name, c) => {
    const inputs = c.shapes.map((shape, i) => seeded(shape, 11 + i));
    const fast = gradientsOf(c.fast, inputs, 5);
    const plain = gradientsOf(c.plain, inputs, 5);
    expectClose(fast.value, plain.value, 1e-5, `${c.name} value`);
    fast.grads.forEach((g, i) => expectClose(g, plain.grads[i] as number[], 1e-4, `${c.name} gradient of input ${i}`));
    tf.dispose(inputs);
  });
});

describe('whole-model gradients agree across backends', () => {
  const skip = nativeAvailable();
  const it = skip ? test.skip : test;
  if (skip) test.skip(`skipped: ${skip}`, () => undefined);

  const llama: LlamaConfig = {
    family: 'llama', vocabSize: 40, contextLength: 16, dModel: 32, nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 8, ffnDim: 48,
    rmsNormEps: 1e-5, ropeTheta: 10000, ropeScaling: null, tiedEmbeddings: false, attentionBias: 'qkv',
  };
  const configs = [
    ['GPT-2', { vocabSize: 40, contextLength: 16, dModel: 32, nLayers: 2, nHeads: 4 }],
    ['Llama', llama],
  ] as const;

  it.each(configs)('%s: the native backend and plain JS give the same loss and gradient', async (_name, config) => {
    const ids = Array.from({ length: 3 }, (_, r) => Array.from({ length: 12 }, (_, c) => (r * 7 + c * 3) % 40));
    const targets = ids.map((row) => row.map((id) => (id + 1) % 40));
    const run = async (backend: string) => {
      await initBackend(backend);
      const model = createModel(config, 3);
      const result = tf.tidy(() => {
        const variables = [...model.variables.values()];
        const { value, grads } = tf.variableGrads(() => model.loss(tf.tensor2d(ids, undefined, 'int32'), tf.tensor2d(targets, undefined, 'int32')), variables);
        return { loss: value.dataSync()[0] as number, grads: variables.map((v) => Array.from((grads[v.name] as tf.Tensor).dataSync())) };
      });
      model.dispose();
      return result;
    };
    const native = await run('tensorflow');
    const portable = await run('cpu');
    expect(native.loss).toBeCloseTo(portable.loss, 5);
    native.grads.forEach((g, i) => expectClose(g, portable.grads[i] as number[], 1e-4, `gradient of parameter ${i}`));
  });
});
