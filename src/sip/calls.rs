//! What the edge remembers of one client connection's calls: the dialogs it is in and the
//! calls ringing at it, so that when the connection ends the edge can end them towards
//! Asterisk (a browser cannot come back into a dialog over a new WebSocket, and Asterisk would
//! otherwise keep the channel, media and all, until its session timer gives up); and how far
//! the CSeq numbers we send are ahead of the client's after the edge answered a digest
//! challenge for it (each answer re-sends the request with the next number).
//!
//! Kept per connection and bounded, so it dies with the connection and one client cannot
//! grow it without limit.

use std::collections::HashMap;

use super::message::Message;

/// Entries of each kind one connection may hold; beyond that new ones are not tracked (a
/// browser has a handful of calls, a desk phone a few lines).
const MAX_ENTRIES: usize = 128;

/// A confirmed dialog, as the client's side of it: what a BYE in the client's name carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    /// The client's URI with its tag (the BYE's `From`).
    pub local: String,
    /// Asterisk's URI with its tag (the BYE's `To`).
    pub remote: String,
    /// Asterisk's Contact (the BYE's Request-URI).
    pub target: String,
    /// The highest CSeq the client has used in the dialog, in its own numbering.
    pub client_cseq: Option<u32>,
}

#[derive(Debug, Default)]
pub struct Calls {
    /// Call-ID -> how many numbers our CSeq is ahead of the client's, and when it last moved
    /// (in `shifts`).
    offsets: HashMap<String, (u32, u64)>,
    shifts: u64,
    dialogs: HashMap<String, Dialog>,
    /// Call-ID -> Asterisk's INVITE as received, until the client answers it finally.
    ringing: HashMap<String, Message>,
    /// Taken for teardown: nothing more is recorded.
    closed: bool,
}

/// What is left to end when a connection goes: its dialogs (with the CSeq offset of each)
/// and Asterisk's INVITEs still ringing at it.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub dialogs: Vec<(String, Dialog, u32)>,
    pub ringing: Vec<Message>,
}

impl Calls {
    pub fn offset(&self, call_id: &str) -> u32 {
        self.offsets.get(call_id).map_or(0, |(o, _)| *o)
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// One more request of this Call-ID was re-sent with credentials: the new offset, or
    /// `None` once the connection's calls were ended. A full table forgets the offset that
    /// moved longest ago (a page open all day makes a new Call-ID per call and message).
    pub fn shift(&mut self, call_id: &str) -> Option<u32> {
        if self.closed {
            return None;
        }
        if self.offsets.len() >= MAX_ENTRIES && !self.offsets.contains_key(call_id) {
            let oldest = self
                .offsets
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                self.offsets.remove(&id);
            }
        }
        let (o, at) = self.offsets.entry(call_id.to_string()).or_insert((0, 0));
        *o = o.checked_add(1)?;
        self.shifts += 1;
        *at = self.shifts;
        Some(*o)
    }

    /// The request that moved this Call-ID's numbering ended without a dialog (a refused
    /// call, a MESSAGE): nothing will be numbered in it again.
    pub fn forget_offset(&mut self, call_id: &str) {
        self.offsets.remove(call_id);
    }

    /// The client sent `cseq` (its numbering) within the dialog of `call_id`.
    pub fn client_sent(&mut self, call_id: &str, cseq: u32) {
        if let Some(d) = self.dialogs.get_mut(call_id) {
            d.client_cseq = Some(d.client_cseq.map_or(cseq, |c| c.max(cseq)));
        }
    }

    /// A 2xx to an INVITE confirmed (or refreshed) the dialog of `call_id`.
    pub fn confirm(&mut self, call_id: &str, mut dialog: Dialog) {
        self.ringing.remove(call_id);
        if self.closed {
            return;
        }
        if let Some(old) = self.dialogs.get(call_id) {
            dialog.client_cseq = match (old.client_cseq, dialog.client_cseq) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        } else if self.dialogs.len() >= MAX_ENTRIES {
            return;
        }
        self.dialogs.insert(call_id.to_string(), dialog);
    }

    /// A BYE passed: the dialog is over.
    pub fn end(&mut self, call_id: &str) {
        self.dialogs.remove(call_id);
        self.offsets.remove(call_id);
        self.ringing.remove(call_id);
    }

    /// Asterisk's initial INVITE was relayed to the client.
    pub fn ring(&mut self, call_id: &str, invite: Message) {
        if self.closed || (self.ringing.len() >= MAX_ENTRIES && !self.ringing.contains_key(call_id))
        {
            return;
        }
        self.ringing.insert(call_id.to_string(), invite);
    }

    /// Asterisk's INVITE as received, while it rings.
    pub fn ringing(&self, call_id: &str) -> Option<&Message> {
        self.ringing.get(call_id)
    }

    /// The client answered Asterisk's INVITE finally, or Asterisk cancelled it.
    pub fn answered(&mut self, call_id: &str) {
        self.ringing.remove(call_id);
    }

    /// Everything still open, once: later calls get nothing and nothing more is recorded.
    pub fn take(&mut self) -> Leftovers {
        self.closed = true;
        let offsets = std::mem::take(&mut self.offsets);
        Leftovers {
            dialogs: self
                .dialogs
                .drain()
                .map(|(id, d)| {
                    let o = offsets.get(&id).map_or(0, |(o, _)| *o);
                    (id, d, o)
                })
                .collect(),
            ringing: self.ringing.drain().map(|(_, m)| m).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialog(cseq: Option<u32>) -> Dialog {
        Dialog {
            local: "<sip:2001@pbx>;tag=a".into(),
            remote: "<sip:600@pbx>;tag=b".into(),
            target: "sip:asterisk@127.0.0.1:5060".into(),
            client_cseq: cseq,
        }
    }

    #[test]
    fn offsets_grow_per_call_and_end_with_the_dialog() {
        let mut c = Calls::default();
        assert_eq!(c.offset("x"), 0);
        assert_eq!(c.shift("x"), Some(1));
        assert_eq!(c.shift("x"), Some(2));
        assert_eq!(c.offset("x"), 2);
        assert_eq!(c.offset("y"), 0);
        c.end("x");
        assert_eq!(c.offset("x"), 0);
    }

    #[test]
    fn dialogs_keep_the_highest_client_cseq_and_are_taken_once() {
        let mut c = Calls::default();
        c.shift("x");
        c.confirm("x", dialog(Some(3)));
        c.client_sent("x", 5);
        c.client_sent("x", 4);
        c.client_sent("other", 9);
        // A re-INVITE's 2xx refreshes the dialog without losing what the client sent.
        c.confirm("x", dialog(Some(4)));
        let left = c.take();
        assert_eq!(left.dialogs.len(), 1);
        let (id, d, offset) = &left.dialogs[0];
        assert_eq!((id.as_str(), d.client_cseq, *offset), ("x", Some(5), 1));
        assert!(c.take().dialogs.is_empty());
        // Closed: nothing more is recorded.
        c.confirm("y", dialog(None));
        assert_eq!(c.shift("y"), None);
        assert!(c.take().dialogs.is_empty());
    }

    #[test]
    fn ringing_invites_end_when_answered_or_confirmed() {
        let raw = "INVITE sip:2001@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nFrom: <sip:600@pbx>;tag=f\r\nTo: <sip:2001@pbx>\r\nCall-ID: r\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let invite = Message::parse(raw.as_bytes()).unwrap();
        let mut c = Calls::default();
        c.ring("r", invite.clone());
        c.ring("s", invite.clone());
        assert!(c.ringing("r").is_some());
        c.answered("r");
        c.confirm("s", dialog(None));
        assert!(c.ringing("r").is_none() && c.ringing("s").is_none());
        c.ring("t", invite);
        let left = c.take();
        assert_eq!(left.ringing.len(), 1);
        assert_eq!(left.dialogs.len(), 1);
    }

    #[test]
    fn one_connection_cannot_grow_the_tables_without_bound() {
        let mut c = Calls::default();
        for i in 0..MAX_ENTRIES * 2 {
            c.shift(&format!("c{i}"));
            c.confirm(&format!("d{i}"), dialog(None));
        }
        assert_eq!(c.offsets.len(), MAX_ENTRIES);
        assert_eq!(c.dialogs.len(), MAX_ENTRIES);
        // A full offset table forgets the stalest entry, not the new call.
        assert_eq!(c.shift("new"), Some(1));
        assert_eq!(c.offsets.len(), MAX_ENTRIES);
        assert_eq!(c.offset("c0"), 0);
        assert_eq!(c.offset(&format!("c{}", MAX_ENTRIES * 2 - 1)), 1);
        c.forget_offset("new");
        assert_eq!(c.offset("new"), 0);
    }
}
