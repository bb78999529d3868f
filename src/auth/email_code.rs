//! Emailed one-time codes: six digits from the OS CSPRNG, stored only as an HMAC under a vault
//! key and bound to one login attempt, so a database dump reveals no live code and a code
//! mailed for one attempt is worthless for another.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// A uniformly random six-digit code (rejection sampling: no modulo bias).
pub fn new_code() -> Zeroizing<String> {
    const LIMIT: u32 = u32::MAX - (u32::MAX % 1_000_000);
    loop {
        let n = rand::rngs::OsRng.next_u32();
        if n < LIMIT {
            return Zeroizing::new(format!("{:06}", n % 1_000_000));
        }
    }
}

/// The stored form of `code` for login attempt `attempt`.
pub fn keyed_hash(key: &[u8], attempt: &str, code: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(attempt.as_bytes());
    mac.update(b"\0");
    mac.update(code.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Constant-time comparison of a typed code with the stored hash.
pub fn matches(key: &[u8], attempt: &str, typed: &str, stored: &str) -> bool {
    let h = keyed_hash(key, attempt, typed);
    !stored.is_empty() && bool::from(h.as_bytes().ct_eq(stored.as_bytes()))
}

/// Whether a code sent at `sent_at` with lifetime `ttl_secs` is still valid at `now`
/// (valid through the last second of its lifetime, gone at `sent_at + ttl`).
pub fn fresh(sent_at: i64, ttl_secs: i64, now: i64) -> bool {
    now >= sent_at && now < sent_at + ttl_secs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits_and_vary() {
        let a = new_code();
        assert!(a.len() == 6 && a.bytes().all(|b| b.is_ascii_digit()));
        assert!((0..20).map(|_| new_code()).any(|c| *c != *a));
    }

    #[test]
    fn hashes_bind_the_attempt_and_the_key() {
        let h = keyed_hash(b"key", "attempt-1", "123456");
        assert!(matches(b"key", "attempt-1", "123456", &h));
        assert!(!matches(b"key", "attempt-2", "123456", &h));
        assert!(!matches(b"other", "attempt-1", "123456", &h));
        assert!(!matches(b"key", "attempt-1", "123457", &h));
        assert!(!matches(b"key", "attempt-1", "123456", ""));
        assert!(!h.contains("123456"));
    }

    /// The clock cases, with the clock injected: a 10-minute code at 9:59 and 10:01.
    #[test]
    fn lifetime_to_the_second() {
        let sent = 1_000_000;
        let ttl = 600;
        assert!(fresh(sent, ttl, sent + 599));
        assert!(!fresh(sent, ttl, sent + 600));
        assert!(!fresh(sent, ttl, sent + 601));
        assert!(!fresh(sent, ttl, sent - 1));
    }
}
