import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { DefaultFailureConverter, type Payload, type PayloadCodec } from '@temporalio/common';
import { temporal } from '@temporalio/proto';

/**
 * Payload encryption: every payload the client and the workers send to Temporal (inputs, results,
 * memos, update arguments, heartbeat details, and failure messages and stack traces) is sealed with
 * AES-256-GCM under a key id, so Temporal's server, its database and its UI hold only ciphertext.
 * Keys come from the environment (`DACP_PAYLOAD_KEYS`) or a key file (`DACP_PAYLOAD_KEY_FILE`),
 * never from history or logs. The first key encrypts; every listed key decrypts, so a new key can
 * be put first without breaking runs whose history was written under an older one.
 */

export const ENCRYPTED_ENCODING = 'binary/encrypted';
const utf8 = (text: string) => new TextEncoder().encode(text);
const text = (bytes: Uint8Array | null | undefined) => (bytes ? Buffer.from(bytes).toString('utf8') : '');

export interface PayloadKey {
  id: string;
  key: Buffer;
}

export class AesGcmCodec implements PayloadCodec {
  private readonly byId: Map<string, Buffer>;

  constructor(private readonly keys: PayloadKey[]) {
    if (keys.length === 0) throw new Error('the payload codec needs at least one key');
    this.byId = new Map(keys.map((k) => [k.id, k.key]));
  }

  async encode(payloads: Payload[]): Promise<Payload[]> {
    const { id, key } = this.keys[0]!;
    return payloads.map((payload) => {
      const iv = randomBytes(12);
      const cipher = createCipheriv('aes-256-gcm', key, iv);
      cipher.setAAD(Buffer.from(id));
      const plain = temporal.api.common.v1.Payload.encode(payload).finish();
      const sealed = Buffer.concat([iv, cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
      return {
        metadata: { encoding: utf8(ENCRYPTED_ENCODING), 'encryption-key-id': utf8(id), 'encryption-cipher': utf8('AES-256-GCM') },
        data: sealed,
      };
    });
  }

  async decode(payloads: Payload[]): Promise<Payload[]> {
    return payloads.map((payload) => {
      if (text(payload.metadata?.encoding) !== ENCRYPTED_ENCODING) return payload;
      const id = text(payload.metadata?.['encryption-key-id']);
      const key = this.byId.get(id);
      if (!key) {
        throw new Error(`a payload is encrypted with key "${id}", which this process does not hold; add it to DACP_PAYLOAD_KEYS (after the current key) or the key file`);
      }
      const data = Buffer.from(payload.data ?? new Uint8Array());
      if (data.length < 28) throw new Error(`an encrypted payload (key "${id}") is too short to be one`);
      const decipher = createDecipheriv('aes-256-gcm', key, data.subarray(0, 12));
      decipher.setAAD(Buffer.from(id));
      decipher.setAuthTag(data.subarray(data.length - 16));
      let plain: Buffer;
      try {
        plain = Buffer.concat([decipher.update(data.subarray(12, data.length - 16)), decipher.final()]);
      } catch {
        throw new Error(`an encrypted payload (key "${id}") does not authenticate: it was altered, or the key with that id is not the one that sealed it`);
      }
      const opened = temporal.api.common.v1.Payload.decode(plain);
      return {
        metadata: Object.fromEntries(Object.entries(opened.metadata ?? {}).map(([k, v]) => [k, new Uint8Array(v)])),
        data: new Uint8Array(opened.data ?? []),
      };
    });
  }
}

const KEY_ID = /^[A-Za-z0-9._-]{1,64}$/;

/** "id:base64,id:base64" (first encrypts) → keys; each must be 32 bytes. */
export function parsePayloadKeys(spec: string, origin: string): PayloadKey[] {
  const keys = spec.split(/[,\s]+/).filter(Boolean).map((entry, i) => {
    const at = entry.indexOf(':');
    const id = entry.slice(0, at);
    if (at < 1 || !KEY_ID.test(id)) throw new Error(`${origin}: entry ${i + 1} must be ID:BASE64 with an id of letters, digits, ".", "_" or "-"`);
    const key = Buffer.from(entry.slice(at + 1), 'base64');
    if (key.length !== 32) throw new Error(`${origin}: key "${id}" is ${key.length} bytes; AES-256 needs 32 (e.g. \`openssl rand -base64 32\`)`);
    return { id, key };
  });
  if (new Set(keys.map((k) => k.id)).size !== keys.length) throw new Error(`${origin}: a key id appears twice`);
  return keys;
}

/** The keys of this process, or null when payload encryption is not configured. */
export function payloadKeysFromEnv(env: NodeJS.ProcessEnv = process.env): PayloadKey[] | null {
  if (env.DACP_PAYLOAD_KEYS?.trim()) return parsePayloadKeys(env.DACP_PAYLOAD_KEYS, 'DACP_PAYLOAD_KEYS');
  const file = env.DACP_PAYLOAD_KEY_FILE?.trim();
  if (!file) return null;
  let mode: number;
  try {
    mode = statSync(file).mode & 0o777;
  } catch {
    throw new Error(`DACP_PAYLOAD_KEY_FILE ${file} cannot be read; point it at the key file`);
  }
  if (mode & 0o077) throw new Error(`DACP_PAYLOAD_KEY_FILE ${file} has permissions ${mode.toString(8)}, readable by others; \`chmod 600 ${file}\``);
  return parsePayloadKeys(readFileSync(file, 'utf8'), `key file ${path.basename(file)}`);
}

/** Encodes failure messages and stack traces into a payload, so the codec seals them too. */
export const encodedFailureConverter = new DefaultFailureConverter({ encodeCommonAttributes: true });

/** The module whose `failureConverter` export workers load (a path, as Temporal's worker wants). */
export const ENCODED_FAILURES_PATH = require.resolve('./encodedFailures');

/** The client's data converter: the codec and encoded failures when keys are configured, else Temporal's default. */
export function clientDataConverter(env: NodeJS.ProcessEnv = process.env) {
  const keys = payloadKeysFromEnv(env);
  return keys ? { payloadCodecs: [new AesGcmCodec(keys)], failureConverter: encodedFailureConverter } : undefined;
}

/** The worker's: the codec, and failures encoded in activities and (bundled at start) in workflows. */
export function workerDataConverter(env: NodeJS.ProcessEnv = process.env) {
  const keys = payloadKeysFromEnv(env);
  return keys ? { payloadCodecs: [new AesGcmCodec(keys)], failureConverterPath: ENCODED_FAILURES_PATH } : undefined;
}
