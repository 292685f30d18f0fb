import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import { deriveSeed, mulberry32, normalArray } from './random';

/**
 * A GPT-2 style decoder, small enough to read in one sitting:
 * token + learned position embeddings → nLayers pre-LayerNorm blocks
 * (causal multi-head self-attention, GELU MLP) → final LayerNorm → logits through the
 * transposed token embedding (tied weights). No dropout: training runs are bitwise reproducible.
 */

const positiveInt = z.number().int().positive();
export const modelConfigSchema = z
  .object({
    vocabSize: positiveInt,
    contextLength: positiveInt,
    dModel: positiveInt,
    nLayers: positiveInt,
    nHeads: positiveInt,
  })
  .strict()
  .refine((c) => c.dModel % c.nHeads === 0, { message: 'dModel must be divisible by nHeads', path: ['nHeads'] });

export interface ModelConfig {
  vocabSize: number;
  contextLength: number;
  dModel: number;
  nLayers: number;
  nHeads: number;
}

export function parseModelConfig(json: unknown): ModelConfig {
  const parsed = modelConfigSchema.safeParse(json);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`);
    throw new Error(`invalid model config: ${issues.join('; ')}`);
  }
  return parsed.data;
}

type Init = { kind: 'normal'; std: number } | { kind: 'zeros' } | { kind: 'ones' };
interface ParameterSpec { name: string; shape: number[]; init: Init; decay: boolean }

/** Every parameter with its shape, in one fixed order (the order of checkpoints and optimizer state). */
export function parameterSpecs(config: ModelConfig): ParameterSpec[] {
  const { vocabSize: V, contextLength: T, dModel: C, nLayers: L } = config;
  const weight = { kind: 'normal', std: 0.02 } as const;
  // GPT-2: scale the projections that write into the residual stream so its variance stays ~1 with depth.
  const residual = { kind: 'normal', std: 0.02 / Math.sqrt(2 * L) } as const;
  const zeros = { kind: 'zeros' } as const;
  const ones = { kind: 'ones' } as const;
  const specs: ParameterSpec[] = [
    { name: 'wte', shape: [V, C], init: weight, decay: true },
    { name: 'wpe', shape: [T, C], init: weight, decay: true },
  ];
  for (let l = 0; l < L; l++) {
    const h = `h.${l}`;
    specs.push(
      { name: `${h}.ln1.gamma`, shape: [C], init: ones, decay: false },
      { name: `${h}.ln1.beta`, shape: [C], init: zeros, decay: false },
      { name: `${h}.attn.wqkv`, shape: [C, 3 * C], init: weight, decay: true },
      { name: `${h}.attn.bqkv`, shape: [3 * C], init: zeros, decay: false },
      { name: `${h}.attn.wo`, shape: [C, C], init: residual, decay: true },
      { name: `${h}.attn.bo`, shape: [C], init: zeros, decay: false },
      { name: `${h}.ln2.gamma`, shape: [C], init: ones, decay: false },
      { name: `${h}.ln2.beta`, shape: [C], init: zeros, decay: false },
      { name: `${h}.mlp.wfc`, shape: [C, 4 * C], init: weight, decay: true },
      { name: `${h}.mlp.bfc`, shape: [4 * C], init: zeros, decay: false },
      { name: `${h}.mlp.wproj`, shape: [4 * C, C], init: residual, decay: true },
      { name: `${h}.mlp.bproj`, shape: [C], init: zeros, decay: false },
    );
  }
  specs.push(
    { name: 'lnf.gamma', shape: [C], init: ones, decay: false },
    { name: 'lnf.beta', shape: [C], init: zeros, decay: false },
  );
  return specs;
}

const sizeOf = (shape: number[]): number => shape.reduce((a, b) => a * b, 1);

export class GPT {
  readonly variables: ReadonlyMap<string, tf.Variable>;

  private constructor(readonly config: ModelConfig, values: Map<string, Float32Array>) {
    const variables = new Map<string, tf.Variable>();
    for (const spec of parameterSpecs(config)) {
      const data = values.get(spec.name) as Float32Array;
      // Variable names are process-global in tfjs; a unique suffix lets several models coexist.
      // tidy frees the staging tensor; the variable keeps the data.
      variables.set(spec.name, tf.tidy(() => tf.variable(tf.tensor(data, spec.shape, 'float32'), true, `${spec.name}#${nextModelId}`, 'float32')));
    }
    nextModelId++;
    this.variables = variables;
  }

  /** Deterministic: the same (config, seed) gives the same weights on every backend. */
  static create(config: ModelConfig, seed: number): GPT {
    const checked = parseModelConfig(config);
    const values = new Map<string, Float32Array>();
    for (const spec of parameterSpecs(checked)) {
      const size = sizeOf(spec.shape);
      values.set(
        spec.name,
        spec.init.kind === 'normal' ? normalArray(mulberry32(deriveSeed(seed, spec.name)), size, spec.init.std)
          : new Float32Array(size).fill(spec.init.kind === 'ones' ? 1 : 0),
      );
    }
    return new GPT(checked, values);
  }

  /** Rebuilds a model from weights(); rejects missing, unexpected or mis-shaped tensors. */
  static fromWeights(config: ModelConfig, weights: Record<string, Float32Array>): GPT {
    const checked = parseModelConfig(config);
    const specs = parameterSpecs(checked);
    const problems: string[] = [];
    const values = new Map<string, Float32Array>();
    for (const spec of specs) {
      const data = weights[spec.name];
      if (data === undefined) problems.push(`missing "${spec.name}"`);
      else if (!(data instanceof Float32Array)) problems.push(`"${spec.name}" is not a Float32Array`);
      else if (data.length !== sizeOf(spec.shape)) {
        problems.push(`"${spec.name}" has ${data.length} values, expected [${spec.shape.join(',')}] = ${sizeOf(spec.shape)}`);
      } else values.set(spec.name, data);
    }
    const known = new Set(specs.map((spec) => spec.name));
    for (const name of Object.keys(weights)) if (!known.has(name)) problems.push(`unexpected "${name}"`);
    if (problems.length > 0) {
      throw new Error(`weights do not match the model config ${JSON.stringify(checked)}: ${problems.slice(0, 5).join('; ')}${problems.length > 5 ? ` (+${problems.length - 5} more)` : ''}`);
    }
    return new GPT(checked, values);
  }

  /** ids [B,T] int32 with T ≤ contextLength → logits [B,T,V]. The caller disposes the result. */
  logits(ids: tf.Tensor2D): tf.Tensor3D {
    const [B, T] = ids.shape;
    const { contextLength, dModel: C, vocabSize: V } = this.config;
    if (T > contextLength) throw new Error(`sequence length ${T} exceeds the model's contextLength ${contextLength}`);
    return tf.tidy(() => {
      const wte = this.param('wte');
      // embeddings
      const tokens = embeddingLookup(wte, ids); // [B,T,C]
      const positions = this.param('wpe').slice([0, 0], [T, C]); // [T,C]
      let x: tf.Tensor3D = tokens.add(positions); // [B,T,C]
      // blocks
      const mask = causalMask(T); // [T,T]
      for (let l = 0; l < this.config.nLayers; l++) x = this.block(`h.${l}`, x, mask);
      // head: tied to the token embedding
      x = this.layerNorm('lnf', x);
      const logits = matMul(x.reshape([B * T, C]), wte.transpose()); // [B*T,V]
      return logits.reshape([B, T, V]);
    });
  }

  /** Mean cross-entropy over positions where mask == 1 (all positions without a mask). */
  loss(inputs: tf.Tensor2D, targets: tf.Tensor2D, mask?: tf.Tensor2D): tf.Scalar {
    return tf.tidy(() => {
      const logProbs = tf.logSoftmax(this.logits(inputs)); // [B,T,V]
      // oneHot·logp rather than gather: gather's gradient needs a kernel the wasm backend lacks.
      const picked = tf.oneHot(targets.toInt(), this.config.vocabSize).toFloat().mul(logProbs); // [B,T,V]
      const nll = picked.sum(-1).neg(); // [B,T]
      if (mask === undefined) return nll.mean() as tf.Scalar;
      const weights = mask.toFloat();
      return nll.mul(weights).sum().div(weights.sum().maximum(1)) as tf.Scalar;
    });
  }

  weights(): Record<string, Float32Array> {
    const out: Record<string, Float32Array> = {};
    for (const [name, variable] of this.variables) out[name] = Float32Array.from(variable.dataSync() as Float32Array);
    return out;
  }

  parameterCount(): number {
    let count = 0;
    for (const variable of this.variables.values()) count += variable.size;
    return count;
  }

  dispose(): void {
    for (const variable of this.variables.values()) variable.dispose();
  }

  private block(h: string, x: tf.Tensor3D, mask: tf.Tensor2D): tf.Tensor3D {
    x = x.add(this.attention(`${h}.attn`, this.layerNorm(`${h}.ln1`, x), mask));
    return x.add(this.mlp(`${h}.mlp`, this.layerNorm(`${h}.ln2`, x)));
  }

  private attention(prefix: string, x: tf.Tensor3D, mask: tf.Tensor2D): tf.Tensor3D {
    const [B, T, C] = x.shape;
    const H = this.config.nHeads;
    const D = C / H;
    const qkv = this.dense(x, `${prefix}.wqkv`, `${prefix}.bqkv`); // [B,T,3C]
    const [q, k, v] = tf.split(qkv, 3, 2).map((t) => t.reshape([B, T, H, D]).transpose([0, 2, 1, 3])); // 3 × [B,H,T,D]
    const scores = matMul(q as tf.Tensor, swapLastAxes(k as tf.Tensor)).mul(1 / Math.sqrt(D)).add(mask); // [B,H,T,T]
    const y = matMul(tf.softmax(scores), v as tf.Tensor); // [B,H,T,D]
    const merged = y.transpose([0, 2, 1, 3]).reshape([B, T, C]) as tf.Tensor3D; // [B,T,C]
    return this.dense(merged, `${prefix}.wo`, `${prefix}.bo`);
  }

  private mlp(prefix: string, x: tf.Tensor3D): tf.Tensor3D {
    const hidden = gelu(this.dense(x, `${prefix}.wfc`, `${prefix}.bfc`)); // [B,T,4C]
    return this.dense(hidden, `${prefix}.wproj`, `${prefix}.bproj`); // [B,T,C]
  }

  /** x [B,T,In] · w [In,Out] + b → [B,T,Out] */
  private dense(x: tf.Tensor3D, w: string, b: string): tf.Tensor3D {
    const [B, T, In] = x.shape;
    const weight = this.param(w);
    const out = matMul(x.reshape([B * T, In]), weight).add(this.param(b));
    return out.reshape([B, T, weight.shape[1] as number]);
  }

  private layerNorm(prefix: string, x: tf.Tensor3D): tf.Tensor3D {
    const { mean, variance } = tf.moments(x, -1, true);
    const normalised = x.sub(mean).mul(variance.add(1e-5).rsqrt());
    return normalised.mul(this.param(`${prefix}.gamma`)).add(this.param(`${prefix}.beta`));
  }

  private param(name: string): tf.Variable {
    const variable = this.variables.get(name);
    if (variable === undefined) throw new Error(`model has no parameter "${name}"`);
    return variable;
  }
}

let nextModelId = 0;

/**
 * table [V,C], ids [B,T] → [B,T,C]. Forward is a gather; the gradient is written as
 * oneHot(ids)ᵀ · dy because tf.gather's own gradient needs UnsortedSegmentSum, which the
 * wasm backend does not implement. Same numbers on every backend.
 */
export function embeddingLookup(table: tf.Tensor2D | tf.Variable, ids: tf.Tensor2D): tf.Tensor3D {
  const [B, T] = ids.shape;
  const [V, C] = table.shape as [number, number];
  const flatIds = ids.reshape([B * T]).toInt(); // [B*T]
  const lookup = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [weights, save] = args as [tf.Tensor, tf.GradSaveFunc];
    // The ids must be saved: the caller's tidy frees them before backprop runs.
    save([flatIds]);
    return {
      value: tf.gather(weights, flatIds).reshape([B, T, C]),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        tf.matMul(tf.oneHot(saved[0] as tf.Tensor1D, V).toFloat().transpose(), dy.reshape([B * T, C])), // [V,B*T]·[B*T,C] → [V,C]
    };
  });
  return lookup(table) as tf.Tensor3D;
}

/**
 * a [...,M,K] · b [...,K,N] → [...,M,N], with a gradient built from explicit transposes.
 * tf.matMul's own gradient passes transpose flags, which the wasm backend runs up to 15×
 * slower than a transpose followed by a plain product.
 */
function matMul(a: tf.Tensor, b: tf.Tensor): tf.Tensor {
  const product = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [x, y, save] = args as [tf.Tensor, tf.Tensor, tf.GradSaveFunc];
    save([x, y]);
    return {
      value: tf.matMul(x, y),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sx, sy] = saved as [tf.Tensor, tf.Tensor];
        return [tf.matMul(dy, swapLastAxes(sy)), tf.matMul(swapLastAxes(sx), dy)];
      },
    };
  });
  return product(a, b);
}

function swapLastAxes(x: tf.Tensor): tf.Tensor {
  const perm = x.shape.map((_, i) => i);
  perm.splice(-2, 2, x.rank - 1, x.rank - 2);
  return x.transpose(perm);
}

/** 0 where a position may attend (j ≤ i), a large negative number above the diagonal. */
function causalMask(T: number): tf.Tensor2D {
  const values = new Float32Array(T * T);
  for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) values[i * T + j] = -1e9;
  return tf.tensor2d(values, [T, T]);
}

/** GELU, tanh approximation (GPT-2). */
function gelu(x: tf.Tensor3D): tf.Tensor3D {
  const inner = x.add(x.square().mul(x).mul(0.044715)).mul(Math.sqrt(2 / Math.PI)); // square·x: Pow is slow on wasm
  return x.mul(0.5).mul(inner.tanh().add(1));
}
