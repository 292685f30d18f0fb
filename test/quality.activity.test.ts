import { generateDemoCorpus, mulberry32 } from '../ml/demoCorpus';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { ArtifactStore } from '../activities/artifacts';
import { readDataset, writeDataset, type TextDoc } from '../activities/datasets';
import { qualityActivities } from '../activities/quality';
import { migrate } from '../db/migrate';
import { insertRun } from '../db/records';
import { defaultHeuristics } from '../ml/heuristics';
import { defaultMinhash, defaultNearDuplicateThreshold, minNearDuplicateThreshold } from '../ml/quality';
import { qualityPartCount } from '../schemas/pipeline';
import { parseRunSpec, RunSpec, type RunSpecInput } from '../schemas/runSpec';
import { tinySpec } from './helpers/fixtures';
import { createTestDatabase, type TestDatabase } from './helpers/db';

/**
 * The quality activity as the workflow calls it: raw manifests in a real artifact store, records in a
 * real Postgres, the spec's quality settings, and the summary the workflow keeps at metrics.quality.
 */

let db: TestDatabase;
let dir: string;
let store: ArtifactStore;
let runs = 0;

beforeAll(async () => {
  db = await createTestDatabase();
  await migrate(db.pool);
});

afterAll(async () => {
  await db?.drop();
});

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dacp-quality-'));
  store = new ArtifactStore(path.join(dir, 'artifacts'));
});

afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

/** Deterministic pseudo-random numbers, so the corpus is the same on every run. */
const random = mulberry32;

const syllables = ['ka', 'lo', 'mi', 'ne', 'ru', 'ta', 'vo', 'si', 'pe', 'da', 'gu', 'ho', 'ze', 'fi', 'bo', 'ly'];
const vocabulary = Array.from({ length: 400 }, (_, i) => `${syllables[i % 16]}${syllables[(i >> 4) % 16]}${syllables[(i * 7) % 16]}`);

/** 120 random words: long enough that one changed word leaves ~0.92 of the word 5-grams shared. */
function documentWords(next: () => number): string[] {
  return Array.from({ length: 120 }, () => vocabulary[Math.floor(next() * vocabulary.length)]);
}

/** The same document with the word at `position` replaced: a near copy, not an exact one. */
function withOneWordChanged(words: string[], position: number, replacement: string): string {
  return words.map((w, i) => (i === position ? replacement : w)).join(' ');
}

async function runQuality(quality: RunSpecInput['quality'], docs: TextDoc[], heldoutFraction = 0.1) {
  const runId = `quality-activity-${++runs}`;
  const spec = parseRunSpec(tinySpec({ quality: { minDocs: 1, ...quality }, heldoutFraction }));
  await insertRun(db.pool, { runId, workflowId: runId, spec, specSha256: 'test', initiator: 'engineer' });
  const raw = await writeDataset(store, 'domain', 'train', docs);
  const { qualityFilter } = qualityActivities({ pool: db.pool, store });
  type Input = Parameters<typeof qualityFilter>[0];
  type Output = Awaited<ReturnType<typeof qualityFilter>>;
  const result = await new MockActivityEnvironment().run<[Input], Output, typeof qualityFilter>(qualityFilter, { runId, spec, raw: [raw] });
  const part = async (split: 'train' | 'heldout'): Promise<string[]> => {
    const ref = result.datasets.find((d) => d.role === 'domain' && d.split === split);
    if (!ref) throw new Error(`no domain ${split} dataset in the result`);
    return (await readDataset<TextDoc>(store, ref)).map((d) => d.text);
  };
  return { runId, result, train: await part('train'), heldout: await part('heldout') };
}

describe('near-duplicate removal against earlier updates (quality.dedupAgainst)', () => {
  const next = random(21);
  const originals = Array.from({ length: 12 }, () => documentWords(next));
  const fresh = Array.from({ length: 6 }, () => documentWords(next).join(' '));
  const nearCopies = originals.slice(0, 4).map((words, i) => withOneWordChanged(words, 70, `later${i}`));

  it('removes what a completed run trained on (as earlier_update), from signatures kept by dataset hash, or rebuilt where none were kept', async () => {
    const earlier = await runQuality({}, originals.map((w) => ({ text: w.join(' ') })));
    // Its signatures were kept, by the hash of each domain dataset it wrote.
    const kept = await db.pool.query('SELECT dataset_sha256, bands, rows_per_band, docs FROM minhash_signatures WHERE dataset_sha256 = ANY($1)', [earlier.result.datasets.filter((d) => d.role === 'domain').map((d) => d.sha256)]);
    expect(kept.rows.map((r) => [r.bands, r.rows_per_band]).sort()).toEqual([[14, 8], [14, 8]]);
    expect(kept.rows.reduce((n, r) => n + r.docs, 0)).toBe(12);
    const docs = [...fresh, ...nearCopies].map((text) => ({ text }));

    // A manual run looks back only when its spec asks, and only at runs that completed.
    await expect(runQuality({ dedupAgainst: { runs: [earlier.runId] } }, docs)).rejects.toThrow(/quality\.dedupAgainst\.runs: quality-activity-\d+ \(running\) did not complete/);
    await db.pool.query(`UPDATE runs SET state = 'completed' WHERE run_id = $1`, [earlier.runId]);
    const manual = await runQuality({}, docs);
    expect(manual.result.summary.earlier).toBeUndefined();
    expect(manual.result.summary.perRole.domain.removed.earlier_update).toBe(0);

    // The run itself, listed by mistake, is no earlier update (and not refused as unfinished).
    const later = await runQuality({ dedupAgainst: { runs: [earlier.runId, `quality-activity-${runs + 1}`] } }, docs);
    expect(later.result.summary.earlier).toEqual({ runs: 1, documents: 12 });
    expect(later.result.summary.perRole.domain.removed.earlier_update).toBe(4);
    expect([...later.train, ...later.heldout].sort()).toEqual([...fresh].sort());
    const report = await store.getJson<{ earlier: { runIds: string[] } }>(later.result.summary.report);
    expect(report.earlier.runIds).toEqual([earlier.runId]);

    // Signatures lost (or a run from before they were kept): rebuilt from the dataset, and kept again.
    await db.pool.query('DELETE FROM minhash_signatures WHERE dataset_sha256 = ANY($1)', [kept.rows.map((r) => r.dataset_sha256)]);
    const rebuilt = await runQuality({ dedupAgainst: { runs: [earlier.runId] } }, docs);
    expect(rebuilt.result.summary.perRole.domain.removed.earlier_update).toBe(4);
    expect((await db.pool.query('SELECT count(*)::int AS n FROM minhash_signatures WHERE dataset_sha256 = ANY($1)', [kept.rows.map((r) => r.dataset_sha256)])).rows[0].n).toBe(2);

    // false: none, even when asked elsewhere.
    const off = await runQuality({ dedupAgainst: false }, docs);
    expect(off.result.summary.perRole.domain.removed.earlier_update).toBe(0);
  });

  it('a run from before quality.minhash keeps its 32 × 4 index, looks at no earlier update and keeps no signatures', async () => {
    const runId = `quality-activity-${++runs}`;
    // A spec as such a run carries it: parsed before the field existed.
    const parsed = parseRunSpec(tinySpec({ quality: { minDocs: 1, dedupAgainst: { schedule: 'weekly' } } }));
    const spec = { ...parsed, quality: { ...parsed.quality, nearDuplicateThreshold: 0.8 } } as typeof parsed;
    delete (spec.quality as { minhash?: unknown }).minhash;
    await insertRun(db.pool, { runId, workflowId: runId, spec, specSha256: 'test', initiator: 'engineer' });
    const own = Array.from({ length: 8 }, () => documentWords(next));
    const raw = await writeDataset(store, 'domain', 'train', [...own.map((w) => ({ text: w.join(' ') })), ...own.slice(0, 4).map((words, i) => ({ text: withOneWordChanged(words, 50, `old${i}`) }))]);
    const { qualityFilter } = qualityActivities({ pool: db.pool, store });
    type Input = Parameters<typeof qualityFilter>[0];
    type Output = Awaited<ReturnType<typeof qualityFilter>>;
    const result = await new MockActivityEnvironment().run<[Input], Output, typeof qualityFilter>(qualityFilter, { runId, spec, raw: [raw] });
    expect(result.summary.earlier).toBeUndefined();
    expect(result.summary.perRole.domain.removed).toMatchObject({ near_duplicate: 4, earlier_update: 0 });
    const kept = await db.pool.query('SELECT count(*)::int AS n FROM minhash_signatures WHERE dataset_sha256 = ANY($1)', [result.datasets.map((d) => d.sha256)]);
    expect(kept.rows[0].n).toBe(0);
  });
});

describe('the held-out split in the quality activity', () => {
  it('moves the last training document over when the hash split leaves held-out empty, as documents stream past', async () => {
    const next = random(5);
    const docs = Array.from({ length: 6 }, () => ({ text: documentWords(next).join(' ') }));
    const { result, train, heldout } = await runQuality({}, docs, 0.01);
    // At 1 %, six documents almost surely all hash to train (checked: none of these does).
    expect(result.summary.perRole.domain).toMatchObject({ kept: 6, train: 5, heldout: 1 });
    expect(heldout).toEqual([docs[5]?.text]);
    expect(train).toEqual(docs.slice(0, 5).map((d) => d.text));
  });
});

describe('near-duplicate removal in the quality activity', () => {
  const next = random(7);
  const originals = Array.from({ length: 12 }, () => documentWords(next));
  const nearCopies = originals.slice(0, 3).map((words, i) => withOneWordChanged(words, 60, `changed${i}`));
  const corpus: TextDoc[] = [...originals.map((w) => ({ text: w.join(' ') })), ...nearCopies.map((text) => ({ text }))];

  it('removes copies with one word changed and counts them at perRole.<role>.removed.near_duplicate', async () => {
    const { result, train, heldout } = await runQuality({}, corpus);
    const domain = result.summary.perRole.domain;
    expect(domain.removed.near_duplicate).toBe(3);
    expect(domain.removed.duplicate).toBe(0);
    expect(domain.kept).toBe(12);
    expect(domain.train + domain.heldout).toBe(12);
    const written = [...train, ...heldout];
    expect(written.sort()).toEqual(originals.map((w) => w.join(' ')).sort());
    for (const copy of nearCopies) expect(written).not.toContain(copy);
    // The stored report says the same as the summary the workflow keeps at metrics.quality.
    const report = await store.getJson<{ perRole: { domain: { removed: Record<string, number> } } }>(result.summary.report);
    expect(report.perRole.domain.removed.near_duplicate).toBe(3);
  });

  it('keeps near copies when quality.nearDuplicateThreshold is null', async () => {
    const { result, train, heldout } = await runQuality({ nearDuplicateThreshold: null }, corpus);
    expect(result.summary.perRole.domain.removed.near_duplicate).toBe(0);
    expect(result.summary.perRole.domain.kept).toBe(15);
    expect([...train, ...heldout]).toEqual(expect.arrayContaining(nearCopies));
  });

  it('no group of near copies straddles train and held-out', async () => {
    const groups = 40;
    const groupOf = new Map<string, number>();
    const docs: TextDoc[] = [];
    const rng = random(99);
    for (let g = 0; g < groups; g++) {
      const words = documentWords(rng);
      // Three members a group: the original and two copies, each with a different word changed.
      for (const text of [words.join(' '), withOneWordChanged(words, 20, `edit${g}a`), withOneWordChanged(words, 90, `edit${g}b`)]) {
        groupOf.set(text, g);
        docs.push({ text });
      }
    }
    const sidesOf = (train: string[], heldout: string[]): Map<number, Set<string>> => {
      const sides = new Map<number, Set<string>>();
      for (const [side, texts] of [['train', train], ['heldout', heldout]] as const) {
        for (const text of texts) {
          const g = groupOf.get(text);
          if (g === undefined) throw new Error('a written document is not one of the inputs');
          sides.set(g, (sides.get(g) ?? new Set()).add(side));
        }
      }
      return sides;
    };

    // A half-and-half split gives copies the most chance to straddle.
    const deduped = await runQuality({}, docs, 0.5);
    const sides = sidesOf(deduped.train, deduped.heldout);
    expect(sides.size).toBe(groups);
    expect([...sides.values()].filter((s) => s.size > 1)).toEqual([]);
    expect(deduped.heldout.length).toBeGreaterThan(0);
    expect(deduped.train.length).toBeGreaterThan(0);
    expect(deduped.result.summary.perRole.domain.removed.near_duplicate).toBe(2 * groups);

    // The control: without near-duplicate removal the hash split does send copies to both sides,
    // so the assertion above is one that removal, not luck, makes true.
    const kept = await runQuality({ nearDuplicateThreshold: null }, docs, 0.5);
    const straddling = [...sidesOf(kept.train, kept.heldout).values()].filter((s) => s.size > 1);
    expect(straddling.length).toBeGreaterThan(0);
  });
});

describe('PII redaction in the quality activity', () => {
  it('replaces Korean and Japanese identifiers and phone numbers in the stored datasets with typed placeholders, and the report counts them, never their values', async () => {
    const filler = (i: number) => Array.from({ length: 30 }, (_, k) => vocabulary[(i * 31 + k * 7) % vocabulary.length]).join(' ');
    const docs: TextDoc[] = [
      { text: `고객 정보: 주민등록번호 900101-1234568, 휴대폰 010-9876-5432. ${filler(1)}` },
      { text: `担当者のマイナンバーは 1234 5678 9018、電話は 03-1234-5678 です。${filler(2)}` },
      { text: `Nothing personal here. ${filler(3)}` },
    ];
    const { result, train, heldout } = await runQuality({}, docs, 0.34);
    const written = [...train, ...heldout].join('\n');
    for (const value of ['900101-1234568', '010-9876-5432', '1234 5678 9018', '03-1234-5678']) expect(written).not.toContain(value);
    expect(written).toContain('주민등록번호 [NATIONAL_ID], 휴대폰 [PHONE].');
    expect(written).toContain('マイナンバーは [NATIONAL_ID]、電話は [PHONE] です。');
    expect(result.summary.perRole.domain.redactions).toEqual({ email: 0, phone: 2, card: 0, ip: 0, national_id: 2 });
    const report = JSON.stringify(await store.getJson(result.summary.report));
    expect(report).toContain('"national_id":2');
    expect(report).not.toContain('900101');
  });

  it('stores examples and histograms in the report artifact, and keeps them out of the summary that goes into history', async () => {
    const filler = (i: number) => Array.from({ length: 30 }, (_, k) => vocabulary[(i * 17 + k * 5) % vocabulary.length]).join(' ');
    const docs: TextDoc[] = [
      { text: `call 010-9876-5432` },
      { text: `Regular text. ${filler(1)}` },
      { text: `More regular text. ${filler(2)}` },
    ];
    const { result } = await runQuality({ minChars: 25 }, docs, 0.34);
    const summary = JSON.stringify(result.summary);
    expect(summary).not.toContain('examples');
    expect(summary).not.toContain('histograms');
    expect(result.summary.perRole.domain.removedBytes.too_short).toBe(Buffer.byteLength('call 010-9876-5432'));
    const stored = await store.getJson<{ details: { domain: { examples: Record<string, string[]>; histograms: { length: { counts: number[] } } } } }>(result.summary.report);
    expect(stored.details.domain.examples.too_short).toEqual(['call [PHONE]']);
    expect(stored.details.domain.histograms.length.counts.reduce((a, b) => a + b, 0)).toBe(3);
  });
});

describe('Gopher heuristics in the quality activity (quality.heuristics)', () => {
  const en =
    'The network operations centre received the outage report this morning. Three base stations stopped serving and about two thousand subscribers were affected. ' +
    'Engineers replaced the power supply and restored service within the hour, and they are now collecting logs to find the cause of it. ' +
    'The fault appears to be related to equipment that was replaced last month.';
  const ko =
    '서울 본사의 네트워크 운영 센터는 오늘 오전 장애를 접수했습니다. 기지국 세 곳이 서비스를 중단했고 약 이천 명의 가입자가 영향을 받았습니다. ' +
    '엔지니어들은 전원 장치를 교체한 뒤 서비스를 복구했습니다. 그리고 원인을 분석하기 위해 로그를 수집하고 있습니다. 운영팀은 재발 방지를 위해 점검 주기를 단축할 계획입니다. ' +
    '고객 센터는 보상 절차를 안내하고 있으며 추가 공지는 홈페이지를 통해 제공됩니다. 그 밖의 문의는 담당 부서로 연락하시기 바랍니다.';
  const ja =
    '東京本社のネットワーク運用センターは、今朝の障害を受け付けました。三つの基地局がサービスを停止し、約二千人の加入者に影響がありました。' +
    '技術者は電源装置を交換した後、サービスを復旧しました。そして原因を分析するためにログを収集しています。' +
    '今回の障害は先月交換した機器と関係があると見られます。運用チームは再発防止のために点検の周期を短くする予定です。';
  const docs: TextDoc[] = [
    { text: en },
    { text: ko },
    { text: ja },
    // Made-up words, none repeated: no English stop word.
    { text: Array.from({ length: 70 }, (_, i) => vocabulary[(i * 13) % vocabulary.length]).join(' ') },
    // A list and nothing else, every line different.
    { text: Array.from({ length: 12 }, (_, i) => `- ${Array.from({ length: 6 }, (_, k) => vocabulary[(i * 11 + k * 3) % vocabulary.length]).join(' ')} and the`).join('\n') },
  ];

  it('are off unless the spec turns them on; with {} the literature defaults remove by named reason and keep Korean and Japanese prose', async () => {
    const off = await runQuality({}, docs, 0.3);
    expect(off.result.summary.perRole.domain.kept).toBe(5);
    const { result, train, heldout } = await runQuality({ heuristics: {} }, docs, 0.3);
    const domain = result.summary.perRole.domain;
    expect(domain.removed).toMatchObject({ stop_words: 1, bullet_lines: 1, word_count: 0 });
    expect(domain.kept).toBe(3);
    expect([...train, ...heldout].sort()).toEqual([en, ko, ja].sort());
    const stored = await store.getJson<{ details: { domain: { examples: Record<string, string[]> } } }>(result.summary.report);
    expect(stored.details.domain.examples.stop_words[0]).toMatch(new RegExp(`^${vocabulary[0]} ${vocabulary[13]}`));
  });

  it('take overrides per rule, and refuse a bad one naming the field', () => {
    const spec = parseRunSpec(tinySpec({ quality: { minDocs: 1, heuristics: { minWords: 10, minStopWords: null } } }));
    expect(spec.quality.heuristics).toMatchObject({ minWords: 10, minStopWords: null, maxWords: 100_000, minAlphaWordRatio: 0.8 });
    expect(parseRunSpec(tinySpec()).quality.heuristics).toBeNull();
    // `{}` is exactly the library's defaults (the per-language bounds rely on telling the two apart).
    expect(parseRunSpec(tinySpec({ quality: { heuristics: {} } })).quality.heuristics).toEqual(defaultHeuristics);
    expect(() => parseRunSpec(tinySpec({ quality: { heuristics: { minAlphaWordRatio: 2 } } } as never))).toThrow(/quality\.heuristics\.minAlphaWordRatio/);
    expect(() => parseRunSpec(tinySpec({ quality: { heuristics: { minWordz: 3 } } } as never))).toThrow(/quality\.heuristics.*minWordz/);
  });
});

describe('language identification in the quality activity (sources[].languages)', () => {
  const en = 'The network operations centre received the outage report this morning, and engineers restored service within the hour.';
  const ko = '서울 본사의 네트워크 운영 센터는 오늘 오전 장애를 접수했고 엔지니어들이 한 시간 안에 서비스를 복구했습니다.';
  const ja = '東京本社のネットワーク運用センターは今朝の障害を受け付け、技術者が一時間以内にサービスを復旧しました。';
  const de = 'Der Techniker muss den Druck im System prüfen, bevor er das Hauptventil öffnet und die Pumpe wieder einschaltet.';

  it('removes documents of a source that are not in its languages, counts them at removed.language, and writes datasets without the tag', async () => {
    // As collect writes them: each document of a source that lists languages carries them (ISO 639-3).
    const docs: TextDoc[] = [
      { text: en, languages: ['eng', 'kor'] },
      { text: ko, languages: ['eng', 'kor'] },
      { text: ja, languages: ['eng', 'kor'] },
      { text: de, languages: ['eng', 'kor'] },
      { text: de },
    ];
    const { result, train, heldout } = await runQuality({}, docs, 0.3);
    expect(result.summary.perRole.domain.removed.language).toBe(2);
    expect([...train, ...heldout].sort()).toEqual([en, ko, de].sort());
    for (const ref of result.datasets) {
      const written = await readDataset<TextDoc>(store, ref);
      expect(written.every((d) => !('languages' in d))).toBe(true);
    }
  });

  it('refuses an unknown language code in the spec, naming the field', () => {
    const withLanguages = (languages: string[]) => parseRunSpec(tinySpec({ sources: [{ ...tinySpec().sources[0], languages } as never, ...tinySpec().sources.slice(1)] }));
    expect(withLanguages(['en', 'ko', 'jpn']).sources[0]).toMatchObject({ languages: ['en', 'ko', 'jpn'] });
    expect(() => withLanguages(['english'])).toThrow(/sources\.0\.languages\.0: give a language dacp can identify, e.g. "en"/);
    // A code franc never answers with would silently remove every document: refused too.
    expect(() => withLanguages(['heb'])).toThrow(/sources\.0\.languages\.0/);
    expect(withLanguages(['zho']).sources[0]).toMatchObject({ languages: ['zho'] });
    expect(() => parseRunSpec(tinySpec({ quality: { minLanguageScore: 1.5 } }))).toThrow(/quality\.minLanguageScore/);
  });
});

describe('quality.nearDuplicateThreshold and quality.minhash in the run spec', () => {
  it('are on by default, with the public pipelines\' 14 × 8 index and its threshold, the same as the quality library\'s', () => {
    const quality = parseRunSpec(tinySpec()).quality;
    expect(quality.nearDuplicateThreshold).toBe(defaultNearDuplicateThreshold);
    expect(quality.minhash).toEqual(defaultMinhash);
    expect(defaultMinhash).toEqual({ bands: 14, rows: 8 });
    expect(defaultNearDuplicateThreshold).toBeCloseTo((1 / 14) ** (1 / 8), 2);
  });

  it('accept null to turn removal off, and refuse a threshold the index cannot honour, naming the field and the fix', () => {
    expect(parseRunSpec(tinySpec({ quality: { nearDuplicateThreshold: null } })).quality.nearDuplicateThreshold).toBeNull();
    // The schema's floor is the library's, for each shape: the floor itself passes, just below it does not.
    for (const shape of [defaultMinhash, { bands: 32, rows: 4 }, { bands: 20, rows: 5 }]) {
      const floor = minNearDuplicateThreshold(shape);
      expect(RunSpec.safeParse(tinySpec({ quality: { minhash: shape, nearDuplicateThreshold: floor } })).success).toBe(true);
      expect(RunSpec.safeParse(tinySpec({ quality: { minhash: shape, nearDuplicateThreshold: floor - 0.01 } })).success).toBe(false);
    }
    expect(minNearDuplicateThreshold(defaultMinhash)).toBe(0.69);
    expect(() => parseRunSpec(tinySpec({ quality: { nearDuplicateThreshold: 0.5 } }))).toThrow(
      /quality\.nearDuplicateThreshold: nearDuplicateThreshold 0\.5: with 14 bands × 8 rows the index finds only 5 % of pairs that similar; use 0\.69 or more, or more bands of fewer rows/,
    );
    expect(parseRunSpec(tinySpec({ quality: { nearDuplicateThreshold: 0.5, minhash: { bands: 32, rows: 4 } } })).quality).toMatchObject({ nearDuplicateThreshold: 0.5 });
    expect(() => parseRunSpec(tinySpec({ quality: { nearDuplicateThreshold: 1.5 } }))).toThrow(/quality\.nearDuplicateThreshold/);
    expect(() => parseRunSpec(tinySpec({ quality: { minhash: { bands: 0, rows: 8 } } }))).toThrow(/quality\.minhash\.bands/);
    expect(() => parseRunSpec(tinySpec({ quality: { minhash: { bands: 64, rows: 32 } } }))).toThrow(/bands × rows must be at most 1024/);
  });

  it('dedupAgainst takes a schedule, completed runs, or false', () => {
    expect(parseRunSpec(tinySpec()).quality.dedupAgainst).toBeUndefined();
    expect(parseRunSpec(tinySpec({ quality: { dedupAgainst: { schedule: 'weekly' } } })).quality.dedupAgainst).toEqual({ schedule: 'weekly' });
    expect(parseRunSpec(tinySpec({ quality: { dedupAgainst: false } })).quality.dedupAgainst).toBe(false);
    expect(() => parseRunSpec(tinySpec({ quality: { dedupAgainst: { schedule: 'a', runs: ['b'] } } }))).toThrow(/give either "schedule" or "runs"/);
    expect(() => parseRunSpec(tinySpec({ quality: { dedupAgainst: true as never } }))).toThrow(/quality\.dedupAgainst/);
  });
});

describe('the quality stage in parts (quality.partMB), as the workflow runs a large dataset', () => {
  /** qualityFilter and qualityPart as the worker runs them, typed. */
  const partActivities = () => {
    const { qualityFilter, qualityPart } = qualityActivities({ pool: db.pool, store });
    const env = new MockActivityEnvironment();
    type FilterIn = Parameters<typeof qualityFilter>[0];
    type PartIn = Parameters<typeof qualityPart>[0];
    return {
      filter: (input: FilterIn) => env.run<[FilterIn], Awaited<ReturnType<typeof qualityFilter>>, typeof qualityFilter>(qualityFilter, input),
      partOf: (input: PartIn) => env.run<[PartIn], Awaited<ReturnType<typeof qualityPart>>, typeof qualityPart>(qualityPart, input),
    };
  };

  it('part activities, run in any order and retried, then merged, give exactly the one-activity result', async () => {
    // A mixed corpus: the demo corpus's domain documents (with its planted duplicates, PII and junk),
    // Korean and Japanese text, documents in unexpected languages, and near copies whose originals
    // sit in other parts, so merging must carry the dedup state across parts.
    const demo = generateDemoCorpus({ seed: 3, domainDocs: 300, generalDocs: 0, instructionPairs: 0 });
    const next = random(31);
    const originals = Array.from({ length: 30 }, () => documentWords(next));
    const docs: TextDoc[] = [
      ...originals.map((w) => ({ text: w.join(' ') })),
      ...demo.domain.map((text) => ({ text })),
      { text: '서울 본사의 네트워크 운영 센터는 오늘 오전 장애를 접수했고 엔지니어들이 한 시간 안에 서비스를 복구했습니다. 담당자 연락처는 010-1234-5678 입니다.', languages: ['eng', 'kor'] },
      { text: '東京本社のネットワーク運用センターは今朝の障害を受け付け、技術者が一時間以内にサービスを復旧しました。', languages: ['eng', 'kor'] },
      ...originals.map((w, i) => ({ text: withOneWordChanged(w, 40 + i, `edit${i}`) })),
      ...originals.slice(0, 5).map((w) => ({ text: w.join(' ') })),
      { text: `${documentWords(next).join(' ')} mail jane.doe@example.com` },
    ];
    // Gopher's rules on, but for the stop words, which the random-word documents have none of.
    const quality = { minDocs: 1, partMB: 0.01, heuristics: { minStopWords: null } };
    const spec = parseRunSpec(tinySpec({ quality, heldoutFraction: 0.2 }));
    const raw = await writeDataset(store, 'domain', 'train', docs);
    const n = qualityPartCount(raw, spec.quality.partMB);
    expect(n).toBeGreaterThanOrEqual(4);
    const { filter, partOf } = partActivities();
    const register = async (runId: string) => insertRun(db.pool, { runId, workflowId: runId, spec, specSha256: 'test', initiator: 'engineer' });

    const whole = `quality-parts-whole-${++runs}`;
    await register(whole);
    const one = await filter({ runId: whole, spec, raw: [raw] });

    const inParts = `quality-parts-split-${++runs}`;
    await register(inParts);
    // Last part first: each part is judged alone; only the merge depends on their order.
    const order = Array.from({ length: n }, (_, i) => n - 1 - i);
    const refs: Awaited<ReturnType<typeof partOf>>[] = [];
    for (const part of order) refs[part] = await partOf({ runId: inParts, spec, raw, part, parts: n });
    // A retried part (on another worker) stores the very same bytes.
    expect(await partOf({ runId: inParts, spec, raw, part: 1, parts: n })).toEqual(refs[1]);
    expect(refs.reduce((sum, r) => sum + r.input, 0)).toBe(docs.length);
    const merged = await filter({ runId: inParts, spec, raw: [raw], parts: [refs] });

    expect(merged.datasets.map((d) => d.sha256)).toEqual(one.datasets.map((d) => d.sha256));
    const { parts, ...domain } = merged.summary.perRole.domain;
    expect(parts).toBe(n);
    expect(domain).toEqual(one.summary.perRole.domain);
    // What was removed is what the one activity removed, for every reason this corpus exercises.
    expect(domain.removed).toMatchObject({ near_duplicate: 30, duplicate: expect.any(Number), language: 1 });
    expect(domain.removed.duplicate).toBeGreaterThanOrEqual(5);
    expect(domain.redactions.email).toBe(1);
    // The stored details byte for byte (examples per reason in the same order, the same histograms).
    type Stored = { details: unknown };
    expect(JSON.stringify((await store.getJson<Stored>(merged.summary.report)).details)).toBe(JSON.stringify((await store.getJson<Stored>(one.summary.report)).details));
  });

  it('refuses a part that is not one of the dataset, parts that do not cover the dataset, and a changed part file', async () => {
    const spec = parseRunSpec(tinySpec({ quality: { minDocs: 1 } }));
    const raw = await writeDataset(store, 'domain', 'train', [{ text: 'one document of enough characters to keep' }]);
    const { filter, partOf } = partActivities();
    await expect(partOf({ runId: 'x', spec, raw, part: 2, parts: 2 })).rejects.toThrow(/quality part 2 of 2: not a part of the dataset/);
    await expect(filter({ runId: 'x', spec, raw: [raw], parts: [] })).rejects.toThrow(/0 lists of parts for 1 datasets/);
    // Parts that leave documents out, or whose file was changed, are refused before anything is written.
    await expect(filter({ runId: 'x', spec, raw: [raw], parts: [[]] })).rejects.toThrow(/quality parts of the domain dataset cover 0 of its 1 documents/);
    const part = await partOf({ runId: 'x', spec, raw, part: 0, parts: 1 });
    expect(part).toMatchObject({ from: 0, to: 1, input: 1, kept: 1 });
    const file = store.pathOf(part.uri);
    const bytes = await fs.readFile(file);
    await fs.chmod(file, 0o644);
    await fs.writeFile(file, bytes.toString('utf8').replace('one document', 'One document'));
    await expect(filter({ runId: 'x', spec, raw: [raw], parts: [[part]] })).rejects.toThrow(/does not match its sha256/);
    // A change that breaks a line fails the same way, at once (not as a retryable parse error).
    await fs.writeFile(file, bytes.toString('utf8').replace('{"d":', '{"d";'));
    await expect(filter({ runId: 'x', spec, raw: [raw], parts: [[part]] })).rejects.toMatchObject({ type: 'ArtifactCorrupted', nonRetryable: true, message: expect.stringMatching(/has a line that is not JSON/) });
  });

  it('cuts a dataset by quality.partMB, at most 256 parts and one per document, and refuses a part size below 0.01 MB', () => {
    expect(qualityPartCount({ docs: 1000, dataBytes: 10 * 1024 * 1024 }, 64)).toBe(1);
    expect(qualityPartCount({ docs: 1000, dataBytes: 10 * 1024 * 1024 }, 1)).toBe(10);
    expect(qualityPartCount({ docs: 3, dataBytes: 10 * 1024 * 1024 }, 1)).toBe(3);
    expect(qualityPartCount({ docs: 10_000_000, dataBytes: 1e12 }, 64)).toBe(256);
    expect(qualityPartCount({ docs: 0, dataBytes: 0 }, 64)).toBe(1);
    expect(qualityPartCount({ docs: 100, dataBytes: 5000 })).toBe(1);
    expect(() => parseRunSpec(tinySpec({ quality: { partMB: 0 } }))).toThrow(/quality\.partMB: give at least 0\.01/);
    expect(parseRunSpec(tinySpec()).quality.partMB).toBe(64);
  });
});
