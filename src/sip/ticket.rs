//! WebSocket tickets: browsers cannot put a bearer token on a WebSocket upgrade, so the web
//! page first trades its session for a short-lived, single-use ticket and passes that in the
//! query string. Only a SHA-256 of each ticket is kept, so a memory dump or a log line with
//! the map cannot be replayed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError};

/// Tickets outstanding at most; minting beyond this first drops expired ones, then refuses.
const MAX_TICKETS: usize = 100_000;
/// Unused tickets one web session may hold (a page opens one WebSocket; a few retries).
const MAX_PER_SESSION: usize = 8;

/// Who a ticket was minted for: the WebSocket opened with it is bound to this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub user: String,
    pub extension: String,
    /// The web session (`sid`); revoking it closes the WebSocket.
    pub session: String,
}

#[derive(Debug)]
struct Entry {
    binding: Binding,
    expires: Instant,
}

#[derive(Debug, Default)]
pub struct Tickets {
    map: Mutex<HashMap<[u8; 32], Entry>>,
}

fn digest(ticket: &str) -> [u8; 32] {
    Sha256::digest(ticket.as_bytes()).into()
}

impl Tickets {
    /// A new ticket (43 URL-safe characters, 256 random bits), or `None` when too many are
    /// outstanding.
    pub fn mint(&self, binding: Binding, ttl: Duration, now: Instant) -> Option<String> {
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let ticket = URL_SAFE_NO_PAD.encode(raw);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TICKETS {
            map.retain(|_, e| e.expires > now);
            if map.len() >= MAX_TICKETS {
                return None;
            }
        }
        let held = map
            .values()
            .filter(|e| e.expires > now && e.binding.session == binding.session)
            .count();
        if held >= MAX_PER_SESSION {
            return None;
        }
        map.insert(
            digest(&ticket),
            Entry {
                binding,
                expires: now + ttl,
            },
        );
        Some(ticket)
    }

    /// Uses a ticket up: the binding when it exists and has not expired. A second use of the
    /// same ticket finds nothing.
    pub fn redeem(&self, ticket: &str, now: Instant) -> Option<Binding> {
        if ticket.len() != 43 {
            return None;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.remove(&digest(ticket))?;
        (entry.expires > now).then_some(entry.binding)
    }

    /// Drops expired tickets (housekeeping).
    pub fn sweep(&self, now: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, e| e.expires > now);
    }

    /// Trades a web session (its user and id) for a ticket bound to the user's SIP extension.
    pub async fn issue(
        &self,
        store: &Store,
        user: &str,
        session: &str,
        ttl: Duration,
    ) -> Result<Issued, TicketError> {
        let extension = store
            .user_extension(user)
            .await?
            .ok_or(TicketError::NoExtension)?;
        let binding = Binding {
            user: user.to_string(),
            extension: extension.clone(),
            session: session.to_string(),
        };
        let ticket = self
            .mint(binding, ttl, Instant::now())
            .ok_or(TicketError::TooMany)?;
        let expires_at = crate::clock::now_unix() + ttl.as_secs() as i64;
        Ok(Issued {
            ticket,
            extension,
            expires_at,
        })
    }
}

/// Why no ticket was issued.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("this user has no SIP extension")]
    NoExtension,
    #[error("too many unused WebSocket tickets")]
    TooMany,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A ticket issued for a web session.
#[derive(Debug, Clone)]
pub struct Issued {
    pub ticket: String,
    pub extension: String,
    pub expires_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding() -> Binding {
        Binding {
            user: "alice".into(),
            extension: "1001".into(),
            session: "s1".into(),
        }
    }

    #[test]
    fn a_ticket_works_once() {
        let t = Tickets::default();
        let now = Instant::now();
        let ticket = t.mint(binding(), Duration::from_secs(30), now).unwrap();
        assert_eq!(ticket.len(), 43);
        assert_eq!(t.redeem(&ticket, now), Some(binding()));
        assert_eq!(t.redeem(&ticket, now), None);
    }

    #[test]
    fn an_expired_or_unknown_ticket_is_refused() {
        let t = Tickets::default();
        let now = Instant::now();
        let ticket = t.mint(binding(), Duration::from_secs(30), now).unwrap();
        assert_eq!(t.redeem(&ticket, now + Duration::from_secs(31)), None);
        let other = t.mint(binding(), Duration::from_secs(30), now).unwrap();
        let mut forged = other.clone().into_bytes();
        forged[0] = if forged[0] == b'A' { b'B' } else { b'A' };
        assert_eq!(t.redeem(std::str::from_utf8(&forged).unwrap(), now), None);
        assert_eq!(t.redeem("", now), None);
        assert_eq!(t.redeem(&other, now), Some(binding()));
    }

    #[test]
    fn one_session_cannot_hoard_tickets() {
        let t = Tickets::default();
        let now = Instant::now();
        for _ in 0..MAX_PER_SESSION {
            assert!(t.mint(binding(), Duration::from_secs(30), now).is_some());
        }
        assert!(t.mint(binding(), Duration::from_secs(30), now).is_none());
        let other = Binding {
            session: "s2".into(),
            ..binding()
        };
        assert!(t.mint(other, Duration::from_secs(30), now).is_some());
        // Expired ones do not count.
        assert!(t
            .mint(
                binding(),
                Duration::from_secs(30),
                now + Duration::from_secs(31)
            )
            .is_some());
    }

    #[test]
    fn sweeping_forgets_expired_tickets() {
        let t = Tickets::default();
        let now = Instant::now();
        t.mint(binding(), Duration::from_secs(1), now).unwrap();
        let live = t.mint(binding(), Duration::from_secs(60), now).unwrap();
        t.sweep(now + Duration::from_secs(2));
        assert_eq!(t.map.lock().unwrap().len(), 1);
        assert!(t.redeem(&live, now + Duration::from_secs(2)).is_some());
    }
}
