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
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "connections_open",
            "Open client connections",
            connections_open.clone(),
        );
        let connections = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections",
            "Accepted client connections",
            connections.clone(),
        );
        let connections_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at once because the connection limit was reached",
            connections_refused.clone(),
        );
        let tls_handshake_failures = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            tls_handshake_failures.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route template and status",
            requests.clone(),
        );
        let request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ])
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request handling time by route template",
            request_duration.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) by result",
            config_reloads.clone(),
        );
        let logins = Family::<ResultLabels, Counter>::default();
        registry.register(
            "logins",
            "Login attempts by result (as in the login history)",
            logins.clone(),
        );
        let auth_checks = Family::<StatusLabels, Counter>::default();
        registry.register(
            "auth_checks",
            "Forward-auth check answers by status",
            auth_checks.clone(),
        );
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
        let recording_downloads = Family::<StatusLabels, Counter>::default();
        registry.register(
            "recording_downloads",
            "Requests for recordings with a genuine link, by status",
            recording_downloads.clone(),
        );
        let link_refusals = Family::<ResultLabels, Counter>::default();
        registry.register(
            "recording_link_refusals",
            "Recording link tokens refused by the signature check, by reason",
            link_refusals.clone(),
        );
        let recording_bytes = Counter::default();
        registry.register(
            "recording_sent_bytes",
            "Recording bytes sent to clients",
            recording_bytes.clone(),
        );
        let links_minted = Counter::default();
        registry.register(
            "recording_links_minted",
            "Recording links minted (API and CLI of this process)",
            links_minted.clone(),
        );
        let download_log_overflow = Counter::default();
        registry.register(
            "recording_download_log_overflow",
            "Download log rows written to the daemon's log instead of the database (queue full or database unavailable)",
            download_log_overflow.clone(),
        );
        let store_commit_failures = Counter::default();
        registry.register(
            "store_commit_failures",
            "Database writes not committed because the database could not take them (disk full, I/O error, read-only, lock timeout)",
            store_commit_failures.clone(),
        );
        let realtime_requests = Family::<RealtimeLabels, Counter>::default();
        registry.register(
            "realtime_requests",
            "Asterisk realtime (res_config_curl) requests by family, operation and status",
            realtime_requests.clone(),
        );
        let realtime_decryptions = Family::<ResultLabels, Counter>::default();
        registry.register(
            "realtime_decryptions",
            "SIP passwords decrypted for Asterisk, by result",
            realtime_decryptions.clone(),
        );
        let ami_sessions = Gauge::default();
        registry.register(
            "ami_sessions",
            "AMI clients logged in through the gateway",
            ami_sessions.clone(),
        );
        let ami_logins = Family::<ResultLabels, Counter>::default();
        registry.register(
            "ami_logins",
            "AMI client logins by result",
            ami_logins.clone(),
        );
        let ami_actions = Family::<ResultLabels, Counter>::default();
        registry.register(
            "ami_actions",
            "AMI client actions by outcome",
            ami_actions.clone(),
        );
        let ami_slow_clients = Counter::default();
        registry.register(
            "ami_slow_clients",
            "AMI clients disconnected because they accepted no bytes for write_timeout",
            ami_slow_clients.clone(),
        );
        let ami_upstream_up = Gauge::default();
        registry.register(
            "ami_upstream_up",
            "1 while pbxguard can log in to Asterisk's AMI",
            ami_upstream_up.clone(),
        );
        let sip_connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "sip_connections",
            "SIP client connections open, by transport",
            sip_connections.clone(),
        );
        let sip_client_messages = Family::<ResultLabels, Counter>::default();
        registry.register(
            "sip_client_messages",
            "SIP messages from clients by outcome",
            sip_client_messages.clone(),
        );
        let sip_upstream_messages = Family::<ResultLabels, Counter>::default();
        registry.register(
            "sip_upstream_messages",
            "SIP messages from Asterisk by outcome",
            sip_upstream_messages.clone(),
        );
        let sip_bans = Family::<ResultLabels, Counter>::default();
        registry.register(
            "sip_bans",
            "Client addresses banned by the SIP edge, by reason",
            sip_bans.clone(),
        );
        let sip_ws_refusals = Family::<ResultLabels, Counter>::default();
        registry.register(
            "sip_ws_refusals",
            "SIP WebSocket upgrades refused, by reason",
            sip_ws_refusals.clone(),
        );
        Metrics {
            sip_connections,
            sip_client_messages,
            sip_upstream_messages,
            sip_bans,
            sip_ws_refusals,
            ami_sessions,
            ami_logins,
            ami_actions,
            ami_slow_clients,
            ami_upstream_up,
            download_log_overflow,
            store_commit_failures,
            realtime_requests,
            realtime_decryptions,
            recording_downloads,
            link_refusals,
            recording_bytes,
            links_minted,
            registry: Arc::new(registry),
            check_counters,
            check_requests,
            check_duration,
            logins,
            auth_checks,
            connections_open,
            connections,
            connections_refused,
            tls_handshake_failures,
            requests,
            request_duration,
            config_reloads,
        }
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
}
