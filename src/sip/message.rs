//! The SIP message model, its strict parser and its normal-form serialiser.
//!
//! This is the security boundary of the SIP edge. [`Message::parse`] refuses anything that two
//! SIP stacks could read differently, and whatever it accepts is forwarded only as
//! [`Message::to_bytes`] (never the received bytes), so pbxguard and Asterisk's pjsip always
//! see one and the same message.
//!
//! Rules, each with a unit test in `message_tests.rs`:
//! - CRLF line ends only: a bare CR or bare LF anywhere in the header block is refused
//!   (pjsip accepts bare LF; a reader that did not would see other line and message bounds).
//! - No line folding, no whitespace before a header colon, header names are tokens, no
//!   control characters but HTAB in the header block, header values are UTF-8.
//! - Compact names are expanded; an unknown one-letter name is refused (another stack may
//!   know it as a compact form we don't).
//! - Exactly one of the singleton headers ([`SINGLETONS`]); To, From, Call-ID, CSeq and Via
//!   required, Max-Forwards too in requests; a From tag is required; a branch on the top Via
//!   of a request; CSeq's method equal to the request's; Content-Length equal to the body.
//! - Max-Forwards 0 on a request is refused here as [`ParseError::TooManyHops`] (483), and any
//!   Proxy-Require as [`ParseError::BadExtension`] (420): the edge supports no proxy
//!   extension. The proxy itself therefore never sees either.
//! - Via, From, To, Contact, Route, Record-Route, Path, CSeq, Max-Forwards are stored in
//!   canonical form; other headers verbatim (trimmed).
//! - The limits hold for the received bytes and for the normal form alike, so whatever is
//!   accepted re-parses after serialisation.

use std::fmt;

use super::uri::{
    is_control, is_lws, is_token, parse_delta_seconds, parse_gen_params, parse_host, parse_port,
    split_list, trim_lws, ContactValue, NameAddr, SipUri, UriError,
};

/// Whole message, header block and body. Real requests (an INVITE with SDP and SRTP keys) are
/// 2-5 KiB; 16 KiB leaves room for large SDP offers (video, many codecs) and bounds memory.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Header block including the start line and the blank line. Shared with the stream framer.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Header lines (after the start line). Softphone requests carry 10-30; RFC 4475's longreq
/// about 45 (mostly Via). Also bounds the work done per message.
pub const MAX_HEADERS: usize = 64;
/// One line, start line included. Long enough for Authorization with digest parameters or a
/// long Identity, short enough that no single value dominates the budget.
pub const MAX_LINE_BYTES: usize = 4096;

/// Defines [`SINGLETONS`] and [`NAMED_REASONS`] from one list, so a singleton cannot be
/// added without its reason phrases. The phrases are built at compile time because
/// [`ParseError::status`] hands out `&'static str`.
macro_rules! named_headers {
    (singletons: [$($s:literal),* $(,)?], lists: [$($l:literal),* $(,)?] $(,)?) => {
        /// Headers of which a message may carry at most one line (and one value).
        pub const SINGLETONS: &[&str] = &[$($s),*];

        /// `(name, [duplicate, missing, invalid] reason phrase)` for every header a parse
        /// error can name: the singletons and the list headers with a canonical form.
        const NAMED_REASONS: &[(&str, [&str; 3])] = &[
            $(($s, named_headers!(@reasons $s)),)*
            $(($l, named_headers!(@reasons $l)),)*
        ];
    };
    (@reasons $h:literal) => {
        [
            concat!("Bad Request (duplicate ", $h, ")"),
            concat!("Bad Request (missing ", $h, ")"),
            concat!("Bad Request (invalid ", $h, ")"),
        ]
    };
}

named_headers! {
    singletons: [
        "To",
        "From",
        "Call-ID",
        "CSeq",
        "Max-Forwards",
        "Content-Type",
        "Content-Length",
        "Content-Encoding",
        "Content-Disposition",
        "Expires",
        "Min-Expires",
        "Date",
        "Event",
        "Refer-To",
        "Referred-By",
        "Session-Expires",
        "Min-SE",
        "RSeq",
        "RAck",
        "Subscription-State",
        "Replaces",
        "MIME-Version",
        "Timestamp",
        "User-Agent",
        "Server",
        "Subject",
        "Priority",
        "Organization",
        "Retry-After",
    ],
    lists: ["Via", "Contact", "Route", "Record-Route", "Path"],
}

/// Reason phrases for a header outside [`NAMED_REASONS`], in the same order.
const UNNAMED_REASONS: [&str; 3] = [
    "Bad Request (duplicate header)",
    "Bad Request (missing header)",
    "Bad Request (invalid header)",
];

/// Which of a header's reason phrases to give: an index into [`NAMED_REASONS`]' arrays.
#[derive(Clone, Copy)]
enum HeaderFault {
    Duplicate = 0,
    Missing = 1,
    Invalid = 2,
}

/// The `&'static` reason phrase naming `name`, or a generic one for headers not in the table.
fn header_reason(fault: HeaderFault, name: &str) -> &'static str {
    let reasons = NAMED_REASONS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(&UNNAMED_REASONS, |(_, r)| r);
    reasons[fault as usize]
}

/// Compact forms (RFC 3261 §7.3.3 and later RFCs' registrations).
const COMPACT: &[(u8, &str)] = &[
    (b'i', "Call-ID"),
    (b'm', "Contact"),
    (b'e', "Content-Encoding"),
    (b'l', "Content-Length"),
    (b'c', "Content-Type"),
    (b'f', "From"),
    (b's', "Subject"),
    (b'k', "Supported"),
    (b't', "To"),
    (b'v', "Via"),
    (b'o', "Event"),
    (b'u', "Allow-Events"),
    (b'r', "Refer-To"),
    (b'b', "Referred-By"),
    (b'a', "Accept-Contact"),
    (b'j', "Reject-Contact"),
    (b'd', "Request-Disposition"),
    (b'x', "Session-Expires"),
    (b'y', "Identity"),
    (b'n', "Identity-Info"),
];

/// Canonical capitalisation of the header names we know.
const KNOWN: &[&str] = &[
    "Accept",
    "Accept-Contact",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Allow-Events",
    "Authentication-Info",
    "Authorization",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Error-Info",
    "Event",
    "Expires",
    "From",
    "Identity",
    "Identity-Info",
    "In-Reply-To",
    "Max-Forwards",
    "MIME-Version",
    "Min-Expires",
    "Min-SE",
    "Organization",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Path",
    "Priority",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "RAck",
    "Reason",
    "Record-Route",
    "Refer-To",
    "Referred-By",
    "Reject-Contact",
    "Replaces",
    "Reply-To",
    "Request-Disposition",
    "Require",
    "Retry-After",
    "Route",
    "RSeq",
    "Server",
    "Service-Route",
    "Session-Expires",
    "SIP-ETag",
    "SIP-If-Match",
    "Subject",
    "Subscription-State",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Warning",
    "WWW-Authenticate",
];

/// A header name after expansion of compact forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderName {
    Known(&'static str),
    Other(String),
}

impl HeaderName {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            HeaderName::Known(s) => s,
            HeaderName::Other(s) => s,
        }
    }
}

/// Resolves a header name as received: compact forms expanded, known names in canonical
/// capitalisation. `None` when it is not a token or is an unknown one-letter name.
pub(crate) fn resolve_name(name: &str) -> Option<HeaderName> {
    if !is_token(name) {
        return None;
    }
    if name.len() == 1 {
        let c = name.as_bytes()[0].to_ascii_lowercase();
        return COMPACT
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, n)| HeaderName::Known(n));
    }
    match KNOWN.iter().find(|k| k.eq_ignore_ascii_case(name)) {
        Some(k) => Some(HeaderName::Known(k)),
        None => Some(HeaderName::Other(name.to_string())),
    }
}

/// Position just after the CRLFCRLF that ends the header block, if present.
pub(crate) fn header_block_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Line-structure check shared with the framer: CR only in CRLF, LF only after CR, no NUL.
/// `partial`: `buf` may end in the middle of a CRLF.
pub(crate) fn check_line_structure(buf: &[u8], partial: bool) -> Result<(), ParseError> {
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b'\r' => match buf.get(i + 1) {
                Some(b'\n') => {}
                None if partial => {}
                _ => return Err(ParseError::LineEnding),
            },
            b'\n' if i == 0 || buf[i - 1] != b'\r' => return Err(ParseError::LineEnding),
            0 => return Err(ParseError::ControlChar),
            _ => {}
        }
    }
    Ok(())
}

/// How a header line reads: a continuation (folded) line, a line without a colon, or a name
/// and value. `spaced` is true when whitespace precedes the colon (`To :`), a form lenient
/// stacks (pjsip) read as the header named by the trimmed name.
pub(crate) enum Line<'a> {
    Continuation,
    NoColon,
    Header {
        name: &'a [u8],
        spaced: bool,
        value: &'a [u8],
    },
}

pub(crate) fn classify_line(line: &[u8]) -> Line<'_> {
    if line.first().is_some_and(|&c| is_lws(c)) {
        return Line::Continuation;
    }
    let Some(colon) = line.iter().position(|&c| c == b':') else {
        return Line::NoColon;
    };
    let raw = &line[..colon];
    let trimmed_len = raw.len() - raw.iter().rev().take_while(|&&c| is_lws(c)).count();
    Line::Header {
        name: &raw[..trimmed_len],
        spaced: trimmed_len != raw.len(),
        value: &line[colon + 1..],
    }
}

/// The lines of a header block (`block` without its final CRLFCRLF).
pub(crate) fn split_lines(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(block);
    std::iter::from_fn(move || {
        let cur = rest?;
        match cur.windows(2).position(|w| w == b"\r\n") {
            Some(p) => {
                rest = Some(&cur[p + 2..]);
                Some(&cur[..p])
            }
            None => {
                rest = None;
                Some(cur)
            }
        }
    })
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    #[error("header block larger than {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    #[error("line longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    #[error("no end of header block")]
    Incomplete,
    #[error("bare CR or LF")]
    LineEnding,
    #[error("control character in header block")]
    ControlChar,
    #[error("folded header line")]
    Folding,
    #[error("whitespace before a header colon")]
    SpaceBeforeColon,
    #[error("header line without colon")]
    HeaderLine,
    #[error("invalid header name")]
    HeaderName,
    #[error("header value not UTF-8")]
    Utf8,
    #[error("malformed start line")]
    StartLine,
    #[error("unsupported SIP version")]
    Version,
    #[error("unsupported URI scheme")]
    Scheme,
    #[error("invalid Request-URI: {0}")]
    RequestUri(UriError),
    #[error("duplicate {0}")]
    Duplicate(&'static str),
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("From without tag")]
    NoFromTag,
    #[error("top Via without branch")]
    NoBranch,
    #[error("CSeq method differs from the request method")]
    CSeqMethod,
    #[error("Content-Length differs from the body length")]
    ContentLength,
    #[error("body without Content-Type")]
    NoContentType,
    #[error("Max-Forwards is 0")]
    TooManyHops,
    #[error("unsupported Proxy-Require: {0}")]
    BadExtension(String),
}

impl ParseError {
    /// The status to answer with (when an answer can be built at all, see [`error_response`]).
    pub fn status(&self) -> (u16, &'static str) {
        use ParseError::*;
        match self {
            TooLarge => (413, "Request Entity Too Large"),
            HeadersTooLarge | TooManyHeaders | LineTooLong => (513, "Message Too Large"),
            Version => (505, "Version Not Supported"),
            Scheme => (416, "Unsupported URI Scheme"),
            TooManyHops => (483, "Too Many Hops"),
            BadExtension(_) => (420, "Bad Extension"),
            Duplicate(n) => (400, header_reason(HeaderFault::Duplicate, n)),
            Missing(n) => (400, header_reason(HeaderFault::Missing, n)),
            Invalid(n) => (400, header_reason(HeaderFault::Invalid, n)),
            Incomplete => (400, "Bad Request (incomplete header block)"),
            LineEnding => (400, "Bad Request (bare CR or LF)"),
            ControlChar => (400, "Bad Request (control character)"),
            Folding => (400, "Bad Request (folded header line)"),
            SpaceBeforeColon => (400, "Bad Request (whitespace before colon)"),
            HeaderLine | HeaderName => (400, "Bad Request (malformed header line)"),
            Utf8 => (400, "Bad Request (header not UTF-8)"),
            StartLine => (400, "Bad Request (malformed start line)"),
            RequestUri(_) => (400, "Bad Request (invalid Request-URI)"),
            NoFromTag => (400, "Bad Request (missing From tag)"),
            NoBranch => (400, "Bad Request (missing Via branch)"),
            CSeqMethod => (400, "Bad Request (CSeq method mismatch)"),
            ContentLength => (400, "Bad Request (Content-Length mismatch)"),
            NoContentType => (400, "Bad Request (body without Content-Type)"),
        }
    }
}

/// SIP request methods.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    /// Any other token, exactly as received (methods are case-sensitive).
    Other(String),
}

const METHODS: &[(&str, Method)] = &[
    ("INVITE", Method::Invite),
    ("ACK", Method::Ack),
    ("BYE", Method::Bye),
    ("CANCEL", Method::Cancel),
    ("REGISTER", Method::Register),
    ("OPTIONS", Method::Options),
    ("INFO", Method::Info),
    ("UPDATE", Method::Update),
    ("PRACK", Method::Prack),
    ("SUBSCRIBE", Method::Subscribe),
    ("NOTIFY", Method::Notify),
    ("REFER", Method::Refer),
    ("MESSAGE", Method::Message),
    ("PUBLISH", Method::Publish),
];

impl Method {
    /// A method token (case-sensitive: `invite` is `Other("invite")`).
    pub fn parse(s: &str) -> Option<Method> {
        if !is_token(s) {
            return None;
        }
        let known = METHODS
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, m)| m.clone());
        Some(known.unwrap_or_else(|| Method::Other(s.to_string())))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Other(s) => s,
            m => METHODS.iter().find(|(_, k)| k == m).map_or("", |(n, _)| n),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Method, uri: SipUri },
    Response { code: u16, reason: String },
}

/// One Via value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Upper-cased (UDP, TCP, TLS, WS, WSS, SCTP or another token).
    pub transport: String,
    /// Lower-cased; IPv6 in brackets.
    pub host: String,
    pub port: Option<u16>,
    /// Names lower-cased.
    pub params: Vec<(String, Option<String>)>,
}

impl Via {
    /// `SIP / 2.0 / transport LWS sent-by *( ; param )`, with the optional whitespace RFC 3261
    /// allows around `/`, `:`, `;` and `=` (dropped in the canonical form). `branch` must be
    /// a token, `received` an IP address, `rport` empty or a port, `ttl` 0-255, `maddr` a host.
    pub fn parse(s: &str) -> Result<Via, UriError> {
        let s = trim_lws(s);
        if !s.is_ascii() || s.chars().any(is_control) {
            return Err(UriError::Syntax("Via characters"));
        }
        let mut c = Cursor(s);
        if !c.token().eq_ignore_ascii_case("SIP") {
            return Err(UriError::Syntax("Via protocol"));
        }
        c.sep(b'/')?;
        if c.take_while(|b| b.is_ascii_digit() || b == b'.') != "2.0" {
            return Err(UriError::Syntax("Via version"));
        }
        c.sep(b'/')?;
        let transport = c.token().to_ascii_uppercase();
        if transport.is_empty() {
            return Err(UriError::Syntax("Via transport"));
        }
        if c.ws() == 0 {
            return Err(UriError::Syntax("Via sent-by"));
        }
        let host = if c.0.starts_with('[') {
            let end = c.0.find(']').ok_or(UriError::Host)?;
            c.advance(end + 1)
        } else {
            c.take_while(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        };
        let host = parse_host(host)?;
        c.ws();
        let port = if c.eat(b':') {
            c.ws();
            Some(parse_port(c.take_while(|b| b.is_ascii_digit()))?)
        } else {
            None
        };
        let params = parse_gen_params(c.0)?;
        check_via_params(&params)?;
        Ok(Via {
            transport,
            host,
            port,
            params,
        })
    }

    pub fn branch(&self) -> Option<&str> {
        self.param("branch").flatten()
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// Sets (replaces, or appends) a parameter such as `received` or `rport`.
    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        let name = name.to_ascii_lowercase();
        match self.params.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.params.push((name, value)),
        }
    }
}

fn check_via_params(params: &[(String, Option<String>)]) -> Result<(), UriError> {
    for (name, value) in params {
        let v = value.as_deref();
        let ok = match name.as_str() {
            "branch" => v.is_some_and(is_token),
            "received" => v.is_some_and(is_ip),
            "rport" => v.is_none_or(|p| parse_port(p).is_ok()),
            "ttl" => v.is_some_and(|t| t.len() <= 3 && t.parse::<u8>().is_ok()),
            "maddr" => v.is_some_and(|h| parse_host(h).is_ok()),
            _ => true,
        };
        if !ok {
            return Err(UriError::Param("Via parameter"));
        }
    }
    Ok(())
}

/// IPv4, IPv6 or bracketed IPv6 (RFC 5118 §4.5 allows `received` either way).
fn is_ip(s: &str) -> bool {
    let inner = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
    match inner {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => s.parse::<std::net::IpAddr>().is_ok(),
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        for (n, v) in &self.params {
            match v {
                Some(v) => write!(f, ";{n}={v}")?,
                None => write!(f, ";{n}")?,
            }
        }
        Ok(())
    }
}

/// A tiny cursor for the Via grammar.
struct Cursor<'a>(&'a str);

impl<'a> Cursor<'a> {
    fn advance(&mut self, n: usize) -> &'a str {
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let n = self.0.bytes().take_while(|&b| f(b)).count();
        self.advance(n)
    }

    fn token(&mut self) -> &'a str {
        self.take_while(super::uri::is_token_char)
    }

    fn ws(&mut self) -> usize {
        self.take_while(is_lws).len()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.0.as_bytes().first() == Some(&b) {
            self.advance(1);
            true
        } else {
            false
        }
    }

    /// `SWS b SWS`.
    fn sep(&mut self, b: u8) -> Result<(), UriError> {
        self.ws();
        if !self.eat(b) {
            return Err(UriError::Syntax("Via separator"));
        }
        self.ws();
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    name: HeaderName,
    value: String,
}

/// A parsed SIP message in normal form.
///
/// Content-Length is not a stored header: it is derived from the body (and always written by
/// [`Message::to_bytes`]), so it can never disagree with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    start: StartLine,
    headers: Vec<Header>,
    body: Vec<u8>,
    content_length: String,
}

/// Header names as callers give them: compact forms expanded, canonical case if known.
fn lookup_name(name: &str) -> String {
    match resolve_name(name) {
        Some(n) => n.as_str().to_string(),
        None => name.to_string(),
    }
}

/// Controls (CR, LF, NUL...) in values given by code are replaced by spaces: a value is one
/// line, whatever the caller passed.
fn sanitize(value: &str) -> String {
    let v: String = value
        .chars()
        .map(|c| if is_control(c) || c == '\t' { ' ' } else { c })
        .collect();
    trim_lws(&v).to_string()
}

fn parse_start(line: &str) -> Result<StartLine, ParseError> {
    if line.starts_with("SIP/") {
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        check_version(version)?;
        let code = parts.next().unwrap_or("");
        let reason = parts.next().ok_or(ParseError::StartLine)?;
        if code.len() != 3 || !code.bytes().all(|c| c.is_ascii_digit()) {
            return Err(ParseError::StartLine);
        }
        let code: u16 = code.parse().map_err(|_| ParseError::StartLine)?;
        if !(100..=699).contains(&code) {
            return Err(ParseError::StartLine);
        }
        return Ok(StartLine::Response {
            code,
            reason: reason.to_string(),
        });
    }
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, uri, version] = parts[..] else {
        return Err(ParseError::StartLine);
    };
    check_version(version)?;
    let method = Method::parse(method).ok_or(ParseError::StartLine)?;
    let uri = SipUri::parse(uri).map_err(|e| match e {
        UriError::Scheme => ParseError::Scheme,
        e => ParseError::RequestUri(e),
    })?;
    if uri.headers.is_some() {
        // RFC 3261 §19.1.1: no headers in a Request-URI (RFC 4475 escruri).
        return Err(ParseError::RequestUri(UriError::Syntax(
            "headers in Request-URI",
        )));
    }
    Ok(StartLine::Request { method, uri })
}

/// `SIP/2.0` exactly; another `SIP/x.y` is 505, anything else malformed.
fn check_version(v: &str) -> Result<(), ParseError> {
    if v == "SIP/2.0" {
        return Ok(());
    }
    let looks_like = v.strip_prefix("SIP/").is_some_and(|n| {
        n.split_once('.').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        })
    });
    Err(if looks_like {
        ParseError::Version
    } else {
        ParseError::StartLine
    })
}

/// Limits over a whole message (received or normal form): `hdr_end` is the header block end.
fn check_limits(raw: &[u8], hdr_end: usize) -> Result<(), ParseError> {
    if raw.len() > MAX_MESSAGE_BYTES {
        return Err(ParseError::TooLarge);
    }
    if hdr_end > MAX_HEADER_BYTES {
        return Err(ParseError::HeadersTooLarge);
    }
    let mut lines = 0usize;
    for line in split_lines(&raw[..hdr_end - 4]) {
        if line.len() > MAX_LINE_BYTES {
            return Err(ParseError::LineTooLong);
        }
        lines += 1;
    }
    if lines > MAX_HEADERS + 1 {
        return Err(ParseError::TooManyHeaders);
    }
    Ok(())
}

/// The header block bytes: CRLF line ends, no controls but HTAB.
fn check_header_bytes(block: &[u8]) -> Result<(), ParseError> {
    check_line_structure(block, false)?;
    let bad = |&b: &u8| (b < 0x20 && b != b'\t' && b != b'\r' && b != b'\n') || b == 0x7f;
    if block.iter().any(bad) {
        return Err(ParseError::ControlChar);
    }
    Ok(())
}

/// `1*DIGIT` as a number, at most `max_len` digits.
fn digits(s: &str, max_len: usize) -> Option<u64> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `1*DIGIT LWS Method`, the number below 2^31 (RFC 3261 §8.1.1.5).
fn parse_cseq(v: &str) -> Option<(u32, Method)> {
    let n_len = v.bytes().take_while(u8::is_ascii_digit).count();
    let num = digits(&v[..n_len], 10)?;
    let rest = &v[n_len..];
    let method = trim_lws(rest);
    if method.len() == rest.len() || num >= 1 << 31 {
        return None;
    }
    Some((u32::try_from(num).ok()?, Method::parse(method)?))
}

/// `word [ "@" word ]`.
fn is_call_id(v: &str) -> bool {
    let word = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-.!%*_+`'~()<>:\\\"/[]?{}".contains(&c))
    };
    match v.split_once('@') {
        Some((a, b)) => word(a) && word(b),
        None => word(v),
    }
}

/// `type/subtype *(;param)` (RFC 3261 §20.15), no whitespace around `/`.
fn is_media_type(v: &str) -> bool {
    let (media, params) = match v.find(';') {
        Some(i) => (&v[..i], &v[i..]),
        None => (v, ""),
    };
    let media = trim_lws(media);
    let type_ok = media
        .split_once('/')
        .is_some_and(|(t, s)| is_token(t) && is_token(s));
    type_ok && parse_gen_params(params).is_ok()
}

/// `rfc1123-date` with GMT only (RFC 3261 §20.17; RFC 4475 baddate).
fn is_sip_date(v: &str) -> bool {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let p: Vec<&str> = v.split(' ').collect();
    let [wkday, day, month, year, time, zone] = p[..] else {
        return false;
    };
    let num =
        |s: &str, len: usize, max: u64| digits(s, len).is_some_and(|n| s.len() == len && n <= max);
    let t: Vec<&str> = time.split(':').collect();
    wkday.strip_suffix(',').is_some_and(|d| DAYS.contains(&d))
        && num(day, 2, 31)
        && day != "00"
        && MONTHS.contains(&month)
        && num(year, 4, 9999)
        && t.len() == 3
        && num(t[0], 2, 23)
        && num(t[1], 2, 59)
        && num(t[2], 2, 60)
        && zone == "GMT"
}

/// Header lines as (resolved name, trimmed value), with the line-level rules applied.
fn read_header_lines(block: &[u8]) -> Result<(String, Vec<(HeaderName, String)>), ParseError> {
    let mut lines = split_lines(block);
    let start = lines.next().ok_or(ParseError::StartLine)?;
    let start = std::str::from_utf8(start).map_err(|_| ParseError::Utf8)?;
    let mut out = Vec::new();
    for line in lines {
        let (name, value) = match classify_line(line) {
            Line::Continuation => return Err(ParseError::Folding),
            Line::NoColon => return Err(ParseError::HeaderLine),
            Line::Header { spaced: true, .. } => return Err(ParseError::SpaceBeforeColon),
            Line::Header { name, value, .. } => (name, value),
        };
        let name = std::str::from_utf8(name).map_err(|_| ParseError::HeaderName)?;
        let name = resolve_name(name).ok_or(ParseError::HeaderName)?;
        let value = std::str::from_utf8(value).map_err(|_| ParseError::Utf8)?;
        out.push((name, trim_lws(value).to_string()));
    }
    Ok((start.to_string(), out))
}

/// Validates and canonicalises one header line into one or more stored values.
fn canonical_values(name: &HeaderName, value: &str) -> Result<Vec<String>, ParseError> {
    let HeaderName::Known(n) = *name else {
        return Ok(vec![value.to_string()]);
    };
    let bad = || ParseError::Invalid(n);
    let one = |v: String| Ok(vec![v]);
    match n {
        "Via" => split_list(value)
            .map_err(|_| bad())?
            .into_iter()
            .map(|e| Via::parse(e).map(|v| v.to_string()).map_err(|_| bad()))
            .collect(),
        "Contact" => split_list(value)
            .map_err(|_| bad())?
            .into_iter()
            .map(|e| {
                ContactValue::parse(e)
                    .map(|v| v.to_string())
                    .map_err(|_| bad())
            })
            .collect(),
        "Route" | "Record-Route" | "Path" => split_list(value)
            .map_err(|_| bad())?
            .into_iter()
            .map(|e| match NameAddr::parse_bracketed(e) {
                Ok(a) if a.uri.headers.is_none() => Ok(a.to_string()),
                _ => Err(bad()),
            })
            .collect(),
        "From" | "To" => match NameAddr::parse(value) {
            Ok(a) if a.uri.headers.is_none() => one(a.to_string()),
            _ => Err(bad()),
        },
        "Call-ID" if is_call_id(value) => one(value.to_string()),
        "CSeq" => {
            let (num, method) = parse_cseq(value).ok_or_else(bad)?;
            one(format!("{num} {method}"))
        }
        "Max-Forwards" => match digits(value, 10) {
            Some(mf) if mf <= 255 => one(mf.to_string()),
            _ => Err(bad()),
        },
        "Content-Length" => match digits(value, 10) {
            Some(_) => one(value.to_string()),
            None => Err(bad()),
        },
        "Content-Type" if is_media_type(value) => one(value.to_string()),
        "Expires" | "Min-Expires" if parse_delta_seconds(value).is_some() => one(value.to_string()),
        "Date" if is_sip_date(value) => one(value.to_string()),
        "Call-ID" | "Content-Type" | "Expires" | "Min-Expires" | "Date" => Err(bad()),
        _ => one(value.to_string()),
    }
}

impl Message {
    /// Parses one complete message (from the stream framer or one WebSocket message).
    ///
    /// Without Content-Length (WebSocket, RFC 7118) the body is the rest of the bytes; with
    /// one it must match. Max-Forwards 0 on a request is refused as
    /// [`ParseError::TooManyHops`]: the caller answers 483 (via [`error_response`]).
    pub fn parse(raw: &[u8]) -> Result<Message, ParseError> {
        if raw.len() > MAX_MESSAGE_BYTES {
            return Err(ParseError::TooLarge);
        }
        let limit = raw.len().min(MAX_HEADER_BYTES + 4);
        let hdr_end = match header_block_end(&raw[..limit]) {
            Some(e) => e,
            None => {
                check_line_structure(&raw[..limit], true)?;
                return Err(if raw.len() > MAX_HEADER_BYTES {
                    ParseError::HeadersTooLarge
                } else {
                    ParseError::Incomplete
                });
            }
        };
        let block = &raw[..hdr_end - 4];
        check_header_bytes(block)?;
        check_limits(raw, hdr_end)?;
        let (start, lines) = read_header_lines(block)?;
        let start = parse_start(&start)?;
        let body = raw[hdr_end..].to_vec();
        let msg = Self::build(start, lines, body)?;
        // The normal form must itself pass (it can be longer: escapes, quoting, one Via per
        // line), or a forwarded message would not re-parse.
        let out = msg.to_bytes();
        let out_end = header_block_end(&out).ok_or(ParseError::Incomplete)?;
        check_limits(&out, out_end)?;
        Ok(msg)
    }

    fn build(
        start: StartLine,
        lines: Vec<(HeaderName, String)>,
        body: Vec<u8>,
    ) -> Result<Message, ParseError> {
        let mut headers = Vec::new();
        let mut content_length = None;
        for (name, value) in lines {
            if let HeaderName::Known(n) = name {
                if SINGLETONS.contains(&n) && headers.iter().any(|h: &Header| h.name == name) {
                    return Err(ParseError::Duplicate(n));
                }
                if n == "Content-Length" {
                    if content_length.is_some() {
                        return Err(ParseError::Duplicate(n));
                    }
                    let v = canonical_values(&name, &value)?;
                    content_length = v.into_iter().next();
                    continue;
                }
            }
            for v in canonical_values(&name, &value)? {
                headers.push(Header {
                    name: name.clone(),
                    value: v,
                });
            }
        }
        if let Some(cl) = content_length {
            if digits(&cl, 10) != Some(body.len() as u64) {
                return Err(ParseError::ContentLength);
            }
        }
        let msg = Message {
            start,
            headers,
            content_length: body.len().to_string(),
            body,
        };
        msg.check_semantics()?;
        Ok(msg)
    }

    /// Cross-header rules, in the order RFC 3261 §16.3 checks them where it gives one.
    fn check_semantics(&self) -> Result<(), ParseError> {
        for n in ["Via", "From", "To", "Call-ID", "CSeq"] {
            if self.header(n).is_none() {
                return Err(ParseError::Missing(n));
            }
        }
        if !self.body.is_empty() && self.content_type().is_none() {
            return Err(ParseError::NoContentType);
        }
        self.check_contact_star()?;
        let StartLine::Request { method, .. } = &self.start else {
            // Responses are only relayed back along the Via path; a missing From tag there
            // (an answer to an RFC 2543 request) confuses no one.
            return Ok(());
        };
        // Real UAs always send a From tag; without one dialogs cannot be told apart.
        if self.from().and_then(|f| f.tag().map(str::len)).is_none() {
            return Err(ParseError::NoFromTag);
        }
        let (_, cseq_method) = self.cseq().ok_or(ParseError::Invalid("CSeq"))?;
        if cseq_method != *method {
            return Err(ParseError::CSeqMethod);
        }
        match self.max_forwards() {
            None => return Err(ParseError::Missing("Max-Forwards")),
            Some(0) => return Err(ParseError::TooManyHops),
            Some(_) => {}
        }
        if self
            .top_via()
            .and_then(|v| v.branch().map(str::len))
            .is_none()
        {
            return Err(ParseError::NoBranch);
        }
        if let Some(pr) = self.header("Proxy-Require") {
            return Err(ParseError::BadExtension(pr.to_string()));
        }
        Ok(())
    }

    /// `Contact: *` only alone, in a REGISTER request, with `Expires: 0` (RFC 3261 §10.2.2).
    fn check_contact_star(&self) -> Result<(), ParseError> {
        let contacts: Vec<&str> = self.headers("Contact").collect();
        if !contacts.contains(&"*") {
            return Ok(());
        }
        let ok = self.method() == Some(&Method::Register)
            && contacts.len() == 1
            && self.header("Expires") == Some("0");
        if ok {
            Ok(())
        } else {
            Err(ParseError::Invalid("Contact"))
        }
    }

    /// The normal form: CRLF line ends, canonical names, one value per line for list headers,
    /// Content-Length last and equal to the body length.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(512);
        match &self.start {
            StartLine::Request { method, uri } => {
                out.push_str(&format!("{method} {uri} SIP/2.0\r\n"));
            }
            StartLine::Response { code, reason } => {
                out.push_str(&format!("SIP/2.0 {code} {reason}\r\n"));
            }
        }
        for h in &self.headers {
            out.push_str(h.name.as_str());
            out.push_str(": ");
            out.push_str(&h.value);
            out.push_str("\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    pub fn start(&self) -> &StartLine {
        &self.start
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&SipUri> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// Replaces the Request-URI (no effect on a response).
    pub fn set_request_uri(&mut self, new: SipUri) {
        if let StartLine::Request { uri, .. } = &mut self.start {
            *uri = new;
        }
    }

    /// First value of a header; `name` in any case, long or compact form.
    pub fn header<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.headers(name).next()
    }

    /// All values of a header in order (list headers one value per element).
    pub fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let key = lookup_name(name);
        let cl = key
            .eq_ignore_ascii_case("Content-Length")
            .then_some(self.content_length.as_str());
        self.headers
            .iter()
            .filter(move |h| h.name.as_str().eq_ignore_ascii_case(&key))
            .map(|h| h.value.as_str())
            .chain(cl)
    }

    /// Removes every value of a header; returns how many. Content-Length is derived from the
    /// body and cannot be removed.
    pub fn remove_all(&mut self, name: &str) -> usize {
        let key = lookup_name(name);
        let before = self.headers.len();
        self.headers
            .retain(|h| !h.name.as_str().eq_ignore_ascii_case(&key));
        before - self.headers.len()
    }

    /// Removes every header whose (canonical) name `drop` selects; returns how many.
    pub fn remove_where(&mut self, drop: impl Fn(&str) -> bool) -> usize {
        let before = self.headers.len();
        self.headers.retain(|h| !drop(h.name.as_str()));
        before - self.headers.len()
    }

    /// Removes and returns the first value of a header.
    pub fn remove_first(&mut self, name: &str) -> Option<String> {
        let key = lookup_name(name);
        let i = self.position(&key)?;
        Some(self.headers.remove(i).value)
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.headers
            .iter()
            .position(|h| h.name.as_str().eq_ignore_ascii_case(key))
    }

    /// A header built by our own code: name resolved, value made one line and, for the
    /// structured headers, canonical. `None` for a name that is not a token, an unknown
    /// compact name, or Content-Length (derived from the body).
    fn make_header(name: &str, value: &str) -> Option<Header> {
        let name = resolve_name(name)?;
        if name.as_str() == "Content-Length" {
            tracing::debug!("ignoring an explicit Content-Length header");
            return None;
        }
        let value = sanitize(value);
        let value = match canonical_values(&name, &value) {
            Ok(v) if v.len() == 1 => v.into_iter().next().unwrap_or(value),
            _ => value,
        };
        Some(Header { name, value })
    }

    /// Inserts before the first header of that name, or at the top of the header block (a new
    /// top Via, Record-Route or Path).
    pub fn push_front(&mut self, name: &str, value: String) {
        let Some(h) = Self::make_header(name, &value) else {
            return;
        };
        let i = self.position(h.name.as_str()).unwrap_or(0);
        self.headers.insert(i, h);
    }

    /// Appends after the last header.
    pub fn push_back(&mut self, name: &str, value: String) {
        if let Some(h) = Self::make_header(name, &value) {
            self.headers.push(h);
        }
    }

    /// Replaces the first value of a header (or appends it).
    pub fn set_header(&mut self, name: &str, value: String) {
        let Some(h) = Self::make_header(name, &value) else {
            return;
        };
        match self.position(h.name.as_str()) {
            Some(i) => self.headers[i] = h,
            None => self.headers.push(h),
        }
    }

    pub fn vias(&self) -> Vec<Via> {
        self.headers("Via")
            .filter_map(|v| Via::parse(v).ok())
            .collect()
    }

    pub fn top_via(&self) -> Option<Via> {
        self.header("Via").and_then(|v| Via::parse(v).ok())
    }

    /// Replaces the top Via (or adds one when there is none).
    pub fn set_top_via(&mut self, via: &Via) {
        match self.position("Via") {
            Some(i) => self.headers[i].value = via.to_string(),
            None => self.push_front("Via", via.to_string()),
        }
    }

    pub fn from(&self) -> Option<NameAddr> {
        self.header("From").and_then(|v| NameAddr::parse(v).ok())
    }

    pub fn to(&self) -> Option<NameAddr> {
        self.header("To").and_then(|v| NameAddr::parse(v).ok())
    }

    /// The Contact addresses (empty for `Contact: *`, see [`Message::contact_star`]).
    pub fn contacts(&self) -> Vec<NameAddr> {
        self.headers("Contact")
            .filter_map(|v| NameAddr::parse(v).ok())
            .collect()
    }

    /// `Contact: *` (a REGISTER removing all bindings; parse checked it is alone, in a
    /// REGISTER with `Expires: 0`).
    pub fn contact_star(&self) -> bool {
        self.headers("Contact").any(|v| v == "*")
    }

    pub fn routes(&self) -> Vec<NameAddr> {
        self.headers("Route")
            .filter_map(|v| NameAddr::parse(v).ok())
            .collect()
    }

    pub fn record_routes(&self) -> Vec<NameAddr> {
        self.headers("Record-Route")
            .filter_map(|v| NameAddr::parse(v).ok())
            .collect()
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header("Call-ID")
    }

    pub fn cseq(&self) -> Option<(u32, Method)> {
        self.header("CSeq").and_then(parse_cseq)
    }

    /// Renumbers the CSeq (the edge's re-sends after a digest challenge); numbers at or past
    /// 2^31 are refused, as RFC 3261 §8.1.1.5 allows no more.
    pub fn set_cseq(&mut self, n: u32, method: &Method) -> bool {
        if n >= 1 << 31 {
            return false;
        }
        self.set_header("CSeq", format!("{n} {}", method.as_str()));
        true
    }

    pub fn max_forwards(&self) -> Option<u8> {
        self.header("Max-Forwards").and_then(|v| v.parse().ok())
    }

    pub fn set_max_forwards(&mut self, n: u8) {
        self.set_header("Max-Forwards", n.to_string());
    }

    pub fn user_agent(&self) -> Option<&str> {
        self.header("User-Agent")
    }

    pub fn content_type(&self) -> Option<&str> {
        self.header("Content-Type")
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Replaces the body. `Some(type)` sets Content-Type, `None` removes it (so pass a type
    /// with any non-empty body, or the message no longer re-parses).
    pub fn set_body(&mut self, content_type: Option<&str>, body: Vec<u8>) {
        self.remove_all("Content-Type");
        if let Some(ct) = content_type {
            self.push_back("Content-Type", ct.to_string());
        }
        self.content_length = body.len().to_string();
        self.body = body;
    }

    /// A response to this request (RFC 3261 §8.2.6): all Via, From, To (with `;tag=to_tag`
    /// added when it has none and `code > 100`), Call-ID and CSeq copied, then `extra`; no
    /// body. `code` should be 100..=699; `reason` is made one line.
    pub fn response(
        &self,
        code: u16,
        reason: &str,
        to_tag: &str,
        extra: &[(&str, String)],
    ) -> Message {
        let mut headers: Vec<Header> = self
            .headers
            .iter()
            .filter(|h| h.name.as_str() == "Via")
            .cloned()
            .collect();
        let known = |n: &'static str, v: String| Header {
            name: HeaderName::Known(n),
            value: v,
        };
        if let Some(f) = self.header("From") {
            headers.push(known("From", f.to_string()));
        }
        if let Some(t) = self.header("To") {
            headers.push(known("To", with_to_tag(t, code, to_tag)));
        }
        for n in ["Call-ID", "CSeq"] {
            if let Some(v) = self.header(n) {
                headers.push(known(n, v.to_string()));
            }
        }
        let mut msg = Message {
            start: StartLine::Response {
                code,
                reason: sanitize(reason),
            },
            headers,
            body: Vec::new(),
            content_length: "0".to_string(),
        };
        for (n, v) in extra {
            msg.push_back(n, v.clone());
        }
        msg
    }
}

/// The To value of a response: a tag added unless there is one already or this is a 100.
fn with_to_tag(to: &str, code: u16, tag: &str) -> String {
    match NameAddr::parse(to) {
        Ok(mut a) if code > 100 && a.tag().is_none() && is_token(tag) => {
            a.set_param("tag", Some(tag.to_string()));
            a.to_string()
        }
        _ => to.to_string(),
    }
}

/// The headers a best-effort error response needs, read leniently but unambiguously.
#[derive(Default)]
struct Essentials {
    vias: Vec<Via>,
    from: Option<String>,
    to: Option<String>,
    call_id: Option<String>,
    cseq: Option<String>,
}

impl Essentials {
    /// `None` when any of them is folded, spaced before its colon, or invalid. A duplicate
    /// keeps its first value: the answer goes back to the sender alone, so the 400 that a
    /// duplicate earns can name either copy without misleading anyone.
    fn read(block: &[u8]) -> Option<Essentials> {
        let mut e = Essentials::default();
        let mut prev_needed = false;
        for line in split_lines(block).skip(1) {
            let (name, spaced, value) = match classify_line(line) {
                Line::Continuation if prev_needed => return None,
                Line::Continuation | Line::NoColon => continue,
                Line::Header {
                    name,
                    spaced,
                    value,
                } => (name, spaced, value),
            };
            let name = std::str::from_utf8(name).ok().and_then(resolve_name);
            let name = name.as_ref().map_or("", HeaderName::as_str);
            prev_needed = matches!(name, "Via" | "From" | "To" | "Call-ID" | "CSeq");
            if !prev_needed {
                continue;
            }
            let value = std::str::from_utf8(value).ok()?;
            if spaced || value.chars().any(is_control) {
                return None;
            }
            let value = trim_lws(value).to_string();
            let slot = match name {
                "Via" => {
                    for v in split_list(&value).ok()? {
                        e.vias.push(Via::parse(v).ok()?);
                    }
                    continue;
                }
                "From" => &mut e.from,
                "To" => &mut e.to,
                "Call-ID" => &mut e.call_id,
                _ => &mut e.cseq,
            };
            if slot.is_none() {
                *slot = Some(value);
            }
        }
        Some(e)
    }
}

/// Best effort for a message that failed to parse: when the raw bytes are a request (not an
/// ACK) whose Via, From, To, Call-ID and CSeq can each be read unambiguously (exactly one
/// line of each singleton, every Via valid), the error response in normal form; otherwise
/// `None` and the caller drops the message (or closes the stream). Never answers a response.
pub fn error_response(raw: &[u8], err: &ParseError) -> Option<Vec<u8>> {
    let scan = &raw[..raw.len().min(MAX_HEADER_BYTES + 4)];
    let end = header_block_end(scan)?;
    let block = &scan[..end - 4];
    check_line_structure(block, false).ok()?;
    let start = split_lines(block).next()?;
    let method = start.split(|&c| c == b' ').next()?;
    let method = std::str::from_utf8(method).ok()?;
    if !is_token(method) || method == "ACK" || start.starts_with(b"SIP/") {
        return None;
    }
    let e = Essentials::read(block)?;
    if e.vias.is_empty() {
        return None;
    }
    // The same rule as `parse` (no URI headers), so our answer is a message we would accept.
    let name_addr = |v: Option<String>| {
        NameAddr::parse(v.as_deref()?)
            .ok()
            .filter(|a| a.uri.headers.is_none())
    };
    let from = name_addr(e.from)?;
    let to = name_addr(e.to)?;
    let call_id = e.call_id.filter(|c| is_call_id(c))?;
    let (num, cseq_method) = parse_cseq(e.cseq.as_deref()?)?;
    let (code, reason) = err.status();
    let mut headers: Vec<Header> = e
        .vias
        .iter()
        .map(|v| Header {
            name: HeaderName::Known("Via"),
            value: v.to_string(),
        })
        .collect();
    let tag = crate::ids::random_hex(8);
    let pairs = [
        ("From", from.to_string()),
        ("To", with_to_tag(&to.to_string(), code, &tag)),
        ("Call-ID", call_id),
        ("CSeq", format!("{num} {cseq_method}")),
    ];
    for (n, v) in pairs {
        headers.push(Header {
            name: HeaderName::Known(n),
            value: v,
        });
    }
    let mut msg = Message {
        start: StartLine::Response {
            code,
            reason: reason.to_string(),
        },
        headers,
        body: Vec::new(),
        content_length: "0".to_string(),
    };
    if let ParseError::BadExtension(tags) = err {
        msg.push_back("Unsupported", tags.clone());
    }
    // Too many Vias (the very reason some messages fail) would make an answer our own parser
    // refuses; such a message is dropped instead.
    let bytes = msg.to_bytes();
    Message::parse(&bytes).is_ok().then_some(bytes)
}

/// Our own answer to a request we forwarded, built from the bytes we forwarded (our normal
/// form): their `Via`s less the first (ours), From, To (tagged), Call-ID and CSeq. Read rather
/// than re-parsed, because what we add on the way (`Via`, `Record-Route`, `Path`) may take a
/// request past the limits the parser sets for peers. Also the branch of the sender's `Via`.
/// `None` when `forwarded` is not such a request.
pub fn answer_forwarded(
    forwarded: &[u8],
    code: u16,
    reason: &str,
) -> Option<(Vec<u8>, Option<String>)> {
    let end = header_block_end(forwarded)?;
    let block = &forwarded[..end - 4];
    if block.starts_with(b"SIP/") {
        return None;
    }
    let e = Essentials::read(block)?;
    let vias = e.vias.get(1..).filter(|v| !v.is_empty())?;
    let branch = vias[0].branch().map(str::to_owned);
    let mut headers: Vec<Header> = vias
        .iter()
        .map(|v| Header {
            name: HeaderName::Known("Via"),
            value: v.to_string(),
        })
        .collect();
    let tag = crate::ids::random_hex(8);
    let pairs = [
        ("From", e.from?),
        ("To", with_to_tag(&e.to?, code, &tag)),
        ("Call-ID", e.call_id?),
        ("CSeq", e.cseq?),
    ];
    for (n, v) in pairs {
        headers.push(Header {
            name: HeaderName::Known(n),
            value: v,
        });
    }
    let msg = Message {
        start: StartLine::Response {
            code,
            reason: sanitize(reason),
        },
        headers,
        body: Vec::new(),
        content_length: "0".to_string(),
    };
    Some((msg.to_bytes(), branch))
}

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
