import { deriveSeed, mulberry32, permutation, randomInt, Uniform } from './random';

/**
 * Training batches as pure functions of (seed, step): a run resumed from the checkpoint at
 * step N sees exactly the batches N, N+1, … the uninterrupted run would have seen.
 */

/** Each field is [batchSize][contextLength]; targets are inputs shifted left by one. */
export interface Batch {
  inputs: number[][];
  targets: number[][];
  /** 1 where the target counts towards the loss, 0 for padding and (in SFT) prompt tokens. */
  mask: number[][];
}
export type BatchSource = (step: number) => Batch;

export interface MixedLmOptions {
  /** Token stream of the new domain (documents joined with eos). */
  domain: number[];
  /** Token stream of general "replay" data that guards against forgetting. */
  replay: number[];
  /** Fraction of each batch's rows drawn from replay, in [0, 1]. */
  replayRatio: number;
  batchSize: number;
  contextLength: number;
  seed: number;
}

export function mixedLmBatches(o: MixedLmOptions): BatchSource {
  checkSizes(o.batchSize, o.contextLength);
  if (!(o.replayRatio >= 0 && o.replayRatio <= 1)) throw new Error(`replayRatio must be in [0, 1], got ${o.replayRatio}`);
  if (o.domain.length < 2 && o.replay.length < 2) throw new Error('mixedLmBatches: both domain and replay streams are empty (need ≥ 2 tokens)');
  const replayRows =
    o.replay.length < 2 ? 0
      : o.domain.length < 2 ? o.batchSize
        : Math.round(o.batchSize * o.replayRatio);
  return (step) => {
    checkStep(step);
    const uniform = mulberry32(deriveSeed(o.seed, 'lm', step));
    const rows: number[][] = [];
    for (let r = 0; r < o.batchSize; r++) rows.push(sampleWindow(r < replayRows ? o.replay : o.domain, o.contextLength + 1, uniform));
    return {
      inputs: rows.map((row) => row.slice(0, -1)),
      targets: rows.map((row) => row.slice(1)),
      mask: rows.map(() => new Array<number>(o.contextLength).fill(1)),
    };
  };
}

/** `length` consecutive tokens at a random offset; a stream shorter than that is read cyclically. */
function sampleWindow(stream: number[], length: number, uniform: Uniform): number[] {
  if (stream.length >= length) {
    const start = randomInt(uniform, stream.length - length + 1);
    return stream.slice(start, start + length);
  }
  const start = randomInt(uniform, stream.length);
  return Array.from({ length }, (_, i) => stream[(start + i) % stream.length] as number);
}

export interface SftExample {
  prompt: number[];
  response: number[];
}

export interface SftOptions {
  examples: SftExample[];
  batchSize: number;
  contextLength: number;
  seed: number;
  padId: number;
  eosId: number;
}

/**
 * Supervised fine-tuning batches: each epoch visits every example once, in a seeded order.
 * The loss mask covers only response and eos targets, so the model learns to answer, not to
 * reproduce prompts.
 */
export function sftBatches(o: SftOptions): BatchSource {
  checkSizes(o.batchSize, o.contextLength);
  if (o.examples.length === 0) throw new Error('sftBatches: no examples');
  const orders = new Map<number, number[]>();
  const orderOf = (epoch: number): number[] => {
    let order = orders.get(epoch);
    if (order === undefined) {
      order = permutation(mulberry32(deriveSeed(o.seed, 'sft', epoch)), o.examples.length);
      if (orders.size > 4) orders.clear(); // memo only; the result never depends on it
      orders.set(epoch, order);
    }
    return order;
  };
  return (step) => {
    checkStep(step);
    const batch: Batch = { inputs: [], targets: [], mask: [] };
    for (let r = 0; r < o.batchSize; r++) {
      const index = step * o.batchSize + r;
      const epoch = Math.floor(index / o.examples.length);
      const example = o.examples[orderOf(epoch)[index % o.examples.length] as number] as SftExample;
      const row = sftRow(example, o);
      batch.inputs.push(row.inputs);
      batch.targets.push(row.targets);
      batch.mask.push(row.mask);
    }
    return batch;
  };
}

/**
 * One example as inputs/targets/mask of length contextLength. The sequence is
 * prompt + response + eos, padded with padId. When it does not fit, the prompt loses tokens
 * from its start (keeping at least half the window for the response), then the end is cut.
 */
export function sftRow(
  example: SftExample,
  o: { contextLength: number; padId: number; eosId: number },
): { inputs: number[]; targets: number[]; mask: number[] } {
  const window = o.contextLength + 1;
  const answer = [...example.response, o.eosId];
  const promptBudget = Math.max(window - answer.length, Math.ceil(window / 2));
  const prompt = example.prompt.length > promptBudget ? example.prompt.slice(example.prompt.length - promptBudget) : example.prompt;
  const sequence = [...prompt, ...answer].slice(0, window);
  const used = sequence.length;
  while (sequence.length < window) sequence.push(o.padId);
  const inputs = sequence.slice(0, -1);
  const targets = sequence.slice(1);
  // Target t is sequence[t + 1]: it counts when it lies in the answer and is not padding.
  const mask = targets.map((_, t) => (t + 1 >= prompt.length && t + 1 < used ? 1 : 0));
  return { inputs, targets, mask };
}

/** The single instruction template, shared by SFT data and instruction evaluation. */
export function formatInstructionPrompt(prompt: string): string {
  return `### Instruction:\n${prompt.trim()}\n\n### Response:\n`;
}

function checkSizes(batchSize: number, contextLength: number): void {
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`batchSize must be a positive integer, got ${batchSize}`);
  if (!Number.isInteger(contextLength) || contextLength < 1) throw new Error(`contextLength must be a positive integer, got ${contextLength}`);
}

function checkStep(step: number): void {
  if (!Number.isInteger(step) || step < 0) throw new Error(`step must be a non-negative integer, got ${step}`);
}
