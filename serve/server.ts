import { randomBytes, timingSafeEqual } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import type { Pool } from 'pg';
import { z } from 'zod';
import { findModelVersion } from '../db/records';
import { registerApi, type ApiDeps } from './api';
import { encodeChat, Generator, loadVersion, TextStream, type ChatMessage, type FinishReason } from './engine';

/**
 * `dacp serve`: OpenAI-style inference for the model an alias points at (fastify). It follows the
 * alias: when a deploy, promote or rollback moves it, the new version is loaded beside the old one
 * and swapped in; requests that started on the old one finish on it, new ones go to the new one.
 */

export interface ServeOptions {
  pool: Pool;
  artifactsDir: string;
  alias: string;
  /** Required as `Authorization: Bearer <key>` on /v1/* when set. */
  apiKey?: string;
  /** How often the alias is read for a move. */
  pollMs?: number;
  /** Requests generating at once; more get 429. */
  maxActive?: number;
  log?: (line: string) => void;
  /** dacp's HTTP API (runs, reports, decisions) beside the model routes; see serve/api.ts. */
  api?: ApiDeps;
  /** Serve the HTTP API only: no model is loaded (for an installation with nothing deployed yet). */
  apiOnly?: boolean;
}

export interface Served {
  app: FastifyInstance;
  /** The version that takes new requests now; null while the alias points nowhere. */
  version(): string | null;
  /** Forward passes, the rows they carried and the tokens generated, by the version serving now. */
  stats(): { passes: number; rows: number; tokens: number };
  /** Read the alias now and swap if it moved (the poll does this on its own). */
  refresh(): Promise<void>;
  close(): Promise<void>;
}

const stop = z.union([z.string(), z.array(z.string()).max(4)]).optional().nullable();
const common = {
  model: z.string().min(1),
  max_tokens: z.number().int().min(1).max(4096).optional().nullable(),
  temperature: z.number().min(0).max(2).optional().nullable(),
  top_p: z.number().gt(0).max(1).optional().nullable(),
  n: z.literal(1).optional().nullable(),
  stream: z.boolean().optional().nullable(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).passthrough().optional().nullable(),
  stop,
  seed: z.number().int().optional().nullable(),
  user: z.string().optional(),
  presence_penalty: z.literal(0).optional().nullable(),
  frequency_penalty: z.literal(0).optional().nullable(),
};
const CompletionBody = z.object({ ...common, prompt: z.union([z.string(), z.array(z.string()).length(1)]), echo: z.literal(false).optional().nullable(), logprobs: z.null().optional() }).passthrough();
const ChatBody = z
  .object({
    ...common,
    max_completion_tokens: z.number().int().min(1).max(4096).optional().nullable(),
    messages: z
      .array(
        z.object({
          role: z.enum(['system', 'developer', 'user', 'assistant']),
          content: z.union([z.string(), z.array(z.object({ type: z.literal('text'), text: z.string() }).passthrough())]),
        }).passthrough(),
      )
      .min(1),
    logprobs: z.literal(false).optional().nullable(),
  })
  .passthrough();

class ApiError extends Error {
  constructor(readonly status: number, message: string, readonly type: string, readonly param: string | null = null, readonly code: string | null = null) {
    super(message);
  }
}

function sendError(reply: FastifyReply, error: ApiError): FastifyReply {
  return reply.code(error.status).send({ error: { message: error.message, type: error.type, param: error.param, code: error.code } });
}

function parseBody<T>(schema: z.ZodType<T>, body: unknown): T {
  const parsed = schema.safeParse(body);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const param = issue?.path.join('.') || null;
    throw new ApiError(400, `${param ?? 'body'}: ${issue?.message ?? 'invalid'}`, 'invalid_request_error', param);
  }
  return parsed.data;
}

/** Stop sequences over a growing text: where the text must end, and how much of it is safe to send. */
function stopScanner(stops: string[]) {
  const longest = Math.max(0, ...stops.map((s) => s.length));
  return {
    /** Index where the earliest stop sequence begins, or -1. */
    hit(text: string): number {
      let at = -1;
      for (const s of stops) {
        const i = s ? text.indexOf(s) : -1;
        if (i >= 0 && (at < 0 || i < at)) at = i;
      }
      return at;
    },
    /** Characters that can be sent now: none of them can be the start of a stop sequence still to complete. */
    safe(text: string): number {
      return longest === 0 ? text.length : Math.max(0, text.length - (longest - 1));
    },
  };
}

export async function serve(o: ServeOptions): Promise<Served> {
  const log = o.log ?? (() => undefined);
  if (o.apiOnly) {
    if (!o.api) throw new Error('--api-only needs the API');
    const app = Fastify({ logger: false, bodyLimit: 1024 * 1024, ajv: { customOptions: { removeAdditional: false } }, exposeHeadRoutes: false });
    app.get('/health', async () => ({ status: 'ok', alias: null, version: null, sha256: null, inFlight: 0 }));
    app.setNotFoundHandler((request, reply) => sendError(reply, new ApiError(404, `no route ${request.method} ${request.url}`, 'invalid_request_error', null, 'not_found')));
    registerApi(app, o.api);
    return { app, version: () => null, stats: () => ({ passes: 0, rows: 0, tokens: 0 }), refresh: async () => undefined, close: () => app.close() };
  }
  // Null while the alias points nowhere (a rollback removed it): requests get 503 until it returns.
  let current: Generator | null = new Generator(await loadVersion(o.pool, o.artifactsDir, o.alias));
  log(`serving ${o.alias} → ${current.loaded.versionId} (sha256 ${current.loaded.sha256.slice(0, 16)}…)`);
  const started = Math.floor(Date.now() / 1000);
  let swapping: Promise<void> | null = null;

  const refresh = async (): Promise<void> => {
    if (swapping) return swapping;
    swapping = (async () => {
      const target = await findModelVersion(o.pool, o.alias);
      if (!target) {
        if (current) {
          current.retire();
          log(`${o.alias} points at no version any more (was ${current.loaded.versionId}): answering 503 until it does`);
          current = null;
        }
        return;
      }
      if (target.versionId === current?.loaded.versionId) return;
      // Loaded beside the old one; swapped in one step; the old one finishes its requests, then is freed.
      const next = new Generator(await loadVersion(o.pool, o.artifactsDir, target.versionId));
      const previous = current;
      current = next;
      previous?.retire();
      log(`${o.alias} moved: now serving ${next.loaded.versionId} (was ${previous?.loaded.versionId ?? 'nothing'})`);
    })()
      .catch((err: unknown) => log(`could not load the new target of ${o.alias}: ${(err as Error).message}; still serving ${current?.loaded.versionId ?? 'nothing'}`))
      .finally(() => {
        swapping = null;
      });
    return swapping;
  };
  const poll = setInterval(() => void refresh(), o.pollMs ?? (Number(process.env.DACP_SERVE_POLL_MS) || 2_000));

  // Unknown fields are refused, not silently dropped (the API's bodies say additionalProperties: false).
  const app = Fastify({ logger: false, bodyLimit: 4 * 1024 * 1024, ajv: { customOptions: { removeAdditional: false } }, exposeHeadRoutes: false });
  const keyBytes = o.apiKey ? Buffer.from(o.apiKey) : null;

  app.setErrorHandler((err: Error & { statusCode?: number }, _request, reply) => {
    if (err instanceof ApiError) return sendError(reply, err);
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    return sendError(reply, new ApiError(status, status === 500 ? 'the server failed to answer; see its log' : err.message, status === 500 ? 'server_error' : 'invalid_request_error'));
  });
  app.setNotFoundHandler((request, reply) => sendError(reply, new ApiError(404, `no route ${request.method} ${request.url}`, 'invalid_request_error', null, 'not_found')));

  app.addHook('onRequest', async (request) => {
    // By the route that matched, not the raw URL (which may be percent-encoded): all but /health.
    // dacp's own API (/api/…) has its bearer tokens; the model routes have the API key.
    if (!keyBytes || request.routeOptions.url === '/health' || request.routeOptions.url?.startsWith('/api/')) return;
    const header = request.headers.authorization ?? '';
    const given = Buffer.from(header.startsWith('Bearer ') ? header.slice(7) : '');
    if (given.length !== keyBytes.length || !timingSafeEqual(given, keyBytes)) {
      throw new ApiError(401, 'missing or wrong API key: send Authorization: Bearer <key>', 'invalid_request_error', null, 'invalid_api_key');
    }
  });

  if (o.api) registerApi(app, o.api);

  app.get('/health', async (_request, reply) =>
    current
      ? { status: 'ok', alias: o.alias, version: current.loaded.versionId, sha256: current.loaded.sha256, inFlight: current.inFlight }
      : reply.code(503).send({ status: 'unavailable', alias: o.alias, version: null, sha256: null, inFlight: 0 }),
  );

  const serving = (): Generator => {
    if (!current) throw new ApiError(503, `${o.alias} points at no model version now; deploy or promote one`, 'server_error', null, 'model_unavailable');
    return current;
  };

  app.get('/v1/models', async () => {
    const gen = serving();
    return {
      object: 'list',
      data: [
        { id: o.alias, object: 'model', created: started, owned_by: 'dacp', root: gen.loaded.versionId },
        { id: gen.loaded.versionId, object: 'model', created: started, owned_by: 'dacp', root: gen.loaded.versionId },
      ],
    };
  });

  /** The generator a request runs on: the one serving now, fixed for the whole request. */
  const admit = (model: string): Generator => {
    const gen = serving();
    if (model !== o.alias && model !== gen.loaded.versionId) {
      throw new ApiError(404, `model "${model}" is not served here; this server serves ${o.alias} (${gen.loaded.versionId})`, 'invalid_request_error', 'model', 'model_not_found');
    }
    if (gen.inFlight >= (o.maxActive ?? 256)) throw new ApiError(429, 'too many requests in flight; retry shortly', 'rate_limit_exceeded', null, 'rate_limit_exceeded');
    return gen;
  };

  async function run(
    reply: FastifyReply,
    o2: { gen: Generator; promptIds: number[]; maxTokens: number; temperature: number; topP: number; seed: number; stops: string[]; stream: boolean; includeUsage: boolean },
    shape: { id: string; object: string; chunkObject: string; first?: Record<string, unknown>; chunk: (text: string, finish: FinishReason | null) => Record<string, unknown>; whole: (text: string, finish: FinishReason) => Record<string, unknown> },
  ) {
    const { gen } = o2;
    const T = gen.loaded.contextLength;
    if (o2.promptIds.length >= T) {
      throw new ApiError(400, `the prompt is ${o2.promptIds.length} tokens; ${gen.loaded.versionId} reads at most ${T}, and at least one must be left to generate`, 'invalid_request_error', 'prompt', 'context_length_exceeded');
    }
    const maxTokens = Math.min(o2.maxTokens, T - o2.promptIds.length);
    const text = new TextStream(gen.loaded.tokenizer);
    const scanner = stopScanner(o2.stops);
    let sent = 0;
    let completionTokens = 0;
    let cut = -1;
    let closed = false;
    const created = Math.floor(Date.now() / 1000);
    const usage = () => ({ prompt_tokens: o2.promptIds.length, completion_tokens: completionTokens, total_tokens: o2.promptIds.length + completionTokens });
    const write = (payload: unknown) => {
      if (!closed) reply.raw.write(`data: ${JSON.stringify(payload)}\n\n`);
    };
    if (o2.stream) {
      reply.hijack();
      reply.raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive' });
      // The response's close: the client went away (a request's own 'close' only means its body was read).
      reply.raw.on('close', () => (closed = true));
      if (shape.first) write({ id: shape.id, object: shape.chunkObject, created, model: gen.loaded.versionId, ...shape.first });
    }
    let finish: FinishReason;
    try {
      finish = await gen.generate({
        promptIds: o2.promptIds,
        maxTokens,
        temperature: o2.temperature,
        topP: o2.topP,
        seed: o2.seed,
        onToken: (id) => {
          completionTokens += 1;
          text.push(id);
          const now = text.text;
          const at = scanner.hit(now);
          if (at >= 0) cut = at;
          if (o2.stream) {
            const upTo = at >= 0 ? at : scanner.safe(now);
            if (upTo > sent) {
              write({ id: shape.id, object: shape.chunkObject, created, model: gen.loaded.versionId, ...shape.chunk(now.slice(sent, upTo), null) });
              sent = upTo;
            }
          }
          return at < 0 && !closed;
        },
      });
    } catch (err) {
      if (o2.stream) {
        write({ error: { message: (err as Error).message, type: 'server_error', param: null, code: null } });
        reply.raw.end();
        return;
      }
      throw new ApiError(500, `generation failed: ${(err as Error).message}`, 'server_error');
    }
    text.flush();
    const full = cut >= 0 ? text.text.slice(0, cut) : text.text;
    if (!o2.stream) return reply.send({ id: shape.id, object: shape.object, created, model: gen.loaded.versionId, ...shape.whole(full, finish), usage: usage() });
    if (full.length > sent) write({ id: shape.id, object: shape.chunkObject, created, model: gen.loaded.versionId, ...shape.chunk(full.slice(sent), null) });
    write({ id: shape.id, object: shape.chunkObject, created, model: gen.loaded.versionId, ...shape.chunk('', finish) });
    if (o2.includeUsage) write({ id: shape.id, object: shape.chunkObject, created, model: gen.loaded.versionId, choices: [], usage: usage() });
    if (!closed) reply.raw.end('data: [DONE]\n\n');
  }

  const sampling = (body: { temperature?: number | null; top_p?: number | null; seed?: number | null; stop?: string | string[] | null }) => ({
    temperature: body.temperature ?? 1,
    topP: body.top_p ?? 1,
    seed: body.seed ?? randomBytes(4).readUInt32LE(0),
    stops: body.stop === undefined || body.stop === null ? [] : Array.isArray(body.stop) ? body.stop : [body.stop],
  });

  app.post('/v1/completions', async (request, reply) => {
    const body = parseBody(CompletionBody, request.body);
    const gen = admit(body.model);
    const prompt = Array.isArray(body.prompt) ? (body.prompt[0] as string) : body.prompt;
    const id = `cmpl-${randomBytes(12).toString('hex')}`;
    return run(reply, {
      gen, promptIds: gen.loaded.tokenizer.encode(prompt), maxTokens: body.max_tokens ?? 16, ...sampling(body),
      stream: Boolean(body.stream), includeUsage: Boolean(body.stream_options?.include_usage),
    }, {
      id, object: 'text_completion', chunkObject: 'text_completion',
      chunk: (text, finish) => ({ choices: [{ text, index: 0, logprobs: null, finish_reason: finish }] }),
      whole: (text, finish) => ({ choices: [{ text, index: 0, logprobs: null, finish_reason: finish }] }),
    });
  });

  app.post('/v1/chat/completions', async (request, reply) => {
    const body = parseBody(ChatBody, request.body);
    const gen = admit(body.model);
    const messages: ChatMessage[] = body.messages.map((m) => ({ role: m.role, content: typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join('') }));
    const id = `chatcmpl-${randomBytes(12).toString('hex')}`;
    return run(reply, {
      gen, promptIds: encodeChat(gen.loaded.tokenizer, messages), maxTokens: body.max_completion_tokens ?? body.max_tokens ?? 256, ...sampling(body),
      stream: Boolean(body.stream), includeUsage: Boolean(body.stream_options?.include_usage),
    }, {
      id, object: 'chat.completion', chunkObject: 'chat.completion.chunk',
      first: { choices: [{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }] },
      chunk: (text, finish) => ({ choices: [{ index: 0, delta: finish ? {} : { content: text }, logprobs: null, finish_reason: finish }] }),
      whole: (text, finish) => ({ choices: [{ index: 0, message: { role: 'assistant', content: text, refusal: null }, logprobs: null, finish_reason: finish }] }),
    });
  });

  return {
    app,
    version: () => current?.loaded.versionId ?? null,
    stats: () => ({ ...(current?.stats ?? { passes: 0, rows: 0, tokens: 0 }) }),
    refresh,
    close: async () => {
      clearInterval(poll);
      await swapping;
      await app.close();
      current?.retire();
    },
  };
}
