//! The checks. Each finding names the file and line of the setting that causes it (or of the
//! section, when a setting is missing) and one line on how to fix it.

use std::net::IpAddr;
use std::path::Path;

use super::conf::{self, Category, Conf, Var};
use super::dialplan;
use super::{AmiClientInfo, Finding, Severity};

/// The files the audit reads.
pub struct Files {
    pub pjsip: Option<Conf>,
    pub manager: Option<Conf>,
    pub http: Option<Conf>,
    pub ari: Option<Conf>,
    pub extensions: Option<Conf>,
    /// Read only for the contexts callers start in (and IAX2 trunks): their other settings
    /// are not audited.
    pub pjsip_wizard: Option<Conf>,
    pub iax: Option<Conf>,
    pub chan_dahdi: Option<Conf>,
}

impl Files {
    pub fn load(dir: &Path) -> Files {
        Files::load_from(&conf::Disk, dir)
    }

    pub fn load_from(source: &dyn conf::Source, dir: &Path) -> Files {
        Files {
            pjsip: conf::load_from(source, dir, "pjsip.conf"),
            manager: conf::load_from(source, dir, "manager.conf"),
            http: conf::load_from(source, dir, "http.conf"),
            ari: conf::load_from(source, dir, "ari.conf"),
            extensions: conf::load_from(source, dir, "extensions.conf"),
            pjsip_wizard: conf::load_from(source, dir, "pjsip_wizard.conf"),
            iax: conf::load_from(source, dir, "iax.conf"),
            chan_dahdi: conf::load_from(source, dir, "chan_dahdi.conf"),
        }
    }
}

/// Shortest SIP password accepted without a finding.
pub const MIN_SIP_PASSWORD: usize = 12;
/// Shortest AMI secret accepted without a finding.
pub const MIN_AMI_SECRET: usize = 16;
/// Manager write classes that give away the host or the dial plan.
const DANGEROUS_WRITE: &[(&str, Severity, &str)] = &[
    (
        "all",
        Severity::High,
        "every action, including shell commands",
    ),
    ("system", Severity::High, "shell commands and restarts"),
    ("command", Severity::High, "any CLI command"),
    (
        "config",
        Severity::High,
        "rewriting Asterisk's configuration",
    ),
    (
        "agi",
        Severity::High,
        "AGI commands, including EXEC of any application",
    ),
    (
        "originate",
        Severity::Medium,
        "placing calls anywhere (toll fraud)",
    ),
];
/// Write classes whose actions pbxguard's AMI gateway filters per client and refuses in their
/// dangerous forms: granted to its upstream user on a loopback-only manager, they are low.
const GATEWAY_FILTERED: &[&str] = &["originate", "command"];
const COMMON_PASSWORDS: &[&str] = &[
    "password", "secret", "changeme", "asterisk", "admin", "letmein", "qwerty", "welcome",
];

/// `ast_true`.
pub(crate) fn truthy(v: Option<&str>) -> bool {
    v.is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "yes" | "true" | "y" | "t" | "1" | "on"
        )
    })
}

/// Whether a bind address (`0.0.0.0:5060`, `[::]`, `127.0.0.1`, `host:port`) is loopback only.
/// Empty, wildcard and names other than `localhost` count as reachable from the network.
pub fn loopback_only(bind: &str) -> bool {
    let b = bind.trim();
    let host = if let Some(rest) = b.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if b.matches(':').count() == 1 {
        b.split(':').next().unwrap_or("")
    } else {
        b
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

struct Out<'a> {
    dir: &'a Path,
    findings: Vec<Finding>,
}

impl Out<'_> {
    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(self.dir).unwrap_or(p).display().to_string()
    }

    fn at_var(&mut self, sev: Severity, cat: &Category, var: &Var, message: String, fix: &str) {
        let file = self.rel(&var.file);
        self.findings.push(Finding {
            severity: sev,
            file,
            line: var.line,
            object: cat.name.clone(),
            message,
            fix: fix.to_string(),
        });
    }

    fn at_cat(&mut self, sev: Severity, cat: &Category, message: String, fix: &str) {
        let file = self.rel(&cat.file);
        self.findings.push(Finding {
            severity: sev,
            file,
            line: cat.line,
            object: cat.name.clone(),
            message,
            fix: fix.to_string(),
        });
    }

    fn problems(&mut self, conf: &Conf) {
        self.reader_problems(&conf.problems);
    }

    /// What pbx_config warns about and skips.
    fn dialplan_problems(&mut self, plan: &dialplan::Dialplan) {
        self.reader_problems(&plan.problems);
    }

    fn reader_problems(&mut self, problems: &[conf::Problem]) {
        for p in problems {
            let file = self.rel(&p.file);
            self.findings.push(Finding {
                severity: Severity::Medium,
                file,
                line: p.line,
                object: String::new(),
                message: p.message.clone(),
                fix: "correct the file; Asterisk refuses or ignores what it cannot parse".into(),
            });
        }
    }
}

/// Every finding on `files`; `clients` are pbxguard's AMI gateway clients (their contexts are
/// entry points into the dialplan). The upstream AMI user is taken to be
/// [`super::DEFAULT_UPSTREAM_USER`].
pub fn check(files: &Files, dir: &Path, clients: &[AmiClientInfo]) -> Vec<Finding> {
    check_for(files, dir, clients, super::DEFAULT_UPSTREAM_USER)
}

/// As [`check`], with `upstream_user` the manager.conf user pbxguard logs in as
/// (`[ami] upstream_username`).
pub fn check_for(
    files: &Files,
    dir: &Path,
    clients: &[AmiClientInfo],
    upstream_user: &str,
) -> Vec<Finding> {
    let mut out = Out {
        dir,
        findings: Vec::new(),
    };
    let http_plain_public = files
        .http
        .as_ref()
        .and_then(|h| h.section("general"))
        .is_some_and(|g| {
            truthy(g.value("enabled")) && g.value("bindaddr").is_some_and(|b| !loopback_only(b))
        });
    // Asterisk's /ws answers on both HTTP servers, whatever protocol the transport names; the
    // plain server runs whenever enabled=yes and bindaddr is set, TLS or not. Browsers also
    // come to /ws for a webrtc=yes endpoint that pbxguard's edge does not identify.
    let websocket = files.pjsip.as_ref().is_some_and(|p| {
        p.sections().any(|c| {
            (type_of(c) == Some("transport") && websocket_transport(c))
                || (type_of(c) == Some("endpoint")
                    && truthy(c.value("webrtc"))
                    && !identify_by(c, "header"))
        })
    });
    let http_public = files.http.as_ref().and_then(http_public);
    let ari = files
        .ari
        .as_ref()
        .and_then(|a| a.section("general"))
        .is_some_and(|g| truthy(g.value("enabled")));
    let mut manager_web = false;
    if let Some(m) = &files.manager {
        out.problems(m);
        manager_web = manager(&mut out, m, http_plain_public);
        upstream_reads_security(&mut out, m, upstream_user);
    }
    if let Some(p) = &files.pjsip {
        out.problems(p);
        pjsip(&mut out, p, http_public.as_ref());
    }
    if let Some(h) = &files.http {
        out.problems(h);
        http(&mut out, h, manager_web, websocket || ari);
    }
    if let Some(e) = &files.extensions {
        out.problems(e);
        let plan = dialplan::read(e);
        out.dialplan_problems(&plan);
        let confs = dialplan::rules::ChannelConfs {
            pjsip: files.pjsip.as_ref(),
            pjsip_wizard: files.pjsip_wizard.as_ref(),
            iax: files.iax.as_ref(),
            chan_dahdi: files.chan_dahdi.as_ref(),
        };
        let found = dialplan::rules::check(&plan, confs, clients, &|p| out.rel(p));
        out.findings.extend(found);
    }
    out.findings.extend(dialplan::rules::ami_clients(clients));
    out.findings
}

/// pjsip reads a section's type from its first `type` line.
pub(super) fn type_of(c: &Category) -> Option<&str> {
    c.first("type").map(|v| v.value.as_str())
}

fn websocket_transport(t: &Category) -> bool {
    t.value("protocol")
        .is_some_and(|v| v.eq_ignore_ascii_case("ws") || v.eq_ignore_ascii_case("wss"))
}

/// Whether the endpoint's `identify_by` (default `username,ip`) lists `method`.
fn identify_by(e: &Category, method: &str) -> bool {
    e.value("identify_by")
        .unwrap_or("username,ip")
        .split(',')
        .any(|m| m.trim().eq_ignore_ascii_case(method))
}

/// The address on which Asterisk's HTTP server (plain or TLS) is reachable from the network,
/// if any (`main/http.c`: the plain server needs enabled=yes and bindaddr; the TLS one needs
/// tlsenable=yes and tlsbindaddr, or falls back to the plain server's address).
fn http_public(h: &Conf) -> Option<String> {
    let g = h.section("general")?;
    let plain = g.value("bindaddr").filter(|_| truthy(g.value("enabled")));
    let tls = g
        .value("tlsbindaddr")
        .or(plain)
        .filter(|_| truthy(g.value("tlsenable")));
    [plain, tls]
        .into_iter()
        .flatten()
        .find(|b| !loopback_only(b))
        .map(str::to_string)
}

/// pjsip binds an endpoint's RTP to its transport's address unless `media_address` with
/// `bind_rtp_to_media_address` says otherwise (res_pjsip_sdp_rtp.c `create_rtp`), and writes
/// that address into `c=`. Behind pbxguard's SIP edge the transport is on loopback, so a phone
/// on the network would send its audio to 127.0.0.1: calls connect, but nobody hears anything.
fn loopback_media(out: &mut Out<'_>, e: &Category, transports: &[&Category]) {
    let Some(t) = e
        .value("transport")
        .and_then(|name| transports.iter().find(|t| t.name == name))
    else {
        return;
    };
    if !loopback_only(t.value("bind").unwrap_or("0.0.0.0")) {
        return;
    }
    let media = e.value("media_address").map(str::trim).unwrap_or("");
    let bound = truthy(e.value("bind_rtp_to_media_address"));
    // external_media_address rewrites c= for peers outside local_net, but the RTP socket still
    // sits on 127.0.0.1 and nothing off the box reaches it.
    if bound && !media.is_empty() && !loopback_only(media) {
        return;
    }
    let msg = if media.is_empty() || !bound {
        format!(
            "endpoint's RTP is bound to its loopback transport ({}): phones off this host get no audio",
            t.value("bind").unwrap_or("")
        )
    } else {
        format!("media_address {media} is a loopback address: phones off this host get no audio")
    };
    let fix = "set media_address to the PBX address phones reach and bind_rtp_to_media_address=yes, and open the rtp.conf port range in the firewall";
    match e.get("media_address").or(e.get("transport")) {
        Some(v) => out.at_var(Severity::Medium, e, v, msg, fix),
        None => out.at_cat(Severity::Medium, e, msg, fix),
    }
}

fn pjsip(out: &mut Out<'_>, p: &Conf, http_public: Option<&String>) {
    let transports: Vec<&Category> = p
        .sections()
        .filter(|c| type_of(c) == Some("transport"))
        .collect();
    for t in &transports {
        clear_transport(out, t);
        if websocket_transport(t) {
            websocket_bypass(out, t, http_public);
        }
    }
    if let (false, Some(addr)) = (
        transports.iter().any(|t| websocket_transport(t)),
        http_public,
    ) {
        websocket_module_bypass(out, p, addr);
    }
    let identified: Vec<String> = p
        .sections()
        .filter(|c| type_of(c) == Some("identify") && c.get("match").is_some())
        .filter_map(|c| c.value("endpoint").map(str::to_string))
        .collect();
    for e in p.sections().filter(|c| type_of(c) == Some("endpoint")) {
        endpoint(out, e, &transports, &identified);
    }
    for a in p.sections().filter(|c| type_of(c) == Some("auth")) {
        auth_secrets(out, a);
    }
}

/// A transport's protocol, lowercase (pjsip's default is udp).
fn protocol(t: &Category) -> String {
    t.value("protocol").unwrap_or("udp").to_ascii_lowercase()
}

/// Signalling nobody on the network can read: TLS, WSS, or loopback only (pbxguard's SIP
/// edge in front).
fn private_signalling(t: &Category) -> bool {
    let p = protocol(t);
    p == "tls" || p == "wss" || loopback_only(t.value("bind").unwrap_or("0.0.0.0"))
}

fn clear_transport(out: &mut Out<'_>, t: &Category) {
    let protocol = protocol(t);
    let bind = t.value("bind").unwrap_or("0.0.0.0");
    if !loopback_only(bind) && protocol != "tls" && protocol != "wss" {
        let msg = format!("transport listens on {bind} with {protocol}: SIP signalling (and any SDES keys) in clear on the network");
        let fix = "use protocol=tls or wss, or bind to 127.0.0.1 behind pbxguard's SIP edge";
        match t.get("bind").or(t.get("protocol")) {
            Some(v) => out.at_var(Severity::High, t, v, msg, fix),
            None => out.at_cat(Severity::High, t, msg, fix),
        }
    }
}

/// One endpoint's media, its media encryption and who may use it, in that order.
fn endpoint(out: &mut Out<'_>, e: &Category, transports: &[&Category], identified: &[String]) {
    loopback_media(out, e, transports);
    let webrtc = e.value("webrtc").is_some_and(|v| truthy(Some(v)));
    // webrtc=yes makes pjsip use DTLS whatever media_encryption says.
    let enc = if webrtc {
        Some("dtls".to_string())
    } else {
        e.value("media_encryption").map(|v| v.to_ascii_lowercase())
    };
    media_encryption(out, e, enc.as_deref(), transports);
    if let Some(v) = e
        .get("media_encryption_optimistic")
        .filter(|v| truthy(Some(&v.value)))
    {
        out.at_var(
            Severity::Medium,
            e,
            v,
            "media_encryption_optimistic=yes falls back to plain RTP when the peer declines".into(),
            "set media_encryption_optimistic=no",
        );
    }
    if !webrtc && enc.as_deref() == Some("dtls") {
        unverified_dtls(out, e);
    }
    open_endpoint(out, e, identified);
}

/// Plain RTP, or SDES keys over signalling the network can read.
fn media_encryption(out: &mut Out<'_>, e: &Category, enc: Option<&str>, transports: &[&Category]) {
    let named = e
        .value("transport")
        .map(|name| transports.iter().find(|t| t.name == name));
    let signalling_private = match named {
        Some(t) => t.is_some_and(|t| private_signalling(t)),
        // Without transport=, pjsip may use any of them.
        None => transports.iter().all(|t| private_signalling(t)),
    };
    match (enc, e.get("media_encryption")) {
        (None, _) => out.at_cat(
            Severity::High,
            e,
            "endpoint without media_encryption: calls go as plain RTP".into(),
            "set media_encryption=dtls (WebRTC) or sdes (over a TLS transport)",
        ),
        (Some("no"), Some(v)) => out.at_var(
            Severity::High,
            e,
            v,
            "media_encryption=no: calls go as plain RTP".into(),
            "set media_encryption=dtls (WebRTC) or sdes (over a TLS transport)",
        ),
        (Some("sdes"), Some(v)) if !signalling_private => {
            let transport = named.flatten().map(|t| protocol(t));
            out.at_var(
                Severity::High,
                e,
                v,
                format!(
                    "SDES keys are sent in the SDP over a {} transport reachable from the network, readable by anyone on the path",
                    transport.as_deref().unwrap_or("non-TLS (no transport= set)")
                ),
                "name a tls or wss transport in transport=, or use media_encryption=dtls",
            )
        }
        _ => {}
    }
}

/// Whether an endpoint is neither authenticated nor pinned to addresses (`identified`: the
/// endpoints an identify section with `match=` names).
pub(super) fn unauthenticated(e: &Category, identified: &[String]) -> bool {
    let has_auth = e.value("auth").is_some_and(|a| !a.trim().is_empty());
    // An identify section pins the endpoint to addresses only when it identifies by IP
    // alone: the default `username,ip` lets anyone claim it by its name.
    let by_ip_only = e
        .value("identify_by")
        .is_some_and(|v| v.split(',').all(|m| m.trim().eq_ignore_ascii_case("ip")));
    let restricted = (by_ip_only && identified.iter().any(|n| n == &e.name))
        || e.get("permit").is_some()
        || e.get("acl").is_some();
    !has_auth && !restricted
}

/// An endpoint neither authenticated nor pinned to addresses answers anyone.
fn open_endpoint(out: &mut Out<'_>, e: &Category, identified: &[String]) {
    if unauthenticated(e, identified) {
        out.at_cat(
            Severity::High,
            e,
            "endpoint without auth accepts calls from any address".into(),
            "add auth=, or identify_by=ip with an identify section (match=), or permit=/acl=",
        );
    }
}

/// Weak or plaintext passwords and MD5 credentials in an auth section.
fn auth_secrets(out: &mut Out<'_>, a: &Category) {
    if let Some(v) = a.get("password") {
        let username = a.value("username").unwrap_or("");
        let pw = v.value.as_str();
        let weak = pw.len() < MIN_SIP_PASSWORD
            || pw.bytes().all(|b| b.is_ascii_digit())
            || pw.eq_ignore_ascii_case(username)
            || pw.eq_ignore_ascii_case(&a.name)
            || COMMON_PASSWORDS
                .iter()
                .any(|c| pw.to_ascii_lowercase().contains(c));
        if weak {
            out.at_var(
                Severity::High,
                a,
                v,
                format!("weak SIP password (shorter than {MIN_SIP_PASSWORD}, all digits, the user name or a common word): registration scanners guess these"),
                "use a random password of 16+ characters",
            );
        }
        out.at_var(
            Severity::Low,
            a,
            v,
            "SIP password in plaintext in the configuration".into(),
            "store it with `pbxguard sip credential set ID` and let Asterisk fetch ps_auths over realtime",
        );
    }
    if let Some(v) = a.get("md5_cred") {
        out.at_var(
            Severity::Low,
            a,
            v,
            "md5_cred is as good as the password to anyone who reads it".into(),
            "store the credential in pbxguard's vault and fetch ps_auths over realtime",
        );
    }
}

/// Asterisk serves SIP over WebSocket on its own HTTP server (`/ws`): a browser that connects
/// there signs in without pbxguard's ticket and session binding, and its calls escape the edge's
/// SRTP policy and bans. Behind the edge no endpoint needs it: the browser's WebSocket ends at
/// pbxguard, which relays to the loopback transport.
fn websocket_bypass(out: &mut Out<'_>, t: &Category, http_public: Option<&String>) {
    let fix = "remove the transport and keep http.conf on 127.0.0.1: browsers connect to pbxguard's wss_listen, their endpoints identified with identify_by=header,username";
    let (sev, msg) = match http_public {
        Some(addr) => (
            Severity::Medium,
            format!("Asterisk takes SIP over WebSocket itself (http.conf serves {addr}): browsers that connect there get around pbxguard's edge (tickets, session binding, SRTP policy, bans)"),
        ),
        None => (
            Severity::Low,
            "Asterisk WebSocket transport: unused while Asterisk's HTTP server (http.conf) faces no network, a way around pbxguard's edge once it does".to_string(),
        ),
    };
    match t.get("protocol") {
        Some(v) => out.at_var(sev, t, v, msg, fix),
        None => out.at_cat(sev, t, msg, fix),
    }
}

/// Asterisk needs `res_pjsip_transport_websocket` to call a browser at all (its Contact says
/// `transport=ws`), and with that module loaded it answers SIP on its own HTTP server's `/ws`
/// even without a WebSocket transport in pjsip.conf. Browser endpoints plus an HTTP server on
/// the network are that way around the edge (reported once, at the first such endpoint).
fn websocket_module_bypass(out: &mut Out<'_>, p: &Conf, addr: &str) {
    let browser = p.sections().find(|c| {
        type_of(c) == Some("endpoint") && (truthy(c.value("webrtc")) || identify_by(c, "header"))
    });
    let Some(e) = browser else {
        return;
    };
    let msg = format!("browser endpoint while http.conf serves {addr}: with res_pjsip_transport_websocket loaded (needed to call browsers) Asterisk takes SIP on its own /ws there, around pbxguard's edge (tickets, session binding, SRTP policy, bans)");
    let fix =
        "keep http.conf on 127.0.0.1 (or enabled=no): browsers connect to pbxguard's wss_listen";
    match e.get("webrtc").or(e.get("identify_by")) {
        Some(v) => out.at_var(Severity::Medium, e, v, msg, fix),
        None => out.at_cat(Severity::Medium, e, msg, fix),
    }
}

/// DTLS-SRTP authenticates the peer only through `dtls_verify`: without the fingerprint check,
/// whoever answers the DTLS handshake on the media path gets the keys (pjsip's default is `no`;
/// webrtc=yes forces `fingerprint`, whatever the endpoint says).
fn unverified_dtls(out: &mut Out<'_>, e: &Category) {
    let fix = "set dtls_verify=fingerprint, or webrtc=yes for a browser endpoint (it sets that and what else WebRTC needs)";
    let what = "the peer's certificate is not checked against the fingerprint in its SDP, so a man in the middle of the media path can take the call's media";
    match e.get("dtls_verify") {
        Some(v) if v.value.trim().eq_ignore_ascii_case("no") => out.at_var(
            Severity::Medium,
            e,
            v,
            format!("DTLS-SRTP with dtls_verify=no: {what}"),
            fix,
        ),
        Some(_) => {}
        None => {
            let msg = format!("DTLS-SRTP without dtls_verify (the default is no): {what}");
            match e.get("media_encryption") {
                Some(v) => out.at_var(Severity::Medium, e, v, msg, fix),
                None => out.at_cat(Severity::Medium, e, msg, fix),
            }
        }
    }
}

/// `ast_instring` as `get_perm` uses it: every item but the last matches as a prefix of the
/// class (so an empty item matches all), the last one exactly; no trimming, case-sensitive.
fn grants(list: &str, class: &str) -> bool {
    let tokens: Vec<&str> = list.split(',').collect();
    let Some((last, rest)) = tokens.split_last() else {
        return false;
    };
    rest.iter().any(|t| class.starts_with(t)) || *last == class
}

/// Returns whether the manager is enabled over HTTP (`webenabled`).
fn manager(out: &mut Out<'_>, m: &Conf, http_plain_public: bool) -> bool {
    let general = m.section("general");
    let enabled = general.is_some_and(|g| truthy(g.value("enabled")));
    let web = enabled && general.is_some_and(|g| truthy(g.value("webenabled")));
    let local = general.is_some_and(|g| loopback_only(g.value("bindaddr").unwrap_or("::")));
    if let Some(g) = general.filter(|_| enabled) {
        let bind = g.value("bindaddr").unwrap_or("::");
        if !loopback_only(bind) {
            let msg = format!(
                "AMI listens on {bind}: the manager interface is reachable from the network"
            );
            let fix = "set bindaddr=127.0.0.1 and let clients in through pbxguard's AMI gateway";
            match g.get("bindaddr").or(g.get("enabled")) {
                Some(v) => out.at_var(Severity::High, g, v, msg, fix),
                None => out.at_cat(Severity::High, g, msg, fix),
            }
        }
        if web && http_plain_public {
            if let Some(v) = g.get("webenabled") {
                out.at_var(
                    Severity::High,
                    g,
                    v,
                    "webenabled=yes while http.conf serves plain HTTP to the network: AMI logins travel in clear".into(),
                    "set webenabled=no (use pbxguard's AMI gateway) or bind http.conf's plain server to 127.0.0.1",
                );
            }
        }
    }
    for u in m
        .sections()
        .filter(|c| !c.name.eq_ignore_ascii_case("general"))
    {
        if let Some(v) = u.get("write") {
            // `all` grants everything; report it alone rather than every class it implies.
            let classes: Vec<&(&str, Severity, &str)> = if grants(&v.value, "all") {
                DANGEROUS_WRITE.iter().take(1).collect()
            } else {
                DANGEROUS_WRITE
                    .iter()
                    .filter(|(c, _, _)| grants(&v.value, c))
                    .collect()
            };
            for (class, sev, what) in classes {
                // On a loopback-only manager (and no manager over HTTP, whose TLS side
                // http() may not see) the one user is pbxguard's: its clients reach
                // Originate and Command only through per-client allowlists and the built-in
                // refusals (System/Exec/AGI originates, module loading, secret-printing
                // commands), so these two classes are what the admin guide's setup needs.
                if local && !web && GATEWAY_FILTERED.contains(class) {
                    out.at_var(
                        Severity::Low,
                        u,
                        v,
                        format!("AMI user may write class {class} ({what}): safe only while pbxguard's AMI gateway is the only client of this loopback manager"),
                        "let nothing but pbxguard log in as this user, and allow the action only to the gateway clients that need it (pbxguard ami user add --allow)",
                    );
                    continue;
                }
                out.at_var(
                    *sev,
                    u,
                    v,
                    format!("AMI user may write class {class}: {what}"),
                    "grant only the classes this client needs (comma-separated, no spaces or empty items); pbxguard's gateway can filter per action",
                );
            }
        }
        match u.get("secret") {
            None => out.at_cat(
                Severity::Medium,
                u,
                "AMI user without a secret (Asterisk refuses its logins)".into(),
                "remove the user, or set a random secret of 16+ characters",
            ),
            Some(v) if v.value.chars().count() < MIN_AMI_SECRET => out.at_var(
                Severity::High,
                u,
                v,
                format!("AMI secret shorter than {MIN_AMI_SECRET} characters"),
                "set a random secret of 16+ characters",
            ),
            Some(_) => {}
        }
        if u.get("permit").is_none() && u.get("acl").is_none() {
            out.at_cat(
                Severity::Medium,
                u,
                "AMI user may log in from any address".into(),
                "add deny=0.0.0.0/0.0.0.0 and permit=127.0.0.1/255.255.255.255",
            );
        }
    }
    web
}

/// pbxguard reads Asterisk's security events (failed SIP and AMI authentications on
/// Asterisk's own ports) as `upstream_user`; Asterisk sends them only to a user whose `read`
/// grants `security`, and says nothing when it does not. Read as manager.c reads it: the last
/// `read` line of the user's sections wins, none grants nothing, and the list goes through
/// `get_perm` (so `all` grants it, `call, security` with its space does not).
fn upstream_reads_security(out: &mut Out<'_>, m: &Conf, upstream_user: &str) {
    let sections: Vec<&Category> = m
        .sections()
        .filter(|c| {
            !c.name.eq_ignore_ascii_case("general") && c.name.eq_ignore_ascii_case(upstream_user)
        })
        .collect();
    let Some(first) = sections.first() else {
        return;
    };
    let read = sections
        .iter()
        .rev()
        .find_map(|c| c.get("read").map(|v| (*c, v)));
    let security = crate::ami::classes::CLASSES
        .iter()
        .find(|(name, _)| *name == "security")
        .map_or(0, |(_, bit)| *bit);
    let granted = read
        .is_some_and(|(_, v)| crate::ami::classes::get_perm(v.value.as_bytes()) & security != 0);
    if granted {
        return;
    }
    let msg = format!(
        "pbxguard's AMI user {upstream_user} cannot read class security: pbxguard never sees \
         Asterisk's security events, so brute force on Asterisk's own SIP port and AMI goes unbanned"
    );
    let fix =
        "add security to its read list (read = ...,security, no spaces) and run `manager reload`";
    match read {
        Some((cat, v)) => out.at_var(Severity::Medium, cat, v, msg, fix),
        None => out.at_cat(Severity::Medium, first, msg, fix),
    }
}

fn http(out: &mut Out<'_>, h: &Conf, manager_web: bool, websocket: bool) {
    let Some(g) = h.section("general") else {
        return;
    };
    // Asterisk starts the server only when enabled=yes and bindaddr is set.
    let (Some(enabled), Some(bind)) = (g.get("enabled"), g.get("bindaddr")) else {
        return;
    };
    if !truthy(Some(&enabled.value)) || loopback_only(&bind.value) {
        return;
    }
    // tlsenable adds a TLS server beside the plain one; it does not turn the plain one off.
    if manager_web || websocket {
        let what = match (manager_web, websocket) {
            (true, true) => "the manager and WebSockets",
            (true, false) => "the manager",
            _ => "WebSockets",
        };
        out.at_var(
            Severity::High,
            g,
            bind,
            format!("plain HTTP on {} serves {what} to the network", bind.value),
            "bind the plain server to 127.0.0.1 (bindaddr) and serve the network with tlsenable=yes only",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_classes_as_asterisk_grants_them() {
        assert!(grants("call,system", "system"));
        assert!(!grants("call, system", "system"), "no trimming");
        assert!(!grants("call,System", "system"), "case-sensitive");
        assert!(grants(",call", "all"), "an empty item matches every class");
        assert!(
            grants("a,call", "agi") && grants("a,call", "all"),
            "prefixes match"
        );
        assert!(!grants("call,originate", "system"));
        assert!(grants("originate", "originate"));
        assert!(!grants("originat", "originate"), "the last item is exact");
    }

    /// The upstream-user findings of `manager` (a manager.conf text) for `user`.
    fn security_findings(manager: &str, user: &str) -> Vec<Finding> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manager.conf"), manager).unwrap();
        check_for(&Files::load(dir.path()), dir.path(), &[], user)
            .into_iter()
            .filter(|f| f.message.contains("class security"))
            .collect()
    }

    const MANAGER: &str = "[general]\nenabled = yes\nbindaddr = 127.0.0.1\n\n\
                           [pbxguard]\nsecret = 9c1f0e7a2b4d6e8f0a1b2c3d4e5f6a7b\n\
                           deny = 0.0.0.0/0.0.0.0\npermit = 127.0.0.1/255.255.255.255\n\
                           read = system,call,agent\nwrite = call\n";

    #[test]
    fn an_upstream_user_without_the_security_class_is_reported() {
        let found = security_findings(MANAGER, "pbxguard");
        assert_eq!(found.len(), 1, "{found:#?}");
        let f = &found[0];
        assert_eq!(f.severity, Severity::Medium);
        assert_eq!(
            (f.file.as_str(), f.line, f.object.as_str()),
            ("manager.conf", 9, "pbxguard")
        );
        assert!(f.message.contains("security events"), "{}", f.message);
        assert!(f.message.contains("unbanned"), "{}", f.message);
        assert!(f.fix.contains("security"), "{}", f.fix);

        // Granted: as a class, through `all`, or through an empty item (Asterisk's parser).
        for read in ["system,call,agent,security", "all", "security", ",call"] {
            let conf = MANAGER.replace("read = system,call,agent", &format!("read = {read}"));
            assert!(security_findings(&conf, "pbxguard").is_empty(), "{read}");
        }
        // Not granted: a space before the last item (get_perm does not trim), a prefix as the
        // last item, another case, or no read line at all (reported on the section).
        for read in ["call, security", "securit", "Security", "none"] {
            let conf = MANAGER.replace("read = system,call,agent", &format!("read = {read}"));
            assert_eq!(security_findings(&conf, "pbxguard").len(), 1, "{read}");
        }
        let conf = MANAGER.replace("read = system,call,agent\n", "");
        let found = security_findings(&conf, "pbxguard");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].line, 5, "the section's line: {found:#?}");
        // The last read line wins, as in manager.c.
        let conf = MANAGER.replace("write = call", "write = call\nread = call,security");
        assert!(security_findings(&conf, "pbxguard").is_empty());
        let conf = MANAGER.replace("read = system,call,agent", "read = security\nread = call");
        assert_eq!(security_findings(&conf, "pbxguard").len(), 1);
    }

    #[test]
    fn only_the_upstream_user_needs_the_security_class() {
        // Another name configured in [ami] upstream_username; users are matched as Asterisk
        // matches them (case-insensitively).
        assert_eq!(security_findings(MANAGER, "PBXGuard").len(), 1);
        assert!(security_findings(MANAGER, "gateway").is_empty());
        let conf = MANAGER.replace("[pbxguard]", "[gateway]");
        assert_eq!(security_findings(&conf, "gateway").len(), 1);
        // Through the default: a tree whose upstream user is not pbxguard's gets nothing.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manager.conf"), &conf).unwrap();
        let all = check(&Files::load(dir.path()), dir.path(), &[]);
        assert!(
            all.iter().all(|f| !f.message.contains("class security")),
            "{all:#?}"
        );
    }

    #[test]
    fn bind_addresses() {
        for b in [
            "127.0.0.1",
            "127.0.0.1:5060",
            "[::1]:5060",
            "::1",
            "localhost:5038",
        ] {
            assert!(loopback_only(b), "{b}");
        }
        for b in [
            "0.0.0.0",
            "0.0.0.0:5060",
            "[::]",
            "::",
            "",
            "192.168.1.5",
            "pbx.example.com",
        ] {
            assert!(!loopback_only(b), "{b}");
        }
    }
}
