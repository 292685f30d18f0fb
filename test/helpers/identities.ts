import type { Pool } from 'pg';
import type { Role } from '../../db/principals';
import { ensureIdentity } from '../../cli/keys';

/**
 * The people the tests act as, registered with their roles and Ed25519 keys (in this test file's
 * DACP_KEYS_DIR, set by test/helpers/setupKeys.ts), as an administrator and each person would
 * with `dacp principals add` and `dacp keys init`.
 */
export const TEST_CAST: Record<string, Role[]> = {
  engineer: ['operator', 'approver'],
  ops: ['operator'],
  'ops-lead': ['operator'],
  alice: ['operator', 'approver'],
  'approver-1': ['approver'],
  'approver-2': ['approver'],
  'approver-3': ['approver'],
  bob: ['approver'],
  carol: ['approver'],
  dave: ['approver'],
  auditor: ['auditor'],
};

export async function enrolTestPrincipals(pool: Pool, cast: Record<string, Role[]> = TEST_CAST): Promise<void> {
  for (const [name, roles] of Object.entries(cast)) await ensureIdentity(pool, name, roles);
}
