import path from 'node:path';
import type { Client } from '@temporalio/client';
import { DefaultLogger, Runtime, type LogLevel, type NativeConnection, type Worker } from '@temporalio/worker';
import type { Pool } from 'pg';
import { resolveDatabase } from '../db/embedded';
import { grantAppRole, roleOf } from '../db/appRole';
import { migrate } from '../db/migrate';
import { createPool } from '../db/pool';
import { createWorker, type QueueName } from '../workers/options';
import { connectClient, connectWorker, ensureSearchAttributes, temporalSettings } from './connection';
import { startDevServer, type DevServer } from './devServer';
import { dacpHome } from './paths';

/** The database every command of this home shares: DATABASE_URL, or the embedded server. Migrated. */
export interface Database {
  /** dacp's work: the work role (dacp_app on the embedded server). */
  pool: Pool;
  /**
   * Administration (principals, keys, tokens, dacp's own keys): the tables' owner, where this
   * process can reach it (the embedded server, or DACP_MIGRATE_DATABASE_URL); else the work pool.
   */
  admin(): Pool;
  url: string;
  embedded: boolean;
  close(): Promise<void>;
}

export async function openDatabase(home = dacpHome()): Promise<Database> {
  const resolved = await resolveDatabase(home);
  let pool: ReturnType<typeof createPool> | undefined;
  try {
    if (resolved.ownerUrl !== resolved.url) {
      // Migrations as the tables' owner; then the work role gets exactly its rights (db/appRole.ts).
      const owner = createPool(resolved.ownerUrl, { max: 2 });
      try {
        await migrate(owner);
        await grantAppRole(owner, roleOf(resolved.url));
      } finally {
        await owner.end();
      }
      pool = createPool(resolved.url);
    } else {
      pool = createPool(resolved.url);
      await migrate(pool);
    }
  } catch (err) {
    await pool?.end();
    await resolved.release();
    throw err;
  }
  const work = pool;
  let admin: Pool | undefined;
  return {
    pool: work,
    admin: () => (admin ??= resolved.ownerUrl === resolved.url ? work : createPool(resolved.ownerUrl, { max: 2 })),
    url: resolved.url,
    embedded: resolved.embedded,
    close: async () => {
      if (admin && admin !== work) await admin.end();
      await work.end();
      await resolved.release();
    },
  };
}

export function artifactsDir(home = dacpHome()): string {
  return path.join(home, 'artifacts');
}

/** The project's own Temporal dev server for this home, unless TEMPORAL_ADDRESS names a cluster. */
export async function startLocalServer(o: { home?: string; port: number; uiPort: number | null; log: (line: string) => void }): Promise<DevServer> {
  return startDevServer({ stateDir: path.join(o.home ?? dacpHome(), 'temporal'), port: o.port, uiPort: o.uiPort, log: o.log });
}

export interface RunningWorkers {
  workers: Worker[];
  client: Client;
  /** Resolves when every worker has stopped. */
  done: Promise<void>;
  shutdown(): Promise<void>;
}

let runtimeInstalled = false;

/** Worker logs at WARN unless DACP_LOG_LEVEL says otherwise; the CLI prints its own progress. */
function installRuntime(): void {
  if (runtimeInstalled) return;
  runtimeInstalled = true;
  const level = (process.env.DACP_LOG_LEVEL ?? 'WARN').toUpperCase();
  const valid: LogLevel[] = ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR'];
  if (!valid.includes(level as LogLevel)) throw new Error(`DACP_LOG_LEVEL=${level} is not one of ${valid.join(', ')}`);
  // The gpu worker runs activities only; the SDK's notice that it polls no workflows is expected.
  const expected = /No workflows registered, not polling for workflow tasks/;
  const logger = new DefaultLogger(level as LogLevel, (entry) => {
    if (expected.test(entry.message)) return;
    const meta = entry.meta && Object.keys(entry.meta).length ? ` ${JSON.stringify(entry.meta)}` : '';
    process.stderr.write(`${new Date(Number(entry.timestampNanos / 1_000_000n)).toISOString()} [${entry.level}] ${entry.message}${meta}\n`);
  });
  Runtime.install({ logger });
}

/** Start workers for the given queues in this process, sharing one connection, pool and client. */
export async function startWorkers(queues: QueueName[], db: Database, o: { home?: string; address?: string } = {}): Promise<RunningWorkers> {
  installRuntime();
  const settings = o.address ? { ...temporalSettings(), address: o.address } : temporalSettings();
  const connection: NativeConnection = await connectWorker(settings);
  const client = await connectClient(settings);
  if (settings.external) await ensureSearchAttributes(client, settings.namespace);
  const workers: Worker[] = [];
  for (const queue of queues) {
    workers.push(
      await createWorker(queue, {
        connection,
        namespace: settings.namespace,
        pool: db.pool,
        artifactsDir: artifactsDir(o.home),
        client,
      }),
    );
  }
  const done = Promise.all(workers.map((w) => w.run())).then(async () => {
    await connection.close();
    await client.connection.close();
  });
  return {
    workers,
    client,
    done,
    shutdown: async () => {
      for (const w of workers) if (w.getState() === 'RUNNING') w.shutdown();
      await done;
    },
  };
}
