//! The admin pages that manage people and addresses: users (level, state, second factor,
//! exemptions, new users), everyone's sessions, the login history with filters and CSV, the
//! ban list, and the AMI clients (read only). Each action is the feature's own operation, as
//! the CLI and the API call it, audited with the admin as `web:NAME`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::app::{exempt_nets, App};
use crate::auth::admin::{self as sessions_admin, HistoryView, SessionView};
use crate::auth::mfa::admin as mfa_admin;
use crate::auth::password::{self, Rules};
use crate::auth::roles::Role;
use crate::auth::sessions::Notice;
use crate::auth::users::{self, NewUser, UserError};
use crate::bans::admin::{self as bans_admin, BanError, BanView};
use crate::clock::{now_unix, rfc3339};
use crate::store::HistoryFilter;

use super::{
    failure, form_visitor, notice, plain, render, secure, see_other, visitor, Nav, Visitor,
};

/// One user as the users page shows it.
struct UserLine {
    name: String,
    email: Option<String>,
    level: u8,
    role: &'static str,
    disabled: bool,
    extension: Option<String>,
    method: &'static str,
    enrolled_at: Option<String>,
    exempt_until: Option<String>,
    last_login: Option<String>,
}

#[derive(Template)]
#[template(path = "console/users.html")]
struct UsersPage {
    nav: Nav,
    users: Vec<UserLine>,
    levels: Vec<u8>,
}

const USER_NOTICES: &[(&str, &str)] = &[
    ("created", "The user is added."),
    ("level", "The level is set; the user's sessions ended."),
    ("state", "Done; a disabled user's sessions ended."),
    (
        "reset",
        "The second factor and recovery codes are removed; the user's sessions ended.",
    ),
    ("exempt", "The exemption is set."),
];

fn actor(v: &Visitor) -> String {
    format!("web:{}", v.session.user)
}

async fn users_view(app: &App, v: Visitor, status: StatusCode) -> Response {
    let config = app.config.load();
    let built = async {
        let mfa: HashMap<String, mfa_admin::MfaStatusView> =
            mfa_admin::status(&app.store, &config.mfa, now_unix())
                .await?
                .into_iter()
                .map(|m| (m.user.clone(), m))
                .collect();
        let last: HashMap<String, i64> = app.store.last_logins().await?.into_iter().collect();
        let users = users::list(&app.store).await?;
        Ok::<_, crate::store::StoreError>(
            users
                .into_iter()
                .map(|u| {
                    let m = mfa.get(&u.name);
                    UserLine {
                        last_login: last.get(&u.name).map(|t| rfc3339(*t)),
                        method: m.map_or("none", |m| m.method),
                        enrolled_at: m.and_then(|m| m.enrolled_at.clone()),
                        exempt_until: m.and_then(|m| m.exempt_until.clone()),
                        name: u.name,
                        email: u.email,
                        level: u.level,
                        role: u.role,
                        disabled: u.disabled,
                        extension: u.extension,
                    }
                })
                .collect(),
        )
    };
    match built.await {
        Ok(users) => render(
            status,
            &UsersPage {
                nav: v.nav,
                users,
                levels: (1..=9).collect(),
            },
        ),
        Err(e) => failure(&e),
    }
}

pub async fn users_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let mut v = match visitor(&app, &headers, "/admin/users", Role::Admin).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    v.nav.notice = notice(uri.query(), USER_NOTICES);
    users_view(&app, v, StatusCode::OK).await
}

/// The users page again with `message`, for a refusal the admin can correct.
async fn refused(app: &App, mut v: Visitor, status: StatusCode, message: String) -> Response {
    v.nav.error = Some(message);
    users_view(app, v, status).await
}

/// A user operation's error: the admin's mistake shown on the page, the rest a failure.
async fn user_error(app: &App, v: Visitor, e: UserError) -> Response {
    match e {
        UserError::Invalid(_) | UserError::Password(_) => {
            refused(app, v, StatusCode::BAD_REQUEST, e.to_string()).await
        }
        UserError::Exists(_) | UserError::ExtensionTaken { .. } => {
            refused(app, v, StatusCode::CONFLICT, e.to_string()).await
        }
        UserError::NoSuchUser(_) => refused(app, v, StatusCode::NOT_FOUND, e.to_string()).await,
        e => failure(&e),
    }
}

#[derive(Deserialize)]
pub struct CreateForm {
    csrf: String,
    name: String,
    level: u8,
    #[serde(default)]
    email: String,
    password: String,
}

pub async fn create_user(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<CreateForm>,
) -> Response {
    let v = match form_visitor(&app, &headers, "/admin/users", Role::Admin, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let pw = Zeroizing::new(form.password);
    let email = Some(form.email.trim()).filter(|e| !e.is_empty());
    let new = NewUser {
        name: &form.name,
        level: form.level,
        email,
        extension: None,
    };
    if let Err(e) = new.check() {
        return user_error(&app, v, e).await;
    }
    let config = app.config.load_full();
    if let Err(e) = password::check_policy(&pw, &form.name, Rules::of(&config.auth)) {
        return refused(&app, v, StatusCode::BAD_REQUEST, e.to_string()).await;
    }
    let hash = match app.auth.hasher.hash(pw).await {
        Ok(h) => h,
        Err(e) => return failure(&e),
    };
    match users::add_hashed(&app.store, &actor(&v), new, &hash).await {
        Ok(()) => see_other("/admin/users?done=created"),
        Err(e) => user_error(&app, v, e).await,
    }
}

#[derive(Deserialize)]
pub struct LevelForm {
    csrf: String,
    name: String,
    level: u8,
}

pub async fn set_level(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<LevelForm>,
) -> Response {
    let v = match form_visitor(&app, &headers, "/admin/users", Role::Admin, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let notice = Notice::Daemon(&app.auth.sessions);
    match users::set_level(&app.store, notice, &actor(&v), &form.name, form.level).await {
        Ok(_) => see_other("/admin/users?done=level"),
        Err(e) => user_error(&app, v, e).await,
    }
}

#[derive(Deserialize)]
pub struct StateForm {
    csrf: String,
    name: String,
    /// `on` disables, `off` enables.
    disabled: String,
}

pub async fn set_state(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<StateForm>,
) -> Response {
    let v = match form_visitor(&app, &headers, "/admin/users", Role::Admin, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let disable = match form.disabled.as_str() {
        "on" => true,
        "off" => false,
        _ => return plain(StatusCode::BAD_REQUEST, "disabled is on or off"),
    };
    if disable && *v.session.user == *form.name {
        return refused(
            &app,
            v,
            StatusCode::BAD_REQUEST,
            "You cannot disable your own account here.".into(),
        )
        .await;
    }
    let notice = Notice::Daemon(&app.auth.sessions);
    match users::set_disabled(&app.store, notice, &actor(&v), &form.name, disable).await {
        Ok(_) => see_other("/admin/users?done=state"),
        Err(e) => user_error(&app, v, e).await,
    }
}

#[derive(Deserialize)]
pub struct NameForm {
    csrf: String,
    name: String,
}

pub async fn reset_2fa(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<NameForm>,
) -> Response {
    let v = match form_visitor(&app, &headers, "/admin/users", Role::Admin, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let notice = Notice::Daemon(&app.auth.sessions);
    match mfa_admin::reset(
        &app.store,
        &app.vault,
        notice,
        &actor(&v),
        &form.name,
        now_unix(),
    )
    .await
    {
        Ok(_) => see_other("/admin/users?done=reset"),
        Err(crate::auth::mfa::MfaError::NoSuchUser) => {
            refused(&app, v, StatusCode::NOT_FOUND, "No such user.".into()).await
        }
        Err(e) => failure(&e),
    }
}

#[derive(Deserialize)]
pub struct ExemptForm {
    csrf: String,
    name: String,
    #[serde(rename = "for")]
    duration: String,
}

pub async fn exempt(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<ExemptForm>,
) -> Response {
    let v = match form_visitor(&app, &headers, "/admin/users", Role::Admin, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Ok(d) = humantime::parse_duration(form.duration.trim()) else {
        return refused(
            &app,
            v,
            StatusCode::BAD_REQUEST,
            "An exemption is a duration such as 12h or 2d.".into(),
        )
        .await;
    };
    let now = now_unix();
    let until = now.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2));
    match mfa_admin::exempt(&app.store, &actor(&v), &form.name, until, now).await {
        Ok(_) => see_other("/admin/users?done=exempt"),
        Err(e @ crate::auth::mfa::MfaError::BadUntil) => {
            refused(&app, v, StatusCode::BAD_REQUEST, format!("{e}.")).await
        }
        Err(crate::auth::mfa::MfaError::NoSuchUser) => {
            refused(&app, v, StatusCode::NOT_FOUND, "No such user.".into()).await
        }
        Err(e) => failure(&e),
    }
}

// ---- sessions ------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "console/sessions.html")]
struct SessionsPage {
    nav: Nav,
    sessions: Vec<SessionView>,
    current: String,
}

pub async fn sessions_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let mut v = match visitor(&app, &headers, "/admin/sessions", Role::Admin).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    v.nav.notice = notice(uri.query(), &[("revoked", "The session is revoked.")]);
    let config = app.config.load();
    match sessions_admin::sessions(&app.store, &config.auth, None, now_unix()).await {
        Ok(sessions) => render(
            StatusCode::OK,
            &SessionsPage {
                current: v.session.id.to_string(),
                nav: v.nav,
                sessions,
            },
        ),
        Err(e) => failure(&e),
    }
}

#[derive(Deserialize)]
pub struct IdForm {
    csrf: String,
    id: String,
}

pub async fn revoke_session(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<IdForm>,
) -> Response {
    let v = match form_visitor(&app, &headers, "/admin/sessions", Role::Admin, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let notice = Notice::Daemon(&app.auth.sessions);
    match sessions_admin::revoke_session(&app.store, notice, &actor(&v), &form.id, now_unix()).await
    {
        Ok(_) => see_other("/admin/sessions?done=revoked"),
        Err(sessions_admin::AdminError::NoSuchSession) => {
            plain(StatusCode::NOT_FOUND, "no live session with that id")
        }
        Err(e) => failure(&e),
    }
}

// ---- login history -------------------------------------------------------------------------

/// Attempts a page shows; the CSV export takes more.
const PAGE_ROWS: u32 = 500;
const CSV_ROWS: u32 = 100_000;
/// Results a login attempt is recorded with.
const RESULTS: &[&str] = &[
    "ok",
    "bad_password",
    "unknown_user",
    "disabled",
    "mfa_failed",
    "throttled",
    "logout",
    "store_unavailable",
];

/// The filter as typed (empty: any).
#[derive(Debug, Default, Deserialize)]
pub struct HistoryQ {
    #[serde(default)]
    user: String,
    #[serde(default)]
    result: String,
    #[serde(default)]
    ip: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

#[derive(Template)]
#[template(path = "console/history.html")]
struct HistoryPage {
    nav: Nav,
    q: HistoryQ,
    results: Vec<&'static str>,
    rows: Vec<HistoryView>,
    csv_query: String,
    limit: u32,
}

fn instant(field: &str, text: &str) -> Result<Option<i64>, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map(|d| Some(d.unix_timestamp()))
        .map_err(|_| format!("{field} is a time such as 2026-12-01T00:00:00Z"))
}

fn some(text: &str) -> Option<&str> {
    Some(text.trim()).filter(|t| !t.is_empty())
}

fn filter<'a>(q: &'a HistoryQ, limit: u32) -> Result<HistoryFilter<'a>, String> {
    if q.user.len() > 256 || q.ip.len() > 64 {
        return Err("a filter is too long".into());
    }
    let result = some(&q.result);
    if result.is_some_and(|r| !RESULTS.contains(&r)) {
        return Err("unknown result".into());
    }
    Ok(HistoryFilter {
        user: some(&q.user),
        result,
        ip: some(&q.ip),
        from: instant("from", &q.from)?,
        to: instant("to", &q.to)?,
        limit,
    })
}

fn query_string(q: &HistoryQ) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    [
        ("user", &q.user),
        ("result", &q.result),
        ("ip", &q.ip),
        ("from", &q.from),
        ("to", &q.to),
    ]
    .iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
    .collect::<Vec<_>>()
    .join("&")
}

pub async fn history_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<HistoryQ>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let mut v = match visitor(&app, &headers, "/admin/history", Role::Admin).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let (rows, status) = match filter(&q, PAGE_ROWS) {
        Ok(f) => match app.store.history_filtered(&f).await {
            Ok(rows) => (rows, StatusCode::OK),
            Err(e) => return failure(&e),
        },
        Err(why) => {
            v.nav.error = Some(why);
            (Vec::new(), StatusCode::BAD_REQUEST)
        }
    };
    render(
        status,
        &HistoryPage {
            nav: v.nav,
            csv_query: query_string(&q),
            q,
            results: RESULTS.to_vec(),
            rows: rows.into_iter().map(HistoryView::from).collect(),
            limit: PAGE_ROWS,
        },
    )
}

/// One CSV field: quoted when it must be, and a leading `= + - @` (or tab, CR) neutralised, so
/// that a spreadsheet never runs a user agent or a typed name as a formula.
fn csv_field(text: &str) -> String {
    let guarded = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

pub async fn history_csv(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<HistoryQ>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let v = match visitor(&app, &headers, "/admin/history", Role::Admin).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let f = match filter(&q, CSV_ROWS) {
        Ok(f) => f,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "a filter does not read"),
    };
    let rows = match app.store.history_filtered(&f).await {
        Ok(rows) => rows,
        Err(e) => return failure(&e),
    };
    let mut out = String::from("at,user,result,ip,user_agent,node\r\n");
    for r in rows {
        let line = [
            rfc3339(r.at),
            r.user,
            r.result,
            r.ip,
            r.user_agent,
            r.node.unwrap_or_default(),
        ]
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",");
        out.push_str(&line);
        out.push_str("\r\n");
    }
    tracing::info!(user = %v.session.user, "login history exported as CSV");
    secure(
        (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"login-history.csv\"",
                ),
            ],
            out,
        )
            .into_response(),
    )
}

// ---- bans ----------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "console/bans.html")]
struct BansPage {
    nav: Nav,
    bans: Vec<BanView>,
}

const BAN_NOTICES: &[(&str, &str)] = &[
    ("added", "The address is banned on every node."),
    ("removed", "The ban is lifted on every node."),
];

async fn bans_view(app: &App, v: Visitor, status: StatusCode) -> Response {
    match bans_admin::list(&app.store).await {
        Ok(bans) => render(status, &BansPage { nav: v.nav, bans }),
        Err(e) => failure(&e),
    }
}

pub async fn bans_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let mut v = match visitor(&app, &headers, "/admin/bans", Role::Admin).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    v.nav.notice = notice(uri.query(), BAN_NOTICES);
    bans_view(&app, v, StatusCode::OK).await
}

async fn ban_error(app: &App, mut v: Visitor, e: BanError) -> Response {
    match e {
        BanError::Store(e) => failure(&e),
        e => {
            v.nav.error = Some(e.to_string());
            bans_view(app, v, StatusCode::BAD_REQUEST).await
        }
    }
}

#[derive(Deserialize)]
pub struct BanForm {
    csrf: String,
    address: String,
    #[serde(default)]
    duration: String,
    #[serde(default)]
    reason: String,
}

pub async fn add_ban(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<BanForm>,
) -> Response {
    let v = match form_visitor(&app, &headers, "/admin/bans", Role::Admin, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let duration: Option<Duration> = match some(&form.duration) {
        None => None,
        Some(t) => match humantime::parse_duration(t) {
            Ok(d) => Some(d),
            Err(_) => return ban_error(&app, v, BanError::Duration).await,
        },
    };
    let config = app.config.load();
    let req = bans_admin::Request {
        address: form.address.trim(),
        duration,
        reason: some(&form.reason),
    };
    let added = bans_admin::add(
        &app.store,
        &config.bans,
        &exempt_nets(&config),
        &actor(&v),
        &config.daemon.node_name,
        &req,
    )
    .await;
    match added {
        Ok(_) => {
            app.bans_changed.notify_one();
            see_other("/admin/bans?done=added")
        }
        Err(e) => ban_error(&app, v, e).await,
    }
}

#[derive(Deserialize)]
pub struct LiftForm {
    csrf: String,
    address: String,
}

pub async fn remove_ban(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<LiftForm>,
) -> Response {
    let v = match form_visitor(&app, &headers, "/admin/bans", Role::Admin, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match bans_admin::remove(&app.store, &actor(&v), Some(form.address.trim())).await {
        Ok(_) => {
            app.bans_changed.notify_one();
            see_other("/admin/bans?done=removed")
        }
        Err(e) => ban_error(&app, v, e).await,
    }
}

// ---- AMI clients ---------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "console/ami.html")]
struct AmiPage {
    nav: Nav,
    clients: Vec<crate::ami::clients::ClientView>,
}

pub async fn ami_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let v = match visitor(&app, &headers, "/admin/ami", Role::Admin).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match crate::ami::clients::list(&app.store).await {
        Ok(clients) => render(
            StatusCode::OK,
            &AmiPage {
                nav: v.nav,
                clients,
            },
        ),
        Err(e) => failure(&e),
    }
}

// ---- the scheduled Asterisk audit ----------------------------------------------------------

/// One node's last run as the page shows it.
struct RunView {
    node: String,
    at: String,
    error: String,
    high: usize,
    findings: Vec<crate::audit::Finding>,
}

#[derive(Template)]
#[template(path = "console/audit.html")]
struct AuditPage {
    nav: Nav,
    runs: Vec<RunView>,
}

pub async fn audit_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let v = match visitor(&app, &headers, "/admin/audit", Role::Admin).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let rows = match app.store.audit_runs().await {
        Ok(rows) => rows,
        Err(e) => return failure(&e),
    };
    let runs = rows
        .into_iter()
        .map(|r| {
            // Written by this program; a row that does not read shows as an error of its own.
            let (findings, error) =
                match serde_json::from_str::<Vec<crate::audit::Finding>>(&r.findings) {
                    Ok(f) => (f, r.error),
                    Err(_) => (Vec::new(), "the stored findings do not read".to_string()),
                };
            RunView {
                high: findings
                    .iter()
                    .filter(|f| f.severity == crate::audit::Severity::High)
                    .count(),
                node: r.node,
                at: rfc3339(r.at),
                error,
                findings,
            }
        })
        .collect();
    render(StatusCode::OK, &AuditPage { nav: v.nav, runs })
}
