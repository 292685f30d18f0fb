import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readChoiceSet } from '../activities/choiceSets';
import { prepareDemo } from '../cli/demo';
import { loadSpecFile, preflightSources } from '../cli/runs';
import { generateDemoChoiceSets } from '../data/demoChoices';

/** `dacp demo --prepare DIR`: the corpus, the multiple-choice sets and a spec that names them. */

let dir: string;

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dacp-demo-prepare-'));
});

afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

test('writes both choice sets inside the data root, and its spec names them and passes the preflight', async () => {
  const { spec, baseDir } = loadSpecFile(prepareDemo(dir));
  expect(spec.evaluation.choices).toEqual({ domain: 'data/choices-domain.jsonl', general: 'data/choices-general.jsonl' });
  await expect(preflightSources(spec, baseDir)).resolves.toBeUndefined();
  const expected = generateDemoChoiceSets({ seed: 7 });
  const allowedRoots = spec.dataRoots?.map((root) => path.resolve(baseDir, root));
  for (const name of ['domain', 'general'] as const) {
    expect(await readChoiceSet(spec.evaluation.choices[name] as string, { baseDir, allowedRoots })).toEqual(expected[name]);
  }
});
