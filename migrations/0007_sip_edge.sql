-- SIP edge: the extension a web user's browser softphone may use, and the bans the edge keeps
-- (Asterisk sees only pbxguard, so bans by client address must live here).
ALTER TABLE users ADD COLUMN sip_extension TEXT;
CREATE UNIQUE INDEX users_sip_extension ON users (sip_extension) WHERE sip_extension IS NOT NULL;

CREATE TABLE sip_bans (
    ip          TEXT PRIMARY KEY,            -- an address, or an IPv6 /64 as "prefix/64"
    reason      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
