-- The approval gate's outbox: every notice it sends (request, reminder, escalation, timeout), kept
-- whether or not a webhook delivered it, so another relay (mail, chat) can read what is pending.
CREATE TABLE approval_notifications (
  id            bigserial PRIMARY KEY,
  run_id        text NOT NULL REFERENCES runs(run_id),
  idempotency_key text NOT NULL UNIQUE,
  kind          text NOT NULL CHECK (kind IN ('requested', 'reminder', 'escalated', 'timed_out')),
  recipients    text[] NOT NULL,
  payload       jsonb NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  webhook_status text CHECK (webhook_status IN ('delivered', 'failed', 'not_configured')),
  webhook_attempts integer NOT NULL DEFAULT 0,
  webhook_error text,
  delivered_at  timestamptz
);
CREATE INDEX approval_notifications_run ON approval_notifications (run_id, id);
