//! TOTP (RFC 6238) as every authenticator app implements it: HMAC-SHA1, 6 digits, 30-second
//! steps, secrets of 160 bits in base32. Verification accepts the step before and after the
//! current one (clock skew) and reports which step matched, so the caller can refuse that step
//! and every earlier one from then on (a code is accepted once).

use data_encoding::BASE32_NOPAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha1::Sha1;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

pub const STEP_SECS: i64 = 30;
pub const DIGITS: usize = 6;
/// 160 bits, RFC 4226's recommendation and what authenticator apps expect.
pub const SECRET_LEN: usize = 20;

/// A fresh random secret.
pub fn new_secret() -> Zeroizing<Vec<u8>> {
    let mut s = Zeroizing::new(vec![0u8; SECRET_LEN]);
    rand::rngs::OsRng.fill_bytes(&mut s);
    s
}

/// Base32 without padding, as authenticator apps read it.
pub fn encode_secret(secret: &[u8]) -> Zeroizing<String> {
    Zeroizing::new(BASE32_NOPAD.encode(secret))
}

/// The time step of a Unix time.
pub fn step_of(unix: i64) -> i64 {
    unix.div_euclid(STEP_SECS)
}

/// The code for `step` (RFC 4226 dynamic truncation).
pub fn code_at(secret: &[u8], step: i64) -> Zeroizing<String> {
    // An HMAC key of any length is accepted; this cannot fail.
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        return Zeroizing::new(String::new());
    };
    mac.update(&step.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = usize::from(h[h.len() - 1] & 0x0f);
    let bin = (u32::from(h[offset] & 0x7f) << 24)
        | (u32::from(h[offset + 1]) << 16)
        | (u32::from(h[offset + 2]) << 8)
        | u32::from(h[offset + 3]);
    Zeroizing::new(format!("{:06}", bin % 1_000_000))
}

/// Whether `code` is exactly six ASCII digits (no spaces, signs or other scripts' digits).
pub fn well_formed(code: &str) -> bool {
    code.len() == DIGITS && code.bytes().all(|b| b.is_ascii_digit())
}

/// The step (now-1, now or now+1) whose code equals `code`, if any, compared in constant
/// time; all three are always computed.
pub fn verify(secret: &[u8], code: &str, now: i64) -> Option<i64> {
    if !well_formed(code) {
        return None;
    }
    let current = step_of(now);
    let mut found = None;
    for step in [current - 1, current, current + 1] {
        let expected = code_at(secret, step);
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
            found = Some(step);
        }
    }
    found
}

/// `otpauth://totp/ISSUER:USER?secret=…&issuer=…&algorithm=SHA1&digits=6&period=30`.
pub fn otpauth_uri(issuer: &str, user: &str, secret_b32: &str) -> Zeroizing<String> {
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    Zeroizing::new(format!(
        "otpauth://totp/{}:{}?secret={secret_b32}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        enc(issuer),
        enc(user),
        enc(issuer)
    ))
}

/// The URI as an SVG QR code (medium error correction, which phone cameras read easily).
pub fn qr_svg(uri: &str) -> Option<String> {
    let code =
        qrcode::QrCode::with_error_correction_level(uri.as_bytes(), qrcode::EcLevel::M).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA1 rows (the RFC prints 8 digits; authenticator apps use the
    /// last 6, which is what `code_at` computes).
    #[test]
    fn rfc_6238_appendix_b_vectors() {
        let secret = b"12345678901234567890";
        for (time, eight) in [
            (59i64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(
                code_at(secret, step_of(time)).as_str(),
                &eight[2..],
                "T={time}"
            );
        }
    }

    #[test]
    fn verification_window_is_one_step_each_way() {
        let secret = b"12345678901234567890";
        let now = 1_111_111_111;
        let s = step_of(now);
        for (step, ok) in [
            (s - 2, false),
            (s - 1, true),
            (s, true),
            (s + 1, true),
            (s + 2, false),
        ] {
            let code = code_at(secret, step);
            assert_eq!(
                verify(secret, &code, now),
                ok.then_some(step),
                "step {step}"
            );
        }
    }

    #[test]
    fn malformed_codes() {
        let secret = b"12345678901234567890";
        let now = 59;
        let good = code_at(secret, step_of(now));
        assert!(verify(secret, &good, now).is_some());
        for bad in [
            format!(" {}", &good[..5]),
            format!("{} ", &good[..5]),
            format!("+{}", &good[..5]),
            good[..5].to_string(),
            format!("{}0", &*good),
            "٠١٢٣٤٥".to_string(),
            "".to_string(),
            format!("{} {}", &good[..3], &good[3..]),
        ] {
            assert!(!well_formed(&bad), "{bad:?}");
            assert_eq!(verify(secret, &bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn uri_and_qr() {
        let secret = encode_secret(b"12345678901234567890");
        assert_eq!(secret.as_str(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let uri = otpauth_uri("pbxguard", "ops@cc", &secret);
        assert_eq!(
            uri.as_str(),
            "otpauth://totp/pbxguard:ops%40cc?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=pbxguard&algorithm=SHA1&digits=6&period=30"
        );
        let svg = qr_svg(&uri).unwrap();
        assert!(
            svg.starts_with("<?xml") && svg.contains("<svg"),
            "{}",
            &svg[..80]
        );
        assert_eq!(new_secret().len(), 20);
    }
}
