import type { Client } from '@temporalio/client';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Pool } from 'pg';
import { decide } from '../cli/runs';
import { loadServiceKey } from '../cli/keys';
import type { Role } from '../db/principals';
import { authenticate } from '../db/tokens';
import { loadRunReport, runReportHtml } from '../reports/runReport';
import { InputError } from '../schemas/runSpec';

/**
 * dacp's HTTP API for people and tools, in the same `dacp serve` process: list runs, show one and
 * its report, approve or reject. Requests carry a bearer token (`dacp tokens create --as NAME`),
 * stored hashed. A decision through the API is signed by the server's own key after it has
 * authenticated the principal and checked the approver role; `audit verify` tells those from votes
 * signed by the approvers' own keys. The OpenAPI description is served at /api/v1/openapi.json and
 * the test suite checks the API against it with schemathesis.
 */

export interface ApiDeps {
  pool: Pool;
  artifactsDir: string;
  home: string;
  /** The Temporal client for votes, connected on first use. */
  client: () => Promise<Client>;
}

export const RUN_ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$';

const errorSchema = {
  type: 'object',
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['message', 'type', 'param', 'code'],
      properties: { message: { type: 'string' }, type: { type: 'string' }, param: { type: ['string', 'null'] }, code: { type: ['string', 'null'] } },
    },
  },
} as const;
const nullableString = { type: ['string', 'null'] } as const;
const runSummary = {
  type: 'object',
  required: ['runId', 'state', 'stage', 'initiator', 'createdAt', 'finishedAt'],
  properties: {
    runId: { type: 'string' },
    state: { type: 'string', enum: ['running', 'awaiting_approval', 'completed', 'rejected', 'failed', 'cancelled', 'superseded', 'rolled_back'] },
    stage: { type: 'string' },
    initiator: { type: 'string' },
    createdAt: { type: 'string', format: 'date-time' },
    finishedAt: { ...nullableString, format: 'date-time' },
  },
} as const;
const runDetail = {
  type: 'object',
  required: [...runSummary.required, 'error', 'specSha256', 'metrics', 'votes', 'deployments'],
  properties: {
    ...runSummary.properties,
    error: nullableString,
    specSha256: { type: 'string' },
    metrics: { type: 'object', additionalProperties: true },
    votes: {
      type: 'array',
      items: {
        type: 'object',
        required: ['principal', 'decision', 'at', 'comment', 'signedWith', 'via'],
        properties: {
          principal: { type: 'string' },
          decision: { type: 'string', enum: ['approve', 'reject'] },
          at: { type: 'string', format: 'date-time' },
          comment: nullableString,
          signedWith: nullableString,
          via: { type: ['string', 'null'], enum: ['cli', 'api', null] },
        },
      },
    },
    deployments: {
      type: 'array',
      items: {
        type: 'object',
        required: ['alias', 'versionId', 'kind', 'at'],
        properties: { alias: { type: 'string' }, versionId: nullableString, kind: { type: 'string' }, at: { type: 'string', format: 'date-time' } },
      },
    },
  },
} as const;
const decisionResult = {
  type: 'object',
  required: ['runId', 'principal', 'decision', 'at', 'approvals', 'quorum', 'via', 'signedWith'],
  properties: {
    runId: { type: 'string' },
    principal: { type: 'string' },
    decision: { type: 'string', enum: ['approve', 'reject'] },
    at: { type: 'string', format: 'date-time' },
    approvals: { type: 'integer', minimum: 0 },
    quorum: { type: 'integer', minimum: 0 },
    via: { type: 'string', enum: ['api'] },
    signedWith: nullableString,
  },
} as const;
const runIdParam = { type: 'object', required: ['runId'], properties: { runId: { type: 'string', pattern: RUN_ID_PATTERN } } } as const;
const comment = { type: 'string', maxLength: 2000 } as const;
const approveBody = { type: 'object', additionalProperties: false, properties: { comment } } as const;
const rejectBody = { type: 'object', additionalProperties: false, required: ['reason'], properties: { reason: { type: 'string', minLength: 1, maxLength: 2000 }, comment } } as const;

const errors = (...codes: number[]) => Object.fromEntries(codes.map((c) => [c, errorSchema]));

/** The OpenAPI 3.0 description of the API, built from the same schemas the routes validate with. */
export function openApiDocument(): Record<string, unknown> {
  const json = (schema: unknown) => ({ content: { 'application/json': { schema } } });
  const responses = (ok: unknown, ...codes: number[]) => ({
    200: { description: 'OK', ...(ok ? json(ok) : {}) },
    ...Object.fromEntries(codes.map((c) => [String(c), { description: ERROR_TEXT[c], ...json({ $ref: '#/components/schemas/Error' }) }])),
  });
  const runIdParameter = { name: 'runId', in: 'path', required: true, schema: { type: 'string', pattern: RUN_ID_PATTERN } };
  const toOpenApi = (schema: unknown): unknown => JSON.parse(JSON.stringify(schema), (_key, value) => {
    // OpenAPI 3.0 has `nullable` rather than type lists.
    if (value && typeof value === 'object' && Array.isArray(value.type)) {
      const types = (value.type as string[]).filter((t) => t !== 'null');
      const out = { ...value, type: types[0], nullable: true };
      if (Array.isArray(out.enum)) out.enum = out.enum.filter((e: unknown) => e !== null).concat([null]);
      return out;
    }
    return value;
  });
  return {
    openapi: '3.0.3',
    info: { title: 'dacp API', version: '1', description: 'Runs, their reports, and approval decisions. Decisions are signed by the server for the authenticated approver.' },
    servers: [{ url: '/' }],
    security: [{ bearer: [] }],
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'a token from `dacp tokens create --as NAME`' } },
      schemas: {
        Error: toOpenApi(errorSchema),
        RunSummary: toOpenApi(runSummary),
        RunDetail: toOpenApi(runDetail),
        DecisionResult: toOpenApi(decisionResult),
      },
    },
    paths: {
      '/api/v1/me': {
        get: { operationId: 'whoAmI', summary: 'the principal behind the token', responses: responses(toOpenApi({ type: 'object', required: ['principal', 'roles'], properties: { principal: { type: 'string' }, roles: { type: 'array', items: { type: 'string', enum: ['operator', 'approver', 'auditor'] } } } }), 401) },
      },
      '/api/v1/runs': {
        get: {
          operationId: 'listRuns',
          summary: 'runs, newest first',
          parameters: [{ name: 'limit', in: 'query', required: false, schema: { type: 'integer', minimum: 1, maximum: 500, default: 100 } }],
          responses: responses({ type: 'object', required: ['runs'], properties: { runs: { type: 'array', items: { $ref: '#/components/schemas/RunSummary' } } } }, 400, 401),
        },
      },
      '/api/v1/runs/{runId}': {
        get: { operationId: 'showRun', summary: 'one run: state, figures, votes, deployments', parameters: [runIdParameter], responses: responses({ $ref: '#/components/schemas/RunDetail' }, 400, 401, 404) },
      },
      '/api/v1/runs/{runId}/report': {
        get: {
          operationId: 'runReport',
          summary: 'the run report: one self-contained HTML file',
          parameters: [runIdParameter],
          responses: { 200: { description: 'OK', content: { 'text/html': { schema: { type: 'string' } } } }, ...Object.fromEntries([400, 401, 404].map((c) => [String(c), { description: ERROR_TEXT[c], ...json({ $ref: '#/components/schemas/Error' }) }])) },
        },
      },
      '/api/v1/runs/{runId}/approve': {
        post: {
          operationId: 'approveRun',
          summary: 'approve a run waiting at its gate (approvers only)',
          parameters: [runIdParameter],
          requestBody: { required: false, ...json(toOpenApi(approveBody)) },
          responses: responses({ $ref: '#/components/schemas/DecisionResult' }, 400, 401, 403, 404, 409),
        },
      },
      '/api/v1/runs/{runId}/reject': {
        post: {
          operationId: 'rejectRun',
          summary: 'reject a run waiting at its gate (approvers only)',
          parameters: [runIdParameter],
          requestBody: { required: true, ...json(toOpenApi(rejectBody)) },
          responses: responses({ $ref: '#/components/schemas/DecisionResult' }, 400, 401, 403, 404, 409),
        },
      },
    },
  };
}

const ERROR_TEXT: Record<number, string> = {
  400: 'the request is malformed (the message names the field)',
  401: 'no token, or a token that is unknown or revoked',
  403: 'the principal lacks the role',
  404: 'no such run',
  409: 'the gate refused the vote (the message says why)',
};

class HttpError extends Error {
  constructor(readonly status: number, message: string, readonly code: string) {
    super(message);
  }
}

const send = (reply: FastifyReply, status: number, message: string, code: string) =>
  reply.code(status).header('content-type', 'application/json; charset=utf-8').send({ error: { message, type: status >= 500 ? 'server_error' : 'invalid_request_error', param: null, code } });

const iso = (d: unknown) => (d instanceof Date ? d.toISOString() : d === null || d === undefined ? null : new Date(String(d)).toISOString());

/** The API's paths and the methods each answers; any other method gets 405 with Allow. */
const API_METHODS: [RegExp, string][] = [
  [/^\/api\/v1\/(me|runs|openapi\.json)$/, 'GET'],
  [/^\/api\/v1\/runs\/[^/]+$/, 'GET'],
  [/^\/api\/v1\/runs\/[^/]+\/report$/, 'GET'],
  [/^\/api\/v1\/runs\/[^/]+\/(approve|reject)$/, 'POST'],
];

export function registerApi(app: FastifyInstance, deps: ApiDeps): void {
  const openapi = openApiDocument();
  app.get('/api/v1/openapi.json', async () => openapi);
  // Before routing and body parsing: a method the API does not declare is 405, whatever it is.
  app.addHook('onRequest', async (request, reply) => {
    const pathname = request.url.split('?')[0] ?? '';
    const match = API_METHODS.find(([pattern]) => pattern.test(pathname));
    if (match && request.method !== match[1]) {
      reply.header('allow', match[1]);
      return send(reply, 405, `${request.method} is not allowed on ${pathname}; use ${match[1]}`, 'method_not_allowed');
    }
  });

  const who = new WeakMap<FastifyRequest, { principal: string; roles: Role[] }>();
  const guarded = async (request: FastifyRequest, reply: FastifyReply) => {
    const header = request.headers.authorization ?? '';
    const token = header.startsWith('Bearer ') ? header.slice(7).trim() : '';
    const found = token ? await authenticate(deps.pool, token) : null;
    if (!found) {
      reply.header('www-authenticate', 'Bearer realm="dacp"');
      return send(reply, 401, 'send Authorization: Bearer <token>; create one with `dacp tokens create --as NAME`', 'unauthorized');
    }
    who.set(request, found);
  };
  const principalOf = (request: FastifyRequest) => who.get(request)!;

  app.register(async (api) => {
    api.addHook('onRequest', guarded);
    api.setErrorHandler((err: Error & { statusCode?: number; validation?: unknown }, _request, reply) => {
      if (err instanceof HttpError) return send(reply, err.status, err.message, err.code);
      if (err.validation || (err.statusCode && err.statusCode >= 400 && err.statusCode < 500)) return send(reply, err.statusCode ?? 400, err.message, 'invalid_request');
      return send(reply, 500, 'the server failed to answer; see its log', 'server_error');
    });

    api.get('/api/v1/me', async (request) => ({ principal: principalOf(request).principal, roles: principalOf(request).roles }));

    api.get('/api/v1/runs', { schema: { querystring: { type: 'object', properties: { limit: { type: 'integer', minimum: 1, maximum: 500, default: 100 } } }, response: { 200: { type: 'object', required: ['runs'], properties: { runs: { type: 'array', items: runSummary } } }, ...errors(400, 401) } } }, async (request) => {
      const { limit } = request.query as { limit: number };
      const { rows } = await deps.pool.query('SELECT run_id, state, stage, initiator, created_at, finished_at FROM runs ORDER BY created_at DESC, run_id DESC LIMIT $1', [limit]);
      return { runs: rows.map((r) => ({ runId: r.run_id, state: r.state, stage: r.stage, initiator: r.initiator, createdAt: iso(r.created_at), finishedAt: iso(r.finished_at) })) };
    });

    api.get('/api/v1/runs/:runId', { schema: { params: runIdParam, response: { 200: runDetail, ...errors(400, 401, 404) } } }, async (request) => {
      const { runId } = request.params as { runId: string };
      const run = (await deps.pool.query('SELECT * FROM runs WHERE run_id = $1', [runId])).rows[0];
      if (!run) throw new HttpError(404, `no run with id ${runId}`, 'not_found');
      const votes = (await deps.pool.query('SELECT principal, decision, decided_at, comment, signature FROM approvals WHERE run_id = $1 ORDER BY id', [runId])).rows;
      const moves = (await deps.pool.query('SELECT alias, version_id, kind, created_at FROM deployments WHERE run_id = $1 ORDER BY id', [runId])).rows;
      return {
        runId, state: run.state, stage: run.stage, initiator: run.initiator, createdAt: iso(run.created_at), finishedAt: iso(run.finished_at),
        error: run.error ?? null, specSha256: run.spec_sha256, metrics: run.metrics ?? {},
        votes: votes.map((v) => ({ principal: v.principal, decision: v.decision, at: iso(v.decided_at), comment: v.comment ?? null, signedWith: v.signature?.statement?.keyId ?? null, via: v.signature?.statement?.via ?? null })),
        deployments: moves.map((d) => ({ alias: d.alias, versionId: d.version_id ?? null, kind: d.kind, at: iso(d.created_at) })),
      };
    });

    api.get('/api/v1/runs/:runId/report', { schema: { params: runIdParam } }, async (request, reply) => {
      const { runId } = request.params as { runId: string };
      const data = await loadRunReport(deps.pool, deps.artifactsDir, runId);
      if (!data) throw new HttpError(404, `no run with id ${runId}`, 'not_found');
      return reply.header('content-type', 'text/html; charset=utf-8').send(runReportHtml(data));
    });

    for (const decision of ['approve', 'reject'] as const) {
      api.post(`/api/v1/runs/:runId/${decision}`, { schema: { params: runIdParam, body: decision === 'approve' ? approveBody : rejectBody, response: { 200: decisionResult, ...errors(400, 401, 403, 404, 409) } } }, async (request) => {
        const { runId } = request.params as { runId: string };
        const me = principalOf(request);
        if (!me.roles.includes('approver')) throw new HttpError(403, `${me.principal} holds the role ${me.roles.join(', ')}, not approver, so cannot vote`, 'forbidden');
        const body = (request.body ?? {}) as { comment?: string; reason?: string };
        const exists = (await deps.pool.query('SELECT 1 FROM runs WHERE run_id = $1', [runId])).rowCount;
        if (!exists) throw new HttpError(404, `no run with id ${runId}`, 'not_found');
        const key = loadServiceKey(deps.home, 'server');
        try {
          const result = await decide({ client: await deps.client(), pool: deps.pool }, {
            runId, principal: me.principal, decision, comment: body.comment, reason: body.reason,
            server: { keyId: key.keyId, privateKey: key.privateKey, publicKey: key.publicKey },
          });
          return { runId, principal: me.principal, decision, at: result.decision.at, approvals: result.approvals, quorum: result.quorum, via: 'api', signedWith: result.decision.signature?.statement.keyId ?? null };
        } catch (err) {
          if (err instanceof InputError) throw new HttpError(/^no run with id/.test(err.message) ? 404 : 409, err.message, 'refused');
          throw err;
        }
      });
    }
  });
}
