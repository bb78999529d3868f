//! `GET /login`: a plain page (embedded in the binary, no framework) that logs in, asks for the
//! second factor the server wants, and walks a forced user through TOTP enrollment. Served with
//! a strict Content-Security-Policy: only its own script and style, the QR code as a data: image.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::ApiError;

const HTML: &str = include_str!("../../assets/login/index.html");
const JS: &str = include_str!("../../assets/login/app.js");
const CSS: &str = include_str!("../../assets/login/style.css");

pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

pub async fn page() -> Result<Response, ApiError> {
    Ok(asset(HTML, "text/html; charset=utf-8"))
}

pub async fn script() -> Result<Response, ApiError> {
    Ok(asset(JS, "text/javascript; charset=utf-8"))
}

pub async fn style() -> Result<Response, ApiError> {
    Ok(asset(CSS, "text/css; charset=utf-8"))
}
