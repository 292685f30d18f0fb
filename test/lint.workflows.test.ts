import { spawnSync } from 'node:child_process';
import path from 'node:path';

/**
 * The ESLint rule that keeps workflow code deterministic (eslint.config.mjs, workflows/**). Snippets
 * are linted by ESLint's Node API (`new ESLint()` + `lintText`) as if they were files in workflows/,
 * with the project's real config, so the test fails if the rule stops matching. ESLint runs in a
 * child process (test/helpers/lintSnippets.mjs): jest's sandbox cannot load an ESM config file.
 */

const root = path.resolve(__dirname, '..');

interface LintMessage {
  ruleId: string | null;
  message: string;
  line: number;
}

const reported: [string, string, string][] = [
  ['a value import from the activities index', "import { createActivities } from '../activities';\nexport const a = createActivities;", '../activities'],
  ['a value import from an activities file', "import { trainingActivities } from '../activities/training';\nexport const a = trainingActivities;", '../activities/training'],
  ['a value import from the db folder', "import { migrate } from '../db';\nexport const a = migrate;", '../db'],
  ['a value import from ml with a trailing slash', "import { train } from '../ml/';\nexport const a = train;", '../ml/'],
  ['a re-export from activities', "export { createActivities } from '../activities';", '../activities'],
  ['a Node built-in with the node: prefix', "import fs from 'node:fs';\nexport const a = fs;", 'node:fs'],
  ['a Node built-in without the prefix', "import { readFile } from 'fs/promises';\nexport const a = readFile;", 'fs/promises'],
  ['the Postgres driver', "import { Pool } from 'pg';\nexport const a = Pool;", 'pg'],
  ['a value import from @temporalio/activity', "import { Context } from '@temporalio/activity';\nexport const a = Context;", '@temporalio/activity'],
];

const allowed: [string, string][] = [
  ['a type import from the activities index', "import type { DacpActivities } from '../activities';\nexport type A = DacpActivities;"],
  ['an inline type import from an activities file', "import { type DatasetDoc } from '../activities/datasets';\nexport type A = DatasetDoc;"],
  ['values from schemas', "import { RunSpec } from '../schemas/runSpec';\nexport const a = RunSpec;"],
  ['the workflow SDK', "import { sleep } from '@temporalio/workflow';\nexport const a = sleep;"],
];

/** The same value import, placed outside workflows/, where the rule does not apply. */
const outsideWorkflows = "import { createActivities } from '../activities';\nexport const a = createActivities;";

let snippetMessages: LintMessage[][];
let workflowFiles: { filePath: string; messages: LintMessage[] }[];

beforeAll(() => {
  const inWorkflows = (code: string) => ({ code, filePath: path.join(root, 'workflows', 'probe.ts') });
  const request = {
    snippets: [
      ...reported.map(([, code]) => inWorkflows(code)),
      ...allowed.map(([, code]) => inWorkflows(code)),
      { code: outsideWorkflows, filePath: path.join(root, 'cli', 'probe.ts') },
    ],
    files: ['workflows/**/*.ts'],
  };
  const child = spawnSync(process.execPath, [path.join(__dirname, 'helpers', 'lintSnippets.mjs')], {
    cwd: root,
    input: JSON.stringify(request),
    encoding: 'utf8',
    maxBuffer: 16 * 1024 * 1024,
  });
  if (child.status !== 0) throw new Error(`ESLint failed (exit ${child.status}): ${child.stderr}`);
  const response = JSON.parse(child.stdout) as { snippets: LintMessage[][]; files: typeof workflowFiles };
  snippetMessages = response.snippets;
  workflowFiles = response.files;
});

const importProblems = (messages: LintMessage[]): string[] =>
  messages.filter((m) => m.ruleId === 'no-restricted-imports').map((m) => m.message);

describe('workflow import rule', () => {
  it.each(reported.map(([what, , source], i) => [what, source, i] as const))('reports %s', (_what, source, i) => {
    const problems = importProblems(snippetMessages[i]);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toContain(`'${source}'`);
  });

  it.each(allowed.map(([what], i) => [what, reported.length + i] as const))('allows %s', (_what, i) => {
    expect(snippetMessages[i]).toEqual([]);
  });

  it('leaves the same value import alone outside workflows/', () => {
    expect(snippetMessages[reported.length + allowed.length]).toEqual([]);
  });

  it('the real workflows/ folder lints clean', () => {
    expect(workflowFiles.map((f) => path.relative(root, f.filePath))).toContain(path.join('workflows', 'pipeline.ts'));
    const problems = workflowFiles.flatMap((f) => f.messages.map((m) => `${path.relative(root, f.filePath)}:${m.line} ${m.ruleId}: ${m.message}`));
    expect(problems).toEqual([]);
  });
});
