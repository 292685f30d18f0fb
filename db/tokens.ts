import { createHash, randomBytes } from 'node:crypto';
import type { Pool } from 'pg';
import { InputError } from '../schemas/runSpec';
import type { Role } from './principals';

/** Bearer tokens of the HTTP API (migration 012): stored as sha256 only. */

const sha = (token: string) => createHash('sha256').update(token).digest('hex');

export async function createToken(pool: Pool, principal: string, label: string | null): Promise<{ tokenId: string; token: string }> {
  const token = `dacp_${randomBytes(32).toString('base64url')}`;
  const hash = sha(token);
  const tokenId = hash.slice(0, 12);
  await pool.query('INSERT INTO api_tokens (token_id, principal, token_sha256, label) VALUES ($1, $2, $3, $4)', [tokenId, principal, hash, label]);
  return { tokenId, token };
}

export async function revokeToken(pool: Pool, principal: string, tokenId: string): Promise<void> {
  const res = await pool.query('UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE principal = $1 AND token_id = $2', [principal, tokenId]);
  if (!res.rowCount) throw new InputError(`${principal} has no token ${tokenId}; see \`dacp tokens list --as ${principal}\``);
}

export async function listTokens(pool: Pool, principal: string): Promise<{ tokenId: string; label: string | null; createdAt: string; lastUsedAt: string | null; revokedAt: string | null }[]> {
  const { rows } = await pool.query('SELECT * FROM api_tokens WHERE principal = $1 ORDER BY created_at', [principal]);
  const iso = (d: unknown) => (d ? (d as Date).toISOString() : null);
  return rows.map((r) => ({ tokenId: r.token_id, label: r.label, createdAt: iso(r.created_at)!, lastUsedAt: iso(r.last_used_at), revokedAt: iso(r.revoked_at) }));
}

/** The principal a bearer token stands for: enabled, token not revoked; null otherwise. */
export async function authenticate(pool: Pool, token: string): Promise<{ principal: string; roles: Role[]; tokenId: string } | null> {
  if (!/^dacp_[A-Za-z0-9_-]{43}$/.test(token)) return null;
  const { rows } = await pool.query(
    `UPDATE api_tokens t SET last_used_at = now() FROM principals p
      WHERE t.token_sha256 = $1 AND t.revoked_at IS NULL AND p.name = t.principal AND p.disabled_at IS NULL
      RETURNING t.token_id, p.name, p.roles`,
    [sha(token)],
  );
  return rows[0] ? { principal: rows[0].name as string, roles: rows[0].roles as Role[], tokenId: rows[0].token_id as string } : null;
}
