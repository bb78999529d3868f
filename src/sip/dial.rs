//! The toll-fraud guard at the SIP edge: what a phone's new INVITE dials, which extension
//! places it, and the slot each call it places holds in that extension's limits
//! ([`crate::dialing`] holds the rules and the counters; this module decides when a slot is
//! taken and when it is given back).
//!
//! A call counts from the phone's INVITE until its final answer; a 2xx keeps it until a BYE
//! from either side ends the dialog or the edge ends the call. It is known by its Call-ID and
//! the phone's tag (the INVITE's From tag): a retransmission and the INVITE sent again with
//! credentials after a 401/407 keep both, so they are the same call, while a new dialog that
//! reuses a Call-ID is not (keying by Call-ID alone would let one Call-ID carry any number of
//! calls). pjsip does not detect merged requests, so any other INVITE that repeats a counted
//! call's Call-ID and tag would be a second call at Asterisk hidden in the first one's slot:
//! it is refused. Only answers to the counted INVITE (its CSeq) and to BYEs within its dialog
//! (Asterisk's tag) change a slot, so a phone cannot free its own slot with requests that
//! fail on purpose. Calls Asterisk places to a phone are not counted: the dialplan that placed them is
//! Asterisk's, not the phone's, and a phone cannot make Asterisk call it. A REFER's target is
//! checked like a dialled number ([`transfer_target`]): a blind transfer makes Asterisk dial it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::flow::Flow;
use super::message::Message;
use super::transaction::PROCEEDING_LIMIT;
use crate::dialing::{limits::MAX_CALL_AGE, Limited, Limits, Offender};

/// Calls tracked at once, at most: far above what one edge carries.
const MAX_SLOTS: usize = 50_000;
/// How long a challenged INVITE keeps its slot for the phone to send it again with
/// credentials (pjsip's nonces live 32 s): the call is still being placed, so the challenge
/// neither frees the slot nor makes the second INVITE a second attempt.
pub const CHALLENGE_GRACE: Duration = Duration::from_secs(32);
/// Extensions remembered per connection from REGISTERs Asterisk accepted (a desk phone with a
/// few lines registers each).
const MAX_REGISTERED: usize = 16;
/// Longest From user taken as an extension; longer ones are cut (the key stays bounded).
const MAX_EXTENSION: usize = 64;

/// What an initial INVITE dials: the Request-URI's user part, as pjsip hands it to the dialplan
/// (already percent-decoded by our URI parser, which refuses broken escapes and control
/// characters). `None` when the URI has no user part: pjsip then routes the call to the `s`
/// extension (PLAR phones, hotlines), a fixed dialplan entry no caller can put digits or
/// dialplan syntax into, so there is nothing to check; the call still counts in the limits.
pub fn dialled(invite: &Message) -> Option<&str> {
    invite
        .request_uri()
        .and_then(|u| u.user.as_deref())
        .filter(|u| !u.is_empty())
}

/// What a REFER asks Asterisk to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transfer {
    /// No Refer-To, or one without a user part (pjsip refuses or routes those itself).
    Nothing,
    /// The Refer-To user part, decoded: pjsip's blind transfer runs it through the dialplan
    /// as `${EXTEN}`, just like an INVITE's.
    To(String),
    /// A Refer-To our parser cannot read: pjsip might, and we cannot vouch for what it would
    /// dial.
    Unreadable,
}

pub fn transfer_target(refer: &Message) -> Transfer {
    let Some(value) = refer.header("Refer-To") else {
        return Transfer::Nothing;
    };
    match super::uri::NameAddr::parse(value) {
        Ok(target) => match target.uri.user.filter(|u| !u.is_empty()) {
            Some(user) => Transfer::To(user),
            None => Transfer::Nothing,
        },
        Err(_) => Transfer::Unreadable,
    }
}

/// The extension a connection places calls as: the WebSocket ticket's; else one whose REGISTER
/// Asterisk accepted on this connection (the INVITE's From user when it is one of them, the
/// first otherwise); else the username of the INVITE's credentials, the account pjsip
/// authenticates it as (with `identify_by=auth_username` the From user is free text, and a
/// caller inventing one per INVITE would get fresh limits each time); else the INVITE's From
/// user (`anonymous` without one), which is only a claim but the best there is before the
/// phone has registered or answered a challenge.
pub fn offender(flow: &Flow, invite: &Message) -> Offender {
    if let Some(b) = &flow.binding {
        return Offender::Extension(b.extension.clone());
    }
    let from = invite.from().and_then(|f| f.uri.user).map(|u| bounded(&u));
    let registered = flow.registered();
    if let Some(user) = from.as_ref().filter(|u| registered.contains(u)) {
        return Offender::Extension(user.clone());
    }
    if let Some(first) = registered.first() {
        return Offender::Extension(first.clone());
    }
    let credentials = ["Authorization", "Proxy-Authorization"]
        .into_iter()
        .filter_map(|h| invite.header(h))
        .find_map(super::digest::credentials_user)
        .filter(|u| !u.is_empty());
    if let Some(user) = credentials {
        return Offender::Extension(bounded(&user));
    }
    Offender::Extension(from.unwrap_or_else(|| "anonymous".to_string()))
}

fn bounded(user: &str) -> String {
    user.chars().take(MAX_EXTENSION).collect()
}

/// Remembers that Asterisk accepted a REGISTER of `user` on `flow`.
pub fn registered(flow: &Flow, user: &str) {
    flow.add_registered(bounded(user), MAX_REGISTERED);
}

/// A call the phone places: its Call-ID and the phone's tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallKey {
    pub call_id: String,
    pub tag: String,
}

impl CallKey {
    /// The call of a request the phone sent, or of an answer to one: the phone's tag is the
    /// From tag.
    pub fn of_caller(msg: &Message) -> Option<CallKey> {
        let call_id = msg.call_id()?;
        let from = msg.from()?;
        Some(CallKey {
            call_id: call_id.to_string(),
            tag: from.tag().unwrap_or_default().to_string(),
        })
    }

    /// The call of a request Asterisk sends within it (its BYE): the phone's tag is the To tag.
    pub fn of_callee(msg: &Message) -> Option<CallKey> {
        let call_id = msg.call_id()?;
        let to = msg.to()?;
        Some(CallKey {
            call_id: call_id.to_string(),
            tag: to.tag()?.to_string(),
        })
    }

    /// The INVITE's own transaction: its CSeq number and top Via branch (`None` when the
    /// message has no CSeq, which the parser does not let through).
    pub fn attempt(msg: &Message) -> Option<Attempt> {
        let (cseq, _) = msg.cseq()?;
        let branch = msg
            .top_via()
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        Some(Attempt { cseq, branch })
    }

    /// The id the limiter knows the call by (NUL cannot occur in either part).
    fn id(&self) -> String {
        format!("{}\0{}", self.call_id, self.tag)
    }
}

/// Which INVITE of a call: a retransmission repeats both, the INVITE sent again with
/// credentials has a new branch and a higher CSeq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// As Asterisk sees it (after the edge's renumbering for a browser).
    pub cseq: u32,
    /// The phone's branch (a retransmission's is the same).
    pub branch: String,
}

pub use crate::dialing::Counter;

/// Why a call got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// A limit of the extension (answered 486 or 503 with `Retry-After`).
    Limited(Limited),
    /// Another connection's call, as another extension, already has this Call-ID and tag: a
    /// merged request (RFC 3261 §8.2.2.2, `482`), never a second call hidden in the first.
    Merged,
    /// Another INVITE of this Call-ID and tag while the counted one rings or is up (not a
    /// retransmission, not the re-send after a challenge): pjsip would start a second dialog
    /// that no slot counts (`482`).
    Repeated,
    /// The table is full (`503`).
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The INVITE is on its way or ringing (since then).
    Placing(Instant),
    /// Asterisk challenged it (since then): the phone or the edge sends it again.
    Challenged(Instant),
    /// Answered: up until a BYE.
    Up,
}

#[derive(Debug, Clone)]
struct Slot {
    offender: Offender,
    flow: u64,
    state: State,
    since: Instant,
    /// The INVITE counted: only its answers place or end the call.
    attempt: Attempt,
    /// Asterisk's tag in the 2xx: a BYE with another To tag is not this dialog's.
    remote_tag: Option<String>,
}

/// The calls the edge counts, by [`CallKey`].
#[derive(Debug, Default)]
pub struct Slots {
    map: Mutex<HashMap<CallKey, Slot>>,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CallKey, Slot>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The phone's INVITE for `key` (`attempt`), as `offender` on `flow`: a new call begins
    /// (and counts) unless a limit says no; the same call again (a retransmission, or sent
    /// again with credentials) keeps its slot and counts nothing. With credentials the caller
    /// may turn out to be another extension than its first INVITE claimed: the call then
    /// counts as that one.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &self,
        counter: &impl Counter,
        offender: &Offender,
        key: CallKey,
        attempt: Attempt,
        flow: u64,
        limits: Limits,
        now: Instant,
    ) -> Result<(), NoSlot> {
        let mut map = self.lock();
        if let Some(slot) = map.get_mut(&key) {
            if slot.offender != *offender && slot.flow != flow {
                return Err(NoSlot::Merged);
            }
            if slot.attempt.branch == attempt.branch {
                // A retransmission: Asterisk's transaction absorbs it.
                return Ok(());
            }
            // The re-send after a challenge: no INVITE of this call is in flight at Asterisk
            // any more (the challenge ended it). A CSeq equal to the challenged one is
            // tolerated (RFC 3261 §8.1.3.5 asks for a higher one; pjsip does not check).
            let resend =
                matches!(slot.state, State::Challenged(_)) && attempt.cseq >= slot.attempt.cseq;
            if !resend {
                return Err(NoSlot::Repeated);
            }
            if slot.offender != *offender {
                let id = key.id();
                counter.end(&slot.offender, &id);
                if let Err(limited) = counter.begin(offender, &id, limits, now) {
                    map.remove(&key);
                    return Err(NoSlot::Limited(limited));
                }
                slot.offender = offender.clone();
            }
            slot.state = State::Placing(now);
            slot.attempt = attempt;
            slot.flow = flow;
            return Ok(());
        }
        if map.len() >= MAX_SLOTS {
            sweep_locked(&mut map, counter, now);
            if map.len() >= MAX_SLOTS {
                return Err(NoSlot::Full);
            }
        }
        counter
            .begin(offender, &key.id(), limits, now)
            .map_err(NoSlot::Limited)?;
        map.insert(
            key,
            Slot {
                offender: offender.clone(),
                flow,
                state: State::Placing(now),
                since: now,
                attempt,
                remote_tag: None,
            },
        );
        Ok(())
    }

    /// The edge sent the challenged INVITE again with the extension's credentials, as CSeq
    /// `cseq`.
    pub fn resent(&self, key: &CallKey, cseq: u32, now: Instant) {
        if let Some(slot) = self.lock().get_mut(key) {
            if let State::Challenged(_) = slot.state {
                slot.state = State::Placing(now);
                slot.attempt.cseq = cseq;
            }
        }
    }

    /// A final answer with CSeq `cseq` to an INVITE of the call (Asterisk's, or a 408 from the
    /// edge for it), Asterisk's To tag `remote_tag`. Only answers to the counted INVITE count:
    /// a 2xx keeps the slot until the BYE, a 401/407 keeps it for the INVITE with
    /// credentials, any other answer ends the call. Answers to a re-INVITE of a call that is up
    /// change nothing.
    pub fn answered(
        &self,
        counter: &impl Counter,
        key: &CallKey,
        cseq: u32,
        status: u16,
        remote_tag: Option<&str>,
        now: Instant,
    ) {
        let mut map = self.lock();
        let Some(slot) = map.get_mut(key) else {
            return;
        };
        if slot.attempt.cseq != cseq {
            return;
        }
        match (slot.state, status) {
            (State::Up, _) => {}
            (_, 200..=299) => {
                slot.state = State::Up;
                slot.remote_tag = remote_tag.map(str::to_owned);
            }
            (State::Placing(_), 401 | 407) => slot.state = State::Challenged(now),
            (State::Placing(_), _) => {
                if let Some(slot) = map.remove(key) {
                    counter.end(&slot.offender, &key.id());
                }
            }
            // A copy of the challenge; the INVITE with credentials is on its way.
            (State::Challenged(_), _) => {}
        }
    }

    /// Asterisk knows no INVITE for the phone's CANCEL (`481`). Only after a challenge does
    /// that mean the phone gave up: while the INVITE rings, pjsip answers a CANCEL with a
    /// wrong branch 481 statelessly and the call carries on (its final answer, the edge's
    /// 408 or the sweep ends the slot).
    pub fn unknown_to_asterisk(&self, counter: &impl Counter, key: &CallKey) {
        let mut map = self.lock();
        if map
            .get(key)
            .is_some_and(|s| matches!(s.state, State::Challenged(_)))
        {
            if let Some(slot) = map.remove(key) {
                counter.end(&slot.offender, &key.id());
            }
        }
    }

    /// The phone's BYE with To tag `remote_tag` got a final answer `status` (the edge's 408
    /// when Asterisk never answered). RFC 3261 §15.1.1: a 2xx, 481 or 408 ends the dialog. A
    /// BYE outside the call's dialog (another To tag: Asterisk answers 481 without ending
    /// anything) or one refused within it (500 for a bad CSeq) leaves the call counted.
    pub fn bye_answered(
        &self,
        counter: &impl Counter,
        key: &CallKey,
        remote_tag: Option<&str>,
        status: u16,
    ) {
        if !matches!(status, 200..=299 | 408 | 481) {
            return;
        }
        let mut map = self.lock();
        let ours = map.get(key).is_some_and(|s| {
            s.state == State::Up && remote_tag.is_some() && s.remote_tag.as_deref() == remote_tag
        });
        if ours {
            if let Some(slot) = map.remove(key) {
                counter.end(&slot.offender, &key.id());
            }
        }
    }

    /// The call is over: Asterisk's BYE, or the edge ended it.
    pub fn end(&self, counter: &impl Counter, key: &CallKey) {
        if let Some(slot) = self.lock().remove(key) {
            counter.end(&slot.offender, &key.id());
        }
    }

    /// The edge ended every call of connection `flow` (CANCEL and BYE towards Asterisk).
    pub fn flow_ended(&self, counter: &impl Counter, flow: u64) {
        self.lock().retain(|key, slot| {
            if slot.flow == flow {
                counter.end(&slot.offender, &key.id());
                false
            } else {
                true
            }
        });
    }

    /// Gives back the slots of challenges nobody answered within [`CHALLENGE_GRACE`], of
    /// INVITEs with no final answer after [`PROCEEDING_LIMIT`] (the edge's transaction has
    /// given up on them too; over a reliable upstream nothing else would ever end them), and
    /// of calls older than the limiter keeps them.
    pub fn sweep(&self, counter: &impl Counter, now: Instant) {
        sweep_locked(&mut self.lock(), counter, now);
    }

    /// Calls tracked now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn sweep_locked(map: &mut HashMap<CallKey, Slot>, counter: &impl Counter, now: Instant) {
    map.retain(|key, slot| {
        let stale = match slot.state {
            State::Challenged(at) => now.duration_since(at) >= CHALLENGE_GRACE,
            State::Placing(at) => now.duration_since(at) >= PROCEEDING_LIMIT,
            State::Up => false,
        } || now.duration_since(slot.since) >= MAX_CALL_AGE;
        if stale {
            counter.end(&slot.offender, &key.id());
        }
        !stale
    });
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
#[path = "dial_tests.rs"]
mod tests;
