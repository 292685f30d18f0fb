import { mulberry32 } from '../ml/demoCorpus';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MockActivityEnvironment } from '@temporalio/testing';
import { ArtifactStore } from '../activities/artifacts';
import { readDataset, writeDataset, type TextDoc } from '../activities/datasets';
import { qualityActivities } from '../activities/quality';
import { migrate } from '../db/migrate';
import { insertRun } from '../db/records';
import { defaultNearDuplicateThreshold, minNearDuplicateThreshold } from '../ml/quality';
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
  return { result, train: await part('train'), heldout: await part('heldout') };
}

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

describe('quality.nearDuplicateThreshold in the run spec', () => {
  it('is on by default, with the same threshold as the quality library', () => {
    expect(parseRunSpec(tinySpec()).quality.nearDuplicateThreshold).toBe(defaultNearDuplicateThreshold);
  });

  it('accepts null to turn removal off, and refuses a threshold the index cannot honour, naming the field and the fix', () => {
    expect(parseRunSpec(tinySpec({ quality: { nearDuplicateThreshold: null } })).quality.nearDuplicateThreshold).toBeNull();
    // The schema's floor is the library's: the floor itself passes, just below it does not.
    expect(RunSpec.safeParse(tinySpec({ quality: { nearDuplicateThreshold: minNearDuplicateThreshold } })).success).toBe(true);
    expect(RunSpec.safeParse(tinySpec({ quality: { nearDuplicateThreshold: minNearDuplicateThreshold - 0.01 } })).success).toBe(false);
    expect(() => parseRunSpec(tinySpec({ quality: { nearDuplicateThreshold: 0.3 } }))).toThrow(
      /quality\.nearDuplicateThreshold: .*null to turn near-duplicate removal off/,
    );
    expect(() => parseRunSpec(tinySpec({ quality: { nearDuplicateThreshold: 1.5 } }))).toThrow(/quality\.nearDuplicateThreshold/);
  });
});
