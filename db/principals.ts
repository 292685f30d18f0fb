import { createHash } from 'node:crypto';
import type { Pool, PoolClient } from 'pg';
import { InputError } from '../schemas/runSpec';
import type { PublicKeyRef } from '../schemas/signing';

/** Principals, their roles and their Ed25519 public keys (migration 010). */

export const ROLES = ['operator', 'approver', 'auditor'] as const;
export type Role = (typeof ROLES)[number];
export const PRINCIPAL_NAME = /^[A-Za-z0-9._-][A-Za-z0-9._@-]{0,63}$/;

type Queryable = Pool | PoolClient;

export interface Principal {
  name: string;
  roles: Role[];
  createdAt: string;
  disabledAt: string | null;
  keys: { keyId: string; publicKey: string; createdAt: string; revokedAt: string | null }[];
}

export function keyIdOf(publicKey: string): string {
  return createHash('sha256').update(Buffer.from(publicKey, 'hex')).digest('hex').slice(0, 16);
}

export function checkPrincipalName(name: string): string {
  if (!PRINCIPAL_NAME.test(name)) throw new InputError(`principal "${name}" is invalid: use 1–64 letters, digits, ".", "_", "@" or "-", not starting with "@"`);
  return name;
}

export function checkRole(role: string): Role {
  if (!(ROLES as readonly string[]).includes(role)) throw new InputError(`--role ${role} is not a role; use one of ${ROLES.join(', ')}`);
  return role as Role;
}

/** Add a principal, or add roles to one. A disabled principal stays disabled. */
export async function addPrincipal(db: Queryable, name: string, roles: Role[]): Promise<Principal> {
  checkPrincipalName(name);
  await db.query(
    `INSERT INTO principals (name, roles) VALUES ($1, $2)
     ON CONFLICT (name) DO UPDATE SET roles = ARRAY(SELECT DISTINCT unnest(principals.roles || EXCLUDED.roles) ORDER BY 1)`,
    [name, [...new Set(roles)].sort()],
  );
  return (await getPrincipal(db, name))!;
}

export async function getPrincipal(db: Queryable, name: string): Promise<Principal | null> {
  const { rows } = await db.query('SELECT * FROM principals WHERE name = $1', [name]);
  if (!rows[0]) return null;
  const keys = await db.query('SELECT * FROM principal_keys WHERE principal = $1 ORDER BY created_at, key_id', [name]);
  return toPrincipal(rows[0], keys.rows);
}

export async function listPrincipals(db: Queryable): Promise<Principal[]> {
  const { rows } = await db.query('SELECT * FROM principals ORDER BY name');
  const keys = await db.query('SELECT * FROM principal_keys ORDER BY created_at, key_id');
  return rows.map((r) => toPrincipal(r, keys.rows.filter((k) => k.principal === r.name)));
}

function toPrincipal(r: Record<string, unknown>, keys: Record<string, unknown>[]): Principal {
  return {
    name: r.name as string,
    roles: r.roles as Role[],
    createdAt: (r.created_at as Date).toISOString(),
    disabledAt: r.disabled_at ? (r.disabled_at as Date).toISOString() : null,
    keys: keys.map((k) => ({
      keyId: k.key_id as string,
      publicKey: k.public_key as string,
      createdAt: (k.created_at as Date).toISOString(),
      revokedAt: k.revoked_at ? (k.revoked_at as Date).toISOString() : null,
    })),
  };
}

/** Disable a principal: it keeps its history, but can no longer act, vote or be given keys. */
export async function disablePrincipal(db: Queryable, name: string): Promise<Principal> {
  const res = await db.query('UPDATE principals SET disabled_at = COALESCE(disabled_at, now()) WHERE name = $1', [checkPrincipalName(name)]);
  if (!res.rowCount) throw new InputError(`no principal ${name}; see \`dacp principals list\``);
  return (await getPrincipal(db, name))!;
}

/** Register a public key for an enabled principal. */
export async function registerKey(db: Queryable, principal: string, publicKey: string): Promise<PublicKeyRef> {
  const p = await getPrincipal(db, principal);
  if (!p) throw new InputError(`no principal ${principal}; an administrator adds one with \`dacp principals add ${principal} --role ROLE\``);
  if (p.disabledAt) throw new InputError(`principal ${principal} is disabled (since ${p.disabledAt}); it cannot be given keys`);
  const keyId = keyIdOf(publicKey);
  await db.query('INSERT INTO principal_keys (key_id, principal, public_key) VALUES ($1, $2, $3)', [keyId, principal, publicKey]);
  return { keyId, publicKey };
}

/** Revoke keys of a principal: one, or (without keyId) all still active. Returns the keys revoked. */
export async function revokeKeys(db: Queryable, principal: string, o: { keyId?: string; reason: string }): Promise<string[]> {
  const { rows } = await db.query(
    `UPDATE principal_keys SET revoked_at = now(), revoke_reason = $3
      WHERE principal = $1 AND revoked_at IS NULL AND ($2::text IS NULL OR key_id = $2) RETURNING key_id`,
    [principal, o.keyId ?? null, o.reason],
  );
  return rows.map((r) => r.key_id as string);
}

/**
 * The active keys of the named principals that are enabled and hold `role`; principals that are
 * not are left out (so they cannot vote or act).
 */
export async function activeKeys(db: Queryable, names: string[], role: Role): Promise<Record<string, PublicKeyRef[]>> {
  const { rows } = await db.query(
    `SELECT k.principal, k.key_id, k.public_key FROM principal_keys k JOIN principals p ON p.name = k.principal
      WHERE k.principal = ANY($1) AND k.revoked_at IS NULL AND p.disabled_at IS NULL AND $2 = ANY(p.roles)
      ORDER BY k.principal, k.created_at, k.key_id`,
    [names, role],
  );
  const out: Record<string, PublicKeyRef[]> = {};
  for (const r of rows) (out[r.principal as string] ??= []).push({ keyId: r.key_id as string, publicKey: r.public_key as string });
  return out;
}

/** Every key ever registered under these ids (revoked ones too), for audit bundles. */
export async function keysById(db: Queryable, keyIds: string[]): Promise<Record<string, unknown>[]> {
  if (!keyIds.length) return [];
  const { rows } = await db.query('SELECT key_id, principal, public_key, created_at, revoked_at, revoke_reason FROM principal_keys WHERE key_id = ANY($1) ORDER BY key_id', [keyIds]);
  return rows;
}

/**
 * Refuse unless `name` is an enabled principal holding `role`: the reason names what to do.
 */
export async function requireRole(db: Queryable, name: string, role: Role, action: string): Promise<Principal> {
  checkPrincipalName(name);
  const p = await getPrincipal(db, name);
  if (!p) throw new InputError(`${name} is not a registered principal, so cannot ${action}; an administrator adds one with \`dacp principals add ${name} --role ${role}\``);
  if (p.disabledAt) throw new InputError(`${name} is disabled (since ${p.disabledAt}) and cannot ${action}`);
  if (!p.roles.includes(role)) throw new InputError(`${name} holds the role ${p.roles.join(', ')}, not ${role}, so cannot ${action}`);
  return p;
}
