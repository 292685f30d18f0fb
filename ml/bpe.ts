import { setImmediate as yieldToEventLoop } from 'timers/promises';
import type { Tokenizer, TokenizerJson } from './tokenizer';

/**
 * Byte-level BPE (GPT-2 style). Ids 0..255 are the UTF-8 bytes, 256.. are the learned merges in
 * the order they were learned, and the two special tokens come last: eos = vocabSize − 2,
 * pad = vocabSize − 1. Text is first split into words (letter runs, digit runs, punctuation
 * runs, whitespace runs) so no merge crosses a word boundary, then each word is merged rank by
 * rank. Every string round-trips, except that lone UTF-16 surrogates (not valid Unicode)
 * become U+FFFD, as with the byte tokenizer.
 */

export const BYTE_COUNT = 256;
export const SPECIAL_COUNT = 2;

/**
 * GPT-2's pre-tokenizer: English contractions, then an optional space glued to a run of letters,
 * digits or other symbols, then whitespace (a run before a word leaves its last space to the word).
 * Together the alternatives match every code point, so the pieces concatenate back to the text.
 */
const WORD_PATTERN = /'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** Word encodings kept per tokenizer; cleared when full so memory stays bounded on huge corpora. */
const CACHE_LIMIT = 200_000;

export function splitWords(text: string): string[] {
  return text.match(WORD_PATTERN) ?? [];
}

export interface BpeTrainOptions {
  /** Target size including the 256 bytes and the 2 specials; fewer when the corpus runs out of pairs. */
  vocabSize: number;
  /** A pair seen fewer times than this is never merged (default 2). */
  minFrequency?: number;
}

/** Where a training is: texts split into words, then merges learned. */
export interface BpeTrainProgress {
  phase: 'counting' | 'merging';
  done: number;
  total: number;
}

export interface BpeTrainAsyncOptions extends BpeTrainOptions {
  /** Awaited between slices of work (about every `sliceMs`): the place to heartbeat. */
  onProgress?: (p: BpeTrainProgress) => void | Promise<void>;
  /** How long one slice of synchronous work may run before the event loop gets a turn (default 50 ms). */
  sliceMs?: number;
}

const DEFAULT_SLICE_MS = 50;

export class BpeTokenizer implements Tokenizer {
  readonly vocabSize: number;
  /** End of a document or of a response; generation stops here. */
  readonly eosId: number;
  /** Fills rows shorter than the context; never a training target. */
  readonly padId: number;
  private readonly merges: readonly (readonly [number, number])[];
  /** pair key → [rank, merged id]; rank = merged id − 256, kept apart for readability. */
  private readonly ranks = new Map<number, number>();
  /** The bytes each non-special id stands for. */
  private readonly bytesOf: Uint8Array[] = [];
  private readonly cache = new Map<string, number[]>();

  private constructor(merges: readonly (readonly [number, number])[]) {
    this.merges = merges;
    this.vocabSize = BYTE_COUNT + merges.length + SPECIAL_COUNT;
    this.eosId = this.vocabSize - 2;
    this.padId = this.vocabSize - 1;
    for (let byte = 0; byte < BYTE_COUNT; byte++) this.bytesOf.push(Uint8Array.of(byte));
    merges.forEach(([a, b], rank) => {
      this.ranks.set(pairKey(a, b), rank);
      this.bytesOf.push(concatBytes(this.bytesOf[a] as Uint8Array, this.bytesOf[b] as Uint8Array));
    });
  }

  /**
   * Learns merges from `texts`: the most frequent adjacent pair inside words, ties to the
   * smaller (left id, right id), until the vocabulary is full or no pair reaches minFrequency.
   * Pair counts are updated incrementally and the best pair comes from a lazy max-heap, so each
   * merge costs the words it touches, not the corpus.
   */
  static train(texts: string[], o: BpeTrainOptions): BpeTokenizer {
    const work = learnMerges(texts, o);
    for (;;) {
      const next = work.next();
      if (next.done) return new BpeTokenizer(next.value);
    }
  }

  /**
   * The same merges as `train`, but the event loop gets a turn about every `sliceMs` and
   * `onProgress` is awaited there: training on a large corpus takes minutes, and the activity that
   * runs it must keep heartbeating (and notice cancellation) meanwhile.
   */
  static async trainAsync(texts: string[], o: BpeTrainAsyncOptions): Promise<BpeTokenizer> {
    const sliceMs = o.sliceMs ?? DEFAULT_SLICE_MS;
    const work = learnMerges(texts, o);
    let sliceStart = Date.now();
    for (;;) {
      const next = work.next();
      if (next.done) return new BpeTokenizer(next.value);
      if (Date.now() - sliceStart >= sliceMs) {
        await o.onProgress?.(next.value);
        await yieldToEventLoop();
        sliceStart = Date.now();
      }
    }
  }

  /** Rebuilds a tokenizer from toJSON().merges; each merge may only use ids defined before it. */
  static fromMerges(merges: readonly (readonly [number, number])[]): BpeTokenizer {
    merges.forEach(([a, b], rank) => {
      const limit = BYTE_COUNT + rank;
      if (!Number.isInteger(a) || !Number.isInteger(b) || a < 0 || b < 0 || a >= limit || b >= limit) {
        throw new Error(`merge ${rank} is [${a}, ${b}], but it may only join ids 0..${limit - 1} (bytes and earlier merges)`);
      }
    });
    return new BpeTokenizer(merges.map(([a, b]) => [a, b] as const));
  }

  encode(text: string): number[] {
    const ids: number[] = [];
    for (const word of splitWords(text)) {
      let encoded = this.cache.get(word);
      if (encoded === undefined) {
        encoded = this.encodeWord(word);
        if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
        this.cache.set(word, encoded);
      }
      for (const id of encoded) ids.push(id);
    }
    return ids;
  }

  /** Skips special and out-of-range ids; invalid UTF-8 (a cut multi-byte char) becomes U+FFFD. */
  decode(ids: number[]): string {
    const parts: Uint8Array[] = [];
    for (const id of ids) {
      const bytes = Number.isInteger(id) ? this.bytesOf[id] : undefined;
      if (bytes !== undefined) parts.push(bytes);
    }
    return Buffer.concat(parts).toString('utf8');
  }

  toJSON(): TokenizerJson {
    return { kind: 'bpe', version: 1, merges: this.merges.map(([a, b]) => [a, b]) };
  }

  /** Applies the merges a word contains, lowest rank first, until none applies. */
  private encodeWord(word: string): number[] {
    let symbols = Array.from(Buffer.from(word, 'utf8'));
    for (;;) {
      let bestRank = Number.POSITIVE_INFINITY;
      for (let i = 0; i + 1 < symbols.length; i++) {
        const rank = this.ranks.get(pairKey(symbols[i] as number, symbols[i + 1] as number));
        if (rank !== undefined && rank < bestRank) bestRank = rank;
      }
      if (bestRank === Number.POSITIVE_INFINITY) return symbols;
      const [a, b] = this.merges[bestRank] as readonly [number, number];
      symbols = mergePair(symbols, a, b, BYTE_COUNT + bestRank) as number[];
    }
  }
}

/**
 * BpeTokenizer.train's work as a generator that yields its progress after each text counted and
 * each merge learned, so trainAsync can pause it without changing what it learns.
 */
function* learnMerges(texts: string[], o: BpeTrainOptions): Generator<BpeTrainProgress, [number, number][], void> {
  const minimum = BYTE_COUNT + SPECIAL_COUNT;
  if (!Number.isInteger(o.vocabSize) || o.vocabSize < minimum) {
    throw new Error(`BPE vocabSize must be an integer ≥ ${minimum} (256 bytes + eos + pad), got ${o.vocabSize}`);
  }
  const minFrequency = o.minFrequency ?? 2;
  const wanted = o.vocabSize - minimum;

  const wordCounts = new Map<string, number>();
  for (const [i, text] of texts.entries()) {
    for (const word of splitWords(text)) wordCounts.set(word, (wordCounts.get(word) ?? 0) + 1);
    yield { phase: 'counting', done: i + 1, total: texts.length };
  }
  const words: number[][] = [];
  const counts: number[] = [];
  for (const [word, count] of wordCounts) {
    words.push(Array.from(Buffer.from(word, 'utf8')));
    counts.push(count);
    // A corpus has millions of distinct words: pause here too, every few thousand.
    if (words.length % 4096 === 0) yield { phase: 'counting', done: texts.length, total: texts.length };
  }

  const pairCounts = new Map<number, number>();
  const pairWords = new Map<number, Set<number>>();
  const heap = new PairHeap();
  const touched = new Set<number>();
  const addPairs = (wordIndex: number, sign: 1 | -1): void => {
    const symbols = words[wordIndex] as number[];
    const count = (counts[wordIndex] as number) * sign;
    for (let i = 0; i + 1 < symbols.length; i++) {
      const key = pairKey(symbols[i] as number, symbols[i + 1] as number);
      pairCounts.set(key, (pairCounts.get(key) ?? 0) + count);
      touched.add(key);
      if (sign === 1) {
        let holders = pairWords.get(key);
        if (holders === undefined) pairWords.set(key, (holders = new Set()));
        holders.add(wordIndex);
      }
    }
  };
  const pushTouched = (): void => {
    for (const key of touched) {
      const count = pairCounts.get(key) ?? 0;
      if (count > 0) heap.push(count, key);
      else pairCounts.delete(key);
    }
    touched.clear();
  };
  for (let wordIndex = 0; wordIndex < words.length; wordIndex++) {
    addPairs(wordIndex, 1);
    if (wordIndex % 4096 === 4095) yield { phase: 'counting', done: texts.length, total: texts.length };
  }
  pushTouched();

  const merges: [number, number][] = [];
  while (merges.length < wanted) {
    const best = heap.popValid(pairCounts);
    if (best === undefined || best.count < minFrequency) break;
    const [a, b] = unpairKey(best.key);
    const merged = BYTE_COUNT + merges.length;
    merges.push([a, b]);
    // Holders may be stale (the pair left the word in an earlier merge): mergePair then changes nothing.
    for (const wordIndex of pairWords.get(best.key) ?? []) {
      const next = mergePair(words[wordIndex] as number[], a, b, merged);
      if (next === undefined) continue;
      addPairs(wordIndex, -1);
      words[wordIndex] = next;
      addPairs(wordIndex, 1);
    }
    pairWords.delete(best.key);
    pushTouched();
    yield { phase: 'merging', done: merges.length, total: wanted };
  }
  return merges;
}

/** Ids stay below 2^21, so a pair packs into one safe integer, ordered like (a, b). */
const PAIR_SHIFT = 2 ** 21;
const pairKey = (a: number, b: number): number => a * PAIR_SHIFT + b;
const unpairKey = (key: number): [number, number] => [Math.floor(key / PAIR_SHIFT), key % PAIR_SHIFT];

/** Replaces every non-overlapping (a, b), left to right, by `merged`; undefined when there is none. */
function mergePair(symbols: number[], a: number, b: number, merged: number): number[] | undefined {
  let out: number[] | undefined;
  for (let i = 0; i < symbols.length; i++) {
    if (symbols[i] === a && symbols[i + 1] === b) {
      out ??= symbols.slice(0, i);
      out.push(merged);
      i++;
    } else if (out !== undefined) out.push(symbols[i] as number);
  }
  return out;
}

function concatBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * Max-heap of (count, pair key): higher count first, then the smaller key. Entries are never
 * updated in place; a count change pushes a new entry and popValid drops outdated ones.
 */
class PairHeap {
  private readonly counts: number[] = [];
  private readonly keys: number[] = [];

  push(count: number, key: number): void {
    this.counts.push(count);
    this.keys.push(key);
    let i = this.counts.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  popValid(current: Map<number, number>): { count: number; key: number } | undefined {
    while (this.counts.length > 0) {
      const count = this.counts[0] as number;
      const key = this.keys[0] as number;
      this.removeTop();
      if (current.get(key) === count) return { count, key };
    }
    return undefined;
  }

  private removeTop(): void {
    const lastCount = this.counts.pop() as number;
    const lastKey = this.keys.pop() as number;
    if (this.counts.length === 0) return;
    this.counts[0] = lastCount;
    this.keys[0] = lastKey;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let top = i;
      if (left < this.counts.length && this.before(left, top)) top = left;
      if (right < this.counts.length && this.before(right, top)) top = right;
      if (top === i) return;
      this.swap(i, top);
      i = top;
    }
  }

  private before(i: number, j: number): boolean {
    const [ci, cj] = [this.counts[i] as number, this.counts[j] as number];
    return ci !== cj ? ci > cj : (this.keys[i] as number) < (this.keys[j] as number);
  }

  private swap(i: number, j: number): void {
    [this.counts[i], this.counts[j]] = [this.counts[j] as number, this.counts[i] as number];
    [this.keys[i], this.keys[j]] = [this.keys[j] as number, this.keys[i] as number];
  }
}
