-- AMI clients: the dialplan contexts a client's calls and transfers may go into (comma list of
-- names or `*` globs, case kept: Asterisk's context names are case-sensitive; '' = none given,
-- which only clients created before this version have), and its own call limits (NULL = the
-- [dialing] default; a predictive dialer may need more than an agent).
ALTER TABLE ami_clients ADD COLUMN contexts TEXT NOT NULL DEFAULT '';
ALTER TABLE ami_clients ADD COLUMN max_concurrent_calls INTEGER;
ALTER TABLE ami_clients ADD COLUMN max_call_attempts_per_minute INTEGER;
-- Which secret the client has: a fresh random value each time `ami user add` sets one (`edit`
-- keeps it), so that open sessions opened with a replaced secret are ended; 0 for rows made
-- before this version.
ALTER TABLE ami_clients ADD COLUMN credential INTEGER NOT NULL DEFAULT 0;
