-- Passkeys (WebAuthn credentials) as a second factor and, per user, as a passwordless first
-- factor. A credential row holds the authenticator's public key and signature counter only:
-- nothing here lets anyone log in.
CREATE TABLE passkeys (
    id            TEXT    PRIMARY KEY,      -- random; what pages and the API name a passkey by
    user_id       BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    rp_id         TEXT    NOT NULL,         -- the relying party it belongs to (a host name)
    credential_id TEXT    NOT NULL UNIQUE,  -- base64url, as the authenticator reports it
    user_handle   TEXT    NOT NULL,         -- the user's WebAuthn handle (a random UUID)
    credential    TEXT    NOT NULL,         -- the verified credential, as JSON
    sign_count    BIGINT  NOT NULL DEFAULT 0,
    created_at    BIGINT  NOT NULL,
    last_used_at  BIGINT,
    UNIQUE (user_id, name)
);

-- A registration between its challenge and the authenticator's answer (single use, minutes).
CREATE TABLE passkey_registrations (
    token_hash TEXT    PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    user_handle TEXT   NOT NULL,
    state      TEXT    NOT NULL,
    expires_at BIGINT  NOT NULL
);

-- Users who log in with a passkey alone (their opt-in; an admin 2FA reset ends it).
CREATE TABLE passkey_passwordless (
    user_id    BIGINT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    enabled_at BIGINT  NOT NULL
);

-- The challenge of a login that may be finished with a passkey.
ALTER TABLE mfa_pending ADD COLUMN webauthn_state TEXT;
