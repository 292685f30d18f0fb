-- s3 sources keep watermarks too (by object sha256, as file sources do).
ALTER TABLE run_watermarks DROP CONSTRAINT run_watermarks_kind_check;
ALTER TABLE run_watermarks ADD CONSTRAINT run_watermarks_kind_check CHECK (kind IN ('files', 's3', 'postgres'));
ALTER TABLE schedule_watermarks DROP CONSTRAINT schedule_watermarks_kind_check;
ALTER TABLE schedule_watermarks ADD CONSTRAINT schedule_watermarks_kind_check CHECK (kind IN ('files', 's3', 'postgres'));
