-- The last scheduled `audit asterisk` of each node ([audit] interval): when it ran, why it
-- could not (empty when it did), and its findings as the JSON array `--json` prints.
CREATE TABLE audit_runs (
    node     TEXT    PRIMARY KEY,
    at       INTEGER NOT NULL,
    error    TEXT    NOT NULL DEFAULT '',
    findings TEXT    NOT NULL DEFAULT '[]'
);
