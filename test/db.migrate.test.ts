import { promises as fs } from 'fs';
import os from 'os';
import path from 'path';
import { resolveDatabase, ResolvedDatabase } from '../db/embedded';
import { defaultMigrationsDir, migrate, readMigrations } from '../db/migrate';
import { createPool } from '../db/pool';
import { createTestDatabase, TestDatabase, testServerUrl, withDatabase } from './helpers/db';

const domainTables = [
  'approvals', 'audit_log', 'checkpoints', 'datasets', 'deployments', 'evaluations', 'metrics',
  'model_aliases', 'model_versions', 'runs',
];

const tempDirs: string[] = [];
afterAll(async () => {
  await Promise.all(tempDirs.map((dir) => fs.rm(dir, { recursive: true, force: true })));
});

/** A temporary copy of the repository's migrations plus `extra` files, for tests that edit them. */
/** A folder with the project's first migration only (a fixed baseline, whatever migrations come later) plus `extra`. */
async function migrationsCopy(extra: Record<string, string> = {}): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dacp-migrations-'));
  tempDirs.push(dir);
  await fs.copyFile(path.join(defaultMigrationsDir(), '001_initial.sql'), path.join(dir, '001_initial.sql'));
  for (const [name, sql] of Object.entries(extra)) await fs.writeFile(path.join(dir, name), sql);
  return dir;
}

async function versions(db: TestDatabase): Promise<string[]> {
  const { rows } = await db.pool.query<{ name: string }>('SELECT name FROM dacp_schema_migrations ORDER BY version');
  return rows.map((row) => row.name);
}

async function tableExists(db: TestDatabase, table: string): Promise<boolean> {
  const { rows } = await db.pool.query<{ found: string | null }>('SELECT to_regclass($1)::text AS found', [table]);
  return rows[0]?.found !== null;
}

test('the default migrations folder is the repository one', async () => {
  expect(defaultMigrationsDir()).toBe(path.resolve(__dirname, '..', 'migrations'));
  expect((await readMigrations(defaultMigrationsDir()))[0]?.name).toBe('001_initial.sql');
});

test('a file not named NNN_name.sql is refused with its name', async () => {
  const dir = await migrationsCopy({ '2_add_thing.sql': 'SELECT 1;' });
  await expect(readMigrations(dir)).rejects.toThrow(/2_add_thing\.sql is not a migration.*NNN_name\.sql/);
});

test('two files with the same number are refused', async () => {
  const dir = await migrationsCopy({ '001_again.sql': 'SELECT 1;' });
  await expect(readMigrations(dir)).rejects.toThrow(/001_again\.sql and 001_initial\.sql|001_initial\.sql and 001_again\.sql/);
});

interface Server {
  adminUrl: string;
  stop(): Promise<void>;
}

const servers: Array<[string, () => Promise<Server>]> = [
  ['the machine Postgres', async () => ({ adminUrl: testServerUrl, stop: async () => undefined })],
  [
    'the embedded PostgreSQL',
    async () => {
      const saved = process.env.DATABASE_URL;
      delete process.env.DATABASE_URL;
      const home = await fs.mkdtemp(path.join(os.tmpdir(), 'dacp-home-'));
      await fs.chmod(home, 0o755); // as root the server runs as user postgres, which must reach it
      let database: ResolvedDatabase;
      try {
        database = await resolveDatabase(home);
      } finally {
        if (saved !== undefined) process.env.DATABASE_URL = saved;
      }
      return {
        adminUrl: withDatabase(database.ownerUrl, 'postgres'),
        stop: async () => {
          await database.release();
          await fs.rm(home, { recursive: true, force: true });
        },
      };
    },
  ],
];

describe.each(servers)('migrations on %s', (_label, startServer) => {
  let server: Server;
  let db: TestDatabase;

  beforeAll(async () => {
    server = await startServer();
  });
  afterAll(async () => {
    await server?.stop();
  });
  beforeEach(async () => {
    db = await createTestDatabase(server.adminUrl);
  });
  afterEach(async () => {
    await db?.drop();
  });

  test('applies every migration to an empty database and records it with its sha256', async () => {
    const files = await readMigrations(defaultMigrationsDir());
    const result = await migrate(db.pool);
    expect(result).toEqual({ applied: files.map((file) => file.name), alreadyApplied: 0 });
    const { rows } = await db.pool.query<{ version: number; name: string; checksum: string }>(
      'SELECT version, name, checksum FROM dacp_schema_migrations ORDER BY version',
    );
    expect(rows).toEqual(files.map(({ version, name, checksum }) => ({ version, name, checksum })));
  });

  test('creates the domain tables', async () => {
    await migrate(db.pool);
    const { rows } = await db.pool.query<{ table_name: string }>(
      "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
    );
    expect(rows.map((row) => row.table_name)).toEqual(expect.arrayContaining(domainTables));
  });

  test('a second run applies nothing', async () => {
    const first = await migrate(db.pool);
    const second = await migrate(db.pool);
    expect(second).toEqual({ applied: [], alreadyApplied: first.applied.length });
  });

  test('an applied migration that was edited is refused by name and nothing changes', async () => {
    const dir = await migrationsCopy();
    await migrate(db.pool, dir);
    await fs.appendFile(path.join(dir, '001_initial.sql'), '\nCREATE TABLE sneaky (id int);\n');
    await fs.writeFile(path.join(dir, '002_next.sql'), 'CREATE TABLE next_thing (id int);\n');

    await expect(migrate(db.pool, dir)).rejects.toThrow(
      /migration 001_initial\.sql was changed after it was applied \(checksum .*\).*add a new migration instead/,
    );
    expect(await versions(db)).toEqual(['001_initial.sql']);
    expect(await tableExists(db, 'next_thing')).toBe(false);
    expect(await tableExists(db, 'sneaky')).toBe(false);
  });

  test('two runners at once apply each file exactly once', async () => {
    // 002 fails if it runs twice, so a double application cannot go unnoticed.
    const dir = await migrationsCopy({
      '002_counter.sql': 'CREATE TABLE counter (n int); INSERT INTO counter VALUES (1);',
      '003_counter_more.sql': 'UPDATE counter SET n = n + 1;',
    });
    const secondPool = createPool(db.url);
    try {
      const results = await Promise.all([migrate(db.pool, dir), migrate(secondPool, dir)]);
      const applied = results.flatMap((result) => result.applied).sort();
      expect(applied).toEqual(['001_initial.sql', '002_counter.sql', '003_counter_more.sql']);
      expect(await versions(db)).toEqual(applied);
      const { rows } = await db.pool.query<{ n: number }>('SELECT n FROM counter');
      expect(rows).toEqual([{ n: 2 }]);
    } finally {
      await secondPool.end();
    }
  });

  test('a failing migration is rolled back, not recorded, and named in the error', async () => {
    const dir = await migrationsCopy({
      '002_broken.sql': 'CREATE TABLE half_done (id int);\nSELEC oops;\n',
    });
    await expect(migrate(db.pool, dir)).rejects.toThrow(/migration 002_broken\.sql failed and was rolled back: .*line 2/);
    expect(await versions(db)).toEqual(['001_initial.sql']);
    expect(await tableExists(db, 'half_done')).toBe(false);
  });

  test('a database with a migration that the folder lacks is refused', async () => {
    const dir = await migrationsCopy({ '900_extra.sql': 'SELECT 1;' });
    await migrate(db.pool, dir);
    await expect(migrate(db.pool)).rejects.toThrow(/has migration 900_extra\.sql applied.*older than its database/);
  });

  test('model_versions rows cannot be updated or deleted', async () => {
    await migrate(db.pool);
    await db.pool.query(
      `INSERT INTO model_versions (version_id, name, uri, sha256, lineage)
       VALUES ('mv-1', 'demo', 'file:///m', 'abc', '{}'::jsonb)`,
    );
    await expect(db.pool.query("UPDATE model_versions SET uri = 'file:///other' WHERE version_id = 'mv-1'"))
      .rejects.toThrow(/model_versions are immutable/);
    await expect(db.pool.query("DELETE FROM model_versions WHERE version_id = 'mv-1'"))
      .rejects.toThrow(/model_versions are immutable/);
    const { rows } = await db.pool.query<{ uri: string }>("SELECT uri FROM model_versions WHERE version_id = 'mv-1'");
    expect(rows).toEqual([{ uri: 'file:///m' }]);
  });
});
