/**
 * A worker thread of the quality stage (ml/qualityParallel.ts): runs the per-document steps and
 * the MinHash signatures on each shard it is sent, and sends back what shardPass returns, packed
 * (packShard).
 */
import { parentPort } from 'node:worker_threads';
import { shardPass, type QualityDoc, type QualitySettings } from './quality';
import { packShard } from './qualityParallel';

parentPort?.on('message', (message: { id: number; docs: QualityDoc[]; settings: QualitySettings }) => {
  try {
    parentPort?.postMessage({ id: message.id, result: packShard(message.docs, shardPass(message.docs, message.settings)) });
  } catch (err) {
    parentPort?.postMessage({ id: message.id, error: err instanceof Error ? `${err.message}\n${err.stack ?? ''}` : String(err) });
  }
});
