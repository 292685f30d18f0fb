import type { Pool, PoolClient } from 'pg';
import { appendAudit } from './audit';
import { withTransaction } from './pool';
import { TERMINAL_STATES, type ArtifactRef, type DatasetRef, type Decision, type RunState, type Stage } from '../schemas/pipeline';

/**
 * Repositories for the domain records. Every write is keyed so that a retried activity repeats it
 * without effect (ON CONFLICT DO NOTHING / an idempotency key), as activities may run more than once.
 */

type Queryable = Pool | PoolClient;

/**
 * Register a run under its id, once. The Temporal execution that owns the id is stored with it: a
 * retry of the same execution finds its own row (and the alias target it recorded then), while any
 * other execution under that id is refused, so it can never reuse the first one's records.
 */
export async function insertRun(
  db: Queryable,
  run: {
    runId: string;
    workflowId: string;
    executionId?: string;
    spec: unknown;
    specSha256: string;
    initiator: string;
    /** The alias this run's deploy will move (its target now is kept for the compare-and-swap). */
    deployAlias?: string;
    scheduleId?: string;
  },
): Promise<{ fresh: boolean; executionId: string | null; aliasAtStart: string | null }> {
  const inserted = await db.query(
    `INSERT INTO runs (run_id, workflow_id, execution_id, spec, spec_sha256, initiator, state, stage, deploy_alias, alias_at_start, schedule_id)
     VALUES ($1, $2, $3, $4, $5, $6, 'running', 'collect', $7, (SELECT version_id FROM model_aliases WHERE alias = $7), $8)
     ON CONFLICT (run_id) DO NOTHING
     RETURNING alias_at_start`,
    [run.runId, run.workflowId, run.executionId ?? null, JSON.stringify(run.spec), run.specSha256, run.initiator, run.deployAlias ?? 'production', run.scheduleId ?? null],
  );
  if (inserted.rows.length) return { fresh: true, executionId: run.executionId ?? null, aliasAtStart: inserted.rows[0].alias_at_start };
  const { rows } = await db.query('SELECT execution_id, alias_at_start FROM runs WHERE run_id = $1', [run.runId]);
  return { fresh: false, executionId: rows[0]?.execution_id ?? null, aliasAtStart: rows[0]?.alias_at_start ?? null };
}

/** Store a run spec by the sha256 of its JSON text (idempotent); returns its reference. */
export async function storeRunSpec(db: Queryable, body: string, sha256: string): Promise<ArtifactRef> {
  await db.query('INSERT INTO run_specs (sha256, body) VALUES ($1, $2) ON CONFLICT (sha256) DO NOTHING', [sha256, body]);
  return { uri: `postgres:run_specs/${sha256}`, sha256, bytes: Buffer.byteLength(body) };
}

/** A stored run spec's JSON text, or null. The caller verifies it against the reference's sha256. */
export async function loadRunSpecBody(db: Queryable, sha256: string): Promise<string | null> {
  const { rows } = await db.query('SELECT body FROM run_specs WHERE sha256 = $1', [sha256]);
  return rows.length ? (rows[0].body as string) : null;
}

/** Whether a run id has records: a closed run's id is never reused, even after Temporal forgot it. */
export async function runExists(db: Queryable, runId: string): Promise<boolean> {
  const { rowCount } = await db.query('SELECT 1 FROM runs WHERE run_id = $1', [runId]);
  return (rowCount ?? 0) > 0;
}

/** One audit row outside any transition (a refused attempt, say), chained like every other. */
export async function appendAuditEntry(
  db: Pool,
  row: { runId: string; key: string; event: string; stage: Stage | null; actor: string; details: unknown },
): Promise<boolean> {
  return withTransaction(db, (client) => appendAudit(client, row));
}

/** Record one transition: the audit entry and the run's current stage/state move together. */
export async function recordTransition(
  db: Pool,
  t: {
    runId: string;
    key: string;
    event: string;
    stage: Stage;
    state?: RunState;
    actor: string;
    details: unknown;
    /** The workflow's stage figures at this transition, kept on the run's row for `dacp run status`. */
    snapshot?: { metrics: Record<string, unknown>; stageSeconds: Record<string, number | undefined> };
  },
): Promise<boolean> {
  const client = await db.connect();
  try {
    await client.query('BEGIN');
    const fresh = await appendAudit(client, { runId: t.runId, key: t.key, event: t.event, stage: t.stage, actor: t.actor, details: t.details ?? {} });
    if (fresh && t.state) {
      const terminal = (TERMINAL_STATES as readonly string[]).includes(t.state);
      await client.query(
        `UPDATE runs SET stage = $2, state = $3, updated_at = now(),
           finished_at = CASE WHEN $4 THEN now() ELSE finished_at END,
           error = CASE WHEN $3 = 'failed' THEN $5 ELSE error END
         WHERE run_id = $1`,
        [t.runId, t.stage, t.state, terminal, (t.details as { reason?: string } | undefined)?.reason ?? null],
      );
    }
    if (fresh && t.snapshot) {
      await client.query(`UPDATE runs SET metrics = $2, stage_seconds = $3 WHERE run_id = $1`, [
        t.runId,
        JSON.stringify(t.snapshot.metrics),
        JSON.stringify(t.snapshot.stageSeconds),
      ]);
    }
    await client.query('COMMIT');
    return fresh;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

export async function upsertDataset(db: Queryable, runId: string, stage: 'collect' | 'quality' | 'mix', d: DatasetRef): Promise<void> {
  await db.query(
    `INSERT INTO datasets (run_id, stage, role, split, uri, sha256, docs, bytes, tokens)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
     ON CONFLICT (run_id, stage, role, split) DO NOTHING`,
    [runId, stage, d.role, d.split, d.uri, d.sha256, d.docs, d.dataBytes, d.tokens],
  );
}

export interface CheckpointRow {
  step: number;
  uri: string;
  sha256: string;
  bytes: number;
  loss: number | null;
}

export async function insertCheckpoint(
  db: Queryable,
  c: { runId: string; stage: 'dacp' | 'instruct' | 'bootstrap'; round: number } & CheckpointRow,
): Promise<void> {
  // A step re-done after a resume from an older checkpoint replaces the row: the newest bytes win.
  await db.query(
    `INSERT INTO checkpoints (run_id, stage, round, step, uri, sha256, bytes, loss)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (run_id, stage, round, step) DO UPDATE SET uri = EXCLUDED.uri, sha256 = EXCLUDED.sha256,
       bytes = EXCLUDED.bytes, loss = EXCLUDED.loss, created_at = now()`,
    [c.runId, c.stage, c.round, c.step, c.uri, c.sha256, c.bytes, c.loss],
  );
}

export async function listCheckpoints(
  db: Queryable,
  runId: string,
  stage: 'dacp' | 'instruct' | 'bootstrap',
  round: number,
): Promise<CheckpointRow[]> {
  const { rows } = await db.query(
    `SELECT step, uri, sha256, bytes, loss FROM checkpoints
     WHERE run_id = $1 AND stage = $2 AND round = $3 AND pruned_at IS NULL ORDER BY step DESC`,
    [runId, stage, round],
  );
  return rows.map((r) => ({ step: r.step, uri: r.uri, sha256: r.sha256, bytes: Number(r.bytes), loss: r.loss }));
}

/** Mark checkpoints pruned; returns the hashes no live checkpoint row uses any more (their files may go). */
export async function markCheckpointsPruned(
  db: Queryable,
  runId: string,
  stage: 'dacp' | 'instruct' | 'bootstrap',
  round: number,
  steps: number[],
): Promise<{ uri: string; sha256: string }[]> {
  if (steps.length === 0) return [];
  const { rows } = await db.query(
    `UPDATE checkpoints SET pruned_at = now()
     WHERE run_id = $1 AND stage = $2 AND round = $3 AND step = ANY($4::int[]) AND pruned_at IS NULL
     RETURNING uri, sha256`,
    [runId, stage, round, steps],
  );
  const orphans: { uri: string; sha256: string }[] = [];
  for (const row of rows) {
    const live = await db.query('SELECT 1 FROM checkpoints WHERE sha256 = $1 AND pruned_at IS NULL LIMIT 1', [row.sha256]);
    if (live.rowCount === 0) orphans.push({ uri: row.uri, sha256: row.sha256 });
  }
  return orphans;
}

/** Metric points per INSERT: one statement stays small however large checkpointEvery is. */
export const METRICS_BATCH_ROWS = 5_000;

/**
 * Write metric points, upserting on (step, name). Each statement carries a bounded batch as three
 * arrays (six parameters, whatever the batch size), so no run exceeds Postgres's 65,535-parameter
 * limit. A point repeated in `points` keeps its last value (one statement may not upsert a row twice).
 */
export async function insertMetrics(
  db: Queryable,
  runId: string,
  stage: string,
  round: number,
  points: { step: number; name: string; value: number }[],
): Promise<void> {
  const latest = new Map<string, { step: number; name: string; value: number }>();
  for (const p of points) latest.set(`${p.step}\u0000${p.name}`, p);
  const unique = [...latest.values()];
  for (let i = 0; i < unique.length; i += METRICS_BATCH_ROWS) {
    const batch = unique.slice(i, i + METRICS_BATCH_ROWS);
    await db.query(
      `INSERT INTO metrics (run_id, stage, round, step, name, value)
       SELECT $1, $2, $3, p.step, p.name, p.value FROM unnest($4::integer[], $5::text[], $6::double precision[]) AS p(step, name, value)
       ON CONFLICT (run_id, stage, round, step, name) DO UPDATE SET value = EXCLUDED.value`,
      [runId, stage, round, batch.map((p) => p.step), batch.map((p) => p.name), batch.map((p) => p.value)],
    );
  }
}

/** What a token stream was made from: the tokenizer, the dataset and the layout of the ids. */
export interface TokenCacheKey {
  tokenizerSha256: string;
  datasetSha256: string;
  /** How documents became ids, e.g. `lm/1` (documents closed by eos) or `sft/1` (prompt/response pairs). */
  layout: string;
}

/** The stored token stream of a key, if one was recorded. */
export async function findTokenCache(db: Queryable, key: TokenCacheKey): Promise<(ArtifactRef & { tokens: number }) | null> {
  const { rows } = await db.query(
    `SELECT uri, sha256, bytes, tokens FROM token_cache WHERE tokenizer_sha256 = $1 AND dataset_sha256 = $2 AND layout = $3`,
    [key.tokenizerSha256, key.datasetSha256, key.layout],
  );
  const row = rows[0];
  return row ? { uri: row.uri, sha256: row.sha256, bytes: Number(row.bytes), tokens: Number(row.tokens) } : null;
}

/** Record (or replace, after the old artifact went missing) the token stream of a key. */
export async function recordTokenCache(db: Queryable, key: TokenCacheKey, ref: ArtifactRef & { tokens: number }): Promise<void> {
  await db.query(
    `INSERT INTO token_cache (tokenizer_sha256, dataset_sha256, layout, uri, sha256, bytes, tokens)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (tokenizer_sha256, dataset_sha256, layout)
     DO UPDATE SET uri = EXCLUDED.uri, sha256 = EXCLUDED.sha256, bytes = EXCLUDED.bytes, tokens = EXCLUDED.tokens, created_at = now()`,
    [key.tokenizerSha256, key.datasetSha256, key.layout, ref.uri, ref.sha256, ref.bytes, ref.tokens],
  );
}

export async function insertEvaluation(
  db: Queryable,
  e: { runId: string; kind: 'forgetting' | 'instruct' | 'final_check' | 'tradeoff'; round: number; passed: boolean; report: unknown; ref: ArtifactRef },
): Promise<void> {
  await db.query(
    `INSERT INTO evaluations (run_id, kind, round, passed, report_uri, sha256, report)
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (run_id, kind, round) DO NOTHING`,
    [e.runId, e.kind, e.round, e.passed, e.ref.uri, e.ref.sha256, JSON.stringify(e.report)],
  );
}

export async function insertDecision(db: Queryable, runId: string, d: Decision, artifacts: unknown): Promise<boolean> {
  const res = await db.query(
    `INSERT INTO approvals (run_id, principal, decision, comment, artifacts, decided_at, signature)
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (run_id, principal) DO NOTHING`,
    [runId, d.principal, d.decision, d.comment ?? null, JSON.stringify(artifacts), d.at, d.signature ? JSON.stringify(d.signature) : null],
  );
  return (res.rowCount ?? 0) > 0;
}

export interface ModelVersionRow {
  versionId: string;
  name: string;
  parentVersionId: string | null;
  runId: string | null;
  uri: string;
  sha256: string;
  lineage: Record<string, unknown>;
  metrics: Record<string, unknown>;
  /** The model as a Hugging Face folder (a manifest artifact); null for versions registered before folders. */
  folder: ArtifactRef | null;
  createdAt: string;
}

function toModelVersion(r: Record<string, unknown>): ModelVersionRow {
  return {
    versionId: r.version_id as string,
    name: r.name as string,
    parentVersionId: (r.parent_version_id as string | null) ?? null,
    runId: (r.run_id as string | null) ?? null,
    uri: r.uri as string,
    sha256: r.sha256 as string,
    lineage: r.lineage as Record<string, unknown>,
    metrics: r.metrics as Record<string, unknown>,
    folder: (r.folder as ArtifactRef | null | undefined) ?? null,
    createdAt: (r.created_at as Date).toISOString(),
  };
}

/** A version id or an alias → the model version, or null. */
export async function findModelVersion(db: Queryable, ref: string): Promise<ModelVersionRow | null> {
  const { rows } = await db.query(
    `SELECT v.* FROM model_versions v WHERE v.version_id = $1
     UNION ALL
     SELECT v.* FROM model_aliases a JOIN model_versions v ON v.version_id = a.version_id WHERE a.alias = $1
     LIMIT 1`,
    [ref],
  );
  return rows.length ? toModelVersion(rows[0]) : null;
}

export async function listModelVersions(db: Queryable): Promise<(ModelVersionRow & { aliases: string[] })[]> {
  const { rows } = await db.query(
    `SELECT v.*, COALESCE(array_agg(a.alias ORDER BY a.alias) FILTER (WHERE a.alias IS NOT NULL), '{}') AS aliases
     FROM model_versions v LEFT JOIN model_aliases a ON a.version_id = v.version_id
     GROUP BY v.version_id ORDER BY v.created_at DESC, v.version_id DESC`,
  );
  return rows.map((r) => ({ ...toModelVersion(r), aliases: r.aliases as string[] }));
}

/**
 * Create a model version with the next number for its name. Returns the existing version when this
 * run already created one for the same artifact (a retried activity).
 */
export async function createModelVersion(
  client: PoolClient,
  v: { name: string; parentVersionId: string | null; runId: string; model: ArtifactRef; lineage: unknown; metrics: unknown; folder?: ArtifactRef },
): Promise<string> {
  await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`dacp-model:${v.name}`]);
  const existing = await client.query(
    `SELECT version_id FROM model_versions WHERE name = $1 AND run_id = $2 AND sha256 = $3`,
    [v.name, v.runId, v.model.sha256],
  );
  if (existing.rows.length) return existing.rows[0].version_id as string;
  const { rows } = await client.query(`SELECT count(*)::int AS n FROM model_versions WHERE name = $1`, [v.name]);
  const versionId = `${v.name}:v${(rows[0].n as number) + 1}`;
  await client.query(
    `INSERT INTO model_versions (version_id, name, parent_version_id, run_id, uri, sha256, lineage, metrics, folder)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
    [versionId, v.name, v.parentVersionId, v.runId, v.model.uri, v.model.sha256, JSON.stringify(v.lineage), JSON.stringify(v.metrics), v.folder ? JSON.stringify(v.folder) : null],
  );
  return versionId;
}

/**
 * Register a model brought in from outside (no run made it): the next version of `name`, or the
 * version already imported with the same bytes under that name.
 */
export async function importModelVersion(
  client: PoolClient,
  v: { name: string; model: ArtifactRef; lineage: Record<string, unknown>; folder: ArtifactRef },
): Promise<{ versionId: string; existed: boolean }> {
  await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`dacp-model:${v.name}`]);
  const existing = await client.query(`SELECT version_id FROM model_versions WHERE name = $1 AND run_id IS NULL AND sha256 = $2`, [v.name, v.model.sha256]);
  if (existing.rows.length) return { versionId: existing.rows[0].version_id as string, existed: true };
  const { rows } = await client.query(`SELECT count(*)::int AS n FROM model_versions WHERE name = $1`, [v.name]);
  const versionId = `${v.name}:v${(rows[0].n as number) + 1}`;
  await client.query(
    `INSERT INTO model_versions (version_id, name, parent_version_id, run_id, uri, sha256, lineage, metrics, folder) VALUES ($1, $2, NULL, NULL, $3, $4, $5, '{}', $6)`,
    [versionId, v.name, v.model.uri, v.model.sha256, JSON.stringify(v.lineage), JSON.stringify(v.folder)],
  );
  return { versionId, existed: false };
}

/** The alias moved since the run started: the deploy leaves it where it is. */
export class AliasMovedError extends Error {
  constructor(
    readonly alias: string,
    readonly expected: string | null,
    readonly actual: string | null,
  ) {
    super(`alias ${alias} moved while the run ran: it pointed at ${expected ?? 'nothing'} when the run started, now at ${actual ?? 'nothing'}`);
    this.name = 'AliasMovedError';
  }
}

/**
 * Point `alias` at `versionId`, recording the deployment and the version it replaces. With
 * `expectedTarget` (null: the alias must not exist yet) it is a compare-and-swap: if the alias points
 * elsewhere it is left alone and AliasMovedError is thrown.
 */
export async function moveAlias(
  client: PoolClient,
  d: {
    runId: string;
    alias: string;
    versionId: string;
    expectedTarget?: string | null;
    /** What moved it (a run's deploy by default), who, and why: the alias's history. */
    kind?: AliasMoveKind;
    actor?: string;
    note?: string;
    /** A person's move: the operator's signature over it, given the target it replaces. */
    sign?: (previousVersionId: string | null) => unknown;
  },
): Promise<{ deploymentId: number; previousVersionId: string | null }> {
  const done = await client.query(
    `SELECT id, previous_version_id FROM deployments WHERE run_id = $1 AND alias = $2`,
    [d.runId, d.alias],
  );
  if (done.rows.length) {
    return { deploymentId: Number(done.rows[0].id), previousVersionId: done.rows[0].previous_version_id };
  }
  const current = await client.query(`SELECT version_id FROM model_aliases WHERE alias = $1 FOR UPDATE`, [d.alias]);
  const previousVersionId: string | null = current.rows.length ? current.rows[0].version_id : null;
  if (d.expectedTarget !== undefined && previousVersionId !== d.expectedTarget) {
    throw new AliasMovedError(d.alias, d.expectedTarget, previousVersionId);
  }
  await client.query(
    `INSERT INTO model_aliases (alias, version_id) VALUES ($1, $2)
     ON CONFLICT (alias) DO UPDATE SET version_id = EXCLUDED.version_id, updated_at = now()`,
    [d.alias, d.versionId],
  );
  const inserted = await client.query(
    `INSERT INTO deployments (run_id, alias, version_id, previous_version_id, kind, actor, note, signature) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id`,
    [d.runId, d.alias, d.versionId, previousVersionId, d.kind ?? 'deploy', d.actor ?? null, d.note ?? null, d.sign ? JSON.stringify(d.sign(previousVersionId)) : null],
  );
  return { deploymentId: Number(inserted.rows[0].id), previousVersionId };
}

export type AliasMoveKind = 'deploy' | 'import' | 'promote' | 'rollback';

export interface AliasMove {
  id: number;
  alias: string;
  /** Null where a rollback had nothing to go back to and removed the alias. */
  versionId: string | null;
  previousVersionId: string | null;
  kind: AliasMoveKind;
  runId: string;
  actor: string | null;
  note: string | null;
  at: string;
}

function toAliasMove(r: Record<string, unknown>): AliasMove {
  return {
    id: Number(r.id),
    alias: r.alias as string,
    versionId: (r.version_id as string | null) ?? null,
    previousVersionId: (r.previous_version_id as string | null) ?? null,
    kind: r.kind as AliasMoveKind,
    runId: r.run_id as string,
    actor: (r.actor as string | null) ?? null,
    note: (r.note as string | null) ?? null,
    at: (r.created_at as Date).toISOString(),
  };
}

/** Every move of an alias, oldest first (or every move to or from a version, with `versionId`). */
export async function aliasHistory(db: Queryable, o: { alias?: string; versionId?: string }): Promise<AliasMove[]> {
  const { rows } = o.alias !== undefined
    ? await db.query('SELECT * FROM deployments WHERE alias = $1 ORDER BY id', [o.alias])
    : await db.query('SELECT * FROM deployments WHERE version_id = $1 OR previous_version_id = $1 ORDER BY id', [o.versionId]);
  return rows.map(toAliasMove);
}

/** Every database row that belongs to a run, for the audit bundle. */
export async function runRecords(db: Queryable, runId: string): Promise<Record<string, unknown[]>> {
  const tables: [string, string][] = [
    ['runs', 'SELECT * FROM runs WHERE run_id = $1'],
    ['audit_log', 'SELECT * FROM audit_log WHERE run_id = $1 ORDER BY id'],
    ['datasets', 'SELECT * FROM datasets WHERE run_id = $1 ORDER BY id'],
    ['checkpoints', 'SELECT * FROM checkpoints WHERE run_id = $1 ORDER BY id'],
    ['metrics', 'SELECT * FROM metrics WHERE run_id = $1 ORDER BY id'],
    ['evaluations', 'SELECT * FROM evaluations WHERE run_id = $1 ORDER BY id'],
    ['approvals', 'SELECT * FROM approvals WHERE run_id = $1 ORDER BY id'],
    ['model_versions', 'SELECT * FROM model_versions WHERE run_id = $1 ORDER BY created_at'],
    ['deployments', 'SELECT * FROM deployments WHERE run_id = $1 ORDER BY id'],
    ['run_watermarks', 'SELECT * FROM run_watermarks WHERE run_id = $1 ORDER BY source_key'],
  ];
  const out: Record<string, unknown[]> = {};
  for (const [name, sql] of tables) out[name] = (await db.query(sql, [runId])).rows;
  return out;
}

/**
 * Advance a schedule's watermarks to where a successful run read (run_watermarks → schedule_watermarks).
 * Only from where the run started: if another run of the schedule advanced them meanwhile, they stay.
 * Idempotent: a retried deploy finds them already advanced by this run.
 */
export async function advanceWatermarks(db: Queryable, runId: string): Promise<number> {
  const { rowCount } = await db.query(
    `INSERT INTO schedule_watermarks AS s (schedule_id, source_key, kind, value, run_id)
     SELECT w.schedule_id, w.source_key, w.kind, w.next, w.run_id FROM run_watermarks w WHERE w.run_id = $1
     ON CONFLICT (schedule_id, source_key) DO UPDATE SET value = EXCLUDED.value, run_id = EXCLUDED.run_id, updated_at = now()
     WHERE s.run_id IS NOT DISTINCT FROM (SELECT used_run_id FROM run_watermarks WHERE run_id = $1 AND source_key = EXCLUDED.source_key)`,
    [runId],
  );
  return rowCount ?? 0;
}

/**
 * Undo `advanceWatermarks` for a run that turned out not to succeed (its deploy was rolled back):
 * each watermark it set goes back to the one it started from, or away on a schedule's first run.
 * Watermarks another run has moved since are left alone.
 */
export async function restoreWatermarks(db: Queryable, runId: string): Promise<void> {
  await db.query(
    `UPDATE schedule_watermarks s SET value = w.used, run_id = w.used_run_id, updated_at = now()
       FROM run_watermarks w
      WHERE w.run_id = $1 AND s.schedule_id = w.schedule_id AND s.source_key = w.source_key AND s.run_id = $1 AND w.used IS NOT NULL`,
    [runId],
  );
  await db.query(
    `DELETE FROM schedule_watermarks s USING run_watermarks w
      WHERE w.run_id = $1 AND s.schedule_id = w.schedule_id AND s.source_key = w.source_key AND s.run_id = $1 AND w.used IS NULL`,
    [runId],
  );
}
