import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, chmodSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { appendAuditEntry, insertRun } from '../db/records';
import { chainProblems } from '../db/audit';
import { migrate } from '../db/migrate';
import { createTestDatabase, type TestDatabase } from './helpers/db';
import { tempHome } from './helpers/temporal';

const dacpBin = path.resolve(__dirname, '..', 'bin', 'dacp.js');

/**
 * Principals, roles and keys as an administrator and each person manage them with the `dacp`
 * command, against a real Postgres; and the audit trail's append-only rules and hash chain, which
 * the database itself enforces.
 */
describe('principals and keys from the command line', () => {
  let db: TestDatabase;
  let home: string;
  let keys: string;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    db = await createTestDatabase();
    home = tempHome();
    keys = path.join(mkdtempSync(path.join(os.tmpdir(), 'dacp-user-')), 'keys');
    env = { ...process.env, DATABASE_URL: db.url, DACP_HOME: path.join(home, '.dacp'), DACP_KEYS_DIR: keys };
  });
  afterAll(async () => {
    await db?.drop();
    rmSync(home, { recursive: true, force: true });
    rmSync(path.dirname(keys), { recursive: true, force: true });
  });

  function dacp(...args: string[]) {
    const r = spawnSync(process.execPath, [dacpBin, ...args], { env, cwd: home, encoding: 'utf8' });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr.trim() };
  }

  test('add, list and disable principals; roles add up; bad names and roles are refused', () => {
    expect(dacp('principals', 'add', 'carol', '--role', 'approver').code).toBe(0);
    const both = dacp('principals', 'add', 'olive', '--role', 'operator', '--role', 'auditor', '--json');
    expect(JSON.parse(both.stdout)).toMatchObject({ name: 'olive', roles: ['auditor', 'operator'], disabledAt: null, keys: [] });
    expect(JSON.parse(dacp('principals', 'add', 'carol', '--role', 'auditor', '--json').stdout).roles).toEqual(['approver', 'auditor']);

    const badRole = dacp('principals', 'add', 'dan', '--role', 'admin');
    expect(badRole.code).toBe(2);
    expect(badRole.stderr).toMatch(/--role admin is not a role; use one of operator, approver, auditor/);
    expect(dacp('principals', 'add', 'dan').stderr).toMatch(/missing --role/);
    expect(dacp('principals', 'add', 'not ok!', '--role', 'operator').stderr).toMatch(/principal "not ok!" is invalid/);

    const listed = JSON.parse(dacp('principals', 'list', '--json').stdout) as { name: string }[];
    expect(listed.map((p) => p.name)).toEqual(['carol', 'olive']);
    expect(dacp('principals', 'list').stdout).toMatch(/carol\s+approver,auditor\s+enabled\s+keys: none/);
  });

  test('keys init writes a 0600 private key in a 0700 folder and registers only the public key', async () => {
    const created = JSON.parse(dacp('keys', 'init', '--as', 'carol', '--json').stdout) as { keyId: string; publicKey: string; file: string };
    expect(created.file).toBe(path.join(keys, 'carol.ed25519.json'));
    expect(statSync(created.file).mode & 0o777).toBe(0o600);
    expect(statSync(keys).mode & 0o777).toBe(0o700);
    const file = JSON.parse(readFileSync(created.file, 'utf8')) as { privateKey: string; publicKey: string };
    expect(file.publicKey).toBe(created.publicKey);
    const { rows } = await db.pool.query('SELECT key_id, public_key, revoked_at FROM principal_keys WHERE principal = $1', ['carol']);
    expect(rows).toEqual([{ key_id: created.keyId, public_key: created.publicKey, revoked_at: null }]);
    // The private key is nowhere in the database.
    const dump = JSON.stringify((await db.pool.query('SELECT * FROM principal_keys')).rows) + JSON.stringify((await db.pool.query('SELECT * FROM principals')).rows);
    expect(dump).not.toContain(file.privateKey);

    expect(dacp('keys', 'init', '--as', 'carol').stderr).toMatch(/carol already has an active key .*use `dacp keys rotate --as carol`/);
    expect(dacp('keys', 'init', '--as', 'nobody').stderr).toMatch(/no principal nobody; an administrator adds one with `dacp principals add nobody --role ROLE`/);
  });

  test('rotate replaces the key and revokes the old one; revoke removes the file', async () => {
    const before = JSON.parse(readFileSync(path.join(keys, 'carol.ed25519.json'), 'utf8')) as { keyId: string };
    const rotated = JSON.parse(dacp('keys', 'rotate', '--as', 'carol', '--json').stdout) as { keyId: string; revoked: string[] };
    expect(rotated.revoked).toEqual([before.keyId]);
    expect(rotated.keyId).not.toBe(before.keyId);
    expect((JSON.parse(readFileSync(path.join(keys, 'carol.ed25519.json'), 'utf8')) as { keyId: string }).keyId).toBe(rotated.keyId);
    const { rows } = await db.pool.query('SELECT key_id, revoked_at IS NOT NULL AS revoked, revoke_reason FROM principal_keys WHERE principal = $1 ORDER BY created_at', ['carol']);
    expect(rows).toEqual([
      { key_id: before.keyId, revoked: true, revoke_reason: `rotated to ${rotated.keyId}` },
      { key_id: rotated.keyId, revoked: false, revoke_reason: null },
    ]);

    const revoked = JSON.parse(dacp('keys', 'revoke', '--as', 'carol', '--reason', 'laptop lost', '--json').stdout) as { revoked: string[] };
    expect(revoked.revoked).toEqual([rotated.keyId]);
    expect(existsSync(path.join(keys, 'carol.ed25519.json'))).toBe(false);
    expect(dacp('keys', 'revoke', '--as', 'carol').stderr).toMatch(/carol has no active key/);
    expect(dacp('principals', 'list').stdout).toMatch(/carol .*keys: none \(\+2 revoked\)/);
  });

  test('only the holder of the current key rotates it; a key file others can read is refused; a disabled principal gets no keys', async () => {
    expect(dacp('keys', 'init', '--as', 'olive').code).toBe(0);
    const file = path.join(keys, 'olive.ed25519.json');
    chmodSync(file, 0o644);
    expect(dacp('keys', 'rotate', '--as', 'olive').stderr).toMatch(/olive\.ed25519\.json has permissions 644, readable by others; `chmod 600/);
    chmodSync(file, 0o600);
    // Someone without olive's key file cannot rotate it to a key of their own.
    const elsewhere = { DACP_KEYS_DIR: path.join(path.dirname(keys), 'mallory-keys') };
    const stolen = spawnSync(process.execPath, [dacpBin, 'keys', 'rotate', '--as', 'olive'], { env: { ...env, ...elsewhere }, cwd: home, encoding: 'utf8' });
    expect(stolen.stderr).toMatch(/no private key for olive in .*mallory-keys/);
    expect(dacp('keys', 'rotate', '--as', 'olive').code).toBe(0);
    expect(statSync(file).mode & 0o777).toBe(0o600);

    expect(dacp('principals', 'disable', 'olive').stdout).toMatch(/olive disabled since/);
    expect(dacp('keys', 'rotate', '--as', 'olive').stderr).toMatch(/olive is disabled \(since/);
    expect(dacp('principals', 'disable', 'zed').stderr).toMatch(/no principal zed/);
  });
});

describe('the audit trail is append-only and hash-chained, in the database itself', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
    await migrate(db.pool);
    await insertRun(db.pool, { runId: 'chain-1', workflowId: 'chain-1', spec: {}, specSha256: 'x', initiator: 'engineer' });
  });
  afterAll(async () => {
    await db?.drop();
  });

  test('concurrent writers of one run still form one chain', async () => {
    await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        appendAuditEntry(db.pool, { runId: 'chain-1', key: `chain-1:${i}`, event: 'stage_started', stage: 'collect', actor: 'dacp', details: { i, note: 'ünïcödé', n: 1e-7 } }),
      ),
    );
    // A retried write (same key) adds nothing and breaks nothing.
    expect(await appendAuditEntry(db.pool, { runId: 'chain-1', key: 'chain-1:3', event: 'stage_started', stage: 'collect', actor: 'dacp', details: {} })).toBe(false);
    const { rows } = await db.pool.query("SELECT * FROM audit_log WHERE run_id = 'chain-1' ORDER BY id");
    expect(rows).toHaveLength(40);
    expect(chainProblems(rows)).toEqual([]);
    rows[7].details = { i: 999 };
    expect(chainProblems(rows).join(' ')).toMatch(new RegExp(`audit row ${rows[7].id} \\(stage_started\\) was changed`));
  });

  test('UPDATE, DELETE and TRUNCATE of audit rows and votes are refused; an unchained insert is refused', async () => {
    await db.pool.query(
      `INSERT INTO approvals (run_id, principal, decision, artifacts, decided_at) VALUES ('chain-1', 'bob', 'approve', '{}', now())`,
    );
    for (const sql of [
      "UPDATE audit_log SET actor = 'mallory' WHERE run_id = 'chain-1'",
      "DELETE FROM audit_log WHERE run_id = 'chain-1'",
      'TRUNCATE audit_log CASCADE',
      "UPDATE approvals SET decision = 'reject' WHERE run_id = 'chain-1'",
      "DELETE FROM approvals WHERE run_id = 'chain-1'",
      'TRUNCATE approvals',
    ]) {
      await expect(db.pool.query(sql)).rejects.toThrow(/append-only: rows are never updated or deleted/);
    }
    await expect(
      db.pool.query(`INSERT INTO audit_log (run_id, idempotency_key, event, actor) VALUES ('chain-1', 'forged', 'approved_by', 'mallory')`),
    ).rejects.toThrow(/hash-chained: write them through dacp/);
    await expect(
      db.pool.query(`INSERT INTO audit_log (run_id, idempotency_key, event, actor, prev_sha256, sha256) VALUES ('chain-1', 'forged', 'approved_by', 'mallory', NULL, $1)`, ['a'.repeat(64)]),
    ).rejects.toThrow(/does not continue from its last row/);
    expect((await db.pool.query("SELECT count(*)::int AS n FROM audit_log WHERE run_id = 'chain-1'")).rows[0].n).toBe(40);
  });
});
