//! Requests from ticket-bound WebSockets, kept until Asterisk answers them finally: when
//! Asterisk challenges one, the edge re-sends it with credentials (a new transaction with the
//! next CSeq), and every answer gets the client's own CSeq number back. The shape follows
//! Kamailio's `uac_auth()` with the dialog module's CSeq tracking: the client never sees the
//! challenge nor the renumbering.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::message::Message;

/// Requests remembered at most (a full table relays without edge authentication: Asterisk's
/// challenge then reaches the browser, which cannot answer it).
const MAX_SENT: usize = 50_000;
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
    pub request: Message,
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
        request: Message,
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
    pub fn next(&self, request: Message) -> Sent {
        Sent {
            request,
            attempt: self.attempt + 1,
            at: Instant::now(),
            ..self.clone()
        }
    }
}

#[derive(Debug, Default)]
pub struct Resends {
    /// Our branch -> the request it carries.
    sent: HashMap<String, Sent>,
    /// First branch of an INVITE -> (branch, CSeq) of its latest copy, for the client's CANCEL.
    moved: HashMap<String, (String, u32, Instant)>,
    /// Entries of `sent` per flow.
    per_flow: HashMap<u64, usize>,
}

impl Resends {
    /// Remembers a request sent under `branch`; `false` when the table, or the flow's share
    /// of it, is full.
    pub fn keep(&mut self, branch: &str, sent: Sent) -> bool {
        // A retransmission of the same request replaces its entry.
        self.finish(branch);
        if self.sent.len() >= MAX_SENT {
            self.sweep(Instant::now());
            if self.sent.len() >= MAX_SENT {
                return false;
            }
        }
        let n = self.per_flow.entry(sent.flow).or_insert(0);
        if *n >= MAX_PER_FLOW {
            return false;
        }
        *n += 1;
        self.sent.insert(branch.to_string(), sent);
        true
    }

    fn uncount(per_flow: &mut HashMap<u64, usize>, flow: u64) {
        if let Some(n) = per_flow.get_mut(&flow) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_flow.remove(&flow);
            }
        }
    }

    pub fn get(&self, branch: &str) -> Option<&Sent> {
        self.sent.get(branch)
    }

    /// The final answer came: forgets the request.
    pub fn finish(&mut self, branch: &str) -> Option<Sent> {
        let sent = self.sent.remove(branch)?;
        Self::uncount(&mut self.per_flow, sent.flow);
        Some(sent)
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

    /// Where a CANCEL for the INVITE first sent under `first` must go.
    pub fn current(&self, first: &str) -> Option<(String, u32)> {
        self.moved.get(first).map(|(b, c, _)| (b.clone(), *c))
    }

    pub fn sweep(&mut self, now: Instant) {
        let per_flow = &mut self.per_flow;
        self.sent.retain(|_, s| {
            let keep = now.duration_since(s.at) < TTL;
            if !keep {
                Self::uncount(per_flow, s.flow);
            }
            keep
        });
        self.moved
            .retain(|_, (_, _, at)| now.duration_since(*at) < TTL);
    }

    /// Every request of `flow` (its connection ended).
    pub fn forget_flow(&mut self, flow: u64) {
        self.sent.retain(|_, s| s.flow != flow);
        self.per_flow.remove(&flow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Message {
        let raw = "REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-pg1\r\nVia: SIP/2.0/WSS a.invalid;branch=z9hG4bKc\r\nMax-Forwards: 69\r\nFrom: <sip:2001@pbx>;tag=f\r\nTo: <sip:2001@pbx>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
        Message::parse(raw.as_bytes()).unwrap()
    }

    #[test]
    fn a_request_is_kept_until_its_final_answer_and_follows_its_copies() {
        let mut r = Resends::default();
        let s = Sent::new(7, request(), 1, "z9hG4bKc".into(), "b1".into());
        assert!(r.keep("b1", s.clone()));
        assert_eq!(r.get("b1").map(|s| s.client_cseq), Some(1));
        let again = r.finish("b1").unwrap().next(request());
        assert_eq!(again.attempt, 1);
        assert_eq!(again.first_branch, "b1");
        assert!(r.finish("b1").is_none());
        r.keep("b2", again);
        r.moved("b1", "b2", 2);
        assert_eq!(r.current("b1"), Some(("b2".to_string(), 2)));
        r.forget_flow(7);
        assert!(r.get("b2").is_none());
    }

    #[test]
    fn the_table_stays_bounded_and_old_entries_go() {
        let mut r = Resends::default();
        let sent = |flow| Sent::new(flow, request(), 1, "c".into(), "b".into());
        for i in 0..MAX_SENT {
            assert!(r.keep(&format!("b{i}"), sent(i as u64)));
        }
        assert!(!r.keep("one-more", sent(0)));
        // Replacing an entry is always possible.
        assert!(r.keep("b0", sent(0)));
        r.sweep(Instant::now() + TTL);
        assert!(r.get("b0").is_none());
        assert!(r.per_flow.is_empty());
        assert!(r.keep("one-more", sent(1)));
    }

    #[test]
    fn one_flow_holds_a_bounded_share() {
        let mut r = Resends::default();
        let sent = |flow| Sent::new(flow, request(), 1, "c".into(), "b".into());
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
