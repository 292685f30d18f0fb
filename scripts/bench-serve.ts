import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import autocannon from 'autocannon';
import { importModel } from '../cli/models';
import { openDatabase, artifactsDir } from '../cli/runtime';
import { initBackend } from '../ml/backend';
import { generateDemoCorpus } from '../ml/demoCorpus';
import { gpt2FolderFiles, writeFolder } from '../ml/hfFolder';
import { GPT } from '../ml/model';
import { BpeTokenizer } from '../ml/tokenizer';
import { serve } from '../serve/server';

/**
 * `npm run bench:serve [-- --json] [-- --seconds N]`: `dacp serve`'s requests/s, generated tokens/s
 * and p50/p99 latency at 1, 8 and 32 concurrent clients (autocannon), on a demo-size model (GPT-2
 * family, vocab 512, context 64, d 64, 2 layers), each request a greedy completion of 16 tokens.
 * Also how many requests shared each forward pass (rows per pass): the batching the engine did.
 * Runs on a fresh embedded PostgreSQL under a temporary DACP_HOME.
 */

const CONCURRENCY = [1, 8, 32];

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  const secondsArg = process.argv.indexOf('--seconds');
  const seconds = secondsArg > 0 ? Number(process.argv[secondsArg + 1]) : 10;
  const home = mkdtempSync(path.join(os.tmpdir(), 'dacp-bench-serve-'));
  process.env.DACP_HOME = home;
  delete process.env.DATABASE_URL;
  const backend = await initBackend();
  const db = await openDatabase(home);
  try {
    const corpus = generateDemoCorpus({ seed: 3, domainDocs: 60, generalDocs: 60, instructionPairs: 10 });
    const tokenizer = BpeTokenizer.train([...corpus.domain, ...corpus.general], { vocabSize: 512 });
    const model = GPT.create({ vocabSize: tokenizer.vocabSize, contextLength: 64, dModel: 64, nLayers: 2, nHeads: 4 }, 1);
    await writeFolder(path.join(home, 'model'), gpt2FolderFiles(model, tokenizer));
    model.dispose();
    await importModel({ pool: db.pool, artifactsDir: artifactsDir(home) }, { name: 'bench', from: path.join(home, 'model'), alias: 'production' });
    const served = await serve({ pool: db.pool, artifactsDir: artifactsDir(home), alias: 'production', maxActive: 1024 });
    const address = await served.app.listen({ port: 0, host: '127.0.0.1' });
    const body = JSON.stringify({ model: 'production', prompt: 'The gNB alarm on site', max_tokens: 16, temperature: 0 });
    const results = [];
    for (const connections of CONCURRENCY) {
      const before = served.stats();
      const result = await autocannon({
        url: `${address}/v1/completions`,
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
        connections,
        duration: seconds,
      });
      const after = served.stats();
      const passes = after.passes - before.passes;
      results.push({
        connections,
        requestsPerSec: Number(result.requests.average.toFixed(1)),
        tokensPerSec: Number(((after.tokens - before.tokens) / seconds).toFixed(1)),
        latencyMs: { p50: result.latency.p50, p99: result.latency.p99 },
        rowsPerPass: passes ? Number(((after.rows - before.rows) / passes).toFixed(2)) : null,
        errors: result.errors + result.non2xx,
      });
    }
    await served.close();
    const report = { backend: backend.name, host: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model.trim() }, seconds, maxTokens: 16, results };
    if (json) {
      console.log(JSON.stringify(report));
      return;
    }
    console.log(`bench:serve — GPT-2 demo size (vocab ${tokenizer.vocabSize}, context 64, d 64, 2 layers), greedy completions of 16 tokens, ${seconds} s per level, backend ${backend.name}`);
    for (const r of results) {
      console.log(
        `${String(r.connections).padStart(3)} clients  ${String(r.requestsPerSec).padStart(7)} requests/s  ${String(r.tokensPerSec).padStart(8)} tokens/s  p50 ${r.latencyMs.p50} ms  p99 ${r.latencyMs.p99} ms  rows/pass ${r.rowsPerPass}  errors ${r.errors}`,
      );
    }
    const one = results[0]?.tokensPerSec ?? 0;
    const most = results[results.length - 1]?.tokensPerSec ?? 0;
    console.log(`throughput at ${CONCURRENCY[CONCURRENCY.length - 1]} clients / 1 client: ${one ? (most / one).toFixed(2) : 'n/a'}×`);
  } finally {
    await db.close();
    rmSync(home, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`bench:serve: ${(err as Error).message}`);
    process.exit(1);
  },
);
