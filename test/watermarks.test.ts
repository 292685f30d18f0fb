import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { collectActivities, type CollectSummary } from '../activities/collect';
import { readSourceSince, type Watermark } from '../activities/sources';
import { advanceWatermarks } from '../db/records';
import { smokeActivities } from '../activities/smoke';
import { parseRunSpec, watermarkProblems } from '../schemas/runSpec';
import { tinySpec, writeTinyCorpus } from './helpers/fixtures';
import { createTestDatabase, type TestDatabase } from './helpers/db';
import { startTrainingBench, type TrainingBench } from './helpers/trainingBench';

/**
 * Watermarks of a Postgres source, through the collect activity on a real database: a scheduled
 * run reads the rows past the last successful run's maximum of `watermarkColumn`; a run that did
 * not succeed leaves it where it was. (Files watermarks run end to end in test/schedules.test.ts.)
 */

const envName = 'TEST_WATERMARK_URL';
let bench: TrainingBench;
let dir: string;
/** The source: a database of its own (dacp's own is never a source). */
let source: TestDatabase;

beforeAll(async () => {
  bench = await startTrainingBench();
  dir = mkdtempSync(path.join(os.tmpdir(), 'dacp-watermarks-'));
  writeTinyCorpus(dir);
  source = await createTestDatabase();
  process.env[envName] = source.url;
  // Microseconds apart: a JavaScript Date would round them together; the watermark is kept as the database's text.
  await source.pool.query(`
    CREATE TABLE tickets (id int PRIMARY KEY, body text NOT NULL, updated_at timestamptz NOT NULL);
    INSERT INTO tickets VALUES
      (1, 'Cell 17 dropped calls after the upgrade to build 4.2.', '2026-11-01 10:00:00.000001+00'),
      (2, 'The gNB restarted after a GPS alarm on site 9.', '2026-11-01 10:00:00.000002+00'),
      (3, 'PRB utilisation peaked at 91 percent on sector 2.', '2026-11-01 10:00:00.000003+00');`);
}, 60_000);

afterAll(async () => {
  delete process.env[envName];
  await bench?.stop();
  await source?.drop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const spec = parseRunSpec(tinySpec({
  sources: [
    { kind: 'postgres', role: 'domain', query: 'SELECT body AS text, updated_at FROM tickets;', connectionEnv: envName, watermarkColumn: 'updated_at' },
    { kind: 'files', role: 'replay', paths: ['data/general.jsonl'] },
    { kind: 'files', role: 'instruct', paths: ['data/pairs.jsonl'] },
  ],
  quality: { minDocs: 1 },
}));

async function collect(runId: string) {
  const collected = await bench.attempt(() => collectActivities(bench.deps).collectSources({ runId, spec, baseDir: dir, scheduleId: 'nightly' }));
  if (collected.result === undefined) throw collected.error;
  const summary: CollectSummary = collected.result.summary;
  return summary.sources[0];
}

test('a scheduled run reads the rows past the last successful run; a run that failed leaves the watermark', async () => {
  const first = await bench.newRun('nightly');
  expect(await collect(first)).toMatchObject({ docs: 3, watermark: { used: null, next: 'updated_at > 2026-11-01 10:00:00.000003+00' } });

  // The first run failed (no deploy advanced it): the next one reads everything again, and the rows that came since.
  await source.pool.query(`INSERT INTO tickets VALUES (4, 'Site 12 lost its backhaul link twice.', '2026-11-02 08:00:00.5+00'), (5, 'Handover failures rose in the evening peak.', '2026-11-02 08:00:00.6+00')`);
  const second = await bench.newRun('nightly');
  expect(await collect(second)).toMatchObject({ docs: 5, watermark: { used: null, next: 'updated_at > 2026-11-02 08:00:00.6+00' } });
  expect(await advanceWatermarks(bench.db.pool, second)).toBe(1);
  // A retried deploy advances nothing twice, and the failed first run cannot move it back.
  expect(await advanceWatermarks(bench.db.pool, second)).toBe(0);
  expect(await advanceWatermarks(bench.db.pool, first)).toBe(0);

  // One microsecond past the watermark is new; the watermark itself is not.
  await source.pool.query(`INSERT INTO tickets VALUES (6, 'A firmware rollback fixed the alarms on site 3.', '2026-11-02 08:00:00.600001+00'), (7, 'Same instant as the watermark, written late.', '2026-11-02 08:00:00.6+00')`);
  const third = await bench.newRun('nightly');
  expect(await collect(third)).toMatchObject({ docs: 1, watermark: { used: 'updated_at > 2026-11-02 08:00:00.6+00', next: 'updated_at > 2026-11-02 08:00:00.600001+00' } });
  const recorded = await bench.db.pool.query('SELECT used, used_run_id, next FROM run_watermarks WHERE run_id = $1', [third]);
  expect(recorded.rows[0]).toMatchObject({ used_run_id: second, next: { kind: 'postgres', column: 'updated_at', max: '2026-11-02 08:00:00.600001+00' } });
  // Nothing new at all: the update stops at collect, saying why.
  expect(await advanceWatermarks(bench.db.pool, third)).toBe(1);
  const fourth = await bench.newRun('nightly');
  const none = await bench.attempt(() => collectActivities(bench.deps).collectSources({ runId: fourth, spec, baseDir: dir, scheduleId: 'nightly' }));
  expect(none.error).toMatchObject({ type: 'NothingNew', nonRetryable: true });
  expect((none.error as Error).message).toMatch(/^no new domain documents since the last successful run of schedule nightly \(sources\[0\]: updated_at > 2026-11-02 08:00:00\.600001\+00\)/);
  // A run whose deploy is rolled back after the smoke test did not succeed: its watermark goes back.
  const back = await smokeActivities(bench.deps).rollbackDeploy({ runId: third, alias: 'nowhere', versionId: 'x:v1', previousVersionId: null, reason: 'smoke test failed' });
  expect(back.rolledBack).toBe(false); // that alias is not where this run deployed; only the watermark moved back
  const restored = await bench.db.pool.query(`SELECT run_id, value FROM schedule_watermarks WHERE schedule_id = 'nightly'`);
  expect(restored.rows).toEqual([{ run_id: second, value: { kind: 'postgres', column: 'updated_at', max: '2026-11-02 08:00:00.6+00' } }]);
  const fifth = await bench.newRun('nightly');
  expect(await collect(fifth)).toMatchObject({ docs: 1, watermark: { used: 'updated_at > 2026-11-02 08:00:00.6+00' } });
  // A manual run of the same spec reads the whole query, as always.
  const manual = await bench.newRun('manual');
  const whole = await bench.attempt(() => collectActivities(bench.deps).collectSources({ runId: manual, spec, baseDir: dir }));
  expect(whole.result?.summary.sources[0]).toMatchObject({ docs: 7 });
  expect(whole.result?.summary.sources[0]?.watermark).toBeUndefined();
});

test('readSourceSince on files: new or changed content by hash, unchanged files skipped', async () => {
  const source = { kind: 'files' as const, role: 'domain' as const, paths: ['data/domain/d1*.txt'] };
  const first = await readSourceSince(source, { baseDir: dir }, null);
  expect(first.skippedFiles).toBe(0);
  const files = (first.next as Extract<Watermark, { kind: 'files' }>).files;
  expect(Object.keys(files).length).toBe(first.docs.length);
  const again = await readSourceSince(source, { baseDir: dir }, first.next);
  expect([again.docs.length, again.skippedFiles]).toEqual([0, first.docs.length]);
  // A file whose recorded hash differs (its content changed) is read again.
  const changed = { kind: 'files' as const, files: { ...files, 'data/domain/d1.txt': 'f'.repeat(64) } };
  expect((await readSourceSince(source, { baseDir: dir }, changed)).docs.map((d) => d.origin)).toEqual(['data/domain/d1.txt']);
});

test('a schedule refuses a Postgres domain source with no watermarkColumn, and a watermarked replay source', () => {
  const pg = parseRunSpec(tinySpec({
    sources: [
      { kind: 'postgres', role: 'domain', query: 'SELECT body AS text FROM tickets', connectionEnv: envName },
      { kind: 'files', role: 'replay', paths: ['data/general.jsonl'] },
      { kind: 'files', role: 'instruct', paths: ['data/pairs.jsonl'] },
    ],
  }));
  expect(watermarkProblems(pg)).toEqual([expect.stringMatching(/^sources\[0\]\.watermarkColumn: a scheduled run collects only rows that are new/)]);
  const optedOut = parseRunSpec(tinySpec({ sources: [{ ...pg.sources[0]!, watermark: false }, ...pg.sources.slice(1)] as never }));
  expect(watermarkProblems(optedOut)).toEqual([]);
  expect(() => parseRunSpec(tinySpec({ sources: [pg.sources[0]!, { kind: 'files', role: 'replay', paths: ['data/general.jsonl'], watermark: true }, pg.sources[2]!] as never })))
    .toThrow(/sources\.1\.watermark: a replay source is a pool of general text, read whole by every run/);
});
