//! # pbxguard
//!
//! A security daemon for an Asterisk PBX host. One process guards everything around Asterisk:
//! the manager interface, the secrets, the softphone path, recordings and the web tier's logins.
//!
//! # Layout
//!
//! [`config`] reads `/etc/pbxguard/pbxguard.toml` into typed sections and validates all of it
//! at once, collecting every problem with its key, before anything binds a port. Each feature
//! owns its section (`ami::config`, `sip::config`, …), reporting into [`problems`].
//!
//! [`daemon`] is the lifecycle: it prepares state, binds each enabled listener, tells systemd
//! it is ready, feeds the watchdog, reloads on SIGHUP (all-or-nothing) and drains on SIGTERM.
//! What it runs are [`subsystem`]s (the HTTP listeners of [`web`], [`realtime`], [`ami`],
//! [`sip`]), each prepared (fallible: TLS loaded, changed addresses bound) and then committed,
//! so start and reload are one loop that knows no feature. [`app`] is the state the web
//! handlers share: the configuration snapshot (swapped atomically), the store, the vault, TLS
//! material and [`metrics`]; it builds each feature's own context from these parts.
//!
//! [`store`] holds every SQL statement: sqlx over SQLite in WAL mode, with embedded migrations;
//! every write goes through one transaction helper that closes a connection whose commit failed.
//! [`vault`] keeps secrets AES-256-GCM encrypted under data keys wrapped by the master key that
//! systemd hands over as a credential. [`init`] creates what a fresh host needs, idempotently.
//!
//! [`auth`] is login and roles: argon2id passwords on a bounded pool, HS256 JWTs with key ids,
//! server-side sessions behind a stamp-invalidated cache, throttling, the forward-auth route
//! rules and the client-IP rule.
//!
//! [`web`] is the HTTP side: axum behind our accept loop (connection limit, TLS handshake
//! timeout, header limits, graceful drain), the redirect listener, `/healthz` and `/metrics`.
//!
//! [`recordings`] mints signed links to Asterisk's recordings (a random id under an HMAC;
//! the path stays in the database) and serves them with nginx's Range rules, opening files
//! only beneath the recordings folder and logging every download.
//!
//! [`realtime`] answers Asterisk's `res_config_curl` on loopback with SIP auth objects
//! decrypted from the vault per request; [`audit`] reads Asterisk's configuration the way
//! Asterisk does and reports what weakens the PBX. [`mail`] sends the emailed second factor;
//! TOTP, emailed codes and the pending-login tokens live in [`auth`].
//!
//! [`ami`] is the AMI gateway: it reads client bytes exactly as Asterisk's `manager.c` does,
//! logs each client in with its own credentials, checks every action against a default-deny
//! policy with built-in refusals, and relays to a dedicated Asterisk session per client.
//! [`journal`] batches the high-volume audit rows (downloads, AMI actions).
//!
//! [`sip`] is the SIP edge: softphones over TLS and secure WebSocket only, our own strict
//! framing and message model (whatever passes is re-serialised before Asterisk sees it), an
//! SRTP-only SDP policy in both directions, WebSockets bound to web sessions by single-use
//! tickets, and rates, scanner filtering and bans that must live here because Asterisk sees
//! only pbxguard.
//!
//! [`cli`] is the `pbxguard` command (clap derive); it is the only place that uses `anyhow`.
//! [`clock`] and [`ids`] are small helpers for times and random identifiers; [`net`] for peer
//! addresses, [`rate`] the token bucket, [`tls`] the certificate loading every listener uses,
//! and [`httpd`] the accept loop every HTTP listener runs.
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
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
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
pub mod sip;
pub mod store;
pub mod subsystem;
pub mod tls;
pub mod vault;
pub mod web;
