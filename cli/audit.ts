import { createHash } from 'node:crypto';
import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import type { Payload, PayloadCodec } from '@temporalio/common';
import { ENCRYPTED_ENCODING } from '../workers/codec';
import type { Pool } from 'pg';
import { openArtifactStore } from '../activities/objectStore';
import { chainProblems } from '../db/audit';
import { keyIdOf, keysById } from '../db/principals';
import { runRecords } from '../db/records';
import { canonicalJson } from '../schemas/canonical';
import type { ApprovalRequest, SignedDecision } from '../schemas/pipeline';
import { InputError } from '../schemas/runSpec';
import { serviceKey, serviceKeyFile, type ServiceKeyFile } from './keys';
import { candidateDifferences, candidateHashes, signStatement, verifyStatement, type DecisionStatement, type StartStatement } from '../schemas/signing';
import { approvalWorkflowId } from '../workflows/messages';

export { canonicalJson };

/**
 * An audit bundle (format dacp-audit/2): every part of a run's evidence, a manifest of each part's
 * sha256, and an Ed25519 signature over the manifest by the installation's export key.
 *
 * Parts: `history:<workflow id>` (the Temporal histories of the run, its gate and its candidates),
 * `records:<table>` (every database row of the run, and the public keys its signatures name), and
 * `artifact:<sha256>` (the JSON manifests and reports the run wrote — dataset, checkpoint and model
 * manifests, evaluation reports — as their exact text, so their own sha256 can be recomputed).
 */
export interface AuditBundle {
  format: 'dacp-audit/2';
  runId: string;
  exportedAt: string;
  parts: Record<string, unknown>;
  manifest: Record<string, string>;
  signature: { algorithm: 'ed25519'; keyId: string; publicKey: string; signature: string };
}

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

/** A part's hash: an artifact's is the sha256 of its text (its own content hash); any other part's, of its canonical JSON. */
export function partHash(name: string, value: unknown): string {
  if (name.startsWith('artifact:')) return sha256(typeof value === 'string' ? value : canonicalJson(value));
  return sha256(canonicalJson(value));
}

export function manifestStatement(b: Pick<AuditBundle, 'format' | 'runId' | 'exportedAt' | 'manifest'>) {
  return { format: b.format, runId: b.runId, exportedAt: b.exportedAt, manifest: b.manifest };
}

// ---- the export key: dacp's own, under DACP_HOME, its public half published with `dacp audit key`

export function exportKeyFile(home: string): string {
  return serviceKeyFile(home, 'export');
}

/** The installation's export key, created (0600) and registered on first use. */
export async function exportKey(pool: Pool, home: string): Promise<ServiceKeyFile> {
  return serviceKey(pool, home, 'export');
}

// ---- export

/** History payloads are base64 JSON in the exported form; this reads one back. */
export function decodePayload(payload: { data?: string } | undefined): unknown {
  if (!payload?.data) return undefined;
  return JSON.parse(Buffer.from(payload.data, 'base64').toString('utf8'));
}

/** Artifacts up to this size that are JSON go into the bundle whole; larger ones by hash only. */
const MAX_ARTIFACT_BYTES = 4 * 1024 * 1024;

export async function exportAudit(client: Client, pool: Pool, runId: string, o: { home: string; artifactsDir: string; admin?: Pool }): Promise<AuditBundle> {
  const parts: Record<string, unknown> = {};
  // The run, its approval gate and its candidates (one child workflow per replay ratio tried).
  const children = await childWorkflowIds(client, runId);
  for (const workflowId of [runId, approvalWorkflowId(runId), ...children.filter((id) => id !== approvalWorkflowId(runId))]) {
    try {
      const history = await client.workflow.getHandle(workflowId).fetchHistory();
      // Plain JSON: 64-bit numbers as strings, enums by name, payload bytes as base64; payloads
      // sealed by the payload codec are opened first, so the bundle verifies without the key.
      const plain = JSON.parse(
        JSON.stringify(
          temporal.api.history.v1.History.toObject(temporal.api.history.v1.History.fromObject(history), { longs: String, enums: String, bytes: String }),
        ),
      ) as unknown;
      parts[`history:${workflowId}`] = await openSealedPayloads(plain, client.options.loadedDataConverter.payloadCodecs);
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
  const records = JSON.parse(JSON.stringify(await runRecords(pool, runId))) as Record<string, Record<string, unknown>[]>;
  const keyIds = new Set<string>();
  const serverKeyIds = new Set<string>();
  for (const row of records.approvals ?? []) {
    const sig = row.signature as SignedDecision | null;
    if (sig) (sig.statement.via === 'api' ? serverKeyIds : keyIds).add(sig.statement.keyId);
  }
  for (const row of records.audit_log ?? []) {
    if (row.event === 'run_start_signed') keyIds.add(((row.details as { statement: StartStatement }).statement).keyId);
  }
  records.principal_keys = JSON.parse(JSON.stringify(await keysById(pool, [...keyIds])));
  // The API server's keys that signed votes for the approvers it authenticated.
  records.service_keys = JSON.parse(JSON.stringify((await pool.query('SELECT key_id, purpose, public_key, created_at FROM service_keys WHERE key_id = ANY($1) ORDER BY key_id', [[...serverKeyIds]])).rows));
  for (const [table, rows] of Object.entries(records)) parts[`records:${table}`] = rows;

  // The JSON artifacts the rows name, as their exact bytes.
  const store = openArtifactStore(o.artifactsDir);
  const refs = new Map<string, string>();
  for (const row of records.datasets ?? []) refs.set(row.sha256 as string, row.uri as string);
  for (const row of records.checkpoints ?? []) refs.set(row.sha256 as string, row.uri as string);
  for (const row of records.evaluations ?? []) refs.set(row.sha256 as string, row.report_uri as string);
  for (const row of records.model_versions ?? []) refs.set(row.sha256 as string, row.uri as string);
  for (const [hash, uri] of refs) {
    if (!uri.endsWith('.json')) continue;
    try {
      if ((await store.sizeOf({ uri })) > MAX_ARTIFACT_BYTES) continue;
      parts[`artifact:${hash}`] = (await store.get({ uri, sha256: hash })).toString('utf8');
    } catch {
      // pruned or elsewhere: the rows still carry its hash
    }
  }

  const manifest: Record<string, string> = {};
  for (const [name, value] of Object.entries(parts)) manifest[name] = partHash(name, value);
  // The export key is registered through the administrator's connection (the work role cannot write dacp's keys).
  const key = await exportKey(o.admin ?? pool, o.home);
  const body = { format: 'dacp-audit/2' as const, runId, exportedAt: new Date().toISOString(), manifest };
  return {
    ...body,
    parts,
    signature: { algorithm: 'ed25519', keyId: key.keyId, publicKey: key.publicKey, signature: signStatement(manifestStatement(body), key.privateKey) },
  };
}

/**
 * Every payload in an exported history (`{metadata: {k: base64}, data: base64}`) that a codec
 * sealed, opened with the client's codecs; everything else as it was.
 */
async function openSealedPayloads(value: unknown, codecs: PayloadCodec[]): Promise<unknown> {
  if (!codecs.length || value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return Promise.all(value.map((v) => openSealedPayloads(v, codecs)));
  const obj = value as Record<string, unknown>;
  const metadata = obj.metadata as Record<string, string> | undefined;
  if (metadata && typeof metadata.encoding === 'string' && Buffer.from(metadata.encoding, 'base64').toString('utf8') === ENCRYPTED_ENCODING) {
    let payload: Payload = {
      metadata: Object.fromEntries(Object.entries(metadata).map(([k, v]) => [k, Buffer.from(v, 'base64')])),
      data: Buffer.from(String(obj.data ?? ''), 'base64'),
    };
    for (const codec of [...codecs].reverse()) [payload] = await codec.decode([payload]);
    return {
      metadata: Object.fromEntries(Object.entries(payload.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v as Uint8Array).toString('base64')])),
      data: Buffer.from(payload.data ?? new Uint8Array()).toString('base64'),
    };
  }
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(obj)) out[k] = await openSealedPayloads(v, codecs);
  return out;
}

// ---- verify, offline

export interface AuditVerdict {
  ok: boolean;
  /** Whether the bundle's key was checked against a published one (`--key`). */
  authentic: boolean;
  problems: string[];
  /** What was checked, for the report. */
  checked: string[];
}

/** A public key as given to `--key`: hex, or the JSON `dacp audit key --json` prints. */
export function parsePublicKey(text: string): string {
  const trimmed = text.trim();
  if (/^[0-9a-f]{64}$/i.test(trimmed)) return trimmed.toLowerCase();
  try {
    const parsed = JSON.parse(trimmed) as { publicKey?: string };
    if (parsed.publicKey && /^[0-9a-f]{64}$/i.test(parsed.publicKey)) return parsed.publicKey.toLowerCase();
  } catch {
    // fall through
  }
  throw new InputError('--key must be an Ed25519 public key: 64 hex digits, or the JSON of `dacp audit key --json` (a file or the text itself)');
}

type Row = Record<string, unknown>;

/** Audit events that activities write on their own, outside the workflows' recordTransition. */
const ACTIVITY_EVENTS = new Set(['training_attempt', 'checkpoint_invalid', 'deployed', 'alias_moved', 'run_start_signed', 'vote_refused', 'approved_by', 'rejected_by']);
interface HistoryEvent extends Record<string, unknown> {
  eventType?: string;
}

export function verifyAudit(bundle: unknown, o: { publicKey?: string } = {}): AuditVerdict {
  const problems: string[] = [];
  const checked: string[] = [];
  const b = bundle as Partial<AuditBundle>;
  if (!b || b.format !== 'dacp-audit/2' || !b.parts || !b.manifest || !b.signature || typeof b.runId !== 'string') {
    const old = (bundle as { format?: string } | null)?.format === 'dacp-audit/1';
    return {
      ok: false,
      authentic: false,
      problems: [old ? 'format dacp-audit/1 carries a bare sha256 seal that anyone who edits it recomputes; export the run again for a signed dacp-audit/2 bundle' : 'not a dacp audit bundle (format dacp-audit/2 with parts, manifest and signature)'],
      checked,
    };
  }
  const runId = b.runId;

  // 1. Every part is in the manifest with its hash, and nothing else is.
  for (const [name, value] of Object.entries(b.parts)) {
    const want = b.manifest[name];
    if (want === undefined) problems.push(`part ${name} is not in the manifest`);
    else if (partHash(name, value) !== want) problems.push(`part ${name} was changed: it hashes to ${partHash(name, value).slice(0, 12)}…, the manifest says ${want.slice(0, 12)}…`);
  }
  for (const name of Object.keys(b.manifest)) if (!(name in b.parts)) problems.push(`part ${name} is in the manifest but missing`);
  checked.push(`${Object.keys(b.manifest).length} parts against the manifest`);

  // 2. The manifest's signature, by the key inside the bundle; with --key, that key is the published one.
  const sig = b.signature;
  if (sig.algorithm !== 'ed25519' || !verifyStatement(manifestStatement(b as AuditBundle), sig.signature, sig.publicKey)) {
    problems.push(`the bundle's signature does not verify with the key inside it (${sig.keyId}): the manifest was changed after signing`);
  }
  let authentic = false;
  if (o.publicKey) {
    if (o.publicKey !== sig.publicKey) problems.push(`the bundle is signed by key ${sig.keyId} (${sig.publicKey.slice(0, 16)}…), not by the published key given with --key (${o.publicKey.slice(0, 16)}…)`);
    else authentic = true;
  }
  checked.push(authentic ? `the signature, by the published export key ${sig.keyId}` : `the signature, by the key inside the bundle (${sig.keyId}); authenticity not checked (give --key)`);

  const records = (name: string) => (b.parts![`records:${name}`] ?? []) as Row[];
  const history = (workflowId: string) => ((b.parts![`history:${workflowId}`] as { events?: HistoryEvent[] } | undefined)?.events ?? null);

  // 3. The audit log's hash chain.
  const audit = records('audit_log');
  problems.push(...chainProblems(audit));
  checked.push(`the hash chain of ${audit.length} audit rows`);

  // 4. Signatures: the operator's start and every vote, each by a key registered to its signer.
  const keys = new Map(records('principal_keys').map((k) => [k.key_id as string, k]));
  const keyProblem = (keyId: string, principal: string, publicKey: string): string | null => {
    const key = keys.get(keyId);
    if (!key) return `key ${keyId} is not among the bundle's registered keys`;
    if (key.principal !== principal) return `key ${keyId} belongs to ${String(key.principal)}, not ${principal}`;
    if (key.public_key !== publicKey || keyIdOf(publicKey) !== keyId) return `key ${keyId}'s public key differs from the registered one`;
    return null;
  };
  const serverKeys = new Map(records('service_keys').map((k) => [k.key_id as string, k]));
  const serverKeyProblem = (keyId: string, publicKey: string): string | null => {
    const key = serverKeys.get(keyId);
    if (!key || key.purpose !== 'server') return `key ${keyId} is not one of the API server's keys in the bundle`;
    if (key.public_key !== publicKey || keyIdOf(publicKey) !== keyId) return `key ${keyId}'s public key differs from the registered one`;
    return null;
  };
  const apiVotes: string[] = [];
  const started = audit.find((r) => r.event === 'run_start_signed');
  const runRow = records('runs')[0];
  if (!started && runRow && !runRow.schedule_id && audit.some((r) => r.sha256)) {
    problems.push(`run ${runId} was started by hand but its audit chain holds no signed start`);
  }
  if (started) {
    const d = started.details as { statement: StartStatement; signature: string; publicKey: string };
    const problem = keyProblem(d.statement.keyId, d.statement.initiator, d.publicKey);
    if (problem) problems.push(`the start signature: ${problem}`);
    else if (!verifyStatement(d.statement, d.signature, d.publicKey)) problems.push(`the start signature of ${d.statement.initiator} does not verify`);
    if (d.statement.runId !== runId) problems.push(`the start signature is for run ${d.statement.runId}, not ${runId}`);
    const run = records('runs')[0];
    if (run && (run.spec_sha256 !== d.statement.specSha256 || run.initiator !== d.statement.initiator)) problems.push('the start signature covers another spec or initiator than the run row');
    checked.push(`the start signature of ${d.statement.initiator}`);
  }

  // The gate's request (what approvers were shown) and its accepted votes, from its history.
  const gateEvents = history(approvalWorkflowId(runId));
  let request: ApprovalRequest | undefined;
  const historyVotes = new Map<string, { decision: string; signature?: string }>();
  if (gateEvents) {
    const start = gateEvents[0]?.workflowExecutionStartedEventAttributes as { input?: { payloads?: { data?: string }[] } } | undefined;
    request = decodePayload(start?.input?.payloads?.[0]) as ApprovalRequest | undefined;
    for (const event of gateEvents) {
      const accepted = event.workflowExecutionUpdateAcceptedEventAttributes as
        | { acceptedRequest?: { input?: { name?: string; args?: { payloads?: { data?: string }[] } } } }
        | undefined;
      const input = accepted?.acceptedRequest?.input;
      if (!input?.name) continue;
      const vote = decodePayload(input.args?.payloads?.[0]) as { principal: string; signature?: { signature: string } } | undefined;
      if (vote) historyVotes.set(vote.principal, { decision: input.name, signature: vote.signature?.signature });
    }
  }
  const gateCandidate = request ? candidateHashes(request.artifacts) : undefined;

  const approvals = records('approvals');
  for (const row of approvals) {
    const who = row.principal as string;
    const signed = row.signature as SignedDecision | null;
    if (!signed) {
      if (request?.signing) problems.push(`the vote of ${who} carries no signature, but its gate took signed votes only`);
    } else {
      const s: DecisionStatement = signed.statement;
      const problem = s.via === 'api' ? serverKeyProblem(s.keyId, signed.publicKey) : keyProblem(s.keyId, who, signed.publicKey);
      if (s.via === 'api') apiVotes.push(who);
      if (problem) problems.push(`the vote of ${who}: ${problem}`);
      else if (!verifyStatement(s, signed.signature, signed.publicKey)) problems.push(`the signature on the vote of ${who} does not verify: the vote was altered`);
      if (s.runId !== runId || s.principal !== who || s.decision !== row.decision) problems.push(`the vote of ${who} says ${String(row.decision)} on ${runId}, its signed statement ${s.decision} by ${s.principal} on ${s.runId}`);
      if (gateCandidate) {
        const differences = candidateDifferences(s.candidate, gateCandidate);
        if (differences.length) problems.push(`the vote of ${who} is bound to other hashes than the gate's candidate: ${differences.join('; ')}`);
      }
    }
    // 5. The database and the histories tell the same story: votes …
    const inHistory = historyVotes.get(who);
    if (!inHistory) problems.push(`the vote of ${who} is in the database but not in the gate's history`);
    else {
      if (inHistory.decision !== row.decision) problems.push(`the vote of ${who} is ${String(row.decision)} in the database but ${inHistory.decision} in the gate's history`);
      if (signed && inHistory.signature !== signed.signature) problems.push(`the vote of ${who} carries another signature in the gate's history than in the database`);
    }
  }
  for (const [who] of historyVotes) if (!approvals.some((r) => r.principal === who)) problems.push(`the gate's history holds a vote by ${who} that the database does not`);
  // The audit rows of the votes tell the same story as the votes.
  for (const row of audit.filter((r) => r.event === 'approved_by' || r.event === 'rejected_by')) {
    const vote = approvals.find((a) => a.principal === row.actor);
    if (!vote || (vote.decision === 'approve') !== (row.event === 'approved_by')) problems.push(`audit row ${String(row.id)} says ${String(row.event)} ${String(row.actor)}, which no recorded vote matches`);
  }
  checked.push(`${approvals.length} votes: signatures, keys, and the gate's history${apiVotes.length ? ` (signed by the API server for ${apiVotes.join(', ')}; the others by the approvers' own keys)` : ''}`);

  // … stages and outcomes: every transition the workflows asked to record is in the audit log, and
  // every transition in the audit log was asked for by a workflow.
  const asked = new Map<string, { event: string; stage: string; actor: string }>();
  for (const [name, events] of Object.entries(b.parts)) {
    if (!name.startsWith('history:')) continue;
    for (const event of (events as { events?: HistoryEvent[] }).events ?? []) {
      const scheduled = event.activityTaskScheduledEventAttributes as { activityType?: { name?: string }; input?: { payloads?: { data?: string }[] } } | undefined;
      if (scheduled?.activityType?.name !== 'recordTransition') continue;
      const input = decodePayload(scheduled.input?.payloads?.[0]) as { key: string; event: string; stage: string; actor: string } | undefined;
      if (input) asked.set(input.key, input);
    }
  }
  const byKey = new Map(audit.map((r) => [r.idempotency_key as string, r]));
  for (const [key, t] of asked) {
    const row = byKey.get(key);
    if (!row) problems.push(`the history records transition ${t.event} (${t.stage}) that the audit log lacks`);
    else if (row.event !== t.event || row.stage !== t.stage || row.actor !== t.actor) problems.push(`audit row ${String(row.id)} says ${String(row.event)} (${String(row.stage)}) by ${String(row.actor)}, the history ${t.event} (${t.stage}) by ${t.actor}`);
  }
  for (const row of audit) {
    // Rows that activities write themselves (a training attempt, a checkpoint found damaged, the
    // deploy's alias move) are not asked for through recordTransition; every other row of dacp's is.
    if (ACTIVITY_EVENTS.has(row.event as string)) continue;
    if (row.actor === 'dacp' && !asked.has(row.idempotency_key as string) && row.sha256) problems.push(`audit row ${String(row.id)} (${String(row.event)}) was asked for by no workflow in the histories`);
  }
  checked.push(`${asked.size} transitions between the histories and the audit log`);

  // … and the deploy: what went live is what was approved.
  const deployments = records('deployments').filter((d) => d.kind === undefined || d.kind === 'deploy');
  for (const d of deployments) {
    const version = records('model_versions').find((v) => v.version_id === d.version_id);
    if (!version) {
      problems.push(`deployment ${String(d.id)} names version ${String(d.version_id)}, which the bundle's model versions lack`);
      continue;
    }
    if (!request) problems.push(`version ${String(d.version_id)} was deployed, but the bundle holds no approval gate`);
    else if (version.sha256 !== request.artifacts.tunedModel.sha256) {
      problems.push(`the deployed ${String(d.version_id)} has sha256 ${String(version.sha256).slice(0, 12)}…, the approved candidate ${request.artifacts.tunedModel.sha256.slice(0, 12)}…`);
    }
    const approved = approvals.filter((r) => r.decision === 'approve').length;
    if (request && approved < request.quorum) problems.push(`version ${String(d.version_id)} was deployed with ${approved} of the ${request.quorum} approvals needed`);
    checked.push(`the deploy of ${String(d.version_id)} against the approved hash`);
  }

  // 6. The artifacts in the bundle are the ones the rows name.
  for (const [name, value] of Object.entries(b.parts)) {
    if (!name.startsWith('artifact:')) continue;
    if (typeof value !== 'string' || sha256(value) !== name.slice('artifact:'.length)) problems.push(`${name}: its content does not hash to its name`);
  }
  return { ok: problems.length === 0, authentic, problems, checked };
}

export function formatVerdict(file: string, v: AuditVerdict): string {
  const head = v.ok
    ? `audit bundle ${file}: verified${v.authentic ? ', signed by the published export key' : '; integrity only: authenticity was not checked (give --key PUB)'}`
    : `audit bundle ${file}: NOT verified — ${v.problems.length} problem(s)`;
  return [head, ...v.problems.map((p) => `  problem: ${p}`), ...v.checked.map((c) => `  checked: ${c}`)].join('\n');
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
