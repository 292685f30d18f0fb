/**
 * Reading one run source into documents: files and globs (plain text, Markdown, JSON lines) or a
 * read-only Postgres query. Called from the collect activity; every expected failure is a
 * non-retryable ApplicationFailure with a type name and a one-line message that says what to fix.
 * The caller prefixes messages with the source's index. Messages name files, lines, columns and
 * fields but never quote document text: they land in workflow history, logs and the run record.
 */
import { checkConnectionEnv, checkS3Source } from '../workers/policy';
import { createHash } from 'node:crypto';
import { promises as fs, type Dirent } from 'node:fs';
import path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import { Client, type QueryConfig, type QueryResult } from 'pg';

export type SourceRole = 'domain' | 'replay' | 'instruct';
export type Source =
  | { kind: 'files'; role: SourceRole; paths: string[]; format?: 'auto' | 'text' | 'jsonl'; textField?: string; promptField?: string; responseField?: string }
  | { kind: 'postgres'; role: SourceRole; query: string; textColumn?: string; promptColumn?: string; responseColumn?: string; connectionEnv?: string; watermarkColumn?: string }
  | { kind: 's3'; role: SourceRole; bucket: string; prefix?: string; glob?: string; format?: 'auto' | 'text' | 'jsonl'; textField?: string; promptField?: string; responseField?: string };
export type SourceDoc = { text: string; origin: string } | { prompt: string; response: string; origin: string };

export interface ReadSourceOptions {
  /** Directory that relative paths and globs are resolved against. */
  baseDir: string;
  /** When given, files must lie (after resolving symlinks) below one of these directories. */
  allowedRoots?: string[];
  /** Largest file read; bigger ones are refused rather than loaded into memory. */
  maxFileBytes?: number;
  /** Only check that the source names something readable (objects are listed, not read): `run start`'s preflight. */
  listOnly?: boolean;
}

export const defaultMaxFileBytes = 256 * 1024 * 1024;

/**
 * How far a schedule has read a source. Files: the sha256 of every file seen, by its path as the
 * spec shows it (a file is new or changed when its content's hash is not among them). Postgres: the greatest value
 * of the watermark column read, as text.
 */
export type Watermark = { kind: 'files'; files: Record<string, string> } | { kind: 'postgres'; column: string; max: string | null };

export interface ReadSince {
  docs: SourceDoc[];
  /** The watermark after this read: what the next run starts from once this one has succeeded. */
  next: Watermark;
  /** Files whose content was read before (unchanged, or a copy), left out. (Rows at or below a Postgres watermark are not counted.) */
  skippedFiles: number;
}

/**
 * Read only what is new since `used` (null: the first read, everything). Files are kept whole when
 * their content hash is new; rows when their watermark column exceeds the last maximum.
 */
export async function readSourceSince(source: Source, o: ReadSourceOptions, used: Watermark | null): Promise<ReadSince> {
  if (source.kind === 'files' || source.kind === 's3') {
    const known = used?.kind === 'files' ? used.files : {};
    const seen: Record<string, string> = {};
    // Content already read, under this path or another (a copy of a file is not new data).
    const knownContent = new Set(Object.values(known));
    const docs = source.kind === 'files' ? await readFileSource(source, o, { known: knownContent, seen }) : await readS3Source(source, o, { known: knownContent, seen });
    const skippedFiles = Object.values(seen).filter((sha) => knownContent.has(sha)).length;
    return { docs, next: { kind: 'files', files: { ...known, ...seen } }, skippedFiles };
  }
  const column = source.watermarkColumn;
  if (column === undefined) throw new Error('a watermarked Postgres source needs watermarkColumn');
  const since = used?.kind === 'postgres' && used.column === column ? used.max : null;
  const { docs, max } = await readPostgresRows(source, { column, since });
  return { docs, next: { kind: 'postgres', column, max: max ?? since }, skippedFiles: 0 };
}

export type SourceFailureType =
  | 'SourceNotFound' | 'SourceUnreadable' | 'SourceInvalid' | 'SourceTooLarge'
  | 'SourceQueryFailed' | 'SourceOutsideRoots' | 'SourceEnvMissing' | 'SourceConnectFailed' | 'SourceNotAllowed';

function fail(type: SourceFailureType, message: string): never {
  throw ApplicationFailure.nonRetryable(message, type);
}

export async function readSource(source: Source, o: ReadSourceOptions): Promise<SourceDoc[]> {
  return source.kind === 'files' ? readFileSource(source, o) : source.kind === 's3' ? readS3Source(source, o) : readPostgresSource(source);
}

// ---------------------------------------------------------------- s3

type S3Source = Extract<Source, { kind: 's3' }>;

/**
 * Objects under `s3://bucket/prefix` whose key (below the prefix) matches the glob, read by
 * whichever worker runs collect, with that worker's AWS settings (AWS_ENDPOINT_URL, AWS_REGION,
 * the credential chain). Each object is shown as `s3://bucket/key`; the rest is as for files.
 */
async function readS3Source(source: S3Source, o: ReadSourceOptions, since?: { known: Set<string>; seen: Record<string, string> }): Promise<SourceDoc[]> {
  const { ListObjectsV2Command, GetObjectCommand } = await import('@aws-sdk/client-s3');
  const { s3Client } = await import('./objectStore');
  // A prefix is a folder: "team" lists team/…, never team-a/… (S3 prefixes are plain strings).
  const trimmed = (source.prefix ?? '').replace(/^\/+|\/+$/g, '');
  const prefix = trimmed ? `${trimmed}/` : '';
  const base = `s3://${source.bucket}/${prefix}`;
  checkS3Source(source.bucket, prefix);
  let client;
  try {
    client = s3Client();
  } catch (err) {
    return fail('SourceConnectFailed', `${base}: ${describe(err)}`);
  }
  const matcher = globToRegExp((source.glob ?? '**').split('/'));
  const maxBytes = o.maxFileBytes ?? defaultMaxFileBytes;
  try {
    const keys: { key: string; size: number }[] = [];
    let token: string | undefined;
    do {
      let page;
      try {
        page = await client.send(new ListObjectsV2Command({ Bucket: source.bucket, Prefix: prefix || undefined, ContinuationToken: token }));
      } catch (err) {
        return fail('SourceConnectFailed', `${base}: cannot list objects (${(err as Error).name}: ${describe(err)}); check the bucket, the prefix and the worker's AWS settings`);
      }
      for (const item of page.Contents ?? []) {
        if (!item.Key || item.Key.endsWith('/')) continue;
        const relative = item.Key.slice(prefix.length).replace(/^\/+/, '');
        if (matcher.test(relative)) keys.push({ key: item.Key, size: item.Size ?? 0 });
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    if (keys.length === 0) fail('SourceNotFound', `${base}: no object matches ${source.glob ?? '**'}; check the bucket, the prefix and the glob`);
    keys.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    if (o.listOnly) return [];
    const docs: SourceDoc[] = [];
    for (const { key, size } of keys) {
      const shown = `s3://${source.bucket}/${key}`;
      if (size > maxBytes) fail('SourceTooLarge', `${shown} is ${size} bytes, over the ${maxBytes}-byte limit; split it into smaller objects`);
      let bytes: Buffer;
      try {
        const got = await client.send(new GetObjectCommand({ Bucket: source.bucket, Key: key }));
        bytes = Buffer.from(await got.Body!.transformToByteArray());
      } catch (err) {
        return fail('SourceUnreadable', `${shown}: cannot read (${(err as Error).name}: ${describe(err)})`);
      }
      const text = decodeUtf8(bytes, shown, since ? (sha) => (since.seen[shown] = sha) : undefined);
      if (since && since.known.has(since.seen[shown] as string)) continue;
      docs.push(...documentsOf(text, key, shown, source));
    }
    return docs;
  } finally {
    client.destroy();
  }
}

// ---------------------------------------------------------------- files

type FileSource = Extract<Source, { kind: 'files' }>;

async function readFileSource(
  source: FileSource,
  o: ReadSourceOptions,
  /** With a watermark: files whose sha256 is in `known` are skipped; every file's hash goes into `seen`, by path. */
  since?: { known: Set<string>; seen: Record<string, string> },
): Promise<SourceDoc[]> {
  const roots = o.allowedRoots ? await Promise.all(o.allowedRoots.map((r) => realOrResolved(path.resolve(o.baseDir, r)))) : undefined;
  const files = new Set<string>();
  for (const entry of source.paths) {
    for (const file of await expandPath(entry, o.baseDir, roots)) files.add(file);
  }
  const docs: SourceDoc[] = [];
  for (const file of [...files].sort()) {
    const shown = displayPath(file, o.baseDir);
    if (roots) await ensureInsideRoots(file, shown, roots);
    const text = await readUtf8(file, shown, o.maxFileBytes ?? defaultMaxFileBytes, since ? (sha) => (since.seen[shown] = sha) : undefined);
    if (since && since.known.has(since.seen[shown] as string)) continue;
    docs.push(...documentsOf(text, file, shown, source));
  }
  return docs;
}

/** One file's (or object's) documents: the whole text, or one per JSON line. */
function documentsOf(text: string, file: string, shown: string, source: FileSource | S3Source): SourceDoc[] {
  const format = formatOf(source.format ?? 'auto', file, shown);
  if (format === 'text') {
    if (source.role === 'instruct') {
      fail('SourceInvalid', `${shown}: an instruct source needs prompt/response pairs; give a .jsonl file with "${source.promptField ?? 'prompt'}" and "${source.responseField ?? 'response'}" fields`);
    }
    return [{ text, origin: shown }];
  }
  return parseJsonl(text, shown, source);
}

/**
 * The files a files source names, absolute and sorted, each checked to exist and to lie inside the
 * allowed roots (what `dacp run start` stages into the artifact store).
 */
export async function sourceFiles(source: FileSource, o: ReadSourceOptions): Promise<string[]> {
  const roots = o.allowedRoots ? await Promise.all(o.allowedRoots.map((r) => realOrResolved(path.resolve(o.baseDir, r)))) : undefined;
  const files = new Set<string>();
  for (const entry of source.paths) {
    for (const file of await expandPath(entry, o.baseDir, roots)) files.add(file);
  }
  const sorted = [...files].sort();
  if (roots) for (const file of sorted) await ensureInsideRoots(file, displayPath(file, o.baseDir), roots);
  return sorted;
}

export function displayPath(file: string, baseDir: string): string {
  const relative = path.relative(path.resolve(baseDir), file);
  return relative.startsWith('..') || path.isAbsolute(relative) ? file : relative.split(path.sep).join('/');
}

async function realOrResolved(p: string): Promise<string> {
  try {
    return await fs.realpath(p);
  } catch {
    return path.resolve(p);
  }
}

function isInside(file: string, root: string): boolean {
  const relative = path.relative(root, file);
  return relative === '' || (!relative.startsWith('..') && !path.isAbsolute(relative));
}

async function ensureInsideRoots(file: string, shown: string, roots: string[]): Promise<void> {
  const real = await realOrResolved(file);
  if (!roots.some((root) => isInside(real, root))) {
    fail('SourceOutsideRoots', `${shown} is outside the allowed source roots (${roots.join(', ')}); move the data below one of them (the worker reads DACP_DATA_ROOTS, or without it the spec's folder; a spec's dataRoots only narrow that)`);
  }
}

async function ensureExists(entry: string, absolute: string, baseDir: string): Promise<void> {
  try {
    await fs.stat(absolute);
  } catch (err) {
    if (errorCode(err) === 'ENOENT' || errorCode(err) === 'ENOTDIR') {
      fail('SourceNotFound', `${entry}: no such file (resolved to ${absolute}); check the path, which is relative to ${baseDir}`);
    }
    fail('SourceUnreadable', `${entry}: cannot access (${errorCode(err) ?? describe(err)}); check its permissions`);
  }
}

/**
 * One file the spec names outside `sources` (an evaluation set), read under the same rules as a
 * file source: resolved against baseDir, refused outside the allowed roots, size-limited, UTF-8.
 * A set is one file, so the path is taken literally, never as a glob.
 */
export async function readNamedFile(entry: string, o: ReadSourceOptions): Promise<{ text: string; shown: string }> {
  const roots = o.allowedRoots ? await Promise.all(o.allowedRoots.map((r) => realOrResolved(path.resolve(o.baseDir, r)))) : undefined;
  const absolute = path.resolve(o.baseDir, entry);
  await ensureExists(entry, absolute, o.baseDir);
  const shown = displayPath(absolute, o.baseDir);
  if (roots) await ensureInsideRoots(absolute, shown, roots);
  return { text: await readUtf8(absolute, shown, o.maxFileBytes ?? defaultMaxFileBytes), shown };
}

const globChars = /[*?]/;

/** A literal path, or a glob (`*`, `?`, `**`) expanded by walking below its literal prefix. */
async function expandPath(entry: string, baseDir: string, roots: string[] | undefined): Promise<string[]> {
  const absolute = path.resolve(baseDir, entry);
  const segments = absolute.split(path.sep);
  const firstGlob = segments.findIndex((s) => globChars.test(s));
  if (firstGlob === -1) {
    await ensureExists(entry, absolute, baseDir);
    return [absolute];
  }
  const prefix = segments.slice(0, firstGlob).join(path.sep) || path.sep;
  if (roots) {
    // Refuse before walking, so a glob cannot be used to probe directories outside the roots.
    const real = await realOrResolved(prefix);
    if (!roots.some((root) => isInside(real, root) || isInside(root, real))) {
      fail('SourceOutsideRoots', `${entry} is outside the allowed source roots (${roots.join(', ')}); move the data below one of them (the worker reads DACP_DATA_ROOTS, or without it the spec's folder; a spec's dataRoots only narrow that)`);
    }
  }
  const rest = segments.slice(firstGlob);
  const matcher = globToRegExp(rest);
  const maxDepth = rest.includes('**') ? Infinity : rest.length;
  const matches: string[] = [];
  await walk(prefix, [], maxDepth, (relative, full) => {
    if (matcher.test(relative.join('/'))) matches.push(full);
  });
  if (matches.length === 0) {
    fail('SourceNotFound', `${entry}: the glob matched no files (searched below ${prefix}); check the pattern and that the files exist`);
  }
  return matches;
}

/** `**` spans any number of directories, `*` and `?` stay within one path segment. */
export function globToRegExp(segments: string[]): RegExp {
  const escape = (s: string): string => s.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  const parts = segments.map((segment, i) => {
    const last = i === segments.length - 1;
    if (segment === '**') return last ? '.*' : '(?:[^/]+/)*';
    const body = segment
      .split('')
      .map((ch) => (ch === '*' ? '[^/]*' : ch === '?' ? '[^/]' : escape(ch)))
      .join('');
    return last ? body : `${body}/`;
  });
  return new RegExp(`^${parts.join('')}$`);
}

/** Visits files below `dir` in sorted order; hidden entries (leading dot) are skipped, symlinked directories not followed. */
async function walk(dir: string, relative: string[], maxDepth: number, visit: (relative: string[], full: string) => void): Promise<void> {
  if (relative.length >= maxDepth) return;
  let entries: Dirent[];
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch (err) {
    if (relative.length === 0 && errorCode(err) !== 'ENOENT') {
      fail('SourceUnreadable', `${dir}: cannot list the directory (${errorCode(err) ?? describe(err)}); check its permissions`);
    }
    return;
  }
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const entry of entries) {
    if (entry.name.startsWith('.')) continue;
    const full = path.join(dir, entry.name);
    const rel = [...relative, entry.name];
    if (entry.isDirectory()) await walk(full, rel, maxDepth, visit);
    else if (entry.isFile() || (entry.isSymbolicLink() && (await isFileTarget(full)))) visit(rel, full);
  }
}

async function isFileTarget(link: string): Promise<boolean> {
  try {
    return (await fs.stat(link)).isFile();
  } catch {
    return false;
  }
}

const textExtensions = new Set(['.txt', '.md', '.markdown', '.text']);
const jsonlExtensions = new Set(['.jsonl', '.ndjson']);

function formatOf(format: 'auto' | 'text' | 'jsonl', file: string, shown: string): 'text' | 'jsonl' {
  if (format !== 'auto') return format;
  const ext = path.extname(file).toLowerCase();
  if (textExtensions.has(ext)) return 'text';
  if (jsonlExtensions.has(ext)) return 'jsonl';
  return fail('SourceInvalid', `${shown}: cannot tell the format from the extension "${ext}"; use .txt, .md or .jsonl, or set format to "text" or "jsonl"`);
}

async function readUtf8(file: string, shown: string, maxBytes: number, onSha256?: (sha: string) => void): Promise<string> {
  let bytes: Buffer;
  try {
    const stat = await fs.stat(file);
    if (!stat.isFile()) fail('SourceUnreadable', `${shown} is not a regular file; point the source at files, or use a glob such as ${shown}/**/*.txt`);
    if (stat.size > maxBytes) fail('SourceTooLarge', `${shown} is ${stat.size} bytes, over the ${maxBytes}-byte limit; split it into smaller files`);
    bytes = await fs.readFile(file);
  } catch (err) {
    if (err instanceof ApplicationFailure) throw err;
    fail('SourceUnreadable', `${shown}: cannot read (${errorCode(err) ?? describe(err)}); check that it exists and is readable`);
  }
  return decodeUtf8(bytes, shown, onSha256);
}

function decodeUtf8(bytes: Buffer, shown: string, onSha256?: (sha: string) => void): string {
  onSha256?.(createHash('sha256').update(bytes).digest('hex'));
  if (bytes.includes(0)) fail('SourceInvalid', `${shown} looks binary (contains NUL bytes); give text, Markdown or JSON lines`);
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return fail('SourceInvalid', `${shown} is not valid UTF-8; convert it (e.g. iconv -t UTF-8) before using it`);
  }
}

function parseJsonl(text: string, shown: string, source: FileSource | S3Source): SourceDoc[] {
  const docs: SourceDoc[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '') continue;
    const where = `${shown}:${i + 1}`;
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch (err) {
      const column = lines[i].length - lines[i].trimStart().length;
      fail('SourceInvalid', `${where}: invalid JSON (${jsonProblem(err, column)}); each line must be one JSON object with its strings double-quoted and escaped — fix that line or remove it`);
    }
    if (typeof record !== 'object' || record === null || Array.isArray(record)) {
      fail('SourceInvalid', `${where}: expected a JSON object per line, got ${Array.isArray(record) ? 'an array' : typeof record}`);
    }
    const field = (name: string, setting: string): string => {
      const value: unknown = (record as Record<string, unknown>)[name];
      if (typeof value !== 'string') {
        const problem = value === undefined ? 'has no' : `has a non-string (${value === null ? 'null' : typeof value})`;
        fail('SourceInvalid', `${where}: record ${problem} "${name}" field; add it or set ${setting} to the field that holds it`);
      }
      return value;
    };
    if (source.role === 'instruct') {
      docs.push({ prompt: field(source.promptField ?? 'prompt', 'promptField'), response: field(source.responseField ?? 'response', 'responseField'), origin: where });
    } else {
      docs.push({ text: field(source.textField ?? 'text', 'textField'), origin: where });
    }
  }
  return docs;
}

/**
 * What is wrong with a JSON line, without its text: V8's SyntaxError messages quote the offending
 * part of the line ("Unexpected token 'p', "planted se"... is not valid JSON"), and a line is a
 * document that may hold secrets. Keeps only V8's grammar phrases and the column they point at.
 */
export function jsonProblem(err: unknown, leadingSpaces = 0): string {
  const message = err instanceof Error ? err.message : '';
  const position = /\bat position (\d+)/.exec(message);
  const where = position ? ` at column ${Number(position[1]) + leadingSpaces + 1}` : '';
  const grammar = /^(Unexpected end of JSON input|Unterminated string|Bad control character in string literal|Bad escaped character|Expected [^"]*?|Unexpected non-whitespace character after JSON|Exponent part is missing a number|No number after minus sign|Unterminated fractional number)(?= in JSON|$)/.exec(message);
  return `${grammar ? grammar[1].replace(/^\w/, (c) => c.toLowerCase()) : 'unexpected character'}${where}`;
}

// ---------------------------------------------------------------- postgres

type PostgresSource = Extract<Source, { kind: 'postgres' }>;

/** Network-level failures may heal on their own, so those stay retryable; everything else does not. */
const transientNetworkCodes = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', '57P03']);

/** Shows up in pg_stat_activity, so a DBA can tell what is reading. */
export const sourceApplicationName = 'dacp-source';

async function readPostgresSource(source: PostgresSource): Promise<SourceDoc[]> {
  return (await readPostgresRows(source)).docs;
}

/**
 * The query's rows, or with `watermark` only those whose column exceeds `since` (all of them when
 * it is null), and the greatest value of the column among them, as text. Both statements run in one
 * read-only, repeatable-read transaction, so the maximum belongs to exactly the rows read.
 */
async function readPostgresRows(source: PostgresSource, watermark?: { column: string; since: string | null }): Promise<{ docs: SourceDoc[]; max: string | null }> {
  if (!source.connectionEnv) fail('SourceNotAllowed', "a postgres source must name its connectionEnv (e.g. SOURCE_DATABASE_URL); dacp's own database is never a source");
  const envName = source.connectionEnv;
  checkConnectionEnv(envName);
  const url = process.env[envName];
  if (!url) fail('SourceEnvMissing', `environment variable ${envName} is not set; set it to the connection URL of the database to read, or set connectionEnv`);
  const scrub = secretScrubber(url);

  const client = new Client({ connectionString: url, connectionTimeoutMillis: 15_000, application_name: sourceApplicationName });
  // A dead connection emits 'error' outside any query; without a listener that would crash the worker.
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (err) {
    const message = `cannot connect to the database in ${envName}: ${scrub(describe(err))}; check that the server is up and the URL, user and password are right`;
    if (transientNetworkCodes.has(errorCode(err) ?? '')) throw ApplicationFailure.retryable(message, 'SourceConnectFailed');
    fail('SourceConnectFailed', message);
  }

  let result: QueryResult<Record<string, unknown>>;
  let max: string | null = null;
  // Whatever the variable is called, dacp's own database (its runs, votes and audit log) is never read as data.
  const own = await client.query(`SELECT to_regclass('dacp_schema_migrations') IS NOT NULL AS own`).catch(() => null);
  if (own?.rows[0]?.own) {
    await client.end().catch(() => undefined);
    fail('SourceNotAllowed', `${envName} points at dacp's own database (it holds dacp_schema_migrations); a source reads another database`);
  }
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    // The extended protocol runs exactly one statement, so `…; COMMIT; DELETE …` cannot leave the read-only transaction.
    if (watermark) {
      const column = `"${watermark.column}"`;
      const where = watermark.since === null ? '' : ` WHERE ${column} > $1`;
      const params = watermark.since === null ? [] : [watermark.since];
      const inner = source.query.replace(/;\s*$/, '');
      const rowsQuery: QueryConfig & { queryMode: 'extended' } = { text: `SELECT * FROM (${inner}) AS dacp_source${where} ORDER BY ${column}`, values: params, queryMode: 'extended' };
      result = await client.query<Record<string, unknown>>(rowsQuery);
      const maxQuery: QueryConfig & { queryMode: 'extended' } = { text: `SELECT max(${column})::text AS max FROM (${inner}) AS dacp_source${where}`, values: params, queryMode: 'extended' };
      max = ((await client.query<{ max: string | null }>(maxQuery)).rows[0]?.max ?? null);
    } else {
      const query: QueryConfig & { queryMode: 'extended' } = { text: source.query, queryMode: 'extended' };
      result = await client.query<Record<string, unknown>>(query);
    }
  } catch (err) {
    fail('SourceQueryFailed', `query failed: ${scrub(queryProblem(err))}; fix the query (it runs in a read-only transaction and must be a single SELECT)`);
  } finally {
    await client.query('ROLLBACK').catch(() => undefined);
    await client.end().catch(() => undefined);
  }

  const columns = result.fields.map((f) => f.name);
  const column = (row: Record<string, unknown>, index: number, name: string, setting: string): string => {
    if (!columns.includes(name)) {
      fail('SourceInvalid', `the query returns no column "${name}" (columns: ${columns.join(', ') || 'none'}); alias one with AS ${name} or set ${setting}`);
    }
    const value = row[name];
    if (typeof value !== 'string') {
      const what = value === null ? 'NULL' : `a ${typeof value}`;
      fail('SourceInvalid', `row ${index + 1}: column "${name}" is ${what}, not text; filter NULLs out or cast it with ${name}::text in the query`);
    }
    return value;
  };
  const docs = result.rows.map((row, i): SourceDoc => {
    const origin = `postgres:${envName}#${i + 1}`;
    if (source.role === 'instruct') {
      return { prompt: column(row, i, source.promptColumn ?? 'prompt', 'promptColumn'), response: column(row, i, source.responseColumn ?? 'response', 'responseColumn'), origin };
    }
    return { text: column(row, i, source.textColumn ?? 'text', 'textColumn'), origin };
  });
  return { docs, max };
}

/**
 * SQLSTATE classes whose messages name only the query's own text and the schema's identifiers
 * (syntax, unknown table or column, permissions, read-only transaction, cancellation), never row
 * values. Everything else, data exceptions (22) and constraint (23) errors above all, can quote a
 * value from the data, e.g. `invalid input syntax for type integer: "<the document's text>"`.
 */
const sqlstateClassesWithoutValues = new Set(['08', '0A', '25', '28', '3D', '3F', '42', '53', '57']);

/** Names of the conditions a source query commonly meets on bad data (PostgreSQL's appendix A). */
const sqlstateConditions: Record<string, string> = {
  '22001': 'string_data_right_truncation',
  '22003': 'numeric_value_out_of_range',
  '22007': 'invalid_datetime_format',
  '22008': 'datetime_field_overflow',
  '22012': 'division_by_zero',
  '22021': 'character_not_in_repertoire',
  '22023': 'invalid_parameter_value',
  '22P02': 'invalid_text_representation',
  '22P05': 'untranslatable_character',
  '21000': 'cardinality_violation',
  'P0001': 'raise_exception',
};

const sqlstateClassNames: Record<string, string> = {
  '21': 'cardinality violation',
  '22': 'data exception',
  '23': 'integrity constraint violation',
  '2F': 'SQL routine exception',
  '38': 'external routine exception',
  '39': 'external routine invocation exception',
  '40': 'transaction rollback',
  '54': 'program limit exceeded',
  '55': 'object not in prerequisite state',
  '58': 'system error',
  'HV': 'foreign data wrapper error',
  'P0': 'PL/pgSQL error',
  'XX': 'internal error',
};

/**
 * A failed query, described without row values: the database's own message where its class cannot
 * quote data, else the SQLSTATE, its name and the identifiers the server names (column, type, table).
 */
export function queryProblem(err: unknown): string {
  const code = errorCode(err);
  if (code === undefined || !/^[0-9A-Z]{5}$/.test(code)) return describe(err); // the driver's own error, not the server's
  if (sqlstateClassesWithoutValues.has(code.slice(0, 2))) return describe(err);
  const fields = err as { position?: unknown; column?: unknown; dataType?: unknown; table?: unknown };
  const named = [
    typeof fields.position === 'string' ? `at character ${fields.position} of the query` : '',
    typeof fields.table === 'string' ? `table "${fields.table}"` : '',
    typeof fields.column === 'string' ? `column "${fields.column}"` : '',
    typeof fields.dataType === 'string' ? `type ${fields.dataType}` : '',
  ].filter((part) => part !== '');
  const condition = sqlstateConditions[code] ?? sqlstateClassNames[code.slice(0, 2)] ?? 'database error';
  const onData = code.startsWith('22') || code.startsWith('23');
  return (
    `SQLSTATE ${code} (${condition})${named.length ? ` ${named.join(', ')}` : ''}: ` +
    `${onData ? 'a value in the data broke a cast, function or constraint' : 'the server stopped the query'} ` +
    "(the server's message is withheld because it can quote values from the data; run the query in psql to read it)"
  );
}

/** Removes the connection URL and its password from a message, in case a driver echoes them. */
function secretScrubber(url: string): (message: string) => string {
  const secrets = [url];
  try {
    const parsed = new URL(url);
    if (parsed.password) secrets.push(parsed.password, decodeURIComponent(parsed.password));
  } catch {
    // Not a URL (a key=value string, say): scrubbing the whole string is all we can do.
  }
  return (message) => secrets.filter((s) => s.length > 0).reduce((m, s) => m.split(s).join('***'), message);
}

function errorCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err) {
    const code = (err as { code: unknown }).code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}

function describe(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return message.replace(/\s+/g, ' ').trim() || (errorCode(err) ?? 'unknown error');
}
