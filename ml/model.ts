import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import { deriveSeed, mulberry32, normalArray } from './random';
import { isFloat32Array } from './typedArrays';

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

export type Init = { kind: 'normal'; std: number } | { kind: 'zeros' } | { kind: 'ones' };
export interface ParameterSpec { name: string; shape: number[]; init: Init; decay: boolean }

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

export const sizeOf = (shape: number[]): number => shape.reduce((a, b) => a * b, 1);

export class GPT {
  readonly variables: ReadonlyMap<string, tf.Variable>;
  /** [contextLength, contextLength], built once; shorter inputs slice its top-left corner. */
  private readonly causalMask: tf.Tensor2D;

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
    this.causalMask = tf.keep(causalMask(config.contextLength)); // kept even when a caller builds the model inside tf.tidy
  }

  /** Deterministic: the same (config, seed) gives the same weights on every backend. */
  static create(config: ModelConfig, seed: number): GPT {
    const checked = parseModelConfig(config);
    return new GPT(checked, initialValues(parameterSpecs(checked), seed));
  }

  /** Rebuilds a model from weights(); rejects missing, unexpected or mis-shaped tensors. */
  static fromWeights(config: ModelConfig, weights: Record<string, Float32Array>): GPT {
    const checked = parseModelConfig(config);
    return new GPT(checked, valuesOf(parameterSpecs(checked), weights, `the model config ${JSON.stringify(checked)}`));
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
      const mask = T === contextLength ? this.causalMask : this.causalMask.slice([0, 0], [T, T]); // [T,T]
      for (let l = 0; l < this.config.nLayers; l++) x = this.block(`h.${l}`, x, mask);
      // head: tied to the token embedding
      x = this.layerNorm('lnf', x);
      const logits = matMulTransposed(x.reshape([B * T, C]) as tf.Tensor2D, wte); // [B*T,V]
      return logits.reshape([B, T, V]);
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
    this.causalMask.dispose();
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
    // q, k and v side by side are 3H heads: one transpose, then one split (not one of each per tensor).
    const [q, k, v] = tf.split(qkv.reshape([B, T, 3 * H, D]).transpose([0, 2, 1, 3]), 3, 1) as [tf.Tensor4D, tf.Tensor4D, tf.Tensor4D]; // 3 × [B,H,T,D]
    // Batched products run wasm's plain loop, where transpose flags cost nothing, so tf.matMul's own gradient is fine there.
    // The scale goes on q, [B,H,T,D], rather than on the scores, [B,H,T,T].
    const scores = batchedMatMul(q.mul(1 / Math.sqrt(D)), k, true).add(mask); // [B,H,T,T]
    const y = batchedMatMul(tf.softmax(scores) as tf.Tensor4D, v); // [B,H,T,D]
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
    const out = matMul(x.reshape([B * T, In]), weight, this.param(b));
    return out.reshape([B, T, weight.shape[1] as number]);
  }

  private layerNorm(prefix: string, x: tf.Tensor3D): tf.Tensor3D {
    return layerNorm(x, this.param(`${prefix}.gamma`), this.param(`${prefix}.beta`), 1e-5);
  }

  private param(name: string): tf.Variable {
    const variable = this.variables.get(name);
    if (variable === undefined) throw new Error(`model has no parameter "${name}"`);
    return variable;
  }
}

let nextModelId = 0;

// ---------------------------------------------------------------------------------------------
// Shared by the model families (llama.ts too)

/** Fresh weights for `specs`, each tensor from its own seeded stream. */
export function initialValues(specs: ParameterSpec[], seed: number): Map<string, Float32Array> {
  const values = new Map<string, Float32Array>();
  for (const spec of specs) {
    const size = sizeOf(spec.shape);
    values.set(
      spec.name,
      spec.init.kind === 'normal' ? normalArray(mulberry32(deriveSeed(seed, spec.name)), size, spec.init.std)
        : new Float32Array(size).fill(spec.init.kind === 'ones' ? 1 : 0),
    );
  }
  return values;
}

/** `weights` checked against `specs`: every problem (missing, unexpected, mis-sized) named, five at most. */
export function valuesOf(specs: ParameterSpec[], weights: Record<string, Float32Array>, what: string): Map<string, Float32Array> {
  const problems: string[] = [];
  const values = new Map<string, Float32Array>();
  for (const spec of specs) {
    const data = weights[spec.name];
    if (data === undefined) problems.push(`missing "${spec.name}"`);
    else if (!isFloat32Array(data)) problems.push(`"${spec.name}" is not a Float32Array`);
    else if (data.length !== sizeOf(spec.shape)) {
      problems.push(`"${spec.name}" has ${data.length} values, expected [${spec.shape.join(',')}] = ${sizeOf(spec.shape)}`);
    } else values.set(spec.name, data);
  }
  const known = new Set(specs.map((spec) => spec.name));
  for (const name of Object.keys(weights)) if (!known.has(name)) problems.push(`unexpected "${name}"`);
  if (problems.length > 0) {
    throw new Error(`weights do not match ${what}: ${problems.slice(0, 5).join('; ')}${problems.length > 5 ? ` (+${problems.length - 5} more)` : ''}`);
  }
  return values;
}

/** Mean cross-entropy of `logits()` [B,T,V] over positions where mask == 1 (all positions without a mask). */
export function maskedLoss(logits3d: () => tf.Tensor3D, targets: tf.Tensor2D, mask?: tf.Tensor2D): tf.Scalar {
  return tf.tidy(() => {
    const all = logits3d();
    const [B, T, V] = all.shape;
    const logits = all.reshape([B * T, V]) as tf.Tensor2D; // [B*T,V]
    const nll = crossEntropy(logits, targets.reshape([B * T]) as tf.Tensor1D).reshape([B, T]); // [B,T]
    if (mask === undefined) return nll.mean() as tf.Scalar;
    const weights = mask.toFloat();
    return nll.mul(weights).sum().div(weights.sum().maximum(1)) as tf.Scalar;
  });
}

export function weightsOf(variables: ReadonlyMap<string, tf.Variable>): Record<string, Float32Array> {
  const out: Record<string, Float32Array> = {};
  for (const [name, variable] of variables) out[name] = Float32Array.from(variable.dataSync() as Float32Array);
  return out;
}

export function countOf(variables: ReadonlyMap<string, tf.Variable>): number {
  let count = 0;
  for (const variable of variables.values()) count += variable.size;
  return count;
}

/**
 * table [V,C], ids [B,T] → [B,T,C]. tf.gather's gradient needs UnsortedSegmentSum, which the
 * wasm backend lacks (and its GatherV2 is slow), so the lookup has its own gradient: on cpu and
 * wasm a ScatterNd, which adds duplicate ids one after another in a fixed order; elsewhere
 * (where ScatterNd may add in parallel) oneHot(ids)ᵀ · dy. Both give the per-id sum of dy.
 */
export function embeddingLookup(table: tf.Tensor2D | tf.Variable, ids: tf.Tensor2D): tf.Tensor3D {
  const [B, T] = ids.shape;
  const [V, C] = table.shape as [number, number];
  const indices = ids.reshape([B * T, 1]).toInt(); // [B*T,1]
  const sequentialScatter = ['cpu', 'wasm'].includes(tf.getBackend());
  const lookup = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [weights, save] = args as [tf.Tensor, tf.GradSaveFunc];
    // The ids must be saved: the caller's tidy frees them before backprop runs.
    save([indices]);
    return {
      value: tf.gatherND(weights, indices).reshape([B, T, C]),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [savedIndices] = saved as [tf.Tensor2D];
        const flat = dy.reshape([B * T, C]);
        return sequentialScatter ? tf.scatterND(savedIndices, flat, [V, C])
          : tf.matMul(tf.oneHot(savedIndices.reshape([B * T]) as tf.Tensor1D, V).toFloat().transpose(), flat); // [V,B*T]·[B*T,C]
      },
    };
  });
  return lookup(table) as tf.Tensor3D;
}

/**
 * a [M,K] · b [K,N] (+ bias [N]) → [M,N], with a gradient built from explicit transposes:
 * wasm hands a plain 2-D product to XNNPACK but runs one with transpose flags (what tf.matMul's
 * own gradient uses) in a scalar loop, up to 15× slower. Transposes are slow there too, so
 * the weight gradient transposes whichever of a and dy is smaller. The bias rides along in
 * the product (tf.fused.matMul) instead of costing a separate add.
 */
export function matMul(a: tf.Tensor, b: tf.Tensor, bias?: tf.Tensor): tf.Tensor2D {
  // TensorFlow's own kernels take transpose flags at full speed: tfjs's gradient (products with
  // flags, no transposes) is the fastest there.
  if (isNative()) return nativeProduct(a, b, false, bias) as tf.Tensor2D;
  const product = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const [x, y] = args as [tf.Tensor2D, tf.Tensor2D];
    save([x, y]);
    return {
      value: bias === undefined ? tf.matMul(x, y) : tf.fused.matMul({ a: x, b: y, bias: args[2] as tf.Tensor }),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sx, sy, g] = [...saved, dy] as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D];
        const dx = tf.matMul(g, transpose2d(sy));
        const dw = sx.size <= g.size ? tf.matMul(transpose2d(sx), g) : transpose2d(tf.matMul(transpose2d(g), sx));
        // Column sums as ones·dy: wasm's sum over axis 0 transposes first and is ~20× slower.
        return bias === undefined ? [dx, dw] : [dx, dw, tf.matMul(tf.ones([1, g.shape[0]]), g).reshape([g.shape[1]])];
      },
    };
  });
  return (bias === undefined ? product(a, b) : product(a, b, bias)) as tf.Tensor2D;
}

/** a [M,K] · bᵀ for b [N,K] → [M,N]: logits through a tied or untied head stored [V,C]. */
export function matMulTransposed(a: tf.Tensor2D, b: tf.Tensor2D | tf.Variable): tf.Tensor2D {
  return isNative() ? (nativeProduct(a, b, true) as tf.Tensor2D) : matMul(a, transpose2d(b));
}

/** Batched products over the leading axes, a [...,M,K] · b [...,K,N] (or bᵀ for b [...,N,K]): attention's scores and mix. */
export function batchedMatMul<T extends tf.Tensor>(a: T, b: T, transposeB = false): T {
  return (isNative() ? nativeProduct(a, b, transposeB) : tf.matMul(a as tf.Tensor, b as tf.Tensor, false, transposeB)) as T;
}

/** One BatchMatMulV2 kernel, any rank, no reshapes around it (tf.matMul adds three). */
function kernelProduct(a: tf.Tensor, b: tf.Tensor, transposeA: boolean, transposeB: boolean): tf.Tensor {
  return tf.engine().runKernel('BatchMatMul', { a, b }, { transposeA, transposeB }) as tf.Tensor;
}

/**
 * a · b (or a · bᵀ) + bias on the native backend, each product one kernel: forward 1 (+1 for the
 * bias), backward 2 (+1), where tf.matMul and tf.fused.matMul spend three reshapes per product
 * and a broadcast-reduction for the bias.
 */
function nativeProduct(a: tf.Tensor, b: tf.Tensor, transposeB: boolean, bias?: tf.Tensor): tf.Tensor {
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const [x, y] = args as [tf.Tensor, tf.Tensor];
    save([x, y]);
    const product = kernelProduct(x, y, false, transposeB);
    return {
      value: bias === undefined ? product : product.add(args[2] as tf.Tensor),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sx, sy] = saved as [tf.Tensor, tf.Tensor];
        // y = x·w: dx = dy·wᵀ, dw = xᵀ·dy.   y = x·wᵀ: dx = dy·w, dw = dyᵀ·x.
        const dx = kernelProduct(dy, sy, false, !transposeB);
        const dw = transposeB ? kernelProduct(dy, sx, true, false) : kernelProduct(sx, dy, true, false);
        return bias === undefined ? [dx, dw] : [dx, dw, dy.sum(0)];
      },
    };
  });
  return bias === undefined ? op(a, b) : op(a, b, bias);
}

/** The native TensorFlow backend (tfjs-node or tfjs-node-gpu), where each kernel call costs a fixed overhead and big kernels win. */
export function isNative(): boolean {
  return tf.getBackend() === 'tensorflow';
}

/** Sums over the rows of [M,N] → [N]: a reduction natively; ones · x on wasm, whose axis-0 sum transposes first and is ~20× slower. */
export function columnSums(x: tf.Tensor2D): tf.Tensor1D {
  return isNative() ? x.sum(0) : tf.matMul(tf.ones([1, x.shape[0]]), x).reshape([x.shape[1]]);
}

/**
 * LayerNorm over the last axis, (x − mean) · rsqrt(var + ε) · γ + β, with its gradient written
 * out (a dozen kernels instead of the thirty-odd that autodiff of the moments takes):
 * dx = r · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂)), where x̂ is the normalised input, r = rsqrt(var + ε)
 * and dx̂ = dy · γ.
 */
export function layerNorm(x: tf.Tensor3D, gamma: tf.Tensor, beta: tf.Tensor, eps: number): tf.Tensor3D {
  const [B, T, C] = x.shape;
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [input, g, b, save] = args as [tf.Tensor3D, tf.Tensor1D, tf.Tensor1D, tf.GradSaveFunc];
    const { mean, variance } = tf.moments(input, -1, true);
    const r = variance.add(eps).rsqrt(); // [B,T,1]
    const normalised = input.sub(mean).mul(r); // [B,T,C]
    save([normalised, r, g]);
    return {
      value: normalised.mul(g).add(b),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xhat, rs, gs] = saved as [tf.Tensor3D, tf.Tensor3D, tf.Tensor1D];
        const dxhat = dy.mul(gs);
        const dx = rs.mul(dxhat.sub(dxhat.mean(-1, true)).sub(xhat.mul(dxhat.mul(xhat).mean(-1, true))));
        const rows = (t: tf.Tensor) => t.reshape([B * T, C]) as tf.Tensor2D;
        return [dx, columnSums(rows(dy.mul(xhat))), columnSums(rows(dy))];
      },
    };
  });
  return op(x, gamma, beta) as tf.Tensor3D;
}

/**
 * RMSNorm over the last axis, x · rsqrt(mean(x²) + ε) · w, with its gradient written out:
 * dx = r · (dx̂ − x̂ · mean(dx̂ · x̂)), x̂ = x · r, dx̂ = dy · w.
 */
export function rmsNorm(x: tf.Tensor3D, weight: tf.Tensor, eps: number): tf.Tensor3D {
  const [B, T, C] = x.shape;
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [input, w, save] = args as [tf.Tensor3D, tf.Tensor1D, tf.GradSaveFunc];
    const r = input.square().mean(-1, true).add(eps).rsqrt(); // [B,T,1]
    const normalised = input.mul(r);
    save([normalised, r, w]);
    return {
      value: normalised.mul(w),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xhat, rs, ws] = saved as [tf.Tensor3D, tf.Tensor3D, tf.Tensor1D];
        const dxhat = dy.mul(ws);
        const dx = rs.mul(dxhat.sub(xhat.mul(dxhat.mul(xhat).mean(-1, true))));
        return [dx, columnSums(dy.mul(xhat).reshape([B * T, C]) as tf.Tensor2D)];
      },
    };
  });
  return op(x, weight) as tf.Tensor3D;
}

/**
 * x · sigmoid(k·x + c·x³) with its gradient written out: GELU (tanh form) with k = √(8/π),
 * c = 0.044715·k; SiLU with k = 1, c = 0. d/dx = s + x · s(1 − s) · (k + 3c·x²).
 */
export function sigmoidGate(x: tf.Tensor, k: number, c: number): tf.Tensor {
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [input, save] = args as [tf.Tensor, tf.GradSaveFunc];
    // square·x: Pow is slow on wasm.
    const z = c === 0 ? (k === 1 ? input : input.mul(k)) : input.add(input.square().mul(input).mul(c / k)).mul(k);
    const s = z.sigmoid();
    save([input, s]);
    return {
      value: input.mul(s),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xs, ss] = saved as [tf.Tensor, tf.Tensor];
        const slope = c === 0 ? (k === 1 ? xs : xs.mul(k)) : xs.mul(xs.square().mul(3 * c).add(k));
        return dy.mul(ss.add(slope.mul(ss).mul(tf.scalar(1).sub(ss))));
      },
    };
  });
  return op(x);
}

/**
 * [M,N] → [N,M]. wasm's 2-D transpose is a slow strided loop; the same permutation done on
 * 16×16 tiles (a 4-D transpose) runs 3–5× faster.
 */
export function transpose2d(x: tf.Tensor2D | tf.Variable): tf.Tensor2D {
  const [M, N] = x.shape as [number, number];
  const tile = 16;
  if (M % tile !== 0 || N % tile !== 0) return x.transpose() as tf.Tensor2D;
  return x.reshape([M / tile, tile, N / tile, tile]).transpose([2, 3, 0, 1]).reshape([N, M]);
}

/**
 * logits [N,V], targets [N] → −log softmax(logits)[target], [N]. Built on tf.softmax, which
 * wasm runs vectorised (logSoftmax's exp is several times slower there), with the textbook
 * gradient (softmax − oneHot(target)) · dy. log Σ exp(x − max) is taken as −log(max p): the
 * largest probability is 1 / Σ exp(x − max) ≥ 1/V, so unlike log p[target] it never underflows.
 */
export function crossEntropy(logits: tf.Tensor2D, targets: tf.Tensor1D): tf.Tensor1D {
  const [N, V] = logits.shape;
  const ids = targets.toInt();
  const nll = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [x, save] = args as [tf.Tensor2D, tf.GradSaveFunc];
    const probs = tf.softmax(x); // [N,V]
    const target = tf.oneHot(ids, V).toFloat(); // [N,V]
    save([probs, target]);
    const logSumExp = x.max(-1).sub(probs.max(-1).log()); // [N]
    return {
      value: logSumExp.sub(target.mul(x).sum(-1)),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [p, t] = saved as [tf.Tensor2D, tf.Tensor2D];
        return p.sub(t).mul(dy.reshape([N, 1]));
      },
    };
  });
  return nll(logits) as tf.Tensor1D;
}

/** 0 where a position may attend (j ≤ i), a large negative number above the diagonal. */
export function causalMask(T: number): tf.Tensor2D {
  const values = new Float32Array(T * T);
  for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) values[i * T + j] = -1e9;
  return tf.tensor2d(values, [T, T]);
}

/**
 * GELU, tanh approximation (GPT-2): ½x(1 + tanh(z)) written as x·sigmoid(2z), the same function;
 * wasm runs sigmoid vectorised and tanh ~15× slower.
 */
function gelu(x: tf.Tensor3D): tf.Tensor3D {
  const k = Math.sqrt(8 / Math.PI); // 2z = k·(x + 0.044715·x³)
  return sigmoidGate(x, k, 0.044715 * k) as tf.Tensor3D;
}
