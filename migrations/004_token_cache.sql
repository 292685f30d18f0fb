-- Token streams are cached as content-addressed artifacts, so a retried (or later) training attempt on
-- the same data and tokenizer reads its ids instead of tokenizing again. The artifact store is
-- addressed by content, so this table is the index from what a stream was made of to where it is.
-- Rows belong to no run: any run with the same tokenizer and dataset bytes may reuse them.
CREATE TABLE token_cache (
  tokenizer_sha256  text NOT NULL,
  dataset_sha256    text NOT NULL,
  layout            text NOT NULL,
  uri               text NOT NULL,
  sha256            text NOT NULL,
  bytes             bigint NOT NULL,
  tokens            bigint NOT NULL,
  created_at        timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tokenizer_sha256, dataset_sha256, layout)
);
