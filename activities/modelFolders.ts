import { existsSync, promises as fs } from 'node:fs';
import { log } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import path from 'node:path';
import { folderFilesOfModelFile, type FolderFiles } from '../ml/hfFolder';
import type { ArtifactRef } from '../schemas/pipeline';
import type { ArtifactStore } from './artifacts';

/**
 * Registered models as Hugging Face folders: each file a content-addressed artifact, and the folder
 * a manifest of them, so every file is verified on every read. Large files are streamed in and out
 * (`putFile`, `copyOut`), never held in memory whole. Runs still train from dacp's single-file model
 * (the `uri` of a version), which holds the same weights in float32.
 */

export const FOLDER_FORMAT = 'dacp-model-folder/1';

export interface FolderManifest {
  format: typeof FOLDER_FORMAT;
  /** File name → the artifact that holds it. */
  files: Record<string, ArtifactRef>;
}

const extensionOf = (name: string) => (name.endsWith('.safetensors') ? 'safetensors' : name.endsWith('.json') ? 'json' : 'bin');

/** A user's folder as it is on disk (the files `names`, plus generation_config.json if present), streamed into the store. */
export async function storeFolderFromDisk(store: ArtifactStore, dir: string, names: string[]): Promise<ArtifactRef> {
  const files: Record<string, ArtifactRef> = {};
  const all = [...new Set([...names, ...(existsSync(path.join(dir, 'generation_config.json')) ? ['generation_config.json'] : [])])].sort();
  for (const name of all) files[name] = await store.putFile('model-files', path.join(dir, name), extensionOf(name));
  return store.putJson('model-folders', { format: FOLDER_FORMAT, files } satisfies FolderManifest);
}

/**
 * A model a run made (dacp's single file) stored as a folder too; the same bytes give the same
 * manifest. Undefined, with a warning, for a model that has no folder form (a BPE whose merges
 * make one string twice cannot be a Hugging Face tokenizer): it is registered without one, and
 * export then says why.
 */
export async function storeModelAsFolder(store: ArtifactStore, model: { uri: string; sha256: string }): Promise<ArtifactRef | undefined> {
  let generated: FolderFiles;
  try {
    generated = folderFilesOfModelFile(await store.getSafetensors(model));
  } catch (error) {
    if (error instanceof ApplicationFailure) throw error; // a missing or corrupted artifact
    log.warn('model registered without a Hugging Face folder', { model: model.uri, reason: error instanceof Error ? error.message : String(error) });
    return undefined;
  }
  const files: Record<string, ArtifactRef> = {};
  for (const [name, data] of Object.entries(generated)) {
    files[name] = Buffer.isBuffer(data) ? await store.put('model-files', data, extensionOf(name)) : await store.putSafetensors('model-files', data.tensors, data.metadata);
  }
  return store.putJson('model-folders', { format: FOLDER_FORMAT, files } satisfies FolderManifest);
}

/** A stored folder written out into `out`, file by file, each checked against its sha256 as it streams. */
export async function copyFolderOut(store: ArtifactStore, manifest: { uri: string; sha256: string }, out: string): Promise<Record<string, ArtifactRef>> {
  const folder = await store.getJson<FolderManifest>(manifest);
  if (folder.format !== FOLDER_FORMAT) throw new Error(`model folder ${manifest.uri} has format ${String(folder.format)}, expected ${FOLDER_FORMAT}`);
  await fs.mkdir(out, { recursive: true });
  for (const [name, ref] of Object.entries(folder.files)) {
    if (name.includes('/') || name.includes('\\') || name.startsWith('.')) throw new Error(`model folder ${manifest.uri} names a file outside the folder: ${name}`);
    await store.copyOut(ref, path.join(out, name));
  }
  return folder.files;
}
