import pg from 'pg';

/**
 * dacp's work runs under a role that is not a superuser and cannot change what must not change:
 * it may read and write its tables, but never UPDATE, DELETE or TRUNCATE the audit log, the votes,
 * the alias history or model versions, and, not owning the tables, it cannot disable their
 * triggers. Migrations run under the owner. The embedded PostgreSQL sets this up by itself; with
 * DATABASE_URL (the work role) and DACP_MIGRATE_DATABASE_URL (the owner), dacp applies the same
 * grants after migrating; docs/security.md lists them for an administrator who does it by hand.
 */

/** Tables whose rows are evidence: the work role may only read and append. */
export const APPEND_ONLY_TABLES = ['audit_log', 'approvals', 'deployments', 'model_versions'] as const;

/**
 * Who may do what, and with which keys: the work role reads them; only the owner (the
 * administrator's connection) writes them, so a worker host cannot enrol a key or mint a token.
 */
export const IDENTITY_TABLES = ['principals', 'principal_keys', 'service_keys', 'api_tokens'] as const;

const ident = (name: string) => `"${name.replace(/"/g, '""')}"`;

/** The statements that give `role` exactly the rights dacp's work needs, for the tables that exist now. */
export function appGrants(role: string): string[] {
  const r = ident(role);
  return [
    `GRANT USAGE ON SCHEMA public TO ${r}`,
    `GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ${r}`,
    `REVOKE UPDATE, DELETE, TRUNCATE ON ${APPEND_ONLY_TABLES.join(', ')} FROM ${r}`,
    `REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON dacp_schema_migrations FROM ${r}`,
    `REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON ${IDENTITY_TABLES.join(', ')} FROM ${r}`,
    // Only when a token was last used: the API server notes it as it authenticates.
    `GRANT UPDATE (last_used_at) ON api_tokens TO ${r}`,
    `GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO ${r}`,
  ];
}

/** Apply appGrants through the owner's connection. */
export async function grantAppRole(owner: pg.Pool | pg.Client, role: string): Promise<void> {
  for (const sql of appGrants(role)) await owner.query(sql);
}

/** The role a connection URL logs in as. */
export function roleOf(url: string): string {
  return decodeURIComponent(new URL(url).username || process.env.PGUSER || process.env.USER || 'postgres');
}

/** Create (or reset the password of) a non-superuser login role. */
export async function ensureLoginRole(owner: pg.Client, role: string, password: string): Promise<void> {
  const exists = await owner.query('SELECT 1 FROM pg_roles WHERE rolname = $1', [role]);
  // The password is a literal in the statement (roles take no bind parameters); it is hex, so no quoting issue.
  if (!/^[0-9a-f]+$/.test(password)) throw new Error('the work role password must be hex');
  if (exists.rowCount === 0) {
    await owner.query(`CREATE ROLE ${ident(role)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '${password}'`).catch((error: unknown) => {
      if ((error as { code?: string }).code !== '42710') throw error; // created meanwhile
    });
  } else {
    await owner.query(`ALTER ROLE ${ident(role)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '${password}'`);
  }
}
