//! SIP/SIPS URIs (RFC 3261 §19.1, §25.1) and name-addr values (From, To, Contact, Route...).
//!
//! The parsers are deliberately strict: this is the security boundary in front of Asterisk,
//! and whatever passes is re-serialised in one canonical form ([`fmt::Display`]), so the
//! edge and Asterisk cannot read one value two ways. In particular:
//!
//! - only `sip:` and `sips:` (other schemes are [`UriError::Scheme`]);
//! - no whitespace anywhere inside a URI, not even inside `<...>`;
//! - hosts are RFC 3261 hostnames, dotted-quad IPv4 or bracketed IPv6 (RFC 5118: checked by
//!   the standard library's parser, so `:::` and zone ids are refused);
//! - `%XX` escapes must be two hex digits; the user part is stored decoded and must not decode
//!   to a control character (`%00`, `%0D%0A` could smuggle a NUL or a line break into a
//!   dialplan variable or a log line further on), nor to invalid UTF-8;
//! - duplicate parameters (`;transport=udp;transport=tcp`, two tags) are refused: which one
//!   wins differs between implementations.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Why a URI, name-addr or Via value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// Not `sip:`/`sips:` (RFC 3261 §8.2.2.1: 416 for a Request-URI).
    #[error("unsupported URI scheme")]
    Scheme,
    #[error("malformed: {0}")]
    Syntax(&'static str),
    #[error("invalid host")]
    Host,
    #[error("invalid port")]
    Port,
    #[error("invalid %-escape")]
    Escape,
    #[error("invalid parameter: {0}")]
    Param(&'static str),
    #[error("duplicate parameter")]
    DuplicateParam,
    #[error("unbalanced quotes or brackets")]
    Unbalanced,
}

/// A `sip:` or `sips:` URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    /// `sips:`.
    pub secure: bool,
    /// Percent-decoded.
    pub user: Option<String>,
    /// Percent-decoded.
    pub password: Option<String>,
    /// Lower-cased; IPv6 keeps its brackets (`[::1]`).
    pub host: String,
    pub port: Option<u16>,
    /// Names lower-cased; values as received (escapes kept, validated).
    pub params: Vec<(String, Option<String>)>,
    /// The `?` part without the `?`, as received (validated).
    pub headers: Option<String>,
}

// ---- character classes (RFC 3261 §25.1) ----

/// `token` characters.
pub(crate) fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&c)
}

pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&c)
}

fn is_user_char(c: u8) -> bool {
    is_unreserved(c) || b"&=+$,;?/".contains(&c)
}

fn is_password_char(c: u8) -> bool {
    is_unreserved(c) || b"&=+$,".contains(&c)
}

fn is_param_char(c: u8) -> bool {
    is_unreserved(c) || b"[]/:&+$".contains(&c)
}

fn is_hnv_char(c: u8) -> bool {
    is_unreserved(c) || b"[]/?:+$".contains(&c)
}

/// Characters of a generic header/Via parameter value that is not a quoted string: token, or
/// a host (which adds `:`, `[` and `]` for IPv6 such as `received=2001:db8::9:255`).
fn is_gen_value_char(c: u8) -> bool {
    is_token_char(c) || b":[]".contains(&c)
}

pub(crate) fn is_lws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

pub(crate) fn trim_lws(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

/// Checks that every byte is allowed by `allowed` or is part of a well-formed `%XX` escape.
fn check_escaped(s: &str, allowed: fn(u8) -> bool) -> Result<(), UriError> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let ok =
                b.len() > i + 2 && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(UriError::Escape);
            }
            i += 3;
        } else if allowed(b[i]) {
            i += 1;
        } else {
            return Err(UriError::Syntax("character not allowed in URI"));
        }
    }
    Ok(())
}

fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// Strict decoding of an escaped user or password part.
fn decode(s: &str, allowed: fn(u8) -> bool) -> Result<String, UriError> {
    check_escaped(s, allowed)?;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(hex_val(b[i + 1]) << 4 | hex_val(b[i + 2]));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    if out.iter().any(|&c| c < 0x20 || c == 0x7f) {
        return Err(UriError::Escape);
    }
    String::from_utf8(out).map_err(|_| UriError::Escape)
}

fn encode(s: &str, allowed: fn(u8) -> bool, out: &mut String) {
    for &c in s.as_bytes() {
        if allowed(c) {
            out.push(char::from(c));
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
}

/// A host: RFC 3261 hostname, IPv4 dotted quad, or `[IPv6]`. Returns it lower-cased.
pub(crate) fn parse_host(s: &str) -> Result<String, UriError> {
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(UriError::Host)?;
        // Ipv6Addr accepts exactly RFC 4291 text forms (incl. an embedded IPv4 tail), no zone.
        inner.parse::<Ipv6Addr>().map_err(|_| UriError::Host)?;
        return Ok(s.to_ascii_lowercase());
    }
    if s.is_empty() || s.len() > 253 {
        return Err(UriError::Host);
    }
    if s.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        // Leading zeros are refused by std: "010.0.0.1" is octal to some resolvers.
        s.parse::<Ipv4Addr>().map_err(|_| UriError::Host)?;
        return Ok(s.to_string());
    }
    let body = s.strip_suffix('.').unwrap_or(s);
    let labels: Vec<&str> = body.split('.').collect();
    for label in &labels {
        let lb = label.as_bytes();
        let ok = !lb.is_empty()
            && lb.len() <= 63
            && lb.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
            && lb[0] != b'-'
            && lb[lb.len() - 1] != b'-';
        if !ok {
            return Err(UriError::Host);
        }
    }
    // toplabel = ALPHA ...: keeps "1.2.3.4.5" or "999.1.1.1" from passing as a name.
    let top = labels.last().and_then(|l| l.bytes().next());
    if !top.is_some_and(|c| c.is_ascii_alphabetic()) {
        return Err(UriError::Host);
    }
    Ok(s.to_ascii_lowercase())
}

/// `1*5DIGIT` in 1..=65535.
pub(crate) fn parse_port(s: &str) -> Result<u16, UriError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return Err(UriError::Port);
    }
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(UriError::Port),
    }
}

/// Splits `host[:port]`, where host may be `[IPv6]`.
pub(crate) fn split_hostport(s: &str) -> Result<(String, Option<u16>), UriError> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']').ok_or(UriError::Host)?;
        let rest = &s[end + 1..];
        let port = match rest.strip_prefix(':') {
            Some(p) => Some(p),
            None if rest.is_empty() => None,
            None => return Err(UriError::Host),
        };
        (&s[..=end], port)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let host = parse_host(host)?;
    let port = port.map(parse_port).transpose()?;
    Ok((host, port))
}

fn push_param(
    params: &mut Vec<(String, Option<String>)>,
    name: String,
    value: Option<String>,
) -> Result<(), UriError> {
    if params.iter().any(|(n, _)| *n == name) {
        return Err(UriError::DuplicateParam);
    }
    params.push((name, value));
    Ok(())
}

fn parse_uri_params(s: &str) -> Result<Vec<(String, Option<String>)>, UriError> {
    let mut params = Vec::new();
    if s.is_empty() {
        return Ok(params);
    }
    for p in s.split(';') {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (p, None),
        };
        if name.is_empty() {
            return Err(UriError::Param("empty name"));
        }
        check_escaped(name, is_param_char).map_err(|_| UriError::Param("name"))?;
        if let Some(v) = value {
            if v.is_empty() {
                return Err(UriError::Param("empty value"));
            }
            check_escaped(v, is_param_char).map_err(|_| UriError::Param("value"))?;
        }
        push_param(
            &mut params,
            name.to_ascii_lowercase(),
            value.map(str::to_string),
        )?;
    }
    Ok(params)
}

fn check_uri_headers(s: &str) -> Result<(), UriError> {
    for h in s.split('&') {
        let (name, value) = h.split_once('=').ok_or(UriError::Syntax("URI header"))?;
        if name.is_empty() {
            return Err(UriError::Syntax("URI header"));
        }
        check_escaped(name, is_hnv_char)?;
        check_escaped(value, is_hnv_char)?;
    }
    Ok(())
}

fn case_param<'a>(params: &'a [(String, Option<String>)], name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_deref())
}

impl SipUri {
    /// Parses a `sip:`/`sips:` URI (scheme case-insensitive). See the module doc for the rules.
    pub fn parse(s: &str) -> Result<SipUri, UriError> {
        let (scheme, rest) = s.split_once(':').ok_or(UriError::Syntax("no scheme"))?;
        let secure = if scheme.eq_ignore_ascii_case("sip") {
            false
        } else if scheme.eq_ignore_ascii_case("sips") {
            true
        } else if !scheme.is_empty()
            && scheme.as_bytes()[0].is_ascii_alphabetic()
            && scheme
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c))
        {
            return Err(UriError::Scheme);
        } else {
            return Err(UriError::Syntax("no scheme"));
        };
        if rest.bytes().any(|c| c <= b' ' || c >= 0x7f) {
            return Err(UriError::Syntax("whitespace or non-ASCII in URI"));
        }
        // No '@' may appear unescaped after the userinfo (params and headers exclude it), so
        // the only '@' is the userinfo delimiter.
        let (userinfo, rest) = match rest.split_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pass) = match u.split_once(':') {
                    Some((a, b)) => (a, Some(b)),
                    None => (u, None),
                };
                if user.is_empty() {
                    return Err(UriError::Syntax("empty user"));
                }
                let user = decode(user, is_user_char)?;
                let pass = pass.map(|p| decode(p, is_password_char)).transpose()?;
                (Some(user), pass)
            }
        };
        let (rest, headers) = match rest.split_once('?') {
            Some((r, h)) => {
                check_uri_headers(h)?;
                (r, Some(h.to_string()))
            }
            None => (rest, None),
        };
        let (hostport, params) = match rest.split_once(';') {
            Some((hp, p)) => (hp, parse_uri_params(p)?),
            None => (rest, Vec::new()),
        };
        let (host, port) = split_hostport(hostport)?;
        Ok(SipUri {
            secure,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }

    /// A URI parameter by name (case-insensitive): `Some(None)` for a flag such as `lr`.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        case_param(&self.params, name)
    }
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::from(if self.secure { "sips:" } else { "sip:" });
        if let Some(user) = &self.user {
            encode(user, is_user_char, &mut s);
            if let Some(p) = &self.password {
                s.push(':');
                encode(p, is_password_char, &mut s);
            }
            s.push('@');
        }
        s.push_str(&self.host);
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        for (n, v) in &self.params {
            s.push(';');
            s.push_str(n);
            if let Some(v) = v {
                s.push('=');
                s.push_str(v);
            }
        }
        if let Some(h) = &self.headers {
            s.push('?');
            s.push_str(h);
        }
        f.write_str(&s)
    }
}

/// `name-addr` or `addr-spec` with header parameters (From, To, Contact, Route...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Unquoted and unescaped; `None` when absent or empty.
    pub display: Option<String>,
    pub uri: SipUri,
    /// Header parameters (`tag`, `expires`, `q`, `lr`...), names lower-cased, values as
    /// received (a quoted-string value keeps its quotes).
    pub params: Vec<(String, Option<String>)>,
}

/// A Contact value: `*` (REGISTER only, removes all bindings) or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactValue {
    Star,
    Addr(NameAddr),
}

impl ContactValue {
    pub fn parse(s: &str) -> Result<ContactValue, UriError> {
        if trim_lws(s) == "*" {
            Ok(ContactValue::Star)
        } else {
            NameAddr::parse(s).map(ContactValue::Addr)
        }
    }
}

impl fmt::Display for ContactValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContactValue::Star => f.write_str("*"),
            ContactValue::Addr(a) => a.fmt(f),
        }
    }
}

/// Reads a quoted-string at the start of `s` (which starts with `"`): the unescaped content
/// and what follows the closing quote.
pub(crate) fn read_quoted(s: &str) -> Result<(String, &str), UriError> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, e)) if !is_control(e) => out.push(e),
                _ => return Err(UriError::Syntax("bad quoted-pair")),
            },
            c if is_control(c) => return Err(UriError::Syntax("control character")),
            c => out.push(c),
        }
    }
    Err(UriError::Unbalanced)
}

/// Controls other than HTAB.
pub(crate) fn is_control(c: char) -> bool {
    (c < ' ' && c != '\t') || c == '\u{7f}'
}

fn quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Parses `*( SEMI generic-param )` (LWS allowed around `;` and `=`). `s` must be empty or
/// start (after LWS) with `;`.
pub(crate) fn parse_gen_params(s: &str) -> Result<Vec<(String, Option<String>)>, UriError> {
    let mut params = Vec::new();
    let mut rest = trim_lws(s);
    while !rest.is_empty() {
        rest = trim_lws(
            rest.strip_prefix(';')
                .ok_or(UriError::Param("expected ';'"))?,
        );
        let name_len = rest.bytes().take_while(|&c| is_token_char(c)).count();
        if name_len == 0 {
            return Err(UriError::Param("empty name"));
        }
        let name = rest[..name_len].to_ascii_lowercase();
        rest = trim_lws(&rest[name_len..]);
        let value = if let Some(after) = rest.strip_prefix('=') {
            let after = trim_lws(after);
            let (v, r) = read_gen_value(after)?;
            rest = trim_lws(r);
            Some(v)
        } else {
            None
        };
        push_param(&mut params, name, value)?;
    }
    Ok(params)
}

/// `token / host / quoted-string`; a quoted string keeps its quotes (validated, re-emitted
/// verbatim).
fn read_gen_value(s: &str) -> Result<(String, &str), UriError> {
    if s.starts_with('"') {
        let (_, rest) = read_quoted(s)?;
        let raw = &s[..s.len() - rest.len()];
        return Ok((raw.to_string(), rest));
    }
    let n = s.bytes().take_while(|&c| is_gen_value_char(c)).count();
    if n == 0 {
        return Err(UriError::Param("empty value"));
    }
    Ok((s[..n].to_string(), &s[n..]))
}

/// Semantic checks of the header parameters we know.
fn check_known_params(params: &[(String, Option<String>)]) -> Result<(), UriError> {
    for (name, value) in params {
        let v = value.as_deref();
        let ok = match name.as_str() {
            "tag" => v.is_some_and(is_token),
            "expires" => v.is_some_and(|v| parse_delta_seconds(v).is_some()),
            "q" => v.is_some_and(is_qvalue),
            _ => true,
        };
        if !ok {
            return Err(UriError::Param("tag, expires or q"));
        }
    }
    Ok(())
}

/// `delta-seconds` (1*DIGIT) that fits in 32 bits; larger values are refused rather than
/// clamped (RFC 4475 scalar02).
pub(crate) fn parse_delta_seconds(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn is_qvalue(s: &str) -> bool {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let frac_ok = |f: &str, only_zero: bool| {
        f.len() <= 3
            && f.bytes().all(|c| {
                if only_zero {
                    c == b'0'
                } else {
                    c.is_ascii_digit()
                }
            })
    };
    match (int, frac) {
        ("0", None) | ("1", None) => true,
        ("0", Some(f)) => frac_ok(f, false),
        ("1", Some(f)) => frac_ok(f, true),
        _ => false,
    }
}

impl NameAddr {
    /// `[display-name] <URI> *(;param)` or `URI *(;param)` (addr-spec: the URI then may
    /// contain no `;`, `?` or `,`, which would be read as header parameters; RFC 3261 §20).
    /// A display name is a quoted string or tokens separated by whitespace (no commas:
    /// RFC 4475 baddn).
    pub fn parse(s: &str) -> Result<NameAddr, UriError> {
        Self::parse_inner(s, false)
    }

    /// Like [`NameAddr::parse`], but the URI must be in angle brackets (Route, Record-Route,
    /// Path: `name-addr` only).
    pub fn parse_bracketed(s: &str) -> Result<NameAddr, UriError> {
        Self::parse_inner(s, true)
    }

    fn parse_inner(s: &str, bracketed_only: bool) -> Result<NameAddr, UriError> {
        let s = trim_lws(s);
        if s.chars().any(is_control) {
            return Err(UriError::Syntax("control character"));
        }
        let (display, uri, rest) = if s.starts_with('"') {
            let (display, after) = read_quoted(s)?;
            let after = trim_lws(after);
            let (uri, rest) = bracketed(after)?;
            (Some(display), uri, rest)
        } else if let Some(lt) = s.find('<') {
            let display = trim_lws(&s[..lt]);
            if !display.bytes().all(|c| is_token_char(c) || is_lws(c)) {
                return Err(UriError::Syntax("display name"));
            }
            let display = display.split([' ', '\t']).filter(|t| !t.is_empty());
            let display = display.collect::<Vec<_>>().join(" ");
            let (uri, rest) = bracketed(&s[lt..])?;
            (Some(display), uri, rest)
        } else {
            if bracketed_only {
                return Err(UriError::Syntax("name-addr required"));
            }
            let (uri, rest) = match s.find(';') {
                Some(i) => (&s[..i], &s[i..]),
                None => (s, ""),
            };
            if uri.contains(['?', ',']) {
                return Err(UriError::Syntax("addr-spec with '?' or ','"));
            }
            (None, uri, rest)
        };
        let uri = SipUri::parse(uri)?;
        let params = parse_gen_params(rest)?;
        check_known_params(&params)?;
        Ok(NameAddr {
            display: display.filter(|d| !d.is_empty()),
            uri,
            params,
        })
    }

    /// A header parameter by name (case-insensitive).
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        case_param(&self.params, name)
    }

    pub fn tag(&self) -> Option<&str> {
        self.param("tag").flatten()
    }

    /// Sets (or replaces) a header parameter.
    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        let name = name.to_ascii_lowercase();
        match self.params.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.params.push((name, value)),
        }
    }
}

/// `<URI>` at the start of `s`: the URI text and what follows `>`.
fn bracketed(s: &str) -> Result<(&str, &str), UriError> {
    let inner = s
        .strip_prefix('<')
        .ok_or(UriError::Syntax("expected '<'"))?;
    let end = inner.find('>').ok_or(UriError::Unbalanced)?;
    Ok((&inner[..end], &inner[end + 1..]))
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        if let Some(d) = &self.display {
            quote(d, &mut s);
            s.push(' ');
        }
        s.push('<');
        s.push_str(&self.uri.to_string());
        s.push('>');
        for (n, v) in &self.params {
            s.push(';');
            s.push_str(n);
            if let Some(v) = v {
                s.push('=');
                s.push_str(v);
            }
        }
        f.write_str(&s)
    }
}

/// Splits a comma-separated header value into elements, ignoring commas inside quoted
/// strings and `<...>`. Empty elements and unbalanced quotes/brackets are errors.
pub(crate) fn split_list(s: &str) -> Result<Vec<&str>, UriError> {
    let mut out = Vec::new();
    let (mut in_quote, mut in_angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if in_quote {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_quote = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_quote = true,
            '<' if !in_angle => in_angle = true,
            '<' => return Err(UriError::Unbalanced),
            '>' if in_angle => in_angle = false,
            ',' if !in_angle => {
                out.push(trim_lws(&s[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_quote || in_angle {
        return Err(UriError::Unbalanced);
    }
    out.push(trim_lws(&s[start..]));
    if out.iter().any(|e| e.is_empty()) {
        return Err(UriError::Syntax("empty list element"));
    }
    Ok(out)
}

#[cfg(test)]
#[path = "uri_tests.rs"]
mod tests;
