import { setImmediate as yieldToEventLoop } from 'timers/promises';
import * as tf from '@tensorflow/tfjs';
import { z } from 'zod';
import { Batch, BatchSource } from './mixing';
import { modelFromWeights, parseAnyModelConfig, specsOf, type CausalLM } from './families';
import { modelFileTensors, readReserved, serializeModel, withReserved } from './modelFile';
import { decodeSafetensors, encodeSafetensors, SafetensorsTensor } from './safetensors';
import type { Tokenizer } from './tokenizer';
import { isFloat32Array } from './typedArrays';

/**
 * The training loop: AdamW with decoupled weight decay, linear warm-up then cosine decay,
 * global-norm gradient clipping. The optimizer is written out by hand (a dozen tensor ops)
 * so that its whole state — two moments per parameter and the step — lives in the
 * checkpoint, and a resumed run continues bit for bit where the interrupted one stopped.
 */

export const CHECKPOINT_FORMAT = 'dacp-checkpoint/1';

/** A checkpoint or model file before it is written: its tensors and safetensors metadata. */
export interface CheckpointTensors {
  tensors: Record<string, SafetensorsTensor>;
  metadata: Record<string, string>;
}

/** GPT-2/3 style AdamW constants; fixed so a checkpoint never disagrees with the code about them. */
const ADAM = { beta1: 0.9, beta2: 0.95, epsilon: 1e-8 } as const;

export const trainSettingsSchema = z
  .object({
    totalSteps: z.number().int().positive(),
    batchSize: z.number().int().positive(),
    learningRate: z.number().positive().finite(),
    warmupSteps: z.number().int().nonnegative(),
    minLrRatio: z.number().min(0).max(1),
    weightDecay: z.number().min(0).finite(),
    /** Global gradient-norm ceiling; 0 disables clipping. */
    gradClip: z.number().min(0).finite(),
    seed: z.number().int(),
  })
  .strict();

export interface TrainSettings {
  totalSteps: number;
  batchSize: number;
  learningRate: number;
  warmupSteps: number;
  minLrRatio: number;
  weightDecay: number;
  gradClip: number;
  seed: number;
}

export function parseTrainSettings(json: unknown): TrainSettings {
  const parsed = trainSettingsSchema.safeParse(json);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`);
    throw new Error(`invalid training settings: ${issues.join('; ')}`);
  }
  return parsed.data;
}

/**
 * AdamW's state over every parameter at once: the moments as two flat vectors in the model's
 * variable order, so an update is a dozen kernels however many tensors the model has (one set per
 * tensor took ~13 kernels each). `decayMask` is 1 where weight decay applies (matrices), else 0.
 */
interface FlatState {
  m: tf.Variable;
  v: tf.Variable;
  decayMask: tf.Tensor1D;
  /** Offset and size of each parameter in the flat vectors, in model.variables order. */
  layout: { name: string; offset: number; size: number; shape: number[] }[];
}

/** What to change in the spec when training diverged: the two settings that tame it, with their values. */
export function divergenceAdvice(settings: { learningRate: number; gradClip: number }): string {
  const clip = settings.gradClip > 0
    ? `clip gradients harder with a smaller gradClip (now ${settings.gradClip})`
    : 'enable gradient clipping (gradClip, e.g. 1)';
  return `lower learningRate (now ${settings.learningRate}) or ${clip}`;
}

/**
 * The loss or the gradient norm stopped being finite. Training is a pure function of the spec,
 * the data and the checkpoint it resumed from, so a retry would diverge at the same step: the
 * caller fails the run once, naming the step, instead of retrying.
 */
export class TrainingDivergedError extends Error {
  override readonly name = 'TrainingDivergedError';

  constructor(
    /** The 1-based step that diverged, as progress and checkpoints count steps (step N = after N updates). */
    readonly step: number,
    readonly loss: number,
    /** Null when the trainer did not report it (external trainers report only the loss). */
    readonly gradNorm: number | null,
    settings: { learningRate: number; gradClip: number },
  ) {
    const what = Number.isFinite(loss)
      ? `gradient norm is ${gradNorm} (loss ${loss})`
      : `loss is ${loss}${gradNorm === null ? '' : ` (gradient norm ${gradNorm})`}`;
    super(`training diverged at step ${step}: ${what}; ${divergenceAdvice(settings)}`);
  }
}

export class Trainer {
  private constructor(
    readonly model: CausalLM,
    readonly tokenizer: Tokenizer,
    readonly settings: TrainSettings,
    private currentStep: number,
    private readonly state: FlatState,
    /** Loss of the most recent step (NaN before the first); survives checkpoints. */
    private latestLoss: number,
    /** Caller metadata of the checkpoint this trainer was restored from ({} when fresh). */
    readonly meta: Record<string, string>,
  ) {}

  static create(model: CausalLM, tokenizer: Tokenizer, settings: TrainSettings): Trainer {
    const checked = parseTrainSettings(settings);
    if (model.config.vocabSize !== tokenizer.vocabSize) {
      throw new Error(`model vocabSize ${model.config.vocabSize} does not match the tokenizer's ${tokenizer.vocabSize}`);
    }
    const zeros = new Map<string, { m: Float32Array; v: Float32Array }>();
    for (const [name, variable] of model.variables) zeros.set(name, { m: new Float32Array(variable.size), v: new Float32Array(variable.size) });
    return new Trainer(model, tokenizer, checked, 0, flatState(model, zeros), Number.NaN, {});
  }

  /** Restores everything checkpoint() wrote; rejects foreign, corrupted or inconsistent buffers. */
  static fromCheckpoint(buf: Buffer): Trainer {
    return Trainer.fromCheckpointTensors(decodeSafetensors(buf));
  }

  /** fromCheckpoint from decoded tensors (ArtifactStore.getSafetensors streams them in). */
  static fromCheckpointTensors({ tensors, metadata }: { tensors: Record<string, SafetensorsTensor>; metadata: Record<string, string> }): Trainer {
    const fail = (why: string): Error => new Error(`invalid training checkpoint: ${why}`);
    const { config, tokenizer, meta } = readReserved(metadata, CHECKPOINT_FORMAT, tensors, 'training checkpoint');
    const settings = parseTrainSettings(parseJson(metadata['dacp.settings'], 'dacp.settings'));
    const step = Number(metadata['dacp.step']);
    if (!Number.isInteger(step) || step < 0 || step > settings.totalSteps) throw fail(`dacp.step "${metadata['dacp.step']}" is not a step in 0..${settings.totalSteps}`);
    const optimizer = parseJson(metadata['dacp.optimizer'], 'dacp.optimizer');
    if (JSON.stringify(optimizer) !== JSON.stringify({ kind: 'adamw', ...ADAM })) throw fail(`optimizer ${JSON.stringify(optimizer)} is not this code's AdamW ${JSON.stringify(ADAM)}`);
    const lastLoss = Number(metadata['dacp.lastLoss'] ?? 'NaN');

    const weights: Record<string, Float32Array> = {};
    const state = new Map<string, { m: Float32Array; v: Float32Array }>();
    const modelConfig = parseAnyModelConfig(config);
    for (const spec of specsOf(modelConfig)) {
      const [w, m, v] = ['model.', 'adam.m.', 'adam.v.'].map((prefix) => {
        const tensor = tensors[prefix + spec.name];
        if (tensor === undefined || !isFloat32Array(tensor.data)) throw fail(`F32 tensor "${prefix}${spec.name}" is missing`);
        return tensor.data;
      }) as [Float32Array, Float32Array, Float32Array];
      if (m.length !== w.length || v.length !== w.length) throw fail(`optimizer moments of "${spec.name}" do not match its size`);
      weights[spec.name] = w;
      state.set(spec.name, { m, v });
    }
    const expected = 3 * Object.keys(weights).length;
    if (Object.keys(tensors).length !== expected) throw fail(`holds ${Object.keys(tensors).length} tensors, expected ${expected}`);
    if (modelConfig.vocabSize !== tokenizer.vocabSize) throw fail(`model vocabSize ${modelConfig.vocabSize} does not match the tokenizer's ${tokenizer.vocabSize}`);
    const model = modelFromWeights(modelConfig, weights);
    return new Trainer(model, tokenizer, settings, step, flatState(model, state), lastLoss, meta);
  }

  get step(): number {
    return this.currentStep;
  }

  get lastLoss(): number {
    return this.latestLoss;
  }

  /** Learning rate of the step with this 0-based index: linear re-warm, then cosine decay to minLrRatio × peak. */
  learningRateAt(step: number): number {
    const { learningRate: peak, warmupSteps, totalSteps, minLrRatio } = this.settings;
    if (step < warmupSteps) return (peak * (step + 1)) / warmupSteps;
    const progress = Math.min(1, (step - warmupSteps) / Math.max(1, totalSteps - warmupSteps));
    const floor = peak * minLrRatio;
    return floor + (peak - floor) * 0.5 * (1 + Math.cos(Math.PI * progress));
  }

  /** One optimizer step. Throws TrainingDivergedError, leaving the state untouched, if the loss or gradients are not finite. */
  trainStep(batch: Batch): { loss: number; lr: number; gradNorm: number } {
    this.checkBatch(batch);
    const lr = this.learningRateAt(this.currentStep);
    const variables = [...this.model.variables.values()];
    const { figures, grads } = tf.tidy(() => {
      const inputs = tf.tensor2d(batch.inputs, undefined, 'int32');
      const targets = tf.tensor2d(batch.targets, undefined, 'int32');
      const mask = tf.tensor2d(batch.mask, undefined, 'float32');
      const result = tf.variableGrads(() => this.model.loss(inputs, targets, mask), variables);
      const flat = tf.concat(variables.map((variable) => flatten(result.grads[variable.name] as tf.Tensor)));
      const norm = flat.square().sum().sqrt();
      return { figures: tf.stack([result.value, norm]), grads: flat };
    });
    // The one host round trip of a step: loss and gradient norm together.
    const [lossValue, normValue] = figures.dataSync() as Float32Array as unknown as [number, number];
    figures.dispose();
    if (!Number.isFinite(lossValue) || !Number.isFinite(normValue)) {
      grads.dispose();
      throw new TrainingDivergedError(this.currentStep + 1, lossValue, normValue, this.settings);
    }
    const clipScale = this.settings.gradClip > 0 && normValue > this.settings.gradClip ? this.settings.gradClip / (normValue + 1e-6) : 1;
    this.applyAdamW(variables, grads, lr, clipScale);
    grads.dispose();
    this.currentStep++;
    this.latestLoss = lossValue;
    return { loss: lossValue, lr, gradNorm: normValue };
  }

  /** One safetensors buffer: weights (model.*), AdamW moments (adam.m.*, adam.v.*), step, settings, config, tokenizer. */
  checkpoint(meta: Record<string, string> = {}): Buffer {
    const { tensors, metadata } = this.checkpointTensors(meta);
    return encodeSafetensors(tensors, metadata);
  }

  /** What checkpoint() writes, as tensors and metadata for a streamed write. */
  checkpointTensors(meta: Record<string, string> = {}): CheckpointTensors {
    const tensors: Record<string, SafetensorsTensor> = {};
    const m = this.state.m.dataSync() as Float32Array;
    const v = this.state.v.dataSync() as Float32Array;
    for (const { name, offset, size, shape } of this.state.layout) {
      const variable = this.model.variables.get(name) as tf.Variable;
      tensors[`model.${name}`] = { dtype: 'F32', shape, data: variable.dataSync() as Float32Array };
      tensors[`adam.m.${name}`] = { dtype: 'F32', shape, data: m.subarray(offset, offset + size) };
      tensors[`adam.v.${name}`] = { dtype: 'F32', shape, data: v.subarray(offset, offset + size) };
    }
    return { tensors, metadata: withReserved(meta, CHECKPOINT_FORMAT, {
      config: this.model.config,
      tokenizer: this.tokenizer.toJSON(),
      tensors,
      extra: {
        'dacp.step': String(this.currentStep),
        'dacp.settings': JSON.stringify(this.settings),
        'dacp.optimizer': JSON.stringify({ kind: 'adamw', ...ADAM }),
        'dacp.lastLoss': String(this.latestLoss),
      },
    }) };
  }

  exportModel(meta: Record<string, string> = {}): Buffer {
    return serializeModel(this.model, this.tokenizer, meta);
  }

  /** What exportModel() writes, as tensors and metadata for a streamed write. */
  exportModelTensors(meta: Record<string, string> = {}): CheckpointTensors {
    return modelFileTensors(this.model, this.tokenizer, meta);
  }

  dispose(): void {
    tf.dispose([this.state.m, this.state.v, this.state.decayMask]);
    this.model.dispose();
  }

  /** AdamW over the flat gradient: the moments in place, then each parameter from its slice of the new flat weights. */
  private applyAdamW(variables: tf.Variable[], grads: tf.Tensor, lr: number, clipScale: number): void {
    const t = this.currentStep + 1;
    // Bias corrections in float64 on the host: the same numbers in every process.
    const correction1 = 1 - ADAM.beta1 ** t;
    const correction2 = 1 - ADAM.beta2 ** t;
    const { m, v, decayMask, layout } = this.state;
    tf.tidy(() => {
      const g = clipScale === 1 ? grads : grads.mul(clipScale);
      const m1 = m.mul(ADAM.beta1).add(g.mul(1 - ADAM.beta1));
      const v1 = v.mul(ADAM.beta2).add(g.square().mul(1 - ADAM.beta2));
      const update = m1.div(correction1).div(v1.div(correction2).sqrt().add(ADAM.epsilon));
      // Decoupled decay (Loshchilov & Hutter): shrink the weight, not the gradient; matrices only.
      const weights = tf.concat(variables.map(flatten));
      const decayed = weights.mul(decayMask.mul(-lr * this.settings.weightDecay).add(1));
      const next = tf.split(decayed.sub(update.mul(lr)), layout.map((p) => p.size));
      m.assign(m1);
      v.assign(v1);
      variables.forEach((variable, i) => variable.assign(variable.rank === 1 ? (next[i] as tf.Tensor) : (next[i] as tf.Tensor).reshape(variable.shape)));
    });
  }

  private checkBatch(batch: Batch): void {
    const rows = batch.inputs.length;
    const cols = batch.inputs[0]?.length ?? 0;
    const ok = rows > 0 && cols > 0 && cols <= this.model.config.contextLength &&
      [batch.inputs, batch.targets, batch.mask].every((field) => field.length === rows && field.every((row) => row.length === cols));
    if (!ok) throw new Error(`batch must be [rows][cols] with rows ≥ 1 and 1 ≤ cols ≤ ${this.model.config.contextLength} in inputs, targets and mask alike`);
  }
}

/** A tensor as a vector; vectors as they are (a reshape is a kernel call on the native backend). */
function flatten(t: tf.Tensor): tf.Tensor {
  return t.rank === 1 ? t : t.reshape([-1]);
}

function flatState(model: CausalLM, values: Map<string, { m: Float32Array; v: Float32Array }>): FlatState {
  const decays = new Map(specsOf(model.config).map((spec) => [spec.name, spec.decay]));
  const layout: FlatState['layout'] = [];
  let total = 0;
  for (const [name, variable] of model.variables) {
    layout.push({ name, offset: total, size: variable.size, shape: [...variable.shape] });
    total += variable.size;
  }
  const m = new Float32Array(total);
  const v = new Float32Array(total);
  const decay = new Float32Array(total);
  for (const { name, offset, size } of layout) {
    const moments = values.get(name) as { m: Float32Array; v: Float32Array };
    m.set(moments.m, offset);
    v.set(moments.v, offset);
    if (decays.get(name) === true) decay.fill(1, offset, offset + size);
  }
  const id = nextStateId++;
  return {
    m: tf.tidy(() => tf.variable(tf.tensor1d(m), false, `adam.m#${id}`)),
    v: tf.tidy(() => tf.variable(tf.tensor1d(v), false, `adam.v#${id}`)),
    decayMask: tf.tensor1d(decay),
    layout,
  };
}

let nextStateId = 0;

function parseJson(text: string | undefined, key: string): unknown {
  if (text === undefined) throw new Error(`invalid training checkpoint: metadata "${key}" is missing`);
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`invalid training checkpoint: metadata "${key}" is not JSON`);
  }
}

export interface RunTrainingOptions {
  trainer: Trainer;
  batches: BatchSource;
  /** Checkpoint after every this many steps, and always after the last. */
  checkpointEvery: number;
  onStep?: (s: { step: number; loss: number; lr: number }) => void | Promise<void>;
  onCheckpoint: (s: { step: number; loss: number; checkpoint: CheckpointTensors }) => Promise<void>;
  /** Polled between steps; true stops the loop after checkpointing the steps taken so far. */
  shouldStop?: () => boolean;
}

/**
 * Trains from trainer.step to settings.totalSteps. Between steps it yields to the event loop so
 * the caller's heartbeats and cancellation get to run. A stop request ends the loop with a
 * checkpoint of the work done, so a retry resumes without losing steps.
 */
export async function runTraining(o: RunTrainingOptions): Promise<{ stoppedEarly: boolean; finalStep: number; lastLoss: number }> {
  const { trainer } = o;
  if (!Number.isInteger(o.checkpointEvery) || o.checkpointEvery < 1) throw new Error(`checkpointEvery must be a positive integer, got ${o.checkpointEvery}`);
  const { totalSteps } = trainer.settings;
  // A restored trainer's state is already in the checkpoint it came from.
  let checkpointedStep = trainer.step;
  let stoppedEarly = false;
  while (trainer.step < totalSteps) {
    if (o.shouldStop?.() === true) {
      stoppedEarly = true;
      break;
    }
    const { loss, lr } = trainer.trainStep(o.batches(trainer.step));
    await o.onStep?.({ step: trainer.step, loss, lr });
    if (trainer.step % o.checkpointEvery === 0 || trainer.step === totalSteps) {
      await o.onCheckpoint({ step: trainer.step, loss, checkpoint: trainer.checkpointTensors() });
      checkpointedStep = trainer.step;
    }
    await yieldToEventLoop();
  }
  if (stoppedEarly && trainer.step > checkpointedStep) {
    await o.onCheckpoint({ step: trainer.step, loss: trainer.lastLoss, checkpoint: trainer.checkpointTensors() });
  }
  return { stoppedEarly, finalStep: trainer.step, lastLoss: trainer.lastLoss };
}
