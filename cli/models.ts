import { actingKey, signWith, type KeyFile } from './keys';
import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Pool } from 'pg';
import { hashFile, type ArtifactStore } from '../activities/artifacts';
import { openArtifactStore } from '../activities/objectStore';
import { copyFolderOut, storeFolderFromDisk } from '../activities/modelFolders';
import { withTransaction } from '../db/pool';
import { aliasHistory, findModelVersion, importModelVersion, listModelVersions, moveAlias, type AliasMove } from '../db/records';
import { initBackend } from '../ml/backend';
import { folderFilesOfModelFile, readHfFolder, UnsupportedModelError, writeFolder } from '../ml/hfFolder';
import { familyOfConfig, parameterCountOf, parseAnyModelConfig } from '../ml/families';
import { modelFileTensors, RESERVED_KEYS } from '../ml/modelFile';
import { InputError } from '../schemas/runSpec';

/**
 * `dacp models import | export | list | show | promote | rollback`: model folders in and out of the
 * registry, one version's whole record, and aliases moved by hand. A model is
 * registered as dacp's model file (the weights in float32, with the folder's own tokenizer), so
 * every stage reads it like a model a run made; export writes it back as a plain Hugging Face folder.
 */

const NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;
const ALIAS = /^[a-z][a-z0-9-]{0,31}$/;

export interface RegistryContext {
  pool: Pool;
  artifactsDir: string;
}

export interface ImportResult {
  versionId: string;
  existed: boolean;
  family: string;
  dtype: string;
  parameters: number;
  alias?: string;
  /** What the alias pointed at before this import moved it. */
  previousVersionId?: string | null;
}

export async function importModel(ctx: RegistryContext, o: { name: string; from: string; alias?: string }): Promise<ImportResult> {
  if (!NAME.test(o.name)) throw new InputError(`model name "${o.name}": use 1–63 lowercase letters, digits, ".", "_" or "-"`);
  if (o.alias !== undefined && !ALIAS.test(o.alias)) throw new InputError(`--alias "${o.alias}": an alias is lowercase letters, digits and "-"`);
  const from = path.resolve(o.from);
  const stat = await fs.stat(from).catch(() => null);
  if (!stat?.isDirectory()) throw new InputError(`--from ${o.from}: not a folder; give the folder that holds config.json and model.safetensors`);
  await initBackend();
  let loaded;
  try {
    loaded = await readHfFolder(from);
  } catch (error) {
    if (error instanceof UnsupportedModelError) throw new InputError(`cannot import ${o.from}: ${error.message}`);
    throw error;
  }
  const { model, tokenizer, family, dtype, parameters, files } = loaded;
  let data: ReturnType<typeof modelFileTensors>;
  try {
    data = modelFileTensors(model, tokenizer);
  } finally {
    model.dispose();
  }
  const store = openArtifactStore(ctx.artifactsDir);
  // Written tensor by tensor: a model of several GB is never one Buffer.
  const ref = await store.putSafetensors('models', data.tensors, data.metadata);
  // The folder itself, as the user gave it (weights in their own dtype), streamed file by file.
  const folder = await storeFolderFromDisk(store, from, Object.keys(files));
  const lineage = { kind: 'imported', family, dtype, parameters, files };
  return withTransaction(ctx.pool, async (client) => {
    const { versionId, existed } = await importModelVersion(client, { name: o.name, model: ref, lineage, folder });
    // Each import that names an alias moves it (a deployment row per move): importing a version again
    // with --alias points the alias back at it.
    const moved = o.alias !== undefined ? await moveAlias(client, { runId: `import:${versionId}:${randomUUID()}`, alias: o.alias, versionId, kind: 'import' }) : undefined;
    return {
      versionId, existed, family, dtype, parameters,
      ...(o.alias !== undefined && moved ? { alias: o.alias, previousVersionId: moved.previousVersionId } : {}),
    };
  });
}

export interface ExportResult {
  versionId: string;
  out: string;
  /** sha256 of each file written, read back from disk. */
  files: Record<string, string>;
}

export async function exportModel(ctx: RegistryContext, o: { ref: string; out: string }): Promise<ExportResult> {
  const version = await findModelVersion(ctx.pool, o.ref);
  if (!version) throw new InputError(`no model version or alias "${o.ref}"; see \`dacp models list\``);
  const out = path.resolve(o.out);
  const existing = await fs.readdir(out).catch(() => null);
  if (existing && existing.length > 0) throw new InputError(`--out ${o.out} is not empty; give a new or empty folder (nothing there is overwritten)`);
  const store = openArtifactStore(ctx.artifactsDir);
  let expected: Record<string, string>;
  if (version.folder) {
    // Streamed out file by file, each checked against the sha256 its manifest records.
    const files = await copyFolderOut(store, version.folder, out);
    expected = Object.fromEntries(Object.entries(files).map(([name, ref]) => [name, ref.sha256]));
  } else {
    // Registered before folders: converted from the single-file model (read tensor by tensor, its sha256 verified).
    expected = await writeFolder(out, folderFilesOfModelFile(await store.getSafetensors({ uri: version.uri, sha256: version.sha256 })));
  }
  const written: Record<string, string> = {};
  for (const [name, sha256] of Object.entries(expected)) {
    const onDisk = await hashFile(path.join(out, name));
    if (onDisk !== sha256) throw new Error(`${path.join(out, name)} does not read back as written (sha256 ${onDisk}); the disk may be failing`);
    written[name] = onDisk;
  }
  return { versionId: version.versionId, out, files: written };
}

export interface ListedModel {
  versionId: string;
  name: string;
  aliases: string[];
  family: string;
  parameters: number | null;
  parentVersionId: string | null;
  runId: string | null;
  lineage: Record<string, unknown>;
  sha256: string;
  /** The Hugging Face folder's manifest (per-file sha256); null for versions registered before folders. */
  folder: { uri: string; sha256: string } | null;
  createdAt: string;
}

/** Every version, newest first; family and size from each model file's header (no weights are read). */
export async function listModels(ctx: RegistryContext): Promise<ListedModel[]> {
  const store = openArtifactStore(ctx.artifactsDir);
  const versions = await listModelVersions(ctx.pool);
  const out: ListedModel[] = [];
  for (const v of versions) {
    const header = await readModelHeader(store, { uri: v.uri }).catch(() => null);
    out.push({
      versionId: v.versionId,
      name: v.name,
      aliases: v.aliases,
      family: header?.family ?? String(v.lineage.family ?? 'gpt2'),
      parameters: typeof v.lineage.parameters === 'number' ? v.lineage.parameters : (header?.parameters ?? null),
      parentVersionId: v.parentVersionId,
      runId: v.runId,
      lineage: v.lineage,
      sha256: v.sha256,
      folder: v.folder ? { uri: v.folder.uri, sha256: v.folder.sha256 } : null,
      createdAt: v.createdAt,
    });
  }
  return out;
}

/** The config in a dacp model file's safetensors header, read without its weights (a ranged read from object storage). */
async function readModelHeader(store: ArtifactStore, ref: { uri: string }): Promise<{ family: string; parameters: number }> {
  const size = await store.readRange(ref, 0, 8);
  if (size.length < 8) throw new Error('not a safetensors file');
  const length = Number(size.readBigUInt64LE(0));
  if (length > 100_000_000) throw new Error('header too large');
  const header = await store.readRange(ref, 8, length);
  const metadata = (JSON.parse(header.toString('utf8')) as { __metadata__?: Record<string, string> }).__metadata__ ?? {};
  const config = parseAnyModelConfig(JSON.parse(metadata[RESERVED_KEYS.config] ?? 'null'));
  return { family: familyOfConfig(config), parameters: parameterCountOf(config) };
}

const millions = (n: number | null) => (n === null ? '?' : n >= 1e6 ? `${(n / 1e6).toFixed(1)} M` : `${(n / 1e3).toFixed(1)} k`);

export function formatModels(models: ListedModel[]): string {
  if (models.length === 0) return 'no model versions yet';
  return models
    .map((m) => `${m.versionId.padEnd(28)} ${m.aliases.join(',').padEnd(12)} ${String(m.lineage.kind ?? 'model').padEnd(9)} ${m.family.padEnd(5)} ${millions(m.parameters).padStart(8)}  parent ${m.parentVersionId ?? '–'}  run ${m.runId ?? '–'}  sha256 ${m.sha256.slice(0, 16)}…`)
    .join('\n');
}

// ---------------------------------------------------------------------------------------------
// One version in full, and moving aliases by hand

export interface ShownModel {
  versionId: string;
  name: string;
  kind: string;
  aliases: string[];
  sha256: string;
  runId: string | null;
  createdAt: string;
  /** This version, its parent, and so on back to the first base (a bootstrapped or imported model). */
  lineage: { versionId: string; kind: string; runId: string | null; sha256: string }[];
  /** The other version of the same run: the adapted model behind a tuned one, or the tuned one made from an adapted one. */
  linked: { adapted: string | null; tuned: string[] };
  datasets: { role: string; split: string; sha256: string; docs: number }[];
  evaluations: {
    forgetting: Record<string, unknown> | null;
    finalCheck: Record<string, unknown> | null;
    instruct: Record<string, unknown> | null;
    reports: { kind: string; round: number; passed: boolean; sha256: string }[];
  };
  approvals: { principal: string; decision: string; comment: string | null; decidedAt: string }[];
  /** Every alias move to or from this version, oldest first. */
  deployHistory: AliasMove[];
}

const kindOf = (v: { lineage: Record<string, unknown> }) => String(v.lineage.kind ?? (v.lineage.runId ? 'tuned' : 'model'));

export async function showModel(ctx: RegistryContext, ref: string): Promise<ShownModel> {
  const version = await findModelVersion(ctx.pool, ref);
  if (!version) throw new InputError(`no model version or alias "${ref}"; see \`dacp models list\``);
  const lineage: ShownModel['lineage'] = [];
  for (let at: typeof version | null = version; at; at = at.parentVersionId ? await findModelVersion(ctx.pool, at.parentVersionId) : null) {
    lineage.push({ versionId: at.versionId, kind: kindOf(at), runId: at.runId, sha256: at.sha256 });
    if (lineage.length > 10_000) break; // a chain is finite; this only guards against a corrupted cycle
  }
  const aliases = (await ctx.pool.query('SELECT alias FROM model_aliases WHERE version_id = $1 ORDER BY alias', [version.versionId])).rows.map((r) => r.alias as string);
  const tuned = (await ctx.pool.query(`SELECT version_id FROM model_versions WHERE parent_version_id = $1 AND lineage->>'kind' = 'tuned' ORDER BY created_at`, [version.versionId])).rows.map((r) => r.version_id as string);
  const reports = version.runId
    ? (await ctx.pool.query('SELECT kind, round, passed, sha256 FROM evaluations WHERE run_id = $1 ORDER BY id', [version.runId])).rows.map((r) => ({ kind: r.kind as string, round: Number(r.round), passed: Boolean(r.passed), sha256: r.sha256 as string }))
    : [];
  const approvals = version.runId
    ? (await ctx.pool.query('SELECT principal, decision, comment, decided_at FROM approvals WHERE run_id = $1 ORDER BY id', [version.runId])).rows.map((r) => ({ principal: r.principal as string, decision: r.decision as string, comment: (r.comment as string | null) ?? null, decidedAt: (r.decided_at as Date).toISOString() }))
    : [];
  const metrics = version.metrics as Record<string, Record<string, unknown> | undefined>;
  return {
    versionId: version.versionId,
    name: version.name,
    kind: kindOf(version),
    aliases,
    sha256: version.sha256,
    runId: version.runId,
    createdAt: version.createdAt,
    lineage,
    linked: { adapted: typeof version.lineage.adaptedVersionId === 'string' ? version.lineage.adaptedVersionId : null, tuned },
    datasets: Array.isArray(version.lineage.datasets) ? (version.lineage.datasets as ShownModel['datasets']) : [],
    evaluations: { forgetting: metrics.forgetting ?? null, finalCheck: metrics.finalCheck ?? null, instruct: metrics.instruct ?? null, reports },
    approvals,
    deployHistory: await aliasHistory(ctx.pool, { versionId: version.versionId }),
  };
}

const pct = (x: unknown) => (typeof x === 'number' ? `${(x * 100).toFixed(1)} %` : '–');

export function formatModel(m: ShownModel): string {
  const lines = [
    `${m.versionId}  (${m.kind}${m.aliases.length ? `; ${m.aliases.join(', ')}` : ''})`,
    `  sha256 ${m.sha256}`,
    `  run ${m.runId ?? '– (not made by a run)'}, registered ${m.createdAt}`,
    `  lineage: ${m.lineage.map((l) => `${l.versionId} (${l.kind})`).join(' ← ')}`,
  ];
  if (m.linked.adapted) lines.push(`  tuned from the adapted version ${m.linked.adapted}`);
  if (m.linked.tuned.length) lines.push(`  tuned versions made from it: ${m.linked.tuned.join(', ')}`);
  if (m.datasets.length) {
    lines.push('  datasets:');
    for (const d of m.datasets) lines.push(`    ${d.role.padEnd(9)} ${d.split.padEnd(8)} ${String(d.docs).padStart(7)} docs  sha256 ${d.sha256}`);
  }
  const gate = (name: string, r: Record<string, unknown> | null) =>
    r ? `  ${name}: ${r.passed ? 'passed' : 'failed'} — domain gain ${pct(r.domainGain)}, general regression ${pct(r.generalRegression)}` : null;
  for (const line of [gate('forgetting gate', m.evaluations.forgetting), gate('final check', m.evaluations.finalCheck)]) if (line) lines.push(line);
  for (const r of m.evaluations.reports) lines.push(`    report ${r.kind} round ${r.round}: ${r.passed ? 'passed' : 'failed'}  sha256 ${r.sha256}`);
  if (m.approvals.length) {
    lines.push('  approvals:');
    for (const a of m.approvals) lines.push(`    ${a.decidedAt}  ${a.principal} ${a.decision}${a.comment ? ` — ${a.comment}` : ''}`);
  }
  lines.push(m.deployHistory.length ? '  alias history:' : '  alias history: none');
  for (const d of m.deployHistory) lines.push(`    ${formatMoveLine(d)}`);
  return lines.join('\n');
}

function formatMoveLine(d: AliasMove): string {
  const who = d.actor ? ` by ${d.actor}` : d.kind === 'deploy' ? ` by run ${d.runId}` : '';
  return `${d.at}  ${d.kind.padEnd(8)} ${d.alias}: ${d.previousVersionId ?? '(unset)'} → ${d.versionId ?? '(removed)'}${who}${d.note ? ` — ${d.note}` : ''}`;
}

export function formatAliasMove(m: AliasMoveResult): string {
  return m.moved ? formatMoveLine(m.move) : `${m.alias} already points at ${m.versionId}; nothing moved`;
}

export type AliasMoveResult = { moved: true; alias: string; versionId: string; previousVersionId: string | null; move: AliasMove } | { moved: false; alias: string; versionId: string };

function checkAlias(alias: string): void {
  if (!ALIAS.test(alias)) throw new InputError(`--alias "${alias}": an alias is lowercase letters, digits and "-"`);
}

/** Point `alias` at an existing version, in one transaction with its history row. */
/** What an operator signs to move an alias: from what, to what, why, when, with which key. */
function signedMove(key: KeyFile, m: { alias: string; to: string; kind: 'promote' | 'rollback'; actor: string; note?: string }) {
  return (from: string | null) => {
    const statement = { format: 'dacp-alias-move/1', alias: m.alias, from, to: m.to, kind: m.kind, actor: m.actor, note: m.note ?? null, signedAt: new Date().toISOString(), keyId: key.keyId };
    return { statement, ...signWith(key, statement) };
  };
}

export async function promoteModel(ctx: RegistryContext, o: { versionId: string; alias: string; actor: string; note?: string; keyDir?: string }): Promise<AliasMoveResult> {
  const key = await actingKey(ctx.pool, o.actor, 'operator', 'move aliases', o.keyDir);
  checkAlias(o.alias);
  return withTransaction(ctx.pool, async (client) => {
    const version = await client.query('SELECT version_id FROM model_versions WHERE version_id = $1', [o.versionId]);
    if (!version.rows.length) {
      const alias = await client.query('SELECT version_id FROM model_aliases WHERE alias = $1', [o.versionId]);
      throw new InputError(
        alias.rows.length
          ? `"${o.versionId}" is an alias (of ${alias.rows[0].version_id}); promote names a version id`
          : `no model version "${o.versionId}"; see \`dacp models list\``,
      );
    }
    const current = await client.query('SELECT version_id FROM model_aliases WHERE alias = $1 FOR UPDATE', [o.alias]);
    if (current.rows[0]?.version_id === o.versionId) return { moved: false, alias: o.alias, versionId: o.versionId };
    const moved = await moveAlias(client, { runId: `promote:${randomUUID()}`, alias: o.alias, versionId: o.versionId, kind: 'promote', actor: o.actor, note: o.note, sign: signedMove(key, { alias: o.alias, to: o.versionId, kind: 'promote', actor: o.actor, note: o.note }) });
    const move = (await aliasHistory(client, { alias: o.alias })).find((m) => m.id === moved.deploymentId) as AliasMove;
    return { moved: true, alias: o.alias, versionId: o.versionId, previousVersionId: moved.previousVersionId, move };
  });
}

/**
 * Point `alias` back at the version it served before its current one. The history is a stack:
 * deploys, imports and promotes push a version, rollbacks pop one, so rolling back twice goes two
 * versions back rather than undoing the first rollback.
 */
export async function rollbackAlias(ctx: RegistryContext, o: { alias: string; actor: string; note?: string; keyDir?: string }): Promise<AliasMoveResult> {
  const key = await actingKey(ctx.pool, o.actor, 'operator', 'move aliases', o.keyDir);
  checkAlias(o.alias);
  return withTransaction(ctx.pool, async (client) => {
    const current = await client.query('SELECT version_id FROM model_aliases WHERE alias = $1 FOR UPDATE', [o.alias]);
    if (!current.rows.length) throw new InputError(`no alias "${o.alias}"; nothing to roll back`);
    const stack: string[] = [];
    for (const move of await aliasHistory(client, { alias: o.alias })) {
      if (move.kind === 'rollback') stack.pop();
      else stack.push(move.versionId as string);
    }
    const target = stack.length >= 2 ? stack[stack.length - 2] : undefined;
    if (stack[stack.length - 1] !== current.rows[0].version_id || target === undefined) {
      throw new InputError(`${o.alias} (${current.rows[0].version_id}) has no earlier version to roll back to; promote one by name with \`dacp models promote VERSION --alias ${o.alias}\``);
    }
    const moved = await moveAlias(client, { runId: `rollback:${randomUUID()}`, alias: o.alias, versionId: target, kind: 'rollback', actor: o.actor, note: o.note, sign: signedMove(key, { alias: o.alias, to: target, kind: 'rollback', actor: o.actor, note: o.note }) });
    const move = (await aliasHistory(client, { alias: o.alias })).find((m) => m.id === moved.deploymentId) as AliasMove;
    return { moved: true, alias: o.alias, versionId: target, previousVersionId: moved.previousVersionId, move };
  });
}
