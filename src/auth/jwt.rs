//! Session tokens: HS256 JWTs signed with a key from the vault, named by `kid` so keys can
//! rotate. Only HS256 is accepted (`none`, HS384/512 and every asymmetric algorithm are
//! refused before any signature work), the `kid` is only ever a map lookup, and the claims are
//! typed: `exp` as a string or 1e309 does not parse.

use std::collections::HashMap;
use std::sync::LazyLock;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::auth::roles::Role;
use crate::vault::{Vault, VaultError, SIGNING_KEY_LEN};

/// Vault name prefix of the JWT signing keys; the part after it is the key id (`kid`).
pub const JWT_KEY_PREFIX: &str = "keys/jwt/";

pub const ISSUER: &str = "pbxguard";
pub const AUDIENCE: &str = "pbxguard-web";
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// Longest token examined; ours are ~400 bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub sub: String,
    pub lvl: u8,
    pub role: String,
    pub sid: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub iss: String,
    pub aud: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("token too long")]
    TooLong,
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("unknown key id")]
    UnknownKey,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("claims do not match (level/role)")]
    Claims,
    #[error("no signing key in the vault (run `pbxguard init`)")]
    NoSigningKey,
    #[error("signing failed")]
    Sign,
}

/// The signing key and every key tokens may still be verified with.
#[derive(Clone, Default)]
pub struct Keyring {
    signing: Option<(String, EncodingKey)>,
    verifying: HashMap<String, DecodingKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("signing_kid", &self.signing.as_ref().map(|(k, _)| k))
            .field("kids", &self.verifying.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Built once: the check verifies tokens on every web request.
static VALIDATION: LazyLock<Validation> = LazyLock::new(validation);

fn validation() -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = LEEWAY_SECS;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[AUDIENCE]);
    v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    v
}

impl Keyring {
    /// Builds a keyring from (kid, secret) pairs; the last pair signs.
    pub fn from_keys(keys: &[(String, Vec<u8>)]) -> Keyring {
        let mut ring = Keyring::default();
        for (kid, secret) in keys {
            ring.verifying
                .insert(kid.clone(), DecodingKey::from_secret(secret));
            ring.signing = Some((kid.clone(), EncodingKey::from_secret(secret)));
        }
        ring
    }

    /// Every `keys/jwt/<kid>` secret of the vault; the newest one signs.
    pub async fn load(vault: &Vault) -> Result<Keyring, VaultError> {
        let infos = vault.keys_under(JWT_KEY_PREFIX).await?;
        let mut keys = Vec::new();
        for info in infos {
            let value = vault.get(&info.name).await?;
            let kid = info.name[JWT_KEY_PREFIX.len()..].to_string();
            keys.push((kid, value.to_vec()));
        }
        let ring = Keyring::from_keys(&keys);
        for (_, v) in keys.iter_mut() {
            zeroize::Zeroize::zeroize(v);
        }
        Ok(ring)
    }

    /// A new signing key; the old ones are deleted, so no token signed before verifies again.
    /// The new key id.
    pub async fn replace(vault: &Vault) -> Result<String, VaultError> {
        let old: Vec<String> = vault
            .keys_under(JWT_KEY_PREFIX)
            .await?
            .into_iter()
            .map(|s| s.name)
            .collect();
        let kid = crate::ids::random_hex(4);
        vault
            .generate_if_absent(&format!("{JWT_KEY_PREFIX}{kid}"), SIGNING_KEY_LEN)
            .await?;
        for name in old {
            vault.remove(&name).await?;
        }
        Ok(kid)
    }

    pub fn signing_kid(&self) -> Option<&str> {
        self.signing.as_ref().map(|(k, _)| k.as_str())
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, JwtError> {
        let (kid, key) = self.signing.as_ref().ok_or(JwtError::NoSigningKey)?;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, claims, key).map_err(|_| JwtError::Sign)
    }

    /// Verifies signature, algorithm, key id, times, issuer, audience and level/role coherence.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(JwtError::Algorithm);
        }
        let kid = header.kid.as_deref().ok_or(JwtError::UnknownKey)?;
        let key = self.verifying.get(kid).ok_or(JwtError::UnknownKey)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &VALIDATION)
            .map_err(|e| JwtError::Invalid(e.to_string()))?;
        let claims = data.claims;
        match Role::of_level(claims.lvl) {
            Some(role) if role.name() == claims.role => {}
            _ => return Err(JwtError::Claims),
        }
        if claims.sid.len() != 32 || !claims.sid.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(JwtError::Claims);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn ring() -> Keyring {
        Keyring::from_keys(&[("old".into(), vec![1; 32]), ("k2".into(), vec![2; 32])])
    }

    fn claims(now: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            lvl: 5,
            role: "supervisor".into(),
            sid: "0123456789abcdef0123456789abcdef".into(),
            iat: now,
            nbf: now,
            exp: now + 3600,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
        }
    }

    fn now() -> u64 {
        crate::clock::now_unix() as u64
    }

    /// A token with arbitrary header and payload JSON, signed HS256 with `secret`.
    fn forge(header: &str, payload: &str, secret: &[u8]) -> String {
        use hmac::Mac;
        let signing_input = format!("{}.{}", B64.encode(header), B64.encode(payload));
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            B64.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn round_trip_with_kid_and_rotation() {
        let r = ring();
        assert_eq!(r.signing_kid(), Some("k2"));
        let c = claims(now());
        let token = r.sign(&c).unwrap();
        assert_eq!(r.verify(&token).unwrap(), c);
        // A token signed with the older key still verifies (keys rotate without logouts).
        let old = Keyring::from_keys(&[("old".into(), vec![1; 32])])
            .sign(&claims(now()))
            .unwrap();
        assert!(r.verify(&old).is_ok());
        // A keyring without that kid refuses it.
        let only_new = Keyring::from_keys(&[("k2".into(), vec![2; 32])]);
        assert_eq!(only_new.verify(&old), Err(JwtError::UnknownKey));
    }

    #[test]
    fn refuses_other_algorithms_and_none() {
        let r = ring();
        let payload = serde_json::to_string(&claims(now())).unwrap();
        for alg in [
            "none", "None", "NONE", "nOnE", "HS384", "HS512", "RS256", "ES256", "PS256", "EdDSA",
            "hs256",
        ] {
            let token = forge(
                &format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"k2"}}"#),
                &payload,
                &[2; 32],
            );
            assert!(r.verify(&token).is_err(), "{alg} accepted");
            let unsigned = format!(
                "{}.{}.",
                B64.encode(format!(r#"{{"alg":"{alg}","kid":"k2"}}"#)),
                B64.encode(&payload)
            );
            assert!(r.verify(&unsigned).is_err(), "unsigned {alg} accepted");
        }
        let good = forge(
            r#"{"alg":"HS256","typ":"JWT","kid":"k2"}"#,
            &payload,
            &[2; 32],
        );
        assert!(
            r.verify(&good).is_ok(),
            "the forge helper itself must produce valid tokens"
        );
    }

    #[test]
    fn refuses_tampering_and_bad_claims() {
        let r = ring();
        let h = r#"{"alg":"HS256","kid":"k2"}"#;
        let mut c = claims(now());
        // A changed level with the old signature.
        let token = r.sign(&c).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        c.lvl = 9;
        c.role = "admin".into();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_string(&c).unwrap()),
            parts[2]
        );
        assert!(matches!(r.verify(&tampered), Err(JwtError::Invalid(_))));
        // Level and role that disagree, even when correctly signed.
        let mut c = claims(now());
        c.lvl = 9;
        assert_eq!(r.verify(&r.sign(&c).unwrap()), Err(JwtError::Claims));
        // exp as a string, as 1e309, missing.
        let n = now();
        for payload in [
            format!(
                r#"{{"sub":"a","lvl":5,"role":"supervisor","sid":"0123456789abcdef0123456789abcdef","iat":{n},"nbf":{n},"exp":"{}","iss":"pbxguard","aud":"pbxguard-web"}}"#,
                n + 60
            ),
            format!(
                r#"{{"sub":"a","lvl":5,"role":"supervisor","sid":"0123456789abcdef0123456789abcdef","iat":{n},"nbf":{n},"exp":1e309,"iss":"pbxguard","aud":"pbxguard-web"}}"#
            ),
            format!(
                r#"{{"sub":"a","lvl":5,"role":"supervisor","sid":"0123456789abcdef0123456789abcdef","iat":{n},"nbf":{n},"iss":"pbxguard","aud":"pbxguard-web"}}"#
            ),
            format!(
                r#"{{"sub":"a","lvl":5,"role":"supervisor","sid":"0123456789abcdef0123456789abcdef","iat":{n},"nbf":{n},"exp":{},"iss":"someone","aud":"pbxguard-web"}}"#,
                n + 60
            ),
            format!(
                r#"{{"sub":"a","lvl":5,"role":"supervisor","sid":"0123456789abcdef0123456789abcdef","iat":{n},"nbf":{n},"exp":{},"iss":"pbxguard","aud":"other"}}"#,
                n + 60
            ),
            format!(
                r#"{{"sub":"a","lvl":5,"role":"supervisor","sid":"../../etc","iat":{n},"nbf":{n},"exp":{},"iss":"pbxguard","aud":"pbxguard-web"}}"#,
                n + 60
            ),
        ] {
            assert!(
                r.verify(&forge(h, &payload, &[2; 32])).is_err(),
                "{payload}"
            );
        }
        // kid with path or SQL text is just an unknown key.
        for kid in ["../../master.key", "' OR 1=1 --", ""] {
            let token = forge(
                &format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#),
                &serde_json::to_string(&claims(n)).unwrap(),
                &[2; 32],
            );
            assert_eq!(r.verify(&token), Err(JwtError::UnknownKey), "{kid}");
        }
        assert_eq!(r.verify("garbage"), Err(JwtError::Malformed));
        assert_eq!(r.verify(""), Err(JwtError::Malformed));
        assert_eq!(r.verify(&"a".repeat(5000)), Err(JwtError::TooLong));
    }

    #[test]
    fn expiry_has_thirty_seconds_of_leeway_and_no_more() {
        let r = ring();
        let n = now();
        let mut c = claims(n);
        c.exp = n - 1;
        assert!(r.verify(&r.sign(&c).unwrap()).is_ok(), "within leeway");
        c.exp = n - 31;
        assert!(
            r.verify(&r.sign(&c).unwrap()).is_err(),
            "expired beyond leeway"
        );
        let mut c = claims(n);
        c.nbf = n + 120;
        assert!(r.verify(&r.sign(&c).unwrap()).is_err(), "not yet valid");
    }
}
