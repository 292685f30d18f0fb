/**
 * The languages dacp can identify: franc-min 6.2.0's ISO 639-3 codes (its trigram profiles, and the
 * languages it tells by script alone). test/heuristics.test.ts checks this list against franc-min.
 */
export const IDENTIFIABLE = new Set(
  ('amh arb azj bel ben bho bos bul ceb ces ckb cmn deu ell eng fra fuv guj hau hin hms hnj hrv hun ibo ilo ind ita jav jpn kan kaz kin koi kor lin mad mag ' +
    'mai mal mar mya nld npi nya pan pbu pes plt pol por qug ron run rus sin skr som spa srp sun swe swh tam tel tgl tha tur ukr urd uzn vie yor zlm zul zyb').split(' '),
);

/** ISO 639-1 codes, and ISO 639-3 macrolanguage codes, to the codes franc answers with. */
const ALIASES: Record<string, string> = {
  en: 'eng', ko: 'kor', ja: 'jpn', zh: 'cmn', de: 'deu', fr: 'fra', es: 'spa', pt: 'por', it: 'ita', nl: 'nld',
  ru: 'rus', ar: 'arb', hi: 'hin', vi: 'vie', th: 'tha', id: 'ind', tr: 'tur', pl: 'pol', uk: 'ukr', sv: 'swe',
  cs: 'ces', ro: 'ron', hu: 'hun', el: 'ell', fa: 'pes', ms: 'zlm', tl: 'tgl', ur: 'urd', bn: 'ben',
  zho: 'cmn', ara: 'arb', fas: 'pes', msa: 'zlm',
};

/** The code franc answers with for `code` (ISO 639-1, or ISO 639-3), or null when dacp cannot identify that language. */
export function languageCode(code: string): string | null {
  const lower = code.trim().toLowerCase();
  const resolved = ALIASES[lower] ?? lower;
  return IDENTIFIABLE.has(resolved) ? resolved : null;
}
