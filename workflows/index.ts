// The workflow bundle's entry point: every workflow type the control worker runs.
export { dacpPipeline } from './pipeline';
export { approvalGate } from './approval';
export { dacpCandidate } from './candidate';
