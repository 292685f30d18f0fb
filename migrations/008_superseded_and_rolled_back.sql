-- Two more ways a run ends: superseded (a newer run of its schedule reached the gate while it
-- waited there) and rolled_back (its deploy failed the smoke test and the alias went back).
ALTER TABLE runs DROP CONSTRAINT runs_state_check;
ALTER TABLE runs ADD CONSTRAINT runs_state_check
  CHECK (state IN ('running', 'awaiting_approval', 'completed', 'rejected', 'failed', 'cancelled', 'superseded', 'rolled_back'));

CREATE OR REPLACE FUNCTION dacp_refuse_write_after_end() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  ended text;
BEGIN
  IF TG_TABLE_NAME = 'audit_log' THEN
    SELECT state INTO ended FROM runs
     WHERE run_id = NEW.run_id AND state IN ('completed', 'rejected', 'failed', 'cancelled', 'superseded', 'rolled_back');
    IF ended IS NULL THEN
      RETURN NEW;
    END IF;
    RETURN NULL;
  END IF;
  SELECT state INTO ended FROM runs WHERE run_id = NEW.run_id FOR SHARE;
  IF ended IS NULL OR ended NOT IN ('completed', 'rejected', 'failed', 'cancelled', 'superseded', 'rolled_back') THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'run % has ended (%); nothing is written to % after a run has ended', NEW.run_id, ended, TG_TABLE_NAME
    USING ERRCODE = 'P0001', HINT = 'dacp_run_ended';
END $$;
