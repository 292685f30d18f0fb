import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { freePort } from '../../cli/devServer';
import { eventually } from './temporal';

const dacpBin = path.resolve(__dirname, '..', '..', 'bin', 'dacp.js');

export interface DacpDev {
  /** The environment the `dacp` commands of the test use to reach this server and database. */
  env: NodeJS.ProcessEnv;
  child: ChildProcess;
  /** Everything it printed so far. */
  output(): string;
  exited: Promise<number | null>;
  /** SIGKILL it (if still running) and wait for it to exit. */
  kill(): Promise<void>;
}

/** `dacp dev` as a user runs it: its own dev server on free ports, with `databaseUrl` and the home given; resolves once ready. */
export async function startDacpDev(o: { home: string; databaseUrl: string; env?: NodeJS.ProcessEnv; readyMs?: number }): Promise<DacpDev> {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    DATABASE_URL: o.databaseUrl,
    DACP_HOME: path.join(o.home, '.dacp'),
    DACP_TEMPORAL_PORT: String(await freePort()),
    DACP_TEMPORAL_UI_PORT: String(await freePort()),
    ...o.env,
  };
  delete env.TEMPORAL_ADDRESS;
  const child = spawn(process.execPath, [dacpBin, 'dev'], { env, cwd: o.home, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  await eventually(async () => (output.includes('ready') ? true : undefined), `dacp dev to be ready (output: ${output})`, o.readyMs ?? 120_000);
  return {
    env,
    child,
    output: () => output,
    exited,
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
}
