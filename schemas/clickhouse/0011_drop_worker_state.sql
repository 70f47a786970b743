-- The analytics stage's whole-partition JSON checkpoints (worker_state) are replaced by keyed,
-- incremental state in stage_state (0008). A worker upgraded from worker_state starts its
-- partitions fresh from the topics' retained history.
DROP TABLE IF EXISTS worker_state;
