import { defaultHeuristics, heuristicVerdict, scriptLanguage, segmentedWords, words, type HeuristicSettings } from '../ml/heuristics';
import { generateDemoCorpus, mulberry32 } from '../ml/demoCorpus';
import { inExpectedLanguage, languageCode, likelyLanguage } from '../ml/language';
import { IDENTIFIABLE } from '../schemas/languages';

/** Real-looking prose in each language: long enough, ordinary words, the language's function words. */
const en =
  'The network operations centre received the outage report this morning. Three base stations stopped serving and about two thousand subscribers were affected. ' +
  'Engineers replaced the power supply and restored service within the hour, and they are now collecting logs to find the cause. ' +
  'The fault appears to be related to equipment that was replaced last month, so the team will shorten the inspection cycle to keep it from happening again.';
const ko =
  '서울 본사의 네트워크 운영 센터는 오늘 오전 장애를 접수했습니다. 기지국 세 곳이 서비스를 중단했고 약 이천 명의 가입자가 영향을 받았습니다. ' +
  '엔지니어들은 전원 장치를 교체한 뒤 서비스를 복구했습니다. 그리고 원인을 분석하기 위해 로그를 수집하고 있습니다. ' +
  '이번 장애는 지난달 교체한 장비와 관련이 있는 것으로 보입니다. 운영팀은 재발 방지를 위해 점검 주기를 단축할 계획입니다. ' +
  '고객 센터는 보상 절차를 안내하고 있으며 추가 공지는 홈페이지를 통해 제공됩니다. 그 밖의 문의는 담당 부서로 연락하시기 바랍니다.';
const ja =
  '東京本社のネットワーク運用センターは、今朝の障害を受け付けました。三つの基地局がサービスを停止し、約二千人の加入者に影響がありました。' +
  '技術者は電源装置を交換した後、サービスを復旧しました。そして原因を分析するためにログを収集しています。' +
  '今回の障害は先月交換した機器と関係があると見られます。運用チームは再発防止のために点検の周期を短くする予定です。';

const on = (over: Partial<HeuristicSettings> = {}) => ({ ...defaultHeuristics, ...over });

describe('words and languages', () => {
  it('Intl.Segmenter counts words in scripts without spaces, so Japanese prose is many words, not one', () => {
    expect(scriptLanguage(en)).toBe('en');
    expect(scriptLanguage(ko)).toBe('ko');
    expect(scriptLanguage(ja)).toBe('ja');
    expect(scriptLanguage('这是一个测试文档，用于检查中文的分词。')).toBe('zh');
    expect(words(ja).length).toBeGreaterThan(60);
    expect(ja.split(/\s+/).length).toBe(1);
    expect(words(ko).length).toBeGreaterThan(50);
    expect(words('Hello, world... 42!')).toEqual(['Hello', 'world', '42']);
  });
});

describe('words without the segmenter', () => {
  it('are the words Intl.Segmenter finds, on the demo corpus and on random strings of letters, digits and the joining punctuation', () => {
    const corpus = generateDemoCorpus({ seed: 3, domainDocs: 200, generalDocs: 200, instructionPairs: 50 });
    const texts = [
      ...corpus.domain, ...corpus.general, ...corpus.instructions.map((p) => `${p.prompt}\n${p.response}`),
      "It's 3,000.50 km, e.g. U.S.A.; don't x:y a_b 10:30 v1.2.3 ops@example.com http://x.y/z?q=1 #tag … “quoted” 5G/LTE",
      '서울 본사의 네트워크 운영 센터는 오늘 오전 장애를 접수했습니다. 010-9876-5432, LTE기지국 3곳',
      "l'homme aujourd'hui São Paulo naïve café Ω-ж Ⅻ __init__ ＡＢＣ１２",
      'co\u00ADoperation, a\u200Db, a\u2060b, a\uFEFFb: format characters inside words',
    ];
    // Mostly what the splitter itself handles; a few characters send a string to the segmenter (², ½, ①, format characters).
    const alphabet = [...'aZé한국19 .,;:\'’-_/@#!?()"\n·😀ßx5%&+=…ㄱÀΩж‐–—ⅫＡ１\t\u00A0\u200B\u2027\uFE13\uFF0E\u2024aeiouk가나 ', '²', '½', '①', '\u00AD', '\u200D', '\u2060', '\uFEFF'];
    const next = mulberry32(17);
    for (let i = 0; i < 30_000; i++) texts.push(Array.from({ length: 1 + Math.floor(next() * 12) }, () => alphabet[Math.floor(next() * alphabet.length)]).join(''));
    for (const language of ['en', 'ko', 'other'] as const) {
      const differing = texts.filter((t) => words(t, language).join('\u0000') !== segmentedWords(t, language).join('\u0000'));
      expect(differing.slice(0, 5)).toEqual([]);
    }
  });
});

describe('Gopher heuristics with the literature defaults, in English, Korean and Japanese', () => {
  it.each([['en', en], ['ko', ko], ['ja', ja]])('keeps ordinary %s prose', (_, text) => {
    expect(heuristicVerdict(text, on())).toBeNull();
  });

  it.each([
    ['too few words (en)', 'Call the NOC now about the outage.', 'word_count'],
    ['too few words (ko)', '장애가 발생했습니다. 곧 복구됩니다.', 'word_count'],
    ['too few words (ja)', '障害が発生しました。', 'word_count'],
    ['words too long on average', `${'internationalisationalisation '.repeat(60)}the of`, 'mean_word_length'],
    ['hashtags', `${en} ${'#outage #network #5g #telecom '.repeat(5)}`, 'symbol_word_ratio'],
    ['mostly bullets', Array.from({ length: 12 }, (_, i) => `- item number ${i} of the list with the things to have`).join('\n'), 'bullet_lines'],
    ['lines trailing off', Array.from({ length: 10 }, (_, i) => `Line ${i} of the story and the rest is to be continued with more...`).join('\n'), 'ellipsis_lines'],
    ['mostly numbers', `${Array.from({ length: 60 }, (_, i) => `${i * 37} ${i}.5`).join(' ')} the of and`, 'alpha_words'],
    ['no English stop words', 'Kalomi tavosi perudagu holyze fibokalo mitane rusivo '.repeat(10), 'stop_words'],
    ['no Japanese function words', 'サーバー ネットワーク アラーム ログ エンジニア センター '.repeat(12), 'stop_words'],
    ['repeated lines', Array.from({ length: 10 }, () => 'The cell at the site is down and the team has to go to the site with tools.').join('\n'), 'duplicate_lines'],
    ['repeated paragraphs', [en, en, en].join('\n\n'), 'duplicate_paragraphs'],
    ['a duplicated passage', `${en} Later the engineers wrote that the network operations centre received the outage report this morning. Three base stations stopped serving.`, 'duplicate_ngram'],
    ['one phrase over and over', `${en} ${'the pump and the valve '.repeat(40)}`, 'top_ngram'],
  ])('removes %s', (_, text, reason) => {
    expect(heuristicVerdict(text, on())).toBe(reason);
  });

  it('the n-gram rules decide as a plain string-keyed count does (datatrove\'s way), on 2,000 repetitive random texts with random thresholds', () => {
    // Only the n-gram rules on: the verdict is theirs alone.
    const off: HeuristicSettings = Object.fromEntries(Object.keys(defaultHeuristics).map((k) => [k, null])) as unknown as HeuristicSettings;
    const next = mulberry32(404);
    const vocabulary = ['the', 'pump', 'valve', 'Valve', 'a', 'tower', 'signal', 'fibre', 'north', 'site', 'cell', 'down'];
    const top = (w: string[], n: number, length: number) => {
      const counts = new Map<string, number>();
      for (let i = 0; i + n <= w.length; i++) {
        const gram = w.slice(i, i + n).join('\u0000');
        counts.set(gram, (counts.get(gram) ?? 0) + 1);
      }
      let best: string | undefined;
      for (const [gram, count] of counts) if (best === undefined || count > (counts.get(best) as number)) best = gram;
      if (best === undefined || (counts.get(best) as number) <= 1) return 0;
      return ((counts.get(best) as number) * best.split('\u0000').join('').length) / length;
    };
    const duplicated = (w: string[], n: number, length: number) => {
      const seen = new Set<string>();
      const covered = new Uint8Array(w.length);
      for (let i = 0; i + n <= w.length; i++) {
        const gram = w.slice(i, i + n).join('\u0000');
        if (seen.has(gram)) covered.fill(1, i, i + n);
        else seen.add(gram);
      }
      return w.reduce((sum, x, i) => sum + (covered[i] ? x.length : 0), 0) / length;
    };
    const verdicts = new Map<string | null, number>();
    for (let c = 0; c < 2000; c++) {
      const vocab = vocabulary.slice(0, 2 + Math.floor(next() * vocabulary.length));
      const text = Array.from({ length: Math.floor(next() * 200) }, () => vocab[Math.floor(next() * vocab.length)]).join(next() < 0.5 ? ' ' : ', ');
      const t = () => Math.round(next() * 100) / 100;
      const settings: HeuristicSettings = { ...off, maxTopNgramCharFraction: [t(), t(), t()], maxDuplicateNgramCharFraction: [t(), t(), t(), t(), t(), t()] };
      const lowered = words(text).map((x) => x.toLowerCase());
      let expected: string | null = null;
      for (const [i, max] of (settings.maxTopNgramCharFraction ?? []).entries()) if (expected === null && top(lowered, i + 2, text.length) > max) expected = 'top_ngram';
      for (const [i, max] of (settings.maxDuplicateNgramCharFraction ?? []).entries()) if (expected === null && duplicated(lowered, i + 5, text.length) > max) expected = 'duplicate_ngram';
      expect([c, heuristicVerdict(text, settings)]).toEqual([c, expected]);
      verdicts.set(expected, (verdicts.get(expected) ?? 0) + 1);
    }
    // Each outcome occurs often, so the comparison covers all three.
    for (const v of [null, 'top_ngram', 'duplicate_ngram']) expect(verdicts.get(v) ?? 0).toBeGreaterThan(100);
  });

  it('rules take the run\'s values (word count, letters, per-language word length), and null turns a rule off', () => {
    const short = 'Call the NOC now and report the outage to the team.';
    expect(heuristicVerdict(short, on({ minWords: null }))).toBeNull();
    expect(heuristicVerdict(short, on({ minWords: 5 }))).toBeNull();
    const numbers = `${Array.from({ length: 60 }, (_, i) => `${i * 37} ${i}.5`).join(' ')} the of and`;
    expect(heuristicVerdict(numbers, on({ minAlphaWordRatio: null }))).toBeNull();
    expect(heuristicVerdict(numbers, on({ minAlphaWordRatio: 0.01 }))).toBeNull();
    // Korean keeps its own lower bound on word length unless the run sets one.
    expect(heuristicVerdict(ko, on({ minMeanWordLength: 4 }))).toBe('mean_word_length');
  });
});

describe('language identification (franc-min, offline)', () => {
  it("knows exactly franc-min's languages", async () => {
    const [{ data }, { expressions }] = await Promise.all([import('franc-min/data.js'), import('franc-min/expressions.js')]);
    const franc = new Set([...Object.values(data).flatMap((o) => Object.keys(o)), ...Object.keys(expressions).filter((s) => !(s in data))]);
    expect([...IDENTIFIABLE].sort()).toEqual([...franc].sort());
  });

  it('accepts Korean technical notes full of Latin terms for a Korean source (franc alone would call them Latin)', () => {
    const mixed = '5G NR gNB의 PCI 충돌로 handover failure가 발생했습니다. RSRP 측정값을 확인하고 neighbor list를 수정했습니다.';
    expect(inExpectedLanguage(mixed, ['kor'])).toBe(true);
    expect(inExpectedLanguage(mixed, ['jpn'])).toBe(false);
  });

  const de = 'Der Techniker muss den Druck im System prüfen, bevor er das Hauptventil öffnet und die Pumpe wieder einschaltet.';
  it('keeps documents in an expected language and removes others, in English, Korean and Japanese', () => {
    expect(inExpectedLanguage(en, ['eng'])).toBe(true);
    expect(inExpectedLanguage(ko, ['kor'])).toBe(true);
    expect(inExpectedLanguage(ja, ['jpn', 'eng'])).toBe(true);
    expect(inExpectedLanguage(de, ['eng'])).toBe(false);
    expect(inExpectedLanguage(ko, ['eng', 'jpn'])).toBe(false);
    expect(inExpectedLanguage(ja, ['kor'])).toBe(false);
    // Too short to tell: kept.
    expect(inExpectedLanguage('OK, done.', ['kor'])).toBe(true);
    expect(likelyLanguage(de)).toBe('deu');
  });

  it('takes ISO 639-1 or 639-3 codes', () => {
    expect(languageCode('en')).toBe('eng');
    expect(languageCode('KO')).toBe('kor');
    expect(languageCode('ja')).toBe('jpn');
    expect(languageCode('zh')).toBe('cmn');
    expect(languageCode('deu')).toBe('deu');
    expect(languageCode('xx')).toBeNull();
    expect(languageCode('zho')).toBe('cmn');
    expect(languageCode('heb')).toBeNull();
  });
});
