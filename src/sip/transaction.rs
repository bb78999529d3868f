//! Retransmission on the hop where a reliable transport becomes UDP.
//!
//! Phones reach us over TLS or WebSocket and never retransmit: on a reliable transport the
//! client transaction's Timers A and E are not set (RFC 3261 §17.1.1.2, §17.1.2.2). When we
//! relay to Asterisk over UDP, a datagram lost on loopback (a receive buffer overflowing in a
//! burst of registrations) would be a request nobody ever answers. So on that hop pbxguard
//! acts as the client transaction a stateful proxy runs (§16.6 step 10, §17.1): it keeps each
//! request it sent, retransmits it on the RFC timers, gives up after 64*T1 with a `408` to the
//! phone (§16.8), and absorbs the duplicate answers its retransmissions bring back.
//!
//! * INVITE: Timer A from T1, doubling; any provisional stops it; Timer B (64*T1) times out.
//! * Others: Timer E from T1, doubling up to T2; after a provisional every T2; Timer F
//!   (64*T1) times out.
//! * ACK is never retransmitted: the ACK for a 2xx is end-to-end (the phone's own), and the ACK
//!   for a failure is re-sent only when the failure comes again (§17.1.1.2, "Completed").
//! * Answers are matched by our branch and the CSeq method (§17.1.3). Only the first final
//!   answer of a transaction passes, except an INVITE's 2xx: its retransmissions are
//!   end-to-end (RFC 6026 "Accepted"), and the phone must see them to send its ACK again.
//!
//! This module is the table alone, with time passed in, so its schedule is unit-tested; the
//! edge owns the sockets and the timer task.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::message::Method;

/// RFC 3261 §17.1.1.1: the round-trip estimate, first retransmission interval.
pub const T1: Duration = Duration::from_millis(500);
/// The longest retransmission interval for non-INVITE requests.
pub const T2: Duration = Duration::from_secs(4);
/// How long a message may linger in the network: how long a finished non-INVITE transaction
/// still recognises duplicates of its answer (Timer K).
pub const T4: Duration = Duration::from_secs(5);
/// Timers B and F (64*T1): unanswered this long, the phone gets 408. Also how long a finished
/// INVITE transaction recognises its answer's retransmissions (Timer D, RFC 6026 Timer M).
pub const TIMEOUT: Duration = Duration::from_secs(32);
/// An INVITE that has a provisional waits for its final answer this long at most (a proxy's
/// Timer C is more than three minutes, §16.6 step 11); the phone has cancelled long before.
pub const PROCEEDING_LIMIT: Duration = Duration::from_secs(300);
/// Transactions in the table at most. Beyond it requests are still relayed, once, without
/// retransmission (what pbxguard did before this table existed).
pub const MAX_TRANSACTIONS: usize = 32_768;
/// Bytes of requests kept for retransmission at most (a request is at most 16 KiB plus our
/// headers; only unanswered ones are kept).
pub const MAX_HELD_BYTES: usize = 64 * 1024 * 1024;
/// Timer entries (live and stale) beyond which the heap is rebuilt from the live table.
const MAX_TIMERS: usize = 4 * MAX_TRANSACTIONS;

/// A client transaction towards Asterisk: our branch and the request's method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub branch: String,
    pub method: Method,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Sent, nothing back yet: retransmitting ("Calling" / "Trying").
    Sent,
    /// A provisional came back: an INVITE stops retransmitting, others go on every T2.
    Proceeding,
    /// A final answer came back (for an INVITE, a failure); duplicates are absorbed.
    Completed,
    /// An INVITE got a 2xx; its retransmissions still pass.
    Accepted,
}

#[derive(Debug)]
struct Tx {
    state: State,
    /// The request, while it may need retransmitting.
    request: Option<Bytes>,
    /// The ACK for an INVITE's failure answer, sent again when the failure comes again.
    ack: Option<Bytes>,
    interval: Duration,
    deadline: Instant,
    due: Instant,
    /// The client connection that sent the request, which gets the 408; `None` for requests
    /// we make up ourselves (CANCEL, a teardown BYE).
    origin: Option<u64>,
    /// Matches the one live timer entry of this transaction.
    seq: u64,
}

impl Tx {
    fn held(&self) -> usize {
        self.request.as_ref().map_or(0, Bytes::len) + self.ack.as_ref().map_or(0, Bytes::len)
    }
}

/// One timer entry, ordered by time (then by creation, so the order is total).
#[derive(Debug)]
struct Timer {
    at: Instant,
    seq: u64,
    key: Key,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Started {
    /// Kept and scheduled for retransmission.
    Tracked,
    /// The same transaction is already in the table (a phone sent it twice): relay it once
    /// more, the table keeps the first.
    Duplicate,
    /// The table is full: relay it without retransmission.
    Full,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not one of ours (the table was full, or it has expired): relay as a stateless proxy.
    Unknown,
    Forward,
    /// A duplicate of an answer already relayed.
    Absorb,
    /// A duplicate failure answer to an INVITE: send this ACK again, relay nothing.
    ResendAck(Bytes),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    Retransmit(Bytes),
    /// Timer B or F fired: `origin` is owed a 408 for `request`.
    TimedOut {
        request: Bytes,
        origin: u64,
        invite: bool,
    },
}

#[derive(Debug, Default)]
pub struct Transactions {
    map: HashMap<Key, Tx>,
    timers: BinaryHeap<Reverse<Timer>>,
    held: usize,
    seq: u64,
}

impl Transactions {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of requests and ACKs kept.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// The earliest timer (possibly one that has become moot: waking early is harmless).
    pub fn next_due(&self) -> Option<Instant> {
        self.timers.peek().map(|t| t.0.at)
    }

    /// Forgets everything (the Asterisk side moved: answers to these will never arrive here).
    pub fn clear(&mut self) {
        self.map.clear();
        self.timers.clear();
        self.held = 0;
    }

    /// A request (not an ACK) just sent to Asterisk.
    pub fn start(
        &mut self,
        key: Key,
        request: Bytes,
        origin: Option<u64>,
        now: Instant,
    ) -> Started {
        if self.map.contains_key(&key) {
            return Started::Duplicate;
        }
        if self.map.len() >= MAX_TRANSACTIONS || self.held + request.len() > MAX_HELD_BYTES {
            return Started::Full;
        }
        self.held += request.len();
        let seq = self.next_seq();
        let due = now + T1;
        self.timers.push(Reverse(Timer {
            at: due,
            seq,
            key: key.clone(),
        }));
        self.map.insert(
            key,
            Tx {
                state: State::Sent,
                request: Some(request),
                ack: None,
                interval: T1,
                deadline: now + TIMEOUT,
                due,
                origin,
                seq,
            },
        );
        self.compact();
        Started::Tracked
    }

    /// An ACK just sent with `branch`: when it acknowledges the failure answer of our INVITE
    /// of that branch, it is kept for that answer's retransmissions. (The ACK for a 2xx has a
    /// branch of its own and is never kept.)
    pub fn ack(&mut self, branch: &str, ack: &Bytes) {
        let key = Key {
            branch: branch.to_string(),
            method: Method::Invite,
        };
        if let Some(tx) = self.map.get_mut(&key) {
            if tx.state == State::Completed && tx.ack.is_none() {
                self.held += ack.len();
                tx.ack = Some(ack.clone());
            }
        }
    }

    /// An answer from Asterisk for transaction `key`, with status `status`.
    pub fn answer(&mut self, key: &Key, status: u16, now: Instant) -> Answer {
        let invite = key.method == Method::Invite;
        let Some(tx) = self.map.get_mut(key) else {
            return Answer::Unknown;
        };
        let provisional = status < 200;
        let success = (200..300).contains(&status);
        let (verdict, next) = match tx.state {
            State::Sent | State::Proceeding if provisional => {
                tx.state = State::Proceeding;
                if invite {
                    // Timer A stops (§17.1.1.2); only Asterisk's final answer is awaited now.
                    (Answer::Forward, Some(now + PROCEEDING_LIMIT))
                } else {
                    // Timer E keeps running and comes back at T2 intervals.
                    (Answer::Forward, None)
                }
            }
            State::Sent | State::Proceeding => {
                tx.state = if invite && success {
                    State::Accepted
                } else {
                    State::Completed
                };
                (
                    Answer::Forward,
                    Some(now + if invite { TIMEOUT } else { T4 }),
                )
            }
            State::Accepted if success => (Answer::Forward, None),
            State::Completed if invite && status >= 300 => (
                tx.ack.clone().map_or(Answer::Absorb, Answer::ResendAck),
                None,
            ),
            State::Completed | State::Accepted => (Answer::Absorb, None),
        };
        if let Some(at) = next {
            // The request is no longer needed: no retransmission and no 408 from here on.
            if let Some(r) = tx.request.take() {
                self.held -= r.len();
            }
            schedule(&mut self.seq, &mut self.timers, tx, key.clone(), at);
            self.compact();
        }
        verdict
    }

    /// Runs every timer due at `now`: retransmissions and time-outs go to `out`; finished
    /// transactions are forgotten.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Due>) {
        while self.timers.peek().is_some_and(|t| t.0.at <= now) {
            let Some(Reverse(timer)) = self.timers.pop() else {
                break;
            };
            let Some(tx) = self.map.get_mut(&timer.key) else {
                continue;
            };
            if tx.seq != timer.seq {
                continue;
            }
            let invite = timer.key.method == Method::Invite;
            let retransmitting = matches!(tx.state, State::Sent | State::Proceeding);
            match tx.request.clone() {
                Some(request) if retransmitting && now < tx.deadline => {
                    out.push(Due::Retransmit(request));
                    tx.interval = if invite {
                        tx.interval * 2
                    } else if tx.state == State::Proceeding {
                        T2
                    } else {
                        (tx.interval * 2).min(T2)
                    };
                    let at = (now + tx.interval).min(tx.deadline);
                    schedule(&mut self.seq, &mut self.timers, tx, timer.key, at);
                }
                Some(request) if retransmitting => {
                    if let Some(origin) = tx.origin {
                        out.push(Due::TimedOut {
                            request,
                            origin,
                            invite,
                        });
                    }
                    self.remove(&timer.key);
                }
                // A finished transaction (or an INVITE past its proceeding limit) expires.
                _ => self.remove(&timer.key),
            }
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(tx) = self.map.remove(key) {
            self.held -= tx.held();
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Rebuilds the heap from the live transactions when stale entries pile up (each state
    /// change leaves the previous timer behind until its time comes).
    fn compact(&mut self) {
        if self.timers.len() <= MAX_TIMERS {
            return;
        }
        self.timers = self
            .map
            .iter()
            .map(|(k, tx)| {
                Reverse(Timer {
                    at: tx.due,
                    seq: tx.seq,
                    key: k.clone(),
                })
            })
            .collect();
    }
}

/// Moves `tx`'s next timer to `at`. The entry it had in the heap stays there and is skipped
/// when it fires, because its sequence number no longer matches the transaction's.
fn schedule(
    seq: &mut u64,
    timers: &mut BinaryHeap<Reverse<Timer>>,
    tx: &mut Tx,
    key: Key,
    at: Instant,
) {
    *seq += 1;
    tx.seq = *seq;
    tx.due = at;
    timers.push(Reverse(Timer { at, seq: *seq, key }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(method: Method) -> Key {
        Key {
            branch: "z9hG4bK-pg1".into(),
            method,
        }
    }

    /// Runs the timers until the transaction leaves the table; every retransmission and the
    /// time-out as seconds after `t0`.
    fn schedule(txs: &mut Transactions, t0: Instant) -> (Vec<f64>, Option<f64>) {
        let (mut sent, mut timeout) = (Vec::new(), None);
        while let Some(at) = txs.next_due() {
            let mut out = Vec::new();
            txs.poll(at, &mut out);
            for d in out {
                let secs = (at - t0).as_secs_f64();
                match d {
                    Due::Retransmit(_) => sent.push(secs),
                    Due::TimedOut { .. } => timeout = Some(secs),
                }
            }
        }
        (sent, timeout)
    }

    #[test]
    fn invite_doubles_timer_a_without_cap_and_times_out_at_64_t1() {
        let mut txs = Transactions::default();
        let t0 = Instant::now();
        let req = Bytes::from_static(b"INVITE");
        assert_eq!(
            txs.start(key(Method::Invite), req.clone(), Some(7), t0),
            Started::Tracked
        );
        assert_eq!(txs.held_bytes(), req.len());
        let (sent, timeout) = schedule(&mut txs, t0);
        assert_eq!(sent, vec![0.5, 1.5, 3.5, 7.5, 15.5, 31.5]);
        assert_eq!(timeout, Some(32.0));
        assert!(txs.is_empty());
        assert_eq!(txs.held_bytes(), 0);
    }

    #[test]
    fn non_invite_caps_timer_e_at_t2_and_times_out_at_64_t1() {
        let mut txs = Transactions::default();
        let t0 = Instant::now();
        txs.start(key(Method::Register), Bytes::from_static(b"R"), Some(7), t0);
        let (sent, timeout) = schedule(&mut txs, t0);
        assert_eq!(
            sent,
            vec![0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
        );
        assert_eq!(timeout, Some(32.0));
        assert!(txs.is_empty());
    }

    #[test]
    fn our_own_requests_time_out_without_a_408() {
        let mut txs = Transactions::default();
        let t0 = Instant::now();
        txs.start(key(Method::Cancel), Bytes::from_static(b"C"), None, t0);
        let (sent, timeout) = schedule(&mut txs, t0);
        assert_eq!(sent.len(), 10);
        assert_eq!(timeout, None);
        assert!(txs.is_empty());
    }

    #[test]
    fn a_provisional_stops_invite_retransmission_and_slows_others_to_t2() {
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut txs = Transactions::default();
        txs.start(key(Method::Invite), Bytes::from_static(b"I"), Some(1), t0);
        let mut out = Vec::new();
        txs.poll(at(0.5), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            txs.answer(&key(Method::Invite), 100, at(0.7)),
            Answer::Forward
        );
        assert_eq!(txs.held_bytes(), 0, "no retransmission, no 408: not kept");
        let (sent, timeout) = schedule(&mut txs, at(0.0));
        assert!(sent.is_empty() && timeout.is_none(), "{sent:?} {timeout:?}");
        assert!(txs.is_empty(), "gone after the proceeding limit");

        let mut txs = Transactions::default();
        txs.start(key(Method::Options), Bytes::from_static(b"O"), Some(1), t0);
        assert_eq!(
            txs.answer(&key(Method::Options), 180, at(0.2)),
            Answer::Forward
        );
        let (sent, timeout) = schedule(&mut txs, t0);
        // The pending Timer E (0.5) still fires, then every T2 until Timer F.
        assert_eq!(sent, vec![0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5]);
        assert_eq!(timeout, Some(32.0));
    }

    #[test]
    fn only_the_first_final_passes_but_invite_2xx_retransmissions_do() {
        let t0 = Instant::now();
        let mut txs = Transactions::default();
        let reg = key(Method::Register);
        txs.start(reg.clone(), Bytes::from_static(b"R"), Some(1), t0);
        assert_eq!(txs.answer(&reg, 100, t0), Answer::Forward);
        assert_eq!(txs.answer(&reg, 200, t0), Answer::Forward);
        assert_eq!(txs.answer(&reg, 200, t0), Answer::Absorb);
        assert_eq!(txs.answer(&reg, 100, t0), Answer::Absorb);
        let mut out = Vec::new();
        txs.poll(t0 + T1, &mut out);
        assert!(out.is_empty(), "answered: no retransmission");
        txs.poll(t0 + T4, &mut out);
        assert!(out.is_empty() && txs.is_empty(), "forgotten after T4");
        assert_eq!(txs.answer(&reg, 200, t0 + T4), Answer::Unknown);

        let inv = key(Method::Invite);
        txs.start(inv.clone(), Bytes::from_static(b"I"), Some(1), t0);
        assert_eq!(txs.answer(&inv, 200, t0), Answer::Forward);
        assert_eq!(txs.answer(&inv, 200, t0), Answer::Forward);
        assert_eq!(txs.answer(&inv, 486, t0), Answer::Absorb);
        // A CANCEL shares the INVITE's branch but is a transaction of its own.
        assert_eq!(txs.answer(&key(Method::Cancel), 200, t0), Answer::Unknown);
    }

    #[test]
    fn a_repeated_invite_failure_gets_the_ack_again() {
        let t0 = Instant::now();
        let mut txs = Transactions::default();
        let inv = key(Method::Invite);
        txs.start(inv.clone(), Bytes::from_static(b"I"), Some(1), t0);
        let ack = Bytes::from_static(b"ACK");
        // An ACK before the failure (or for another branch) is not kept.
        txs.ack("z9hG4bK-pg1", &ack);
        txs.ack("z9hG4bK-other", &ack);
        assert_eq!(txs.answer(&inv, 486, t0), Answer::Forward);
        assert_eq!(txs.answer(&inv, 486, t0), Answer::Absorb);
        txs.ack("z9hG4bK-pg1", &ack);
        assert_eq!(txs.answer(&inv, 486, t0), Answer::ResendAck(ack.clone()));
        assert_eq!(txs.held_bytes(), ack.len());
        let mut out = Vec::new();
        txs.poll(t0 + TIMEOUT, &mut out);
        assert!(out.is_empty() && txs.is_empty() && txs.held_bytes() == 0);
    }

    #[test]
    fn the_table_is_bounded_and_duplicates_keep_the_first() {
        let t0 = Instant::now();
        let mut txs = Transactions::default();
        let k = |i: usize| Key {
            branch: format!("b{i}"),
            method: Method::Register,
        };
        for i in 0..MAX_TRANSACTIONS {
            assert_eq!(
                txs.start(k(i), Bytes::from_static(b"R"), Some(1), t0),
                Started::Tracked
            );
        }
        assert_eq!(
            txs.start(k(0), Bytes::from_static(b"R"), Some(1), t0),
            Started::Duplicate
        );
        assert_eq!(
            txs.start(k(MAX_TRANSACTIONS), Bytes::from_static(b"R"), Some(1), t0),
            Started::Full
        );
        // Answered ones free their place after T4; unanswered ones after Timer F.
        for i in 0..100 {
            txs.answer(&k(i), 200, t0);
        }
        let mut out = Vec::new();
        txs.poll(t0 + T4, &mut out);
        assert_eq!(txs.len(), MAX_TRANSACTIONS - 100);
        assert_eq!(
            txs.start(
                k(MAX_TRANSACTIONS),
                Bytes::from_static(b"R"),
                Some(1),
                t0 + T4
            ),
            Started::Tracked
        );
        txs.poll(t0 + TIMEOUT + T4, &mut out);
        assert!(txs.is_empty());
        assert_eq!(txs.held_bytes(), 0);

        let big = Bytes::from(vec![b'x'; MAX_HELD_BYTES / 2 + 1]);
        assert_eq!(txs.start(k(1), big.clone(), None, t0), Started::Tracked);
        assert_eq!(txs.start(k(2), big, None, t0), Started::Full);
        txs.clear();
        assert!(txs.is_empty() && txs.held_bytes() == 0 && txs.next_due().is_none());
    }
}
