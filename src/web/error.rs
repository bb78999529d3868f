//! The one JSON error shape of every HTTP answer: `{"error": "<code>", "message": "<text>"}`
//! (plus `retry_after` where the client is asked to wait), and how each feature's errors map
//! onto it. Handlers return `Result<_, ApiError>` and use `?`; the conversions below are the
//! only place that decides a status code for a feature error.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::auth::admin::AdminError;
use crate::auth::login::{LoginError, Refusal};
use crate::auth::mfa::MfaError;
use crate::recordings::{PathError, RecordingError};
use crate::sip::ticket::TicketError;
use crate::store::StoreError;
use crate::vault::VaultError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable machine-readable code the web tier can switch on.
    pub code: &'static str,
    /// One sentence for people; never contains secrets or internal paths.
    pub message: String,
    /// Seconds the client should wait before trying again, as the body's `retry_after`.
    retry_after: Option<i64>,
    /// The input the error is about, as the body's `field` (settings name it).
    field: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            field: None,
            headers: Vec::new(),
        }
    }

    /// Adds `retry_after` to the body (the header is the caller's choice, see
    /// [`ApiError::header`]).
    pub fn retry_after(mut self, secs: i64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    /// Names the input at fault in the body's `field`.
    pub fn field(mut self, name: impl Into<String>) -> ApiError {
        self.field = Some(name.into());
        self
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
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

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid session is required; log in again",
        )
    }

    /// 429 with `retry_after` in the body and, when there is something to wait, the header.
    fn too_many(code: &'static str, message: &'static str, retry_after: i64) -> ApiError {
        let e =
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message).retry_after(retry_after);
        match HeaderValue::from_str(&retry_after.to_string()) {
            Ok(v) if retry_after > 0 => e.header(header::RETRY_AFTER, v),
            _ => e,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.code, "message": self.message });
        if let Some(secs) = self.retry_after {
            body["retry_after"] = secs.into();
        }
        if let Some(field) = self.field {
            body["field"] = field.into();
        }
        let mut response = (self.status, Json(body)).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::failure("a database request failed", &e)
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> ApiError {
        ApiError::failure("a vault request failed", &e)
    }
}

/// A refused password step (also a locked account at a second-factor step).
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        match r {
            Refusal::InvalidCredentials => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "invalid user name or password",
            ),
            Refusal::Disabled => ApiError::new(
                StatusCode::FORBIDDEN,
                "account_disabled",
                "this account is disabled",
            ),
            Refusal::Throttled { retry_after } => {
                let secs = i64::try_from(retry_after).unwrap_or(i64::MAX);
                let e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_attempts",
                    "too many failed logins; try again later",
                )
                .retry_after(secs);
                match HeaderValue::from_str(&retry_after.to_string()) {
                    Ok(v) => e.header(header::RETRY_AFTER, v),
                    Err(_) => e,
                }
            }
        }
    }
}

impl From<LoginError> for ApiError {
    fn from(e: LoginError) -> ApiError {
        match e {
            // The user's password, level or state changed while the login ran.
            LoginError::UserChanged => Refusal::InvalidCredentials.into(),
            e => ApiError::failure("a login failed internally", &e),
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> ApiError {
        let not_found = |message| ApiError::new(StatusCode::NOT_FOUND, "not_found", message);
        match e {
            AdminError::NoSuchSession => not_found("no live session with that id"),
            AdminError::NoSuchUser => not_found("no such user"),
            AdminError::BadLimit => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "limit must be between 1 and 1000",
            ),
            e => ApiError::failure("an admin request failed", &e),
        }
    }
}

impl From<MfaError> for ApiError {
    fn from(e: MfaError) -> ApiError {
        use MfaError as M;
        let bad = |code, message: String| ApiError::new(StatusCode::BAD_REQUEST, code, message);
        let conflict = |code, message| ApiError::new(StatusCode::CONFLICT, code, message);
        match e {
            M::InvalidToken => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_mfa_token",
                "this login step is unknown, used, expired or locked; log in again",
            ),
            M::InvalidCode => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_code",
                "wrong, expired or already used code",
            ),
            M::BadCode => bad(
                "bad_code",
                "the code is exactly 6 digits (0-9), without spaces".into(),
            ),
            M::BadRecoveryCode => bad(
                "bad_code",
                "a recovery code is 12 letters and digits, as xxxx-xxxx-xxxx".into(),
            ),
            M::NoSecondFactor => conflict(
                "no_second_factor",
                "recovery codes come with a second factor: set up TOTP or a passkey first",
            ),
            M::NoRelyingParty => conflict(
                "passkeys_unavailable",
                "passkeys need [http] public_url with a host name (browsers refuse an IP address)",
            ),
            M::BadPasskeyName => bad(
                "bad_name",
                "a passkey name has 1 to 64 characters and no control characters".into(),
            ),
            M::PasskeyNameTaken => conflict("name_taken", "you already have a passkey of that name"),
            M::PasskeyTaken => conflict("passkey_taken", "this authenticator is registered already"),
            M::TooManyPasskeys => conflict("too_many_passkeys", "at most 10 passkeys per user"),
            M::InvalidRegistration => bad(
                "invalid_registration",
                "this registration is unknown, used or expired: start again".into(),
            ),
            M::PasskeyRejected => bad(
                "passkey_rejected",
                "the authenticator's answer was not accepted (wrong site, no user verification, or not a passkey)".into(),
            ),
            M::BadCredential => bad(
                "bad_credential",
                "credential must be the WebAuthn credential the browser gave, as JSON (base64url fields)".into(),
            ),
            M::NoSuchPasskey => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such passkey")
            }
            M::NoPasskey => conflict("no_passkey", "passwordless login needs a passkey first"),
            M::NoUsableFactor => ApiError::new(
                StatusCode::FORBIDDEN,
                "no_usable_factor",
                "your passkeys belong to another host name and you have no other second factor here: log in on that host, or ask an administrator",
            ),
            M::PasskeyCloned => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "passkey_refused",
                "this passkey's signature counter went back, as a copied authenticator's does: refused",
            ),
            M::WrongPassword => Refusal::InvalidCredentials.into(),
            M::MethodNotAllowed { methods } => bad(
                "method_not_allowed",
                format!("this login is finished with: {methods}"),
            ),
            M::Throttled { retry_after } => Refusal::Throttled { retry_after }.into(),
            M::NoSession => ApiError::unauthorized(),
            M::NoEmail => bad(
                "no_email",
                "no email address may receive codes for this account".into(),
            ),
            M::TooManyCodes => ApiError::too_many(
                "too_many_requests",
                "too many codes for this login; log in again",
                0,
            ),
            M::ResendTooSoon { wait } => ApiError::too_many(
                "too_many_requests",
                "a code was just sent; wait before asking again",
                wait,
            ),
            M::SmtpUnavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "smtp_unavailable",
                "the code could not be mailed; try again later or use another method",
            ),
            M::AlreadyEnrolled => conflict(
                "already_enrolled",
                "TOTP is already set up for this account; an admin can reset it (mfa reset)",
            ),
            M::EnrolledMeanwhile => conflict(
                "already_enrolled",
                "TOTP was set up for this account meanwhile",
            ),
            M::NoEnrollment => conflict(
                "no_enrollment",
                "no enrollment is waiting; call /api/v1/auth/totp/enroll first",
            ),
            M::NoSuchUser => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such user"),
            M::NotExempt => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "this user has no exemption",
            ),
            M::BadUntil => bad(
                "bad_until",
                "until must be in the future and at most 90 days away".into(),
            ),
            // Logged where it happened.
            M::Qr => ApiError::internal(),
            e => ApiError::failure("a second-factor request failed", &e),
        }
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> ApiError {
        let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", message);
        match e {
            PathError::Missing => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such recording")
            }
            PathError::Bad(why) => bad(format!("bad recording path: {why}")),
            PathError::Outside => bad("the path leaves the recordings folder".into()),
            PathError::NotRegular => bad("the path is not a regular file".into()),
            PathError::Root(e) => {
                tracing::error!(error = %e, "the recordings folder ([recordings] root) cannot be opened");
                ApiError::internal()
            }
            PathError::Unreadable(e) => {
                tracing::error!(error = %e, "a recording cannot be opened by pbxguard (permissions?)");
                ApiError::internal()
            }
        }
    }
}

impl From<RecordingError> for ApiError {
    fn from(e: RecordingError) -> ApiError {
        match e {
            RecordingError::Path(e) => e.into(),
            e @ (RecordingError::TtlZero | RecordingError::TtlTooLong { .. }) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_ttl", e.to_string())
            }
            RecordingError::NoSuchLink(_) | RecordingError::NotALink => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such link")
            }
            e @ RecordingError::UnknownNode(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "unknown_node", e.to_string())
            }
            e => ApiError::failure("a recording link request failed", &e),
        }
    }
}

impl From<TicketError> for ApiError {
    fn from(e: TicketError) -> ApiError {
        match e {
            TicketError::NoExtension => ApiError::new(
                StatusCode::FORBIDDEN,
                "no_extension",
                "this user has no SIP extension (pbxguard user set-extension NAME EXT)",
            ),
            TicketError::TooMany => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_tickets",
                "too many unused WebSocket tickets; try again shortly",
            ),
            TicketError::Store(e) => ApiError::failure("reading a user's extension failed", &e),
        }
    }
}
