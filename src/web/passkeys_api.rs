//! Passkeys over HTTP: the signed-in user's list, registration (with the current password),
//! removal, the passwordless opt-in, and the start of a passwordless login. The steps are
//! `auth::mfa::passkey`'s; these handlers parse, call and render.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use crate::app::App;
use crate::auth::sessions::Session;
use crate::clock::now_unix;

use super::auth_api::{authenticate, client, mfa, no_store};
use super::extract::ApiJson;
use super::mfa_api::codes_json;
use super::{ApiError, Peer};

async fn signed_in(app: &App, headers: &HeaderMap) -> Result<Session, ApiError> {
    authenticate(app, headers)
        .await
        .map_err(|_| ApiError::unauthorized())
}

fn checked_password(password: String) -> Result<Zeroizing<String>, ApiError> {
    let password = Zeroizing::new(password);
    if password.is_empty() || password.len() > crate::auth::password::MAX_LEN {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "password must have 1 to 1024 bytes",
        ));
    }
    Ok(password)
}

/// `GET /api/v1/auth/passkeys`: the session user's passkeys and passwordless opt-in.
pub async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let session = signed_in(&app, &headers).await?;
    let config = app.config.load_full();
    let m = mfa(&app, &config);
    let keys = m.passkeys_of(&session.user).await?;
    let passwordless = m.passwordless_of(&session.user).await?;
    Ok(no_store(
        Json(json!({
            "passkeys": keys,
            "passwordless": passwordless,
            "available": m.relying_party().is_some(),
        }))
        .into_response(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    name: String,
    password: String,
}

/// `POST /api/v1/auth/passkeys/register`: a registration token and the options for
/// `navigator.credentials.create`.
pub async fn register_start(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<Response, ApiError> {
    let session = signed_in(&app, &headers).await?;
    let password = checked_password(body.password)?;
    let client = client(&app, &peer, &headers);
    let config = app.config.load_full();
    let (token, options) = mfa(&app, &config)
        .passkey_register_start(&session.user, password, &body.name, &client, now_unix())
        .await?;
    Ok(no_store(
        Json(json!({ "registration_token": token, "options": options })).into_response(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterFinishBody {
    registration_token: String,
    credential: serde_json::Value,
}

/// `POST /api/v1/auth/passkeys/register/finish`: 201 with the new passkey (and the first
/// recovery codes when this was the user's first second factor).
pub async fn register_finish(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RegisterFinishBody>,
) -> Result<Response, ApiError> {
    let session = signed_in(&app, &headers).await?;
    let client = client(&app, &peer, &headers);
    let config = app.config.load_full();
    let (view, codes) = mfa(&app, &config)
        .passkey_register_finish(
            &session.user,
            &body.registration_token,
            &body.credential,
            &client,
            now_unix(),
        )
        .await?;
    let mut answer = json!({ "passkey": view });
    if let (Some(map), Some(codes)) = (answer.as_object_mut(), codes) {
        map.insert("recovery_codes".into(), codes_json(&codes));
    }
    Ok(no_store(
        (StatusCode::CREATED, Json(answer)).into_response(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordBody {
    password: String,
}

/// `DELETE /api/v1/auth/passkeys/{id}` with `{"password"}`: 204.
pub async fn remove(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PasswordBody>,
) -> Result<StatusCode, ApiError> {
    let session = signed_in(&app, &headers).await?;
    let password = checked_password(body.password)?;
    let client = client(&app, &peer, &headers);
    let config = app.config.load_full();
    mfa(&app, &config)
        .passkey_remove(&session.user, password, &id, &client)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordlessBody {
    enabled: bool,
    #[serde(default)]
    password: Option<String>,
}

/// `PUT /api/v1/auth/passwordless` with `{"enabled", "password"}` (the password to turn it
/// on): `{"passwordless": bool}`.
pub async fn passwordless(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PasswordlessBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let session = signed_in(&app, &headers).await?;
    let password = body.password.map(checked_password).transpose()?;
    let client = client(&app, &peer, &headers);
    let config = app.config.load_full();
    let on = mfa(&app, &config)
        .set_passwordless(&session.user, body.enabled, password, &client, now_unix())
        .await?;
    Ok(Json(json!({ "passwordless": on })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasskeyLoginBody {
    username: String,
}

/// `POST /api/v1/auth/passkey/login` with `{"username"}`: a login to finish with a passkey
/// alone, answered as a password step's `mfa_required` (finished at `/api/v1/auth/mfa` with
/// `method` `webauthn`). Every name gets the same shape of answer.
pub async fn passkey_login(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PasskeyLoginBody>,
) -> Result<Response, ApiError> {
    if body.username.is_empty() || body.username.len() > 256 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "username must have 1 to 256 bytes",
        ));
    }
    let client = client(&app, &peer, &headers);
    app.sync_auth().await;
    let config = app.config.load_full();
    let (token, options) = mfa(&app, &config)
        .passwordless_start(&body.username, &client, now_unix())
        .await?;
    Ok(no_store(
        Json(json!({
            "status": "mfa_required",
            "mfa_token": token,
            "methods": ["webauthn"],
            "webauthn": options,
        }))
        .into_response(),
    ))
}
