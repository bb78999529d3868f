//! The forward-auth hot path: JWT verification alone, and the whole check (auth-stamp `stat`,
//! verify, cached session lookup) as `GET /api/v1/auth/check` runs it for every web request.
//!
//! cargo bench --bench auth

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use pbxguard::auth::jwt::{Claims, Keyring, AUDIENCE, ISSUER};
use pbxguard::auth::sessions::Sessions;
use pbxguard::clock::now_unix;
use pbxguard::config::AuthConfig;
use pbxguard::store::{NewHistory, SessionRow, Store};

fn claims(now: i64, sid: &str) -> Claims {
    Claims {
        sub: "alice".into(),
        lvl: 5,
        role: "supervisor".into(),
        sid: sid.into(),
        iat: now as u64,
        nbf: now as u64,
        exp: (now + 3600) as u64,
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
    }
}

fn auth(c: &mut Criterion) {
    let ring = Keyring::from_keys(&[("k1".into(), vec![7; 32])]);
    let now = now_unix();
    let sid = "0123456789abcdef0123456789abcdef";
    let token = ring.sign(&claims(now, sid)).expect("sign");
    c.bench_function("jwt verify (HS256)", |b| {
        b.iter(|| ring.verify(black_box(&token)))
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = rt.block_on(async {
        let store = Store::open(&url, true).await.expect("open");
        store.migrate().await.expect("migrate");
        store
            .insert_user("alice", 5, None, "x")
            .await
            .expect("user");
        let user = store.user("alice").await.expect("query").expect("alice");
        let row = SessionRow {
            id: sid.into(),
            user_id: user.id,
            user: "alice".into(),
            level: 5,
            created_at: now,
            last_seen: now,
            expires_at: now + 3600,
            ip: "127.0.0.1".into(),
            user_agent: "bench".into(),
            revoked_at: None,
            user_level: 5,
            user_disabled: false,
            node: None,
        };
        let history = NewHistory {
            at: now,
            username: "alice",
            ip: "127.0.0.1",
            user_agent: "bench",
            result: "ok",
        };
        store
            .create_session(&row, "x", &history)
            .await
            .expect("session");
        store
    });
    let sessions = Sessions::new(dir.path());
    let cfg = AuthConfig {
        session_idle_timeout: Duration::from_secs(8 * 3600),
        session_max_lifetime: Duration::from_secs(12 * 3600),
        lockout_threshold: 10,
        lockout_window: Duration::from_secs(900),
        lockout_duration: Duration::from_secs(900),
        password_min_length: 12,
        password_min_strength: 2,
        routes: Default::default(),
        history_retention: Duration::from_secs(365 * 86400),
    };
    c.bench_function(
        "check path, JWT verified every time (stamp + verify + cached session)",
        |b| {
            b.iter(|| {
                rt.block_on(async {
                    sessions.sync();
                    let claims = ring.verify(black_box(&token)).expect("valid");
                    sessions
                        .check(&store, &cfg, &claims, now_unix())
                        .await
                        .expect("store")
                        .expect("live")
                })
            })
        },
    );
    // As the daemon serves it: the verified-token cache in front of the JWT check.
    let (auth, cached_token) = rt.block_on(async {
        let vault = pbxguard::vault::Vault::new(pbxguard::vault::Key::random(), store.clone());
        vault.initialise().await.expect("vault");
        vault.set("keys/jwt/k1", &[7; 32]).await.expect("jwt key");
        let auth = pbxguard::auth::Auth::new(&vault, dir.path())
            .await
            .expect("auth");
        let token = auth.keyring.load().sign(&claims(now, sid)).expect("sign");
        (auth, token)
    });
    c.bench_function(
        "check path as served (stamp + token cache + cached session)",
        |b| {
            b.iter(|| {
                rt.block_on(async {
                    auth.sessions.sync();
                    let claims = auth
                        .verify(black_box(&cached_token), now_unix())
                        .expect("valid");
                    auth.sessions
                        .check(&store, &cfg, &claims, now_unix())
                        .await
                        .expect("store")
                        .expect("live")
                })
            })
        },
    );
    c.bench_function("session lookup from SQLite (cache miss)", |b| {
        b.iter(|| {
            rt.block_on(async {
                store
                    .session(black_box(sid))
                    .await
                    .expect("store")
                    .expect("row")
            })
        })
    });
}

criterion_group!(benches, auth);
criterion_main!(benches);
