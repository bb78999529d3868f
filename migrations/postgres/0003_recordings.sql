-- Signed recording links (see migrations/0003_recordings.sql for the columns' meaning).
CREATE TABLE recording_links (
    id          TEXT   PRIMARY KEY,
    path        TEXT   NOT NULL,
    key_id      TEXT   NOT NULL,
    minted_by   TEXT   NOT NULL,
    minted_ip   TEXT   NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    revoked_by  TEXT
);
CREATE INDEX recording_links_path ON recording_links (path);
CREATE INDEX recording_links_expires ON recording_links (expires_at);
