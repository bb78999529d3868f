-- AMI gateway clients. The secret is the vault secret ami/clients/<name> (the MD5 challenge
-- needs the plaintext); this table holds the policy, which may be listed.
CREATE TABLE ami_clients (
    name        TEXT PRIMARY KEY,
    allow       TEXT NOT NULL,               -- comma list of action names or globs (Queue*)
    events      TEXT NOT NULL,               -- comma list of event classes the client may read
    permit      TEXT NOT NULL,               -- comma list of CIDR networks logins may come from
    overrides   TEXT NOT NULL DEFAULT '',    -- comma list of built-in refusals lifted (logged)
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
