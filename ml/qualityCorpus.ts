/**
 * The generated corpus of `npm run bench:quality` and the quality stage's scale test: mixed English
 * (the demo's telecom tickets and general text, made unique by a ticket number and a tail) and
 * Korean operations notes (from parts), some with personal data, some exact copies; documents one
 * at a time, so a corpus of any size takes no memory.
 */
import { generateDemoCorpus, mulberry32 } from './demoCorpus';

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

export function* qualityCorpus(targetBytes: number): Generator<{ text: string }> {
  const base = generateDemoCorpus({ seed: 5, domainDocs: 400, generalDocs: 400, instructionPairs: 0 });
  const english = [...base.domain, ...base.general];
  const random = mulberry32(9);
  let previous: string | undefined;
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
    if (n % 97 === 3 && previous !== undefined) text = previous; // an exact copy
    previous = text;
    bytes += Buffer.byteLength(text, 'utf8');
    n++;
    yield { text };
  }
}
