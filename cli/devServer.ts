import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { Connection } from '@temporalio/client';
import { SEARCH_ATTRIBUTES } from '../workflows/searchAttributes';
import { ensureTool, TEMPORAL_CLI } from './temporalTools';

export interface DevServer {
  address: string;
  uiUrl: string | null;
  logFile: string;
  process: ChildProcess;
  stop(): Promise<void>;
}

export class PortTakenError extends Error {}

export function isPortFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, host, () => server.close(() => resolve(true)));
  });
}

/**
 * A free port for a server that dacp starts, drawn below the kernel's ephemeral range (32768 and
 * up on Linux). A port that the kernel handed out (`listen(0)`) is in that range, where the
 * Temporal server also takes ports for its own services while it starts: between our pick and its
 * bind, one of those could take ours. Ports below the range are only ever taken by name.
 */
export async function freePort(): Promise<number> {
  for (let tries = 0; tries < 64; tries++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    if (await isPortFree(port)) return port;
  }
  return kernelPort();
}

function kernelPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

async function waitUntilServing(address: string, child: ChildProcess, logFile: string, deadlineMs: number): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  let exited = false;
  child.once('exit', () => (exited = true));
  for (;;) {
    if (exited) {
      const tail = readFileSync(logFile, 'utf8').trim().split('\n').slice(-3).join(' | ');
      throw new Error(`the Temporal dev server exited during start-up: ${tail}`);
    }
    try {
      const connection = await Connection.connect({ address, connectTimeout: '1s' });
      try {
        await connection.workflowService.describeNamespace({ namespace: 'default' });
        return;
      } finally {
        await connection.close();
      }
    } catch {
      if (Date.now() > deadline) throw new Error(`the Temporal dev server did not answer on ${address} within ${deadlineMs / 1000}s; see ${logFile}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

/**
 * Start the Temporal CLI dev server, persisted to SQLite under `stateDir`, with the project's search
 * attributes registered. Resolves once it serves requests.
 */
export async function startDevServer(o: {
  stateDir: string;
  port: number;
  uiPort?: number | null;
  log?: (line: string) => void;
  /** The address to listen on (default 127.0.0.1). */
  ip?: string;
  /** Run inside this network namespace (`ip netns exec`; the multi-host test's "core" host). */
  netns?: string;
  /** Listen on this address instead of `ip` (0.0.0.0 inside a namespace: the server dials itself on 127.0.0.1). */
  listenIp?: string;
}): Promise<DevServer> {
  const binary = ensureTool(TEMPORAL_CLI, o.log);
  const ip = o.ip ?? '127.0.0.1';
  if (!o.netns && !(await isPortFree(o.port))) {
    throw new PortTakenError(
      `port ${o.port} is taken (another Temporal server or \`dacp dev\` is running?): stop it, or choose another port with DACP_TEMPORAL_PORT`,
    );
  }
  if (o.uiPort && !(await isPortFree(o.uiPort))) {
    throw new PortTakenError(`UI port ${o.uiPort} is taken: stop what uses it, or set DACP_TEMPORAL_UI_PORT`);
  }
  mkdirSync(o.stateDir, { recursive: true });
  const logFile = path.join(o.stateDir, 'server.log');
  const out = openSync(logFile, 'a');
  const args = [
    'server', 'start-dev',
    '--db-filename', path.join(o.stateDir, 'temporal.db'),
    '--ip', o.listenIp ?? ip,
    '--port', String(o.port),
    '--namespace', 'default',
    '--log-level', 'warn',
    ...Object.entries(SEARCH_ATTRIBUTES).flatMap(([name, type]) => ['--search-attribute', `${name}=${type}`]),
    ...(o.uiPort ? ['--ui-port', String(o.uiPort)] : ['--headless']),
  ];
  const child = o.netns
    ? spawn('ip', ['netns', 'exec', o.netns, binary, ...args], { stdio: ['ignore', out, out], detached: false })
    : spawn(binary, args, { stdio: ['ignore', out, out], detached: false });
  const address = `${ip}:${o.port}`;
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(timer);
  };
  try {
    await waitUntilServing(address, child, logFile, 60_000);
  } catch (err) {
    await stop();
    throw err;
  }
  return { address, uiUrl: o.uiPort ? `http://${ip}:${o.uiPort}` : null, logFile, process: child, stop };
}
