//! Hot functions of the foundation: vault encryption of a typical secret, and config loading
//! (run at start and on every SIGHUP).
//!
//! cargo bench --bench foundation

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use pbxguard::config::Config;
use pbxguard::vault::{open, seal, Key};

fn vault(c: &mut Criterion) {
    let key = Key::random();
    let secret = [0x5au8; 64];
    c.bench_function("vault seal+open 64 B", |b| {
        b.iter(|| {
            let (nonce, ct) = seal(&key, "k1", "sip/1001", black_box(&secret));
            open(&key, "k1", "sip/1001", &nonce, &ct)
        })
    });
    let (nonce, ct) = seal(&key, "k1", "sip/1001", &secret);
    c.bench_function("vault open 64 B", |b| {
        b.iter(|| open(&key, "k1", "sip/1001", black_box(&nonce), black_box(&ct)))
    });
}

fn config(c: &mut Criterion) {
    let text = include_str!("../etc/pbxguard.toml")
        // The shipped file points at /etc paths that do not exist on a build machine.
        .replace("init_if_missing = false", "init_if_missing = true");
    assert!(Config::parse(&text).is_ok(), "etc/pbxguard.toml must parse");
    c.bench_function("config parse+validate etc/pbxguard.toml", |b| {
        b.iter(|| Config::parse(black_box(&text)))
    });
}

criterion_group!(benches, vault, config);
criterion_main!(benches);
