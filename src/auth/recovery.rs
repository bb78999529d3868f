//! Recovery codes: the second factor of last resort when the phone is lost. Ten codes of 60
//! random bits each (twelve characters of Crockford's base32, shown as `xxxx-xxxx-xxxx`),
//! single use, stored only as HMACs under the MFA key and bound to the user.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

/// Codes in a set.
pub const COUNT: usize = 10;
/// Characters of a code, without the dashes.
const LEN: usize = 12;
/// Crockford's base32: no I, L, O or U, so a code read aloud or copied by hand survives.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A fresh set of codes, as the user sees them.
pub fn new_set() -> Vec<Zeroizing<String>> {
    (0..COUNT).map(|_| new_code()).collect()
}

fn new_code() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; LEN]);
    rand::rngs::OsRng.fill_bytes(&mut *bytes);
    let mut code = Zeroizing::new(String::with_capacity(LEN + 2));
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            code.push('-');
        }
        // 256 is a multiple of 32: taking the low five bits has no bias.
        code.push(char::from(ALPHABET[usize::from(b & 31)]));
    }
    code
}

/// A code as typed, in its one canonical form: lower case, without dashes or blanks, with the
/// letters people confuse with digits read as those digits. `None` when it cannot be a code.
pub fn normalize(typed: &str) -> Option<Zeroizing<String>> {
    if typed.len() > 64 {
        return None;
    }
    let mut out = Zeroizing::new(String::with_capacity(LEN));
    for c in typed.chars() {
        let c = match c.to_ascii_lowercase() {
            '-' | ' ' => continue,
            'o' => '0',
            'i' | 'l' => '1',
            c => c,
        };
        if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) {
            return None;
        }
        out.push(c);
    }
    (out.len() == LEN).then_some(out)
}

/// The stored form of the canonical `code` of user `user_id`.
pub fn keyed_hash(key: &[u8], user_id: i64, code: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(b"recovery\0");
    mac.update(user_id.to_string().as_bytes());
    mac.update(b"\0");
    mac.update(code.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_grouped_distinct_and_read_back() {
        let set = new_set();
        assert_eq!(set.len(), COUNT);
        for c in &set {
            assert_eq!(c.len(), 14, "{}", c.as_str());
            assert_eq!(c.matches('-').count(), 2);
            let n = normalize(c).unwrap();
            assert_eq!(n.len(), 12);
            assert_eq!(n.as_str(), c.replace('-', ""));
        }
        let mut seen: Vec<&str> = set.iter().map(|c| c.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), COUNT);
    }

    #[test]
    fn typing_variants_are_forgiven_and_junk_is_not() {
        assert_eq!(
            normalize("AB12-CD34-EF56").unwrap().as_str(),
            "ab12cd34ef56"
        );
        assert_eq!(
            normalize(" ab12 cd34 efo1 ").unwrap().as_str(),
            "ab12cd34ef01"
        );
        assert_eq!(
            normalize("abil-cd34-ef56").unwrap().as_str(),
            "ab11cd34ef56"
        );
        for junk in [
            "",
            "123456",
            "ab12-cd34-ef5",
            "ab12-cd34-ef567",
            "ab12-cd34-efu6",
            "ab12-cd34-éf56",
            &"a".repeat(100),
        ] {
            assert!(normalize(junk).is_none(), "{junk}");
        }
    }

    #[test]
    fn hashes_bind_the_code_to_its_user() {
        let key = [9u8; 32];
        let a = keyed_hash(&key, 1, "ab12cd34ef56");
        assert_eq!(a.len(), 64);
        assert_ne!(a, keyed_hash(&key, 2, "ab12cd34ef56"));
        assert_ne!(a, keyed_hash(&[8u8; 32], 1, "ab12cd34ef56"));
        assert!(!a.contains("ab12cd34ef56"));
    }
}
