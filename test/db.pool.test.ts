import pg from 'pg';
import { withTransaction } from '../db/pool';
import { createTestDatabase, TestDatabase } from './helpers/db';

let db: TestDatabase;

beforeEach(async () => {
  db = await createTestDatabase();
  await db.pool.query('CREATE TABLE notes (body text)');
});
afterEach(async () => {
  await db.drop();
});

async function notes(): Promise<string[]> {
  return (await db.pool.query<{ body: string }>('SELECT body FROM notes ORDER BY body')).rows.map((row) => row.body);
}

test('withTransaction commits what the function wrote and returns its result', async () => {
  const result = await withTransaction(db.pool, async (client) => {
    await client.query("INSERT INTO notes VALUES ('a'), ('b')");
    return 'done';
  });
  expect(result).toBe('done');
  expect(await notes()).toEqual(['a', 'b']);
});

test('withTransaction rolls everything back when the function throws', async () => {
  await expect(
    withTransaction(db.pool, async (client) => {
      await client.query("INSERT INTO notes VALUES ('lost')");
      throw new Error('changed my mind');
    }),
  ).rejects.toThrow('changed my mind');
  expect(await notes()).toEqual([]);
});

test('an idle connection killed by the server does not crash the process; the pool recovers', async () => {
  const client = await db.pool.connect();
  const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
  client.release();
  const errors: string[] = [];
  const stderrWrite = jest.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    errors.push(String(chunk));
    return true;
  });
  try {
    const idleError = new Promise<void>((resolve) => db.pool.once('error', () => resolve()));
    await queryFromAnotherSession(`SELECT pg_terminate_backend(${Number(rows[0]?.pid)})`);
    await idleError;
  } finally {
    stderrWrite.mockRestore();
  }
  expect(errors.join('')).toMatch(/idle database connection failed/);
  expect((await db.pool.query<{ one: number }>('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
});

async function queryFromAnotherSession(sql: string): Promise<void> {
  const admin = new pg.Client({ connectionString: db.url });
  await admin.connect();
  try {
    await admin.query(sql);
  } finally {
    await admin.end();
  }
}
