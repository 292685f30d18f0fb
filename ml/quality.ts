import crypto, { createHash } from 'node:crypto';
import { heuristicReasons, heuristicVerdict, ngramKeyOf, NgramTable, scratchLength, whiteSpace, type HeuristicSettings } from './heuristics';
import { defaultMinLanguageScore, inExpectedLanguage } from './language';
import { minhashWasmBase64 } from './minhashWasm.bytes';

/**
 * The quality stage as a pipeline of small pure steps (datatrove style).
 *
 * Each step takes the surviving candidates, returns the ones it keeps and a count of what it removed
 * and why; `cleanDocuments` runs them in order and the report is the sum of their counts. Filters see
 * a document's whole text; an instruction pair is judged on prompt + response together, and both of
 * its fields are redacted.
 */
export interface QualitySettings {
  minChars: number;
  maxChars: number;
  /** Highest share of a document's characters that may sit in repeated lines or repeated word 5-grams. */
  maxRepetitionRatio: number;
  /** Highest share of non-space characters that may be symbols (not letters, digits or common punctuation). */
  maxSymbolRatio: number;
  /**
   * Estimated Jaccard similarity of word 5-gram sets at or above which a later document is a
   * near-duplicate of an earlier kept one; `null` turns near-duplicate removal off.
   */
  nearDuplicateThreshold: number | null;
  /** The LSH index: `bands` × `rows` MinHash permutations (default 14 × 8, as FineWeb and datatrove). */
  minhash?: MinhashShape;
  redactPii: boolean;
  /** For documents whose source lists languages: franc's relative score one of them must reach (ml/language.ts). */
  minLanguageScore?: number;
  /** Gopher's quality and repetition rules (ml/heuristics.ts), on text documents; null or absent: off. */
  heuristics?: HeuristicSettings | null;
}

export interface MinhashShape {
  bands: number;
  rows: number;
}

/**
 * FineWeb's and datatrove's MinHash: 14 bands of 8 rows (112 hashes) over word 5-grams. A pair
 * becomes a candidate when one band matches whole: half the time at a similarity of about 0.69,
 * two times in three at 0.72 (the banding's nominal threshold, (1/14)^(1/8) ≈ 0.719), 92 % at 0.8,
 * almost always from 0.85.
 */
export const defaultMinhash: MinhashShape = { bands: 14, rows: 8 };

/**
 * The similarity at or above which a candidate pair counts as near-duplicate: the default banding's
 * own threshold. One changed word in a 100-word document leaves ~0.9 of its 5-grams shared;
 * unrelated documents on one topic share well under 0.3.
 */
export const defaultNearDuplicateThreshold = 0.72;

/** The share of pairs at `similarity` that an index of this shape makes candidates: 1 − (1 − s^rows)^bands. */
export function lshRecall(similarity: number, shape: MinhashShape): number {
  return 1 - (1 - similarity ** shape.rows) ** shape.bands;
}

/**
 * A threshold whose pairs the index finds less than half the time would promise removals it cannot
 * make: the lowest threshold an index shape supports (0.69 for 14 × 8, 0.39 for 32 × 4).
 */
export function minNearDuplicateThreshold(shape: MinhashShape = defaultMinhash): number {
  let t = 0;
  while (t < 1 && lshRecall(t, shape) < 0.5) t = Math.round((t + 0.01) * 100) / 100;
  return t;
}

export const defaultQualitySettings: QualitySettings = {
  minChars: 20,
  maxChars: 100_000,
  maxRepetitionRatio: 0.3,
  maxSymbolRatio: 0.25,
  nearDuplicateThreshold: defaultNearDuplicateThreshold,
  minhash: defaultMinhash,
  redactPii: true,
};

export type QualityDoc = ({ text: string } | { prompt: string; response: string }) & { languages?: string[] };

/** Stable removal reasons; reports always carry every key. */
export const removalReasons = ['duplicate', 'near_duplicate', 'earlier_update', 'too_short', 'too_long', 'language', 'repetitive', 'symbols', ...heuristicReasons] as const;
export type RemovalReason = (typeof removalReasons)[number];

export interface QualityReport {
  input: number;
  kept: number;
  removed: Record<string, number>;
  /** UTF-8 bytes of the documents each reason removed. */
  removedBytes: Record<string, number>;
  redactions: Record<PiiKind, number>;
}

export type PiiKind = 'email' | 'phone' | 'card' | 'ip' | 'national_id';
export type PiiCounts = Record<PiiKind, number>;

/** A document on its way through the pipeline: the text the filters judge, and what was redacted in it. */
export interface Candidate<T extends QualityDoc> {
  doc: T;
  text: string;
  redactions?: PiiCounts;
  /** MinHash signature, when computed ahead (see cleanDocumentsPaced). */
  signature?: Uint32Array;
  /** sha256 of the normalised text, when computed ahead (shardPass), for exact de-duplication. */
  exactKey?: Uint8Array;
  /** The document's place in the list the steps started from (cleanDocuments, shardPass). */
  at?: number;
}

export interface StepResult<T extends QualityDoc> {
  kept: Candidate<T>[];
  removed: Partial<Record<RemovalReason, number>>;
  /** The texts removed, by reason (for bytes and examples in the report). */
  dropped?: { reason: RemovalReason; text: string }[];
  /** A filter's score of every document it judged (for the report's histograms). */
  scores?: { name: ScoreName; values: number[] };
}

export type ScoreName = 'repetition' | 'symbols';

/** Counts per bin: `edges` has one more entry than `counts`; the last bin includes its upper edge. */
export interface Histogram {
  edges: number[];
  counts: number[];
}

/**
 * What the stored quality report holds besides the counts (never the summary in workflow history):
 * a few removed documents per reason, redacted and shortened, and histograms of document length and
 * of the main filters' scores.
 */
export interface QualityDetails {
  examples: Record<string, string[]>;
  histograms: { length: Histogram } & Partial<Record<ScoreName, Histogram>>;
}

/** Examples kept per removal reason, and their length. */
export const examplesPerReason = 3;
export const exampleChars = 200;

export function documentText(doc: QualityDoc): string {
  return 'text' in doc ? doc.text : `${doc.prompt}\n${doc.response}`;
}

/** The key exact de-duplication compares: NFKC, case-folded, whitespace collapsed. */
export function normalizeForDedup(text: string): string {
  const lowered = text.normalize('NFKC').toLowerCase();
  // Most text has no white space to collapse: then only the trim.
  return (SPACE_TO_COLLAPSE.test(lowered) ? lowered.replace(/\s+/gu, ' ') : lowered).trim();
}

/** White space other than a lone space. */
const SPACE_TO_COLLAPSE = /[^\S ]| {2}/;

function filterBy<T extends QualityDoc>(
  docs: Candidate<T>[],
  reasonOf: (c: Candidate<T>) => RemovalReason | null,
): StepResult<T> {
  const kept: Candidate<T>[] = [];
  const removed: Partial<Record<RemovalReason, number>> = {};
  const dropped: { reason: RemovalReason; text: string }[] = [];
  for (const c of docs) {
    const reason = reasonOf(c);
    if (reason === null) kept.push(c);
    else {
      removed[reason] = (removed[reason] ?? 0) + 1;
      dropped.push({ reason, text: c.text });
    }
  }
  return { kept, removed, dropped };
}

/** filterBy with the score each document got, for a histogram. */
function filterByScore<T extends QualityDoc>(docs: Candidate<T>[], name: ScoreName, score: (text: string) => number, reason: RemovalReason, max: number): StepResult<T> {
  const values: number[] = [];
  const result = filterBy(docs, (c) => {
    const value = score(c.text);
    values.push(value);
    return value > max ? reason : null;
  });
  return { ...result, scores: { name, values } };
}

/** Counts of `values` in `bins` equal bins over [min, max] (values outside are clamped into the end bins). */
export function histogram(values: number[], min: number, max: number, bins: number): Histogram {
  const width = (max - min) / bins;
  const edges = Array.from({ length: bins + 1 }, (_, i) => Number((min + i * width).toFixed(6)));
  const counts = new Array<number>(bins).fill(0);
  // Scaled before the floor, so 0.15 or 0.3 lands in its own bin (0.3 / 0.05 is 5.999…).
  for (const v of values) counts[Math.min(bins - 1, Math.max(0, Math.floor(((v - min) * bins) / (max - min) + 1e-9)))]++;
  return { edges, counts };
}

/** Document lengths on a log scale: bins of 10^(k/4) characters, 1 to 10^6. */
function lengthHistogram(lengths: number[]): Histogram {
  const logs = lengths.map((n) => Math.log10(Math.max(1, n)));
  const h = histogram(logs, 0, 6, 24);
  return { edges: h.edges.map((e) => Math.round(10 ** e)), counts: h.counts };
}

// ---------------------------------------------------------------- exact de-duplication

export function exactDedup<T extends QualityDoc>(docs: Candidate<T>[]): StepResult<T> {
  const seen = new Set<string>();
  return filterBy(docs, (c) => {
    const key = normalizeForDedup(c.text);
    if (seen.has(key)) return 'duplicate';
    seen.add(key);
    return null;
  });
}

// ---------------------------------------------------------------- length

export function lengthFilter<T extends QualityDoc>(
  docs: Candidate<T>[],
  limits: { minChars: number; maxChars: number } = defaultQualitySettings,
): StepResult<T> {
  return filterBy(docs, (c) => {
    const chars = c.text.trim().length;
    if (chars < limits.minChars) return 'too_short';
    if (chars > limits.maxChars) return 'too_long';
    return null;
  });
}

// ---------------------------------------------------------------- repetition

/** Word n-gram size whose repeats count as repetition (Gopher uses 5–10). */
export const repetitionNgram = 5;
/** Shorter texts skip the n-gram check: a short answer that echoes its question is not spam. */
export const repetitionNgramMinWords = 50;

/**
 * The larger of: the share of characters in lines that repeat an earlier line, and the share of word
 * characters covered by word n-grams that occur more than once (Gopher's duplicate n-gram fraction).
 */
export function repetitionRatio(text: string): number {
  return Math.max(duplicateLineShare(text), duplicateNgramShare(text, repetitionNgram));
}

function duplicateLineShare(text: string): number {
  // One line repeats nothing.
  if (!text.includes('\n')) return 0;
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
  const total = lines.reduce((n, l) => n + l.length, 0);
  if (total === 0) return 0;
  const seen = new Set<string>();
  let duplicated = 0;
  for (const line of lines) {
    if (seen.has(line)) duplicated += line.length;
    else seen.add(line);
  }
  return duplicated / total;
}

const ASCII_AND_HANGUL = /^[\u0000-\u007f\uac00-\ud7a3]*$/;

/** Per document, scratch: each word's two hashes and length, each n-gram's slot in the count table. */
let wordHashA = new Int32Array(1024);
let wordHashB = new Int32Array(1024);
let wordLength = new Int32Array(1024);
let gramSlots = new Int32Array(1024);
let wordCovered = new Uint8Array(1024);
const repetitionTable = new NgramTable();

/**
 * Words are the lower-cased text split at white space. They are compared by two independent 32-bit
 * hashes of their units, and n-grams by two hashes chained over those (ngramKeyOf) (so equal n-grams always
 * share a key, and two different ones of a document share one with a probability near 2^-53), all
 * in typed arrays, without a string per word.
 */
function duplicateNgramShare(text: string, n: number): number {
  // Text of ASCII and Hangul syllables only is lower-cased unit by unit as it is read (as
  // toLowerCase does for it); other text through toLowerCase first.
  const plain = ASCII_AND_HANGUL.test(text);
  const lower = plain ? text : text.toLowerCase();
  const size = scratchLength(wordHashA.length, lower.length + 1);
  if (size !== -1) {
    wordHashA = new Int32Array(size);
    wordHashB = new Int32Array(size);
    wordLength = new Int32Array(size);
    gramSlots = new Int32Array(size);
    wordCovered = new Uint8Array(size);
  }
  let count = 0;
  let totalChars = 0;
  for (let i = 0; i < lower.length; ) {
    let unit = lower.charCodeAt(i);
    if (whiteSpace[unit] === 1) {
      i++;
      continue;
    }
    let a = 0x811c9dc5;
    let b = 0x9747b28c;
    const start = i;
    do {
      if (plain && unit >= 0x41 && unit <= 0x5a) unit |= 0x20;
      a = Math.imul(a ^ unit, 0x01000193);
      b = Math.imul(b ^ unit, 0x5bd1e995);
      b ^= b >>> 15;
      unit = ++i < lower.length ? lower.charCodeAt(i) : 32;
    } while (whiteSpace[unit] === 0);
    wordHashA[count] = a;
    wordHashB[count] = b;
    wordLength[count] = i - start;
    totalChars += i - start;
    count++;
  }
  if (count < Math.max(2 * n, repetitionNgramMinWords)) return 0;
  const grams = count - n + 1;
  const table = repetitionTable;
  table.reset(grams);
  for (let i = 0; i < grams; i++) {
    let a = 0x811c9dc5;
    let b = 0x9747b28c;
    for (let k = i; k < i + n; k++) {
      a = Math.imul(a ^ (wordHashA[k] as number), 0x01000193);
      b = Math.imul(b ^ (wordHashB[k] as number), 0x5bd1e995);
      b ^= b >>> 15;
    }
    gramSlots[i] = table.slotOf(ngramKeyOf(a, b), i);
  }
  const covered = wordCovered;
  covered.fill(0, 0, count);
  for (let i = 0; i < grams; i++) if ((table.counts[gramSlots[i] as number] as number) > 1) covered.fill(1, i, i + n);
  let coveredChars = 0;
  for (let i = 0; i < count; i++) if (covered[i]) coveredChars += wordLength[i] as number;
  return coveredChars / totalChars;
}

export function repetitionFilter<T extends QualityDoc>(
  docs: Candidate<T>[],
  maxRepetitionRatio = defaultQualitySettings.maxRepetitionRatio,
): StepResult<T> {
  return filterByScore(docs, 'repetition', repetitionRatio, 'repetitive', maxRepetitionRatio);
}

// ---------------------------------------------------------------- language

/** Documents whose source lists languages, checked with franc (ml/language.ts); others pass. */
export function languageFilter<T extends QualityDoc>(docs: Candidate<T>[], minScore = defaultMinLanguageScore): StepResult<T> {
  return filterBy(docs, (c) => (c.doc.languages && !inExpectedLanguage(c.text, c.doc.languages, minScore) ? 'language' : null));
}

// ---------------------------------------------------------------- Gopher heuristics

/** Text documents through ml/heuristics.ts; instruction pairs (short by nature) are left to the other filters. */
export function heuristicFilter<T extends QualityDoc>(docs: Candidate<T>[], settings: HeuristicSettings): StepResult<T> {
  return filterBy(docs, (c) => ('text' in c.doc ? heuristicVerdict(c.text, settings) : null));
}

// ---------------------------------------------------------------- symbols

const ordinaryChar = /[\p{L}\p{N}\p{M}.,;:!?'"()\-/%&’‘“”—–…]/u;

/** Share of non-whitespace characters that are neither letters, digits, marks nor common punctuation. */
/** For ASCII: 0 white space, 1 ordinary, 2 symbol, as the regular expressions below say. */
const asciiClass = Uint8Array.from({ length: 128 }, (_, code) => {
  const ch = String.fromCharCode(code);
  return /\s/u.test(ch) ? 0 : ordinaryChar.test(ch) ? 1 : 2;
});

export function symbolRatio(text: string): number {
  let visible = 0;
  let symbols = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 128) {
      const kind = asciiClass[code] as number;
      if (kind === 0) continue;
      visible++;
      if (kind === 2) symbols++;
      continue;
    }
    // Hangul syllables are letters.
    if (code >= 0xac00 && code <= 0xd7a3) {
      visible++;
      continue;
    }
    const point = text.codePointAt(i) as number;
    if (point > 0xffff) i++;
    const ch = String.fromCodePoint(point);
    if (/\s/u.test(ch)) continue;
    visible++;
    if (!ordinaryChar.test(ch)) symbols++;
  }
  return visible === 0 ? 0 : symbols / visible;
}

export function symbolFilter<T extends QualityDoc>(
  docs: Candidate<T>[],
  maxSymbolRatio = defaultQualitySettings.maxSymbolRatio,
): StepResult<T> {
  return filterByScore(docs, 'symbols', symbolRatio, 'symbols', maxSymbolRatio);
}

// ---------------------------------------------------------------- near-duplicates (MinHash + LSH)

function fmix32(x: number): number {
  let h = x;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * The hash family: permutation p maps a (well-mixed) shingle hash x to a·x + b mod 2^32, with odd
 * a, as datatrove's (a·x + b) mod (2^61 − 1) but in 32-bit integer arithmetic. The first n serve a
 * signature of n hashes, whatever its shape.
 */
const permutationA = Uint32Array.from({ length: 1024 }, (_, i) => fmix32(i + 0x9e3779b9) | 1);
const permutationB = Uint32Array.from({ length: 1024 }, (_, i) => fmix32(i + 0x7f4a7c15));

/**
 * The signature algorithm's name, stored with kept signatures: one computed another way (other
 * shingles, other hashes) is never compared with these.
 */
export const MINHASH_ALGORITHM = 'word5-fnv1a-ax+b/1';

/** MinHash signature (`permutations` hashes) of a text's word 5-gram set (a text shorter than that is one shingle). */
export function minhashSignature(text: string, permutations: number = defaultMinhash.bands * defaultMinhash.rows): Uint32Array {
  return minhashOfNormalized(normalizeForDedup(text), permutations);
}

/** Per signature, scratch: each word's hash and each shingle's. */
let minhashWords = new Int32Array(1024);
let minhashShingles = new Int32Array(1024);
/** The permutations' multipliers and offsets as signed 32-bit integers (the same bits). */
const permutationA32 = Int32Array.from(permutationA, (a) => a | 0);
const permutationB32 = Int32Array.from(permutationB, (b) => b | 0);

/**
 * The permutation loops in WebAssembly SIMD (ml/minhash.wat): the same minima, several times
 * faster. Its memory holds the multipliers, the offsets, the minima and the shingles, as 32-bit
 * words from these places. Null where WebAssembly SIMD is not available: the loops then run in
 * JavaScript (minhashOfNormalized).
 */
interface MinhashKernel {
  memory: WasmMemory;
  words: Int32Array;
  run: (count: number, blocks: number) => void;
}
/** Node's WebAssembly, as far as used here (this project's TypeScript libraries leave out the DOM's, which declare it). */
interface WasmMemory {
  buffer: ArrayBuffer;
  grow(pages: number): number;
}
declare const WebAssembly: {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
};
const KERNEL_B = 1024;
const KERNEL_OUT = 2048;
const KERNEL_SHINGLES = 3072;
/** Shingles the kernel takes at most (its memory then 16 MB). */
const KERNEL_MAX_SHINGLES = (1 << 22) - KERNEL_SHINGLES;
let kernel: MinhashKernel | null | undefined;
/** False makes minhashOfNormalized run its JavaScript loops (for the tests that compare the two). */
let useMinhashKernel = true;
export function setMinhashKernel(on: boolean): void {
  useMinhashKernel = on;
}

/** Whether the WebAssembly kernel loads here. */
export function minhashKernelReady(): boolean {
  return minhashKernel() !== null;
}

function minhashKernel(): MinhashKernel | null {
  if (kernel !== undefined) return kernel;
  try {
    const instance = new WebAssembly.Instance(new WebAssembly.Module(Buffer.from(minhashWasmBase64, 'base64')), {});
    const memory = instance.exports.memory as WasmMemory;
    const words = new Int32Array(memory.buffer);
    words.set(permutationA32, 0);
    words.set(permutationB32, KERNEL_B);
    kernel = { memory, words, run: instance.exports.minhash as (count: number, blocks: number) => void };
  } catch {
    kernel = null;
  }
  return kernel;
}

/**
 * minhashSignature of a text already through normalizeForDedup. Words are what `split(' ')` gives,
 * each hashed once by FNV-1a over its UTF-16 units; a shingle's hash chains its words' hashes in
 * order. The arithmetic is in signed 32-bit integers, the minimum taken in unsigned order (by
 * flipping the sign bit), four permutations to a pass over the shingles.
 */
export function minhashOfNormalized(normalized: string, permutations: number): Uint32Array {
  if (!Number.isInteger(permutations) || permutations < 1 || permutations > permutationA.length) throw new Error(`a MinHash signature has 1 to ${permutationA.length} permutations, not ${permutations}`);
  const length = normalized.length;
  const size = scratchLength(minhashWords.length, length + 1);
  if (size !== -1) {
    minhashWords = new Int32Array(size);
    minhashShingles = new Int32Array(size);
  }
  const words = minhashWords;
  let wordCount = 0;
  let h = 0x811c9dc5 | 0;
  for (let i = 0; i < length; i++) {
    const unit = normalized.charCodeAt(i);
    if (unit === 32) {
      words[wordCount++] = h;
      h = 0x811c9dc5 | 0;
    } else h = Math.imul(h ^ unit, 0x01000193);
  }
  words[wordCount++] = h;
  // A repeated shingle changes no minimum, so none is set aside.
  const short = wordCount < repetitionNgram;
  const count = short ? 1 : wordCount - repetitionNgram + 1;
  const span = short ? wordCount : repetitionNgram;
  // The kernel's memory only grows: a document of more shingles than it takes runs in JavaScript.
  const kernel = useMinhashKernel && count <= KERNEL_MAX_SHINGLES ? minhashKernel() : null;
  if (kernel && KERNEL_SHINGLES + count > kernel.words.length) {
    kernel.memory.grow(Math.ceil(((KERNEL_SHINGLES + count) * 4 - kernel.memory.buffer.byteLength) / 65536));
    kernel.words = new Int32Array(kernel.memory.buffer);
  }
  // Into the kernel's memory where it runs, so they are not copied there.
  const shingles = kernel ? kernel.words : minhashShingles;
  const first = kernel ? KERNEL_SHINGLES : 0;
  for (let i = 0; i < count; i++) {
    let x = 0x9747b28c | 0;
    for (let k = i; k < i + span; k++) {
      x = Math.imul(x ^ (words[k] as number), 0x01000193);
      x ^= x >>> 16;
      x = Math.imul(x, 0x85ebca6b);
      x ^= x >>> 13;
      x = Math.imul(x, 0xc2b2ae35);
      x ^= x >>> 16;
    }
    shingles[first + i] = x;
  }
  const signature = new Uint32Array(permutations);
  if (kernel) {
    kernel.run(count, Math.ceil(permutations / 16));
    signature.set(kernel.words.subarray(KERNEL_OUT, KERNEL_OUT + permutations));
    return signature;
  }
  const A = permutationA32;
  const B = permutationB32;
  let p = 0;
  for (; p + 4 <= permutations; p += 4) {
    const a0 = A[p] as number, a1 = A[p + 1] as number, a2 = A[p + 2] as number, a3 = A[p + 3] as number;
    const b0 = B[p] as number, b1 = B[p + 1] as number, b2 = B[p + 2] as number, b3 = B[p + 3] as number;
    let m0 = 0x7fffffff, m1 = 0x7fffffff, m2 = 0x7fffffff, m3 = 0x7fffffff;
    for (let i = 0; i < count; i++) {
      const x = shingles[i] as number;
      const h0 = ((Math.imul(x, a0) + b0) | 0) ^ 0x80000000;
      const h1 = ((Math.imul(x, a1) + b1) | 0) ^ 0x80000000;
      const h2 = ((Math.imul(x, a2) + b2) | 0) ^ 0x80000000;
      const h3 = ((Math.imul(x, a3) + b3) | 0) ^ 0x80000000;
      if (h0 < m0) m0 = h0;
      if (h1 < m1) m1 = h1;
      if (h2 < m2) m2 = h2;
      if (h3 < m3) m3 = h3;
    }
    signature[p] = m0 ^ 0x80000000;
    signature[p + 1] = m1 ^ 0x80000000;
    signature[p + 2] = m2 ^ 0x80000000;
    signature[p + 3] = m3 ^ 0x80000000;
  }
  for (; p < permutations; p++) {
    const a = A[p] as number;
    const b = B[p] as number;
    let m = 0x7fffffff;
    for (let i = 0; i < count; i++) {
      const x = ((Math.imul(shingles[i] as number, a) + b) | 0) ^ 0x80000000;
      if (x < m) m = x;
    }
    signature[p] = m ^ 0x80000000;
  }
  return signature;
}

export function estimatedJaccard(a: Uint32Array, b: Uint32Array): number {
  let same = 0;
  for (let i = 0; i < a.length; i++) if (a[i] === b[i]) same++;
  return same / a.length;
}

/**
 * The LSH index of MinHash signatures: `bands` buckets per signature, each keyed by `rows` hashes.
 * A document whose band matches an indexed one is a candidate; its estimated similarity decides.
 * Entries are `earlier` (an earlier update's training data, loaded before the run's own) or the
 * run's own kept documents.
 */
export class MinhashIndex {
  // Everything lives in typed arrays, outside the JavaScript heap, at 1.1 to 1.8 KB a document
  // (14 × 8; the arrays grow by doubling): the signatures, whether each came from an earlier update, and an open-addressing
  // table from band keys to chains of (document, band) entries.
  private readonly permutations: number;
  private count = 0;
  private signatures: Uint32Array;
  private earlier: Uint8Array;
  /** Per (document, band) entry: the previous entry under the same key, or −1. */
  private next: Int32Array;
  /**
   * The table, two numbers a slot side by side (one cache line holds four slots, so a probe costs
   * one memory access): the key, and the newest entry under it, or −1 for an empty slot.
   */
  private table: Float64Array;
  private slots: number;
  private used = 0;
  /**
   * What the last `match` looked up: the signature, and each band's key and slot. `add` of the same
   * signature right after (nothing added in between) uses them instead of hashing and probing again.
   */
  private lastSignature: Uint32Array | null = null;
  /** A copy of it: `add` uses the slots only for the same hashes (a caller may refill one buffer). */
  private lastHashes: Uint32Array;
  private lastKeys: Float64Array;
  private lastSlots: Int32Array;
  /** Candidates already compared in this `match`: a document's stamp is the match's number. */
  private seen: Uint32Array;
  private matches = 0;
  /** Entries from earlier updates. */
  private earlierCount = 0;

  constructor(readonly shape: MinhashShape = defaultMinhash, capacity = 1024) {
    this.permutations = shape.bands * shape.rows;
    this.signatures = new Uint32Array(capacity * this.permutations);
    this.earlier = new Uint8Array(capacity);
    this.next = new Int32Array(capacity * shape.bands);
    const slots = 1 << Math.ceil(Math.log2(Math.max(16, capacity * shape.bands * 2)));
    this.slots = slots;
    this.table = MinhashIndex.emptyTable(slots);
    this.lastKeys = new Float64Array(shape.bands);
    this.lastHashes = new Uint32Array(this.permutations);
    this.lastSlots = new Int32Array(shape.bands);
    this.seen = new Uint32Array(capacity);
  }

  get size(): number {
    return this.count;
  }

  private static emptyTable(slots: number): Float64Array {
    const table = new Float64Array(2 * slots);
    for (let i = 1; i < table.length; i += 2) table[i] = -1;
    return table;
  }

  /**
   * A band's key: the band's number and its rows, hashed twice into one exact double (32 + 21 bits).
   * Two different bands sharing a key only make a candidate, which the estimated similarity then
   * judges.
   */
  private key(signature: Uint32Array, band: number): number {
    const { rows } = this.shape;
    let a = Math.imul(band + 1, 0x9e3779b1);
    let b = 0x85ebca6b ^ band;
    for (let r = band * rows; r < (band + 1) * rows; r++) {
      const h = signature[r] as number;
      a = Math.imul(a ^ h, 0x01000193);
      b = Math.imul(b ^ h, 0x5bd1e995);
      b ^= b >>> 15;
    }
    return (a >>> 0) * 0x200000 + ((b >>> 0) & 0x1fffff);
  }

  /** The table slot holding `key`, or the empty slot where it would go. */
  private slot(key: number): number {
    const mask = this.slots - 1;
    const table = this.table;
    let i = (key % 0x100000000 ^ Math.floor(key / 0x100000000)) & mask;
    while (table[2 * i + 1] !== -1 && table[2 * i] !== key) i = (i + 1) & mask;
    return i;
  }

  /** Whether the estimated similarity to `doc` reaches `threshold`; stops once even a match on every hash left could not. */
  private reaches(signature: Uint32Array, doc: number, threshold: number): boolean {
    const { permutations, signatures } = this;
    const base = doc * permutations;
    let same = 0;
    for (let i = 0; i < permutations; i++) {
      if (signature[i] === signatures[base + i]) same++;
      else if ((same + permutations - i - 1) / permutations < threshold) return false;
    }
    return same / permutations >= threshold;
  }

  /** The closest match at or above `threshold`: whether it came from an earlier update, or null. */
  match(signature: Uint32Array, threshold: number): 'earlier' | 'own' | null {
    this.fits(signature);
    let found: 'earlier' | 'own' | null = null;
    const { bands } = this.shape;
    this.matches = (this.matches + 1) >>> 0;
    if (this.matches === 0) {
      this.seen.fill(0);
      this.matches = 1;
    }
    const stamp = this.matches;
    // Every band's key and slot first, so that `add` can use them.
    for (let band = 0; band < bands; band++) {
      const key = this.key(signature, band);
      this.lastKeys[band] = key;
      this.lastSlots[band] = this.slot(key);
    }
    this.lastSignature = signature;
    this.lastHashes.set(signature);
    for (let band = 0; band < bands; band++) {
      for (let entry = this.table[2 * (this.lastSlots[band] as number) + 1] as number; entry !== -1; entry = this.next[entry] as number) {
        const doc = Math.floor(entry / bands);
        if (this.seen[doc] === stamp) continue;
        this.seen[doc] = stamp;
        if (!this.reaches(signature, doc, threshold)) continue;
        if (this.earlier[doc] === 1) {
          this.lastSignature = null;
          return 'earlier';
        }
        // With no earlier update in the index, nothing could turn this into 'earlier'.
        if (this.earlierCount === 0) return 'own';
        found = 'own';
      }
    }
    return found;
  }

  private fits(signature: Uint32Array): void {
    if (signature.length !== this.permutations) {
      throw new Error(`a signature of ${signature.length} hashes does not fit an index of ${this.shape.bands} bands × ${this.shape.rows} rows`);
    }
  }

  private sameAsLast(signature: Uint32Array): boolean {
    for (let i = 0; i < this.permutations; i++) if (signature[i] !== this.lastHashes[i]) return false;
    return true;
  }

  add(signature: Uint32Array, earlier = false): void {
    this.fits(signature);
    const { bands } = this.shape;
    if (this.count === this.earlier.length) this.grow();
    const doc = this.count++;
    this.signatures.set(signature, doc * this.permutations);
    this.earlier[doc] = earlier ? 1 : 0;
    if (earlier) this.earlierCount++;
    // The slot `match` found for a band is still its slot while it is empty or holds its key; an
    // earlier band of this signature may have taken it since, and then it is looked up again.
    const looked = this.lastSignature === signature && this.sameAsLast(signature);
    this.lastSignature = null;
    for (let band = 0; band < bands; band++) {
      const key = looked ? (this.lastKeys[band] as number) : this.key(signature, band);
      const found = looked ? (this.lastSlots[band] as number) : -1;
      const table = this.table;
      const i = found !== -1 && (table[2 * found + 1] === -1 || table[2 * found] === key) ? found : this.slot(key);
      const entry = doc * bands + band;
      if (table[2 * i + 1] === -1) {
        table[2 * i] = key;
        this.used++;
      }
      this.next[entry] = table[2 * i + 1] as number;
      table[2 * i + 1] = entry;
    }
    if (this.used * 2 > this.slots) this.rehash();
  }

  private grow(): void {
    const capacity = this.earlier.length * 2;
    const signatures = new Uint32Array(capacity * this.permutations);
    signatures.set(this.signatures);
    this.signatures = signatures;
    const earlier = new Uint8Array(capacity);
    earlier.set(this.earlier);
    this.earlier = earlier;
    const next = new Int32Array(capacity * this.shape.bands);
    next.set(this.next);
    this.next = next;
    const seen = new Uint32Array(capacity);
    seen.set(this.seen);
    this.seen = seen;
  }

  private rehash(): void {
    const old = this.table;
    const oldSlots = this.slots;
    this.slots = oldSlots * 2;
    this.table = MinhashIndex.emptyTable(this.slots);
    for (let i = 0; i < oldSlots; i++) {
      if (old[2 * i + 1] === -1) continue;
      const j = this.slot(old[2 * i] as number);
      this.table[2 * j] = old[2 * i] as number;
      this.table[2 * j + 1] = old[2 * i + 1] as number;
    }
  }
}

/**
 * Removes a document whose estimated similarity to an earlier kept one (or to one of `index`'s
 * earlier updates, as `earlier_update`) reaches the threshold. The kept documents join the index.
 */
export function nearDedup<T extends QualityDoc>(docs: Candidate<T>[], threshold: number, index: MinhashIndex = new MinhashIndex()): StepResult<T> {
  const permutations = index.shape.bands * index.shape.rows;
  return filterBy(docs, (c) => {
    const signature = c.signature?.length === permutations ? c.signature : minhashSignature(c.text, permutations);
    c.signature = signature;
    const match = index.match(signature, threshold);
    if (match === 'earlier') return 'earlier_update';
    if (match === 'own') return 'near_duplicate';
    index.add(signature);
    return null;
  });
}

// ---------------------------------------------------------------- PII redaction

function emptyPiiCounts(): PiiCounts {
  return { email: 0, phone: 0, card: 0, ip: 0, national_id: 0 };
}

function addPiiCounts(into: PiiCounts, more: PiiCounts): void {
  for (const kind of Object.keys(into) as PiiKind[]) into[kind] += more[kind];
}

const emailPattern = /[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}/g;
// Candidates only; each is validated below. Look-arounds keep matches off the middle of longer tokens
// ("v1.2.3.4", "std::map", version strings, 3GPP spec numbers).
const ipv6Candidate = /(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:]|\.\d)/g;
const ipv4Pattern = /(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)/g;
// 13–19 digits together, or in groups as cards print them (4-4-4-…, Amex 4-6-5, Diners 4-6-4) with one separator.
const cardCandidate = /(?<![\w+.-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -])\d{6}\2\d{4,5})(?![\w-]|\.\d)/g;
// With a country code the first group may be one digit (+81 3 1234 5678, +82 2 123 4567).
const phoneCandidate = /(?<![\w.+-])(?:\+\d{1,3}[ .-]?(?:\(0\)|\(\d{1,4}\)[ .-]?)?\d{1,4}|(?:\(\d{1,4}\)[ .-]?)?\d{2,4})(?:[ .-]\d{2,4}){1,4}(?![\w-]|\.\d)/g;
// Korean resident registration numbers (YYMMDD-SNNNNNC) and Japanese My Numbers (12 digits, often
// in groups of four); each candidate is checked (date, check digit) before it is redacted.
const krRrnCandidate = /(?<![\w-])\d{6}-?[1-8]\d{6}(?![\w-])/g;
// Never part of a longer run of digit groups (a card number's first twelve digits).
const jpMyNumberCandidate = /(?<![\w-]|\d[ -])\d{4}([ -]?)\d{4}\1\d{4}(?![\w-]|[ -]\d)/g;

const ANY_DIGIT = /\d/;

function isIpv6(candidate: string): boolean {
  if (!/\d/.test(candidate)) return false; // "abc::def" is more likely code than an address
  const halves = candidate.split('::');
  if (halves.length > 2) return false;
  const groupsOf = (part: string): string[] => (part === '' ? [] : part.split(':'));
  const groups = halves.flatMap(groupsOf);
  if (!groups.every((g) => /^[0-9A-Fa-f]{1,4}$/.test(g))) return false;
  return halves.length === 2 ? groups.length <= 7 : groups.length === 8;
}

function isLuhnValid(digits: string): boolean {
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let d = digits.charCodeAt(digits.length - 1 - i) - 48;
    if (i % 2 === 1) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return sum % 10 === 0;
}

/**
 * A Korean resident registration number: a real birth date, a gender/century digit 1–8, and the
 * check digit (weights 2–9, 2–5 over the first twelve digits; 11 − sum mod 11, mod 10). Numbers
 * issued since October 2020 have no check digit and are not recognised (see docs/data-quality.md).
 */
export function isKoreanRrn(candidate: string): boolean {
  const digits = candidate.replace(/\D/g, '');
  if (digits.length !== 13) return false;
  const month = Number(digits.slice(2, 4));
  const day = Number(digits.slice(4, 6));
  if (month < 1 || month > 12 || day < 1 || day > 31) return false;
  const weights = [2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5];
  const sum = weights.reduce((acc, w, i) => acc + w * (digits.charCodeAt(i) - 48), 0);
  // Registration numbers of foreign residents (7th digit 5–8) use 13 where residents' use 11.
  const base = digits.charCodeAt(6) - 48 >= 5 ? 13 : 11;
  return (base - (sum % 11)) % 10 === digits.charCodeAt(12) - 48;
}

/** Words that name a national identifier, looked for just before a number that lacks its usual shape. */
const idContext = /(주민등록번호|주민번호|외국인등록번호|등록번호|RRN|resident registration|マイナンバー|個人番号|my ?number)[^\d\n]{0,12}$/iu;
/** True when `whole` names an identifier just before `offset`. */
function namedBefore(whole: string, offset: number): boolean {
  return idContext.test(whole.slice(Math.max(0, offset - 40), offset));
}

/**
 * A Japanese My Number (個人番号): twelve digits whose last is the check digit of the first eleven
 * (weights 2–7 then 2–6 from the right; 11 − sum mod 11, and 0 where that is 10 or 11).
 */
export function isJapaneseMyNumber(candidate: string): boolean {
  const digits = candidate.replace(/\D/g, '');
  if (digits.length !== 12) return false;
  // Three years in a row ("2000 2010 2020") pass the check digit one time in eleven; they are years.
  if (/\D/.test(candidate) && candidate.split(/\D/).every((g) => /^(19|20)\d\d$/.test(g))) return false;
  let sum = 0;
  for (let n = 1; n <= 11; n++) {
    const p = digits.charCodeAt(11 - n) - 48;
    sum += p * (n <= 6 ? n + 1 : n - 5);
  }
  const remainder = sum % 11;
  return (remainder <= 1 ? 0 : 11 - remainder) === digits.charCodeAt(11) - 48;
}

function isPhone(candidate: string): boolean {
  const digits = candidate.replace(/\D/g, '');
  if (candidate.startsWith('+')) return digits.length >= 8 && digits.length <= 15;
  if (candidate.includes('(')) return digits.length >= 7 && digits.length <= 15;
  // Seoul's area code is one digit after the trunk 0: 02-123-4567 has nine.
  if (/^02-\d{3,4}-\d{4}$/.test(candidate)) return true;
  // Without a country code or area-code brackets, only national-length numbers with one kind of
  // separator count: this keeps dates, years in a row and spec numbers out.
  if (digits.length < 10 || digits.length > 11) return false;
  const separators = new Set(candidate.replace(/\d/g, ''));
  if (separators.size !== 1) return false;
  return !/^\d{4}[-.]\d{2}[-.]\d{2}/.test(candidate);
}

/**
 * Replaces e-mail addresses, national identifiers (Korean resident registration numbers, Japanese
 * My Numbers, both check-digit validated), IP addresses, Luhn-valid card numbers and phone numbers
 * (international, and national forms including Korea's and Japan's) with typed placeholders.
 */
export function redactPii(text: string): { text: string; counts: Record<PiiKind, number> } {
  const counts = emptyPiiCounts();
  const replace = (input: string, pattern: RegExp, kind: PiiKind, accept: (m: string, offset: number, whole: string) => boolean): string =>
    input.replace(pattern, (...args: unknown[]) => {
      // (match, ...groups, offset, whole)
      const match = args[0] as string;
      const whole = args[args.length - 1] as string;
      const offset = args[args.length - 2] as number;
      if (!accept(match, offset, whole)) return match;
      counts[kind]++;
      return `[${kind.toUpperCase()}]`;
    });
  // Each pattern is tried only where what it needs is there: an at sign; a digit (every other kind
  // needs one, an IPv6 address too, see isIpv6); two colons; a dot.
  let out = text.includes('@') ? replace(text, emailPattern, 'email', () => true) : text;
  if (!ANY_DIGIT.test(out)) return { text: out, counts };
  // National identifiers before cards and phones, whose looser patterns would take their digits.
  // A resident registration number is written YYMMDD-NNNNNNN; without the hyphen it must be named
  // (13 bare digits are as often a millisecond timestamp). A My Number is twelve digits like any
  // other, so it must be named (マイナンバー, 個人番号, My Number) just before it.
  out = replace(out, krRrnCandidate, 'national_id', (m, at, whole) => isKoreanRrn(m) && (m.includes('-') || namedBefore(whole, at)));
  out = replace(out, jpMyNumberCandidate, 'national_id', (m, at, whole) => isJapaneseMyNumber(m) && namedBefore(whole, at));
  const colon = out.indexOf(':');
  if (colon !== -1 && out.indexOf(':', colon + 1) !== -1) out = replace(out, ipv6Candidate, 'ip', isIpv6);
  if (out.includes('.')) out = replace(out, ipv4Pattern, 'ip', () => true);
  out = replace(out, cardCandidate, 'card', (m) => isLuhnValid(m.replace(/\D/g, '')));
  out = replace(out, phoneCandidate, 'phone', isPhone);
  return { text: out, counts };
}

/** Redacts every text field of each document; removes nothing. */
export function piiRedaction<T extends QualityDoc>(docs: Candidate<T>[]): StepResult<T> {
  const kept = docs.map((c): Candidate<T> => {
    if ('text' in c.doc) {
      const r = redactPii(c.doc.text);
      // Nothing redacted: the document itself.
      const doc: T = r.text === c.doc.text ? c.doc : { ...c.doc, text: r.text };
      return { doc, text: documentText(doc), redactions: r.counts, ...(c.at === undefined ? {} : { at: c.at }) };
    }
    const prompt = redactPii(c.doc.prompt);
    const response = redactPii(c.doc.response);
    const redactions = emptyPiiCounts();
    addPiiCounts(redactions, prompt.counts);
    addPiiCounts(redactions, response.counts);
    const doc: T = { ...c.doc, prompt: prompt.text, response: response.text };
    return { doc, text: documentText(doc), redactions, ...(c.at === undefined ? {} : { at: c.at }) };
  });
  return { kept, removed: {} };
}

// ---------------------------------------------------------------- the pipeline

/**
 * Order: cheap per-document filters first, then redaction, then de-duplication on the redacted text
 * (two copies that differ only in an e-mail address are the same document). Redaction counts cover
 * only the documents that survive.
 */
export function cleanDocuments<T extends QualityDoc>(
  docs: T[],
  settings: QualitySettings,
  o: { index?: MinhashIndex } = {},
): CleanResult<T> {
  const tally = new Tally<T>(docs);
  for (const step of cleaningSteps<T>(settings, o.index)) tally.apply(step.run(tally.candidates));
  return tally.result();
}

export interface CleanResult<T extends QualityDoc> {
  kept: T[];
  /** Each kept document's MinHash signature (in `kept`'s order), where near-duplicate removal ran. */
  signatures: (Uint32Array | undefined)[];
  report: QualityReport;
  details: QualityDetails;
}

/**
 * cleanDocuments for a worker: the same result, but the event loop gets a turn between the steps
 * and every `slice` documents of the MinHash signatures (the costly part, computed just before the
 * near-duplicate step, on the text the earlier steps left), so the activity's heartbeats keep
 * flowing on a large corpus. `onProgress` is called at each turn.
 */
export async function cleanDocumentsPaced<T extends QualityDoc>(
  docs: T[],
  settings: QualitySettings,
  o: { slice?: number; onProgress?: () => void; index?: MinhashIndex } = {},
): Promise<CleanResult<T>> {
  const slice = o.slice ?? 256;
  const pause = async () => {
    o.onProgress?.();
    await new Promise<void>((resolve) => setImmediate(resolve));
  };
  const tally = new Tally<T>(docs);
  const shape = settings.minhash ?? defaultMinhash;
  for (const step of cleaningSteps<T>(settings, o.index)) {
    if (step.name === 'near_duplicate') {
      for (const [i, c] of tally.candidates.entries()) {
        c.signature = minhashSignature(c.text, shape.bands * shape.rows);
        if ((i + 1) % slice === 0) await pause();
      }
    }
    if (!step.perDocument) {
      tally.apply(step.run(tally.candidates));
      await pause();
      continue;
    }
    // A filter that judges each document alone runs slice by slice, so a slow one (language
    // identification, the segmenter-based heuristics) never holds the event loop for long.
    const merged: Required<StepResult<T>> = { kept: [], removed: {}, dropped: [], scores: { name: 'repetition', values: [] } };
    let scored = false;
    for (let i = 0; i < tally.candidates.length; i += slice) {
      const part = step.run(tally.candidates.slice(i, i + slice));
      merged.kept.push(...part.kept);
      for (const [reason, n] of Object.entries(part.removed) as [RemovalReason, number][]) merged.removed[reason] = (merged.removed[reason] ?? 0) + n;
      merged.dropped.push(...(part.dropped ?? []));
      if (part.scores) {
        scored = true;
        merged.scores.name = part.scores.name;
        merged.scores.values.push(...part.scores.values);
      }
      await pause();
    }
    // With nothing left to judge, the step still reports (an empty histogram), as cleanDocuments does.
    if (tally.candidates.length === 0) tally.apply(step.run([]));
    else tally.apply(scored ? merged : { kept: merged.kept, removed: merged.removed, dropped: merged.dropped });
  }
  return tally.result();
}

/** The per-document steps' outcome on one shard of the documents, to be merged in order (QualityStream.add). */
export interface ShardResult<T extends QualityDoc> {
  kept: Candidate<T>[];
  removed: Record<string, number>;
  removedBytes: Record<string, number>;
  examples: Record<string, string[]>;
  scores: Partial<Record<ScoreName, number[]>>;
}

/**
 * The steps that judge each document alone, on one shard, and the MinHash signature of each
 * survivor when near-duplicate removal will run: what a worker thread does (ml/qualityWorker.ts).
 */
export function shardPass<T extends QualityDoc>(docs: T[], settings: QualitySettings): ShardResult<T> {
  const tally = new Tally<T>(docs);
  for (const step of cleaningSteps<T>(settings).filter((s) => s.perDocument)) tally.apply(step.run(tally.candidates));
  // What the comparing steps need of each survivor, computed here, on the shard's thread.
  const shape = settings.minhash ?? defaultMinhash;
  for (const c of tally.candidates) {
    const normalized = normalizeForDedup(c.text);
    c.exactKey = sha256Of(normalized);
    if (settings.nearDuplicateThreshold !== null) c.signature = minhashOfNormalized(normalized, shape.bands * shape.rows);
  }
  return tally.shard();
}

/** Node's one-shot hash (from 20.12), which skips the Hash object; createHash before it. */
const oneShotHash = (crypto as { hash?: (algorithm: string, data: string, encoding: 'buffer') => Buffer }).hash;

/** The sha256 digest of `text` (UTF-8). */
function sha256Of(text: string): Uint8Array {
  return oneShotHash ? oneShotHash('sha256', text, 'buffer') : createHash('sha256').update(text).digest();
}

/**
 * A set of 96-bit hashes (two 48-bit halves) in typed arrays, outside the heap: 32 bytes a slot at
 * most half full. Two different texts share a hash with a probability near 2^-96 a pair.
 */
class HashSet96 {
  private keys = new Float64Array(2 * 1024);
  private used = new Uint8Array(1024);
  private count = 0;

  /** Adds the hash; false when it was there already. */
  add(digest: Uint8Array): boolean {
    // (A Buffer that crossed from a worker thread arrives as a plain Uint8Array.)
    let a = 0;
    let b = 0;
    for (let i = 0; i < 6; i++) {
      a = a * 256 + (digest[i] as number);
      b = b * 256 + (digest[i + 6] as number);
    }
    if ((this.count + 1) * 2 > this.used.length) this.grow();
    const mask = this.used.length - 1;
    let i = (a ^ (b >>> 3)) & mask;
    while (this.used[i]) {
      if (this.keys[2 * i] === a && this.keys[2 * i + 1] === b) return false;
      i = (i + 1) & mask;
    }
    this.used[i] = 1;
    this.keys[2 * i] = a;
    this.keys[2 * i + 1] = b;
    this.count++;
    return true;
  }

  private grow(): void {
    const keys = this.keys;
    const used = this.used;
    this.keys = new Float64Array(keys.length * 2);
    this.used = new Uint8Array(used.length * 2);
    const mask = this.used.length - 1;
    for (let j = 0; j < used.length; j++) {
      if (!used[j]) continue;
      const a = keys[2 * j] as number;
      const b = keys[2 * j + 1] as number;
      let i = (a ^ (b >>> 3)) & mask;
      while (this.used[i]) i = (i + 1) & mask;
      this.used[i] = 1;
      this.keys[2 * i] = a;
      this.keys[2 * i + 1] = b;
    }
  }
}

function addCounts(into: Histogram | undefined, h: Histogram): Histogram {
  if (!into) return { edges: h.edges, counts: [...h.counts] };
  h.counts.forEach((n, i) => (into.counts[i] = (into.counts[i] as number) + n));
  return into;
}

/**
 * What a chunk's per-document pass removed and measured, summed up: counts, bytes, the first
 * examples per reason, and the histograms (fixed bins, so they add up). A quality part (one
 * activity's share of a dataset) stores its tally beside its survivors, for the merge.
 */
export interface PassTally {
  input: number;
  lengths: Histogram;
  scores: Partial<Record<ScoreName, Histogram>>;
  removed: Record<string, number>;
  removedBytes: Record<string, number>;
  examples: Record<string, string[]>;
}

export function emptyTally(): PassTally {
  return {
    input: 0,
    lengths: lengthHistogram([]),
    scores: {},
    removed: Object.fromEntries(removalReasons.map((r) => [r, 0])),
    removedBytes: Object.fromEntries(removalReasons.map((r) => [r, 0])),
    examples: {},
  };
}

/** Adds a chunk's documents and their per-document pass to `into`, as the chunks come in order. */
export function addToTally<T extends QualityDoc>(into: PassTally, docs: T[], pass: ShardResult<T>): void {
  const scores: PassTally['scores'] = {};
  for (const [name, values] of Object.entries(pass.scores) as [ScoreName, number[]][]) scores[name] = histogram(values, 0, 1, 20);
  mergeTally(into, { input: docs.length, lengths: lengthHistogram(docs.map((doc) => documentText(doc).length)), scores, removed: pass.removed, removedBytes: pass.removedBytes, examples: pass.examples });
}

/** Adds tally `t` (of later documents) to `into`; examples stay the first few per reason. */
export function mergeTally(into: PassTally, t: PassTally): void {
  into.input += t.input;
  addCounts(into.lengths, t.lengths);
  for (const [name, h] of Object.entries(t.scores) as [ScoreName, Histogram][]) into.scores[name] = addCounts(into.scores[name], h);
  for (const [reason, n] of Object.entries(t.removed)) into.removed[reason] = (into.removed[reason] ?? 0) + n;
  for (const [reason, n] of Object.entries(t.removedBytes)) into.removedBytes[reason] = (into.removedBytes[reason] ?? 0) + n;
  for (const [reason, list] of Object.entries(t.examples)) {
    const mine = (into.examples[reason] ??= []);
    for (const example of list) if (mine.length < examplesPerReason) mine.push(example);
  }
}

/**
 * The quality stage a chunk of documents at a time, for a corpus that does not fit in memory: each
 * chunk's per-document pass (shardPass, on any thread, or a quality part's on any control worker)
 * is merged in order, then its survivors are checked against every earlier survivor, exact copies
 * by a 96-bit hash of their normalised text and near copies in the MinHash index (outside the
 * heap). Counts, bytes, examples and histograms come out as cleanDocuments gives them for the
 * whole corpus at once.
 */
export class QualityStream<T extends QualityDoc> {
  private kept = 0;
  private chunks = 0;
  private readonly tally = emptyTally();
  private readonly redactions = emptyPiiCounts();
  private readonly exact = new HashSet96();
  private readonly index: MinhashIndex | null;
  private readonly permutations: number;

  constructor(private readonly settings: QualitySettings, index?: MinhashIndex) {
    const shape = settings.minhash ?? defaultMinhash;
    if (index && (index.shape.bands !== shape.bands || index.shape.rows !== shape.rows)) throw new Error('the MinHash index given has another shape than settings.minhash');
    this.permutations = shape.bands * shape.rows;
    this.index = settings.nearDuplicateThreshold === null ? null : (index ?? new MinhashIndex(shape));
  }

  private drop(reason: RemovalReason, text: string): void {
    this.tally.removed[reason] = (this.tally.removed[reason] ?? 0) + 1;
    this.tally.removedBytes[reason] = (this.tally.removedBytes[reason] ?? 0) + Buffer.byteLength(text, 'utf8');
    const list = (this.tally.examples[reason] ??= []);
    if (list.length < examplesPerReason) list.push(shorten(redactPii(text).text));
  }

  /** One chunk: its documents and the per-document pass over them; returns its survivors, in order, with their signatures. */
  add(docs: T[], pass: ShardResult<T>): Candidate<T>[] {
    this.chunks++;
    addToTally(this.tally, docs, pass);
    return this.merge(pass.kept);
  }

  /** A quality part's tally (its survivors come through `merge`, in order). */
  addTally(t: PassTally): void {
    this.chunks++;
    mergeTally(this.tally, t);
  }

  /** Survivors of the per-document pass, in the documents' order: removes exact and near copies of earlier ones; returns the rest. */
  merge(kept: Candidate<T>[]): Candidate<T>[] {
    const survivors: Candidate<T>[] = [];
    for (const c of kept) {
      if (!this.exact.add(c.exactKey ?? sha256Of(normalizeForDedup(c.text)))) {
        this.drop('duplicate', c.text);
        continue;
      }
      if (this.index && this.settings.nearDuplicateThreshold !== null) {
        const signature = c.signature?.length === this.permutations ? c.signature : minhashSignature(c.text, this.permutations);
        c.signature = signature;
        const match = this.index.match(signature, this.settings.nearDuplicateThreshold);
        if (match !== null) {
          this.drop(match === 'earlier' ? 'earlier_update' : 'near_duplicate', c.text);
          continue;
        }
        this.index.add(signature);
      }
      if (c.redactions) addPiiCounts(this.redactions, c.redactions);
      this.kept++;
      survivors.push(c);
    }
    return survivors;
  }

  result(): { report: QualityReport; details: QualityDetails } {
    // With no chunk at all, the steps still report (empty histograms), as cleanDocuments does.
    if (this.chunks === 0) this.add([], shardPass<T>([], this.settings));
    const { input, lengths, scores, removed, removedBytes } = this.tally;
    // In the reasons' order, however the chunks or parts came in.
    const order = [...removalReasons, ...Object.keys(this.tally.examples).filter((r) => !(removalReasons as readonly string[]).includes(r))];
    const examples = Object.fromEntries(order.filter((r) => this.tally.examples[r]).map((r) => [r, this.tally.examples[r] as string[]]));
    const histograms: QualityDetails['histograms'] = { length: lengths };
    for (const [name, counts] of Object.entries(scores) as [ScoreName, Histogram][]) histograms[name] = counts;
    return {
      report: { input, kept: this.kept, removed, removedBytes, redactions: this.redactions },
      details: { examples, histograms },
    };
  }
}

interface CleaningStep<T extends QualityDoc> {
  name: string;
  run: (c: Candidate<T>[]) => StepResult<T>;
  /** Judges each document alone (no state across documents): may run in slices. */
  perDocument?: boolean;
}

function cleaningSteps<T extends QualityDoc>(settings: QualitySettings, index?: MinhashIndex): CleaningStep<T>[] {
  const { nearDuplicateThreshold } = settings;
  const shape = settings.minhash ?? defaultMinhash;
  if (index && (index.shape.bands !== shape.bands || index.shape.rows !== shape.rows)) throw new Error('the MinHash index given has another shape than settings.minhash');
  return [
    { perDocument: true, name: 'length', run: (c) => lengthFilter(c, settings) },
    { perDocument: true, name: 'language', run: (c) => languageFilter(c, settings.minLanguageScore ?? defaultMinLanguageScore) },
    { perDocument: true, name: 'repetition', run: (c) => repetitionFilter(c, settings.maxRepetitionRatio) },
    { perDocument: true, name: 'symbols', run: (c) => symbolFilter(c, settings.maxSymbolRatio) },
    ...(settings.heuristics ? [{ perDocument: true, name: 'heuristics', run: (c: Candidate<T>[]) => heuristicFilter(c, settings.heuristics as HeuristicSettings) }] : []),
    ...(settings.redactPii ? [{ perDocument: true, name: 'pii', run: (c: Candidate<T>[]) => piiRedaction(c) }] : []),
    { name: 'exact_duplicate', run: (c) => exactDedup(c) },
    ...(nearDuplicateThreshold !== null ? [{ name: 'near_duplicate', run: (c: Candidate<T>[]) => nearDedup(c, nearDuplicateThreshold, index ?? new MinhashIndex(shape)) }] : []),
  ];
}

/** What survives, and how many each reason removed (documents, bytes, a few examples), as the steps run. */
class Tally<T extends QualityDoc> {
  candidates: Candidate<T>[];
  private readonly removed: Record<string, number> = Object.fromEntries(removalReasons.map((r) => [r, 0]));
  private readonly removedBytes: Record<string, number> = Object.fromEntries(removalReasons.map((r) => [r, 0]));
  private readonly examples: Record<string, string[]> = {};
  private readonly histograms: QualityDetails['histograms'];
  /** Every score a step gave, by name (what a shard hands back to be merged). */
  readonly scoreValues: Partial<Record<ScoreName, number[]>> = {};

  constructor(private readonly docs: T[]) {
    this.candidates = docs.map((doc, at) => ({ doc, text: documentText(doc), at }));
    this.histograms = { length: lengthHistogram(this.candidates.map((c) => c.text.length)) };
  }

  apply(result: StepResult<T>): void {
    for (const [reason, count] of Object.entries(result.removed)) this.removed[reason] += count ?? 0;
    for (const { reason, text } of result.dropped ?? []) {
      this.removedBytes[reason] += Buffer.byteLength(text, 'utf8');
      const list = (this.examples[reason] ??= []);
      // Shown to approvers and auditors: redacted whatever the spec says, and short.
      if (list.length < examplesPerReason) list.push(shorten(redactPii(text).text));
    }
    if (result.scores) {
      this.scoreValues[result.scores.name] = result.scores.values;
      this.histograms[result.scores.name] = histogram(result.scores.values, 0, 1, 20);
    }
    this.candidates = result.kept;
  }

  /** What a shard's per-document steps left and removed (see shardPass). */
  shard(): ShardResult<T> {
    return { kept: this.candidates, removed: this.removed, removedBytes: this.removedBytes, examples: this.examples, scores: this.scoreValues };
  }

  result(): CleanResult<T> {
    const redactions = emptyPiiCounts();
    for (const c of this.candidates) if (c.redactions) addPiiCounts(redactions, c.redactions);
    return {
      kept: this.candidates.map((c) => c.doc),
      signatures: this.candidates.map((c) => c.signature),
      report: { input: this.docs.length, kept: this.candidates.length, removed: this.removed, removedBytes: this.removedBytes, redactions },
      details: { examples: this.examples, histograms: this.histograms },
    };
  }
}

function shorten(text: string): string {
  const flat = text.replace(/\s+/gu, ' ').trim();
  const chars = [...flat];
  return chars.length <= exampleChars ? flat : `${chars.slice(0, exampleChars).join('')}…`;
}
