/** Korean, Japanese, emoji, code, accents and whitespace runs: what byte-level tokenizers get wrong first. */
export const MULTILINGUAL = [
  '기지국 경보가 세 번 울렸습니다. 엔지니어가 현장에 출동했습니다.',
  '基地局のアラームが鳴りました。技術者が現場に向かいます。',
  'Deploy 🚀 done ✅ — 👩‍👩‍👧 family emoji and flags 🇰🇷🇯🇵',
  'def handover(cell_id: int) -> bool:\n    return cell_id % 2 == 0  # even cells\n',
  "Grüße, naïve café; don't we'll 12345 a\u0301\t\ttabs  and   spaces  ",
];
