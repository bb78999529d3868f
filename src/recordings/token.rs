//! The link token: what `/rec/{token}` carries.
//!
//! ```text
//! token = base64url_nopad( version(1) | kid(4) | link_id(16) | expires_at(8, big endian)
//!                          | HMAC-SHA256(key[kid], the 29 bytes before) )
//! ```
//!
//! 61 bytes, 82 characters. The link id is 128 random bits naming a row that holds the path,
//! so the URL says nothing about the recording and cannot be guessed or enumerated. The key id
//! selects one of the `keys/links/<kid>` vault keys, so a new key can sign while links signed
//! by the previous one stay valid until they expire. The expiry is inside the MAC: changing it
//! is a forgery (403), and a genuine expired token is told apart (410) without the database.
//! Verification is a fixed-length decode, one map lookup and one HMAC compared in constant
//! time: a flood of forged tokens costs about a microsecond each and never reaches the disk.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::vault::{Vault, VaultError};

/// Vault name prefix of the link signing keys; the part after it is the key id.
pub const LINK_KEY_PREFIX: &str = "keys/links/";

pub const VERSION: u8 = 1;
pub const KID_LEN: usize = 4;
pub const LINK_ID_LEN: usize = 16;
const BODY_LEN: usize = 1 + KID_LEN + LINK_ID_LEN + 8;
const TAG_LEN: usize = 32;
const TOKEN_BYTES: usize = BODY_LEN + TAG_LEN;
/// Length of every token in characters (61 bytes in unpadded base64url).
pub const TOKEN_CHARS: usize = (TOKEN_BYTES * 4).div_ceil(3);

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed link token")]
    Malformed,
    #[error("link token signed with an unknown key")]
    UnknownKey,
    #[error("link token signature does not match")]
    BadSignature,
    #[error("link expired")]
    Expired,
    #[error("no link signing key in the vault (run `pbxguard init`)")]
    NoSigningKey,
}

/// What a genuine token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub kid: [u8; KID_LEN],
    pub id: [u8; LINK_ID_LEN],
    pub expires_at: i64,
}

impl Link {
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    pub fn kid_hex(&self) -> String {
        hex(&self.kid)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A link id given as 32 hex characters.
pub fn parse_link_id(s: &str) -> Option<[u8; LINK_ID_LEN]> {
    unhex::<LINK_ID_LEN>(&s.to_ascii_lowercase())
}

/// The link keys: the newest signs, all verify. The HMAC states are keyed once here, so
/// verifying clones a keyed state instead of hashing the key again.
#[derive(Clone, Default)]
pub struct LinkKeys {
    signing: Option<[u8; KID_LEN]>,
    keys: HashMap<[u8; KID_LEN], HmacSha256>,
}

impl std::fmt::Debug for LinkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkKeys")
            .field("signing", &self.signing.map(|k| hex(&k)))
            .field(
                "kids",
                &self.keys.keys().map(|k| hex(k)).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl LinkKeys {
    /// From (kid as 8 hex characters, key) pairs, oldest first; the last one signs. Pairs
    /// whose kid is not 8 hex characters are skipped (they cannot appear in a token).
    pub fn from_keys(keys: &[(String, &[u8])]) -> LinkKeys {
        let mut ring = LinkKeys::default();
        for (kid, secret) in keys {
            let Some(kid) = unhex::<KID_LEN>(kid) else {
                tracing::warn!(kid = %kid, "ignoring a link key whose id is not 8 hex characters");
                continue;
            };
            let Ok(mac) = HmacSha256::new_from_slice(secret) else {
                continue;
            };
            ring.keys.insert(kid, mac);
            ring.signing = Some(kid);
        }
        ring
    }

    /// Every `keys/links/<kid>` secret of the vault; the newest signs.
    pub async fn load(vault: &Vault) -> Result<LinkKeys, VaultError> {
        let infos = vault.keys_under(LINK_KEY_PREFIX).await?;
        let mut values = Vec::new();
        for info in infos {
            let value = vault.get(&info.name).await?;
            values.push((info.name[LINK_KEY_PREFIX.len()..].to_string(), value));
        }
        let pairs: Vec<(String, &[u8])> = values
            .iter()
            .map(|(kid, v)| (kid.clone(), v.as_ref()))
            .collect();
        Ok(LinkKeys::from_keys(&pairs))
    }

    pub fn signing_kid(&self) -> Option<String> {
        self.signing.map(|k| hex(&k))
    }

    pub fn knows(&self, kid: &[u8; KID_LEN]) -> bool {
        self.keys.contains_key(kid)
    }

    /// The token for link `id`, valid until `expires_at` (Unix seconds).
    pub fn mint(&self, id: &[u8; LINK_ID_LEN], expires_at: i64) -> Result<String, TokenError> {
        let kid = self.signing.ok_or(TokenError::NoSigningKey)?;
        let mac = self.keys.get(&kid).ok_or(TokenError::NoSigningKey)?;
        let mut bytes = [0u8; TOKEN_BYTES];
        bytes[0] = VERSION;
        bytes[1..1 + KID_LEN].copy_from_slice(&kid);
        bytes[1 + KID_LEN..1 + KID_LEN + LINK_ID_LEN].copy_from_slice(id);
        bytes[BODY_LEN - 8..BODY_LEN].copy_from_slice(&expires_at.to_be_bytes());
        let mut mac = mac.clone();
        mac.update(&bytes[..BODY_LEN]);
        bytes[BODY_LEN..].copy_from_slice(&mac.finalize().into_bytes());
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Checks the signature first (constant time), then the expiry: `now >= expires_at` is
    /// expired. Nothing here touches the disk or the database.
    pub fn verify(&self, token: &str, now: i64) -> Result<Link, TokenError> {
        let link = self.authenticate(token)?;
        if now >= link.expires_at {
            return Err(TokenError::Expired);
        }
        Ok(link)
    }

    /// The signature check alone (revocation by URL accepts expired links too).
    pub fn authenticate(&self, token: &str) -> Result<Link, TokenError> {
        let link = decode(token)?;
        let mac = self.keys.get(&link.kid).ok_or(TokenError::UnknownKey)?;
        let bytes = raw(token)?;
        let mut mac = mac.clone();
        mac.update(&bytes[..BODY_LEN]);
        mac.verify_slice(&bytes[BODY_LEN..])
            .map_err(|_| TokenError::BadSignature)?;
        Ok(link)
    }
}

fn raw(token: &str) -> Result<[u8; TOKEN_BYTES], TokenError> {
    if token.len() != TOKEN_CHARS {
        return Err(TokenError::Malformed);
    }
    let mut bytes = [0u8; TOKEN_BYTES];
    // The engine refuses non-canonical trailing bits, so each token has one spelling.
    match URL_SAFE_NO_PAD.decode_slice(token.as_bytes(), &mut bytes) {
        Ok(TOKEN_BYTES) => Ok(bytes),
        _ => Err(TokenError::Malformed),
    }
}

/// The fields of a token WITHOUT checking its signature: only for telling which link an admin
/// means, never for deciding access.
pub fn decode(token: &str) -> Result<Link, TokenError> {
    let bytes = raw(token)?;
    if bytes[0] != VERSION {
        return Err(TokenError::Malformed);
    }
    let mut kid = [0u8; KID_LEN];
    kid.copy_from_slice(&bytes[1..1 + KID_LEN]);
    let mut id = [0u8; LINK_ID_LEN];
    id.copy_from_slice(&bytes[1 + KID_LEN..1 + KID_LEN + LINK_ID_LEN]);
    let mut exp = [0u8; 8];
    exp.copy_from_slice(&bytes[BODY_LEN - 8..BODY_LEN]);
    Ok(Link {
        kid,
        id,
        expires_at: i64::from_be_bytes(exp),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> LinkKeys {
        LinkKeys::from_keys(&[
            ("0a0b0c0d".to_string(), &[1u8; 32][..]),
            ("11223344".to_string(), &[2u8; 32][..]),
        ])
    }

    const ID: [u8; 16] = [7u8; 16];

    #[test]
    fn round_trip_with_the_newest_key() {
        let r = ring();
        assert_eq!(r.signing_kid().as_deref(), Some("11223344"));
        let t = r.mint(&ID, 1000).unwrap();
        assert_eq!(t.len(), TOKEN_CHARS);
        assert!(t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let link = r.verify(&t, 999).unwrap();
        assert_eq!(link.id, ID);
        assert_eq!(link.expires_at, 1000);
        assert_eq!(link.kid_hex(), "11223344");
    }

    #[test]
    fn expiry_is_exact_to_the_second() {
        let r = ring();
        let t = r.mint(&ID, 1000).unwrap();
        assert!(r.verify(&t, 999).is_ok());
        assert_eq!(r.verify(&t, 1000), Err(TokenError::Expired));
        assert_eq!(r.verify(&t, 1001), Err(TokenError::Expired));
    }

    #[test]
    fn every_single_bit_flip_is_refused() {
        let r = ring();
        let t = r.mint(&ID, 1000).unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            let forged = URL_SAFE_NO_PAD.encode(&b);
            let err = r.verify(&forged, 0).unwrap_err();
            assert!(
                matches!(
                    err,
                    TokenError::BadSignature | TokenError::Malformed | TokenError::UnknownKey
                ),
                "bit {i}: {err:?}"
            );
        }
    }

    #[test]
    fn a_later_expiry_is_a_forgery_not_an_expiry() {
        let r = ring();
        let t = r.mint(&ID, 1000).unwrap();
        let mut b = URL_SAFE_NO_PAD.decode(&t).unwrap();
        b[BODY_LEN - 8..BODY_LEN].copy_from_slice(&5000i64.to_be_bytes());
        assert_eq!(
            r.verify(&URL_SAFE_NO_PAD.encode(&b), 2000),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn old_keys_verify_unknown_keys_do_not() {
        let old = LinkKeys::from_keys(&[("0a0b0c0d".to_string(), &[1u8; 32][..])]);
        let t = old.mint(&ID, 1000).unwrap();
        assert!(
            ring().verify(&t, 0).is_ok(),
            "rotation keeps old links valid"
        );
        let other = LinkKeys::from_keys(&[("99999999".to_string(), &[1u8; 32][..])]);
        assert_eq!(other.verify(&t, 0), Err(TokenError::UnknownKey));
        // Same kid, different key material: a signature mismatch.
        let wrong = LinkKeys::from_keys(&[("0a0b0c0d".to_string(), &[9u8; 32][..])]);
        assert_eq!(wrong.verify(&t, 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn malformed_tokens() {
        let r = ring();
        let t = r.mint(&ID, 1000).unwrap();
        for bad in [
            "",
            &t[..t.len() - 1],
            &format!("{t}A"),
            &format!("{}=", &t[..t.len() - 1]),
            &t.replace(|c: char| c.is_ascii_alphabetic(), "+"),
            "../../etc/passwd",
        ] {
            assert_eq!(r.verify(bad, 0), Err(TokenError::Malformed), "{bad:?}");
        }
        // Non-canonical last character (unused low bits set): refused, one spelling per token.
        let last = t.chars().last().unwrap();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let pos = alphabet.find(last).unwrap();
        let other = alphabet.as_bytes()[pos ^ 1] as char;
        let respelled = format!("{}{other}", &t[..t.len() - 1]);
        assert_eq!(r.verify(&respelled, 0), Err(TokenError::Malformed));
    }

    #[test]
    fn no_key_no_mint() {
        assert_eq!(
            LinkKeys::default().mint(&ID, 1),
            Err(TokenError::NoSigningKey)
        );
        assert_eq!(
            LinkKeys::default().verify(&ring().mint(&ID, 10).unwrap(), 0),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn link_ids_parse_from_hex() {
        assert_eq!(parse_link_id(&hex(&ID)), Some(ID));
        assert_eq!(parse_link_id(&hex(&ID).to_uppercase()), Some(ID));
        assert_eq!(parse_link_id("07"), None);
        assert_eq!(parse_link_id(&"zz".repeat(16)), None);
    }
}
