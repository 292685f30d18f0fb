import type { CausalLM } from './families';
import { isScorer, tfScorer, type Row, type Scorer } from './scorer';
import type { Tokenizer } from './tokenizer';

/**
 * Multiple-choice task accuracy, scored the way lm-evaluation-harness scores it: the model reads
 * `Question: …\nAnswer:` and each choice is the continuation ` <choice>`; the choice whose tokens
 * have the highest summed log-likelihood is the model's answer (`acc`). `accNorm` divides by the
 * choice's length in bytes first, so long choices are not penalised for being long.
 */

export interface ChoiceItem {
  question: string;
  choices: string[];
  /** Index of the right choice. */
  answer: number;
}

export interface ChoiceScore {
  accuracy: number;
  normalizedAccuracy: number;
  items: number;
}

/** Rows scored per forward pass; bounds memory, not results. */
const BATCH = 8;

export function choicePrompt(question: string): string {
  return `Question: ${question.trim()}\nAnswer:`;
}

/**
 * context + continuation as one row of contextLength: the context loses tokens from its start
 * when the pair does not fit (the continuation is kept whole where it can be).
 */
export function choiceRow(context: number[], continuation: number[], contextLength: number, padId: number): Row {
  const window = contextLength + 1;
  const kept = continuation.slice(0, window - 1);
  const room = window - kept.length;
  const head = context.length > room ? context.slice(context.length - room) : context;
  const sequence = [...head, ...kept];
  const used = sequence.length;
  while (sequence.length < window) sequence.push(padId);
  const targets = sequence.slice(1);
  // Target t predicts sequence[t + 1]; it counts when that token is part of the continuation.
  const mask = targets.map((_, t) => (t + 1 >= head.length && t + 1 < used ? 1 : 0));
  return { inputs: sequence.slice(0, -1), targets, mask };
}

export async function choiceAccuracy(
  model: CausalLM | Scorer,
  tokenizer: Tokenizer,
  items: ChoiceItem[],
  o: { maxItems?: number; onProgress?: (p: { done: number; total: number }) => void } = {},
): Promise<ChoiceScore> {
  const chosen = items.slice(0, o.maxItems ?? items.length);
  if (chosen.length === 0) throw new Error('choiceAccuracy needs at least one question');
  const scorer = isScorer(model) ? model : tfScorer(model);
  const T = scorer.contextLength;
  const rows: Row[] = [];
  const owners: { item: number; choice: number; bytes: number }[] = [];
  chosen.forEach((item, i) => {
    const context = tokenizer.encode(choicePrompt(item.question));
    item.choices.forEach((choice, c) => {
      const continuation = tokenizer.encode(` ${choice.trim()}`);
      rows.push(choiceRow(context, continuation, T, tokenizer.padId));
      owners.push({ item: i, choice: c, bytes: Math.max(1, Buffer.byteLength(choice.trim())) });
    });
  });
  const scores: number[] = [];
  for (let start = 0; start < rows.length; start += BATCH) {
    // Each scorer yields to the event loop after its forward pass: heartbeats and cancellation keep flowing.
    scores.push(...(await scorer.logLikelihoods(rows.slice(start, start + BATCH))));
    o.onProgress?.({ done: Math.min(rows.length, start + BATCH), total: rows.length });
  }
  const best = chosen.map(() => ({ raw: -Infinity, rawChoice: -1, norm: -Infinity, normChoice: -1 }));
  owners.forEach((owner, r) => {
    const b = best[owner.item] as (typeof best)[number];
    const score = scores[r] as number;
    if (score > b.raw) Object.assign(b, { raw: score, rawChoice: owner.choice });
    if (score / owner.bytes > b.norm) Object.assign(b, { norm: score / owner.bytes, normChoice: owner.choice });
  });
  const accuracy = best.filter((b, i) => b.rawChoice === (chosen[i] as ChoiceItem).answer).length / chosen.length;
  const normalizedAccuracy = best.filter((b, i) => b.normChoice === (chosen[i] as ChoiceItem).answer).length / chosen.length;
  return { accuracy, normalizedAccuracy, items: chosen.length };
}
