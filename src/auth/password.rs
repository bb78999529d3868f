//! Password hashing: argon2id with OWASP's parameters (19 MiB, t=2, p=1), run on the blocking
//! pool behind a semaphore, so a login storm queues instead of stalling the async runtime or
//! exhausting memory (each hash holds 19 MiB while it runs).

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

/// OWASP Password Storage Cheat Sheet, argon2id option 2.
pub const MEMORY_KIB: u32 = 19 * 1024;
pub const ITERATIONS: u32 = 2;
pub const PARALLELISM: u32 = 1;
/// Longest password accepted anywhere (bytes); bounds the work an attacker can ask for.
pub const MAX_LEN: usize = 1024;

/// Characters the strength estimate looks at: its work grows fast with length, and a
/// password this long that is still weak in its first part gets no better by going on.
const ESTIMATE_CHARS: usize = 64;
/// Names shorter than this are not looked for inside passwords (too many false hits).
const MIN_NAME_IN_PASSWORD: usize = 3;
/// A password that keeps fewer letters and digits than this once the user's name is taken
/// out is the name with decorations (`Alice2024!alice`). A name inside a longer passphrase
/// only lowers the strength estimate, which is told the name.
const MIN_BEYOND_NAME: usize = 6;

/// What a new password must meet: the runtime settings `password_min_length` and
/// `password_min_strength`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub min_length: u32,
    /// zxcvbn's score, 0-4.
    pub min_strength: u8,
}

impl Rules {
    pub fn of(cfg: &super::config::AuthConfig) -> Rules {
        Rules {
            min_length: cfg.password_min_length,
            min_strength: cfg.password_min_strength,
        }
    }
}

/// A passphrase is what passes every rule at every setting; the errors say so.
const WHAT_PASSES: &str =
    "a passphrase of four or more unrelated words, or a password manager's random password, passes";

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the password must be at least {0} characters long; {WHAT_PASSES}")]
    TooShort(u32),
    #[error("the password is one of the most common passwords; {WHAT_PASSES}")]
    Common,
    #[error("the password is little more than the user's name; {WHAT_PASSES}")]
    ContainsName,
    #[error("the password is too easy to guess (strength {score} of 4, at least {floor} needed){hint}; {WHAT_PASSES}")]
    Weak { score: u8, floor: u8, hint: String },
    #[error("the password must be at most {MAX_LEN} bytes long")]
    TooLong,
    #[error("the password must not contain control characters")]
    Control,
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("password hashing task failed")]
    Task,
}

/// Checks a new password of the user `name` against the rules: length, no control
/// characters, not a common password, not the user's name, and strong enough by zxcvbn's
/// estimate (whose bundled lists hold the 30,000 most common passwords and common words and
/// names).
pub fn check_policy(password: &str, name: &str, rules: Rules) -> Result<(), PasswordError> {
    if password.len() > MAX_LEN {
        return Err(PasswordError::TooLong);
    }
    if password.chars().any(char::is_control) {
        return Err(PasswordError::Control);
    }
    if password.chars().count() < rules.min_length as usize {
        return Err(PasswordError::TooShort(rules.min_length));
    }
    let name = name.to_lowercase();
    if name.chars().count() >= MIN_NAME_IN_PASSWORD {
        let reversed: String = name.chars().rev().collect();
        let lower = password.to_lowercase();
        let rest = lower.replace(&name, "").replace(&reversed, "");
        if rest.len() < lower.len()
            && rest.chars().filter(|c| c.is_alphanumeric()).count() < MIN_BEYOND_NAME
        {
            return Err(PasswordError::ContainsName);
        }
    }
    let head: String = password.chars().take(ESTIMATE_CHARS).collect();
    let estimate = zxcvbn::zxcvbn(&head, &[name.as_str()]);
    if is_common(&estimate, head.chars().count()) {
        return Err(PasswordError::Common);
    }
    let score = u8::from(estimate.score());
    if score < rules.min_strength {
        let mut hint = String::new();
        if let Some(f) = estimate.feedback() {
            let mut parts: Vec<String> = f.warning().map(|w| w.to_string()).into_iter().collect();
            parts.extend(f.suggestions().iter().map(|s| s.to_string()));
            if !parts.is_empty() {
                hint = format!(": {}", parts.join(" "));
            }
        }
        return Err(PasswordError::Weak {
            score,
            floor: rules.min_strength,
            hint,
        });
    }
    Ok(())
}

/// Whether the whole password is one entry of the bundled common-password list (in any
/// case, reversed or with l33t substitutions).
fn is_common(estimate: &zxcvbn::Entropy, chars: usize) -> bool {
    use zxcvbn::matching::patterns::MatchPattern;
    estimate.sequence().iter().any(|m| {
        m.i == 0
            && m.j + 1 == chars
            && matches!(&m.pattern, MatchPattern::Dictionary(d)
                // The dictionary's type is not exported by the crate; its name is stable and
                // the tests below pin it.
                if format!("{:?}", d.dictionary_name) == "Passwords")
    })
}

fn argon2() -> Argon2<'static> {
    // The constants above are valid parameters; Params::new only fails on out-of-range ones.
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes synchronously (CLI use). Returns a PHC string.
pub fn hash_now(password: &[u8]) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Verifies synchronously; a malformed stored hash verifies as false.
pub fn verify_now(password: &[u8], phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => argon2().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// The daemon's hasher: bounded concurrency, and a dummy hash so unknown users cost the same.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    dummy: Arc<String>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("available", &self.permits.available_permits())
            .finish()
    }
}

impl Hasher {
    /// `concurrency` hashes at once; more wait their turn.
    pub fn new(concurrency: usize) -> Result<Hasher, PasswordError> {
        let mut random = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, random.as_mut_slice());
        Ok(Hasher {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: Arc::new(hash_now(random.as_slice())?),
        })
    }

    pub async fn hash(&self, password: Zeroizing<String>) -> Result<String, PasswordError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::Task)?;
        tokio::task::spawn_blocking(move || hash_now(password.as_bytes()))
            .await
            .map_err(|_| PasswordError::Task)?
    }

    /// Verifies against `phc`, or against the dummy hash when there is no user, so the answer
    /// takes the same time either way. Returns false for the dummy.
    pub async fn verify(
        &self,
        password: Zeroizing<String>,
        phc: Option<String>,
    ) -> Result<bool, PasswordError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::Task)?;
        let real = phc.is_some();
        let target = phc.unwrap_or_else(|| self.dummy.as_ref().clone());
        let ok = tokio::task::spawn_blocking(move || verify_now(password.as_bytes(), &target))
            .await
            .map_err(|_| PasswordError::Task)?;
        Ok(ok && real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let phc = hash_now(b"correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_now(b"correct horse battery", &phc));
        assert!(!verify_now(b"correct horse batterx", &phc));
        assert!(!verify_now(b"x", "not a phc string"));
        assert_ne!(phc, hash_now(b"correct horse battery").unwrap(), "salted");
    }

    const RULES: Rules = Rules {
        min_length: 12,
        min_strength: 2,
    };

    fn check(pw: &str) -> Result<(), PasswordError> {
        check_policy(pw, "agent7", RULES)
    }

    #[test]
    fn policy() {
        assert!(matches!(check("short"), Err(PasswordError::TooShort(12))));
        assert!(matches!(
            check(&"x".repeat(1025)),
            Err(PasswordError::TooLong)
        ));
        assert!(matches!(
            check("twelve chars\u{0}"),
            Err(PasswordError::Control)
        ));
        assert!(check("a fine passphrase").is_ok());
        assert!(check("ünïcödé-pässwörd").is_ok());
        // Long but weak in its first part: still judged.
        assert!(check(&"a".repeat(1000)).is_err());
    }

    #[test]
    fn common_passwords_are_refused_in_every_spelling() {
        let long = Rules {
            min_length: 8,
            min_strength: 0,
        };
        for pw in [
            "password1234",
            "iloveyou",
            "P@ssw0rd",
            "qwertyuiop",
            "1234567890",
        ] {
            assert!(
                matches!(check_policy(pw, "agent7", long), Err(PasswordError::Common)),
                "{pw}"
            );
        }
        assert!(check_policy("glacier tram obelisk", "agent7", long).is_ok());
    }

    #[test]
    fn the_users_own_name_is_refused() {
        for pw in [
            "Agent7agent7!",
            "agent7-2026-AGENT7",
            "7tnegA7tnega",
            "agent7agent7agent7",
        ] {
            assert!(
                matches!(check(pw), Err(PasswordError::ContainsName)),
                "{pw}"
            );
        }
        // Inside a passphrase the name only weighs on the estimate.
        assert!(check("agent7 rides the glacier tram").is_ok());
        // Without the name, few letters are not this rule's business.
        assert!(!matches!(
            check("!!!!%%%%####&&&&ab"),
            Err(PasswordError::ContainsName)
        ));
    }

    #[test]
    fn weak_passwords_say_why_and_what_passes() {
        let strict = Rules {
            min_length: 12,
            min_strength: 4,
        };
        let e = check_policy("aaaaaaaaaaaa", "agent7", strict).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, PasswordError::Weak { floor: 4, .. }), "{text}");
        assert!(text.contains("at least 4 needed"), "{text}");
        assert!(text.contains("passphrase of four or more"), "{text}");
        assert!(check_policy("glacier tram obelisk harbour", "agent7", strict).is_ok());
        // The floor is the setting: 0 lets a weak but long-enough, uncommon password pass.
        let lax = Rules {
            min_length: 12,
            min_strength: 0,
        };
        assert!(check_policy("abcabcabcabc", "agent7", lax).is_ok());
    }

    #[tokio::test]
    async fn unknown_users_verify_against_the_dummy_and_fail() {
        let h = Hasher::new(2).unwrap();
        assert!(!h
            .verify(Zeroizing::new("anything".into()), None)
            .await
            .unwrap());
        let phc = h
            .hash(Zeroizing::new("a fine passphrase".into()))
            .await
            .unwrap();
        assert!(h
            .verify(Zeroizing::new("a fine passphrase".into()), Some(phc))
            .await
            .unwrap());
    }
}
