import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ArtifactStore, hashFile, sha256Hex } from '../activities/artifacts';
import { decodeSafetensors, encodeSafetensors } from '../ml/safetensors';
import { readSafetensorsFile } from '../ml/safetensorsFile';

/** Large files in and out of the artifact store as streams, verified on the way (model weights). */
describe('ArtifactStore streaming', () => {
  let dir: string;
  let store: ArtifactStore;

  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'dacp-stream-'));
    store = new ArtifactStore(path.join(dir, 'artifacts'));
  });

  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  test('putFile stores a file under its sha256, the same artifact put() makes of the same bytes', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 17); // several stream chunks
    const source = path.join(dir, 'weights.safetensors');
    writeFileSync(source, data);
    const streamed = await store.putFile('model-files', source, 'safetensors');
    expect(streamed).toEqual({ uri: `artifact:model-files/${sha256Hex(data)}.safetensors`, sha256: sha256Hex(data), bytes: data.length });
    expect(await store.put('model-files', data, 'safetensors')).toEqual(streamed);
    expect(await store.putFile('model-files', source, 'safetensors')).toEqual(streamed); // again: a no-op
    expect(await hashFile(store.pathOf(streamed.uri))).toBe(streamed.sha256);
  });

  test('copyOut writes the artifact out, and refuses a corrupted or missing one without leaving a file', async () => {
    const data = randomBytes(200_000);
    const ref = await store.put('model-files', data, 'bin');
    const out = path.join(dir, 'out.bin');
    await store.copyOut(ref, out);
    expect(readFileSync(out).equals(data)).toBe(true);
    // One flipped byte in the store.
    const stored = readFileSync(store.pathOf(ref.uri));
    stored[1234] ^= 0xff;
    writeFileSync(store.pathOf(ref.uri), stored);
    const again = path.join(dir, 'again.bin');
    await expect(store.copyOut(ref, again)).rejects.toThrow(/is corrupted: sha256 [0-9a-f]{64} instead of /);
    expect(existsSync(again)).toBe(false);
    rmSync(store.pathOf(ref.uri));
    await expect(store.copyOut(ref, again)).rejects.toThrow(/is missing from/);
    expect(existsSync(again)).toBe(false);
  });

  test('putSafetensors writes tensor by tensor the bytes encodeSafetensors makes, and getSafetensors reads them back verified', async () => {
    // One tensor larger than the 16 MiB read/write chunk, and a few small ones.
    const big = new Float32Array(5 * 2 ** 20).map((_, i) => Math.sin(i));
    const tensors = {
      'w.big': { dtype: 'F32' as const, shape: [5, 2 ** 20], data: big },
      'w.small': { dtype: 'F32' as const, shape: [3], data: new Float32Array([1, -2, 3.5]) },
      ids: { dtype: 'I32' as const, shape: [2], data: new Int32Array([7, -9]) },
    };
    const metadata = { format: 'pt', note: 'streamed' };
    const ref = await store.putSafetensors('models', tensors, metadata);
    const whole = encodeSafetensors(tensors, metadata);
    expect(ref).toEqual({ uri: `artifact:models/${sha256Hex(whole)}.safetensors`, sha256: sha256Hex(whole), bytes: whole.length });
    expect(await store.putSafetensors('models', tensors, metadata)).toEqual(ref); // again: the same artifact
    const read = await store.getSafetensors(ref);
    expect(read.metadata).toEqual(metadata);
    expect(read.tensors['w.big']?.data).toEqual(big);
    expect(Array.from(read.tensors.ids?.data ?? [])).toEqual([7, -9]);

    // A flipped byte deep in the weights is caught by the hash; a cut file by the parser, then the hash.
    const file = store.pathOf(ref.uri);
    const stored = readFileSync(file);
    stored[stored.length - 100] ^= 0x01;
    writeFileSync(file, stored);
    await expect(store.getSafetensors(ref)).rejects.toMatchObject({ type: 'ArtifactCorrupted', message: expect.stringContaining(`is corrupted: sha256`) });
    writeFileSync(file, whole.subarray(0, whole.length - 10));
    await expect(store.getSafetensors(ref)).rejects.toMatchObject({ type: 'ArtifactCorrupted' });
    rmSync(file);
    await expect(store.getSafetensors(ref)).rejects.toMatchObject({ type: 'ArtifactMissing' });
  });

  test('readSafetensorsFile widens BF16 and F16 as decodeSafetensors does, and reports the file\'s sha256', async () => {
    // Hand-made: one BF16 tensor [1.5, -2] and one F16 tensor [0.5].
    const header = JSON.stringify({ a: { dtype: 'BF16', shape: [2], data_offsets: [0, 4] }, b: { dtype: 'F16', shape: [1], data_offsets: [4, 6] } });
    const padded = header + ' '.repeat((8 - (header.length % 8)) % 8);
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(padded.length));
    const data = Buffer.from([0xc0, 0x3f, 0x00, 0xc0, 0x00, 0x38]);
    const bytes = Buffer.concat([length, Buffer.from(padded), data]);
    const file = path.join(dir, 'half.safetensors');
    writeFileSync(file, bytes);
    const read = await readSafetensorsFile(file, { widenHalf: true });
    expect(Array.from(read.tensors.a?.data ?? [])).toEqual([1.5, -2]);
    expect(Array.from(read.tensors.b?.data ?? [])).toEqual([0.5]);
    expect(read.storedDtypes).toEqual({ a: 'BF16', b: 'F16' });
    expect(read.sha256).toBe(sha256Hex(bytes));
    expect(decodeSafetensors(bytes, { widenHalf: true }).tensors).toEqual(read.tensors);
    await expect(readSafetensorsFile(file)).rejects.toThrow(/unsupported dtype BF16/);
  });
});
