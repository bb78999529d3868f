//! Requests from ticket-bound WebSockets, kept until Asterisk answers them finally: when
//! Asterisk challenges one, the edge re-sends it with credentials (a new transaction with the
//! next CSeq), and every answer gets the client's own CSeq number back. The shape follows
//! Kamailio's `uac_auth()` with the dialog module's CSeq tracking: the client never sees the
//! challenge nor the renumbering.
//!
//! Only requests outside a dialog are kept (pjsip challenges no others), as the bytes sent,
//! within a count and a byte budget overall and a count per connection.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Requests remembered at most, and their bytes at most (a request is at most 64 KiB, a
/// browser's INVITE about 5 KiB). A request that does not fit is relayed without edge
/// authentication, and a challenge to it is answered 503 for the browser to retry.
const MAX_SENT: usize = 50_000;
const MAX_SENT_BYTES: usize = 64 << 20;
/// Requests one connection may have waiting at once (a browser has a REGISTER, a call or two
/// ringing, a MESSAGE): whatever a logged-in page sends, it cannot make us hold more.
const MAX_PER_FLOW: usize = 32;
/// Longer than any transaction lives (an unanswered INVITE rings for minutes).
const TTL: Duration = Duration::from_secs(300);
/// Answers to one request: the first challenge, and one more when Asterisk says the nonce
/// went stale (`stale=true`) while the answer was on its way.
pub const MAX_ATTEMPTS: u8 = 2;

#[derive(Debug, Clone)]
pub struct Sent {
    pub flow: u64,
    /// As sent to Asterisk, without credentials.
    pub request: Bytes,
    /// The CSeq number the client gave it.
    pub client_cseq: u32,
    /// The client's branch (its transaction).
    pub client_branch: String,
    /// The branch of the first copy we sent: what the client's CANCEL is derived from.
    pub first_branch: String,
    /// How many challenges were answered for it so far.
    pub attempt: u8,
    at: Instant,
}

impl Sent {
    pub fn new(
        flow: u64,
        request: Bytes,
        client_cseq: u32,
        client_branch: String,
        first_branch: String,
    ) -> Sent {
        Sent {
            flow,
            request,
            client_cseq,
            client_branch,
            first_branch,
            attempt: 0,
            at: Instant::now(),
        }
    }

    /// The same request one answer later (`request` is the new copy, still without
    /// credentials).
    pub fn next(&self, request: Bytes) -> Sent {
        Sent {
            request,
            attempt: self.attempt + 1,
            at: Instant::now(),
            ..self.clone()
        }
    }
}

/// What became of a client's CANCEL for an INVITE whose challenge the edge is answering.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelTarget {
    /// The INVITE was re-sent: the CANCEL goes to this branch, with this CSeq.
    Moved(String, u32),
    /// The answer is still being prepared: the INVITE will not be re-sent, and the client's
    /// CANCEL is answered by the edge.
    Stopped,
    /// Nothing known: the CANCEL goes where it was going.
    Unknown,
}

#[derive(Debug, Default)]
pub struct Resends {
    /// Our branch -> the request it carries.
    sent: HashMap<String, Sent>,
    bytes: usize,
    /// Entries of `sent` per flow.
    per_flow: HashMap<u64, usize>,
    /// First branch of an INVITE -> (branch, CSeq) of its latest copy, for the client's CANCEL.
    moved: HashMap<String, (String, u32, Instant)>,
    /// First branches whose challenge is being answered (the vault is read meanwhile) ->
    /// whether the client cancelled in the meantime.
    answering: HashMap<String, bool>,
}

impl Resends {
    /// Remembers a request sent under `branch`; `false` when the table, or the flow's share
    /// of it, is full.
    pub fn keep(&mut self, branch: &str, sent: Sent) -> bool {
        // A retransmission of the same request replaces its entry.
        self.finish(branch);
        let fits =
            |r: &Resends| r.sent.len() < MAX_SENT && r.bytes + sent.request.len() <= MAX_SENT_BYTES;
        if !fits(self) {
            self.sweep(Instant::now());
            if !fits(self) {
                return false;
            }
        }
        let n = self.per_flow.entry(sent.flow).or_insert(0);
        if *n >= MAX_PER_FLOW {
            return false;
        }
        *n += 1;
        self.bytes += sent.request.len();
        self.sent.insert(branch.to_string(), sent);
        true
    }

    fn uncount(&mut self, sent: &Sent) {
        self.bytes = self.bytes.saturating_sub(sent.request.len());
        if let Some(n) = self.per_flow.get_mut(&sent.flow) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_flow.remove(&sent.flow);
            }
        }
    }

    pub fn get(&self, branch: &str) -> Option<&Sent> {
        self.sent.get(branch)
    }

    /// The final answer came (or none will): forgets the request.
    pub fn finish(&mut self, branch: &str) -> Option<Sent> {
        let sent = self.sent.remove(branch)?;
        self.uncount(&sent);
        Some(sent)
    }

    /// The edge starts answering the challenge to the request first sent under `first`.
    pub fn answering(&mut self, first: &str) {
        if self.answering.len() < MAX_SENT {
            self.answering.insert(first.to_string(), false);
        }
    }

    /// The answer is ready: `true` when it may go out (the client did not cancel meanwhile).
    pub fn answered(&mut self, first: &str) -> bool {
        self.answering.remove(first) != Some(true)
    }

    /// The INVITE first sent under `first` now travels under `branch` with `cseq`.
    pub fn moved(&mut self, first: &str, branch: &str, cseq: u32) {
        if self.moved.len() >= MAX_SENT && !self.moved.contains_key(first) {
            return;
        }
        self.moved.insert(
            first.to_string(),
            (branch.to_string(), cseq, Instant::now()),
        );
    }

    /// Where a client's CANCEL (or ACK of a failure) for the INVITE first sent under `first`
    /// must go; a CANCEL while the challenge is being answered stops the re-send.
    pub fn cancel_target(&mut self, first: &str, is_cancel: bool) -> CancelTarget {
        if let Some((b, c, _)) = self.moved.get(first) {
            return CancelTarget::Moved(b.clone(), *c);
        }
        match self.answering.get_mut(first) {
            Some(cancelled) if is_cancel => {
                *cancelled = true;
                CancelTarget::Stopped
            }
            _ => CancelTarget::Unknown,
        }
    }

    pub fn sweep(&mut self, now: Instant) {
        let old: Vec<String> = self
            .sent
            .iter()
            .filter(|(_, s)| now.duration_since(s.at) >= TTL)
            .map(|(b, _)| b.clone())
            .collect();
        for b in old {
            self.finish(&b);
        }
        self.moved
            .retain(|_, (_, _, at)| now.duration_since(*at) < TTL);
    }

    /// Every request of `flow` (its connection ended).
    pub fn forget_flow(&mut self, flow: u64) {
        let gone: Vec<String> = self
            .sent
            .iter()
            .filter(|(_, s)| s.flow == flow)
            .map(|(b, _)| b.clone())
            .collect();
        for b in gone {
            self.finish(&b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Bytes {
        Bytes::from_static(b"REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-pg1\r\nVia: SIP/2.0/WSS a.invalid;branch=z9hG4bKc\r\nMax-Forwards: 69\r\nFrom: <sip:2001@pbx>;tag=f\r\nTo: <sip:2001@pbx>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n")
    }

    fn sent(flow: u64) -> Sent {
        Sent::new(flow, request(), 1, "c".into(), "b".into())
    }

    #[test]
    fn a_request_is_kept_until_its_final_answer_and_follows_its_copies() {
        let mut r = Resends::default();
        let s = Sent::new(7, request(), 1, "z9hG4bKc".into(), "b1".into());
        assert!(r.keep("b1", s));
        assert_eq!(r.get("b1").map(|s| s.client_cseq), Some(1));
        let again = r.finish("b1").unwrap().next(request());
        assert_eq!(again.attempt, 1);
        assert_eq!(again.first_branch, "b1");
        assert!(r.finish("b1").is_none());
        r.keep("b2", again);
        r.moved("b1", "b2", 2);
        assert_eq!(
            r.cancel_target("b1", true),
            CancelTarget::Moved("b2".into(), 2)
        );
        r.forget_flow(7);
        assert!(r.get("b2").is_none());
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn a_cancel_while_the_answer_is_prepared_stops_the_re_send() {
        let mut r = Resends::default();
        r.answering("b1");
        // An ACK does not stop anything; a CANCEL does.
        assert_eq!(r.cancel_target("b1", false), CancelTarget::Unknown);
        assert_eq!(r.cancel_target("b1", true), CancelTarget::Stopped);
        assert!(!r.answered("b1"));
        r.answering("b2");
        assert!(r.answered("b2"));
        assert_eq!(r.cancel_target("b3", true), CancelTarget::Unknown);
    }

    #[test]
    fn the_table_stays_bounded_and_old_entries_go() {
        let mut r = Resends::default();
        for i in 0..MAX_SENT {
            assert!(r.keep(&format!("b{i}"), sent(i as u64)));
        }
        assert!(!r.keep("one-more", sent(0)));
        // Replacing an entry is always possible.
        assert!(r.keep("b0", sent(0)));
        r.sweep(Instant::now() + TTL);
        assert!(r.get("b0").is_none());
        assert!(r.per_flow.is_empty());
        assert_eq!(r.bytes, 0);
        assert!(r.keep("one-more", sent(1)));
    }

    #[test]
    fn the_byte_budget_holds_too() {
        let mut r = Resends::default();
        let big = Bytes::from(vec![b'x'; 60 << 10]);
        let mut kept = 0;
        for i in 0..2_000u64 {
            if r.keep(
                &format!("b{i}"),
                Sent::new(i, big.clone(), 1, "c".into(), "b".into()),
            ) {
                kept += 1;
            }
        }
        assert_eq!(kept, MAX_SENT_BYTES / big.len());
        assert!(r.bytes <= MAX_SENT_BYTES);
    }

    #[test]
    fn one_flow_holds_a_bounded_share() {
        let mut r = Resends::default();
        for i in 0..MAX_PER_FLOW {
            assert!(r.keep(&format!("a{i}"), sent(1)));
        }
        assert!(!r.keep("a-more", sent(1)));
        assert!(r.keep("other-flow", sent(2)));
        // A retransmission replaces its entry; an answer frees a place.
        assert!(r.keep("a0", sent(1)));
        assert!(r.finish("a1").is_some());
        assert!(r.keep("a-more", sent(1)));
        r.forget_flow(1);
        assert!(r.get("a-more").is_none() && r.get("other-flow").is_some());
    }
}
