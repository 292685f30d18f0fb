import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import {
  assertLittleEndianHost,
  headerLengthOf,
  parseSafetensorsHeader,
  safetensorsHeader,
  tensorBytes,
  tensorOf,
  type DecodeOptions,
  type Decoded,
  type SafetensorsTensor,
  type TensorSpan,
} from './safetensors';

/**
 * safetensors files read and written tensor by tensor, so a model of several GB is never one
 * Buffer (Node caps a Buffer at 4 GiB, and a second whole copy of the weights would double the
 * peak). The file's sha256 is computed on the way, in the same pass.
 */

/** Reads at most this much at a time into a tensor's own memory. */
const CHUNK = 16 * 2 ** 20;

export class SafetensorsHashMismatch extends Error {
  constructor(readonly actual: string) {
    super(`sha256 ${actual}`);
  }
}

/**
 * Reads `file` tensor by tensor. With `sha256`, the whole file must hash to it: a mismatch throws
 * SafetensorsHashMismatch after the read, and nothing read is returned.
 */
export async function readSafetensorsFile(file: string, o: DecodeOptions & { sha256?: string } = {}): Promise<Decoded & { sha256: string; bytes: number }> {
  assertLittleEndianHost();
  const handle = await fs.open(file, 'r');
  try {
    const { size } = await handle.stat();
    const corrupt = (why: string): Error => new Error(`not a valid safetensors file (${file}, ${size} bytes): ${why}`);
    const hash = createHash('sha256');
    let position = 0;
    const readInto = async (target: Uint8Array): Promise<void> => {
      for (let done = 0; done < target.length; ) {
        const { bytesRead } = await handle.read(target, done, Math.min(CHUNK, target.length - done), position);
        if (bytesRead === 0) throw corrupt(`ends at byte ${position} (truncated while reading)`);
        done += bytesRead;
        position += bytesRead;
      }
      hash.update(target);
    };
    const first8 = Buffer.alloc(Math.min(8, size));
    await readInto(first8);
    const headerLength = headerLengthOf(first8, size, corrupt);
    const json = Buffer.alloc(headerLength);
    await readInto(json);
    const { spans, metadata } = parseSafetensorsHeader(json, size - 8 - headerLength, o, corrupt);
    const tensors: Record<string, SafetensorsTensor> = {};
    const storedDtypes: Record<string, string> = {};
    for (const span of spans) {
      const bytes = new Uint8Array(span.end - span.begin);
      await readInto(bytes);
      tensors[span.name] = tensorOf(span, bytes);
      storedDtypes[span.name] = span.dtype;
    }
    const sha256 = hash.digest('hex');
    if (o.sha256 !== undefined && sha256 !== o.sha256) throw new SafetensorsHashMismatch(sha256);
    return { tensors, metadata, storedDtypes, sha256, bytes: size };
  } finally {
    await handle.close();
  }
}

/** Writes `tensors` to `file` (created, fsynced), tensor by tensor; returns the file's sha256 and size. */
export async function writeSafetensorsFile(
  file: string,
  tensors: Record<string, SafetensorsTensor>,
  metadata?: Record<string, string>,
): Promise<{ sha256: string; bytes: number }> {
  const { header, names } = safetensorsHeader(tensors, metadata);
  const hash = createHash('sha256');
  const handle = await fs.open(file, 'w');
  let bytes = 0;
  try {
    const write = async (data: Uint8Array): Promise<void> => {
      for (let done = 0; done < data.length; ) {
        const { bytesWritten } = await handle.write(data, done, Math.min(CHUNK, data.length - done));
        done += bytesWritten;
      }
      hash.update(data);
      bytes += data.length;
    };
    await write(header);
    for (const name of names) await write(tensorBytes(tensors[name] as SafetensorsTensor));
    await handle.sync();
  } finally {
    await handle.close();
  }
  return { sha256: hash.digest('hex'), bytes };
}

/** Only the header's metadata (and the tensors' names, dtypes and shapes), without reading the data. */
export async function readSafetensorsHeader(file: string): Promise<{ metadata: Record<string, string>; spans: TensorSpan[] }> {
  assertLittleEndianHost();
  const handle = await fs.open(file, 'r');
  try {
    const { size } = await handle.stat();
    const corrupt = (why: string): Error => new Error(`not a valid safetensors file (${file}, ${size} bytes): ${why}`);
    const first8 = Buffer.alloc(Math.min(8, size));
    await handle.read(first8, 0, first8.length, 0);
    const headerLength = headerLengthOf(first8, size, corrupt);
    const json = Buffer.alloc(headerLength);
    await handle.read(json, 0, headerLength, 8);
    return parseSafetensorsHeader(json, size - 8 - headerLength, {}, corrupt);
  } finally {
    await handle.close();
  }
}
