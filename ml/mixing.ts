import { deriveSeed, mulberry32, permutation, randomInt, Uniform } from './random';
import type { Tokenizer } from './tokenizer';

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

/** One domain source's token stream and its weight among the domain rows. */
export interface DomainPart {
  name: string;
  tokens: number[];
  weight: number;
}

export interface MixedLmOptions {
  /** Token stream of the new domain (documents joined with eos). Unused where `domainParts` is given. */
  domain: number[];
  /**
   * Several domain sources, weighted: each domain row first draws its source (with probability
   * weight / total), then a window of that source's stream. Replaces `domain`.
   */
  domainParts?: DomainPart[];
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
  const drawDomain = o.domainParts ? partSampler(o.domainParts) : (uniform: Uniform) => sampleWindow(o.domain, o.contextLength + 1, uniform);
  const domainTokens = o.domainParts ? o.domainParts.reduce((sum, p) => sum + p.tokens.length, 0) : o.domain.length;
  if (domainTokens < 2 && o.replay.length < 2) throw new Error('mixedLmBatches: both domain and replay streams are empty (need ≥ 2 tokens)');
  const replayRows =
    o.replay.length < 2 ? 0
      : domainTokens < 2 ? o.batchSize
        : Math.round(o.batchSize * o.replayRatio);
  const window = o.contextLength + 1;
  function partSampler(parts: DomainPart[]): (uniform: Uniform) => number[] {
    for (const p of parts) {
      if (!(Number.isFinite(p.weight) && p.weight >= 0)) throw new Error(`domain part "${p.name}": weight must be a number ≥ 0, got ${p.weight}`);
      if (p.weight > 0 && p.tokens.length < 2) throw new Error(`domain part "${p.name}" has weight ${p.weight} but no text (need ≥ 2 tokens); add documents to it or give it weight 0`);
    }
    const total = parts.reduce((sum, p) => sum + p.weight, 0);
    if (!(total > 0)) throw new Error('domain parts: give at least one a weight above 0');
    // Cumulative shares of the parts that have weight; the last is exactly 1, so every draw lands in one.
    const weighted = parts.filter((p) => p.weight > 0);
    let running = 0;
    const bounds = weighted.map((p) => (running += p.weight / total));
    bounds[bounds.length - 1] = 1;
    return (uniform) => {
      const u = uniform();
      return sampleWindow((weighted[bounds.findIndex((b) => u < b)] as DomainPart).tokens, window, uniform);
    };
  }
  return (step) => {
    checkStep(step);
    const uniform = mulberry32(deriveSeed(o.seed, 'lm', step));
    const batch: Batch = { inputs: [], targets: [], mask: [] };
    for (let r = 0; r < o.batchSize; r++) pushLmRow(batch, r < replayRows ? sampleWindow(o.replay, window, uniform) : drawDomain(uniform));
    return batch;
  };
}

/** A window of contextLength + 1 tokens as one language-modelling row: every target counts. */
function pushLmRow(batch: Batch, window: number[]): void {
  batch.inputs.push(window.slice(0, -1));
  batch.targets.push(window.slice(1));
  batch.mask.push(new Array<number>(window.length - 1).fill(1));
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
  /** Token stream of general (replay) text, mixed in as plain language-modelling rows. */
  replay?: number[];
  /** Fraction of each batch's rows drawn from `replay`, in [0, 1); absent or 0 is pure SFT. */
  replayRatio?: number;
}

/**
 * Supervised fine-tuning batches: each epoch visits every example once, in a seeded order.
 * The loss mask covers only response and eos targets, so the model learns to answer, not to
 * reproduce prompts.
 *
 * With a replay stream and ratio, the first round(batchSize × replayRatio) rows of every batch (at
 * most batchSize − 1) are replay windows drawn as mixedLmBatches draws them, every target counting:
 * general text trained alongside the pairs keeps SFT from erasing what pretraining kept. The pair
 * rows walk the epochs at (batchSize − replay rows) examples per step, so ratio 0 gives exactly
 * the batches of pure SFT and runs begun before replay existed resume identically.
 */
export function sftBatches(o: SftOptions): BatchSource {
  checkSizes(o.batchSize, o.contextLength);
  if (o.examples.length === 0) throw new Error('sftBatches: no examples');
  const replay = o.replay ?? [];
  const replayRows = sftReplayRows(o);
  const pairRows = o.batchSize - replayRows;
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
    if (replayRows > 0) {
      // Its own seed label: the windows differ from the ones a dacp stage with the same seed drew at this step.
      const uniform = mulberry32(deriveSeed(o.seed, 'sft-replay', step));
      for (let r = 0; r < replayRows; r++) pushLmRow(batch, sampleWindow(replay, o.contextLength + 1, uniform));
    }
    for (let r = 0; r < pairRows; r++) {
      const index = step * pairRows + r;
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

/** How many rows of each SFT batch are replay text. */
function sftReplayRows(o: SftOptions): number {
  const ratio = o.replayRatio ?? 0;
  if (!(ratio >= 0 && ratio < 1)) throw new Error(`replayRatio must be in [0, 1) so every batch keeps instruction pairs, got ${ratio}`);
  if (ratio === 0) return 0;
  if (o.replay === undefined) throw new Error(`sftBatches: replayRatio ${ratio} needs a replay token stream; pass replay or set replayRatio to 0`);
  // An empty replay set trains pure SFT, as mixedLmBatches falls back to the stream that has text.
  if (o.replay.length < 2) return 0;
  // At least one pair per batch: with a small batch the rounding alone could leave none.
  return Math.min(Math.round(o.batchSize * ratio), o.batchSize - 1);
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

/**
 * An instruction prompt as ids: the model's chat template where its tokenizer has one, else the
 * plain layout above. The response follows, closed by eos (sftRow).
 */
export function encodeInstructionPrompt(tokenizer: Tokenizer, prompt: string): number[] {
  return tokenizer.encodeInstruction?.(prompt) ?? tokenizer.encode(formatInstructionPrompt(prompt));
}

function checkSizes(batchSize: number, contextLength: number): void {
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new Error(`batchSize must be a positive integer, got ${batchSize}`);
  if (!Number.isInteger(contextLength) || contextLength < 1) throw new Error(`contextLength must be a positive integer, got ${contextLength}`);
}

function checkStep(step: number): void {
  if (!Number.isInteger(step) || step < 0) throw new Error(`step must be a non-negative integer, got ${step}`);
}
