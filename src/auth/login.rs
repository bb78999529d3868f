//! The password step of a login, the issuing of a session and the logout. Unknown users, wrong
//! passwords and malformed names cost the same argon2 work and get the same refusal, so
//! accounts cannot be enumerated; every attempt is written to the login history, and a history
//! write that fails fails the login.

use zeroize::Zeroizing;

use crate::auth::config::AuthConfig;
use crate::clock::now_unix;
use crate::metrics::Metrics;
use crate::store::{NewHistory, SessionRow, Store, StoreError, UserRow};

use super::jwt::{Claims, JwtError, AUDIENCE, ISSUER};
use super::password::PasswordError;
use super::roles::Role;
use super::sessions::Session;
use super::Auth;

/// Longest user name; names are `a-z 0-9 . _ - @`, starting with a letter or digit.
pub const MAX_NAME_LEN: usize = 64;
/// How much of a typed name the history keeps.
pub const HISTORY_NAME_LEN: usize = 64;
pub const HISTORY_AGENT_LEN: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Jwt(#[from] JwtError),
    #[error("user has a level outside 1-9")]
    BadLevel,
    #[error("the user's password, level or state changed during the login")]
    UserChanged,
}

/// Checks a user name for `user add` and friends.
pub fn validate_username(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err("a user name has 1 to 64 characters");
    }
    if !name.bytes().all(|b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-' | b'@')
    }) {
        return Err("a user name may only contain a-z 0-9 . _ - @");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("a user name starts with a letter or digit");
    }
    Ok(())
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Who is trying, from where.
#[derive(Debug, Clone)]
pub struct Client {
    pub ip: String,
    pub user_agent: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    InvalidCredentials,
    Disabled,
    Throttled { retry_after: u64 },
}

/// A session that was just created, with its token.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub session_id: String,
    pub user: String,
    pub level: u8,
    pub expires_at: i64,
}

#[derive(Debug)]
pub enum PasswordStep {
    /// The password is right and the user may log in; the caller decides about a second
    /// factor before issuing a session.
    Verified(UserRow),
    Refused(Refusal),
}

/// What the login steps work with: the daemon's auth state, the store, the metrics and the
/// `[auth]` section in force.
#[derive(Debug, Clone, Copy)]
pub struct Gate<'a> {
    pub auth: &'a Auth,
    pub store: &'a Store,
    pub metrics: &'a Metrics,
    pub cfg: &'a AuthConfig,
    /// Failed logins from one address past `[bans] http_threshold` ban it.
    pub bans: &'a crate::bans::Bans,
    pub bans_cfg: &'a crate::bans::config::BansConfig,
}

async fn record(
    gate: Gate<'_>,
    now: i64,
    typed: &str,
    client: &Client,
    result: &'static str,
) -> Result<(), StoreError> {
    gate.metrics.login(result);
    // Only guesses count: a throttled or disabled account's owner retrying must not get the
    // office's address banned.
    if matches!(result, "unknown_user" | "bad_password" | "mfa_failed") {
        if let Ok(ip) = client.ip.parse::<std::net::IpAddr>() {
            gate.bans.strike(
                ip,
                crate::bans::Source::Http,
                "login_failures",
                gate.bans_cfg.http_threshold,
                gate.bans_cfg.window,
                None,
            );
        }
    }
    gate.store
        .record_login(&NewHistory {
            at: now,
            username: &bounded(typed, HISTORY_NAME_LEN),
            ip: &client.ip,
            user_agent: &bounded(&client.user_agent, HISTORY_AGENT_LEN),
            result,
        })
        .await
}

/// Records a refused attempt of any step (e.g. a wrong second factor) in the history.
pub async fn record_failure(
    gate: Gate<'_>,
    typed: &str,
    client: &Client,
    result: &'static str,
) -> Result<(), StoreError> {
    record(gate, now_unix(), typed, client, result).await
}

/// Throttle, look up, verify. Does not create a session.
pub async fn check_password(
    gate: Gate<'_>,
    typed: &str,
    password: Zeroizing<String>,
    client: &Client,
) -> Result<PasswordStep, LoginError> {
    let now = now_unix();
    // A JSON string may hold NUL, which PostgreSQL's text cannot: the name is throttled and
    // recorded with U+FFFD in its place (no account name has either).
    let typed = &typed.replace('\0', "\u{FFFD}");
    // Names are lower-case, so every case variant of a name is the same account for the
    // lookup and for throttling.
    let account = typed.to_ascii_lowercase();
    // Behind a proxy the connection itself is not refused: the address it forwarded is.
    if let Some(left) = client
        .ip
        .parse::<std::net::IpAddr>()
        .ok()
        .and_then(|ip| gate.bans.banned(ip))
    {
        gate.metrics.login("banned");
        return Ok(PasswordStep::Refused(Refusal::Throttled {
            retry_after: left.max(1) as u64,
        }));
    }
    let ticket = match gate
        .auth
        .pending
        .admit(gate.store, gate.cfg, &account, &client.ip, now)
        .await?
    {
        Ok(ticket) => ticket,
        Err(retry_after) => {
            record(gate, now, typed, client, "throttled").await?;
            return Ok(PasswordStep::Refused(Refusal::Throttled { retry_after }));
        }
    };
    let outcome = verify_and_record(gate, typed, &account, password, client).await;
    gate.auth.pending.release(ticket).await;
    outcome
}

async fn verify_and_record(
    gate: Gate<'_>,
    typed: &str,
    account: &str,
    password: Zeroizing<String>,
    client: &Client,
) -> Result<PasswordStep, LoginError> {
    let user = match validate_username(account) {
        Ok(()) => gate.store.user(account).await?,
        Err(_) => None,
    };
    let verified = gate
        .auth
        .hasher
        .verify(password, user.as_ref().map(|u| u.password_hash.clone()))
        .await?;
    // The hash took a while: re-read the clock for the history row.
    let now = now_unix();
    match user {
        None => {
            record(gate, now, typed, client, "unknown_user").await?;
            Ok(PasswordStep::Refused(Refusal::InvalidCredentials))
        }
        Some(_) if !verified => {
            record(gate, now, typed, client, "bad_password").await?;
            Ok(PasswordStep::Refused(Refusal::InvalidCredentials))
        }
        Some(u) if u.disabled => {
            record(gate, now, typed, client, "disabled").await?;
            Ok(PasswordStep::Refused(Refusal::Disabled))
        }
        Some(u) => Ok(PasswordStep::Verified(u)),
    }
}

/// Creates the session row (with its `ok` history row, atomically) and signs its token with
/// the current key of `gate.auth` (bring the keys up to date first: the CLI may have just
/// replaced them).
pub async fn issue_session(
    gate: Gate<'_>,
    user: &UserRow,
    client: &Client,
) -> Result<Issued, LoginError> {
    issue(gate, user, client, None).await
}

/// Opens the session of a login finished with a second factor (see
/// [`crate::store::Store::create_session_after_mfa`]).
pub async fn issue_session_after_mfa(
    gate: Gate<'_>,
    user: &UserRow,
    client: &Client,
    finish: &crate::store::Finish<'_>,
) -> Result<Issued, LoginError> {
    issue(gate, user, client, Some(finish)).await
}

async fn issue(
    gate: Gate<'_>,
    user: &UserRow,
    client: &Client,
    finish: Option<&crate::store::Finish<'_>>,
) -> Result<Issued, LoginError> {
    let role = Role::of_level(user.level).ok_or(LoginError::BadLevel)?;
    let now = now_unix();
    let expires_at = now + gate.cfg.session_max_lifetime.as_secs() as i64;
    let id = crate::ids::random_hex(16);
    let claims = Claims {
        sub: user.name.clone(),
        lvl: user.level,
        role: role.name().to_string(),
        sid: id.clone(),
        iat: now as u64,
        nbf: now as u64,
        exp: expires_at as u64,
        iss: ISSUER.to_string(),
        aud: AUDIENCE.to_string(),
    };
    let token = gate.auth.keyring.load().sign(&claims)?;
    let row = SessionRow {
        id: id.clone(),
        user_id: user.id,
        user: user.name.clone(),
        level: user.level,
        created_at: now,
        last_seen: now,
        expires_at,
        ip: client.ip.clone(),
        user_agent: bounded(&client.user_agent, HISTORY_AGENT_LEN),
        revoked_at: None,
        user_level: user.level,
        user_disabled: false,
        node: None,
    };
    let history = NewHistory {
        at: now,
        username: &user.name,
        ip: &client.ip,
        user_agent: &row.user_agent,
        result: "ok",
    };
    let created = match finish {
        None => {
            gate.store
                .create_session(&row, &user.password_hash, &history)
                .await?
        }
        Some(f) => {
            gate.store
                .create_session_after_mfa(&row, &user.password_hash, &history, f)
                .await?
        }
    };
    if !created {
        return Err(LoginError::UserChanged);
    }
    gate.metrics.login("ok");
    Ok(Issued {
        token,
        session_id: id,
        user: user.name.clone(),
        level: user.level,
        expires_at,
    })
}

/// Ends `session` (revoked, with a `logout` history row) and drops it from the cache.
pub async fn logout(gate: Gate<'_>, session: &Session, client: &Client) -> Result<(), StoreError> {
    let entry = NewHistory {
        at: now_unix(),
        username: &session.user,
        ip: &client.ip,
        user_agent: &bounded(&client.user_agent, HISTORY_AGENT_LEN),
        result: "logout",
    };
    gate.store.logout(&session.id, &entry).await?;
    // Other nodes were told by the logout's own commit.
    gate.auth.sessions.forget(&session.id);
    gate.metrics.login("logout");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        for good in ["alice", "agent.007", "j-doe", "ops@callcenter", "9lives"] {
            assert!(validate_username(good).is_ok(), "{good}");
        }
        let long = "a".repeat(65);
        for bad in [
            "",
            "Alice",
            ".hidden",
            "-x",
            "a b",
            "a\0b",
            "ünï",
            "a/b",
            long.as_str(),
        ] {
            assert!(validate_username(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bounded_respects_char_boundaries() {
        assert_eq!(bounded("abc", 10), "abc");
        assert_eq!(bounded("aé", 2), "a");
        assert_eq!(bounded(&"x".repeat(100), 64).len(), 64);
    }
}
