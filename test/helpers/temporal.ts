import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bundleWorkflowCode, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import type { Client } from '@temporalio/client';
import type { Pool } from 'pg';
import { freePort, startDevServer, type DevServer } from '../../cli/devServer';
import type { RunContext } from '../../cli/status';

/** A real Temporal CLI dev server on a free port with its SQLite file in a temp dir. */
export async function startTestDevServer(stateDir?: string): Promise<DevServer & { stateDir: string; cleanup(): Promise<void> }> {
  const dir = stateDir ?? mkdtempSync(path.join(os.tmpdir(), 'dacp-temporal-'));
  const server = await startDevServer({ stateDir: dir, port: await freePort(), uiPort: null });
  return {
    ...server,
    stateDir: dir,
    cleanup: async () => {
      await server.stop();
      if (!stateDir) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Bundle the workflow code from source, once per test file. */
export function bundleWorkflows(): Promise<WorkflowBundleWithSourceMap> {
  return bundleWorkflowCode({ workflowsPath: require.resolve('../../workflows'), logger: quietLogger });
}

const noop = () => undefined;
const quietLogger = { trace: noop, debug: noop, info: noop, warn: noop, error: noop, log: noop };

/** Thrown by a probe to stop polling at once: the awaited state can no longer come (e.g. the run failed). */
export class GiveUp extends Error {}

/** Poll `probe` until it returns a value (not undefined) or the deadline passes; other errors are retried. */
export async function eventually<T>(probe: () => Promise<T | undefined>, what: string, timeoutMs = 120_000, intervalMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      if (err instanceof GiveUp) throw err;
      lastError = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}${lastError ? ` (last error: ${String(lastError)})` : ''}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** A home directory the embedded Postgres user can traverse (see db/embedded.ts). */
export function tempHome(prefix = 'dacp-home-'): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  chmodSync(dir, 0o755);
  return dir;
}

/** What `startRun`, `runStatus` and `cancelRun` need: the client, the run database and the home's artifacts. */
export function runsFor(client: Client, pool: Pool, home: string): RunContext {
  return { client, pool, artifactsDir: path.join(home, 'artifacts') };
}

/** Every string and payload of a run's history, decoded, one per line (to look for what must not be there). */
export async function historyText(client: Client, workflowId: string): Promise<string> {
  const texts: string[] = [];
  const walk = (value: unknown): void => {
    if (value instanceof Uint8Array) texts.push(Buffer.from(value).toString('utf8'));
    else if (typeof value === 'string') texts.push(value);
    else if (Array.isArray(value)) value.forEach(walk);
    else if (value && typeof value === 'object') Object.values(value).forEach(walk);
  };
  walk(await client.workflow.getHandle(workflowId).fetchHistory());
  return texts.join('\n');
}
