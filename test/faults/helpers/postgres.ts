import { rmSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { resolveDatabase } from '../../../db/embedded';
import { postgresRunAs, reachableBinaries, runPgTool, sharedPostgresDir, type RunAs } from '../../../db/pgtools';

/**
 * A real PostgreSQL the test may stop and start: the project's embedded server of a temp home
 * (DATABASE_URL is ignored for that call), driven with the same pg_ctl, as the same user.
 */
export interface StoppablePostgres {
  url: string;
  port: number;
  dataDir: string;
  /** pg_ctl stop -m fast: open transactions roll back, every client is disconnected. */
  stop(): Promise<void>;
  /** pg_ctl start on the same data directory and port. */
  start(): Promise<void>;
  /** Stop it and delete its data. */
  destroy(): Promise<void>;
}

export async function startStoppablePostgres(home: string): Promise<StoppablePostgres> {
  const configured = process.env.DATABASE_URL;
  delete process.env.DATABASE_URL;
  let resolved: Awaited<ReturnType<typeof resolveDatabase>>;
  try {
    resolved = await resolveDatabase(home);
  } finally {
    if (configured !== undefined) process.env.DATABASE_URL = configured;
  }
  const port = Number(new URL(resolved.ownerUrl).port);
  const probe = new pg.Client({ connectionString: resolved.ownerUrl });
  await probe.connect();
  const dataDir = (await probe.query<{ dir: string }>("SELECT current_setting('data_directory') AS dir")).rows[0].dir;
  await probe.end();
  const runAs: RunAs = await postgresRunAs();
  const { pgCtl } = await reachableBinaries(runAs);
  const cwd = path.dirname(dataDir);
  const logFile = path.join(cwd, 'postgres.log');
  const stop = async () => {
    await runPgTool(runAs, cwd, pgCtl, ['stop', '-D', dataDir, '-m', 'fast', '-w', '-t', '60']);
  };
  return {
    // The owner's URL: the test migrates and works as the owner, as with any DATABASE_URL.
    url: resolved.ownerUrl,
    port,
    dataDir,
    stop,
    start: async () => {
      await runPgTool(runAs, cwd, pgCtl, ['start', '-D', dataDir, '-l', logFile, '-w', '-t', '60', '-o', `-p ${port}`]);
    },
    destroy: async () => {
      await stop().catch(() => undefined);
      await resolved.release();
      // As root the data lives in a shared folder keyed by the home (see db/embedded.ts): remove it too.
      if (cwd.startsWith(sharedPostgresDir + path.sep) && path.basename(cwd).startsWith('data-')) rmSync(cwd, { recursive: true, force: true });
    },
  };
}
