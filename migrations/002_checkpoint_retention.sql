-- Checkpoint retention: pruned checkpoints keep their row (evidence of what was trained) but lose
-- their file; resume only considers rows that are not pruned.
ALTER TABLE checkpoints ADD COLUMN pruned_at timestamptz;
CREATE INDEX checkpoints_live ON checkpoints (run_id, stage, round, step) WHERE pruned_at IS NULL;
