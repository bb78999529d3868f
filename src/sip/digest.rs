//! SIP digest authentication as a client (RFC 3261 §22.4, RFC 8760 for SHA-256): the edge
//! answers Asterisk's challenges itself for ticket-bound WebSockets, with the extension's
//! password from the vault, so a browser never holds a SIP password.
//!
//! Only what pjsip offers is understood: `MD5` and `SHA-256` (no `-sess` variants), `qop=auth`
//! or no qop. A challenge we do not understand is not answered.

use md5::Md5;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Longest challenge header value we read (pjsip's are about 150 bytes).
const MAX_CHALLENGE: usize = 2048;
/// Longest nonce, realm or opaque we copy into an answer.
const MAX_PARAM: usize = 512;
const HEX: &[u8; 16] = b"0123456789abcdef";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    fn hash(self, parts: &[&[u8]]) -> Zeroizing<String> {
        fn run<D: sha2::Digest>(parts: &[&[u8]]) -> Zeroizing<String> {
            let mut d = D::new();
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p);
            }
            let sum = d.finalize();
            let mut out = Zeroizing::new(String::with_capacity(sum.len() * 2));
            for b in sum.iter() {
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
            out
        }
        match self {
            Algorithm::Md5 => run::<Md5>(parts),
            Algorithm::Sha256 => run::<Sha256>(parts),
        }
    }
}

/// One `WWW-Authenticate` / `Proxy-Authenticate` challenge we can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// `qop` offered `auth` (then we use it; `auth-int` alone is not supported).
    pub qop_auth: bool,
    pub stale: bool,
}

/// Splits `a=b, c="d,e"` into pairs; `None` on a malformed list.
fn auth_params(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t' || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            return Some(out);
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'-' || b[i] == b'_') {
            i += 1;
        }
        let name = s[start..i].to_ascii_lowercase();
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        if name.is_empty() || i >= b.len() || b[i] != b'=' {
            return None;
        }
        i += 1;
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            loop {
                match b.get(i)? {
                    b'"' => {
                        i += 1;
                        break;
                    }
                    b'\\' => {
                        value.push(*b.get(i + 1)? as char);
                        i += 2;
                    }
                    c => {
                        value.push(*c as char);
                        i += 1;
                    }
                }
            }
        } else {
            let start = i;
            while i < b.len() && b[i] != b',' && b[i] != b' ' && b[i] != b'\t' {
                i += 1;
            }
            value.push_str(&s[start..i]);
        }
        if value.len() > MAX_PARAM || !value.is_ascii() {
            return None;
        }
        out.push((name, value));
    }
}

impl Challenge {
    /// Reads one challenge header value; `None` for anything but a Digest challenge we can
    /// answer.
    pub fn parse(value: &str) -> Option<Challenge> {
        if value.len() > MAX_CHALLENGE {
            return None;
        }
        let value = value.trim_start();
        let (scheme, rest) = value.split_once([' ', '\t'])?;
        if !scheme.eq_ignore_ascii_case("digest") {
            return None;
        }
        let params = auth_params(rest)?;
        let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let algorithm = match get("algorithm") {
            None => Algorithm::Md5,
            Some(a) if a.eq_ignore_ascii_case("md5") => Algorithm::Md5,
            Some(a) if a.eq_ignore_ascii_case("sha-256") => Algorithm::Sha256,
            Some(_) => return None,
        };
        let qop = get("qop");
        let qop_auth = qop
            .as_deref()
            .is_some_and(|q| q.split(',').any(|t| t.trim().eq_ignore_ascii_case("auth")));
        if qop.is_some() && !qop_auth {
            return None;
        }
        // Whatever we copy back into a header must not be able to break out of its quotes.
        let clean = |v: &str| !v.bytes().any(|c| c == b'"' || c == b'\\' || c < 0x20);
        let realm = get("realm")?;
        let nonce = get("nonce")?;
        let opaque = get("opaque");
        if nonce.is_empty() || !clean(&realm) || !clean(&nonce) {
            return None;
        }
        if opaque.as_deref().is_some_and(|o| !clean(o)) {
            return None;
        }
        Some(Challenge {
            realm,
            nonce,
            opaque,
            algorithm,
            qop_auth,
            stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }

    /// The strongest challenge among `values` that we can answer (RFC 8760 §2.4: a client
    /// picks the first algorithm it supports in preference order; pjsip lists SHA-256 and
    /// MD5 as separate headers).
    pub fn best<'a>(values: impl Iterator<Item = &'a str>) -> Option<Challenge> {
        values
            .filter_map(Challenge::parse)
            .max_by_key(|c| c.algorithm)
    }

    /// The `Authorization` (or `Proxy-Authorization`) value answering this challenge for
    /// `method` `uri`. `cnonce` is fresh per answer; `nc` is 1 since each nonce is used once.
    pub fn answer(
        &self,
        username: &str,
        password: &[u8],
        method: &str,
        uri: &str,
        cnonce: &str,
    ) -> String {
        let alg = self.algorithm;
        let ha1 = alg.hash(&[username.as_bytes(), self.realm.as_bytes(), password]);
        let ha2 = alg.hash(&[method.as_bytes(), uri.as_bytes()]);
        let nc = "00000001";
        let response = if self.qop_auth {
            alg.hash(&[
                ha1.as_bytes(),
                self.nonce.as_bytes(),
                nc.as_bytes(),
                cnonce.as_bytes(),
                b"auth",
                ha2.as_bytes(),
            ])
        } else {
            alg.hash(&[ha1.as_bytes(), self.nonce.as_bytes(), ha2.as_bytes()])
        };
        let mut out = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{}\", algorithm={}",
            quote_safe(username),
            self.realm,
            self.nonce,
            response.as_str(),
            alg.name()
        );
        if self.qop_auth {
            out.push_str(&format!(", qop=auth, cnonce=\"{cnonce}\", nc={nc}"));
        }
        if let Some(o) = &self.opaque {
            out.push_str(&format!(", opaque=\"{o}\""));
        }
        out
    }
}

/// The `username` of an `Authorization` / `Proxy-Authorization` value; `None` when it is not a
/// readable Digest credential.
pub fn credentials_user(value: &str) -> Option<String> {
    if value.len() > MAX_CHALLENGE {
        return None;
    }
    let (scheme, rest) = value.trim_start().split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return None;
    }
    auth_params(rest)?
        .into_iter()
        .find(|(k, _)| k == "username")
        .map(|(_, v)| v)
}

/// A user name inside quotes: `"` and `\` escaped (RFC 3261 quoted-pair).
fn quote_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2617 §3.5's worked example (HTTP, MD5, qop=auth): the same arithmetic as SIP's.
    #[test]
    fn md5_with_qop_matches_the_rfc_2617_example() {
        let c = Challenge::parse(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap();
        assert_eq!(c.algorithm, Algorithm::Md5);
        assert!(c.qop_auth);
        let a = c.answer(
            "Mufasa",
            b"Circle Of Life",
            "GET",
            "/dir/index.html",
            "0a4f113b",
        );
        assert!(
            a.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{a}"
        );
        assert!(a.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""));
        assert!(a.contains("nc=00000001") && a.contains("cnonce=\"0a4f113b\""));
    }

    /// RFC 7616 §3.9.1's example with SHA-256 (nc=00000001, qop=auth).
    #[test]
    fn sha256_matches_the_rfc_7616_example() {
        let c = Challenge::parse(
            "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm=SHA-256, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"",
        )
        .unwrap();
        assert_eq!(c.algorithm, Algorithm::Sha256);
        let a = c.answer(
            "Mufasa",
            b"Circle of Life",
            "GET",
            "/dir/index.html",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        );
        assert!(
            a.contains(
                "response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\""
            ),
            "{a}"
        );
        assert!(a.contains("algorithm=SHA-256"));
    }

    #[test]
    fn without_qop_the_rfc_2069_form_is_used() {
        let c = Challenge::parse("Digest realm=\"asterisk\",nonce=\"abc\"").unwrap();
        assert!(!c.qop_auth);
        let a = c.answer("2001", b"pw", "REGISTER", "sip:pbx", "x");
        let ha1 = Algorithm::Md5.hash(&[b"2001", b"asterisk", b"pw"]);
        let ha2 = Algorithm::Md5.hash(&[b"REGISTER", b"sip:pbx"]);
        let want = Algorithm::Md5.hash(&[ha1.as_bytes(), b"abc", ha2.as_bytes()]);
        assert!(
            a.contains(&format!("response=\"{}\"", want.as_str())),
            "{a}"
        );
        assert!(!a.contains("qop") && !a.contains("cnonce"));
    }

    #[test]
    fn the_strongest_answerable_challenge_wins() {
        let md5 = "Digest realm=\"asterisk\",nonce=\"n1\",algorithm=MD5,qop=\"auth\"";
        let sha = "Digest realm=\"asterisk\",nonce=\"n2\",algorithm=SHA-256,qop=\"auth\"";
        let sess = "Digest realm=\"asterisk\",nonce=\"n3\",algorithm=SHA-512-256,qop=\"auth\"";
        let best = Challenge::best([md5, sha, sess].into_iter()).unwrap();
        assert_eq!(best.algorithm, Algorithm::Sha256);
        assert_eq!(best.nonce, "n2");
        assert_eq!(
            Challenge::best([md5].into_iter()).unwrap().algorithm,
            Algorithm::Md5
        );
        assert!(Challenge::best([sess].into_iter()).is_none());
    }

    #[test]
    fn malformed_or_foreign_challenges_are_not_answered() {
        for bad in [
            "Basic realm=\"x\"",
            "Digest realm=\"asterisk\"",     // no nonce
            "Digest nonce=\"n\"",            // no realm
            "Digest realm=\"a\", nonce=\"n", // unterminated quote
            "Digest realm=\"a\", nonce=\"n\", qop=\"auth-int\"",
            "Digest realm=\"a\", nonce=\"n\", algorithm=MD5-sess",
            "Digest realm=\"a\\\"b\", nonce=\"n\"", // a quote inside would break our header
            "Digest realm=\"a\", nonce=\"\"",
            "Digest =x",
            "Digest",
        ] {
            assert!(Challenge::parse(bad).is_none(), "{bad}");
        }
        let long = format!("Digest realm=\"a\", nonce=\"{}\"", "n".repeat(600));
        assert!(Challenge::parse(&long).is_none());
        let c = Challenge::parse("digest REALM=asterisk , Nonce=\"n\", stale=TRUE").unwrap();
        assert!(c.stale && c.realm == "asterisk");
    }

    #[test]
    fn the_user_name_of_credentials_is_read() {
        assert_eq!(
            credentials_user("Digest username=\"2001\", realm=\"asterisk\", nonce=\"n\", uri=\"sip:pbx\", response=\"x\"").as_deref(),
            Some("2001")
        );
        assert_eq!(
            credentials_user("Digest USERNAME=1001,realm=a").as_deref(),
            Some("1001")
        );
        assert_eq!(credentials_user("Digest realm=\"a\"").as_deref(), None);
        assert_eq!(credentials_user("Basic Zm9vOmJhcg==").as_deref(), None);
        assert_eq!(credentials_user("Digest username=\"20").as_deref(), None);
    }

    #[test]
    fn user_names_are_quoted_safely() {
        let c = Challenge::parse("Digest realm=\"a\", nonce=\"n\"").unwrap();
        let a = c.answer("we\"ird\\", b"p", "INVITE", "sip:600@pbx", "c");
        assert!(
            a.starts_with("Digest username=\"we\\\"ird\\\\\", realm"),
            "{a}"
        );
    }
}
