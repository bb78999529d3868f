//! The SRTP-only media policy, applied to every SDP body crossing the SIP edge in either
//! direction (offers and answers in INVITE, re-INVITE, UPDATE, PRACK, ACK and responses).
//!
//! This is a line scanner of our own rather than a full SDP library: the general-purpose
//! parsers silently drop the very lines the policy is about (`a=crypto`, T.38). What matters
//! is that Asterisk's parser (pjmedia) and ours never disagree about which media lines exist,
//! so anything the two could read differently is refused instead of skipped:
//!
//! * The SDP must be UTF-8. Lines end in CRLF or a bare LF (real UAs send LF-only); a bare CR
//!   is refused because pjmedia treats it as a line end and we would not. NUL and every other
//!   control character except HTAB are refused. Empty lines are allowed only at the very end
//!   (pjmedia allows them there and nowhere else). The first line must be exactly `v=0`.
//! * Every line is `<one lower-case letter>=<value>`.
//! * `m=<media> <port>[/<count>] <proto> <fmt>...` must use single spaces (pjmedia splits on
//!   one space and would mis-read runs of spaces or tabs), a port of 1..5 digits up to 65535
//!   (pjmedia casts to u16, so 65536 would become a disabled stream there) and at least one
//!   format on an active stream.
//! * Media types and protos compare case-insensitively for the allow decision (pjmedia
//!   compares protos case-insensitively), and a proto is only recognised when it upper-cases to
//!   one of the known spellings: `rtp/savp` counts as `RTP/SAVP`, `RTP/AVP` is refused in any
//!   case. Attribute names (`crypto`, `fingerprint`, `setup`), crypto suites, `inline:` and
//!   setup roles are case-sensitive as their RFCs (and Asterisk) read them; fingerprint hash
//!   names are case-insensitive (RFC 8122; Asterisk itself sends `SHA-256`).
//!
//! What is SDP: a body whose Content-Type is `application/sdp` (case-insensitive, parameters
//! ignored), and every `application/sdp` part of a `multipart/*` body (any subtype, since
//! pjsip parses any multipart type), nested up to [`MAX_MULTIPART_DEPTH`]. pjsip finds a
//! multipart delimiter anywhere in the body, not only at the start of a line, so any
//! occurrence of `--boundary` that is not a well-formed delimiter line is refused. Other
//! content types are not inspected, even when the body looks like SDP: pjsip only treats
//! `application/sdp` as SDP. An empty body is not SDP (pjsip keeps no body for it).
//!
//! Refusal texts are built from fixed words, line numbers and the known proto spellings only:
//! never from peer text, so they cannot leak key material or inject into logs.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

/// Largest SDP (per body or per multipart part) we inspect; anything larger is refused.
pub const MAX_SDP_BYTES: usize = 16 * 1024;
/// Most lines in one SDP.
pub const MAX_SDP_LINES: usize = 512;
/// Most `m=` lines in one SDP.
pub const MAX_MEDIA_LINES: usize = 64;
/// Most levels of multipart: a multipart body is level 1, a multipart inside it level 2, …
pub const MAX_MULTIPART_DEPTH: usize = 3;
/// Most parts in one multipart body.
pub const MAX_MULTIPART_PARTS: usize = 16;

/// The crypto suites accepted when the configuration does not name any.
pub const DEFAULT_CRYPTO_SUITES: &[&str] = &[
    "AES_CM_128_HMAC_SHA1_80",
    "AES_CM_128_HMAC_SHA1_32",
    "AES_256_CM_HMAC_SHA1_80",
    "AES_256_CM_HMAC_SHA1_32",
    "AEAD_AES_128_GCM",
    "AEAD_AES_256_GCM",
];

/// Suites whose key||salt length we know. A configured suite missing here can never be
/// accepted, because its inline key could not be checked.
const SUITE_KEY_SALT_BYTES: &[(&str, usize)] = &[
    ("AES_CM_128_HMAC_SHA1_80", 30),
    ("AES_CM_128_HMAC_SHA1_32", 30),
    ("F8_128_HMAC_SHA1_80", 30),
    ("AES_192_CM_HMAC_SHA1_80", 38),
    ("AES_192_CM_HMAC_SHA1_32", 38),
    ("AES_256_CM_HMAC_SHA1_80", 46),
    ("AES_256_CM_HMAC_SHA1_32", 46),
    ("AEAD_AES_128_GCM", 28),
    ("AEAD_AES_256_GCM", 44),
];

/// SDES session parameters that switch protection off; a crypto line carrying one does not count.
const WEAKENING_SESSION_PARAMS: &[&str] = &[
    "UNENCRYPTED_SRTP",
    "UNENCRYPTED_SRTCP",
    "UNAUTHENTICATED_SRTP",
];

/// `(hash name, digest bytes)` for `a=fingerprint` (RFC 8122; md2/md5 deliberately absent).
const FINGERPRINT_HASHES: &[(&str, usize)] = &[
    ("sha-1", 20),
    ("sha-224", 28),
    ("sha-256", 32),
    ("sha-384", 48),
    ("sha-512", 64),
];

const SETUP_ROLES: &[&str] = &["active", "passive", "actpass", "holdconn"];

/// RFC 4568 keys are standard base64; some UAs drop the padding, which is harmless.
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// What the media policy allows beyond the SRTP rules themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPolicy {
    /// Accepted SDES crypto suites, compared case-sensitively (RFC 4568).
    pub crypto_suites: Vec<String>,
    /// Accept `m=image … udptl t38` (unencrypted fax).
    pub allow_t38: bool,
}

impl Default for MediaPolicy {
    fn default() -> Self {
        Self {
            crypto_suites: DEFAULT_CRYPTO_SUITES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            allow_t38: false,
        }
    }
}

/// The outcome of a body that may be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The body is not SDP and holds none (or there is no body).
    NoSdp,
    /// Every SDP in the body passed the policy.
    Accepted,
}

/// Why a body was refused: short text for a SIP Warning header and for logs. Never holds
/// peer-supplied text, hence never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    pub reason: String,
}

impl Refusal {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// Whether `suite` is one whose key length this module knows (for configuration checks).
pub fn is_known_suite(suite: &str) -> bool {
    suite_key_salt_bytes(suite).is_some()
}

/// Check one message body. `require_dtls`: the client is a WebSocket client (DTLS-SRTP only).
///
/// `content_encoding` is the message's Content-Encoding (several headers joined by commas).
pub fn check_body(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &[u8],
    policy: &MediaPolicy,
    require_dtls: bool,
) -> Result<Verdict, Refusal> {
    // A body without Content-Type is message.rs's to refuse; an empty body carries no SDP.
    let Some(content_type) = content_type else {
        return Ok(Verdict::NoSdp);
    };
    if body.is_empty() {
        return Ok(Verdict::NoSdp);
    }
    let kind = body_kind(content_type)?;
    if kind == BodyKind::Other {
        return Ok(Verdict::NoSdp);
    }
    // A compressed multipart cannot be searched for SDP, so encoding is refused for both.
    if !is_identity_encoding(content_encoding) {
        return Err(Refusal::new(
            "Content-Encoding is not allowed on a body carrying SDP",
        ));
    }
    let checker = Checker {
        policy,
        require_dtls,
    };
    checker.entity(&kind, body, 0)
}

/// Check one SDP text on its own (no MIME wrapping).
pub fn check_sdp(sdp: &[u8], policy: &MediaPolicy, require_dtls: bool) -> Result<(), Refusal> {
    Checker {
        policy,
        require_dtls,
    }
    .sdp(sdp)
}

/// A Warning header value (RFC 3261 §20.43) for a refusal: `399 <host> "<text>"`.
pub fn warning_value(agent_host: &str, refusal: &Refusal) -> String {
    format!(
        "399 {} \"{}\"",
        warn_agent(agent_host),
        warn_text(&refusal.reason)
    )
}

/// The agent must be a hostport or a token; anything else falls back to a fixed pseudonym
/// rather than letting configuration text break the header.
fn warn_agent(host: &str) -> &str {
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    if ok {
        host
    } else {
        "pbxguard"
    }
}

/// Printable ASCII only, quotes and backslashes escaped, bounded length.
fn warn_text(text: &str) -> String {
    const MAX_CHARS: usize = 160;
    let mut out = String::with_capacity(text.len().min(MAX_CHARS) + 8);
    for c in text.chars().take(MAX_CHARS) {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Content-Type and MIME
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum BodyKind {
    Sdp,
    Multipart { boundary: String },
    Other,
}

fn body_kind(content_type: &str) -> Result<BodyKind, Refusal> {
    let media =
        parse_media_type(content_type).ok_or_else(|| Refusal::new("malformed Content-Type"))?;
    if media.kind == "application" && media.subtype == "sdp" {
        return Ok(BodyKind::Sdp);
    }
    if media.kind != "multipart" {
        return Ok(BodyKind::Other);
    }
    let mut boundaries = media
        .params
        .iter()
        .filter(|(name, _)| name == "boundary")
        .map(|(_, value)| value);
    match (boundaries.next(), boundaries.next()) {
        (Some(boundary), None) if is_valid_boundary(boundary) => Ok(BodyKind::Multipart {
            boundary: boundary.clone(),
        }),
        // pjsip would guess a boundary from the body; we will not guess along with it.
        (None, _) => Err(Refusal::new("multipart body without a boundary")),
        _ => Err(Refusal::new("invalid multipart boundary")),
    }
}

struct MediaType {
    /// Lower-cased.
    kind: String,
    /// Lower-cased.
    subtype: String,
    /// Lower-cased names, values as sent (quotes removed).
    params: Vec<(String, String)>,
}

/// RFC 3261 `media-type = m-type SLASH m-subtype *(SEMI m-parameter)`, with the SWS the
/// grammar allows around `/`, `;` and `=` (pjsip skips it too).
fn parse_media_type(value: &str) -> Option<MediaType> {
    let mut cur = Cursor::new(value);
    cur.skip_ws();
    let kind = cur.token()?.to_ascii_lowercase();
    cur.skip_ws();
    cur.eat(b'/').then_some(())?;
    cur.skip_ws();
    let subtype = cur.token()?.to_ascii_lowercase();
    let mut params = Vec::new();
    loop {
        cur.skip_ws();
        if cur.at_end() {
            break;
        }
        cur.eat(b';').then_some(())?;
        cur.skip_ws();
        let name = cur.token()?.to_ascii_lowercase();
        cur.skip_ws();
        cur.eat(b'=').then_some(())?;
        cur.skip_ws();
        let value = if cur.peek() == Some(b'"') {
            cur.quoted_string()?
        } else {
            cur.token()?.to_owned()
        };
        params.push((name, value));
    }
    Some(MediaType {
        kind,
        subtype,
        params,
    })
}

/// RFC 2046 §5.1.1: 1..70 bchars, not ending in a space. Backslashes and quotes are not
/// bchars, which also keeps us clear of pjsip's quote handling (it strips the quotes but does
/// not unescape).
fn is_valid_boundary(boundary: &str) -> bool {
    let bytes = boundary.as_bytes();
    (1..=70).contains(&bytes.len())
        && !boundary.ends_with(' ')
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b))
}

/// A small cursor over a header value.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// An RFC 3261 token (non-empty).
    fn token(&mut self) -> Option<&'a str> {
        let start = self.pos;
        while self.peek().is_some_and(is_sip_token_byte) {
            self.pos += 1;
        }
        self.text.get(start..self.pos).filter(|t| !t.is_empty())
    }

    /// A quoted-string, returned without quotes and with quoted-pairs resolved.
    fn quoted_string(&mut self) -> Option<String> {
        self.eat(b'"').then_some(())?;
        let mut out = String::new();
        let mut chars = self.text.get(self.pos..)?.char_indices();
        while let Some((offset, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += offset + 1;
                    return Some(out);
                }
                '\\' => {
                    let (_, escaped) = chars.next()?;
                    if escaped.is_control() {
                        return None;
                    }
                    out.push(escaped);
                }
                c if c.is_control() && c != '\t' => return None,
                c => out.push(c),
            }
        }
        None
    }
}

fn is_sip_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Absent, empty or `identity` only (a list, as several headers may have been joined).
fn is_identity_encoding(value: Option<&str>) -> bool {
    value.is_none_or(|value| {
        value.split(',').all(|coding| {
            let coding = coding.trim_matches([' ', '\t']);
            coding.is_empty() || coding.eq_ignore_ascii_case("identity")
        })
    })
}

/// Content-Transfer-Encodings that leave the bytes as they are.
fn is_identity_transfer_encoding(value: Option<&str>) -> bool {
    value.is_none_or(|value| {
        let value = value.trim_matches([' ', '\t']);
        ["7bit", "8bit", "binary"]
            .iter()
            .any(|ok| value.eq_ignore_ascii_case(ok))
    })
}

/// The headers of one multipart part that matter here.
#[derive(Debug, Default)]
struct PartHeaders {
    content_type: Option<String>,
    content_encoding: Option<String>,
    transfer_encoding: Option<String>,
}

/// Splits a multipart body into raw parts (headers and body of each), strictly: the body must
/// hold at least one part and the closing delimiter, and `--boundary` may appear nowhere but
/// in delimiter lines.
fn split_multipart<'b>(body: &'b [u8], boundary: &str) -> Result<Vec<&'b [u8]>, Refusal> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut parts = Vec::new();
    let mut part_start: Option<usize> = None;
    let mut search_from = 0;
    while let Some(found) = find(body, delimiter, search_from) {
        let at = search_from + found;
        if at > 0 && body[at - 1] != b'\n' {
            return Err(Refusal::new("multipart boundary inside a part"));
        }
        let (closing, line_end) = delimiter_line(body, at + delimiter.len())
            .ok_or_else(|| Refusal::new("malformed multipart delimiter line"))?;
        if let Some(start) = part_start {
            parts.push(part_before(body, start, at)?);
            if parts.len() > MAX_MULTIPART_PARTS {
                return Err(Refusal::new("too many multipart parts"));
            }
        }
        if closing {
            // The epilogue is ignored by everyone, but must not look like another delimiter.
            if find(body, delimiter, line_end).is_some() {
                return Err(Refusal::new(
                    "multipart boundary after the closing delimiter",
                ));
            }
            if parts.is_empty() {
                return Err(Refusal::new("multipart body without parts"));
            }
            return Ok(parts);
        }
        part_start = Some(line_end);
        search_from = line_end;
    }
    Err(Refusal::new("multipart body without closing delimiter"))
}

/// After `--boundary`: optional `--` (closing), transport padding, then a line end (or the
/// end of the body for the closing delimiter). Returns (closing, index after the line).
fn delimiter_line(body: &[u8], mut pos: usize) -> Option<(bool, usize)> {
    let closing = body.get(pos..pos + 2) == Some(b"--");
    if closing {
        pos += 2;
    }
    while matches!(body.get(pos), Some(b' ' | b'\t')) {
        pos += 1;
    }
    match body.get(pos) {
        None if closing => Some((true, pos)),
        Some(b'\n') => Some((closing, pos + 1)),
        Some(b'\r') if body.get(pos + 1) == Some(&b'\n') => Some((closing, pos + 2)),
        _ => None,
    }
}

/// The part between the end of one delimiter line and the line end before the next.
fn part_before(body: &[u8], start: usize, next_delimiter: usize) -> Result<&[u8], Refusal> {
    // The delimiter is at a line start, so the byte before it is the LF of that line end
    // (conceptually part of the delimiter); an adjacent delimiter leaves no part at all.
    if next_delimiter <= start {
        return Err(Refusal::new("empty multipart part"));
    }
    let mut end = next_delimiter - 1;
    if end > start && body[end - 1] == b'\r' {
        end -= 1;
    }
    Ok(&body[start..end])
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Splits a part into its headers and body. A part starting with an empty line has no headers;
/// otherwise headers run to an empty line or to the end of the part (then the body is empty).
fn parse_part(part: &[u8]) -> Result<(PartHeaders, &[u8]), Refusal> {
    let bad = || Refusal::new("malformed multipart part headers");
    let mut headers = PartHeaders::default();
    let mut current: Option<(String, String)> = None;
    let mut pos = 0;
    let body_start = loop {
        let Some(newline) = part[pos..].iter().position(|&b| b == b'\n') else {
            // Headers running to the end of the part: the last line is a header too.
            let line = header_line_text(&part[pos..]).ok_or_else(bad)?;
            if !line.is_empty() {
                fold_or_start(&mut headers, &mut current, line).ok_or_else(bad)?;
            }
            break part.len();
        };
        let raw = &part[pos..pos + newline];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = header_line_text(raw).ok_or_else(bad)?;
        pos += newline + 1;
        if line.is_empty() {
            break pos;
        }
        fold_or_start(&mut headers, &mut current, line).ok_or_else(bad)?;
    };
    if let Some((name, value)) = current.take() {
        store_part_header(&mut headers, &name, value).ok_or_else(bad)?;
    }
    Ok((headers, &part[body_start..]))
}

/// A header line as text: UTF-8 without control characters other than HTAB (so no bare CR).
fn header_line_text(raw: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(raw).ok()?;
    (!text.chars().any(|c| c.is_control() && c != '\t')).then_some(text)
}

/// A continuation line (leading SP/HTAB) extends the current header; any other line ends it
/// and starts the next.
fn fold_or_start(
    headers: &mut PartHeaders,
    current: &mut Option<(String, String)>,
    line: &str,
) -> Option<()> {
    if line.starts_with([' ', '\t']) {
        let (_, value) = current.as_mut()?;
        value.push(' ');
        value.push_str(line.trim_matches([' ', '\t']));
        return Some(());
    }
    if let Some((name, value)) = current.take() {
        store_part_header(headers, &name, value)?;
    }
    let (name, value) = line.split_once(':')?;
    let name = name.trim_end_matches([' ', '\t']);
    if name.is_empty() || !name.bytes().all(is_sip_token_byte) {
        return None;
    }
    *current = Some((
        name.to_ascii_lowercase(),
        value.trim_matches([' ', '\t']).to_owned(),
    ));
    Some(())
}

/// Records the headers we need, accepting SIP compact forms (pjsip parses part headers with
/// its SIP header parser). A repeated one is refused: pjsip keeps the last, others the first.
fn store_part_header(headers: &mut PartHeaders, name: &str, value: String) -> Option<()> {
    let slot = match name {
        "content-type" | "c" => &mut headers.content_type,
        "content-encoding" | "e" => &mut headers.content_encoding,
        "content-transfer-encoding" => &mut headers.transfer_encoding,
        _ => return Some(()),
    };
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

// ---------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------

struct Checker<'p> {
    policy: &'p MediaPolicy,
    require_dtls: bool,
}

impl Checker<'_> {
    /// One MIME entity: an SDP, or a multipart at `depth` levels of nesting so far.
    fn entity(&self, kind: &BodyKind, body: &[u8], depth: usize) -> Result<Verdict, Refusal> {
        match kind {
            BodyKind::Other => Ok(Verdict::NoSdp),
            BodyKind::Sdp if body.is_empty() => Ok(Verdict::NoSdp),
            BodyKind::Sdp => self.sdp(body).map(|()| Verdict::Accepted),
            BodyKind::Multipart { boundary } => self.multipart(boundary, body, depth + 1),
        }
    }

    fn multipart(&self, boundary: &str, body: &[u8], depth: usize) -> Result<Verdict, Refusal> {
        if depth > MAX_MULTIPART_DEPTH {
            return Err(Refusal::new("multipart nested too deeply"));
        }
        let mut verdict = Verdict::NoSdp;
        for part in split_multipart(body, boundary)? {
            let (headers, part_body) = parse_part(part)?;
            let kind = match headers.content_type.as_deref() {
                Some(content_type) => body_kind(content_type)?,
                None => BodyKind::Other,
            };
            if kind == BodyKind::Other {
                continue;
            }
            if !is_identity_encoding(headers.content_encoding.as_deref())
                || !is_identity_transfer_encoding(headers.transfer_encoding.as_deref())
            {
                return Err(Refusal::new(
                    "encoded multipart part carrying SDP is not allowed",
                ));
            }
            if self.entity(&kind, part_body, depth)? == Verdict::Accepted {
                verdict = Verdict::Accepted;
            }
        }
        Ok(verdict)
    }

    fn sdp(&self, sdp: &[u8]) -> Result<(), Refusal> {
        if sdp.len() > MAX_SDP_BYTES {
            return Err(Refusal::new("SDP too large"));
        }
        let text = std::str::from_utf8(sdp).map_err(|_| Refusal::new("SDP is not UTF-8"))?;
        let lines = sdp_lines(text)?;
        let description = Description::parse(&lines)?;
        for media in &description.media {
            self.media(&description.session, media)?;
        }
        Ok(())
    }

    fn media(&self, session: &Scope<'_>, media: &Media<'_>) -> Result<(), Refusal> {
        if media.port == 0 {
            return Ok(());
        }
        let n = media.index;
        match media.kind {
            MediaKind::Audio | MediaKind::Video => self.rtp(session, media),
            MediaKind::Image => self.image(session, media),
            MediaKind::Application | MediaKind::Text | MediaKind::Message => Err(Refusal::new(
                format!("media {n}: active m={} is not allowed", media.kind.name()),
            )),
            MediaKind::Unknown => Err(Refusal::new(format!(
                "media {n}: unknown media type is not allowed"
            ))),
        }
    }

    fn rtp(&self, session: &Scope<'_>, media: &Media<'_>) -> Result<(), Refusal> {
        let n = media.index;
        let kind = media.kind.name();
        match media.proto {
            Proto::RtpAvp | Proto::RtpAvpf => Err(Refusal::new(format!(
                "media {n} ({kind}): {} is not allowed, SRTP required",
                media.proto.name()
            ))),
            Proto::RtpSavp | Proto::RtpSavpf if self.require_dtls => Err(Refusal::new(format!(
                "media {n} ({kind}): SDES-SRTP is not allowed for WebSocket clients, DTLS-SRTP required"
            ))),
            Proto::RtpSavp | Proto::RtpSavpf => {
                let policy = self.policy;
                if media.scope.crypto.iter().any(|c| crypto_acceptable(c, policy)) {
                    Ok(())
                } else {
                    Err(Refusal::new(format!(
                        "media {n} ({kind}): no acceptable a=crypto"
                    )))
                }
            }
            Proto::DtlsSavp | Proto::DtlsSavpf => dtls_keys(session, &media.scope)
                .map_err(|why| Refusal::new(format!("media {n} ({kind}): {why}"))),
            Proto::Udptl | Proto::DtlsUdptl | Proto::Unknown => Err(Refusal::new(format!(
                "media {n} ({kind}): transport not allowed"
            ))),
        }
    }

    fn image(&self, session: &Scope<'_>, media: &Media<'_>) -> Result<(), Refusal> {
        let n = media.index;
        if !self.policy.allow_t38 {
            return Err(Refusal::new(format!(
                "media {n}: m=image (T.38 fax) is not allowed"
            )));
        }
        let t38_only = !media.formats.is_empty()
            && media.formats.iter().all(|f| f.eq_ignore_ascii_case("t38"));
        if !t38_only {
            return Err(Refusal::new(format!("media {n}: only T.38 fax is allowed")));
        }
        match media.proto {
            Proto::Udptl => Ok(()),
            Proto::DtlsUdptl => dtls_keys(session, &media.scope)
                .map_err(|why| Refusal::new(format!("media {n} (image): {why}"))),
            _ => Err(Refusal::new(format!(
                "media {n} (image): transport not allowed"
            ))),
        }
    }
}

/// DTLS needs a usable fingerprint and exactly one valid setup role. A media-level attribute
/// replaces the session-level ones (RFC 8122, RFC 4145).
fn dtls_keys(session: &Scope<'_>, media: &Scope<'_>) -> Result<(), &'static str> {
    let fingerprints = if media.fingerprint.is_empty() {
        &session.fingerprint
    } else {
        &media.fingerprint
    };
    if !fingerprints.iter().any(|f| fingerprint_valid(f)) {
        return Err("DTLS-SRTP without a valid a=fingerprint");
    }
    let setups = if media.setup.is_empty() {
        &session.setup
    } else {
        &media.setup
    };
    match setups.as_slice() {
        [] => Err("DTLS-SRTP without a=setup"),
        [role] if SETUP_ROLES.contains(role) => Ok(()),
        [_] => Err("invalid a=setup"),
        _ => Err("more than one a=setup"),
    }
}

// ---------------------------------------------------------------------------------------
// SDP lines
// ---------------------------------------------------------------------------------------

/// One `<letter>=<value>` line and its 1-based line number.
struct Line<'a> {
    number: usize,
    letter: u8,
    value: &'a str,
}

fn sdp_lines(text: &str) -> Result<Vec<Line<'_>>, Refusal> {
    // Only an LF ends a line; the CR of a CRLF is dropped with it. A CR anywhere else
    // (including at the very end, unterminated) stays in the line and is refused below.
    let mut raw: Vec<&str> = text
        .split_inclusive('\n')
        .map(|piece| match piece.strip_suffix('\n') {
            Some(line) => line.strip_suffix('\r').unwrap_or(line),
            None => piece,
        })
        .collect();
    // Empty lines are allowed only at the end.
    while raw.last().is_some_and(|line| line.is_empty()) {
        raw.pop();
    }
    if raw.len() > MAX_SDP_LINES {
        return Err(Refusal::new("SDP has too many lines"));
    }
    raw.iter()
        .enumerate()
        .map(|(i, line)| sdp_line(i + 1, line))
        .collect()
}

fn sdp_line(number: usize, line: &str) -> Result<Line<'_>, Refusal> {
    if line.contains('\r') {
        return Err(Refusal::new(format!("SDP line {number}: bare CR")));
    }
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Refusal::new(format!(
            "SDP line {number}: control character"
        )));
    }
    match line.as_bytes() {
        [letter @ b'a'..=b'z', b'=', ..] => Ok(Line {
            number,
            letter: *letter,
            value: &line[2..],
        }),
        _ => Err(Refusal::new(format!(
            "SDP line {number}: not <letter>=<value>"
        ))),
    }
}

/// The attributes the policy reads, for the session or one media section.
#[derive(Default)]
struct Scope<'a> {
    crypto: Vec<&'a str>,
    fingerprint: Vec<&'a str>,
    setup: Vec<&'a str>,
}

impl<'a> Scope<'a> {
    fn add_attribute(&mut self, value: &'a str) {
        let (name, value) = value.split_once(':').unwrap_or((value, ""));
        match name {
            "crypto" => self.crypto.push(value),
            "fingerprint" => self.fingerprint.push(value),
            "setup" => self.setup.push(value),
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaKind {
    Audio,
    Video,
    Image,
    Application,
    Text,
    Message,
    Unknown,
}

impl MediaKind {
    fn classify(media: &str) -> Self {
        [
            Self::Audio,
            Self::Video,
            Self::Image,
            Self::Application,
            Self::Text,
            Self::Message,
        ]
        .into_iter()
        .find(|kind| kind.name().eq_ignore_ascii_case(media))
        .unwrap_or(Self::Unknown)
    }

    fn name(self) -> &'static str {
        match self {
            Self::Audio => "audio",
            Self::Video => "video",
            Self::Image => "image",
            Self::Application => "application",
            Self::Text => "text",
            Self::Message => "message",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    RtpAvp,
    RtpAvpf,
    RtpSavp,
    RtpSavpf,
    DtlsSavp,
    DtlsSavpf,
    Udptl,
    DtlsUdptl,
    Unknown,
}

impl Proto {
    const KNOWN: [Self; 8] = [
        Self::RtpAvp,
        Self::RtpAvpf,
        Self::RtpSavp,
        Self::RtpSavpf,
        Self::DtlsSavp,
        Self::DtlsSavpf,
        Self::Udptl,
        Self::DtlsUdptl,
    ];

    fn classify(proto: &str) -> Self {
        Self::KNOWN
            .into_iter()
            .find(|known| known.name().eq_ignore_ascii_case(proto))
            .unwrap_or(Self::Unknown)
    }

    fn name(self) -> &'static str {
        match self {
            Self::RtpAvp => "RTP/AVP",
            Self::RtpAvpf => "RTP/AVPF",
            Self::RtpSavp => "RTP/SAVP",
            Self::RtpSavpf => "RTP/SAVPF",
            Self::DtlsSavp => "UDP/TLS/RTP/SAVP",
            Self::DtlsSavpf => "UDP/TLS/RTP/SAVPF",
            Self::Udptl => "UDPTL",
            Self::DtlsUdptl => "UDP/TLS/UDPTL",
            Self::Unknown => "unknown",
        }
    }
}

struct Media<'a> {
    /// 1-based position among the m-lines.
    index: usize,
    kind: MediaKind,
    port: u16,
    proto: Proto,
    formats: Vec<&'a str>,
    scope: Scope<'a>,
}

struct Description<'a> {
    session: Scope<'a>,
    media: Vec<Media<'a>>,
}

impl<'a> Description<'a> {
    fn parse(lines: &[Line<'a>]) -> Result<Self, Refusal> {
        match lines.first() {
            Some(Line {
                letter: b'v',
                value: "0",
                ..
            }) => {}
            _ => return Err(Refusal::new("SDP does not start with v=0")),
        }
        let mut description = Description {
            session: Scope::default(),
            media: Vec::new(),
        };
        for line in lines {
            match line.letter {
                b'm' => description.start_media(line)?,
                b'a' => match description.media.last_mut() {
                    Some(media) => media.scope.add_attribute(line.value),
                    None => description.session.add_attribute(line.value),
                },
                _ => {}
            }
        }
        Ok(description)
    }

    fn start_media(&mut self, line: &Line<'a>) -> Result<(), Refusal> {
        if self.media.len() >= MAX_MEDIA_LINES {
            return Err(Refusal::new("SDP has too many m= lines"));
        }
        let m = parse_m_line(line.value)
            .ok_or_else(|| Refusal::new(format!("SDP line {}: malformed m= line", line.number)))?;
        self.media.push(Media {
            index: self.media.len() + 1,
            kind: MediaKind::classify(m.media),
            port: m.port,
            proto: Proto::classify(m.proto),
            formats: m.formats,
            scope: Scope::default(),
        });
        Ok(())
    }
}

struct MLine<'a> {
    media: &'a str,
    port: u16,
    proto: &'a str,
    formats: Vec<&'a str>,
}

/// `<media> <port>[/<count>] <proto> <fmt>...`, fields separated by exactly one space.
fn parse_m_line(value: &str) -> Option<MLine<'_>> {
    let mut fields = value.split(' ');
    let media = fields.next().filter(|m| is_sdp_token(m))?;
    let port = parse_port(fields.next()?)?;
    let proto = fields.next().filter(|p| is_proto(p))?;
    let formats: Vec<&str> = fields.collect();
    if !formats.iter().all(|f| is_sdp_token(f)) || (port != 0 && formats.is_empty()) {
        return None;
    }
    Some(MLine {
        media,
        port,
        proto,
        formats,
    })
}

fn parse_port(field: &str) -> Option<u16> {
    let (port, count) = match field.split_once('/') {
        Some((port, count)) => (port, Some(count)),
        None => (field, None),
    };
    if count.is_some_and(|c| !is_digits(c, 1, 5)) || !is_digits(port, 1, 5) {
        return None;
    }
    port.parse().ok()
}

/// RFC 4566 token characters.
fn is_sdp_token(text: &str) -> bool {
    !text.is_empty()
        && text.bytes().all(|b| {
            matches!(b, 0x21 | 0x23..=0x27 | 0x2a..=0x2b | 0x2d..=0x2e | 0x30..=0x39 | 0x41..=0x5a | 0x5e..=0x7e)
        })
}

/// `token *("/" token)`.
fn is_proto(text: &str) -> bool {
    text.split('/').all(is_sdp_token)
}

fn is_digits(text: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())
}

// ---------------------------------------------------------------------------------------
// Attributes
// ---------------------------------------------------------------------------------------

fn suite_key_salt_bytes(suite: &str) -> Option<usize> {
    SUITE_KEY_SALT_BYTES
        .iter()
        .find(|(name, _)| *name == suite)
        .map(|(_, len)| *len)
}

/// RFC 4568 `<tag> <suite> <key-params> [<session-params>]`, single spaces (Asterisk splits on
/// one space). The line counts only if every part is well-formed, the suite is allowed and no
/// session parameter weakens protection.
fn crypto_acceptable(value: &str, policy: &MediaPolicy) -> bool {
    let mut fields = value.split(' ');
    let (Some(tag), Some(suite), Some(key_params)) = (fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    let Some(key_len) = suite_key_salt_bytes(suite) else {
        return false;
    };
    is_digits(tag, 1, 9)
        && policy.crypto_suites.iter().any(|s| s == suite)
        && key_params.split(';').all(|k| key_param_valid(k, key_len))
        && fields.all(session_param_acceptable)
}

/// `inline:<base64 key||salt>[|<lifetime>][|<mki>:<length>]`.
fn key_param_valid(key_param: &str, key_len: usize) -> bool {
    let Some(info) = key_param.strip_prefix("inline:") else {
        return false;
    };
    let mut fields = info.split('|');
    let key_ok = fields
        .next()
        .and_then(|key| KEY_BASE64.decode(key).ok())
        .is_some_and(|key| key.len() == key_len);
    let rest: Vec<&str> = fields.collect();
    key_ok
        && match rest.as_slice() {
            [] => true,
            [one] => lifetime_valid(one) || mki_valid(one),
            [lifetime, mki] => lifetime_valid(lifetime) && mki_valid(mki),
            _ => false,
        }
}

/// `["2^"] 1*DIGIT`.
fn lifetime_valid(text: &str) -> bool {
    is_digits(text.strip_prefix("2^").unwrap_or(text), 1, 20)
}

/// `1*DIGIT ":" 1*3DIGIT`, length 1..=128 bytes.
fn mki_valid(text: &str) -> bool {
    text.split_once(':').is_some_and(|(value, length)| {
        is_digits(value, 1, 39)
            && is_digits(length, 1, 3)
            && length.parse::<u8>().is_ok_and(|l| (1..=128).contains(&l))
    })
}

fn session_param_acceptable(param: &str) -> bool {
    let name = param.split_once('=').map_or(param, |(name, _)| name);
    !param.is_empty()
        && param.bytes().all(|b| b.is_ascii_graphic())
        && !WEAKENING_SESSION_PARAMS
            .iter()
            .any(|weak| name.eq_ignore_ascii_case(weak))
}

/// `<hash-func> <XX:XX:…>` with the digest length of the hash.
fn fingerprint_valid(value: &str) -> bool {
    let Some((hash, digest)) = value.split_once(' ') else {
        return false;
    };
    let Some(&(_, len)) = FINGERPRINT_HASHES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(hash))
    else {
        return false;
    };
    let mut pairs = 0;
    for pair in digest.split(':') {
        if pair.len() != 2 || !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
        pairs += 1;
    }
    pairs == len
}

#[cfg(test)]
#[path = "sdp_tests.rs"]
mod tests;
