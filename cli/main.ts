import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { Client } from '@temporalio/client';
import type { PipelineResult } from '../schemas/pipeline';
import { InputError } from '../schemas/runSpec';
import { approvalView, formatApprovalView } from './approval';
import { exportAudit, verifyAudit } from './audit';
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
import { artifactsDir, openDatabase, startLocalServer, startWorkers } from './runtime';
import { exportModel, formatModels, importModel, listModels } from './models';
import { formatStatus, type RunContext } from './status';

const USAGE = `dacp — durable domain-adaptive continual pretraining on Temporal

  dacp demo [--prepare DIR] [--base DIR]
                                       the whole lifecycle on generated demo data (embedded engine + DB);
                                       --base adapts your own Hugging Face model folder (GPT-2 or Llama family)
  dacp dev                             dev server + both workers, foreground
  dacp server                          dev server (+ embedded Postgres without DATABASE_URL), foreground
  dacp worker --queue control|gpu      one worker, foreground
  dacp migrate                         apply database migrations
  dacp run start --spec FILE [--id ID] [--as PRINCIPAL] [--wait] [--json]
  dacp run status ID [--json]
  dacp run list [--json]
  dacp run cancel ID
  dacp approval show ID [--json]       what approvers vote on: hashes, reports, samples, votes, time left
  dacp approve ID --as PRINCIPAL [--comment TEXT]
  dacp reject ID --as PRINCIPAL --reason TEXT [--comment TEXT]
  dacp audit export ID [--out FILE]
  dacp audit verify FILE
  dacp models list [--json]            registered versions, newest first
  dacp models import NAME --from DIR [--alias ALIAS] [--json]
                                       register a local Hugging Face model folder (GPT-2 or Llama family)
  dacp models export VERSION|ALIAS --out DIR [--json]
                                       write a registered model out as a Hugging Face folder

State directory: DACP_HOME (default ./.dacp). Temporal: TEMPORAL_ADDRESS (default: the project's dev
server on 127.0.0.1:DACP_TEMPORAL_PORT, 7233). Database: DATABASE_URL (default: embedded PostgreSQL).`;

type Flags = Record<string, string | boolean | undefined>;

function parse(args: string[], options: Record<string, { type: 'string' | 'boolean' }>): { flags: Flags; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args, options, allowPositionals: true, strict: true });
    return { flags: values as Flags, positionals };
  } catch (err) {
    throw new InputError(`${(err as Error).message.split('\n')[0]}; see \`dacp --help\``);
  }
}

function need(value: string | boolean | undefined, what: string): string {
  if (typeof value !== 'string' || value.length === 0) throw new InputError(`missing ${what}; see \`dacp --help\``);
  return value;
}

function onePositional(positionals: string[], what: string): string {
  if (positionals.length !== 1) throw new InputError(`expected exactly one ${what}, got ${positionals.length}; see \`dacp --help\``);
  return positionals[0];
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

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      console.log(USAGE);
      return 0;

    case 'demo': {
      const { flags } = parse(rest, { prepare: { type: 'string' }, base: { type: 'string' } });
      if (flags.prepare !== undefined) {
        const spec = prepareDemo(path.resolve(need(flags.prepare, '--prepare DIR')));
        console.log(`demo data and spec written: ${spec}`);
        return 0;
      }
      const result = await runDemo(console.log, flags.base !== undefined ? { base: path.resolve(need(flags.base, '--base DIR')) } : {});
      return result.state === 'completed' ? 0 : 1;
    }

    case 'server':
      parse(rest, {});
      await serve(false);
      return 0;

    case 'dev':
      parse(rest, {});
      await serve(true);
      return 0;

    case 'worker': {
      const { flags } = parse(rest, { queue: { type: 'string' } });
      const queue = need(flags.queue, '--queue control|gpu');
      if (queue !== 'control' && queue !== 'gpu') throw new InputError(`--queue must be control or gpu, not "${queue}"`);
      const db = await openDatabase();
      try {
        const workers = await startWorkers([queue], db);
        console.log(`worker: dacp-${queue} polling ${temporalSettings().address}`);
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
      return 0;
    }

    case 'migrate': {
      parse(rest, {});
      const db = await openDatabase();
      await db.close();
      console.log('migrations applied');
      return 0;
    }

    case 'run':
      return runCommand(rest);

    case 'approval': {
      const [sub, ...args] = rest;
      if (sub !== 'show') throw new InputError('usage: dacp approval show ID [--json]');
      const { flags, positionals } = parse(args, { json: { type: 'boolean' } });
      const runId = checkRunId(onePositional(positionals, 'run id'));
      const view = await withClient((client) => approvalView(client, runId, { artifactsDir: artifactsDir() }));
      print(Boolean(flags.json), view, () => formatApprovalView(view));
      return 0;
    }

    case 'approve':
    case 'reject': {
      const { flags, positionals } = parse(rest, { as: { type: 'string' }, comment: { type: 'string' }, reason: { type: 'string' } });
      const runId = checkRunId(onePositional(positionals, 'run id'));
      const principal = need(flags.as, '--as PRINCIPAL');
      const reason = command === 'reject' ? need(flags.reason, '--reason TEXT') : undefined;
      const outcome = await withClient((client) =>
        decide(client, { runId, principal, decision: command, comment: flags.comment as string | undefined, reason }),
      );
      console.log(
        command === 'approve'
          ? `approved run ${runId} as ${principal}${outcome.quorum ? ` (${outcome.approvals} of ${outcome.quorum})` : ''}`
          : `rejected run ${runId} as ${principal}`,
      );
      return 0;
    }

    case 'audit': {
      const [sub, ...args] = rest;
      if (sub === 'export') {
        const { flags, positionals } = parse(args, { out: { type: 'string' } });
        const runId = checkRunId(onePositional(positionals, 'run id'));
        const db = await openDatabase();
        try {
          const bundle = await withClient((client) => exportAudit(client, db.pool, runId));
          const text = JSON.stringify(bundle, null, 2) + '\n';
          if (typeof flags.out === 'string') {
            writeFileSync(flags.out, text);
            console.log(`audit bundle for ${runId} written to ${flags.out} (sha256 ${bundle.sha256})`);
          } else {
            process.stdout.write(text);
          }
        } finally {
          await db.close();
        }
        return 0;
      }
      if (sub === 'verify') {
        const { positionals } = parse(args, {});
        const file = onePositional(positionals, 'bundle file');
        let bundle: unknown;
        try {
          bundle = JSON.parse(readFileSync(file, 'utf8'));
        } catch (err) {
          throw new InputError(`cannot read audit bundle ${file}: ${(err as Error).message.split('\n')[0]}`);
        }
        const verdict = verifyAudit(bundle);
        console.log(verdict.ok ? `audit bundle ${file}: verified` : `audit bundle ${file}: NOT verified — ${verdict.problems.join('; ')}`);
        return verdict.ok ? 0 : 1;
      }
      throw new InputError('usage: dacp audit export ID [--out FILE] | dacp audit verify FILE');
    }

    case 'models': {
      const [sub, ...args] = rest;
      const usage = 'usage: dacp models list [--json] | dacp models import NAME --from DIR [--alias ALIAS] | dacp models export VERSION|ALIAS --out DIR';
      if (!['list', 'import', 'export'].includes(sub ?? '')) throw new InputError(usage);
      const options = { json: { type: 'boolean' }, from: { type: 'string' }, alias: { type: 'string' }, out: { type: 'string' } } as const;
      const { flags, positionals } = parse(args, sub === 'list' ? { json: options.json } : sub === 'import' ? { json: options.json, from: options.from, alias: options.alias } : { json: options.json, out: options.out });
      const home = dacpHome();
      const db = await openDatabase(home);
      const ctx = { pool: db.pool, artifactsDir: artifactsDir(home) };
      try {
        if (sub === 'list') {
          const models = await listModels(ctx);
          print(Boolean(flags.json), models, () => formatModels(models));
        } else if (sub === 'import') {
          const name = onePositional(positionals, 'model name');
          const result = await importModel(ctx, { name, from: need(flags.from, '--from DIR'), ...(typeof flags.alias === 'string' ? { alias: flags.alias } : {}) });
          print(Boolean(flags.json), result, () =>
            `${result.existed ? 'already imported as' : 'imported'} ${result.versionId} (${result.family}, ${result.parameters} parameters, stored ${result.dtype})${result.alias ? `; ${result.alias} → ${result.versionId} (was ${result.previousVersionId ?? 'unset'})` : ''}`,
          );
        } else {
          const ref = onePositional(positionals, 'model version or alias');
          const result = await exportModel(ctx, { ref, out: need(flags.out, '--out DIR') });
          print(Boolean(flags.json), result, () => [`exported ${result.versionId} to ${result.out}, verified:`, ...Object.entries(result.files).map(([f, sha]) => `  ${f.padEnd(24)} sha256 ${sha}`)].join('\n'));
        }
      } finally {
        await db.close();
      }
      return 0;
    }

    default:
      throw new InputError(`unknown command "${command}"; see \`dacp --help\``);
  }
}

async function runCommand(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'start': {
      const { flags } = parse(rest, {
        spec: { type: 'string' },
        id: { type: 'string' },
        as: { type: 'string' },
        wait: { type: 'boolean' },
        json: { type: 'boolean' },
      });
      const { spec, baseDir } = loadSpecFile(need(flags.spec, '--spec FILE'));
      await preflightSources(spec, baseDir);
      const initiator = typeof flags.as === 'string' ? flags.as : defaultPrincipal();
      checkQuorumReachable(spec, initiator);
      return withRuns(async (ctx) => {
        const runId = await startRun(ctx, { spec, baseDir, runId: flags.id as string | undefined, initiator });
        if (!flags.wait) {
          print(Boolean(flags.json), { runId }, () => runId);
          return 0;
        }
        let result: PipelineResult | undefined;
        try {
          result = await waitForResult(ctx.client, runId);
        } catch {
          // The run failed or was cancelled: its status says how.
        }
        const status = await runStatus(ctx, runId);
        print(Boolean(flags.json), status, () => `${runId} ${status.state}${result?.versionId ? ` — deployed ${result.versionId}` : ''}`);
        return status.state === 'completed' ? 0 : 1;
      });
    }
    case 'status': {
      const { flags, positionals } = parse(rest, { json: { type: 'boolean' } });
      const runId = checkRunId(onePositional(positionals, 'run id'));
      const status = await statusWithoutServer(runId);
      print(Boolean(flags.json), status, () => formatStatus(status));
      return 0;
    }
    case 'list': {
      const { flags } = parse(rest, { json: { type: 'boolean' } });
      const runs = await withClient((client) => listRuns(client));
      print(Boolean(flags.json), runs, () =>
        runs.length === 0 ? 'no runs yet' : runs.map((r) => `${r.runId.padEnd(40)} ${(r.state ?? r.status).padEnd(18)} ${r.stage ?? ''}`).join('\n'),
      );
      return 0;
    }
    case 'cancel': {
      const { positionals } = parse(rest, {});
      const runId = checkRunId(onePositional(positionals, 'run id'));
      await withRuns((ctx) => cancelRun(ctx, runId));
      console.log(`cancellation requested for run ${runId}`);
      return 0;
    }
    default:
      throw new InputError('usage: dacp run start|status|list|cancel …; see `dacp --help`');
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    const message = err instanceof Error ? err.message : String(err);
    console.error(`dacp: ${message.split('\n')[0]}`);
    if (process.env.DACP_DEBUG && err instanceof Error) console.error(err.stack);
    process.exit(err instanceof InputError ? 2 : 1);
  },
);
