-- Recovery codes: ten single-use codes a user gets when the first second factor is confirmed
-- (and again on regeneration, which replaces the set). Stored only as HMACs under a vault key
-- (keys/mfa/), bound to the user, so a copy of the database reveals no usable code.
CREATE TABLE mfa_recovery_codes (
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    used_at    BIGINT,
    PRIMARY KEY (user_id, code_hash)
);
