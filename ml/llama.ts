import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import { batchedMatMul, causalMask, countOf, embeddingLookup, initialValues, maskedLoss, matMul, matMulTransposed, rmsNorm, sigmoidGate, valuesOf, weightsOf, type ParameterSpec } from './model';

/**
 * The Llama family (Llama, Qwen2, SmolLM, Mistral), small enough to read in one sitting:
 * token embedding → nLayers pre-RMSNorm blocks (causal self-attention with rotary position
 * embeddings and grouped-query heads, SwiGLU MLP) → final RMSNorm → logits through the output
 * head (or the transposed embedding, when tied). The same computation as transformers'
 * `LlamaForCausalLM` and `Qwen2ForCausalLM`; weights are kept [in, out] like dacp's GPT.
 */

const positiveInt = z.number().int().positive();
const ropeScaling = z.discriminatedUnion('type', [
  z.object({ type: z.literal('linear'), factor: z.number().positive() }).strict(),
  z
    .object({
      type: z.literal('llama3'),
      factor: z.number().positive(),
      lowFreqFactor: z.number().positive(),
      highFreqFactor: z.number().positive(),
      originalContext: positiveInt,
    })
    .strict(),
]);

export const llamaConfigSchema = z
  .object({
    family: z.literal('llama'),
    vocabSize: positiveInt,
    /** The window dacp trains and evaluates on (at most the model's own maximum). */
    contextLength: positiveInt,
    dModel: positiveInt,
    nLayers: positiveInt,
    nHeads: positiveInt,
    nKvHeads: positiveInt,
    headDim: positiveInt,
    ffnDim: positiveInt,
    rmsNormEps: z.number().positive(),
    ropeTheta: z.number().positive(),
    ropeScaling: ropeScaling.nullable(),
    tiedEmbeddings: z.boolean(),
    /** Biases on the attention projections: none (Llama), q/k/v (Qwen2), or all four (Llama with attention_bias). */
    attentionBias: z.enum(['none', 'qkv', 'all']),
    /** The config.json the model came from; export writes it back. */
    source: z.record(z.unknown()).optional(),
  })
  .strict()
  .refine((c) => c.nHeads % c.nKvHeads === 0, { message: 'nHeads must be a multiple of nKvHeads', path: ['nKvHeads'] })
  .refine((c) => c.headDim % 2 === 0, { message: 'headDim must be even (rotary embeddings rotate pairs)', path: ['headDim'] });

export type LlamaConfig = z.infer<typeof llamaConfigSchema>;

export function parseLlamaConfig(json: unknown): LlamaConfig {
  const parsed = llamaConfigSchema.safeParse(json);
  if (!parsed.success) {
    throw new Error(`invalid llama config: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  }
  return parsed.data;
}

/** Every parameter with its shape, in one fixed order (the order of checkpoints and optimizer state). */
export function llamaParameterSpecs(c: LlamaConfig): ParameterSpec[] {
  const { vocabSize: V, dModel: C, nLayers: L, nHeads: H, nKvHeads: K, headDim: D, ffnDim: F } = c;
  const weight = { kind: 'normal', std: 0.02 } as const;
  const residual = { kind: 'normal', std: 0.02 / Math.sqrt(2 * L) } as const;
  const zeros = { kind: 'zeros' } as const;
  const ones = { kind: 'ones' } as const;
  const specs: ParameterSpec[] = [{ name: 'embed', shape: [V, C], init: weight, decay: true }];
  for (let l = 0; l < L; l++) {
    const p = `layers.${l}`;
    specs.push(
      { name: `${p}.attnNorm`, shape: [C], init: ones, decay: false },
      { name: `${p}.wq`, shape: [C, H * D], init: weight, decay: true },
      { name: `${p}.wk`, shape: [C, K * D], init: weight, decay: true },
      { name: `${p}.wv`, shape: [C, K * D], init: weight, decay: true },
    );
    if (c.attentionBias !== 'none') {
      specs.push(
        { name: `${p}.bq`, shape: [H * D], init: zeros, decay: false },
        { name: `${p}.bk`, shape: [K * D], init: zeros, decay: false },
        { name: `${p}.bv`, shape: [K * D], init: zeros, decay: false },
      );
    }
    specs.push({ name: `${p}.wo`, shape: [H * D, C], init: residual, decay: true });
    if (c.attentionBias === 'all') specs.push({ name: `${p}.bo`, shape: [C], init: zeros, decay: false });
    specs.push(
      { name: `${p}.mlpNorm`, shape: [C], init: ones, decay: false },
      { name: `${p}.wgate`, shape: [C, F], init: weight, decay: true },
      { name: `${p}.wup`, shape: [C, F], init: weight, decay: true },
      { name: `${p}.wdown`, shape: [F, C], init: residual, decay: true },
    );
  }
  specs.push({ name: 'norm', shape: [C], init: ones, decay: false });
  if (!c.tiedEmbeddings) specs.push({ name: 'lmHead', shape: [V, C], init: weight, decay: true });
  return specs;
}

/**
 * The rotary frequencies θ_i = ropeTheta^(−2i/D), i < D/2, with the config's scaling (transformers'
 * `_compute_default_rope_parameters`, `_compute_linear_scaling_rope_parameters`,
 * `_compute_llama3_parameters`).
 */
export function inverseFrequencies(c: LlamaConfig): Float64Array {
  const half = c.headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = Math.fround(1 / c.ropeTheta ** (Math.fround((2 * i) / c.headDim)));
  const s = c.ropeScaling;
  if (s?.type === 'linear') for (let i = 0; i < half; i++) inv[i] = (inv[i] as number) / s.factor;
  if (s?.type === 'llama3') {
    const lowWavelen = s.originalContext / s.lowFreqFactor;
    const highWavelen = s.originalContext / s.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const f = inv[i] as number;
      const wavelen = (2 * Math.PI) / f;
      if (wavelen > lowWavelen) inv[i] = f / s.factor;
      else if (wavelen >= highWavelen) {
        const smooth = (s.originalContext / wavelen - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor);
        inv[i] = (1 - smooth) * (f / s.factor) + smooth * f;
      }
    }
  }
  return inv;
}

let nextModelId = 0;

export class Llama {
  readonly variables: ReadonlyMap<string, tf.Variable>;
  /** cos and sin of every (position, dimension) of the window, [contextLength, headDim] each. */
  private readonly cos: tf.Tensor2D;
  private readonly sin: tf.Tensor2D;
  /** Built per sequence length on first use: a long window would make one full mask huge. */
  private readonly masks = new Map<number, tf.Tensor2D>();

  private constructor(readonly config: LlamaConfig, values: Map<string, Float32Array>) {
    const variables = new Map<string, tf.Variable>();
    for (const spec of llamaParameterSpecs(config)) {
      const data = values.get(spec.name) as Float32Array;
      variables.set(spec.name, tf.tidy(() => tf.variable(tf.tensor(data, spec.shape, 'float32'), true, `${spec.name}#llama${nextModelId}`, 'float32')));
    }
    nextModelId++;
    this.variables = variables;
    const { contextLength: T, headDim: D } = config;
    const inv = inverseFrequencies(config);
    const cos = new Float32Array(T * D);
    const sin = new Float32Array(T * D);
    for (let t = 0; t < T; t++) {
      for (let i = 0; i < D; i++) {
        const angle = Math.fround(t * (inv[i % (D / 2)] as number));
        cos[t * D + i] = Math.cos(angle);
        sin[t * D + i] = Math.sin(angle);
      }
    }
    this.cos = tf.keep(tf.tensor2d(cos, [T, D]));
    this.sin = tf.keep(tf.tensor2d(sin, [T, D]));
  }

  /** Deterministic: the same (config, seed) gives the same weights on every backend. */
  static create(config: LlamaConfig, seed: number): Llama {
    const checked = parseLlamaConfig(config);
    return new Llama(checked, initialValues(llamaParameterSpecs(checked), seed));
  }

  /** Rebuilds a model from weights(); rejects missing, unexpected or mis-shaped tensors. */
  static fromWeights(config: LlamaConfig, weights: Record<string, Float32Array>): Llama {
    const checked = parseLlamaConfig(config);
    return new Llama(checked, valuesOf(llamaParameterSpecs(checked), weights, 'the llama config'));
  }

  /** ids [B,T] int32 with T ≤ contextLength → logits [B,T,V]. The caller disposes the result. */
  logits(ids: tf.Tensor2D): tf.Tensor3D {
    const [B, T] = ids.shape;
    const { contextLength, dModel: C, vocabSize: V } = this.config;
    if (T > contextLength) throw new Error(`sequence length ${T} exceeds the model's contextLength ${contextLength}`);
    const mask = this.maskFor(T);
    return tf.tidy(() => {
      let x: tf.Tensor3D = embeddingLookup(this.param('embed'), ids); // [B,T,C]
      const cos = this.cos.slice([0, 0], [T, -1]);
      const sin = this.sin.slice([0, 0], [T, -1]);
      for (let l = 0; l < this.config.nLayers; l++) {
        const p = `layers.${l}`;
        x = x.add(this.attention(p, this.rmsNorm(x, `${p}.attnNorm`), mask, cos, sin));
        x = x.add(this.mlp(p, this.rmsNorm(x, `${p}.mlpNorm`)));
      }
      x = this.rmsNorm(x, 'norm');
      const head = this.config.tiedEmbeddings ? this.param('embed') : this.param('lmHead');
      return matMulTransposed(x.reshape([B * T, C]) as tf.Tensor2D, head).reshape([B, T, V]) as tf.Tensor3D;
    });
  }

  /** Mean cross-entropy over positions where mask == 1 (all positions without a mask). */
  loss(inputs: tf.Tensor2D, targets: tf.Tensor2D, mask?: tf.Tensor2D): tf.Scalar {
    return maskedLoss(() => this.logits(inputs), targets, mask);
  }

  weights(): Record<string, Float32Array> {
    return weightsOf(this.variables);
  }

  parameterCount(): number {
    return countOf(this.variables);
  }

  dispose(): void {
    for (const variable of this.variables.values()) variable.dispose();
    for (const mask of this.masks.values()) mask.dispose();
    this.cos.dispose();
    this.sin.dispose();
  }

  private maskFor(T: number): tf.Tensor2D {
    let mask = this.masks.get(T);
    if (!mask) {
      mask = tf.keep(causalMask(T));
      this.masks.set(T, mask);
    }
    return mask;
  }

  /** x · rsqrt(mean(x²) + ε) · weight, over the last axis. */
  private rmsNorm(x: tf.Tensor3D, weight: string): tf.Tensor3D {
    return rmsNorm(x, this.param(weight), this.config.rmsNormEps);
  }

  private attention(p: string, x: tf.Tensor3D, mask: tf.Tensor2D, cos: tf.Tensor2D, sin: tf.Tensor2D): tf.Tensor3D {
    const [B, T] = x.shape;
    const { nHeads: H, nKvHeads: K, headDim: D } = this.config;
    const bias = this.config.attentionBias !== 'none';
    const heads = (w: string, b: string, n: number) =>
      this.dense(x, w, bias ? b : undefined).reshape([B, T, n, D]).transpose([0, 2, 1, 3]) as tf.Tensor4D; // [B,n,T,D]
    const q = this.rope(heads(`${p}.wq`, `${p}.bq`, H), cos, sin);
    let k = this.rope(heads(`${p}.wk`, `${p}.bk`, K), cos, sin);
    let v = heads(`${p}.wv`, `${p}.bv`, K);
    if (K < H) {
      // Grouped-query attention: query head h reads key/value head ⌊h / (H/K)⌋.
      // (Tiled as rank 4: tfjs has no gradient for a rank-5 tile.)
      const repeat = (t: tf.Tensor4D) => t.reshape([B, K, 1, T * D]).tile([1, 1, H / K, 1]).reshape([B, H, T, D]) as tf.Tensor4D;
      k = repeat(k);
      v = repeat(v);
    }
    const scores = batchedMatMul(q.mul(1 / Math.sqrt(D)), k, true).add(mask); // [B,H,T,T]
    const y = batchedMatMul(tf.softmax(scores) as tf.Tensor4D, v).transpose([0, 2, 1, 3]).reshape([B, T, H * D]) as tf.Tensor3D;
    return this.dense(y, `${p}.wo`, this.config.attentionBias === 'all' ? `${p}.bo` : undefined);
  }

  /** Rotary embedding, transformers' layout: x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁]. */
  private rope(x: tf.Tensor4D, cos: tf.Tensor2D, sin: tf.Tensor2D): tf.Tensor4D {
    const half = this.config.headDim / 2;
    const [x1, x2] = tf.split(x, [half, half], 3);
    return x.mul(cos).add(tf.concat([tf.neg(x2 as tf.Tensor4D), x1 as tf.Tensor4D], 3).mul(sin)) as tf.Tensor4D;
  }

  /** SwiGLU: down(silu(gate(x)) · up(x)). */
  private mlp(p: string, x: tf.Tensor3D): tf.Tensor3D {
    const gate = this.dense(x, `${p}.wgate`);
    const hidden = sigmoidGate(gate, 1, 0).mul(this.dense(x, `${p}.wup`)) as tf.Tensor3D;
    return this.dense(hidden, `${p}.wdown`);
  }

  /** x [B,T,In] · w [In,Out] (+ b) → [B,T,Out] */
  private dense(x: tf.Tensor3D, w: string, b?: string): tf.Tensor3D {
    const [B, T, In] = x.shape;
    const weight = this.param(w);
    return matMul(x.reshape([B * T, In]), weight, b ? this.param(b) : undefined).reshape([B, T, weight.shape[1] as number]);
  }

  private param(name: string): tf.Variable {
    const variable = this.variables.get(name);
    if (variable === undefined) throw new Error(`model has no parameter "${name}"`);
    return variable;
  }
}
