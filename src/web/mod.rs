//! The HTTP side: routers for the API listener and the redirect listener, the middleware every
//! request passes (metrics, HSTS, body and time limits), and the handlers of the foundation
//! (`/healthz`, `/metrics`). Later modules add their routes in [`api_router`]. [`server`] runs
//! both listeners as the daemon's `[http]` subsystem.

pub mod admin_api;
pub mod auth_api;
pub mod bans_api;
pub mod console;
pub mod error;
pub mod extract;
pub mod login_page;
pub mod mfa_api;
pub mod passkeys_api;
pub mod recordings_api;
pub mod server;
pub mod settings_api;
pub mod sip_api;
pub mod softphone;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post, put};
use axum::{Extension, Json, Router};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::app::App;
use crate::metrics::{RequestLabels, RouteLabels};
// The handlers name these through `super::`; they live in the base layer.
pub use crate::net::{canonical_ip, Peer};
pub use error::ApiError;

/// One year, the value HSTS preload lists expect.
pub(crate) const HSTS: &str = "max-age=31536000";

/// The API listener's router. Built again on reload so that new limits apply to new connections.
pub fn api_router(app: Arc<App>) -> Router {
    let config = app.config.load();
    let (max_body, request_timeout) = config
        .http
        .as_ref()
        .map(|h| (h.max_body_bytes, h.request_timeout))
        .unwrap_or((64 * 1024, std::time::Duration::from_secs(30)));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/auth/login", post(auth_api::login))
        .route("/api/v1/auth/logout", post(auth_api::logout))
        .route(auth_api::CHECK_PATH, get(auth_api::check))
        .route("/api/v1/me", get(auth_api::me))
        .route("/api/v1/admin/sessions", get(admin_api::sessions))
        .route(
            "/api/v1/admin/sessions/{id}",
            delete(admin_api::revoke_session),
        )
        .route(
            "/api/v1/admin/users/{name}/sessions",
            delete(admin_api::revoke_user_sessions),
        )
        .route("/api/v1/admin/login-history", get(admin_api::login_history))
        .route(
            "/api/v1/admin/bans",
            get(bans_api::list)
                .post(bans_api::add)
                .delete(bans_api::remove),
        )
        .route(
            "/api/v1/admin/settings",
            get(settings_api::get).put(settings_api::put),
        )
        .route("/api/v1/auth/mfa", post(mfa_api::finish))
        .route("/api/v1/auth/mfa/email", post(mfa_api::email))
        .route("/api/v1/auth/totp/enroll", post(mfa_api::totp_enroll))
        .route("/api/v1/auth/totp/confirm", post(mfa_api::totp_confirm))
        .route(
            "/api/v1/auth/recovery-codes",
            get(mfa_api::recovery_count).post(mfa_api::recovery_regenerate),
        )
        .route("/api/v1/auth/passkeys", get(passkeys_api::list))
        .route(
            "/api/v1/auth/passkeys/register",
            post(passkeys_api::register_start),
        )
        .route(
            "/api/v1/auth/passkeys/register/finish",
            post(passkeys_api::register_finish),
        )
        .route("/api/v1/auth/passkeys/{id}", delete(passkeys_api::remove))
        .route("/api/v1/auth/passwordless", put(passkeys_api::passwordless))
        .route(
            "/api/v1/auth/passkey/login",
            post(passkeys_api::passkey_login),
        )
        .route("/api/v1/admin/mfa", get(mfa_api::admin_status))
        .route(
            "/api/v1/admin/mfa/policy",
            get(mfa_api::admin_policy_get).put(mfa_api::admin_policy_put),
        )
        .route(
            "/api/v1/admin/users/{name}/mfa/reset",
            post(mfa_api::admin_reset),
        )
        .route(
            "/api/v1/admin/users/{name}/mfa/exempt",
            post(mfa_api::admin_exempt).delete(mfa_api::admin_unexempt),
        )
        .route("/login", get(login_page::page))
        .route("/login/app.js", get(login_page::script))
        .route("/login/style.css", get(login_page::style))
        .route("/sip/softphone.js", get(softphone::module))
        .route("/api/v1/recordings/links", post(recordings_api::mint))
        .route("/api/v1/sip/ticket", post(sip_api::ticket))
        .route("/api/v1/admin/recordings/links", get(recordings_api::links))
        .route(
            "/api/v1/admin/recordings/links/{id}",
            delete(recordings_api::revoke),
        )
        // Every method, so that the handler answers 405 itself and anything under /rec/ that
        // is not a genuine token is one uniform 403.
        .route("/rec/", any(recordings_api::download))
        .route("/rec/{*token}", any(recordings_api::download))
        .merge(console::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        // Outermost, so it also sees (and reshapes) the answers of the layers above.
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// The redirect listener's router: every method and path answers 308 to the same path on
/// `public_url`. The Host header is ignored, so it cannot steer the redirect elsewhere.
pub fn redirect_router(app: Arc<App>) -> Router {
    Router::new()
        .fallback(redirect)
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

async fn redirect(State(app): State<Arc<App>>, req: Request) -> Result<Response, ApiError> {
    let config = app.config.load();
    let base = config
        .http
        .as_ref()
        .map(|h| h.public_url.as_str())
        .unwrap_or("");
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let location = HeaderValue::from_str(&format!("{base}{path}")).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "malformed request target",
        )
    })?;
    Ok((
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, location)],
    )
        .into_response())
}

/// Counts every request by route template (never the raw path, to keep labels bounded) and
/// adds HSTS to answers sent over TLS.
async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = match *req.method() {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::OPTIONS => req.method().as_str().to_string(),
        _ => "other".to_string(),
    };
    let tls = req.extensions().get::<Peer>().is_some_and(|p| p.tls);
    let mut response = next.run(req).await;
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    // The console's pages answer errors as pages of their own (they carry its policy header).
    let page = response
        .headers()
        .contains_key(header::CONTENT_SECURITY_POLICY);
    if !json
        && !page
        && (response.status().is_client_error() || response.status().is_server_error())
    {
        // Layers and extractors below us (timeout, body limit, path decoding) answer with bare
        // text; every error keeps the JSON shape.
        let status = response.status();
        let (code, message) = match status {
            StatusCode::REQUEST_TIMEOUT => ("timeout", "the request took too long"),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the request body is too large"),
            s if s.is_server_error() => ("internal", "internal error; the daemon log has details"),
            _ => ("bad_request", "the request is malformed"),
        };
        response = ApiError::new(status, code, message).into_response();
    }
    if tls {
        response.headers_mut().insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    app.metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            method,
            status: response.status().as_u16(),
        })
        .inc();
    app.metrics
        .request_duration
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The health probe's own shape (monitoring systems read `status`), not the API error shape.
#[derive(Debug)]
struct Unhealthy;

impl IntoResponse for Unhealthy {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "status": "error",
            "version": env!("CARGO_PKG_VERSION"),
            "error": "database_unavailable",
        });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn healthz(State(app): State<Arc<App>>) -> Result<Json<serde_json::Value>, Unhealthy> {
    app.store.ping().await.map_err(|e| {
        tracing::error!(error = %e, "health check: database unreachable");
        Unhealthy
    })?;
    Ok(Json(
        serde_json::json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }),
    ))
}

/// Metrics reveal traffic patterns, so only `[http] metrics_allow` networks may read them.
async fn metrics(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
) -> Result<Response, ApiError> {
    let config = app.config.load();
    let allowed = match (peer, config.http.as_ref()) {
        (Some(Extension(peer)), Some(http)) => {
            let ip = canonical_ip(peer.addr.ip());
            http.metrics_allow.iter().any(|net| net.contains(&ip))
        }
        _ => false,
    };
    if !allowed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "metrics are readable only from [http] metrics_allow networks",
        ));
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        app.metrics.render(),
    )
        .into_response())
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}
