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
import { cleanDocumentsPaced, cleanDocumentsSharded, type CleanResult, type MinhashIndex, type QualityDoc, type QualitySettings, type ShardResult } from './quality';

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

/** Tries a shard gets when the thread working on it dies (killed, out of memory) before another is given up. */
export const shardAttempts = 3;

/**
 * Run the shards on `threads` worker threads, each taking the next shard as it finishes one;
 * results in shard order. A thread that dies loses only the shard it was on: a new thread takes
 * that shard again (up to shardAttempts tries), and the others go on. `onShard` sees each thread
 * as it starts a shard (tests kill one there).
 */
async function onThreads<T extends QualityDoc>(
  script: string,
  shards: T[][],
  settings: QualitySettings,
  threads: number,
  o: { onProgress?: () => void; onShard?: (thread: Worker, shard: number, attempt: number) => void },
): Promise<{ results: ShardResult<T>[]; redone: number }> {
  const results: ShardResult<T>[] = new Array(shards.length);
  const queue = shards.map((_, i) => i);
  const attempts = new Array<number>(shards.length).fill(0);
  let redone = 0;
  const live = new Set<Worker>();
  // The activity's heartbeats keep flowing while the threads work.
  const beat = o.onProgress ? setInterval(o.onProgress, 1_000) : undefined;
  const runOne = (worker: Worker, id: number): Promise<ShardResult<T>> =>
    new Promise<ShardResult<T>>((resolve, reject) => {
      const cleanup = () => {
        worker.off('message', onMessage);
        worker.off('error', onError);
        worker.off('exit', onExit);
      };
      const onMessage = (m: { id: number; result?: ShardResult<T>; error?: string }) => {
        if (m.id !== id) return;
        cleanup();
        if (m.error !== undefined) reject(Object.assign(new Error(`quality worker thread failed on shard ${id}: ${m.error}`), { fatal: true }));
        else resolve(m.result as ShardResult<T>);
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
      attempts[id] = (attempts[id] as number) + 1;
      o.onShard?.(worker, id, attempts[id] as number);
      worker.postMessage({ id, docs: shards[id], settings });
    });
  try {
    await Promise.all(
      Array.from({ length: Math.min(threads, shards.length) }, async () => {
        let worker: Worker | undefined;
        while (queue.length) {
          const id = queue.shift() as number;
          if (!worker) {
            worker = new Worker(script);
            live.add(worker);
          }
          try {
            results[id] = await runOne(worker, id);
            o.onProgress?.();
          } catch (err) {
            // A filter that throws would throw again: the stage fails. A thread that died is replaced.
            if ((err as { fatal?: boolean }).fatal || (attempts[id] as number) >= shardAttempts) throw err;
            live.delete(worker);
            await worker.terminate();
            worker = undefined;
            redone++;
            queue.unshift(id);
          }
        }
      }),
    );
  } finally {
    if (beat) clearInterval(beat);
    await Promise.all([...live].map((w) => w.terminate()));
  }
  return { results, redone };
}

/**
 * cleanDocuments on `threads` threads (default qualityThreads()); on one thread, or without the
 * compiled worker script (running from TypeScript sources without a build), cleanDocumentsPaced.
 */
export async function cleanDocumentsParallel<T extends QualityDoc>(
  docs: T[],
  settings: QualitySettings,
  o: { threads?: number; shardDocs?: number; index?: MinhashIndex; onProgress?: () => void; onShard?: (thread: Worker, shard: number, attempt: number) => void } = {},
): Promise<CleanResult<T> & { threads: number; redoneShards: number }> {
  const threads = o.threads ?? qualityThreads();
  const shardDocs = o.shardDocs ?? defaultShardDocs;
  const script = workerScript();
  if (threads <= 1 || docs.length <= shardDocs || script === null) {
    const result = await cleanDocumentsPaced(docs, settings, { ...(o.onProgress ? { onProgress: o.onProgress } : {}), ...(o.index ? { index: o.index } : {}) });
    return { ...result, threads: 1, redoneShards: 0 };
  }
  let redoneShards = 0;
  const result = await cleanDocumentsSharded(
    docs,
    settings,
    async (shards) => {
      const done = await onThreads(script, shards, settings, threads, { ...(o.onProgress ? { onProgress: o.onProgress } : {}), ...(o.onShard ? { onShard: o.onShard } : {}) });
      redoneShards = done.redone;
      return done.results;
    },
    { shardDocs, ...(o.index ? { index: o.index } : {}), ...(o.onProgress ? { onProgress: o.onProgress } : {}) },
  );
  return { ...result, threads, redoneShards };
}
