import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Pool } from 'pg';
import { ArtifactStore, hashFile } from '../activities/artifacts';
import { copyFolderOut, storeFolderFromDisk } from '../activities/modelFolders';
import { withTransaction } from '../db/pool';
import { findModelVersion, importModelVersion, listModelVersions, moveAlias } from '../db/records';
import { initBackend } from '../ml/backend';
import { folderFilesOfModelFile, readHfFolder, UnsupportedModelError, writeFolder } from '../ml/hfFolder';
import { familyOfConfig, parameterCountOf, parseAnyModelConfig } from '../ml/families';
import { modelFileTensors, RESERVED_KEYS } from '../ml/modelFile';
import { InputError } from '../schemas/runSpec';

/**
 * `dacp models import | export | list`: model folders in and out of the registry. A model is
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
  const store = new ArtifactStore(ctx.artifactsDir);
  // Written tensor by tensor: a model of several GB is never one Buffer.
  const ref = await store.putSafetensors('models', data.tensors, data.metadata);
  // The folder itself, as the user gave it (weights in their own dtype), streamed file by file.
  const folder = await storeFolderFromDisk(store, from, Object.keys(files));
  const lineage = { kind: 'imported', family, dtype, parameters, files };
  return withTransaction(ctx.pool, async (client) => {
    const { versionId, existed } = await importModelVersion(client, { name: o.name, model: ref, lineage, folder });
    // Each import that names an alias moves it (a deployment row per move): importing a version again
    // with --alias points the alias back at it.
    const moved = o.alias !== undefined ? await moveAlias(client, { runId: `import:${versionId}:${randomUUID()}`, alias: o.alias, versionId }) : undefined;
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
  const store = new ArtifactStore(ctx.artifactsDir);
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
  const store = new ArtifactStore(ctx.artifactsDir);
  const versions = await listModelVersions(ctx.pool);
  const out: ListedModel[] = [];
  for (const v of versions) {
    const header = await readModelHeader(store.pathOf(v.uri)).catch(() => null);
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

/** The config in a dacp model file's safetensors header, read without its weights. */
async function readModelHeader(file: string): Promise<{ family: string; parameters: number }> {
  const handle = await fs.open(file, 'r');
  try {
    const size = Buffer.alloc(8);
    await handle.read(size, 0, 8, 0);
    const length = Number(size.readBigUInt64LE(0));
    if (length > 100_000_000) throw new Error('header too large');
    const header = Buffer.alloc(length);
    await handle.read(header, 0, length, 8);
    const metadata = (JSON.parse(header.toString('utf8')) as { __metadata__?: Record<string, string> }).__metadata__ ?? {};
    const config = parseAnyModelConfig(JSON.parse(metadata[RESERVED_KEYS.config] ?? 'null'));
    return { family: familyOfConfig(config), parameters: parameterCountOf(config) };
  } finally {
    await handle.close();
  }
}

const millions = (n: number | null) => (n === null ? '?' : n >= 1e6 ? `${(n / 1e6).toFixed(1)} M` : `${(n / 1e3).toFixed(1)} k`);

export function formatModels(models: ListedModel[]): string {
  if (models.length === 0) return 'no model versions yet';
  return models
    .map((m) => `${m.versionId.padEnd(28)} ${m.aliases.join(',').padEnd(12)} ${String(m.lineage.kind ?? 'model').padEnd(9)} ${m.family.padEnd(5)} ${millions(m.parameters).padStart(8)}  parent ${m.parentVersionId ?? '–'}  run ${m.runId ?? '–'}  sha256 ${m.sha256.slice(0, 16)}…`)
    .join('\n');
}
