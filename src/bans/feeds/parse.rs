//! Feed bodies into ban keys: the `plain` format (one address or prefix a line) and APIBAN's
//! JSON pages. Bad entries are skipped and counted, never fatal one by one; the caller logs
//! one summary per refresh.

use std::collections::HashSet;

use serde::Deserialize;

use super::FeedError;
use crate::bans::BanKey;

/// Entries this long are not addresses; their text is not echoed into logs.
const MAX_ENTRY_LEN: usize = 64;

/// The first entry of a body that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line (plain) or position in the whole download (apiban).
    pub line: usize,
    pub reason: String,
}

/// A parsed list and what was left out of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedList {
    /// Unique entries in the feed's order, at most `max_entries`.
    pub entries: Vec<BanKey>,
    /// Entries that are not an acceptable address or prefix.
    pub bad: usize,
    pub first_bad: Option<BadLine>,
    /// Entries listed again (after normalisation: two IPv6 hosts of one /64 are one entry).
    pub duplicates: usize,
    /// Unique good entries beyond `max_entries`, left out.
    pub over_max: usize,
}

impl FeedList {
    pub fn truncated(&self) -> bool {
        self.over_max > 0
    }
}

/// Collects entries with the limits applied; APIBAN's pages feed one builder in turn.
#[derive(Debug)]
pub(crate) struct ListBuilder {
    max: usize,
    seen: HashSet<BanKey>,
    list: FeedList,
}

impl ListBuilder {
    pub fn new(max: usize) -> ListBuilder {
        ListBuilder {
            max,
            seen: HashSet::new(),
            list: FeedList::default(),
        }
    }

    /// Starts from a list kept earlier (APIBAN's incremental updates add to it).
    pub fn with_entries(max: usize, entries: &[BanKey]) -> ListBuilder {
        let mut b = ListBuilder::new(max);
        for e in entries {
            b.add(*e);
        }
        b
    }

    pub fn is_full(&self) -> bool {
        self.list.entries.len() >= self.max
    }

    fn add(&mut self, key: BanKey) {
        if self.seen.contains(&key) {
            self.list.duplicates += 1;
        } else if self.is_full() {
            self.list.over_max += 1;
        } else {
            self.seen.insert(key);
            self.list.entries.push(key);
        }
    }

    pub fn bad(&mut self, line: usize, reason: String) {
        self.list.bad += 1;
        if self.list.first_bad.is_none() {
            self.list.first_bad = Some(BadLine { line, reason });
        }
    }

    /// One entry's text, already without comments.
    pub fn push(&mut self, line: usize, text: &str) {
        if text.len() > MAX_ENTRY_LEN {
            self.bad(line, format!("longer than {MAX_ENTRY_LEN} characters"));
            return;
        }
        match BanKey::parse(text) {
            Ok(key) => self.add(key),
            Err(e) => self.bad(line, e.to_string()),
        }
    }

    pub fn finish(self) -> FeedList {
        self.list
    }
}

/// The `plain` format: one address or prefix a line; `#` (and `;`, as in Spamhaus' DROP list)
/// starts a comment anywhere on a line; blank lines, surrounding spaces, CRLF and a leading
/// byte-order mark are fine. A body in which not one line is an address is refused (an HTML
/// error page served with 200 must not wipe the list).
pub fn parse_plain(body: &[u8], max_entries: usize) -> Result<FeedList, FeedError> {
    let body = body.strip_prefix("\u{feff}".as_bytes()).unwrap_or(body);
    let mut b = ListBuilder::new(max_entries);
    let mut lines = 0usize;
    for (i, raw) in body.split(|&c| c == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(text) = std::str::from_utf8(raw) else {
            lines += 1;
            b.bad(i + 1, "not UTF-8 text".into());
            continue;
        };
        let text = text.split(['#', ';']).next().unwrap_or_default().trim();
        if text.is_empty() {
            continue;
        }
        lines += 1;
        b.push(i + 1, text);
    }
    let list = b.finish();
    if list.entries.is_empty() && list.duplicates == 0 {
        if let Some(first) = &list.first_bad {
            return Err(FeedError::NoAddresses {
                lines,
                first: first.line,
                reason: first.reason.clone(),
            });
        }
    }
    Ok(list)
}

/// One APIBAN answer to `GET {root}/{key}/banned[/{id}]`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ApibanPage {
    /// Addresses, and the ID to ask for what follows them.
    Batch { ips: Vec<String>, next: String },
    /// `"ID": "none"`: nothing (more) since the ID asked for.
    End,
}

#[derive(Deserialize)]
struct RawPage {
    #[serde(default)]
    ipaddress: Option<IpField>,
    #[serde(rename = "ID")]
    id: Option<String>,
}

/// `ipaddress` is a list of addresses, or one string in APIBAN's error answers
/// (`"rate limit exceeded"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum IpField {
    List(Vec<String>),
    Text(String),
}

/// Longest APIBAN ID accepted: it goes into the next request's path, so it must be the
/// decimal number APIBAN sends and nothing else.
const MAX_ID_LEN: usize = 20;

/// Reads one APIBAN answer. APIBAN answers 200 with a batch (up to 250 addresses) and the
/// next ID, and 400 with `{"ipaddress":["no new bans"],"ID":"none"}` once the list is
/// complete; `"ID":"unauthorized"` means the key was refused.
pub(crate) fn parse_apiban_page(status: u16, body: &[u8]) -> Result<ApibanPage, FeedError> {
    let page: RawPage = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(_) if status != 200 => return Err(FeedError::Apiban(format!("HTTP status {status}"))),
        Err(e) => return Err(FeedError::Json(e.to_string())),
    };
    if let Some(IpField::Text(t)) = &page.ipaddress {
        if t.contains("rate limit") {
            return Err(FeedError::Apiban(
                "rate limit exceeded (is the key used by another client too?)".into(),
            ));
        }
    }
    match page.id.as_deref() {
        Some("none") => return Ok(ApibanPage::End),
        Some("unauthorized") => {
            return Err(FeedError::Apiban(
                "the key was refused (unauthorized); check the vault secret".into(),
            ))
        }
        _ => {}
    }
    if status != 200 {
        return Err(FeedError::Apiban(format!("HTTP status {status}")));
    }
    let next = match page.id {
        Some(id)
            if !id.is_empty()
                && id.len() <= MAX_ID_LEN
                && id.bytes().all(|b| b.is_ascii_digit()) =>
        {
            id
        }
        Some(id) => {
            let shown: String = id.chars().take(32).collect();
            return Err(FeedError::Json(format!(
                "\"ID\" is {shown:?}, not a number"
            )));
        }
        None => return Err(FeedError::Json("no \"ID\"".into())),
    };
    match page.ipaddress {
        Some(IpField::List(ips)) => Ok(ApibanPage::Batch { ips, next }),
        Some(IpField::Text(_)) => Err(FeedError::Json("\"ipaddress\" is not a list".into())),
        None => Err(FeedError::Json("no \"ipaddress\"".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &FeedList) -> Vec<String> {
        list.entries.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn plain_reads_addresses_prefixes_and_comments() {
        let body = "\u{feff}# a blocklist\r\n\
                    192.0.2.66\r\n\
                    \r\n\
                    198.51.100.0/24 ; SBL123\n\
                    \t2001:db8:1::5   # a host: its /64\n\
                    2001:db8:2::/48\n\
                    ::ffff:192.0.2.7\n\
                    #192.0.2.99\n   \n";
        let list = parse_plain(body.as_bytes(), 100).unwrap();
        assert_eq!(
            keys(&list),
            [
                "192.0.2.66",
                "198.51.100.0/24",
                "2001:db8:1::/64",
                "2001:db8:2::/48",
                "192.0.2.7"
            ]
        );
        assert_eq!((list.bad, list.duplicates, list.over_max), (0, 0, 0));
        assert!(!list.truncated());
        // No final newline, a lone CR line, an empty body.
        assert_eq!(keys(&parse_plain(b"192.0.2.1", 10).unwrap()), ["192.0.2.1"]);
        assert_eq!(
            keys(&parse_plain(b"\r\n192.0.2.1\r", 10).unwrap()),
            ["192.0.2.1"]
        );
        assert_eq!(parse_plain(b"", 10).unwrap(), FeedList::default());
        assert_eq!(
            parse_plain(b"# nothing today\n\n", 10).unwrap(),
            FeedList::default()
        );
    }

    #[test]
    fn plain_skips_garbage_and_remembers_the_first_bad_line() {
        let body = "192.0.2.1\n\
                    banana\n\
                    192.0.2.7/24\n\
                    0.0.0.0/0\n\
                    2000::/3\n\
                    192.0.2.300\n\
                    192.0.2.2 192.0.2.3\n";
        let mut body = body.as_bytes().to_vec();
        body.extend_from_slice(b"\xff\xfe\n");
        body.extend_from_slice(format!("{}\n", "1".repeat(5000)).as_bytes());
        body.extend_from_slice(b"198.51.100.9\n");
        let list = parse_plain(&body, 100).unwrap();
        assert_eq!(keys(&list), ["192.0.2.1", "198.51.100.9"]);
        assert_eq!(list.bad, 8);
        let first = list.first_bad.unwrap();
        assert_eq!(first.line, 2);
        assert!(first.reason.contains("banana"), "{}", first.reason);
        // Host bits and too wide prefixes are refused with their reason.
        let one = |s: &str| parse_plain(format!("192.0.2.1\n{s}").as_bytes(), 10).unwrap();
        assert!(one("192.0.2.7/24")
            .first_bad
            .unwrap()
            .reason
            .contains("host bits"));
        assert!(one("0.0.0.0/0").first_bad.unwrap().reason.contains("wider"));
        assert!(one("2000::/3").first_bad.unwrap().reason.contains("wider"));
        let long = one(&"9".repeat(5000)).first_bad.unwrap();
        assert_eq!(
            long.reason, "longer than 64 characters",
            "long text is not echoed"
        );
    }

    #[test]
    fn a_body_without_one_address_is_refused() {
        let html = b"<!DOCTYPE html>\n<html><body>Service unavailable</body></html>\n";
        match parse_plain(html, 10) {
            Err(FeedError::NoAddresses { lines, first, .. }) => assert_eq!((lines, first), (2, 1)),
            other => panic!("{other:?}"),
        }
        let e = parse_plain(b"\xff\xff\xff", 10).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn plain_deduplicates_after_normalisation() {
        let body =
            "192.0.2.1\n192.0.2.1/32\n2001:db8::1\n2001:db8::2\n192.0.2.1\n::ffff:192.0.2.1\n";
        let list = parse_plain(body.as_bytes(), 10).unwrap();
        assert_eq!(keys(&list), ["192.0.2.1", "2001:db8::/64"]);
        assert_eq!(list.duplicates, 4);
        assert_eq!(list.bad, 0);
    }

    #[test]
    fn plain_keeps_the_first_max_entries() {
        let body: String = (0..=255).map(|i| format!("192.0.2.{i}\n")).collect();
        let body = format!("{body}192.0.2.3\nbanana\n");
        let list = parse_plain(body.as_bytes(), 100).unwrap();
        assert_eq!(list.entries.len(), 100);
        assert_eq!(list.entries[0].to_string(), "192.0.2.0");
        assert_eq!(list.entries[99].to_string(), "192.0.2.99");
        assert_eq!(list.over_max, 156);
        assert!(list.truncated());
        // A duplicate past the cap is a duplicate, not an extra; garbage is still counted.
        assert_eq!((list.duplicates, list.bad), (1, 1));
    }

    #[test]
    fn a_big_plain_list_parses() {
        let body: String = (0..300_000u32)
            .map(|i| format!("10.{}.{}.{}\n", i >> 16, (i >> 8) & 255, i & 255))
            .collect();
        let list = parse_plain(body.as_bytes(), 1_000_000).unwrap();
        assert_eq!(list.entries.len(), 300_000);
    }

    #[test]
    fn apiban_batches_and_the_end() {
        let page = parse_apiban_page(
            200,
            br#"{"ipaddress":["192.0.2.1","2001:db8::1"],"ID":"1712345678"}"#,
        )
        .unwrap();
        assert_eq!(
            page,
            ApibanPage::Batch {
                ips: vec!["192.0.2.1".into(), "2001:db8::1".into()],
                next: "1712345678".into()
            }
        );
        // "No new bans" comes with status 400 (and has been seen with 200).
        for status in [400, 200, 404] {
            let end = parse_apiban_page(status, br#"{"ipaddress":["no new bans"],"ID":"none"}"#);
            assert_eq!(end.unwrap(), ApibanPage::End, "{status}");
        }
        let empty = parse_apiban_page(200, br#"{"ipaddress":[],"ID":"17"}"#).unwrap();
        assert_eq!(
            empty,
            ApibanPage::Batch {
                ips: vec![],
                next: "17".into()
            }
        );
    }

    #[test]
    fn apiban_refusals_and_garbage() {
        let err = |status, body: &[u8]| parse_apiban_page(status, body).unwrap_err().to_string();
        assert!(err(
            400,
            br#"{"ipaddress":["unauthorized"],"ID":"unauthorized"}"#
        )
        .contains("refused"));
        assert!(
            err(400, br#"{"ipaddress":"rate limit exceeded","ID":"none"}"#).contains("rate limit")
        );
        assert!(err(503, b"<html>down</html>").contains("HTTP status 503"));
        assert!(err(400, br#"{"ipaddress":[],"ID":"123"}"#).contains("HTTP status 400"));
        for (body, want) in [
            (&b"<html>"[..], "not APIBAN's JSON"),
            (b"", "not APIBAN's JSON"),
            (br#"{"ipaddress":["192.0.2.1"]"#, "EOF"),
            (br#"[1,2]"#, "not APIBAN's JSON"),
            (br#"true"#, "invalid type"),
            (br#"{"ipaddress":[1,2],"ID":"5"}"#, "did not match"),
            (br#"{"ipaddress":{"a":1},"ID":"5"}"#, "did not match"),
            (br#"{"ipaddress":["192.0.2.1"],"ID":5}"#, "invalid type"),
            (br#"{"ipaddress":["192.0.2.1"]}"#, "no \"ID\""),
            (br#"{"ID":"5"}"#, "no \"ipaddress\""),
            (br#"{"ipaddress":"192.0.2.1","ID":"5"}"#, "not a list"),
            (br#"{"ipaddress":[],"ID":"../../x"}"#, "not a number"),
            (br#"{"ipaddress":[],"ID":""}"#, "not a number"),
            (
                br#"{"ipaddress":[],"ID":"123456789012345678901"}"#,
                "not a number",
            ),
        ] {
            let e = err(200, body);
            assert!(e.contains(want), "{:?}: {e}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn apiban_huge_pages_are_bounded_by_the_builder() {
        let ips: Vec<String> = (0..50_000u32)
            .map(|i| format!("\"10.{}.{}.{}\"", i >> 16, (i >> 8) & 255, i & 255))
            .collect();
        let body = format!(r#"{{"ipaddress":[{}],"ID":"99"}}"#, ips.join(","));
        let ApibanPage::Batch { ips, next } = parse_apiban_page(200, body.as_bytes()).unwrap()
        else {
            panic!("not a batch")
        };
        assert_eq!(next, "99");
        let mut b = ListBuilder::new(1000);
        for (i, ip) in ips.iter().enumerate() {
            b.push(i + 1, ip);
        }
        b.push(50_001, "no new bans");
        let list = b.finish();
        assert_eq!(list.entries.len(), 1000);
        assert_eq!(list.over_max, 49_000);
        assert_eq!(list.first_bad.unwrap().line, 50_001);
    }

    #[test]
    fn a_kept_list_grows_without_duplicates() {
        let kept: Vec<BanKey> = ["192.0.2.1", "192.0.2.2"]
            .iter()
            .map(|s| BanKey::parse(s).unwrap())
            .collect();
        let mut b = ListBuilder::with_entries(3, &kept);
        b.push(1, "192.0.2.2");
        b.push(2, "192.0.2.3");
        assert!(b.is_full());
        b.push(3, "192.0.2.4");
        let list = b.finish();
        assert_eq!(keys(&list), ["192.0.2.1", "192.0.2.2", "192.0.2.3"]);
        assert_eq!((list.duplicates, list.over_max), (1, 1));
    }
}
