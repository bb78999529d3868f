//! Unit tests of sdp.rs: the SDP and MIME checks.

use super::*;
use rand::{Rng, SeedableRng};

const KEY_128: &str = "f99r/6vXQ3OwLK70/JDbkd7D9fuhwAVXk98J/G9y";
const KEY_128_B: &str = "P/BFQE6vyDxur3dT3FaZ8fp1EAQSp2dY0/M5l1dj";
const KEY_256: &str = "GoJT+K90Y4qhtmFcVEjyeOgNZIBK8CoCD3G7aPt21fagWE0O5dFnA7xf2bRVMA==";
const KEY_GCM_128: &str = "87Dmhpjosc+egvZFh7yt2Hw43zmL6OauW0YE5w==";
const KEY_GCM_256: &str = "A9ZAGNJVDqJXLRHespgwNqlWa2mBvR+MnESRO2BcuWtIci+1P0jPmqeuEmw=";
const FP_SHA256: &str = "99:3B:8C:49:83:59:3D:B3:2E:8B:57:B0:54:10:DC:8B:3E:41:30:9A:EE:5C:0E:88:95:B2:44:8C:30:32:63:E8";
const FP_SHA1: &str = "32:22:9b:f5:bd:8b:10:e2:34:80:35:2d:26:dc:2c:08:85:18:07:13";

const HEAD: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n";

fn sdp(media: &str) -> String {
    format!("{HEAD}{media}")
}

fn sdes_audio() -> String {
    sdp(&format!(
        "m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}\r\n"
    ))
}

fn dtls_audio() -> String {
    sdp(&format!(
        "m=audio 4000 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 {FP_SHA256}\r\na=setup:actpass\r\n"
    ))
}

fn check(text: &str) -> Result<Verdict, Refusal> {
    check_with(text, &MediaPolicy::default(), false)
}

fn check_with(text: &str, policy: &MediaPolicy, dtls: bool) -> Result<Verdict, Refusal> {
    check_body(Some("application/sdp"), None, text.as_bytes(), policy, dtls)
}

fn accepted(text: &str) {
    assert_eq!(check(text), Ok(Verdict::Accepted), "{text}");
}

fn refused(text: &str) -> String {
    match check(text) {
        Err(refusal) => refusal.reason,
        Ok(verdict) => panic!("accepted ({verdict:?}): {text:?}"),
    }
}

fn crypto_line(rest: &str) -> String {
    sdp(&format!("m=audio 4000 RTP/SAVP 0\r\na=crypto:{rest}\r\n"))
}

// --- profiles -------------------------------------------------------------------------

#[test]
fn sdes_srtp_accepted() {
    accepted(&sdes_audio());
}

#[test]
fn dtls_srtp_accepted() {
    accepted(&dtls_audio());
}

#[test]
fn plain_rtp_refused() {
    let reason = refused(&sdp("m=audio 4000 RTP/AVP 0 8\r\n"));
    assert!(reason.contains("RTP/AVP"), "{reason}");
}

#[test]
fn plain_rtp_avpf_refused() {
    let reason = refused(&sdp(
        "m=video 4002 RTP/AVPF 96\r\na=rtpmap:96 VP8/90000\r\n",
    ));
    assert!(reason.contains("RTP/AVPF"), "{reason}");
}

#[test]
fn optimistic_srtp_refused() {
    refused(&sdp(&format!(
        "m=audio 4000 RTP/AVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}\r\n"
    )));
}

#[test]
fn lower_case_protos_follow_upper_case_rules() {
    for m in ["m=audio 4000 rtp/avp 0\r\n", "m=audio 4000 Rtp/Avp 0\r\n"] {
        refused(&sdp(m));
    }
    for m in [
        format!("m=audio 4000 rtp/savp 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}\r\n"),
        format!("m=AUDIO 4000 udp/tls/rtp/savpf 0\r\na=fingerprint:sha-256 {FP_SHA256}\r\na=setup:active\r\n"),
    ] {
        accepted(&sdp(&m));
    }
}

#[test]
fn unknown_or_other_protos_refused() {
    for m in [
        "m=audio 4000 TCP/RTP/AVP 0\r\n".to_owned(),
        "m=audio 4000 RTP/SAVPX 0\r\n".to_owned(),
        "m=audio 4000 udptl t38\r\n".to_owned(),
        format!("m=audio 4000 TCP/TLS/RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}\r\n"),
    ] {
        refused(&sdp(&m));
    }
}

#[test]
fn savp_without_crypto_refused() {
    let reason = refused(&sdp("m=audio 4000 RTP/SAVP 0\r\n"));
    assert!(reason.contains("a=crypto"), "{reason}");
    refused(&sdp("m=audio 4000 RTP/SAVPF 0\r\n"));
}

#[test]
fn session_level_crypto_does_not_count() {
    refused(&format!(
        "{HEAD}a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}\r\nm=audio 4000 RTP/SAVP 0\r\n"
    ));
}

#[test]
fn weakening_session_params_refused() {
    for param in [
        "UNENCRYPTED_SRTP",
        "UNENCRYPTED_SRTCP",
        "UNAUTHENTICATED_SRTP",
        "unencrypted_srtp",
    ] {
        refused(&crypto_line(&format!(
            "1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128} {param}"
        )));
        refused(&crypto_line(&format!(
            "1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128} KDR=1 {param}"
        )));
    }
}

#[test]
fn weakened_line_ignored_when_another_is_acceptable() {
    accepted(&sdp(&format!(
        "m=audio 4000 RTP/SAVP 0\r\n\
         a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128} UNENCRYPTED_SRTP\r\n\
         a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY_128_B}\r\n"
    )));
}

#[test]
fn harmless_session_params_accepted() {
    accepted(&crypto_line(&format!(
        "1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128} KDR=23 FEC_ORDER=FEC_SRTP"
    )));
}

#[test]
fn unknown_or_disallowed_suite_refused() {
    for suite in [
        "AES_CM_129_HMAC_SHA1_80",
        "aes_cm_128_hmac_sha1_80",
        "F8_128_HMAC_SHA1_80",
    ] {
        refused(&crypto_line(&format!("1 {suite} inline:{KEY_128}")));
    }
    let policy = MediaPolicy {
        crypto_suites: vec!["F8_128_HMAC_SHA1_80".into()],
        allow_t38: false,
    };
    let text = crypto_line(&format!("1 F8_128_HMAC_SHA1_80 inline:{KEY_128}"));
    assert_eq!(check_with(&text, &policy, false), Ok(Verdict::Accepted));
    let text = crypto_line(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}"));
    assert!(check_with(&text, &policy, false).is_err());
}

#[test]
fn every_default_suite_with_its_key_length_accepted() {
    for (suite, key) in [
        ("AES_CM_128_HMAC_SHA1_80", KEY_128),
        ("AES_CM_128_HMAC_SHA1_32", KEY_128),
        ("AES_256_CM_HMAC_SHA1_80", KEY_256),
        ("AES_256_CM_HMAC_SHA1_32", KEY_256),
        ("AEAD_AES_128_GCM", KEY_GCM_128),
        ("AEAD_AES_256_GCM", KEY_GCM_256),
    ] {
        accepted(&crypto_line(&format!("1 {suite} inline:{key}")));
    }
    assert!(DEFAULT_CRYPTO_SUITES.iter().all(|s| is_known_suite(s)));
}

#[test]
fn malformed_key_refused() {
    for rest in [
        // Wrong length for the suite, in both directions.
        format!("1 AES_256_CM_HMAC_SHA1_80 inline:{KEY_128}"),
        format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_256}"),
        format!("1 AEAD_AES_128_GCM inline:{KEY_128}"),
        "1 AES_CM_128_HMAC_SHA1_80 inline:QUJD".to_owned(),
        // Not base64, missing inline:, wrong case of inline:, empty key.
        "1 AES_CM_128_HMAC_SHA1_80 inline:!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!".to_owned(),
        format!("1 AES_CM_128_HMAC_SHA1_80 {KEY_128}"),
        format!("1 AES_CM_128_HMAC_SHA1_80 INLINE:{KEY_128}"),
        "1 AES_CM_128_HMAC_SHA1_80 inline:".to_owned(),
    ] {
        refused(&crypto_line(&rest));
    }
}

#[test]
fn unpadded_key_accepted() {
    let unpadded = KEY_GCM_128.trim_end_matches('=');
    accepted(&crypto_line(&format!(
        "1 AEAD_AES_128_GCM inline:{unpadded}"
    )));
}

#[test]
fn crypto_tag_and_spacing_checked() {
    for rest in [
        format!("x AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}"),
        format!("1234567890 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}"),
        format!(" 1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}"),
        format!("1  AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}"),
        format!("1\tAES_CM_128_HMAC_SHA1_80 inline:{KEY_128}"),
        format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128} "),
        "1 AES_CM_128_HMAC_SHA1_80".to_owned(),
    ] {
        refused(&crypto_line(&rest));
    }
    accepted(&crypto_line(&format!(
        "123456789 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}"
    )));
}

#[test]
fn crypto_attribute_name_is_exact() {
    for attribute in ["a=CRYPTO:1", "a=crypto 1"] {
        refused(&sdp(&format!(
            "m=audio 4000 RTP/SAVP 0\r\n{attribute} AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}\r\n"
        )));
    }
}

#[test]
fn lifetime_and_mki_checked() {
    for good in ["|2^31", "|1048576", "|1:4", "|2^20|1:4", "|2^20|255:128"] {
        accepted(&crypto_line(&format!(
            "1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}{good}"
        )));
    }
    for bad in [
        "|",
        "|2^",
        "|1:0",
        "|1:129",
        "|x",
        "|1:4|2^20",
        "|2^20|1:4|1:4",
        "|1:1234",
    ] {
        refused(&crypto_line(&format!(
            "1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}{bad}"
        )));
    }
}

#[test]
fn several_key_params_all_checked() {
    accepted(&crypto_line(&format!(
        "1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}|2^20|1:4;inline:{KEY_128_B}|2^20|2:4"
    )));
    refused(&crypto_line(&format!(
        "1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}|2^20|1:4;inline:QUJD|2^20|2:4"
    )));
}

#[test]
fn dtls_without_fingerprint_refused() {
    let reason = refused(&sdp(
        "m=audio 4000 UDP/TLS/RTP/SAVPF 111\r\na=setup:actpass\r\n",
    ));
    assert!(reason.contains("fingerprint"), "{reason}");
}

#[test]
fn dtls_without_setup_refused() {
    let reason = refused(&sdp(&format!(
        "m=audio 4000 UDP/TLS/RTP/SAVP 111\r\na=fingerprint:sha-256 {FP_SHA256}\r\n"
    )));
    assert!(reason.contains("setup"), "{reason}");
}

#[test]
fn dtls_session_level_fingerprint_and_setup_accepted() {
    for text in [
        format!(
            "{HEAD}a=fingerprint:sha-256 {FP_SHA256}\r\na=setup:actpass\r\n\
             m=audio 4000 UDP/TLS/RTP/SAVPF 111\r\nm=video 4002 UDP/TLS/RTP/SAVPF 96\r\n"
        ),
        format!(
            "{HEAD}a=fingerprint:SHA-1 {FP_SHA1}\r\n\
             m=audio 4000 UDP/TLS/RTP/SAVPF 111\r\na=setup:passive\r\n"
        ),
    ] {
        accepted(&text);
    }
}

#[test]
fn malformed_fingerprints_refused() {
    let fp_bad_len = &FP_SHA256[..FP_SHA256.len() - 3];
    for fp in [
        format!("sha-1 {FP_SHA256}"),
        format!("sha-256 {fp_bad_len}"),
        format!("md5 {FP_SHA1}"),
        format!("sha-256  {FP_SHA256}"),
        format!("sha-256 {}", FP_SHA256.replace(':', "")),
        format!("sha-256 {}", FP_SHA256.replacen("99", "ZZ", 1)),
        format!("sha-256 {FP_SHA256}:"),
        "sha-256".to_owned(),
    ] {
        refused(&sdp(&format!(
            "m=audio 4000 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:{fp}\r\na=setup:actpass\r\n"
        )));
    }
}

#[test]
fn media_level_fingerprint_overrides_session_level() {
    refused(&format!(
        "{HEAD}a=fingerprint:sha-256 {FP_SHA256}\r\n\
         m=audio 4000 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 00\r\na=setup:actpass\r\n"
    ));
}

#[test]
fn setup_roles_checked() {
    for role in ["active", "passive", "actpass", "holdconn"] {
        accepted(&sdp(&format!(
            "m=audio 4000 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 {FP_SHA256}\r\na=setup:{role}\r\n"
        )));
    }
    for setup in [
        "a=setup:ACTPASS",
        "a=setup:both",
        "a=setup:",
        "a=setup:active\r\na=setup:passive",
    ] {
        refused(&sdp(&format!(
            "m=audio 4000 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 {FP_SHA256}\r\n{setup}\r\n"
        )));
    }
}

#[test]
fn require_dtls_refuses_sdes() {
    let reason = check_with(&sdes_audio(), &MediaPolicy::default(), true)
        .err()
        .map(|r| r.reason)
        .unwrap_or_default();
    assert!(reason.contains("DTLS"), "{reason}");
    assert_eq!(
        check_with(&dtls_audio(), &MediaPolicy::default(), true),
        Ok(Verdict::Accepted)
    );
    // SAVPF with a fingerprint is still SDES territory, not UDP/TLS.
    let text = sdp(&format!(
        "m=audio 4000 RTP/SAVPF 111\r\na=fingerprint:sha-256 {FP_SHA256}\r\na=setup:actpass\r\n"
    ));
    assert!(check_with(&text, &MediaPolicy::default(), true).is_err());
}

#[test]
fn image_refused_by_default() {
    let reason = refused(&sdp("m=image 4010 udptl t38\r\na=T38FaxVersion:0\r\n"));
    assert!(reason.contains("T.38"), "{reason}");
}

#[test]
fn image_with_allow_t38() {
    let policy = MediaPolicy {
        allow_t38: true,
        ..MediaPolicy::default()
    };
    let ok = |m: &str| check_with(&sdp(m), &policy, false);
    for m in [
        "m=image 4010 udptl t38\r\n".to_owned(),
        "m=image 4010 UDPTL T38\r\n".to_owned(),
        format!("m=image 4010 UDP/TLS/UDPTL t38\r\na=fingerprint:sha-256 {FP_SHA256}\r\na=setup:active\r\n"),
    ] {
        assert_eq!(ok(&m), Ok(Verdict::Accepted), "{m}");
    }
    for m in [
        "m=image 4010 UDP/TLS/UDPTL t38\r\n",
        "m=image 4010 RTP/AVP t38\r\n",
        "m=image 4010 udptl jpeg\r\n",
        "m=image 4010 tcp t38\r\n",
        "m=audio 4000 RTP/AVP 0\r\nm=image 4010 udptl t38\r\n",
    ] {
        assert!(ok(m).is_err(), "{m}");
    }
}

#[test]
fn active_application_text_message_refused() {
    for m in [
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n",
        "m=application 5000 TCP/BFCP *\r\n",
        "m=text 5002 RTP/SAVP 98\r\n",
        "m=message 7394 TCP/MSRP *\r\n",
        "m=data 5004 RTP/SAVP 0\r\n",
    ] {
        refused(&format!("{}{m}", dtls_audio()));
    }
}

#[test]
fn port_zero_accepted_for_anything() {
    accepted(&sdp(
        "m=audio 0 RTP/AVP 0\r\nm=video 0 RTP/AVPF 96\r\nm=image 0 udptl t38\r\n\
         m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\nm=text 0 RTP/AVP 98\r\n\
         m=message 0 TCP/MSRP *\r\nm=whatever 0 X/Y z\r\nm=video 0 RTP/AVP\r\nm=audio 00/2 RTP/AVP 0\r\n",
    ));
    accepted(&format!("{}m=video 0 RTP/AVP 31\r\n", sdes_audio()));
}

#[test]
fn no_media_lines_accepted() {
    accepted(HEAD);
}

#[test]
fn duplicate_m_lines_each_checked() {
    let audio = format!(
        "m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}\r\n"
    );
    accepted(&sdp(&format!("{audio}{audio}")));
    // The second identical m-line lacks its own crypto: attributes do not carry over.
    for second in ["m=audio 4000 RTP/SAVP 0\r\n", "m=audio 4000 RTP/AVP 0\r\n"] {
        refused(&sdp(&format!("{audio}{second}")));
    }
}

// --- line syntax ----------------------------------------------------------------------

#[test]
fn bare_cr_smuggling_refused() {
    let reason = refused(&sdp(&format!(
        "m=audio 0 RTP/SAVP 0\rm=audio 4000 RTP/AVP 0\r\n{}",
        "a=sendrecv\r\n"
    )));
    assert!(reason.contains("CR"), "{reason}");
    for text in [
        format!("{}\r", sdes_audio()),
        sdes_audio().replace("\r\n", "\r"),
    ] {
        refused(&text);
    }
}

#[test]
fn lf_only_and_mixed_line_ends_accepted() {
    for text in [
        sdes_audio().replace("\r\n", "\n"),
        sdes_audio().replacen("\r\n", "\n", 2),
        // No final line end.
        sdes_audio().trim_end().to_owned(),
        // Trailing empty lines only at the end.
        format!("{}\r\n\r\n\n", sdes_audio()),
    ] {
        accepted(&text);
    }
}

#[test]
fn empty_line_in_the_middle_refused() {
    for text in [
        sdes_audio().replacen("s=-\r\n", "s=-\r\n\r\n", 1),
        format!("\r\n{}", sdes_audio()),
    ] {
        refused(&text);
    }
}

#[test]
fn nul_and_control_characters_refused() {
    for text in [
        sdes_audio().replacen("s=-", "s=-\0", 1),
        sdp("m=audio 4000 RTP/AVP 0\0m=audio 0 RTP/SAVP 0\r\n"),
        sdes_audio().replacen("s=-", "s=\u{1b}[2J", 1),
        sdes_audio().replacen("s=-", "s=\u{7f}", 1),
        sdes_audio().replacen("s=-", "s=\u{85}", 1),
    ] {
        refused(&text);
    }
    // HTAB and UTF-8 text are fine outside m= lines.
    accepted(&sdes_audio().replacen("s=-", "s=Caf\u{e9}\tcall", 1));
}

#[test]
fn invalid_utf8_refused() {
    let mut bytes = sdes_audio().into_bytes();
    bytes.splice(HEAD.len() - 10..HEAD.len() - 10, [0xff, 0xfe]);
    assert!(check_body(
        Some("application/sdp"),
        None,
        &bytes,
        &MediaPolicy::default(),
        false
    )
    .is_err());
}

#[test]
fn line_without_equals_or_with_bad_letter_refused() {
    let reason = refused(&sdes_audio().replacen("s=-", "s-", 1));
    assert!(reason.contains("line 3"), "{reason}");
    for line in ["S=-", "s =-", "=-", " s=-", "1=-"] {
        refused(&sdes_audio().replacen("s=-", line, 1));
    }
}

#[test]
fn version_line_must_come_first() {
    for text in [
        sdes_audio().replacen("v=0", "v=1", 1),
        sdes_audio().replacen("v=0", "v=0 ", 1),
        sdes_audio().replacen("v=0\r\n", "", 1),
        format!("\u{feff}{}", sdes_audio()),
        sdes_audio().replacen(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1",
            "o=- 1 1 IN IP4 192.0.2.1\r\nv=0",
            1,
        ),
    ] {
        refused(&text);
    }
}

#[test]
fn multiple_spaces_or_tabs_in_m_line_refused() {
    for m in [
        "m=audio  4000 RTP/SAVP 0",
        "m=audio 4000  RTP/SAVP 0",
        "m=audio 4000 RTP/SAVP  0",
        "m=audio 4000 RTP/SAVP 0 ",
        "m=audio\t4000 RTP/SAVP 0",
        "m=audio 4000 RTP/SAVP\t0",
        "m= audio 4000 RTP/SAVP 0",
    ] {
        let text = sdp(&format!(
            "{m}\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}\r\n"
        ));
        let reason = refused(&text);
        assert!(reason.contains("malformed m= line"), "{m}: {reason}");
    }
}

#[test]
fn m_line_port_checked() {
    for m in [
        "m=audio 65536 RTP/AVP 0",
        "m=audio 99999 RTP/SAVP 0",
        "m=audio 123456 RTP/SAVP 0",
        "m=audio -1 RTP/SAVP 0",
        "m=audio 4000a RTP/SAVP 0",
        "m=audio  RTP/SAVP 0",
        "m=audio 4000/ RTP/SAVP 0",
        "m=audio 4000/x RTP/SAVP 0",
        "m=audio /2 RTP/SAVP 0",
        "m=audio 4000 RTP/SAVP",
        "m=audio 4000",
        "m=audio",
        "m=",
        "m=audio 4000 RTP//SAVP 0",
    ] {
        let text = sdp(&format!(
            "{m}\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}\r\n"
        ));
        refused(&text);
    }
    accepted(&sdp(&format!(
        "m=audio 65535/2 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}\r\n"
    )));
}

#[test]
fn limits_enforced() {
    let many_lines = format!("{}{}", sdes_audio(), "a=x\r\n".repeat(MAX_SDP_LINES));
    assert!(refused(&many_lines).contains("too many lines"));
    let many_media = sdp(&"m=audio 0 RTP/AVP 0\r\n".repeat(MAX_MEDIA_LINES + 1));
    assert!(refused(&many_media).contains("too many m="));
    accepted(&sdp(&"m=audio 0 RTP/AVP 0\r\n".repeat(MAX_MEDIA_LINES)));
    let big = format!("{}a={}\r\n", sdes_audio(), "x".repeat(MAX_SDP_BYTES));
    assert!(refused(&big).contains("too large"));
}

// --- content types and encodings ------------------------------------------------------

#[test]
fn content_type_matching() {
    let text = sdp("m=audio 4000 RTP/AVP 0\r\n");
    let policy = MediaPolicy::default();
    for ct in [
        "application/sdp",
        "APPLICATION/SDP",
        "Application/Sdp; charset=utf-8",
        "application / sdp",
        "application/sdp;version=\"1\"",
    ] {
        assert!(
            check_body(Some(ct), None, text.as_bytes(), &policy, false).is_err(),
            "{ct}"
        );
    }
    for ct in [
        "text/plain",
        "application/dtmf-relay",
        "application/simple-message-summary",
        "application/sdpx",
        "message/sipfrag",
    ] {
        assert_eq!(
            check_body(Some(ct), None, text.as_bytes(), &policy, false),
            Ok(Verdict::NoSdp),
            "{ct}"
        );
    }
    for ct in [
        "application",
        "application/",
        "/sdp",
        "application/sdp;",
        "application/sdp x",
        "application/sdp;a=\"b",
        "application/sdp\r\n",
    ] {
        assert!(
            check_body(Some(ct), None, text.as_bytes(), &policy, false).is_err(),
            "{ct}"
        );
    }
}

#[test]
fn no_content_type_or_empty_body_is_no_sdp() {
    let policy = MediaPolicy::default();
    let text = sdp("m=audio 4000 RTP/AVP 0\r\n");
    for (ct, body) in [
        (None, text.as_bytes()),
        (Some("application/sdp"), &b""[..]),
        (Some("multipart/mixed"), &b""[..]),
    ] {
        assert_eq!(
            check_body(ct, None, body, &policy, false),
            Ok(Verdict::NoSdp),
            "{ct:?}"
        );
    }
    assert!(check_body(Some("application/sdp"), None, b"\r\n", &policy, false).is_err());
}

#[test]
fn content_encoding_refused() {
    let policy = MediaPolicy::default();
    let body = sdes_audio();
    let run =
        |ce: Option<&str>, ct: &str, body: &[u8]| check_body(Some(ct), ce, body, &policy, false);
    for ce in ["gzip", "GZIP", "deflate", "identity, gzip", "x-anything"] {
        let reason = run(Some(ce), "application/sdp", body.as_bytes())
            .err()
            .map(|r| r.reason)
            .unwrap_or_default();
        assert!(reason.contains("Content-Encoding"), "{ce}: {reason}");
    }
    for ce in [
        None,
        Some("identity"),
        Some("Identity"),
        Some(""),
        Some(" identity "),
    ] {
        assert_eq!(
            run(ce, "application/sdp", body.as_bytes()),
            Ok(Verdict::Accepted),
            "{ce:?}"
        );
    }
    // Compressed multipart cannot be searched for SDP.
    assert!(run(Some("gzip"), "multipart/mixed;boundary=b", b"\x1f\x8b....").is_err());
    // Not SDP: not our concern.
    assert_eq!(
        run(Some("gzip"), "text/plain", b"\x1f\x8b...."),
        Ok(Verdict::NoSdp)
    );
}

#[test]
fn sdp_lookalike_in_other_content_type_ignored() {
    let policy = MediaPolicy::default();
    let text = sdp("m=audio 4000 RTP/AVP 0\r\n");
    assert_eq!(
        check_body(Some("text/plain"), None, text.as_bytes(), &policy, false),
        Ok(Verdict::NoSdp)
    );
}

// --- multipart ------------------------------------------------------------------------

fn multipart(boundary: &str, parts: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (headers, body) in parts {
        out.push_str(&format!("--{boundary}\r\n{headers}\r\n{body}\r\n"));
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    out
}

fn check_mp(content_type: &str, body: &str) -> Result<Verdict, Refusal> {
    check_body(
        Some(content_type),
        None,
        body.as_bytes(),
        &MediaPolicy::default(),
        false,
    )
}

const ISUP: (&str, &str) = (
    "Content-Type: application/isup;version=itu-t92+\r\n",
    "\u{1}\u{2}binaryish",
);

#[test]
fn multipart_with_good_sdp_accepted() {
    let good = sdes_audio();
    let body = multipart(
        "unique-boundary-1",
        &[("Content-Type: application/sdp\r\n", &good), ISUP],
    );
    for ct in [
        "multipart/mixed;boundary=unique-boundary-1",
        "Multipart/Alternative; boundary=\"unique-boundary-1\"",
        "multipart/related ; boundary = unique-boundary-1",
        // Any multipart subtype is searched, as pjsip parses them all.
        "multipart/x-custom;boundary=unique-boundary-1",
    ] {
        assert_eq!(check_mp(ct, &body), Ok(Verdict::Accepted), "{ct}");
    }
}

#[test]
fn multipart_with_bad_sdp_refused() {
    let bad = sdp("m=audio 4000 RTP/AVP 0\r\n");
    let body = multipart("b1", &[("Content-Type: application/sdp\r\n", &bad)]);
    assert!(check_mp("multipart/mixed;boundary=b1", &body).is_err());
}

#[test]
fn multipart_sdp_hidden_in_second_part_refused() {
    let good = sdes_audio();
    let bad = sdp("m=audio 4000 RTP/AVP 0\r\n");
    let body = multipart(
        "b1",
        &[
            ("Content-Type: application/sdp\r\n", &good),
            ("Content-Type: APPLICATION/SDP\r\n", &bad),
        ],
    );
    assert!(check_mp("multipart/mixed;boundary=b1", &body).is_err());
    let body = multipart("b1", &[ISUP, ("c: application/sdp\r\n", &bad)]);
    assert!(check_mp("multipart/mixed;boundary=b1", &body).is_err());
}

#[test]
fn multipart_without_sdp_is_no_sdp() {
    let body = multipart(
        "b1",
        &[
            ("Content-Type: text/plain\r\n", "hello"),
            ("", "no headers: text/plain"),
        ],
    );
    assert_eq!(
        check_mp("multipart/mixed;boundary=b1", &body),
        Ok(Verdict::NoSdp)
    );
    // An SDP-looking part that is not typed application/sdp is not SDP.
    let bad = sdp("m=audio 4000 RTP/AVP 0\r\n");
    let body = multipart("b1", &[("", &bad)]);
    assert_eq!(
        check_mp("multipart/mixed;boundary=b1", &body),
        Ok(Verdict::NoSdp)
    );
}

#[test]
fn nested_multipart_checked() {
    let bad = sdp("m=audio 4000 RTP/AVP 0\r\n");
    let good = sdes_audio();
    let inner_bad = multipart("inner", &[("Content-Type: application/sdp\r\n", &bad)]);
    let inner_good = multipart("inner", &[("Content-Type: application/sdp\r\n", &good)]);
    let ct_inner = "Content-Type: multipart/alternative; boundary=inner\r\n";
    let outer = multipart("outer", &[ISUP, (ct_inner, &inner_bad)]);
    assert!(check_mp("multipart/mixed;boundary=outer", &outer).is_err());
    let outer = multipart("outer", &[ISUP, (ct_inner, &inner_good)]);
    assert_eq!(
        check_mp("multipart/mixed;boundary=outer", &outer),
        Ok(Verdict::Accepted)
    );
    // Encoded nested multipart cannot be inspected.
    let encoded = format!("{ct_inner}Content-Transfer-Encoding: base64\r\n");
    let outer = multipart("outer", &[(&encoded, &inner_good)]);
    assert!(check_mp("multipart/mixed;boundary=outer", &outer).is_err());
}

#[test]
fn multipart_depth_limited() {
    let mut body = multipart(
        "l1",
        &[("Content-Type: application/sdp\r\n", &sdes_audio())],
    );
    for level in 2..=MAX_MULTIPART_DEPTH {
        let headers = format!("Content-Type: multipart/mixed;boundary=l{}\r\n", level - 1);
        body = multipart(&format!("l{level}"), &[(&headers, &body)]);
    }
    let top = format!("multipart/mixed;boundary=l{MAX_MULTIPART_DEPTH}");
    assert_eq!(check_mp(&top, &body), Ok(Verdict::Accepted));
    let headers = format!("Content-Type: multipart/mixed;boundary=l{MAX_MULTIPART_DEPTH}\r\n");
    let deeper = multipart("top", &[(&headers, &body)]);
    let reason = check_mp("multipart/mixed;boundary=top", &deeper)
        .err()
        .map(|r| r.reason)
        .unwrap_or_default();
    assert!(reason.contains("nested"), "{reason}");
}

#[test]
fn encoded_sdp_part_refused() {
    let good = sdes_audio();
    for header in [
        "Content-Encoding: gzip\r\n",
        "e: gzip\r\n",
        "Content-Transfer-Encoding: base64\r\n",
        "Content-Transfer-Encoding: quoted-printable\r\n",
    ] {
        let headers = format!("Content-Type: application/sdp\r\n{header}");
        let body = multipart("b1", &[(&headers, &good)]);
        assert!(
            check_mp("multipart/mixed;boundary=b1", &body).is_err(),
            "{header}"
        );
    }
    for header in [
        "Content-Transfer-Encoding: binary\r\n",
        "Content-Transfer-Encoding: 8BIT\r\n",
        "Content-Transfer-Encoding: 7bit\r\n",
        "Content-Encoding: identity\r\n",
    ] {
        let headers = format!("Content-Type: application/sdp\r\n{header}");
        let body = multipart("b1", &[(&headers, &good)]);
        assert_eq!(
            check_mp("multipart/mixed;boundary=b1", &body),
            Ok(Verdict::Accepted),
            "{header}"
        );
    }
    // Encoding on a non-SDP part is irrelevant.
    let body = multipart(
        "b1",
        &[(
            "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n",
            "aGVsbG8=",
        )],
    );
    assert_eq!(
        check_mp("multipart/mixed;boundary=b1", &body),
        Ok(Verdict::NoSdp)
    );
}

#[test]
fn multipart_boundary_parameter_checked() {
    let body = multipart(
        "b1",
        &[("Content-Type: application/sdp\r\n", &sdes_audio())],
    );
    for ct in [
        "multipart/mixed",
        "multipart/mixed;boundary=",
        "multipart/mixed;boundary=\"\"",
        "multipart/mixed;boundary=b1;boundary=b1",
        "multipart/mixed;boundary=\"b1 \"",
        "multipart/mixed;boundary=\"b\\\\1\"",
        "multipart/mixed;boundary=b1;",
    ] {
        assert!(check_mp(ct, &body).is_err(), "{ct}");
    }
    let long = "x".repeat(71);
    let body_long = multipart(
        &long,
        &[("Content-Type: application/sdp\r\n", &sdes_audio())],
    );
    assert!(check_mp(&format!("multipart/mixed;boundary={long}"), &body_long).is_err());
    let ok70 = "y".repeat(70);
    let body70 = multipart(
        &ok70,
        &[("Content-Type: application/sdp\r\n", &sdes_audio())],
    );
    assert_eq!(
        check_mp(&format!("multipart/mixed;boundary={ok70}"), &body70),
        Ok(Verdict::Accepted)
    );
    // Quoted boundaries may hold bchars that are not token characters.
    let odd = "=_Part 0/1?x";
    let body_odd = multipart(odd, &[("Content-Type: application/sdp\r\n", &sdes_audio())]);
    assert_eq!(
        check_mp(&format!("multipart/mixed; boundary=\"{odd}\""), &body_odd),
        Ok(Verdict::Accepted)
    );
}

#[test]
fn multipart_structure_edge_cases() {
    let good = sdes_audio();
    let ct = "multipart/mixed;boundary=b1";
    let part = format!("Content-Type: application/sdp\r\n\r\n{good}");
    for body in [
        // Zero parts.
        "--b1--\r\n".to_owned(),
        "no delimiter at all".to_owned(),
        // Unterminated (no closing delimiter).
        format!("--b1\r\n{part}\r\n"),
        format!("--b1\r\n{part}\r\n--b1\r\n"),
        // Delimiter not at a line start (pjsip would still split there).
        format!("--b1\r\n{part}a=x--b1\r\n\r\n--b1--\r\n"),
        // Boundary followed by other characters.
        format!("--b1x\r\n{part}\r\n--b1--\r\n"),
        format!("--b1\r\n{part}\r\n--b1-\r\n"),
        // Boundary again in the epilogue.
        format!("--b1\r\n{part}\r\n--b1--\r\nepilogue\r\n--b1\r\n"),
        // Adjacent delimiters: an empty part.
        format!("--b1\r\n--b1\r\n{part}\r\n--b1--"),
    ] {
        assert!(check_mp(ct, &body).is_err(), "{body:?}");
    }
    // Accepted: transport padding, preamble, epilogue, LF-only, no final line end.
    for body in [
        format!("--b1 \t\r\n{part}\r\n--b1-- \r\n"),
        format!("preamble\r\n--b1\r\n{part}\r\n--b1--\r\nepilogue"),
        format!("--b1\n{}\n--b1--", part.replace("\r\n", "\n")),
        format!("--b1\r\n{part}\r\n--b1--"),
    ] {
        assert_eq!(check_mp(ct, &body), Ok(Verdict::Accepted), "{body:?}");
    }
}

#[test]
fn multipart_part_headers_checked() {
    let ct = "multipart/mixed;boundary=b1";
    let good = sdes_audio();
    let bad = sdp("m=audio 4000 RTP/AVP 0\r\n");
    let mp = |headers: &str, body: &str| format!("--b1\r\n{headers}\r\n{body}\r\n--b1--\r\n");
    for body in [
        // Unparsable header lines.
        mp("Content-Type application/sdp\r\n", &good),
        mp("Bad Name: x\r\n", &good),
        mp(" folded-first: x\r\n", &good),
        mp("Content-Type: application/sdp\rX: y\r\n", &good),
        mp("Content-Type: applic\0ation/sdp\r\n", &good),
        // A part starting with SDP and no blank line: "v=0" is not a header.
        format!("--b1\r\n{bad}\r\n--b1--\r\n"),
        // Duplicate Content-Type (pjsip keeps the last).
        mp(
            "Content-Type: text/plain\r\nContent-Type: application/sdp\r\n",
            &bad,
        ),
        mp("Content-Type: text/plain\r\nc: application/sdp\r\n", &bad),
        // Malformed part Content-Type.
        mp("Content-Type: application/\r\n", &good),
    ] {
        assert!(check_mp(ct, &body).is_err(), "{body:?}");
    }
    // Folded Content-Type and extra headers are fine.
    assert_eq!(
        check_mp(ct, &mp("Content-Type:\r\n application/sdp\r\nContent-Disposition: session;handling=required\r\nContent-ID: <a@b>\r\n", &good)),
        Ok(Verdict::Accepted)
    );
    assert!(check_mp(ct, &mp("Content-Type:\r\n application/sdp\r\n", &bad)).is_err());
    // Headers that run to the end of the part: no body, so no SDP.
    assert_eq!(
        check_mp(ct, "--b1\r\nContent-Type: application/sdp\r\n--b1--\r\n"),
        Ok(Verdict::NoSdp)
    );
}

#[test]
fn multipart_part_limit() {
    let parts: Vec<(&str, &str)> = (0..=MAX_MULTIPART_PARTS)
        .map(|_| ("Content-Type: text/plain\r\n", "x"))
        .collect();
    assert!(check_mp("multipart/mixed;boundary=b1", &multipart("b1", &parts)).is_err());
    let parts = &parts[..MAX_MULTIPART_PARTS];
    assert_eq!(
        check_mp("multipart/mixed;boundary=b1", &multipart("b1", parts)),
        Ok(Verdict::NoSdp)
    );
}

#[test]
fn rfc4475_mpart01_body_is_no_sdp() {
    let message: &[u8] = include_bytes!("../../tests/data/sip-torture/rfc4475/mpart01.dat");
    let verdict = check_body(
        Some("multipart/mixed;boundary=7a9cbec02ceef655"),
        None,
        body_of(message),
        &MediaPolicy::default(),
        false,
    );
    assert_eq!(verdict, Ok(Verdict::NoSdp));
}

/// The body of a whole message from the torture corpus (after the blank line).
fn body_of(message: &[u8]) -> &[u8] {
    let split = find(message, b"\r\n\r\n", 0).map(|i| i + 4).unwrap_or(0);
    &message[split..]
}

#[test]
fn rfc4475_sdp_bodies_are_plain_rtp() {
    let message: &[u8] = include_bytes!("../../tests/data/sip-torture/rfc4475/sdp01.dat");
    let verdict = check_body(
        Some("application/sdp"),
        None,
        body_of(message),
        &MediaPolicy::default(),
        false,
    );
    assert!(verdict.is_err());
}

// --- realistic bodies -----------------------------------------------------------------

fn baresip_offer() -> String {
    format!(
        "v=0\r\n\
         o=- 2890844526 2890844526 IN IP4 192.0.2.10\r\n\
         s=-\r\n\
         c=IN IP4 192.0.2.10\r\n\
         t=0 0\r\n\
         m=audio 10000 RTP/SAVP 96 0 8 101\r\n\
         b=AS:64\r\n\
         a=rtpmap:96 opus/48000/2\r\n\
         a=fmtp:96 stereo=1;sprop-stereo=1\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-15\r\n\
         a=sendrecv\r\n\
         a=label:1\r\n\
         a=rtcp-rsize\r\n\
         a=ssrc:1459297613 cname:af4e4a4c-3f2f-4b44-9d9c-7c8d1bdc5e11\r\n\
         a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128}\r\n\
         a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY_128_B}\r\n\
         a=ptime:20\r\n"
    )
}

fn chrome_offer() -> String {
    format!(
        "v=0\r\n\
         o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
         s=-\r\n\
         t=0 0\r\n\
         a=group:BUNDLE 0 1\r\n\
         a=extmap-allow-mixed\r\n\
         a=msid-semantic: WMS 6b1a6c3e-2d5a-4f5e-9b8e-1d2c3b4a5f60\r\n\
         m=audio 52329 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n\
         c=IN IP4 203.0.113.7\r\n\
         a=rtcp:9 IN IP4 0.0.0.0\r\n\
         a=candidate:1467250027 1 udp 2122260223 192.168.1.20 52329 typ host generation 0 network-id 1 network-cost 10\r\n\
         a=candidate:435653019 1 udp 1686052607 203.0.113.7 52329 typ srflx raddr 192.168.1.20 rport 52329 generation 0 network-id 1 network-cost 10\r\n\
         a=candidate:2199032595 1 tcp 1518280447 192.168.1.20 9 typ host tcptype active generation 0 network-id 1 network-cost 10\r\n\
         a=ice-ufrag:Fs3v\r\n\
         a=ice-pwd:Zq0u1rQz9K8xXy2n2e+WbYQk\r\n\
         a=ice-options:trickle\r\n\
         a=fingerprint:sha-256 {FP_SHA256}\r\n\
         a=setup:actpass\r\n\
         a=mid:0\r\n\
         a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
         a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
         a=sendrecv\r\n\
         a=msid:6b1a6c3e-2d5a-4f5e-9b8e-1d2c3b4a5f60 0b3a7a7e-8c5a-4e0b-a4c1-2d9e3f4a5b6c\r\n\
         a=rtcp-mux\r\n\
         a=rtpmap:111 opus/48000/2\r\n\
         a=rtcp-fb:111 transport-cc\r\n\
         a=fmtp:111 minptime=10;useinbandfec=1\r\n\
         a=rtpmap:63 red/48000/2\r\n\
         a=fmtp:63 111/111\r\n\
         a=rtpmap:9 G722/8000\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:13 CN/8000\r\n\
         a=rtpmap:110 telephone-event/48000\r\n\
         a=rtpmap:126 telephone-event/8000\r\n\
         a=ssrc:3570614608 cname:4TOk42mSjXCkVIa6\r\n\
         a=ssrc:3570614608 msid:6b1a6c3e-2d5a-4f5e-9b8e-1d2c3b4a5f60 0b3a7a7e-8c5a-4e0b-a4c1-2d9e3f4a5b6c\r\n\
         m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103\r\n\
         c=IN IP4 0.0.0.0\r\n\
         a=rtcp:9 IN IP4 0.0.0.0\r\n\
         a=ice-ufrag:Fs3v\r\n\
         a=ice-pwd:Zq0u1rQz9K8xXy2n2e+WbYQk\r\n\
         a=ice-options:trickle\r\n\
         a=fingerprint:sha-256 {FP_SHA256}\r\n\
         a=setup:actpass\r\n\
         a=mid:1\r\n\
         a=sendrecv\r\n\
         a=rtcp-mux\r\n\
         a=rtcp-rsize\r\n\
         a=rtpmap:96 VP8/90000\r\n\
         a=rtcp-fb:96 goog-remb\r\n\
         a=rtcp-fb:96 transport-cc\r\n\
         a=rtcp-fb:96 ccm fir\r\n\
         a=rtcp-fb:96 nack\r\n\
         a=rtcp-fb:96 nack pli\r\n\
         a=rtpmap:97 rtx/90000\r\n\
         a=fmtp:97 apt=96\r\n\
         a=rtpmap:102 H264/90000\r\n\
         a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
         a=rtpmap:103 rtx/90000\r\n\
         a=fmtp:103 apt=102\r\n\
         a=ssrc-group:FID 2231627014 632943048\r\n\
         a=ssrc:2231627014 cname:4TOk42mSjXCkVIa6\r\n\
         a=ssrc:632943048 cname:4TOk42mSjXCkVIa6\r\n"
    )
}

fn asterisk_answer_sdes() -> String {
    format!(
        "v=0\r\n\
         o=- 1755536780 1755536782 IN IP4 198.51.100.5\r\n\
         s=Asterisk\r\n\
         c=IN IP4 198.51.100.5\r\n\
         t=0 0\r\n\
         m=audio 14562 RTP/SAVP 96 0 101\r\n\
         a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128_B}\r\n\
         a=rtpmap:96 opus/48000/2\r\n\
         a=fmtp:96 useinbandfec=1\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-16\r\n\
         a=ptime:20\r\n\
         a=maxptime:150\r\n\
         a=sendrecv\r\n"
    )
}

fn asterisk_answer_webrtc() -> String {
    format!(
        "v=0\r\n\
         o=- 1755536780 1755536782 IN IP4 198.51.100.5\r\n\
         s=Asterisk\r\n\
         c=IN IP4 198.51.100.5\r\n\
         t=0 0\r\n\
         a=msid-semantic:WMS *\r\n\
         a=group:BUNDLE 0\r\n\
         m=audio 14562 UDP/TLS/RTP/SAVPF 111 0 126\r\n\
         a=connection:new\r\n\
         a=setup:active\r\n\
         a=fingerprint:SHA-256 {FP_SHA256}\r\n\
         a=ice-ufrag:0f2d6c1e5b2a4e3b\r\n\
         a=ice-pwd:4b1f0c2e3d5a6b7c8d9e0f1a2b3c4d5e\r\n\
         a=candidate:Hc6336405 1 UDP 2130706431 198.51.100.5 14562 typ host\r\n\
         a=rtpmap:111 opus/48000/2\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:126 telephone-event/8000\r\n\
         a=fmtp:126 0-16\r\n\
         a=ptime:20\r\n\
         a=rtcp-mux\r\n\
         a=sendrecv\r\n\
         a=mid:0\r\n\
         m=video 0 UDP/TLS/RTP/SAVPF 96\r\n\
         a=mid:1\r\n"
    )
}

#[test]
fn realistic_baresip_offer() {
    for text in [baresip_offer(), baresip_offer().replace("\r\n", "\n")] {
        accepted(&text);
    }
    let policy = MediaPolicy::default();
    assert!(check_with(&baresip_offer(), &policy, true).is_err());
}

#[test]
fn realistic_chrome_offer() {
    let policy = MediaPolicy::default();
    for dtls in [true, false] {
        assert_eq!(
            check_with(&chrome_offer(), &policy, dtls),
            Ok(Verdict::Accepted),
            "require_dtls {dtls}"
        );
    }
    let stripped: String = chrome_offer()
        .split_inclusive("\r\n")
        .filter(|l| !l.starts_with("a=setup"))
        .collect();
    assert!(check_with(&stripped, &policy, true).is_err());
}

#[test]
fn realistic_asterisk_answers() {
    for text in [asterisk_answer_sdes(), asterisk_answer_webrtc()] {
        accepted(&text);
    }
    let policy = MediaPolicy::default();
    assert_eq!(
        check_with(&asterisk_answer_webrtc(), &policy, true),
        Ok(Verdict::Accepted)
    );
    // Asterisk falling back to plain RTP must never reach a client.
    let plain = asterisk_answer_sdes()
        .replace("RTP/SAVP", "RTP/AVP")
        .replace(
            &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128_B}\r\n"),
            "",
        );
    refused(&plain);
}

// --- refusal text and Warning header --------------------------------------------------

#[test]
fn refusals_never_carry_peer_text() {
    let texts = [
        crypto_line(&format!(
            "1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_128} UNENCRYPTED_SRTP"
        )),
        crypto_line(&format!("1 EVIL_SUITE inline:{KEY_128}")),
        sdp("m=audio 4000 EVIL/\"PROTO 0\r\n"),
        sdp("m=evil\"media 4000 RTP/SAVP 0\r\n"),
    ];
    for text in texts {
        let reason = refused(&text);
        assert!(
            !reason.contains(KEY_128) && !reason.contains("inline"),
            "{reason}"
        );
        assert!(
            !reason.contains("EVIL") && !reason.contains("evil"),
            "{reason}"
        );
    }
}

#[test]
fn warning_value_format() {
    let refusal = Refusal::new("media 1 (audio): RTP/AVP is not allowed, SRTP required");
    assert_eq!(
        warning_value("edge.example.com", &refusal),
        "399 edge.example.com \"media 1 (audio): RTP/AVP is not allowed, SRTP required\""
    );
    let odd = Refusal::new("a \"quoted\" back\\slash\r\nInjected: x\u{e9}");
    assert_eq!(
        warning_value("[2001:db8::1]:5061", &odd),
        "399 [2001:db8::1]:5061 \"a \\\"quoted\\\" back\\\\slash??Injected: x?\""
    );
    // An empty agent, or one with characters no host has, becomes "pbxguard".
    for host in ["bad host\r\n", ""] {
        assert!(
            warning_value(host, &refusal).starts_with("399 pbxguard \""),
            "{host:?}"
        );
    }
    let long = Refusal::new("x".repeat(1000));
    assert!(warning_value("h", &long).len() < 200);
}

#[test]
fn policy_default() {
    let policy = MediaPolicy::default();
    assert!(!policy.allow_t38);
    assert_eq!(policy.crypto_suites.len(), 6);
    assert!(!is_known_suite("NULL_HMAC_SHA1_80"));
}

// --- randomised -----------------------------------------------------------------------

/// A pjmedia-like reading (CR, LF and bare CR all end lines; spaces split m= fields): the
/// m-lines an accepting verdict implies must all be disabled or secure there too.
fn pjsip_like_active_protos(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|&b| b == b'\r' || b == b'\n')
        .filter(|line| line.starts_with(b"m="))
        .filter_map(|line| {
            let text = String::from_utf8_lossy(&line[2..]).into_owned();
            let mut fields = text.split(' ');
            let _media = fields.next()?;
            let port: String = fields
                .next()?
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            let active = port.bytes().any(|b| b != b'0');
            active.then(|| fields.next().unwrap_or("").to_ascii_uppercase())
        })
        .collect()
}

fn mutate(rng: &mut rand::rngs::StdRng, bytes: &mut Vec<u8>) {
    const INTERESTING: &[u8] = b"\r\n \t=:/0m-\0\x7f\xc3";
    for _ in 0..rng.gen_range(1..4) {
        if bytes.is_empty() {
            bytes.push(b'v');
        }
        let at = rng.gen_range(0..bytes.len());
        let byte = if rng.gen_bool(0.5) {
            INTERESTING[rng.gen_range(0..INTERESTING.len())]
        } else {
            rng.gen()
        };
        match rng.gen_range(0..4) {
            0 => bytes[at] = byte,
            1 => bytes.insert(at, byte),
            2 => {
                bytes.remove(at);
            }
            _ => {
                let end = (at + rng.gen_range(1..40)).min(bytes.len());
                let chunk = bytes[at..end].to_vec();
                let to = rng.gen_range(0..=bytes.len());
                bytes.splice(to..to, chunk);
            }
        }
    }
}

#[test]
fn randomised_mutations_never_panic_or_accept_insecure_media() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5d9_5d9);
    let policy = MediaPolicy {
        allow_t38: false,
        ..MediaPolicy::default()
    };
    let seeds = [
        baresip_offer(),
        chrome_offer(),
        asterisk_answer_sdes(),
        asterisk_answer_webrtc(),
    ];
    let secure = [
        "RTP/SAVP",
        "RTP/SAVPF",
        "UDP/TLS/RTP/SAVP",
        "UDP/TLS/RTP/SAVPF",
    ];
    for round in 0..4000 {
        let mut bytes = seeds[round % seeds.len()].clone().into_bytes();
        mutate(&mut rng, &mut bytes);
        let dtls = round % 3 == 0;
        if check_body(Some("application/sdp"), None, &bytes, &policy, dtls).is_ok() {
            for proto in pjsip_like_active_protos(&bytes) {
                assert!(
                    secure.contains(&proto.as_str()),
                    "accepted {proto}: {:?}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
        // The same bytes inside a multipart, and as a multipart body of their own.
        let mut wrapped = b"--b1\r\nContent-Type: application/sdp\r\n\r\n".to_vec();
        wrapped.extend_from_slice(&bytes);
        wrapped.extend_from_slice(b"\r\n--b1--\r\n");
        mutate(&mut rng, &mut wrapped);
        let _ = check_body(
            Some("multipart/mixed;boundary=b1"),
            None,
            &wrapped,
            &policy,
            dtls,
        );
        let _ = check_body(
            Some("multipart/mixed;boundary=b1"),
            None,
            &bytes,
            &policy,
            dtls,
        );
    }
}
