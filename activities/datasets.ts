import type { DatasetManifest, DatasetRef, DatasetRole, DatasetSplit } from '../schemas/pipeline';
import type { ArtifactStore } from './artifacts';

export type TextDoc = { text: string };
export type PairDoc = { prompt: string; response: string };
export type DatasetDoc = TextDoc | PairDoc;

const MAX_SHARD_BYTES = 4 * 1024 * 1024;

export function docText(doc: DatasetDoc): string {
  return 'text' in doc ? doc.text : `${doc.prompt}\n${doc.response}`;
}

/**
 * Token count as the built-in byte-level tokenizer sees it (UTF-8 bytes plus an end-of-document
 * token). Counted before the base model is known, so it is the manifest's size measure, not a promise.
 */
function tokenCount(doc: DatasetDoc): number {
  return Buffer.byteLength(docText(doc), 'utf8') + 1;
}

/** Write docs as content-addressed JSONL shards plus a manifest; returns the manifest's reference. */
export async function writeDataset(
  store: ArtifactStore,
  role: DatasetRole,
  split: DatasetSplit,
  docs: DatasetDoc[],
): Promise<DatasetRef> {
  const shards: DatasetManifest['shards'] = [];
  let lines: string[] = [];
  let size = 0;
  const flush = async () => {
    if (lines.length === 0) return;
    const data = Buffer.from(lines.join('\n') + '\n', 'utf8');
    const ref = await store.put('datasets', data, 'jsonl');
    shards.push({ uri: ref.uri, sha256: ref.sha256, docs: lines.length, bytes: ref.bytes });
    lines = [];
    size = 0;
  };
  let tokens = 0;
  for (const doc of docs) {
    const line = JSON.stringify(doc);
    if (size + line.length > MAX_SHARD_BYTES) await flush();
    lines.push(line);
    size += line.length + 1;
    tokens += tokenCount(doc);
  }
  await flush();
  const manifest: DatasetManifest = {
    format: 'dacp-dataset/1',
    role,
    split,
    docs: docs.length,
    bytes: shards.reduce((sum, s) => sum + s.bytes, 0),
    tokens,
    shards,
  };
  const ref = await store.putJson('manifests', manifest);
  return { ...ref, role, split, docs: manifest.docs, dataBytes: manifest.bytes, tokens };
}

/** Read every document of a dataset, verifying the manifest and each shard against their hashes. */
export async function readDataset<T extends DatasetDoc = DatasetDoc>(store: ArtifactStore, ref: DatasetRef): Promise<T[]> {
  const manifest = await store.getJson<DatasetManifest>(ref);
  const docs: T[] = [];
  for (const shard of manifest.shards) {
    const text = (await store.get(shard)).toString('utf8');
    for (const line of text.split('\n')) if (line) docs.push(JSON.parse(line) as T);
  }
  return docs;
}
