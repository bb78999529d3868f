-- SIP auth objects Asterisk fetches through res_config_curl (family ps_auths). The password is
-- the vault secret sip/<id>; this table holds what may be listed.
CREATE TABLE sip_credentials (
    id          TEXT PRIMARY KEY,            -- the pjsip auth object id
    username    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
