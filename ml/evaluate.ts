import { encodeInstructionPrompt, sftRow } from './mixing';
import type { CausalLM } from './families';
import { deriveSeed } from './random';
import { isScorer, tfScorer, type GenerateOptions, type Row, type Scorer } from './scorer';
import type { Tokenizer } from './tokenizer';

/** Windows scored per forward pass; bounds memory, not results. */
const EVAL_BATCH = 8;

/** Called between forward passes: `done` of `total` units (windows, or pairs) are scored. */
export type EvalProgress = (p: { done: number; total: number }) => void;

export type { GenerateOptions } from './scorer';

const asScorer = (model: CausalLM | Scorer): Scorer => (isScorer(model) ? model : tfScorer(model));

/**
 * Perplexity over a token stream. Windows of contextLength+1 tokens advance by contextLength,
 * so their targets do not overlap and every token after the first is predicted exactly once
 * (the last window may be shorter). maxWindows keeps evenly spaced windows. Every engine's
 * scorer yields to the event loop between forward passes, so heartbeats and cancellation keep
 * running during an evaluation of any length.
 */
export async function perplexity(
  model: CausalLM | Scorer,
  tokens: number[],
  o: { maxWindows?: number; onProgress?: EvalProgress } = {},
): Promise<{ perplexity: number; meanLoss: number; tokens: number }> {
  const scorer = asScorer(model);
  const T = scorer.contextLength;
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
  const { nll, count } = await sumNll(scorer, rows, o.onProgress);
  const meanLoss = nll / count;
  return { perplexity: Math.exp(meanLoss), meanLoss, tokens: count };
}

/** Summed negative log-likelihood and argmax hits over mask==1 targets, EVAL_BATCH rows per forward pass. */
async function sumNll(scorer: Scorer, rows: Row[], onProgress?: EvalProgress): Promise<{ nll: number; count: number; correct: number }> {
  let nll = 0;
  let count = 0;
  let correct = 0;
  for (let i = 0; i < rows.length; i += EVAL_BATCH) {
    const chunk = rows.slice(i, i + EVAL_BATCH);
    const part = await scorer.nll(chunk);
    nll += part.nll;
    correct += part.correct;
    count += part.count;
    onProgress?.({ done: i + chunk.length, total: rows.length });
  }
  return { nll, count, correct };
}

/** Continues `prompt`; greedy when temperature is 0 or absent, else seeded sampling. Stops at eos. */
export async function generate(model: CausalLM | Scorer, tokenizer: Tokenizer, prompt: string, o: GenerateOptions): Promise<string> {
  return tokenizer.decode(await asScorer(model).generate(tokenizer.encode(prompt), { ...o, eosId: tokenizer.eosId }));
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
  model: CausalLM | Scorer,
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
  const scorer = asScorer(model);
  const rows = encoded.map((example) => sftRow(example, { contextLength: scorer.contextLength, padId: tokenizer.padId, eosId: tokenizer.eosId }));
  const { nll, count, correct } = await sumNll(scorer, rows);

  let exact = 0;
  let rouge = 0;
  const samples: InstructionScore['samples'] = [];
  for (const [i, pair] of chosen.entries()) {
    const example = encoded[i] as { prompt: number[]; response: number[] };
    const maxNewTokens = o.maxNewTokens ?? example.response.length + 16;
    const generated = tokenizer.decode(await scorer.generate(example.prompt, { maxNewTokens, eosId: tokenizer.eosId }));
    const seed = deriveSeed(o.sampleSeed ?? 0, 'sample', pair.prompt);
    const sampled = tokenizer.decode(await scorer.generate(example.prompt, { ...SAMPLE_SETTINGS, maxNewTokens, seed, eosId: tokenizer.eosId }));
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
