-- AMI clients: allowed dialplan contexts and per-client call limits (see the SQLite twin).
ALTER TABLE ami_clients ADD COLUMN contexts TEXT NOT NULL DEFAULT '';
ALTER TABLE ami_clients ADD COLUMN max_concurrent_calls BIGINT;
ALTER TABLE ami_clients ADD COLUMN max_call_attempts_per_minute BIGINT;
ALTER TABLE ami_clients ADD COLUMN credential BIGINT NOT NULL DEFAULT 0;
