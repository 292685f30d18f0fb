import { z } from 'zod';
import { languageCode } from './languages';
import { domainMixes, formatDomainMix, normalizeDomainMix } from './candidates';

/**
 * The run specification: everything a user decides about one DACP run. Validated at the edge
 * (CLI, API, workflow start) and trusted inside. Every optional field has a default so that a spec
 * naming only its sources and approvers is complete.
 */

const roles = ['domain', 'replay', 'instruct'] as const;
export const SourceRole = z.enum(roles);

/**
 * A source's name: how `domainRatio` weights it against the run's other domain sources. Lowercase,
 * so that it reads the same in a spec, a status line and a file name.
 */
const SourceName = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,31}$/, 'a source name is 1–32 lowercase letters, digits, ".", "_" or "-"');

/**
 * In a scheduled run, whether this source is read only past the schedule's watermark (what earlier
 * successful runs collected). Default: yes for domain sources, no for instruct sources; replay
 * sources are a pool, read whole every time.
 */
const watermark = z.boolean().optional();

/** The languages a source's documents must be in (ISO 639-1 such as "en", "ko", "ja", or 639-3); others are removed by the quality stage. */
const languages = z
  .array(z.string().refine((code) => languageCode(code) !== null, { message: 'give a language dacp can identify, e.g. "en", "ko" or "ja" (ISO 639-1) or an ISO 639-3 code such as "deu"; docs/data-quality.md lists them' }))
  .min(1, 'list at least one language, or leave languages out')
  .optional();

const fileSource = z
  .object({
    kind: z.literal('files'),
    role: SourceRole,
    name: SourceName.optional(),
    languages,
    watermark,
    paths: z.array(z.string().min(1, 'a path must not be empty')).min(1, 'list at least one file or glob'),
    format: z.enum(['auto', 'text', 'jsonl']).default('auto'),
    textField: z.string().min(1).default('text'),
    promptField: z.string().min(1).default('prompt'),
    responseField: z.string().min(1).default('response'),
  })
  .strict();

const postgresSource = z
  .object({
    kind: z.literal('postgres'),
    role: SourceRole,
    name: SourceName.optional(),
    query: z.string().min(1, 'give the SELECT that returns the documents'),
    languages,
    watermark,
    /** The column a scheduled run reads past (e.g. updated_at): rows whose value exceeds the last successful run's maximum. */
    watermarkColumn: z
      .string()
      .regex(/^[A-Za-z_][A-Za-z0-9_]{0,62}$/, 'name one column of the query (letters, digits, "_"), e.g. updated_at')
      .optional(),
    textColumn: z.string().min(1).default('text'),
    promptColumn: z.string().min(1).default('prompt'),
    responseColumn: z.string().min(1).default('response'),
    /** Name of the environment variable holding the connection URL; the URL itself is a secret. */
    connectionEnv: z
      .string({ required_error: "name the environment variable that holds the source database's URL, e.g. SOURCE_DATABASE_URL (dacp's own database is never a source)" })
      .regex(/^[A-Z_][A-Z0-9_]*$/, 'name an environment variable (e.g. SOURCE_DATABASE_URL), not a URL')
      .refine((name) => !RESERVED_ENV.test(name), { message: "that is one of dacp's own variables; a source reads another database, named by a variable of its own (e.g. SOURCE_DATABASE_URL)" }),
  })
  .strict();

/** Objects in S3-compatible storage, read by whichever worker runs collect (with its AWS settings). */
const s3Source = z
  .object({
    kind: z.literal('s3'),
    role: SourceRole,
    name: SourceName.optional(),
    languages,
    watermark,
    bucket: z.string().regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'name the bucket only (3–63 lowercase letters, digits, "." or "-"), e.g. "corp-manuals"; the path inside goes in prefix'),
    /** Only keys below this folder-like prefix are read, e.g. "manuals/2026" (keys manuals/2026/…, never manuals/2026-old/…). */
    prefix: z.string().default(''),
    /** Which keys below the prefix: `*` within one level, `**` across levels (default: all). */
    glob: z.string().min(1, 'give a glob such as "**/*.md", or leave glob out to read every object below the prefix').default('**'),
    format: z.enum(['auto', 'text', 'jsonl']).default('auto'),
    textField: z.string().min(1).default('text'),
    promptField: z.string().min(1).default('prompt'),
    responseField: z.string().min(1).default('response'),
  })
  .strict();

export const SourceSpec = z.discriminatedUnion('kind', [fileSource, postgresSource, s3Source]);
export type SourceSpec = z.infer<typeof SourceSpec>;

const durationPattern = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/;
const unitMs: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };
/** Far beyond any sensible approval or heartbeat timeout; unbounded values would reach Temporal's timers unchecked. */
const maxDurationMs = 365 * unitMs.d;

/** A duration such as "90s", "15m", "24h" (at most 365d); stored as milliseconds. */
export const Duration = z
  .string()
  .regex(durationPattern, 'write a duration like "30s", "15m", "24h" or "7d"')
  .transform((text) => {
    const [, amount, unit] = durationPattern.exec(text) as RegExpExecArray;
    return Math.round(Number(amount) * unitMs[unit]);
  })
  .refine((ms) => ms >= 1_000, 'a duration must be at least 1s')
  .refine((ms) => ms <= maxDurationMs, 'a duration must be at most 365d');

export const TrainingSettings = z
  .object({
    steps: z.number().int().min(1).max(1_000_000),
    batchSize: z.number().int().min(1).max(4096),
    learningRate: z.number().positive().max(1),
    /** Re-warm: linear warm-up share of the steps (continual-pretraining practice: ~1 %). */
    warmupFraction: z.number().min(0).max(0.5).default(0.01),
    minLrRatio: z.number().min(0).max(1).default(0.1),
    weightDecay: z.number().min(0).max(1).default(0.01),
    gradClip: z.number().positive().max(1_000).default(1.0),
    checkpointEvery: z.number().int().min(1).max(1_000_000),
    seed: z.number().int().min(0).max(0xffff_ffff).default(1234),
  })
  .strict();
export type TrainingSettings = z.infer<typeof TrainingSettings>;

/** Instruction tuning: the training settings, plus general LM text mixed into its batches. */
export const InstructSettings = TrainingSettings.extend({
  /**
   * Share of each batch that is general (replay) text, trained as plain language modelling; the
   * rest are prompt/response pairs with the loss on the responses. Keeps SFT from erasing what
   * continual pretraining kept.
   */
  replayRatio: z.number().min(0).max(0.9, 'keep at least 10 % instruction pairs: instruct.replayRatio ≤ 0.9').default(0.2),
}).strict();
export type InstructSettings = z.infer<typeof InstructSettings>;

const ReplayRatio = z.number().min(0).max(0.95, 'keep at least 5 % domain data: replayRatio ≤ 0.95');

/**
 * How the domain share of each batch divides among the named domain sources: a weight per source
 * name (scaled to sum to 1), e.g. {"manuals": 0.7, "tickets": 0.3}.
 */
const DomainMix = z
  .record(SourceName, z.number().min(0, 'a domain weight is 0 or more').max(1_000), {
    invalid_type_error: 'give a weight per domain source name, e.g. {"manuals": 0.7, "tickets": 0.3}',
  })
  .refine((mix) => Object.values(mix).reduce((sum, w) => sum + w, 0) > 0, 'give at least one domain source a weight above 0');

/** At most this many candidates (replay ratios × domain mixes): each trains a model. */
export const MAX_CANDIDATES = 8;

/** Budgets on multiple-choice task accuracy (absolute points, 0.05 = 5 points), in both gates. */
const choiceBudgets = {
  /** The candidate's domain accuracy must rise at least this much over the model it is compared with. */
  minDomainAccuracyGain: z.number().min(-1).max(1).default(0),
  /** The candidate's general accuracy may fall at most this much. */
  maxGeneralAccuracyDrop: z.number().min(0).max(1).default(0.05),
};

export const ModelShape = z
  .object({
    contextLength: z.number().int().min(4).max(4096).default(64),
    dModel: z.number().int().min(8).max(4096).default(64),
    nLayers: z.number().int().min(1).max(64).default(2),
    nHeads: z.number().int().min(1).max(64).default(4),
  })
  .strict()
  .refine((m) => m.dModel % m.nHeads === 0, { message: 'dModel must be a multiple of nHeads', path: ['nHeads'] });

/**
 * Variables of dacp itself (its database, Temporal, its object storage credentials, its settings):
 * a spec never names them.
 */
export const RESERVED_ENV = /^(DATABASE_URL|PG[A-Z_]*|TEMPORAL_[A-Z0-9_]*|AWS_[A-Z0-9_]*|DACP_(?!TORCH_THREADS$|DETERMINISTIC$)[A-Z0-9_]*)$/;

const secretNames = z
  .array(
    z
      .string()
      .regex(/^[A-Z_][A-Z0-9_]*$/, 'environment variable names are UPPER_CASE')
      .refine((name) => !RESERVED_ENV.test(name), { message: "that is one of dacp's own variables (its database, Temporal, its object storage credentials, its settings), never handed to a trainer" }),
    {
      invalid_type_error:
        'list the names of variables the trainer takes from the gpu worker\'s environment, e.g. ["HF_TOKEN"]; values are secrets and never go in a spec',
    },
  )
  .default([]);

/**
 * Which engine trains: the built-in TensorFlow.js one, the Hugging Face one (transformers +
 * PyTorch, trainers/hf/), or any program speaking docs/trainer-protocol.md.
 */
export const EngineSpec = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('builtin') }).strict(),
  z
    .object({
      kind: z.literal('command'),
      /** argv of the trainer; `--job FILE` is appended. Relative paths resolve against the spec's folder. */
      command: z.array(z.string().min(1)).min(1, 'give the trainer command, e.g. ["python3", "my_trainer.py"]'),
      /**
       * Names of environment variables the trainer gets from the gpu worker's own environment (an
       * API token, say). Values never appear in a spec, so they never reach history, the database
       * or an audit bundle; each gpu worker that may run this engine must have them set.
       */
      env: secretNames,
      killGraceSeconds: z.number().min(1).max(600).default(10),
    })
    .strict(),
  z
    .object({
      kind: z.literal('hf'),
      /** LoRA adapters (peft) instead of full fine-tuning; merged into a plain model folder on export. */
      lora: z
        .object({
          r: z.number().int().min(1).max(1024),
          /** Scale numerator; 2 × r when absent. */
          alpha: z.number().positive().optional(),
          dropout: z.number().min(0).max(0.9).default(0),
          /** Module names to adapt; absent: the attention projections of the model's family. */
          targetModules: z.array(z.string().min(1)).min(1).optional(),
        })
        .strict()
        .optional(),
      /** Recompute activations in the backward pass: less memory, about a third more time. */
      gradientCheckpointing: z.boolean().default(false),
      /** auto: bf16 autocast on a CUDA GPU that has it, float32 elsewhere; bf16 fails without CUDA. */
      precision: z.enum(['auto', 'fp32', 'bf16']).default('auto'),
      /** Processes under torchrun (gloo on CPUs, nccl on GPUs); rank 0 speaks the protocol. */
      processes: z.number().int().min(1).max(64).default(1),
      /**
       * How the processes share the work: ddp (each holds the whole model) or fsdp (each holds a
       * shard of the weights, gradients and optimizer state: for a model that does not fit one device).
       */
      parallel: z.enum(['ddp', 'fsdp']).default('ddp'),
      env: secretNames,
      killGraceSeconds: z.number().min(1).max(600).default(30),
    })
    .strict(),
]);
export type EngineSpec = z.infer<typeof EngineSpec>;

export const RunSpec = z
  .object({
    /** Human name; also the registry name of the models this run produces. */
    name: z
      .string()
      .regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, 'use 1–63 lowercase letters, digits, ".", "_" or "-"')
      .default('dacp'),
    sources: z.array(SourceSpec).min(1, 'list at least one source'),
    /** Files sources may only read below these directories (relative to the spec file). */
    dataRoots: z.array(z.string().min(1)).optional(),
    heldoutFraction: z.number().min(0.01).max(0.5).default(0.1),
    baseModel: z
      .object({
        /** A model version id or an alias; `production` by default. */
        ref: z.string().min(1).default('production'),
        /** When the ref resolves to nothing, train a tiny base model on the replay (general) data first. */
        bootstrapIfMissing: z.boolean().default(false),
        /**
         * Which line of the resolved version a run continues: `pretrained` (default) continues
         * pretraining from the adapted model behind it and instructs again from there; `deployed`
         * continues from the served (instruction-tuned) model itself. A version with no adapted
         * model behind it (imported, bootstrapped) is its own start either way.
         */
        line: z.enum(['pretrained', 'deployed']).default('pretrained'),
        shape: ModelShape.default({}),
        /** The bootstrapped model's tokenizer, trained on the replay corpus; later stages keep it. */
        tokenizer: z
          .discriminatedUnion('kind', [
            z.object({ kind: z.literal('bpe'), vocabSize: z.number().int().min(260).max(65_536).default(512) }).strict(),
            z.object({ kind: z.literal('bytes') }).strict(),
          ])
          .default({ kind: 'bpe', vocabSize: 512 }),
        bootstrap: TrainingSettings.default({ steps: 300, batchSize: 16, learningRate: 3e-3, checkpointEvery: 100, warmupFraction: 0.05 }),
      })
      .strict()
      .default({}),
    /**
     * Share of each continual-pretraining batch that is replay (general) text. A list trains one
     * candidate per value, in parallel, and keeps the best under the gate's rule: the largest
     * domain gain whose general regression is within budget.
     */
    replayRatio: z
      .union([
        ReplayRatio,
        z
          .array(ReplayRatio)
          .min(1, 'list at least one replay ratio')
          .max(8, 'list at most 8 replay ratios; each trains a model')
          .refine((list) => new Set(list).size === list.length, 'list each replay ratio once'),
      ])
      .default(0.25),
    /**
     * Share of the replay documents drawn from the domain data of earlier updates (the datasets that
     * trained the base model's line, found by hash through the registry's lineage); the rest is the
     * general text of the replay sources. 0: general text only. Keeps what earlier updates taught.
     */
    replayFromEarlierUpdates: z.number().min(0).max(0.9, 'keep at least 10 % general text: replayFromEarlierUpdates ≤ 0.9').default(0),
    /**
     * Where a run mixes several domain sources: each one's share of the domain rows, by source
     * name. A list trains one candidate per mix (and per replay ratio), like a list of replay
     * ratios. Absent: the domain sources are one pool, each document as likely as any other.
     */
    domainRatio: z
      .union([
        DomainMix,
        z
          .array(DomainMix)
          .min(1, 'list at least one domain mix')
          .max(MAX_CANDIDATES, `list at most ${MAX_CANDIDATES} domain mixes; each trains a model`),
      ])
      .optional(),
    quality: z
      .object({
        minChars: z.number().int().min(0).max(100_000_000).default(20),
        maxChars: z.number().int().min(1).max(100_000_000).default(100_000),
        maxRepetitionRatio: z.number().min(0).max(1).default(0.5),
        maxSymbolRatio: z.number().min(0).max(1).default(0.3),
        redactPii: z.boolean().default(true),
        /**
         * Estimated Jaccard similarity of word 5-gram sets at or above which a later document is removed
         * as a near-duplicate of an earlier one; `null` turns near-duplicate removal off. Same default and
         * floor as ml/quality.ts (schemas import nothing but zod).
         */
        nearDuplicateThreshold: z
          .number()
          .min(0, 'nearDuplicateThreshold is a similarity between 0 and 1; use null to turn near-duplicate removal off')
          .max(1, 'nearDuplicateThreshold is a similarity between 0 and 1; use null to turn near-duplicate removal off')
          .nullable()
          .default(0.72),
        /**
         * The MinHash LSH index: `bands` × `rows` hashes (FineWeb's and datatrove's 14 × 8 by default).
         * More bands of fewer rows find less similar pairs, at more memory.
         */
        minhash: z
          .object({
            bands: z.number().int().min(1).max(64),
            rows: z.number().int().min(1).max(32),
          })
          .strict()
          .refine((m) => m.bands * m.rows <= 1024, { message: 'minhash: bands × rows must be at most 1024 hashes' })
          .default({ bands: 14, rows: 8 }),
        /**
         * Near-duplicate removal against the domain data earlier successful updates trained on.
         * Absent: a scheduled run's against its schedule's earlier successful runs, a manual run's
         * against none. \`{"schedule": ID}\`: against that schedule's; \`{"runs": [IDs]}\`: against
         * those completed runs; \`false\`: none.
         */
        dedupAgainst: z
          .union([
            z.literal(false),
            z
              .object({
                schedule: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'dedupAgainst.schedule: a schedule id (letters, digits, ".", "_" or "-")').optional(),
                runs: z.array(z.string().min(1).max(200)).min(1).max(1000).optional(),
              })
              .strict()
              .refine((d) => (d.schedule === undefined) !== (d.runs === undefined), { message: 'dedupAgainst: give either "schedule" or "runs", or false for none' }),
          ])
          .optional(),
        /**
         * Gopher's quality and repetition rules (datatrove's defaults, docs/data-quality.md): `{}` turns
         * them on with those defaults, a field overrides one (null turns that rule off); absent or null: off.
         * Same defaults as ml/heuristics.ts (schemas import nothing but zod).
         */
        heuristics: z
          .object({
            minWords: z.number().int().min(0).nullable().default(50),
            maxWords: z.number().int().min(1).nullable().default(100_000),
            minMeanWordLength: z.number().min(0).nullable().default(3),
            maxMeanWordLength: z.number().min(0).nullable().default(10),
            maxSymbolWordRatio: z.number().min(0).nullable().default(0.1),
            maxBulletLineRatio: z.number().min(0).max(1).nullable().default(0.9),
            maxEllipsisLineRatio: z.number().min(0).max(1).nullable().default(0.3),
            minAlphaWordRatio: z.number().min(0).max(1).nullable().default(0.8),
            minStopWords: z.number().int().min(0).nullable().default(2),
            maxDuplicateLineFraction: z.number().min(0).max(1).nullable().default(0.3),
            maxDuplicateParagraphFraction: z.number().min(0).max(1).nullable().default(0.3),
            maxDuplicateLineCharFraction: z.number().min(0).max(1).nullable().default(0.2),
            maxDuplicateParagraphCharFraction: z.number().min(0).max(1).nullable().default(0.2),
            /** For the most frequent 2-, 3- and 4-gram. */
            maxTopNgramCharFraction: z.tuple([z.number().min(0).max(1), z.number().min(0).max(1), z.number().min(0).max(1)]).nullable().default([0.2, 0.18, 0.16]),
            /** For duplicated 5- … 10-grams. */
            maxDuplicateNgramCharFraction: z
              .tuple([z.number().min(0).max(1), z.number().min(0).max(1), z.number().min(0).max(1), z.number().min(0).max(1), z.number().min(0).max(1), z.number().min(0).max(1)])
              .nullable()
              .default([0.15, 0.14, 0.13, 0.12, 0.11, 0.1]),
          })
          .strict()
          .nullable()
          .default(null),
        /**
         * For sources that list `languages`: how close (relative to the best guess, which scores 1) one of
         * them must come in franc's ranking for a document to stay. Same default as ml/language.ts.
         */
        minLanguageScore: z.number().min(0).max(1).default(0.8),
        /**
         * Each collected dataset is cut into parts of about this many MB (at most 256 parts), each a
         * separate activity that any control worker may take; a killed worker loses only the parts it
         * was on. One part: the stage is one activity, as before.
         */
        partMB: z.number().min(0.01, 'give at least 0.01 (MB of collected text per part)').max(65_536, 'give at most 65536 (MB of collected text per part)').default(64),
        /** Fewer surviving documents than this per role fails the run. */
        minDocs: z.number().int().min(1).max(100_000_000).default(10),
      })
      .strict()
      .refine((q) => q.minChars <= q.maxChars, { message: 'minChars must not exceed maxChars, or every document is removed', path: ['minChars'] })
      .superRefine((q, ctx) => {
        // The index must find at least half the pairs at the threshold, or it promises removals it cannot make.
        const { bands, rows } = q.minhash;
        const t = q.nearDuplicateThreshold;
        if (t === null) return;
        const recall = 1 - (1 - t ** rows) ** bands;
        if (recall < 0.5) {
          let lowest = t;
          while (lowest < 1 && 1 - (1 - lowest ** rows) ** bands < 0.5) lowest = Math.round((lowest + 0.01) * 100) / 100;
          ctx.addIssue({
            code: z.ZodIssueCode.custom,
            path: ['nearDuplicateThreshold'],
            message: `nearDuplicateThreshold ${t}: with ${bands} bands × ${rows} rows the index finds only ${Math.round(recall * 100)} % of pairs that similar; use ${lowest} or more, or more bands of fewer rows in quality.minhash (e.g. {"bands": 32, "rows": 4}, which goes down to 0.39)`,
          });
        }
      })
      .default({}),
    dacp: TrainingSettings.default({ steps: 200, batchSize: 16, learningRate: 1e-3, checkpointEvery: 25 }),
    forgetting: z
      .object({
        /** Largest allowed relative rise of general (held-out replay) perplexity, e.g. 0.15 = +15 %. */
        maxGeneralRegression: z.number().min(0).max(10).default(0.15),
        /** Smallest required relative fall of domain perplexity, e.g. 0.05 = −5 %. */
        minDomainGain: z.number().min(-1).max(1).default(0.05),
        onFail: z.enum(['fail', 'retry-with-more-replay']).default('retry-with-more-replay'),
        maxRetries: z.number().int().min(0).max(5).default(1),
        replayIncrement: z.number().positive().max(0.5).default(0.2),
        maxEvalWindows: z.number().int().min(1).max(100_000).default(64),
        ...choiceBudgets,
        /**
         * The gate again, on the candidate that would ship (after instruction tuning), against the
         * production model it would replace, or the base on a first run. A candidate that fails it
         * is never offered for approval; `retry-with-more-replay` tunes again with
         * `instruct.replayRatio + replayIncrement`.
         */
        final: z
          .object({
            maxGeneralRegression: z.number().min(0).max(10).default(0.25),
            minDomainGain: z.number().min(-1).max(1).default(0),
            /** Largest allowed relative fall of instruction token accuracy, e.g. 0.1 = −10 %. */
            maxInstructionRegression: z.number().min(0).max(1).default(0.1),
            ...choiceBudgets,
            /** Against production, a non-inferiority margin: the new update may not lose more than 5 points of domain accuracy. */
            minDomainAccuracyGain: z.number().min(-1).max(1).default(-0.05),
            onFail: z.enum(['fail', 'retry-with-more-replay']).default('retry-with-more-replay'),
            maxRetries: z.number().int().min(0).max(5).default(1),
            replayIncrement: z.number().positive().max(0.5).default(0.2),
          })
          .strict()
          .default({}),
      })
      .strict()
      .default({}),
    /** Held-out task sets: multiple-choice questions, scored by log-likelihood in both gates. */
    evaluation: z
      .object({
        choices: z
          .object({
            /** JSONL of {question, choices, answer} (answer: the right choice's index or text), relative to the spec. */
            domain: z.string().min(1).optional(),
            general: z.string().min(1).optional(),
          })
          .strict()
          .default({}),
        /** Questions scored per set and model; the first ones of the file. */
        maxChoiceItems: z.number().int().min(1).max(100_000).default(200),
      })
      .strict()
      .default({}),
    instruct: InstructSettings.default({ steps: 100, batchSize: 16, learningRate: 1e-3, checkpointEvery: 25 }),
    approval: z
      .object({
        approvers: z.array(z.string().regex(/^[A-Za-z0-9._-][A-Za-z0-9._@-]{0,63}$/, 'a principal is 1–64 letters, digits or . _ @ -, not starting with @')).min(1, 'name at least one approver'),
        quorum: z.number().int().min(1).max(1_000).default(1),
        timeout: Duration.default('24h'),
        /**
         * A scheduled run still waiting here when a newer run of its schedule reaches its own gate
         * ends `superseded`; false keeps both requests open.
         */
        supersede: z.boolean().default(true),
        /** A reminder to the approvers who have not voted, this often while the gate is open (e.g. "4h"). */
        remindEvery: Duration.optional(),
        /** After this long without a decision, these approvers may vote too and are notified. */
        escalation: z
          .object({
            after: Duration,
            approvers: z.array(z.string().regex(/^[A-Za-z0-9._-][A-Za-z0-9._@-]{0,63}$/, 'a principal is 1–64 letters, digits or . _ @ -, not starting with @')).min(1, 'name at least one approver to escalate to'),
          })
          .strict()
          .optional(),
      })
      .strict()
      .refine((a) => a.quorum <= new Set(a.approvers).size, {
        message: 'quorum cannot exceed the number of distinct approvers',
        path: ['quorum'],
      })
      .refine((a) => a.remindEvery === undefined || a.remindEvery < a.timeout, {
        message: 'remindEvery must be shorter than timeout, or no reminder is ever sent',
        path: ['remindEvery'],
      })
      .refine((a) => a.escalation === undefined || a.escalation.after < a.timeout, {
        message: 'escalation.after must be shorter than timeout (the gate rejects at its timeout)',
        path: ['escalation', 'after'],
      }),
    deploy: z
      .object({
        alias: z.string().regex(/^[a-z][a-z0-9-]{0,31}$/, 'an alias is lowercase letters, digits and "-"').default('production'),
        /**
         * After the deploy, the deployed version is loaded and asked a few prompts through the code
         * `dacp serve` uses. If it cannot load, fails to generate (an error, non-finite logits), an
         * answer lacks `expect`, or (with `requireAnswers`) every answer is empty, the alias goes
         * back to the version it served before and the run ends `rolled_back`.
         */
        smoke: z
          .object({
            enabled: z.boolean().default(true),
            /** Absent: the first three held-out instruction prompts. */
            prompts: z.array(z.string().min(1)).min(1).max(16).optional(),
            maxNewTokens: z.number().int().min(1).max(256).default(16),
            /** Text every answer must contain (a canary the deployed model must know). */
            expect: z.string().min(1).optional(),
            /** Also fail when every answer is empty (the model ends its answer at once). */
            requireAnswers: z.boolean().default(false),
          })
          .strict()
          .default({}),
      })
      .strict()
      .default({}),
    engine: EngineSpec.default({ kind: 'builtin' }),
    checkpoints: z
      .object({
        /** Checkpoints kept per training stage: the newest `keepLast`, plus the lowest-loss one. */
        keepLast: z.number().int().min(1).max(1000).default(3),
        keepBest: z.boolean().default(true),
      })
      .strict()
      .default({}),
    /** How long a light (control) activity may go without a heartbeat, e.g. after its worker was killed. */
    controlHeartbeatTimeout: Duration.default('2m'),
    /** How long a training attempt may go without a heartbeat before Temporal retries it elsewhere. */
    heartbeatTimeout: Duration.default('20s'),
  })
  .strict()
  .superRefine((spec, ctx) => {
    for (const role of ['domain', 'replay', 'instruct'] as const) {
      if (!spec.sources.some((s) => s.role === role)) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['sources'], message: `add a source with role "${role}"` });
      }
    }
    const names = new Map<string, number>();
    for (const [index, source] of spec.sources.entries()) {
      if (source.name === undefined) continue;
      if (names.has(source.name)) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['sources', index, 'name'], message: `"${source.name}" also names sources[${names.get(source.name)}]; give each source its own name` });
      }
      names.set(source.name, index);
    }
    for (const [index, source] of spec.sources.entries()) {
      if (source.role === 'replay' && source.watermark === true) {
        ctx.addIssue({
          code: z.ZodIssueCode.custom,
          path: ['sources', index, 'watermark'],
          message: 'a replay source is a pool of general text, read whole by every run; remove watermark (it applies to domain and instruct sources)',
        });
      }
    }
    if (spec.domainRatio !== undefined) checkDomainRatio(spec, ctx);
    if (spec.engine.kind === 'hf') {
      for (const stage of ['dacp', 'instruct'] as const) {
        if (spec[stage].batchSize < spec.engine.processes) {
          ctx.addIssue({
            code: z.ZodIssueCode.custom,
            path: [stage, 'batchSize'],
            message: `${spec[stage].batchSize} rows cannot be shared among engine.processes ${spec.engine.processes}: each process needs at least one row; raise batchSize or lower processes`,
          });
        }
      }
    }
    if (spec.engine.kind === 'hf' && spec.engine.parallel === 'fsdp' && spec.engine.processes < 2) {
      ctx.addIssue({
        code: z.ZodIssueCode.custom,
        path: ['engine', 'parallel'],
        message: 'fsdp shards the model across processes, and engine.processes is 1; set processes to the number of GPUs to shard over (2 or more), or leave parallel at ddp',
      });
    }
    const candidates = replayRatios(spec).length * domainMixes(spec).length;
    if (candidates > MAX_CANDIDATES) {
      ctx.addIssue({
        code: z.ZodIssueCode.custom,
        path: ['domainRatio'],
        message: `${replayRatios(spec).length} replay ratios × ${domainMixes(spec).length} domain mixes make ${candidates} candidates; at most ${MAX_CANDIDATES}, as each trains a model`,
      });
    }
  });

/** Every domain source is named, and every mix weighs exactly those names. */
function checkDomainRatio(spec: { sources: SourceSpec[]; domainRatio?: Record<string, number> | Record<string, number>[] }, ctx: z.RefinementCtx): void {
  const domain = spec.sources.map((source, index) => ({ source, index })).filter(({ source }) => source.role === 'domain');
  if (domain.length < 2) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['domainRatio'], message: 'domainRatio weighs several domain sources; add a second one, or remove domainRatio' });
    return;
  }
  const unnamed = domain.filter(({ source }) => source.name === undefined);
  for (const { index } of unnamed) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['sources', index, 'name'], message: 'domainRatio weighs domain sources by name; give this one a "name"' });
  }
  if (unnamed.length) return;
  const names = domain.map(({ source }) => source.name as string);
  const mixes = Array.isArray(spec.domainRatio) ? spec.domainRatio : [spec.domainRatio as Record<string, number>];
  for (const [i, mix] of mixes.entries()) {
    const where = Array.isArray(spec.domainRatio) ? ['domainRatio', i] : ['domainRatio'];
    const unknown = Object.keys(mix).filter((key) => !names.includes(key));
    const missing = names.filter((name) => !Object.hasOwn(mix, name));
    if (unknown.length) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, path: where, message: `${unknown.map((n) => `"${n}"`).join(', ')} names no domain source; the domain sources are ${names.map((n) => `"${n}"`).join(', ')}` });
    }
    if (missing.length) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, path: where, message: `give ${missing.map((n) => `"${n}"`).join(', ')} a weight too (0 leaves a source out)` });
    }
  }
  // Compared as status lines and the trade-off table print them (shares to two decimals), so no two candidates read the same.
  const keys = mixes.map((mix) => formatDomainMix(normalizeDomainMix(mix)));
  if (new Set(keys).size !== keys.length) {
    ctx.addIssue({
      code: z.ZodIssueCode.custom,
      path: ['domainRatio'],
      message: 'list each domain mix once: mixes with proportional weights, or shares equal to two decimals, are the same mix',
    });
  }
}

/** A spec as written by a user (defaults not yet applied). */
export type RunSpecInput = z.input<typeof RunSpec>;
/** A validated spec with every default applied. This is what travels into the workflow. */
export type RunSpec = z.output<typeof RunSpec>;

/** Thrown for any invalid user input; `problems` lists every wrong field. */
export class InputError extends Error {
  constructor(
    message: string,
    readonly problems: string[] = [],
  ) {
    super(message);
    this.name = 'InputError';
  }
}

export function describeIssues(error: z.ZodError): string[] {
  return error.issues.map((issue) => {
    const where = issue.path.length ? issue.path.join('.') : '(top level)';
    if (issue.code === z.ZodIssueCode.unrecognized_keys) {
      return `${where}: unknown field(s) ${issue.keys.map((k) => `"${k}"`).join(', ')} — remove them or check the spelling`;
    }
    return `${where}: ${issue.message}`;
  });
}

/** Validate a spec; on failure the error names every wrong field and what to do. */
export function parseRunSpec(input: unknown, origin = 'spec'): RunSpec {
  const result = RunSpec.safeParse(input);
  if (!result.success) {
    const problems = describeIssues(result.error);
    throw new InputError(`${origin} is invalid: ${problems.join('; ')}`, problems);
  }
  return result.data;
}

/** The replay ratios a spec trains candidates for (one, or a list). */
export function replayRatios(spec: Pick<RunSpec, 'replayRatio'>): number[] {
  return Array.isArray(spec.replayRatio) ? spec.replayRatio : [spec.replayRatio];
}

/** Whether a scheduled run reads `source` only past its watermark: domain sources by default, instruct sources where asked, replay never. */
export function usesWatermark(source: SourceSpec): boolean {
  if (source.role === 'replay') return false;
  return source.watermark ?? source.role === 'domain';
}

/**
 * The sources a schedule cannot watermark as written: a Postgres domain (or watermarked instruct)
 * source needs the column that orders its rows. Checked when a schedule is created.
 */
export function watermarkProblems(spec: RunSpec): string[] {
  return spec.sources.flatMap((source, index) =>
    source.kind === 'postgres' && usesWatermark(source) && source.watermarkColumn === undefined
      ? [`sources[${index}].watermarkColumn: a scheduled run collects only rows that are new since the last successful run; name the column that orders them (e.g. "updated_at"), or set watermark: false to read the whole query every time`]
      : [],
  );
}
