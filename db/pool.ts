import pg from 'pg';

/** Pool settings that suit dacp's short queries from activities, the CLI and the API. */
const poolDefaults: pg.PoolConfig = {
  max: 10,
  idleTimeoutMillis: 30_000,
  // Fail fast with a clear error instead of hanging when the server is down.
  connectionTimeoutMillis: 10_000,
  application_name: 'dacp',
};

/**
 * A connection pool for `url`. An idle client whose connection dies (server restart, network drop)
 * emits 'error' on the pool; without a listener Node would crash the process, so we report the
 * error on one line and let the pool replace the client on next use.
 */
export function createPool(url: string, overrides: pg.PoolConfig = {}): pg.Pool {
  const pool = new pg.Pool({ ...poolDefaults, ...overrides, connectionString: url });
  pool.on('error', (error: Error) => {
    process.stderr.write(`dacp: an idle database connection failed and was discarded: ${error.message}\n`);
  });
  return pool;
}

/**
 * Runs `fn` inside BEGIN … COMMIT on one client of `pool`; rolls back and rethrows if `fn` throws.
 * A client whose rollback fails is destroyed rather than returned to the pool in an unknown state.
 */
export async function withTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    try {
      await client.query('ROLLBACK');
    } catch (rollbackError) {
      broken = rollbackError instanceof Error ? rollbackError : new Error(String(rollbackError));
    }
    throw error;
  } finally {
    client.release(broken);
  }
}
