//! Client connections ("flows", RFC 5626): each TLS or WebSocket connection gets an id, and
//! everything we put in front of Asterisk (`Via`, `Record-Route`, `Path`) carries an
//! authenticated token naming it, so that responses and requests coming back from Asterisk
//! find the connection without us keeping per-transaction state. Phones behind NAT and
//! browsers (whose Contact hosts are `.invalid`) cannot be reached any other way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::calls::Calls;
use super::ticket::Binding;

/// Messages waiting to be written to one client; a client that lets more pile up is cut off
/// (it is not reading, and we will not buffer for it).
pub const QUEUE_DEPTH: usize = 64;

/// Contacts remembered for routing without `Path`, at most.
const MAX_CONTACTS: usize = 200_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tls,
    Wss,
}

impl Kind {
    /// The transport as `Via` and URI `transport=` name it.
    pub fn via_name(self) -> &'static str {
        match self {
            Kind::Tls => "TLS",
            Kind::Wss => "WSS",
        }
    }

    pub fn uri_param(self) -> &'static str {
        match self {
            Kind::Tls => "tls",
            Kind::Wss => "wss",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Tls => "tls",
            Kind::Wss => "wss",
        }
    }
}

#[derive(Debug)]
pub struct Flow {
    pub id: u64,
    pub kind: Kind,
    pub peer: SocketAddr,
    /// The address the client connected to (our side).
    pub local: SocketAddr,
    /// The web session a WebSocket was opened with; `None` for TLS phones.
    pub binding: Option<Binding>,
    tx: mpsc::Sender<Bytes>,
    pub close: CancellationToken,
    /// Asterisk has accepted something from this connection (a 2xx to a REGISTER, INVITE,
    /// SUBSCRIBE or MESSAGE, all of which pjsip authenticates), or it is a ticketed WebSocket.
    /// Until then the connection only gets `[sip] auth_timeout`: holding idle TLS connections
    /// costs an attacker nothing, so silence must not buy `idle_timeout`.
    proven: AtomicBool,
    /// Its calls, ended towards Asterisk when the connection goes; CSeq offsets.
    calls: Mutex<Calls>,
    /// Users whose REGISTER Asterisk accepted on this connection, first first: the extension
    /// its calls count against (see [`super::dial::offender`]).
    registered: Mutex<Vec<String>>,
}

impl Flow {
    pub fn proven(&self) -> bool {
        self.proven.load(Ordering::Relaxed)
    }

    pub fn prove(&self) {
        self.proven.store(true, Ordering::Relaxed);
    }

    pub fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Users Asterisk accepted a REGISTER of on this connection.
    pub fn registered(&self) -> Vec<String> {
        self.registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asterisk accepted a REGISTER of `user`; at most `max` are kept (the first ones).
    pub fn add_registered(&self, user: String, max: usize) {
        let mut users = self.registered.lock().unwrap_or_else(|e| e.into_inner());
        if !users.contains(&user) && users.len() < max {
            users.push(user);
        }
    }

    /// Queues a message for the client; a full queue closes the connection.
    pub fn send(&self, msg: Bytes) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.close.is_cancelled() {
                    tracing::warn!(peer = %self.peer, "SIP client is not reading; closing its connection");
                    self.close.cancel();
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

#[derive(Debug)]
pub struct Flows {
    map: RwLock<HashMap<u64, Arc<Flow>>>,
    /// Registered Contact URI (normal form) -> flow, for requests that come without our route.
    contacts: Mutex<HashMap<String, u64>>,
    next: AtomicU64,
    /// Keyed with 64 random bytes per process: tokens die with the process, as the
    /// connections they name do.
    mac: HmacSha256,
}

impl Default for Flows {
    fn default() -> Self {
        Flows::new()
    }
}

type HmacSha256 = Hmac<Sha256>;

impl Flows {
    pub fn new() -> Flows {
        let mut key = hmac::digest::generic_array::GenericArray::default();
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut key);
        Flows {
            map: RwLock::default(),
            contacts: Mutex::default(),
            next: AtomicU64::new(1),
            mac: <HmacSha256 as hmac::digest::KeyInit>::new(&key),
        }
    }

    pub fn add(
        &self,
        kind: Kind,
        peer: SocketAddr,
        local: SocketAddr,
        binding: Option<Binding>,
        close: CancellationToken,
    ) -> (Arc<Flow>, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let flow = Arc::new(Flow {
            id,
            kind,
            peer,
            local,
            proven: AtomicBool::new(binding.is_some()),
            binding,
            tx,
            close,
            calls: Mutex::default(),
            registered: Mutex::default(),
        });
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, flow.clone());
        (flow, rx)
    }

    pub fn remove(&self, id: u64) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.contacts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, f| *f != id);
    }

    pub fn get(&self, id: u64) -> Option<Arc<Flow>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every flow (for sweeps: bans, revoked sessions).
    pub fn all(&self) -> Vec<Arc<Flow>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn mac(&self, data: &[u8]) -> [u8; 8] {
        let mut mac = self.mac.clone();
        mac.update(data);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 8];
        out.copy_from_slice(&full[..8]);
        out
    }

    /// The token naming `id` in headers we add: the id and a MAC over it, with one flag
    /// character (`a` when the request carried credentials, so that a 401 answering it counts
    /// as a failed authentication; `n` otherwise; `l` for requests we generate ourselves).
    pub fn token(&self, id: u64, flag: char) -> String {
        let mut data = id.to_be_bytes().to_vec();
        data.push(flag as u8);
        format!("{id:x}{flag}{}", hex(&self.mac(&data)))
    }

    /// The flow id and flag of a token we made; `None` for anything else.
    pub fn parse_token(&self, token: &str) -> Option<(u64, char)> {
        if token.len() < 18 || token.len() > 33 || !token.is_ascii() {
            return None;
        }
        let (head, mac_hex) = token.split_at(token.len() - 16);
        let flag = head.chars().last()?;
        if !matches!(flag, 'a' | 'n' | 'l') {
            return None;
        }
        let id = u64::from_str_radix(&head[..head.len() - 1], 16).ok()?;
        let mut data = id.to_be_bytes().to_vec();
        data.push(flag as u8);
        let want = hex(&self.mac(&data));
        subtle::ConstantTimeEq::ct_eq(want.as_bytes(), mac_hex.as_bytes())
            .into_bool_then(|| (id, flag))
    }

    /// A branch for a request we forward, derived from the one we received (so a CANCEL and
    /// the hop-by-hop ACK land on the INVITE's transaction at the next hop, RFC 3261 §16.11),
    /// and from the flow (two clients reusing a branch do not collide).
    pub fn branch(&self, id: u64, incoming: &str) -> String {
        let mut data = id.to_be_bytes().to_vec();
        data.extend_from_slice(incoming.as_bytes());
        format!("z9hG4bK-pg{}", hex(&self.mac(&data)))
    }

    /// Remembers that `contact` was registered over flow `id`.
    pub fn remember_contact(&self, contact: String, id: u64) {
        let mut contacts = self.contacts.lock().unwrap_or_else(|e| e.into_inner());
        if contacts.len() >= MAX_CONTACTS && !contacts.contains_key(&contact) {
            return;
        }
        contacts.insert(contact, id);
    }

    pub fn by_contact(&self, contact: &str) -> Option<Arc<Flow>> {
        let id = *self
            .contacts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(contact)?;
        self.get(id)
    }
}

trait BoolThen {
    fn into_bool_then<T>(self, f: impl FnOnce() -> T) -> Option<T>;
}

impl BoolThen for subtle::Choice {
    fn into_bool_then<T>(self, f: impl FnOnce() -> T) -> Option<T> {
        bool::from(self).then(f)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_resist_forgery() {
        let flows = Flows::new();
        let t = flows.token(42, 'a');
        assert_eq!(flows.parse_token(&t), Some((42, 'a')));
        let n = flows.token(u64::MAX, 'n');
        assert_eq!(flows.parse_token(&n), Some((u64::MAX, 'n')));
        // Another id with the same MAC, a changed flag, another process's key.
        let forged = t.replacen("2a", "2b", 1);
        assert_eq!(flows.parse_token(&forged), None);
        assert_eq!(flows.parse_token(&t.replacen('a', "n", 1)), None);
        assert_eq!(Flows::new().parse_token(&t), None);
        assert_eq!(flows.parse_token("x"), None);
        assert_eq!(flows.parse_token("zzzzzzzzzzzzzzzzzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn branches_are_stable_per_flow_and_incoming_branch() {
        let flows = Flows::new();
        let b = flows.branch(1, "z9hG4bKabc");
        assert!(b.starts_with("z9hG4bK"));
        assert_eq!(b, flows.branch(1, "z9hG4bKabc"));
        assert_ne!(b, flows.branch(2, "z9hG4bKabc"));
        assert_ne!(b, flows.branch(1, "z9hG4bKabd"));
    }

    #[tokio::test]
    async fn a_full_queue_closes_the_flow_and_removal_forgets_contacts() {
        let flows = Flows::new();
        let close = CancellationToken::new();
        let (flow, _rx) = flows.add(
            Kind::Tls,
            "192.0.2.1:5061".parse().unwrap(),
            "192.0.2.2:5061".parse().unwrap(),
            None,
            close.clone(),
        );
        flows.remember_contact("sip:1001@192.0.2.1:5061;transport=tls".into(), flow.id);
        assert!(flows
            .by_contact("sip:1001@192.0.2.1:5061;transport=tls")
            .is_some());
        for _ in 0..QUEUE_DEPTH {
            assert!(flow.send(Bytes::from_static(b"x")));
        }
        assert!(!flow.send(Bytes::from_static(b"x")));
        assert!(close.is_cancelled());
        flows.remove(flow.id);
        assert!(flows.get(flow.id).is_none());
        assert!(flows
            .by_contact("sip:1001@192.0.2.1:5061;transport=tls")
            .is_none());
    }
}
