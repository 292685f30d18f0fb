import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import type { Payload } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import { freePort } from '../cli/devServer';
import { startDacpDev, type DacpDev } from './helpers/dacpDev';
import type { RunStatus } from '../schemas/pipeline';
import { AesGcmCodec, parsePayloadKeys, payloadKeysFromEnv } from '../workers/codec';
import { createTestDatabase, type TestDatabase } from './helpers/db';
import { tinySpec, writeTinyCorpus } from './helpers/fixtures';
import { enrolTestPrincipals } from './helpers/identities';
import { eventually, GiveUp, tempHome } from './helpers/temporal';

const dacpBin = path.resolve(__dirname, '..', 'bin', 'dacp.js');
const key = (id: string) => `${id}:${randomBytes(32).toString('base64')}`;
const utf8 = (s: string) => new TextEncoder().encode(s);

describe('the AES-256-GCM payload codec', () => {
  const [k1, k2] = [key('k1'), key('k2')];
  const payload: Payload = { metadata: { encoding: utf8('json/plain') }, data: utf8(JSON.stringify({ comment: 'planted' })) };

  test('seals and opens; a rotated set (new key first) still opens what the old key sealed', async () => {
    const old = new AesGcmCodec(parsePayloadKeys(k1, 'test'));
    const [sealed] = await old.encode([payload]);
    expect(Buffer.from(sealed!.metadata!.encoding!).toString()).toBe('binary/encrypted');
    expect(Buffer.from(sealed!.metadata!['encryption-key-id']!).toString()).toBe('k1');
    expect(Buffer.from(sealed!.data!).toString('latin1')).not.toContain('planted');
    const rotated = new AesGcmCodec(parsePayloadKeys(`${k2},${k1}`, 'test'));
    expect(await rotated.decode([sealed!])).toEqual([payload]);
    const [resealed] = await rotated.encode([payload]);
    expect(Buffer.from(resealed!.metadata!['encryption-key-id']!).toString()).toBe('k2');
    // Plain payloads (from before encryption was turned on) pass through.
    expect(await rotated.decode([payload])).toEqual([payload]);
  });

  test('without the key, or with a changed byte, it refuses and says why', async () => {
    const [sealed] = await new AesGcmCodec(parsePayloadKeys(k1, 'test')).encode([payload]);
    await expect(new AesGcmCodec(parsePayloadKeys(k2, 'test')).decode([sealed!])).rejects.toThrow(/encrypted with key "k1", which this process does not hold; add it to DACP_PAYLOAD_KEYS/);
    const tampered = { ...sealed!, data: Buffer.from(sealed!.data!) };
    tampered.data[20] ^= 1;
    await expect(new AesGcmCodec(parsePayloadKeys(k1, 'test')).decode([tampered])).rejects.toThrow(/does not authenticate: it was altered/);
    // A key id is authenticated too: the same bytes under another id do not open.
    const renamed = { ...sealed!, metadata: { ...sealed!.metadata, 'encryption-key-id': utf8('k3') } };
    const k3 = `k3:${k1.split(':')[1]}`;
    await expect(new AesGcmCodec(parsePayloadKeys(k3, 'test')).decode([renamed])).rejects.toThrow(/does not authenticate/);
  });

  test('keys come from a 0600 key file too; a file others can read is refused', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'dacp-payload-keys-'));
    const file = path.join(dir, 'payload.keys');
    writeFileSync(file, `${k2}\n${k1}\n`, { mode: 0o600 });
    expect(payloadKeysFromEnv({ DACP_PAYLOAD_KEY_FILE: file })!.map((k) => k.id)).toEqual(['k2', 'k1']);
    chmodSync(file, 0o644);
    expect(() => payloadKeysFromEnv({ DACP_PAYLOAD_KEY_FILE: file })).toThrow(/has permissions 644, readable by others; `chmod 600/);
    expect(payloadKeysFromEnv({})).toBeNull();
    rmSync(dir, { recursive: true, force: true });
  });

  test('keys are checked when they are read', () => {
    expect(() => parsePayloadKeys('k1:c2hvcnQ=', 'DACP_PAYLOAD_KEYS')).toThrow(/DACP_PAYLOAD_KEYS: key "k1" is 5 bytes; AES-256 needs 32/);
    expect(() => parsePayloadKeys(`${k1},${k1}`, 'DACP_PAYLOAD_KEYS')).toThrow(/a key id appears twice/);
    expect(() => parsePayloadKeys('nokey', 'DACP_PAYLOAD_KEYS')).toThrow(/entry 1 must be ID:BASE64/);
  });
});

describe('a run with payload encryption: Temporal holds only ciphertext, people with the key read it all', () => {
  const [k1, k2] = [key('2026-11'), key('2026-12')];
  const planted = `planted-comment-${randomBytes(4).toString('hex')}`;
  let db: TestDatabase;
  let home: string;
  let env: NodeJS.ProcessEnv;
  let dev: DacpDev;
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
    home = tempHome();
    writeTinyCorpus(home);
    dev = await startDacpDev({ home, databaseUrl: db.url, env: { DACP_PAYLOAD_KEYS: k1 }, readyMs: 180_000 });
    env = dev.env;
    await enrolTestPrincipals(db.pool);
  }, 240_000);

  afterAll(async () => {
    for (const child of children) child.kill('SIGKILL');
    await dev?.kill();
    await db?.drop();
    rmSync(home, { recursive: true, force: true });
  });

  function dacp(args: string[], extra: NodeJS.ProcessEnv = {}) {
    const r = spawnSync(process.execPath, [dacpBin, ...args], { env: { ...env, ...extra }, cwd: home, encoding: 'utf8' });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr.trim() };
  }
  const untilState = (runId: string, states: RunStatus['state'][]) =>
    eventually(async () => {
      const r = dacp(['run', 'status', runId, '--json']);
      if (r.code !== 0) throw new GiveUp(r.stderr);
      const s = JSON.parse(r.stdout) as RunStatus;
      if (s.state === 'failed') throw new GiveUp(`run failed: ${String(s.metrics.error)}`);
      return states.includes(s.state) ? s : undefined;
    }, `${runId} to be ${states.join('/')}`, 300_000, 500);

  test('history, memo, votes and failures are sealed; status, approval show, audit and the codec server open them', async () => {
    writeFileSync(path.join(home, 'spec.json'), JSON.stringify(tinySpec()));
    expect(dacp(['run', 'start', '--spec', 'spec.json', '--id', 'sealed-1', '--as', 'engineer']).code).toBe(0);
    await untilState('sealed-1', ['awaiting_approval']);
    expect(dacp(['approval', 'show', 'sealed-1']).stdout).toMatch(/approval gate of run sealed-1: open/);
    const approved = dacp(['approve', 'sealed-1', '--as', 'approver-1', '--comment', planted]);
    expect(approved.stderr).toBe('');
    await untilState('sealed-1', ['completed']);

    // What Temporal holds, read without the key.
    const address = `127.0.0.1:${env.DACP_TEMPORAL_PORT}`;
    const raw = new Client({ connection: await Connection.connect({ address }) });
    try {
      const payloads: temporal.api.common.v1.IPayload[] = [];
      const histories: string[] = [];
      for (const id of ['sealed-1', 'sealed-1-approval']) {
        const history = await raw.workflow.getHandle(id).fetchHistory();
        histories.push(JSON.stringify(temporal.api.history.v1.History.toObject(temporal.api.history.v1.History.fromObject(history), { bytes: String })));
        const walk = (v: unknown): void => {
          if (Array.isArray(v)) v.forEach(walk);
          else if (v && typeof v === 'object') {
            const o = v as Record<string, unknown>;
            if (o.metadata && 'data' in o) payloads.push(o as temporal.api.common.v1.IPayload);
            // Search attributes stay plain by Temporal's design (the server indexes them): stage and state only, checked below.
            // Patch markers hold the ids of code patches, written by the SDK itself: checked below.
            else for (const [k, inner] of Object.entries(o)) if (k !== 'searchAttributes' && k !== 'markerRecordedEventAttributes') walk(inner);
          }
        };
        walk(history.events);
        for (const e of history.events ?? []) {
          for (const p of Object.values(e.markerRecordedEventAttributes?.details ?? {})) {
            for (const payload of p.payloads ?? []) expect(Buffer.from(payload.data!).toString()).toMatch(/^("[a-z-]+"|true|false|\{"id":"[a-z-]+","deprecated":(true|false)\})$/);
          }
        }
      }
      expect(payloads.length).toBeGreaterThan(50);
      const encodings = new Set(payloads.map((p) => Buffer.from(p.metadata!.encoding!).toString()));
      expect([...encodings]).toEqual(['binary/encrypted']);
      for (const text of histories) {
        expect(Buffer.from(text).toString()).not.toContain(planted);
        // Nothing readable in the base64 of any payload either: no spec name, no run id, no artifact URI.
        for (const p of payloads) expect(Buffer.from(p.data!).toString('latin1')).not.toMatch(/planted|artifact:|approver-1/);
      }
      // Search attributes are for finding runs: stage and state, never the payloads' content.
      const described = await raw.workflowService.describeWorkflowExecution({ namespace: 'default', execution: { workflowId: 'sealed-1' } });
      const info = described.workflowExecutionInfo!;
      const indexed = Object.entries(info.searchAttributes?.indexedFields ?? {}).map(([k, p]) => [k, Buffer.from(p.data!).toString()]);
      expect(Object.fromEntries(indexed)).toMatchObject({ DacpStage: '"deploy"', DacpState: '"completed"' });
      expect(JSON.stringify(indexed)).not.toContain(planted);
      // The memo (the initiator) is sealed like every other payload.
      for (const p of Object.values(info.memo?.fields ?? {})) expect(Buffer.from(p.metadata!.encoding!).toString()).toBe('binary/encrypted');
      expect(Object.keys(info.memo?.fields ?? {})).toEqual(['initiator']);

      // The codec server opens a sealed payload for someone who holds the key and the token.
      const port = await freePort();
      const server = spawn(process.execPath, [dacpBin, 'codec-server', '--port', String(port), '--origin', 'http://ui.example:8233', '--token', 'ui-token'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      children.push(server);
      let serverOut = '';
      server.stdout!.on('data', (d) => (serverOut += d));
      await eventually(async () => (serverOut.includes('listening') ? true : undefined), 'the codec server', 30_000, 100);
      const vote = payloads.find(() => true)!;
      const body = JSON.stringify({ payloads: [{ metadata: Object.fromEntries(Object.entries(vote.metadata!).map(([k, v]) => [k, Buffer.from(v).toString('base64')])), data: Buffer.from(vote.data!).toString('base64') }] });
      const url = `http://127.0.0.1:${port}/decode`;
      expect((await fetch(url, { method: 'POST', body, headers: { 'content-type': 'application/json' } })).status).toBe(401);
      const decoded = await fetch(url, { method: 'POST', body, headers: { 'content-type': 'application/json', authorization: 'Bearer ui-token', origin: 'http://ui.example:8233' } });
      expect(decoded.status).toBe(200);
      expect(decoded.headers.get('access-control-allow-origin')).toBe('http://ui.example:8233');
      const opened = (await decoded.json()) as { payloads: { metadata: Record<string, string>; data: string }[] };
      expect(Buffer.from(opened.payloads[0]!.metadata.encoding!, 'base64').toString()).toBe('json/plain');
      const preflight = await fetch(url, { method: 'OPTIONS', headers: { origin: 'http://ui.example:8233', 'access-control-request-method': 'POST' } });
      expect(preflight.status).toBe(204);
      expect(preflight.headers.get('access-control-allow-headers')).toMatch(/x-namespace/);
      server.kill('SIGTERM');
    } finally {
      await raw.connection.close();
    }

    // People with the key read everything: the vote in approval show, and an audit bundle that verifies offline.
    expect(dacp(['approval', 'show', 'sealed-1']).stdout).toContain(planted);
    const bundle = path.join(home, 'sealed.audit.json');
    expect(dacp(['audit', 'export', 'sealed-1', '--as', 'auditor', '--out', bundle]).code).toBe(0);
    expect(dacp(['audit', 'verify', bundle]).stdout).toMatch(/verified/);

    // Rotation: with a new key first, the old run still reads; with only the new key, the old key is named.
    expect(dacp(['approval', 'show', 'sealed-1'], { DACP_PAYLOAD_KEYS: `${k2},${k1}` }).stdout).toContain(planted);
    const without = dacp(['approval', 'show', 'sealed-1', '--json'], { DACP_PAYLOAD_KEYS: k2 });
    expect(without.stdout + without.stderr).toMatch(/encrypted with key "2026-11", which this process does not hold/);

    // The comment never reached the logs; the key itself is nowhere: not in the logs, the bundle, the database.
    expect(dev.output()).not.toContain(planted);
    const keyMaterial = k1.split(':')[1]!;
    expect(dev.output()).not.toContain(keyMaterial);
    expect(readFileSync(bundle, 'utf8')).not.toContain(keyMaterial);
    const everyRow = await db.pool.query(`SELECT string_agg(t::text, '') AS all FROM (SELECT * FROM audit_log) t`);
    expect(String(everyRow.rows[0].all)).not.toContain(keyMaterial);
  });

  test('a failure message is sealed too', async () => {
    writeFileSync(path.join(home, 'bad.json'), JSON.stringify(tinySpec({ forgetting: { maxGeneralRegression: 0, minDomainGain: 1, onFail: 'fail' } })));
    expect(dacp(['run', 'start', '--spec', 'bad.json', '--id', 'sealed-2', '--as', 'engineer']).code).toBe(0);
    const failed = await eventually(async () => {
      const s = JSON.parse(dacp(['run', 'status', 'sealed-2', '--json']).stdout) as RunStatus;
      return s.state === 'failed' ? s : undefined;
    }, 'sealed-2 to fail its gate', 300_000, 500);
    expect(String(failed.metrics.error)).toMatch(/forgetting/);
    const raw = new Client({ connection: await Connection.connect({ address: `127.0.0.1:${env.DACP_TEMPORAL_PORT}` }) });
    try {
      const events = (await raw.workflow.getHandle('sealed-2').fetchHistory()).events ?? [];
      const failure = events.find((e) => e.workflowExecutionFailedEventAttributes)?.workflowExecutionFailedEventAttributes?.failure;
      expect(failure?.message).toBe('Encoded failure');
      expect(Buffer.from(failure!.encodedAttributes!.metadata!.encoding!).toString()).toBe('binary/encrypted');
    } finally {
      await raw.connection.close();
    }
  });
});
