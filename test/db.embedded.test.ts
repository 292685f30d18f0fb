import { ChildProcess, spawn } from 'child_process';
import { promises as fs } from 'fs';
import os from 'os';
import path from 'path';
import pg from 'pg';
import ts from 'typescript';
import { embeddedPostgresPaths, resolveDatabase, ResolvedDatabase } from '../db/embedded';
import { isProcessAlive } from '../db/lockfile';
import { openDatabase } from '../cli/runtime';

const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
const savedDatabaseUrl = process.env.DATABASE_URL;
const cleanups: Array<() => Promise<void>> = [];

beforeAll(() => {
  delete process.env.DATABASE_URL;
});
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  if (savedDatabaseUrl !== undefined) process.env.DATABASE_URL = savedDatabaseUrl;
});

async function tempHome(): Promise<string> {
  const home = await fs.mkdtemp(path.join(os.tmpdir(), 'dacp-home-'));
  await fs.chmod(home, 0o755); // as root the server runs as user postgres, which must reach it
  cleanups.push(() => fs.rm(home, { recursive: true, force: true }));
  return home;
}

async function resolveTracked(home: string): Promise<ResolvedDatabase> {
  const database = await resolveDatabase(home);
  cleanups.push(() => database.release());
  return database;
}

async function queryOnce<T extends pg.QueryResultRow>(url: string, sql: string): Promise<T[]> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}

async function answers(url: string): Promise<boolean> {
  return queryOnce(url, 'SELECT 1').then(() => true, () => false);
}

test("dacp works as dacp_app, a role that is no superuser and cannot edit the evidence; migrations run as the owner", async () => {
  const home = await tempHome();
  const db = await openDatabase(home);
  cleanups.push(() => db.close());
  expect(new URL(db.url).username).toBe('dacp_app');
  const [me] = (await db.pool.query("SELECT current_user AS who, rolsuper AS superuser FROM pg_roles WHERE rolname = current_user")).rows;
  expect(me).toEqual({ who: 'dacp_app', superuser: false });
  // It does its work …
  await db.pool.query(`INSERT INTO runs (run_id, workflow_id, spec, spec_sha256, initiator, state, stage) VALUES ('role-1', 'role-1', '{}', 'x', 'engineer', 'running', 'collect')`);
  await db.pool.query(`UPDATE runs SET state = 'awaiting_approval' WHERE run_id = 'role-1'`);
  await db.pool.query(`INSERT INTO approvals (run_id, principal, decision, artifacts, decided_at) VALUES ('role-1', 'bob', 'approve', '{}', now())`);
  // … but has no right to change or remove the evidence, nor to switch its triggers off or migrate.
  for (const sql of [
    "UPDATE approvals SET decision = 'reject'",
    'DELETE FROM approvals',
    'TRUNCATE audit_log',
    "UPDATE deployments SET alias = 'x'",
    'DELETE FROM model_versions',
    "DELETE FROM dacp_schema_migrations",
  ]) {
    await expect(db.pool.query(sql)).rejects.toMatchObject({ code: '42501' }); // insufficient_privilege: no right, not only a trigger
  }
  await expect(db.pool.query('ALTER TABLE approvals DISABLE TRIGGER ALL')).rejects.toThrow(/must be owner/);
  // Who may do what is the administrator's: the work role reads it but cannot enrol a key, add a role or mint a token.
  await db.admin().query(`INSERT INTO principals (name, roles) VALUES ('eve', '{operator}')`);
  expect((await db.pool.query(`SELECT roles FROM principals WHERE name = 'eve'`)).rows).toEqual([{ roles: ['operator'] }]);
  for (const sql of [
    `INSERT INTO principals (name, roles) VALUES ('mallory', '{approver}')`,
    `UPDATE principals SET roles = '{approver}' WHERE name = 'eve'`,
    `INSERT INTO principal_keys (key_id, principal, public_key) VALUES ('${'a'.repeat(16)}', 'eve', '${'b'.repeat(64)}')`,
    `INSERT INTO service_keys (key_id, purpose, public_key) VALUES ('${'c'.repeat(16)}', 'server', '${'d'.repeat(64)}')`,
    `INSERT INTO api_tokens (token_id, principal, token_sha256) VALUES ('${'e'.repeat(12)}', 'eve', '${'f'.repeat(64)}')`,
  ]) {
    await expect(db.pool.query(sql)).rejects.toMatchObject({ code: '42501' });
  }
  await expect(db.pool.query('CREATE TABLE mine (id int)')).rejects.toThrow(/permission denied/);
  const password = await fs.readFile(path.join(path.dirname(embeddedPostgresPaths(home).passwordFile), 'app.password'));
  expect((await fs.stat(path.join(path.dirname(embeddedPostgresPaths(home).passwordFile), 'app.password'))).mode & 0o777).toBe(0o600);
  expect(password.length).toBeGreaterThan(40);
});

test('with DATABASE_URL set, that server is used and release does nothing', async () => {
  process.env.DATABASE_URL = 'postgres://someone@db.example:5432/dacp';
  try {
    const database = await resolveDatabase('/nonexistent/home');
    expect(database).toMatchObject({ url: 'postgres://someone@db.example:5432/dacp', embedded: false, started: false });
    await database.release();
  } finally {
    delete process.env.DATABASE_URL;
  }
});

describe('one embedded server per home', () => {
  let home: string;
  let owner: ResolvedDatabase;

  beforeAll(async () => {
    home = await tempHome();
    owner = await resolveTracked(home);
  });

  test('the first process starts a real PostgreSQL on 127.0.0.1 with a dacp database', async () => {
    expect(owner).toMatchObject({ embedded: true, started: true });
    const url = new URL(owner.url);
    expect(url.hostname).toBe('127.0.0.1');
    const [row] = await queryOnce<{ db: string; version: string }>(
      owner.url,
      "SELECT current_database() AS db, current_setting('server_version_num') AS version",
    );
    expect(row?.db).toBe('dacp');
    expect(Number(row?.version)).toBeGreaterThanOrEqual(180000);
  });

  test('records the port and pid in a state file and logs to postgres.log, not stdout', async () => {
    const paths = embeddedPostgresPaths(home);
    const state: { port: number; pid: number } = JSON.parse(await fs.readFile(paths.stateFile, 'utf8'));
    expect(String(state.port)).toBe(new URL(owner.url).port);
    expect(isProcessAlive(state.pid)).toBe(true);
    expect(await fs.readFile(paths.logFile, 'utf8')).toMatch(/ready to accept connections/);
  });

  test('a second resolve in the same home reuses the server and its release leaves it running', async () => {
    const second = await resolveDatabase(home);
    expect(second).toMatchObject({ url: owner.url, embedded: true, started: false });
    await second.release();
    expect(await answers(owner.url)).toBe(true);
  });

  test('the owner\'s release stops the server', async () => {
    const { pid }: { pid: number } = JSON.parse(await fs.readFile(embeddedPostgresPaths(home).stateFile, 'utf8'));
    await owner.release();
    expect(await answers(owner.url)).toBe(false);
    expect(isProcessAlive(pid)).toBe(false);
    await expect(fs.access(path.join(embeddedPostgresPaths(home).dataDir, 'postmaster.pid'))).rejects.toThrow();
  });

  test('data survives a stop and a restart', async () => {
    const first = await resolveDatabase(home);
    await queryOnce(first.ownerUrl, 'CREATE TABLE kept (id int); INSERT INTO kept VALUES (7)');
    await first.release();
    const again = await resolveTracked(home);
    expect(again.started).toBe(true);
    expect(await queryOnce(again.ownerUrl, 'SELECT id FROM kept')).toEqual([{ id: 7 }]);
    await again.release();
  });

  test('a stale state file and a stale lock left by dead processes are recovered from', async () => {
    const deadPid = await exitedProcessPid();
    const paths = embeddedPostgresPaths(home);
    await fs.writeFile(paths.stateFile, JSON.stringify({ port: 1, pid: deadPid, dataDir: paths.dataDir }));
    await fs.writeFile(
      paths.lockFile,
      JSON.stringify({ pid: deadPid, host: os.hostname(), token: 'stale', acquiredAt: new Date().toISOString() }),
    );
    const database = await resolveTracked(home);
    expect(database.started).toBe(true);
    expect(await answers(database.url)).toBe(true);
    await database.release();
  });

  test('concurrent resolves in one process start the server once', async () => {
    const both = await Promise.all([resolveTracked(home), resolveTracked(home)]);
    expect(both.map((database) => database.started).sort()).toEqual([false, true]);
    expect(both[0]?.url).toBe(both[1]?.url);
    await Promise.all(both.map((database) => database.release()));
  });
});

test('separate processes of one home share one server; exactly one of them starts it', async () => {
  const home = await tempHome();
  const script = await compiledResolveScript();
  const children = [0, 1, 2].map(() => spawnResolver(script, home));
  try {
    const reports = await Promise.all(children.map((child) => child.report));
    expect(reports.filter((report) => report.started)).toHaveLength(1);
    expect(new Set(reports.map((report) => report.url)).size).toBe(1);
    expect(await answers(reports[0]?.url ?? '')).toBe(true);
  } finally {
    // Non-owners release first, so the owner's release is the one that stops the server.
    const reports = await Promise.all(children.map((child) => child.report.catch(() => undefined)));
    const order = children.map((child, i) => ({ child, owner: reports[i]?.started === true }));
    for (const { child } of order.sort((a, b) => Number(a.owner) - Number(b.owner))) await child.finish();
  }
});

test('a home that cannot be created is named in a one-line error', async () => {
  const parent = await tempHome();
  await fs.writeFile(path.join(parent, 'file'), '');
  const home = path.join(parent, 'file', 'home');
  await expect(resolveDatabase(home)).rejects.toThrow(
    new RegExp(`needs a writable directory ${escape(path.join(home, 'postgres'))} \\(ENOTDIR\\).*DATABASE_URL`),
  );
});

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The pid of a process that has exited: as stale as a pid gets. */
async function exitedProcessPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', '']);
  await new Promise((resolve) => child.on('exit', resolve));
  return child.pid ?? 999_999;
}

/** db/*.ts transpiled to CommonJS in a temp folder, so child Node processes can run resolveDatabase. */
async function compiledResolveScript(): Promise<string> {
  const out = await fs.mkdtemp(path.join(os.tmpdir(), 'dacp-db-js-'));
  cleanups.push(() => fs.rm(out, { recursive: true, force: true }));
  const dbDir = path.resolve(__dirname, '..', 'db');
  for (const name of ['embedded.ts', 'lockfile.ts', 'pgtools.ts', 'appRole.ts']) {
    const source = await fs.readFile(path.join(dbDir, name), 'utf8');
    const { outputText } = ts.transpileModule(source, {
      compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
    });
    await fs.writeFile(path.join(out, name.replace(/\.ts$/, '.js')), outputText);
  }
  const script = path.join(out, 'resolve-and-hold.js');
  await fs.writeFile(
    script,
    `const { resolveDatabase } = require('./embedded.js');
     resolveDatabase(process.argv[2]).then((db) => {
       process.stdout.write(JSON.stringify({ url: db.url, started: db.started }) + '\\n');
       process.stdin.resume();
       process.stdin.on('end', () => db.release().then(() => process.exit(0)));
     }, (error) => { process.stderr.write(String(error.message) + '\\n'); process.exit(1); });`,
  );
  return script;
}

interface Resolver {
  report: Promise<{ url: string; started: boolean }>;
  finish(): Promise<void>;
}

function spawnResolver(script: string, home: string): Resolver {
  const nodeModules = path.resolve(__dirname, '..', 'node_modules');
  const child: ChildProcess = spawn(process.execPath, [script, home], {
    env: { ...process.env, NODE_PATH: nodeModules },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const report = new Promise<{ url: string; started: boolean }>((resolve, reject) => {
    let stdout = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      if (stdout.includes('\n')) resolve(JSON.parse(stdout.split('\n')[0] ?? ''));
    });
    child.on('exit', (code) => reject(new Error(`resolver exited with ${code}: ${stderr}`)));
  });
  return {
    report,
    finish: async () => {
      child.stdin?.end();
      await exited;
    },
  };
}

describe('embedded PostgreSQL from a private folder (root runs the server as postgres)', () => {
  (isRoot ? test : test.skip)('a home inside a mode-0700 folder still gets a working, shared server', async () => {
    const privateDir = await fs.mkdtemp(path.join(os.tmpdir(), 'dacp-private-'));
    expect((await fs.stat(privateDir)).mode & 0o777).toBe(0o700);
    const home = path.join(privateDir, 'home');
    const first = await resolveDatabase(home);
    let dataDirectory = '';
    try {
      expect(first.started).toBe(true);
      const client = new pg.Client({ connectionString: first.ownerUrl });
      await client.connect();
      const { rows } = await client.query('SHOW data_directory');
      await client.end();
      dataDirectory = rows[0].data_directory as string;
      expect(dataDirectory.startsWith(privateDir)).toBe(false);
      const second = await resolveDatabase(home);
      expect(second.started).toBe(false);
      expect(second.url).toBe(first.url);
      await second.release();
    } finally {
      await first.release();
      await fs.rm(privateDir, { recursive: true, force: true });
      if (dataDirectory) await fs.rm(path.dirname(dataDirectory), { recursive: true, force: true });
    }
  });
});
