-- dacp initial schema: the domain records of a run. Workflow history lives in Temporal; these rows are
-- what approvers, auditors and the registry read. Every table that an activity may write twice (a
-- retried attempt) has a natural unique key, so repeated writes are no-ops.

CREATE TABLE runs (
  run_id        text PRIMARY KEY,
  workflow_id   text NOT NULL,
  spec          jsonb NOT NULL,
  spec_sha256   text NOT NULL,
  initiator     text NOT NULL,
  state         text NOT NULL CHECK (state IN ('running','awaiting_approval','completed','rejected','failed','cancelled')),
  stage         text NOT NULL CHECK (stage IN ('collect','quality','dacp','forgetting','instruct','approval','deploy')),
  error         text,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  finished_at   timestamptz
);

CREATE TABLE audit_log (
  id               bigserial PRIMARY KEY,
  run_id           text NOT NULL REFERENCES runs(run_id),
  idempotency_key  text NOT NULL UNIQUE,
  event            text NOT NULL,
  stage            text,
  actor            text NOT NULL,
  details          jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_run ON audit_log (run_id, id);

CREATE TABLE datasets (
  id          bigserial PRIMARY KEY,
  run_id      text NOT NULL REFERENCES runs(run_id),
  stage       text NOT NULL CHECK (stage IN ('collect','quality')),
  role        text NOT NULL CHECK (role IN ('domain','replay','instruct')),
  split       text NOT NULL CHECK (split IN ('train','heldout')),
  uri         text NOT NULL,
  sha256      text NOT NULL,
  docs        integer NOT NULL,
  bytes       bigint NOT NULL,
  tokens      bigint NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  UNIQUE (run_id, stage, role, split)
);

CREATE TABLE checkpoints (
  id          bigserial PRIMARY KEY,
  run_id      text NOT NULL REFERENCES runs(run_id),
  stage       text NOT NULL CHECK (stage IN ('dacp','instruct','bootstrap')),
  round       integer NOT NULL DEFAULT 0,
  step        integer NOT NULL,
  uri         text NOT NULL,
  sha256      text NOT NULL,
  bytes       bigint NOT NULL,
  loss        double precision,
  created_at  timestamptz NOT NULL DEFAULT now(),
  UNIQUE (run_id, stage, round, step)
);

CREATE TABLE metrics (
  id          bigserial PRIMARY KEY,
  run_id      text NOT NULL REFERENCES runs(run_id),
  stage       text NOT NULL,
  round       integer NOT NULL DEFAULT 0,
  step        integer NOT NULL,
  name        text NOT NULL,
  value       double precision NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  UNIQUE (run_id, stage, round, step, name)
);

CREATE TABLE evaluations (
  id          bigserial PRIMARY KEY,
  run_id      text NOT NULL REFERENCES runs(run_id),
  kind        text NOT NULL CHECK (kind IN ('forgetting','instruct')),
  round       integer NOT NULL DEFAULT 0,
  passed      boolean NOT NULL,
  report_uri  text NOT NULL,
  sha256      text NOT NULL,
  report      jsonb NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  UNIQUE (run_id, kind, round)
);

CREATE TABLE approvals (
  id          bigserial PRIMARY KEY,
  run_id      text NOT NULL REFERENCES runs(run_id),
  principal   text NOT NULL,
  decision    text NOT NULL CHECK (decision IN ('approve','reject')),
  comment     text,
  artifacts   jsonb NOT NULL,
  decided_at  timestamptz NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  UNIQUE (run_id, principal)
);

-- A model version never changes once written: lineage is evidence.
CREATE TABLE model_versions (
  version_id         text PRIMARY KEY,
  name               text NOT NULL,
  parent_version_id  text REFERENCES model_versions(version_id),
  run_id             text,
  uri                text NOT NULL,
  sha256             text NOT NULL,
  lineage            jsonb NOT NULL,
  metrics            jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION dacp_refuse_model_version_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'model_versions are immutable (version %)', OLD.version_id;
END $$;
CREATE TRIGGER model_versions_immutable BEFORE UPDATE OR DELETE ON model_versions
  FOR EACH ROW EXECUTE FUNCTION dacp_refuse_model_version_change();

CREATE TABLE model_aliases (
  alias       text PRIMARY KEY,
  version_id  text NOT NULL REFERENCES model_versions(version_id),
  updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE deployments (
  id                   bigserial PRIMARY KEY,
  run_id               text NOT NULL,
  alias                text NOT NULL,
  version_id           text NOT NULL REFERENCES model_versions(version_id),
  previous_version_id  text REFERENCES model_versions(version_id),
  created_at           timestamptz NOT NULL DEFAULT now(),
  UNIQUE (run_id, alias)
);
