//! `pbxguard audit asterisk` on sample trees (templates, includes) and on the shipped
//! examples, through the real binary.

mod common;
use common::*;

use std::path::Path;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/asterisk");
const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/asterisk");

fn audit(dir: &Path, json: bool) -> (i32, String, String) {
    let dir = dir.display().to_string();
    let mut args = vec!["audit", "asterisk", "--dir", &dir];
    if json {
        args.push("--json");
    }
    // No pbxguard configuration is needed to audit Asterisk's.
    let out = std::process::Command::new(BIN)
        .args(["-c", "/nonexistent/pbxguard.toml"])
        .args(&args)
        .output()
        .expect("run pbxguard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn findings(dir: &Path) -> (i32, Vec<serde_json::Value>) {
    let (code, out, err) = audit(dir, true);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}{err}"));
    (code, v.as_array().expect("an array").clone())
}

/// (severity, file, line, object) of every finding whose message contains `needle`.
fn find<'a>(all: &'a [serde_json::Value], needle: &str) -> Vec<&'a serde_json::Value> {
    all.iter()
        .filter(|f| f["message"].as_str().unwrap_or("").contains(needle))
        .collect()
}

fn has(all: &[serde_json::Value], sev: &str, file: &str, line: u64, object: &str, needle: &str) {
    let hit = find(all, needle).into_iter().any(|f| {
        f["severity"] == sev && f["file"] == file && f["line"] == line && f["object"] == object
    });
    assert!(
        hit,
        "no {sev} finding {file}:{line} [{object}] containing {needle:?} in\n{}",
        serde_json::to_string_pretty(all).unwrap()
    );
}

#[test]
fn an_insecure_tree_gets_every_finding_with_file_and_line() {
    let (code, all) = findings(&Path::new(DATA).join("insecure"));
    assert_eq!(code, 1, "high findings exit 1");
    for f in &all {
        for key in ["severity", "file", "line", "object", "message", "fix"] {
            assert!(f.get(key).is_some(), "{key} missing in {f}");
        }
        assert!(!f["fix"].as_str().unwrap().is_empty());
    }
    // pjsip.conf: transports on every address without TLS.
    has(
        &all,
        "high",
        "pjsip.conf",
        8,
        "transport-udp",
        "0.0.0.0:5060 with udp",
    );
    has(&all, "high", "pjsip.conf", 13, "transport-tcp", "with tcp");
    // Endpoints, through the template (line of the template's setting) and the include.
    let ep = "pjsip.d/endpoints.conf";
    has(&all, "high", ep, 6, "1001", "media_encryption=no");
    has(
        &all,
        "high",
        ep,
        15,
        "1002",
        "SDES keys are sent in the SDP over a udp transport",
    );
    has(
        &all,
        "medium",
        ep,
        22,
        "webphone",
        "media_encryption_optimistic=yes",
    );
    has(
        &all,
        "medium",
        ep,
        20,
        "webphone",
        "webrtc=yes without a WSS transport",
    );
    has(
        &all,
        "high",
        ep,
        24,
        "trunk",
        "without auth accepts calls from any address",
    );
    has(&all, "high", ep, 27, "trunk", "over a tcp transport");
    has(&all, "high", ep, 34, "1001", "weak SIP password");
    has(&all, "low", ep, 34, "1001", "plaintext");
    has(&all, "high", ep, 39, "1002", "weak SIP password");
    // The template itself is not an endpoint.
    assert!(all.iter().all(|f| f["object"] != "endpoint-tpl"));
    // manager.conf.
    has(
        &all,
        "high",
        "manager.conf",
        4,
        "general",
        "AMI listens on 0.0.0.0",
    );
    has(
        &all,
        "high",
        "manager.conf",
        5,
        "general",
        "webenabled=yes while http.conf serves plain HTTP",
    );
    has(&all, "high", "manager.conf", 10, "admin", "write class all");
    has(&all, "high", "manager.conf", 8, "admin", "shorter than 16");
    has(
        &all,
        "medium",
        "manager.conf",
        7,
        "admin",
        "from any address",
    );
    has(
        &all,
        "medium",
        "manager.conf",
        17,
        "dialer",
        "write class originate",
    );
    assert!(find(&all, "from any address")
        .iter()
        .all(|f| f["object"] != "dialer"));
    has(
        &all,
        "high",
        "manager.conf",
        24,
        "wallboard",
        "write class all",
    );
    assert_eq!(
        find(&all, "write class")
            .iter()
            .filter(|f| f["object"] == "wallboard")
            .count(),
        1,
        "`all` is reported once"
    );
    // http.conf.
    has(
        &all,
        "high",
        "http.conf",
        3,
        "general",
        "plain HTTP on 0.0.0.0 serves the manager",
    );
    // Sorted: high first.
    let sev: Vec<&str> = all
        .iter()
        .map(|f| f["severity"].as_str().unwrap())
        .collect();
    let rank = |s: &str| {
        ["high", "medium", "low"]
            .iter()
            .position(|x| *x == s)
            .unwrap()
    };
    assert!(sev.windows(2).all(|w| rank(w[0]) <= rank(w[1])), "{sev:?}");

    // The text form says the same, one finding per entry with its fix.
    let (code, text, _) = audit(&Path::new(DATA).join("insecure"), false);
    assert_eq!(code, 1);
    assert!(
        text.contains("HIGH   pjsip.conf:8 [transport-udp]"),
        "{text}"
    );
    assert!(text.contains("fix: "), "{text}");
}

#[test]
fn a_secure_tree_has_no_high_finding() {
    let (code, all) = findings(&Path::new(DATA).join("secure"));
    assert_eq!(code, 0, "{all:#?}");
    assert!(all.iter().all(|f| f["severity"] != "high"), "{all:#?}");
    // The one thing left to think about: the gateway's upstream may originate.
    assert_eq!(find(&all, "write class originate").len(), 1, "{all:#?}");
}

#[test]
fn the_shipped_examples_pass() {
    let (code, all) = findings(Path::new(SHIPPED));
    assert_eq!(code, 0, "{all:#?}");
    assert!(all.iter().all(|f| f["severity"] != "high"), "{all:#?}");
}

#[test]
fn broken_trees_are_reported_not_guessed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pjsip.conf"),
        "[a](missing-tpl)\ntype=endpoint\nauth=a\nmedia_encryption=dtls\n#include nothere.conf\n",
    )
    .unwrap();
    let (code, all) = findings(dir.path());
    assert_eq!(code, 0, "parse problems are medium: {all:#?}");
    has(
        &all,
        "medium",
        "pjsip.conf",
        1,
        "",
        "inherits from [missing-tpl]",
    );
    has(&all, "medium", "pjsip.conf", 5, "", "nothere.conf");

    // No Asterisk files at all, or no folder: a usage error, not a clean bill of health.
    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = audit(empty.path(), false);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("no pjsip.conf, manager.conf or http.conf"),
        "{err}"
    );
    let (code, _, err) = audit(&empty.path().join("nope"), true);
    assert_eq!(code, 64);
    assert!(err.contains("is not a folder"), "{err}");
}
