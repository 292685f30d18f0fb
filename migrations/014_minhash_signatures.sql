-- The MinHash signatures of a cleaned dataset's documents, by the dataset's content hash and the
-- index shape, so a later update removes near copies of what earlier ones trained on without
-- reading their documents again. The signatures themselves are an artifact.
CREATE TABLE minhash_signatures (
  dataset_sha256  text NOT NULL CHECK (dataset_sha256 ~ '^[0-9a-f]{64}$'),
  bands           integer NOT NULL CHECK (bands > 0),
  rows_per_band   integer NOT NULL CHECK (rows_per_band > 0),
  -- How they were computed (shingles and hashes): signatures of another algorithm are not comparable.
  algorithm       text NOT NULL,
  docs            integer NOT NULL CHECK (docs >= 0),
  uri             text NOT NULL,
  sha256          text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
  bytes           bigint NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (dataset_sha256, bands, rows_per_band, algorithm)
);
