//! Asterisk's realtime interface (`res_config_curl`) on `[realtime] listen`: SIP auth objects
//! (family `ps_auths`) decrypted from the vault only when Asterisk asks for one, so no SIP
//! password sits in a plaintext `pjsip.conf` or database.
//!
//! Asterisk ignores the HTTP status and reads only the body, so every answer it can receive is
//! shaped as it expects: `single` one line, `multi` one line per record, writes a row count
//! (`-1` refused), `require` `0`, and an empty body for "nothing" — including errors, which
//! must never yield a partial record. Credentials: HTTP basic auth, `[realtime] username` and
//! the vault secret `password_secret`. [`service`] runs the listener for the daemon;
//! [`credentials`] is how admins (and Asterisk's writes) change the credentials.

pub mod config;
pub mod credentials;
pub mod service;
pub mod throttle;
pub mod wire;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Extension, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::Digest;
use subtle::ConstantTimeEq;
use tracing::{debug, error, info, warn};
use zeroize::Zeroizing;

use self::credentials::By;
use crate::metrics::{Metrics, RealtimeLabels};
use crate::net::Peer;
use crate::realtime::config::RealtimeConfig;
use crate::store::{SipCredentialRow, Store};
use crate::vault::Vault;
use wire::Field;

/// Families served.
pub const FAMILIES: &[&str] = &["ps_auths"];
/// Vault secret holding the password of SIP credential `<id>`.
pub const SIP_SECRET_PREFIX: &str = "sip/";
/// Longest SIP credential id (also a vault name segment) and user name.
pub const MAX_ID_LEN: usize = 64;
pub const MAX_USERNAME_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    #[error("SIP credential ids are 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 . _ -")]
    BadId,
    #[error("SIP user names are 1-{MAX_USERNAME_LEN} printable characters without spaces")]
    BadUsername,
}

pub fn validate_id(id: &str) -> Result<(), RealtimeError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then_some(()).ok_or(RealtimeError::BadId)
}

pub fn validate_username(name: &str) -> Result<(), RealtimeError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USERNAME_LEN
        && !name.chars().any(|c| c.is_control() || c.is_whitespace());
    ok.then_some(()).ok_or(RealtimeError::BadUsername)
}

pub fn secret_name(id: &str) -> String {
    format!("{SIP_SECRET_PREFIX}{id}")
}

/// What the realtime interface uses of the rest of the daemon.
#[derive(Debug)]
pub struct Context {
    pub store: Store,
    /// The SIP passwords and `password_secret`.
    pub vault: Vault,
    pub metrics: Metrics,
    /// `[realtime]` in force: set by [`service::Realtime`] on start and reload.
    pub config: ArcSwapOption<RealtimeConfig>,
    /// Wrong credentials per address.
    pub throttle: throttle::Throttle,
}

impl Context {
    pub fn new(store: Store, vault: Vault, metrics: Metrics) -> Context {
        Context {
            store,
            vault,
            metrics,
            config: ArcSwapOption::empty(),
            throttle: throttle::Throttle::default(),
        }
    }
}

/// The realtime listener's router.
pub fn router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/realtime/{family}/{op}", any(handle))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(DefaultBodyLimit::max(wire::MAX_REQUEST))
        .with_state(ctx)
}

fn plain(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// Whether the request carries `[realtime] username` and the vault password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    Yes,
    No,
    /// The database cannot be read: the password cannot be checked.
    StoreDown,
}

async fn authorised(ctx: &Context, headers: &HeaderMap, peer: Option<&Peer>) -> Auth {
    let config = ctx.config.load();
    let Some(rt) = config.as_deref() else {
        return Auth::No;
    };
    let who = peer.map(|p| p.addr.to_string()).unwrap_or_default();
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .map(Zeroizing::new);
    let Some(given) = given else {
        warn!(peer = %who, "realtime request without credentials refused");
        return Auth::No;
    };
    let expected = match ctx.vault.get(&rt.password_secret).await {
        Ok(p) => p,
        Err(e) if crate::store::is_unavailable(&e) => {
            warn!(error = %e, "realtime request while the database is unavailable");
            return Auth::StoreDown;
        }
        Err(e) => {
            error!(secret = %rt.password_secret, error = %e, "realtime password unavailable; every realtime request is refused until `pbxguard secret set {}` stores it", rt.password_secret);
            return Auth::No;
        }
    };
    let mut want = Zeroizing::new(Vec::with_capacity(rt.username.len() + 1 + expected.len()));
    want.extend_from_slice(rt.username.as_bytes());
    want.push(b':');
    want.extend_from_slice(&expected);
    // Digests, so that neither the content nor the length of the expected value leaks.
    let digest = |b: &[u8]| sha2::Sha256::digest(b);
    let ok: bool = digest(&want).ct_eq(&digest(&given)).into();
    if !ok {
        warn!(peer = %who, "realtime request with wrong credentials refused");
        return Auth::No;
    }
    Auth::Yes
}

/// res_config_curl parses the body of store/update/destroy as a number after skipping
/// leading blanks — and reads past the end of an empty body. Those operations never get one.
fn for_op(op: &str, r: Response) -> Response {
    // Every 200 answer to a write already carries its count; the refusals carry nothing.
    if !matches!(op, "store" | "update" | "destroy") || r.status() == StatusCode::OK {
        return r;
    }
    let status = r.status();
    let mut out = plain(status, "-1\n".to_string());
    if let Some(v) = r.headers().get(header::WWW_AUTHENTICATE) {
        out.headers_mut()
            .insert(header::WWW_AUTHENTICATE, v.clone());
    }
    out
}

async fn handle(
    State(ctx): State<Arc<Context>>,
    Path((family, op)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    peer: Option<Extension<Peer>>,
    method: Method,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let op_label = match op.as_str() {
        "single" | "multi" | "store" | "update" | "destroy" | "require" | "static" => op.clone(),
        _ => "other".to_string(),
    };
    let family_label = if FAMILIES.contains(&family.as_str()) {
        family.clone()
    } else {
        "other".to_string()
    };
    let count = |status: StatusCode| {
        ctx.metrics
            .realtime_requests
            .get_or_create(&RealtimeLabels {
                family: family_label.clone(),
                op: op_label.clone(),
                status: status.as_u16(),
            })
            .inc();
    };
    let ip = peer.as_ref().map(|Extension(p)| p.addr.ip());
    let now = std::time::Instant::now();
    if ip.is_some_and(|ip| ctx.throttle.blocked(ip, now)) {
        // Not even looked at: the address guessed too often; Asterisk retries.
        count(StatusCode::TOO_MANY_REQUESTS);
        return for_op(&op, plain(StatusCode::TOO_MANY_REQUESTS, String::new()));
    }
    let verdict = authorised(&ctx, &headers, peer.as_ref().map(|Extension(p)| p)).await;
    if let Some(ip) = ip {
        match verdict {
            Auth::Yes => ctx.throttle.succeeded(ip),
            Auth::No => {
                if ctx.throttle.failed(ip, now) == throttle::Failed::Blocked {
                    warn!(peer = %ip, failures = throttle::MAX_FAILURES, "realtime: too many wrong credentials from this address; its requests get 429 for a minute");
                }
            }
            Auth::StoreDown => {}
        }
    }
    match verdict {
        Auth::Yes => {}
        Auth::StoreDown => {
            // As for any other lookup the database cannot answer: Asterisk keeps what it has.
            count(StatusCode::INTERNAL_SERVER_ERROR);
            return for_op(&op, plain(StatusCode::INTERNAL_SERVER_ERROR, String::new()));
        }
        Auth::No => {
            count(StatusCode::UNAUTHORIZED);
            let mut r = plain(StatusCode::UNAUTHORIZED, String::new());
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"pbxguard realtime\""),
            );
            return for_op(&op, r);
        }
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            warn!(family = %family, op = %op, error = %e, "realtime request body refused");
            let status = e.status();
            count(status);
            return for_op(&op, plain(status, String::new()));
        }
    };
    let answer = answer(&ctx, &family, &op, &method, query.as_deref(), &body).await;
    count(answer.status());
    for_op(&op, answer)
}

async fn answer(
    ctx: &Context,
    family: &str,
    op: &str,
    method: &Method,
    query: Option<&str>,
    body: &[u8],
) -> Response {
    let expect = if op == "static" {
        Method::GET
    } else {
        Method::POST
    };
    if *method != expect {
        return plain(StatusCode::METHOD_NOT_ALLOWED, String::new());
    }
    let Ok(body) = std::str::from_utf8(body) else {
        warn!(
            family,
            op, "realtime request body is not text; answered empty"
        );
        return plain(StatusCode::BAD_REQUEST, String::new());
    };
    let fields = match wire::parse_fields(body) {
        Ok(f) => f,
        Err(e) => {
            warn!(family, op, error = %e, "malformed realtime request; answered empty");
            return plain(StatusCode::BAD_REQUEST, String::new());
        }
    };
    let served = FAMILIES.contains(&family);
    match op {
        "single" | "multi" if !served => {
            debug!(
                family,
                "realtime lookup for a family pbxguard does not serve"
            );
            plain(StatusCode::OK, String::new())
        }
        // Asterisk always names at least one field; "everything" is never the answer to nothing.
        "single" | "multi" if fields.is_empty() => plain(StatusCode::OK, String::new()),
        "single" => match lookup(ctx, &fields, true).await {
            Ok(lines) => plain(
                StatusCode::OK,
                lines
                    .into_iter()
                    .next()
                    .map(|l| format!("{l}\n"))
                    .unwrap_or_default(),
            ),
            Err(()) => plain(StatusCode::INTERNAL_SERVER_ERROR, String::new()),
        },
        "multi" => match lookup(ctx, &fields, false).await {
            Ok(lines) => plain(
                StatusCode::OK,
                lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
            ),
            Err(()) => plain(StatusCode::INTERNAL_SERVER_ERROR, String::new()),
        },
        // Every column a ps_auths lookup can need exists here.
        "require" => plain(StatusCode::OK, "0\n".to_string()),
        // Static configuration files are not served over realtime.
        "static" => plain(StatusCode::OK, String::new()),
        "store" | "update" | "destroy" => {
            let writable = ctx
                .config
                .load()
                .as_deref()
                .is_some_and(|r| r.writable.iter().any(|f| f == family));
            if !served || !writable {
                info!(
                    family,
                    op, "realtime write refused: the family is not in [realtime] writable"
                );
                return plain(StatusCode::OK, "-1\n".to_string());
            }
            let lookup_fields = match query.map(wire::parse_fields).transpose() {
                Ok(q) => q.unwrap_or_default(),
                Err(e) => {
                    warn!(family, op, error = %e, "malformed realtime query string");
                    return plain(StatusCode::OK, "-1\n".to_string());
                }
            };
            let n = write(ctx, op, &lookup_fields, &fields).await;
            plain(StatusCode::OK, format!("{n}\n"))
        }
        _ => plain(StatusCode::NOT_FOUND, String::new()),
    }
}

/// The fields a lookup may test; conditions on anything else (the password above all) match
/// nothing, so the interface cannot be used as a password oracle.
fn value_of<'a>(row: &'a SipCredentialRow, name: &str) -> Option<&'a str> {
    match name {
        "id" => Some(&row.id),
        "username" => Some(&row.username),
        "auth_type" => Some("userpass"),
        _ => None,
    }
}

/// Matching ps_auths records as answer lines; `Err` after logging when any password cannot be
/// decrypted (never a partial answer).
async fn lookup(ctx: &Context, fields: &[Field], single: bool) -> Result<Vec<String>, ()> {
    let rows = match single_or_all(ctx, fields).await {
        Ok(rows) => rows,
        Err(e) => {
            error!(error = %e, "realtime lookup failed");
            return Err(());
        }
    };
    let mut lines = Vec::new();
    for row in rows {
        if !fields
            .iter()
            .all(|f| value_of(&row, &f.name).is_some_and(|v| f.matches(v)))
        {
            continue;
        }
        let password = match ctx.vault.get(&secret_name(&row.id)).await {
            Ok(p) => p,
            Err(e) => {
                error!(id = %row.id, error = %e, "SIP credential cannot be decrypted; Asterisk gets no record");
                ctx.metrics
                    .realtime_decryptions
                    .get_or_create(&crate::metrics::ResultLabels { result: "error" })
                    .inc();
                return Err(());
            }
        };
        ctx.metrics
            .realtime_decryptions
            .get_or_create(&crate::metrics::ResultLabels { result: "ok" })
            .inc();
        lines.push(wire::line(&[
            ("id", row.id.as_bytes()),
            ("auth_type", b"userpass"),
            ("username", row.username.as_bytes()),
            ("password", &password),
        ]));
        if single {
            break;
        }
    }
    Ok(lines)
}

/// A lookup by exact id reads one row; anything else reads them all and filters.
async fn single_or_all(
    ctx: &Context,
    fields: &[Field],
) -> Result<Vec<SipCredentialRow>, crate::store::StoreError> {
    if let Some(f) = fields
        .iter()
        .find(|f| f.name == "id" && f.op == wire::Op::Eq)
    {
        return Ok(ctx
            .store
            .sip_credential(&f.value)
            .await?
            .into_iter()
            .collect());
    }
    ctx.store.sip_credentials().await
}

/// A write to ps_auths (only when configured writable): the row count, or -1.
async fn write(ctx: &Context, op: &str, lookup: &[Field], fields: &[Field]) -> i64 {
    let get = |set: &[Field], name: &str| {
        set.iter()
            .find(|f| f.name == name && f.op == wire::Op::Eq)
            .map(|f| f.value.clone())
    };
    let now = crate::clock::now_unix();
    let result: Result<i64, String> = async {
        match op {
            "store" => {
                let id = get(fields, "id").ok_or("store without id")?;
                let username = get(fields, "username").ok_or("store without username")?;
                let password =
                    Zeroizing::new(get(fields, "password").ok_or("store without password")?);
                if get(fields, "auth_type").is_some_and(|t| t != "userpass") {
                    return Err("only auth_type=userpass can be stored".into());
                }
                put(ctx, &id, &username, &password, now).await?;
                Ok(1)
            }
            "update" => {
                let id = get(lookup, "id").ok_or("update without id")?;
                let Some(row) = ctx
                    .store
                    .sip_credential(&id)
                    .await
                    .map_err(|e| e.to_string())?
                else {
                    return Ok(0);
                };
                let username = get(fields, "username").unwrap_or(row.username);
                let password = match get(fields, "password") {
                    Some(p) => Zeroizing::new(p),
                    None => {
                        let old = ctx
                            .vault
                            .get(&secret_name(&id))
                            .await
                            .map_err(|e| e.to_string())?;
                        ctx.metrics
                            .realtime_decryptions
                            .get_or_create(&crate::metrics::ResultLabels { result: "ok" })
                            .inc();
                        Zeroizing::new(
                            String::from_utf8(old.to_vec())
                                .map_err(|_| "stored password is not UTF-8")?,
                        )
                    }
                };
                put(ctx, &id, &username, &password, now).await?;
                Ok(1)
            }
            _ => {
                let id = get(fields, "id").ok_or("destroy without id")?;
                let gone = ctx
                    .store
                    .delete_sip_credential(&id)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = ctx.vault.remove(&secret_name(&id)).await;
                if gone {
                    ctx.store
                        .audit("asterisk", "sip.credential.rm", &id, "via realtime")
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(i64::from(gone))
            }
        }
    }
    .await;
    match result {
        Ok(n) => n,
        Err(why) => {
            warn!(op, reason = %why, "realtime write refused");
            -1
        }
    }
}

async fn put(
    ctx: &Context,
    id: &str,
    username: &str,
    password: &str,
    now: i64,
) -> Result<(), String> {
    let (store, vault) = (&ctx.store, &ctx.vault);
    credentials::set(
        store,
        vault,
        By::Asterisk,
        id,
        username,
        password.as_bytes(),
        now,
    )
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}
