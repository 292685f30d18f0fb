import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ArtifactStore } from '../../activities/artifacts';
import { DatasetWriter } from '../../activities/datasets';
import { migrate } from '../../db/migrate';
import { insertRun } from '../../db/records';
import { qualityCorpus } from '../../ml/qualityCorpus';
import { parseRunSpec } from '../../schemas/runSpec';
import { tinySpec } from '../helpers/fixtures';
import { createTestDatabase, type TestDatabase } from '../helpers/db';

/**
 * The quality stage streams: a corpus of 1 GB (mixed English and Korean, with copies and personal
 * data) goes through the quality activity, as the workflow calls it, in a process whose JavaScript
 * heap may not pass 256 MB. It reads the dataset a shard at a time, keeps its duplicate and
 * near-duplicate state outside the heap, and writes the cleaned datasets as documents pass.
 * DACP_SCALE_QUALITY_MB sets another size.
 */

const root = path.resolve(__dirname, '..', '..');
const MB = Number(process.env.DACP_SCALE_QUALITY_MB ?? 1024);
const HEAP_MB = 256;

let db: TestDatabase;
let dir: string;

beforeAll(async () => {
  db = await createTestDatabase();
  await migrate(db.pool);
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dacp-quality-scale-'));
});

afterAll(async () => {
  await db?.drop();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
});

test(`a ${MB} MB corpus goes through the quality activity with the heap held to ${HEAP_MB} MB`, async () => {
  const store = new ArtifactStore(path.join(dir, 'artifacts'));
  const writer = new DatasetWriter(store, 'domain', 'train');
  let docs = 0;
  let bytes = 0;
  for (const doc of qualityCorpus(MB * 1024 * 1024)) {
    await writer.add(doc);
    docs++;
    bytes += Buffer.byteLength(doc.text, 'utf8');
  }
  const raw = await writer.finish();
  expect(bytes).toBeGreaterThanOrEqual(MB * 1024 * 1024);

  const runId = 'quality-scale';
  const spec = parseRunSpec(tinySpec({ quality: { minDocs: 1 } }));
  await insertRun(db.pool, { runId, workflowId: runId, spec, specSha256: 'test', initiator: 'engineer' });
  // The activity from the build, in its own process with a bounded heap (it would die of it, not slow down).
  const script = `
    const { qualityActivities } = require(${JSON.stringify(path.join(root, 'dist', 'activities', 'quality.js'))});
    const { ArtifactStore } = require(${JSON.stringify(path.join(root, 'dist', 'activities', 'artifacts.js'))});
    const { createPool } = require(${JSON.stringify(path.join(root, 'dist', 'db', 'pool.js'))});
    const { MockActivityEnvironment } = require('@temporalio/testing');
    let peak = 0;
    const sample = () => { peak = Math.max(peak, process.memoryUsage().heapUsed); };
    setInterval(sample, 100).unref();
    (async () => {
      const pool = createPool(process.env.DATABASE_URL);
      const { qualityFilter } = qualityActivities({ pool, store: new ArtifactStore(process.env.ARTIFACTS) });
      const input = JSON.parse(process.env.INPUT);
      const result = await new MockActivityEnvironment().run(qualityFilter, input);
      sample();
      console.log(JSON.stringify({ summary: result.summary, datasets: result.datasets, peakHeap: peak, rss: process.memoryUsage().rss }));
      await pool.end();
      process.exit(0);
    })().catch((err) => { console.error(err); process.exit(1); });
  `;
  const child = spawn(process.execPath, [`--max-old-space-size=${HEAP_MB}`, '-e', script], {
    cwd: root,
    env: { ...process.env, DATABASE_URL: db.url, ARTIFACTS: path.join(dir, 'artifacts'), INPUT: JSON.stringify({ runId, spec, raw: [raw] }) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const started = Date.now();
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  const seconds = (Date.now() - started) / 1000;
  if (code !== 0) throw new Error(`the quality activity failed (exit ${code}): ${stderr.slice(-3000)}`);
  const out = JSON.parse(stdout.trim().split('\n').at(-1) as string) as {
    summary: { perRole: { domain: { input: number; kept: number; train: number; heldout: number; removed: Record<string, number>; redactions: Record<string, number> } } };
    datasets: { role: string; split: string; docs: number }[];
    peakHeap: number;
    rss: number;
  };
  const domain = out.summary.perRole.domain;
  expect(domain.input).toBe(docs);
  // The corpus's planted exact copies (one document in 97; a few are removed as repetitive first) are found, and its personal data redacted.
  expect(domain.removed.duplicate).toBeGreaterThanOrEqual(Math.floor((docs / 97) * 0.9));
  expect(domain.redactions.email).toBeGreaterThan(0);
  expect(domain.kept).toBe(domain.train + domain.heldout);
  expect(out.datasets.filter((d) => d.role === 'domain').reduce((n, d) => n + d.docs, 0)).toBe(domain.kept);
  expect(out.peakHeap).toBeLessThan(HEAP_MB * 1024 * 1024);
  console.log(
    `quality stage, ${MB} MB (${docs} documents): ${seconds.toFixed(0)} s, ${(MB / seconds).toFixed(2)} MB/s; ` +
      `peak heap ${(out.peakHeap / 1024 / 1024).toFixed(0)} MB (limit ${HEAP_MB}), RSS ${(out.rss / 1024 / 1024).toFixed(0)} MB; kept ${domain.kept}, removed ${JSON.stringify(Object.fromEntries(Object.entries(domain.removed).filter(([, n]) => n > 0)))}`,
  );
}, 1_800_000);
