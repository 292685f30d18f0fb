/** ISO 639-1 codes people write, to the ISO 639-3 codes language identification (franc) answers with. */
export const ISO_639_1: Record<string, string> = {
  en: 'eng', ko: 'kor', ja: 'jpn', zh: 'cmn', de: 'deu', fr: 'fra', es: 'spa', pt: 'por', it: 'ita', nl: 'nld',
  ru: 'rus', ar: 'arb', hi: 'hin', vi: 'vie', th: 'tha', id: 'ind', tr: 'tur', pl: 'pol', uk: 'ukr', sv: 'swe',
  cs: 'ces', ro: 'ron', hu: 'hun', el: 'ell', he: 'heb', fa: 'pes', ms: 'zlm', tl: 'tgl', ur: 'urd', bn: 'ben',
};

/** The ISO 639-3 code for `code` (two letters from the table above, or three letters as given), or null. */
export function languageCode(code: string): string | null {
  const lower = code.trim().toLowerCase();
  if (/^[a-z]{3}$/.test(lower)) return lower;
  return ISO_639_1[lower] ?? null;
}
