//! # pbxguard
//!
//! A security daemon for an Asterisk PBX host. One process guards everything around Asterisk:
//! the manager interface, the secrets, the softphone path, recordings and the web tier's logins.
//!
//! # Layout
//!
//! The modules form layers, lowest first; a module uses only its own top-level module and
//! those below it. `tests/layers.rs` holds the order and enforces it, and docs/ARCHITECTURE.md
//! explains it with the module map and the request paths.
//!
//! Base helpers: [`clock`] (times) and [`ids`] (random identifiers); [`pattern`], wildcard
//! matching for SQL `LIKE` and file globs; [`net`], peer addresses; [`rate`], the token bucket;
//! [`tls`], the certificate loading every listener uses; [`problems`], the collector that lets
//! every configuration section report each mistake with its key; [`subsystem`], the trait the
//! daemon starts and reloads its listeners through (prepare, which may fail and changes
//! nothing; commit; stop).
//!
//! Storage, telemetry and the HTTP server: [`metrics`]; [`httpd`], the accept loop every HTTP
//! listener runs (connection limit, TLS handshake timeout, header limits, idle connections,
//! graceful drain); [`store`], every SQL statement (sqlx over SQLite in WAL mode, embedded
//! migrations, rows as named structs, one transaction helper that closes a connection whose
//! commit failed); [`vault`], secrets AES-256-GCM encrypted under data keys wrapped by the
//! master key that systemd hands over as a credential; [`journal`], the high-volume audit rows
//! (downloads, AMI actions) written in batches.
//!
//! The features, each owning its operations, its view types, its vault key prefix and its
//! configuration section (`ami::config`, `sip::config`, …):
//!
//! - [`mail`] sends the emailed second factor.
//! - [`auth`] is login and roles: argon2id passwords on a bounded pool, HS256 JWTs with key
//!   ids, server-side sessions behind a stamp-invalidated cache, throttling, TOTP and emailed
//!   codes, the forward-auth route rules and the client-IP rule.
//! - [`recordings`] mints signed links to Asterisk's recordings (a random id under an HMAC;
//!   the path stays in the database) and serves them with nginx's Range rules, opening files
//!   only beneath the recordings folder and logging every download.
//! - [`realtime`] answers Asterisk's `res_config_curl` on loopback with SIP auth objects
//!   decrypted from the vault per request.
//! - [`audit`] reads Asterisk's configuration the way Asterisk does and reports what weakens
//!   the PBX.
//! - [`ami`] is the AMI gateway: it reads client bytes exactly as Asterisk's `manager.c` does,
//!   logs each client in with its own credentials, checks every action against a default-deny
//!   policy with built-in refusals, and relays to a dedicated Asterisk session per client.
//! - [`sip`] is the SIP edge: softphones over TLS and secure WebSocket only, our own strict
//!   framing and message model (whatever passes is re-serialised before Asterisk sees it), an
//!   SRTP-only SDP policy in both directions, WebSockets bound to web sessions by single-use
//!   tickets, and rates, scanner filtering and bans that must live here because Asterisk sees
//!   only pbxguard.
//!
//! [`config`] reads `/etc/pbxguard/pbxguard.toml` into the feature sections and its own
//! (`[daemon]`, `[vault]`, `[http]`) and validates all of it at once, before anything binds a
//! port.
//!
//! [`app`] is the state the web handlers share: the configuration snapshot (swapped atomically),
//! the store, the vault, TLS material and metrics; it builds each feature's context from these
//! parts, so no feature sees the whole daemon. [`init`] creates what a fresh host needs,
//! idempotently.
//!
//! [`web`] is the HTTP side: the routers and middleware, the handlers, the redirect listener,
//! `/healthz` and `/metrics`. [`daemon`] is the lifecycle: it opens the state, runs the
//! subsystems (the HTTP listeners of [`web`], [`realtime`], [`ami`], [`sip`]) through one
//! prepare-then-commit loop at start and on SIGHUP (all-or-nothing), tells systemd it is ready,
//! feeds the watchdog and drains on SIGTERM.
//!
//! [`cli`] is the `pbxguard` command (clap derive); it is the only place that uses `anyhow`.
#![forbid(unsafe_code)]
// Peer-controlled input must never panic the daemon: no unwrap/expect outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod ami;
pub mod app;
pub mod audit;
pub mod auth;
pub mod bans;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dialing;
pub mod httpd;
pub mod ids;
pub mod init;
pub mod journal;
pub mod mail;
pub mod metrics;
pub mod net;
pub mod pattern;
pub mod problems;
pub mod rate;
pub mod realtime;
pub mod recordings;
pub mod settings;
pub mod sip;
pub mod store;
pub mod subsystem;
pub mod tls;
pub mod vault;
pub mod web;
