//! The RFC 4475 and RFC 5118 torture messages against the strict SIP message layer.
//!
//! For every message in `tests/data/sip-torture/manifest.json`: no panic; every `invalid` one
//! is refused (by `Message::parse`, or by the stream framer); every accepted one re-serialises
//! to a normal form that parses to an equal model and is stable. `valid-request`s that we
//! refuse on purpose are listed in [`DELIBERATELY_REFUSED`] with the reason.

use std::path::{Path, PathBuf};

use pbxguard::sip::framing::{Frame, FrameError, StreamFramer};
use pbxguard::sip::message::{error_response, Message, ParseError, StartLine};
use rand::{Rng, SeedableRng};

/// Valid per RFC 4475/5118, refused by `Message::parse` because the edge is stricter.
const DELIBERATELY_REFUSED: &[(&str, &str)] = &[
    (
        "rfc4475/dblreq.dat",
        "two messages in one buffer; over a stream the framer splits them and both parse",
    ),
    (
        "rfc4475/esc01.dat",
        "folded Contact line (obs-fold refused)",
    ),
    (
        "rfc4475/escnull.dat",
        "%00 in the user part: an escaped NUL is refused",
    ),
    (
        "rfc4475/intmeth.dat",
        "raw NUL and BEL bytes in the To display name (control characters refused)",
    ),
    (
        "rfc4475/inv2543.dat",
        "RFC 2543 request: no Max-Forwards, no Via branch, no From tag",
    ),
    (
        "rfc4475/longreq.dat",
        "whitespace before header colons (`V :`)",
    ),
    (
        "rfc4475/novelsc.dat",
        "Request-URI scheme soap.beep (416: only sip/sips)",
    ),
    (
        "rfc4475/semiuri.dat",
        "folded Accept line (obs-fold refused)",
    ),
    (
        "rfc4475/unkscm.dat",
        "Request-URI with an unknown scheme (416)",
    ),
    (
        "rfc4475/unksm2.dat",
        "To isbn: and From http: URIs (only sip/sips addresses)",
    ),
    (
        "rfc4475/wsinv.dat",
        "line folding and whitespace before colons throughout",
    ),
    (
        "rfc5118/ipv4-mapped-ipv6",
        "file's Content-Length (236) is shorter than its body (245); framed, it parses",
    ),
    (
        "rfc5118/ipv6-in-sdp",
        "file's Content-Length (241) is shorter than its body (251); framed, it parses",
    ),
    (
        "rfc5118/mult-ip-in-sdp",
        "file's Content-Length (181) is shorter than its body (189); framed, it parses",
    ),
];

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sip-torture")
}

struct Case {
    file: String,
    class: String,
    bytes: Vec<u8>,
}

fn cases() -> Vec<Case> {
    let dir = data_dir();
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    let manifest: serde_json::Value = serde_json::from_str(&manifest).expect("manifest JSON");
    let messages = manifest["messages"].as_array().expect("messages array");
    let cases: Vec<Case> = messages
        .iter()
        .map(|m| {
            let file = m["file"].as_str().expect("file").to_string();
            let class = m["class"].as_str().expect("class").to_string();
            let bytes = std::fs::read(dir.join(&file)).expect("torture file");
            assert_eq!(Some(bytes.len() as u64), m["bytes"].as_u64(), "{file} size");
            Case { file, class, bytes }
        })
        .collect();
    assert!(cases.len() >= 60, "manifest lists {} messages", cases.len());
    cases
}

/// Round trip and stability of the normal form.
fn assert_round_trip(name: &str, m: &Message) {
    let out = m.to_bytes();
    let again = Message::parse(&out).unwrap_or_else(|e| panic!("{name}: normal form refused: {e}"));
    assert_eq!(&again, m, "{name}: model changed by a round trip");
    assert_eq!(again.to_bytes(), out, "{name}: normal form not stable");
}

/// Everything the framer yields for `bytes` pushed at once (and, separately, in small
/// chunks: the two must agree).
fn frame_all(bytes: &[u8]) -> (Vec<Frame>, Result<(), FrameError>) {
    let run = |chunk: usize| {
        let mut f = StreamFramer::new();
        let mut frames = Vec::new();
        for piece in bytes.chunks(chunk) {
            f.push(piece);
            loop {
                match f.next() {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(e) => return (frames, Err(e)),
                }
            }
        }
        (frames, Ok(()))
    };
    let whole = run(bytes.len().max(1));
    let small = run(7);
    assert_eq!(whole, small, "framing depends on chunking");
    whole
}

fn messages(frames: &[Frame]) -> Vec<&[u8]> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Message(b) => Some(&b[..]),
            Frame::Ping => None,
        })
        .collect()
}

#[test]
fn every_deliberate_refusal_names_a_valid_request() {
    let cases = cases();
    for (file, _) in DELIBERATELY_REFUSED {
        let c = cases.iter().find(|c| c.file == *file);
        assert!(c.is_some_and(|c| c.class == "valid-request"), "{file}");
    }
}

#[test]
fn torture_messages_parse_as_classified() {
    let mut accepted = 0;
    for c in cases() {
        let result = Message::parse(&c.bytes);
        let deliberate = DELIBERATELY_REFUSED.iter().any(|(f, _)| *f == c.file);
        match (c.class.as_str(), &result) {
            ("invalid", Ok(_)) => panic!("{}: invalid message accepted", c.file),
            ("invalid", Err(_)) => {}
            ("valid-request", Ok(m)) => {
                assert!(!deliberate, "{}: listed as refused but accepted", c.file);
                assert!(matches!(m.start(), StartLine::Request { .. }), "{}", c.file);
            }
            ("valid-request", Err(e)) => {
                assert!(deliberate, "{}: refused ({e}) but not listed", c.file);
            }
            ("valid-response", Ok(m)) => assert!(m.status().is_some(), "{}", c.file),
            ("valid-response", Err(e)) => panic!("{}: response refused: {e}", c.file),
            (class, _) => panic!("{}: unknown class {class}", c.file),
        }
        if let Ok(m) = &result {
            accepted += 1;
            assert_round_trip(&c.file, m);
        }
    }
    assert!(accepted >= 20, "only {accepted} accepted");
}

#[test]
fn specific_refusals_have_the_expected_status() {
    let by_file = |f: &str| {
        let c = cases()
            .into_iter()
            .find(|c| c.file == f)
            .expect("file in manifest");
        Message::parse(&c.bytes).expect_err(f)
    };
    assert_eq!(by_file("rfc4475/badvers.dat").status().0, 505);
    assert_eq!(by_file("rfc4475/zeromf.dat"), ParseError::TooManyHops);
    assert_eq!(by_file("rfc4475/bext01.dat").status().0, 420);
    assert_eq!(by_file("rfc4475/novelsc.dat").status().0, 416);
    assert_eq!(by_file("rfc4475/unkscm.dat").status().0, 416);
    assert_eq!(
        by_file("rfc4475/mcl01.dat"),
        ParseError::Duplicate("Content-Length")
    );
    assert_eq!(by_file("rfc4475/mismatch01.dat"), ParseError::CSeqMethod);
    assert_eq!(by_file("rfc4475/escruri.dat").status().0, 400);
    assert_eq!(
        by_file("rfc4475/insuf.dat").status(),
        (400, "Bad Request (missing From)")
    );
}

#[test]
fn error_responses_for_torture_messages() {
    for c in cases() {
        let Err(e) = Message::parse(&c.bytes) else {
            continue;
        };
        let Some(resp) = error_response(&c.bytes, &e) else {
            continue;
        };
        let r = Message::parse(&resp)
            .unwrap_or_else(|err| panic!("{}: error response refused: {err}", c.file));
        assert_eq!(r.status(), Some(e.status().0), "{}", c.file);
        assert!(
            !c.bytes.starts_with(b"SIP/"),
            "{}: answered a response",
            c.file
        );
        assert!(!c.bytes.starts_with(b"ACK "), "{}: answered an ACK", c.file);
        assert_round_trip(&c.file, &r);
    }
    let zeromf = cases()
        .into_iter()
        .find(|c| c.file == "rfc4475/zeromf.dat")
        .expect("zeromf");
    let resp = error_response(&zeromf.bytes, &ParseError::TooManyHops).expect("483 answer");
    assert!(resp.starts_with(b"SIP/2.0 483 Too Many Hops\r\n"));
}

/// Over a stream: correct Content-Length frames exactly the message; a wrong one never yields
/// a message that differs from what a strict reader (Content-Length bytes) would see, and an
/// `invalid` message is never forwarded.
#[test]
fn torture_messages_through_the_framer() {
    for c in cases() {
        let (frames, result) = frame_all(&c.bytes);
        let framed = messages(&frames);
        let parsed: Vec<Result<Message, ParseError>> =
            framed.iter().map(|b| Message::parse(b)).collect();
        if c.class == "invalid" {
            // Refused by framing (error or still waiting) or by the parser.
            assert!(
                parsed.iter().all(|p| p.is_err()),
                "{}: invalid message forwarded",
                c.file
            );
        }
        // Strict-reader agreement: each frame is a header block plus exactly its
        // Content-Length, and the frames are a prefix of the stream.
        let mut offset = 0;
        for f in &framed {
            // Stray CRLFs and pings between messages are not part of any frame.
            while c.bytes[offset..].starts_with(b"\r\n") {
                offset += 2;
            }
            assert_eq!(&c.bytes[offset..offset + f.len()], *f, "{}", c.file);
            offset += f.len();
        }
        if let Ok(m) = Message::parse(&c.bytes) {
            // Whatever parses as one message frames as exactly that message.
            assert_eq!(framed, vec![&c.bytes[..]], "{}", c.file);
            assert!(result.is_ok(), "{}", c.file);
            assert_round_trip(&c.file, &m);
        }
        for (i, p) in parsed.iter().enumerate() {
            if let Ok(m) = p {
                assert_round_trip(&format!("{} frame {i}", c.file), m);
            }
        }
    }
}

#[test]
fn framer_splits_dblreq_and_truncates_short_content_length() {
    let all = cases();
    let get = |f: &str| all.iter().find(|c| c.file == f).expect("file");
    // The file's INVITE body is longer than its Content-Length: the bytes left over ("LPC")
    // then form a header block without Content-Length, which ends the stream.
    let (frames, result) = frame_all(&get("rfc4475/dblreq.dat").bytes);
    assert_eq!(result, Err(FrameError::MissingContentLength));
    let framed = messages(&frames);
    assert_eq!(framed.len(), 2);
    let first = Message::parse(framed[0]).expect("REGISTER");
    assert_eq!(first.method().map(|m| m.as_str()), Some("REGISTER"));
    let second = Message::parse(framed[1]).expect("INVITE");
    assert_eq!(second.method().map(|m| m.as_str()), Some("INVITE"));
    // A Content-Length shorter than the file: the message is the first Content-Length bytes.
    let c = get("rfc5118/ipv6-in-sdp");
    let (frames, _) = frame_all(&c.bytes);
    let framed = messages(&frames);
    let m = Message::parse(framed[0]).expect("framed ipv6-in-sdp");
    assert_eq!(m.body().len(), 241);
    // clerr: Content-Length 9999 beyond the bytes: nothing is forwarded.
    let (frames, result) = frame_all(&get("rfc4475/clerr.dat").bytes);
    assert!(frames.is_empty() && result.is_ok());
}

/// Byte-level mutations of valid messages: no panic, and whatever is accepted round-trips.
#[test]
fn randomised_mutations() {
    let seeds: Vec<Vec<u8>> = cases()
        .into_iter()
        .filter(|c| Message::parse(&c.bytes).is_ok())
        .map(|c| c.bytes)
        .collect();
    assert!(!seeds.is_empty());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_511f);
    const INTERESTING: &[u8] = b"\r\n\0\t :;,<>\"@%[]=/\\\x7f\xff0aZ";
    let mut accepted = 0;
    for _ in 0..4000 {
        let mut m = seeds[rng.gen_range(0..seeds.len())].clone();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..m.len());
            match rng.gen_range(0..4) {
                0 => m[i] = INTERESTING[rng.gen_range(0..INTERESTING.len())],
                1 => m[i] = rng.gen(),
                2 => {
                    m.remove(i);
                }
                _ => m.insert(i, INTERESTING[rng.gen_range(0..INTERESTING.len())]),
            }
        }
        if let Ok(parsed) = Message::parse(&m) {
            accepted += 1;
            assert_round_trip("mutant", &parsed);
        } else if let Err(e) = Message::parse(&m) {
            if let Some(resp) = error_response(&m, &e) {
                let r = Message::parse(&resp);
                assert!(
                    r.is_ok(),
                    "error response refused: {r:?}\n{}\n{}",
                    String::from_utf8_lossy(&m),
                    String::from_utf8_lossy(&resp)
                );
            }
        }
        let (frames, _) = frame_all(&m);
        for f in messages(&frames) {
            if let Ok(p) = Message::parse(f) {
                assert_round_trip("framed mutant", &p);
            }
        }
    }
    assert!(accepted > 100, "only {accepted} mutants accepted");
}
