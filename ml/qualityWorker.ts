/**
 * A worker thread of the quality stage (ml/qualityParallel.ts): runs the per-document steps and
 * the MinHash signatures on each shard it is sent, and sends back what shardPass returns.
 */
import { parentPort } from 'node:worker_threads';
import { shardPass, type QualityDoc, type QualitySettings } from './quality';

parentPort?.on('message', (message: { id: number; docs: QualityDoc[]; settings: QualitySettings }) => {
  try {
    const result = shardPass(message.docs, message.settings);
    // A text document's candidate text is its text: sent once, and restored on the other side (ShardPool.run).
    for (const c of result.kept) if ('text' in c.doc && c.text === c.doc.text) (c as { text?: string }).text = undefined;
    parentPort?.postMessage({ id: message.id, result });
  } catch (err) {
    parentPort?.postMessage({ id: message.id, error: err instanceof Error ? `${err.message}\n${err.stack ?? ''}` : String(err) });
  }
});
