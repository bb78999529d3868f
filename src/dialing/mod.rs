//! The toll-fraud guard both doors share (the SIP edge and the AMI gateway): destinations
//! nobody may dial ([`destination`]), calls at once and attempts per minute per extension or
//! AMI client ([`limits`]), and for every refusal a metric, an audit row and, at most once per
//! rule and offender per `alert_interval`, an email to the admins ([`alerts`]).
//!
//! The rule names are one vocabulary: the SIP `Warning`, the AMI `Message:`, the audit row,
//! the metric's label and the alert all say `deny_prefix`, `dial_characters`,
//! `max_concurrent_calls`, `max_call_attempts_per_minute` or `context`.

pub mod alerts;
pub mod config;
pub mod destination;
pub mod limits;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tracing::info;

pub use self::config::DialingConfig;
pub use self::limits::{Limited, Limits};
use crate::journal::Journal;
use crate::mail::config::SmtpConfig;
use crate::metrics::{DialLabels, Metrics};
use crate::store::{AuditEntry, Store};
use crate::vault::Vault;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    DenyPrefix,
    DialCharacters,
    MaxConcurrentCalls,
    MaxCallAttemptsPerMinute,
    /// An AMI client's call or transfer into a context it was not given.
    Context,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::DenyPrefix => "deny_prefix",
            Rule::DialCharacters => "dial_characters",
            Rule::MaxConcurrentCalls => "max_concurrent_calls",
            Rule::MaxCallAttemptsPerMinute => "max_call_attempts_per_minute",
            Rule::Context => "context",
        }
    }

    /// One line for the AMI `Message:` and the alert; names the rule, gives nothing an
    /// attacker could tune to (which prefix matched, how close the limit is).
    pub fn explain(self) -> &'static str {
        match self {
            Rule::DenyPrefix => "the destination is in a range nobody may dial",
            Rule::DialCharacters => "the destination holds characters that are not dialable",
            Rule::MaxConcurrentCalls => "too many calls at once",
            Rule::MaxCallAttemptsPerMinute => "too many call attempts in the last minute",
            Rule::Context => "a dialplan context this client was not given",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which door a call came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Door {
    Sip,
    Ami,
}

impl Door {
    pub fn name(self) -> &'static str {
        match self {
            Door::Sip => "sip",
            Door::Ami => "ami",
        }
    }
}

/// Who tried: an extension at the SIP edge or a client of the AMI gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Offender {
    Extension(String),
    AmiClient(String),
}

impl Offender {
    /// The key its limits are counted under.
    pub fn key(&self) -> String {
        match self {
            Offender::Extension(e) => format!("ext:{e}"),
            Offender::AmiClient(c) => format!("ami:{c}"),
        }
    }

    pub fn door(&self) -> Door {
        match self {
            Offender::Extension(_) => Door::Sip,
            Offender::AmiClient(_) => Door::Ami,
        }
    }
}

impl fmt::Display for Offender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Offender::Extension(e) => write!(f, "extension {e}"),
            Offender::AmiClient(c) => write!(f, "AMI client {c}"),
        }
    }
}

/// One refused call, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub rule: Rule,
    pub offender: Offender,
    pub address: IpAddr,
    /// What was dialled (bounded and stripped of control characters before it is stored).
    pub destination: String,
}

/// What counts calls against the limits: the daemon's shared [`Guard`], or a bare
/// [`limits::Limiter`] where a unit test needs no daemon around it. The SIP edge's call slots and
/// the AMI gateway's Originates in flight both count through it.
pub trait Counter: Send + Sync + 'static {
    fn begin(
        &self,
        offender: &Offender,
        id: &str,
        limits: Limits,
        now: Instant,
    ) -> Result<(), Limited>;
    fn end(&self, offender: &Offender, id: &str);
}

impl Counter for limits::Limiter {
    fn begin(
        &self,
        offender: &Offender,
        id: &str,
        limits: Limits,
        now: Instant,
    ) -> Result<(), Limited> {
        limits::Limiter::begin(self, &offender.key(), id, limits, now)
    }

    fn end(&self, offender: &Offender, id: &str) {
        limits::Limiter::end(self, &offender.key(), id);
    }
}

impl Counter for Guard {
    fn begin(
        &self,
        offender: &Offender,
        id: &str,
        limits: Limits,
        now: Instant,
    ) -> Result<(), Limited> {
        self.inner.limiter.begin(&offender.key(), id, limits, now)
    }

    fn end(&self, offender: &Offender, id: &str) {
        self.inner.limiter.end(&offender.key(), id);
    }
}

/// Shared by the SIP edge and the AMI gateway; cheap to clone.
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Inner>,
}

struct Inner {
    config: ArcSwap<DialingConfig>,
    limiter: limits::Limiter,
    metrics: Metrics,
    journal: Journal,
    alerts: alerts::Alerts,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard").finish_non_exhaustive()
    }
}

/// Destinations as stored and mailed: printable, bounded.
fn shown(dest: &str) -> String {
    let mut out: String = dest
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(destination::MAX_DESTINATION * 2)
        .collect();
    if dest.chars().count() > destination::MAX_DESTINATION * 2 {
        out.push('…');
    }
    out
}

impl Guard {
    pub fn new(
        config: DialingConfig,
        smtp: SmtpConfig,
        store: Store,
        vault: Vault,
        metrics: Metrics,
        journal: Journal,
    ) -> Guard {
        let alerts = alerts::Alerts::new(store, vault, smtp, metrics.clone());
        Guard {
            inner: Arc::new(Inner {
                config: ArcSwap::from_pointee(config),
                limiter: limits::Limiter::default(),
                metrics,
                journal,
                alerts,
            }),
        }
    }

    /// A reload: the new rules apply to the next call; calls up stay counted.
    pub fn set_config(&self, config: DialingConfig, smtp: SmtpConfig) {
        self.inner.alerts.set_smtp(smtp);
        self.inner.config.store(Arc::new(config));
    }

    pub fn config(&self) -> Arc<DialingConfig> {
        self.inner.config.load_full()
    }

    /// The `[dialing]` limits (an AMI client may have its own).
    pub fn limits(&self) -> Limits {
        let c = self.inner.config.load();
        Limits {
            max_concurrent: c.max_concurrent_calls,
            max_per_minute: c.max_call_attempts_per_minute,
        }
    }

    /// A dialled number at the SIP edge: the strict dialable set, then the denied ranges.
    pub fn check_number(&self, dest: &str) -> Result<(), Rule> {
        destination::check(dest, &self.inner.config.load())
    }

    /// An AMI `Exten` or channel name: names allowed, injection and denied ranges not.
    pub fn check_named(&self, dest: &str) -> Result<(), Rule> {
        destination::check_named(dest, &self.inner.config.load())
    }

    /// Starts call `id` of `offender` under `limits`.
    pub fn begin(
        &self,
        offender: &Offender,
        id: &str,
        limits: Limits,
        now: Instant,
    ) -> Result<(), Limited> {
        self.inner.limiter.begin(&offender.key(), id, limits, now)
    }

    pub fn end(&self, offender: &Offender, id: &str) {
        self.inner.limiter.end(&offender.key(), id);
    }

    /// Calls of `offender` up now.
    pub fn active(&self, offender: &Offender) -> usize {
        self.inner.limiter.active(&offender.key())
    }

    /// Reports a refusal: log line, metric, audit row, and an alert unless one for the same
    /// rule and offender went out within `alert_interval`.
    pub fn refused(&self, refused: Refused) {
        // Names come from peers too (a From user, an AMI client name as typed): printable
        // and bounded before they reach the log, the audit row and the mail.
        let offender = match &refused.offender {
            Offender::Extension(e) => Offender::Extension(shown(e)),
            Offender::AmiClient(c) => Offender::AmiClient(shown(c)),
        };
        let refused = Refused {
            destination: shown(&refused.destination),
            offender,
            ..refused
        };
        let door = refused.offender.door().name();
        info!(
            door,
            rule = refused.rule.name(),
            offender = %refused.offender,
            address = %refused.address,
            destination = %refused.destination,
            "toll-fraud guard refused a call"
        );
        self.inner
            .metrics
            .dial_refusals
            .get_or_create(&DialLabels {
                door,
                rule: refused.rule.name(),
            })
            .inc();
        let actor = match &refused.offender {
            Offender::Extension(e) => format!("sip:{e}"),
            Offender::AmiClient(c) => format!("ami:{c}"),
        };
        self.inner.journal.record(AuditEntry {
            at: crate::clock::now_unix(),
            actor,
            action: format!("dialing.refused.{}", refused.rule.name()),
            target: refused.destination.clone(),
            detail: format!("door={door} address={}", refused.address),
            node: None,
        });
        let interval = self.inner.config.load().alert_interval;
        let to = self.inner.config.load().alert_to.clone();
        self.inner
            .alerts
            .raise(refused, interval, to, Instant::now());
    }
}
