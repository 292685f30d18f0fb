/**
 * The quality stage on several cores: the documents are cut into shards, worker threads run the
 * steps that judge each document alone (length, language, repetition, symbols, Gopher heuristics,
 * PII) and compute the MinHash signatures, and this thread merges their results in the documents'
 * order and removes exact and near duplicates, which compare documents with one another. The
 * result is the same as cleanDocuments' (test/quality.parallel.test.ts).
 */
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { cleanDocumentsPaced, documentText, QualityStream, type Candidate, type CleanResult, type MinhashIndex, type PiiCounts, type PiiKind, type QualityDoc, type QualitySettings, type ShardResult } from './quality';

/** Documents per shard: small enough to keep every thread busy and heartbeats frequent. */
export const defaultShardDocs = 2_000;

/**
 * Threads to use: DACP_QUALITY_THREADS, else one per core. 1 runs everything on this thread, as
 * does a corpus of a single shard.
 */
export function qualityThreads(env: NodeJS.ProcessEnv = process.env): number {
  const configured = env.DACP_QUALITY_THREADS?.trim();
  if (configured) {
    const n = Number(configured);
    if (!Number.isInteger(n) || n < 1 || n > 256) throw new Error(`DACP_QUALITY_THREADS="${configured}": give a whole number of threads from 1 to 256 (default: one per core)`);
    return n;
  }
  return Math.max(1, os.availableParallelism());
}

/** The compiled worker script: next to this file when it runs from dist/, else the build's copy. */
function workerScript(): string | null {
  for (const candidate of [path.join(__dirname, 'qualityWorker.js'), path.resolve(__dirname, '..', 'dist', 'ml', 'qualityWorker.js')]) {
    if (existsSync(candidate)) return candidate;
  }
  return null;
}

/**
 * A shard's result as a worker thread sends it back: the survivors by their place in the shard
 * (the documents themselves are already on this side, so only those redaction changed travel),
 * their signatures and exact hashes in one typed array each, and the tally. Far less to copy and
 * to collect than the candidates themselves.
 */
export interface PackedShard<T extends QualityDoc> extends Omit<ShardResult<T>, 'kept'> {
  at: Int32Array;
  /** Survivors whose text redaction changed: their index in `at`, and the redacted document. */
  changed: [number, T][];
  /** Where redaction ran, every survivor's counts (PII_KINDS in order, one survivor after another); else null. */
  redactions: Int32Array | null;
  /** Hashes per signature (0 where none was computed), and the signatures one after another. */
  permutations: number;
  signatures: Uint32Array;
  /** Bytes per exact hash (0 where none was computed), and the hashes one after another. */
  keyBytes: number;
  exactKeys: Uint8Array;
}

/** The kinds of personal data, in the order a packed shard holds their counts. */
const PII_KINDS = ['email', 'phone', 'card', 'ip', 'national_id'] as const satisfies readonly PiiKind[];

function sameFields(a: QualityDoc, b: QualityDoc): boolean {
  if ('text' in a) return 'text' in b && a.text === b.text;
  return 'prompt' in b && a.prompt === b.prompt && a.response === b.response;
}

/** What a worker thread sends back for shardPass(`docs`) (see PackedShard). */
export function packShard<T extends QualityDoc>(docs: T[], result: ShardResult<T>): PackedShard<T> {
  const { kept, ...tally } = result;
  const count = kept.length;
  const first = kept[0];
  const permutations = first?.signature?.length ?? 0;
  const keyBytes = first?.exactKey?.length ?? 0;
  const packed: PackedShard<T> = {
    ...tally,
    at: new Int32Array(count),
    changed: [],
    redactions: first?.redactions ? new Int32Array(count * PII_KINDS.length) : null,
    permutations,
    signatures: new Uint32Array(count * permutations),
    keyBytes,
    exactKeys: new Uint8Array(count * keyBytes),
  };
  for (const [k, c] of kept.entries()) {
    if (c.at === undefined) throw new Error('a survivor of shardPass without its place in the shard');
    if ((c.signature?.length ?? 0) !== permutations || (c.exactKey?.length ?? 0) !== keyBytes) throw new Error('the survivors of a shard differ in what was computed for them');
    packed.at[k] = c.at;
    if (!sameFields(c.doc, docs[c.at] as T)) packed.changed.push([k, c.doc]);
    if ((c.redactions === undefined) !== (packed.redactions === null)) throw new Error('the survivors of a shard differ in whether they were redacted');
    if (c.redactions && packed.redactions) for (const [j, kind] of PII_KINDS.entries()) packed.redactions[k * PII_KINDS.length + j] = c.redactions[kind];
    if (c.signature) packed.signatures.set(c.signature, k * permutations);
    if (c.exactKey) packed.exactKeys.set(c.exactKey, k * keyBytes);
  }
  return packed;
}

/** The shard's result again, from what packShard sent and the shard's documents. */
export function unpackShard<T extends QualityDoc>(packed: PackedShard<T>, docs: T[]): ShardResult<T> {
  const { at, changed, redactions, permutations, signatures, keyBytes, exactKeys, ...tally } = packed;
  const kept: Candidate<T>[] = Array.from(at, (i, k) => {
    const doc = docs[i] as T;
    const c: Candidate<T> = { doc, text: documentText(doc), at: i };
    if (permutations > 0) c.signature = signatures.subarray(k * permutations, (k + 1) * permutations);
    if (keyBytes > 0) c.exactKey = exactKeys.subarray(k * keyBytes, (k + 1) * keyBytes);
    return c;
  });
  for (const [k, doc] of changed) {
    const c = kept[k] as Candidate<T>;
    c.doc = doc;
    c.text = documentText(doc);
  }
  if (redactions) {
    for (const [k, c] of kept.entries()) c.redactions = Object.fromEntries(PII_KINDS.map((kind, j) => [kind, redactions[k * PII_KINDS.length + j] as number])) as PiiCounts;
  }
  return { kept, ...tally };
}

/** Tries a shard gets when the thread working on it dies (killed, out of memory) before another is given up. */
export const shardAttempts = 3;

/**
 * Worker threads that run shardPass on chunks of documents as they are handed in (the quality
 * activity streams a dataset through it). A thread that dies loses only the chunk it was on, which
 * a new thread takes again (up to shardAttempts tries). `close` ends the threads.
 */
export class ShardPool<T extends QualityDoc> {
  private readonly idle: Worker[] = [];
  private readonly waiting: (() => void)[] = [];
  private readonly live = new Set<Worker>();
  private started = 0;
  private chunks = 0;
  private closed = false;
  redone = 0;

  constructor(
    private readonly script: string,
    /** The threads this pool may start. */
    readonly threads: number,
    private readonly settings: QualitySettings,
    private readonly onShard?: (thread: Worker, shard: number, attempt: number) => void,
    private readonly onClose?: () => void,
  ) {}

  private async take(): Promise<Worker> {
    for (;;) {
      if (this.closed) throw new Error('the quality thread pool was closed');
      const worker = this.idle.pop();
      if (worker) return worker;
      if (this.started < this.threads) {
        this.started++;
        const fresh = new Worker(this.script);
        this.live.add(fresh);
        return fresh;
      }
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    }
  }

  private give(worker: Worker): void {
    this.idle.push(worker);
    this.waiting.shift()?.();
  }

  private async discard(worker: Worker): Promise<void> {
    this.live.delete(worker);
    this.started--;
    await worker.terminate();
    this.waiting.shift()?.();
  }

  async run(docs: T[]): Promise<ShardResult<T>> {
    const id = this.chunks++;
    for (let attempt = 1; ; attempt++) {
      const worker = await this.take();
      try {
        const result = await new Promise<ShardResult<T>>((resolve, reject) => {
          const cleanup = () => {
            worker.off('message', onMessage);
            worker.off('error', onError);
            worker.off('exit', onExit);
          };
          const onMessage = (m: { id: number; result?: PackedShard<T>; error?: string }) => {
            if (m.id !== id) return;
            cleanup();
            if (m.error !== undefined) reject(Object.assign(new Error(`quality worker thread failed on shard ${id}: ${m.error}`), { fatal: true }));
            else resolve(unpackShard(m.result as unknown as PackedShard<T>, docs));
          };
          const onError = (err: Error) => {
            cleanup();
            reject(err);
          };
          const onExit = (code: number) => {
            cleanup();
            reject(new Error(`quality worker thread exited (${code}) during shard ${id}`));
          };
          worker.on('message', onMessage);
          worker.once('error', onError);
          worker.once('exit', onExit);
          this.onShard?.(worker, id, attempt);
          worker.postMessage({ id, docs, settings: this.settings });
        });
        this.give(worker);
        return result;
      } catch (err) {
        // A filter that throws would throw again: the stage fails. A thread that died is replaced.
        if ((err as { fatal?: boolean }).fatal) {
          this.give(worker);
          throw err;
        }
        await this.discard(worker);
        if (attempt >= shardAttempts || this.closed) throw err;
        this.redone++;
      }
    }
  }

  /** Ends the threads and gives their share back; shards still waiting fail, and none is started again. */
  async close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      this.onClose?.();
    }
    this.idle.length = 0;
    for (const wake of this.waiting.splice(0)) wake();
    const live = [...this.live];
    this.live.clear();
    await Promise.allSettled(live.map((w) => w.terminate()));
  }
}

/**
 * Threads the pools of this process hold now. A control worker runs several quality parts at once;
 * together their pools stay within qualityThreads(): a pool gets what the others leave, and where
 * that is one thread or none its part runs on the activity's own thread.
 */
let threadsInUse = 0;

/** A pool for `settings`, or null where the stage runs on this thread (one thread, none left, or no compiled worker script). */
export function shardPool<T extends QualityDoc>(settings: QualitySettings, o: { threads?: number; onShard?: (thread: Worker, shard: number, attempt: number) => void } = {}): ShardPool<T> | null {
  const threads = Math.min(o.threads ?? qualityThreads(), Math.max(qualityThreads(), o.threads ?? 0) - threadsInUse);
  const script = workerScript();
  if (threads <= 1 || script === null) return null;
  threadsInUse += threads;
  return new ShardPool<T>(script, threads, settings, o.onShard, () => {
    threadsInUse -= threads;
  });
}

/**
 * cleanDocuments on `threads` threads (default qualityThreads()), as the quality activity runs it:
 * shards of `shardDocs` documents through a ShardPool and a QualityStream. On one thread, or
 * without the compiled worker script (running from TypeScript sources without a build),
 * cleanDocumentsPaced.
 */
export async function cleanDocumentsParallel<T extends QualityDoc>(
  docs: T[],
  settings: QualitySettings,
  o: { threads?: number; shardDocs?: number; index?: MinhashIndex; onProgress?: () => void; onShard?: (thread: Worker, shard: number, attempt: number) => void } = {},
): Promise<CleanResult<T> & { threads: number; redoneShards: number }> {
  const threads = o.threads ?? qualityThreads();
  const shardDocs = o.shardDocs ?? defaultShardDocs;
  // The stream first: it refuses an index of another shape before any thread is taken.
  const stream = new QualityStream<T>(settings, o.index);
  const pool = docs.length > shardDocs ? shardPool<T>(settings, { threads, ...(o.onShard ? { onShard: o.onShard } : {}) }) : null;
  if (!pool) {
    const result = await cleanDocumentsPaced(docs, settings, { ...(o.onProgress ? { onProgress: o.onProgress } : {}), ...(o.index ? { index: o.index } : {}) });
    return { ...result, threads: 1, redoneShards: 0 };
  }
  const chunks: T[][] = [];
  for (let i = 0; i < docs.length; i += shardDocs) chunks.push(docs.slice(i, i + shardDocs));
  // Every shard handed in at once: the pool runs them as threads come free, and they are merged in order.
  const passes = chunks.map((chunk) => pool.run(chunk));
  for (const pass of passes) pass.catch(() => undefined); // each is awaited below; this only keeps an early failure from going unhandled
  const beat = o.onProgress ? setInterval(o.onProgress, 1_000) : undefined;
  const kept: T[] = [];
  const signatures: (Uint32Array | undefined)[] = [];
  try {
    for (const [i, chunk] of chunks.entries()) {
      for (const c of stream.add(chunk, await (passes[i] as Promise<ShardResult<T>>))) {
        kept.push(c.doc);
        signatures.push(c.signature);
      }
      o.onProgress?.();
    }
  } finally {
    if (beat) clearInterval(beat);
    await pool.close();
  }
  return { kept, signatures, ...stream.result(), threads: pool.threads, redoneShards: pool.redone };
}
