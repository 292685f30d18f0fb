/**
 * Artifacts in S3-compatible object storage (`DACP_ARTIFACTS=s3://bucket/prefix`), through the
 * official SDK (@aws-sdk/client-s3). The object storage is the store; each host keeps a local,
 * hash-checked cache of what it wrote or read (`<DACP_HOME>/artifacts`), because trainers and
 * model loaders read files. Everything is streamed: uploads read the file part by part, downloads
 * write it chunk by chunk while hashing, and no model or checkpoint is ever one Buffer.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ApplicationFailure } from '@temporalio/common';
import type { ArtifactRef } from '../schemas/pipeline';
import { ArtifactStore } from './artifacts';

// The SDK warns on Node 20 that releases after January 2027 will need Node 22; this project pins
// its release, so the warning would only clutter every command's output.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
// Loaded on first use: a local store never pays for the SDK.
type S3Sdk = typeof import('@aws-sdk/client-s3');
let sdk: S3Sdk | undefined;
function s3sdk(): S3Sdk {
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- lazy on purpose: a local store never loads the SDK
  return (sdk ??= require('@aws-sdk/client-s3') as S3Sdk);
}
type S3Client = import('@aws-sdk/client-s3').S3Client;

/** An `s3://bucket/prefix` location. */
export interface S3Location {
  bucket: string;
  /** Without leading or trailing slashes; '' for the bucket's root. */
  prefix: string;
}

/** Parses `s3://bucket[/prefix]`; `field` names the setting in the error. */
export function parseS3Url(url: string, field = 'DACP_ARTIFACTS'): S3Location {
  const match = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(url.trim());
  if (!match) {
    throw new Error(`${field}=${url} is not an S3 location; give s3://BUCKET or s3://BUCKET/PREFIX (a bucket name is 3–63 lowercase letters, digits, "." or "-")`);
  }
  return { bucket: match[1], prefix: (match[2] ?? '').replace(/^\/+|\/+$/g, '') };
}

/**
 * An S3 client from the standard AWS settings: AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) for an
 * S3-compatible server, AWS_REGION, and the SDK's credential chain (AWS_ACCESS_KEY_ID and
 * AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web identity, instance roles). With a custom endpoint,
 * path-style addressing is used unless DACP_S3_PATH_STYLE=false.
 */
export function s3Client(env: NodeJS.ProcessEnv = process.env): S3Client {
  const endpoint = env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL;
  const region = env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? (endpoint ? 'us-east-1' : undefined);
  if (!region) throw new Error('object storage needs a region: set AWS_REGION (e.g. AWS_REGION=eu-central-1)');
  const pathStyle = env.DACP_S3_PATH_STYLE ? env.DACP_S3_PATH_STYLE !== 'false' : Boolean(endpoint);
  return new (s3sdk().S3Client)({
    region,
    ...(endpoint ? { endpoint } : {}),
    forcePathStyle: pathStyle,
    // Keys in `env` (which need not be process.env) are used as given; otherwise the SDK's chain.
    ...(env.AWS_ACCESS_KEY_ID && env.AWS_SECRET_ACCESS_KEY
      ? { credentials: { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY, ...(env.AWS_SESSION_TOKEN ? { sessionToken: env.AWS_SESSION_TOKEN } : {}) } }
      : {}),
    // dacp checks every object's sha256 itself; the SDK's default CRC trailers are not spoken by
    // every S3-compatible server.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: 5,
  });
}

/** Part size for multipart uploads: DACP_S3_PART_MB (default 64, at least 5 as S3 requires). */
export function partBytes(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.DACP_S3_PART_MB;
  if (raw === undefined) return 64 * 1024 * 1024;
  const mb = Number(raw);
  if (!Number.isFinite(mb) || mb < 5 || mb > MAX_PART_MB) throw new Error(`DACP_S3_PART_MB=${raw}: give a part size in MB between 5 and 5120 (S3's limits), e.g. 64`);
  return Math.floor(mb * 1024 * 1024);
}

/** S3's limits: parts per upload, and the largest part (and single PUT). */
const MAX_PARTS = 10_000;
const MAX_PART_MB = 5 * 1024;

/** Objects up to this size are sent from memory in one request. */
const SMALL_OBJECT_BYTES = 8 * 1024 * 1024;

function statusOf(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
}

function nameOf(err: unknown): string {
  return (err as { name?: string }).name ?? 'Error';
}

/** A failed call to the object storage as a message an operator can act on (retryable: outages end). */
function storageFailure(action: string, where: string, err: unknown): ApplicationFailure {
  const status = statusOf(err);
  const name = nameOf(err);
  const hint =
    name === 'CredentialsProviderError'
      ? 'no credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or give the host a role'
      : status === 403 || name === 'AccessDenied' || name === 'InvalidAccessKeyId' || name === 'SignatureDoesNotMatch'
      ? 'access denied; check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or the role) and that the bucket policy allows s3:GetObject, s3:PutObject, s3:DeleteObject, s3:ListBucket and s3:AbortMultipartUpload on this prefix'
      : name === 'NoSuchBucket'
        ? 'no such bucket; create it or fix DACP_ARTIFACTS'
        : (err as Error).message;
  return ApplicationFailure.retryable(`object storage: cannot ${action} ${where} (${name}${status ? ` ${status}` : ''}: ${hint})`, 'ArtifactStorageFailed');
}

/**
 * Content-addressed objects under `s3://bucket/prefix/<kind>/<sha[0:2]>/<sha>.<ext>`, with a
 * local cache under `cacheDir`. A write lands in the cache first (where it is hashed), then is
 * uploaded with `If-None-Match: *`, so it never replaces an object already under that key; large
 * files go up as multipart uploads, which S3 shows under their key only once completed, and which
 * are aborted when they fail (and swept by `sweepUploads` after a crash). A read downloads into
 * the cache, hashing on the way, and keeps the file only when the hash is the one asked for.
 */
export class S3ArtifactStore extends ArtifactStore {
  readonly bucket: string;
  readonly prefix: string;

  constructor(
    cacheDir: string,
    location: S3Location,
    readonly client: S3Client = s3Client(),
    readonly partSize: number = partBytes(),
  ) {
    super(cacheDir);
    this.bucket = location.bucket;
    this.prefix = location.prefix;
  }

  override get location(): string {
    return `s3://${this.bucket}${this.prefix ? `/${this.prefix}` : ''}`;
  }

  /** The object key for an artifact URI: the same layout as the local folder. */
  keyOf(uri: string): string {
    const relative = path.relative(this.root, this.pathOf(uri)).split(path.sep).join('/');
    return this.prefix ? `${this.prefix}/${relative}` : relative;
  }

  protected override async published(ref: ArtifactRef): Promise<ArtifactRef> {
    const key = this.keyOf(ref.uri);
    if (await this.exists(key)) return ref;
    await this.upload(key, this.pathOf(ref.uri), ref.bytes, ref.sha256);
    return ref;
  }

  protected override async fetched(ref: { uri: string; sha256: string }): Promise<void> {
    const file = this.pathOf(ref.uri);
    try {
      await fs.access(file);
      return; // cached; every read below checks the hash itself
    } catch {
      // not in this host's cache: download it
    }
    await this.download(this.keyOf(ref.uri), file, ref);
  }

  // A damaged file in this host's cache is not the store's copy: drop it and read the object again.
  override async get(ref: { uri: string; sha256: string }): Promise<Buffer> {
    return this.refetching(ref, () => super.get(ref));
  }

  override async getSafetensors(ref: { uri: string; sha256: string }, o: Parameters<ArtifactStore['getSafetensors']>[1] = {}): ReturnType<ArtifactStore['getSafetensors']> {
    return this.refetching(ref, () => super.getSafetensors(ref, o));
  }

  override async copyOut(ref: { uri: string; sha256: string }, dest: string): Promise<void> {
    return this.refetching(ref, () => super.copyOut(ref, dest));
  }

  override async verify(ref: { uri: string; sha256: string }): Promise<boolean> {
    if (await super.verify(ref)) return true;
    await fs.rm(this.pathOf(ref.uri), { force: true });
    return super.verify(ref);
  }

  private async refetching<T>(ref: { uri: string }, read: () => Promise<T>): Promise<T> {
    try {
      return await read();
    } catch (err) {
      if ((err as ApplicationFailure).type !== 'ArtifactCorrupted') throw err;
      await fs.rm(this.pathOf(ref.uri), { force: true });
      return read();
    }
  }

  /** From the cached file when there is one, else a ranged GET (a header without the model's weights). */
  override async readRange(ref: { uri: string }, start: number, length: number): Promise<Buffer> {
    if (existsSync(this.pathOf(ref.uri))) return super.readRange(ref, start, length);
    const key = this.keyOf(ref.uri);
    try {
      const got = await this.client.send(new (s3sdk().GetObjectCommand)({ Bucket: this.bucket, Key: key, Range: `bytes=${start}-${start + length - 1}` }));
      return Buffer.from(await got.Body!.transformToByteArray());
    } catch (err) {
      if (statusOf(err) === 416) return Buffer.alloc(0);
      throw storageFailure('read part of', `s3://${this.bucket}/${key}`, err);
    }
  }

  /** The cached file, checked against its sha256 (and read again from the store when it is not). */
  override async localFile(ref: { uri: string; sha256: string }): Promise<string> {
    if (!(await this.verify(ref))) throw ApplicationFailure.nonRetryable(`artifact ${ref.uri} is corrupted in ${this.location}`, 'ArtifactCorrupted');
    return this.pathOf(ref.uri);
  }

  override async remove(ref: { uri: string }): Promise<void> {
    await super.remove(ref);
    const key = this.keyOf(ref.uri);
    try {
      await this.client.send(new (s3sdk().DeleteObjectCommand)({ Bucket: this.bucket, Key: key }));
    } catch (err) {
      throw storageFailure('delete', `s3://${this.bucket}/${key}`, err);
    }
  }

  override async sizeOf(ref: { uri: string }): Promise<number> {
    const key = this.keyOf(ref.uri);
    try {
      const head = await this.client.send(new (s3sdk().HeadObjectCommand)({ Bucket: this.bucket, Key: key }));
      return head.ContentLength ?? 0;
    } catch (err) {
      throw storageFailure('read the size of', `s3://${this.bucket}/${key}`, err);
    }
  }

  /** True when an object is stored under `key`. */
  async exists(key: string): Promise<boolean> {
    try {
      await this.client.send(new (s3sdk().HeadObjectCommand)({ Bucket: this.bucket, Key: key }));
      return true;
    } catch (err) {
      if (statusOf(err) === 404 || nameOf(err) === 'NotFound' || nameOf(err) === 'NoSuchKey') return false;
      // S3 answers 403 for a missing key to a role without s3:ListBucket: let the conditional put decide.
      if (statusOf(err) === 403) return false;
      throw storageFailure('look up', `s3://${this.bucket}/${key}`, err);
    }
  }

  /**
   * Abort multipart uploads under this prefix that were started more than `olderThanMs` ago: what
   * a worker killed mid-upload leaves behind (their parts are never visible as objects, but they
   * take space). Returns the keys whose uploads were aborted.
   */
  async sweepUploads(olderThanMs: number, now = Date.now()): Promise<string[]> {
    const { ListMultipartUploadsCommand, AbortMultipartUploadCommand } = s3sdk();
    const aborted: string[] = [];
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    for (;;) {
      let page;
      try {
        page = await this.client.send(
          new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: this.prefix ? `${this.prefix}/` : undefined, KeyMarker: keyMarker, UploadIdMarker: uploadIdMarker }),
        );
      } catch (err) {
        throw storageFailure('list the unfinished uploads in', this.location, err);
      }
      for (const upload of page.Uploads ?? []) {
        if (!upload.Key || !upload.UploadId) continue;
        if (upload.Initiated && now - upload.Initiated.getTime() < olderThanMs) continue;
        await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: upload.Key, UploadId: upload.UploadId })).catch(() => undefined);
        aborted.push(upload.Key);
      }
      if (!page.IsTruncated) return aborted;
      keyMarker = page.NextKeyMarker;
      uploadIdMarker = page.NextUploadIdMarker;
    }
  }

  private async upload(key: string, file: string, bytes: number, sha256: string): Promise<void> {
    const where = `s3://${this.bucket}/${key}`;
    const { PutObjectCommand } = s3sdk();
    if (bytes <= this.partSize) {
      try {
        await this.client.send(
          new PutObjectCommand({
            Bucket: this.bucket,
            Key: key,
            // Small files as bytes (the SDK can retry them, and a refused put of a stream is logged
            // as a warning); larger ones streamed from the file.
            Body: bytes <= SMALL_OBJECT_BYTES ? await fs.readFile(file) : createReadStream(file),
            ContentLength: bytes,
            IfNoneMatch: '*',
            Metadata: { sha256 },
          }),
        );
      } catch (err) {
        // 412: an object is already under the key (another worker stored these bytes): never replaced.
        // (A 409 is a concurrent conflict to retry, not proof that the object exists.)
        if (statusOf(err) === 412) return;
        throw storageFailure('upload', where, err);
      }
      return;
    }
    await this.uploadMultipart(key, file, bytes, sha256, where);
  }

  private async uploadMultipart(key: string, file: string, bytes: number, sha256: string, where: string): Promise<void> {
    const { CreateMultipartUploadCommand, UploadPartCommand, CompleteMultipartUploadCommand, AbortMultipartUploadCommand } = s3sdk();
    let uploadId: string;
    try {
      const created = await this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: key, Metadata: { sha256 } }));
      uploadId = created.UploadId as string;
    } catch (err) {
      throw storageFailure('start a multipart upload of', where, err);
    }
    try {
      // S3 takes at most 10,000 parts: a file past 10,000 parts of the configured size gets larger ones.
      const partSize = Math.max(this.partSize, Math.ceil(bytes / MAX_PARTS));
      const count = Math.ceil(bytes / partSize);
      const parts: { PartNumber: number; ETag: string }[] = new Array(count);
      // A few parts in flight at once, each streamed from its range of the file.
      let next = 0;
      const lanes = Array.from({ length: Math.min(4, count) }, async () => {
        while (next < count) {
          const index = next++;
          const start = index * partSize;
          const end = Math.min(bytes, start + partSize);
          const sent = await this.client.send(
            new UploadPartCommand({
              Bucket: this.bucket,
              Key: key,
              UploadId: uploadId,
              PartNumber: index + 1,
              Body: createReadStream(file, { start, end: end - 1 }),
              ContentLength: end - start,
            }),
          );
          parts[index] = { PartNumber: index + 1, ETag: sent.ETag as string };
        }
      });
      await Promise.all(lanes);
      try {
        await this.client.send(
          new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId, IfNoneMatch: '*', MultipartUpload: { Parts: parts } }),
        );
      } catch (err) {
        if (statusOf(err) === 412) {
          await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId })).catch(() => undefined);
          return; // another worker completed the same content first
        }
        throw err;
      }
    } catch (err) {
      // Never leave the parts behind: an aborted upload frees them, and nothing was visible under `key`.
      await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId })).catch(() => undefined);
      throw storageFailure('upload', where, err);
    }
  }

  private async download(key: string, file: string, ref: { uri: string; sha256: string }): Promise<void> {
    const where = `s3://${this.bucket}/${key}`;
    let body: Readable;
    try {
      const got = await this.client.send(new (s3sdk().GetObjectCommand)({ Bucket: this.bucket, Key: key }));
      body = got.Body as Readable;
    } catch (err) {
      if (statusOf(err) === 404 || nameOf(err) === 'NoSuchKey') {
        throw ApplicationFailure.nonRetryable(`artifact ${ref.uri} is missing from ${where}; was DACP_ARTIFACTS changed, or the object deleted?`, 'ArtifactMissing');
      }
      throw storageFailure('download', where, err);
    }
    const dir = path.dirname(file);
    await fs.mkdir(dir, { recursive: true });
    const temp = path.join(dir, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
    const hash = createHash('sha256');
    const tap = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        hash.update(chunk);
        done(null, chunk);
      },
    });
    try {
      await pipeline(body, tap, createWriteStream(temp));
    } catch (err) {
      await fs.rm(temp, { force: true }).catch(() => undefined);
      if ((err as NodeJS.ErrnoException).syscall) throw err; // the local disk, not the storage
      throw storageFailure('download', where, err);
    }
    const actual = hash.digest('hex');
    if (actual !== ref.sha256) {
      await fs.rm(temp, { force: true });
      throw ApplicationFailure.nonRetryable(`artifact ${ref.uri} is corrupted in ${where}: sha256 ${actual} instead of ${ref.sha256}`, 'ArtifactCorrupted');
    }
    // On disk before it has its name: a crash never leaves a short file in the cache.
    const handle = await fs.open(temp, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(temp, file);
  }
}

/**
 * The artifact store this process uses: object storage where DACP_ARTIFACTS is an `s3://` URL
 * (with `dir` as the local cache), else the folder `dir` (DACP_ARTIFACTS may also name a folder).
 */
export function openArtifactStore(dir: string, env: NodeJS.ProcessEnv = process.env): ArtifactStore {
  const setting = env.DACP_ARTIFACTS?.trim();
  if (!setting) return new ArtifactStore(dir);
  if (setting.startsWith('s3://')) return new S3ArtifactStore(dir, parseS3Url(setting), s3Client(env), partBytes(env));
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(setting)) {
    throw new Error(`DACP_ARTIFACTS=${setting}: dacp stores artifacts in a local folder or in S3-compatible object storage; give a folder or s3://BUCKET/PREFIX`);
  }
  return new ArtifactStore(path.resolve(setting));
}
