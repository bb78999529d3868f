//! nginx is the reference for every Range and conditional-request edge case: the same files
//! are fetched through a pbxguard link and straight from Debian's nginx, and status, range
//! headers, validators and bodies must agree byte for byte (multipart boundaries aside).

mod common;
use common::nginx::Nginx;
use common::*;

use std::path::Path;

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// What must match: status, the range and validator headers, the type and the body, with
    /// the multipart boundary (random in pbxguard, a counter in nginx) replaced by `B`.
    fn comparable(&self) -> String {
        let ctype = self.header("content-type").unwrap_or_default();
        let boundary = ctype
            .split("boundary=")
            .nth(1)
            .map(str::to_string)
            .unwrap_or_default();
        let norm = |s: &str| {
            if boundary.is_empty() {
                s.to_string()
            } else {
                s.replace(&boundary, "B")
            }
        };
        let body_bytes = replace_bytes(&self.body, boundary.as_bytes(), b"B");
        // Error pages differ (HTML from nginx, JSON from pbxguard): compare bodies of 2xx only.
        let body = if (200..300).contains(&self.status) {
            format!("{} bytes sha {}", body_bytes.len(), short_sha(&body_bytes))
        } else {
            "-".to_string()
        };
        let mut out = format!("status {}\n", self.status);
        for h in ["content-range", "etag", "last-modified"] {
            out.push_str(&format!("{h}: {:?}\n", self.header(h)));
        }
        // nginx drops Accept-Ranges from 206 answers; pbxguard keeps it (allowed, and the
        // issue asks for it), so it is compared on whole-file answers only.
        if self.status == 200 {
            out.push_str(&format!(
                "accept-ranges: {:?}\n",
                self.header("accept-ranges")
            ));
        }
        if (200..300).contains(&self.status) {
            out.push_str(&format!("content-type: {}\n", norm(&ctype)));
            // Boundaries differ in length, so the length is checked against the body itself.
            let declared = self
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok());
            out.push_str(&format!(
                "content-length matches the body: {}\n",
                declared == Some(self.body.len())
            ));
        }
        out.push_str(&format!("body: {body}\n"));
        out
    }
}

fn replace_bytes(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    if from.is_empty() {
        return data.to_vec();
    }
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

fn short_sha(data: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(data))[..16].to_string()
}

fn fetch(dir: &Path, url: &str, cacert: Option<&Path>, extra: &[String]) -> Answer {
    let body = dir.join("body");
    let head = dir.join("head");
    let _ = std::fs::remove_file(&body);
    let (b, h) = (body.display().to_string(), head.display().to_string());
    let mut args: Vec<String> = ["-sS", "--max-time", "20", "-o", &b, "-D", &h]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(c) = cacert {
        args.push("--cacert".into());
        args.push(c.display().to_string());
    }
    args.extend(extra.iter().cloned());
    args.push(url.to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = curl(&refs);
    assert!(out.status.success(), "curl {url}: {}", text(&out));
    let head_text = std::fs::read_to_string(&head).unwrap_or_default();
    let mut lines = head_text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        headers: lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect(),
        body: std::fs::read(&body).unwrap_or_default(),
    }
}

struct Both {
    env: Env,
    _daemon: Daemon,
    nginx: Nginx,
    scratch: std::path::PathBuf,
}

impl Both {
    fn start(files: &[(&str, Vec<u8>)]) -> Both {
        let env = Env::new();
        let root = env.path("rec");
        for (name, data) in files {
            std::fs::create_dir_all(root.join(name).parent().unwrap()).unwrap();
            std::fs::write(root.join(name), data).unwrap();
        }
        let extra = format!("\n[recordings]\nroot = \"{}\"\n", root.display());
        env.write_config(&env.config_text(env.http_port, env.redirect_port, &extra));
        env.init();
        let daemon = env.start();
        let port = free_port();
        // The same type table as pbxguard's, so part headers can be compared too.
        let http = format!(
            r#"    types {{ audio/wav wav; audio/x-gsm gsm; audio/mpeg mp3; audio/ogg ogg opus; }}
    # pbxguard's cap on ranges per request (nginx's default has none).
    max_ranges 64;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        location /files/ {{ alias "{}/"; }}
    }}"#,
            root.display()
        );
        let nginx = Nginx::start(&env.path("nginx"), port, &http);
        let scratch = env.path("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        Both {
            env,
            _daemon: daemon,
            nginx,
            scratch,
        }
    }

    fn link(&self, name: &str) -> String {
        let url = String::from_utf8(self.env.ok(&["recording", "link", name], b"")).unwrap();
        let url = url.trim();
        let at = url.find("/rec/").unwrap();
        format!("https://localhost:{}{}", self.env.http_port, &url[at..])
    }

    fn ours(&self, link: &str, headers: &[String]) -> Answer {
        fetch(
            &self.scratch,
            link,
            Some(&self.env.cert()),
            &with_h(headers),
        )
    }

    fn reference(&self, name: &str, headers: &[String]) -> Answer {
        let url = format!("http://127.0.0.1:{}/files/{name}", self.nginx.port);
        fetch(&self.scratch, &url, None, &with_h(headers))
    }

    /// Every header set must get the same answer from both.
    fn compare(&self, name: &str, cases: &[Vec<String>]) {
        let link = self.link(name);
        let mut mismatches = Vec::new();
        for headers in cases {
            let ours = self.ours(&link, headers);
            let theirs = self.reference(name, headers);
            let (a, b) = (ours.comparable(), theirs.comparable());
            if a != b {
                mismatches.push(format!("{headers:?}\n pbxguard:\n{a} nginx:\n{b}"));
            }
        }
        assert!(
            mismatches.is_empty(),
            "{} of {} cases differ from nginx for {name}:\n{}",
            mismatches.len(),
            cases.len(),
            mismatches.join("\n")
        );
    }
}

fn with_h(headers: &[String]) -> Vec<String> {
    headers
        .iter()
        .flat_map(|h| ["-H".to_string(), h.clone()])
        .collect()
}

fn range_cases(len: usize) -> Vec<Vec<String>> {
    let mut specs: Vec<String> = [
        "bytes=0-0",
        "bytes=0-",
        "bytes=-1",
        "bytes=1-1",
        "bytes=100-199",
        "bytes=5-2",
        "bytes=-0",
        "bytes=0-99999999999",
        "bytes=99999999999999999999-",
        "bytes=0-99999999999999999999",
        "bytes=18446744073709551616-1",
        "bytes=9223372036854775807-",
        "bytes=9223372036854775808-",
        "bytes= 1 - 2 ",
        "bytes=1-2, 4-5",
        "bytes=1-2 ,4-5",
        "bytes=0-9,5-14",
        "bytes=0-0,-1,3-3",
        "bytes=-5,0-4",
        "bytes=abc",
        "bytes=",
        "bytes=-",
        "bytes=1-2,",
        "bytes=,1-2",
        "bytes=1-2;x",
        "bytes=1--2",
        "BYTES=0-1",
        "Bytes=0-1",
        "items=0-1",
        "bytes 0-1",
        "bytes=0x10-0x20",
        "bytes=+1-2",
        "bytes=1-2,abc",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    specs.extend([
        format!("bytes={len}-"),
        format!("bytes={}-", len - 1),
        format!("bytes={}-{}", len - 1, len + 10),
        format!("bytes=-{}", len + 1),
        format!("bytes=-{len}"),
        format!("bytes=0-{}", len - 1),
        format!("bytes=0-{},{}-", len / 2, len / 3),
        format!("bytes={}-,0-1", len * 2),
        format!("bytes={}-{},0-1", len, len + 5),
        format!("bytes=0-{},{}-", len / 2 - 1, len / 2),
        format!("bytes={}", vec!["0-0"; 64].join(",")),
        format!("bytes={}", vec!["0-0"; 65].join(",")),
        format!(
            "bytes={}",
            (0..70)
                .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
                .collect::<Vec<_>>()
                .join(",")
        ),
    ]);
    let mut cases: Vec<Vec<String>> = vec![vec![]];
    cases.extend(specs.into_iter().map(|s| vec![format!("Range: {s}")]));
    cases
}

#[test]
fn ranges_match_nginx_byte_for_byte() {
    let len = 300_001;
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let both = Both::start(&[("2026/11/29/call.wav", data), ("empty.wav", Vec::new())]);
    both.compare("2026/11/29/call.wav", &range_cases(len));
    both.compare(
        "empty.wav",
        &[
            vec![],
            vec!["Range: bytes=0-".into()],
            vec!["Range: bytes=0-5".into()],
            vec!["Range: bytes=-5".into()],
            vec!["Range: bytes=1-".into()],
            vec!["Range: bytes=-0".into()],
        ],
    );
}

#[test]
fn conditional_requests_match_nginx() {
    let data: Vec<u8> = (0..10_000).map(|i| (i % 256) as u8).collect();
    let both = Both::start(&[("a.gsm", data)]);
    let link = both.link("a.gsm");
    let first = both.ours(&link, &[]);
    let reference = both.reference("a.gsm", &[]);
    let etag = first.header("etag").expect("etag");
    let modified = first.header("last-modified").expect("last-modified");
    assert_eq!(
        Some(etag.clone()),
        reference.header("etag"),
        "same ETag format as nginx"
    );
    assert_eq!(Some(modified.clone()), reference.header("last-modified"));
    let older = "Sun, 06 Nov 1994 08:49:37 GMT";
    let h = |pairs: &[(&str, &str)]| -> Vec<String> {
        pairs.iter().map(|(n, v)| format!("{n}: {v}")).collect()
    };
    let cases = vec![
        h(&[("If-None-Match", &etag)]),
        h(&[("If-None-Match", "\"other\"")]),
        h(&[("If-None-Match", &format!("\"x\", {etag}"))]),
        h(&[("If-None-Match", &format!("W/{etag}"))]),
        h(&[("If-None-Match", "*")]),
        h(&[("If-Modified-Since", &modified)]),
        h(&[("If-Modified-Since", older)]),
        h(&[("If-Modified-Since", "garbage")]),
        h(&[
            ("If-Modified-Since", &modified),
            ("If-None-Match", "\"other\""),
        ]),
        h(&[("If-Match", &etag)]),
        h(&[("If-Match", "\"other\"")]),
        h(&[("If-Match", "*")]),
        h(&[("If-Unmodified-Since", older)]),
        h(&[("If-Unmodified-Since", &modified)]),
        h(&[("If-Unmodified-Since", "garbage")]),
        h(&[("Range", "bytes=0-9"), ("If-Range", &etag)]),
        h(&[("Range", "bytes=0-9"), ("If-Range", "\"stale\"")]),
        h(&[("Range", "bytes=0-9"), ("If-Range", &modified)]),
        h(&[("Range", "bytes=0-9"), ("If-Range", older)]),
        h(&[("Range", "bytes=0-9"), ("If-Range", "garbage")]),
        h(&[("Range", "bytes=0-9,20-29"), ("If-Range", &etag)]),
        h(&[("Range", "bytes=0-9"), ("If-None-Match", &etag)]),
    ];
    both.compare("a.gsm", &cases);
}
