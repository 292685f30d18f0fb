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

type Franc = typeof import('franc-min');
let franc: Franc | undefined;
/**
 * franc-min is an ES module: Node ≥ 20.19 `require`s it. Loaded on first use, so runs whose sources
 * list no languages work on any Node ≥ 20.
 */
function francAll(text: string, o: { minLength: number }): [string, number][] {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy on purpose (see above)
  franc ??= require('franc-min') as Franc;
  return franc.francAll(text, o) as [string, number][];
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
  const ranked = francAll(text, { minLength: languageMinChars });
  if (ranked.length === 0 || ranked[0][0] === 'und') return true;
  return ranked.some(([lang, score]) => expected.includes(lang) && score >= minScore);
}

/** franc's best guess (ISO 639-3), or 'und'. */
export function likelyLanguage(text: string): string {
  return francAll(text, { minLength: languageMinChars })[0]?.[0] ?? 'und';
}
