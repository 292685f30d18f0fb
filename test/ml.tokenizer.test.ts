import { splitWords } from '../ml/bpe';
import { generateDemoCorpus } from '../ml/demoCorpus';
import { BpeTokenizer, ByteTokenizer, encodeDocuments, tokenizerFromJSON } from '../ml/tokenizer';

const corpus = generateDemoCorpus();
const texts = [...corpus.domain, ...corpus.general, ...corpus.instructions.map((pair) => `${pair.prompt}\n${pair.response}`)];
const tokenizer = BpeTokenizer.train(texts, { vocabSize: 512 });

describe('BpeTokenizer', () => {
  test('has the 256 bytes, then the merges, then eos and pad last', () => {
    expect(tokenizer.vocabSize).toBe(512);
    expect([tokenizer.eosId, tokenizer.padId]).toEqual([510, 511]);
    expect(tokenizer.encode('A')).toEqual([65]);
    const merges = (tokenizer.toJSON() as { merges: [number, number][] }).merges;
    expect(merges).toHaveLength(512 - 258);
    merges.forEach(([a, b], rank) => expect(Math.max(a, b)).toBeLessThan(256 + rank));
  });

  test('round-trips any text, including emoji, accents and whitespace runs', () => {
    for (const text of ['Grüße, 世界! 🚀👩‍👩‍👧\n\ttabs  and   spaces  ', "don't we'll 12345 a\u0301", '', '   ', corpus.domain[0] as string]) {
      expect(tokenizer.decode(tokenizer.encode(text))).toBe(text);
    }
  });

  test('turns lone surrogates into U+FFFD, like UTF-8 does', () => {
    expect(tokenizer.decode(tokenizer.encode('\uD800x\uDC00'))).toBe('\uFFFDx\uFFFD');
  });

  test('compresses the text it was trained on', () => {
    const text = corpus.domain.slice(0, 20).join('\n');
    expect(tokenizer.encode(text).length).toBeLessThan(Buffer.byteLength(text) / 1.8);
  });

  test('never merges across a word boundary', () => {
    const words = splitWords('the gNB restarted, 42 times!  ok');
    expect(words).toEqual(['the', ' gNB', ' restarted', ',', ' 42', ' times', '!', ' ', ' ok']);
    for (let id = 256; id < tokenizer.eosId; id++) {
      const piece = tokenizer.decode([id]);
      if (!piece.includes('\uFFFD')) expect(splitWords(piece)).toHaveLength(1);
    }
  });

  test('training is deterministic and breaks count ties towards the smaller pair', () => {
    expect(BpeTokenizer.train(texts, { vocabSize: 300 }).toJSON()).toEqual(BpeTokenizer.train(texts, { vocabSize: 300 }).toJSON());
    // "ab", "cd" and "yz" are each seen twice; (a,b) has the smallest ids.
    const tie = BpeTokenizer.train(['yz\ncd\nab\nyz\ncd\nab'], { vocabSize: 259 });
    expect(tie.toJSON()).toEqual({ kind: 'bpe', version: 1, merges: [[97, 98]] });
  });

  test('stops early when no pair reaches minFrequency', () => {
    const small = BpeTokenizer.train(['abc abc xyz'], { vocabSize: 1000, minFrequency: 2 });
    expect(small.toJSON()).toEqual({ kind: 'bpe', version: 1, merges: [[97, 98], [256, 99]] });
    expect([small.vocabSize, small.eosId, small.padId]).toEqual([260, 258, 259]);
    expect(() => BpeTokenizer.train(['x'], { vocabSize: 257 })).toThrow(/vocabSize must be an integer ≥ 258/);
  });

  test('decode skips eos, pad and out-of-range ids', () => {
    expect(tokenizer.decode([...tokenizer.encode('hi'), tokenizer.eosId, tokenizer.padId, 9999, -1])).toBe('hi');
  });

  test('trains on ~400 KB in seconds and encodes it in under a second', () => {
    const big: string[] = [];
    for (let size = 0; size < 400_000; size += Buffer.byteLength(big[big.length - 1] as string)) {
      big.push(texts[big.length % texts.length] as string);
    }
    let start = performance.now();
    const trained = BpeTokenizer.train(big, { vocabSize: 2048 });
    expect(performance.now() - start).toBeLessThan(3000);
    start = performance.now();
    for (const text of big) trained.encode(text);
    expect(performance.now() - start).toBeLessThan(1000);
  });
});

describe('tokenizerFromJSON', () => {
  test('restores a BPE tokenizer that encodes identically', () => {
    const restored = tokenizerFromJSON(JSON.parse(JSON.stringify(tokenizer.toJSON())));
    expect(restored).toBeInstanceOf(BpeTokenizer);
    expect(restored.vocabSize).toBe(512);
    const text = corpus.general.slice(0, 5).join(' ');
    expect(restored.encode(text)).toEqual(tokenizer.encode(text));
  });

  test('restores the byte tokenizer of existing model files', () => {
    const restored = tokenizerFromJSON({ kind: 'bytes', version: 1 });
    expect(restored).toBeInstanceOf(ByteTokenizer);
    expect(restored.vocabSize).toBe(258);
  });

  test('rejects unknown kinds, malformed merges and merges that use later ids', () => {
    expect(() => tokenizerFromJSON({ kind: 'wordpiece', version: 1 })).toThrow(/invalid tokenizer JSON.*kind/);
    expect(() => tokenizerFromJSON({ kind: 'bpe', version: 1 })).toThrow(/invalid tokenizer JSON.*merges/);
    expect(() => tokenizerFromJSON({ kind: 'bpe', version: 1, merges: [[1, 2.5]] })).toThrow(/merges\.0\.1/);
    expect(() => tokenizerFromJSON({ kind: 'bpe', version: 1, merges: [[97, 98], [257, 1]] })).toThrow(/merge 1 is \[257, 1\].*0\.\.256/);
  });
});

describe('encodeDocuments', () => {
  test('is each document encoded and closed by eos, and lets timers fire while it works', async () => {
    const docs = corpus.domain.slice(0, 40);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const progress: number[] = [];
    let ids: number[];
    try {
      ids = await encodeDocuments(tokenizer, docs, { sliceMs: 0, onProgress: ({ done }) => void progress.push(done) });
    } finally {
      clearInterval(timer);
    }
    expect(ids).toEqual(docs.flatMap((doc) => [...tokenizer.encode(doc), tokenizer.eosId]));
    expect(progress).toEqual(docs.map((_, i) => i + 1));
    expect(ticks).toBeGreaterThan(0);
  });
});
