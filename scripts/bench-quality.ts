import { qualityCorpus } from '../ml/qualityCorpus';
import { defaultHeuristics } from '../ml/heuristics';
import {
  cleanDocuments,
  defaultQualitySettings,
  documentText,
  exactDedup,
  heuristicFilter,
  languageFilter,
  lengthFilter,
  nearDedup,
  piiRedaction,
  repetitionFilter,
  symbolFilter,
  type Candidate,
  type QualitySettings,
  type StepResult,
} from '../ml/quality';
import { cleanDocumentsParallel, qualityThreads } from '../ml/qualityParallel';

/**
 * `npm run bench:quality [-- --json] [-- --mb N]`: the quality stage's throughput on a generated
 * corpus of N MB (default 200) of mixed English and Korean documents (the demo's telecom tickets
 * and general text, and Korean operations notes), some with personal data, copies and near copies.
 * It times the whole stage, the same steps the quality activity runs (length, language, repetition,
 * symbols, Gopher heuristics, PII, exact and near-duplicate removal) on worker threads as the activity
 * runs it (DACP_QUALITY_THREADS, one per core) and on one thread, then each filter alone on the
 * whole corpus. `--json` prints one line: {mbPerSec, docsPerSec, corpusBytes, docs, seconds, filters}.
 *
 * This measures the filters on documents already in memory; it does not read or write datasets
 * (the activity adds that).
 */

function corpus(targetBytes: number): { text: string }[] {
  return [...qualityCorpus(targetBytes)];
}

function time<T>(fn: () => T): { value: T; seconds: number } {
  const started = process.hrtime.bigint();
  const value = fn();
  return { value, seconds: Number(process.hrtime.bigint() - started) / 1e9 };
}

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  const mbArg = process.argv.indexOf('--mb');
  const mb = mbArg > 0 ? Number(process.argv[mbArg + 1]) : 200;
  // The whole stage with everything on: the Gopher heuristics and, as a source listing languages, language identification.
  const tagged = corpus(mb * 1024 * 1024).map((d) => ({ ...d, languages: ['eng', 'kor'] }));
  const corpusBytes = tagged.reduce((sum, d) => sum + Buffer.byteLength(d.text, 'utf8'), 0);
  const settings: QualitySettings = { ...defaultQualitySettings, heuristics: defaultHeuristics };
  // Only the one-thread run's figures and report are kept: its survivors would weigh on the threaded run's heap.
  const oneThread = (() => {
    const { value, seconds } = time(() => cleanDocuments(tagged, settings));
    return { seconds, value: { report: value.report } };
  })();
  // As the quality activity runs it: on worker threads (DACP_QUALITY_THREADS, one per core).
  const threads = qualityThreads();
  const started = process.hrtime.bigint();
  const parallel = await cleanDocumentsParallel(tagged, settings, { threads });
  const whole = { value: parallel, seconds: Number(process.hrtime.bigint() - started) / 1e9 };
  if (JSON.stringify(parallel.report) !== JSON.stringify(oneThread.value.report)) throw new Error('the threaded stage and the one-thread stage disagree');

  const candidates = (): Candidate<{ text: string; languages?: string[] }>[] => tagged.map((doc) => ({ doc, text: documentText(doc) }));
  const filters: Record<string, (c: Candidate<{ text: string; languages?: string[] }>[]) => StepResult<{ text: string }>> = {
    length: (c) => lengthFilter(c, settings),
    language: (c) => languageFilter(c, 0.8),
    repetition: (c) => repetitionFilter(c, settings.maxRepetitionRatio),
    symbols: (c) => symbolFilter(c, settings.maxSymbolRatio),
    heuristics: (c) => heuristicFilter(c, defaultHeuristics),
    pii: (c) => piiRedaction(c),
    exact_duplicate: (c) => exactDedup(c),
    near_duplicate: (c) => nearDedup(c, settings.nearDuplicateThreshold ?? 0.72),
  };
  const perFilter: Record<string, { seconds: number; mbPerSec: number; docsPerSec: number }> = {};
  for (const [name, run] of Object.entries(filters)) {
    const input = candidates();
    const { seconds } = time(() => run(input));
    perFilter[name] = { seconds, mbPerSec: corpusBytes / 1024 / 1024 / seconds, docsPerSec: tagged.length / seconds };
  }
  const result = {
    corpusBytes,
    docs: tagged.length,
    seconds: whole.seconds,
    mbPerSec: corpusBytes / 1024 / 1024 / whole.seconds,
    docsPerSec: tagged.length / whole.seconds,
    threads: parallel.threads,
    oneThread: { seconds: oneThread.seconds, mbPerSec: corpusBytes / 1024 / 1024 / oneThread.seconds, docsPerSec: tagged.length / oneThread.seconds },
    kept: whole.value.report.kept,
    removed: Object.fromEntries(Object.entries(whole.value.report.removed).filter(([, n]) => n > 0)),
    filters: perFilter,
    target: { mbPerSec: 20 },
  };
  if (json) {
    console.log(JSON.stringify(result));
    return;
  }
  console.log(`quality stage on ${(corpusBytes / 1024 / 1024).toFixed(0)} MB (${tagged.length} documents, English and Korean):`);
  console.log(`  whole stage, ${result.threads} thread(s): ${result.seconds.toFixed(1)} s, ${result.mbPerSec.toFixed(2)} MB/s, ${result.docsPerSec.toFixed(0)} docs/s (target 20 MB/s: ${(result.mbPerSec / 20).toFixed(2)}×)`);
  console.log(`  whole stage, one thread: ${result.oneThread.seconds.toFixed(1)} s, ${result.oneThread.mbPerSec.toFixed(2)} MB/s (threads: ${(result.mbPerSec / result.oneThread.mbPerSec).toFixed(2)}×)`);
  console.log(`  kept ${result.kept}; removed ${JSON.stringify(result.removed)}`);
  console.log('  each filter alone, one thread, on the whole corpus:');
  for (const [name, f] of Object.entries(perFilter)) {
    console.log(`  ${name.padEnd(16)} ${f.seconds.toFixed(2).padStart(7)} s  ${f.mbPerSec.toFixed(2).padStart(8)} MB/s  ${f.docsPerSec.toFixed(0).padStart(8)} docs/s`);
  }
}

void main();
