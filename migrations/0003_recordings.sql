-- Signed recording links. The token in the URL carries only the random link id, its key id
-- and expiry (under an HMAC); the recording's path, which names phone numbers and agents,
-- stays here.
CREATE TABLE recording_links (
    id          TEXT PRIMARY KEY,            -- 32 hex characters, 128 random bits
    path        TEXT NOT NULL,               -- relative to [recordings] root, normalised
    key_id      TEXT NOT NULL,               -- the keys/links/<kid> that signed the token
    minted_by   TEXT NOT NULL,               -- user name, or cli:<account>
    minted_ip   TEXT NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    revoked_by  TEXT
);
CREATE INDEX recording_links_path ON recording_links (path);
CREATE INDEX recording_links_expires ON recording_links (expires_at);
