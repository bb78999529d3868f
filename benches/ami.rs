//! Hot functions of the AMI gateway: framing a client's bytes as Asterisk does, the policy
//! decision, the toll-fraud rules for an Originate, and event-class arithmetic. `cargo bench --bench ami`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pbxguard::ami::classes;
use pbxguard::ami::codec::{ClientFramer, UpstreamFramer};
use pbxguard::ami::policy::ClientPolicy;

const ORIGINATE: &[u8] = b"Action: Originate\r\nActionID: dialer-000123\r\nChannel: PJSIP/0612345678@trunk\r\nContext: outbound\r\nExten: 0612345678\r\nPriority: 1\r\nCallerID: \"Campaign 7\" <0123456789>\r\nTimeout: 30000\r\nVariable: CAMPAIGN=7\r\nVariable: LEAD=99812\r\nAsync: true\r\n\r\n";

const EVENT: &[u8] = b"Event: Newchannel\r\nPrivilege: call,all\r\nChannel: PJSIP/100-00000001\r\nChannelState: 4\r\nChannelStateDesc: Ring\r\nCallerIDNum: 100\r\nCallerIDName: Agent\r\nConnectedLineNum: <unknown>\r\nConnectedLineName: <unknown>\r\nLanguage: en\r\nAccountCode: \r\nContext: default\r\nExten: 200\r\nPriority: 1\r\nUniqueid: 1700000000.1\r\nLinkedid: 1700000000.1\r\n\r\n";

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ami");
    g.throughput(Throughput::Bytes(ORIGINATE.len() as u64));
    g.bench_function("frame_client_originate", |b| {
        let mut framer = ClientFramer::default();
        let mut out = Vec::with_capacity(1);
        b.iter(|| {
            framer.push(black_box(ORIGINATE), &mut out);
            out.clear();
        })
    });
    let policy = ClientPolicy {
        name: "dialer".into(),
        allow: vec!["originate".into(), "hangup".into(), "queue*".into()],
        read: classes::parse_class_list("call,agent").unwrap_or(0),
        permit: vec![],
        overrides: vec![],
        contexts: vec!["outbound".into()],
        max_concurrent_calls: None,
        max_call_attempts_per_minute: None,
        updated_at: 0,
    };
    let mut framer = ClientFramer::default();
    let mut msgs = Vec::new();
    framer.push(ORIGINATE, &mut msgs);
    let msg = msgs.remove(0);
    g.bench_function("policy_originate", |b| {
        let root = std::path::Path::new("/var/spool/asterisk/monitor");
        b.iter(|| policy.decide(black_box("originate"), black_box(&msg), root))
    });
    // The toll-fraud rules on the same Originate: its context, Exten and Channel number.
    let dialing = pbxguard::dialing::DialingConfig::default();
    g.bench_function("calls_originate", |b| {
        b.iter(|| {
            pbxguard::ami::calls::check(&policy, black_box("originate"), black_box(&msg), |d| {
                pbxguard::dialing::destination::check_named(d, &dialing)
            })
        })
    });
    g.throughput(Throughput::Bytes(EVENT.len() as u64));
    g.bench_function("frame_upstream_event", |b| {
        let mut framer = UpstreamFramer::default();
        let mut out = Vec::with_capacity(1);
        b.iter(|| {
            framer.buffer().extend_from_slice(black_box(EVENT));
            let _ = framer.messages(&mut out);
            out.clear();
        })
    });
    g.bench_function("privilege_mask", |b| {
        b.iter(|| classes::privilege_mask(black_box(b"call,reporting,all")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
