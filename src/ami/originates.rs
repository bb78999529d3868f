//! One session's `Originate`s in flight, counted against the client's call limits
//! ([`crate::dialing::Guard::begin`]) from the moment pbxguard forwards one until Asterisk's
//! final answer: the `Response` of a synchronous Originate; for `Async: true`, the
//! `OriginateResponse` event (or an error `Response`, after which no event comes). A session
//! that does not receive call events never sees that event, and a client may close its
//! session while Asterisk still dials, so every call also ends at its deadline: the
//! Originate's `Timeout` plus a margin.
//!
//! Each forwarded Originate carries its own number in the ActionID pbxguard gives Asterisk
//! (`<session tag>=<n>-<client's ActionID>`), so answers are matched to the call even when a
//! client reuses one ActionID for many Originates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::calls::Originate;
use crate::dialing::limits::MAX_CALL_AGE;
use crate::dialing::{Limited, Limits, Offender, Rule};

/// Added to an Originate's dial timeout before the call is taken as over without an answer:
/// Asterisk answers a moment after the timeout, and a busy Asterisk later still.
pub const MARGIN: Duration = Duration::from_secs(10);
/// Originates one session tracks at most (beyond any configured limit, a bound on memory).
const MAX_IN_FLIGHT: usize = 10_000;

pub use crate::dialing::Counter;

/// However the session ended (a task dropped at shutdown included), its calls are handed on.
impl Drop for InFlight {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Asterisk's answer to a tracked Originate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The action's `Response` (`Success` or not).
    Response { success: bool },
    /// The `OriginateResponse` event of an asynchronous Originate.
    Event,
}

#[derive(Debug, Clone, Copy)]
struct Call {
    asynchronous: bool,
    deadline: Instant,
}

pub struct InFlight {
    guard: Arc<dyn Counter>,
    offender: Offender,
    tag: String,
    /// Shared with each call's deadline timer.
    calls: Arc<Mutex<HashMap<u64, Call>>>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("offender", &self.offender)
            .finish_non_exhaustive()
    }
}

/// When a call that is never answered is taken as over.
fn deadline(originate: Originate, now: Instant) -> Instant {
    let wait = originate
        .timeout
        .map_or(MAX_CALL_AGE, |t| (t + MARGIN).min(MAX_CALL_AGE));
    now + wait
}

impl InFlight {
    /// `tag` is the session's; call ids are unique across sessions and nodes' restarts.
    pub fn new(guard: Arc<dyn Counter>, offender: Offender, tag: &str) -> InFlight {
        InFlight {
            guard,
            offender,
            tag: tag.to_string(),
            calls: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn id(&self, n: u64) -> String {
        format!("{}={n}", self.tag)
    }

    /// Counts Originate number `n` under `limits`, unless a limit is reached.
    pub fn begin(
        &self,
        n: u64,
        originate: Originate,
        limits: Limits,
        now: Instant,
    ) -> Result<(), Limited> {
        self.sweep(now);
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        if calls.len() >= MAX_IN_FLIGHT {
            return Err(Limited {
                rule: Rule::MaxConcurrentCalls,
                retry_after: Duration::from_secs(30),
            });
        }
        self.guard.begin(&self.offender, &self.id(n), limits, now)?;
        let at = deadline(originate, now);
        calls.insert(
            n,
            Call {
                asynchronous: originate.asynchronous,
                deadline: at,
            },
        );
        drop(calls);
        self.end_at(n, at);
        Ok(())
    }

    /// Ends call `n` at its deadline unless it is over by then. Without this, a call never
    /// answered (a session without call events never sees its OriginateResponse) would stay
    /// counted against the client's other sessions while this one sends nothing that sweeps.
    fn end_at(&self, n: u64, at: Instant) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let calls = Arc::downgrade(&self.calls);
        let (guard, offender, id) = (self.guard.clone(), self.offender.clone(), self.id(n));
        rt.spawn(async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            // Gone: the session ended and handed its calls on (see `finish`).
            let Some(calls) = calls.upgrade() else { return };
            let over = calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&n)
                .is_some();
            if over {
                guard.end(&offender, &id);
            }
        });
    }

    /// Asterisk answered Originate `n` (unknown numbers are ignored: already over).
    pub fn answered(&self, n: u64, answer: Answer) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let Some(call) = calls.get(&n) else { return };
        let over = match answer {
            // "Originate successfully queued": the call is still being placed.
            Answer::Response { success } => !call.asynchronous || !success,
            Answer::Event => true,
        };
        if over {
            calls.remove(&n);
            self.guard.end(&self.offender, &self.id(n));
        }
    }

    /// Ends the calls whose deadline has passed.
    pub fn sweep(&self, now: Instant) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let expired: Vec<u64> = calls
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(n, _)| *n)
            .collect();
        for n in expired {
            calls.remove(&n);
            self.guard.end(&self.offender, &self.id(n));
        }
    }

    /// Originates not answered yet.
    pub fn len(&self) -> usize {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The session ended: Asterisk may still be placing its calls, so they stay counted until
    /// their deadlines (in a task of their own), not until the client reconnects. Calls
    /// handed on are no longer this session's, so a second call does nothing.
    pub fn finish(&self) {
        let mut left: Vec<(u64, Instant)> = self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(n, c)| (n, c.deadline))
            .collect();
        if left.is_empty() {
            return;
        }
        left.sort_by_key(|(_, d)| *d);
        let ids: Vec<(String, Instant)> = left.into_iter().map(|(n, d)| (self.id(n), d)).collect();
        let (guard, offender) = (self.guard.clone(), self.offender.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    for (id, at) in ids {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                        guard.end(&offender, &id);
                    }
                });
            }
            Err(_) => {
                for (id, _) in ids {
                    guard.end(&offender, &id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialing::limits::Limiter;

    fn who() -> Offender {
        Offender::AmiClient("d".into())
    }

    fn setup() -> (Arc<Limiter>, InFlight) {
        let l = Arc::new(Limiter::default());
        let f = InFlight::new(l.clone(), who(), "pbxgA");
        (l, f)
    }

    const SYNC: Originate = Originate {
        asynchronous: false,
        timeout: Some(Duration::from_secs(30)),
    };
    const ASYNC: Originate = Originate {
        asynchronous: true,
        timeout: Some(Duration::from_secs(30)),
    };
    const ONE: Limits = Limits {
        max_concurrent: 1,
        max_per_minute: 0,
    };

    #[test]
    fn a_synchronous_originate_is_over_at_its_response() {
        let (l, f) = setup();
        let t = Instant::now();
        f.begin(1, SYNC, ONE, t).unwrap();
        let e = f.begin(2, SYNC, ONE, t).unwrap_err();
        assert_eq!(e.rule, Rule::MaxConcurrentCalls);
        f.answered(1, Answer::Response { success: true });
        assert!(f.is_empty());
        f.begin(2, SYNC, ONE, t).unwrap();
        f.answered(2, Answer::Response { success: false });
        assert_eq!(l.active(&who().key()), 0);
    }

    #[test]
    fn an_asynchronous_originate_is_over_at_its_event_or_an_error() {
        let (l, f) = setup();
        let t = Instant::now();
        f.begin(1, ASYNC, ONE, t).unwrap();
        // "Originate successfully queued": still dialling.
        f.answered(1, Answer::Response { success: true });
        assert_eq!(l.active(&who().key()), 1);
        assert!(f.begin(2, ASYNC, ONE, t).is_err());
        f.answered(1, Answer::Event);
        assert_eq!(l.active(&who().key()), 0);
        // An error answer: no event follows.
        f.begin(2, ASYNC, ONE, t).unwrap();
        f.answered(2, Answer::Response { success: false });
        assert_eq!(l.active(&who().key()), 0);
        // The event may even come first.
        f.begin(3, ASYNC, ONE, t).unwrap();
        f.answered(3, Answer::Event);
        f.answered(3, Answer::Response { success: true });
        assert_eq!(l.active(&who().key()), 0);
        // Numbers never begun are ignored.
        f.answered(99, Answer::Event);
    }

    #[test]
    fn an_unanswered_originate_ends_at_its_timeout_plus_a_margin() {
        let (l, f) = setup();
        let t = Instant::now();
        let short = Originate {
            asynchronous: true,
            timeout: Some(Duration::from_secs(5)),
        };
        f.begin(1, short, ONE, t).unwrap();
        f.sweep(t + Duration::from_secs(14));
        assert_eq!(l.active(&who().key()), 1);
        // The next Originate sweeps first, so the limit sees the call as over.
        f.begin(2, short, ONE, t + Duration::from_secs(15)).unwrap();
        assert_eq!(l.active(&who().key()), 1);
        assert_eq!(f.len(), 1);
        // No timeout at all: counted up to the limiter's own bound.
        let forever = Originate {
            asynchronous: true,
            timeout: None,
        };
        assert_eq!(deadline(forever, t), t + MAX_CALL_AGE);
    }

    #[tokio::test]
    async fn an_idle_session_ends_its_unanswered_calls_at_their_deadline() {
        let (l, f) = setup();
        let soon = Originate {
            asynchronous: true,
            timeout: Some(Duration::from_millis(1)),
        };
        // The deadline is the timeout plus MARGIN: start the call that long ago.
        let t = Instant::now() - MARGIN;
        f.begin(1, soon, ONE, t).unwrap();
        let any = Limits {
            max_concurrent: 0,
            max_per_minute: 0,
        };
        f.begin(2, ASYNC, any, Instant::now()).unwrap();
        assert_eq!(l.active(&who().key()), 2);
        // Nothing else happens in the session: no answer, no further Originate.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(l.active(&who().key()), 1);
        assert_eq!(f.len(), 1);
        // Answered later: ended once, not twice.
        f.answered(2, Answer::Event);
        assert_eq!(l.active(&who().key()), 0);
    }

    #[test]
    fn per_minute_attempts_are_refused_then_allowed_again() {
        let (l, f) = setup();
        let t = Instant::now();
        let two = Limits {
            max_concurrent: 0,
            max_per_minute: 2,
        };
        for n in 1..=2 {
            f.begin(n, SYNC, two, t).unwrap();
            f.answered(n, Answer::Response { success: true });
        }
        let e = f
            .begin(3, SYNC, two, t + Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(e.rule, Rule::MaxCallAttemptsPerMinute);
        assert_eq!(e.retry_after, Duration::from_secs(59));
        f.begin(3, SYNC, two, t + Duration::from_secs(60)).unwrap();
        assert_eq!(l.active(&who().key()), 1);
    }

    #[tokio::test]
    async fn a_closed_session_keeps_its_calls_counted_until_their_deadline() {
        let (l, f) = setup();
        let soon = Originate {
            asynchronous: true,
            timeout: Some(Duration::from_millis(1)),
        };
        // The deadline is the timeout plus MARGIN: start the first call that long ago.
        let t = Instant::now() - MARGIN;
        let two = Limits {
            max_concurrent: 2,
            max_per_minute: 0,
        };
        f.begin(1, soon, two, t).unwrap();
        f.begin(2, ASYNC, two, Instant::now()).unwrap();
        f.finish();
        assert!(f.is_empty());
        assert_eq!(l.active(&who().key()), 2);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The first is over, the second still rings.
        assert_eq!(l.active(&who().key()), 1);
    }
}
