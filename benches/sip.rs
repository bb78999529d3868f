//! Hot functions of the SIP edge: framing a TLS stream, the strict parse, the normal-form
//! re-serialisation and the SRTP policy on a real offer. `cargo bench --bench sip`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pbxguard::sip::framing::{Frame, StreamFramer};
use pbxguard::sip::message::Message;
use pbxguard::sip::sdp::{check_body, MediaPolicy};

const SDP: &str = "v=0\r\no=- 2890844526 2890844526 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 40000 RTP/SAVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\na=sendrecv\r\n";

fn invite() -> Vec<u8> {
    format!(
        "INVITE sip:1002@pbx.example.com SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK776asdhds;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:1001@pbx.example.com>;tag=1928301774\r\nTo: <sip:1002@pbx.example.com>\r\nCall-ID: a84b4c76e66710@192.0.2.10\r\nCSeq: 314159 INVITE\r\nContact: <sip:1001@192.0.2.10:5061;transport=tls>\r\nAllow: INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE\r\nSupported: replaces, timer\r\nUser-Agent: baresip v1.0.0 (x86_64/linux)\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    )
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let raw = invite();
    let mut g = c.benchmark_group("sip");
    g.throughput(Throughput::Bytes(raw.len() as u64));
    g.bench_function("frame_invite", |b| {
        let mut framer = StreamFramer::new();
        b.iter(|| {
            framer.push(black_box(&raw));
            match framer.next() {
                Ok(Some(Frame::Message(m))) => m.len(),
                _ => 0,
            }
        })
    });
    g.bench_function("parse_invite", |b| {
        b.iter(|| Message::parse(black_box(&raw)).is_ok())
    });
    let msg = Message::parse(&raw).unwrap();
    g.bench_function("serialise_invite", |b| {
        b.iter(|| black_box(&msg).to_bytes().len())
    });
    let policy = MediaPolicy::default();
    g.throughput(Throughput::Bytes(SDP.len() as u64));
    g.bench_function("srtp_policy_offer", |b| {
        b.iter(|| {
            check_body(
                Some("application/sdp"),
                None,
                black_box(SDP.as_bytes()),
                &policy,
                false,
            )
            .is_ok()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
