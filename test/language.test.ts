import { francAll } from 'franc-min';
import { generateDemoCorpus, mulberry32 } from '../ml/demoCorpus';
import { rankLanguages } from '../ml/language';
import { qualityCorpus } from '../ml/qualityCorpus';

/**
 * The quality stage ranks languages with its own implementation of franc-min's method, on
 * franc-min's data (ml/language.ts): it must give franc's answer exactly, languages, order and
 * scores, on every kind of text the stage sees.
 */

const samples = [
  'The network operations centre received the outage report this morning, and engineers restored service within the hour.',
  '서울 본사의 네트워크 운영 센터는 오늘 오전 장애를 접수했고 엔지니어들이 한 시간 안에 서비스를 복구했습니다.',
  '東京本社のネットワーク運用センターは今朝の障害を受け付け、技術者が一時間以内にサービスを復旧しました。',
  '北京总部的网络运营中心今天上午收到了故障报告，工程师在一小时内恢复了服务。',
  'Der Techniker muss den Druck im System prüfen, bevor er das Hauptventil öffnet und die Pumpe wieder einschaltet.',
  'El técnico debe comprobar la presión del sistema antes de abrir la válvula principal y encender la bomba.',
  'Le technicien doit vérifier la pression du système avant d’ouvrir la vanne principale et de rallumer la pompe.',
  'Техник должен проверить давление в системе, прежде чем открыть главный клапан и снова включить насос.',
  'يجب على الفني التحقق من الضغط في النظام قبل فتح الصمام الرئيسي وتشغيل المضخة مرة أخرى.',
  'तकनीशियन को मुख्य वाल्व खोलने और पंप को फिर से चालू करने से पहले सिस्टम में दबाव की जांच करनी चाहिए।',
  'Ο τεχνικός πρέπει να ελέγξει την πίεση στο σύστημα πριν ανοίξει την κύρια βαλβίδα και ενεργοποιήσει ξανά την αντλία.',
  'ช่างเทคนิคต้องตรวจสอบแรงดันในระบบก่อนเปิดวาล์วหลักและเปิดปั๊มอีกครั้ง',
  'Kỹ thuật viên phải kiểm tra áp suất trong hệ thống trước khi mở van chính và bật lại máy bơm.',
  'Teknisi harus memeriksa tekanan dalam sistem sebelum membuka katup utama dan menyalakan pompa kembali.',
  'Ticket #4471: RAN-07 alarm (VSWR 1.8) at 02:14 UTC; see https://noc.example.com/t/4471 — cleared 02:31.',
  '장애 티켓 #4471: RAN-07 sector 3 VSWR alarm, firmware 21.3.2 롤백 후 정상화. 담당: ops@example.com',
  '1234567890 1234567890 1234567890',
  '!!!! ???? .... ,,,, ;;;; ::::',
  '   \n\t  ',
  'short',
  'a'.repeat(5000),
  `${'The router reboots itself every night at three. '.repeat(60)}`,
];

function randomText(next: () => number): string {
  const pools = [
    'abcdefghijklmnopqrstuvwxyz ',
    'ABCDEFGHIJKLMNOPQRSTUVWXYZ ',
    'áéíóúüñçßøåæœ ',
    '0123456789!"#$%&\'()*+,-./:;<=>?@ ',
    '가나다라마바사아자차카타파하한국어 ',
    'あいうえおかきくけこアイウエオ日本語 ',
    'абвгдежзийклмнопрстуфхцчшщыэюя ',
    'αβγδεζηθικλμνξοπρστυφχψω ',
    'ابتثجحخدذرزسشصضطظعغفقكلمنهوي ',
    '\n\t\u00a0\u2003 ',
    '😀🚀👍🏽 ',
    // Capitals whose lower case depends on the neighbours (Σ) or is longer (İ), next to the punctuation franc cleans away.
    'ΑΣΩΣ İIK\'.:; ',
  ];
  const length = Math.floor(next() * 3000);
  const mix = pools.filter(() => next() < 0.4);
  const use = mix.length ? mix : [pools[0] as string];
  let out = '';
  for (let i = 0; i < length; i++) {
    const pool = [...(use[Math.floor(next() * use.length)] as string)];
    out += pool[Math.floor(next() * pool.length)];
  }
  return out;
}

describe('language ranking (ml/language.ts) against franc-min itself', () => {
  const same = (text: string, minLength = 20) => expect(rankLanguages(text, minLength)).toEqual(francAll(text, { minLength }));

  it('gives franc-min\'s languages, order and scores on hand-made text in many scripts, and at the edges', () => {
    for (const text of samples) {
      same(text);
      same(text, 1);
      same(text, 0);
    }
  });

  it('gives franc-min\'s answer on the demo corpus and on the benchmark\'s generated English and Korean corpus', () => {
    const demo = generateDemoCorpus({ seed: 5 });
    for (const text of [...demo.domain, ...demo.general, ...demo.instructions.map((p) => `${p.prompt}\n${p.response}`)]) same(text);
    let checked = 0;
    for (const { text } of qualityCorpus(2 * 1024 * 1024)) {
      same(text);
      checked++;
    }
    expect(checked).toBeGreaterThan(1000);
  });

  it('gives franc-min\'s answer on 1,500 random strings of mixed scripts, digits, punctuation and white space', () => {
    const next = mulberry32(77);
    for (let i = 0; i < 1500; i++) same(randomText(next));
  });
});
