-- Second factor. TOTP secrets live in the vault (mfa/totp/<user id>, and
-- mfa/totp-pending/<user id> until an enrollment is confirmed); this table says which users
-- have one and which time step was accepted last (a code is accepted once).
CREATE TABLE mfa_totp (
    user_id      INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    confirmed_at INTEGER NOT NULL,
    last_step    INTEGER NOT NULL
);

-- Logins waiting for their second factor, and enrollments. Tokens are stored as SHA-256 hashes;
-- the rows of one login attempt share `attempt`, and finishing it by any route uses them all up.
CREATE TABLE mfa_pending (
    token_hash          TEXT    PRIMARY KEY,
    attempt             TEXT    NOT NULL,
    kind                TEXT    NOT NULL CHECK (kind IN ('mfa', 'enroll')),
    user_id             INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    password_hash       TEXT    NOT NULL,   -- a password change voids the attempt
    methods             TEXT    NOT NULL,   -- 'totp' or 'email' (mfa), '' (enroll)
    ip                  TEXT    NOT NULL,
    user_agent          TEXT    NOT NULL,
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    failures            INTEGER NOT NULL DEFAULT 0,
    used_at             INTEGER,
    email_code_hash     TEXT,
    email_sent_at       INTEGER,
    email_code_failures INTEGER NOT NULL DEFAULT 0,
    emails_sent         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX mfa_pending_attempt ON mfa_pending (attempt);
CREATE INDEX mfa_pending_expires ON mfa_pending (expires_at);

-- Settings changed at run time by admins (CLI or API), e.g. mfa.force.
CREATE TABLE settings (
    key        TEXT    PRIMARY KEY,
    value      TEXT    NOT NULL,
    updated_at INTEGER NOT NULL,
    updated_by TEXT    NOT NULL
);

-- Temporary exemptions from forced enrollment; they end by themselves.
CREATE TABLE mfa_exemptions (
    user_id    INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    until      INTEGER NOT NULL,
    created_by TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
