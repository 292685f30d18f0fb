import { createHash } from 'crypto';
import { existsSync, promises as fs } from 'fs';
import path from 'path';
import pg from 'pg';

/** A migration file: `NNN_name.sql`, applied in order of NNN. */
export interface MigrationFile {
  version: number;
  name: string;
  path: string;
  sql: string;
  checksum: string;
}

export interface MigrateResult {
  /** File names applied by this call, in order. */
  applied: string[];
  /** How many files were already applied before this call. */
  alreadyApplied: number;
}

const migrationFileName = /^(\d{3})_([A-Za-z0-9_]+)\.sql$/;

/**
 * Session-level advisory lock key shared by every dacp migration runner ("dacpmig" in ASCII), so
 * that concurrent runners (several workers starting at once) apply each file exactly once.
 */
const migrationLockKey = '28254577386940775';

/** The repository's `migrations/` folder, found from here whether running from `db/` or `dist/db/`. */
export function defaultMigrationsDir(): string {
  let dir = __dirname;
  for (;;) {
    const candidate = path.join(dir, 'migrations');
    if (existsSync(path.join(candidate, '001_initial.sql'))) return candidate;
    const parent = path.dirname(dir);
    if (parent === dir) {
      throw new Error(`cannot find the migrations folder (migrations/001_initial.sql) above ${__dirname}`);
    }
    dir = parent;
  }
}

/** Reads and validates the migration files of `dir`, ordered by version. */
export async function readMigrations(dir: string): Promise<MigrationFile[]> {
  let entries: string[];
  try {
    entries = await fs.readdir(dir);
  } catch (error) {
    throw new Error(`cannot read the migrations folder ${dir}: ${describe(error)}`);
  }
  const files: MigrationFile[] = [];
  for (const entry of entries.sort()) {
    if (entry.startsWith('.') || entry.endsWith('.md')) continue;
    const match = migrationFileName.exec(entry);
    if (!match) {
      throw new Error(
        `${path.join(dir, entry)} is not a migration: files in the migrations folder must be named ` +
          'NNN_name.sql (three digits, underscore, letters/digits/underscores), e.g. 002_add_principals.sql',
      );
    }
    const version = Number(match[1]);
    if (version === 0) throw new Error(`${entry}: migration numbers start at 001`);
    const clash = files.find((file) => file.version === version);
    if (clash) throw new Error(`migrations ${clash.name} and ${entry} have the same number ${match[1]}; renumber one`);
    const bytes = await fs.readFile(path.join(dir, entry));
    files.push({
      version,
      name: entry,
      path: path.join(dir, entry),
      sql: bytes.toString('utf8'),
      checksum: createHash('sha256').update(bytes).digest('hex'),
    });
  }
  return files.sort((a, b) => a.version - b.version);
}

interface AppliedRow {
  version: number;
  name: string;
  checksum: string;
}

/**
 * Applies the migrations of `dir` that the database has not seen yet. Holds a Postgres advisory
 * lock on one dedicated connection for the whole run; each file runs in its own transaction
 * together with its row in `dacp_schema_migrations`, so a failing file leaves no trace. Already
 * applied files must be unchanged (sha256): schema history is evidence, so edits are refused.
 */
export async function migrate(pool: pg.Pool, dir: string = defaultMigrationsDir()): Promise<MigrateResult> {
  const files = await readMigrations(dir);
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    await client.query('SELECT pg_advisory_lock($1::bigint)', [migrationLockKey]);
    try {
      return await applyPending(client, files, dir);
    } finally {
      await client.query('SELECT pg_advisory_unlock($1::bigint)', [migrationLockKey]);
    }
  } catch (error) {
    // After any failure, close this connection rather than pool it: ending the session also drops
    // the advisory lock and any transaction it might still hold.
    broken = error instanceof Error ? error : new Error(String(error));
    throw error;
  } finally {
    client.release(broken);
  }
}

async function applyPending(client: pg.PoolClient, files: MigrationFile[], dir: string): Promise<MigrateResult> {
  await client.query(`
    CREATE TABLE IF NOT EXISTS dacp_schema_migrations (
      version     integer PRIMARY KEY,
      name        text NOT NULL,
      checksum    text NOT NULL,
      applied_at  timestamptz NOT NULL DEFAULT now()
    )`);
  const { rows } = await client.query<AppliedRow>(
    'SELECT version, name, checksum FROM dacp_schema_migrations ORDER BY version',
  );
  const applied = new Map(rows.map((row) => [row.version, row]));

  // Verify everything before changing anything.
  for (const row of rows) {
    const file = files.find((candidate) => candidate.version === row.version);
    if (!file) {
      throw new Error(
        `the database has migration ${row.name} applied, but ${dir} has no migration ${pad(row.version)}; ` +
          'this dacp is older than its database: upgrade dacp or point DATABASE_URL elsewhere',
      );
    }
    if (file.checksum !== row.checksum) {
      throw new Error(
        `migration ${file.name} was changed after it was applied (checksum ${row.checksum.slice(0, 12)}… in the ` +
          `database, ${file.checksum.slice(0, 12)}… on disk); restore it and add a new migration instead`,
      );
    }
  }

  const appliedNow: string[] = [];
  for (const file of files) {
    if (applied.has(file.version)) continue;
    try {
      await client.query('BEGIN');
      await client.query(file.sql);
      await client.query('INSERT INTO dacp_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)', [
        file.version,
        file.name,
        file.checksum,
      ]);
      await client.query('COMMIT');
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw new Error(`migration ${file.name} failed and was rolled back: ${describeSqlError(error, file.sql)}`);
    }
    appliedNow.push(file.name);
  }
  return { applied: appliedNow, alreadyApplied: rows.length };
}

function describeSqlError(error: unknown, sql: string): string {
  if (error instanceof pg.DatabaseError) {
    const position = Number(error.position);
    const line = Number.isInteger(position) && position > 0 ? sql.slice(0, position - 1).split('\n').length : undefined;
    return `${error.message}${line === undefined ? '' : ` (line ${line})`}`;
  }
  return describe(error);
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function pad(version: number): string {
  return String(version).padStart(3, '0');
}
