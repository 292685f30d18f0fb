import { createHash } from 'node:crypto';
import type { PoolClient } from 'pg';
import { canonicalJson } from '../schemas/canonical';

/**
 * The run's audit log is a hash chain. A row's sha256 covers exactly these fields, as canonical
 * JSON: the previous row's sha256 (null for a run's first row), the run, the idempotency key, the
 * event, stage, actor, details and the time. `dacp audit verify` recomputes it offline from the
 * exported rows, so an edited, inserted or dropped row shows.
 */
export interface ChainedFields {
  prev: string | null;
  runId: string;
  key: string;
  event: string;
  stage: string | null;
  actor: string;
  details: unknown;
  /** ISO 8601 with milliseconds, as the row's created_at. */
  at: string;
}

export function auditRowHash(f: ChainedFields): string {
  return createHash('sha256').update(canonicalJson({ ...f, details: f.details ?? {} })).digest('hex');
}

/** The chained fields of a row as Postgres returns it (or as an audit bundle holds it). */
export function chainedFieldsOf(row: Record<string, unknown>): ChainedFields {
  const at = row.created_at instanceof Date ? row.created_at.toISOString() : new Date(String(row.created_at)).toISOString();
  return {
    prev: (row.prev_sha256 as string | null) ?? null,
    runId: row.run_id as string,
    key: row.idempotency_key as string,
    event: row.event as string,
    stage: (row.stage as string | null) ?? null,
    actor: row.actor as string,
    details: row.details ?? {},
    at,
  };
}

/**
 * Append one audit row inside the caller's transaction, chained to the run's last row. The advisory
 * lock (also taken by the table's trigger) makes concurrent writers of one run take turns. Returns
 * whether the row is new (false when its idempotency key was already written: a retried activity).
 */
export async function appendAudit(
  client: PoolClient,
  row: { runId: string; key: string; event: string; stage: string | null; actor: string; details: unknown },
): Promise<boolean> {
  await client.query(`SELECT pg_advisory_xact_lock(hashtext('dacp-audit:' || $1))`, [row.runId]);
  const last = await client.query('SELECT sha256 FROM audit_log WHERE run_id = $1 ORDER BY id DESC LIMIT 1', [row.runId]);
  const prev = (last.rows[0]?.sha256 as string | null | undefined) ?? null;
  // Round-tripped through JSON first: the hash covers what the jsonb column gives back.
  const details = JSON.parse(JSON.stringify(row.details ?? {})) as unknown;
  // The database's clock, to the millisecond (what the hash covers): the row's time never runs ahead
  // of other times written in the same transaction (a run's finished_at, say).
  const at = ((await client.query(`SELECT date_trunc('milliseconds', now()) AS at`)).rows[0].at as Date).toISOString();
  const sha256 = auditRowHash({ prev, runId: row.runId, key: row.key, event: row.event, stage: row.stage, actor: row.actor, details, at });
  const inserted = await client.query(
    `INSERT INTO audit_log (run_id, idempotency_key, event, stage, actor, details, created_at, prev_sha256, sha256)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id`,
    [row.runId, row.key, row.event, row.stage, row.actor, JSON.stringify(details), at, prev, sha256],
  );
  return (inserted.rowCount ?? 0) > 0;
}

/** The chain's problems, in words; empty when every row links and hashes as it should. */
export function chainProblems(rows: Record<string, unknown>[]): string[] {
  const problems: string[] = [];
  let last: string | null = null;
  let unchained = 0;
  for (const row of rows) {
    if (row.sha256 === null || row.sha256 === undefined) {
      // Written before the chain existed (migration 010); a chained row may not be followed by one.
      if (last !== null) problems.push(`audit row ${String(row.id)} (${String(row.event)}) has no hash after chained rows`);
      unchained++;
      continue;
    }
    const fields = chainedFieldsOf(row);
    if (fields.prev !== last) problems.push(`audit row ${String(row.id)} (${fields.event}) does not link to the row before it`);
    const actual = auditRowHash(fields);
    if (actual !== row.sha256) problems.push(`audit row ${String(row.id)} (${fields.event}) was changed: its content hashes to ${actual.slice(0, 12)}…, the chain says ${String(row.sha256).slice(0, 12)}…`);
    last = row.sha256 as string;
  }
  if (unchained && unchained === rows.length && rows.length) problems.push(`none of the ${rows.length} audit rows is hash-chained (written before migration 010)`);
  return problems;
}
