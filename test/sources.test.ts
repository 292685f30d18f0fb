import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import pg from 'pg';
import { readSource, sourceApplicationName, type Source, type SourceDoc } from '../activities/sources';
import { createTestDatabase, type TestDatabase } from './helpers/db';

let dir: string;

async function write(relative: string, content: string | Buffer): Promise<string> {
  const file = path.join(dir, relative);
  await fs.mkdir(path.dirname(file), { recursive: true });
  await fs.writeFile(file, content);
  return file;
}

const files = (paths: string[], extra: Partial<Extract<Source, { kind: 'files' }>> = {}): Source => ({ kind: 'files', role: 'domain', paths, ...extra });
const read = (source: Source, o: { allowedRoots?: string[]; maxFileBytes?: number } = {}): Promise<SourceDoc[]> =>
  readSource(source, { baseDir: dir, ...o });

/** Resolves to the failure a promise rejects with, asserting it is a non-retryable ApplicationFailure. */
async function failureOf(promise: Promise<unknown>): Promise<ApplicationFailure> {
  const err: unknown = await promise.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(ApplicationFailure);
  const failure = err as ApplicationFailure;
  expect(failure.message).not.toContain('\n');
  return failure;
}

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dacp-sources-'));
});

afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

describe('files sources', () => {
  it('reads .txt and .md files as one document each, in sorted order, with paths relative to baseDir', async () => {
    await write('b.md', '# Runbook\n\nRestart the DU.');
    await write('a.txt', 'The gNB handles PRB scheduling.');
    const docs = await read(files(['b.md', 'a.txt']));
    expect(docs).toEqual([
      { text: 'The gNB handles PRB scheduling.', origin: 'a.txt' },
      { text: '# Runbook\n\nRestart the DU.', origin: 'b.md' },
    ]);
  });

  it('reads absolute paths too', async () => {
    const file = await write('notes.txt', 'Absolute note.');
    expect(await readSource(files([file]), { baseDir: os.tmpdir() })).toEqual([{ text: 'Absolute note.', origin: path.relative(os.tmpdir(), file) }]);
  });

  it('expands *, ? and ** globs, skipping hidden entries and de-duplicating overlaps', async () => {
    await write('corpus/top.txt', 'top');
    await write('corpus/x/one.txt', 'one');
    await write('corpus/x/y/two.txt', 'two');
    await write('corpus/x/y/skip.md', 'not a txt');
    await write('corpus/.hidden/secret.txt', 'hidden');
    await write('corpus/log1.txt', 'log1');
    await write('corpus/log22.txt', 'log22');
    const deep = await read(files(['corpus/**/*.txt', 'corpus/x/one.txt']));
    expect(deep.map((d) => d.origin)).toEqual(['corpus/log1.txt', 'corpus/log22.txt', 'corpus/top.txt', 'corpus/x/one.txt', 'corpus/x/y/two.txt']);
    const shallow = await read(files(['corpus/*.txt']));
    expect(shallow.map((d) => d.origin)).toEqual(['corpus/log1.txt', 'corpus/log22.txt', 'corpus/top.txt']);
    const single = await read(files(['corpus/log?.txt']));
    expect(single.map((d) => d.origin)).toEqual(['corpus/log1.txt']);
    const midGlob = await read(files(['corpus/*/y/*.md']));
    expect(midGlob.map((d) => d.origin)).toEqual(['corpus/x/y/skip.md']);
  });

  it('reads JSON lines with the text field, skipping blank lines and naming each line as origin', async () => {
    await write('d.jsonl', '{"text":"first"}\n\n{"text":"second","lang":"en"}\n');
    await write('e.jsonl', '{"body":"custom field"}\n');
    expect(await read(files(['d.jsonl']))).toEqual([
      { text: 'first', origin: 'd.jsonl:1' },
      { text: 'second', origin: 'd.jsonl:3' },
    ]);
    expect(await read(files(['e.jsonl'], { textField: 'body' }))).toEqual([{ text: 'custom field', origin: 'e.jsonl:1' }]);
  });

  it('reads instruction pairs from JSON lines with default or custom field names', async () => {
    await write('i.jsonl', '{"prompt":"What is a PRB?","response":"A Physical Resource Block."}\n');
    await write('j.jsonl', '{"q":"What is a gNB?","a":"A 5G base station."}\n');
    expect(await read(files(['i.jsonl'], { role: 'instruct' }))).toEqual([
      { prompt: 'What is a PRB?', response: 'A Physical Resource Block.', origin: 'i.jsonl:1' },
    ]);
    expect(await read(files(['j.jsonl'], { role: 'instruct', promptField: 'q', responseField: 'a' }))).toEqual([
      { prompt: 'What is a gNB?', response: 'A 5G base station.', origin: 'j.jsonl:1' },
    ]);
  });

  it('honours an explicit format over the extension', async () => {
    await write('data.log', '{"text":"as jsonl"}\n');
    expect(await read(files(['data.log'], { format: 'jsonl' }))).toEqual([{ text: 'as jsonl', origin: 'data.log:1' }]);
    expect(await read(files(['data.log'], { format: 'text' }))).toEqual([{ text: '{"text":"as jsonl"}\n', origin: 'data.log' }]);
  });

  it('strips a UTF-8 byte order mark and keeps non-ASCII text', async () => {
    await write('bom.txt', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('Überblick — 5G 기지국', 'utf8')]));
    expect(await read(files(['bom.txt']))).toEqual([{ text: 'Überblick — 5G 기지국', origin: 'bom.txt' }]);
  });
});

describe('files source failures', () => {
  it('a missing file is SourceNotFound naming the path', async () => {
    const f = await failureOf(read(files(['nope.txt'])));
    expect(f).toMatchObject({ type: 'SourceNotFound', nonRetryable: true });
    expect(f.message).toContain('nope.txt');
  });

  it('a glob that matches nothing is SourceNotFound naming the glob', async () => {
    await write('data/a.md', 'only markdown here');
    const f = await failureOf(read(files(['data/**/*.txt'])));
    expect(f).toMatchObject({ type: 'SourceNotFound', nonRetryable: true });
    expect(f.message).toContain('data/**/*.txt');
  });

  it('a directory given as a file is SourceUnreadable', async () => {
    await fs.mkdir(path.join(dir, 'adir.txt'));
    const f = await failureOf(read(files(['adir.txt'])));
    expect(f).toMatchObject({ type: 'SourceUnreadable', nonRetryable: true });
    expect(f.message).toContain('adir.txt');
  });

  // root reads a file whatever its mode bits, so there the case cannot be made: skipped, not passed.
  const asRoot = process.getuid?.() === 0;
  (asRoot ? it.skip : it)(`a file without read permission is SourceUnreadable${asRoot ? ' (skipped: running as root, which ignores mode bits)' : ''}`, async () => {
    const file = await write('locked.txt', 'secret');
    await fs.chmod(file, 0o000);
    const f = await failureOf(read(files(['locked.txt'])));
    expect(f).toMatchObject({ type: 'SourceUnreadable', nonRetryable: true });
    expect(f.message).toContain('locked.txt');
  });

  it('a binary file is SourceInvalid', async () => {
    await write('blob.txt', Buffer.from([0x50, 0x4b, 0x03, 0x04, 0x00, 0x00, 0x41]));
    const f = await failureOf(read(files(['blob.txt'])));
    expect(f).toMatchObject({ type: 'SourceInvalid', nonRetryable: true });
    expect(f.message).toMatch(/blob\.txt.*binary/);
  });

  it('text that is not UTF-8 is SourceInvalid', async () => {
    await write('latin1.txt', Buffer.from([0x63, 0x61, 0x66, 0xe9, 0x20, 0x6e, 0x6f, 0x69, 0x72]));
    const f = await failureOf(read(files(['latin1.txt'])));
    expect(f).toMatchObject({ type: 'SourceInvalid', nonRetryable: true });
    expect(f.message).toMatch(/latin1\.txt.*UTF-8/);
  });

  it('an invalid JSON line is SourceInvalid naming file and line number', async () => {
    await write('bad.jsonl', '{"text":"ok"}\n{"text": oops}\n');
    const f = await failureOf(read(files(['bad.jsonl'])));
    expect(f).toMatchObject({ type: 'SourceInvalid', nonRetryable: true });
    expect(f.message).toContain('bad.jsonl:2');
    expect(f.message).toContain('invalid JSON');
  });

  it('an invalid JSON line is reported by file and line without quoting the line', async () => {
    const secret = 'planted secret sentence: the vault code is 4417';
    const line = `{"text": ${secret}}`;
    // V8's own message quotes the start of the offending text; the source error must not.
    expect(() => JSON.parse(line)).toThrow(/planted/);
    await write('leak.jsonl', `{"text":"fine"}\n\n${line}\n`);
    const f = await failureOf(read(files(['leak.jsonl'])));
    expect(f).toMatchObject({ type: 'SourceInvalid', nonRetryable: true });
    expect(f.message).toContain('leak.jsonl:3');
    expect(f.message).toContain('invalid JSON');
    expect(f.message).not.toMatch(/planted|secret|vault|4417/);
  });

  it('a JSON grammar error names the problem and its column, still without the text', async () => {
    await write('cut.jsonl', '  {"text": "planted secret sentence"\n');
    const f = await failureOf(read(files(['cut.jsonl'])));
    expect(f.message).toContain('cut.jsonl:1');
    // Column counts from the start of the line as written, leading spaces included.
    expect(f.message).toMatch(/expected ',' or '\}' after property value at column 37/);
    expect(f.message).not.toMatch(/planted|secret/);
  });

  it('a JSON line that is not an object is SourceInvalid', async () => {
    await write('arr.jsonl', '["text"]\n');
    const f = await failureOf(read(files(['arr.jsonl'])));
    expect(f).toMatchObject({ type: 'SourceInvalid' });
    expect(f.message).toContain('arr.jsonl:1');
  });

  it('a missing field is SourceInvalid naming line, field and setting', async () => {
    await write('m.jsonl', '{"text":"fine"}\n{"content":"wrong field"}\n');
    const f = await failureOf(read(files(['m.jsonl'])));
    expect(f).toMatchObject({ type: 'SourceInvalid', nonRetryable: true });
    expect(f.message).toContain('m.jsonl:2');
    expect(f.message).toContain('"text"');
    expect(f.message).toContain('textField');
    await write('p.jsonl', '{"prompt":"q only"}\n');
    const g = await failureOf(read(files(['p.jsonl'], { role: 'instruct' })));
    expect(g.message).toContain('"response"');
    expect(g.message).toContain('responseField');
  });

  it('an instruct source cannot read plain text files', async () => {
    await write('pairs.txt', 'Q: what? A: that.');
    const f = await failureOf(read(files(['pairs.txt'], { role: 'instruct' })));
    expect(f).toMatchObject({ type: 'SourceInvalid' });
    expect(f.message).toContain('.jsonl');
  });

  it('an unknown extension with format auto is SourceInvalid suggesting a format', async () => {
    await write('data.csv', 'a,b');
    const f = await failureOf(read(files(['data.csv'])));
    expect(f).toMatchObject({ type: 'SourceInvalid' });
    expect(f.message).toContain('format');
  });

  it('a file over maxFileBytes is refused', async () => {
    await write('big.txt', 'x'.repeat(2000));
    const f = await failureOf(read(files(['big.txt']), { maxFileBytes: 1000 }));
    expect(f).toMatchObject({ type: 'SourceTooLarge', nonRetryable: true });
  });

  it('paths outside allowedRoots are refused, including through ../ and symlinks', async () => {
    await write('allowed/ok.txt', 'inside');
    const outside = await write('elsewhere/secret.txt', 'outside');
    await fs.symlink(outside, path.join(dir, 'allowed', 'link.txt'));
    const roots = [path.join(dir, 'allowed')];
    expect(await read(files(['allowed/ok.txt']), { allowedRoots: roots })).toHaveLength(1);
    for (const p of ['elsewhere/secret.txt', 'allowed/../elsewhere/secret.txt', 'allowed/link.txt', 'elsewhere/**/*.txt', outside]) {
      const f = await failureOf(read(files([p]), { allowedRoots: roots }));
      expect(f).toMatchObject({ type: 'SourceOutsideRoots', nonRetryable: true });
    }
  });
});

describe('postgres sources', () => {
  const envName = 'TEST_SOURCES_URL';
  let db: TestDatabase;

  beforeAll(async () => {
    db = await createTestDatabase();
    await db.pool.query(`
      CREATE TABLE notes (id int PRIMARY KEY, body text, question text, answer text);
      INSERT INTO notes VALUES
        (1, 'PRB utilisation peaked at 91 %.', 'What is a PRB?', 'A Physical Resource Block.'),
        (2, 'The gNB restarted after a GPS alarm.', 'What is a gNB?', 'A 5G base station.'),
        (3, NULL, 'Empty?', 'Yes.');`);
  });

  afterAll(async () => {
    delete process.env[envName];
    await db?.drop();
  });

  beforeEach(() => {
    process.env[envName] = db.url;
  });

  const pgSource = (query: string, extra: Partial<Extract<Source, { kind: 'postgres' }>> = {}): Source => ({
    kind: 'postgres', role: 'domain', query, connectionEnv: envName, ...extra,
  });

  it('reads the text column of a query, in query order', async () => {
    const docs = await read(pgSource('SELECT body AS text FROM notes WHERE body IS NOT NULL ORDER BY id'));
    expect(docs).toEqual([
      { text: 'PRB utilisation peaked at 91 %.', origin: `postgres:${envName}#1` },
      { text: 'The gNB restarted after a GPS alarm.', origin: `postgres:${envName}#2` },
    ]);
  });

  it('reads custom text, prompt and response columns', async () => {
    expect(await read(pgSource('SELECT body FROM notes WHERE id = 1', { textColumn: 'body' }))).toEqual([
      { text: 'PRB utilisation peaked at 91 %.', origin: `postgres:${envName}#1` },
    ]);
    const pairs = await read(pgSource('SELECT question, answer FROM notes WHERE id < 3 ORDER BY id', { role: 'instruct', promptColumn: 'question', responseColumn: 'answer' }));
    expect(pairs).toEqual([
      { prompt: 'What is a PRB?', response: 'A Physical Resource Block.', origin: `postgres:${envName}#1` },
      { prompt: 'What is a gNB?', response: 'A 5G base station.', origin: `postgres:${envName}#2` },
    ]);
  });

  it('runs the query read-only: writes fail and change nothing', async () => {
    const f = await failureOf(read(pgSource("INSERT INTO notes VALUES (9, 'x', 'y', 'z') RETURNING body AS text")));
    expect(f).toMatchObject({ type: 'SourceQueryFailed', nonRetryable: true });
    expect(f.message).toContain('read-only transaction');
    const sneaky = await failureOf(read(pgSource("SELECT 'a' AS text; COMMIT; DELETE FROM notes")));
    expect(sneaky.type).toBe('SourceQueryFailed');
    const { rows } = await db.pool.query<{ n: string }>('SELECT count(*) AS n FROM notes');
    expect(rows[0].n).toBe('3');
  });

  it('a failing query is SourceQueryFailed with the database message and without the URL', async () => {
    const f = await failureOf(read(pgSource('SELECT text FROM no_such_table')));
    expect(f).toMatchObject({ type: 'SourceQueryFailed', nonRetryable: true });
    expect(f.message).toContain('relation "no_such_table" does not exist');
    expect(f.message).not.toContain(db.url);
    expect(f.message).not.toContain('postgres://');
  });

  it('a query that fails on a value reports the SQLSTATE and the fix without quoting the value', async () => {
    const secret = 'planted secret sentence';
    const literal = await failureOf(read(pgSource(`SELECT CAST('${secret}' AS integer)::text AS text`)));
    expect(literal).toMatchObject({ type: 'SourceQueryFailed', nonRetryable: true });
    expect(literal.message).toContain('SQLSTATE 22P02 (invalid_text_representation)');
    expect(literal.message).toContain('psql');
    expect(literal.message).not.toContain(secret);
    // The same from a stored row, where Postgres's message would quote the document itself.
    await db.pool.query("CREATE TABLE secrets (body text); INSERT INTO secrets VALUES ('planted secret sentence in a row')");
    const row = await failureOf(read(pgSource('SELECT (body::integer)::text AS text FROM secrets')));
    expect(row.message).toContain('SQLSTATE 22P02');
    expect(row.message).not.toMatch(/planted|secret sentence/);
    const server = await db.pool.query('SELECT body::integer FROM secrets').then(() => '', (err: Error) => err.message);
    expect(server).toContain('planted secret sentence in a row');
  });

  it('a missing column or NULL value is SourceInvalid naming the column and the fix', async () => {
    const missing = await failureOf(read(pgSource('SELECT body FROM notes')));
    expect(missing).toMatchObject({ type: 'SourceInvalid' });
    expect(missing.message).toContain('"text"');
    expect(missing.message).toContain('textColumn');
    const nulls = await failureOf(read(pgSource('SELECT body AS text FROM notes ORDER BY id')));
    expect(nulls).toMatchObject({ type: 'SourceInvalid' });
    expect(nulls.message).toContain('row 3');
    expect(nulls.message).toContain('NULL');
  });

  it('a missing environment variable is SourceEnvMissing naming only the variable', async () => {
    delete process.env[envName];
    const f = await failureOf(read(pgSource('SELECT 1')));
    expect(f).toMatchObject({ type: 'SourceEnvMissing', nonRetryable: true });
    expect(f.message).toContain(envName);
  });

  it('a wrong password is reported without revealing it', async () => {
    const server = new URL(db.url);
    server.password = 'hunter2-secret';
    server.username = 'dacp_no_such_user';
    process.env[envName] = server.toString();
    const f = await failureOf(read(pgSource('SELECT 1')));
    expect(f.type).toBe('SourceConnectFailed');
    expect(f.message).not.toContain('hunter2-secret');
    expect(f.message).toContain(envName);
  });

  it('an unreachable server is a retryable connection failure', async () => {
    process.env[envName] = 'postgres://postgres:pw-secret@127.0.0.1:1/postgres';
    const f = await failureOf(read(pgSource('SELECT 1')));
    expect(f).toMatchObject({ type: 'SourceConnectFailed', nonRetryable: false });
    expect(f.message).not.toContain('pw-secret');
  });

  it('closes its connection, on success and on failure', async () => {
    await read(pgSource("SELECT 'x' AS text"));
    await failureOf(read(pgSource('SELECT text FROM no_such_table')));
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    // A backend leaves pg_stat_activity a moment after its client hangs up.
    let open = -1;
    for (let attempt = 0; attempt < 50 && open !== 0; attempt++) {
      if (attempt > 0) await new Promise((resolve) => setTimeout(resolve, 50));
      const { rows } = await admin.query<{ n: string }>('SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1', [sourceApplicationName]);
      open = Number(rows[0].n);
    }
    await admin.end();
    expect(open).toBe(0);
  });
});
