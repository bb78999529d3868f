//! Alert emails for refused calls: one per rule and offender per `alert_interval`, to the
//! admins (level 9 users with an email address) and `[dialing] alert_to`, through `[smtp]`.
//! The next alert after a quiet spell says how many refusals were not mailed in between, so
//! a weekend of attempts is one email an hour, not thousands.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::warn;

use super::{Refused, Rule};
use crate::mail::config::SmtpConfig;
use crate::metrics::{Metrics, ResultLabels};
use crate::store::Store;
use crate::vault::Vault;

/// Rule-and-offender pairs remembered at most (a scan from many addresses is still bounded).
const MAX_TRACKED: usize = 10_000;
/// Alerts mailed per `alert_interval` in all: an attacker inventing a new caller name per
/// attempt must not turn the alerts into a mail flood. Past it, refusals are only counted
/// (and logged, audited) until the interval has passed.
const MAX_ALERTS_PER_INTERVAL: usize = 20;

#[derive(Debug, Clone, Copy)]
struct Last {
    sent: Instant,
    /// Refusals not mailed since `sent`.
    suppressed: u64,
}

pub struct Alerts {
    store: Store,
    vault: Vault,
    smtp: ArcSwap<SmtpConfig>,
    metrics: Metrics,
    throttle: Throttle,
}

/// When each rule and offender was last mailed, and when the latest alerts went out.
#[derive(Debug, Default)]
struct Throttle {
    last: Mutex<HashMap<(Rule, String), Last>>,
    recent: Mutex<std::collections::VecDeque<Instant>>,
}

/// What one email says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub subject: String,
    pub body: String,
}

/// The email for `r`; `suppressed` refusals of the same kind were not mailed before it.
pub fn compose(r: &Refused, suppressed: u64, node: &str, at: i64) -> Alert {
    let subject = format!(
        "pbxguard: {} refused for {} ({})",
        r.rule.name(),
        r.offender,
        node
    );
    let mut body = format!(
        "pbxguard's toll-fraud guard refused a call.\n\n\
         Rule:        {}\n\
         Why:         {}\n\
         Who:         {}\n\
         From:        {}\n\
         Destination: {}\n\
         Door:        {}\n\
         Node:        {}\n\
         When:        {}\n",
        r.rule.name(),
        r.rule.explain(),
        r.offender,
        r.address,
        r.destination,
        r.offender.door().name(),
        node,
        crate::clock::rfc3339(at),
    );
    if suppressed > 0 {
        body.push_str(&format!(
            "\n{suppressed} more refusal(s) of this rule for this {} were not mailed since the last alert.\n",
            match r.offender {
                super::Offender::Extension(_) => "extension",
                super::Offender::AmiClient(_) => "AMI client",
            }
        ));
    }
    body.push_str(
        "\nIf this was not expected, the extension's password or the AMI client's secret may be \
         known to someone else: change it, and look at `pbxguard audit log` for what else it did.\n",
    );
    Alert { subject, body }
}

impl Alerts {
    pub fn new(store: Store, vault: Vault, smtp: SmtpConfig, metrics: Metrics) -> Alerts {
        Alerts {
            store,
            vault,
            smtp: ArcSwap::from_pointee(smtp),
            metrics,
            throttle: Throttle::default(),
        }
    }

    pub fn set_smtp(&self, smtp: SmtpConfig) {
        self.smtp.store(Arc::new(smtp));
    }
}

impl Throttle {
    /// Whether an alert for `key` goes out now, and how many were held back before it.
    fn due(&self, key: (Rule, String), interval: Duration, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        while recent
            .front()
            .is_some_and(|at| now.duration_since(*at) >= interval)
        {
            recent.pop_front();
        }
        let over_budget = recent.len() >= MAX_ALERTS_PER_INTERVAL;
        if let Some(l) = last.get_mut(&key) {
            if over_budget || now.duration_since(l.sent) < interval {
                l.suppressed += 1;
                return None;
            }
            recent.push_back(now);
            let held = l.suppressed;
            *l = Last {
                sent: now,
                suppressed: 0,
            };
            return Some(held);
        }
        if over_budget {
            return None;
        }
        if last.len() >= MAX_TRACKED {
            last.retain(|_, l| now.duration_since(l.sent) < interval);
            if last.len() >= MAX_TRACKED {
                return None;
            }
        }
        recent.push_back(now);
        last.insert(
            key,
            Last {
                sent: now,
                suppressed: 0,
            },
        );
        Some(0)
    }
}

impl Alerts {
    /// Mails `r` unless an alert of the same rule and offender went out within `interval`.
    pub fn raise(&self, r: Refused, interval: Duration, alert_to: Vec<String>, now: Instant) {
        let Some(held) = self.throttle.due((r.rule, r.offender.key()), interval, now) else {
            self.count("suppressed");
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        let vault = self.vault.clone();
        let smtp = self.smtp.load_full();
        let metrics = self.metrics.clone();
        runtime.spawn(async move {
            let mut to = alert_to;
            match store.users().await {
                Ok(users) => to.extend(
                    users
                        .into_iter()
                        .filter(|u| u.level == 9 && !u.disabled)
                        .filter_map(|u| u.email),
                ),
                Err(e) => warn!(error = %e, "cannot read the admins' addresses for a toll-fraud alert"),
            }
            to.sort();
            to.dedup();
            if to.is_empty() {
                warn!(rule = r.rule.name(), offender = %r.offender, "toll-fraud alert not mailed: no admin has an email address and [dialing] alert_to is empty");
                return;
            }
            let node = store.node().unwrap_or("pbxguard").to_string();
            let alert = compose(&r, held, &node, crate::clock::now_unix());
            for addr in to {
                let result =
                    crate::mail::send(&smtp, &vault, &addr, &alert.subject, alert.body.clone())
                        .await;
                let label = match result {
                    Ok(()) => "sent",
                    Err(e) => {
                        warn!(error = %e, "toll-fraud alert email failed");
                        "failed"
                    }
                };
                metrics
                    .dial_alerts
                    .get_or_create(&ResultLabels { result: label })
                    .inc();
            }
        });
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .dial_alerts
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::super::Offender;
    use super::*;

    fn refused() -> Refused {
        Refused {
            rule: Rule::DenyPrefix,
            offender: Offender::Extension("1001".into()),
            address: "192.0.2.7".parse().unwrap(),
            destination: "0088212345".into(),
        }
    }

    #[test]
    fn an_alert_names_who_where_what_and_the_rule() {
        let a = compose(&refused(), 0, "pbx1", 0);
        assert!(a.subject.contains("deny_prefix"));
        assert!(a.subject.contains("extension 1001"));
        for needle in [
            "deny_prefix",
            "extension 1001",
            "192.0.2.7",
            "0088212345",
            "sip",
            "pbx1",
        ] {
            assert!(a.body.contains(needle), "{needle} missing:\n{}", a.body);
        }
        assert!(!a.body.contains("more refusal"));
        let b = compose(&refused(), 41, "pbx1", 0);
        assert!(b.body.contains("41 more refusal(s)"));
    }

    #[test]
    fn one_alert_per_rule_and_offender_per_interval() {
        let t = Throttle::default();
        let now = Instant::now();
        let i = Duration::from_secs(900);
        let key = |r: Rule, who: &str| (r, who.to_string());
        assert_eq!(t.due(key(Rule::DenyPrefix, "ext:1001"), i, now), Some(0));
        assert_eq!(t.due(key(Rule::DenyPrefix, "ext:1001"), i, now), None);
        assert_eq!(t.due(key(Rule::DenyPrefix, "ext:1001"), i, now), None);
        // Another rule or another offender is its own alert.
        assert_eq!(
            t.due(key(Rule::MaxConcurrentCalls, "ext:1001"), i, now),
            Some(0)
        );
        assert_eq!(t.due(key(Rule::DenyPrefix, "ext:1002"), i, now), Some(0));
        // After the interval: mailed again, saying two were held back.
        assert_eq!(
            t.due(key(Rule::DenyPrefix, "ext:1001"), i, now + i),
            Some(2)
        );
        assert_eq!(t.due(key(Rule::DenyPrefix, "ext:1001"), i, now + i), None);
    }

    #[test]
    fn invented_offenders_cannot_flood_the_mailbox() {
        let t = Throttle::default();
        let now = Instant::now();
        let i = Duration::from_secs(900);
        let mailed = (0..1000)
            .filter(|n| {
                t.due((Rule::DenyPrefix, format!("ext:x{n}")), i, now)
                    .is_some()
            })
            .count();
        assert_eq!(mailed, MAX_ALERTS_PER_INTERVAL);
        // The budget comes back with the interval.
        assert_eq!(
            t.due((Rule::DenyPrefix, "ext:y".into()), i, now + i),
            Some(0)
        );
    }
}
