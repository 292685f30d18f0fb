import { readFileSync } from 'node:fs';
import { clientDataConverter } from '../workers/codec';
import { Client, Connection, type ConnectionOptions } from '@temporalio/client';
import { NativeConnection, type NativeConnectionOptions } from '@temporalio/worker';
import { SEARCH_ATTRIBUTES } from '../workflows/searchAttributes';

/**
 * How to reach Temporal. Unset `TEMPORAL_ADDRESS` means the project's own dev server on
 * 127.0.0.1:`DACP_TEMPORAL_PORT` (7233). TLS/mTLS and API keys are read from the environment and
 * never printed.
 */
export interface TemporalSettings {
  address: string;
  namespace: string;
  external: boolean;
  tls?: { serverNameOverride?: string; serverRootCACertificate?: Buffer; clientCertPair?: { crt: Buffer; key: Buffer } };
  apiKey?: string;
}

export function defaultTemporalPort(): number {
  const raw = process.env.DACP_TEMPORAL_PORT ?? '7233';
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`DACP_TEMPORAL_PORT=${raw} is not a port number (1–65535)`);
  }
  return port;
}

function readFileVar(name: string): Buffer | undefined {
  const file = process.env[name];
  if (!file) return undefined;
  try {
    return readFileSync(file);
  } catch (err) {
    throw new Error(`${name} points at ${file}, which cannot be read (${(err as NodeJS.ErrnoException).code})`);
  }
}

export function temporalSettings(): TemporalSettings {
  const address = process.env.TEMPORAL_ADDRESS;
  const namespace = process.env.TEMPORAL_NAMESPACE ?? 'default';
  const crt = readFileVar('TEMPORAL_TLS_CERT');
  const key = readFileVar('TEMPORAL_TLS_KEY');
  if (Boolean(crt) !== Boolean(key)) throw new Error('set both TEMPORAL_TLS_CERT and TEMPORAL_TLS_KEY for mTLS, or neither');
  const ca = readFileVar('TEMPORAL_TLS_CA');
  const apiKey = process.env.TEMPORAL_API_KEY;
  const wantsTls = Boolean(crt || ca || process.env.TEMPORAL_TLS === 'true' || apiKey);
  return {
    address: address ?? `127.0.0.1:${defaultTemporalPort()}`,
    namespace,
    external: Boolean(address),
    tls: wantsTls
      ? {
          serverNameOverride: process.env.TEMPORAL_TLS_SERVER_NAME,
          serverRootCACertificate: ca,
          clientCertPair: crt && key ? { crt, key } : undefined,
        }
      : undefined,
    apiKey,
  };
}

export async function connectClient(settings = temporalSettings()): Promise<Client> {
  const options: ConnectionOptions = { address: settings.address, tls: settings.tls, apiKey: settings.apiKey, connectTimeout: '5s' };
  let connection: Connection;
  try {
    connection = await Connection.connect(options);
  } catch (err) {
    throw new TemporalUnreachableError(
      `cannot reach Temporal at ${settings.address} (${(err as Error).message.split('\n')[0]}); start it with \`dacp server\` or set TEMPORAL_ADDRESS`,
    );
  }
  const dataConverter = clientDataConverter();
  return new Client({ connection, namespace: settings.namespace, ...(dataConverter ? { dataConverter } : {}) });
}

export async function connectWorker(settings = temporalSettings()): Promise<NativeConnection> {
  const options: NativeConnectionOptions = { address: settings.address, tls: settings.tls, apiKey: settings.apiKey };
  try {
    return await NativeConnection.connect(options);
  } catch (err) {
    throw new TemporalUnreachableError(
      `cannot reach Temporal at ${settings.address} (${(err as Error).message.split('\n')[0]}); start it with \`dacp server\` or set TEMPORAL_ADDRESS`,
    );
  }
}

/** Register the project's search attributes on an existing cluster (the dev server gets them as flags). */
export async function ensureSearchAttributes(client: Client, namespace: string): Promise<void> {
  const KEYWORD = 2; // temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
  const existing = await client.connection.operatorService.listSearchAttributes({ namespace });
  const missing = Object.keys(SEARCH_ATTRIBUTES).filter((name) => !(name in (existing.customAttributes ?? {})));
  if (missing.length === 0) return;
  await client.connection.operatorService.addSearchAttributes({
    namespace,
    searchAttributes: Object.fromEntries(missing.map((name) => [name, KEYWORD])),
  });
}

/** Temporal did not answer at the configured address. */
export class TemporalUnreachableError extends Error {
  override name = 'TemporalUnreachableError';
}
