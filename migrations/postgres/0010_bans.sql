-- One ban list for every source (issue: PBX-wide intrusion response). A row is one source's
-- ban of one address or prefix: the SIP edge, the AMI gateway, the HTTP login, Asterisk's
-- security events, a feed (origin = the feed's name) or an admin. The same address may be
-- banned by several sources at once; it is banned while any of its rows is in force.
-- Expired rows are kept for a day (hits then make a repeat offender's next ban longer).
CREATE TABLE bans (
    address     TEXT    NOT NULL,            -- 192.0.2.66, 198.51.100.0/24, 2001:db8:1::/64
    source      TEXT    NOT NULL,            -- sip, ami, http, asterisk, feed, manual
    origin      TEXT    NOT NULL DEFAULT '', -- the feed's name; '' for other sources
    reason      TEXT    NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    hits        BIGINT NOT NULL DEFAULT 1,  -- offences that made or renewed this ban
    node        TEXT    NOT NULL DEFAULT '', -- the node that imposed it
    PRIMARY KEY (address, source, origin)
);
CREATE INDEX bans_expires_at ON bans (expires_at);
INSERT INTO bans (address, source, origin, reason, created_at, expires_at, hits, node)
    SELECT ip, 'sip', '', reason, created_at, expires_at, 1, '' FROM sip_bans;
DROP TABLE sip_bans;
-- Bumped by every write to bans, in the same transaction (the row appears with the first
-- write): a daemon polls this one row to see that the CLI (another process) changed the list.
CREATE TABLE ban_version (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  BIGINT NOT NULL
);
