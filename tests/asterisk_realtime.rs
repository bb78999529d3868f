//! SIP passwords from the vault, fetched by a real Asterisk 22 through `res_config_curl` and
//! `func_curl` from pbxguard's `[realtime]` listener, configured from the shipped
//! `etc/asterisk/` examples (`extconfig.conf`, `sorcery.conf`, `pjsip.conf`).

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::ami::{header, headers, AmiClient};
use common::asterisk::{self, Asterisk, Setup};
use common::sip::{digest, rnd, SipMsg};
use common::{free_port, Daemon, Env};

const RT_USER: &str = "asterisk";
const RT_PASSWORD: &str = "realtime-password-for-tests";
/// Characters a site's generated password has; Asterisk must get it byte for byte.
const PHONE_PASSWORD: &str = "vault-only;pw&1001=%x";

struct Site {
    ast: Asterisk,
    env: Env,
    daemon: Daemon,
}

/// pbxguard with `[realtime]` (and `[ami]`), credentials stored with the CLI, then Asterisk
/// whose extconfig.conf URL carries `url_password`.
fn site(url_password: &str) -> Option<Site> {
    let prefix = asterisk::prefix()?;
    let env = Env::new();
    let rt_port = free_port();
    let ami_port = free_port();
    // Asterisk's AMI port is only known once it runs; the gateway connects lazily, so the
    // config is written again below with it.
    let write = |ast_ami: u16| {
        let extra = format!(
            "\n[realtime]\nlisten = \"127.0.0.1:{rt_port}\"\nusername = \"{RT_USER}\"\n\
             \n[ami]\nlisten = \"127.0.0.1:{ami_port}\"\nupstream = \"127.0.0.1:{ast_ami}\"\n"
        );
        env.write_config(&env.config_text(env.http_port, env.redirect_port, &extra));
    };
    write(1);
    env.init();
    env.ok(
        &["secret", "set", "realtime/password"],
        format!("{RT_PASSWORD}\n").as_bytes(),
    );
    for ext in ["1001", "2001"] {
        let pw = if ext == "1001" {
            PHONE_PASSWORD.to_string()
        } else {
            format!("pw-{ext}")
        };
        env.set_sip_credential(ext, &pw);
    }
    let ast = Asterisk::start(
        &prefix,
        &Setup {
            realtime: Some((rt_port, RT_USER.into(), url_password.into())),
            // The admin guide's variant for a client that needs Command.
            manager_permissions: Some((
                "system,call,agent,user,dtmf,reporting,cdr,dialplan".into(),
                "call,agent,user,reporting,originate,command".into(),
            )),
            ..Setup::default()
        },
    );
    write(ast.ami_port);
    env.ok(
        &["secret", "set", "ami/upstream"],
        ast.ami_secret.as_bytes(),
    );
    env.ok(
        &[
            "ami",
            "user",
            "add",
            "ops",
            "--password-stdin",
            "--allow",
            "Command,Ping",
        ],
        b"ops-secret-1",
    );
    let daemon = env.start();
    daemon.wait_for_port(rt_port);
    daemon.wait_for_port(ami_port);
    let _ = std::fs::write(env.path("ami.port"), ami_port.to_string());
    Some(Site { ast, env, daemon })
}

/// A REGISTER for `user` over UDP straight to Asterisk's loopback transport, answering the
/// digest challenge with `password`. Returns the final status.
fn register(sip_port: u16, user: &str, password: &str) -> u16 {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let local = sock.local_addr().expect("addr");
    let call_id = rnd();
    let from_tag = rnd();
    let uri = format!("sip:127.0.0.1:{sip_port}");
    let send = |cseq: u32, auth: Option<&str>| {
        let mut msg = format!(
            "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@127.0.0.1>;tag={from_tag}\r\n\
             To: <sip:{user}@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@{local}>\r\nExpires: 60\r\n",
            rnd()
        );
        if let Some(a) = auth {
            msg.push_str(&format!("Authorization: {a}\r\n"));
        }
        msg.push_str("Content-Length: 0\r\n\r\n");
        sock.send_to(msg.as_bytes(), ("127.0.0.1", sip_port))
            .expect("send");
    };
    let recv_final = || -> SipMsg {
        let mut buf = [0u8; 65536];
        loop {
            let (n, _) = sock.recv_from(&mut buf).expect("no answer from Asterisk");
            let m = SipMsg::parse(&buf[..n]).expect("parse");
            if m.status().is_some_and(|s| s >= 200) {
                return m;
            }
        }
    };
    send(1, None);
    let challenge = recv_final();
    if challenge.status() != Some(401) {
        return challenge.status().unwrap_or(0);
    }
    let www = challenge
        .header("WWW-Authenticate")
        .expect("challenge")
        .to_string();
    send(2, Some(&digest(&www, user, password, "REGISTER", &uri)));
    recv_final().status().unwrap_or(0)
}

#[test]
fn asterisk_authenticates_phones_with_passwords_only_the_vault_holds() {
    let Some(s) = site(RT_PASSWORD) else {
        return;
    };
    // pjsip.conf and sorcery.conf hold no password: Asterisk fetches the auth object.
    let conf = std::fs::read_to_string(s.ast.etc().join("pjsip.conf")).expect("pjsip.conf");
    assert!(!conf.contains(PHONE_PASSWORD));
    assert_eq!(register(s.ast.sip_port, "1001", PHONE_PASSWORD), 200);
    assert_eq!(register(s.ast.sip_port, "2001", "pw-2001"), 200);
    assert_eq!(register(s.ast.sip_port, "1001", "not-the-password"), 401);
    let contacts = s.ast.cli("pjsip show contacts");
    assert!(contacts.contains("1001/sip:1001@127.0.0.1"), "{contacts}");

    // `pjsip show auth` on Asterisk's own console finds the realtime object; `pjsip show
    // auths` lists none, because sorcery.conf's allow_unqualified_fetch=no keeps Asterisk from
    // fetching every password at once.
    let auth = s.ast.cli("pjsip show auth 1001");
    assert!(auth.contains("1001"), "{auth}");
    assert!(auth.contains("userpass"), "{auth}");
    let auths = s.ast.cli("pjsip show auths");
    assert!(auths.contains("No objects found"), "{auths}");
    // The realtime requests were Asterisk's, logged by pbxguard.
    let metrics = s.env.request("GET", "/metrics", &[], None);
    assert!(
        metrics
            .body
            .contains("pbxguard_realtime_decryptions_total{result=\"ok\"}"),
        "{}",
        metrics.body
    );

    // Through the AMI gateway the same command is refused: the password stays in the vault.
    let ami_port: u16 = std::fs::read_to_string(s.env.path("ami.port"))
        .expect("port")
        .parse()
        .expect("port");
    let mut c = AmiClient::connect(ami_port);
    let r = c.login("ops", "ops-secret-1");
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    // (command, refused by pbxguard): the others print no password and may pass.
    for (cmd, refused) in [
        ("pjsip show auth 1001", true),
        ("PJSIP  Show   Auth 1001", true),
        ("realtime load ps_auths id 1001", true),
        ("pjsip show auths", false),
        ("pjsip show endpoint 1001", false),
    ] {
        let r = c.action(&[("Action", "Command"), ("Command", cmd)]);
        let text = format!("{r:?}");
        assert!(!text.contains(PHONE_PASSWORD), "{cmd}: {text}");
        let want = if refused { "Error" } else { "Success" };
        assert_eq!(header(&r, "Response"), Some(want), "{cmd}: {r:?}");
    }
    // What the refusal protects: Asterisk itself prints the vault's password.
    assert!(auth.contains(PHONE_PASSWORD), "{auth}");
    // Control: a command that prints no secret reaches Asterisk and answers.
    let r = c.action(&[("Action", "Command"), ("Command", "pjsip show version")]);
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    assert!(
        headers(&r, "Output").join(" ").contains("PJPROJECT"),
        "{r:?}"
    );
}

#[test]
fn wrong_realtime_password_fails_visibly_on_both_sides() {
    let Some(s) = site("wrong-password") else {
        return;
    };
    // The phone cannot register: Asterisk cannot fetch its auth object.
    let status = register(s.ast.sip_port, "1001", PHONE_PASSWORD);
    // Asterisk answers 500 at once (no auth object), rather than challenging.
    assert_eq!(status, 500);
    s.daemon
        .wait_for_log("realtime request with wrong credentials refused");
    // Asterisk 22.10.1 says: NOTICE res_pjsip/pjsip_configuration.c: Couldn't find auth
    // '1001'. Cannot authenticate
    assert!(
        s.ast
            .wait_for_log("Couldn't find auth '1001'", Duration::from_secs(5)),
        "{}",
        s.ast.log()
    );
    // Once the URL carries the right password (and Asterisk reloads), the phone registers.
    let ext = s.ast.etc().join("extconfig.conf");
    let text = std::fs::read_to_string(&ext).expect("extconfig.conf");
    std::fs::write(
        &ext,
        text.replace(":wrong-password@", &format!(":{RT_PASSWORD}@")),
    )
    .expect("write");
    s.ast.cli("module reload res_config_curl.so");
    s.ast.cli("module reload extconfig");
    assert_eq!(register(s.ast.sip_port, "1001", PHONE_PASSWORD), 200);
}
