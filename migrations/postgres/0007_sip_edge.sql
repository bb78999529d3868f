-- SIP edge: a web user's softphone extension, and the bans by client address.
ALTER TABLE users ADD COLUMN sip_extension TEXT;
CREATE UNIQUE INDEX users_sip_extension ON users (sip_extension) WHERE sip_extension IS NOT NULL;

CREATE TABLE sip_bans (
    ip          TEXT   PRIMARY KEY,
    reason      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
