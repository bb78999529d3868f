//! The text format of Asterisk's `res_config_curl`, both ways.
//!
//! Asterisk encodes every field name and value with `ast_uri_encode(…, ast_uri_http)`: only
//! `A-Z a-z 0-9 - _ . ! ~ * ' ( )` stay as they are, every other byte (UTF-8 included) becomes
//! `%XX`, a space is `%20` (never `+`). Pairs are `name=value` joined by `&`; a lookup operator
//! is part of the name (`id LIKE` → `id%20LIKE`). Answers are decoded with `ast_uri_decode(…,
//! ast_uri_http)`, which turns `%XX` back into bytes and leaves `+` alone — so we must encode
//! the same way, or a `+` in a password would come out as a space on Asterisk's side.

/// Longest body or query accepted from Asterisk (its own buffers stop far below).
pub const MAX_REQUEST: usize = 64 * 1024;
/// Most fields in one request.
pub const MAX_FIELDS: usize = 64;

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
        )
}

/// `ast_uri_encode(s, ast_uri_http)`.
pub fn encode(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if unreserved(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("request too large")]
    TooLarge,
    #[error("too many fields")]
    TooManyFields,
    #[error("bad percent-encoding")]
    BadEscape,
    #[error("field without a name")]
    EmptyName,
}

/// `%XX` → byte; anything else as it is (`+` included). A `%` not followed by two hex digits
/// is refused rather than guessed at.
pub fn decode(s: &str) -> Result<Vec<u8>, WireError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(WireError::BadEscape)?;
            let hex = std::str::from_utf8(hex).map_err(|_| WireError::BadEscape)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| WireError::BadEscape)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// One lookup field: a name, an optional operator (`LIKE`, `!=`, `<`, …) and a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub op: Op,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Like,
    /// An operator this server does not know: matches nothing (never everything).
    Unknown,
}

impl Op {
    fn parse(s: &str) -> Op {
        match s.to_ascii_uppercase().as_str() {
            "" | "=" => Op::Eq,
            "!=" | "<>" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "LIKE" => Op::Like,
            _ => Op::Unknown,
        }
    }
}

/// Parses `name=value&…` (a request body or query string). Empty pieces (the trailing `&` of
/// `destroy`) are skipped; a piece without `=` is a name with an empty value, as Asterisk
/// would read it. Names and values must be UTF-8 after decoding (a lossless replacement would
/// make a lookup match what it should not).
pub fn parse_fields(s: &str) -> Result<Vec<Field>, WireError> {
    if s.len() > MAX_REQUEST {
        return Err(WireError::TooLarge);
    }
    let mut out = Vec::new();
    for piece in s.split('&').filter(|p| !p.is_empty()) {
        if out.len() == MAX_FIELDS {
            return Err(WireError::TooManyFields);
        }
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let name = String::from_utf8(decode(name)?).map_err(|_| WireError::BadEscape)?;
        let value = String::from_utf8(decode(value)?).map_err(|_| WireError::BadEscape)?;
        let name = name.trim();
        let (name, op) = match name.split_once(' ') {
            Some((n, op)) => (n.trim(), Op::parse(op.trim())),
            None => (name, Op::Eq),
        };
        if name.is_empty() {
            return Err(WireError::EmptyName);
        }
        out.push(Field {
            name: name.to_string(),
            op,
            value,
        });
    }
    Ok(out)
}

/// One answer line: `k=v&k=v`, each side encoded. Empty values are left out: Asterisk's
/// sorcery would fail a whole pjsip object on `nonce_lifetime=`.
pub fn line(pairs: &[(&str, &[u8])]) -> String {
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{}={}", encode(k.as_bytes()), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// SQL `LIKE` as Asterisk's realtime drivers pass it on: `%` any run, `_` one character,
/// compared case-sensitively (ids are case-sensitive in pjsip).
pub fn like(pattern: &str, text: &str) -> bool {
    crate::pattern::wildcard(pattern, text, '%', '_')
}

impl Field {
    /// Whether `actual` (the record's value of this field) satisfies the condition.
    pub fn matches(&self, actual: &str) -> bool {
        match self.op {
            Op::Eq => actual == self.value,
            Op::Ne => actual != self.value,
            Op::Lt => actual < self.value.as_str(),
            Op::Le => actual <= self.value.as_str(),
            Op::Gt => actual > self.value.as_str(),
            Op::Ge => actual >= self.value.as_str(),
            Op::Like => like(&self.value, actual),
            Op::Unknown => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_ast_uri_http() {
        assert_eq!(encode(b"id LIKE"), "id%20LIKE");
        assert_eq!(encode(b"%"), "%25");
        assert_eq!(encode(b"a&b=c+d,e"), "a%26b%3Dc%2Bd%2Ce");
        assert_eq!(encode(b"-_.!~*'()"), "-_.!~*'()");
        assert_eq!(encode("pä".as_bytes()), "p%C3%A4");
        assert_eq!(encode(b"a/b:c"), "a%2Fb%3Ac");
    }

    #[test]
    fn decodes_without_plus_magic() {
        assert_eq!(decode("a+b%20c").unwrap(), b"a+b c");
        assert_eq!(decode("%C3%a4").unwrap(), "ä".as_bytes());
        for bad in ["%", "%2", "%zz", "a%g0"] {
            assert_eq!(decode(bad), Err(WireError::BadEscape), "{bad}");
        }
    }

    #[test]
    fn parses_fields_with_operators() {
        let f = parse_fields("id%20LIKE=%25&username=1001&").unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].name, "id");
        assert_eq!(f[0].op, Op::Like);
        assert_eq!(f[0].value, "%");
        assert_eq!(f[1].op, Op::Eq);
        let f = parse_fields("id%20%21%3D=x&lvl%20%3E%3D=3&id%20REGEXP=.*").unwrap();
        assert_eq!(f[0].op, Op::Ne);
        assert_eq!(f[1].op, Op::Ge);
        assert_eq!(f[2].op, Op::Unknown);
        assert!(!f[2].matches("anything"));
        assert_eq!(parse_fields("=x"), Err(WireError::EmptyName));
        assert_eq!(parse_fields("id=%ff"), Err(WireError::BadEscape));
        assert_eq!(
            parse_fields(&"a=b&".repeat(MAX_FIELDS + 1)),
            Err(WireError::TooManyFields)
        );
    }

    #[test]
    fn like_patterns() {
        assert!(like("%", ""));
        assert!(like("%", "1001"));
        assert!(like("10%", "1001"));
        assert!(like("%01", "1001"));
        assert!(like("1_01", "1001"));
        assert!(!like("1_01", "10001"));
        assert!(!like("10%", "2001"));
        assert!(like("%%x%", "abxcd"));
        assert!(!like(&"%a".repeat(30), &format!("{}b", "a".repeat(29))));
        assert!(like(&"%a".repeat(30), &"a".repeat(30)));
    }

    #[test]
    fn lines_round_trip_through_asterisks_decoder() {
        let pw = "p&s=w%rd +ä\"'";
        let l = line(&[("id", b"1001"), ("password", pw.as_bytes()), ("realm", b"")]);
        assert!(!l.contains("realm"));
        let f = parse_fields(&l).unwrap();
        assert_eq!(f[1].value, pw);
    }
}
