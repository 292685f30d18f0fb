import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fs } from 'node:fs';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ApplicationFailure } from '@temporalio/common';
import type { DecodeOptions, Decoded, SafetensorsTensor } from '../ml/safetensors';
import { readSafetensorsFile, SafetensorsHashMismatch, writeSafetensorsFile } from '../ml/safetensorsFile';
import type { ArtifactRef } from '../schemas/pipeline';

const URI_PATTERN = /^artifact:([a-z-]+)\/([0-9a-f]{64})\.([a-z0-9.]+)$/;

export const ARTIFACT_URI = URI_PATTERN;

export function sha256Hex(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * Content-addressed files under `<DACP_HOME>/artifacts`. A file's name is its sha256, so the same
 * bytes are stored once and a retried write is a no-op. Writes go to a temporary file, are fsynced
 * and renamed into place, so a crash never leaves a half-written artifact under its final name.
 * Reads verify the hash, so a corrupted file is never used.
 */
export class ArtifactStore {
  constructor(readonly root: string) {}

  pathOf(uri: string): string {
    const match = URI_PATTERN.exec(uri);
    if (!match) throw ApplicationFailure.nonRetryable(`not an artifact URI: ${uri}`, 'ArtifactUriInvalid');
    const [, kind, sha, ext] = match;
    return path.join(this.root, kind, sha.slice(0, 2), `${sha}.${ext}`);
  }

  async put(kind: string, data: Buffer, ext: string): Promise<ArtifactRef> {
    const sha256 = sha256Hex(data);
    const uri = `artifact:${kind}/${sha256}.${ext}`;
    const target = this.pathOf(uri);
    if (await this.isIntact(target, sha256)) return this.published({ uri, sha256, bytes: data.length });
    const dir = path.dirname(target);
    const temp = path.join(dir, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
    try {
      await fs.mkdir(dir, { recursive: true });
      const handle = await fs.open(temp, 'w');
      try {
        await handle.writeFile(data);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await fs.rename(temp, target);
    } catch (err) {
      // A partial temp file would hold on to the space a retry needs (and is never read).
      await fs.rm(temp, { force: true }).catch(() => undefined);
      throw writeFailure(uri, target, err);
    }
    await syncDirectory(dir);
    return this.published({ uri, sha256, bytes: data.length });
  }

  /**
   * Store a file of any size as an artifact, streamed: hashed while it is copied, never held in
   * memory whole (a model's weights may be several GB).
   */
  async putFile(kind: string, source: string, ext: string): Promise<ArtifactRef> {
    const staging = path.join(this.root, kind);
    await fs.mkdir(staging, { recursive: true });
    const temp = path.join(staging, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
    let sha256: string;
    let bytes: number;
    try {
      ({ sha256, bytes } = await copyHashing(source, temp));
    } catch (err) {
      await fs.rm(temp, { force: true }).catch(() => undefined);
      if ((err as NodeJS.ErrnoException).syscall === 'open' && (err as NodeJS.ErrnoException).path === source) throw err;
      throw writeFailure(`artifact:${kind}/(streamed).${ext}`, temp, err);
    }
    const uri = `artifact:${kind}/${sha256}.${ext}`;
    const target = this.pathOf(uri);
    if (await this.isIntact(target, sha256)) {
      await fs.rm(temp, { force: true });
      return this.published({ uri, sha256, bytes });
    }
    await fs.mkdir(path.dirname(target), { recursive: true });
    await fs.rename(temp, target);
    await syncDirectory(path.dirname(target));
    return this.published({ uri, sha256, bytes });
  }

  /**
   * Copy an artifact out to `dest`, streamed, checking on the way that it is exactly what `ref`
   * names; a corrupted artifact leaves no file at `dest`.
   */
  async copyOut(ref: { uri: string; sha256: string }, dest: string): Promise<void> {
    const temp = `${dest}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    let sha256: string;
    await this.fetched(ref);
    try {
      ({ sha256 } = await copyHashing(this.pathOf(ref.uri), temp));
    } catch (err) {
      await fs.rm(temp, { force: true }).catch(() => undefined);
      if ((err as NodeJS.ErrnoException).code === 'ENOENT' && (err as NodeJS.ErrnoException).path === this.pathOf(ref.uri)) {
        throw ApplicationFailure.nonRetryable(`artifact ${ref.uri} is missing from ${this.root}; was DACP_HOME changed?`, 'ArtifactMissing');
      }
      throw err;
    }
    if (sha256 !== ref.sha256) {
      await fs.rm(temp, { force: true });
      throw ApplicationFailure.nonRetryable(`artifact ${ref.uri} is corrupted: sha256 ${sha256} instead of ${ref.sha256}`, 'ArtifactCorrupted');
    }
    await fs.rename(temp, dest);
  }

  /**
   * Store tensors as a safetensors artifact, written tensor by tensor to a temporary file that is
   * then renamed into place: a model or checkpoint of several GB is never one Buffer.
   */
  async putSafetensors(kind: string, tensors: Record<string, SafetensorsTensor>, metadata?: Record<string, string>): Promise<ArtifactRef> {
    const staging = path.join(this.root, kind);
    const temp = path.join(staging, `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
    let sha256: string;
    let bytes: number;
    try {
      await fs.mkdir(staging, { recursive: true });
      ({ sha256, bytes } = await writeSafetensorsFile(temp, tensors, metadata));
    } catch (err) {
      await fs.rm(temp, { force: true }).catch(() => undefined);
      if ((err as NodeJS.ErrnoException).code === undefined) throw err; // a bad tensor, not the disk
      throw writeFailure(`artifact:${kind}/(streamed).safetensors`, temp, err);
    }
    const uri = `artifact:${kind}/${sha256}.safetensors`;
    const target = this.pathOf(uri);
    if (await this.isIntact(target, sha256)) {
      await fs.rm(temp, { force: true });
      return this.published({ uri, sha256, bytes });
    }
    try {
      await fs.mkdir(path.dirname(target), { recursive: true });
      await fs.rename(temp, target);
    } catch (err) {
      await fs.rm(temp, { force: true }).catch(() => undefined);
      throw writeFailure(uri, target, err);
    }
    await syncDirectory(path.dirname(target));
    return this.published({ uri, sha256, bytes });
  }

  /** Read a safetensors artifact tensor by tensor, checking on the way that it is exactly what `ref` names. */
  async getSafetensors(ref: { uri: string; sha256: string }, o: DecodeOptions = {}): Promise<Decoded> {
    await this.fetched(ref);
    try {
      return await readSafetensorsFile(this.pathOf(ref.uri), { ...o, sha256: ref.sha256 });
    } catch (err) {
      if (err instanceof SafetensorsHashMismatch) {
        throw ApplicationFailure.nonRetryable(`artifact ${ref.uri} is corrupted: sha256 ${err.actual} instead of ${ref.sha256}`, 'ArtifactCorrupted');
      }
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        throw ApplicationFailure.nonRetryable(`artifact ${ref.uri} is missing from ${this.root} (${code}); was DACP_HOME changed?`, 'ArtifactMissing');
      }
      if (code === undefined) {
        // The read stopped at bytes it could not parse: damaged, unless the whole file is what `ref` names.
        const actual = await hashFile(this.pathOf(ref.uri));
        if (actual !== ref.sha256) {
          throw ApplicationFailure.nonRetryable(`artifact ${ref.uri} is corrupted: sha256 ${actual} instead of ${ref.sha256}`, 'ArtifactCorrupted');
        }
      }
      throw err;
    }
  }

  async putJson(kind: string, value: unknown): Promise<ArtifactRef> {
    return this.put(kind, Buffer.from(JSON.stringify(value, null, 2) + '\n'), 'json');
  }

  /** Read an artifact and check it is exactly what `ref` names. */
  async get(ref: { uri: string; sha256: string }): Promise<Buffer> {
    const file = this.pathOf(ref.uri);
    await this.fetched(ref);
    let data: Buffer;
    try {
      data = await fs.readFile(file);
    } catch (err) {
      throw ApplicationFailure.nonRetryable(
        `artifact ${ref.uri} is missing from ${this.root} (${(err as NodeJS.ErrnoException).code}); was DACP_HOME changed?`,
        'ArtifactMissing',
      );
    }
    const actual = sha256Hex(data);
    if (actual !== ref.sha256) {
      throw ApplicationFailure.nonRetryable(
        `artifact ${ref.uri} is corrupted: sha256 ${actual} instead of ${ref.sha256}`,
        'ArtifactCorrupted',
      );
    }
    return data;
  }

  async getJson<T>(ref: { uri: string; sha256: string }): Promise<T> {
    return JSON.parse((await this.get(ref)).toString('utf8')) as T;
  }

  /** Delete an artifact's file (pruned checkpoints); missing files are fine. */
  async remove(ref: { uri: string }): Promise<void> {
    await fs.rm(this.pathOf(ref.uri), { force: true });
  }

  /** The artifact's size in bytes, from the file system (verify() checks its content). */
  async sizeOf(ref: { uri: string }): Promise<number> {
    return (await fs.stat(this.pathOf(ref.uri))).size;
  }

  /** True when the artifact exists and hashes to what it should. */
  async verify(ref: { uri: string; sha256: string }): Promise<boolean> {
    try {
      await this.fetched(ref);
    } catch (err) {
      // Missing or damaged is an answer; an unreachable store is not (the caller's activity retries).
      const type = (err as ApplicationFailure).type;
      if (type === 'ArtifactMissing' || type === 'ArtifactCorrupted') return false;
      throw err;
    }
    return this.isIntact(this.pathOf(ref.uri), ref.sha256);
  }

  /**
   * A local file that holds the artifact, for readers that need a path (a model file's header, an
   * external trainer's resume checkpoint). With object storage the file is fetched into the local
   * cache first, streamed and checked against its sha256 on the way.
   */
  async localFile(ref: { uri: string; sha256: string }): Promise<string> {
    await this.fetched(ref);
    return this.pathOf(ref.uri);
  }

  /**
   * `length` bytes from `start` (fewer at the end), for a header read without the rest of a
   * model. Not hash-checked: only a whole read can be; use it for what the whole read would confirm.
   */
  async readRange(ref: { uri: string }, start: number, length: number): Promise<Buffer> {
    const handle = await fs.open(this.pathOf(ref.uri), 'r');
    try {
      const buffer = Buffer.alloc(length);
      const { bytesRead } = await handle.read(buffer, 0, length, start);
      return buffer.subarray(0, bytesRead);
    } finally {
      await handle.close();
    }
  }

  /** Where artifacts live, for messages: the folder, or the object storage URL. */
  get location(): string {
    return this.root;
  }

  /** Called after every write with the file in place under `pathOf(ref.uri)`; object storage uploads it here. */
  protected async published(ref: ArtifactRef): Promise<ArtifactRef> {
    return ref;
  }

  /** Called before every read; object storage brings a missing file into the local folder here. */
  protected async fetched(_ref: { uri: string; sha256: string }): Promise<void> {
    // The local folder is the store itself: nothing to fetch.
  }

  /** Hash-checked: true when `file` exists and hashes to `sha256`. */
  protected async isIntact(file: string, sha256: string): Promise<boolean> {
    try {
      return (await hashFile(file)) === sha256;
    } catch {
      return false;
    }
  }
}

/**
 * A failed artifact write as a message a user can act on. Retryable: a full or read-only disk is
 * usually fixed by an operator, and a retried training attempt resumes from its last checkpoint.
 */
function writeFailure(uri: string, file: string, err: unknown): ApplicationFailure {
  const code = (err as NodeJS.ErrnoException).code;
  const why =
    code === 'ENOSPC' || code === 'EDQUOT'
      ? 'no space left on the device; free space there'
      : code === 'EROFS'
        ? 'the file system is read-only; remount it read-write'
        : code === 'EACCES' || code === 'EPERM'
          ? 'permission denied; make the directory writable by the worker'
          : (err as Error).message;
  return ApplicationFailure.retryable(
    `cannot write artifact ${uri} to ${file} (${code ?? 'error'}: ${why}); nothing was stored under that name and earlier artifacts are intact`,
    'ArtifactWriteFailed',
  );
}

/** sha256 of a file, streamed. */
export async function hashFile(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Copies `source` to `dest` (fsynced), hashing the bytes on the way. */
export async function copyHashing(source: string, dest: string): Promise<{ sha256: string; bytes: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  const tap = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      hash.update(chunk);
      bytes += chunk.length;
      done(null, chunk);
    },
  });
  await pipeline(createReadStream(source), tap, createWriteStream(dest));
  const handle = await fs.open(dest, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
  return { sha256: hash.digest('hex'), bytes };
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
