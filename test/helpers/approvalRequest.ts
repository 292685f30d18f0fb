import type { ApprovalRequest } from '../../schemas/pipeline';

/** A made-up artifact reference: the gate only carries hashes, it never reads the files. */
export const fakeArtifact = (n: number) => ({
  uri: `artifact:models/${String(n).repeat(64).slice(0, 64)}.safetensors`,
  sha256: String(n).repeat(64).slice(0, 64),
  bytes: 10,
});

/** What a pipeline hands its approval gate, for tests that start the gate on its own. */
export function sampleApprovalRequest(runId: string, over: Partial<ApprovalRequest> = {}): ApprovalRequest {
  return {
    runId,
    initiator: 'alice',
    approvers: ['alice', 'bob', 'carol', 'dave'],
    quorum: 2,
    timeoutMs: 3_600_000,
    artifacts: {
      baseModel: { ...fakeArtifact(1), versionId: 'base:v1' },
      adaptedModel: fakeArtifact(2),
      tunedModel: fakeArtifact(3),
      datasets: [],
      forgettingReport: fakeArtifact(4),
      instructReport: fakeArtifact(5),
    },
    forgetting: {
      round: 0,
      replayRatio: 0.25,
      base: { generalPerplexity: 10, domainPerplexity: 20 },
      adapted: { generalPerplexity: 10.5, domainPerplexity: 12 },
      generalRegression: 0.05,
      domainGain: 0.4,
      budgets: { maxGeneralRegression: 0.15, minDomainGain: 0.05 },
      passed: true,
      reasons: [],
    },
    instruct: {
      base: { responsePerplexity: 30, tokenAccuracy: 0.2, exactMatch: 0, rougeL: 0.1 },
      tuned: { responsePerplexity: 6, tokenAccuracy: 0.5, exactMatch: 0, rougeL: 0.2 },
    },
    ...over,
  };
}
