//! `GET /sip/softphone.js`: the browser softphone module (embedded in the binary) that web pages
//! import to use the SIP edge without a SIP password. Its path is stable and it changes with
//! pbxguard, so it is served with `no-cache` and an ETag: browsers and nginx revalidate on every
//! load and get a 304 until an upgrade brings a new module.

use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::login_page::CSP;
use super::ApiError;

const JS: &str = include_str!("../../assets/sip/softphone.js");

/// A strong validator of the module's bytes: 128 bits of its SHA-256 suffice to tell versions.
static ETAG: LazyLock<HeaderValue> = LazyLock::new(|| {
    let digest = Sha256::digest(JS.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("\"{hex}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
});

/// Whether `If-None-Match` names our ETag (or `*`); weak forms match too (RFC 9110 §13.1.2
/// uses the weak comparison for If-None-Match).
fn not_modified(headers: &HeaderMap) -> bool {
    let ours = ETAG.to_str().unwrap_or_default();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == ours)
}

pub async fn module(headers: HeaderMap) -> Result<Response, ApiError> {
    let common = [
        (header::ETAG, ETAG.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if not_modified(&headers) {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    Ok((
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        )],
        JS,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists() {
        let etag = ETAG.to_str().unwrap().to_string();
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            not_modified(&h)
        };
        assert!(with(&etag));
        assert!(with(&format!("W/{etag}")));
        assert!(with(&format!("\"other\", {etag}")));
        assert!(with("*"));
        assert!(!with("\"other\""));
        assert!(!with(&etag[..etag.len() - 2]));
        assert!(!not_modified(&HeaderMap::new()));
    }
}
