import { createHash } from 'node:crypto';
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import type { Pool } from 'pg';
import { runRecords } from '../db/records';
import { InputError } from '../schemas/runSpec';
import { approvalWorkflowId } from '../workflows/messages';

/**
 * An audit bundle: the Temporal histories of the run (pipeline and approval gate) and every
 * database row of the run, sealed with a sha256 over a canonical serialisation of both, so that a
 * changed byte anywhere is detected by `dacp audit verify`.
 */
export interface AuditBundle {
  format: 'dacp-audit/1';
  runId: string;
  exportedAt: string;
  histories: Record<string, unknown>;
  records: Record<string, unknown[]>;
  sha256: string;
}

/** JSON with object keys sorted at every level, so the same content always hashes the same. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
}

function seal(body: Omit<AuditBundle, 'sha256'>): string {
  return createHash('sha256').update(canonicalJson(body)).digest('hex');
}

export async function exportAudit(client: Client, pool: Pool, runId: string): Promise<AuditBundle> {
  const histories: Record<string, unknown> = {};
  // The run, its approval gate and its candidates (one child workflow per replay ratio tried).
  const children = await childWorkflowIds(client, runId);
  for (const workflowId of [runId, approvalWorkflowId(runId), ...children.filter((id) => id !== approvalWorkflowId(runId))]) {
    try {
      const history = await client.workflow.getHandle(workflowId).fetchHistory();
      // Plain JSON: 64-bit numbers as strings, enums by name, payload bytes as base64.
      histories[workflowId] = JSON.parse(
        JSON.stringify(
          temporal.api.history.v1.History.toObject(temporal.api.history.v1.History.fromObject(history), {
            longs: String,
            enums: String,
            bytes: String,
          }),
        ),
      );
    } catch (err) {
      // fetchHistory reports a missing workflow as a bare gRPC NOT_FOUND (code 5), not WorkflowNotFoundError.
      if (err instanceof WorkflowNotFoundError || (err as { code?: number }).code === 5) {
        if (workflowId === runId) throw new InputError(`no run with id ${runId}; see \`dacp run list\``);
        continue; // the run never reached its approval gate
      }
      throw err;
    }
  }
  // Round-trip through JSON so dates and bigints are in the form the bundle will be verified in.
  const records = JSON.parse(JSON.stringify(await runRecords(pool, runId))) as Record<string, unknown[]>;
  const body = { format: 'dacp-audit/1' as const, runId, exportedAt: new Date().toISOString(), histories, records };
  return { ...body, sha256: seal(body) };
}

export interface AuditVerdict {
  ok: boolean;
  problems: string[];
}

/** Check a bundle's seal, and that the database's approvals match the decisions in the gate's history. */
export function verifyAudit(bundle: unknown): AuditVerdict {
  const problems: string[] = [];
  const b = bundle as Partial<AuditBundle>;
  if (!b || b.format !== 'dacp-audit/1' || typeof b.sha256 !== 'string' || !b.histories || !b.records) {
    return { ok: false, problems: ['not a dacp audit bundle (format dacp-audit/1 with histories, records and sha256)'] };
  }
  const { sha256, ...body } = b as AuditBundle;
  const actual = seal(body);
  if (actual !== sha256) problems.push(`seal mismatch: content hashes to ${actual}, bundle says ${sha256}`);
  const gate = b.histories[approvalWorkflowId(b.runId ?? '')] as { events?: Record<string, unknown>[] } | undefined;
  const accepted = new Set<string>();
  for (const event of gate?.events ?? []) {
    const attrs = event.workflowExecutionUpdateAcceptedEventAttributes as
      | { acceptedRequest?: { input?: { args?: { payloads?: { data?: string }[] } } } }
      | undefined;
    const payload = attrs?.acceptedRequest?.input?.args?.payloads?.[0]?.data;
    if (payload) {
      const decoded = JSON.parse(Buffer.from(payload, 'base64').toString('utf8')) as { principal?: string };
      if (decoded.principal) accepted.add(decoded.principal);
    }
  }
  for (const row of (b.records.approvals ?? []) as { principal: string }[]) {
    if (!accepted.has(row.principal)) problems.push(`approval by ${row.principal} is in the database but not in the gate's history`);
  }
  return { ok: problems.length === 0, problems };
}

/** The workflow ids of the children a run started, from its history; none if it has no history. */
async function childWorkflowIds(client: Client, runId: string): Promise<string[]> {
  try {
    const history = await client.workflow.getHandle(runId).fetchHistory();
    return (history.events ?? [])
      .map((e) => e.startChildWorkflowExecutionInitiatedEventAttributes?.workflowId)
      .filter((id): id is string => typeof id === 'string');
  } catch {
    return [];
  }
}
