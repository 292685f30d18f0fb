import type { ChoiceSetRefs } from '../activities/evaluation';
import type { VersionedModel } from '../activities/registry';
import type { DomainMix } from '../schemas/candidates';
import type { ArtifactRef, DatasetRef, ForgettingReport, SpecSource, TrainingResult } from '../schemas/pipeline';
import { stageActivities } from './proxies';

export interface CandidateInput {
  runId: string;
  /** This candidate's training round: its checkpoints and evaluation are keyed by it. */
  round: number;
  /** Shared by the candidates of one batch: they differ only in their replay ratio. */
  seedOffset: number;
  replayRatio: number;
  /** The domain sources' weights, where the run mixes several; absent, they are one pool. */
  domainMix?: DomainMix;
  spec: SpecSource;
  timeouts: { heartbeatTimeout: number; controlHeartbeatTimeout?: number };
  baseDir: string;
  baseModel: VersionedModel;
  data: { domainTrain: DatasetRef; replayTrain: DatasetRef; domainHeldout: DatasetRef; replayHeldout: DatasetRef };
  choiceSets?: ChoiceSetRefs;
  /** Evaluate on `dacp-gpu`, in the training engine: the parent's decision (its `evaluation-in-engine` patch); absent for older parents. */
  evaluateInEngine?: boolean;
}

export interface CandidateOutcome {
  round: number;
  replayRatio: number;
  domainMix?: DomainMix;
  adapted: TrainingResult;
  report: ForgettingReport;
  reportRef: ArtifactRef;
}

export function candidateWorkflowId(runId: string, round: number): string {
  return `${runId}-candidate-${round}`;
}

/**
 * One candidate of a run that lists several replay ratios: continual pretraining at this ratio,
 * then the forgetting gate's evaluation on the run's held-out sets. A child workflow, so that the
 * candidates train in parallel (one per free gpu slot), each resumable like the single dacp stage,
 * and the parent's history holds one child per candidate rather than their activities.
 */
export async function dacpCandidate(input: CandidateInput): Promise<CandidateOutcome> {
  const { control, gpu, evaluation } = stageActivities(input.timeouts, { waitForTrainingCancellation: true });
  // The parent decides, so a candidate never evaluates elsewhere than its parent does.
  const judge = input.evaluateInEngine ? evaluation : control;
  const adapted = await gpu.continualPretrain({
    runId: input.runId,
    round: input.round,
    ...input.spec,
    baseDir: input.baseDir,
    replayRatio: input.replayRatio,
    ...(input.domainMix ? { domainMix: input.domainMix } : {}),
    seedOffset: input.seedOffset,
    baseModel: input.baseModel,
    domain: input.data.domainTrain,
    replay: input.data.replayTrain,
  });
  const report = await judge.evaluateForgetting({
    runId: input.runId,
    round: input.round,
    ...input.spec,
    replayRatio: input.replayRatio,
    ...(input.domainMix ? { domainMix: input.domainMix } : {}),
    baseModel: input.baseModel,
    adaptedModel: adapted.model,
    domainHeldout: input.data.domainHeldout,
    generalHeldout: input.data.replayHeldout,
    choiceSets: input.choiceSets,
  });
  return { round: input.round, replayRatio: input.replayRatio, ...(input.domainMix ? { domainMix: input.domainMix } : {}), adapted, report: report.report, reportRef: report.reportRef };
}

/**
 * The balance point among candidates: of those that pass the gate, the one with the largest domain
 * gain; ties go to more replay (less forgetting). Null when none passes.
 */
export function chooseCandidate<T extends { replayRatio: number; report: { passed: boolean; domainGain: number } }>(candidates: T[]): T | null {
  const passing = candidates.filter((c) => c.report.passed && Number.isFinite(c.report.domainGain));
  if (passing.length === 0) return null;
  return passing.reduce((best, c) =>
    c.report.domainGain > best.report.domainGain || (c.report.domainGain === best.report.domainGain && c.replayRatio > best.replayRatio) ? c : best,
  );
}
