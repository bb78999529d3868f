-- Several PBX hosts on one database: which node wrote a session, a history or audit row, and
-- on which node a recording link's file lives (NULL: written before node names existed, or a
-- single host); and the nodes themselves, so a download reaching the wrong node can be sent to
-- the right one.
ALTER TABLE sessions ADD COLUMN node TEXT;
ALTER TABLE login_history ADD COLUMN node TEXT;
ALTER TABLE audit_log ADD COLUMN node TEXT;
ALTER TABLE recording_links ADD COLUMN node TEXT;

CREATE TABLE nodes (
    name        TEXT PRIMARY KEY,
    public_url  TEXT,                        -- `[http] public_url`; NULL without an [http] section
    started_at  BIGINT NOT NULL,
    seen_at     BIGINT NOT NULL             -- refreshed while the node runs
);
