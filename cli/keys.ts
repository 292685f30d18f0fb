import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, linkSync, mkdirSync, openSync, closeSync, writeSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Pool } from 'pg';
import { activeKeys, addPrincipal, checkPrincipalName, getPrincipal, keyIdOf, registerKey, requireRole, revokeKeys, type Role } from '../db/principals';
import { InputError } from '../schemas/runSpec';
import { publicKeyOf, signStatement, verifyStatement, type PublicKeyRef } from '../schemas/signing';

/**
 * Private keys on the user's side: one file per principal in the key folder (`DACP_KEYS_DIR`, else
 * `$XDG_CONFIG_HOME/dacp/keys`, else `~/.config/dacp/keys`), mode 0600 in a 0700 folder. The
 * database holds only public keys. A file readable by others is refused, as ssh refuses one.
 */
export function keyDir(): string {
  if (process.env.DACP_KEYS_DIR) return path.resolve(process.env.DACP_KEYS_DIR);
  const config = process.env.XDG_CONFIG_HOME ?? path.join(os.homedir(), '.config');
  return path.join(config, 'dacp', 'keys');
}

export interface KeyFile {
  format: 'dacp-key/1';
  principal: string;
  keyId: string;
  publicKey: string;
  /** Raw 32-byte Ed25519 seed, hex. Never printed, logged or sent. */
  privateKey: string;
  createdAt: string;
}

export function keyFilePath(principal: string, dir = keyDir()): string {
  return path.join(dir, `${checkPrincipalName(principal)}.ed25519.json`);
}

/** Write a key file with 0600 from the start (never briefly readable), replacing any older one. */
function writeKeyFile(key: KeyFile, dir: string): string {
  const file = keyFilePath(key.principal, dir);
  const tmp = writePrivateTemp(file, key);
  renameSync(tmp, file);
  return file;
}

/**
 * `value` as JSON in a 0600 file beside `file` (in a 0700 folder), never readable by others even
 * briefly; the caller moves it into place. Returns its path.
 */
function writePrivateTemp(file: string, value: unknown): string {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  chmodSync(path.dirname(file), 0o700);
  const tmp = `${file}.${process.pid}.tmp`;
  const fd = openSync(tmp, 'wx', 0o600);
  try {
    writeSync(fd, JSON.stringify(value, null, 2) + '\n');
  } finally {
    closeSync(fd);
  }
  return tmp;
}

export function readKeyFile(principal: string, dir = keyDir()): KeyFile {
  const file = keyFilePath(principal, dir);
  if (!existsSync(file)) {
    throw new InputError(`no private key for ${principal} in ${dir}; create one with \`dacp keys init --as ${principal}\` (or set DACP_KEYS_DIR to the folder that holds it)`);
  }
  const mode = statSync(file).mode & 0o777;
  if (mode & 0o077) throw new InputError(`private key ${file} has permissions ${mode.toString(8)}, readable by others; \`chmod 600 ${file}\``);
  let key: KeyFile;
  try {
    key = JSON.parse(readFileSync(file, 'utf8')) as KeyFile;
  } catch {
    throw new InputError(`private key ${file} is not a dacp key file; replace it with \`dacp keys rotate --as ${principal}\``);
  }
  if (key.format !== 'dacp-key/1' || !/^[0-9a-f]{64}$/.test(key.privateKey ?? '') || publicKeyOf(key.privateKey) !== key.publicKey) {
    throw new InputError(`private key ${file} is damaged (its public key does not match); replace it with \`dacp keys rotate --as ${principal}\``);
  }
  return key;
}

function newKey(principal: string): KeyFile {
  const privateKey = randomBytes(32).toString('hex');
  const publicKey = publicKeyOf(privateKey);
  return { format: 'dacp-key/1', principal, keyId: keyIdOf(publicKey), publicKey, privateKey, createdAt: new Date().toISOString() };
}

export interface KeyChange {
  principal: string;
  keyId: string | null;
  publicKey: string | null;
  file: string | null;
  revoked: string[];
}

/** `dacp keys init --as P`: a first key. Refused when P already has an active key (rotate it instead). */
export async function initKey(pool: Pool, principal: string, dir = keyDir()): Promise<KeyChange> {
  const p = await getPrincipal(pool, checkPrincipalName(principal));
  if (!p) throw new InputError(`no principal ${principal}; an administrator adds one with \`dacp principals add ${principal} --role ROLE\``);
  if (p.keys.some((k) => !k.revokedAt)) {
    throw new InputError(`${principal} already has an active key (${p.keys.filter((k) => !k.revokedAt).map((k) => k.keyId).join(', ')}); use \`dacp keys rotate --as ${principal}\``);
  }
  const key = newKey(principal);
  // The private half first: a key is never registered without it.
  const file = writeKeyFile(key, dir);
  try {
    await registerKey(pool, principal, key.publicKey);
  } catch (err) {
    rmSync(file, { force: true });
    throw err;
  }
  return { principal, keyId: key.keyId, publicKey: key.publicKey, file, revoked: [] };
}

/**
 * `dacp keys rotate --as P`: a new key replaces the file; the old ones are revoked. Only the holder
 * of P's current key rotates it (a lost key is revoked, and a new one made with `keys init`).
 */
export async function rotateKey(pool: Pool, principal: string, dir = keyDir(), o: { proven?: boolean } = {}): Promise<KeyChange> {
  if (!o.proven) await provenKey(pool, principal, dir);
  const key = newKey(checkPrincipalName(principal));
  const backup = keyFilePath(principal, dir) + '.previous';
  if (existsSync(keyFilePath(principal, dir))) renameSync(keyFilePath(principal, dir), backup);
  const file = writeKeyFile(key, dir);
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const revoked = await revokeKeys(client, principal, { reason: `rotated to ${key.keyId}` });
    await registerKey(client, principal, key.publicKey);
    await client.query('COMMIT');
    rmSync(backup, { force: true });
    return { principal, keyId: key.keyId, publicKey: key.publicKey, file, revoked };
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    // Nothing changed in the database: the previous key file comes back.
    if (existsSync(backup)) renameSync(backup, file);
    throw err;
  } finally {
    client.release();
  }
}

/** `dacp keys revoke --as P [--key-id K]`: the key(s) sign nothing more; the local file goes. */
export async function revokeKey(pool: Pool, principal: string, o: { keyId?: string; reason?: string }, dir = keyDir()): Promise<KeyChange> {
  checkPrincipalName(principal);
  const revoked = await revokeKeys(pool, principal, { keyId: o.keyId, reason: o.reason ?? 'revoked' });
  if (!revoked.length) throw new InputError(`${principal} has no active key${o.keyId ? ` ${o.keyId}` : ''}; see \`dacp principals list\``);
  const file = keyFilePath(principal, dir);
  if (existsSync(file)) {
    try {
      if (revoked.includes((JSON.parse(readFileSync(file, 'utf8')) as KeyFile).keyId)) rmSync(file);
    } catch {
      // an unreadable file signs nothing anyway
    }
  }
  return { principal, keyId: null, publicKey: null, file: null, revoked };
}

/**
 * Act as `principal` with `role`: the principal must be enabled and hold the role, and its local
 * key must be one of its active registered keys. Returns the key to sign with.
 */
export async function actingKey(pool: Pool, principal: string, role: Role, action: string, dir = keyDir()): Promise<KeyFile & PublicKeyRef> {
  await requireRole(pool, principal, role, action);
  const key = readKeyFile(principal, dir);
  const active = (await activeKeys(pool, [principal], role))[principal] ?? [];
  if (!active.some((k) => k.keyId === key.keyId)) {
    throw new InputError(`${principal}'s key ${key.keyId} in ${dir} is not an active registered key (revoked or from another database); \`dacp keys rotate --as ${principal}\``);
  }
  return key;
}

/** Sign, and check the signature against the registered public key before anything relies on it. */
export function signWith(key: Pick<KeyFile, 'privateKey' | 'publicKey'>, statement: object): { signature: string; publicKey: string } {
  const signature = signStatement(statement, key.privateKey);
  if (!verifyStatement(statement, signature, key.publicKey)) throw new Error('a signature just made does not verify; the key file is damaged');
  return { signature, publicKey: key.publicKey };
}

/**
 * Make `name` a principal with `roles` holding a usable key in `dir`: the demo's principals, and
 * tests'. A key file already in `dir` is registered if this database does not know it yet.
 */
export async function ensureIdentity(pool: Pool, name: string, roles: Role[], dir = keyDir()): Promise<PublicKeyRef> {
  await addPrincipal(pool, name, roles);
  if (existsSync(keyFilePath(name, dir))) {
    const key = readKeyFile(name, dir);
    const p = await getPrincipal(pool, name);
    const known = p?.keys.find((k) => k.keyId === key.keyId);
    if (known && !known.revokedAt) return key;
    if (!known) {
      if (p?.keys.some((k) => !k.revokedAt)) await revokeKeys(pool, name, { reason: `replaced by ${key.keyId} from ${dir}` });
      return registerKey(pool, name, key.publicKey);
    }
    return rotateKey(pool, name, dir, { proven: true }).then((c) => ({ keyId: c.keyId!, publicKey: c.publicKey! }));
  }
  const p = await getPrincipal(pool, name);
  const change = p?.keys.some((k) => !k.revokedAt) ? await rotateKey(pool, name, dir, { proven: true }) : await initKey(pool, name, dir);
  return { keyId: change.keyId!, publicKey: change.publicKey! };
}

// ---- dacp's own keys: the export key (signs audit bundles) and the server key (signs API decisions)

export interface ServiceKeyFile {
  format: 'dacp-service-key/1';
  purpose: 'export' | 'server';
  keyId: string;
  publicKey: string;
  privateKey: string;
}

export function serviceKeyFile(home: string, purpose: 'export' | 'server'): string {
  return path.join(home, 'keys', `${purpose}.ed25519.json`);
}

/** The installation's key for `purpose` as it is on disk (it must exist: `serviceKey` creates it). */
export function loadServiceKey(home: string, purpose: 'export' | 'server'): ServiceKeyFile {
  const file = serviceKeyFile(home, purpose);
  if (!existsSync(file)) throw new InputError(`no ${purpose} key at ${file}; \`dacp serve\` creates the server key, \`dacp audit key\` the export key`);
  if (statSync(file).mode & 0o077) throw new InputError(`${purpose} key ${file} is readable by others; \`chmod 600 ${file}\``);
  const key = JSON.parse(readFileSync(file, 'utf8')) as ServiceKeyFile;
  if (publicKeyOf(key.privateKey) !== key.publicKey) throw new InputError(`${purpose} key ${file} is damaged: its public key does not match`);
  return key;
}

/**
 * The installation's key for `purpose` under DACP_HOME/keys, created (0600) and registered on first
 * use; `pool` must be able to write dacp's keys (the administrator's connection).
 */
export async function serviceKey(pool: Pool, home: string, purpose: 'export' | 'server'): Promise<ServiceKeyFile> {
  const file = serviceKeyFile(home, purpose);
  let key: ServiceKeyFile;
  if (existsSync(file)) {
    if (statSync(file).mode & 0o077) throw new InputError(`${purpose} key ${file} is readable by others; \`chmod 600 ${file}\``);
    key = JSON.parse(readFileSync(file, 'utf8')) as ServiceKeyFile;
    if (publicKeyOf(key.privateKey) !== key.publicKey) throw new InputError(`${purpose} key ${file} is damaged: its public key does not match`);
  } else {
    const privateKey = randomBytes(32).toString('hex');
    const publicKey = publicKeyOf(privateKey);
    key = { format: 'dacp-service-key/1', purpose, keyId: keyIdOf(publicKey), publicKey, privateKey };
    const tmp = writePrivateTemp(file, key);
    try {
      // Never replaces a key another process made meanwhile: the first one wins.
      linkSync(tmp, file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      key = JSON.parse(readFileSync(file, 'utf8')) as ServiceKeyFile;
    } finally {
      rmSync(tmp, { force: true });
    }
  }
  await pool.query('INSERT INTO service_keys (key_id, purpose, public_key) VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING', [key.keyId, purpose, key.publicKey]);
  return key;
}

/**
 * A principal proves it holds one of its own active keys (whatever its roles): what `dacp tokens
 * create` asks before it issues an API token.
 */
export async function provenKey(pool: Pool, principal: string, dir = keyDir()): Promise<KeyFile> {
  const p = await getPrincipal(pool, checkPrincipalName(principal));
  if (!p) throw new InputError(`${principal} is not a registered principal; an administrator adds one with \`dacp principals add ${principal} --role ROLE\``);
  if (p.disabledAt) throw new InputError(`${principal} is disabled (since ${p.disabledAt})`);
  const key = readKeyFile(principal, dir);
  if (!p.keys.some((k) => k.keyId === key.keyId && !k.revokedAt)) {
    throw new InputError(`${principal}'s key ${key.keyId} in ${dir} is not an active registered key; \`dacp keys rotate --as ${principal}\``);
  }
  return key;
}
