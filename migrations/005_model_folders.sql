-- A registered model is kept as a Hugging Face model folder too: `folder` is the reference
-- ({uri, sha256, bytes}) of a manifest artifact that lists each file of the folder as its own
-- content-addressed artifact. `uri`/`sha256` stay the single-file model that runs train from.
-- Versions registered before this have no folder; export converts their single file instead.
ALTER TABLE model_versions ADD COLUMN folder jsonb;
