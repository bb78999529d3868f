//! Serving a genuine link: the link row (cached), the file opened beneath root again, and the
//! answer decided from the request's Range and conditional headers. The web handler checks the
//! token, calls these in order and turns the [`Answer`] into HTTP.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;

use crate::store::{LinkRow, Store, StoreError};

use super::range::{self, Conditions, Plan, Validators};
use super::{body, content_type, multipart, PathError, Recordings, Root};

/// The request headers the answer depends on, owned so that the decision can run on the
/// blocking pool with the open.
#[derive(Debug, Default, Clone)]
pub struct OwnedConditions {
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
    pub if_unmodified_since: Option<String>,
}

impl OwnedConditions {
    fn view(&self) -> Conditions<'_> {
        Conditions {
            range: self.range.as_deref(),
            if_range: self.if_range.as_deref(),
            if_match: self.if_match.as_deref(),
            if_none_match: self.if_none_match.as_deref(),
            if_modified_since: self.if_modified_since.as_deref(),
            if_unmodified_since: self.if_unmodified_since.as_deref(),
        }
    }
}

/// A recording opened for one request, with the answer decided and the first chunk read.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub validators: Validators,
    pub plan: Plan,
    /// The start of the first part of the body (none for HEAD or a bodiless answer).
    pub prefetched: Option<Bytes>,
}

/// What to send.
#[derive(Debug)]
pub enum Answer {
    /// 304.
    NotModified,
    /// 412.
    PreconditionFailed,
    /// 416, with `Content-Range: bytes */len`.
    Unsatisfiable { len: u64 },
    /// 200 or 206 with a body.
    Body(BodyPlan),
}

/// A body to send and the headers that describe it.
#[derive(Debug)]
pub struct BodyPlan {
    /// 200 or 206.
    pub partial: bool,
    pub parts: Vec<body::Part>,
    /// `Content-Length`.
    pub length: u64,
    pub content_type: String,
    /// `Content-Range` of a single-range answer.
    pub content_range: Option<String>,
}

/// Where a link's file is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    /// On this node (or a single host).
    Here,
    /// On another node: its `public_url`.
    At(String),
    /// On a node that has not announced a `public_url` in the `nodes` table.
    Unknown(String),
}

/// A node whose row was not refreshed for this long is gone (rows are refreshed every 30 s).
pub const NODE_STALE_SECS: i64 = 90;

/// Where `row`'s file lives, seen from the node `store` writes as, whose own `public_url` is
/// `own_url`. A single host (SQLite) serves every link itself. Never answers with this node's
/// own address (a renamed node, or nodes that share one load-balanced `public_url`, would
/// otherwise redirect to themselves forever), nor with a node that stopped refreshing its row.
pub async fn home(
    store: &Store,
    row: &LinkRow,
    own_url: Option<&str>,
    now: i64,
) -> Result<Home, StoreError> {
    let Some(node) = row.node.as_deref() else {
        return Ok(Home::Here);
    };
    if !store.is_shared() || store.node().is_none_or(|me| me == node) {
        return Ok(Home::Here);
    }
    let own = own_url.map(|u| u.trim_end_matches('/'));
    Ok(match store.node_row(node).await? {
        Some(n) if now - n.seen_at <= NODE_STALE_SECS => match n.public_url {
            Some(url) if Some(url.trim_end_matches('/')) != own => {
                Home::At(url.trim_end_matches('/').to_string())
            }
            _ => Home::Unknown(node.to_string()),
        },
        _ => Home::Unknown(node.to_string()),
    })
}

impl Recordings {
    /// The row of link `id`, from the cache or else the database (and then cached).
    pub async fn link(&self, store: &Store, id: &str) -> Result<Option<Arc<LinkRow>>, StoreError> {
        // While the change feed is lost, a revocation on another node may be unheard: the
        // database decides.
        if store.caches_trusted() {
            if let Some(row) = self.links.get(id) {
                return Ok(Some(row));
            }
        }
        let generation = self.links.generation();
        let Some(row) = store.link(id).await? else {
            return Ok(None);
        };
        let row = Arc::new(row);
        self.links.insert(row.clone(), generation);
        Ok(Some(row))
    }
}

impl Root {
    /// One trip to the blocking pool does it all: open `rel` (beneath root, again), decide the
    /// answer from the request's headers, and read the first chunk. A 64 KiB recording then
    /// costs a single hop.
    pub async fn open_for(
        &self,
        rel: &str,
        conditions: OwnedConditions,
        head: bool,
    ) -> Result<Opened, PathError> {
        let (root, rel) = (self.clone(), rel.to_string());
        tokio::task::spawn_blocking(move || {
            let rel = root.normalise(&rel)?;
            let (file, meta) = root.open(&rel)?;
            let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            let validators = Validators::new(meta.len(), modified);
            let plan = range::plan(&conditions.view(), &validators);
            let first = match &plan {
                _ if head => None,
                Plan::Full => Some((0, validators.len)),
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
            Ok(Opened {
                file,
                validators,
                plan,
                prefetched,
            })
        })
        .await
        .map_err(|e| PathError::Unreadable(std::io::Error::other(e)))?
    }
}

/// The answer for `plan` on the recording at `path` (`len` bytes long); a multi-range body
/// gets `boundary`.
pub fn answer(plan: Plan, path: &str, len: u64, boundary: impl FnOnce() -> String) -> Answer {
    let ctype = content_type(path);
    match plan {
        Plan::NotModified => Answer::NotModified,
        Plan::PreconditionFailed => Answer::PreconditionFailed,
        Plan::Unsatisfiable => Answer::Unsatisfiable { len },
        Plan::Full => Answer::Body(BodyPlan {
            partial: false,
            parts: vec![body::Part::File { offset: 0, len }],
            length: len,
            content_type: ctype.to_string(),
            content_range: None,
        }),
        Plan::Partial(ranges) if ranges.len() == 1 => {
            let (start, end) = ranges[0];
            Answer::Body(BodyPlan {
                partial: true,
                parts: vec![body::Part::File {
                    offset: start,
                    len: end - start,
                }],
                length: end - start,
                content_type: ctype.to_string(),
                content_range: Some(format!("bytes {start}-{}/{len}", end - 1)),
            })
        }
        Plan::Partial(ranges) => {
            let boundary = boundary();
            let (parts, total) = multipart(&ranges, len, ctype, &boundary);
            Answer::Body(BodyPlan {
                partial: true,
                parts,
                length: total,
                content_type: format!("multipart/byteranges; boundary={boundary}"),
                content_range: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_by_plan() {
        let path = "2026/a.wav";
        let b = || "B".to_string();
        assert!(matches!(
            answer(Plan::NotModified, path, 10, b),
            Answer::NotModified
        ));
        assert!(matches!(
            answer(Plan::Unsatisfiable, path, 10, b),
            Answer::Unsatisfiable { len: 10 }
        ));
        let Answer::Body(full) = answer(Plan::Full, path, 10, b) else {
            panic!("a full body")
        };
        assert!(!full.partial);
        assert_eq!((full.length, full.content_type.as_str()), (10, "audio/wav"));
        assert_eq!(full.content_range, None);
        let Answer::Body(one) = answer(Plan::Partial(vec![(2, 5)]), path, 10, b) else {
            panic!("a partial body")
        };
        assert!(one.partial);
        assert_eq!(one.length, 3);
        assert_eq!(one.content_range.as_deref(), Some("bytes 2-4/10"));
        let Answer::Body(many) = answer(Plan::Partial(vec![(0, 2), (8, 10)]), path, 10, b) else {
            panic!("a multipart body")
        };
        assert_eq!(many.content_type, "multipart/byteranges; boundary=B");
        assert_eq!(many.content_range, None);
        assert_eq!(many.parts.len(), 5);
    }
}
