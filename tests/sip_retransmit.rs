//! End to end: the edge retransmits for phones on TLS towards a UDP Asterisk, which phones on
//! a reliable transport never do themselves (RFC 3261 §17.1.1.1).
//!
//! * A site's phones all coming back at once: 2,000 phones register through the real binary in
//!   one burst, towards a UDP registrar (`tests/peers/sip_peer.py`) that loses the first copy
//!   of every tenth request and answers every seventh twice. Every REGISTER answered is one
//!   the edge retransmitted, and every phone gets exactly one 200: no duplicate got through.
//! * An Asterisk that never answers: the phone gets 408 after Timer F / Timer B (64*T1).
//!
//! A binary of its own: 4,000 sockets and 2,000 handshakes would slow the other SIP tests,
//! and the time-out takes 32 s (run in parallel with the burst).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use common::sip::{
    base_headers, raise_nofile, request, rnd, sdes_key, sdp_sdes, take_message, tls_config, Edge,
};

const PHONES: usize = 2000;
/// TLS handshakes in flight at once while the phones connect (the listen backlog is finite).
const CONNECTING: usize = 64;
/// How long each phone may wait for its 200: far beyond the retransmission a lost request
/// needs (T1 = 500 ms), far below the edge's own time-out (32 s).
const ANSWER_WITHIN: Duration = Duration::from_secs(20);
/// How long each phone keeps listening after its 200, for a duplicate.
const LINGER: Duration = Duration::from_millis(1500);

struct Phone {
    finals: Vec<u16>,
    error: Option<String>,
}

async fn phone(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    i: usize,
    go: Arc<tokio::sync::Barrier>,
) -> Phone {
    let mut out = Phone {
        finals: Vec::new(),
        error: None,
    };
    if let Err(e) = register(stream, i, go, &mut out.finals).await {
        out.error = Some(e);
    }
    out
}

async fn register(
    mut stream: tokio_rustls::client::TlsStream<TcpStream>,
    i: usize,
    go: Arc<tokio::sync::Barrier>,
    finals: &mut Vec<u16>,
) -> Result<(), String> {
    let user = format!("p{i}");
    let msg = request(
        "REGISTER sip:pbx.test SIP/2.0",
        &base_headers("REGISTER", &user, &user, "TLS", &rnd(), 1),
        "",
    );
    go.wait().await;
    stream.write_all(&msg).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut end = Instant::now() + ANSWER_WITHIN;
    loop {
        while let Some(m) = take_message(&mut buf) {
            let status = m
                .status()
                .ok_or_else(|| format!("a request came: {}", m.start))?;
            if status >= 200 {
                if finals.is_empty() {
                    end = Instant::now() + LINGER;
                }
                finals.push(status);
            }
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Err(_) => return Ok(()),
            Ok(Ok(0)) => return Err("closed by the edge".into()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
}

#[test]
fn every_register_of_a_tls_burst_is_answered_once_through_a_lossy_udp_registrar() {
    let limit = raise_nofile();
    assert!(
        limit >= 2 * PHONES as u64 + 200,
        "the open-file limit ({limit}) is too low for {PHONES} phones"
    );
    let e = Edge::start_with_peer(
        "rate_per_ip = 0\nrate_per_user = 0\nmax_connections = 5000\nmax_connections_per_ip = 5000",
        &[
            "--open-register",
            "--drop-every",
            "10",
            "--duplicate-every",
            "7",
        ],
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tls = TlsConnector::from(tls_config(&e.env.cert()));
    let port = e.tls;
    let phones: Vec<Phone> = rt.block_on(async move {
        let sem = Arc::new(tokio::sync::Semaphore::new(CONNECTING));
        let mut connecting = Vec::with_capacity(PHONES);
        for _ in 0..PHONES {
            let (tls, sem) = (tls.clone(), sem.clone());
            connecting.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore");
                let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                tls.connect(name, tcp).await
            }));
        }
        let mut streams = Vec::with_capacity(PHONES);
        for (i, c) in connecting.into_iter().enumerate() {
            let stream = c
                .await
                .expect("connect task")
                .unwrap_or_else(|e| panic!("phone {i} could not connect: {e}"));
            streams.push(stream);
        }
        // All connected: now every phone registers at the same moment.
        let go = Arc::new(tokio::sync::Barrier::new(PHONES));
        let tasks: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| tokio::spawn(phone(s, i, go.clone())))
            .collect();
        let mut out = Vec::with_capacity(PHONES);
        for t in tasks {
            out.push(t.await.expect("phone task"));
        }
        out
    });
    let errors: Vec<String> = phones
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.error.as_ref().map(|e| format!("phone {i}: {e}")))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    let unanswered = phones.iter().filter(|p| p.finals.is_empty()).count();
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    for s in phones.iter().flat_map(|p| &p.finals) {
        *by_status.entry(*s).or_default() += 1;
    }
    assert_eq!(
        unanswered, 0,
        "REGISTERs never answered; finals: {by_status:?}"
    );
    assert_eq!(
        by_status.get(&200).copied(),
        Some(PHONES),
        "one 200 per phone, no duplicates: {by_status:?}"
    );
    assert_eq!(by_status.len(), 1, "{by_status:?}");

    // The registrar did lose requests and did answer twice: the edge retransmitted the lost
    // ones, and absorbed the duplicates.
    let log = e.peer.log();
    let count = |dir: &str, start: &str| {
        log.iter()
            .filter(|m| m["dir"] == dir)
            .filter(|m| m["raw"].as_str().is_some_and(|r| r.starts_with(start)))
            .count()
    };
    assert_eq!(count("dropped", "REGISTER "), PHONES / 10);
    assert!(
        count("in", "REGISTER ") >= PHONES,
        "every lost REGISTER came again"
    );
    assert!(
        count("out", "SIP/2.0 200 ") >= PHONES + PHONES / 7,
        "the registrar sent duplicates"
    );
}

/// Datagrams a silent "Asterisk" receives, by start line, until `stop`.
fn silent_asterisk(
    sock: std::net::UdpSocket,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_millis(100))).ok();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(n) = sock.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                got.push(text.lines().next().unwrap_or("").to_string());
            }
        }
        got
    })
}

#[test]
fn a_request_asterisk_never_answers_is_retransmitted_then_answered_408() {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let port = sock.local_addr().expect("addr").port();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = silent_asterisk(sock, stop.clone());
    let e = Edge::start(&format!("upstream = \"127.0.0.1:{port}\""));
    let mut c = e.client();
    let register = request(
        "REGISTER sip:pbx.test SIP/2.0",
        &base_headers("REGISTER", "1001", "1001", "TLS", &rnd(), 1),
        "",
    );
    let mut l = base_headers("INVITE", "1001", "2000", "TLS", &rnd(), 1);
    l.push("Content-Type: application/sdp".into());
    let invite = request(
        "INVITE sip:2000@pbx.test SIP/2.0",
        &l,
        &sdp_sdes(&sdes_key()),
    );
    c.send(&register);
    c.send(&invite);
    let mut finals = Vec::new();
    while finals.len() < 2 {
        let r = c
            .final_response(Duration::from_secs(45))
            .expect("a 408 for each, within Timer F/B and some slack");
        finals.push(r);
    }
    for r in &finals {
        assert_eq!(r.status(), Some(408), "{r:?}");
        assert_eq!(r.all("Via").len(), 1, "only the phone's Via: {r:?}");
        assert!(r.header("To").is_some_and(|t| t.contains(";tag=")), "{r:?}");
    }
    let invite_408 = finals
        .iter()
        .find(|r| r.header("CSeq") == Some("1 INVITE"))
        .expect("the INVITE's 408");
    // The phone's ACK for our 408 stops at the edge.
    let mut ack = vec![
        format!("Via: {}", invite_408.header("Via").unwrap()),
        "Max-Forwards: 70".to_string(),
    ];
    for h in ["From", "To", "Call-ID"] {
        ack.push(format!("{h}: {}", invite_408.header(h).unwrap()));
    }
    ack.push("CSeq: 1 ACK".into());
    c.send(&request("ACK sip:2000@pbx.test SIP/2.0", &ack, ""));
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = seen.join().expect("silent asterisk");
    let copies = |method: &str| seen.iter().filter(|l| l.starts_with(method)).count();
    // Sent once, then Timer E at 0.5, 1.5, 3.5, 7.5, 11.5 … 31.5 s (10) and Timer A at
    // 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s (6); a timer task woken late may skip the last one.
    assert!((9..=11).contains(&copies("REGISTER ")), "{seen:?}");
    assert!((5..=7).contains(&copies("INVITE ")), "{seen:?}");
    assert_eq!(copies("ACK "), 0, "{seen:?}");
    assert_eq!(
        seen.len(),
        copies("REGISTER ") + copies("INVITE "),
        "{seen:?}"
    );
}
