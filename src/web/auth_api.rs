//! Login, logout, the forward-auth check and `/me`.
//!
//! The check answers only 200, 401 or 403 — nginx's `auth_request` turns anything else into a
//! 500 for the user — and fails closed: an internal error is a 401 (and an error log line).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use crate::app::App;
use crate::auth::login::{self, Client, Gate, Issued, PasswordStep};
use crate::auth::mfa::{self, Mfa, Next};
use crate::auth::roles::Role;
use crate::auth::sessions::Session;
use crate::auth::AuthFail;
use crate::auth::{client_ip, password, routes};
use crate::clock::{now_unix, rfc3339};
use crate::config::Config;
use crate::journal::HistoryEntry;

use super::extract::ApiJson;
use super::{ApiError, Peer};

pub const COOKIE_NAME: &str = "pbxguard_session";
pub const CHECK_PATH: &str = "/api/v1/auth/check";
/// Typed user names longer than this are refused before any work.
const MAX_TYPED_NAME: usize = 256;

/// The token from `Authorization: Bearer …`, else from the session cookie.
pub fn token_from(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let mut parts = v.splitn(2, ' ');
        if let (Some(scheme), Some(token)) = (parts.next(), parts.next()) {
            if scheme.eq_ignore_ascii_case("bearer") {
                return Some(token.trim());
            }
        }
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
}

/// Verifies the request's token and its server-side session, with the keys and the session
/// cache brought up to date first.
pub async fn authenticate(app: &App, headers: &HeaderMap) -> Result<Session, AuthFail> {
    app.sync_auth().await;
    let config = app.config.load();
    app.auth
        .authenticate(&app.store, &config.auth, token_from(headers), now_unix())
        .await
}

/// The login steps of the daemon, with the configuration in force.
pub fn gate<'a>(app: &'a App, config: &'a Config) -> Gate<'a> {
    Gate {
        auth: &app.auth,
        store: &app.store,
        metrics: &app.metrics,
        cfg: &config.auth,
        bans: &app.bans,
        bans_cfg: &config.bans,
    }
}

/// The second-factor steps of the daemon, with the configuration in force.
pub fn mfa<'a>(app: &'a App, config: &'a Config) -> Mfa<'a> {
    Mfa {
        gate: gate(app, config),
        vault: &app.vault,
        cfg: &config.mfa,
        smtp: &config.smtp,
        public_url: config.http.as_ref().map(|h| h.public_url.as_str()),
    }
}

/// An authenticated session of at least `role`, or the API error to answer with.
pub async fn require(app: &Arc<App>, headers: &HeaderMap, role: Role) -> Result<Session, ApiError> {
    let session = authenticate(app, headers)
        .await
        .map_err(|_| ApiError::unauthorized())?;
    if role.allows(session.level) {
        Ok(session)
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this needs the {role} role"),
        ))
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    super::canonical_ip(ip).is_loopback()
}

/// The client as the history records it.
pub fn client(app: &App, peer: &Peer, headers: &HeaderMap) -> Client {
    let config = app.config.load();
    let proxies = config
        .http
        .as_ref()
        .map(|h| h.trusted_proxies.as_slice())
        .unwrap_or(&[]);
    let xff = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    let ip = client_ip::client_ip(peer.addr.ip(), xff, proxies);
    let user_agent = headers
        .get(header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    Client {
        ip: ip.to_string(),
        user_agent,
    }
}

/// `Secure` is dropped only for plain HTTP from loopback (the dev setup); a trusted proxy that
/// terminated TLS says so with `X-Forwarded-Proto: https`.
pub(super) fn cookie_secure(peer: &Peer, headers: &HeaderMap) -> bool {
    let forwarded_https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    peer.tls || !is_loopback(peer.addr.ip()) || forwarded_https
}

pub(super) fn session_cookie(value: &str, max_age: i64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={value}; HttpOnly{secure}; SameSite=Strict; Path=/; Max-Age={max_age}"
    ))
    .ok()
}

/// The body and cookie of a completed login (also used after a second factor).
pub fn issued_response(issued: &Issued, peer: &Peer, headers: &HeaderMap) -> Response {
    issued_response_with(issued, peer, headers, serde_json::Map::new())
}

/// [`issued_response`] with more members in the body (the first recovery codes).
pub fn issued_response_with(
    issued: &Issued,
    peer: &Peer,
    headers: &HeaderMap,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Response {
    let role = Role::of_level(issued.level)
        .map(Role::name)
        .unwrap_or("agent");
    let mut body = json!({
        "status": "ok",
        "token": issued.token,
        "expires_at": rfc3339(issued.expires_at),
        "user": { "name": issued.user, "level": issued.level, "role": role },
    });
    if let Some(map) = body.as_object_mut() {
        map.extend(extra);
    }
    let mut response = Json(body).into_response();
    let max_age = (issued.expires_at - now_unix()).max(0);
    if let Some(cookie) = session_cookie(&issued.token, max_age, cookie_secure(peer, headers)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Marks an answer that carries a token as not to be cached.
pub fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The body of a login that needs a second step, or `None` when a session may be issued.
fn pending_body(next: Next) -> Option<serde_json::Value> {
    match next {
        Next::Session => None,
        Next::Mfa {
            token,
            methods,
            webauthn,
        } => {
            let mut body =
                json!({ "status": "mfa_required", "mfa_token": token, "methods": methods });
            if let (Some(map), Some(options)) = (body.as_object_mut(), webauthn) {
                map.insert("webauthn".into(), options);
            }
            Some(body)
        }
        Next::Enroll {
            enroll_token,
            email: None,
        } => Some(json!({ "status": "enroll_required", "enroll_token": enroll_token })),
        Next::Enroll {
            enroll_token,
            email: Some(mfa_token),
        } => Some(json!({
            "status": "enroll_required",
            "enroll_token": enroll_token,
            "mfa_token": mfa_token,
            "methods": ["email"],
        })),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    username: String,
    password: String,
}

pub async fn login(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    let password = Zeroizing::new(body.password);
    if body.username.is_empty() || body.username.len() > MAX_TYPED_NAME {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "username must have 1 to 256 bytes",
        ));
    }
    if password.is_empty() || password.len() > password::MAX_LEN {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "password must have 1 to 1024 bytes",
        ));
    }
    let client = client(&app, &peer, &headers);
    // Its own task: a login that outlives the deadline (or whose client went away) still
    // runs to its end, so that what it holds (its place in the throttle, a transaction) is
    // given back and its outcome recorded.
    let task = tokio::spawn(async move {
        let answer = login_steps(&app, &body.username, password, &client, &peer, &headers).await;
        if answer
            .as_ref()
            .is_err_and(|e| e.code == "store_unavailable")
        {
            // The attempt happened: it joins the history once the database is back.
            app.recordings.journal.record_history(HistoryEntry {
                at: now_unix(),
                // As the history records it (PostgreSQL refuses NUL in text).
                username: login::bounded(
                    &body.username.replace('\0', "\u{FFFD}"),
                    login::HISTORY_NAME_LEN,
                ),
                ip: client.ip.clone(),
                user_agent: login::bounded(&client.user_agent, login::HISTORY_AGENT_LEN),
                result: "store_unavailable".to_string(),
            });
            app.metrics.login("store_unavailable");
        }
        answer
    });
    match tokio::time::timeout(LOGIN_DEADLINE, task).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "a login task failed");
            Err(ApiError::internal())
        }
        Err(_) => Err(ApiError::store_unavailable()),
    }
}

/// A login answers within this even when the database does not (a login page must not hang
/// for the pool's timeouts, one per statement): 503 `store_unavailable`.
const LOGIN_DEADLINE: std::time::Duration = std::time::Duration::from_millis(4500);

async fn login_steps(
    app: &App,
    username: &str,
    password: Zeroizing<String>,
    client: &Client,
    peer: &Peer,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    // Settings another process changed (lockout, session lifetime, 2FA) apply to this login.
    app.sync_auth().await;
    let config = app.config.load_full();
    let gate = gate(app, &config);
    let user = match login::check_password(gate, username, password, client).await? {
        PasswordStep::Refused(r) => return Err(r.into()),
        PasswordStep::Verified(user) => user,
    };
    let rp = mfa(app, &config).relying_party();
    let next = mfa::after_password(
        &app.store,
        &config.mfa,
        rp.as_ref(),
        &user,
        client,
        now_unix(),
    )
    .await?;
    if let Some(body) = pending_body(next) {
        return Ok(no_store(Json(body).into_response()));
    }
    // Sign with the key that is current now, even if the CLI just replaced it.
    app.sync_auth().await;
    let issued = login::issue_session(gate, &user, client).await?;
    Ok(issued_response(&issued, peer, headers))
}

pub async fn logout(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = authenticate(&app, &headers)
        .await
        .map_err(|_| ApiError::unauthorized())?;
    let client = client(&app, &peer, &headers);
    let config = app.config.load();
    login::logout(gate(&app, &config), &session, &client).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Some(cookie) = session_cookie("", 0, cookie_secure(&peer, &headers)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

pub async fn me(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let s = authenticate(&app, &headers)
        .await
        .map_err(|_| ApiError::unauthorized())?;
    Ok(Json(json!({
        "name": s.user,
        "level": s.level,
        "role": Role::of_level(s.level).map(Role::name),
        "session": { "id": s.id, "created_at": rfc3339(s.created_at), "expires_at": rfc3339(s.expires_at) },
    })))
}

/// The least role a check asks for: the strictest of `X-Required-Role`, `?role=` and
/// `[auth.routes]` on `X-Original-URI`, over every copy of each. Taking the strictest means a
/// header the client slipped through a proxy can raise the requirement but never lower it,
/// whether it comes before or after the proxy's own. `Err` when a requirement names no role
/// (deny).
fn required_role(app: &App, headers: &HeaderMap, uri: &Uri) -> Result<Option<Role>, ()> {
    let mut need: Option<Role> = None;
    for v in headers.get_all("x-required-role") {
        need = need.max(Some(v.to_str().ok().and_then(Role::parse).ok_or(())?));
    }
    if let Some(query) = uri.query() {
        for pair in query.split('&') {
            if let Some(v) = pair.strip_prefix("role=") {
                let v = percent_encoding::percent_decode_str(v)
                    .decode_utf8()
                    .map_err(|_| ())?;
                need = need.max(Some(Role::parse(&v).ok_or(())?));
            }
        }
    }
    let config = app.config.load();
    for original in headers.get_all("x-original-uri") {
        let original = String::from_utf8_lossy(original.as_bytes());
        need = need.max(routes::required_role(&config.auth.routes, &original));
    }
    Ok(need)
}

static X_AUTH_USER: HeaderName = HeaderName::from_static("x-auth-user");
static X_AUTH_LEVEL: HeaderName = HeaderName::from_static("x-auth-level");
static X_AUTH_ROLE: HeaderName = HeaderName::from_static("x-auth-role");
static X_AUTH_SESSION: HeaderName = HeaderName::from_static("x-auth-session");

/// The forward-auth decision for a request's headers and target, counted in the metrics.
pub async fn check_response(app: &App, headers: &HeaderMap, uri: &Uri) -> Response {
    let response = decide(app, headers, uri).await.into_response();
    app.metrics.count_check(response.status());
    response
}

async fn decide(app: &App, headers: &HeaderMap, uri: &Uri) -> Result<Response, ApiError> {
    let session = authenticate(app, headers).await.map_err(|_| {
        ApiError::unauthorized()
            .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    })?;
    match required_role(app, headers, uri) {
        Ok(need) if need.is_none_or(|r| r.allows(session.level)) => {}
        _ => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "your role may not use this route",
            ))
        }
    }
    let role = Role::of_level(session.level)
        .map(Role::name)
        .unwrap_or("agent");
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    // User names are validated ASCII, so these conversions cannot fail in practice.
    if let Ok(v) = HeaderValue::from_str(&session.user) {
        h.insert(X_AUTH_USER.clone(), v);
    }
    h.insert(
        X_AUTH_LEVEL.clone(),
        HeaderValue::from(u16::from(session.level)),
    );
    h.insert(X_AUTH_ROLE.clone(), HeaderValue::from_static(role));
    if let Ok(v) = HeaderValue::from_str(&session.id) {
        h.insert(X_AUTH_SESSION.clone(), v);
    }
    Ok(r)
}

pub async fn check(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let decision = decide(&app, &headers, &uri).await;
    app.metrics.count_check(match &decision {
        Ok(r) => r.status(),
        Err(e) => e.status,
    });
    decision
}
