import { createHash } from 'node:crypto';
import path from 'node:path';
import { mulberry32 } from '../ml/demoCorpus';
import { minhashWasmBase64 } from '../ml/minhashWasm.bytes';
import { compileMinhashWat } from '../scripts/build-wasm';
import {
  cleanDocuments,
  defaultQualitySettings,
  exactDedup,
  lengthFilter,
  nearDedup,
  normalizeForDedup,
  redactPii,
  minhashSignature,
  removalReasons,
  repetitionFilter,
  repetitionRatio,
  MinhashIndex,
  minhashKernelReady,
  setMinhashKernel,
  symbolFilter,
  symbolRatio,
  type Candidate,
  type QualityReport,
  type QualitySettings,
} from '../ml/quality';

const settings: QualitySettings = { ...defaultQualitySettings };
const prose = (topic: string): string =>
  `The ${topic} team reviewed the handover parameters on the northern cluster and agreed to raise the time to trigger.`;
const candidates = (texts: string[]): Candidate<{ text: string }>[] => texts.map((text) => ({ doc: { text }, text }));
const removedSum = (report: QualityReport): number => Object.values(report.removed).reduce((a, b) => a + b, 0);

describe('repetitionRatio and MinHash signatures, computed in typed arrays', () => {
  const alphabet = ['pump', 'Pump', 'valve', 'the', 'a', '기지국', '점검', 'İ', 'ΣΑΣ', '😀', 'x', ' ', ' ', '  ', '\n', '\t', '\u00a0', '\u3000', '.', ','];
  const next = mulberry32(2024);
  const texts = Array.from({ length: 3000 }, () => {
    const vocabulary = alphabet.slice(0, 2 + Math.floor(next() * alphabet.length));
    return Array.from({ length: Math.floor(next() * 400) }, () => vocabulary[Math.floor(next() * vocabulary.length)]).join(next() < 0.7 ? ' ' : '');
  });

  it('repetitionRatio is the larger of the duplicate-line share and a plain string-keyed count of repeated word 5-grams', () => {
    const lineShare = (text: string) => {
      const lines = text.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
      const total = lines.reduce((n, l) => n + l.length, 0);
      const seen = new Set<string>();
      let duplicated = 0;
      for (const line of lines) if (seen.has(line)) duplicated += line.length;
      else seen.add(line);
      return total === 0 ? 0 : duplicated / total;
    };
    const ngramShare = (text: string) => {
      const words = text.toLowerCase().split(/\s+/u).filter((w) => w.length > 0);
      if (words.length < 50) return 0;
      const counts = new Map<string, number>();
      for (let i = 0; i + 5 <= words.length; i++) counts.set(words.slice(i, i + 5).join('\u0000'), (counts.get(words.slice(i, i + 5).join('\u0000')) ?? 0) + 1);
      const covered = new Uint8Array(words.length);
      for (let i = 0; i + 5 <= words.length; i++) if ((counts.get(words.slice(i, i + 5).join('\u0000')) as number) > 1) covered.fill(1, i, i + 5);
      return words.reduce((sum, w, i) => sum + (covered[i] ? w.length : 0), 0) / words.reduce((sum, w) => sum + w.length, 0);
    };
    let repetitive = 0;
    for (const text of texts) {
      const expected = Math.max(lineShare(text), ngramShare(text));
      expect([text, repetitionRatio(text)]).toEqual([text, expected]);
      if (expected > 0.3) repetitive++;
    }
    // Both verdicts occur often, so the comparison covers both.
    expect(repetitive).toBeGreaterThan(300);
    expect(texts.length - repetitive).toBeGreaterThan(300);
  });

  it('MinHash signatures are the defined ones: words by split(" "), FNV-1a each, chained 5-gram shingles, min of (a·x + b) mod 2^32', () => {
    const fmix32 = (x: number) => {
      let h = x;
      h ^= h >>> 16;
      h = Math.imul(h, 0x85ebca6b);
      h ^= h >>> 13;
      h = Math.imul(h, 0xc2b2ae35);
      h ^= h >>> 16;
      return h >>> 0;
    };
    const reference = (text: string, permutations: number) => {
      const words = normalizeForDedup(text).split(' ');
      const wordHash = words.map((w) => {
        let h = 0x811c9dc5;
        for (let i = 0; i < w.length; i++) h = Math.imul(h ^ w.charCodeAt(i), 0x01000193);
        return h >>> 0;
      });
      const span = Math.min(5, words.length);
      const shingles: number[] = [];
      for (let i = 0; i + span <= words.length; i++) {
        let h = 0x9747b28c;
        for (let k = i; k < i + span; k++) h = fmix32(Math.imul(h ^ (wordHash[k] as number), 0x01000193));
        shingles.push(h);
      }
      return Array.from({ length: permutations }, (_, p) => {
        const a = fmix32(p + 0x9e3779b9) | 1;
        const b = fmix32(p + 0x7f4a7c15);
        return Math.min(...shingles.map((x) => (Math.imul(x, a) + b) >>> 0));
      });
    };
    for (const text of texts.slice(0, 500)) {
      expect([text, [...minhashSignature(text)]]).toEqual([text, reference(text, 112)]);
      expect([text, [...minhashSignature(text, 30)]]).toEqual([text, reference(text, 30)]);
    }
    // Signatures kept from earlier updates are compared with new ones: these stay what they were.
    const kept = ['The pump and the valve were replaced at the north site after the alarm.', '서울 기지국에서 경보가 발생하여 현장 점검을 요청했습니다. 담당자가 출동했습니다.', 'a', '', 'ÉCOLE  straße\tİstanbul ΣΑΣ 😀 x y z w v u'];
    const hash = createHash('sha256');
    for (const text of kept) {
      hash.update(Buffer.from(minhashSignature(text).buffer));
      hash.update(Buffer.from(minhashSignature(text, 32 * 4).buffer));
    }
    expect(hash.digest('hex')).toBe('0fc8cad138552a57be58a9104d204cd9c981308f476c8c4f14057a04361dd6d1');
  });

  it('the WebAssembly kernel gives what the JavaScript loops give, for any number of permutations and for long texts', () => {
    expect(minhashKernelReady()).toBe(true);
    const long = Array.from({ length: 20_000 }, (_, i) => `w${i % 9973}`).join(' ');
    for (const permutations of [1, 5, 16, 17, 30, 112, 128, 1000, 1024]) {
      // The long text's shingles outgrow the kernel's first page of memory.
      for (const text of [...texts.slice(0, 100), 'one', '', ...(permutations === 112 ? [long] : [])]) {
        setMinhashKernel(false);
        const js = minhashSignature(text, permutations).join(',');
        setMinhashKernel(true);
        expect([permutations, text.slice(0, 40), minhashSignature(text, permutations).join(',')]).toEqual([permutations, text.slice(0, 40), js]);
      }
    }
  });

  it('the near-duplicate index files a signature under its own hashes, also when `add` follows `match` of a buffer filled again', () => {
    const index = new MinhashIndex({ bands: 2, rows: 2 });
    const buffer = Uint32Array.from([1, 2, 3, 4]);
    expect(index.match(buffer, 1)).toBeNull();
    buffer.set([5, 6, 7, 8]);
    index.add(buffer);
    expect(index.match(Uint32Array.from([5, 6, 7, 8]), 1)).toBe('own');
    expect(index.match(Uint32Array.from([1, 2, 3, 4]), 1)).toBeNull();
    expect(() => minhashSignature('too many', 1025)).toThrow(/1 to 1024 permutations/);
    expect(() => index.match(new Uint32Array(5), 1)).toThrow(/a signature of 5 hashes does not fit an index of 2 bands × 2 rows/);
  });

  it('the committed WebAssembly is ml/minhash.wat as wabt compiles it (npm run build:wasm)', async () => {
    const compiled = await compileMinhashWat(path.resolve(__dirname, '..'));
    expect(Buffer.from(minhashWasmBase64, 'base64').equals(Buffer.from(compiled))).toBe(true);
  });
});

describe('symbolRatio', () => {
  it('is the share of visible characters that are not letters, digits, marks or common punctuation, by its ASCII and Hangul shortcuts too', () => {
    const ordinary = /[\p{L}\p{N}\p{M}.,;:!?'"()\-/%&’‘“”—–…]/u;
    const reference = (text: string) => {
      const visible = [...text].filter((ch) => !/\s/u.test(ch));
      return visible.length === 0 ? 0 : visible.filter((ch) => !ordinary.test(ch)).length / visible.length;
    };
    const alphabet = [...'aZ09 \t\n.,;:!?#$%^&*()[]{}<>~`|\\/@한국어日本語é\u0301😀🚀€£¥§¶•…—–“”‘’\u00A0\u2003\u3000'];
    const next = mulberry32(12);
    for (let i = 0; i < 5_000; i++) {
      const text = Array.from({ length: Math.floor(next() * 40) }, () => alphabet[Math.floor(next() * alphabet.length)]).join('');
      expect([text, symbolRatio(text)]).toEqual([text, reference(text)]);
    }
  });
});

describe('normalizeForDedup', () => {
  it('case-folds, collapses whitespace and applies NFKC', () => {
    expect(normalizeForDedup('  Hello\t\n  WORLD  ')).toBe('hello world');
    expect(normalizeForDedup('ﬁve ５Ｇ')).toBe('five 5g');
  });
});

describe('quality steps', () => {
  it('exact de-duplication drops later copies that differ only in case and spacing', () => {
    const result = exactDedup(candidates([prose('radio'), prose('RADIO').replace(/ /g, '  '), prose('core')]));
    expect(result.kept.map((c) => c.text)).toEqual([prose('radio'), prose('core')]);
    expect(result.removed).toEqual({ duplicate: 1 });
  });

  it('length filter counts too short and too long documents separately', () => {
    const result = lengthFilter(candidates(['tiny', prose('radio'), 'x'.repeat(200)]), { minChars: 20, maxChars: 150 });
    expect(result.kept).toHaveLength(1);
    expect(result.removed).toEqual({ too_short: 1, too_long: 1 });
  });

  it('repetition filter drops documents made of repeated lines or phrases', () => {
    const repeatedLines = Array.from({ length: 10 }, () => 'BUY CHEAP CHARGERS NOW').join('\n');
    const repeatedPhrase = Array.from({ length: 20 }, () => 'click here for free minutes').join(' ');
    const varied = [
      'The night shift found a loose fibre connector at the northern site and replaced it before dawn.',
      'Throughput on band n78 recovered within an hour, and the alarm did not return.',
      'A follow-up audit of twelve similar cabinets is planned for next week by the transport team.',
      'Customers in the harbour district reported slower video during the outage window.',
      'The ticket stays open until the root cause report is signed off by the RAN lead.',
    ].join('\n');
    const result = repetitionFilter(candidates([repeatedLines, repeatedPhrase, varied]));
    expect(result.kept.map((c) => c.text)).toEqual([varied]);
    expect(result.removed).toEqual({ repetitive: 2 });
  });

  it('a short answer that echoes its question is not repetitive', () => {
    const pair = 'What does PRB stand for?\nPRB stands for Physical Resource Block.';
    expect(repetitionFilter(candidates([pair])).kept).toHaveLength(1);
  });

  it('symbol filter drops markup and line noise but keeps telecom prose with units', () => {
    const noise = '#### $$$ @@@ ^^^ {{{}}} <<<>>> ~~~ ||| ***';
    const kpi = 'RSRP -95 dBm, SINR 12 dB, BLER 8.5 %, PRB utilisation 74 % (cell 3/6).';
    const result = symbolFilter(candidates([noise, kpi]));
    expect(result.kept.map((c) => c.text)).toEqual([kpi]);
    expect(result.removed).toEqual({ symbols: 1 });
  });

  it('near-duplicate removal drops a copy with one word changed', () => {
    const base = Array.from({ length: 12 }, (_, i) => prose(`crew ${i}`)).join(' ');
    const oneWordChanged = base.replace('northern', 'southern');
    const different = Array.from({ length: 12 }, (_, i) => `Recipe step ${i}: fold the flour into the butter and rest the dough for an hour.`).join(' ');
    const result = nearDedup(candidates([base, oneWordChanged, different]), 0.8);
    expect(result.kept.map((c) => c.text)).toEqual([base, different]);
    expect(result.removed).toEqual({ near_duplicate: 1 });
  });
});

describe('redactPii', () => {
  it.each([
    ['mail jane.doe+ops@example.co.uk today', 'mail [EMAIL] today', 'email'],
    ['call +1 555 010 4477.', 'call [PHONE].', 'phone'],
    ['call (555) 010-4477 now', 'call [PHONE] now', 'phone'],
    ['ring 010-1234-5678 today', 'ring [PHONE] today', 'phone'],
    ['paid with 4111 1111 1111 1111 yesterday', 'paid with [CARD] yesterday', 'card'],
    ['card 4111-1111-1111-1111', 'card [CARD]', 'card'],
    ['host 192.168.10.1 is down', 'host [IP] is down', 'ip'],
    ['peer fe80::1ff:fe23:4567:890a replied', 'peer [IP] replied', 'ip'],
    ['full 2001:db8:85a3:0:0:8a2e:370:7334 address', 'full [IP] address', 'ip'],
    // Korean numbers: mobile, Seoul (one-digit area code), another region, international.
    ['휴대폰 010-9876-5432로 연락하세요', '휴대폰 [PHONE]로 연락하세요', 'phone'],
    ['본사 대표번호 02-123-4567입니다', '본사 대표번호 [PHONE]입니다', 'phone'],
    ['경기 지사 031-987-6543', '경기 지사 [PHONE]', 'phone'],
    ['해외에서는 +82 10-9876-5432', '해외에서는 [PHONE]', 'phone'],
    // Japanese numbers: mobile, Tokyo, toll-free, international with the one-digit area code.
    ['携帯 090-1234-5678 まで', '携帯 [PHONE] まで', 'phone'],
    ['東京本社 03-1234-5678', '東京本社 [PHONE]', 'phone'],
    ['フリーダイヤル 0120-123-456', 'フリーダイヤル [PHONE]', 'phone'],
    ['from abroad +81 3 1234 5678', 'from abroad [PHONE]', 'phone'],
    // National identifiers, check digits valid.
    ['주민등록번호 900101-1234568 확인', '주민등록번호 [NATIONAL_ID] 확인', 'national_id'],
    ['RRN 8512312012346 on file', 'RRN [NATIONAL_ID] on file', 'national_id'],
    ['マイナンバー 1234 5678 9018 を提出', 'マイナンバー [NATIONAL_ID] を提出', 'national_id'],
    ['個人番号は987654321093です', '個人番号は[NATIONAL_ID]です', 'national_id'],
    // A foreign resident's registration number (7th digit 5–8) has its own check rule.
    ['외국인등록번호 900101-5123452', '외국인등록번호 [NATIONAL_ID]', 'national_id'],
    ['call +1 (555) 010-4477 today', 'call [PHONE] today', 'phone'],
    ['Diners 3056 930902 5904 on file', 'Diners [CARD] on file', 'card'],
  ] as const)('redacts %j', (input, expected, kind) => {
    const result = redactPii(input);
    expect(result.text).toBe(expected);
    expect(result.counts[kind]).toBe(1);
    expect(Object.values(result.counts).reduce((a, b) => a + b, 0)).toBe(1);
  });

  it.each([
    'release 3.14.15 shipped in 2024',
    'see 3GPP TS 38.331 v17.3.0 section 5.3.5',
    'the site v1.2.3.4 build',
    'a Luhn-invalid 4111 1111 1111 1112 stays',
    'at 12:30:45 on 2024-05-01',
    'std::vector and a::b in C++',
    'between 1990 and 2000 2010 2020',
    'PCI 503 serves 1200 users in 3 cells',
    'IMSI 001010123456789 attached',
    // Check digits wrong, or no real date: not identifiers.
    '주문번호 900101-1234567 처리됨',
    '일련번호 901301-1234568',
    '注文番号 1234 5678 9012 発送済み',
    // Twelve digits whose check digit happens to fit, with nothing naming them an identifier.
    'order 1234-5678-9018 shipped',
    'count 1234 5678 9018 items',
    '注文番号 1234 5678 9018 発送済み',
    // Thirteen bare digits that would pass as a resident registration number: a timestamp, unnamed.
    'ts 8512312012346 ms',
    // Korean and Japanese dates and counts are not phone numbers.
    '2024년 5월 1일 10시 30분',
    '2024年5月1日に 1200 人が参加',
  ])('leaves %j alone', (input) => {
    const result = redactPii(input);
    expect(result.text).toBe(input);
    expect(result.counts).toEqual({ email: 0, phone: 0, card: 0, ip: 0, national_id: 0 });
  });
});

describe('cleanDocuments: the report behind the counts', () => {
  it('counts the bytes each reason removed, keeps a few redacted, shortened examples, and histograms of length and scores', () => {
    const spam = (i: number) => Array.from({ length: 12 }, () => `buy now call ops${i}@example.com`).join('\n');
    const docs = [
      { text: prose('radio') },
      { text: 'Core engineers moved the paging channel to a quieter carrier after the night shift logged dropped calls.' },
      { text: '짧음' },
      ...Array.from({ length: 5 }, (_, i) => ({ text: spam(i) })),
      { text: '%%%% #### $$$$ @@@@ ^^^^ &&&& ~~~~ ++++ 日本' },
    ];
    const { report, details } = cleanDocuments(docs, { ...settings, redactPii: false });
    expect(report.removed).toMatchObject({ too_short: 1, repetitive: 5, symbols: 1 });
    expect(report.removedBytes.too_short).toBe(Buffer.byteLength('짧음'));
    expect(report.removedBytes.repetitive).toBe([0, 1, 2, 3, 4].reduce((sum, i) => sum + Buffer.byteLength(spam(i)), 0));
    expect(report.removedBytes.symbols).toBe(Buffer.byteLength(docs.at(-1)!.text));
    expect(report.removedBytes.near_duplicate).toBe(0);
    // At most three examples a reason, one line, at most 200 characters, and never an address, even with redactPii off.
    expect(details.examples.repetitive).toHaveLength(3);
    for (const example of details.examples.repetitive) {
      expect(example).not.toMatch(/@example\.com|\n/);
      expect(example).toContain('[EMAIL]');
      expect([...example].length).toBeLessThanOrEqual(201);
    }
    expect(details.examples.too_short).toEqual(['짧음']);
    // Length over every input document; each filter's scores over the documents it judged.
    expect(details.histograms.length.counts.reduce((a, b) => a + b, 0)).toBe(docs.length);
    expect(details.histograms.length.edges).toHaveLength(details.histograms.length.counts.length + 1);
    expect(details.histograms.repetition!.counts.reduce((a, b) => a + b, 0)).toBe(docs.length - 1);
    expect(details.histograms.repetition!.counts.slice(-10).reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(5);
    expect(details.histograms.symbols!.counts.reduce((a, b) => a + b, 0)).toBe(docs.length - 1 - 5);
  });
});

describe('cleanDocuments', () => {
  it('reports every removal reason and the counts add up to the input', () => {
    const docs = [
      { text: prose('radio') },
      { text: prose('radio').toUpperCase() },
      { text: 'short' },
      { text: Array.from({ length: 10 }, () => 'same line again').join('\n') },
      { text: '%%%% #### $$$$ @@@@ ^^^^ &&&& ~~~~ ++++' },
      { text: `${prose('core')} Contact ops@example.com or +44 20 7946 0958.` },
    ];
    const { kept, report } = cleanDocuments(docs, settings);
    expect(Object.keys(report.removed).sort()).toEqual([...removalReasons].sort());
    expect(report.removed).toMatchObject({ duplicate: 1, too_short: 1, repetitive: 1, symbols: 1, near_duplicate: 0, too_long: 0 });
    expect(report.input).toBe(6);
    expect(report.kept).toBe(kept.length);
    expect(report.kept + removedSum(report)).toBe(report.input);
    expect(report.redactions).toEqual({ email: 1, phone: 1, card: 0, ip: 0, national_id: 0 });
    expect(kept[1].text).toBe(`${prose('core')} Contact [EMAIL] or [PHONE].`);
  });

  it('de-duplicates after redaction, and counts redactions only in kept documents', () => {
    const docs = [{ text: `${prose('radio')} Mail a@example.com.` }, { text: `${prose('radio')} Mail b@example.org.` }];
    const { kept, report } = cleanDocuments(docs, settings);
    expect(kept).toHaveLength(1);
    expect(report.removed.duplicate).toBe(1);
    expect(report.redactions.email).toBe(1);
  });

  it('leaves text untouched when redaction is off', () => {
    const doc = { text: `${prose('radio')} Mail a@example.com.` };
    const { kept, report } = cleanDocuments([doc], { ...settings, redactPii: false });
    expect(kept).toEqual([doc]);
    expect(report.redactions).toEqual({ email: 0, phone: 0, card: 0, ip: 0, national_id: 0 });
  });

  it('judges instruction pairs on prompt and response together and redacts both fields', () => {
    const pairs = [
      { prompt: 'Who handles NOC escalations?', response: 'Write to noc@example.com or call +1 555 010 4477.', id: 7 },
      { prompt: 'PRB?', response: 'Physical Resource Block.' },
      { prompt: 'Who handles NOC escalations?', response: 'Write to NOC@example.com or call +1 555 010 4477.' },
      { prompt: 'Hi', response: 'Yes' },
      { prompt: 'Send the log to 10.0.0.7', response: 'Upload it to 10.0.0.8 instead, over SFTP.' },
    ];
    const { kept, report } = cleanDocuments(pairs, settings);
    expect(kept).toEqual([
      { prompt: 'Who handles NOC escalations?', response: 'Write to [EMAIL] or call [PHONE].', id: 7 },
      { prompt: 'PRB?', response: 'Physical Resource Block.' },
      { prompt: 'Send the log to [IP]', response: 'Upload it to [IP] instead, over SFTP.' },
    ]);
    expect(report.removed).toMatchObject({ duplicate: 1, too_short: 1 });
    expect(report.redactions).toEqual({ email: 1, phone: 1, card: 0, ip: 2, national_id: 0 });
    expect(report.kept + removedSum(report)).toBe(report.input);
  });

  it('removes near-duplicates by default and keeps them when nearDuplicateThreshold is null', () => {
    // 120 distinct words, so no filter but near-duplicate removal has anything to say about them.
    const words = Array.from({ length: 120 }, (_, i) => `cell${i}band${(i * 37) % 101}`);
    const docs = [{ text: words.join(' ') }, { text: words.map((w, i) => (i === 60 ? 'replaced' : w)).join(' ') }];
    expect(cleanDocuments(docs, settings).report.removed.near_duplicate).toBe(1);
    const off = cleanDocuments(docs, { ...settings, nearDuplicateThreshold: null });
    expect(off.report.removed.near_duplicate).toBe(0);
    expect(off.kept).toEqual(docs);
  });

  it('does not mutate its input', () => {
    const docs = [{ text: `${prose('radio')} Mail a@example.com.` }];
    cleanDocuments(docs, settings);
    expect(docs[0].text).toContain('a@example.com');
  });
});

describe('cleanDocumentsPaced', () => {
  test('gives the same result as cleanDocuments, and lets timers run while it works', async () => {
    const { cleanDocuments, cleanDocumentsPaced } = await import('../ml/quality');
    const base = Array.from({ length: 600 }, (_, i) => ({
      text: `Cell site ${i} reported ${i % 7} alarms on band n78 during the night shift, and the field team checked the fibre ${i}.`,
    }));
    // A long report and a near copy of it (one word of sixty changed): the near-duplicate step removes the copy.
    const long = Array.from({ length: 60 }, (_, i) => `word${i}`).join(' ');
    const docs = [...base, { text: long }, { text: long.replace('word30', 'changed') }, { text: 'short' }];
    const settings = { minChars: 20, maxChars: 10_000, maxRepetitionRatio: 0.5, maxSymbolRatio: 0.3, redactPii: true, nearDuplicateThreshold: 0.8 };
    let ticks = 0;
    let turns = 0;
    const timer = setInterval(() => ticks++, 0);
    try {
      const paced = await cleanDocumentsPaced(docs, settings, { slice: 50, onProgress: () => turns++ });
      expect(paced).toEqual(cleanDocuments(docs, settings));
      expect(paced.report.removed.near_duplicate).toBeGreaterThan(0);
    } finally {
      clearInterval(timer);
    }
    expect(turns).toBeGreaterThanOrEqual(600 / 50);
    expect(ticks).toBeGreaterThan(0);
  });

  test('runs language identification and the heuristics in slices too, with the same result, examples and histograms', async () => {
    const { cleanDocuments, cleanDocumentsPaced } = await import('../ml/quality');
    const { defaultHeuristics } = await import('../ml/heuristics');
    const docs = Array.from({ length: 300 }, (_, i) => ({
      text:
        i % 10 === 0
          ? `Der Techniker ${i} muss den Druck im System prüfen, bevor er das Hauptventil öffnet und die Pumpe wieder einschaltet.`
          : `Cell site ${i} reported ${i % 7} alarms on band n78 during the night shift, and the field team checked the fibre at the site with the tools they have.`,
      languages: ['eng'],
    }));
    const settings = { minChars: 20, maxChars: 10_000, maxRepetitionRatio: 0.5, maxSymbolRatio: 0.3, redactPii: true, nearDuplicateThreshold: null, heuristics: { ...defaultHeuristics, minWords: 10 }, minLanguageScore: 0.8 };
    let turns = 0;
    const paced = await cleanDocumentsPaced(docs, settings, { slice: 25, onProgress: () => turns++ });
    expect(paced).toEqual(cleanDocuments(docs, settings));
    expect(paced.report.removed.language).toBe(30);
    expect(paced.details.histograms.repetition!.counts.reduce((a, b) => a + b, 0)).toBe(270);
    // Length and language over 300 documents (12 slices each), repetition, symbols, heuristics and PII
    // over the 270 left (11 each), and one turn for exact de-duplication: 69. One step unsliced would give 58 or 59.
    expect(turns).toBeGreaterThanOrEqual(69);
  });
});

describe('near-duplicate removal: recall and precision on a generated set with known near copies', () => {
  it('at the default threshold, finds nearly every light edit and removes no distinct document', () => {
    const random = mulberry32(21);
    const vocabulary = Array.from({ length: 5000 }, (_, i) => `w${i.toString(36)}`);
    const originals = Array.from({ length: 400 }, () => Array.from({ length: 150 }, () => vocabulary[Math.floor(random() * vocabulary.length)]));
    // Copies of the first 200 with 1 or 2 words replaced (Jaccard of the 5-gram sets ≥ 0.87, above the
    // default 0.8 by more than the MinHash estimate's noise): each should go.
    const copies = originals.slice(0, 200).map((words) => {
      const edited = [...words];
      const edits = 1 + Math.floor(random() * 2);
      for (let e = 0; e < edits; e++) edited[Math.floor(random() * edited.length)] = `edit${Math.floor(random() * 1e6)}`;
      return edited;
    });
    const docs = [...originals, ...copies].map((words, i) => ({ text: words.join(' '), id: i }));
    const { kept, report } = cleanDocuments(docs, { ...defaultQualitySettings, maxRepetitionRatio: 1, maxSymbolRatio: 1 });
    const keptIds = new Set(kept.map((d) => d.id));
    const removedCopies = copies.filter((_, i) => !keptIds.has(400 + i)).length;
    const removedOriginals = originals.filter((_, i) => !keptIds.has(i)).length;
    const recall = removedCopies / copies.length;
    const precision = removedCopies / (removedCopies + removedOriginals);
    console.log(`near-duplicate removal: recall ${recall.toFixed(3)}, precision ${precision.toFixed(3)} (${removedCopies} of 200 copies, ${removedOriginals} of 400 originals)`);
    expect(report.removed.near_duplicate).toBe(removedCopies + removedOriginals);
    expect(recall).toBeGreaterThanOrEqual(0.95);
    expect(precision).toBe(1);
  });
});
