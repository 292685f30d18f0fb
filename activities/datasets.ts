import { log } from '@temporalio/activity';
import type { Pool } from 'pg';
import { findTokenCache, recordTokenCache, type TokenCacheKey } from '../db/records';
import { encodeInstructionPrompt } from '../ml/mixing';
import { encodeDocuments, forEachPaced, type PaceOptions, type Tokenizer } from '../ml/tokenizer';
import type { DatasetManifest, DatasetRef, DatasetRole, DatasetSplit } from '../schemas/pipeline';
import { sha256Hex, type ArtifactStore } from './artifacts';

/** `source`: the name of the domain source it came from, where a run weighs several (`domainRatio`). */
/** `languages`: the ISO 639-3 codes the source expects, only between collect and quality (never in the cleaned datasets). */
export type TextDoc = { text: string; source?: string; languages?: string[] };
export type PairDoc = { prompt: string; response: string; languages?: string[] };
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

/**
 * Writes a dataset a document at a time: content-addressed JSONL shards of up to 4 MB, stored as
 * each fills, then the manifest. Memory holds one shard, whatever the dataset's size.
 */
export class DatasetWriter {
  private readonly shards: DatasetManifest['shards'] = [];
  private lines: string[] = [];
  private size = 0;
  private docs = 0;
  private tokens = 0;

  constructor(
    private readonly store: ArtifactStore,
    private readonly role: DatasetRole,
    private readonly split: DatasetSplit,
  ) {}

  async add(doc: DatasetDoc): Promise<void> {
    const line = JSON.stringify(doc);
    if (this.size + line.length > MAX_SHARD_BYTES) await this.flush();
    this.lines.push(line);
    this.size += line.length + 1;
    this.tokens += tokenCount(doc);
    this.docs++;
  }

  private async flush(): Promise<void> {
    if (this.lines.length === 0) return;
    const data = Buffer.from(this.lines.join('\n') + '\n', 'utf8');
    const ref = await this.store.put('datasets', data, 'jsonl');
    this.shards.push({ uri: ref.uri, sha256: ref.sha256, docs: this.lines.length, bytes: ref.bytes });
    this.lines = [];
    this.size = 0;
  }

  async finish(): Promise<DatasetRef> {
    await this.flush();
    const manifest: DatasetManifest = {
      format: 'dacp-dataset/1',
      role: this.role,
      split: this.split,
      docs: this.docs,
      bytes: this.shards.reduce((sum, s) => sum + s.bytes, 0),
      tokens: this.tokens,
      shards: this.shards,
    };
    const ref = await this.store.putJson('manifests', manifest);
    return { ...ref, role: this.role, split: this.split, docs: manifest.docs, dataBytes: manifest.bytes, tokens: this.tokens };
  }
}

/** Write docs as content-addressed JSONL shards plus a manifest; returns the manifest's reference. */
export async function writeDataset(
  store: ArtifactStore,
  role: DatasetRole,
  split: DatasetSplit,
  docs: DatasetDoc[],
): Promise<DatasetRef> {
  const writer = new DatasetWriter(store, role, split);
  for (const doc of docs) await writer.add(doc);
  return writer.finish();
}

/** A dataset's documents a shard at a time (each shard checked against its hash): memory holds one shard. */
export function datasetShards<T extends DatasetDoc = DatasetDoc>(store: ArtifactStore, ref: DatasetRef): AsyncGenerator<T[]> {
  return datasetRange<T>(store, ref, 0, Infinity);
}

/**
 * Documents `from` (inclusive) to `to` (exclusive) of a dataset, a shard at a time: only the shards
 * that hold them are read (each checked against its hash). A quality part reads its share this way.
 */
export async function* datasetRange<T extends DatasetDoc = DatasetDoc>(store: ArtifactStore, ref: DatasetRef, from: number, to: number): AsyncGenerator<T[]> {
  const manifest = await store.getJson<DatasetManifest>(ref);
  let first = 0;
  for (const shard of manifest.shards) {
    const end = first + shard.docs;
    if (end > from && first < to) {
      const docs: T[] = [];
      let i = first;
      for (const line of (await store.get(shard)).toString('utf8').split('\n')) {
        if (!line) continue;
        if (i >= from && i < to) docs.push(JSON.parse(line) as T);
        i++;
      }
      yield docs;
    }
    if (end >= to) break;
    first = end;
  }
}

/** Read every document of a dataset, verifying the manifest and each shard against their hashes. */
export async function readDataset<T extends DatasetDoc = DatasetDoc>(store: ArtifactStore, ref: DatasetRef): Promise<T[]> {
  const docs: T[] = [];
  for await (const shard of datasetShards<T>(store, ref)) for (const doc of shard) docs.push(doc);
  return docs;
}

// ---------------------------------------------------------------------------------------------
// Token streams, cached

/** How documents become ids: documents closed by eos (`lm`), or prompt/response pairs (`sft`). */
const LM_LAYOUT = 'lm/1';
const SFT_LAYOUT = 'sft/1';

export interface SftIds {
  prompt: number[];
  response: number[];
}

/** A tokenizer's identity: the hash of what it is stored as, so equal tokenizers share streams. */
export function tokenizerSha256(tokenizer: Tokenizer): string {
  return sha256Hex(JSON.stringify(tokenizer.toJSON()));
}

/**
 * A dataset's documents as one `lm` token stream (each document closed by eos). Tokenized once per
 * (tokenizer, dataset bytes): the ids are kept as an artifact, so a retried attempt, another round
 * or another run on the same data reads them instead of tokenizing again. Tokenizing pauses about
 * every `sliceMs` and awaits `onProgress`, where the caller heartbeats.
 */
export async function tokenStreamOf(
  deps: { pool: Pool; store: ArtifactStore },
  tokenizer: Tokenizer,
  dataset: DatasetRef,
  pace: PaceOptions = {},
): Promise<number[]> {
  return cachedIds(deps, { tokenizerSha256: tokenizerSha256(tokenizer), datasetSha256: dataset.sha256, layout: LM_LAYOUT }, async () => {
    const docs = await readDataset<TextDoc>(deps.store, dataset);
    return encodeDocuments(tokenizer, docs.map((d) => d.text), pace);
  });
}

/**
 * A domain dataset's documents as one `lm` token stream per named source (`TextDoc.source`), for
 * a run that weighs its domain sources. Cached per source like tokenStreamOf.
 */
export async function sourceStreamsOf(
  deps: { pool: Pool; store: ArtifactStore },
  tokenizer: Tokenizer,
  dataset: DatasetRef,
  names: string[],
  pace: PaceOptions = {},
): Promise<Record<string, number[]>> {
  let docs: TextDoc[] | undefined;
  const streams: Record<string, number[]> = {};
  for (const name of names) {
    const key = { tokenizerSha256: tokenizerSha256(tokenizer), datasetSha256: dataset.sha256, layout: `${LM_LAYOUT};source=${name}` };
    streams[name] = await cachedIds(deps, key, async () => {
      docs ??= await readDataset<TextDoc>(deps.store, dataset);
      return encodeDocuments(tokenizer, docs.filter((d) => d.source === name).map((d) => d.text), pace);
    });
  }
  return streams;
}

/** A dataset's prompt/response pairs as ids, prompts in the instruction template; cached like tokenStreamOf. */
export async function sftExamplesOf(
  deps: { pool: Pool; store: ArtifactStore },
  tokenizer: Tokenizer,
  dataset: DatasetRef,
  pace: PaceOptions = {},
): Promise<SftIds[]> {
  const ids = await cachedIds(deps, { tokenizerSha256: tokenizerSha256(tokenizer), datasetSha256: dataset.sha256, layout: SFT_LAYOUT }, async () => {
    const pairs = await readDataset<PairDoc>(deps.store, dataset);
    const examples: SftIds[] = [];
    await forEachPaced(pairs, (p) => {
      examples.push({ prompt: encodeInstructionPrompt(tokenizer, p.prompt), response: tokenizer.encode(p.response) });
    }, pace);
    return packSft(examples);
  });
  return unpackSft(ids, dataset);
}

/** The ids of `key` from the cache when its artifact is intact, else built, stored and recorded. */
async function cachedIds(deps: { pool: Pool; store: ArtifactStore }, key: TokenCacheKey, build: () => Promise<number[]>): Promise<number[]> {
  const hit = await findTokenCache(deps.pool, key);
  // A cache entry whose file is gone (a pruned or moved store) is rebuilt, never an error.
  if (hit && (await deps.store.verify(hit))) {
    log.info('token stream read from the cache', { layout: key.layout, dataset: key.datasetSha256, tokens: hit.tokens });
    return idsFromBuffer(await deps.store.get(hit));
  }
  const ids = await build();
  const ref = await deps.store.put('tokens', idsToBuffer(ids), 'i32');
  await recordTokenCache(deps.pool, key, { ...ref, tokens: ids.length });
  return ids;
}

/** Little-endian int32, the layout external trainers read too (docs/trainer-protocol.md). */
function idsToBuffer(ids: number[]): Buffer {
  const buf = Buffer.alloc(ids.length * 4);
  for (let i = 0; i < ids.length; i++) buf.writeInt32LE(ids[i] as number, i * 4);
  return buf;
}

function idsFromBuffer(buf: Buffer): number[] {
  const ids = new Array<number>(buf.length / 4);
  for (let i = 0; i < ids.length; i++) ids[i] = buf.readInt32LE(i * 4);
  return ids;
}

/** One flat id list: the example count, then per example its two lengths and the prompt and response ids. */
function packSft(examples: SftIds[]): number[] {
  const out = [examples.length];
  for (const e of examples) {
    out.push(e.prompt.length, e.response.length);
    for (const id of e.prompt) out.push(id);
    for (const id of e.response) out.push(id);
  }
  return out;
}

function unpackSft(ids: number[], dataset: DatasetRef): SftIds[] {
  const bad = () => new Error(`cached sft token ids of dataset ${dataset.uri} are malformed; delete its token_cache row to tokenize again`);
  const count = ids[0] ?? 0;
  const examples: SftIds[] = [];
  let at = 1;
  for (let i = 0; i < count; i++) {
    const promptLength = ids[at] ?? -1;
    const responseLength = ids[at + 1] ?? -1;
    if (promptLength < 0 || responseLength < 0 || at + 2 + promptLength + responseLength > ids.length) throw bad();
    at += 2;
    examples.push({ prompt: ids.slice(at, at + promptLength), response: ids.slice(at + promptLength, at + promptLength + responseLength) });
    at += promptLength + responseLength;
  }
  if (at !== ids.length) throw bad();
  return examples;
}
