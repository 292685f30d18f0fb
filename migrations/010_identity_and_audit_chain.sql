-- Who may do what, and an audit trail that cannot be edited in place.

-- People and the roles they hold. Administrative: whoever reaches dacp's database manages them.
CREATE TABLE principals (
  name         text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9._-][A-Za-z0-9._@-]{0,63}$'),
  roles        text[] NOT NULL CHECK (cardinality(roles) > 0 AND roles <@ ARRAY['operator','approver','auditor']::text[]),
  created_at   timestamptz NOT NULL DEFAULT now(),
  disabled_at  timestamptz
);

-- Ed25519 public keys. A key is never deleted: revoked keys stay, so old signatures still verify
-- as "signed by a key that was later revoked". key_id = first 16 hex of sha256(public key).
CREATE TABLE principal_keys (
  key_id       text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),
  principal    text NOT NULL REFERENCES principals(name),
  public_key   text NOT NULL UNIQUE CHECK (public_key ~ '^[0-9a-f]{64}$'),
  created_at   timestamptz NOT NULL DEFAULT now(),
  revoked_at   timestamptz,
  revoke_reason text
);
CREATE INDEX principal_keys_principal ON principal_keys (principal);

-- dacp's own keys: the key that signs audit bundles (and, later, the API server's key).
CREATE TABLE service_keys (
  key_id       text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),
  purpose      text NOT NULL CHECK (purpose IN ('export', 'server')),
  public_key   text NOT NULL UNIQUE CHECK (public_key ~ '^[0-9a-f]{64}$'),
  created_at   timestamptz NOT NULL DEFAULT now()
);

-- Each run's audit rows form a hash chain: sha256 covers the previous row's sha256 and this row's
-- content (db/audit.ts says exactly what). Rows from before this migration are not chained.
ALTER TABLE audit_log ADD COLUMN prev_sha256 text;
ALTER TABLE audit_log ADD COLUMN sha256 text;
ALTER TABLE approvals ADD COLUMN signature jsonb;
-- A promote or rollback by a person carries that operator's signature over the move.
ALTER TABLE deployments ADD COLUMN signature jsonb;

-- Append-only: no row of the audit log or the votes changes or goes away (the alias history, deployments, is already: 006).
CREATE FUNCTION dacp_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only: rows are never updated or deleted', TG_TABLE_NAME
    USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log FOR EACH ROW EXECUTE FUNCTION dacp_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION dacp_refuse_change();
CREATE TRIGGER approvals_append_only BEFORE UPDATE OR DELETE ON approvals FOR EACH ROW EXECUTE FUNCTION dacp_refuse_change();
CREATE TRIGGER approvals_no_truncate BEFORE TRUNCATE ON approvals FOR EACH STATEMENT EXECUTE FUNCTION dacp_refuse_change();

-- A new audit row must link to the run's last row: a row written around dacp breaks no chain
-- silently, it is refused.
CREATE FUNCTION dacp_audit_chain_link() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE last_hash text;
BEGIN
  IF NEW.sha256 IS NULL OR NEW.sha256 !~ '^[0-9a-f]{64}$' THEN
    RAISE EXCEPTION 'audit_log rows are hash-chained: write them through dacp (sha256 missing)';
  END IF;
  PERFORM pg_advisory_xact_lock(hashtext('dacp-audit:' || NEW.run_id));
  SELECT sha256 INTO last_hash FROM audit_log WHERE run_id = NEW.run_id ORDER BY id DESC LIMIT 1;
  IF NEW.prev_sha256 IS DISTINCT FROM last_hash THEN
    RAISE EXCEPTION 'audit_log chain of run % does not continue from its last row', NEW.run_id;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION dacp_audit_chain_link();
