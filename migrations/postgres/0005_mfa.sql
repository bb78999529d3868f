-- Second factor (see migrations/0005_mfa.sql for the columns' meaning).
CREATE TABLE mfa_totp (
    user_id      BIGINT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    confirmed_at BIGINT NOT NULL,
    last_step    BIGINT NOT NULL
);

CREATE TABLE mfa_pending (
    token_hash          TEXT   PRIMARY KEY,
    attempt             TEXT   NOT NULL,
    kind                TEXT   NOT NULL CHECK (kind IN ('mfa', 'enroll')),
    user_id             BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    password_hash       TEXT   NOT NULL,
    methods             TEXT   NOT NULL,
    ip                  TEXT   NOT NULL,
    user_agent          TEXT   NOT NULL,
    created_at          BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL,
    failures            BIGINT NOT NULL DEFAULT 0,
    used_at             BIGINT,
    email_code_hash     TEXT,
    email_sent_at       BIGINT,
    email_code_failures BIGINT NOT NULL DEFAULT 0,
    emails_sent         BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX mfa_pending_attempt ON mfa_pending (attempt);
CREATE INDEX mfa_pending_expires ON mfa_pending (expires_at);

CREATE TABLE settings (
    key        TEXT   PRIMARY KEY,
    value      TEXT   NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT   NOT NULL
);

CREATE TABLE mfa_exemptions (
    user_id    BIGINT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    until      BIGINT NOT NULL,
    created_by TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
