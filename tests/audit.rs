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
    // webrtc=yes, not identified by pbxguard's header: browsers come to Asterisk's own /ws,
    // here on the plain HTTP server (below). The old advice, a WSS transport in Asterisk, would
    // lead them around pbxguard's edge.
    assert!(find(&all, "without a WSS transport").is_empty(), "{all:#?}");
    has(
        &all,
        "medium",
        ep,
        46,
        "gateway",
        "DTLS-SRTP without dtls_verify (the default is no)",
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
        "plain HTTP on 0.0.0.0 serves the manager and WebSockets",
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
    // Asterisk's own WSS transport, with http.conf's TLS server on the network: browsers can
    // get around pbxguard's edge.
    has(
        &all,
        "medium",
        "pjsip.conf",
        11,
        "transport-wss",
        "Asterisk takes SIP over WebSocket itself (http.conf serves 0.0.0.0:8089)",
    );
    // webrtc=yes endpoints: DTLS with the fingerprint checked, whatever they say.
    assert!(find(&all, "DTLS-SRTP").is_empty(), "{all:#?}");
}

/// A change an admin makes to one of the examples: (file name, text) -> text.
type Edit = Box<dyn Fn(&str, String) -> String>;

/// The shipped examples copied into a folder, with `edit` applied to (file, text).
fn shipped_variant(edit: impl Fn(&str, String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "pjsip.conf",
        "manager.conf",
        "extconfig.conf",
        "sorcery.conf",
        "extensions.conf",
    ] {
        let text = std::fs::read_to_string(Path::new(SHIPPED).join(name)).unwrap();
        std::fs::write(dir.path().join(name), edit(name, text)).unwrap();
    }
    dir
}

#[test]
fn the_shipped_examples_pass() {
    let (code, all) = findings(Path::new(SHIPPED));
    assert_eq!(code, 0, "{all:#?}");
    assert!(all.iter().all(|f| f["severity"] == "low"), "{all:#?}");
}

#[test]
fn every_documented_variant_of_the_examples_passes() {
    // What the admin guide and the examples' comments tell an admin to change.
    let variants: Vec<(&str, Edit)> = vec![
        (
            "command for a client that needs Command",
            Box::new(|f, t| {
                if f == "manager.conf" {
                    t.replace("reporting,originate", "reporting,originate,command")
                } else {
                    t
                }
            }),
        ),
        (
            "TCP towards Asterisk",
            Box::new(|f, t| {
                if f == "pjsip.conf" {
                    t.replace("protocol = udp", "protocol = tcp")
                } else {
                    t
                }
            }),
        ),
        (
            "the site's real PBX address",
            Box::new(|_, t| t.replace("192.0.2.10", "198.51.100.7")),
        ),
    ];
    for (what, edit) in variants {
        let dir = shipped_variant(edit);
        let (code, all) = findings(dir.path());
        assert_eq!(code, 0, "{what}: {all:#?}");
        assert!(
            all.iter().all(|f| f["severity"] == "low"),
            "{what}: {all:#?}"
        );
    }
    // Command is reported, as low, and says why it is tolerable.
    let dir = shipped_variant(|f, t| {
        if f == "manager.conf" {
            t.replace("reporting,originate", "reporting,originate,command")
        } else {
            t
        }
    });
    let (_, all) = findings(dir.path());
    let cmd = find(&all, "write class command");
    assert_eq!(cmd.len(), 1, "{all:#?}");
    assert_eq!(cmd[0]["severity"], "low");
    // The same classes on a manager reachable from the network stay what they were.
    let dir = shipped_variant(|f, t| {
        if f == "manager.conf" {
            t.replace("reporting,originate", "reporting,originate,command")
                .replace("bindaddr = 127.0.0.1", "bindaddr = 0.0.0.0")
        } else {
            t
        }
    });
    let (code, all) = findings(dir.path());
    assert_eq!(code, 1, "{all:#?}");
    assert_eq!(find(&all, "write class command")[0]["severity"], "high");
    assert_eq!(find(&all, "write class originate")[0]["severity"], "medium");
    // Nor on a loopback manager that is also served over HTTP (webenabled): its users are
    // reachable without the gateway.
    let dir = shipped_variant(|f, t| {
        if f == "manager.conf" {
            t.replace("reporting,originate", "reporting,originate,command")
                .replace("webenabled = no", "webenabled = yes")
        } else {
            t
        }
    });
    let (_, all) = findings(dir.path());
    assert_eq!(
        find(&all, "write class command")[0]["severity"],
        "high",
        "{all:#?}"
    );
    // system stays high even on loopback.
    let dir = shipped_variant(|f, t| {
        if f == "manager.conf" {
            t.replace("reporting,originate", "reporting,originate,system")
        } else {
            t
        }
    });
    let (code, all) = findings(dir.path());
    assert_eq!(code, 1, "{all:#?}");
    assert_eq!(find(&all, "write class system")[0]["severity"], "high");
}

#[test]
fn media_bound_to_the_loopback_transport_is_reported() {
    // Without media_address/bind_rtp_to_media_address: RTP on 127.0.0.1.
    let dir = shipped_variant(|f, t| {
        if f == "pjsip.conf" {
            t.lines()
                .filter(|l| !l.starts_with("media_address") && !l.starts_with("bind_rtp_to"))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            t
        }
    });
    let (code, all) = findings(dir.path());
    assert_eq!(code, 0, "medium only: {all:#?}");
    let hits = find(&all, "phones off this host get no audio");
    let objects: Vec<&str> = hits.iter().map(|f| f["object"].as_str().unwrap()).collect();
    assert_eq!(objects, ["1001", "2001"], "{all:#?}");
    assert!(hits.iter().all(|f| f["severity"] == "medium"));
    // A loopback media_address is no better.
    let dir = shipped_variant(|_, t| t.replace("192.0.2.10", "127.0.0.1"));
    let (_, all) = findings(dir.path());
    let hits = find(&all, "media_address 127.0.0.1 is a loopback address");
    assert_eq!(hits.len(), 2, "{all:#?}");
    // media_address without bind_rtp_to_media_address leaves the socket on loopback.
    let dir = shipped_variant(|_, t| t.replace("bind_rtp_to_media_address = yes", ""));
    let (_, all) = findings(dir.path());
    assert_eq!(
        find(&all, "phones off this host get no audio").len(),
        2,
        "{all:#?}"
    );
}

/// The example's `webrtc = yes` spelled out, as an admin might write it instead.
const WEBRTC_SPELLED_OUT: &str = "media_encryption = dtls\ndtls_auto_generate_cert = yes\n\
    dtls_setup = actpass\ndtls_verify = fingerprint\nuse_avpf = yes\nice_support = yes\n\
    bundle = yes\nrtcp_mux = yes\nmedia_use_received_transport = yes";

/// The findings in `dir`, after checking that one is a `sev` finding on pjsip.conf's `line`
/// about `object` whose message contains `needle`.
fn pjsip_finding(
    dir: &Path,
    sev: &str,
    line: u64,
    object: &str,
    needle: &str,
) -> (i32, Vec<serde_json::Value>) {
    let (code, all) = findings(dir);
    has(&all, sev, "pjsip.conf", line, object, needle);
    (code, all)
}

/// The 1-based line of pjsip.conf in `dir` that reads exactly `text`.
fn line_of_text(dir: &Path, text: &str) -> u64 {
    let conf = std::fs::read_to_string(dir.join("pjsip.conf")).unwrap();
    let index = conf.lines().position(|l| l == text);
    index.unwrap_or_else(|| panic!("no line {text:?} in\n{conf}")) as u64 + 1
}

/// An edit of the examples' pjsip.conf only.
fn on_pjsip(edit: impl Fn(String) -> String) -> impl Fn(&str, String) -> String {
    move |f, t| if f == "pjsip.conf" { edit(t) } else { t }
}

/// The shipped pjsip.conf with `webrtc = yes` replaced by `with`.
fn without_webrtc_yes(with: &str) -> impl Fn(&str, String) -> String {
    let with = with.to_string();
    on_pjsip(move |t| {
        assert!(t.contains("\nwebrtc = yes\n"), "pjsip.conf example changed");
        t.replace("\nwebrtc = yes\n", &format!("\n{with}\n"))
    })
}

#[test]
fn dtls_without_fingerprint_verification_is_reported() {
    // The browser endpoint as shipped, and with webrtc=yes spelled out: no finding.
    let (_, all) = findings(Path::new(SHIPPED));
    assert!(all.iter().all(|f| f["object"] != "2001"), "{all:#?}");
    let dir = shipped_variant(without_webrtc_yes(WEBRTC_SPELLED_OUT));
    let (code, all) = findings(dir.path());
    assert_eq!(code, 0, "{all:#?}");
    assert!(all.iter().all(|f| f["object"] != "2001"), "{all:#?}");

    // dtls_verify = no: medium, at that line.
    let weak = WEBRTC_SPELLED_OUT.replace("dtls_verify = fingerprint", "dtls_verify = no");
    let dir = shipped_variant(without_webrtc_yes(&weak));
    let line = line_of_text(dir.path(), "dtls_verify = no");
    let (code, all) = pjsip_finding(
        dir.path(),
        "medium",
        line,
        "2001",
        "DTLS-SRTP with dtls_verify=no: the peer's certificate is not checked",
    );
    assert_eq!(code, 0, "medium only: {all:#?}");
    assert_eq!(find(&all, "DTLS-SRTP").len(), 1, "{all:#?}");

    // Left out: pjsip's default is no; reported at media_encryption.
    let unset = WEBRTC_SPELLED_OUT.replace("dtls_verify = fingerprint\n", "");
    let dir = shipped_variant(without_webrtc_yes(&unset));
    let line = line_of_text(dir.path(), "media_encryption = dtls");
    pjsip_finding(
        dir.path(),
        "medium",
        line,
        "2001",
        "DTLS-SRTP without dtls_verify (the default is no)",
    );

    // webrtc=yes forces the fingerprint check whatever the endpoint says (proven against
    // Asterisk in `asterisk_loads_the_browser_endpoint_as_webrtc_yes_sets_it`).
    let dir = shipped_variant(on_pjsip(|t| {
        format!("{t}\n[2001](+type=endpoint)\ndtls_verify = no\n")
    }));
    let (_, all) = findings(dir.path());
    assert!(find(&all, "DTLS-SRTP").is_empty(), "{all:#?}");
}

#[test]
fn only_a_websocket_in_asterisk_itself_is_a_way_around_the_edge() {
    // The shipped browser endpoint: webrtc=yes, identified by pbxguard's header, no WebSocket
    // transport in Asterisk, and http.conf on loopback (or absent): nothing about browsers.
    let dir = shipped_variant(|_, t| t);
    std::fs::write(
        dir.path().join("http.conf"),
        "[general]\nenabled = yes\nbindaddr = 127.0.0.1\n",
    )
    .unwrap();
    let (code, all) = findings(dir.path());
    assert_eq!(code, 0, "{all:#?}");
    assert!(find(&all, "/ws").is_empty(), "{all:#?}");
    assert!(find(&all, "WebSocket").is_empty(), "{all:#?}");
    // Asterisk's HTTPS on the network: calling browsers needs res_pjsip_transport_websocket,
    // which then answers SIP on Asterisk's own /ws even without a WebSocket transport.
    let https = "[general]\nenabled = yes\nbindaddr = 127.0.0.1\ntlsenable = yes\n\
                 tlsbindaddr = 0.0.0.0:8089\n";
    let dir = shipped_variant(|_, t| t);
    std::fs::write(dir.path().join("http.conf"), https).unwrap();
    let (_, all) = findings(dir.path());
    let module = find(&all, "Asterisk takes SIP on its own /ws");
    assert_eq!(module.len(), 1, "{all:#?}");
    assert_eq!(module[0]["severity"], "medium", "{all:#?}");

    // An Asterisk WSS transport added: browsers can sign in there, around the edge.
    let wss = on_pjsip(|t| {
        format!("{t}\n[transport-wss]\ntype = transport\nprotocol = wss\nbind = 0.0.0.0\n")
    });
    let dir = shipped_variant(&wss);
    std::fs::write(dir.path().join("http.conf"), https).unwrap();
    let line = line_of_text(dir.path(), "protocol = wss");
    let bypass = "Asterisk takes SIP over WebSocket itself (http.conf serves 0.0.0.0:8089): \
                  browsers that connect there get around pbxguard's edge";
    let (code, all) = pjsip_finding(dir.path(), "medium", line, "transport-wss", bypass);
    assert_eq!(code, 0, "medium: {all:#?}");
    assert_eq!(find(&all, "WebSocket").len(), 1, "{all:#?}");
    // The TLS server falls back to the plain server's address when tlsbindaddr is unset.
    let dir = shipped_variant(&wss);
    std::fs::write(
        dir.path().join("http.conf"),
        "[general]\nenabled = yes\nbindaddr = 198.51.100.7\ntlsenable = yes\n",
    )
    .unwrap();
    pjsip_finding(
        dir.path(),
        "medium",
        line,
        "transport-wss",
        "http.conf serves 198.51.100.7",
    );
    // With Asterisk's HTTP server on loopback only (or no http.conf: no server at all) the
    // transport reaches nobody yet: low.
    let local = "[general]\nenabled = yes\nbindaddr = 127.0.0.1\ntlsenable = yes\n\
                 tlsbindaddr = [::1]:8089\n";
    let unused = "Asterisk WebSocket transport: unused while Asterisk's HTTP server (http.conf) faces no network";
    for http in [Some(local), None] {
        let dir = shipped_variant(&wss);
        if let Some(h) = http {
            std::fs::write(dir.path().join("http.conf"), h).unwrap();
        }
        let (code, all) = pjsip_finding(dir.path(), "low", line, "transport-wss", unused);
        assert_eq!(code, 0, "{all:#?}");
        assert!(all.iter().all(|f| f["severity"] == "low"), "{all:#?}");
    }
}

/// `pjsip show endpoint NAME` as (option, value) pairs.
fn endpoint_options(ast: &common::asterisk::Asterisk, name: &str) -> Vec<(String, String)> {
    ast.cli(&format!("pjsip show endpoint {name}"))
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(" : ")?;
            let k = k.trim();
            (!k.is_empty() && !k.contains(' ')).then(|| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

/// The shipped `[2001]` in a real Asterisk 22 has what webrtc=yes sets, and a later
/// `dtls_verify = no` cannot take the fingerprint check away; the same line on the spelled-out
/// form does, and there the audit reports it.
#[test]
fn asterisk_loads_the_browser_endpoint_as_webrtc_yes_sets_it() {
    use common::asterisk::{Asterisk, Setup};
    let Some(prefix) = common::asterisk::prefix() else {
        return;
    };
    let expected = [
        ("webrtc", "yes"),
        ("media_encryption", "dtls"),
        ("dtls_verify", "Fingerprint"),
        ("dtls_setup", "actpass"),
        ("dtls_auto_generate_cert", "Yes"),
        ("dtls_rekey", "0"),
        ("use_avpf", "true"),
        ("ice_support", "true"),
        ("bundle", "true"),
        ("rtcp_mux", "true"),
        ("media_use_received_transport", "true"),
        ("identify_by", "header,username"),
        ("auth", "2001"),
        ("aors", "2001"),
        ("transport", "transport-loopback"),
        ("bind_rtp_to_media_address", "true"),
        ("media_address", "192.0.2.10"),
    ];
    let weakened = "\n[2001](+type=endpoint)\ndtls_verify = no\ndtls_setup = active\n\
                    media_encryption = sdes\nbundle = no\nrtcp_mux = no\ndtls_fingerprint = SHA-1\n";
    for extra in ["", weakened] {
        let ast = Asterisk::start(
            &prefix,
            &Setup {
                pjsip: true,
                pjsip_extra: extra.into(),
                media_address: "192.0.2.10".into(),
                ..Setup::default()
            },
        );
        let got = endpoint_options(&ast, "2001");
        // The added lines were read: what webrtc=yes does not set took their value.
        let fingerprint = if extra.is_empty() { "SHA-256" } else { "SHA-1" };
        assert!(
            got.iter()
                .any(|(k, v)| k == "dtls_fingerprint" && v == fingerprint),
            "{got:#?}"
        );
        for (k, v) in expected {
            assert!(
                got.iter().any(|(gk, gv)| gk == k && gv == v),
                "{k} is not {v} (with {extra:?}):\n{got:#?}"
            );
        }
        // The identify section Asterisk loaded matches the edge's header.
        let identify = ast.cli("pjsip show identifies");
        assert!(identify.contains("X-PBXGuard-Identity: 2001"), "{identify}");
        // And the audit, on the very files Asterisk runs with, has nothing to say about 2001.
        let (_, all) = findings(&ast.etc());
        assert!(all.iter().all(|f| f["object"] != "2001"), "{all:#?}");
    }
    // Spelled out without webrtc=yes, dtls_verify = no is what Asterisk runs with: the audit
    // reports it.
    let ast = Asterisk::start(
        &prefix,
        &Setup {
            pjsip: true,
            pjsip_extra: "\n[2001](+type=endpoint)\nwebrtc = no\nmedia_encryption = dtls\n\
                          dtls_auto_generate_cert = yes\ndtls_verify = no\n"
                .into(),
            media_address: "192.0.2.10".into(),
            ..Setup::default()
        },
    );
    let got = endpoint_options(&ast, "2001");
    assert!(
        got.iter().any(|(k, v)| k == "dtls_verify" && v == "No"),
        "{got:#?}"
    );
    let (_, all) = findings(&ast.etc());
    assert_eq!(
        find(&all, "DTLS-SRTP with dtls_verify=no")
            .iter()
            .filter(|f| f["object"] == "2001")
            .count(),
        1,
        "{all:#?}"
    );
}

/// A finding as one line: `severity file:line [object] message`.
fn line_of(f: &serde_json::Value) -> String {
    format!(
        "{} {}:{} [{}] {}",
        f["severity"].as_str().unwrap(),
        f["file"].as_str().unwrap(),
        f["line"],
        f["object"].as_str().unwrap(),
        f["message"].as_str().unwrap()
    )
}

/// Asterisk 22's own configuration trees, from the build `PBXGUARD_ASTERISK` names.
fn asterisk_configs(tree: &str) -> Option<std::path::PathBuf> {
    let dir = common::asterisk::prefix()?.join("share/configs").join(tree);
    assert!(
        dir.is_dir(),
        "{} missing: rerun tests/asterisk/build.sh",
        dir.display()
    );
    Some(dir)
}

/// `configs/samples/`: every one of Asterisk's sample files parses without a reader problem,
/// and as shipped (manager and HTTP off or on loopback, every pjsip object commented out) they
/// give no finding at all.
#[test]
fn asterisk_sample_configs_parse_without_a_reader_problem() {
    let Some(samples) = asterisk_configs("samples") else {
        return;
    };
    // Asterisk names them NAME.conf.sample; the audit reads NAME.conf.
    let dir = tempfile::tempdir().unwrap();
    let mut count = 0;
    for e in std::fs::read_dir(&samples).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(base) = name.strip_suffix(".sample") {
            std::fs::copy(e.path(), dir.path().join(base)).unwrap();
            count += 1;
        }
    }
    assert!(count > 100, "only {count} samples");
    let (code, all) = findings(dir.path());
    let lines: Vec<String> = all.iter().map(line_of).collect();
    assert!(lines.is_empty(), "{lines:#?}");
    assert_eq!(code, 0);
    // The reader did see them: with manager.conf's [general] switched on, its 0.0.0.0 bind is
    // found at the line the sample has it.
    let manager = std::fs::read_to_string(dir.path().join("manager.conf")).unwrap();
    let enabled_line = manager
        .lines()
        .position(|l| l.trim() == "enabled = no")
        .expect("the sample disables the manager")
        + 1;
    std::fs::write(
        dir.path().join("manager.conf"),
        manager.replacen("enabled = no", "enabled = yes", 1),
    )
    .unwrap();
    let (code, all) = findings(dir.path());
    assert_eq!(code, 1, "{all:#?}");
    let bind_line = manager
        .lines()
        .position(|l| l.trim() == "bindaddr = 0.0.0.0")
        .expect("sample bindaddr")
        + 1;
    let lines: Vec<String> = all.iter().map(line_of).collect();
    assert_eq!(
        lines,
        [format!(
            "high manager.conf:{bind_line} [general] AMI listens on 0.0.0.0: the manager interface is reachable from the network"
        )],
        "enabled= is at line {enabled_line}"
    );
}

/// `configs/basic-pbx/`, Asterisk's realistic starting point for a small office PBX: the
/// findings are exactly the list in `tests/data/asterisk/basic-pbx-findings.txt`.
#[test]
fn asterisk_basic_pbx_gives_the_expected_findings() {
    let Some(dir) = asterisk_configs("basic-pbx") else {
        return;
    };
    let (code, all) = findings(&dir);
    let got: Vec<String> = all.iter().map(line_of).collect();
    let expected: Vec<String> = include_str!("data/asterisk/basic-pbx-findings.txt")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    assert_eq!(
        got,
        expected,
        "findings on basic-pbx changed:\n{}",
        got.join("\n")
    );
    assert_eq!(code, 1);
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
        err.contains("no pjsip.conf, manager.conf, http.conf or extensions.conf"),
        "{err}"
    );
    let (code, _, err) = audit(&empty.path().join("nope"), true);
    assert_eq!(code, 64);
    assert!(err.contains("is not a folder"), "{err}");
}

/// The dialplan findings among `all`: what the checks on extensions.conf (and the guest
/// endpoints that reach a trunk, and AMI clients) report.
fn dialplan_findings(all: &[serde_json::Value]) -> Vec<String> {
    all.iter()
        .filter(|f| {
            let m = f["message"].as_str().unwrap();
            f["file"] != "pjsip.conf" && f["file"] != "manager.conf"
                || m.contains("reaches a Dial() to a trunk")
        })
        .map(line_of)
        .collect()
}

#[test]
fn a_vulnerable_dialplan_gets_every_dialplan_finding() {
    let dir = Path::new(DATA).join("dialplan");
    let (code, all) = findings(&dir);
    assert_eq!(code, 1, "{all:#?}");
    // System() through a Goto from the phones' context.
    has(
        &all,
        "high",
        "extensions.conf",
        25,
        "admin-tools",
        "System() runs a shell command, and callers reach it: endpoint 1001 → [phones] → Goto [admin-tools] s (extensions.conf:13)",
    );
    // TrySystem() through include => chains that loop (internal → loop-a ⇄ loop-b), in an
    // #include'd file.
    has(
        &all,
        "high",
        "extensions.d/loops.conf",
        7,
        "loop-b",
        "TrySystem() runs a shell command, and callers reach it: endpoint 1001 → [phones] → include => [internal] (extensions.conf:11) → include => [loop-a] (extensions.conf:18) → include => [loop-b] (extensions.d/loops.conf:3)",
    );
    // `_.` into Dial(PJSIP/${EXTEN}): dialplan injection.
    has(
        &all,
        "high",
        "extensions.conf",
        16,
        "internal",
        "Dial() takes ${EXTEN} from pattern _. which admits characters outside 0-9*#+",
    );
    // `_X.` to the carrier (through the [globals] TRUNK), reachable from the phones.
    has(
        &all,
        "medium",
        "extensions.conf",
        21,
        "outbound",
        "pattern _X. sends whatever number the caller dials to trunk carrier with no fixed prefix",
    );
    // The anonymous endpoint's context reaches the trunk: reported on its context= line.
    has(
        &all,
        "high",
        "pjsip.conf",
        26,
        "anonymous",
        "the anonymous endpoint takes every caller pjsip cannot identify, and its context reaches a Dial() to a trunk (extensions.conf:21): [public] → include => [outbound] (extensions.conf:32)",
    );
    for f in &all {
        assert!(!f["fix"].as_str().unwrap().is_empty(), "{f}");
    }
    // And nothing else: not the SHELL() of the extension the Goto does not reach, not the
    // System() of a context nobody reaches, not sales (no AMI client here), not `_X.` for
    // injection or the carrier's own `_X.` (it jumps, it does not dial).
    // Asterisk runs `h` in the context the Goto put the call in.
    has(
        &all,
        "high",
        "extensions.conf",
        48,
        "admin-tools",
        "TrySystem() runs a shell command, and callers reach it: endpoint 1001 → [phones] → Goto [admin-tools] h (extensions.conf:13)",
    );
    // Dial's U() runs a subroutine: an AGI program there.
    has(
        &all,
        "medium",
        "extensions.conf",
        57,
        "screen",
        "AGI() runs the program /usr/local/bin/screen.agi on the host, and callers reach it: endpoint 1001 → [phones] → Dial [screen] s (extensions.conf:52)",
    );
    // A Goto inside ExecIf, to MixMonitor's post-recording command.
    has(
        &all,
        "high",
        "extensions.conf",
        61,
        "recordings",
        "MixMonitor() runs its third argument as a shell command when the recording ends, and callers reach it: endpoint 1001 → [phones] → ExecIf [recordings] s (extensions.conf:53)",
    );
    // Any number out of a DAHDI group.
    has(
        &all,
        "medium",
        "extensions.conf",
        54,
        "phones",
        "pattern _0. sends whatever number the caller dials to trunk DAHDI/g1 with no fixed prefix",
    );
    let got = dialplan_findings(&all);
    assert_eq!(got.len(), 9, "{got:#?}");
    // The text form names file and line too.
    let (_, text, _) = audit(&dir, false);
    assert!(
        text.contains("MEDIUM extensions.conf:21 [outbound]: pattern _X."),
        "{text}"
    );
    // Without pjsip.conf (or another channel driver's file) nothing tells which contexts
    // callers use: every one counts, and the message says so.
    let bare = tempfile::tempdir().unwrap();
    std::fs::create_dir(bare.path().join("extensions.d")).unwrap();
    for f in ["extensions.conf", "extensions.d/loops.conf"] {
        std::fs::copy(dir.join(f), bare.path().join(f)).unwrap();
    }
    let (code, all) = findings(bare.path());
    assert_eq!(code, 1);
    has(
        &all,
        "high",
        "extensions.conf",
        39,
        "maintenance",
        "System() runs a shell command, and callers reach it: any context (no pjsip.conf, pjsip_wizard.conf, iax.conf or chan_dahdi.conf tells which contexts callers start in, so every one counts) → [maintenance]",
    );
    // An IAX2 user's context is a way in like an endpoint's.
    std::fs::write(
        bare.path().join("iax.conf"),
        "[general]\nbindaddr = 127.0.0.1\n\n[branch]\ntype = user\ncontext = sales\n",
    )
    .unwrap();
    let (_, all) = findings(bare.path());
    let got = dialplan_findings(&all);
    assert!(
        got.iter()
            .any(|l| l.starts_with("high extensions.conf:43 [sales]")
                && l.ends_with("callers reach it: iax2 branch → [sales]")),
        "{got:#?}"
    );
    assert!(!got.iter().any(|l| l.contains("[maintenance]")), "{got:#?}");
}

#[test]
fn ami_clients_open_the_contexts_they_may_originate_into() {
    use pbxguard::audit::{asterisk_with, AmiClientInfo};
    let dir = Path::new(DATA).join("dialplan");
    let client = |name: &str, originate: bool, contexts: &[&str]| AmiClientInfo {
        name: name.into(),
        originate,
        contexts: contexts.iter().map(|c| c.to_string()).collect(),
    };
    let lines = |clients: &[AmiClientInfo]| -> Vec<String> {
        asterisk_with(&dir, clients)
            .unwrap()
            .into_iter()
            .filter(|f| f.object == "sales" || f.file == "pbxguard" || f.object == "maintenance")
            .map(|f| format!("{} {}:{} [{}]", f.severity.name(), f.file, f.line, f.object))
            .collect()
    };
    assert!(lines(&[]).is_empty());
    // Allowed only reading events: not an entry point.
    assert!(lines(&[client("wallboard", false, &[])]).is_empty());
    assert_eq!(
        lines(&[client("crm", true, &["sal*"])]),
        [
            "high extensions.conf:43 [sales]",
            "medium extensions.conf:44 [sales]"
        ]
    );
    // Originate with no --context: every context is its way in, and it is reported itself.
    assert_eq!(
        lines(&[client("dialer", true, &[])]),
        [
            "high extensions.conf:39 [maintenance]",
            "high extensions.conf:43 [sales]",
            "medium extensions.conf:44 [sales]",
            "medium pbxguard:0 [dialer]"
        ]
    );
    let all = asterisk_with(&dir, &[client("dialer", true, &[])]).unwrap();
    let f = all.iter().find(|f| f.file == "pbxguard").unwrap();
    assert!(
        f.fix.contains("pbxguard ami user edit dialer --context"),
        "{f:?}"
    );
}

#[test]
fn the_shipped_dialplan_is_audited_and_its_outbound_example_passes() {
    // The examples have no dialplan finding (the_shipped_examples_pass), and that is not
    // because the file goes unread: the classic mistake in it is found at its line.
    let dir = shipped_variant(|f, t| {
        if f == "extensions.conf" {
            t.replace("exten => _[12]00X,", "exten => _.,")
        } else {
            t
        }
    });
    let (code, all) = findings(dir.path());
    assert_eq!(code, 1);
    let text = std::fs::read_to_string(dir.path().join("extensions.conf")).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("exten => _.,"))
        .unwrap()
        + 1;
    has(
        &all,
        "high",
        "extensions.conf",
        line as u64,
        "internal",
        "Dial() takes ${EXTEN} from pattern _.",
    );
    // A trunk in pjsip.conf and the commented outbound example switched on: no dialplan
    // finding; the same with `_X.` instead of the explicit prefixes is reported.
    let trunk = "\n[trunk]\ntype = endpoint\ncontext = from-trunk\noutbound_auth = trunk-auth\n\
                 aors = trunk\n\n[trunk]\ntype = aor\ncontact = sip:198.51.100.7:5060\n";
    let outbound = |pattern: Option<&'static str>| {
        move |f: &str, t: String| match f {
            "pjsip.conf" => t + trunk,
            "extensions.conf" => {
                let t = t.replace(";include => outbound", "include => outbound");
                let t = t.replace(";[outbound]", "[outbound]");
                let t = t
                    .replace(";exten => _", "exten => _")
                    .replace("; same =>", " same =>");
                match pattern {
                    Some(p) => t.replace("exten => _00Z.,", &format!("exten => {p},")),
                    None => t,
                }
            }
            _ => t,
        }
    };
    let dir = shipped_variant(outbound(None));
    let text = std::fs::read_to_string(dir.path().join("extensions.conf")).unwrap();
    assert!(text.contains("\n[outbound]\nexten => _00Z.,1,Dial(PJSIP/${EXTEN}@trunk,60)"));
    let (_, all) = findings(dir.path());
    assert!(dialplan_findings(&all).is_empty(), "{all:#?}");
    let dir = shipped_variant(outbound(Some("_X.")));
    let (_, all) = findings(dir.path());
    let got = dialplan_findings(&all);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(
        got[0].starts_with("medium extensions.conf:")
            && got[0].contains(
                "[outbound] pattern _X. sends whatever number the caller dials to trunk trunk"
            ),
        "{got:#?}"
    );
}

/// `dialplan show` of a real Asterisk as (context, what) lines: `ext/cid [label] pri app(args)
/// @file:line` for each priority, `include ctx` for each include; contexts pbx_config made.
fn asterisk_dialplan(show: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut ctx: Option<String> = None;
    let mut ext = String::new();
    for line in show.lines() {
        if let Some(rest) = line.strip_prefix("[ Context '") {
            ctx = rest
                .split_once("' created by 'pbx_config'")
                .map(|(c, _)| c.to_string());
            continue;
        }
        let Some(c) = &ctx else { continue };
        let t = line.trim();
        if t.is_empty() || t.starts_with("-=") {
            continue;
        }
        if let Some(inc) = t.strip_prefix("Include =>") {
            let name = inc.trim().split('\'').nth(1).unwrap();
            out.push(format!("{c}: include {name}"));
            continue;
        }
        let mut rest = t;
        if let Some(r) = t.strip_prefix('\'') {
            let (e, r) = r.split_once('\'').unwrap();
            ext = e.to_string();
            let r = r.trim_start();
            let r = match r.strip_prefix("(CID match '") {
                Some(cid) => {
                    let (cid, r) = cid.split_once("')").unwrap();
                    ext = format!("{ext}/{cid}");
                    r
                }
                None => r,
            };
            rest = r.trim_start().strip_prefix("=>").unwrap().trim_start();
        }
        let (body, registrar) = rest.rsplit_once(" [").unwrap();
        let body = body.trim_end();
        let (label, body) = match body.strip_prefix('[') {
            Some(b) => {
                let (l, b) = b.split_once(']').unwrap();
                (format!(" [{l}]"), b.trim_start())
            }
            None => (String::new(), body),
        };
        let body = match body.strip_prefix("hint: ") {
            Some(h) => format!("hint {h}"),
            None => {
                let (n, app) = body.split_once(". ").unwrap();
                format!("{n} {app}")
            }
        };
        out.push(format!(
            "{c}: {ext}{label} {body} @{}",
            registrar.trim_end_matches(']')
        ));
    }
    out.sort();
    out
}

/// The audit's reader on `dir`'s extensions.conf, in [`asterisk_dialplan`]'s form.
fn reader_dialplan(dir: &Path) -> Vec<String> {
    use pbxguard::audit::{conf, dialplan};
    let conf = conf::load(dir, "extensions.conf").unwrap();
    let plan = dialplan::read(&conf);
    // The only problems: the lines after a hint that Asterisk drops without a warning (the
    // comparison shows it dropped them too).
    assert!(
        conf.problems.is_empty()
            && plan
                .problems
                .iter()
                .all(|p| p.message.contains("after a hint is 0")),
        "{:?} {:?}",
        conf.problems,
        plan.problems
    );
    let mut out = Vec::new();
    for c in &plan.contexts {
        // `dialplan show` prints an extension's first priority (its hint, if any) on the
        // extension's line, without its label.
        let first = |ext: &str, cid: &Option<String>| {
            c.steps
                .iter()
                .filter(|s| s.extension == ext && &s.callerid == cid)
                .map(|s| match s.priority {
                    dialplan::Priority::Hint => -1,
                    dialplan::Priority::Number(n) => n,
                })
                .min()
        };
        for s in &c.steps {
            let ext = match &s.callerid {
                Some(cid) => format!("{}/{cid}", s.extension),
                None => s.extension.clone(),
            };
            let n = match s.priority {
                dialplan::Priority::Hint => -1,
                dialplan::Priority::Number(n) => n,
            };
            let label = match &s.label {
                Some(l) if first(&s.extension, &s.callerid) != Some(n) => format!(" [{l}]"),
                _ => String::new(),
            };
            let body = match s.priority {
                dialplan::Priority::Hint => format!("hint {}", s.app),
                dialplan::Priority::Number(n) => format!("{n} {}({})", s.app, s.args),
            };
            let file = s.file.file_name().unwrap().to_string_lossy();
            out.push(format!(
                "{}: {ext}{label} {body} @{file}:{}",
                c.name, s.line
            ));
        }
        for i in &c.includes {
            out.push(format!("{}: include {}", c.name, i.context));
        }
    }
    out.sort();
    out
}

/// The audit reads extensions.conf as Asterisk 22 loads it: every context, extension,
/// priority, label, caller-ID match, application, argument and include, at the same file and
/// line, for the shipped example (which must be valid Asterisk syntax), the vulnerable test
/// tree (includes, `same =>`, loops) and Asterisk's own basic-pbx.
#[test]
fn asterisk_loads_the_dialplans_as_the_audit_reads_them() {
    use common::asterisk::{Asterisk, Setup};
    let Some(prefix) = common::asterisk::prefix() else {
        return;
    };
    let basic = prefix.join("share/configs/basic-pbx/extensions.conf");
    let mut ast = Asterisk::start(&prefix, &Setup::default());
    // Labels looked up across sections of one context; `n` after a hint (priority 0,
    // dropped without a word).
    let extra = "[labels]\nexten => 200,1(start),Wait(1)\nexten => 200,start+1,Hangup()\n \
                 same => n(x),NoOp()\nexten => 100,hint,PJSIP/100\nexten => _X./5551234,1,NoOp(cid)\n\
                 exten => 300,hint,PJSIP/300\n same => n,NoOp(dropped)\n same => n,NoOp(dropped too)\n\
                 [other]\nexten => 1,1,NoOp\n\
                 [labels]\nexten => 200,start+5,NoOp(later section)\nexten => 200,x+10,NoOp(x)\n";
    for (what, files) in [
        (
            "shipped",
            vec![(
                Path::new(SHIPPED).join("extensions.conf"),
                "extensions.conf",
            )],
        ),
        (
            "vulnerable",
            vec![
                (
                    Path::new(DATA).join("dialplan/extensions.conf"),
                    "extensions.conf",
                ),
                (
                    Path::new(DATA).join("dialplan/extensions.d/loops.conf"),
                    "extensions.d/loops.conf",
                ),
            ],
        ),
        ("basic-pbx", vec![(basic.clone(), "extensions.conf")]),
    ] {
        let etc = ast.etc();
        let _ = std::fs::remove_dir_all(etc.join("extensions.d"));
        std::fs::create_dir_all(etc.join("extensions.d")).unwrap();
        for (from, to) in &files {
            let mut text = std::fs::read_to_string(from).unwrap();
            if what == "vulnerable" && *to == "extensions.conf" {
                text.push_str(extra);
            }
            std::fs::write(etc.join(to), text).unwrap();
        }
        let before = ast.log().len();
        let reload = ast.cli("dialplan reload");
        assert!(reload.contains("Dialplan reloaded"), "{what}: {reload}");
        let got = asterisk_dialplan(&ast.cli("dialplan show"));
        let want = reader_dialplan(&etc);
        assert_eq!(
            got, want,
            "{what}: Asterisk (left) and the audit's reader (right) differ"
        );
        assert!(!got.is_empty());
        let log = ast.log();
        let complaints: Vec<&str> = log[before..]
            .lines()
            .filter(|l| {
                l.contains("pbx_config.c") && (l.contains("WARNING") || l.contains("ERROR"))
            })
            .filter(|l| !l.contains("The use of '_.'"))
            .collect();
        assert!(complaints.is_empty(), "{what}: {complaints:#?}");
    }
    ast.stop();
}

/// On a host with pbxguard's configuration, `audit asterisk` reads the AMI clients from the
/// store: a client confined to `sal*` makes `sales` a way in; a client made before contexts
/// existed (Originate, no context) is reported itself and opens every context.
#[test]
fn the_cli_audits_the_gateways_ami_clients_with_the_dialplan() {
    let env = Env::new();
    env.init();
    let dir = Path::new(DATA).join("dialplan");
    let dir_arg = dir.display().to_string();
    let run = |env: &Env| -> Vec<serde_json::Value> {
        let out = env.run(&["audit", "asterisk", "--dir", &dir_arg, "--json"], b"");
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(!text(&out).contains("not audited"), "{}", text(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let objects = |all: &[serde_json::Value], file: &str| -> Vec<String> {
        let mut v: Vec<String> = all
            .iter()
            .filter(|f| f["file"] == file)
            .map(|f| {
                format!(
                    "{} {}",
                    f["severity"].as_str().unwrap(),
                    f["object"].as_str().unwrap()
                )
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let before = run(&env);
    assert!(objects(&before, "pbxguard").is_empty(), "{before:#?}");
    let sales_before = before.iter().filter(|f| f["object"] == "sales").count();

    env.add_ami_client(
        "crm",
        "crm-secret-0123456789",
        &["--allow", "Originate", "--context", "sal*"],
    );
    env.add_ami_client(
        "wallboard",
        "wall-secret-0123456789",
        &["--allow", "Status"],
    );
    let with_crm = run(&env);
    assert!(objects(&with_crm, "pbxguard").is_empty(), "{with_crm:#?}");
    assert!(
        with_crm.iter().filter(|f| f["object"] == "sales").count() > sales_before,
        "sales is a way in for crm: {with_crm:#?}"
    );

    // A client from before contexts: what an upgraded site has.
    env.add_ami_client(
        "dialer",
        "dialer-secret-0123456789",
        &["--allow", "Originate", "--context", "sales"],
    );
    env.sql("UPDATE ami_clients SET contexts = '' WHERE name = 'dialer'");
    let legacy = run(&env);
    assert_eq!(
        objects(&legacy, "pbxguard"),
        ["medium dialer"],
        "{legacy:#?}"
    );
    let f = legacy.iter().find(|f| f["file"] == "pbxguard").unwrap();
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .contains("ami user edit dialer --context"),
        "{f}"
    );

    // A configuration that cannot be used is said, and Asterisk's files are still audited.
    env.write_config("[daemon]\nbogus = 1\n");
    let out = env.run(&["audit", "asterisk", "--dir", &dir_arg, "--json"], b"");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AMI clients are not audited"),
        "{}",
        text(&out)
    );
}
