//! The fuzz targets' checks (fuzz/src/checks.rs) over the committed seed corpora and every
//! saved crash (fuzz/regressions/<target>/), so each input that ever failed stays a test.
//! The fuzzing itself runs from fuzz/ (see docs/fuzzing.md).

#[path = "../fuzz/src/checks.rs"]
#[allow(dead_code)]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Runs `check` over every file of `dir`; the names of the failing ones.
fn failures(dir: &Path, check: fn(&[u8])) -> (usize, Vec<String>) {
    let files = inputs(dir);
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap();
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(f.display().to_string());
        }
    }
    (files.len(), failed)
}

fn clear_scratch() {
    let mark = format!("-{}-", std::process::id());
    for e in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("pbxguard-fuzz-") && name.contains(&mark) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[test]
fn seeds_and_saved_crashes_pass_every_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failed = Vec::new();
    for (name, check) in checks::TARGETS {
        let (seeds, bad) = failures(&root.join("seeds").join(name), *check);
        assert!(seeds > 0, "no seeds for {name}: run fuzz/make-seeds.py");
        failed.extend(bad);
        let (_, bad) = failures(&root.join("regressions").join(name), *check);
        failed.extend(bad);
    }
    clear_scratch();
    assert!(failed.is_empty(), "failing inputs: {failed:#?}");
}

/// Every fuzz target has its seeds, and every seed folder belongs to a target.
#[test]
fn every_target_is_listed_once() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut listed: Vec<&str> = checks::TARGETS.iter().map(|(n, _)| *n).collect();
    listed.sort();
    let mut files: Vec<String> = inputs(&root.join("fuzz_targets"))
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().to_string())
        .collect();
    files.sort();
    assert_eq!(listed, files);
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for name in &listed {
        assert!(manifest.contains(&format!("name = \"{name}\"")), "{name}");
    }
}

/// The properties can fail: each independent rule flags what it is about.
#[test]
fn the_independent_rules_see_what_they_are_about() {
    let plain = "v=0\r\ns=-\r\nm=audio 4000 RTP/AVP 0\r\n";
    assert!(checks::forbidden_media(plain, false).is_some());
    let sdes =
        "v=0\r\nm=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:abc\r\n";
    assert_eq!(checks::forbidden_media(sdes, false), None);
    assert!(
        checks::forbidden_media(sdes, true).is_some(),
        "SDES on a WebSocket"
    );
    let weak = sdes.replace("inline:abc", "inline:abc UNENCRYPTED_SRTP");
    assert!(checks::forbidden_media(&weak, false).is_some());
    assert_eq!(
        checks::forbidden_media("v=0\r\nm=audio 0 RTP/AVP 0\r\n", false),
        None,
        "a disabled stream"
    );

    let msg = |lines: &[&str]| pbxguard::ami::codec::Message {
        lines: lines.iter().map(|l| l.as_bytes().to_vec()).collect(),
        ..Default::default()
    };
    let system = msg(&["Action: Originate", "Application: Tr\\ySys\"tem"]);
    assert!(checks::ami_forbidden("originate", &system).is_some());
    let shell = msg(&["Action: Setvar", "Value: ${S\\HELL (id)}"]);
    assert!(checks::ami_forbidden("setvar", &shell).is_some());
    let fine = msg(&[
        "Action: Setvar",
        "Value: ${MYSHELL(id)}",
        "ActionID: SHELL(x)",
    ]);
    assert_eq!(checks::ami_forbidden("setvar", &fine), None);
    let conf = msg(&["Action: GetConfig", "Filename: ../x.conf"]);
    assert!(checks::ami_forbidden("getconfig", &conf).is_some());

    assert!(checks::lands_under_admin("/monitoring/..%2fadmin/users"));
    assert!(checks::lands_under_admin("\\Admin"));
    assert!(!checks::lands_under_admin("/monitoring?x=/admin"));
    assert!(!checks::lands_under_admin("/%252e%252e/admin"));
}

/// The SDP target's property really runs the policy: an accepted body would have panicked
/// the check if the policy had let plain RTP through (proved on a body the policy refuses).
#[test]
fn a_refused_body_is_not_judged_by_the_independent_rule() {
    let plain = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    let policy = pbxguard::sip::sdp::MediaPolicy::default();
    assert!(pbxguard::sip::sdp::check_sdp(plain, &policy, false).is_err());
    checks::sdp_policy(plain);
}
