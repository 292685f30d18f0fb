-- A rollback with nothing to go back to removes the alias: its history row has no version.
ALTER TABLE deployments ALTER COLUMN version_id DROP NOT NULL;
ALTER TABLE deployments ADD CONSTRAINT deployments_version_or_removal CHECK (version_id IS NOT NULL OR kind = 'rollback');
