import type { Pool } from 'pg';

export interface CheckpointRecord {
  step: number;
  uri: string;
  sha256: string;
  bytes: number;
}

/** The newest checkpoint of a training stage that has not been pruned, as a retry would find it. */
export async function newestCheckpoint(pool: Pool, runId: string, stage: 'dacp' | 'instruct', round = 0): Promise<CheckpointRecord | null> {
  const { rows } = await pool.query(
    `SELECT step, uri, sha256, bytes::int AS bytes FROM checkpoints
     WHERE run_id = $1 AND stage = $2 AND round = $3 AND pruned_at IS NULL ORDER BY step DESC LIMIT 1`,
    [runId, stage, round],
  );
  return (rows[0] as CheckpointRecord | undefined) ?? null;
}

/** The sha256 of the checkpoint a stage wrote at `step`. */
export async function checkpointSha(pool: Pool, runId: string, stage: 'dacp' | 'instruct', step: number, round = 0): Promise<string | null> {
  const { rows } = await pool.query('SELECT sha256 FROM checkpoints WHERE run_id = $1 AND stage = $2 AND round = $3 AND step = $4', [runId, stage, round, step]);
  return (rows[0]?.sha256 as string | undefined) ?? null;
}

export interface TrainingAttemptRecord {
  attempt: number;
  resumedFromStep: number | null;
}

/** Every training attempt of a stage, from the audit log, in attempt order. */
export async function trainingAttempts(pool: Pool, runId: string, stage: 'dacp' | 'instruct', round = 0): Promise<TrainingAttemptRecord[]> {
  const { rows } = await pool.query(
    `SELECT (details->>'attempt')::int AS attempt, (details->>'resumedFromStep')::int AS "resumedFromStep" FROM audit_log
     WHERE run_id = $1 AND event = 'training_attempt' AND details->>'trainingStage' = $2 AND (details->>'round')::int = $3
     ORDER BY (details->>'attempt')::int`,
    [runId, stage, round],
  );
  return rows as TrainingAttemptRecord[];
}
