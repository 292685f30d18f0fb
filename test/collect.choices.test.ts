import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { ArtifactStore } from '../activities/artifacts';
import { loadChoiceSet } from '../activities/choiceSets';
import { readDataset, type TextDoc } from '../activities/datasets';
import { collectActivities } from '../activities/collect';
import { generateDemoChoiceSets } from '../data/demoChoices';
import { migrate } from '../db/migrate';
import { insertRun } from '../db/records';
import { parseRunSpec, type RunSpecInput } from '../schemas/runSpec';
import { tinySpec, writeTinyCorpus } from './helpers/fixtures';
import { createTestDatabase, type TestDatabase } from './helpers/db';

/**
 * The collect activity with `evaluation.choices`: the sets are read next to the sources, stored as
 * content-addressed JSON in a real artifact store, and returned as refs the gates can load.
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
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dacp-collect-'));
  writeTinyCorpus(dir);
  store = new ArtifactStore(path.join(dir, 'artifacts'));
});

afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

async function collect(evaluation: RunSpecInput['evaluation'], over: Partial<RunSpecInput> = {}) {
  const runId = `collect-choices-${++runs}`;
  const spec = parseRunSpec(tinySpec({ evaluation, ...over }));
  await insertRun(db.pool, { runId, workflowId: runId, spec, specSha256: 'test', initiator: 'engineer' });
  const { collectSources } = collectActivities({ pool: db.pool, store });
  type Input = Parameters<typeof collectSources>[0];
  type Output = Awaited<ReturnType<typeof collectSources>>;
  return new MockActivityEnvironment().run<[Input], Output, typeof collectSources>(collectSources, { runId, spec, baseDir: dir });
}

const both = { choices: { domain: 'data/choices-domain.jsonl', general: 'data/choices-general.jsonl' } };

describe('collectSources with evaluation.choices', () => {
  it('stores each named set as JSON {question, choices, answer: index} and returns its ref and item count', async () => {
    const result = await collect(both);
    const expected = generateDemoChoiceSets({ seed: 11 }); // what writeTinyCorpus wrote
    for (const name of ['domain', 'general'] as const) {
      const ref = result.choiceSets[name];
      if (!ref) throw new Error(`no ${name} choice set in the result`);
      expect(ref.uri).toMatch(/^artifact:evaluation\/[0-9a-f]{64}\.json$/);
      expect(ref.uri).toContain(ref.sha256);
      expect(ref.items).toBe(40);
      expect(await store.verify(ref)).toBe(true);
      expect(await loadChoiceSet(store, ref)).toEqual(expected[name]);
    }
    expect(result.choiceSets.domain?.sha256).not.toBe(result.choiceSets.general?.sha256);
    expect(result.summary.choiceItems).toEqual({ domain: 40, general: 40 });
    // The sources are collected as before.
    expect(result.datasets.map((d) => d.role)).toEqual(['domain', 'replay', 'instruct']);
  });

  it('stores answers given as text as indices, and the same set under the same hash on a retry', async () => {
    await fs.writeFile(
      path.join(dir, 'data', 'text-answers.jsonl'),
      JSON.stringify({ question: 'Which is a KPI?', choices: ['tulips', 'average CQI', 'Kyoto'], answer: 'average CQI' }) + '\n',
    );
    const first = await collect({ choices: { domain: 'data/text-answers.jsonl' } });
    const again = await collect({ choices: { domain: 'data/text-answers.jsonl' } });
    expect(first.choiceSets.general).toBeUndefined();
    expect(first.choiceSets.domain).toEqual(again.choiceSets.domain);
    expect(await loadChoiceSet(store, first.choiceSets.domain as NonNullable<typeof first.choiceSets.domain>)).toEqual([
      { question: 'Which is a KPI?', choices: ['tulips', 'average CQI', 'Kyoto'], answer: 1 },
    ]);
  });

  it('returns no sets and no counts when the spec names none', async () => {
    const result = await collect(undefined);
    expect(result.choiceSets).toEqual({});
    expect(result.summary.choiceItems).toBeUndefined();
  });

  it('fails non-retryably, naming the spec field and file:line, on a malformed set', async () => {
    await fs.writeFile(path.join(dir, 'data', 'broken.jsonl'), '{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": "q", "choices": ["a"], "answer": 0}\n');
    const err: unknown = await collect({ choices: { general: 'data/broken.jsonl' } }).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(ApplicationFailure);
    const failure = err as ApplicationFailure;
    expect(failure.nonRetryable).toBe(true);
    expect(failure.type).toBe('SourceInvalid');
    expect(failure.message).toMatch(/^evaluation\.choices\.general: data\/broken\.jsonl:2: "choices" needs at least 2 choices/);
  });

  it('refuses a set outside dataRoots like a file source', async () => {
    await fs.mkdir(path.join(dir, 'private'));
    await fs.copyFile(path.join(dir, 'data', 'choices-domain.jsonl'), path.join(dir, 'private', 'choices.jsonl'));
    const err: unknown = await collect({ choices: { domain: 'private/choices.jsonl' } }, { dataRoots: ['data'] }).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect((err as ApplicationFailure).type).toBe('SourceOutsideRoots');
    expect((err as ApplicationFailure).message).toMatch(/^evaluation\.choices\.domain: private\/choices\.jsonl is outside the allowed source roots/);
  });
});

describe('collectSources with sources[].languages', () => {
  it('tags the documents of a source that lists languages with their ISO 639-3 codes, for the quality stage; other sources stay as they were', async () => {
    const sources = tinySpec().sources.map((s, i) => (i === 0 ? { ...s, languages: ['en', 'ko'] } : s)) as RunSpecInput['sources'];
    const result = await collect(undefined, { sources });
    const domain = result.datasets.find((d) => d.role === 'domain')!;
    const replay = result.datasets.find((d) => d.role === 'replay')!;
    const docs = await readDataset<TextDoc>(store, domain);
    expect(docs.length).toBeGreaterThan(0);
    expect(docs.every((d) => JSON.stringify(d.languages) === JSON.stringify(['eng', 'kor']))).toBe(true);
    expect((await readDataset<TextDoc>(store, replay)).every((d) => d.languages === undefined)).toBe(true);
  });
});
