import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { generateDemoChoiceSets } from '../../data/demoChoices';
import { generateDemoCorpus } from '../../ml/demoCorpus';
import type { RunSpecInput } from '../../schemas/runSpec';

/** A small seeded corpus on disk: domain .txt files, general JSONL, instruction pairs JSONL, multiple-choice sets JSONL. */
export function writeTinyCorpus(dir: string, seed = 11): void {
  const corpus = generateDemoCorpus({ seed, domainDocs: 80, generalDocs: 80, instructionPairs: 40 });
  mkdirSync(path.join(dir, 'data', 'domain'), { recursive: true });
  corpus.domain.forEach((text, i) => writeFileSync(path.join(dir, 'data', 'domain', `d${i}.txt`), text));
  writeFileSync(path.join(dir, 'data', 'general.jsonl'), corpus.general.map((text) => JSON.stringify({ text })).join('\n'));
  writeFileSync(path.join(dir, 'data', 'pairs.jsonl'), corpus.instructions.map((p) => JSON.stringify(p)).join('\n'));
  // Written for specs that opt in with evaluation.choices; tinySpec does not name them.
  const choiceSets = generateDemoChoiceSets({ seed });
  writeFileSync(path.join(dir, 'data', 'choices-domain.jsonl'), choiceSets.domain.map((item) => JSON.stringify(item)).join('\n'));
  writeFileSync(path.join(dir, 'data', 'choices-general.jsonl'), choiceSets.general.map((item) => JSON.stringify(item)).join('\n'));
}

/**
 * A registered tiny base that the first run bootstraps and later runs adapt: runs that use it
 * train from the same weights, so their checkpoints can be compared bit for bit.
 */
export const sharedTinyBase = {
  ref: 'tiny-base:v1',
  bootstrapIfMissing: true,
  shape: { contextLength: 32, dModel: 32, nLayers: 1, nHeads: 2 },
  bootstrap: { steps: 30, batchSize: 8, learningRate: 5e-3, checkpointEvery: 15 },
};

/** A spec small enough to train in seconds; budgets loose so the gate passes on any seed. */
export function tinySpec(over: Partial<RunSpecInput> = {}): RunSpecInput {
  return {
    name: 'tiny',
    sources: [
      { kind: 'files', role: 'domain', paths: ['data/domain/*.txt'] },
      { kind: 'files', role: 'replay', paths: ['data/general.jsonl'] },
      { kind: 'files', role: 'instruct', paths: ['data/pairs.jsonl'] },
    ],
    quality: { minDocs: 5 },
    baseModel: {
      bootstrapIfMissing: true,
      shape: { contextLength: 32, dModel: 32, nLayers: 1, nHeads: 2 },
      bootstrap: { steps: 30, batchSize: 8, learningRate: 5e-3, checkpointEvery: 15 },
    },
    dacp: { steps: 30, batchSize: 8, learningRate: 3e-3, checkpointEvery: 10 },
    forgetting: { maxGeneralRegression: 5, minDomainGain: -1, maxEvalWindows: 8, final: { maxGeneralRegression: 5, minDomainGain: -1, maxInstructionRegression: 1 } },
    instruct: { steps: 20, batchSize: 8, learningRate: 3e-3, checkpointEvery: 10 },
    approval: { approvers: ['approver-1', 'approver-2'], quorum: 1, timeout: '1h' },
    heartbeatTimeout: '5s',
    ...over,
  };
}
