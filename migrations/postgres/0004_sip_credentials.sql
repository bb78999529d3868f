-- SIP auth objects Asterisk fetches through res_config_curl; the password is a vault secret.
CREATE TABLE sip_credentials (
    id          TEXT   PRIMARY KEY,
    username    TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
