-- Runs a schedule starts: which schedule (null for manual runs).
ALTER TABLE runs ADD COLUMN schedule_id text;
CREATE INDEX runs_schedule ON runs (schedule_id, created_at) WHERE schedule_id IS NOT NULL;

-- Watermarks: per schedule and source, how far collection has read. A scheduled run records the
-- watermark it would leave (run_watermarks) while it collects; the deploy that ends it successfully
-- advances the schedule's watermark (schedule_watermarks) in the same transaction, so a failed,
-- rejected or cancelled run never moves it.
CREATE TABLE run_watermarks (
  run_id       text NOT NULL REFERENCES runs(run_id),
  schedule_id  text NOT NULL,
  source_key   text NOT NULL,
  kind         text NOT NULL CHECK (kind IN ('files', 'postgres')),
  -- What this run started from (null: the first run of the schedule read everything) and where it ends.
  used         jsonb,
  -- The run whose success set `used` (null on a first run): the watermark advances only from there.
  used_run_id  text,
  next         jsonb NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (run_id, source_key)
);

CREATE TABLE schedule_watermarks (
  schedule_id  text NOT NULL,
  source_key   text NOT NULL,
  kind         text NOT NULL CHECK (kind IN ('files', 'postgres')),
  value        jsonb NOT NULL,
  run_id       text NOT NULL,
  updated_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (schedule_id, source_key)
);

-- The replay set a run trained on when it replays earlier updates' domain data ("mix").
ALTER TABLE datasets DROP CONSTRAINT datasets_stage_check;
ALTER TABLE datasets ADD CONSTRAINT datasets_stage_check CHECK (stage IN ('collect', 'quality', 'mix'));
