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

/** A letter's script for scriptShares: 0 not a letter, 1 a letter of another script. */
const SCRIPT_HANGUL = 2;
const SCRIPT_KANA = 3;
const SCRIPT_HAN = 4;
const SCRIPT_LATIN = 5;
function scriptOf(ch: string): number {
  if (!letter.test(ch)) return 0;
  if (hangul.test(ch)) return SCRIPT_HANGUL;
  if (kana.test(ch)) return SCRIPT_KANA;
  if (han.test(ch)) return SCRIPT_HAN;
  if (latin.test(ch)) return SCRIPT_LATIN;
  return 1;
}
let unitScripts: Uint8Array | undefined;
/** scriptOf each unit of the Basic Multilingual Plane outside the surrogates (built on first use). */
function scriptsOfUnits(): Uint8Array {
  if (unitScripts) return unitScripts;
  const scripts = new Uint8Array(65536);
  for (let unit = 0; unit < 65536; unit++) if (unit < 0xd800 || unit > 0xdfff) scripts[unit] = scriptOf(String.fromCharCode(unit));
  return (unitScripts = scripts);
}

/** The share of a text's letters in Hangul, kana, Han and Latin script (0 each when it has no letters). */
export function scriptShares(text: string): { hangul: number; kana: number; han: number; latin: number } {
  const scripts = scriptsOfUnits();
  const counts = [0, 0, 0, 0, 0, 0];
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0xd800 || unit > 0xdfff) {
      (counts[scripts[unit] as number] as number)++;
      continue;
    }
    // A surrogate pair is one code point; a lone surrogate is no letter.
    const next = text.charCodeAt(i + 1);
    if (unit <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
      (counts[scriptOf(text.slice(i, i + 2))] as number)++;
      i++;
    }
  }
  const letters = text.length === 0 ? 0 : (counts[1] as number) + (counts[2] as number) + (counts[3] as number) + (counts[4] as number) + (counts[5] as number);
  if (letters === 0) return { hangul: 0, kana: 0, han: 0, latin: 0 };
  return { hangul: (counts[SCRIPT_HANGUL] as number) / letters, kana: (counts[SCRIPT_KANA] as number) / letters, han: (counts[SCRIPT_HAN] as number) / letters, latin: (counts[SCRIPT_LATIN] as number) / letters };
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

/** For each UTF-16 unit, 1 where `\s` matches it (white space and line terminators; all of them are in the BMP). */
export const whiteSpace = Uint8Array.from({ length: 65536 }, (_, unit) => (/\s/u.test(String.fromCharCode(unit)) ? 1 : 0));

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

/** What a UTF-16 unit is to the word rules, as bits (classesOfUnits). */
const IS_LETTER = 1; // \p{L}
const IS_NUMBER_LETTER = 2; // \p{Nl}
const IS_DIGIT = 4; // \p{Nd}
const IS_WORD_CHAR = 8; // WORD_CHAR
const IS_HANGUL_SYLLABLE = 16;
const IS_MID_LETTER = 32;
const IS_MID_NUM = 64;
const IS_LETTER_OR_NUMBER = 128;
const IS_FOR_SEGMENTER = 256; // NEEDS_SEGMENTER
let unitClasses: Uint16Array | undefined;

/** Each unit of the Basic Multilingual Plane, classed by the same expressions WORD is made of (built on first use). */
function classesOfUnits(): Uint16Array {
  if (unitClasses) return unitClasses;
  const classes = new Uint16Array(65536);
  const tests: [number, RegExp][] = [
    [IS_LETTER, /^\p{L}$/u],
    [IS_NUMBER_LETTER, /^\p{Nl}$/u],
    [IS_DIGIT, /^\p{Nd}$/u],
    [IS_WORD_CHAR, new RegExp(`^${WORD_CHAR}$`, 'v')],
    [IS_HANGUL_SYLLABLE, /^[\uAC00-\uD7A3]$/u],
    [IS_MID_LETTER, new RegExp(`^${MID_LETTER}$`, 'u')],
    [IS_MID_NUM, new RegExp(`^${MID_NUM}$`, 'u')],
    [IS_LETTER_OR_NUMBER, /^[\p{L}\p{N}]$/u],
    [IS_FOR_SEGMENTER, new RegExp(`^${NEEDS_SEGMENTER.source}$`, 'u')],
  ];
  for (let unit = 0; unit < 65536; unit++) {
    if (unit >= 0xd800 && unit <= 0xdfff) continue;
    const ch = String.fromCharCode(unit);
    let bits = 0;
    for (const [bit, test] of tests) if (test.test(ch)) bits |= bit;
    classes[unit] = bits;
  }
  return (unitClasses = classes);
}

/** Scratch arrays hold this many entries at most once the document that needed more is done. */
const SCRATCH_KEEP = 1 << 20;

/**
 * The length to give a scratch array of `length` entries that must hold `need`, or −1 to keep it:
 * twice the need when it is too short, and back to that after a long document, so that one long
 * document does not leave large arrays behind for the life of the thread.
 */
export function scratchLength(length: number, need: number): number {
  if (need > length) return 2 * need;
  if (length > SCRATCH_KEEP && need * 4 < length) return Math.max(1024, 2 * need);
  return -1;
}

/** One document's words, by offsets into its text (scanWords), and per word: 1 when it has a letter, 2 when all its units are ASCII or Hangul syllables. */
let wordStarts = new Int32Array(1024);
let wordEnds = new Int32Array(1024);
let wordFlags = new Uint8Array(1024);
const HAS_LETTER = 1;
const PLAIN = 2;
/** One document's words (lower-cased): two independent 32-bit hashes of each, and its length. */
let loweredHashA = new Int32Array(1024);
let loweredHashB = new Int32Array(1024);
let loweredLengths = new Int32Array(1024);

/**
 * WORD's matches and the filter `words` applies, found unit by unit into wordStarts, wordEnds and
 * wordFlags: the same words, without a match object or a string per word. A word of ASCII and
 * Hangul syllables (PLAIN) also gets its lower-cased hashes (loweredHashA, loweredHashB,
 * loweredLengths; see hashWord). Returns how many words, or −1 where the text needs the segmenter
 * (NEEDS_SEGMENTER matches it), −2 where it has units outside the Basic Multilingual Plane and
 * does not (WORD, which reads code points, then decides).
 */
function scanWords(text: string): number {
  const classes = classesOfUnits();
  const length = text.length;
  const size = scratchLength(wordStarts.length, length + 1);
  if (size !== -1) {
    wordStarts = new Int32Array(size);
    wordEnds = new Int32Array(size);
    wordFlags = new Uint8Array(size);
    loweredHashA = new Int32Array(size);
    loweredHashB = new Int32Array(size);
    loweredLengths = new Int32Array(size);
  }
  let count = 0;
  let i = 0;
  while (i < length) {
    const unit = text.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdfff) return NEEDS_SEGMENTER.test(text) ? -1 : -2;
    const bits = classes[unit] as number;
    if (bits & IS_FOR_SEGMENTER) return -1;
    const start = i;
    let a = 0x811c9dc5;
    let b = 0x9747b28c;
    if (bits & IS_HANGUL_SYLLABLE) {
      let u = unit;
      do {
        a = Math.imul(a ^ u, 0x01000193);
        b = Math.imul(b ^ u, 0x5bd1e995);
        b ^= b >>> 15;
        u = ++i < length ? text.charCodeAt(i) : 0;
      } while (i < length && (classes[u] as number) & IS_HANGUL_SYLLABLE);
      // A run of syllables: letters, and more than one unit or a letter, so always a word.
      wordStarts[count] = start;
      wordEnds[count] = i;
      loweredHashA[count] = a;
      loweredHashB[count] = b;
      loweredLengths[count] = i - start;
      wordFlags[count++] = HAS_LETTER | PLAIN;
      continue;
    }
    if (!(bits & IS_WORD_CHAR)) {
      i++;
      continue;
    }
    let letters = 0;
    let plain = PLAIN;
    for (;;) {
      for (; i < length; i++) {
        let u = text.charCodeAt(i);
        const c = classes[u] as number;
        if (!(c & IS_WORD_CHAR)) break;
        if (c & IS_FOR_SEGMENTER) return -1;
        letters |= c & IS_LETTER;
        if (u >= 0x80) plain = 0;
        else if (u >= 0x41 && u <= 0x5a) u |= 0x20;
        a = Math.imul(a ^ u, 0x01000193);
        b = Math.imul(b ^ u, 0x5bd1e995);
        b ^= b >>> 15;
      }
      if (i + 1 >= length) break;
      // A joiner between two word characters: letters on both sides (no Hangul syllable after), or digits.
      const mid = text.charCodeAt(i);
      const midBits = classes[mid] as number;
      const before = classes[text.charCodeAt(i - 1)] as number;
      const after = classes[text.charCodeAt(i + 1)] as number;
      const joinsLetters = midBits & IS_MID_LETTER && before & (IS_LETTER | IS_NUMBER_LETTER) && after & (IS_LETTER | IS_NUMBER_LETTER) && !(after & IS_HANGUL_SYLLABLE);
      const joinsDigits = midBits & IS_MID_NUM && before & IS_DIGIT && after & IS_DIGIT;
      if (!joinsLetters && !joinsDigits) break;
      if (midBits & IS_FOR_SEGMENTER) return -1;
      if (mid >= 0x80) plain = 0;
      a = Math.imul(a ^ mid, 0x01000193);
      b = Math.imul(b ^ mid, 0x5bd1e995);
      b ^= b >>> 15;
      i++;
    }
    if (i - start > 1 || (classes[text.charCodeAt(start)] as number) & IS_LETTER_OR_NUMBER) {
      wordStarts[count] = start;
      wordEnds[count] = i;
      loweredHashA[count] = a;
      loweredHashB[count] = b;
      loweredLengths[count] = i - start;
      wordFlags[count++] = (letters ? HAS_LETTER : 0) | plain;
    }
  }
  return count;
}

/** Words as Intl.Segmenter finds them (word-like segments only); without it where the rules alone decide. */
export function words(text: string, language: ScriptLanguage = scriptLanguage(text)): string[] {
  const count = scanWords(text);
  if (count >= 0) return Array.from({ length: count }, (_, k) => text.slice(wordStarts[k], wordEnds[k]));
  if (count === -2) {
    const out: string[] = [];
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

const NONE_REPEATED = { fraction: 0, charFraction: 0 };

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
 * An n-gram's key: two independent 32-bit hashes chained over its words' hashes, in one exact double
 * (32 + 21 bits), so equal n-grams always share a key and two different ones of a document share
 * one with a probability near 2^-53 a pair.
 */
export function ngramKeyOf(a: number, b: number): number {
  return (a >>> 0) * 0x200000 + ((b >>> 0) & 0x1fffff);
}

/**
 * A scratch table of n-gram keys for one document at a time: open addressing in typed arrays,
 * emptied by moving to a new generation instead of clearing. Counts and first positions per key,
 * and the keys in the order they first came (so ties go to the earliest, as a Map's order gives).
 */
export class NgramTable {
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

  /** Counts `key` (first seen at `at`); returns its slot, whose count is `counts[slot]`. */
  slotOf(key: number, at: number): number {
    let i = (key >>> 0) & this.mask;
    for (;;) {
      if (this.stamp[i] !== this.generation) {
        this.stamp[i] = this.generation;
        this.keys[i] = key;
        this.counts[i] = 1;
        this.firsts[i] = at;
        this.order[this.size++] = i;
        return i;
      }
      if (this.keys[i] === key) {
        (this.counts[i] as number)++;
        return i;
      }
      i = (i + 1) & this.mask;
    }
  }
}
const table = new NgramTable();

/**
 * The n-grams of one document, n growing one word at a time up to 10, as the Gopher rules ask for
 * them. Each position's two running hashes are extended by one more word's (ngramKeyOf). Only
 * positions whose n-gram occurs more than once are carried on to n + 1: an (n + 1)-gram that
 * repeats starts with an n-gram that repeats, at the same position, so every occurrence of a
 * repeated (n + 1)-gram is still counted, in order, and a document with little repetition costs
 * little past n = 2.
 */
class NgramPasses {
  private a = new Int32Array(1024);
  private b = new Int32Array(1024);
  /** The positions still carried, in order, and how many. */
  private positions = new Int32Array(1024);
  private count = 0;
  /** Per carried position (same index), its n-gram's slot in `table` after the last pass. */
  private slots = new Int32Array(1024);
  private covered = new Uint8Array(1024);
  private n = 0;
  /** The document's words: two hashes of each (lower-cased), and its length. */
  private hashA: Int32Array = new Int32Array(0);
  private hashB: Int32Array = new Int32Array(0);
  private lengths: Int32Array = new Int32Array(0);
  private words = 0;

  /** Starts on a document of `words` words, given by `hashA`, `hashB` and `lengths` (scratch, read in place). */
  reset(words: number, hashA: Int32Array, hashB: Int32Array, lengths: Int32Array): void {
    const size = scratchLength(this.a.length, words);
    if (size !== -1) {
      this.a = new Int32Array(size);
      this.b = new Int32Array(size);
      this.positions = new Int32Array(size);
      this.slots = new Int32Array(size);
      this.covered = new Uint8Array(size);
    }
    this.a.fill(0x811c9dc5 | 0, 0, words);
    this.b.fill(0x9747b28c | 0, 0, words);
    for (let i = 0; i < words; i++) this.positions[i] = i;
    this.count = words;
    this.n = 0;
    this.words = words;
    this.hashA = hashA;
    this.hashB = hashB;
    this.lengths = lengths;
  }

  /** Extends the carried positions' hashes by one word; from n = 2, counts their n-grams in `table`. */
  private pass(): void {
    const { a, b, hashA, hashB, positions, slots } = this;
    const offset = this.n;
    const n = ++this.n;
    let count = 0;
    for (let k = 0; k < this.count; k++) {
      const i = positions[k] as number;
      if (i + n > this.words) break;
      a[i] = Math.imul((a[i] as number) ^ (hashA[i + offset] as number), 0x01000193);
      let h = Math.imul((b[i] as number) ^ (hashB[i + offset] as number), 0x5bd1e995);
      h ^= h >>> 15;
      b[i] = h;
      count++;
    }
    this.count = count;
    if (n === 1) return;
    table.reset(count);
    for (let k = 0; k < count; k++) {
      const i = positions[k] as number;
      slots[k] = table.slotOf(ngramKeyOf(a[i] as number, b[i] as number), i);
    }
  }

  /** After a pass from n = 2: carries on only the positions whose n-gram occurred more than once. */
  private keepRepeated(): void {
    const { positions, slots } = this;
    let kept = 0;
    for (let k = 0; k < this.count; k++) {
      if ((table.counts[slots[k] as number] as number) > 1) positions[kept++] = positions[k] as number;
    }
    this.count = kept;
  }

  /** Passes up to n-grams of `n` words (n ≥ 2, never less than the last), counted in `table`. */
  private growTo(n: number): void {
    if (n <= this.n || n < 2) throw new Error(`n-grams of ${n} words asked after ${this.n}: they grow`);
    while (this.n < n - 1) {
      this.pass();
      if (this.n > 1) this.keepRepeated();
    }
    this.pass();
  }

  /** The most frequent n-gram's characters times its count, over `totalChars` (ties: the first to occur); 0 when none repeats. */
  topCharFraction(n: number, totalChars: number): number {
    if (this.words < n) return 0;
    this.growTo(n);
    let best = 0;
    let bestSlot = -1;
    for (let k = 0; k < table.size; k++) {
      const slot = table.order[k] as number;
      if ((table.counts[slot] as number) > best) {
        best = table.counts[slot] as number;
        bestSlot = slot;
      }
    }
    this.keepRepeated();
    if (best <= 1) return 0;
    const at = table.firsts[bestSlot] as number;
    let chars = 0;
    for (let k = at; k < at + n; k++) chars += this.lengths[k] as number;
    return (best * chars) / totalChars;
  }

  /** The characters of the words in every occurrence of an n-gram after its first, over `totalChars`. */
  duplicateCharFraction(n: number, totalChars: number): number {
    if (this.words < n) return 0;
    this.growTo(n);
    const { covered, positions, slots } = this;
    covered.fill(0, 0, this.words);
    for (let k = 0; k < this.count; k++) {
      const i = positions[k] as number;
      if ((table.firsts[slots[k] as number] as number) !== i) covered.fill(1, i, i + n);
    }
    this.keepRepeated();
    let chars = 0;
    for (let i = 0; i < this.words; i++) if (covered[i]) chars += this.lengths[i] as number;
    return chars / totalChars;
  }
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

/** One document's n-grams at a time (heuristicVerdict). */
const grams = new NgramPasses();

/** Hashes `word` (already lower-cased) as the `k`th word. */
function hashWord(k: number, word: string): void {
  hashWordInto(word, loweredHashA, loweredHashB, k);
  loweredLengths[k] = word.length;
}

/** A word's two hashes (as scanWords computes them for plain words) into `hashA[k]` and `hashB[k]`. */
function hashWordInto(word: string, hashA: Int32Array, hashB: Int32Array, k: number): void {
  let a = 0x811c9dc5;
  let b = 0x9747b28c;
  for (let i = 0; i < word.length; i++) {
    const unit = word.charCodeAt(i);
    a = Math.imul(a ^ unit, 0x01000193);
    b = Math.imul(b ^ unit, 0x5bd1e995);
    b ^= b >>> 15;
  }
  hashA[k] = a;
  hashB[k] = b;
}

/** The first heuristic a text fails, or null. */
export function heuristicVerdict(text: string, run: HeuristicSettings): HeuristicReason | null {
  const language = scriptLanguage(text);
  const s = settingsFor(language, run);
  // The words by offsets into the text (scanWords), or, where the segmenter or WORD decides, as strings.
  const scanned = scanWords(text);
  const list = scanned >= 0 ? null : words(text, language);
  const n = list ? list.length : scanned;
  if ((s.minWords !== null && n < s.minWords) || (s.maxWords !== null && n > s.maxWords)) return 'word_count';
  if (n === 0) return null;
  let wordChars = 0;
  if (list) for (const x of list) wordChars += x.length;
  else for (let k = 0; k < n; k++) wordChars += (wordEnds[k] as number) - (wordStarts[k] as number);
  const mean = wordChars / n;
  if ((s.minMeanWordLength !== null && mean < s.minMeanWordLength) || (s.maxMeanWordLength !== null && mean > s.maxMeanWordLength)) return 'mean_word_length';
  // As Gopher and datatrove: the hash and the ellipsis each against the ratio, not their sum.
  if (s.maxSymbolWordRatio !== null) {
    if (countHashes(text) / n > s.maxSymbolWordRatio) return 'symbol_word_ratio';
    if (countEllipses(text) / n > s.maxSymbolWordRatio) return 'symbol_word_ratio';
  }
  // Every line counts in the denominator, blank ones too (datatrove's splitlines()).
  const allLines = text.split(/\r?\n/);
  if (s.maxBulletLineRatio !== null && allLines.filter((line) => bullet.test(line)).length / allLines.length > s.maxBulletLineRatio) return 'bullet_lines';
  if (s.maxEllipsisLineRatio !== null && allLines.filter((line) => ellipsisEnd.test(line)).length / allLines.length > s.maxEllipsisLineRatio) return 'ellipsis_lines';
  const lines = allLines.filter((line) => line.trim() !== '');
  if (s.minAlphaWordRatio !== null) {
    let alpha = 0;
    if (list) for (const x of list) alpha += letter.test(x) ? 1 : 0;
    else for (let k = 0; k < n; k++) alpha += (wordFlags[k] as number) & HAS_LETTER;
    if (alpha / n < s.minAlphaWordRatio) return 'alpha_words';
  }
  const stop = stopWords[language];
  // Occurrences, as datatrove counts them.
  if (s.minStopWords !== null && stop) {
    // Lower-casing never shortens a word, so a longer one cannot be a stop word; a plain word
    // (scanWords hashed it lower-cased) is looked at only when its hashes are a stop word's.
    const { longest, keys } = stopWordKeys(stop);
    let found = 0;
    for (let k = 0; k < n && found < s.minStopWords; k++) {
      if (list) {
        if (stop.has((list[k] as string).toLowerCase())) found++;
        continue;
      }
      const start = wordStarts[k] as number;
      const end = wordEnds[k] as number;
      if (end - start > longest) continue;
      if ((wordFlags[k] as number) & PLAIN && !keys.has(ngramKeyOf(loweredHashA[k] as number, loweredHashB[k] as number))) continue;
      if (stop.has(text.slice(start, end).toLowerCase())) found++;
    }
    if (found < s.minStopWords) return 'stop_words';
  }
  // One line (no line break) is one paragraph at most: nothing repeats.
  const oneLine = allLines.length === 1;
  const lineDup = oneLine ? NONE_REPEATED : duplicates(lines.map((line) => line.trim()));
  const paraDup = oneLine ? NONE_REPEATED : duplicates(text.split(/\n\s*\n/).map((p) => p.trim()).filter(Boolean));
  // Paragraphs first, then lines, in datatrove's order.
  if ((s.maxDuplicateParagraphFraction !== null && paraDup.fraction > s.maxDuplicateParagraphFraction) || (s.maxDuplicateParagraphCharFraction !== null && paraDup.charFraction > s.maxDuplicateParagraphCharFraction)) return 'duplicate_paragraphs';
  if ((s.maxDuplicateLineFraction !== null && lineDup.fraction > s.maxDuplicateLineFraction) || (s.maxDuplicateLineCharFraction !== null && lineDup.charFraction > s.maxDuplicateLineCharFraction)) return 'duplicate_lines';
  if (!s.maxTopNgramCharFraction && !s.maxDuplicateNgramCharFraction) return null;
  // The n-gram rules compare lower-cased words, by two hashes of each (equal words always hash
  // equal; two different ones of a document collide with a probability near 2^-64).
  for (let k = 0; k < n; k++) {
    if (list) {
      const lowered = (list[k] as string).toLowerCase();
      hashWord(k, lowered);
    } else if (!((wordFlags[k] as number) & PLAIN)) {
      const lowered = text.slice(wordStarts[k], wordEnds[k]).toLowerCase();
      hashWord(k, lowered);
    }
  }
  grams.reset(n, loweredHashA, loweredHashB, loweredLengths);
  // Characters of the n-grams over the document's length, as datatrove divides them.
  const length = text.length;
  if (s.maxTopNgramCharFraction) {
    for (const [i, max] of s.maxTopNgramCharFraction.entries()) if (grams.topCharFraction(i + 2, length) > max) return 'top_ngram';
  }
  if (s.maxDuplicateNgramCharFraction) {
    for (const [i, max] of s.maxDuplicateNgramCharFraction.entries()) if (grams.duplicateCharFraction(i + 5, length) > max) return 'duplicate_ngram';
  }
  return null;
}

const stopWordKeyCache = new Map<ReadonlySet<string>, { longest: number; keys: Set<number> }>();
/** A stop-word list's longest word, and each word's key (ngramKeyOf its hashWord hashes). */
function stopWordKeys(stop: ReadonlySet<string>): { longest: number; keys: Set<number> } {
  let found = stopWordKeyCache.get(stop);
  if (!found) {
    const keys = new Set<number>();
    // Not into the document's scratch, which holds its words now.
    const a = new Int32Array(1);
    const b = new Int32Array(1);
    for (const word of stop) {
      hashWordInto(word, a, b, 0);
      keys.add(ngramKeyOf(a[0] as number, b[0] as number));
    }
    stopWordKeyCache.set(stop, (found = { longest: Math.max(0, ...[...stop].map((w) => w.length)), keys }));
  }
  return found;
}

/** `text.match(/#/g)?.length ?? 0`, without the array. */
function countHashes(text: string): number {
  let count = 0;
  for (let at = text.indexOf('#'); at !== -1; at = text.indexOf('#', at + 1)) count++;
  return count;
}

/** `text.match(/\.\.\.|…/g)?.length ?? 0`: leftmost matches, none overlapping (a run of dots counts by threes). */
function countEllipses(text: string): number {
  let count = 0;
  for (let at = text.indexOf('...'); at !== -1; at = text.indexOf('...', at + 3)) count++;
  for (let at = text.indexOf('…'); at !== -1; at = text.indexOf('…', at + 1)) count++;
  return count;
}
