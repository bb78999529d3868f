//! Recording link tokens: minting, verifying a genuine token, and refusing a forged one (the
//! cost of a flood of bad links, which must stay in microseconds), plus the Range decision.
//!
//! cargo bench --bench recordings

use std::time::{Duration, SystemTime};

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use pbxguard::recordings::range::{plan, Conditions, Validators};
use pbxguard::recordings::LinkKeys;

fn tokens(c: &mut Criterion) {
    let keys = LinkKeys::from_keys(&[
        ("0a0b0c0d".to_string(), &[1u8; 32][..]),
        ("11223344".to_string(), &[2u8; 32][..]),
    ]);
    let id = [7u8; 16];
    let token = keys.mint(&id, i64::MAX).expect("mint");
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).expect("ascii");
    assert!(keys.verify(&forged, 0).is_err());

    let mut g = c.benchmark_group("link_token");
    g.bench_function("mint", |b| {
        b.iter(|| keys.mint(black_box(&id), 4_000_000_000))
    });
    g.bench_function("verify_genuine", |b| {
        b.iter(|| keys.verify(black_box(&token), 1_000))
    });
    g.bench_function("verify_forged", |b| {
        b.iter(|| keys.verify(black_box(&forged), 1_000))
    });
    g.bench_function("verify_garbage", |b| {
        b.iter(|| keys.verify(black_box("../../etc/passwd"), 1_000))
    });
    g.finish();

    let v = Validators::new(
        100 * 1024 * 1024,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_947_300),
    );
    let mut g = c.benchmark_group("range_plan");
    for (name, header) in [
        ("single", "bytes=1048576-2097151"),
        ("multi", "bytes=0-99,200-299,-100"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                plan(
                    black_box(&Conditions {
                        range: Some(header),
                        ..Default::default()
                    }),
                    &v,
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, tokens);
criterion_main!(benches);
