import { setImmediate as yieldToEventLoop } from 'timers/promises';
import * as tf from '@tensorflow/tfjs';
import { encodeInstructionPrompt, sftRow } from './mixing';
import type { CausalLM } from './families';
import { deriveSeed, mulberry32 } from './random';
import type { Tokenizer } from './tokenizer';

/** Windows scored per forward pass; bounds memory, not results. */
const EVAL_BATCH = 8;

/**
 * Evaluation is synchronous tensor work, written as generators that yield after each forward pass.
 * The async callers await the event loop at every yield, so a worker's heartbeats, timers and
 * cancellation keep running during an evaluation of any length; `generate` runs them straight through.
 */
type Work<T> = Generator<void, T, void>;

/** Called between forward passes: `done` of `total` units (windows, or pairs) are scored. */
export type EvalProgress = (p: { done: number; total: number }) => void;

function runToEnd<T>(work: Work<T>): T {
  for (;;) {
    const next = work.next();
    if (next.done) return next.value;
  }
}

async function runYielding<T>(work: Work<T>): Promise<T> {
  for (;;) {
    const next = work.next();
    if (next.done) return next.value;
    await yieldToEventLoop();
  }
}

/**
 * Perplexity over a token stream. Windows of contextLength+1 tokens advance by contextLength,
 * so their targets do not overlap and every token after the first is predicted exactly once
 * (the last window may be shorter). maxWindows keeps evenly spaced windows.
 */
export async function perplexity(
  model: CausalLM,
  tokens: number[],
  o: { maxWindows?: number; onProgress?: EvalProgress } = {},
): Promise<{ perplexity: number; meanLoss: number; tokens: number }> {
  const T = model.config.contextLength;
  if (tokens.length < 2) throw new Error('perplexity needs at least 2 tokens');
  const starts: number[] = [];
  for (let start = 0; start + 1 < tokens.length; start += T) starts.push(start);
  const chosen = o.maxWindows !== undefined && o.maxWindows < starts.length
    ? Array.from({ length: Math.max(1, o.maxWindows) }, (_, i) => starts[Math.floor((i * starts.length) / Math.max(1, o.maxWindows ?? 1))] as number)
    : starts;
  const rows = chosen.map((start) => {
    const window = tokens.slice(start, start + T + 1);
    const used = window.length - 1;
    const pad = (row: number[]): number[] => [...row, ...new Array<number>(T - row.length).fill(0)];
    return { inputs: pad(window.slice(0, -1)), targets: pad(window.slice(1)), mask: pad(new Array<number>(used).fill(1)) };
  });
  const { nll, count } = await runYielding(sumNll(model, rows, o.onProgress));
  const meanLoss = nll / count;
  return { perplexity: Math.exp(meanLoss), meanLoss, tokens: count };
}

interface Row { inputs: number[]; targets: number[]; mask: number[] }

/** Summed negative log-likelihood and argmax hits over mask==1 targets; yields after each forward pass. */
function* sumNll(model: CausalLM, rows: Row[], onProgress?: EvalProgress): Work<{ nll: number; count: number; correct: number }> {
  let nll = 0;
  let count = 0;
  let correct = 0;
  for (let i = 0; i < rows.length; i += EVAL_BATCH) {
    const chunk = rows.slice(i, i + EVAL_BATCH);
    const [chunkNll, chunkCorrect, chunkCount] = tf.tidy(() => {
      const inputs = tf.tensor2d(chunk.map((r) => r.inputs), undefined, 'int32');
      const targets = tf.tensor2d(chunk.map((r) => r.targets), undefined, 'int32');
      const mask = tf.tensor2d(chunk.map((r) => r.mask), undefined, 'float32');
      const logits = model.logits(inputs); // [B,T,V]
      const logProbs = tf.logSoftmax(logits);
      const picked = tf.oneHot(targets, model.config.vocabSize).toFloat().mul(logProbs).sum(-1); // [B,T]
      const hits = logits.argMax(-1).equal(targets).toFloat(); // [B,T]
      return [picked.mul(mask).sum().neg().dataSync()[0], hits.mul(mask).sum().dataSync()[0], mask.sum().dataSync()[0]];
    });
    nll += chunkNll as number;
    correct += chunkCorrect as number;
    count += chunkCount as number;
    onProgress?.({ done: i + chunk.length, total: rows.length });
    yield;
  }
  return { nll, count, correct };
}

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0 or absent: greedy. Otherwise logits are divided by it before seeded sampling. */
  temperature?: number;
  /** When sampling, only the k most likely tokens are candidates (ties to the lower id); absent or 0: all. */
  topK?: number;
  seed?: number;
}

/** Continues `prompt`; greedy when temperature is 0 or absent, else seeded sampling. Stops at eos. */
export function generate(model: CausalLM, tokenizer: Tokenizer, prompt: string, o: GenerateOptions): string {
  return tokenizer.decode(runToEnd(generateIds(model, tokenizer, tokenizer.encode(prompt), o)));
}

/** Yields after each new token's forward pass. */
function* generateIds(model: CausalLM, tokenizer: Tokenizer, promptIds: number[], o: GenerateOptions): Work<number[]> {
  const T = model.config.contextLength;
  const temperature = o.temperature ?? 0;
  const uniform = mulberry32(deriveSeed(o.seed ?? 0, 'generate'));
  const ids = promptIds.length > 0 ? [...promptIds] : [tokenizer.eosId];
  const generated: number[] = [];
  for (let i = 0; i < o.maxNewTokens; i++) {
    // No KV cache: recomputing the window is fine at the sizes this engine trains.
    const context = ids.slice(-T);
    const last = tf.tidy(() => {
      const logits = model.logits(tf.tensor2d([context], undefined, 'int32')); // [1,t,V]
      return logits.slice([0, context.length - 1, 0], [1, 1, -1]).reshape([-1]).dataSync() as Float32Array; // [V]
    });
    const next = temperature > 0 ? sample(last, temperature, o.topK ?? 0, uniform()) : argmax(last);
    if (next === tokenizer.eosId) break;
    ids.push(next);
    generated.push(next);
    yield;
  }
  return generated;
}

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if ((values[i] as number) > (values[best] as number)) best = i;
  return best;
}

function sample(logits: Float32Array, temperature: number, topK: number, u: number): number {
  // Candidates by descending logit, ties to the lower id: the same draw on every run.
  let candidates = Array.from(logits.keys());
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

export interface InstructionScore {
  /** exp(mean NLL) of the reference response + eos given the formatted prompt (teacher forcing). */
  responsePerplexity: number;
  /** Share of reference response tokens the model ranks first (teacher forcing). */
  tokenAccuracy: number;
  /** Share of greedy generations equal to the reference after trimming whitespace. */
  exactMatch: number;
  /** Mean ROUGE-L F1 over whitespace-separated words of generation vs reference. */
  rougeL: number;
  /** `generated` is greedy (what the metrics score); `sampled` is one seeded draw, to show the spread. */
  samples: { prompt: string; expected: string; generated: string; sampled: string }[];
}

/** How `sampled` is drawn: seeded per pair, so the same model and pairs give the same samples. */
export const SAMPLE_SETTINGS = { temperature: 0.8, topK: 20 } as const;

/**
 * How well the model follows instructions, on the same prompt template SFT trains with.
 * maxNewTokens defaults to the reference length plus a margin of 16 tokens. `onProgress` counts
 * the pairs whose generations are done.
 */
export async function instructionScore(
  model: CausalLM,
  tokenizer: Tokenizer,
  pairs: { prompt: string; response: string }[],
  o: { maxNewTokens?: number; maxPairs?: number; sampleSeed?: number; onProgress?: EvalProgress } = {},
): Promise<InstructionScore> {
  const chosen = pairs.slice(0, o.maxPairs ?? pairs.length);
  if (chosen.length === 0) throw new Error('instructionScore needs at least one prompt/response pair');
  const encoded = chosen.map((pair) => ({
    prompt: encodeInstructionPrompt(tokenizer, pair.prompt),
    response: tokenizer.encode(pair.response),
  }));
  const rows = encoded.map((example) => sftRow(example, { contextLength: model.config.contextLength, padId: tokenizer.padId, eosId: tokenizer.eosId }));
  const { nll, count, correct } = await runYielding(sumNll(model, rows));

  let exact = 0;
  let rouge = 0;
  const samples: InstructionScore['samples'] = [];
  for (const [i, pair] of chosen.entries()) {
    const example = encoded[i] as { prompt: number[]; response: number[] };
    const maxNewTokens = o.maxNewTokens ?? example.response.length + 16;
    const generated = tokenizer.decode(await runYielding(generateIds(model, tokenizer, example.prompt, { maxNewTokens })));
    const seed = deriveSeed(o.sampleSeed ?? 0, 'sample', pair.prompt);
    const sampled = tokenizer.decode(await runYielding(generateIds(model, tokenizer, example.prompt, { ...SAMPLE_SETTINGS, maxNewTokens, seed })));
    if (generated.trim() === pair.response.trim()) exact++;
    rouge += rougeL(generated, pair.response);
    samples.push({ prompt: pair.prompt, expected: pair.response, generated, sampled });
    o.onProgress?.({ done: i + 1, total: chosen.length });
  }
  return {
    responsePerplexity: Math.exp(nll / Math.max(1, count)),
    tokenAccuracy: correct / Math.max(1, count),
    exactMatch: exact / chosen.length,
    rougeL: rouge / chosen.length,
    samples,
  };
}

/** ROUGE-L F1 on whitespace-separated words (longest common subsequence). */
export function rougeL(candidate: string, reference: string): number {
  const a = candidate.split(/\s+/).filter(Boolean);
  const b = reference.split(/\s+/).filter(Boolean);
  if (a.length === 0 || b.length === 0) return a.length === b.length ? 1 : 0;
  let previous = new Array<number>(b.length + 1).fill(0);
  for (const word of a) {
    const current = new Array<number>(b.length + 1).fill(0);
    for (let j = 1; j <= b.length; j++) {
      current[j] = word === b[j - 1] ? (previous[j - 1] as number) + 1 : Math.max(previous[j] as number, current[j - 1] as number);
    }
    previous = current;
  }
  const lcs = previous[b.length] as number;
  if (lcs === 0) return 0;
  const precision = lcs / a.length;
  const recall = lcs / b.length;
  return (2 * precision * recall) / (precision + recall);
}
