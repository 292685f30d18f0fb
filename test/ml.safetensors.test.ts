import { decodeSafetensors, encodeSafetensors, tensorsDigest } from '../ml/safetensors';

const sample = {
  weight: { dtype: 'F32' as const, shape: [2, 3], data: Float32Array.from([1.5, -2, 3.25, 0, 1e-7, -1e30]) },
  step: { dtype: 'I32' as const, shape: [1], data: Int32Array.from([42]) },
  empty: { dtype: 'F32' as const, shape: [0], data: new Float32Array(0) },
};

describe('safetensors', () => {
  test('round-trips F32 and I32 tensors and string metadata exactly', () => {
    const { tensors, metadata } = decodeSafetensors(encodeSafetensors(sample, { format: 'x', note: 'héllo' }));
    expect(metadata).toEqual({ format: 'x', note: 'héllo' });
    expect(Object.keys(tensors).sort()).toEqual(['empty', 'step', 'weight']);
    expect(tensors.weight).toEqual(sample.weight);
    expect(tensors.step).toEqual(sample.step);
    expect(tensors.weight?.data).toBeInstanceOf(Float32Array);
  });

  test('writes the reference layout: u64 LE header length, 8-byte aligned JSON header, raw data', () => {
    const buf = encodeSafetensors({ a: { dtype: 'F32', shape: [2], data: Float32Array.from([1, 2]) } });
    const headerLength = Number(buf.readBigUInt64LE(0));
    expect(headerLength % 8).toBe(0);
    const header = JSON.parse(buf.subarray(8, 8 + headerLength).toString('utf8'));
    expect(header).toEqual({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } });
    expect(buf.readFloatLE(8 + headerLength + 4)).toBe(2);
    expect(buf.length).toBe(8 + headerLength + 8);
  });

  test('rejects a truncated buffer with a clear error', () => {
    const buf = encodeSafetensors(sample);
    expect(() => decodeSafetensors(buf.subarray(0, buf.length - 4))).toThrow(/not a valid safetensors buffer.*truncated/);
    expect(() => decodeSafetensors(buf.subarray(0, 20))).toThrow(/truncated/);
    expect(() => decodeSafetensors(buf.subarray(0, 5))).toThrow(/shorter than the 8-byte header length/);
  });

  test('rejects a corrupted header with a clear error', () => {
    const buf = Buffer.from(encodeSafetensors(sample));
    buf[9] = 0x00;
    expect(() => decodeSafetensors(buf)).toThrow(/not a valid safetensors buffer.*header is not JSON/);
    const huge = Buffer.from(encodeSafetensors(sample));
    huge.writeBigUInt64LE(BigInt(2) ** BigInt(60), 0);
    expect(() => decodeSafetensors(huge)).toThrow(/implausibly large/);
  });

  test('rejects trailing bytes that no tensor covers', () => {
    const buf = Buffer.concat([encodeSafetensors(sample), Buffer.alloc(4)]);
    expect(() => decodeSafetensors(buf)).toThrow(/tensors cover/);
  });

  test('refuses to encode data that does not match its shape or dtype', () => {
    expect(() => encodeSafetensors({ a: { dtype: 'F32', shape: [3], data: new Float32Array(2) } })).toThrow(/needs 3/);
    expect(() => encodeSafetensors({ a: { dtype: 'I32', shape: [2], data: new Float32Array(2) } })).toThrow(/declared I32/);
  });

  test('the tensor digest changes when one value flips', () => {
    const flipped = { ...sample, weight: { ...sample.weight, data: Float32Array.from(sample.weight.data) } };
    flipped.weight.data[0] = 1.5000001;
    expect(tensorsDigest(sample)).toBe(tensorsDigest({ ...sample }));
    expect(tensorsDigest(flipped)).not.toBe(tensorsDigest(sample));
  });
});
