import type { Client } from '@temporalio/client';
import type { Pool } from 'pg';
import type { SlotPool } from '../workers/gpuSlots';
import type { ArtifactStore } from './artifacts';

/** What activities need from the worker that hosts them; created once per worker process. */
export interface ActivityDeps {
  pool: Pool;
  store: ArtifactStore;
  /** A Temporal client for activities that must reach other workflows (none signals its own run). */
  client?: Client;
  /** Training backend preference (else DACP_TF_BACKEND, else the best available). */
  tfBackend?: string;
  /** Where external trainers' stderr is kept (`<logsDir>/<runId>/…`); default `<store root>/../logs`. */
  logsDir?: string;
  /** True once the hosting worker is shutting down: training checkpoints and hands over. */
  workerStopping?: () => boolean;
  /** The gpu worker's training slots: which devices a trainer process may see. */
  slots?: SlotPool;
}
