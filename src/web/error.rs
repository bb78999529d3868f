//! The one JSON error shape of every HTTP answer: `{"error": "<code>", "message": "<text>"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable code the web tier can switch on.
    pub code: &'static str,
    /// One sentence for people; never contains secrets or internal paths.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the daemon log has details",
        )
    }

    /// The database cannot take the write now (disk full, I/O errors, read-only): nothing the
    /// request asked for is confirmed as saved, and the client may retry.
    pub fn store_unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the database cannot save changes right now; nothing was confirmed, try again later",
        )
    }

    /// The answer to a failure the client cannot fix: 503 `store_unavailable` when the store
    /// could not take the write (the store logs such a fault when it starts and when it ends,
    /// so it is only a debug line here), 500 `internal` for anything else, logged as `what`.
    pub fn failure(what: &str, e: &(dyn std::error::Error + 'static)) -> ApiError {
        if crate::store::is_unavailable(e) {
            tracing::debug!(error = %e, "{what}: database unavailable");
            ApiError::store_unavailable()
        } else {
            tracing::error!(error = %e, "{what}");
            ApiError::internal()
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        (self.status, Json(body)).into_response()
    }
}
