-- One run id, one run: the Temporal execution that owns a run id is recorded with it, so a second
-- execution under the same id can never reuse the first one's records. The deploy alias's target at
-- the start of the run is kept for the deploy's compare-and-swap. The run's stage figures are kept on
-- its row, so `dacp run status` answers from the database with no worker running.
ALTER TABLE runs ADD COLUMN execution_id text;
ALTER TABLE runs ADD COLUMN deploy_alias text;
ALTER TABLE runs ADD COLUMN alias_at_start text;
ALTER TABLE runs ADD COLUMN metrics jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE runs ADD COLUMN stage_seconds jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Nothing is written for a run after its terminal state: a trainer or a retried activity that
-- outlived its run (a zombie attempt) is refused. An audit entry for a run that has ended is
-- dropped quietly instead, so that the retry of the very transition that ended the run stays a
-- no-op rather than an error.
CREATE FUNCTION dacp_refuse_write_after_end() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  ended text;
BEGIN
  IF TG_TABLE_NAME = 'audit_log' THEN
    -- No row lock here: the transition that ends a run inserts its audit entry and then updates the
    -- run in one transaction, and two such transactions must not deadlock on a shared lock.
    SELECT state INTO ended FROM runs
     WHERE run_id = NEW.run_id AND state IN ('completed', 'rejected', 'failed', 'cancelled');
    IF ended IS NULL THEN
      RETURN NEW;
    END IF;
    RETURN NULL;
  END IF;
  -- A share lock waits for a transition that is ending the run right now, then sees its outcome.
  SELECT state INTO ended FROM runs WHERE run_id = NEW.run_id FOR SHARE;
  IF ended IS NULL OR ended NOT IN ('completed', 'rejected', 'failed', 'cancelled') THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'run % has ended (%); nothing is written to % after a run has ended', NEW.run_id, ended, TG_TABLE_NAME
    USING ERRCODE = 'P0001', HINT = 'dacp_run_ended';
END $$;

CREATE TRIGGER checkpoints_after_end BEFORE INSERT OR UPDATE ON checkpoints
  FOR EACH ROW EXECUTE FUNCTION dacp_refuse_write_after_end();
CREATE TRIGGER metrics_after_end BEFORE INSERT OR UPDATE ON metrics
  FOR EACH ROW EXECUTE FUNCTION dacp_refuse_write_after_end();
CREATE TRIGGER datasets_after_end BEFORE INSERT ON datasets
  FOR EACH ROW EXECUTE FUNCTION dacp_refuse_write_after_end();
CREATE TRIGGER evaluations_after_end BEFORE INSERT ON evaluations
  FOR EACH ROW EXECUTE FUNCTION dacp_refuse_write_after_end();
CREATE TRIGGER approvals_after_end BEFORE INSERT ON approvals
  FOR EACH ROW EXECUTE FUNCTION dacp_refuse_write_after_end();
CREATE TRIGGER audit_log_after_end BEFORE INSERT ON audit_log
  FOR EACH ROW EXECUTE FUNCTION dacp_refuse_write_after_end();

-- Run specs, by the sha256 of their exact JSON text. The workflow carries only the reference
-- (`postgres:run_specs/<sha256>`); every worker, on any host, reads the same bytes from here.
CREATE TABLE run_specs (
  sha256      text PRIMARY KEY,
  body        text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);

-- The gate on what ships: its own stage and its own evaluations, and the replay trade-off report.
ALTER TABLE runs DROP CONSTRAINT runs_stage_check;
ALTER TABLE runs ADD CONSTRAINT runs_stage_check
  CHECK (stage IN ('collect','quality','dacp','forgetting','instruct','final_check','approval','deploy'));
ALTER TABLE evaluations DROP CONSTRAINT evaluations_kind_check;
ALTER TABLE evaluations ADD CONSTRAINT evaluations_kind_check
  CHECK (kind IN ('forgetting','instruct','final_check','tradeoff'));
