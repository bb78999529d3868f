//! Unguessable identifiers (key ids, later session ids and link ids) from the OS CSPRNG.

use rand::RngCore;

/// `bytes` random bytes as lowercase hex (so `2 * bytes` characters).
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn length_and_alphabet() {
        let id = super::random_hex(16);
        assert_eq!(id.len(), 32);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(id, super::random_hex(16));
    }
}
