//! The admin API: sessions and the login history (role admin). The operations and their views
//! are `auth::admin`'s, shared with the CLI.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::auth::admin::{self, HistoryView, SessionView, DEFAULT_HISTORY_LIMIT};
use crate::auth::roles::Role;
use crate::auth::sessions::Notice;
use crate::clock::now_unix;

use super::auth_api::require;
use super::extract::ApiQuery;
use super::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsQuery {
    user: Option<String>,
}

pub async fn sessions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<SessionsQuery>,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    require(&app, &headers, Role::Admin).await?;
    let config = app.config.load();
    let views = admin::sessions(&app.store, &config.auth, q.user.as_deref(), now_unix()).await?;
    Ok(Json(views))
}

pub async fn revoke_session(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let admin = require(&app, &headers, Role::Admin).await?;
    let notice = Notice::Daemon(&app.auth.sessions);
    let actor = format!("api:{}", admin.user);
    admin::revoke_session(&app.store, notice, &actor, &id, now_unix()).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn revoke_user_sessions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let admin = require(&app, &headers, Role::Admin).await?;
    let notice = Notice::Daemon(&app.auth.sessions);
    let actor = format!("api:{}", admin.user);
    let n = admin::revoke_user_sessions(&app.store, notice, &actor, &name, now_unix()).await?;
    Ok(Json(json!({ "revoked": n })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    user: Option<String>,
    limit: Option<u32>,
}

pub async fn login_history(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<Vec<HistoryView>>, ApiError> {
    require(&app, &headers, Role::Admin).await?;
    let limit = q.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    Ok(Json(
        admin::history(&app.store, q.user.as_deref(), limit).await?,
    ))
}
