//! `POST /api/v1/sip/ticket`: trades a web session for a single-use WebSocket ticket, which a
//! browser softphone (JsSIP, SIP.js) passes in the WebSocket URL because it cannot set headers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::auth_api::{no_store, require};
use super::ApiError;
use crate::app::App;
use crate::auth::roles::Role;
use crate::clock::rfc3339;
use crate::config::Config;
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

pub async fn ticket(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    _body: Bytes,
) -> Result<Response, ApiError> {
    let session = require(&app, &headers, Role::Agent).await?;
    let config = app.config.load_full();
    let Some(sip) = config.sip.as_ref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "sip_disabled",
            "the SIP edge is not enabled ([sip] is not configured)",
        ));
    };
    let issued = app
        .sip_tickets
        .issue(&app.store, &session.user, &session.id, sip.ticket_ttl)
        .await?;
    let mut body = json!({
        "ticket": issued.ticket,
        "expires_at": rfc3339(issued.expires_at),
        "extension": issued.extension,
    });
    if let Some(url) = ws_url(&config, &issued.ticket) {
        body["ws_url"] = json!(url);
    }
    Ok(no_store(Json(body).into_response()))
}
