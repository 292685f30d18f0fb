-- Bearer tokens of dacp's HTTP API. Only a sha256 of each token is stored; the token itself is shown
-- once, to the principal who created it with its own key (`dacp tokens create --as NAME`).
CREATE TABLE api_tokens (
  token_id      text PRIMARY KEY CHECK (token_id ~ '^[0-9a-f]{12}$'),
  principal     text NOT NULL REFERENCES principals(name),
  token_sha256  text NOT NULL UNIQUE CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
  label         text,
  created_at    timestamptz NOT NULL DEFAULT now(),
  last_used_at  timestamptz,
  revoked_at    timestamptz
);
CREATE INDEX api_tokens_principal ON api_tokens (principal);
