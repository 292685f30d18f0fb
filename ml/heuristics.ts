/**
 * Heuristic document filters from the public pretraining pipelines: Gopher's quality and
 * repetition rules (Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from
 * Training Gopher", appendix A; the defaults of datatrove's GopherQualityFilter and
 * GopherRepetitionFilter, which FineWeb uses). docs/data-quality.md cites each threshold.
 *
 * Words come from `Intl.Segmenter`, which knows scripts without spaces, so a Japanese or Chinese
 * paragraph is many words, not one. A document's script decides its language for the rules that
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

/** Words as Intl.Segmenter finds them (word-like segments only). */
export function words(text: string, language: ScriptLanguage = scriptLanguage(text)): string[] {
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

function topNgramCharFraction(w: string[], n: number, totalChars: number): number {
  const counts = new Map<string, number>();
  for (let i = 0; i + n <= w.length; i++) {
    const key = w.slice(i, i + n).join('\u0001');
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  let best = 0;
  let bestKey = '';
  for (const [key, count] of counts) {
    if (count > best) {
      best = count;
      bestKey = key;
    }
  }
  if (best <= 1) return 0;
  return (best * bestKey.split('\u0001').reduce((a, x) => a + x.length, 0)) / totalChars;
}

function duplicateNgramCharFraction(w: string[], n: number, totalChars: number): number {
  const seen = new Set<string>();
  const covered = new Uint8Array(w.length);
  for (let i = 0; i + n <= w.length; i++) {
    const key = w.slice(i, i + n).join('\u0001');
    if (seen.has(key)) covered.fill(1, i, i + n);
    else seen.add(key);
  }
  let chars = 0;
  for (let i = 0; i < w.length; i++) if (covered[i]) chars += w[i].length;
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
  const length = text.length;
  if (s.maxTopNgramCharFraction) {
    for (const [i, max] of s.maxTopNgramCharFraction.entries()) if (topNgramCharFraction(lowered, i + 2, length) > max) return 'top_ngram';
  }
  if (s.maxDuplicateNgramCharFraction) {
    for (const [i, max] of s.maxDuplicateNgramCharFraction.entries()) if (duplicateNgramCharFraction(lowered, i + 5, length) > max) return 'duplicate_ngram';
  }
  return null;
}
