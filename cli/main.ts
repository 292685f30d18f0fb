import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Command, CommanderError } from 'commander';
import type { Client } from '@temporalio/client';
import type { PipelineResult } from '../schemas/pipeline';
import { InputError, type RunSpec } from '../schemas/runSpec';
import { approvalView, formatApprovalView } from './approval';
import { exportAudit, exportKey, formatVerdict, parsePublicKey, verifyAudit } from './audit';
import { connectClient, defaultTemporalPort, TemporalUnreachableError, temporalSettings } from './connection';
import { prepareDemo, runDemo } from './demo';
import { describeBackend, initBackend } from '../ml/backend';
import { describeSlots, detectGpus, planSlots } from '../workers/gpuSlots';
import { dacpHome } from './paths';
import {
  cancelRun,
  checkQuorumReachable,
  checkRunId,
  decide,
  defaultPrincipal,
  listRuns,
  loadSpecFile,
  preflightSources,
  runStatus,
  startRun,
  waitForResult,
} from './runs';
import { addPrincipal, checkPrincipalName, checkRole, disablePrincipal, listPrincipals } from '../db/principals';
import { actingKey, initKey, provenKey, revokeKey, rotateKey, serviceKey, type KeyChange } from './keys';
import { createToken, listTokens, revokeToken } from '../db/tokens';
import { artifactsDir, openDatabase, startLocalServer, startWorkers } from './runtime';
import { openArtifactStore } from '../activities/objectStore';
import { exportModel, formatAliasMove, formatModel, formatModels, importModel, listModels, promoteModel, rollbackAlias, showModel } from './models';
import { createSchedule, deleteSchedule, describeSchedule, formatSchedule, listSchedules, pauseSchedule, triggerSchedule } from './schedules';
import { formatStatus, type RunContext } from './status';
import { serve as serveModels } from '../serve/server';
import { loadRunReport, runReportHtml } from '../reports/runReport';
import { codecServer } from '../serve/codecServer';
import { AesGcmCodec, payloadKeysFromEnv } from '../workers/codec';

const ENVIRONMENT = `
State directory: DACP_HOME (default ./.dacp). Temporal: TEMPORAL_ADDRESS (default: the project's dev
server on 127.0.0.1:DACP_TEMPORAL_PORT, 7233). Database: DATABASE_URL (default: embedded PostgreSQL).
Artifacts: DACP_ARTIFACTS (default DACP_HOME/artifacts; s3://BUCKET/PREFIX for object storage, with
AWS_ENDPOINT_URL, AWS_REGION and the AWS credential chain).
`;

function need(value: string | boolean | undefined, what: string): string {
  if (typeof value !== 'string' || value.length === 0) throw new InputError(`missing ${what}; see \`dacp --help\``);
  return value;
}

async function withClient<T>(fn: (client: Client) => Promise<T>): Promise<T> {
  const client = await connectClient();
  try {
    return await fn(client);
  } finally {
    await client.connection.close();
  }
}

/**
 * A run's status: with Temporal when it answers (live training progress), from the database alone
 * when the server is not running (say, after `dacp demo` has stopped it).
 */
async function statusWithoutServer(runId: string) {
  const home = dacpHome();
  const db = await openDatabase(home);
  try {
    let client: Client | null = null;
    try {
      client = await connectClient();
    } catch (err) {
      if (!(err instanceof TemporalUnreachableError)) throw err;
    }
    try {
      return await runStatus({ client, pool: db.pool, artifactsDir: artifactsDir(home) }, runId);
    } finally {
      await client?.connection.close();
    }
  } finally {
    await db.close();
  }
}

/** Temporal, the home's database and its artifacts: what starting, reading and cancelling runs need. */
async function withRuns<T>(fn: (ctx: RunContext) => Promise<T>): Promise<T> {
  const home = dacpHome();
  const db = await openDatabase(home);
  try {
    return await withClient((client) => fn({ client, pool: db.pool, artifactsDir: artifactsDir(home) }));
  } finally {
    await db.close();
  }
}

function print(json: boolean, value: unknown, text: () => string): void {
  console.log(json ? JSON.stringify(value, null, 2) : text());
}

/** Resolves on SIGINT/SIGTERM, so foreground commands can shut down in order. */
function untilStopped(): Promise<string> {
  return new Promise((resolve) => {
    const stop = (signal: string) => resolve(signal);
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
}

async function serve(withWorkers: boolean): Promise<void> {
  const home = dacpHome();
  const db = await openDatabase(home);
  console.log(`database: ${db.embedded ? `embedded PostgreSQL under ${path.join(home, 'postgres')}` : 'DATABASE_URL'} (migrated)`);
  const settings = temporalSettings();
  let server: Awaited<ReturnType<typeof startLocalServer>> | null = null;
  try {
    if (settings.external) {
      console.log(`temporal: using ${settings.address} (TEMPORAL_ADDRESS), namespace ${settings.namespace}`);
    } else {
      const uiPort = Number(process.env.DACP_TEMPORAL_UI_PORT ?? defaultTemporalPort() + 1000);
      server = await startLocalServer({ home, port: defaultTemporalPort(), uiPort, log: console.log });
      console.log(`temporal: dev server on ${server.address}, history in ${path.join(home, 'temporal', 'temporal.db')}`);
      console.log(`temporal UI: ${server.uiUrl}`);
    }
    const workers = withWorkers ? await startWorkers(['control', 'gpu'], db, { home, address: server?.address }) : null;
    if (workers) console.log('workers: dacp-control and dacp-gpu polling');
    console.log('ready — Ctrl-C to stop');
    const serverExited = server ? new Promise<string>((resolve) => server!.process.once('exit', () => resolve('server exit'))) : new Promise<string>(() => undefined);
    const why = await Promise.race([untilStopped(), serverExited, workers ? workers.done.then(() => 'workers stopped') : new Promise<string>(() => undefined)]);
    console.log(`stopping (${why}) …`);
    if (workers) await workers.shutdown();
  } finally {
    if (server) await server.stop();
    await db.close();
  }
  console.log('stopped');
}

/** The exit code an action settles on (0 unless it says otherwise). */
let exitCode = 0;

/** A command's options as commander parsed them. */
type Options = Record<string, string | boolean | undefined>;

function program(): Command {
  const dacp = new Command('dacp')
    .description('durable domain-adaptive continual pretraining on Temporal')
    .addHelpText('after', ENVIRONMENT)
    .exitOverride()
    .configureOutput({
      // One line, "dacp: …", as every other refusal reads.
      outputError: (text, write) =>
        write(`dacp: ${text.replace(/^error: /, '').trim().replace(/\s*\n\s*/g, ' ').replace(/\.$/, '')}; see \`dacp --help\`\n`),
    });
  dacp.configureHelp({ sortSubcommands: false });

  dacp
    .command('demo')
    .description('the whole lifecycle on generated demo data (embedded engine + DB)')
    .option('--prepare <dir>', 'only write the demo data and spec to DIR')
    .option('--base <dir>', 'adapt your own Hugging Face model folder (GPT-2 or Llama family)')
    .action(async (o: Options) => {
      if (o.prepare !== undefined) {
        const spec = prepareDemo(path.resolve(need(o.prepare, '--prepare DIR')));
        console.log(`demo data and spec written: ${spec}`);
        return;
      }
      const result = await runDemo(console.log, o.base !== undefined ? { base: path.resolve(need(o.base, '--base DIR')) } : {});
      exitCode = result.state === 'completed' ? 0 : 1;
    });
  dacp.command('dev').description('dev server + both workers, foreground').action(() => serve(true));
  dacp.command('server').description('dev server (+ embedded Postgres without DATABASE_URL), foreground').action(() => serve(false));
  dacp
    .command('worker')
    .description('one worker, foreground')
    .requiredOption('--queue <queue>', 'control or gpu')
    .action(async (o: Options) => {
      const queue = need(o.queue, '--queue control|gpu');
      if (queue !== 'control' && queue !== 'gpu') throw new InputError(`--queue must be control or gpu, not "${queue}"`);
      const db = await openDatabase();
      try {
        const workers = await startWorkers([queue], db);
        console.log(`worker: dacp-${queue} polling ${temporalSettings().address}`);
        console.log(`worker: artifacts in ${openArtifactStore(artifactsDir()).location}`);
        // The gpu worker trains: say which TensorFlow.js backend it will use, and why faster ones were passed over.
        if (queue === 'gpu') {
          console.log(`worker: ${describeSlots(planSlots(detectGpus(), process.env.DACP_GPU_SLOTS))}`);
          console.log(`worker: ${describeBackend(await initBackend())}`);
        }
        await Promise.race([workers.done, untilStopped().then(() => workers.shutdown())]);
        await workers.done;
      } finally {
        await db.close();
      }
    });
  dacp
    .command('migrate')
    .description('apply database migrations')
    .action(async () => {
      const db = await openDatabase();
      await db.close();
      console.log('migrations applied');
    });

  runCommands(dacp.command('run').description('start, watch, list and cancel runs'));

  dacp
    .command('approval')
    .description('the approval gate')
    .command('show')
    .description('what approvers vote on: hashes, reports, samples, votes, time left')
    .argument('<id>', 'run id')
    .option('--json', 'as JSON')
    .action(async (id: string, o: Options) => {
      const runId = checkRunId(id);
      const view = await withClient((client) => approvalView(client, runId, { artifactsDir: artifactsDir() }));
      print(Boolean(o.json), view, () => formatApprovalView(view));
    });
  for (const decision of ['approve', 'reject'] as const) {
    const command = dacp
      .command(decision)
      .description(decision === 'approve' ? 'vote for a run waiting at its gate' : 'vote against a run waiting at its gate')
      .argument('<id>', 'run id')
      .option('--as <principal>', 'who votes')
      .option('--comment <text>', 'a comment kept with the vote');
    if (decision === 'reject') command.option('--reason <text>', 'why (required)');
    command.action(async (id: string, o: Options) => {
      const runId = checkRunId(id);
      const principal = need(o.as, '--as PRINCIPAL');
      const reason = decision === 'reject' ? need(o.reason, '--reason TEXT') : undefined;
      const db = await openDatabase();
      let outcome;
      try {
        outcome = await withClient((client) => decide({ client, pool: db.pool }, { runId, principal, decision, comment: o.comment as string | undefined, reason }));
      } finally {
        await db.close();
      }
      console.log(
        decision === 'approve'
          ? `approved run ${runId} as ${principal}${outcome.quorum ? ` (${outcome.approvals} of ${outcome.quorum})` : ''}`
          : `rejected run ${runId} as ${principal}`,
      );
    });
  }

  const audit = dacp.command('audit').description("a run's audit bundle: signed, verifiable offline");
  audit
    .command('export')
    .description("write a run's audit bundle (stdout, or --out FILE), signed with the installation's export key")
    .argument('<id>', 'run id')
    .option('--out <file>', 'write to FILE')
    .option('--as <principal>', 'who exports (an auditor)')
    .action(async (id: string, o: Options) => {
      const runId = checkRunId(id);
      const home = dacpHome();
      const db = await openDatabase(home);
      try {
        await actingKey(db.pool, need(o.as, '--as PRINCIPAL'), 'auditor', 'export audit bundles');
        const bundle = await withClient((client) => exportAudit(client, db.pool, runId, { home, artifactsDir: artifactsDir(home), admin: db.admin() }));
        const text = JSON.stringify(bundle, null, 2) + '\n';
        if (typeof o.out === 'string') {
          writeFileSync(o.out, text);
          console.log(`audit bundle for ${runId} written to ${o.out}: ${Object.keys(bundle.manifest).length} parts, signed by export key ${bundle.signature.keyId}`);
        } else {
          process.stdout.write(text);
        }
      } finally {
        await db.close();
      }
    });
  audit
    .command('key')
    .description("the installation's export public key, to publish for auditors (`audit verify --key`)")
    .option('--json', 'as JSON')
    .action(async (o: Options) => {
      const home = dacpHome();
      const db = await openDatabase(home);
      try {
        const key = await exportKey(db.admin(), home);
        print(Boolean(o.json), { algorithm: 'ed25519', keyId: key.keyId, publicKey: key.publicKey }, () => key.publicKey);
      } finally {
        await db.close();
      }
    });
  audit
    .command('verify')
    .description('check an audit bundle offline: parts, signature, hash chain, votes, histories against rows, deploy against approval')
    .argument('<file>', 'bundle file')
    .option('--key <pub>', 'the published export public key (hex, or a file holding it): checks authenticity too')
    .action((file: string, o: Options) => {
      let bundle: unknown;
      try {
        bundle = JSON.parse(readFileSync(file, 'utf8'));
      } catch (err) {
        throw new InputError(`cannot read audit bundle ${file}: ${(err as Error).message.split('\n')[0]}`);
      }
      let publicKey: string | undefined;
      if (typeof o.key === 'string') publicKey = parsePublicKey(existsSync(o.key) ? readFileSync(o.key, 'utf8') : o.key);
      const verdict = verifyAudit(bundle, { publicKey });
      console.log(formatVerdict(file, verdict));
      exitCode = verdict.ok ? 0 : 1;
    });

  dacp
    .command('codec-server')
    .description("decrypt payloads for the Temporal UI (its codec endpoint), for people who hold the keys (DACP_PAYLOAD_KEYS)")
    .option('--port <n>', 'port', '8888')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--origin <url>', 'the Temporal UI address allowed by CORS; repeat for several', (v: string, all: string[]) => [...all, v], [] as string[])
    .option('--token <token>', 'require Authorization: Bearer <token> (or set DACP_CODEC_TOKEN)')
    .action(async (o: Record<string, unknown>) => {
      const port = Number(o.port);
      if (!Number.isInteger(port) || port < 0 || port > 65_535) throw new InputError(`--port "${String(o.port)}": give a port number, 0–65535`);
      let keys;
      try {
        keys = payloadKeysFromEnv();
      } catch (err) {
        throw new InputError((err as Error).message);
      }
      if (!keys) throw new InputError('no payload keys: set DACP_PAYLOAD_KEYS (ID:BASE64,…) or DACP_PAYLOAD_KEY_FILE; see README "Payload encryption"');
      const origins = (o.origin as string[]).length ? (o.origin as string[]) : ['http://localhost:8233', 'http://127.0.0.1:8233'];
      const token = typeof o.token === 'string' ? o.token : process.env.DACP_CODEC_TOKEN || undefined;
      const app = codecServer({ codec: new AesGcmCodec(keys), origins, token });
      const address = await app.listen({ port, host: o.host as string });
      console.log(`codec-server: listening on ${address} (POST /decode, /encode; keys ${keys.map((k) => k.id).join(', ')}; CORS for ${origins.join(', ')}${token ? '; bearer token required' : ''})`);
      await untilStopped();
      await app.close();
    });

  identityCommands(dacp);
  tokenCommands(dacp.command('tokens').description('bearer tokens for the HTTP API (dacp serve /api/v1)'));
  modelCommands(dacp.command('models').description('the model registry: versions, lineage, aliases'));
  scheduleCommands(dacp.command('schedule').description('recurring runs (Temporal Schedules)'));
  dacp
    .command('serve')
    .description('OpenAI-style completions and chat for the production alias; follows the alias as it moves')
    .option('--port <n>', 'port', '8000')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--alias <alias>', 'the alias to serve', 'production')
    .option('--api-key <key>', 'require Authorization: Bearer <key> on /v1/* (or set DACP_API_KEY)')
    .option('--api-only', "only dacp's HTTP API (/api/v1: runs, reports, decisions), no model")
    .action(async (o: Options) => {
      const port = Number(o.port);
      if (!Number.isInteger(port) || port < 0 || port > 65_535) throw new InputError(`--port "${o.port}": give a port number, 0–65535`);
      const apiKey = typeof o.apiKey === 'string' ? o.apiKey : process.env.DACP_API_KEY || undefined;
      const home = dacpHome();
      const db = await openDatabase(home);
      // Votes through the API reach the gate through Temporal, connected on the first one.
      let client: Promise<Client> | undefined;
      const api = { pool: db.pool, artifactsDir: artifactsDir(home), home, client: () => (client ??= connectClient()) };
      // The key that signs API decisions exists before any gate opens, so gates capture it.
      await serviceKey(db.admin(), home, 'server');
      try {
        if (!o.apiOnly) await initBackend();
        let served;
        try {
          served = await serveModels({ pool: db.pool, artifactsDir: artifactsDir(home), alias: o.alias as string, apiKey, api, apiOnly: Boolean(o.apiOnly), log: (line) => console.log(`serve: ${line}`) });
        } catch (err) {
          throw new InputError(`cannot serve ${String(o.alias)}: ${(err as Error).message}`);
        }
        const address = await served.app.listen({ port, host: o.host as string });
        console.log(
          o.apiOnly
            ? `serve: listening on ${address} (dacp API: /api/v1, description at /api/v1/openapi.json; bearer tokens from \`dacp tokens create\`)`
            : `serve: listening on ${address} (OpenAI-style: /v1/completions, /v1/chat/completions, /v1/models; dacp API: /api/v1; /health)${apiKey ? '; API key required on /v1' : ''}`,
        );
        await untilStopped();
        console.log('serve: stopping …');
        await served.close();
        if (client) await (await client).connection.close().catch(() => undefined);
      } finally {
        await db.close();
      }
    });
  return dacp;
}

/** `--spec FILE` read, validated and its sources checked; the initiator (`--as`, else the user), who must leave a reachable quorum. */
async function checkedSpec(o: Options): Promise<{ spec: RunSpec; baseDir: string; initiator: string }> {
  const { spec, baseDir } = loadSpecFile(need(o.spec, '--spec FILE'));
  await preflightSources(spec, baseDir);
  const initiator = typeof o.as === 'string' ? o.as : defaultPrincipal();
  checkQuorumReachable(spec, initiator);
  return { spec, baseDir, initiator };
}

function identityCommands(dacp: Command): void {
  const principals = dacp
    .command('principals')
    .description("who may do what: operators start runs and schedules, approvers vote, auditors read and export (administrative: whoever reaches dacp's database)");
  principals
    .command('add')
    .description('add a principal with a role, or add a role to one')
    .argument('<name>', 'the principal')
    .option('--role <role>', 'operator, approver or auditor; repeat for several', (value: string, all: string[]) => [...all, value], [] as string[])
    .option('--json', 'as JSON')
    .action(async (name: string, o: Record<string, unknown>) => {
      const roles = o.role as string[];
      if (!roles.length) throw new InputError('missing --role operator|approver|auditor; see `dacp principals add --help`');
      const added = await withRegistry((ctx) => addPrincipal(ctx.admin, checkPrincipalName(name), roles.map(checkRole)));
      print(Boolean(o.json), added, () => `${added.name}: ${added.roles.join(', ')}${added.disabledAt ? ` (disabled since ${added.disabledAt})` : ''}${added.keys.some((k) => !k.revokedAt) ? '' : `; next: \`dacp keys init --as ${added.name}\``}`);
    });
  principals
    .command('list')
    .description('principals, their roles and keys')
    .option('--json', 'as JSON')
    .action(async (o: Options) => {
      const list = await withRegistry((ctx) => listPrincipals(ctx.pool));
      print(Boolean(o.json), list, () =>
        list.length
          ? list
              .map((p) => {
                const active = p.keys.filter((k) => !k.revokedAt).map((k) => k.keyId);
                return `${p.name.padEnd(20)} ${p.roles.join(',').padEnd(26)} ${p.disabledAt ? `disabled ${p.disabledAt}` : 'enabled'}  keys: ${active.join(', ') || 'none'}${p.keys.length > active.length ? ` (+${p.keys.length - active.length} revoked)` : ''}`;
              })
              .join('\n')
          : 'no principals yet; add one with `dacp principals add NAME --role operator|approver|auditor`',
      );
    });
  principals
    .command('disable')
    .description('a disabled principal keeps its history but can no longer act or vote')
    .argument('<name>', 'the principal')
    .action(async (name: string) => {
      const disabled = await withRegistry((ctx) => disablePrincipal(ctx.admin, name));
      console.log(`${disabled.name} disabled since ${disabled.disabledAt}`);
    });

  const keys = dacp.command('keys').description('your Ed25519 signing key: private in DACP_KEYS_DIR (default ~/.config/dacp/keys, 0600), public in the database');
  const describeChange = (c: KeyChange, verb: string) =>
    [
      c.keyId ? `${verb} key ${c.keyId} for ${c.principal}; private key in ${c.file} (0600), public key ${c.publicKey}` : `revoked ${c.revoked.join(', ')} of ${c.principal}`,
      ...(c.keyId && c.revoked.length ? [`revoked ${c.revoked.join(', ')}`] : []),
    ].join('\n');
  keys
    .command('init')
    .description('create your first key and register its public half')
    .option('--as <principal>', 'whose key')
    .option('--json', 'as JSON')
    .action(async (o: Options) => {
      const change = await withRegistry((ctx) => initKey(ctx.admin, need(o.as, '--as PRINCIPAL')));
      print(Boolean(o.json), change, () => describeChange(change, 'created'));
    });
  keys
    .command('rotate')
    .description('replace your key: the new one is registered, the old ones are revoked')
    .option('--as <principal>', 'whose key')
    .option('--json', 'as JSON')
    .action(async (o: Options) => {
      const change = await withRegistry((ctx) => rotateKey(ctx.admin, need(o.as, '--as PRINCIPAL')));
      print(Boolean(o.json), change, () => describeChange(change, 'rotated to'));
    });
  keys
    .command('revoke')
    .description('revoke a key (all active ones without --key-id): it signs nothing from now on')
    .option('--as <principal>', 'whose key')
    .option('--key-id <id>', 'only this key')
    .option('--reason <text>', 'why, kept with the key')
    .option('--json', 'as JSON')
    .action(async (o: Options) => {
      const change = await withRegistry((ctx) => revokeKey(ctx.admin, need(o.as, '--as PRINCIPAL'), { keyId: o.keyId as string | undefined, reason: o.reason as string | undefined }));
      print(Boolean(o.json), change, () => describeChange(change, 'revoked'));
    });
}

function tokenCommands(tokens: Command): void {
  tokens
    .command('create')
    .description('a bearer token for the HTTP API, for yourself: proven with your key, shown once, stored hashed')
    .option('--as <principal>', 'whose token')
    .option('--label <text>', 'what it is for')
    .option('--json', 'as JSON')
    .action((o: Options) =>
      withRegistry(async (ctx) => {
        const principal = need(o.as, '--as PRINCIPAL');
        await provenKey(ctx.pool, principal);
        const created = await createToken(ctx.admin, principal, typeof o.label === 'string' ? o.label : null);
        print(Boolean(o.json), { principal, ...created }, () => `token ${created.tokenId} for ${principal} (shown once; send it as Authorization: Bearer …):\n${created.token}`);
      }),
    );
  tokens
    .command('list')
    .description('your tokens (never the tokens themselves)')
    .option('--as <principal>', 'whose tokens')
    .option('--json', 'as JSON')
    .action((o: Options) =>
      withRegistry(async (ctx) => {
        const principal = need(o.as, '--as PRINCIPAL');
        await provenKey(ctx.pool, principal);
        const list = await listTokens(ctx.pool, principal);
        print(Boolean(o.json), list, () => (list.length ? list.map((t) => `${t.tokenId}  ${t.label ?? ''}  created ${t.createdAt}${t.revokedAt ? `  revoked ${t.revokedAt}` : ''}${t.lastUsedAt ? `  last used ${t.lastUsedAt}` : ''}`).join('\n') : 'no tokens'));
      }),
    );
  tokens
    .command('revoke')
    .description('revoke one of your tokens')
    .argument('<token-id>', 'the id `tokens list` shows')
    .option('--as <principal>', 'whose token')
    .action((tokenId: string, o: Options) =>
      withRegistry(async (ctx) => {
        const principal = need(o.as, '--as PRINCIPAL');
        await provenKey(ctx.pool, principal);
        await revokeToken(ctx.admin, principal, tokenId);
        console.log(`token ${tokenId} of ${principal} revoked`);
      }),
    );
}

function scheduleCommands(schedule: Command): void {
  schedule
    .command('create')
    .description('run a spec on a schedule: --every 7d, or --cron "0 3 * * 1"')
    .option('--spec <file>', 'the run spec (JSON)')
    .option('--every <duration>', 'an interval: 30m, 24h, 7d …')
    .option('--cron <expr>', 'a cron expression (UTC)')
    .option('--id <name>', 'the schedule id (default: the spec\'s name); each run is named <id>-<time>')
    .option('--as <principal>', 'who its runs are started as')
    .option('--overlap <policy>', 'when a firing finds the last run still going: skip, buffer-one, buffer-all, cancel-other, terminate-other, allow-all', 'skip')
    .option('--catchup-window <duration>', 'firings missed while Temporal was down are made up within this window', '1d')
    .option('--pause-on-failure', 'pause the schedule when a run fails')
    .option('--note <text>', 'a note shown with the schedule')
    .option('--json', 'as JSON')
    .action(async (o: Options) => {
      const { spec, baseDir, initiator } = await checkedSpec(o);
      const created = await withRuns((ctx) =>
        createSchedule(ctx, {
          spec, baseDir, initiator,
          id: o.id as string | undefined, every: o.every as string | undefined, cron: o.cron as string | undefined,
          overlap: o.overlap as string, catchupWindow: o.catchupWindow as string, pauseOnFailure: Boolean(o.pauseOnFailure),
          note: o.note as string | undefined,
        }),
      );
      const reads = created.reads === null ? '' : 'dataRoot' in created.reads
        ? `\neach firing reads the file sources from data root "${created.reads.dataRoot}", as each control worker's DACP_DATA_ROOTS maps it`
        : `\neach firing reads the file sources from ${created.reads.folder} on the control worker's host (name a data root in DACP_DATA_ROOTS to refer to it by name)`;
      print(Boolean(o.json), created, () => `schedule ${created.scheduleId} created; next runs: ${created.nextRuns.slice(0, 3).join(', ') || '–'}${reads}`);
    });
  schedule
    .command('list')
    .description('schedules, with their next firings and latest runs')
    .option('--json', 'as JSON')
    .action(async (o: Options) => {
      const list = await withRuns((ctx) => listSchedules(ctx));
      print(Boolean(o.json), list, () => (list.length ? list.map(formatSchedule).join('\n') : 'no schedules yet'));
    });
  schedule
    .command('describe')
    .description('one schedule: timing, policies, next firings, recent runs and their outcomes')
    .argument('<id>', 'schedule id')
    .option('--json', 'as JSON')
    .action(async (id: string, o: Options) => {
      const shown = await withRuns((ctx) => describeSchedule(ctx, id));
      print(Boolean(o.json), shown, () => formatSchedule(shown));
    });
  for (const pause of [true, false]) {
    schedule
      .command(pause ? 'pause' : 'unpause')
      .description(pause ? 'stop firing (runs already going go on)' : 'fire again')
      .argument('<id>', 'schedule id')
      .option('--note <text>', 'why (shown with the schedule)')
      .option('--as <principal>', 'who')
      .action(async (id: string, o: Options) => {
        const who = typeof o.as === 'string' ? o.as : defaultPrincipal();
        const note = `${pause ? 'paused' : 'unpaused'} by ${who}${typeof o.note === 'string' ? `: ${o.note}` : ''}`;
        await withRuns((ctx) => pauseSchedule(ctx, id, { pause, note, actor: who }));
        console.log(`schedule ${id} ${note}`);
      });
  }
  schedule
    .command('trigger')
    .description('fire once now (the run is named by the schedule and the time)')
    .argument('<id>', 'schedule id')
    .option('--as <principal>', 'who (an operator; default DACP_USER, then the OS user)')
    .action(async (id: string, o: Options) => {
      await withRuns((ctx) => triggerSchedule(ctx, id, { actor: typeof o.as === 'string' ? o.as : defaultPrincipal() }));
      console.log(`schedule ${id} fired; see \`dacp run list\``);
    });
  schedule
    .command('delete')
    .description('delete a schedule (its runs and their records stay)')
    .argument('<id>', 'schedule id')
    .option('--as <principal>', 'who (an operator; default DACP_USER, then the OS user)')
    .action(async (id: string, o: Options) => {
      await withRuns((ctx) => deleteSchedule(ctx, id, { actor: typeof o.as === 'string' ? o.as : defaultPrincipal() }));
      console.log(`schedule ${id} deleted`);
    });
}

function runCommands(run: Command): void {
  run
    .command('start')
    .description('start a run of a spec')
    .option('--spec <file>', 'the run spec (JSON)')
    .option('--id <id>', 'the run id (default: generated)')
    .option('--as <principal>', 'who starts it')
    .option('--wait', 'wait for the outcome')
    .option('--json', 'as JSON')
    .action(async (o: Options) => {
      const { spec, baseDir, initiator } = await checkedSpec(o);
      exitCode = await withRuns(async (ctx) => {
        const runId = await startRun(ctx, { spec, baseDir, runId: o.id as string | undefined, initiator });
        if (!o.wait) {
          print(Boolean(o.json), { runId }, () => runId);
          return 0;
        }
        let result: PipelineResult | undefined;
        try {
          result = await waitForResult(ctx.client, runId);
        } catch {
          // The run failed or was cancelled: its status says how.
        }
        const status = await runStatus(ctx, runId);
        print(Boolean(o.json), status, () => `${runId} ${status.state}${result?.versionId ? ` — deployed ${result.versionId}` : ''}`);
        return status.state === 'completed' ? 0 : 1;
      });
    });
  run
    .command('status')
    .description("a run's stage, progress, figures and gates")
    .argument('<id>', 'run id')
    .option('--json', 'as JSON')
    .action(async (id: string, o: Options) => {
      const status = await statusWithoutServer(checkRunId(id));
      print(Boolean(o.json), status, () => formatStatus(status));
    });
  run
    .command('list')
    .description('runs, newest first')
    .option('--json', 'as JSON')
    .action(async (o: Options) => {
      const runs = await withRuns((ctx) => listRuns(ctx));
      print(Boolean(o.json), runs, () =>
        runs.length === 0
          ? 'no runs yet'
          : runs
              .map((r) => `${r.runId.padEnd(44)} ${(r.state ?? r.status).padEnd(18)} ${(r.stage ?? '').padEnd(12)} ${r.startedAt}  ${r.initiator ?? '?'}${r.scheduleId ? `  (schedule ${r.scheduleId})` : ''}`)
              .join('\n'),
      );
    });
  run
    .command('cancel')
    .description('cancel a run (training stops at its next checkpoint)')
    .argument('<id>', 'run id')
    .action(async (id: string) => {
      const runId = checkRunId(id);
      await withRuns((ctx) => cancelRun(ctx, runId));
      console.log(`cancellation requested for run ${runId}`);
    });
  run
    .command('report')
    .description('one self-contained HTML file: data quality, training curves, both gates, instruction score, samples, votes, hashes')
    .argument('<id>', 'run id')
    .option('--out <file>', 'where to write it (default: ./<id>.report.html)')
    .action(async (id: string, o: Options) => {
      const runId = checkRunId(id);
      const out = path.resolve(typeof o.out === 'string' ? o.out : `${runId}.report.html`);
      const data = await withRegistry((ctx) => loadRunReport(ctx.pool, ctx.artifactsDir, runId));
      if (!data) throw new InputError(`no run with id ${runId} in the database; see \`dacp run list\``);
      writeFileSync(out, runReportHtml(data));
      console.log(`report of run ${runId} (${data.state}) written to ${out}`);
    });
}

/** The home's registry (database and artifacts), for the models commands. */
async function withRegistry<T>(fn: (ctx: { pool: import('pg').Pool; admin: import('pg').Pool; artifactsDir: string }) => Promise<T>): Promise<T> {
  const home = dacpHome();
  const db = await openDatabase(home);
  try {
    return await fn({ pool: db.pool, get admin() { return db.admin(); }, artifactsDir: artifactsDir(home) });
  } finally {
    await db.close();
  }
}

function modelCommands(models: Command): void {
  models
    .command('list')
    .description('registered versions, newest first')
    .option('--json', 'as JSON')
    .action((o: Options) =>
      withRegistry(async (ctx) => {
        const list = await listModels(ctx);
        print(Boolean(o.json), list, () => formatModels(list));
      }),
    );
  models
    .command('show')
    .description('one version: lineage back to the first base, datasets, evaluations, approvals, deploy history')
    .argument('<version>', 'a version id or an alias')
    .option('--json', 'as JSON')
    .action((ref: string, o: Options) =>
      withRegistry(async (ctx) => {
        const shown = await showModel(ctx, ref);
        print(Boolean(o.json), shown, () => formatModel(shown));
      }),
    );
  models
    .command('import')
    .description('register a local Hugging Face model folder (GPT-2 or Llama family)')
    .argument('<name>', 'the registry name')
    .option('--from <dir>', 'the model folder')
    .option('--alias <alias>', 'point this alias at it')
    .option('--json', 'as JSON')
    .action((name: string, o: Options) =>
      withRegistry(async (ctx) => {
        const result = await importModel(ctx, { name, from: need(o.from, '--from DIR'), ...(typeof o.alias === 'string' ? { alias: o.alias } : {}) });
        print(Boolean(o.json), result, () =>
          `${result.existed ? 'already imported as' : 'imported'} ${result.versionId} (${result.family}, ${result.parameters} parameters, stored ${result.dtype})${result.alias ? `; ${result.alias} → ${result.versionId} (was ${result.previousVersionId ?? 'unset'})` : ''}`,
        );
      }),
    );
  models
    .command('export')
    .description('write a registered model out as a Hugging Face folder')
    .argument('<version>', 'a version id or an alias')
    .option('--out <dir>', 'the folder to write')
    .option('--json', 'as JSON')
    .action((ref: string, o: Options) =>
      withRegistry(async (ctx) => {
        const result = await exportModel(ctx, { ref, out: need(o.out, '--out DIR') });
        print(Boolean(o.json), result, () => [`exported ${result.versionId} to ${result.out}, verified:`, ...Object.entries(result.files).map(([f, sha]) => `  ${f.padEnd(24)} sha256 ${sha}`)].join('\n'));
      }),
    );
  models
    .command('promote')
    .description('point an alias (production by default) at a version, atomically and audited')
    .argument('<version>', 'a version id')
    .option('--alias <alias>', 'the alias to move', 'production')
    .option('--as <principal>', 'who moves it')
    .option('--note <text>', 'why, kept in the history')
    .option('--json', 'as JSON')
    .action((versionId: string, o: Options) =>
      withRegistry(async (ctx) => {
        const moved = await promoteModel(ctx, { versionId, alias: o.alias as string, actor: need(o.as, '--as PRINCIPAL'), note: o.note as string | undefined });
        print(Boolean(o.json), moved, () => formatAliasMove(moved));
      }),
    );
  models
    .command('rollback')
    .description('point an alias back at the version it served before its last move')
    .option('--alias <alias>', 'the alias to move', 'production')
    .option('--as <principal>', 'who moves it')
    .option('--note <text>', 'why, kept in the history')
    .option('--json', 'as JSON')
    .action((o: Options) =>
      withRegistry(async (ctx) => {
        const moved = await rollbackAlias(ctx, { alias: o.alias as string, actor: need(o.as, '--as PRINCIPAL'), note: o.note as string | undefined });
        print(Boolean(o.json), moved, () => formatAliasMove(moved));
      }),
    );
}

async function main(argv: string[]): Promise<number> {
  const dacp = program();
  if (argv.length === 0) {
    dacp.outputHelp();
    return 0;
  }
  try {
    await dacp.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and version are not errors; anything else commander refused was already printed.
      return err.code === 'commander.helpDisplayed' || err.code === 'commander.help' || err.code === 'commander.version' ? 0 : 2;
    }
    throw err;
  }
  return exitCode;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    let message = err instanceof Error ? err.message : String(err);
    // The SDK's "Failed to start Workflow" and the like say why only in their cause.
    const cause = err instanceof Error ? (err.cause as Error | undefined) : undefined;
    if (cause?.message && !message.includes(cause.message)) message = `${message.split('\n')[0]}: ${cause.message}`;
    console.error(`dacp: ${message.split('\n')[0]}`);
    if (process.env.DACP_DEBUG && err instanceof Error) console.error(err.stack);
    process.exit(err instanceof InputError ? 2 : 1);
  },
);
