//! `POST /api/v1/sip/ticket`: trades a web session for a single-use WebSocket ticket, which a
//! browser softphone (JsSIP, SIP.js) passes in the WebSocket URL because it cannot set headers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::auth_api::require;
use super::ApiError;
use crate::app::App;
use crate::auth::roles::Role;
use crate::clock::{now_unix, rfc3339};
use crate::config::Config;
use crate::sip::ticket::Binding;
use crate::sip::transport::WS_PATH;

/// Where the browser opens the WebSocket: `sip.public_host`, else the host of
/// `http.public_url`, with the WebSocket port.
fn ws_url(config: &Config, ticket: &str) -> Option<String> {
    let sip = config.sip.as_ref()?;
    let host = sip.public_host.clone().or_else(|| {
        let url = config
            .http
            .as_ref()?
            .public_url
            .parse::<axum::http::Uri>()
            .ok()?;
        Some(url.host()?.to_string())
    })?;
    Some(format!(
        "wss://{host}:{}{WS_PATH}?ticket={ticket}",
        sip.wss_listen.port()
    ))
}

pub async fn ticket(State(app): State<Arc<App>>, headers: HeaderMap, _body: Bytes) -> Response {
    let session = match require(&app, &headers, Role::Agent).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let config = app.config.load_full();
    let Some(sip) = config.sip.as_ref() else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "sip_disabled",
            "the SIP edge is not enabled ([sip] is not configured)",
        )
        .into_response();
    };
    let extension = match app.store.user_extension(&session.user).await {
        Ok(Some(ext)) => ext,
        Ok(None) => {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "no_extension",
                "this user has no SIP extension (pbxguard user set-extension NAME EXT)",
            )
            .into_response()
        }
        Err(e) => {
            return ApiError::failure("reading a user's extension failed", &e).into_response()
        }
    };
    let binding = Binding {
        user: session.user.to_string(),
        extension: extension.clone(),
        session: session.id.to_string(),
    };
    let ttl: Duration = sip.ticket_ttl;
    let Some(ticket) = app.sip_tickets.mint(binding, ttl, Instant::now()) else {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_tickets",
            "too many unused WebSocket tickets; try again shortly",
        )
        .into_response();
    };
    let mut body = json!({
        "ticket": ticket,
        "expires_at": rfc3339(now_unix() + ttl.as_secs() as i64),
        "extension": extension,
    });
    if let Some(url) = ws_url(&config, &ticket) {
        body["ws_url"] = json!(url);
    }
    let mut r = Json(body).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
