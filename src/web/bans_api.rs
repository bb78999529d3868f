//! The admin API of the ban list (role admin): `GET/POST/DELETE /api/v1/admin/bans`. The
//! operations and their views are `bans::admin`'s, shared with the CLI; the daemon's copy and
//! the firewall follow at once.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;

use crate::app::{exempt_nets, App};
use crate::auth::roles::Role;
use crate::bans::admin::{self, BanError, BanView, Lifted, Request};

use super::auth_api::require;
use super::extract::{ApiJson, ApiQuery};
use super::ApiError;

impl From<BanError> for ApiError {
    fn from(e: BanError) -> ApiError {
        match e {
            BanError::Store(e) => e.into(),
            BanError::NeverBanned(..) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "never_banned",
                e.to_string(),
            ),
            e => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
        }
    }
}

pub async fn list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
) -> Result<Json<Vec<BanView>>, ApiError> {
    require(&app, &headers, Role::Admin).await?;
    Ok(Json(admin::list(&app.store).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    address: String,
    /// A duration such as `"2h"` or `"30m"`; `[bans] duration` when absent.
    duration: Option<String>,
    reason: Option<String>,
}

pub async fn add(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<AddBody>,
) -> Result<(StatusCode, Json<BanView>), ApiError> {
    let admin_session = require(&app, &headers, Role::Admin).await?;
    let duration: Option<Duration> = match body.duration.as_deref() {
        None => None,
        Some(text) => {
            Some(humantime::parse_duration(text).map_err(|_| ApiError::from(BanError::Duration))?)
        }
    };
    let config = app.config.load();
    let view = admin::add(
        &app.store,
        &config.bans,
        &exempt_nets(&config),
        &format!("api:{}", admin_session.user),
        &config.daemon.node_name,
        &Request {
            address: &body.address,
            duration,
            reason: body.reason.as_deref(),
        },
    )
    .await?;
    app.bans_changed.notify_one();
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    address: Option<String>,
    all: Option<bool>,
}

pub async fn remove(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> Result<Json<Lifted>, ApiError> {
    let admin_session = require(&app, &headers, Role::Admin).await?;
    let address = match (q.address.as_deref(), q.all.unwrap_or(false)) {
        (Some(a), false) => Some(a),
        (None, true) => None,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give exactly one of address=ADDRESS and all=true",
            ))
        }
    };
    let lifted = admin::remove(&app.store, &format!("api:{}", admin_session.user), address).await?;
    app.bans_changed.notify_one();
    Ok(Json(lifted))
}
