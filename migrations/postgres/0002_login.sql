-- Throttling looks up recent failures per client IP as well as per account.
CREATE INDEX login_history_ip ON login_history (ip, at);
CREATE INDEX sessions_expires ON sessions (expires_at);
-- Throttling and `history --user` match names case-insensitively.
CREATE INDEX login_history_user_lower ON login_history ((lower(username)), at);
