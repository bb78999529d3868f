//! Which bytes a request gets: `Range`, `If-Range` and the conditional headers, decided
//! exactly as nginx (`ngx_http_range_filter_module`, `ngx_http_not_modified_filter_module`)
//! decides them for a static file.
//!
//! Why not a crate: tower-http's file service answers every multi-range request with 416 and
//! has no `ETag`/`If-Range`; `http-serve` targets the previous `http` major version and
//! treats an overflowing number as "no Range" where nginx answers 416. The issue makes nginx
//! the reference for every edge case, and the end-to-end tests compare the two byte for byte,
//! so the rules are written out here, small and pure, next to nginx's own wording.
//!
//! nginx's rules in short: the header must be `bytes=` (any case) and more, or it is ignored;
//! spaces are skipped around numbers and commas; a syntax error or a number that overflows is
//! 416; `a-` runs to the end, `-n` is the last n bytes, `b` beyond the end is clamped; a range
//! that starts beyond the end is skipped, except one starting at 0 (an empty file), which
//! makes the whole request a plain 200; nothing left is 416; and when the ranges add up to
//! more bytes than the file has (overlaps), the answer is the whole file with 200.

use std::time::SystemTime;

/// The answer to a GET or HEAD of a file that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// 200 with the whole file.
    Full,
    /// 206: one range (`Content-Range`) or several (`multipart/byteranges`); half-open
    /// `start..end` byte offsets.
    Partial(Vec<(u64, u64)>),
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
    /// 304.
    NotModified,
    /// 412.
    PreconditionFailed,
}

/// The request headers that matter, as text (a header that is not visible ASCII is treated
/// as absent, as it cannot match anything).
#[derive(Debug, Default, Clone, Copy)]
pub struct Conditions<'a> {
    pub range: Option<&'a str>,
    pub if_range: Option<&'a str>,
    pub if_match: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub if_unmodified_since: Option<&'a str>,
}

/// 9999-12-31T23:59:59Z.
const MAX_HTTP_TIME: u64 = 253_402_300_799;

/// The file as the validators see it.
#[derive(Debug, Clone)]
pub struct Validators {
    pub len: u64,
    /// Whole seconds, as HTTP dates have them.
    pub mtime: u64,
    /// `"<mtime hex>-<len hex>"`, nginx's format.
    pub etag: String,
}

impl Validators {
    pub fn new(len: u64, modified: SystemTime) -> Validators {
        // HTTP dates end at 9999-12-31 (and httpdate panics beyond); some file systems allow
        // later times.
        let mtime = modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .min(MAX_HTTP_TIME);
        Validators {
            len,
            mtime,
            etag: format!("\"{mtime:x}-{len:x}\""),
        }
    }

    pub fn last_modified(&self) -> String {
        httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(self.mtime))
    }
}

fn http_time(s: &str) -> Option<u64> {
    let t = httpdate::parse_http_date(s.trim()).ok()?;
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// nginx's `ngx_http_test_if_match`: `*` matches anything; otherwise a comma-separated list of
/// entity tags, compared exactly (or, for If-None-Match, ignoring a `W/` prefix on either).
fn etag_matches(header: &str, etag: &str, weak: bool) -> bool {
    if header == "*" {
        return true;
    }
    let ours = if weak {
        etag.strip_prefix("W/").unwrap_or(etag)
    } else {
        etag
    };
    header.split(',').any(|candidate| {
        let c = candidate.trim_matches([' ', '\t']);
        let c = if weak {
            c.strip_prefix("W/").unwrap_or(c)
        } else {
            c
        };
        c == ours
    })
}

/// Decides the answer for a file described by `v`.
pub fn plan(c: &Conditions<'_>, v: &Validators) -> Plan {
    if let Some(h) = c.if_unmodified_since {
        // An unparseable date fails the precondition, as in nginx.
        if http_time(h).is_none_or(|t| t < v.mtime) {
            return Plan::PreconditionFailed;
        }
    }
    if let Some(h) = c.if_match {
        if !etag_matches(h, &v.etag, false) {
            return Plan::PreconditionFailed;
        }
    }
    if c.if_modified_since.is_some() || c.if_none_match.is_some() {
        // nginx's default `if_modified_since exact`: only the exact time is "not modified".
        let modified = c
            .if_modified_since
            .is_some_and(|h| http_time(h) != Some(v.mtime));
        let none_match = c
            .if_none_match
            .is_some_and(|h| !etag_matches(h, &v.etag, true));
        if !modified && !none_match {
            return Plan::NotModified;
        }
    }
    let Some(range) = c.range else {
        return Plan::Full;
    };
    if let Some(h) = c.if_range {
        let fresh = if h.len() >= 2 && h.ends_with('"') {
            h == v.etag
        } else {
            http_time(h) == Some(v.mtime)
        };
        if !fresh {
            return Plan::Full;
        }
    }
    // nginx ignores a header shorter than `bytes=` plus one character.
    if range.len() < 7 || !range.as_bytes()[..6].eq_ignore_ascii_case(b"bytes=") {
        return Plan::Full;
    }
    parse(&range.as_bytes()[6..], v.len)
}

/// Ranges served in one answer at most; more get the whole file, as nginx answers with
/// `max_ranges 64`. Without a cap, a 16 KiB header of `0-0,` asks for 4 000 reads.
pub const MAX_RANGES: usize = 64;

/// nginx's `ngx_http_range_parse`, step for step.
fn parse(spec: &[u8], len: u64) -> Plan {
    const MAX: u64 = i64::MAX as u64; // NGX_MAX_OFF_T_VALUE
    let cutoff = MAX / 10;
    let cutlim = MAX % 10;
    let mut p = 0usize;
    let at = |i: usize| spec.get(i).copied().unwrap_or(0);
    let mut ranges = Vec::new();
    let mut size: u64 = 0;

    loop {
        let mut start: u64 = 0;
        let mut end: u64 = 0;
        let mut suffix = false;
        while at(p) == b' ' {
            p += 1;
        }
        let mut open_ended = false;
        if at(p) != b'-' {
            if !at(p).is_ascii_digit() {
                return Plan::Unsatisfiable;
            }
            while at(p).is_ascii_digit() {
                let d = u64::from(at(p) - b'0');
                if start >= cutoff && (start > cutoff || d > cutlim) {
                    return Plan::Unsatisfiable;
                }
                start = start * 10 + d;
                p += 1;
            }
            while at(p) == b' ' {
                p += 1;
            }
            if at(p) != b'-' {
                return Plan::Unsatisfiable;
            }
            p += 1;
            while at(p) == b' ' {
                p += 1;
            }
            if at(p) == b',' || at(p) == 0 {
                end = len;
                open_ended = true;
            }
        } else {
            suffix = true;
            p += 1;
        }

        if !open_ended {
            if !at(p).is_ascii_digit() {
                return Plan::Unsatisfiable;
            }
            while at(p).is_ascii_digit() {
                let d = u64::from(at(p) - b'0');
                if end >= cutoff && (end > cutoff || d > cutlim) {
                    return Plan::Unsatisfiable;
                }
                end = end * 10 + d;
                p += 1;
            }
            while at(p) == b' ' {
                p += 1;
            }
            if at(p) != b',' && at(p) != 0 {
                return Plan::Unsatisfiable;
            }
            if suffix {
                start = len.saturating_sub(end);
                end = len.saturating_sub(1);
            }
            end = if end >= len { len } else { end + 1 };
        }

        if start < end {
            if ranges.len() == MAX_RANGES {
                return Plan::Full;
            }
            ranges.push((start, end));
            if size > MAX - (end - start) {
                return Plan::Unsatisfiable;
            }
            size += end - start;
        } else if start == 0 {
            return Plan::Full;
        }

        let sep = at(p);
        p += 1;
        if sep != b',' {
            break;
        }
    }

    if ranges.is_empty() {
        return Plan::Unsatisfiable;
    }
    if size > len {
        return Plan::Full;
    }
    Plan::Partial(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(len: u64) -> Validators {
        Validators::new(
            len,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_947_300),
        )
    }

    fn range(h: &str, len: u64) -> Plan {
        plan(
            &Conditions {
                range: Some(h),
                ..Default::default()
            },
            &v(len),
        )
    }

    use Plan::*;

    #[test]
    fn single_ranges() {
        assert_eq!(range("bytes=0-9", 100), Partial(vec![(0, 10)]));
        assert_eq!(range("bytes=90-", 100), Partial(vec![(90, 100)]));
        assert_eq!(range("bytes=-10", 100), Partial(vec![(90, 100)]));
        assert_eq!(range("bytes=-1000", 100), Partial(vec![(0, 100)]));
        assert_eq!(range("bytes=50-1000", 100), Partial(vec![(50, 100)]));
        assert_eq!(range("BYTES= 1 - 2 ", 100), Partial(vec![(1, 3)]));
        assert_eq!(range("bytes=0-", 100), Partial(vec![(0, 100)]));
    }

    #[test]
    fn nginx_edge_cases() {
        assert_eq!(range("bytes=5-2", 100), Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(range("bytes=99999999999999999999-", 100), Unsatisfiable);
        assert_eq!(range("bytes=0-99999999999999999999", 100), Unsatisfiable);
        assert_eq!(range("bytes=9223372036854775807-", 100), Unsatisfiable);
        assert_eq!(range("bytes=abc", 100), Unsatisfiable);
        assert_eq!(range("bytes=", 100), Full);
        assert_eq!(range("bytes=-", 100), Unsatisfiable);
        assert_eq!(range("bytes=1-2;", 100), Unsatisfiable);
        assert_eq!(range("bytes=\t1-2", 100), Unsatisfiable);
        // Not a bytes range: ignored.
        assert_eq!(range("items=1-2", 100), Full);
        assert_eq!(range("byte", 100), Full);
        // Empty file: a range from 0 is a plain 200.
        assert_eq!(range("bytes=0-", 0), Full);
        assert_eq!(range("bytes=0-5", 0), Full);
        assert_eq!(range("bytes=1-5", 0), Unsatisfiable);
    }

    #[test]
    fn multiple_ranges() {
        assert_eq!(range("bytes=0-0,-1", 100), Partial(vec![(0, 1), (99, 100)]));
        assert_eq!(
            range("bytes=0-9, 20-29", 100),
            Partial(vec![(0, 10), (20, 30)])
        );
        // Overlapping but not more than the file: kept as asked.
        assert_eq!(
            range("bytes=0-9,5-14", 100),
            Partial(vec![(0, 10), (5, 15)])
        );
        // Adding up to more than the file: the whole file.
        assert_eq!(range("bytes=0-59,40-99", 100), Full);
        // Unsatisfiable parts are skipped, a bad one anywhere spoils all.
        assert_eq!(range("bytes=200-300,0-1", 100), Partial(vec![(0, 2)]));
        assert_eq!(range("bytes=0-1,x", 100), Unsatisfiable);
        assert_eq!(range("bytes=0-1,", 100), Unsatisfiable);
    }

    #[test]
    fn conditionals() {
        let val = v(100);
        let lm = val.last_modified();
        let etag = val.etag.as_str();
        let c = |f: Conditions<'_>| {
            plan(
                &Conditions {
                    range: Some("bytes=0-1"),
                    ..f
                },
                &val,
            )
        };
        let none = Conditions::default;
        let part = || Partial(vec![(0, 2)]);
        assert_eq!(
            c(Conditions {
                if_none_match: Some(etag),
                ..none()
            }),
            NotModified
        );
        assert_eq!(
            c(Conditions {
                if_none_match: Some("\"x\", W/\"00\""),
                ..none()
            }),
            part()
        );
        assert_eq!(
            c(Conditions {
                if_none_match: Some("*"),
                ..none()
            }),
            NotModified
        );
        assert_eq!(
            c(Conditions {
                if_modified_since: Some(&lm),
                ..none()
            }),
            NotModified
        );
        let old = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(
            c(Conditions {
                if_modified_since: Some(old),
                ..none()
            }),
            part()
        );
        assert_eq!(
            c(Conditions {
                if_match: Some("\"nope\""),
                ..none()
            }),
            PreconditionFailed
        );
        assert_eq!(
            c(Conditions {
                if_match: Some(etag),
                ..none()
            }),
            part()
        );
        assert_eq!(
            c(Conditions {
                if_unmodified_since: Some(old),
                ..none()
            }),
            PreconditionFailed
        );
        assert_eq!(
            c(Conditions {
                if_unmodified_since: Some(&lm),
                ..none()
            }),
            part()
        );
        assert_eq!(
            c(Conditions {
                if_range: Some(etag),
                ..none()
            }),
            part()
        );
        assert_eq!(
            c(Conditions {
                if_range: Some("\"old\""),
                ..none()
            }),
            Full
        );
        assert_eq!(
            c(Conditions {
                if_range: Some(&lm),
                ..none()
            }),
            part()
        );
        assert_eq!(
            c(Conditions {
                if_range: Some("yesterday"),
                ..none()
            }),
            Full
        );
    }

    #[test]
    fn at_most_64_ranges_then_the_whole_file() {
        let spec = |n: usize| format!("bytes={}", vec!["0-0"; n].join(","));
        assert!(matches!(range(&spec(64), 100), Partial(r) if r.len() == 64));
        assert_eq!(range(&spec(65), 100), Full);
        let far_future = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(400_000_000_000);
        let v = Validators::new(1, far_future);
        assert_eq!(v.last_modified(), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn etag_is_nginx_shaped() {
        assert_eq!(v(0x400).etag, "\"6b0bfb24-400\"");
    }
}
