//! The second factor over HTTP: finishing a login with a TOTP or emailed code, mailing a code,
//! TOTP enrollment and confirmation, recovery codes, and the admin's policy, status, resets
//! and exemptions.
//! The steps are `auth::mfa`'s; these handlers parse, call and render.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;
use tracing::warn;

use crate::app::App;
use crate::auth::mfa::admin::{self, MfaStatusView};
use crate::auth::mfa::enroll::{Confirmed, Enroller, Enrolling};
use crate::auth::mfa::login::CodeAttempt;
use crate::auth::mfa::looks_like_token;
use crate::auth::roles::Role;
use crate::auth::sessions::Notice;
use crate::clock::{now_unix, rfc3339};

use zeroize::Zeroizing;

use super::auth_api::{
    authenticate, client, issued_response, issued_response_with, mfa, no_store, require, token_from,
};
use super::extract::ApiJson;
use super::{ApiError, Peer};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinishBody {
    mfa_token: String,
    method: String,
    /// A TOTP, emailed or recovery code.
    #[serde(default)]
    code: Option<String>,
    /// A passkey's assertion (`method` `webauthn`): the browser's `PublicKeyCredential` as
    /// JSON, binary fields in base64url.
    #[serde(default)]
    credential: Option<serde_json::Value>,
}

/// `POST /api/v1/auth/mfa`.
pub async fn finish(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<FinishBody>,
) -> Result<Response, ApiError> {
    let client = client(&app, &peer, &headers);
    // The session is signed with the key that is current now, even if the CLI just replaced it.
    app.sync_auth().await;
    let config = app.config.load_full();
    let m = mfa(&app, &config);
    let issued = if body.method == "webauthn" {
        let credential = body.credential.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "method webauthn needs credential (the browser's PublicKeyCredential as JSON)",
            )
        })?;
        m.finish_passkey(&body.mfa_token, credential, &client, now_unix())
            .await?
    } else {
        let code = body.code.as_deref().ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "code is missing",
            )
        })?;
        let attempt = CodeAttempt {
            token: &body.mfa_token,
            method: &body.method,
            code,
        };
        m.finish(attempt, &client, now_unix()).await?
    };
    Ok(issued_response(&issued, &peer, &headers))
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
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let client = client(&app, &peer, &headers);
    let config = app.config.load_full();
    let expires_at = mfa(&app, &config)
        .mail_code(&body.mfa_token, &client, now_unix())
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "status": "sent", "expires_at": rfc3339(expires_at) })),
    ))
}

/// Who is enrolling: a forced login (its enroll_token as the bearer token) or a logged-in
/// user (JWT or cookie).
async fn enrolling(app: &App, headers: &HeaderMap, now: i64) -> Result<Enrolling, ApiError> {
    let token = token_from(headers).unwrap_or("");
    let config = app.config.load_full();
    let m = mfa(app, &config);
    if looks_like_token(token) {
        return Ok(m.enrolling(Enroller::Token(token), now).await?);
    }
    let session = authenticate(app, headers)
        .await
        .map_err(|_| ApiError::unauthorized())?;
    Ok(m.enrolling(Enroller::Session(&session.user), now).await?)
}

/// `POST /api/v1/auth/totp/enroll`: a fresh secret, pending until confirmed.
/// The request body (`{}` or empty) is read and ignored: answering before a client finished
/// sending it makes HTTP/2 reset the stream, which some clients report as a failure.
pub async fn totp_enroll(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    _body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let who = enrolling(&app, &headers, now_unix()).await?;
    let config = app.config.load_full();
    let e = mfa(&app, &config).enroll(&who).await?;
    let body = json!({
        "secret": e.secret.as_str(),
        "otpauth_uri": e.otpauth_uri.as_str(),
        "qr_svg": e.qr_svg,
    });
    Ok(no_store(Json(body).into_response()))
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
) -> Result<Response, ApiError> {
    let now = now_unix();
    let who = enrolling(&app, &headers, now).await?;
    let client = client(&app, &peer, &headers);
    // A finished login is signed with the key that is current now.
    app.sync_auth().await;
    let config = app.config.load_full();
    match mfa(&app, &config)
        .confirm(who, &body.code, &client, now)
        .await?
    {
        Confirmed::Enrolled(codes) => {
            let mut body = json!({ "status": "ok" });
            if let (Some(map), Some(codes)) = (body.as_object_mut(), codes) {
                map.insert("recovery_codes".into(), codes_json(&codes));
            }
            Ok(no_store(Json(body).into_response()))
        }
        Confirmed::LoggedIn(issued, codes) => {
            let mut extra = serde_json::Map::new();
            if let Some(codes) = codes {
                extra.insert("recovery_codes".into(), codes_json(&codes));
            }
            Ok(issued_response_with(&issued, &peer, &headers, extra))
        }
    }
}

pub(super) fn codes_json(codes: &[Zeroizing<String>]) -> serde_json::Value {
    serde_json::Value::from(codes.iter().map(|c| c.as_str()).collect::<Vec<_>>())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegenerateBody {
    password: String,
}

/// `POST /api/v1/auth/recovery-codes`: a new set of recovery codes for the session's user,
/// with the current password; the old set is void. Shown once.
pub async fn recovery_regenerate(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RegenerateBody>,
) -> Result<Response, ApiError> {
    let password = Zeroizing::new(body.password);
    let session = authenticate(&app, &headers)
        .await
        .map_err(|_| ApiError::unauthorized())?;
    if password.is_empty() || password.len() > crate::auth::password::MAX_LEN {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "password must have 1 to 1024 bytes",
        ));
    }
    let client = client(&app, &peer, &headers);
    let config = app.config.load_full();
    let codes = mfa(&app, &config)
        .regenerate_recovery_codes(&session.user, password, &client, now_unix())
        .await?;
    Ok(no_store(
        Json(json!({ "recovery_codes": codes_json(&codes) })).into_response(),
    ))
}

/// `GET /api/v1/auth/recovery-codes`: how many of the session user's codes are left.
pub async fn recovery_count(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let session = authenticate(&app, &headers)
        .await
        .map_err(|_| ApiError::unauthorized())?;
    let user = app
        .store
        .user(&session.user)
        .await?
        .ok_or_else(ApiError::unauthorized)?;
    let (total, left) = crate::auth::mfa::recovery::count(&app.store, user.id).await?;
    Ok(Json(json!({ "total": total, "left": left })))
}

// ---- admin --------------------------------------------------------------------------------

pub async fn admin_status(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<Vec<MfaStatusView>>, ApiError> {
    require(&app, &headers, Role::Admin).await?;
    let config = app.config.load();
    Ok(Json(
        admin::status(&app.store, &config.mfa, now_unix()).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    force: bool,
}

pub async fn admin_policy_get(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    require(&app, &headers, Role::Admin).await?;
    let force = admin::policy(&app.store, &app.config.load().mfa).await?;
    Ok(Json(json!({ "force": force })))
}

pub async fn admin_policy_put(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PolicyBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let session = require(&app, &headers, Role::Admin).await?;
    admin::set_policy(&app.store, &session.user, body.force, now_unix()).await?;
    Ok(Json(json!({ "force": body.force })))
}

pub async fn admin_reset(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    _body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let session = require(&app, &headers, Role::Admin).await?;
    let notice = Notice::Daemon(&app.auth.sessions);
    let reset = admin::reset(
        &app.store,
        &app.vault,
        notice,
        &session.user,
        &name,
        now_unix(),
    )
    .await?;
    warn!(user = %reset.user, by = %session.user, "2FA reset; the user's sessions were ended");
    Ok(Json(
        json!({ "user": reset.user, "had_totp": reset.had_totp, "passkeys_removed": reset.passkeys }),
    ))
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
) -> Result<Json<serde_json::Value>, ApiError> {
    let session = require(&app, &headers, Role::Admin).await?;
    let until =
        time::OffsetDateTime::parse(&body.until, &time::format_description::well_known::Rfc3339)
            .map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_until",
                    "until must be an RFC 3339 time such as 2026-12-01T08:00:00Z",
                )
            })?
            .unix_timestamp();
    let user = admin::exempt(&app.store, &session.user, &name, until, now_unix()).await?;
    Ok(Json(
        json!({ "user": user, "exempt_until": rfc3339(until) }),
    ))
}

pub async fn admin_unexempt(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let session = require(&app, &headers, Role::Admin).await?;
    admin::unexempt(&app.store, &session.user, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
