//! The login phase of an AMI client, answered by pbxguard with Asterisk's texts and timing:
//! `Challenge`, `Login` (Secret, or MD5 Key over the challenge), `Logoff`, and `Permission
//! denied` for anything else. A successful login gets the client its own Asterisk session.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::AsyncRead;
use tracing::{debug, warn};

use super::classes;
use super::codec::{ClientFramer, Message};
use super::config::AmiConfig;
use super::guards::BanRules;
use super::policy::{lower, ClientPolicy};
use super::session::{
    answer, malformed, read_messages, truncate, Accepted, Login, Output, MAX_MESSAGES_BEFORE_LOGIN,
};
use super::upstream::{self, Upstream};
use super::Gateway;
use crate::metrics::ResultLabels;
use crate::store::AuditEntry;

/// Asterisk sleeps this long before answering a failed login.
const AUTH_FAILURE_DELAY: Duration = Duration::from_secs(1);

fn challenge_text() -> String {
    // `snprintf(challenge, 10, "%ld", ast_random())`: decimal, at most 9 characters.
    let mut s = (rand::random::<u32>() & 0x7fff_ffff).to_string();
    s.truncate(9);
    s
}

pub(super) fn challenge_answer(msg: &Message, challenge: &mut Option<String>) -> Vec<u8> {
    let id = msg.action_id();
    if !msg
        .get("AuthType")
        .is_some_and(|t| t.eq_ignore_ascii_case(b"md5"))
    {
        return answer("Error", id, "Must specify AuthType");
    }
    let c = challenge.get_or_insert_with(challenge_text);
    let mut out = b"Response: Success\r\n".to_vec();
    if let Some(id) = id {
        out.extend_from_slice(b"ActionID: ");
        out.extend_from_slice(id);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Challenge: {c}\r\n\r\n").as_bytes());
    out
}

pub(super) async fn login<R: AsyncRead + Unpin>(
    gw: &Gateway,
    cfg: &AmiConfig,
    rd: &mut R,
    framer: &mut ClientFramer,
    out: &Output,
    peer: SocketAddr,
) -> Login {
    let mut queue = VecDeque::new();
    let mut challenge: Option<String> = None;
    let mut seen = 0;
    loop {
        while let Some(msg) = queue.pop_front() {
            seen += 1;
            if seen > MAX_MESSAGES_BEFORE_LOGIN {
                debug!(%peer, "AMI connection closed: too many messages before login");
                return Login::Close;
            }
            if let Some(err) = malformed(&msg) {
                if out.send(err).is_err() {
                    return Login::Close;
                }
                continue;
            }
            let action = lower(msg.action().unwrap_or_default());
            let id = msg.action_id();
            let reply = match action.as_str() {
                "challenge" => challenge_answer(&msg, &mut challenge),
                "logoff" => {
                    let _ = out.send(answer("Goodbye", id, "Thanks for all the fish."));
                    return Login::Close;
                }
                "login" => {
                    return match authenticate(gw, cfg, &msg, challenge.as_deref(), peer).await {
                        Ok((policy, credential, upstream, mask)) => {
                            if out
                                .send(answer("Success", id, "Authentication accepted"))
                                .is_err()
                            {
                                return Login::Close;
                            }
                            Login::Accepted(Box::new(Accepted {
                                policy: Arc::new(ArcSwap::from_pointee(policy)),
                                credential,
                                upstream,
                                mask,
                                rest: queue,
                            }))
                        }
                        Err(message) => {
                            let _ = out.send(answer("Error", id, message));
                            Login::Close
                        }
                    };
                }
                _ => answer("Error", id, "Permission denied"),
            };
            if out.send(reply).is_err() {
                return Login::Close;
            }
        }
        if !read_messages(rd, framer, &mut queue).await {
            return Login::Close;
        }
    }
}

/// Checks the client's credentials and gets it an Asterisk session. The error is the message
/// for the client: Asterisk's `Authentication failed` for every credential problem (after its
/// one-second delay), a plain statement when Asterisk itself cannot be reached.
async fn authenticate(
    gw: &Gateway,
    cfg: &AmiConfig,
    msg: &Message,
    challenge: Option<&str>,
    peer: SocketAddr,
) -> Result<(ClientPolicy, i64, Upstream, u32), &'static str> {
    let username = lower(msg.get("Username").unwrap_or_default());
    let rules = BanRules {
        threshold: cfg.ban_threshold,
        window: cfg.ban_window,
        duration: cfg.ban_duration,
    };
    let metrics = &gw.ctx.metrics;
    let verdict = check_credentials(gw, msg, &username, challenge, peer).await;
    let username = truncate(&username, 64);
    let (policy, credential) = match verdict {
        Ok(p) => p,
        Err(Failure { reason, counts }) => {
            let now = Instant::now();
            let banned = reason == BANNED;
            if counts == Counts::AddressAndUser && gw.lockouts.failure(&username, rules, now) {
                warn!(%peer, user = %username, duration = ?cfg.ban_duration, "AMI login ban started for the user after repeated failures");
            }
            if counts != Counts::Nothing
                && gw.ctx.bans.strike(
                    peer.ip(),
                    crate::bans::Source::Ami,
                    "login_failures",
                    cfg.ban_threshold,
                    cfg.ban_window,
                    Some(cfg.ban_duration),
                )
            {
                warn!(%peer, duration = ?cfg.ban_duration, "AMI login ban started for the address after repeated failures");
            }
            warn!(%peer, user = %username, reason, "AMI login failed");
            metrics
                .ami_logins
                .get_or_create(&ResultLabels {
                    result: if banned { "banned" } else { "failed" },
                })
                .inc();
            gw.ctx.journal.record(AuditEntry {
                at: crate::clock::now_unix(),
                actor: format!("ami:{username}"),
                action: "ami.login_failed".into(),
                target: peer.ip().to_string(),
                detail: reason.to_string(),
                node: None,
            });
            tokio::time::sleep(AUTH_FAILURE_DELAY).await;
            return Err("Authentication failed");
        }
    };
    let requested = msg
        .get("Events")
        .and_then(classes::strings_to_mask)
        .unwrap_or(u32::MAX);
    let mask = requested & policy.read;
    let events = classes::mask_text(mask);
    match gw.upstream_for(cfg, &events).await {
        Ok(up) => {
            metrics
                .ami_logins
                .get_or_create(&ResultLabels { result: "ok" })
                .inc();
            Ok((policy, credential, up, mask))
        }
        Err(e) => {
            warn!(%peer, client = %policy.name, error = %e, "AMI login refused: Asterisk is unreachable");
            metrics
                .ami_logins
                .get_or_create(&ResultLabels {
                    result: "upstream_down",
                })
                .inc();
            Err("Asterisk is not reachable through pbxguard; try again later")
        }
    }
}

const BANNED: &str = "banned after repeated failures";

/// What a failed login counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counts {
    /// pbxguard's own trouble (store, vault), or an attempt while banned.
    Nothing,
    Address,
    /// A wrong secret for an existing user from an address it may log in from.
    AddressAndUser,
}

struct Failure {
    reason: &'static str,
    counts: Counts,
}

fn fail<T>(reason: &'static str, counts: Counts) -> Result<T, Failure> {
    Err(Failure { reason, counts })
}

async fn check_credentials(
    gw: &Gateway,
    msg: &Message,
    username: &str,
    challenge: Option<&str>,
    peer: SocketAddr,
) -> Result<(ClientPolicy, i64), Failure> {
    if gw.ctx.bans.banned(peer.ip()).is_some()
        || gw.lockouts.check(username, Instant::now()).is_some()
    {
        return fail(BANNED, Counts::Nothing);
    }
    let Ok(name) = super::normalise_name(username) else {
        return fail("unknown user", Counts::Address);
    };
    let row = match gw.ctx.store.ami_client(&name).await {
        Ok(Some(row)) => row,
        Ok(None) => return fail("unknown user", Counts::Address),
        Err(e) => {
            warn!(error = %e, "AMI client lookup failed");
            return fail("store unavailable", Counts::Nothing);
        }
    };
    let policy = super::policy_from_row(&row);
    let ip = crate::net::canonical_ip(peer.ip());
    if !policy.permit.iter().any(|net| net.contains(&ip)) {
        return fail(
            "source address not in the client's permit list",
            Counts::Address,
        );
    }
    let secret = match gw.ctx.vault.get(&super::client_secret_name(&name)).await {
        Ok(s) => s,
        Err(e) => {
            warn!(client = %name, error = %e, "AMI client secret unavailable");
            return fail("secret unavailable", Counts::Nothing);
        }
    };
    let md5 = msg
        .get("AuthType")
        .is_some_and(|t| t.eq_ignore_ascii_case(b"md5"));
    // Digests of equal length are compared, so the time taken says nothing about lengths.
    let same = |a: &[u8], b: &[u8]| bool::from(Sha256::digest(a).ct_eq(&Sha256::digest(b)));
    let ok = if md5 {
        match (challenge, msg.get("Key")) {
            (Some(c), Some(key)) => same(upstream::md5_key(c.as_bytes(), &secret).as_bytes(), key),
            _ => false,
        }
    } else {
        same(&secret, msg.get("Secret").unwrap_or_default())
    };
    if ok {
        Ok((policy, row.credential))
    } else {
        fail("wrong secret or key", Counts::AddressAndUser)
    }
}
