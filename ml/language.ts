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
  /** Open addressing from a trigram's key to its row in the postings: `slotKeys` (NaN where empty) and `slotRows`. */
  slotKeys: Float64Array;
  slotRows: Int32Array;
  /**
   * The rows of the trigrams made of a space and the letters a–z only (most of a Latin-script
   * text's), by asciiIndex: looked up directly, without hashing. −1 where the profiles lack one.
   */
  asciiRows: Int32Array;
  /** Row r's postings are rowStart[r] … rowStart[r + 1] − 1: a language's index × 65536 + the trigram's rank in it. */
  rowStart: Int32Array;
  postings: Int32Array;
  /** Scratch for one text's distances to each language (whole numbers). */
  distance: Int32Array;
}

/** A space and a–z as 0 and 1–26; −1 for every other unit. */
const ASCII_CODE = Int8Array.from({ length: 65536 }, (_, unit) => (unit === 32 ? 0 : unit >= 0x61 && unit <= 0x7a ? unit - 0x60 : -1));
const ASCII_TRIGRAMS = 27 * 27 * 27;

interface FrancData {
  expressions: [string, RegExp][];
  tables: Map<string, ScriptTable>;
  /**
   * For each UTF-16 unit outside the surrogates, a bit per expression that matches it alone; null
   * where an expression could match something else (then the expressions themselves count).
   */
  scriptBits: Uint32Array | null;
  /** From scriptBits, per unit: the one expression matching it, NO_SCRIPT, SEVERAL_SCRIPTS, or A_SURROGATE. */
  scriptOfUnit: Int8Array | null;
  /**
   * For each UTF-16 unit, 1 where franc's cleaning turns it into a space (ASCII punctuation and
   * digits, U+0021–U+0040, and white space), when lower-casing first is known to change nothing
   * (see cleanTrigrams); null otherwise.
   */
  toSpace: Uint8Array | null;
}
let francData: FrancData | undefined;

const trigramKey = (s: string, i: number): number => s.charCodeAt(i) * 4294967296 + s.charCodeAt(i + 1) * 65536 + s.charCodeAt(i + 2);

/** A 32-bit hash of a trigram's three units, for the open-addressing tables. */
function trigramHash(a: number, b: number, c: number): number {
  let h = Math.imul(a, 0x9e3779b1) ^ Math.imul(b, 0x85ebca6b) ^ Math.imul(c, 0xc2b2ae35);
  h ^= h >>> 15;
  return Math.imul(h, 0x2c1b3c6d) >>> 0;
}

function hashOfKey(key: number): number {
  return trigramHash(Math.floor(key / 4294967296), Math.floor(key / 65536) % 65536, key % 65536);
}

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
    let slots = 64;
    while (slots < ranks.size * 2) slots *= 2;
    const slotKeys = new Float64Array(slots).fill(Number.NaN);
    const slotRows = new Int32Array(slots).fill(-1);
    const rowStart = new Int32Array(ranks.size + 1);
    const total = [...ranks.values()].reduce((n, m) => n + m.size, 0);
    const postings = new Int32Array(total);
    const asciiRows = new Int32Array(ASCII_TRIGRAMS).fill(-1);
    let r = 0;
    let at = 0;
    for (const [key, byLanguage] of ranks) {
      let slot = hashOfKey(key) & (slots - 1);
      while (slotRows[slot] !== -1) slot = (slot + 1) & (slots - 1);
      slotKeys[slot] = key;
      slotRows[slot] = r;
      const [a, b, c] = [Math.floor(key / 4294967296), Math.floor(key / 65536) % 65536, key % 65536].map((unit) => ASCII_CODE[unit] as number) as [number, number, number];
      if (a >= 0 && b >= 0 && c >= 0) asciiRows[(a * 27 + b) * 27 + c] = r;
      rowStart[r] = at;
      for (const [li, rank] of byLanguage) {
        if (li > 0xffff || rank < 0 || rank > 0xffff) throw new Error(`franc-min's ${script} profiles: ${languages.length} languages, rank ${rank}: more than the postings hold`);
        postings[at] = li * 65536 + rank;
        at++;
      }
      r++;
    }
    rowStart[r] = at;
    tables.set(script, { languages, slotKeys, slotRows, asciiRows, rowStart, postings, distance: new Int32Array(languages.length) });
  }
  const entries = Object.entries(expressions);
  const scriptBits = scriptBitsOf(entries);
  francData = { expressions: entries, tables, scriptBits, scriptOfUnit: scriptBits && scriptOfUnits(scriptBits), toSpace: toSpaceTable() };
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

/** What franc's cleaning turns into a space, one unit at a time: ASCII punctuation and digits, and white space. */
const CLEANED_AWAY = /[\u0021-\u0040]|\s/;

/**
 * The units franc's cleaning turns into spaces, as a table, provided lower-casing each unit alone
 * never turns one of them into another unit or another unit into one of them: then lower-casing
 * the whole text first (one native call) and cleaning after gives franc's cleaned text, except
 * around a capital sigma, whose lower case depends on its neighbours (cleanTrigrams leaves such
 * text to franc's own order). Checked here on every unit; where it does not hold, null.
 */
function toSpaceTable(): Uint8Array | null {
  const table = new Uint8Array(65536);
  for (let u = 0; u < 65536; u++) {
    const ch = String.fromCharCode(u);
    const away = CLEANED_AWAY.test(ch);
    const lower = ch.toLowerCase();
    if (away && lower !== ch) return null;
    if (!away) for (let i = 0; i < lower.length; i++) if (CLEANED_AWAY.test(lower.charAt(i))) return null;
    table[u] = away ? 1 : 0;
  }
  return table;
}

const NO_SCRIPT = -1;
const SEVERAL_SCRIPTS = -2;
const A_SURROGATE = -3;

function scriptOfUnits(bits: Uint32Array): Int8Array {
  return Int8Array.from({ length: 65536 }, (_, unit) => {
    if (unit >= 0xd800 && unit <= 0xdfff) return A_SURROGATE;
    const b = bits[unit] as number;
    if (b === 0) return NO_SCRIPT;
    // One bit set: its number.
    return (b & (b - 1)) === 0 ? 31 - Math.clz32(b) : SEVERAL_SCRIPTS;
  });
}

/** How many of `value`'s characters each script expression matches (franc counts `value.match(expression)`). */
function scriptCounts(value: string, data: FrancData): number[] {
  const { expressions, scriptBits, scriptOfUnit } = data;
  if (!scriptBits || !scriptOfUnit) return expressions.map(([, expression]) => value.match(expression)?.length ?? 0);
  const counts = new Array<number>(expressions.length).fill(0);
  for (let i = 0; i < value.length; i++) {
    const unit = value.charCodeAt(i);
    const index = scriptOfUnit[unit] as number;
    if (index >= 0) (counts[index] as number)++;
    else if (index === SEVERAL_SCRIPTS) {
      let bits = scriptBits[unit] as number;
      for (let bit = 0; bits !== 0; bit++, bits >>>= 1) if (bits & 1) (counts[bit] as number)++;
    } else if (index === A_SURROGATE) return expressions.map(([, expression]) => value.match(expression)?.length ?? 0);
  }
  return counts;
}

/** Scratch for one text's cleaned units and its trigram counts (open addressing, emptied by generation). */
let cleanedUnits = new Uint16Array(MAX_LENGTH * 3 + 2);
const COUNT_SLOTS = 1 << 14;
const countKeys = new Float64Array(COUNT_SLOTS);
const countHashes = new Uint32Array(COUNT_SLOTS);
const countValues = new Int32Array(COUNT_SLOTS);
const countStamps = new Uint32Array(COUNT_SLOTS);
const countOrder = new Int32Array(COUNT_SLOTS);
/** The same for the trigrams of a space and a–z, indexed directly (asciiIndex). */
const asciiStamps = new Uint32Array(ASCII_TRIGRAMS);
const asciiCounts = new Int32Array(ASCII_TRIGRAMS);
const asciiOrder = new Int32Array(COUNT_SLOTS);
let countGeneration = 0;

/**
 * franc's cleaned text into `cleanedUnits`: ASCII punctuation and digits to spaces, white space
 * collapsed, trimmed, lower-cased, padded with a space each side. Returns its length.
 */
function cleanTrigrams(value: string, toSpace: Uint8Array | null): number {
  if (toSpace === null || value.includes('\u03A3')) {
    const cleaned = ` ${value.replace(/[\u0021-\u0040]+/g, ' ').replace(/\s+/g, ' ').trim().toLowerCase()} `;
    if (cleaned.length > cleanedUnits.length) cleanedUnits = new Uint16Array(cleaned.length);
    for (let i = 0; i < cleaned.length; i++) cleanedUnits[i] = cleaned.charCodeAt(i);
    return cleaned.length;
  }
  const lower = value.toLowerCase();
  if (lower.length + 2 > cleanedUnits.length) cleanedUnits = new Uint16Array(lower.length + 2);
  const out = cleanedUnits;
  let n = 0;
  out[n++] = 32;
  let space = false;
  for (let i = 0; i < lower.length; i++) {
    const unit = lower.charCodeAt(i);
    if (toSpace[unit] === 1) {
      space = n > 1;
      continue;
    }
    if (space) {
      out[n++] = 32;
      space = false;
    }
    out[n++] = unit;
  }
  out[n++] = 32;
  return n;
}

/**
 * franc's ranking before it is sorted and scaled: `[code, 1]` where franc answers without trigrams
 * (an undetermined text, or a script with one language), otherwise each language's trigram
 * distance (in `table.distance`) and what scales it.
 */
type Ranking = { only: string } | { table: ScriptTable; min: number; max: number };

function rank(text: string, minLength: number): Ranking {
  if (!text || text.length < minLength) return { only: 'und' };
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
  if (!table) return { only: topScript === undefined || topCount === 0 ? 'und' : topScript };
  // Each distinct trigram of the cleaned text, counted.
  const length = cleanTrigrams(value, data.toSpace);
  const units = cleanedUnits;
  countGeneration = (countGeneration + 1) >>> 0;
  if (countGeneration === 0) {
    countStamps.fill(0);
    asciiStamps.fill(0);
    countGeneration = 1;
  }
  let unique = 0;
  let asciiUnique = 0;
  for (let i = 0; i + 2 < length; i++) {
    const a = units[i] as number;
    const b = units[i + 1] as number;
    const c = units[i + 2] as number;
    const ca = ASCII_CODE[a] as number;
    const cb = ASCII_CODE[b] as number;
    const cc = ASCII_CODE[c] as number;
    if ((ca | cb | cc) >= 0) {
      const index = (ca * 27 + cb) * 27 + cc;
      if (asciiStamps[index] !== countGeneration) {
        asciiStamps[index] = countGeneration;
        asciiCounts[index] = 1;
        asciiOrder[asciiUnique++] = index;
      } else (asciiCounts[index] as number)++;
      continue;
    }
    const key = a * 4294967296 + b * 65536 + c;
    const hash = trigramHash(a, b, c);
    let slot = hash & (COUNT_SLOTS - 1);
    for (;;) {
      if (countStamps[slot] !== countGeneration) {
        countStamps[slot] = countGeneration;
        countKeys[slot] = key;
        countHashes[slot] = hash;
        countValues[slot] = 1;
        countOrder[unique++] = slot;
        break;
      }
      if (countKeys[slot] === key) {
        (countValues[slot] as number)++;
        break;
      }
      slot = (slot + 1) & (COUNT_SLOTS - 1);
    }
  }
  const { slotKeys, slotRows, asciiRows, rowStart, postings, distance } = table;
  const mask = slotKeys.length - 1;
  distance.fill(0);
  // Every language starts at MAX_DIFFERENCE for each trigram; those that list it get |count − rank − 1| instead.
  const post = (row: number, count: number): void => {
    for (let p = rowStart[row] as number, end = rowStart[row + 1] as number; p < end; p++) {
      const entry = postings[p] as number;
      const difference = count - (entry & 0xffff) - 1;
      (distance[entry >>> 16] as number) += (difference < 0 ? -difference : difference) - MAX_DIFFERENCE;
    }
  };
  for (let u = 0; u < asciiUnique; u++) {
    const index = asciiOrder[u] as number;
    const row = asciiRows[index] as number;
    if (row !== -1) post(row, asciiCounts[index] as number);
  }
  for (let u = 0; u < unique; u++) {
    const at = countOrder[u] as number;
    const key = countKeys[at] as number;
    let slot = (countHashes[at] as number) & mask;
    while (slotRows[slot] !== -1 && slotKeys[slot] !== key) slot = (slot + 1) & mask;
    const row = slotRows[slot] as number;
    if (row !== -1) post(row, countValues[at] as number);
  }
  unique += asciiUnique;
  let min = Infinity;
  for (let li = 0; li < distance.length; li++) {
    distance[li] = (distance[li] as number) + unique * MAX_DIFFERENCE;
    if ((distance[li] as number) < min) min = distance[li] as number;
  }
  if (distance.length === 0) min = 0;
  return { table, min, max: value.length * MAX_DIFFERENCE - min };
}

/** franc's relative score of a language at `distance`. */
const scoreOf = (distance: number, min: number, max: number): number => 1 - (distance - min) / max || 0;

/** franc-min's `francAll(text, { minLength })`: languages (ISO 639-3) with scores, best first (1), or [['und', 1]]. */
export function rankLanguages(text: string, minLength: number): [string, number][] {
  const ranking = rank(text, minLength);
  if ('only' in ranking) return [[ranking.only, 1]];
  const { table, min, max } = ranking;
  if (table.languages.length === 0) return [['und', 1]];
  const ranked = table.languages.map((language, li): [string, number] => [language, table.distance[li] as number]);
  ranked.sort((a, b) => a[1] - b[1]);
  for (const entry of ranked) entry[1] = scoreOf(entry[1], min, max);
  return ranked;
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
  if (shorterThan(text.trim(), languageMinChars)) return true;
  // franc judges only the script with most letters: Korean telecom notes full of Latin terms would
  // look Latin to it. A language with its own script is accepted on a real share of that script.
  const shares = scriptShares(text);
  if (expected.some((lang) => OWN_SCRIPT[lang] && shares[OWN_SCRIPT[lang]] >= ownScriptShare)) return true;
  // rankLanguages' scores, for the expected languages only (no list to build and sort).
  const ranking = rank(text, languageMinChars);
  if ('only' in ranking) return ranking.only === 'und' || (expected.includes(ranking.only) && 1 >= minScore);
  const { table, min, max } = ranking;
  if (table.languages.length === 0) return true;
  return table.languages.some((language, li) => expected.includes(language) && scoreOf(table.distance[li] as number, min, max) >= minScore);
}

/** Whether `text` has fewer than `n` code points (counting no further than n). */
function shorterThan(text: string, n: number): boolean {
  if (text.length < n) return true;
  if (text.length >= 2 * n) return false;
  let points = 0;
  for (let i = 0; i < text.length && points < n; i++, points++) {
    const unit = text.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) i++;
    }
  }
  return points < n;
}

/** franc's best guess (ISO 639-3), or 'und'. */
export function likelyLanguage(text: string): string {
  return rankLanguages(text, languageMinChars)[0]?.[0] ?? 'und';
}
