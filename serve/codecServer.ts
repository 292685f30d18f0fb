import Fastify, { type FastifyInstance } from 'fastify';
import { timingSafeEqual } from 'node:crypto';
import type { Payload, PayloadCodec } from '@temporalio/common';

/**
 * `dacp codec-server`: Temporal's codec-server protocol (POST /decode and /encode, bodies
 * `{payloads: [{metadata: {key: base64}, data: base64}]}`), so the Temporal UI and CLI show sealed
 * payloads to people who can reach it. It runs where the keys are; give the UI's address with
 * --origin (CORS), and require a bearer token with --token (or DACP_CODEC_TOKEN).
 */

interface JsonPayload {
  metadata?: Record<string, string>;
  data?: string;
}

const toPayload = (p: JsonPayload): Payload => ({
  metadata: Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64')])),
  data: Buffer.from(p.data ?? '', 'base64'),
});
const toJson = (p: Payload): JsonPayload => ({
  metadata: Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v as Uint8Array).toString('base64')])),
  data: Buffer.from(p.data ?? new Uint8Array()).toString('base64'),
});

export function codecServer(o: { codec: PayloadCodec; origins: string[]; token?: string }): FastifyInstance {
  const app = Fastify({ logger: false, bodyLimit: 8 * 1024 * 1024 });
  const allowed = new Set(o.origins);
  app.addHook('onRequest', async (req, reply) => {
    const origin = req.headers.origin;
    if (origin && allowed.has(origin)) {
      reply.header('access-control-allow-origin', origin);
      reply.header('access-control-allow-credentials', 'true');
      reply.header('vary', 'origin');
    }
    if (req.method === 'OPTIONS') {
      reply.header('access-control-allow-methods', 'POST, OPTIONS');
      reply.header('access-control-allow-headers', 'content-type, x-namespace, authorization');
      return reply.code(204).send();
    }
    if (o.token) {
      const given = Buffer.from(/^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '');
      const want = Buffer.from(o.token);
      if (given.length !== want.length || !timingSafeEqual(given, want)) return reply.code(401).send({ error: 'a bearer token is required (Authorization: Bearer …)' });
    }
  });
  for (const op of ['decode', 'encode'] as const) {
    app.post(`/${op}`, async (req, reply) => {
      const body = req.body as { payloads?: JsonPayload[] } | undefined;
      if (!body || !Array.isArray(body.payloads)) return reply.code(400).send({ error: 'the body must be {"payloads": [...]}' });
      try {
        const out = await o.codec[op](body.payloads.map(toPayload));
        return { payloads: out.map(toJson) };
      } catch (err) {
        return reply.code(400).send({ error: (err as Error).message });
      }
    });
  }
  app.get('/health', async () => ({ status: 'ok' }));
  return app;
}
