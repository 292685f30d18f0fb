-- An alias's moves are its history: a run's deploy, an import with --alias, a promote or a
-- rollback by a person. Each row says which kind, who and why; rows are never changed or deleted,
-- so `dacp models show` and `dacp models rollback` read the same history an auditor does.
ALTER TABLE deployments ADD COLUMN kind text NOT NULL DEFAULT 'deploy'
  CHECK (kind IN ('deploy', 'import', 'promote', 'rollback'));
ALTER TABLE deployments ADD COLUMN actor text;
ALTER TABLE deployments ADD COLUMN note text;
UPDATE deployments SET kind = 'import' WHERE run_id LIKE 'import:%';

CREATE FUNCTION dacp_refuse_deployment_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'deployments are an append-only history (row %)', OLD.id;
END $$;
CREATE TRIGGER deployments_append_only BEFORE UPDATE OR DELETE ON deployments
  FOR EACH ROW EXECUTE FUNCTION dacp_refuse_deployment_change();
