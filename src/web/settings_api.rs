//! The runtime security settings (role admin): `GET /api/v1/admin/settings` answers the
//! settings in force as one flat object; `PUT` takes any subset of its keys, checks every
//! value and the whole together before writing anything, and answers the settings now in
//! force.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{Map, Value};

use crate::app::App;
use crate::auth::roles::Role;
use crate::auth::sessions::Notice;
use crate::clock::now_unix;
use crate::settings::ops::{self, SettingsError};
use crate::settings::{self, Invalid};

use super::auth_api::require;
use super::extract::ApiJson;
use super::ApiError;

fn invalid(e: Invalid) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_setting", e.message).field(e.field)
}

impl From<SettingsError> for ApiError {
    fn from(e: SettingsError) -> ApiError {
        match e {
            SettingsError::Invalid(e) => invalid(e),
            SettingsError::Store(e) => e.into(),
            SettingsError::Stamp(e) => ApiError::failure("announcing a settings change", &e),
        }
    }
}

pub async fn get(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<Map<String, Value>>, ApiError> {
    require(&app, &headers, Role::Admin).await?;
    let now = ops::current(&app.store, &app.file_config()).await?;
    Ok(Json(now.to_json()))
}

pub async fn put(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Map<String, Value>>, ApiError> {
    let session = require(&app, &headers, Role::Admin).await?;
    let Value::Object(body) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the body must be a JSON object of settings",
        ));
    };
    let mut changes = Vec::with_capacity(body.len());
    for (name, value) in &body {
        let key = settings::key(name).map_err(invalid)?;
        changes.push((key, settings::parse_json(key, value).map_err(invalid)?));
    }
    let after = ops::change(
        &app.store,
        &app.file_config(),
        Notice::Daemon(&app.auth.sessions),
        &format!("api:{}", session.user),
        &changes,
        now_unix(),
    )
    .await?;
    app.reload_settings().await;
    Ok(Json(after.to_json()))
}
