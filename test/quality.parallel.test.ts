import { defaultHeuristics } from '../ml/heuristics';
import { generateDemoCorpus, mulberry32 } from '../ml/demoCorpus';
import { cleanDocuments, defaultQualitySettings, QualityStream, shardPass, type QualitySettings } from '../ml/quality';
import { cleanDocumentsParallel, packShard, qualityThreads, unpackShard } from '../ml/qualityParallel';

/**
 * The quality stage on worker threads (the compiled worker from dist/, which `npm test` builds):
 * shards give exactly what one pass over all documents gives, and a thread killed mid-shard costs
 * only that shard, which another thread does again.
 */

function corpus(n: number): { text: string; languages?: string[] }[] {
  const base = generateDemoCorpus({ seed: 8, domainDocs: 300, generalDocs: 300, instructionPairs: 0 });
  const texts = [...base.domain, ...base.general];
  const next = mulberry32(4);
  const docs: { text: string; languages?: string[] }[] = [];
  for (let i = 0; i < n; i++) {
    const pick = next();
    let text = texts[Math.floor(next() * texts.length)] as string;
    if (pick < 0.3) text = `${text} Follow-up ${Math.floor(next() * 1e6)} for ops${i}@example.com, call 010-9876-5432.`;
    else if (pick < 0.4) text = '서울 기지국에서 35분 동안 경보가 발생하여 현장 점검을 요청했습니다. 운영팀은 재발 방지를 위해 점검 주기를 단축할 계획입니다.';
    else if (pick < 0.45) text = 'Dies ist ein deutscher Satz über das Netz und die Antennen der Stadt, der hier nicht hingehört.';
    else if (pick < 0.5) text = `Telecommunications restored overnight (${i}).`;
    docs.push({ text, languages: ['eng', 'kor'] });
  }
  return docs;
}

const settings: QualitySettings = { ...defaultQualitySettings, heuristics: { ...defaultHeuristics, minWords: 5 } };

test('a shard\'s result packed for the way back (survivors by place, redacted documents only, signatures and hashes in one array) unpacks to what shardPass gave', () => {
  type Doc = { text: string; languages?: string[] } | { prompt: string; response: string };
  const docs: Doc[] = [
    ...corpus(400),
    { prompt: 'Who is on call tonight for the core network?', response: 'Mina, at mina.kim@example.com or 010-1234-5678, until six in the morning.' },
    { prompt: 'How long did the outage at the north cluster last?', response: 'About forty minutes, from 02:14 to 02:55 UTC, and service came back in stages.' },
  ];
  for (const s of [settings, { ...settings, nearDuplicateThreshold: null }, { ...settings, redactPii: false }]) {
    const pass = shardPass(docs, s);
    const back = unpackShard(structuredClone(packShard(docs, pass)), docs);
    // Every survivor's counts where redaction ran, zeros too (a quality part stores them).
    expect(back.kept.every((c) => (c.redactions === undefined) === !s.redactPii)).toBe(true);
    expect(back.kept.length).toBe(pass.kept.length);
    expect(back.kept.length).toBeGreaterThan(100);
    const plain = (r: typeof pass) => r.kept.map((c) => ({ doc: c.doc, text: c.text, at: c.at, redactions: c.redactions, signature: c.signature ? Array.from(c.signature) : undefined, exactKey: c.exactKey ? Buffer.from(c.exactKey).toString('hex') : undefined }));
    expect(plain(back)).toEqual(plain(pass));
    expect({ ...back, kept: [] }).toEqual({ ...pass, kept: [] });
    // Documents that redaction left alone are the very ones sent; the redacted ones come back.
    const redacted = back.kept.filter((c) => c.doc !== docs[c.at as number]);
    expect(redacted.length).toBe(s.redactPii ? pass.kept.filter((c) => c.redactions && Object.values(c.redactions).some((n) => n > 0)).length : 0);
    if (s.redactPii) expect(redacted.some((c) => 'prompt' in c.doc && c.doc.response.includes('[EMAIL]'))).toBe(true);
  }
});

test('on worker threads, in shards, the stage gives exactly what one pass gives: survivors, signatures, counts, bytes, examples, histograms', async () => {
  const docs = corpus(1_500);
  const one = cleanDocuments(docs, settings);
  const progress: number[] = [];
  const many = await cleanDocumentsParallel(docs, settings, { threads: 2, shardDocs: 200, onProgress: () => progress.push(1) });
  expect(many.threads).toBe(2);
  expect(many.kept).toEqual(one.kept);
  // (Typed arrays from a worker thread belong to another realm than jest's: compared by value.)
  expect(many.signatures.map((sig) => Array.from(sig ?? []))).toEqual(one.signatures.map((sig) => Array.from(sig ?? [])));
  expect(many.report).toEqual(one.report);
  expect(many.details).toEqual(one.details);
  // Every reason this corpus exercises did remove something, so the comparison means something.
  expect(Object.fromEntries(['duplicate', 'near_duplicate', 'language', 'word_count'].map((r) => [r, one.report.removed[r]! > 0]))).toEqual({ duplicate: true, near_duplicate: true, language: true, word_count: true });
  expect(one.report.redactions.email).toBeGreaterThan(0);
  expect(progress.length).toBeGreaterThanOrEqual(8);
}, 120_000);

test('a thread killed mid-shard loses only that shard: another thread does it again, and the result is unchanged', async () => {
  const docs = corpus(1_200);
  const one = cleanDocuments(docs, settings);
  const started: string[] = [];
  const many = await cleanDocumentsParallel(docs, settings, {
    threads: 2,
    shardDocs: 150,
    onShard: (thread, shard, attempt) => {
      started.push(`${shard}:${attempt}`);
      if (shard === 3 && attempt === 1) void thread.terminate();
    },
  });
  expect(many.redoneShards).toBe(1);
  // Shard 3 was started twice; every other shard once.
  expect(started.filter((s) => s.startsWith('3:')).sort()).toEqual(['3:1', '3:2']);
  expect(started).toHaveLength(docs.length / 150 + 1);
  expect(many.kept).toEqual(one.kept);
  expect(many.report).toEqual(one.report);
}, 120_000);

test('a chunk at a time (QualityStream, as the activity streams a dataset), the stage gives exactly what one pass gives', () => {
  const docs = corpus(1_300);
  const one = cleanDocuments(docs, settings);
  const stream = new QualityStream<(typeof docs)[number]>(settings);
  const kept: (typeof docs)[number][] = [];
  for (let i = 0; i < docs.length; i += 137) {
    const chunk = docs.slice(i, i + 137);
    for (const c of stream.add(chunk, shardPass(chunk, settings))) kept.push(c.doc);
  }
  const { report, details } = stream.result();
  expect(kept).toEqual(one.kept);
  expect(report).toEqual(one.report);
  expect(details).toEqual(one.details);
  // And with nothing at all, the same empty report.
  const none = new QualityStream<(typeof docs)[number]>(settings).result();
  const empty = cleanDocuments([], settings);
  expect(none.report).toEqual(empty.report);
  expect(none.details).toEqual(empty.details);
});

test('DACP_QUALITY_THREADS sets the threads, and a bad value is refused naming it', () => {
  expect(qualityThreads({ DACP_QUALITY_THREADS: '3' })).toBe(3);
  expect(qualityThreads({})).toBeGreaterThanOrEqual(1);
  expect(() => qualityThreads({ DACP_QUALITY_THREADS: 'many' })).toThrow(/DACP_QUALITY_THREADS="many": give a whole number of threads from 1 to 256/);
});
