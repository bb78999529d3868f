//! The second factor over HTTP: finishing a login with a TOTP or emailed code, mailing a code,
//! TOTP enrollment and confirmation, and the admin's policy, status, resets and exemptions.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{error, info, warn};
use zeroize::Zeroizing;

use crate::app::App;
use crate::auth::login::{self, Client, Refusal};
use crate::auth::mfa::{self, live_pending};
use crate::auth::roles::Role;
use crate::auth::{email_code, totp};
use crate::clock::{now_unix, rfc3339};
use crate::store::{Finish, PendingRow, UserRow};

use super::auth_api::{
    authenticate, client, issued_response, refusal_response, require, token_from,
};
use super::extract::ApiJson;
use super::{ApiError, Peer};

/// Codes mailed for one login at most.
const MAX_EMAILS: i64 = 5;
/// Wrong tries after which an emailed code is void.
const MAX_EMAIL_CODE_FAILURES: i64 = 3;
/// Longest exemption an admin may grant in one go.
const MAX_EXEMPTION_SECS: i64 = 90 * 24 * 3600;

fn invalid_token() -> Response {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_mfa_token",
        "this login step is unknown, used, expired or locked; log in again",
    )
    .into_response()
}

fn invalid_code() -> Response {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_code",
        "wrong, expired or already used code",
    )
    .into_response()
}

fn bad_code() -> Response {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_code",
        "the code is exactly 6 digits (0-9), without spaces",
    )
    .into_response()
}

/// 503 `store_unavailable` or 500 (logged), see [`ApiError::failure`].
fn internal(e: impl std::error::Error + 'static, what: &str) -> Response {
    ApiError::failure(&format!("{what} failed"), &e).into_response()
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The user a pending row belongs to, if the attempt still holds (same password, enabled).
async fn user_of(app: &App, row: &PendingRow) -> Result<Option<UserRow>, crate::store::StoreError> {
    Ok(app
        .store
        .user_by_id(row.user_id)
        .await?
        .filter(|u| !u.disabled && u.password_hash == row.password_hash))
}

/// A wrong code (its try was already taken with [`claim`]): written to the login history as
/// `mfa_failed`, which feeds the account and IP lockout; a wrong emailed code also counts
/// against that code.
async fn failure(app: &App, row: &PendingRow, user: &UserRow, client: &Client, email: bool) {
    if email {
        if let Err(e) = app.store.email_code_failure(&row.token_hash).await {
            error!(error = %e, "counting a wrong emailed code failed");
        }
    }
    if let Err(e) = login::record_failure(app, &user.name, client, "mfa_failed").await {
        error!(error = %e, "recording a second-factor failure failed");
    }
}

/// The password lockout, per account and per client address, for every second-factor step;
/// a refusal is recorded as `throttled`. Hand the ticket back with `pending.release`.
async fn admit(
    app: &App,
    user: &UserRow,
    client: &Client,
    now: i64,
) -> Result<crate::auth::throttle::Ticket, Response> {
    let cfg = app.config.load_full();
    match app
        .auth
        .pending
        .admit(&app.store, &cfg.auth, &user.name, &client.ip, now)
        .await
    {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(retry_after)) => {
            if let Err(e) = login::record_failure(app, &user.name, client, "throttled").await {
                error!(error = %e, "recording a throttled attempt failed");
            }
            Err(refusal_response(&Refusal::Throttled { retry_after }))
        }
        Err(e) => Err(internal(e, "checking the lockout")),
    }
}

/// Takes one try of a pending login before its code is checked.
async fn claim(app: &App, row: &PendingRow, now: i64) -> Result<(), Response> {
    let max = i64::from(app.config.load().mfa.max_code_failures);
    match app.store.claim_try(&row.token_hash, max, now).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(invalid_token()),
        Err(e) => Err(internal(e, "counting a second-factor try")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinishBody {
    mfa_token: String,
    method: String,
    code: String,
}

/// `POST /api/v1/auth/mfa`.
pub async fn finish(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<FinishBody>,
) -> Response {
    let client = client(&app, &peer, &headers);
    let now = now_unix();
    let row = match live_pending(&app, &body.mfa_token, "mfa", now).await {
        Ok(Some(r)) => r,
        Ok(None) => return invalid_token(),
        Err(e) => return internal(e, "looking up a pending login"),
    };
    if !row.methods.split(',').any(|m| m == body.method) {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "method_not_allowed",
            format!("this login is finished with: {}", row.methods),
        )
        .into_response();
    }
    if !totp::well_formed(&body.code) {
        return bad_code();
    }
    let user = match user_of(&app, &row).await {
        Ok(Some(u)) => u,
        Ok(None) => return invalid_token(),
        Err(e) => return internal(e, "looking up a user"),
    };
    let ticket = match admit(&app, &user, &client, now).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let response = match claim(&app, &row, now).await {
        Ok(()) => check_code(&app, &row, &user, &client, &body, now, &peer, &headers).await,
        Err(r) => r,
    };
    app.auth.pending.release(ticket).await;
    response
}

#[allow(clippy::too_many_arguments)]
async fn check_code(
    app: &Arc<App>,
    row: &PendingRow,
    user: &UserRow,
    client: &Client,
    body: &FinishBody,
    now: i64,
    peer: &Peer,
    headers: &HeaderMap,
) -> Response {
    let totp_step = if body.method == "totp" {
        let secret = match app.vault.get(&mfa::totp_secret_name(user.id)).await {
            Ok(s) => s,
            Err(e) => return internal(e, "reading a TOTP secret"),
        };
        let last = match app.store.totp(user.id).await {
            Ok(t) => t.map(|(_, last)| last).unwrap_or(i64::MAX),
            Err(e) => return internal(e, "reading TOTP state"),
        };
        match totp::verify(&secret, &body.code, now) {
            Some(step) if step > last => Some((user.id, step)),
            _ => {
                failure(app, row, user, client, false).await;
                return invalid_code();
            }
        }
    } else {
        let ttl = i64::try_from(app.config.load().mfa.email_code_ttl.as_secs()).unwrap_or(600);
        let key = match mfa::email_key(&app.vault).await {
            Ok(k) => k,
            Err(e) => return internal(e, "reading the email-code key"),
        };
        let ok = match (&row.email_code_hash, row.email_sent_at) {
            (Some(hash), Some(sent)) => {
                row.email_code_failures < MAX_EMAIL_CODE_FAILURES
                    && email_code::fresh(sent, ttl, now)
                    && email_code::matches(&key, &row.attempt, &body.code, hash)
            }
            _ => false,
        };
        if !ok {
            failure(app, row, user, client, true).await;
            return invalid_code();
        }
        None
    };
    let finish = Finish {
        attempt: &row.attempt,
        totp_step,
    };
    match login::issue_session_after_mfa(app, user, client, &finish).await {
        Ok(issued) => issued_response(&issued, peer, headers),
        // Another request finished this login (or spent this code) first.
        Err(login::LoginError::UserChanged) => invalid_code(),
        Err(e) => internal(e, "creating a session"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailBody {
    mfa_token: String,
}

/// `POST /api/v1/auth/mfa/email`: mails a code; 202 once the SMTP server took the message.
pub async fn email(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<EmailBody>,
) -> Response {
    let now = now_unix();
    let client = client(&app, &peer, &headers);
    let row = match live_pending(&app, &body.mfa_token, "mfa", now).await {
        Ok(Some(r)) => r,
        Ok(None) => return invalid_token(),
        Err(e) => return internal(e, "looking up a pending login"),
    };
    if !row.methods.split(',').any(|m| m == "email") {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "method_not_allowed",
            format!("this login is finished with: {}", row.methods),
        )
        .into_response();
    }
    let user = match user_of(&app, &row).await {
        Ok(Some(u)) => u,
        Ok(None) => return invalid_token(),
        Err(e) => return internal(e, "looking up a user"),
    };
    let Some(address) = user
        .email
        .clone()
        .filter(|_| mfa::email_allowed(&app, &user))
    else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_email",
            "no email address may receive codes for this account",
        )
        .into_response();
    };
    // A locked account gets no mail either.
    let ticket = match admit(&app, &user, &client, now).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let response = send_code(&app, &row, &user, &address, now).await;
    app.auth.pending.release(ticket).await;
    response
}

async fn send_code(
    app: &Arc<App>,
    row: &PendingRow,
    user: &UserRow,
    address: &str,
    now: i64,
) -> Response {
    let cfg = app.config.load_full();
    let interval = i64::try_from(cfg.mfa.email_resend_interval.as_secs()).unwrap_or(30);
    let previous = row.email_sent_at;
    match app
        .store
        .reserve_email(&row.token_hash, now, interval, MAX_EMAILS)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            let wait = row
                .email_sent_at
                .map(|sent| sent + interval - now)
                .filter(|w| *w > 0)
                .unwrap_or(interval);
            return if row.emails_sent >= MAX_EMAILS {
                too_many("too many codes for this login; log in again", 0)
            } else {
                too_many("a code was just sent; wait before asking again", wait)
            };
        }
        Err(e) => return internal(e, "reserving a mail"),
    };
    let key = match mfa::email_key(&app.vault).await {
        Ok(k) => k,
        Err(e) => return internal(e, "reading the email-code key"),
    };
    let code = email_code::new_code();
    let hash = email_code::keyed_hash(&key, &row.attempt, &code);
    let ttl = i64::try_from(cfg.mfa.email_code_ttl.as_secs()).unwrap_or(600);
    let expires_at = now + ttl;
    let text = Zeroizing::new(format!(
        "Your {issuer} login code is {code}\n\n\
         It is valid until {until} ({minutes} minutes) for the login you just started.\n\n\
         If you did not just log in, someone else knows your password: tell your administrator.\n",
        issuer = cfg.mfa.totp_issuer,
        code = code.as_str(),
        until = rfc3339(expires_at),
        minutes = ttl / 60,
    ));
    let subject = format!("{} login code", cfg.mfa.totp_issuer);
    if let Err(e) =
        crate::mail::send(&cfg.smtp, &app.vault, address, &subject, text.to_string()).await
    {
        // Nothing was stored: an earlier code (if any) stays as it was.
        error!(error = %e, user = %user.name, "mailing a login code failed");
        if let Err(e) = app.store.release_email(&row.token_hash, previous).await {
            error!(error = %e, "giving back a mail reservation failed");
        }
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "smtp_unavailable",
            "the code could not be mailed; try again later or use another method",
        )
        .into_response();
    }
    if let Err(e) = app
        .store
        .set_email_code(&row.token_hash, &hash, now, expires_at)
        .await
    {
        return internal(e, "storing an emailed code");
    }
    info!(user = %user.name, "login code mailed");
    (
        StatusCode::ACCEPTED,
        Json(json!({ "status": "sent", "expires_at": rfc3339(expires_at) })),
    )
        .into_response()
}

fn too_many(message: &'static str, retry_after: i64) -> Response {
    let mut r = (
        StatusCode::TOO_MANY_REQUESTS,
        Json(
            json!({ "error": "too_many_requests", "message": message, "retry_after": retry_after }),
        ),
    )
        .into_response();
    if retry_after > 0 {
        if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    r
}

/// Who is enrolling: a logged-in user (JWT or cookie) or a forced login (enroll_token).
enum Enroller {
    Session,
    Pending(Box<PendingRow>),
}

async fn enroller(
    app: &Arc<App>,
    headers: &HeaderMap,
    now: i64,
) -> Result<(Enroller, UserRow), Response> {
    let token = token_from(headers).unwrap_or("");
    let (who, user) = if mfa::looks_like_token(token) {
        let row = match live_pending(app, token, "enroll", now).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(invalid_token()),
            Err(e) => return Err(internal(e, "looking up an enrollment")),
        };
        match user_of(app, &row).await {
            Ok(Some(u)) => (Enroller::Pending(Box::new(row)), u),
            Ok(None) => return Err(invalid_token()),
            Err(e) => return Err(internal(e, "looking up a user")),
        }
    } else {
        let session = authenticate(app, headers)
            .await
            .map_err(|_| super::auth_api::unauthorized().into_response())?;
        match app.store.user(&session.user).await {
            Ok(Some(u)) => (Enroller::Session, u),
            Ok(None) => return Err(super::auth_api::unauthorized().into_response()),
            Err(e) => return Err(internal(e, "looking up a user")),
        }
    };
    // A confirmed factor is replaced only after an admin reset: neither a stolen session nor a
    // stale enroll_token (the user enrolled meanwhile) may take it over.
    match app.store.totp(user.id).await {
        Ok(None) => Ok((who, user)),
        Ok(Some(_)) => Err(match who {
            Enroller::Pending(_) => invalid_token(),
            Enroller::Session => ApiError::new(
                StatusCode::CONFLICT,
                "already_enrolled",
                "TOTP is already set up for this account; an admin can reset it (mfa reset)",
            )
            .into_response(),
        }),
        Err(e) => Err(internal(e, "reading TOTP state")),
    }
}

/// `POST /api/v1/auth/totp/enroll`: a fresh secret, pending until confirmed.
/// The request body (`{}` or empty) is read and ignored: answering before a client finished
/// sending it makes HTTP/2 reset the stream, which some clients report as a failure.
pub async fn totp_enroll(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    _body: axum::body::Bytes,
) -> Response {
    let now = now_unix();
    let (_, user) = match enroller(&app, &headers, now).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let secret = totp::new_secret();
    if let Err(e) = app
        .vault
        .set(&mfa::pending_totp_secret_name(user.id), &secret)
        .await
    {
        return internal(e, "storing a TOTP secret");
    }
    let b32 = totp::encode_secret(&secret);
    let issuer = app.config.load().mfa.totp_issuer.clone();
    let uri = totp::otpauth_uri(&issuer, &user.name, &b32);
    let Some(svg) = totp::qr_svg(&uri) else {
        error!("drawing the QR code failed");
        return ApiError::internal().into_response();
    };
    if let Err(e) = app
        .store
        .audit(&user.name, "mfa.totp.enroll", &user.name, "")
        .await
    {
        return internal(e, "auditing a TOTP enrollment");
    }
    no_store(
        Json(json!({ "secret": b32.as_str(), "otpauth_uri": uri.as_str(), "qr_svg": svg }))
            .into_response(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    code: String,
}

/// `POST /api/v1/auth/totp/confirm`: proves the authenticator works; with an enroll_token it
/// also finishes the login.
pub async fn totp_confirm(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ConfirmBody>,
) -> Response {
    let now = now_unix();
    let (who, user) = match enroller(&app, &headers, now).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !totp::well_formed(&body.code) {
        return bad_code();
    }
    let client = client(&app, &peer, &headers);
    // Confirming is a second-factor attempt like any other: the lockout applies.
    let ticket = match admit(&app, &user, &client, now).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let response = confirm_checked(&app, who, user, &client, &body, now, &peer, &headers).await;
    app.auth.pending.release(ticket).await;
    response
}

#[allow(clippy::too_many_arguments)]
async fn confirm_checked(
    app: &Arc<App>,
    who: Enroller,
    user: UserRow,
    client: &Client,
    body: &ConfirmBody,
    now: i64,
    peer: &Peer,
    headers: &HeaderMap,
) -> Response {
    let pending_name = mfa::pending_totp_secret_name(user.id);
    let secret = match app.vault.get(&pending_name).await {
        Ok(s) => s,
        Err(crate::vault::VaultError::NotFound(_)) => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "no_enrollment",
                "no enrollment is waiting; call /api/v1/auth/totp/enroll first",
            )
            .into_response()
        }
        Err(e) => return internal(e, "reading a pending TOTP secret"),
    };
    // An enroll_token has its tries too.
    if let Enroller::Pending(row) = &who {
        if let Err(r) = claim(app, row, now).await {
            return r;
        }
    }
    let Some(step) = totp::verify(&secret, &body.code, now) else {
        if let Enroller::Pending(row) = &who {
            failure(app, row, &user, client, false).await;
        } else if let Err(e) = login::record_failure(app, &user.name, client, "mfa_failed").await {
            error!(error = %e, "recording a second-factor failure failed");
        }
        return invalid_code();
    };
    let confirmed = async {
        // The row first: of two confirmations racing, one claims the account and the other
        // finds it taken, so a confirmed secret is never overwritten.
        if !app.store.confirm_totp(user.id, now, step).await? {
            return Ok(false);
        }
        app.vault
            .set(&mfa::totp_secret_name(user.id), &secret)
            .await?;
        let _ = app.vault.remove(&pending_name).await;
        app.store
            .audit(&user.name, "mfa.totp.confirm", &user.name, "")
            .await?;
        Ok::<_, StepError>(true)
    }
    .await;
    match confirmed {
        Ok(true) => {}
        Ok(false) => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "already_enrolled",
                "TOTP was set up for this account meanwhile",
            )
            .into_response()
        }
        Err(e) => return internal(e, "confirming a TOTP enrollment"),
    }
    info!(user = %user.name, "TOTP enrolled");
    match who {
        Enroller::Session => Json(json!({ "status": "ok" })).into_response(),
        Enroller::Pending(row) => {
            let finish = Finish {
                attempt: &row.attempt,
                totp_step: None,
            };
            match login::issue_session_after_mfa(app, &user, client, &finish).await {
                Ok(issued) => issued_response(&issued, peer, headers),
                Err(login::LoginError::UserChanged) => invalid_token(),
                Err(e) => internal(e, "creating a session"),
            }
        }
    }
}

/// What an enrollment or reset step can fail on, for one log line.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

// ---- admin --------------------------------------------------------------------------------

/// One user's second factor (DESIGN.md §6: `user, method, enrolled_at, exempt_until`).
#[derive(Debug, Serialize)]
pub struct MfaStatusView {
    pub user: String,
    /// `totp`, `email` or `none`.
    pub method: &'static str,
    pub enrolled_at: Option<String>,
    pub exempt_until: Option<String>,
}

pub fn status_views(app: &App, rows: &[crate::store::MfaStatusRow]) -> Vec<MfaStatusView> {
    let cfg = app.config.load();
    rows.iter()
        .map(|r| {
            let email = cfg.mfa.email_fallback
                && r.email.as_deref().is_some_and(|e| !e.is_empty())
                && (r.level < 9 || cfg.mfa.email_for_admins);
            MfaStatusView {
                user: r.user.clone(),
                method: if r.totp_confirmed_at.is_some() {
                    "totp"
                } else if email {
                    "email"
                } else {
                    "none"
                },
                enrolled_at: r.totp_confirmed_at.map(rfc3339),
                exempt_until: r.exempt_until.map(rfc3339),
            }
        })
        .collect()
}

pub async fn admin_status(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = require(&app, &headers, Role::Admin).await {
        return e.into_response();
    }
    match app.store.mfa_status(now_unix()).await {
        Ok(rows) => Json(status_views(&app, &rows)).into_response(),
        Err(e) => internal(e, "listing 2FA status"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    force: bool,
}

pub async fn admin_policy_get(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(e) = require(&app, &headers, Role::Admin).await {
        return e.into_response();
    }
    match mfa::forced(&app).await {
        Ok(force) => Json(json!({ "force": force })).into_response(),
        Err(e) => internal(e, "reading the 2FA policy"),
    }
}

pub async fn admin_policy_put(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PolicyBody>,
) -> Response {
    let session = match require(&app, &headers, Role::Admin).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let value = if body.force { "on" } else { "off" };
    let done = async {
        app.store
            .set_setting(mfa::FORCE_SETTING, value, &session.user, now_unix())
            .await?;
        app.store
            .audit(&session.user, "mfa.policy", "force", value)
            .await
    }
    .await;
    match done {
        Ok(()) => Json(json!({ "force": body.force })).into_response(),
        Err(e) => internal(e, "setting the 2FA policy"),
    }
}

async fn named_user(app: &App, name: &str) -> Result<UserRow, Response> {
    match app.store.user(&name.to_ascii_lowercase()).await {
        Ok(Some(u)) => Ok(u),
        Ok(None) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such user").into_response())
        }
        Err(e) => Err(internal(e, "looking up a user")),
    }
}

/// Removes a user's TOTP (and a pending enrollment) and ends the user's sessions.
pub async fn reset_user(app: &App, user: &UserRow, by: &str) -> Result<bool, StepError> {
    for name in [
        mfa::totp_secret_name(user.id),
        mfa::pending_totp_secret_name(user.id),
    ] {
        match app.vault.remove(&name).await {
            Ok(()) | Err(crate::vault::VaultError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let had = app.store.reset_totp(user.id, now_unix()).await?;
    app.store.audit(by, "mfa.reset", &user.name, "").await?;
    Ok(had)
}

pub async fn admin_reset(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    _body: axum::body::Bytes,
) -> Response {
    let session = match require(&app, &headers, Role::Admin).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let user = match named_user(&app, &name).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match reset_user(&app, &user, &session.user).await {
        Ok(had) => {
            app.auth.sessions.clear();
            warn!(user = %user.name, by = %session.user, "2FA reset; the user's sessions were ended");
            Json(json!({ "user": user.name, "had_totp": had })).into_response()
        }
        Err(e) => internal(e, "resetting 2FA"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExemptBody {
    /// RFC 3339 time the exemption ends.
    until: String,
}

pub async fn admin_exempt(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ExemptBody>,
) -> Response {
    let session = match require(&app, &headers, Role::Admin).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let user = match named_user(&app, &name).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let now = now_unix();
    let until = match time::OffsetDateTime::parse(
        &body.until,
        &time::format_description::well_known::Rfc3339,
    ) {
        Ok(t) => t.unix_timestamp(),
        Err(_) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_until",
                "until must be an RFC 3339 time such as 2026-12-01T08:00:00Z",
            )
            .into_response()
        }
    };
    if until <= now || until - now > MAX_EXEMPTION_SECS {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_until",
            "until must be in the future and at most 90 days away",
        )
        .into_response();
    }
    let done = async {
        app.store
            .set_exemption(user.id, until, &session.user, now)
            .await?;
        app.store
            .audit(
                &session.user,
                "mfa.exempt",
                &user.name,
                &format!("until={}", rfc3339(until)),
            )
            .await
    }
    .await;
    match done {
        Ok(()) => {
            Json(json!({ "user": user.name, "exempt_until": rfc3339(until) })).into_response()
        }
        Err(e) => internal(e, "granting an exemption"),
    }
}

pub async fn admin_unexempt(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let session = match require(&app, &headers, Role::Admin).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let user = match named_user(&app, &name).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    match app.store.remove_exemption(user.id).await {
        Ok(true) => match app
            .store
            .audit(&session.user, "mfa.unexempt", &user.name, "")
            .await
        {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => internal(e, "auditing an exemption's removal"),
        },
        Ok(false) => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this user has no exemption",
        )
        .into_response(),
        Err(e) => internal(e, "removing an exemption"),
    }
}
