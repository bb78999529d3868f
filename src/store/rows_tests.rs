//! Every row type read back after a write: rows are mapped by column name, so a column that is
//! renamed, aliased wrongly or left out of a SELECT fails here rather than in a handler.

use super::*;

async fn fresh(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite://{}", dir.path().join("rows.db").display());
    let store = Store::open(&url, true).await.unwrap().with_node("pbx-a");
    store.migrate().await.unwrap();
    store
}

fn session(id: &str, user_id: i64, level: u8) -> SessionRow {
    SessionRow {
        id: id.into(),
        user_id,
        user: "alice".into(),
        level,
        created_at: 100,
        last_seen: 110,
        expires_at: 10_000,
        ip: "192.0.2.7".into(),
        user_agent: "agent/1".into(),
        revoked_at: None,
        user_level: level,
        user_disabled: false,
        node: Some("pbx-a".into()),
    }
}

fn login<'a>(at: i64, result: &'a str) -> NewHistory<'a> {
    NewHistory {
        at,
        username: "Alice",
        ip: "192.0.2.7",
        user_agent: "agent/1",
        result,
    }
}

#[tokio::test]
async fn users_sessions_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(&dir).await;
    assert!(store
        .insert_user("alice", 3, Some("alice@example.org"), "hash-a")
        .await
        .unwrap());
    assert!(store.insert_user("bob", 9, None, "hash-b").await.unwrap());
    store.set_user_disabled("bob", true).await.unwrap();

    let alice = store.user("alice").await.unwrap().unwrap();
    assert_eq!(
        (alice.name.as_str(), alice.level, alice.email.as_deref()),
        ("alice", 3, Some("alice@example.org"))
    );
    assert_eq!(
        (alice.password_hash.as_str(), alice.disabled),
        ("hash-a", false)
    );
    assert!(alice.created_at > 0 && alice.updated_at >= alice.created_at);
    assert_eq!(
        store.user_by_id(alice.id).await.unwrap(),
        Some(alice.clone())
    );
    let all = store.users().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], alice);
    assert_eq!((all[1].name.as_str(), all[1].level), ("bob", 9));
    assert_eq!((all[1].email.as_deref(), all[1].disabled), (None, true));

    let s = session("s1", alice.id, 3);
    assert!(store
        .create_session(&s, "hash-a", &login(100, "ok"))
        .await
        .unwrap());
    assert_eq!(store.session("s1").await.unwrap(), Some(s.clone()));
    assert_eq!(
        store.live_sessions(Some("alice"), 200, 3600).await.unwrap(),
        vec![s]
    );
    store.set_user_level("alice", 5).await.unwrap();
    let after = store.session("s1").await.unwrap().unwrap();
    // The session keeps the level it was made with; the join brings the user's current one.
    assert_eq!((after.level, after.user_level), (3, 5));
    assert!(
        after.revoked_at.is_some(),
        "a level change ends the session"
    );

    store
        .record_login(&login(120, "bad_password"))
        .await
        .unwrap();
    let history = store.history(Some("alice"), 10).await.unwrap();
    assert_eq!(
        history,
        vec![
            HistoryRow {
                at: 120,
                user: "Alice".into(),
                ip: "192.0.2.7".into(),
                user_agent: "agent/1".into(),
                result: "bad_password".into(),
                node: Some("pbx-a".into()),
            },
            HistoryRow {
                at: 100,
                user: "Alice".into(),
                ip: "192.0.2.7".into(),
                user_agent: "agent/1".into(),
                result: "ok".into(),
                node: Some("pbx-a".into()),
            },
        ]
    );
}

#[tokio::test]
async fn second_factor_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(&dir).await;
    store
        .insert_user("alice", 2, Some("alice@example.org"), "h")
        .await
        .unwrap();
    store.insert_user("bob", 4, None, "h").await.unwrap();
    let alice = store.user("alice").await.unwrap().unwrap();
    let bob = store.user("bob").await.unwrap().unwrap();

    let pending = PendingRow {
        token_hash: "th".into(),
        attempt: "at".into(),
        kind: "mfa".into(),
        user_id: alice.id,
        password_hash: "h".into(),
        methods: "totp".into(),
        ip: "198.51.100.4".into(),
        user_agent: "ua".into(),
        created_at: 50,
        expires_at: 350,
        failures: 0,
        used_at: None,
        email_code_hash: None,
        email_sent_at: None,
        email_code_failures: 0,
        emails_sent: 0,
    };
    store
        .insert_pending(std::slice::from_ref(&pending))
        .await
        .unwrap();
    assert_eq!(store.pending("th").await.unwrap(), Some(pending.clone()));
    store.set_email_code("th", "ch", 60, 400).await.unwrap();
    assert!(store.claim_try("th", 5, 61).await.unwrap());
    let changed = store.pending("th").await.unwrap().unwrap();
    assert_eq!(
        (
            changed.email_code_hash.as_deref(),
            changed.email_sent_at,
            changed.expires_at,
            changed.failures
        ),
        (Some("ch"), Some(60), 400, 1)
    );

    assert!(store.confirm_totp(alice.id, 70, 7).await.unwrap());
    store.set_exemption(bob.id, 900, "admin", 80).await.unwrap();
    assert_eq!(
        store.mfa_status(100).await.unwrap(),
        vec![
            MfaStatusRow {
                user: "alice".into(),
                level: 2,
                email: Some("alice@example.org".into()),
                totp_confirmed_at: Some(70),
                exempt_until: None,
            },
            MfaStatusRow {
                user: "bob".into(),
                level: 4,
                email: None,
                totp_confirmed_at: None,
                exempt_until: Some(900),
            },
        ]
    );
    // An exemption that has ended is not shown.
    assert_eq!(store.mfa_status(900).await.unwrap()[1].exempt_until, None);
}

#[tokio::test]
async fn vault_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(&dir).await;
    let key = KeyRow {
        id: "k1".into(),
        generation: 1,
        nonce: vec![1; 12],
        wrapped: vec![2; 48],
        created_at: 10,
    };
    assert!(store.insert_first_data_key(&key).await.unwrap());
    let same_key = |k: &KeyRow| {
        (&k.id, k.generation, &k.nonce, &k.wrapped, k.created_at)
            == (
                &key.id,
                key.generation,
                &key.nonce,
                &key.wrapped,
                key.created_at,
            )
    };
    assert!(same_key(&store.data_key("k1").await.unwrap().unwrap()));
    assert!(same_key(&store.current_data_key().await.unwrap().unwrap()));
    let keys = store.data_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert!(same_key(&keys[0]));

    let secret = SecretRow {
        name: "sip/2001".into(),
        key_id: "k1".into(),
        nonce: vec![3; 12],
        ciphertext: vec![4; 40],
        created_at: 20,
        updated_at: 30,
    };
    assert!(store.put_secret(&secret).await.unwrap());
    let same_secret = |s: &SecretRow| {
        (
            &s.name,
            &s.key_id,
            &s.nonce,
            &s.ciphertext,
            s.created_at,
            s.updated_at,
        ) == (
            &secret.name,
            &secret.key_id,
            &secret.nonce,
            &secret.ciphertext,
            secret.created_at,
            secret.updated_at,
        )
    };
    assert!(same_secret(
        &store.secret("sip/2001").await.unwrap().unwrap()
    ));
    let all = store.secrets().await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(same_secret(&all[0]));

    // Rotation reads every secret as a row too.
    let next = KeyRow {
        id: "k2".into(),
        generation: 2,
        ..key.clone()
    };
    let seen = store
        .rotate_data_key(&next, |row| {
            assert!(same_secret(row));
            Ok::<_, ()>(SecretRow {
                key_id: "k2".into(),
                ..row.clone()
            })
        })
        .await
        .unwrap();
    assert_eq!(seen, Ok(1));
    assert_eq!(
        store.secret("sip/2001").await.unwrap().unwrap().key_id,
        "k2"
    );
}

#[tokio::test]
async fn links_ami_sip_and_audit_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(&dir).await;

    let link = LinkRow {
        id: "l1".into(),
        path: "2026/01/call.wav".into(),
        key_id: "rk1".into(),
        minted_by: "alice".into(),
        minted_ip: "192.0.2.9".into(),
        created_at: 100,
        expires_at: 500,
        revoked_at: None,
        revoked_by: None,
        node: Some("pbx-b".into()),
    };
    store.insert_link(&link).await.unwrap();
    assert_eq!(store.link("l1").await.unwrap(), Some(link.clone()));
    assert_eq!(store.live_links_signed_by("rk1", 200).await.unwrap(), 1);
    assert!(store.revoke_link("l1", "bob", 300).await.unwrap());
    let filter = LinkFilter {
        path: Some(link.path.clone()),
        all: true,
        limit: 10,
    };
    let revoked = LinkRow {
        revoked_at: Some(300),
        revoked_by: Some("bob".into()),
        ..link
    };
    assert_eq!(store.links(&filter, 301).await.unwrap(), vec![revoked]);

    let client = AmiClientRow {
        name: "crm".into(),
        allow: "Originate".into(),
        events: "call".into(),
        permit: "127.0.0.1/32".into(),
        overrides: "{}".into(),
        created_at: 40,
        updated_at: 40,
    };
    assert!(store.put_ami_client(&client).await.unwrap());
    assert_eq!(store.ami_client("crm").await.unwrap(), Some(client.clone()));
    assert_eq!(store.ami_clients().await.unwrap(), vec![client]);

    assert!(store.put_sip_credential("2001", "u2001", 60).await.unwrap());
    assert!(!store.put_sip_credential("2001", "v2001", 70).await.unwrap());
    let cred = SipCredentialRow {
        id: "2001".into(),
        username: "v2001".into(),
        created_at: 60,
        updated_at: 70,
    };
    assert_eq!(
        store.sip_credential("2001").await.unwrap(),
        Some(cred.clone())
    );
    assert_eq!(store.sip_credentials().await.unwrap(), vec![cred]);

    store
        .put_sip_ban("198.51.100.3", "flood", 80, 800)
        .await
        .unwrap();
    assert_eq!(
        store.sip_bans(90).await.unwrap(),
        vec![SipBanRow {
            ip: "198.51.100.3".into(),
            reason: "flood".into(),
            created_at: 80,
            expires_at: 800,
        }]
    );

    store.insert_user("alice", 1, None, "h").await.unwrap();
    store.insert_user("bob", 1, None, "h").await.unwrap();
    assert_eq!(store.user_extension("alice").await.unwrap(), None);
    assert_eq!(store.user_extension("nobody").await.unwrap(), None);
    assert_eq!(
        store
            .set_user_extension("alice", Some("2001"), 1)
            .await
            .unwrap(),
        ExtensionSet::Done
    );
    assert_eq!(
        store
            .set_user_extension("bob", Some("2001"), 1)
            .await
            .unwrap(),
        ExtensionSet::Taken("alice".into())
    );
    assert_eq!(
        store.user_extension("alice").await.unwrap().as_deref(),
        Some("2001")
    );
    assert_eq!(
        store.user_extensions().await.unwrap(),
        vec![("alice".to_string(), "2001".to_string())]
    );

    let entry = AuditEntry {
        at: 5,
        actor: "alice".into(),
        action: "user.add".into(),
        target: "bob".into(),
        detail: "level 1".into(),
        node: Some("pbx-a".into()),
    };
    store
        .audit_many(std::slice::from_ref(&entry))
        .await
        .unwrap();
    assert_eq!(store.audit_entries(10).await.unwrap(), vec![entry]);
}
