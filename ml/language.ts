/**
 * Offline language identification with franc-min (trigram profiles of 82 languages from the
 * Universal Declaration of Human Rights, plus script rules for Korean, Japanese, Chinese and other
 * single-script languages; MIT, github.com/wooorm/franc). It ships its data, so nothing is fetched.
 *
 * franc ranks languages by trigram distance and scores them relative to the best (which scores 1),
 * so a threshold says how close an expected language must come to the best guess, not a
 * probability. Texts too short to tell (under `minChars`) are not judged.
 */

import { scriptShares } from './heuristics';

export { languageCode } from '../schemas/languages';

/**
 * franc-min's ranking (its `francAll`), computed from franc-min's own data and script expressions
 * with the same arithmetic, but with trigrams as numbers and each script's profiles as one table:
 * several times faster, and equal to franc's answer (test/language.test.ts compares them). franc
 * scores a text by the script most of its characters are in; for a script with several languages,
 * by the distance of the text's trigram counts to each language's 300 ranked trigrams.
 */
const MAX_LENGTH = 2048;
const MAX_DIFFERENCE = 300;

interface ScriptTable {
  languages: string[];
  /** Trigram (three UTF-16 units as one number) → its row in the postings. */
  rows: Map<number, number>;
  /** Row r's postings are rowStart[r] … rowStart[r + 1] − 1: a language's index and the trigram's rank in it. */
  rowStart: Int32Array;
  postLanguage: Uint16Array;
  postRank: Int16Array;
}

interface FrancData {
  expressions: [string, RegExp][];
  tables: Map<string, ScriptTable>;
  /**
   * For each UTF-16 unit outside the surrogates, a bit per expression that matches it alone; null
   * where an expression could match something else (then the expressions themselves count).
   */
  scriptBits: Uint32Array | null;
}
let francData: FrancData | undefined;

const trigramKey = (s: string, i: number): number => s.charCodeAt(i) * 4294967296 + s.charCodeAt(i + 1) * 65536 + s.charCodeAt(i + 2);

/**
 * franc-min is an ES module: Node ≥ 20.19 `require`s it. Loaded on first use, so runs whose sources
 * list no languages work on any Node ≥ 20.
 */
function loadFranc(): FrancData {
  if (francData) return francData;
  /* eslint-disable @typescript-eslint/no-require-imports -- lazy on purpose (see above) */
  const { data } = require('franc-min/data.js') as { data: Record<string, Record<string, string>> };
  const { expressions } = require('franc-min/expressions.js') as { expressions: Record<string, RegExp> };
  /* eslint-enable @typescript-eslint/no-require-imports */
  const tables = new Map<string, ScriptTable>();
  for (const [script, profiles] of Object.entries(data)) {
    const languages = Object.keys(profiles);
    // As franc builds its dictionaries: a trigram listed twice keeps its first (lowest) rank.
    const ranks = new Map<number, Map<number, number>>();
    languages.forEach((language, li) => {
      const model = (profiles[language] as string).split('|');
      for (let weight = model.length - 1; weight >= 0; weight--) {
        const trigram = model[weight] as string;
        // franc's trigrams are three UTF-16 units; a profile entry of another length never matches one.
        if (trigram.length !== 3) continue;
        const key = trigramKey(trigram, 0);
        let byLanguage = ranks.get(key);
        if (!byLanguage) ranks.set(key, (byLanguage = new Map()));
        byLanguage.set(li, weight);
      }
    });
    const rows = new Map<number, number>();
    const rowStart = new Int32Array(ranks.size + 1);
    const total = [...ranks.values()].reduce((n, m) => n + m.size, 0);
    const postLanguage = new Uint16Array(total);
    const postRank = new Int16Array(total);
    let r = 0;
    let at = 0;
    for (const [key, byLanguage] of ranks) {
      rows.set(key, r);
      rowStart[r] = at;
      for (const [li, rank] of byLanguage) {
        postLanguage[at] = li;
        postRank[at] = rank;
        at++;
      }
      r++;
    }
    rowStart[r] = at;
    tables.set(script, { languages, rows, rowStart, postLanguage, postRank });
  }
  const entries = Object.entries(expressions);
  francData = { expressions: entries, tables, scriptBits: scriptBitsOf(entries) };
  return francData;
}

/**
 * The script expressions as a table: franc's expressions are character classes plus surrogate
 * pairs, so on a text without surrogates each match is one unit that the table names. Checked
 * here, on every unit: where that does not hold, null.
 */
function scriptBitsOf(expressions: [string, RegExp][]): Uint32Array | null {
  if (expressions.length > 32) return null;
  const bits = new Uint32Array(65536);
  const units: number[] = [];
  for (let u = 0; u < 65536; u++) if (u < 0xd800 || u > 0xdfff) units.push(u);
  const all = String.fromCharCode(...units);
  for (const [index, [, expression]] of expressions.entries()) {
    // franc counts every match (`g`); an expression without it would count one at most.
    if (!expression.flags.includes('g')) return null;
    const alone = new RegExp(expression.source, expression.flags.replace('g', ''));
    for (let u = 0xd800; u <= 0xdfff; u++) if (alone.test(String.fromCharCode(u))) return null;
    for (const match of all.matchAll(new RegExp(expression.source, expression.flags))) {
      if (match[0].length !== 1) return null;
      const u = match[0].charCodeAt(0);
      bits[u] = (bits[u] as number) | (1 << index);
    }
  }
  return bits;
}

const SURROGATE = /[\uD800-\uDFFF]/;

/** How many of `value`'s characters each script expression matches (franc counts `value.match(expression)`). */
function scriptCounts(value: string, data: FrancData): number[] {
  const { expressions, scriptBits } = data;
  if (!scriptBits || SURROGATE.test(value)) return expressions.map(([, expression]) => value.match(expression)?.length ?? 0);
  const counts = new Array<number>(expressions.length).fill(0);
  for (let i = 0; i < value.length; i++) {
    let bits = scriptBits[value.charCodeAt(i)] as number;
    for (let index = 0; bits !== 0; index++, bits >>>= 1) if (bits & 1) (counts[index] as number)++;
  }
  return counts;
}

/** franc-min's `francAll(text, { minLength })`: languages (ISO 639-3) with scores, best first (1), or [['und', 1]]. */
export function rankLanguages(text: string, minLength: number): [string, number][] {
  if (!text || text.length < minLength) return [['und', 1]];
  const data = loadFranc();
  const { expressions, tables } = data;
  const value = text.slice(0, MAX_LENGTH);
  // The script with most characters (the first of equals).
  let topScript: string | undefined;
  let topCount = -1;
  const counts = scriptCounts(value, data);
  for (const [index, [script]] of expressions.entries()) {
    const count = (counts[index] as number) / value.length || 0;
    if (count > topCount) {
      topCount = count;
      topScript = script;
    }
  }
  const table = topScript === undefined ? undefined : tables.get(topScript);
  if (!table) return topScript === undefined || topCount === 0 ? [['und', 1]] : [[topScript, 1]];
  // The text's trigrams as franc cleans it: ASCII punctuation and digits to spaces, white space
  // collapsed, trimmed, lower-cased, padded with a space each side.
  const cleaned = ` ${value.replace(/[\u0021-\u0040]+/g, ' ').replace(/\s+/g, ' ').trim().toLowerCase()} `;
  const n = cleaned.length - 2;
  const keys = new Float64Array(Math.max(0, n));
  for (let i = 0; i < n; i++) keys[i] = trigramKey(cleaned, i);
  keys.sort();
  const { languages, rows, rowStart, postLanguage, postRank } = table;
  const distance = new Float64Array(languages.length);
  let unique = 0;
  for (let i = 0; i < n; ) {
    const key = keys[i] as number;
    let j = i + 1;
    while (j < n && keys[j] === key) j++;
    const count = j - i;
    unique++;
    const row = rows.get(key);
    if (row !== undefined) {
      // Every language starts at MAX_DIFFERENCE for this trigram; those that list it get |count − rank − 1| instead.
      for (let p = rowStart[row] as number, end = rowStart[row + 1] as number; p < end; p++) {
        const difference = count - (postRank[p] as number) - 1;
        (distance[postLanguage[p] as number] as number) += (difference < 0 ? -difference : difference) - MAX_DIFFERENCE;
      }
    }
    i = j;
  }
  const ranked = languages.map((language, li): [string, number] => [language, (distance[li] as number) + unique * MAX_DIFFERENCE]);
  ranked.sort((a, b) => a[1] - b[1]);
  const min = ranked[0]?.[1] ?? 0;
  const max = value.length * MAX_DIFFERENCE - min;
  for (const entry of ranked) entry[1] = 1 - (entry[1] - min) / max || 0;
  return ranked.length === 0 ? [['und', 1]] : ranked;
}

/** Languages with a script of their own: a real share of it in a document is enough to say it is there. */
const OWN_SCRIPT: Record<string, 'hangul' | 'kana' | 'han'> = { kor: 'hangul', jpn: 'kana', cmn: 'han' };
/** The share of a document's letters in an expected language's own script that counts as that language. */
export const ownScriptShare = 0.2;

/** Default: an expected language must score at least this, relative to franc's best guess (1). */
export const defaultMinLanguageScore = 0.8;
/** Shorter texts are too short to tell apart reliably, and are kept. */
export const languageMinChars = 20;

/**
 * Whether `text` is in one of `expected` (ISO 639-3): true when an expected language scores at least
 * `minScore` relative to the best, or the text is too short to tell.
 */
export function inExpectedLanguage(text: string, expected: readonly string[], minScore = defaultMinLanguageScore): boolean {
  if ([...text.trim()].length < languageMinChars) return true;
  // franc judges only the script with most letters: Korean telecom notes full of Latin terms would
  // look Latin to it. A language with its own script is accepted on a real share of that script.
  const shares = scriptShares(text);
  if (expected.some((lang) => OWN_SCRIPT[lang] && shares[OWN_SCRIPT[lang]] >= ownScriptShare)) return true;
  const ranked = rankLanguages(text, languageMinChars);
  if (ranked.length === 0 || ranked[0][0] === 'und') return true;
  return ranked.some(([lang, score]) => expected.includes(lang) && score >= minScore);
}

/** franc's best guess (ISO 639-3), or 'und'. */
export function likelyLanguage(text: string): string {
  return rankLanguages(text, languageMinChars)[0]?.[0] ?? 'und';
}
