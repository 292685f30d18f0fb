import { setImmediate as yieldToEventLoop } from 'timers/promises';
import * as tf from '@tensorflow/tfjs';
import type { CausalLM } from './families';
import { deriveSeed, mulberry32 } from './random';

/**
 * What evaluation asks of a model, whichever engine runs it: the built-in engine's TensorFlow.js
 * model in this process (`tfScorer`), or the Hugging Face engine's PyTorch one in its own process
 * (activities/hfScorer.ts). Perplexity, the instruction score, task accuracy and sample answers
 * (ml/evaluate.ts, ml/choices.ts) are written once, over this.
 */

/** One scored sequence: targets count where mask is 1. */
export interface Row {
  inputs: number[];
  targets: number[];
  mask: number[];
}

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0 or absent: greedy. Otherwise logits are divided by it before seeded sampling. */
  temperature?: number;
  /** When sampling, only the k most likely tokens are candidates (ties to the lower id); absent or 0: all. */
  topK?: number;
  seed?: number;
}

export interface Scorer {
  /** Tokens per row the model reads (its training window). */
  readonly contextLength: number;
  /** Summed negative log-likelihood, argmax hits and counted targets over the rows' mask. */
  nll(rows: Row[]): Promise<{ nll: number; count: number; correct: number }>;
  /** Summed log-likelihood of each row's masked targets. */
  logLikelihoods(rows: Row[]): Promise<number[]>;
  /** New ids after `promptIds`, stopping at `eosId`: greedy, or seeded sampling (`sampleNext`). */
  generate(promptIds: number[], o: GenerateOptions & { eosId: number }): Promise<number[]>;
}

export function isScorer(x: CausalLM | Scorer): x is Scorer {
  return typeof (x as Scorer).nll === 'function';
}

/** The built-in engine's model as a Scorer. Each call yields to the event loop after its forward pass. */
export function tfScorer(model: CausalLM): Scorer {
  const T = model.config.contextLength;
  return {
    contextLength: T,
    async nll(rows) {
      const [nll, correct, count] = tf.tidy(() => {
        const inputs = tf.tensor2d(rows.map((r) => r.inputs), undefined, 'int32');
        const targets = tf.tensor2d(rows.map((r) => r.targets), undefined, 'int32');
        const mask = tf.tensor2d(rows.map((r) => r.mask), undefined, 'float32');
        const logits = model.logits(inputs); // [B,T,V]
        const logProbs = tf.logSoftmax(logits);
        const picked = tf.oneHot(targets, model.config.vocabSize).toFloat().mul(logProbs).sum(-1); // [B,T]
        const hits = logits.argMax(-1).equal(targets).toFloat(); // [B,T]
        return [picked.mul(mask).sum().neg().dataSync()[0], hits.mul(mask).sum().dataSync()[0], mask.sum().dataSync()[0]] as number[];
      });
      await yieldToEventLoop();
      return { nll: nll as number, count: count as number, correct: correct as number };
    },
    async logLikelihoods(rows) {
      const values = tf.tidy(() => {
        const inputs = tf.tensor2d(rows.map((r) => r.inputs), undefined, 'int32');
        const targets = tf.tensor2d(rows.map((r) => r.targets), undefined, 'int32');
        const mask = tf.tensor2d(rows.map((r) => r.mask), undefined, 'float32');
        const logProbs = tf.logSoftmax(model.logits(inputs)); // [B,T,V]
        const picked = tf.oneHot(targets, model.config.vocabSize).toFloat().mul(logProbs).sum(-1); // [B,T]
        return Array.from(picked.mul(mask).sum(-1).dataSync()); // [B]
      });
      await yieldToEventLoop();
      return values;
    },
    async generate(promptIds, o) {
      const temperature = o.temperature ?? 0;
      const uniform = mulberry32(deriveSeed(o.seed ?? 0, 'generate'));
      const ids = promptIds.length > 0 ? [...promptIds] : [o.eosId];
      const generated: number[] = [];
      for (let i = 0; i < o.maxNewTokens; i++) {
        // No KV cache: recomputing the window is fine at the sizes this engine trains.
        const context = ids.slice(-T);
        const last = tf.tidy(() => {
          const logits = model.logits(tf.tensor2d([context], undefined, 'int32')); // [1,t,V]
          return logits.slice([0, context.length - 1, 0], [1, 1, -1]).reshape([-1]).dataSync() as Float32Array; // [V]
        });
        const next = temperature > 0 ? sampleNext(last, temperature, o.topK ?? 0, uniform()) : argmax(last);
        if (next === o.eosId) break;
        ids.push(next);
        generated.push(next);
        await yieldToEventLoop();
      }
      return generated;
    },
  };
}

export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if ((values[i] as number) > (values[best] as number)) best = i;
  return best;
}

/**
 * One seeded draw from softmax(logits / temperature) over the top k (ties to the lower id), with the
 * uniform number `u`. trainers/hf/dacp_hf_eval.py draws the same way.
 */
export function sampleNext(logits: ArrayLike<number>, temperature: number, topK: number, u: number): number {
  // Candidates by descending logit, ties to the lower id: the same draw on every run.
  let candidates = Array.from({ length: logits.length }, (_, i) => i);
  if (topK > 0 && topK < logits.length) {
    candidates.sort((a, b) => (logits[b] as number) - (logits[a] as number) || a - b);
    candidates = candidates.slice(0, topK);
  }
  const max = candidates.reduce((m, id) => Math.max(m, logits[id] as number), Number.NEGATIVE_INFINITY);
  const weights = candidates.map((id) => Math.exp(((logits[id] as number) - max) / temperature));
  const total = weights.reduce((a, b) => a + b, 0);
  let acc = 0;
  for (let i = 0; i < weights.length; i++) {
    acc += (weights[i] as number) / total;
    if (u < acc) return candidates[i] as number;
  }
  return candidates[candidates.length - 1] as number;
}
