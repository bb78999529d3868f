//! The admin API: sessions and the login history (role admin).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::App;
use crate::auth::roles::Role;
use crate::clock::{now_unix, rfc3339};
use crate::store::{HistoryRow, SessionRow};

use super::auth_api::require;
use super::extract::ApiQuery;
use super::ApiError;

/// Largest page of the login history.
pub const MAX_HISTORY_LIMIT: u32 = 1000;
pub const DEFAULT_HISTORY_LIMIT: u32 = 100;

/// A session as admins (API and `session list --json`) see it.
#[derive(Debug, Serialize)]
pub struct SessionView {
    pub id: String,
    pub user: String,
    pub created_at: String,
    pub last_seen: String,
    pub ip: String,
    pub user_agent: String,
    /// The earlier of the absolute expiry and the idle expiry.
    pub expires_at: String,
}

impl SessionView {
    pub fn new(row: &SessionRow, idle_secs: i64) -> SessionView {
        SessionView {
            id: row.id.clone(),
            user: row.user.clone(),
            created_at: rfc3339(row.created_at),
            last_seen: rfc3339(row.last_seen),
            ip: row.ip.clone(),
            user_agent: row.user_agent.clone(),
            expires_at: rfc3339(row.expires_at.min(row.last_seen + idle_secs)),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct HistoryView {
    pub at: String,
    pub user: String,
    pub ip: String,
    pub user_agent: String,
    pub result: String,
}

impl From<HistoryRow> for HistoryView {
    fn from(r: HistoryRow) -> HistoryView {
        HistoryView {
            at: rfc3339(r.at),
            user: r.user,
            ip: r.ip,
            user_agent: r.user_agent,
            result: r.result,
        }
    }
}

/// 503 `store_unavailable` or 500 (logged), see [`ApiError::failure`].
fn internal(e: impl std::error::Error + 'static) -> Response {
    ApiError::failure("admin API failed", &e).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsQuery {
    user: Option<String>,
}

pub async fn sessions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<SessionsQuery>,
) -> Response {
    if let Err(e) = require(&app, &headers, Role::Admin).await {
        return e.into_response();
    }
    let idle = app.config.load().auth.session_idle_timeout.as_secs() as i64;
    match app
        .store
        .live_sessions(q.user.as_deref(), now_unix(), idle)
        .await
    {
        Ok(rows) => Json(
            rows.iter()
                .map(|r| SessionView::new(r, idle))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => internal(e),
    }
}

pub async fn revoke_session(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let admin = match require(&app, &headers, Role::Admin).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    match app.store.revoke_session(&id, now_unix()).await {
        Ok(true) => {
            app.auth.sessions.forget(&id);
            if let Err(e) = app
                .store
                .audit(&format!("api:{}", admin.user), "session.revoke", &id, "")
                .await
            {
                return internal(e);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no live session with that id",
        )
        .into_response(),
        Err(e) => internal(e),
    }
}

pub async fn revoke_user_sessions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let admin = match require(&app, &headers, Role::Admin).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    match app.store.revoke_user_sessions(&name, now_unix()).await {
        Ok(Some(n)) => {
            app.auth.sessions.clear();
            let detail = format!("{n} sessions");
            if let Err(e) = app
                .store
                .audit(
                    &format!("api:{}", admin.user),
                    "session.revoke-user",
                    &name,
                    &detail,
                )
                .await
            {
                return internal(e);
            }
            Json(json!({ "revoked": n })).into_response()
        }
        Ok(None) => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such user").into_response()
        }
        Err(e) => internal(e),
    }
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
) -> Response {
    if let Err(e) = require(&app, &headers, Role::Admin).await {
        return e.into_response();
    }
    let limit = q.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    if limit == 0 || limit > MAX_HISTORY_LIMIT {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "limit must be between 1 and 1000",
        )
        .into_response();
    }
    match app.store.history(q.user.as_deref(), limit).await {
        Ok(rows) => {
            Json(rows.into_iter().map(HistoryView::from).collect::<Vec<_>>()).into_response()
        }
        Err(e) => internal(e),
    }
}
