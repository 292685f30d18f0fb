import { z } from 'zod';
import type { RunSpec } from './runSpec';

/** Stage ids used in status, the database and the `DacpStage` search attribute. */
export const STAGES = ['collect', 'quality', 'dacp', 'forgetting', 'instruct', 'approval', 'deploy'] as const;
export type Stage = (typeof STAGES)[number];

export const RUN_STATES = ['running', 'awaiting_approval', 'completed', 'rejected', 'failed', 'cancelled'] as const;
export type RunState = (typeof RUN_STATES)[number];

/** A stored file, named by where it is and what it must hash to. Only these travel through history. */
export interface ArtifactRef {
  uri: string;
  sha256: string;
  bytes: number;
}

export type DatasetRole = 'domain' | 'replay' | 'instruct';
export type DatasetSplit = 'train' | 'heldout';

/** A dataset: a manifest artifact listing content-addressed JSONL shards. */
export interface DatasetRef extends ArtifactRef {
  role: DatasetRole;
  split: DatasetSplit;
  docs: number;
  dataBytes: number;
  tokens: number;
}

export interface DatasetManifest {
  format: 'dacp-dataset/1';
  role: DatasetRole;
  split: DatasetSplit;
  docs: number;
  bytes: number;
  tokens: number;
  shards: { uri: string; sha256: string; docs: number; bytes: number }[];
}

export interface PipelineInput {
  runId: string;
  spec: RunSpec;
  /** Absolute directory that relative source paths are resolved against (the spec file's folder). */
  baseDir: string;
  initiator: string;
}

export interface TrainingProgress {
  stage: 'dacp' | 'instruct' | 'bootstrap';
  step: number;
  totalSteps: number;
  loss: number | null;
  attempt: number;
  resumedFromStep: number | null;
  /** E.g. a corrupted checkpoint that was skipped; shown in status as `metrics.warnings`. */
  warnings: string[];
}

/** What `dacp run status ID --json` prints, exactly. */
export interface RunStatus {
  runId: string;
  stage: Stage;
  state: RunState;
  progress: { step: number; totalSteps: number; loss: number | null };
  metrics: Record<string, unknown>;
  attempts: Partial<Record<Stage, number>>;
  resumedFromStep: number | null;
}

export interface ForgettingReport {
  round: number;
  replayRatio: number;
  base: { generalPerplexity: number; domainPerplexity: number };
  adapted: { generalPerplexity: number; domainPerplexity: number };
  generalRegression: number;
  domainGain: number;
  budgets: { maxGeneralRegression: number; minDomainGain: number };
  passed: boolean;
  reasons: string[];
}

export interface InstructScores {
  responsePerplexity: number;
  tokenAccuracy: number;
  exactMatch: number;
  rougeL: number;
}

/** Instruction-following scores. The sample answers live only in the report artifact, not in history. */
export interface InstructSummary {
  base: InstructScores;
  tuned: InstructScores;
}

/** The stored instruction report: scores plus sample generations (held-out text stays out of history). */
export interface InstructReport extends InstructSummary {
  kind: 'instruct';
  runId: string;
  /** `generated` is greedy; `sampled` is drawn at temperature 0.8, top-k 20, seeded per prompt. */
  samples: { prompt: string; expected: string; generated: string; sampled: string }[];
}

export interface TrainingResult {
  model: ArtifactRef;
  checkpoint: ArtifactRef;
  finalStep: number;
  finalLoss: number;
  resumedFromStep: number | null;
  attempt: number;
  backend: string;
  seconds: number;
}

/** What approvers see and sign: the exact hashes and evaluation evidence. */
export interface ApprovalRequest {
  runId: string;
  initiator: string;
  approvers: string[];
  quorum: number;
  timeoutMs: number;
  artifacts: {
    baseModel: ArtifactRef & { versionId: string };
    adaptedModel: ArtifactRef;
    tunedModel: ArtifactRef;
    datasets: { role: DatasetRole; split: DatasetSplit; sha256: string; docs: number }[];
    forgettingReport: ArtifactRef;
    instructReport: ArtifactRef;
  };
  forgetting: ForgettingReport;
  instruct: InstructSummary;
}

export const DecisionInput = z
  .object({
    principal: z.string().regex(/^[A-Za-z0-9._@-]{1,64}$/, 'a principal is 1–64 letters, digits or . _ @ -'),
    comment: z.string().max(2_000, 'keep the comment under 2000 characters').optional(),
  })
  .strict();
export type DecisionInput = z.infer<typeof DecisionInput>;

export const RejectionInput = DecisionInput.extend({
  reason: z.string().min(1, 'give a reason for the rejection').max(2_000),
}).strict();
export type RejectionInput = z.infer<typeof RejectionInput>;

export interface Decision {
  principal: string;
  decision: 'approve' | 'reject';
  comment?: string;
  at: string;
}

export interface ApprovalOutcome {
  outcome: 'approved' | 'rejected';
  reason: string;
  decisions: Decision[];
}

export interface DeployResult {
  versionId: string;
  alias: string;
  previousVersionId: string | null;
  deploymentId: number;
}

export interface PipelineResult {
  runId: string;
  state: RunState;
  reason?: string;
  versionId?: string;
  forgetting?: ForgettingReport;
  instruct?: InstructSummary;
  stageSeconds: Partial<Record<Stage, number>>;
}
