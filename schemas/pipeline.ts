import { z } from 'zod';
import { VoteSignature, type DecisionStatement, type PublicKeyRef, type StartStatement } from './signing';
import type { DomainMix } from './candidates';
import type { RunSpec } from './runSpec';

/** Stage ids used in status, the database and the `DacpStage` search attribute. */
export const STAGES = ['collect', 'quality', 'dacp', 'forgetting', 'instruct', 'final_check', 'approval', 'deploy'] as const;
export type Stage = (typeof STAGES)[number];

export const RUN_STATES = ['running', 'awaiting_approval', 'completed', 'rejected', 'failed', 'cancelled', 'superseded', 'rolled_back'] as const;
/** The states a run ends in. */
export const TERMINAL_STATES: readonly RunState[] = ['completed', 'rejected', 'failed', 'cancelled', 'superseded', 'rolled_back'];
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

/**
 * The few spec fields the workflow itself reads. The whole spec travels as `specRef`, a
 * content-addressed artifact that activities load: history carries no document text, no secrets and
 * no megabyte of spec per activity call. (Runs started before `specRef` existed carry the whole spec
 * here, a superset of these fields, and replay as they ran.)
 */
export interface WorkflowSpec {
  name: string;
  replayRatio: RunSpec['replayRatio'];
  /** Only where the spec weighs several domain sources. */
  domainRatio?: RunSpec['domainRatio'];
  /** Only where the spec replays earlier updates' domain data. */
  replayFromEarlierUpdates?: number;
  /** Absent in runs from before the two-line registry: they continue from the served model. */
  baseModel: Pick<RunSpec['baseModel'], 'ref' | 'bootstrapIfMissing'> & { line?: RunSpec['baseModel']['line'] };
  /** Absent in runs from before the final check. */
  instruct?: Pick<RunSpec['instruct'], 'replayRatio'>;
  forgetting: RunSpec['forgetting'];
  approval: RunSpec['approval'];
  /** The alias; `smoke` is absent in runs from before the smoke test. */
  deploy: { alias: string; smoke?: { enabled: boolean } };
  heartbeatTimeout: RunSpec['heartbeatTimeout'];
  controlHeartbeatTimeout: RunSpec['controlHeartbeatTimeout'];
  /** Absent in runs (and schedules) from before quality parts: their stage runs as one activity. */
  quality?: Pick<RunSpec['quality'], 'partMB'>;
}

/** The most parts one dataset's quality pass is cut into (each a few events in history). */
export const MAX_QUALITY_PARTS = 256;
/** quality.partMB's default (as in the run spec's schema). */
export const DEFAULT_QUALITY_PART_MB = 64;

/**
 * How many parts (activities) the quality stage cuts a collected dataset into: one per `partMB` of
 * its text, at most MAX_QUALITY_PARTS and at most one per document. Pure: the workflow computes it.
 */
export function qualityPartCount(raw: Pick<DatasetRef, 'docs' | 'dataBytes'>, partMB: number = DEFAULT_QUALITY_PART_MB): number {
  const byBytes = Math.ceil(raw.dataBytes / (partMB * 1024 * 1024));
  return Math.max(1, Math.min(MAX_QUALITY_PARTS, raw.docs, byBytes));
}

/** Part `part` of `parts` of a dataset of `docs` documents: documents `from` to `to` (exclusive). */
export function qualityPartRange(docs: number, part: number, parts: number): { from: number; to: number } {
  return { from: Math.floor((part * docs) / parts), to: Math.floor(((part + 1) * docs) / parts) };
}

export function workflowSpec(spec: RunSpec): WorkflowSpec {
  return {
    name: spec.name,
    replayRatio: spec.replayRatio,
    ...(spec.replayFromEarlierUpdates > 0 ? { replayFromEarlierUpdates: spec.replayFromEarlierUpdates } : {}),
    ...(spec.domainRatio !== undefined ? { domainRatio: spec.domainRatio } : {}),
    baseModel: { ref: spec.baseModel.ref, bootstrapIfMissing: spec.baseModel.bootstrapIfMissing, line: spec.baseModel.line },
    instruct: { replayRatio: spec.instruct.replayRatio },
    forgetting: spec.forgetting,
    approval: spec.approval,
    // Only what the workflow reads: smoke prompts and the canary are data, and stay in the stored spec.
    deploy: { alias: spec.deploy.alias, smoke: { enabled: spec.deploy.smoke.enabled } },
    heartbeatTimeout: spec.heartbeatTimeout,
    controlHeartbeatTimeout: spec.controlHeartbeatTimeout,
    quality: { partMB: spec.quality.partMB },
  };
}

/** How an activity finds the run's spec: by artifact reference, or (runs from before) inline. */
export type SpecSource = { specRef: ArtifactRef; spec?: undefined } | { spec: RunSpec; specRef?: undefined };

export interface PipelineInput {
  /** Absent for a run a schedule started: its run id is its workflow id (the schedule's id and the firing's time). */
  runId?: string;
  spec: WorkflowSpec;
  /** The validated spec with its defaults, stored as JSON in the artifact store. Absent in runs from before. */
  specRef?: ArtifactRef;
  /** Absolute directory that relative source paths are resolved against (the spec file's folder). */
  baseDir: string;
  initiator: string;
  /** The schedule that starts this run, for its watermarks and its supersede rule; absent for manual runs. */
  scheduleId?: string;
  /** The initiator's signature over the run id and the spec's sha256 (`dacp run start --as`); absent for scheduled runs and runs from before. */
  startSignature?: { statement: StartStatement; signature: string; publicKey: string };
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

/** What a gate measures of one model on the run's held-out sets. */
export interface ModelScores {
  generalPerplexity: number;
  domainPerplexity: number;
  /** Multiple-choice accuracy, when the spec names `evaluation.choices` sets. */
  domainAccuracy?: number;
  generalAccuracy?: number;
  /** Instruction token accuracy on the held-out pairs (the final check). */
  instructionTokenAccuracy?: number;
  /** Held-out domain perplexity per domain source, where the run weighs several (after DACP). */
  domainPerplexityBySource?: Record<string, number>;
}

/** The gate's figures: relative for perplexity, absolute (points) for accuracies. */
export interface GateFigures {
  generalRegression: number;
  domainGain: number;
  domainAccuracyGain?: number;
  generalAccuracyDrop?: number;
  instructionRegression?: number;
}

export interface GateBudgets {
  maxGeneralRegression: number;
  minDomainGain: number;
  minDomainAccuracyGain: number;
  maxGeneralAccuracyDrop: number;
  /** The final check only. */
  maxInstructionRegression?: number;
}

/** The forgetting gate after continual pretraining: the adapted model against the model it started from. */
/** Which engine ran an evaluation: the built-in one (TensorFlow.js) or the hf one (PyTorch). Absent in reports from before. */
export type Evaluator = 'builtin' | 'hf';

export interface ForgettingReport extends GateFigures {
  round: number;
  evaluatedBy?: Evaluator;
  replayRatio: number;
  /** The domain sources' weights this candidate trained with, where the run weighs several. */
  domainMix?: DomainMix;
  /** Relative fall of domain perplexity per domain source; reported, not gated (the gate reads domainGain). */
  domainGainBySource?: Record<string, number>;
  base: ModelScores;
  adapted: ModelScores;
  budgets: GateBudgets | { maxGeneralRegression: number; minDomainGain: number };
  passed: boolean;
  reasons: string[];
}

/** The gate again, on what would ship: the instruction-tuned candidate against what it would replace. */
export interface FinalCheckReport extends GateFigures {
  round: number;
  evaluatedBy?: Evaluator;
  /** instruct.replayRatio of the tuning that made the candidate. */
  instructReplayRatio: number;
  /** `production`: the version the deploy alias points at; `base`: a first run, so the model it started from. */
  reference: { kind: 'production' | 'base'; versionId: string; sha256: string };
  referenceScores: ModelScores;
  candidate: ModelScores;
  budgets: GateBudgets;
  passed: boolean;
  reasons: string[];
}

/** One candidate of a list of replay ratios, and where it landed on the trade-off. */
export interface CandidateSummary {
  round: number;
  replayRatio: number;
  /** The domain sources' weights (summing to 1), where the run mixes several. */
  domainMix?: DomainMix;
  domainGain: number;
  generalRegression: number;
  passed: boolean;
  chosen: boolean;
  /** Set when the candidate's training or evaluation failed; its figures are then meaningless. */
  error?: string;
  model: ArtifactRef;
  reportRef: ArtifactRef;
}

/** The trade-off report: a table and an SVG plot, approvers look at it before voting. */
export interface TradeoffReport {
  kind: 'tradeoff';
  runId: string;
  budget: { maxGeneralRegression: number };
  candidates: Omit<CandidateSummary, 'model' | 'reportRef'>[];
  table: string;
  svg: ArtifactRef;
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
  evaluatedBy?: Evaluator;
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
    /** Absent in runs from before the final check. */
    finalCheckReport?: ArtifactRef;
    /** Present when the spec listed several replay ratios. */
    tradeoffReport?: ArtifactRef;
    tradeoffSvg?: ArtifactRef;
    /** The run's self-contained HTML report when the gate opened (`dacp run report`); absent in runs from before. */
    runReport?: ArtifactRef;
  };
  forgetting: ForgettingReport;
  instruct: InstructSummary;
  finalCheck?: FinalCheckReport;
  candidates?: Omit<CandidateSummary, 'model' | 'reportRef'>[];
  /**
   * The approvers' active public keys when the gate opened. Present in every gate since signed
   * decisions: each vote must then carry a signature by one of its principal's keys.
   */
  signing?: { keys: Record<string, PublicKeyRef[]> };
  /** Reminders and escalation (gates since reminders); absent: the gate only waits for its timeout. */
  reminders?: { everyMs?: number; escalation?: { afterMs: number; approvers: string[] } };
}

/** A notice the gate sent (and wrote to the outbox), as its query and `dacp approval show` list it. */
export interface GateNotice {
  kind: 'requested' | 'reminder' | 'escalated' | 'timed_out';
  at: string;
  to: string[];
}

export const DecisionInput = z
  .object({
    principal: z.string().regex(/^[A-Za-z0-9._-][A-Za-z0-9._@-]{0,63}$/, 'a principal is 1–64 letters, digits or . _ @ -, not starting with @'),
    comment: z.string().max(2_000, 'keep the comment under 2000 characters').optional(),
    /** Required by gates that opened with captured keys (every gate since signed decisions). */
    signature: VoteSignature.optional(),
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
  /** The signed statement and the key that verified it (gates since signed decisions). */
  signature?: SignedDecision;
}

export interface SignedDecision {
  statement: DecisionStatement;
  signature: string;
  publicKey: string;
}

export interface ApprovalOutcome {
  outcome: 'approved' | 'rejected' | 'superseded';
  reason: string;
  decisions: Decision[];
  /** The newer run of the same schedule that closed this gate. */
  supersededBy?: string;
}

export interface DeployResult {
  versionId: string;
  /** The adapted (continually pretrained) version the served one was tuned from; absent for runs from before. */
  adaptedVersionId?: string;
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
  finalCheck?: FinalCheckReport;
  /** The adapted (continually pretrained) version registered beside the served one. */
  adaptedVersionId?: string;
  stageSeconds: Partial<Record<Stage, number>>;
}
