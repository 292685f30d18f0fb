import { createHash } from 'crypto';
import * as os from 'os';
import { z } from 'zod';
import { isFloat32Array, isInt32Array } from './typedArrays';

/**
 * The safetensors format (https://github.com/huggingface/safetensors), so checkpoints and
 * models open in the Python ecosystem too:
 *
 *   [8 bytes: header length N, u64 little-endian]
 *   [N bytes: JSON {"name": {"dtype","shape","data_offsets":[begin,end]}, ..., "__metadata__": {str: str}},
 *             padded with spaces to a multiple of 8]
 *   [data: raw little-endian tensors; offsets are relative to the start of this section]
 */

export type SafetensorsDtype = 'F32' | 'I32';

export interface SafetensorsTensor {
  dtype: SafetensorsDtype;
  shape: number[];
  data: Float32Array | Int32Array;
}

const BYTES_PER_ELEMENT: Record<SafetensorsDtype, number> = { F32: 4, I32: 4 };
const METADATA_KEY = '__metadata__';
/** Same cap as the reference implementation: a larger header is almost surely corruption. */
const MAX_HEADER_BYTES = 100_000_000;

export function assertLittleEndianHost(): void {
  if (os.endianness() !== 'LE') throw new Error('safetensors: big-endian hosts are not supported');
}

/** The header of a safetensors file for `tensors` (names in sorted order) and the size of its data section. */
export function safetensorsHeader(
  tensors: Record<string, SafetensorsTensor>,
  metadata?: Record<string, string>,
): { header: Buffer; names: string[]; dataBytes: number } {
  assertLittleEndianHost();
  const names = Object.keys(tensors).sort();
  const entries: Record<string, unknown> = {};
  if (metadata !== undefined && Object.keys(metadata).length > 0) entries[METADATA_KEY] = { ...metadata };
  let offset = 0;
  for (const name of names) {
    if (name === METADATA_KEY) throw new Error(`safetensors: "${METADATA_KEY}" is reserved and cannot name a tensor`);
    const tensor = tensors[name] as SafetensorsTensor;
    const expected = elementCount(tensor.shape, name);
    const isRightType = tensor.dtype === 'F32' ? isFloat32Array(tensor.data) : isInt32Array(tensor.data);
    if (!isRightType) throw new Error(`safetensors: tensor "${name}" is declared ${tensor.dtype} but holds a ${tensor.data.constructor.name}`);
    if (tensor.data.length !== expected) {
      throw new Error(`safetensors: tensor "${name}" has ${tensor.data.length} values but shape [${tensor.shape.join(',')}] needs ${expected}`);
    }
    const bytes = expected * BYTES_PER_ELEMENT[tensor.dtype];
    entries[name] = { dtype: tensor.dtype, shape: tensor.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(entries);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const body = Buffer.from(json, 'utf8');
  const header = Buffer.alloc(8 + body.length);
  header.writeBigUInt64LE(BigInt(body.length), 0);
  body.copy(header, 8);
  return { header, names, dataBytes: offset };
}

/** The bytes of one tensor's data, as the file holds them (little-endian). */
export function tensorBytes(tensor: SafetensorsTensor): Uint8Array {
  return new Uint8Array(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength);
}

export function encodeSafetensors(tensors: Record<string, SafetensorsTensor>, metadata?: Record<string, string>): Buffer {
  const { header, names, dataBytes } = safetensorsHeader(tensors, metadata);
  const out = Buffer.alloc(header.length + dataBytes);
  header.copy(out, 0);
  let cursor = header.length;
  for (const name of names) {
    const bytes = tensorBytes(tensors[name] as SafetensorsTensor);
    out.set(bytes, cursor);
    cursor += bytes.length;
  }
  return out;
}

const entrySchema = z.object({
  dtype: z.string(),
  shape: z.array(z.number().int().nonnegative()),
  data_offsets: z.tuple([z.number().int().nonnegative(), z.number().int().nonnegative()]),
});
const metadataSchema = z.record(z.string());

/** Half-precision dtypes a Hugging Face model may be stored in; read widened to F32. */
const HALF_DTYPES = { F16: 2, BF16: 2 } as const;
type HalfDtype = keyof typeof HALF_DTYPES;

/** IEEE half → float32, exactly (every half value is a float32 value). */
function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const fraction = h & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

function widen(bytes: Uint8Array, dtype: HalfDtype): Float32Array {
  const count = bytes.length / 2;
  const out = new Float32Array(count);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dtype === 'BF16') {
    // bfloat16 is the top half of a float32.
    const bits = new Uint32Array(out.buffer);
    for (let i = 0; i < count; i++) bits[i] = view.getUint16(i * 2, true) << 16;
  } else {
    for (let i = 0; i < count; i++) out[i] = halfToFloat(view.getUint16(i * 2, true));
  }
  return out;
}

export interface DecodeOptions {
  /** Read F16 and BF16 tensors widened to F32 (their stored dtype lands in `storedDtypes`). */
  widenHalf?: boolean;
}

export interface Decoded {
  tensors: Record<string, SafetensorsTensor>;
  metadata: Record<string, string>;
  storedDtypes: Record<string, string>;
}

/** One tensor's place in the data section, checked against the header. */
export interface TensorSpan {
  name: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
  /** Non-null when the tensor is read widened from a half-precision dtype. */
  half: HalfDtype | null;
}

/** Length of the JSON header from the first 8 bytes, checked against the file's size. */
export function headerLengthOf(first8: Buffer, totalBytes: number, corrupt: (why: string) => Error): number {
  if (totalBytes < 8) throw corrupt('shorter than the 8-byte header length');
  const headerLength = first8.readBigUInt64LE(0);
  if (headerLength > BigInt(MAX_HEADER_BYTES)) throw corrupt(`header length ${headerLength} is implausibly large`);
  if (BigInt(8) + headerLength > BigInt(totalBytes)) throw corrupt(`header says ${headerLength} bytes but only ${totalBytes - 8} follow (truncated?)`);
  return Number(headerLength);
}

/**
 * The header's tensors, in data order, and its metadata, checked: known dtypes, sizes that match
 * shapes, and spans that tile the data section exactly (like the reference implementation, so
 * trailing garbage or a truncated final tensor is detected rather than silently ignored).
 */
export function parseSafetensorsHeader(
  json: Buffer,
  dataLength: number,
  o: DecodeOptions,
  corrupt: (why: string) => Error,
): { spans: TensorSpan[]; metadata: Record<string, string> } {
  let header: unknown;
  try {
    header = JSON.parse(json.toString('utf8'));
  } catch (error) {
    throw corrupt(`header is not JSON (${error instanceof Error ? error.message : String(error)})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw corrupt('header is not a JSON object');
  const entries = header as Record<string, unknown>;

  let metadata: Record<string, string> = {};
  if (entries[METADATA_KEY] !== undefined) {
    const parsed = metadataSchema.safeParse(entries[METADATA_KEY]);
    if (!parsed.success) throw corrupt(`"${METADATA_KEY}" must map strings to strings`);
    metadata = parsed.data;
  }

  const spans: TensorSpan[] = [];
  for (const [name, raw] of Object.entries(entries)) {
    if (name === METADATA_KEY) continue;
    const parsed = entrySchema.safeParse(raw);
    if (!parsed.success) throw corrupt(`tensor "${name}" has a malformed entry`);
    const { dtype, shape, data_offsets: [begin, end] } = parsed.data;
    const half = o.widenHalf && (dtype === 'F16' || dtype === 'BF16') ? (dtype as HalfDtype) : null;
    if (dtype !== 'F32' && dtype !== 'I32' && !half) {
      throw corrupt(`tensor "${name}" has unsupported dtype ${dtype} (supported: F32, I32${o.widenHalf ? ', F16, BF16' : ''})`);
    }
    const width = half ? HALF_DTYPES[half] : BYTES_PER_ELEMENT[dtype as SafetensorsDtype];
    if (end < begin || end > dataLength) throw corrupt(`tensor "${name}" spans bytes ${begin}..${end} but the data section has ${dataLength} (truncated?)`);
    const count = elementCount(shape, name);
    if (end - begin !== count * width) throw corrupt(`tensor "${name}" has ${end - begin} bytes, shape [${shape.join(',')}] needs ${count * width}`);
    spans.push({ name, dtype, shape, begin, end, half });
  }
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let expectedBegin = 0;
  for (const span of spans) {
    if (span.begin !== expectedBegin) throw corrupt(`tensor "${span.name}" starts at byte ${span.begin}, expected ${expectedBegin} (overlap or gap)`);
    expectedBegin = span.end;
  }
  if (expectedBegin !== dataLength) throw corrupt(`data section has ${dataLength} bytes but tensors cover ${expectedBegin}`);
  return { spans, metadata };
}

/** A tensor from its own copy of the bytes (aligned for a typed-array view), widened when half. */
export function tensorOf(span: TensorSpan, bytes: Uint8Array): SafetensorsTensor {
  if (span.half) return { dtype: 'F32', shape: span.shape, data: widen(bytes, span.half) };
  return { dtype: span.dtype as SafetensorsDtype, shape: span.shape, data: span.dtype === 'F32' ? new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4) : new Int32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4) };
}

export function decodeSafetensors(buf: Buffer, o: DecodeOptions = {}): Decoded {
  assertLittleEndianHost();
  const corrupt = (why: string): Error => new Error(`not a valid safetensors buffer (${buf.length} bytes): ${why}`);
  const headerEnd = 8 + headerLengthOf(buf.subarray(0, 8), buf.length, corrupt);
  const { spans, metadata } = parseSafetensorsHeader(buf.subarray(8, headerEnd), buf.length - headerEnd, o, corrupt);
  const tensors: Record<string, SafetensorsTensor> = {};
  const storedDtypes: Record<string, string> = {};
  for (const span of spans) {
    // Copy out: the data may sit at an offset a Float32Array view cannot start at.
    const bytes = new Uint8Array(span.end - span.begin);
    bytes.set(buf.subarray(headerEnd + span.begin, headerEnd + span.end));
    tensors[span.name] = tensorOf(span, bytes);
    storedDtypes[span.name] = span.dtype;
  }
  return { tensors, metadata, storedDtypes };
}

function elementCount(shape: number[], name: string): number {
  if (!shape.every((d) => Number.isInteger(d) && d >= 0)) throw new Error(`safetensors: tensor "${name}" has invalid shape [${shape.join(',')}]`);
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * sha256 over every tensor's name, dtype, shape and bytes, in name order. safetensors has no
 * checksum of its own; dacp stores this digest in the metadata so a flipped bit in a checkpoint
 * is caught on load instead of silently resuming from damaged weights.
 */
export function tensorsDigest(tensors: Record<string, SafetensorsTensor>): string {
  const hash = createHash('sha256');
  for (const name of Object.keys(tensors).sort()) {
    const { dtype, shape, data } = tensors[name] as SafetensorsTensor;
    hash.update(JSON.stringify([name, dtype, shape]));
    hash.update(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  }
  return hash.digest('hex');
}
