import { generateDemoCorpus, mulberry32 } from '../ml/demoCorpus';
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

const KOREAN = [
  '서울 본사의 네트워크 운영 센터는 오늘 오전 장애를 접수했습니다.',
  '기지국 세 곳이 서비스를 중단했고 약 이천 명의 가입자가 영향을 받았습니다.',
  '엔지니어들은 전원 장치를 교체한 뒤 서비스를 복구했습니다.',
  '그리고 원인을 분석하기 위해 로그를 수집하고 있습니다.',
  '이번 장애는 지난달 교체한 장비와 관련이 있는 것으로 보입니다.',
  '운영팀은 재발 방지를 위해 점검 주기를 단축할 계획입니다.',
  '고객 센터는 보상 절차를 안내하고 있으며 추가 공지는 홈페이지를 통해 제공됩니다.',
  '그 밖의 문의는 담당 부서로 연락하시기 바랍니다.',
  '야간 점검 중 광케이블 손상이 확인되어 우회 경로로 트래픽을 전환했습니다.',
  '해당 구간의 평균 지연 시간은 평소보다 약 두 배 증가했습니다.',
];

const PLACES = ['서울', '부산', '대구', '인천', '광주', '대전', '울산', '수원', '창원', '고양', '용인', '청주', '전주', '천안', '제주'];
const THINGS = ['기지국', '중계기', '광케이블', '전원 장치', '라우터', '교환기', '안테나', '냉각 장치', '백업 회선', '관제 서버', '스위치', '배터리'];
const UNITS = ['분 동안', '건의', '퍼센트의', '개의', '회의'];
const EVENTS = [
  '경보가 발생하여 현장 점검을 요청했습니다.',
  '트래픽 증가가 관측되어 용량을 늘렸습니다.',
  '지연이 발생했으나 자동으로 복구되었습니다.',
  '장애 신고가 접수되어 담당자가 출동했습니다.',
  '정기 점검을 마치고 결과를 보고했습니다.',
  '설정 변경 후 성능이 개선된 것을 확인했습니다.',
  '부품 교체가 필요하여 예비품을 요청했습니다.',
  '고객 불만이 접수되어 원인을 조사하고 있습니다.',
];

function corpus(targetBytes: number): { text: string }[] {
  const base = generateDemoCorpus({ seed: 5, domainDocs: 400, generalDocs: 400, instructionPairs: 0 });
  const english = [...base.domain, ...base.general];
  const random = mulberry32(9);
  const docs: { text: string }[] = [];
  let bytes = 0;
  let n = 0;
  while (bytes < targetBytes) {
    let text: string;
    const pick = random();
    if (pick < 0.5) {
      // English, made unique by a ticket number and a shuffled tail sentence.
      const doc = english[Math.floor(random() * english.length)];
      text = `Ticket ${100000 + n}. ${doc} Follow-up ${Math.floor(random() * 1e6)} was logged for the ${['north', 'south', 'east', 'west'][n % 4]} cluster.`;
    } else {
      // Korean notes from parts, so documents differ as real ones do.
      const sentences = Array.from({ length: 8 + Math.floor(random() * 8) }, () => {
        const pick = (list: readonly string[]) => list[Math.floor(random() * list.length)];
        return random() < 0.3 ? pick(KOREAN) : `${pick(PLACES)} ${pick(THINGS)}에서 ${Math.floor(random() * 90) + 10}${pick(UNITS)} ${pick(EVENTS)}`;
      });
      text = `작업 번호 ${200000 + n}. ${sentences.join(' ')}`;
    }
    if (n % 50 === 7) text += ' 담당자 연락처: 010-9876-5432, noc.oncall@example.com';
    if (n % 97 === 3 && docs.length) text = docs[docs.length - 1].text; // an exact copy
    docs.push({ text });
    bytes += Buffer.byteLength(text, 'utf8');
    n++;
  }
  return docs;
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
  const docs = corpus(mb * 1024 * 1024);
  const corpusBytes = docs.reduce((sum, d) => sum + Buffer.byteLength(d.text, 'utf8'), 0);
  // The whole stage with everything on: the Gopher heuristics and, as a source listing languages, language identification.
  const tagged = docs.map((d) => ({ ...d, languages: ['eng', 'kor'] }));
  const settings: QualitySettings = { ...defaultQualitySettings, heuristics: defaultHeuristics };
  const oneThread = time(() => cleanDocuments(tagged, settings));
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
    perFilter[name] = { seconds, mbPerSec: corpusBytes / 1024 / 1024 / seconds, docsPerSec: docs.length / seconds };
  }
  const result = {
    corpusBytes,
    docs: docs.length,
    seconds: whole.seconds,
    mbPerSec: corpusBytes / 1024 / 1024 / whole.seconds,
    docsPerSec: docs.length / whole.seconds,
    threads: parallel.threads,
    oneThread: { seconds: oneThread.seconds, mbPerSec: corpusBytes / 1024 / 1024 / oneThread.seconds, docsPerSec: docs.length / oneThread.seconds },
    kept: whole.value.report.kept,
    removed: Object.fromEntries(Object.entries(whole.value.report.removed).filter(([, n]) => n > 0)),
    filters: perFilter,
    target: { mbPerSec: 20 },
  };
  if (json) {
    console.log(JSON.stringify(result));
    return;
  }
  console.log(`quality stage on ${(corpusBytes / 1024 / 1024).toFixed(0)} MB (${docs.length} documents, English and Korean):`);
  console.log(`  whole stage, ${result.threads} thread(s): ${result.seconds.toFixed(1)} s, ${result.mbPerSec.toFixed(2)} MB/s, ${result.docsPerSec.toFixed(0)} docs/s (target 20 MB/s: ${(result.mbPerSec / 20).toFixed(2)}×)`);
  console.log(`  whole stage, one thread: ${result.oneThread.seconds.toFixed(1)} s, ${result.oneThread.mbPerSec.toFixed(2)} MB/s (threads: ${(result.mbPerSec / result.oneThread.mbPerSec).toFixed(2)}×)`);
  console.log(`  kept ${result.kept}; removed ${JSON.stringify(result.removed)}`);
  console.log('  each filter alone, one thread, on the whole corpus:');
  for (const [name, f] of Object.entries(perFilter)) {
    console.log(`  ${name.padEnd(16)} ${f.seconds.toFixed(2).padStart(7)} s  ${f.mbPerSec.toFixed(2).padStart(8)} MB/s  ${f.docsPerSec.toFixed(0).padStart(8)} docs/s`);
  }
}

void main();
