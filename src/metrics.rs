//! Prometheus metrics shared by every subsystem, exposed at `GET /metrics` (OpenMetrics text).
//!
//! Labels carry route templates, listener names and status codes only: never user names, IPs or
//! anything a client chooses, so a scanner cannot blow up the label space.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RealtimeLabels {
    pub family: String,
    pub op: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DialLabels {
    /// `sip` or `ami`.
    pub door: &'static str,
    /// The toll-fraud rule (`deny_prefix`, `dial_characters`, `max_concurrent_calls`,
    /// `max_call_attempts_per_minute`, `context`).
    pub rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// Where a ban came from: `sip`, `ami`, `http`, `asterisk`, `feed`, `manual`.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeedLabels {
    /// The feed's name from `[[bans.feeds]]` (the admin's, never a client's).
    pub feed: String,
    /// `ok` or `failed`.
    pub result: &'static str,
}

/// Every metric of the process. Cloning shares the underlying values.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub connections_open: Family<ListenerLabels, Gauge>,
    pub connections: Family<ListenerLabels, Counter>,
    /// Connections dropped because `max_connections` were open: a flood shows up here.
    pub connections_refused: Family<ListenerLabels, Counter>,
    pub tls_handshake_failures: Family<ListenerLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub logins: Family<ResultLabels, Counter>,
    /// Forward-auth answers by status (200/401/403): a spike of 401 is an attack or an outage.
    pub auth_checks: Family<StatusLabels, Counter>,
    /// `auth_checks` for 200, 401, 403, resolved once.
    check_counters: [Counter; 3],
    /// `http_requests` of `GET /api/v1/auth/check` for 200, 401, 403, resolved once.
    check_requests: [Counter; 3],
    check_duration: Histogram,
    /// Recording downloads of genuine links by status (200, 206, 304, 403 revoked, 404, 410…).
    pub recording_downloads: Family<StatusLabels, Counter>,
    /// Link tokens refused before any lookup (`malformed`, `bad_signature`, `unknown_key`).
    pub link_refusals: Family<ResultLabels, Counter>,
    /// Recording bytes sent (bodies only).
    pub recording_bytes: Counter,
    pub links_minted: Counter,
    /// Download log rows that went to the daemon's log instead of the database (queue full, or
    /// the database refused the batch for longer than its retries).
    pub download_log_overflow: Counter,
    /// Writes the database could not take (disk full, I/O error, read-only, lock timeout).
    pub store_commit_failures: Counter,
    /// Asterisk realtime requests by family (served ones, else `other`), operation and status.
    pub realtime_requests: Family<RealtimeLabels, Counter>,
    /// SIP passwords decrypted for Asterisk, by result (`ok`, `error`).
    pub realtime_decryptions: Family<ResultLabels, Counter>,
    /// AMI client connections logged in through the gateway right now.
    pub ami_sessions: Gauge,
    /// AMI client logins by result (`ok`, `failed`, `banned`, `upstream_down`).
    pub ami_logins: Family<ResultLabels, Counter>,
    /// AMI client actions by outcome (`forwarded`, `refused`, `rate_limited`, `override`).
    pub ami_actions: Family<ResultLabels, Counter>,
    /// AMI clients disconnected because they accepted no bytes for `[ami] write_timeout`.
    pub ami_slow_clients: Counter,
    /// 1 while pbxguard can log in to Asterisk's AMI.
    pub ami_upstream_up: Gauge,
    /// SIP client connections open now, by transport (`tls`, `wss`).
    pub sip_connections: Family<ListenerLabels, Gauge>,
    /// SIP messages from clients by outcome (`forwarded`, `invalid`, `media_refused`,
    /// `rate_limited`, `scanner`, `identity_mismatch`, `unsupported`, `too_many_hops`).
    pub sip_client_messages: Family<ResultLabels, Counter>,
    /// SIP messages from Asterisk by outcome (`forwarded`, `no_route`, `media_refused`,
    /// `invalid`, `stray`).
    pub sip_upstream_messages: Family<ResultLabels, Counter>,
    /// Client addresses banned by the SIP edge, by reason (`auth_failures`, `scanner`).
    pub sip_bans: Family<ResultLabels, Counter>,
    /// WebSocket upgrades refused, by reason (`ticket`, `origin`, `protocol`, `path`).
    pub sip_ws_refusals: Family<ResultLabels, Counter>,
    /// Calls and originates refused by the toll-fraud guard, by door and rule.
    pub dial_refusals: Family<DialLabels, Counter>,
    /// Toll-fraud alert emails by result (`sent`, `failed`, `suppressed`).
    pub dial_alerts: Family<ResultLabels, Counter>,
    /// Bans imposed, by source (an extended ban counts again).
    pub bans: Family<SourceLabels, Counter>,
    /// Bans in force now, by source.
    pub bans_active: Family<SourceLabels, Gauge>,
    /// Packets the firewall dropped from banned addresses (read from the nftables counter).
    pub ban_dropped_packets: Counter,
    /// Firewall reconciliations by result (`ok`, `repaired`, `failed`).
    pub ban_reconciles: Family<ResultLabels, Counter>,
    /// Blocklist feed refreshes by feed and result (`ok`, `failed`).
    pub ban_feed_refreshes: Family<FeedLabels, Counter>,
}

fn status_index(status: axum::http::StatusCode) -> usize {
    match status.as_u16() {
        200 => 0,
        401 => 1,
        _ => 2,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: u16,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pbxguard");
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        // Registration order is the order of `/metrics`; the groups keep the historical one.
        let mut metrics = Metrics::unregistered();
        metrics.register_server(&mut registry);
        metrics.register_auth(&mut registry);
        metrics.register_recordings(&mut registry);
        metrics.register_store(&mut registry);
        metrics.register_realtime(&mut registry);
        metrics.register_ami(&mut registry);
        metrics.register_sip(&mut registry);
        metrics.registry = Arc::new(registry);
        metrics
    }

    /// Every metric at zero, not yet in any registry.
    fn unregistered() -> Metrics {
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ])
        });
        let auth_checks = Family::<StatusLabels, Counter>::default();
        let check_counters = [200u16, 401, 403]
            .map(|status| auth_checks.get_or_create(&StatusLabels { status }).clone());
        let check_route = "/api/v1/auth/check".to_string();
        let check_requests = [200u16, 401, 403].map(|status| {
            requests
                .get_or_create(&RequestLabels {
                    route: check_route.clone(),
                    method: "GET".into(),
                    status,
                })
                .clone()
        });
        let check_duration = request_duration
            .get_or_create(&RouteLabels { route: check_route })
            .clone();
        Metrics {
            registry: Arc::default(),
            connections_open: Family::default(),
            connections: Family::default(),
            connections_refused: Family::default(),
            tls_handshake_failures: Family::default(),
            requests,
            request_duration,
            config_reloads: Family::default(),
            logins: Family::default(),
            auth_checks,
            check_counters,
            check_requests,
            check_duration,
            recording_downloads: Family::default(),
            link_refusals: Family::default(),
            recording_bytes: Counter::default(),
            links_minted: Counter::default(),
            download_log_overflow: Counter::default(),
            store_commit_failures: Counter::default(),
            realtime_requests: Family::default(),
            realtime_decryptions: Family::default(),
            ami_sessions: Gauge::default(),
            ami_logins: Family::default(),
            ami_actions: Family::default(),
            ami_slow_clients: Counter::default(),
            ami_upstream_up: Gauge::default(),
            sip_connections: Family::default(),
            sip_client_messages: Family::default(),
            sip_upstream_messages: Family::default(),
            sip_bans: Family::default(),
            sip_ws_refusals: Family::default(),
            dial_refusals: Family::default(),
            dial_alerts: Family::default(),
            bans: Family::default(),
            bans_active: Family::default(),
            ban_dropped_packets: Counter::default(),
            ban_reconciles: Family::default(),
            ban_feed_refreshes: Family::default(),
        }
    }

    /// Listeners, HTTP and the daemon itself.
    fn register_server(&self, r: &mut Registry) {
        r.register(
            "connections_open",
            "Open client connections",
            self.connections_open.clone(),
        );
        r.register(
            "connections",
            "Accepted client connections",
            self.connections.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed at once because the connection limit was reached",
            self.connections_refused.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            self.tls_handshake_failures.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests by route template and status",
            self.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP request handling time by route template",
            self.request_duration.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) by result",
            self.config_reloads.clone(),
        );
    }

    fn register_auth(&self, r: &mut Registry) {
        r.register(
            "logins",
            "Login attempts by result (as in the login history)",
            self.logins.clone(),
        );
        r.register(
            "auth_checks",
            "Forward-auth check answers by status",
            self.auth_checks.clone(),
        );
    }

    fn register_recordings(&self, r: &mut Registry) {
        r.register(
            "recording_downloads",
            "Requests for recordings with a genuine link, by status",
            self.recording_downloads.clone(),
        );
        r.register(
            "recording_link_refusals",
            "Recording link tokens refused by the signature check, by reason",
            self.link_refusals.clone(),
        );
        r.register(
            "recording_sent_bytes",
            "Recording bytes sent to clients",
            self.recording_bytes.clone(),
        );
        r.register(
            "recording_links_minted",
            "Recording links minted (API and CLI of this process)",
            self.links_minted.clone(),
        );
        r.register(
            "recording_download_log_overflow",
            "Download log rows written to the daemon's log instead of the database (queue full or database unavailable)",
            self.download_log_overflow.clone(),
        );
    }

    fn register_store(&self, r: &mut Registry) {
        r.register(
            "store_commit_failures",
            "Database writes not committed because the database could not take them (disk full, I/O error, read-only, lock timeout)",
            self.store_commit_failures.clone(),
        );
    }

    fn register_realtime(&self, r: &mut Registry) {
        r.register(
            "realtime_requests",
            "Asterisk realtime (res_config_curl) requests by family, operation and status",
            self.realtime_requests.clone(),
        );
        r.register(
            "realtime_decryptions",
            "SIP passwords decrypted for Asterisk, by result",
            self.realtime_decryptions.clone(),
        );
    }

    fn register_ami(&self, r: &mut Registry) {
        r.register(
            "ami_sessions",
            "AMI clients logged in through the gateway",
            self.ami_sessions.clone(),
        );
        r.register(
            "ami_logins",
            "AMI client logins by result",
            self.ami_logins.clone(),
        );
        r.register(
            "ami_actions",
            "AMI client actions by outcome",
            self.ami_actions.clone(),
        );
        r.register(
            "ami_slow_clients",
            "AMI clients disconnected because they accepted no bytes for write_timeout",
            self.ami_slow_clients.clone(),
        );
        r.register(
            "ami_upstream_up",
            "1 while pbxguard can log in to Asterisk's AMI",
            self.ami_upstream_up.clone(),
        );
    }

    fn register_sip(&self, r: &mut Registry) {
        r.register(
            "sip_connections",
            "SIP client connections open, by transport",
            self.sip_connections.clone(),
        );
        r.register(
            "sip_client_messages",
            "SIP messages from clients by outcome",
            self.sip_client_messages.clone(),
        );
        r.register(
            "sip_upstream_messages",
            "SIP messages from Asterisk by outcome",
            self.sip_upstream_messages.clone(),
        );
        r.register(
            "sip_bans",
            "Client addresses banned by the SIP edge, by reason",
            self.sip_bans.clone(),
        );
        r.register(
            "sip_ws_refusals",
            "SIP WebSocket upgrades refused, by reason",
            self.sip_ws_refusals.clone(),
        );
        r.register(
            "dial_refusals",
            "Calls and originates refused by the toll-fraud guard, by door and rule",
            self.dial_refusals.clone(),
        );
        r.register(
            "dial_alerts",
            "Toll-fraud alert emails by result",
            self.dial_alerts.clone(),
        );
        r.register("bans", "Bans imposed, by source", self.bans.clone());
        r.register(
            "bans_active",
            "Bans in force, by source",
            self.bans_active.clone(),
        );
        r.register(
            "ban_dropped_packets",
            "Packets the firewall dropped from banned addresses",
            self.ban_dropped_packets.clone(),
        );
        r.register(
            "ban_reconciles",
            "Firewall reconciliations by result",
            self.ban_reconciles.clone(),
        );
        r.register(
            "ban_feed_refreshes",
            "Blocklist feed refreshes by feed and result",
            self.ban_feed_refreshes.clone(),
        );
    }

    /// Counts a forward-auth answer. The hot path, so the three possible label sets are looked
    /// up once and kept.
    pub fn count_check(&self, status: axum::http::StatusCode) {
        self.check_counters[status_index(status)].inc();
    }

    /// The request metrics of the check's fast path (which bypasses the router's middleware).
    pub fn observe_check_request(
        &self,
        status: axum::http::StatusCode,
        elapsed: std::time::Duration,
    ) {
        self.check_requests[status_index(status)].inc();
        self.check_duration.observe(elapsed.as_secs_f64());
    }

    pub fn login(&self, result: &'static str) {
        self.logins.get_or_create(&ResultLabels { result }).inc();
    }

    /// OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                route: "/healthz".into(),
                method: "GET".into(),
                status: 200,
            })
            .inc();
        let text = m.render();
        assert!(
            text.contains(
                "pbxguard_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("pbxguard_build_info{version=\""), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    /// Each group registers its metrics once, in the order `/metrics` has always had.
    #[test]
    fn every_metric_is_registered_once_in_order() {
        let m = Metrics::new();
        let l = ListenerLabels { listener: "x" };
        let r = ResultLabels { result: "ok" };
        for family in [
            &m.connections,
            &m.connections_refused,
            &m.tls_handshake_failures,
        ] {
            family.get_or_create(&l).inc();
        }
        m.connections_open.get_or_create(&l).inc();
        m.sip_connections.get_or_create(&l).inc();
        for family in [
            &m.config_reloads,
            &m.logins,
            &m.link_refusals,
            &m.realtime_decryptions,
            &m.ami_logins,
            &m.ami_actions,
            &m.sip_client_messages,
            &m.sip_upstream_messages,
            &m.sip_bans,
            &m.sip_ws_refusals,
            &m.dial_alerts,
            &m.ban_reconciles,
        ] {
            family.get_or_create(&r).inc();
        }
        m.recording_downloads
            .get_or_create(&StatusLabels { status: 206 })
            .inc();
        m.dial_refusals
            .get_or_create(&DialLabels {
                door: "sip",
                rule: "deny_prefix",
            })
            .inc();
        let src = SourceLabels { source: "sip" };
        m.bans.get_or_create(&src).inc();
        m.bans_active.get_or_create(&src).set(1);
        m.ban_dropped_packets.inc();
        m.ban_feed_refreshes
            .get_or_create(&FeedLabels {
                feed: "apiban".into(),
                result: "ok",
            })
            .inc();
        m.realtime_requests
            .get_or_create(&RealtimeLabels {
                family: "ps_auths".into(),
                op: "single".into(),
                status: 200,
            })
            .inc();
        let text = m.render();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE pbxguard_"))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(
            names,
            [
                "build",
                "connections_open",
                "connections",
                "connections_refused",
                "tls_handshake_failures",
                "http_requests",
                "http_request_duration_seconds",
                "config_reloads",
                "logins",
                "auth_checks",
                "recording_downloads",
                "recording_link_refusals",
                "recording_sent_bytes",
                "recording_links_minted",
                "recording_download_log_overflow",
                "store_commit_failures",
                "realtime_requests",
                "realtime_decryptions",
                "ami_sessions",
                "ami_logins",
                "ami_actions",
                "ami_slow_clients",
                "ami_upstream_up",
                "sip_connections",
                "sip_client_messages",
                "sip_upstream_messages",
                "sip_bans",
                "sip_ws_refusals",
                "dial_refusals",
                "dial_alerts",
                "bans",
                "bans_active",
                "ban_dropped_packets",
                "ban_reconciles",
                "ban_feed_refreshes",
            ]
        );
    }
}
