/**
 * Heuristic document filters from the public pretraining pipelines: Gopher's quality and
 * repetition rules (Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from
 * Training Gopher", appendix A; the defaults of datatrove's GopherQualityFilter and
 * GopherRepetitionFilter, which FineWeb uses). docs/data-quality.md cites each threshold.
 *
 * Words come from `Intl.Segmenter`, which knows scripts without spaces, so a Japanese or Chinese
 * paragraph is many words, not one (where no dictionary is needed, `words` applies the same
 * Unicode rules itself, faster). A document's script decides its language for the rules that
 * depend on it (mean word length, stop words): Hangul is Korean, kana is Japanese, Han without kana
 * is Chinese, Latin is English for the stop-word rule; other scripts skip the stop-word rule.
 */

export type ScriptLanguage = 'en' | 'ko' | 'ja' | 'zh' | 'other';

export interface HeuristicSettings {
  minWords: number | null;
  maxWords: number | null;
  minMeanWordLength: number | null;
  maxMeanWordLength: number | null;
  /** (`#` + ellipses) per word. */
  maxSymbolWordRatio: number | null;
  maxBulletLineRatio: number | null;
  maxEllipsisLineRatio: number | null;
  /** Share of words with at least one letter. */
  minAlphaWordRatio: number | null;
  /** Distinct stop words of the document's language that must occur. */
  minStopWords: number | null;
  maxDuplicateLineFraction: number | null;
  maxDuplicateParagraphFraction: number | null;
  maxDuplicateLineCharFraction: number | null;
  maxDuplicateParagraphCharFraction: number | null;
  /** Most frequent n-gram's share of word characters, for n = 2, 3, 4. */
  maxTopNgramCharFraction: [number, number, number] | null;
  /** Characters in duplicated n-grams, for n = 5 … 10. */
  maxDuplicateNgramCharFraction: [number, number, number, number, number, number] | null;
}

/** datatrove's Gopher defaults. */
export const defaultHeuristics: HeuristicSettings = {
  minWords: 50,
  maxWords: 100_000,
  minMeanWordLength: 3,
  maxMeanWordLength: 10,
  maxSymbolWordRatio: 0.1,
  maxBulletLineRatio: 0.9,
  maxEllipsisLineRatio: 0.3,
  minAlphaWordRatio: 0.8,
  minStopWords: 2,
  maxDuplicateLineFraction: 0.3,
  maxDuplicateParagraphFraction: 0.3,
  maxDuplicateLineCharFraction: 0.2,
  maxDuplicateParagraphCharFraction: 0.2,
  maxTopNgramCharFraction: [0.2, 0.18, 0.16],
  maxDuplicateNgramCharFraction: [0.15, 0.14, 0.13, 0.12, 0.11, 0.1],
};

/**
 * Per language, where the English rule does not fit: Korean words (eojeol) carry their particles
 * and average 3–4 syllables, Japanese and Chinese words from the segmenter 1–2 characters, so the
 * lower bound on mean word length is 1 there (FineWeb-2 fits such bounds per language).
 */
export const languageOverrides: Record<ScriptLanguage, Partial<HeuristicSettings>> = {
  en: {},
  ko: { minMeanWordLength: 1 },
  ja: { minMeanWordLength: 1 },
  zh: { minMeanWordLength: 1 },
  other: {},
};

/** Gopher's English stop words; for Korean, Japanese and Chinese, their most frequent function words. */
export const stopWords: Partial<Record<ScriptLanguage, ReadonlySet<string>>> = {
  en: new Set(['the', 'be', 'to', 'of', 'and', 'that', 'have', 'with']),
  ko: new Set(['그', '이', '저', '것', '수', '등', '및', '더', '또는', '그리고', '있다', '있습니다', '합니다', '하는', '있는', '위해', '대한', '통해']),
  ja: new Set(['の', 'に', 'は', 'を', 'が', 'と', 'で', 'て', 'た', 'も', 'な', 'する', 'です', 'ます', 'から']),
  zh: new Set(['的', '了', '是', '在', '和', '有', '不', '这', '也', '就', '都', '与']),
};

export const heuristicReasons = [
  'word_count', 'mean_word_length', 'symbol_word_ratio', 'bullet_lines', 'ellipsis_lines', 'alpha_words', 'stop_words',
  'duplicate_lines', 'duplicate_paragraphs', 'top_ngram', 'duplicate_ngram',
] as const;
export type HeuristicReason = (typeof heuristicReasons)[number];

const hangul = /\p{Script=Hangul}/u;
const kana = /[\p{Script=Hiragana}\p{Script=Katakana}]/u;
const han = /\p{Script=Han}/u;
const latin = /\p{Script=Latin}/u;
const letter = /\p{L}/u;

/** The share of a text's letters in Hangul, kana, Han and Latin script (0 each when it has no letters). */
export function scriptShares(text: string): { hangul: number; kana: number; han: number; latin: number } {
  let letters = 0;
  let h = 0;
  let k = 0;
  let c = 0;
  let l = 0;
  for (const ch of text) {
    // ASCII letters and Hangul syllables, the bulk of the text here, without a regular expression.
    const code = ch.charCodeAt(0);
    if (code < 0x80) {
      if ((code | 0x20) >= 0x61 && (code | 0x20) <= 0x7a) {
        letters++;
        l++;
      }
      continue;
    }
    if (code >= 0xac00 && code <= 0xd7a3) {
      letters++;
      h++;
      continue;
    }
    if (!letter.test(ch)) continue;
    letters++;
    if (hangul.test(ch)) h++;
    else if (kana.test(ch)) k++;
    else if (han.test(ch)) c++;
    else if (latin.test(ch)) l++;
  }
  if (letters === 0) return { hangul: 0, kana: 0, han: 0, latin: 0 };
  return { hangul: h / letters, kana: k / letters, han: c / letters, latin: l / letters };
}

/** The language a document's letters say, by script (see the module comment). */
export function scriptLanguage(text: string): ScriptLanguage {
  const s = scriptShares(text);
  if (s.hangul >= 0.3) return 'ko';
  if (s.kana >= 0.1) return 'ja';
  if (s.han >= 0.3) return 'zh';
  if (s.latin >= 0.5) return 'en';
  return 'other';
}

const segmenters = new Map<string, Intl.Segmenter>();
function segmenter(language: ScriptLanguage): Intl.Segmenter {
  const locale = language === 'other' ? 'und' : language;
  let s = segmenters.get(locale);
  if (!s) segmenters.set(locale, (s = new Intl.Segmenter(locale, { granularity: 'word' })));
  return s;
}

/**
 * Text the Unicode word-boundary rules (UAX #29) alone segment, with no dictionary: no script
 * written without spaces, no combining marks or format characters (soft hyphens, joiners), no other-numbers (², ½, ①). For it, WORD below finds
 * exactly the word-like segments Intl.Segmenter finds, some 50 times faster
 * (`test/heuristics.test.ts` compares them on generated and random text).
 */
const NEEDS_SEGMENTER = /[\p{M}\p{Cf}\p{No}\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}\p{Script=Thai}\p{Script=Lao}\p{Script=Khmer}\p{Script=Myanmar}\p{Script=Hebrew}\p{Script=Arabic}]/u;
/** UAX #29 MidLetter, MidNumLet and Single_Quote: join letters on both sides. */
const MID_LETTER = String.raw`[:\u00B7\u0387\u055F\u05F4\u2027\uFE13\uFE55\uFF1A.\u2018\u2019\u2024\uFE52\uFF07\uFF0E']`;
/** UAX #29 MidNum, MidNumLet and Single_Quote: join digits on both sides. */
const MID_NUM = String.raw`[,;\u037E\u0589\u060C\u060D\u066C\u07F8\u2044\uFE10\uFE14\uFE50\uFE54\uFF0C\uFF1B.\u2018\u2019\u2024\uFE52\uFF07\uFF0E']`;
/** Word characters other than Hangul syllables, which ICU keeps apart from letters of other scripts. */
const WORD_CHAR = String.raw`[[\p{L}\p{Nl}\p{Nd}_\p{Pc}]--[\uAC00-\uD7A3]]`;
const WORD = new RegExp(
  String.raw`[\uAC00-\uD7A3]+|${WORD_CHAR}+(?:(?:(?<=[\p{L}\p{Nl}])${MID_LETTER}(?=[[\p{L}\p{Nl}]--[\uAC00-\uD7A3]])|(?<=\p{Nd})${MID_NUM}(?=\p{Nd}))${WORD_CHAR}+)*`,
  'gv',
);
const LETTER_OR_NUMBER = /[\p{L}\p{N}]/u;

/** Words as Intl.Segmenter finds them (word-like segments only); without it where the rules alone decide. */
export function words(text: string, language: ScriptLanguage = scriptLanguage(text)): string[] {
  const out: string[] = [];
  if (!NEEDS_SEGMENTER.test(text)) {
    for (const match of text.matchAll(WORD)) if (match[0].length > 1 || LETTER_OR_NUMBER.test(match[0])) out.push(match[0]);
    return out;
  }
  return segmentedWords(text, language);
}

/** Words as Intl.Segmenter finds them, always. */
export function segmentedWords(text: string, language: ScriptLanguage = scriptLanguage(text)): string[] {
  const out: string[] = [];
  for (const part of segmenter(language).segment(text)) if (part.isWordLike) out.push(part.segment);
  return out;
}

const bullet = /^\s*[•‣⁃◦▪▫●○■□\-*·–—]/u;
const ellipsisEnd = /(\.\.\.|…)\s*$/u;

/** Fraction of items that repeat an earlier one, and the fraction of characters in those repeats. */
function duplicates(items: string[]): { fraction: number; charFraction: number } {
  const seen = new Set<string>();
  let dup = 0;
  let dupChars = 0;
  let chars = 0;
  for (const item of items) {
    chars += item.length;
    if (seen.has(item)) {
      dup++;
      dupChars += item.length;
    } else seen.add(item);
  }
  return { fraction: items.length ? dup / items.length : 0, charFraction: chars ? dupChars / chars : 0 };
}

/**
 * The words as integers (equal words, equal ids), so n-grams are compared by a number instead of a
 * joined string.
 */
export function wordIds(w: string[]): Int32Array {
  const ids = new Map<string, number>();
  const out = new Int32Array(w.length);
  for (let i = 0; i < w.length; i++) {
    const word = w[i] as string;
    let id = ids.get(word);
    if (id === undefined) ids.set(word, (id = ids.size));
    out[i] = id;
  }
  return out;
}

/**
 * A key for the n-gram of ids at `start`: two independent 32-bit hashes of its ids in one exact
 * double (32 + 21 bits), so equal n-grams always share a key and two different ones of a document
 * share one with a probability near 2^-53 a pair.
 */
export function ngramKey(ids: Int32Array, start: number, n: number): number {
  let a = 0x811c9dc5;
  let b = 0x9747b28c;
  for (let k = start; k < start + n; k++) {
    const id = ids[k] as number;
    a = Math.imul(a ^ id, 0x01000193);
    b = Math.imul(b ^ id, 0x5bd1e995);
    b ^= b >>> 15;
  }
  return (a >>> 0) * 0x200000 + ((b >>> 0) & 0x1fffff);
}

/**
 * A scratch table of n-gram keys for one document at a time: open addressing in typed arrays,
 * emptied by moving to a new generation instead of clearing. Counts and first positions per key,
 * and the keys in the order they first came (so ties go to the earliest, as a Map's order gives).
 */
class NgramTable {
  private keys = new Float64Array(0);
  private stamp = new Uint32Array(0);
  private generation = 0;
  counts = new Int32Array(0);
  firsts = new Int32Array(0);
  /** Slots in the order their keys first came. */
  order = new Int32Array(0);
  size = 0;
  private mask = 0;

  /** Empties the table for up to `entries` keys. */
  reset(entries: number): void {
    let capacity = 64;
    while (capacity < entries * 2) capacity *= 2;
    if (capacity > this.keys.length) {
      this.keys = new Float64Array(capacity);
      this.stamp = new Uint32Array(capacity);
      this.counts = new Int32Array(capacity);
      this.firsts = new Int32Array(capacity);
      this.order = new Int32Array(capacity);
      this.generation = 0;
    }
    this.mask = capacity - 1;
    this.generation++;
    if (this.generation === 0xffffffff) {
      this.stamp.fill(0);
      this.generation = 1;
    }
    this.size = 0;
  }

  /** Counts `key` (first seen at `at`); returns its count so far. */
  add(key: number, at: number): number {
    let i = (key >>> 0) & this.mask;
    for (;;) {
      if (this.stamp[i] !== this.generation) {
        this.stamp[i] = this.generation;
        this.keys[i] = key;
        this.counts[i] = 1;
        this.firsts[i] = at;
        this.order[this.size++] = i;
        return 1;
      }
      if (this.keys[i] === key) return ++(this.counts[i] as number);
      i = (i + 1) & this.mask;
    }
  }
}
const table = new NgramTable();

/**
 * ngramKey of every n-gram of a document, n growing one at a time: each position's two running
 * hashes are extended by one more id, so the keys of all n from 2 to 10 cost ten steps a word, not
 * fifty-four (the keys are ngramKey's, exactly).
 */
class RollingNgrams {
  private readonly a: Int32Array;
  private readonly b: Int32Array;
  n = 0;

  constructor(private readonly ids: Int32Array) {
    this.a = new Int32Array(ids.length).fill(0x811c9dc5 | 0);
    this.b = new Int32Array(ids.length).fill(0x9747b28c | 0);
  }

  /** Extends the hashes to n-grams of `n` words. */
  grow(n: number): void {
    if (n < this.n) throw new Error(`n-gram keys of ${n} words asked after ${this.n}: they only grow`);
    const { a, b, ids } = this;
    for (; this.n < n; this.n++) {
      const offset = this.n;
      for (let i = 0; i + offset < ids.length; i++) {
        const id = ids[i + offset] as number;
        a[i] = Math.imul((a[i] as number) ^ id, 0x01000193);
        let h = Math.imul((b[i] as number) ^ id, 0x5bd1e995);
        h ^= h >>> 15;
        b[i] = h;
      }
    }
  }

  key(i: number): number {
    return ((this.a[i] as number) >>> 0) * 0x200000 + (((this.b[i] as number) >>> 0) & 0x1fffff);
  }
}

function topNgramCharFraction(w: string[], grams: RollingNgrams, n: number, totalChars: number): number {
  if (w.length < n) return 0;
  grams.grow(n);
  table.reset(w.length - n + 1);
  for (let i = 0; i + n <= w.length; i++) table.add(grams.key(i), i);
  let best = 0;
  let bestSlot = -1;
  for (let k = 0; k < table.size; k++) {
    const slot = table.order[k] as number;
    if ((table.counts[slot] as number) > best) {
      best = table.counts[slot] as number;
      bestSlot = slot;
    }
  }
  if (best <= 1) return 0;
  const at = table.firsts[bestSlot] as number;
  let chars = 0;
  for (let k = at; k < at + n; k++) chars += (w[k] as string).length;
  return (best * chars) / totalChars;
}

function duplicateNgramCharFraction(w: string[], grams: RollingNgrams, n: number, totalChars: number): number {
  if (w.length < n) return 0;
  grams.grow(n);
  table.reset(w.length - n + 1);
  const covered = new Uint8Array(w.length);
  for (let i = 0; i + n <= w.length; i++) {
    if (table.add(grams.key(i), i) > 1) covered.fill(1, i, i + n);
  }
  let chars = 0;
  for (let i = 0; i < w.length; i++) if (covered[i]) chars += (w[i] as string).length;
  return chars / totalChars;
}

/** The settings for a document of `language`: the run's, with the language's overrides where the run keeps the default. */
export function settingsFor(language: ScriptLanguage, run: HeuristicSettings): HeuristicSettings {
  const over = languageOverrides[language];
  const out = { ...run };
  for (const [key, value] of Object.entries(over) as [keyof HeuristicSettings, never][]) {
    if (run[key] === defaultHeuristics[key]) out[key] = value;
  }
  return out;
}

/** The first heuristic a text fails, or null. */
export function heuristicVerdict(text: string, run: HeuristicSettings): HeuristicReason | null {
  const language = scriptLanguage(text);
  const s = settingsFor(language, run);
  const w = words(text, language);
  const n = w.length;
  if ((s.minWords !== null && n < s.minWords) || (s.maxWords !== null && n > s.maxWords)) return 'word_count';
  if (n === 0) return null;
  const wordChars = w.reduce((a, x) => a + x.length, 0);
  const mean = wordChars / n;
  if ((s.minMeanWordLength !== null && mean < s.minMeanWordLength) || (s.maxMeanWordLength !== null && mean > s.maxMeanWordLength)) return 'mean_word_length';
  // As Gopher and datatrove: the hash and the ellipsis each against the ratio, not their sum.
  if (s.maxSymbolWordRatio !== null) {
    if ((text.match(/#/g)?.length ?? 0) / n > s.maxSymbolWordRatio) return 'symbol_word_ratio';
    if ((text.match(/\.\.\.|…/g)?.length ?? 0) / n > s.maxSymbolWordRatio) return 'symbol_word_ratio';
  }
  // Every line counts in the denominator, blank ones too (datatrove's splitlines()).
  const allLines = text.split(/\r?\n/);
  if (s.maxBulletLineRatio !== null && allLines.filter((line) => bullet.test(line)).length / allLines.length > s.maxBulletLineRatio) return 'bullet_lines';
  if (s.maxEllipsisLineRatio !== null && allLines.filter((line) => ellipsisEnd.test(line)).length / allLines.length > s.maxEllipsisLineRatio) return 'ellipsis_lines';
  const lines = allLines.filter((line) => line.trim() !== '');
  if (s.minAlphaWordRatio !== null && w.filter((x) => letter.test(x)).length / n < s.minAlphaWordRatio) return 'alpha_words';
  const stop = stopWords[language];
  // Occurrences, as datatrove counts them.
  if (s.minStopWords !== null && stop) {
    let found = 0;
    for (const x of w) {
      if (stop.has(x.toLowerCase())) found++;
      if (found >= s.minStopWords) break;
    }
    if (found < s.minStopWords) return 'stop_words';
  }
  const lineDup = duplicates(lines.map((line) => line.trim()));
  const paragraphs = text.split(/\n\s*\n/).map((p) => p.trim()).filter(Boolean);
  const paraDup = duplicates(paragraphs);
  // Paragraphs first, then lines, in datatrove's order.
  if ((s.maxDuplicateParagraphFraction !== null && paraDup.fraction > s.maxDuplicateParagraphFraction) || (s.maxDuplicateParagraphCharFraction !== null && paraDup.charFraction > s.maxDuplicateParagraphCharFraction)) return 'duplicate_paragraphs';
  if ((s.maxDuplicateLineFraction !== null && lineDup.fraction > s.maxDuplicateLineFraction) || (s.maxDuplicateLineCharFraction !== null && lineDup.charFraction > s.maxDuplicateLineCharFraction)) return 'duplicate_lines';
  // Characters of the n-grams over the document's length, as datatrove divides them.
  const lowered = w.map((x) => x.toLowerCase());
  const grams = new RollingNgrams(wordIds(lowered));
  const length = text.length;
  if (s.maxTopNgramCharFraction) {
    for (const [i, max] of s.maxTopNgramCharFraction.entries()) if (topNgramCharFraction(lowered, grams, i + 2, length) > max) return 'top_ngram';
  }
  if (s.maxDuplicateNgramCharFraction) {
    for (const [i, max] of s.maxDuplicateNgramCharFraction.entries()) if (duplicateNgramCharFraction(lowered, grams, i + 5, length) > max) return 'duplicate_ngram';
  }
  return null;
}
