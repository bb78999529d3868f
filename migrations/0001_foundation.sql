-- Foundation schema. Times are Unix seconds (UTC) so expiry checks are plain integer
-- comparisons, and the SQL stays portable to PostgreSQL (BIGINT).

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    level         INTEGER NOT NULL CHECK (level BETWEEN 1 AND 9),
    email         TEXT,
    password_hash TEXT    NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE sessions (
    id          TEXT    PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    level       INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    ip          TEXT    NOT NULL,
    user_agent  TEXT    NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE login_history (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    username    TEXT    NOT NULL,
    ip          TEXT    NOT NULL,
    user_agent  TEXT    NOT NULL,
    result      TEXT    NOT NULL
);
CREATE INDEX login_history_at ON login_history (at);
CREATE INDEX login_history_user ON login_history (username, at);

-- Data keys, each wrapped (AES-256-GCM) under the master key. Secrets name theirs by key_id.
CREATE TABLE vault_keys (
    id          TEXT    PRIMARY KEY,
    generation  INTEGER NOT NULL UNIQUE,
    nonce       BLOB    NOT NULL,
    wrapped     BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE secrets (
    name        TEXT    NOT NULL UNIQUE,
    key_id      TEXT    NOT NULL,
    nonce       BLOB    NOT NULL,
    ciphertext  BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    target  TEXT    NOT NULL,
    detail  TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_at ON audit_log (at);
