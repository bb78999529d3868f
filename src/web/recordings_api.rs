//! Recording links over HTTP: minting (supervisor and above), the admin's list and
//! revocation, and the download itself at `/rec/{token}`. The operations are
//! `recordings`'s, shared with the CLI.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{body::Body, Extension, Json};
use serde::Deserialize;
use serde_json::json;
use tracing::{error, warn};

use crate::app::App;
use crate::auth::roles::Role;
use crate::clock::{now_unix, rfc3339};
use crate::recordings::links::{self, LinkNotice, LinkView, ListQuery, DEFAULT_LINKS_LIMIT};
use crate::recordings::serve::{self, Answer, BodyPlan, Home, Opened, OwnedConditions};
use crate::recordings::token::Link;
use crate::recordings::{self, body, Minter, Minting, PathError, TokenError};
use crate::store::{AuditEntry, LinkRow};

use super::auth_api::{client, no_store, require};
use super::extract::{ApiJson, ApiQuery};
use super::{ApiError, Peer};

pub const REC_PREFIX: &str = "/rec/";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintBody {
    path: String,
    /// Optional lifetime such as "30m"; default `[recordings] link_ttl`.
    #[serde(default)]
    ttl: Option<String>,
    /// The node whose disk holds the file, when it is not this one (several hosts on one
    /// database); default this node.
    #[serde(default)]
    node: Option<String>,
}

pub async fn mint(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<MintBody>,
) -> Result<Response, ApiError> {
    let session = require(&app, &headers, Role::Supervisor).await?;
    let ttl = body
        .ttl
        .as_deref()
        .map(|t| {
            parse_ttl(t).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_ttl",
                    "ttl must be a duration such as \"30m\" or \"8h\"",
                )
            })
        })
        .transpose()?;
    let ip = peer
        .map(|Extension(p)| client(&app, &p, &headers).ip)
        .unwrap_or_default();
    let config = app.config.load();
    let (keys, root) = (app.recordings.keys.load(), app.recordings.root());
    let minting = Minting {
        store: &app.store,
        keys: &keys,
        root: &root,
        cfg: &config.recordings,
        public_url: config.http.as_ref().map(|h| h.public_url.as_str()),
    };
    let by = Minter {
        name: &session.user,
        ip: &ip,
    };
    let m = recordings::mint(minting, &body.path, ttl, &by, body.node.as_deref()).await?;
    app.metrics.links_minted.inc();
    let body = json!({ "url": m.url, "expires_at": rfc3339(m.expires_at), "id": m.id });
    Ok(no_store(Json(body).into_response()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinksQuery {
    path: Option<String>,
    #[serde(default)]
    all: bool,
    limit: Option<u32>,
}

pub async fn links(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<LinksQuery>,
) -> Result<Json<Vec<LinkView>>, ApiError> {
    require(&app, &headers, Role::Admin).await?;
    let query = ListQuery {
        path: q.path.as_deref(),
        all: q.all,
        limit: q.limit.unwrap_or(DEFAULT_LINKS_LIMIT),
    };
    let root = app.recordings.root();
    Ok(Json(
        links::list(&app.store, &root, query, now_unix()).await?,
    ))
}

pub async fn revoke(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let session = require(&app, &headers, Role::Admin).await?;
    let notice = LinkNotice::Daemon(&app.recordings.links);
    links::revoke(&app.store, notice, &session.user, &id, now_unix()).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- the download -----------------------------------------------------------------------

fn refused(status: StatusCode, code: &'static str, message: &'static str) -> ApiError {
    ApiError::new(status, code, message)
}

fn bad_link() -> ApiError {
    refused(StatusCode::FORBIDDEN, "bad_link", "this link is not valid")
}

/// What the download log needs to know about a request, filled in as it goes.
struct Outcome<'a> {
    app: &'a App,
    ip: String,
    method: &'static str,
    link: String,
    path: String,
}

impl Outcome<'_> {
    fn entry(&self, status: u16, bytes: u64, complete: bool) -> AuditEntry {
        AuditEntry {
            at: now_unix(),
            actor: format!("ip:{}", self.ip),
            action: "recording.download".to_string(),
            target: self.path.clone(),
            detail: format!(
                "link={} method={} status={status} bytes={bytes} complete={complete}",
                self.link, self.method
            ),
            node: None,
        }
    }

    fn count(&self, status: u16) {
        self.app
            .metrics
            .recording_downloads
            .get_or_create(&crate::metrics::StatusLabels { status })
            .inc();
    }

    /// Logs a bodiless answer at once.
    fn record(&self, status: StatusCode) {
        self.count(status.as_u16());
        self.app
            .recordings
            .journal
            .record(self.entry(status.as_u16(), 0, true));
    }

    /// Logs a refusal at once and hands it on.
    fn refuse(&self, e: ApiError) -> ApiError {
        self.record(e.status);
        e
    }
}

fn header_string(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn conditions(h: &HeaderMap) -> OwnedConditions {
    OwnedConditions {
        range: header_string(h, header::RANGE),
        if_range: header_string(h, header::IF_RANGE),
        if_match: header_string(h, header::IF_MATCH),
        if_none_match: header_string(h, header::IF_NONE_MATCH),
        if_modified_since: header_string(h, header::IF_MODIFIED_SINCE),
        if_unmodified_since: header_string(h, header::IF_UNMODIFIED_SINCE),
    }
}

/// The signature and expiry of `token`. An unknown key id may mean `recording rotate-key` ran
/// in another process a moment ago: the keys are reloaded (at most once a second) and the
/// token checked again.
async fn verify(app: &App, token: &str, now: i64) -> Result<Link, TokenError> {
    let verified = app.recordings.keys.load().verify(token, now);
    if verified == Err(TokenError::UnknownKey) && app.recordings.key_sync.allow(now) {
        app.sync_auth().await;
        return app.recordings.keys.load().verify(token, now);
    }
    verified
}

/// A token refused before its link is known: only a metric, no log row (a flood of made-up
/// tokens must not fill the audit log).
fn refuse_token(app: &App, e: TokenError) -> ApiError {
    let reason = match e {
        TokenError::Malformed => "malformed",
        TokenError::UnknownKey => "unknown_key",
        _ => "bad_signature",
    };
    app.metrics
        .link_refusals
        .get_or_create(&crate::metrics::ResultLabels { result: reason })
        .inc();
    tracing::debug!(reason, "recording link refused");
    bad_link()
}

/// The link row of a genuine, unexpired token.
async fn link_row(app: &App, id: &str) -> Result<Arc<LinkRow>, ApiError> {
    app.recordings
        .link(&app.store, id)
        .await?
        .ok_or_else(bad_link)
}

/// Whether the row still honours the token: not revoked, the same expiry.
fn still_good(row: &LinkRow, link: &Link) -> Result<(), ApiError> {
    if row.revoked_at.is_some() {
        Err(refused(
            StatusCode::FORBIDDEN,
            "link_revoked",
            "this link was revoked",
        ))
    } else if row.expires_at != link.expires_at {
        Err(bad_link())
    } else {
        Ok(())
    }
}

/// Why a recording behind a good link cannot be served now.
fn unservable(out: &Outcome<'_>, e: PathError) -> ApiError {
    match e {
        PathError::Missing => {
            warn!(link = %out.link, path = %out.path, "recording requested through a valid link no longer exists");
            refused(
                StatusCode::NOT_FOUND,
                "not_found",
                "the recording no longer exists",
            )
        }
        e @ (PathError::Outside | PathError::NotRegular | PathError::Bad(_)) => {
            warn!(link = %out.link, path = %out.path, reason = %e, "recording refused at download: it no longer resolves to a regular file inside [recordings] root");
            refused(
                StatusCode::FORBIDDEN,
                "path_refused",
                "this recording cannot be served",
            )
        }
        e => {
            error!(link = %out.link, path = %out.path, error = %e, "recording cannot be read");
            ApiError::internal()
        }
    }
}

/// `GET`/`HEAD /rec/{token}`. The token is taken from the raw path, so it has exactly one
/// spelling (no percent-decoding).
pub async fn download(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    req: Request,
) -> Result<Response, ApiError> {
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "recordings answer GET and HEAD only",
            ))
        }
    };
    let token = req.uri().path().strip_prefix(REC_PREFIX).unwrap_or("");
    let verified = verify(&app, token, now_unix()).await;
    let headers = req.headers();
    let mut out = Outcome {
        app: &app,
        ip: peer
            .map(|Extension(p)| client(&app, &p, headers).ip)
            .unwrap_or_default(),
        method: if head { "HEAD" } else { "GET" },
        link: String::new(),
        path: String::new(),
    };
    let link = match verified {
        Ok(link) => link,
        Err(TokenError::Expired) => {
            // Genuine (the signature was checked first), so worth a log row.
            out.link = recordings::token::decode(token)
                .map(|l| l.id_hex())
                .unwrap_or_default();
            return Err(out.refuse(refused(
                StatusCode::GONE,
                "link_expired",
                "this link has expired; ask for a new one",
            )));
        }
        Err(e) => return Err(refuse_token(&app, e)),
    };
    out.link = link.id_hex();
    // A revocation from the CLI is announced through the auth stamp and empties the cache.
    app.sync_auth().await;
    let row = link_row(&app, &out.link).await.map_err(|e| out.refuse(e))?;
    out.path = row.path.clone();
    still_good(&row, &link).map_err(|e| out.refuse(e))?;
    let own_url = app
        .config
        .load()
        .http
        .as_ref()
        .map(|h| h.public_url.clone());
    match serve::home(&app.store, &row, own_url.as_deref(), now_unix()).await {
        Ok(Home::Here) => {}
        Ok(Home::At(base)) => {
            // The same path (and query) on the node whose disk holds the file; the token is
            // checked there again.
            let target = req
                .uri()
                .path_and_query()
                .map_or(req.uri().path(), |p| p.as_str());
            out.record(StatusCode::TEMPORARY_REDIRECT);
            return Ok(Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header(header::LOCATION, format!("{base}{target}"))
                .header(header::CACHE_CONTROL, "private, no-store")
                .header(header::REFERRER_POLICY, "no-referrer")
                .body(Body::empty())
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()));
        }
        Ok(Home::Unknown(node)) => {
            warn!(link = %out.link, node = %node, "recording lives on a node that is not running, announced no public_url of its own, or shares this node's public_url (each node needs its own)");
            return Err(out.refuse(refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "node_unknown",
                "the host that holds this recording is not reachable from here",
            )));
        }
        Err(e) => return Err(out.refuse(ApiError::failure("finding a recording's node", &e))),
    }
    let opened = app
        .recordings
        .root()
        .open_for(&row.path, conditions(headers), head)
        .await
        .map_err(|e| out.refuse(unservable(&out, e)))?;
    respond(&out, &row, opened, head)
}

/// The headers every answer about an existing recording carries (and `Content-Range` of a
/// single range, in the order nginx sends them).
fn base_headers(
    v: &recordings::range::Validators,
    content_range: Option<&str>,
) -> axum::http::response::Builder {
    let mut b = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "private, no-store")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if let Some(range) = content_range {
        b = b.header(header::CONTENT_RANGE, range);
    }
    b.header(header::ETAG, v.etag.as_str())
        .header(header::LAST_MODIFIED, v.last_modified())
}

fn respond(
    out: &Outcome<'_>,
    row: &LinkRow,
    opened: Opened,
    head: bool,
) -> Result<Response, ApiError> {
    let Opened {
        file,
        validators: v,
        plan,
        prefetched,
    } = opened;
    let b = match serve::answer(plan, &row.path, v.len, || crate::ids::random_hex(8)) {
        Answer::NotModified => {
            let r = base_headers(&v, None)
                .status(StatusCode::NOT_MODIFIED)
                .body(Body::empty())
                .map_err(|_| ApiError::internal());
            out.record(r.as_ref().map_or_else(|e| e.status, |r| r.status()));
            return r;
        }
        Answer::PreconditionFailed => {
            return Err(out.refuse(refused(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "the recording does not match the request's preconditions",
            )));
        }
        Answer::Unsatisfiable { len } => {
            let e = refused(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                "the requested range is not satisfiable",
            );
            let e = match HeaderValue::from_str(&format!("bytes */{len}")) {
                Ok(v) => e.header(header::CONTENT_RANGE, v),
                Err(_) => e,
            };
            return Err(out.refuse(e));
        }
        Answer::Body(b) => b,
    };
    let status = if b.partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let builder = base_headers(&v, b.content_range.as_deref())
        .status(status)
        .header(header::CONTENT_TYPE, b.content_type.as_str())
        .header(header::CONTENT_LENGTH, b.length)
        .header(
            header::CONTENT_DISPOSITION,
            recordings::disposition(&row.path),
        );
    if head {
        let r = builder
            .body(Body::empty())
            .map_err(|_| ApiError::internal());
        out.record(r.as_ref().map_or_else(|e| e.status, |r| r.status()));
        return r;
    }
    out.count(status.as_u16());
    builder
        .body(stream(out, status, file, b, prefetched))
        .map_err(|_| ApiError::internal())
}

/// The body, logged with the bytes that really left once it ends (or the client goes away).
fn stream(
    out: &Outcome<'_>,
    status: StatusCode,
    file: std::fs::File,
    b: BodyPlan,
    prefetched: Option<bytes::Bytes>,
) -> Body {
    let journal = out.app.recordings.journal.clone();
    let sent = out.app.metrics.recording_bytes.clone();
    let entry = out.entry(status.as_u16(), 0, false);
    let parts = match prefetched {
        Some(chunk) => body::splice_first(b.parts, chunk),
        None => b.parts,
    };
    let counted = body::Counted::new(
        body::stream_parts(Arc::new(file), parts),
        b.length,
        move |bytes, complete| {
            sent.inc_by(bytes);
            let mut entry = entry;
            entry.detail = entry.detail.replace(
                " bytes=0 complete=false",
                &format!(" bytes={bytes} complete={complete}"),
            );
            entry.at = now_unix();
            journal.record(entry);
        },
    );
    Body::from_stream(counted)
}

/// Parses `"30m"`-style lifetimes.
fn parse_ttl(text: &str) -> Option<Duration> {
    humantime::parse_duration(text).ok()
}
