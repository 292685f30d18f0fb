import { ed25519 } from '@noble/curves/ed25519';
import { bytesToHex, hexToBytes } from '@noble/curves/abstract/utils';
import { z } from 'zod';
import { canonicalJson } from './canonical';

/**
 * What people sign, and how a signature is checked: pure, deterministic code (`@noble/curves`),
 * because the approval gate's Update validator checks votes inside the workflow, where there is no
 * `node:crypto`. The CLI, the HTTP API and `dacp audit verify` use the same functions.
 */

/** A registered Ed25519 public key: 32 bytes as hex, named by the first 16 hex of its sha256. */
export interface PublicKeyRef {
  keyId: string;
  publicKey: string;
}

/** The hashes a vote is bound to: the candidate that would ship and the evidence it was judged on. */
export interface CandidateHashes {
  baseModel: string;
  adaptedModel: string;
  tunedModel: string;
  forgettingReport: string;
  instructReport: string;
  finalCheckReport?: string;
  tradeoffReport?: string;
  /** Every dataset's sha256, sorted. */
  datasets: string[];
}

/** Exactly what an approver signs. `signedAt` is the signer's clock; the gate allows it some skew. */
export interface DecisionStatement {
  format: 'dacp-decision/1';
  runId: string;
  decision: 'approve' | 'reject';
  principal: string;
  comment: string | null;
  reason: string | null;
  candidate: CandidateHashes;
  signedAt: string;
  keyId: string;
  /** `cli`: signed by the principal's own key; `api`: by the server's key after it authenticated the principal. */
  via: 'cli' | 'api';
}

/** What an operator signs to start a run. */
export interface StartStatement {
  format: 'dacp-start/1';
  runId: string;
  specSha256: string;
  initiator: string;
  /** The spec's folder: where relative sources resolve, and (unconfigured) what workers allow. */
  baseDir: string;
  signedAt: string;
  keyId: string;
}

/** The signature a vote carries; the rest of the statement comes from the vote and the gate. */
export const VoteSignature = z
  .object({
    keyId: z.string().regex(/^[0-9a-f]{16}$/, 'keyId is 16 hex digits'),
    signedAt: z.string().datetime({ message: 'signedAt is an ISO 8601 time' }),
    candidate: z
      .object({
        baseModel: z.string(),
        adaptedModel: z.string(),
        tunedModel: z.string(),
        forgettingReport: z.string(),
        instructReport: z.string(),
        finalCheckReport: z.string().optional(),
        tradeoffReport: z.string().optional(),
        datasets: z.array(z.string()),
      })
      .strict(),
    via: z.enum(['cli', 'api']),
    signature: z.string().regex(/^[0-9a-f]{128}$/, 'signature is 64 bytes as hex'),
  })
  .strict();
export type VoteSignature = z.infer<typeof VoteSignature>;

export function candidateHashes(artifacts: {
  baseModel: { sha256: string };
  adaptedModel: { sha256: string };
  tunedModel: { sha256: string };
  forgettingReport: { sha256: string };
  instructReport: { sha256: string };
  finalCheckReport?: { sha256: string };
  tradeoffReport?: { sha256: string };
  datasets: { sha256: string }[];
}): CandidateHashes {
  return {
    baseModel: artifacts.baseModel.sha256,
    adaptedModel: artifacts.adaptedModel.sha256,
    tunedModel: artifacts.tunedModel.sha256,
    forgettingReport: artifacts.forgettingReport.sha256,
    instructReport: artifacts.instructReport.sha256,
    ...(artifacts.finalCheckReport ? { finalCheckReport: artifacts.finalCheckReport.sha256 } : {}),
    ...(artifacts.tradeoffReport ? { tradeoffReport: artifacts.tradeoffReport.sha256 } : {}),
    datasets: artifacts.datasets.map((d) => d.sha256).sort(),
  };
}

const utf8 = (text: string) => new TextEncoder().encode(text);

/** The bytes signed: the statement as canonical JSON, UTF-8. */
export function statementBytes(statement: object): Uint8Array {
  return utf8(canonicalJson(statement));
}

/** Does `signature` (hex) verify `statement` under `publicKey` (hex)? Never throws. */
export function verifyStatement(statement: object, signature: string, publicKey: string): boolean {
  try {
    return ed25519.verify(hexToBytes(signature), statementBytes(statement), hexToBytes(publicKey));
  } catch {
    return false;
  }
}

/** Sign with a raw 32-byte Ed25519 private key (hex). */
export function signStatement(statement: object, privateKey: string): string {
  return bytesToHex(ed25519.sign(statementBytes(statement), hexToBytes(privateKey)));
}

export function publicKeyOf(privateKey: string): string {
  return bytesToHex(ed25519.getPublicKey(hexToBytes(privateKey)));
}

/**
 * Where a gate's captured keys hold the HTTP API server's keys: a name no principal can have (names
 * never start with "@"). A vote with `via: "api"` is signed by one of these, for the principal the
 * server authenticated.
 */
export const SERVER_SIGNER = '@server';

/** Votes may be signed this far from the gate's clock, either way. */
export const MAX_SIGNING_SKEW_MS = 10 * 60_000;

/** The statement a vote's signature covers, rebuilt from the vote and the gate's request. */
export function decisionStatement(o: {
  runId: string;
  decision: 'approve' | 'reject';
  principal: string;
  comment?: string;
  reason?: string;
  signature: Omit<VoteSignature, 'signature'>;
}): DecisionStatement {
  return {
    format: 'dacp-decision/1',
    runId: o.runId,
    decision: o.decision,
    principal: o.principal,
    comment: o.comment ?? null,
    reason: o.reason ?? null,
    candidate: o.signature.candidate,
    signedAt: o.signature.signedAt,
    keyId: o.signature.keyId,
    via: o.signature.via,
  };
}

/** Where two candidates' hashes differ, in words; empty when they are the same. */
export function candidateDifferences(signed: CandidateHashes, gate: CandidateHashes): string[] {
  const names = new Set([...Object.keys(signed), ...Object.keys(gate)]) as Set<keyof CandidateHashes>;
  const out: string[] = [];
  for (const name of names) {
    if (canonicalJson(signed[name]) !== canonicalJson(gate[name])) {
      const show = (v: unknown) => (typeof v === 'string' ? v.slice(0, 12) : Array.isArray(v) ? `${v.length} datasets` : 'none');
      out.push(`${name} ${show(signed[name])} is not the gate's ${show(gate[name])}`);
    }
  }
  return out;
}
