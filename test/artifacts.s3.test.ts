import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  CreateMultipartUploadCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  PutObjectCommand,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { ArtifactStore } from '../activities/artifacts';
import { readSource, readSourceSince } from '../activities/sources';
import { preflightSources } from '../cli/runs';
import { parseRunSpec } from '../schemas/runSpec';
import { tinySpec, writeTinyCorpus } from './helpers/fixtures';
import { openArtifactStore, parseS3Url, S3ArtifactStore, s3Client } from '../activities/objectStore';
import { startS3Server, type S3Server } from './helpers/s3';

const MB = 1024 * 1024;

describe('artifacts in S3-compatible object storage (a real SeaweedFS server)', () => {
  let s3: S3Server;
  const dirs: string[] = [];
  const bucket = 'dacp-artifacts';

  /** A host's view of the store: its own cache folder, the shared bucket. */
  const host = (o: { prefix?: string; partMb?: number; env?: Record<string, string> } = {}) => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'dacp-cache-'));
    dirs.push(dir);
    const env = { ...s3.env, ...o.env, DACP_ARTIFACTS: `s3://${bucket}/${o.prefix ?? 'team-a'}`, ...(o.partMb ? { DACP_S3_PART_MB: String(o.partMb) } : {}) };
    const store = openArtifactStore(dir, env);
    expect(store).toBeInstanceOf(S3ArtifactStore);
    return store as S3ArtifactStore;
  };

  beforeAll(async () => {
    s3 = await startS3Server();
    await s3.createBucket(bucket);
  }, 90_000);

  afterAll(async () => {
    await s3?.stop();
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  test('a write on one host is read, hash-checked, on another with an empty cache; keys are content-addressed under the prefix', async () => {
    const writer = host();
    const reader = host();
    const ref = await writer.putJson('reports', { hello: 'world', n: 1 });
    expect(ref.uri).toMatch(/^artifact:reports\/[0-9a-f]{64}\.json$/);
    const key = `team-a/reports/${ref.sha256.slice(0, 2)}/${ref.sha256}.json`;
    expect(writer.keyOf(ref.uri)).toBe(key);
    const head = await s3.client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    expect(head.ContentLength).toBe(ref.bytes);
    expect(head.Metadata?.sha256).toBe(ref.sha256);

    expect(existsSync(reader.pathOf(ref.uri))).toBe(false);
    expect(await reader.getJson(ref)).toEqual({ hello: 'world', n: 1 });
    expect(existsSync(reader.pathOf(ref.uri))).toBe(true);
    expect(await reader.sizeOf(ref)).toBe(ref.bytes);
    // The same bytes again: the same key, nothing new.
    expect(await writer.putJson('reports', { hello: 'world', n: 1 })).toEqual(ref);
  });

  test('a large file goes up as a streamed multipart upload (3 parts of 5 MB), leaves no unfinished upload, and reads back exactly on another host', async () => {
    const writer = host({ partMb: 5 });
    const source = path.join(writer.root, 'big.bin');
    const data = randomBytes(12 * MB + 12345);
    writeFileSync(source, data);
    const sent: number[] = [];
    writer.client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'UploadPartCommand') sent.push((args.input as { PartNumber: number }).PartNumber);
        return next(args);
      },
      { step: 'initialize', name: 'countParts' },
    );
    const ref = await writer.putFile('checkpoints', source, 'bin');
    expect(ref.sha256).toBe(createHash('sha256').update(data).digest('hex'));
    expect(sent.sort()).toEqual([1, 2, 3]);
    const uploads = await s3.client.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
    expect(uploads.Uploads ?? []).toEqual([]);

    const reader = host();
    const out = path.join(reader.root, 'copy.bin');
    await reader.copyOut(ref, out);
    expect(createHash('sha256').update(readFileSync(out)).digest('hex')).toBe(ref.sha256);
  });

  test('safetensors artifacts (models, checkpoints) stream in and out through object storage', async () => {
    const writer = host();
    const tensors = { 'w.weight': { dtype: 'F32' as const, shape: [4, 8], data: new Float32Array(32).map((_, i) => i / 7) } };
    const ref = await writer.putSafetensors('models', tensors, { note: 'tiny' });
    const reader = host();
    // A header alone (what `dacp models list` reads) comes by ranged GETs; the weights stay in the bucket.
    const length = Number((await reader.readRange(ref, 0, 8)).readBigUInt64LE(0));
    const header = JSON.parse((await reader.readRange(ref, 8, length)).toString('utf8')) as { __metadata__: Record<string, string> };
    expect(header.__metadata__.note).toBe('tiny');
    expect(existsSync(reader.pathOf(ref.uri))).toBe(false);
    const decoded = await reader.getSafetensors(ref);
    expect(Array.from(decoded.tensors['w.weight'].data as Float32Array)).toEqual(Array.from(tensors['w.weight'].data));
    expect(decoded.metadata?.note).toBe('tiny');
    expect(await reader.localFile(ref)).toBe(reader.pathOf(ref.uri));
  });

  test('a write never replaces an object already under its key (If-None-Match), and every read checks the sha256', async () => {
    const writer = host();
    const bytes = Buffer.from('the real content\n');
    const sha = createHash('sha256').update(bytes).digest('hex');
    const ref = { uri: `artifact:notes/${sha}.txt`, sha256: sha };
    const key = writer.keyOf(ref.uri);
    // Something else got there first with other bytes (a bug, or someone's hand).
    await s3.client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: 'planted\n' }));
    // The HEAD finds it, and even a put straight past it is refused by the server.
    await writer.put('notes', bytes, 'txt');
    await expect(s3.client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: bytes, IfNoneMatch: '*' }))).rejects.toMatchObject({ $metadata: { httpStatusCode: 412 } });
    const stored = await s3.client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    expect(await stored.Body!.transformToString()).toBe('planted\n');

    const reader = host();
    await expect(reader.get(ref)).rejects.toMatchObject({ type: 'ArtifactCorrupted', message: expect.stringContaining(`s3://${bucket}/${key}`) });
    expect(existsSync(reader.pathOf(ref.uri))).toBe(false);
    expect(await reader.verify(ref)).toBe(false);
    // A damaged file in a host's cache is dropped and read again from the store.
    const good = await writer.putJson('reports', { fine: true });
    await reader.getJson(good);
    writeFileSync(reader.pathOf(good.uri), '{"fine": false}\n');
    expect(await reader.getJson(good)).toEqual({ fine: true });
  });

  test('a half-finished multipart upload is never visible under its key; a failed one is aborted; a crashed one is swept', async () => {
    const writer = host({ prefix: 'sweep', partMb: 5 });
    // A worker that died mid-upload: parts sent, never completed.
    const key = 'sweep/checkpoints/ab/' + 'ab'.repeat(32) + '.safetensors';
    const created = await s3.client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key }));
    await s3.client.send(new UploadPartCommand({ Bucket: bucket, Key: key, UploadId: created.UploadId, PartNumber: 1, Body: randomBytes(5 * MB) }));
    await expect(s3.client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }))).rejects.toMatchObject({ $metadata: { httpStatusCode: 404 } });
    await expect(writer.get({ uri: `artifact:checkpoints/${'ab'.repeat(32)}.safetensors`, sha256: 'ab'.repeat(32) })).rejects.toMatchObject({ type: 'ArtifactMissing' });

    // An upload that fails on its second part is aborted on the spot: no parts left, no object.
    const failing = host({ prefix: 'sweep', partMb: 5 });
    failing.client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'UploadPartCommand' && (args.input as { PartNumber: number }).PartNumber === 2) throw Object.assign(new Error('connection reset'), { name: 'ECONNRESET' });
        return next(args);
      },
      { step: 'initialize', name: 'failSecondPart' },
    );
    const source = path.join(failing.root, 'big.bin');
    writeFileSync(source, randomBytes(11 * MB));
    await expect(failing.putFile('checkpoints', source, 'bin')).rejects.toMatchObject({ type: 'ArtifactStorageFailed', message: expect.stringContaining('cannot upload') });
    const sha = createHash('sha256').update(readFileSync(source)).digest('hex');
    await expect(s3.client.send(new HeadObjectCommand({ Bucket: bucket, Key: failing.keyOf(`artifact:checkpoints/${sha}.bin`) }))).rejects.toMatchObject({ $metadata: { httpStatusCode: 404 } });
    const left = await s3.client.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: 'sweep/' }));
    expect((left.Uploads ?? []).map((u) => u.Key)).toEqual([key]);

    // The crashed one is swept (workers do this at start for uploads older than a day).
    expect(await writer.sweepUploads(0)).toEqual([key]);
    const after = await s3.client.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: 'sweep/' }));
    expect(after.Uploads ?? []).toEqual([]);
    // A fresh upload is left alone by a sweep for old ones.
    const young = await s3.client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: 'sweep/young' }));
    expect(await writer.sweepUploads(3_600_000, Date.now())).toEqual([]);
    await writer.sweepUploads(0);
    expect(young.UploadId).toBeTruthy();
  });

  test('wrong credentials fail with what to fix; nothing half-written stays in the cache', async () => {
    const denied = host({ env: { AWS_SECRET_ACCESS_KEY: 'not-the-secret' } });
    await expect(denied.putJson('reports', { x: 1 })).rejects.toMatchObject({
      type: 'ArtifactStorageFailed',
      message: expect.stringContaining('AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY'),
    });
    const stray = readdirSync(denied.root, { recursive: true, encoding: 'utf8' }).filter((f) => path.basename(f).startsWith('.tmp-'));
    expect(stray).toEqual([]);
  });

  test('DACP_ARTIFACTS: unset is the local folder; a folder or s3:// URL is taken; anything else is refused by name', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'dacp-cache-'));
    dirs.push(dir);
    expect(openArtifactStore(dir, {})).toBeInstanceOf(ArtifactStore);
    expect(openArtifactStore(dir, {})).not.toBeInstanceOf(S3ArtifactStore);
    expect(openArtifactStore(dir, { DACP_ARTIFACTS: path.join(dir, 'elsewhere') }).root).toBe(path.join(dir, 'elsewhere'));
    expect(parseS3Url('s3://my-bucket/a/b/')).toEqual({ bucket: 'my-bucket', prefix: 'a/b' });
    expect(parseS3Url('s3://my-bucket')).toEqual({ bucket: 'my-bucket', prefix: '' });
    expect(() => openArtifactStore(dir, { DACP_ARTIFACTS: 'gs://bucket/x' })).toThrow(/DACP_ARTIFACTS=gs:\/\/bucket\/x.*s3:\/\/BUCKET/);
    expect(() => openArtifactStore(dir, { DACP_ARTIFACTS: 's3://B/x', AWS_REGION: 'x' })).toThrow(/DACP_ARTIFACTS=s3:\/\/B\/x is not an S3 location/);
    expect(() => openArtifactStore(dir, { DACP_ARTIFACTS: 's3://bucket/x', AWS_REGION: 'x', DACP_S3_PART_MB: '1' })).toThrow(/DACP_S3_PART_MB=1.*between 5 and 5120/);
    expect(() => s3Client({})).toThrow(/AWS_REGION/);
  });
  test('a 64 MB checkpoint goes up and comes back with memory flat: parts are streamed from the file, downloads to it', async () => {
    const writer = host({ partMb: 8 });
    const source = path.join(writer.root, 'ckpt.bin');
    const chunk = randomBytes(MB);
    const handle = openSync(source, 'w');
    for (let i = 0; i < 64; i++) writeSync(handle, chunk);
    closeSync(handle);
    let peak = 0;
    const base = process.memoryUsage();
    const sample = setInterval(() => {
      const m = process.memoryUsage();
      peak = Math.max(peak, m.heapUsed + m.arrayBuffers - base.heapUsed - base.arrayBuffers);
    }, 5);
    try {
      const ref = await writer.putFile('checkpoints', source, 'bin');
      const reader = host();
      await reader.copyOut(ref, path.join(reader.root, 'back.bin'));
      expect(await reader.verify(ref)).toBe(true);
    } finally {
      clearInterval(sample);
    }
    // Four 8 MB parts in flight at most, and stream buffers: far below the file's 64 MB.
    expect(peak).toBeLessThan(48 * MB);
  });

  describe('s3 sources', () => {
    const saved: Record<string, string | undefined> = {};
    beforeAll(async () => {
      for (const [k, v] of Object.entries(s3.env)) {
        saved[k] = process.env[k];
        process.env[k] = v;
      }
      await s3.createBucket('corp-docs');
      const put = (Key: string, Body: string) => s3.client.send(new PutObjectCommand({ Bucket: 'corp-docs', Key, Body }));
      await put('manuals/a.md', '# Pump\nOpen the valve before priming the pump.');
      await put('manuals/deep/b.txt', '밸브를 열기 전에 펌프를 준비하십시오.');
      await put('manuals/pairs.jsonl', '{"prompt":"How do I prime the pump?","response":"Open the valve first."}\n');
      await put('other/c.txt', 'not under the prefix');
    });
    afterAll(() => {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    });

    test('objects below the prefix that match the glob are read, shown as s3:// URLs; a watermark skips what was read', async () => {
      const source = { kind: 's3' as const, role: 'domain' as const, bucket: 'corp-docs', prefix: 'manuals/' };
      const textOnly = { ...source, glob: '**', format: 'text' as const };
      const docs = await readSource(textOnly, { baseDir: '/' });
      expect(docs.map((d) => d.origin)).toEqual(['s3://corp-docs/manuals/a.md', 's3://corp-docs/manuals/deep/b.txt', 's3://corp-docs/manuals/pairs.jsonl']);
      const first = await readSourceSince({ ...source, glob: '**/*.txt' }, { baseDir: '/' }, null);
      expect(first.docs.map((d) => ('text' in d ? d.text : ''))).toEqual(['밸브를 열기 전에 펌프를 준비하십시오.']);
      await s3.client.send(new PutObjectCommand({ Bucket: 'corp-docs', Key: 'manuals/new.txt', Body: 'A new manual page.' }));
      const second = await readSourceSince({ ...source, glob: '**/*.txt' }, { baseDir: '/' }, first.next);
      expect(second.docs.map((d) => d.origin)).toEqual(['s3://corp-docs/manuals/new.txt']);
      expect(second.skippedFiles).toBe(1);
      const pairs = await readSource({ kind: 's3', role: 'instruct', bucket: 'corp-docs', prefix: 'manuals', glob: '*.jsonl' }, { baseDir: '/' });
      expect(pairs).toEqual([{ prompt: 'How do I prime the pump?', response: 'Open the valve first.', origin: 's3://corp-docs/manuals/pairs.jsonl:1' }]);
    });

    test("worker policy: an s3 source never reads dacp's own artifacts, and stays inside DACP_S3_SOURCES where that is set", async () => {
      const domain = { kind: 's3' as const, role: 'domain' as const };
      process.env.DACP_ARTIFACTS = `s3://${bucket}/team-a`;
      try {
        await expect(readSource({ ...domain, bucket, prefix: 'team-a/models/' }, { baseDir: '/' })).rejects.toMatchObject({ type: 'SourceNotAllowed', message: expect.stringContaining("overlaps dacp's own artifacts") });
        await expect(readSource({ ...domain, bucket }, { baseDir: '/' })).rejects.toMatchObject({ type: 'SourceNotAllowed' });
        // A prefix is a folder: "team" is not "team-a", so it reads nothing of dacp's (and finds nothing here).
        await expect(readSource({ ...domain, bucket, prefix: 'team' }, { baseDir: '/' })).rejects.toMatchObject({ type: 'SourceNotFound' });
        process.env.DACP_S3_SOURCES = 's3://corp-docs/manuals';
        await expect(readSource({ ...domain, bucket: 'corp-docs', prefix: 'other/' }, { baseDir: '/' })).rejects.toMatchObject({ type: 'SourceNotAllowed', message: expect.stringContaining('DACP_S3_SOURCES') });
        await s3.client.send(new PutObjectCommand({ Bucket: 'corp-docs', Key: 'manuals-confidential/x.txt', Body: 'salaries' }));
        await expect(readSource({ ...domain, bucket: 'corp-docs', prefix: 'manuals-confidential' }, { baseDir: '/' })).rejects.toMatchObject({ type: 'SourceNotAllowed' });
        const read = await readSource({ ...domain, bucket: 'corp-docs', prefix: 'manuals', glob: '**/*.txt' }, { baseDir: '/' });
        expect(read.map((d) => d.origin).filter((o) => o.includes('confidential'))).toEqual([]);
        expect((await readSource({ ...domain, bucket: 'corp-docs', prefix: 'manuals/deep/' }, { baseDir: '/' })).length).toBe(1);
      } finally {
        delete process.env.DACP_ARTIFACTS;
        delete process.env.DACP_S3_SOURCES;
      }
    });

    test('run start refuses an s3 source that names nothing, or that it may not list, by field', async () => {
      const withSource = (extra: object) =>
        parseRunSpec(tinySpec({ sources: [...tinySpec().sources, { kind: 's3', role: 'domain', bucket: 'corp-docs', ...extra }] as never }));
      const baseDir = mkdtempSync(path.join(os.tmpdir(), 'dacp-spec-'));
      dirs.push(baseDir);
      writeTinyCorpus(baseDir);
      await expect(preflightSources(withSource({ prefix: 'manuals/', glob: '*.pdf' }), baseDir)).rejects.toThrow(/^sources\[3\]: s3:\/\/corp-docs\/manuals\/: no object matches \*\.pdf/);
      await preflightSources(withSource({ prefix: 'manuals/' }), baseDir);
      process.env.AWS_SECRET_ACCESS_KEY = 'wrong';
      try {
        await expect(preflightSources(withSource({ prefix: 'manuals/' }), baseDir)).rejects.toThrow(/^sources\[3\]: s3:\/\/corp-docs\/manuals\/: cannot list objects/);
      } finally {
        process.env.AWS_SECRET_ACCESS_KEY = s3.env.AWS_SECRET_ACCESS_KEY;
      }
      expect(() => withSource({ bucket: 's3://corp-docs/manuals' })).toThrow(/bucket.*name the bucket only/);
    });
  });
});
