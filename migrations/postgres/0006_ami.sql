-- AMI gateway clients; the secret is the vault secret ami/clients/<name>.
CREATE TABLE ami_clients (
    name        TEXT   PRIMARY KEY,
    allow       TEXT   NOT NULL,
    events      TEXT   NOT NULL,
    permit      TEXT   NOT NULL,
    overrides   TEXT   NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
