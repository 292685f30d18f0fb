import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ArtifactStore, hashFile, sha256Hex } from '../activities/artifacts';

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
});
