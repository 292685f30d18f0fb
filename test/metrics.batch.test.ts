import { migrate } from '../db/migrate';
import { insertMetrics, insertRun, METRICS_BATCH_ROWS } from '../db/records';
import { createTestDatabase, type TestDatabase } from './helpers/db';

/**
 * Metric points are written in bounded batches: a checkpoint interval of any length flushes its
 * points without meeting Postgres's limit of 65,535 parameters per statement.
 */

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
  await migrate(db.pool);
});

afterAll(async () => {
  await db?.drop();
});

async function newRun(runId: string): Promise<string> {
  await insertRun(db.pool, { runId, workflowId: runId, spec: {}, specSha256: 'test', initiator: 'engineer' });
  return runId;
}

describe('insertMetrics', () => {
  test('20,000 points (120,000 values, past the parameter limit) are all stored', async () => {
    const runId = await newRun('metrics-many');
    const points = Array.from({ length: 10_000 }, (_, i) => [
      { step: i + 1, name: 'loss', value: 3 - i / 10_000 },
      { step: i + 1, name: 'lr', value: 1e-3 },
    ]).flat();
    expect(points.length * 6).toBeGreaterThan(65_535);
    expect(points.length).toBeGreaterThan(METRICS_BATCH_ROWS);
    await insertMetrics(db.pool, runId, 'dacp', 0, points);
    const { rows } = await db.pool.query(
      `SELECT count(*)::int AS n, min(step) AS first, max(step) AS last, sum(CASE WHEN name = 'loss' THEN value END) AS losses
         FROM metrics WHERE run_id = $1 AND stage = 'dacp' AND round = 0`,
      [runId],
    );
    expect(rows[0]).toMatchObject({ n: 20_000, first: 1, last: 10_000 });
    expect(rows[0].losses).toBeCloseTo(points.filter((p) => p.name === 'loss').reduce((sum, p) => sum + p.value, 0), 6);
  });

  test('a repeated write updates in place, a point given twice keeps its last value, and NaN/Infinity are kept', async () => {
    const runId = await newRun('metrics-repeat');
    await insertMetrics(db.pool, runId, 'dacp', 1, [{ step: 1, name: 'loss', value: 2 }]);
    await insertMetrics(db.pool, runId, 'dacp', 1, [
      { step: 1, name: 'loss', value: 1.5 },
      { step: 2, name: 'loss', value: 9 },
      { step: 2, name: 'loss', value: Number.NaN },
      { step: 3, name: 'loss', value: Number.POSITIVE_INFINITY },
    ]);
    const { rows } = await db.pool.query(`SELECT step, value FROM metrics WHERE run_id = $1 ORDER BY step`, [runId]);
    expect(rows).toEqual([
      { step: 1, value: 1.5 },
      { step: 2, value: Number.NaN },
      { step: 3, value: Number.POSITIVE_INFINITY },
    ]);
  });
});
