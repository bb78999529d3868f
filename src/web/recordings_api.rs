//! Recording links over HTTP: minting (supervisor and above), the admin's list and
//! revocation, and the download itself at `/rec/{token}`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{body::Body, Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{error, warn};

use crate::app::App;
use crate::auth::roles::Role;
use crate::clock::{now_unix, rfc3339};
use crate::recordings::range::{self, Conditions, Plan, Validators};
use crate::recordings::{self, body, Minter, PathError, RecordingError, TokenError};
use crate::store::{AuditEntry, LinkFilter, LinkRow};

use super::auth_api::{client, require};
use super::extract::{ApiJson, ApiQuery};
use super::{ApiError, Peer};

pub const REC_PREFIX: &str = "/rec/";
pub const MAX_LINKS_LIMIT: u32 = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintBody {
    path: String,
    /// Optional lifetime such as "30m"; default `[recordings] link_ttl`.
    #[serde(default)]
    ttl: Option<String>,
}

fn path_error(e: &PathError) -> ApiError {
    match e {
        PathError::Missing => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such recording")
        }
        PathError::Bad(why) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_path",
            format!("bad recording path: {why}"),
        ),
        PathError::Outside => ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_path",
            "the path leaves the recordings folder",
        ),
        PathError::NotRegular => ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_path",
            "the path is not a regular file",
        ),
        PathError::Root(e) => {
            error!(error = %e, "the recordings folder ([recordings] root) cannot be opened");
            ApiError::internal()
        }
        PathError::Unreadable(e) => {
            error!(error = %e, "a recording cannot be opened by pbxguard (permissions?)");
            ApiError::internal()
        }
    }
}

pub async fn mint(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<MintBody>,
) -> Response {
    let session = match require(&app, &headers, Role::Supervisor).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let ttl = match body.ttl.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(_)) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_ttl",
                "ttl must be a duration such as \"30m\" or \"8h\"",
            )
            .into_response()
        }
    };
    let ip = peer
        .map(|Extension(p)| client(&app, &p, &headers).ip)
        .unwrap_or_default();
    let config = app.config.load();
    let keys = app.recordings.keys.load();
    let by = Minter {
        name: &session.user,
        ip: &ip,
    };
    match recordings::mint(&app.store, &keys, &config, &body.path, ttl, &by).await {
        Ok(m) => {
            app.metrics.links_minted.inc();
            let mut r = Json(json!({
                "url": m.url,
                "expires_at": rfc3339(m.expires_at),
                "id": m.id,
            }))
            .into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(RecordingError::Path(e)) => path_error(&e).into_response(),
        Err(e @ (RecordingError::TtlZero | RecordingError::TtlTooLong { .. })) => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_ttl", e.to_string()).into_response()
        }
        Err(e) => ApiError::failure("minting a recording link failed", &e).into_response(),
    }
}

/// A link as admins (API and `recording list --json`) see it.
#[derive(Debug, Serialize)]
pub struct LinkView {
    pub id: String,
    pub path: String,
    pub minted_by: String,
    pub minted_ip: String,
    pub created_at: String,
    pub expires_at: String,
    /// `active`, `expired` or `revoked`.
    pub state: &'static str,
    pub revoked_at: Option<String>,
    pub revoked_by: Option<String>,
}

impl LinkView {
    pub fn new(row: &LinkRow, now: i64) -> LinkView {
        let state = if row.revoked_at.is_some() {
            "revoked"
        } else if now >= row.expires_at {
            "expired"
        } else {
            "active"
        };
        LinkView {
            id: row.id.clone(),
            path: row.path.clone(),
            minted_by: row.minted_by.clone(),
            minted_ip: row.minted_ip.clone(),
            created_at: rfc3339(row.created_at),
            expires_at: rfc3339(row.expires_at),
            state,
            revoked_at: row.revoked_at.map(rfc3339),
            revoked_by: row.revoked_by.clone(),
        }
    }
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
) -> Response {
    if let Err(e) = require(&app, &headers, Role::Admin).await {
        return e.into_response();
    }
    let config = app.config.load();
    let path = match q
        .path
        .as_deref()
        .map(|p| recordings::paths::normalise(p, &config.recordings.root))
    {
        None => None,
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => return path_error(&e).into_response(),
    };
    let filter = LinkFilter {
        path,
        all: q.all,
        limit: q.limit.unwrap_or(100).clamp(1, MAX_LINKS_LIMIT),
    };
    let now = now_unix();
    match app.store.links(&filter, now).await {
        Ok(rows) => Json(
            rows.iter()
                .map(|r| LinkView::new(r, now))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => ApiError::failure("listing recording links failed", &e).into_response(),
    }
}

pub async fn revoke(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let session = match require(&app, &headers, Role::Admin).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let not_found =
        || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such link").into_response();
    let Some(id) = recordings::link_id_from(&id) else {
        return not_found();
    };
    let result = async {
        let Some(row) = app.store.link(&id).await? else {
            return Ok(None);
        };
        let revoked = app
            .store
            .revoke_link(&id, &session.user, now_unix())
            .await?;
        app.recordings.links.forget(&id);
        if revoked {
            app.store
                .audit(
                    &session.user,
                    "recording.revoke",
                    &row.path,
                    &format!("link={id}"),
                )
                .await?;
        }
        Ok::<_, crate::store::StoreError>(Some(()))
    }
    .await;
    match result {
        Ok(Some(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(None) => not_found(),
        Err(e) => ApiError::failure("revoking a recording link failed", &e).into_response(),
    }
}

// ---- the download -----------------------------------------------------------------------

fn refused(status: StatusCode, code: &'static str, message: &'static str) -> Response {
    ApiError::new(status, code, message).into_response()
}

fn bad_link() -> Response {
    refused(StatusCode::FORBIDDEN, "bad_link", "this link is not valid")
}

/// What the download log needs to know about a request, filled in as it goes.
struct Outcome<'a> {
    app: &'a Arc<App>,
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
        }
    }

    /// Logs a bodiless answer at once.
    fn record(&self, response: Response) -> Response {
        let status = response.status().as_u16();
        self.app
            .metrics
            .recording_downloads
            .get_or_create(&crate::metrics::StatusLabels { status })
            .inc();
        self.app
            .recordings
            .journal
            .record(self.entry(status, 0, true));
        response
    }
}

fn header_string(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The conditional headers, owned, to decide on the blocking pool.
struct OwnedConditions([Option<String>; 6]);

impl From<&HeaderMap> for OwnedConditions {
    fn from(h: &HeaderMap) -> Self {
        OwnedConditions([
            header_string(h, header::RANGE),
            header_string(h, header::IF_RANGE),
            header_string(h, header::IF_MATCH),
            header_string(h, header::IF_NONE_MATCH),
            header_string(h, header::IF_MODIFIED_SINCE),
            header_string(h, header::IF_UNMODIFIED_SINCE),
        ])
    }
}

impl OwnedConditions {
    fn view(&self) -> Conditions<'_> {
        let [range, if_range, if_match, if_none_match, ims, ius] = &self.0;
        Conditions {
            range: range.as_deref(),
            if_range: if_range.as_deref(),
            if_match: if_match.as_deref(),
            if_none_match: if_none_match.as_deref(),
            if_modified_since: ims.as_deref(),
            if_unmodified_since: ius.as_deref(),
        }
    }
}

/// `GET`/`HEAD /rec/{token}`. The token is taken from the raw path, so it has exactly one
/// spelling (no percent-decoding).
pub async fn download(
    State(app): State<Arc<App>>,
    peer: Option<Extension<Peer>>,
    req: Request,
) -> Response {
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            return ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "recordings answer GET and HEAD only",
            )
            .into_response()
        }
    };
    let token = req.uri().path().strip_prefix(REC_PREFIX).unwrap_or("");
    let now = now_unix();
    let mut verified = app.recordings.keys.load().verify(token, now);
    if verified == Err(TokenError::UnknownKey) && app.recordings.key_sync.allow(now) {
        // Perhaps `recording rotate-key` ran in another process a moment ago.
        app.sync_auth().await;
        verified = app.recordings.keys.load().verify(token, now);
    }
    let headers = req.headers();
    let ip = peer
        .map(|Extension(p)| client(&app, &p, headers).ip)
        .unwrap_or_default();
    let mut out = Outcome {
        app: &app,
        ip,
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
            return out.record(refused(
                StatusCode::GONE,
                "link_expired",
                "this link has expired; ask for a new one",
            ));
        }
        Err(e) => {
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
            return bad_link();
        }
    };
    out.link = link.id_hex();
    // A revocation from the CLI is announced through the auth stamp and empties the cache.
    app.sync_auth().await;
    let row = match app.recordings.links.get(&out.link) {
        Some(row) => row,
        None => {
            let generation = app.recordings.links.generation();
            match app.store.link(&out.link).await {
                Ok(Some(row)) => {
                    let row = Arc::new(row);
                    app.recordings.links.insert(row.clone(), generation);
                    row
                }
                Ok(None) => return out.record(bad_link()),
                Err(e) => {
                    let failed = ApiError::failure("looking up a recording link failed", &e);
                    return out.record(failed.into_response());
                }
            }
        }
    };
    out.path = row.path.clone();
    if row.revoked_at.is_some() {
        return out.record(refused(
            StatusCode::FORBIDDEN,
            "link_revoked",
            "this link was revoked",
        ));
    }
    if row.expires_at != link.expires_at {
        return out.record(bad_link());
    }

    // One trip to the blocking pool does it all: open (beneath root, again), decide the answer
    // from the request's Range and conditional headers, and read the first chunk. A 64 KiB
    // recording then costs a single hop.
    let root = app.config.load().recordings.root.clone();
    let rel = row.path.clone();
    let owned = OwnedConditions::from(headers);
    let opened = tokio::task::spawn_blocking(move || {
        let rel = recordings::paths::normalise(&rel, &root)?;
        let (file, meta) = recordings::paths::open(&root, &rel)?;
        let v = Validators::new(meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH));
        let plan = range::plan(&owned.view(), &v);
        let first = match &plan {
            _ if head => None,
            Plan::Full => Some((0, v.len)),
            Plan::Partial(ranges) => ranges.first().copied(),
            _ => None,
        };
        let prefetched = match first {
            Some((start, end)) if end > start => {
                let n = (end - start).min(body::CHUNK);
                Some(body::read_chunk(&file, start, n).map_err(PathError::Unreadable)?)
            }
            _ => None,
        };
        Ok::<_, PathError>((file, v, plan, prefetched))
    })
    .await;
    let (file, v, plan, prefetched) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(PathError::Missing)) => {
            warn!(link = %out.link, path = %row.path, "recording requested through a valid link no longer exists");
            return out.record(refused(
                StatusCode::NOT_FOUND,
                "not_found",
                "the recording no longer exists",
            ));
        }
        Ok(Err(e @ (PathError::Outside | PathError::NotRegular | PathError::Bad(_)))) => {
            warn!(link = %out.link, path = %row.path, reason = %e, "recording refused at download: it no longer resolves to a regular file inside [recordings] root");
            return out.record(refused(
                StatusCode::FORBIDDEN,
                "path_refused",
                "this recording cannot be served",
            ));
        }
        Ok(Err(e)) => {
            error!(link = %out.link, path = %row.path, error = %e, "recording cannot be read");
            return out.record(ApiError::internal().into_response());
        }
        Err(e) => {
            error!(error = %e, "opening a recording failed");
            return out.record(ApiError::internal().into_response());
        }
    };
    let content_type = recordings::content_type(&row.path);

    let mut builder = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "private, no-store")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    let validators = |b: axum::http::response::Builder| {
        b.header(header::ETAG, v.etag.as_str())
            .header(header::LAST_MODIFIED, v.last_modified())
    };
    let (status, parts, length, ctype) = match plan {
        Plan::NotModified => {
            let r = validators(builder)
                .status(StatusCode::NOT_MODIFIED)
                .body(Body::empty());
            return out.record(r.unwrap_or_else(|_| ApiError::internal().into_response()));
        }
        Plan::PreconditionFailed => {
            return out.record(refused(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "the recording does not match the request's preconditions",
            ));
        }
        Plan::Unsatisfiable => {
            let mut r = refused(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                "the requested range is not satisfiable",
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", v.len)) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return out.record(r);
        }
        Plan::Full => (
            StatusCode::OK,
            vec![body::Part::File {
                offset: 0,
                len: v.len,
            }],
            v.len,
            content_type.to_string(),
        ),
        Plan::Partial(ranges) if ranges.len() == 1 => {
            let (start, end) = ranges[0];
            builder = builder.header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{}", end - 1, v.len),
            );
            (
                StatusCode::PARTIAL_CONTENT,
                vec![body::Part::File {
                    offset: start,
                    len: end - start,
                }],
                end - start,
                content_type.to_string(),
            )
        }
        Plan::Partial(ranges) => {
            let boundary = crate::ids::random_hex(8);
            let (parts, total) = recordings::multipart(&ranges, v.len, content_type, &boundary);
            (
                StatusCode::PARTIAL_CONTENT,
                parts,
                total,
                format!("multipart/byteranges; boundary={boundary}"),
            )
        }
    };
    builder = validators(builder)
        .status(status)
        .header(header::CONTENT_TYPE, ctype)
        .header(header::CONTENT_LENGTH, length)
        .header(
            header::CONTENT_DISPOSITION,
            recordings::disposition(&row.path),
        );
    if head {
        let r = builder.body(Body::empty());
        return out.record(r.unwrap_or_else(|_| ApiError::internal().into_response()));
    }

    app.metrics
        .recording_downloads
        .get_or_create(&crate::metrics::StatusLabels {
            status: status.as_u16(),
        })
        .inc();
    let journal = app.recordings.journal.clone();
    let sent = app.metrics.recording_bytes.clone();
    let entry = out.entry(status.as_u16(), 0, false);
    let parts = match prefetched {
        Some(chunk) => body::splice_first(parts, chunk),
        None => parts,
    };
    let counted = body::Counted::new(
        body::stream_parts(Arc::new(file), parts),
        length,
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
    builder
        .body(Body::from_stream(counted))
        .unwrap_or_else(|_| ApiError::internal().into_response())
}

/// Parses `"30m"`-style lifetimes for the CLI and API alike.
pub fn parse_ttl(text: &str) -> Option<Duration> {
    humantime::parse_duration(text).ok()
}
