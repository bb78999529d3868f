//! `/account`, every user's page: change the password, the second factor and recovery codes,
//! the user's own sessions (sign one out, or every other one) and recent logins.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Form};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::app::App;
use crate::auth::admin::{self, HistoryView, SessionView};
use crate::auth::login::{self, PasswordStep, Refusal};
use crate::auth::mfa::enroll::{Confirmed, Enroller};
use crate::auth::mfa::passkey::PasskeyView;
use crate::auth::mfa::MfaError;
use crate::auth::password::{self, Rules};
use crate::auth::roles::Role;
use crate::auth::sessions::Notice;
use crate::auth::users;
use crate::clock::{now_unix, rfc3339};

use super::super::auth_api::{client, cookie_secure, gate, mfa, session_cookie};
use super::super::Peer;
use super::{failure, form_visitor, notice, plain, render, see_other, visitor, Nav, Visitor};

const PATH: &str = "/account";
/// Logins shown.
const HISTORY: u32 = 20;

#[derive(Template)]
#[template(path = "console/account.html")]
struct AccountPage {
    nav: Nav,
    min_length: u32,
    totp_since: Option<String>,
    recovery_left: i64,
    recovery_total: i64,
    passkeys: Vec<PasskeyView>,
    passwordless: bool,
    /// Whether `[http] public_url` can be a passkeys' relying party.
    passkeys_available: bool,
    sessions: Vec<SessionView>,
    current: String,
    history: Vec<HistoryView>,
}

#[derive(Template)]
#[template(path = "console/codes.html")]
struct CodesPage {
    nav: Nav,
    codes: Vec<String>,
}

#[derive(Template)]
#[template(path = "console/message.html")]
struct MessagePage {
    nav: Nav,
    heading: String,
}

const NOTICES: &[(&str, &str)] = &[
    ("revoked", "That session is signed out."),
    ("others", "Every other session is signed out."),
    ("totp", "Your authenticator app is set up."),
    ("passkey", "Your passkey is added."),
    ("passkey-removed", "That passkey is removed."),
    (
        "passwordless-on",
        "You can now log in with a passkey alone.",
    ),
    (
        "passwordless-off",
        "Logging in now takes your password again.",
    ),
];

#[derive(Template)]
#[template(path = "console/totp.html")]
struct TotpPage {
    nav: Nav,
    qr_b64: String,
    secret: String,
}

/// A fresh secret for the visitor, pending until a code confirms it (a new one each visit).
pub async fn totp_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    use base64::Engine as _;
    let v = match visitor(&app, &headers, "/account/totp", Role::Agent).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let config = app.config.load_full();
    let m = mfa(&app, &config);
    let who = match m
        .enrolling(Enroller::Session(&v.session.user), now_unix())
        .await
    {
        Ok(who) => who,
        Err(MfaError::AlreadyEnrolled) => return see_other("/account"),
        Err(e) => return failure(&e),
    };
    match m.enroll(&who).await {
        Ok(e) => render(
            StatusCode::OK,
            &TotpPage {
                qr_b64: base64::engine::general_purpose::STANDARD.encode(e.qr_svg.as_bytes()),
                secret: e.secret.to_string(),
                nav: v.nav,
            },
        ),
        Err(e) => failure(&e),
    }
}

#[derive(Deserialize)]
pub struct CodeForm {
    csrf: String,
    code: String,
}

/// Confirms the pending secret with a first code; the first recovery codes are shown once.
pub async fn totp_confirm(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<CodeForm>,
) -> Response {
    let mut v = match form_visitor(&app, &headers, "/account/totp", Role::Agent, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let config = app.config.load_full();
    let m = mfa(&app, &config);
    let now = now_unix();
    let who = match m.enrolling(Enroller::Session(&v.session.user), now).await {
        Ok(who) => who,
        Err(MfaError::AlreadyEnrolled) => return see_other("/account"),
        Err(e) => return failure(&e),
    };
    let client = client(&app, &peer, &headers);
    match m.confirm(who, form.code.trim(), &client, now).await {
        Ok(Confirmed::Enrolled(Some(codes))) => render(
            StatusCode::OK,
            &CodesPage {
                codes: codes.iter().map(|c| c.to_string()).collect(),
                nav: v.nav,
            },
        ),
        Ok(_) => see_other("/account?done=totp"),
        Err(e @ (MfaError::BadCode | MfaError::InvalidCode | MfaError::NoEnrollment)) => {
            v.nav.error = Some(capitalised(&e.to_string()));
            account_page(&app, v, StatusCode::BAD_REQUEST).await
        }
        Err(MfaError::Throttled { .. }) => {
            v.nav.error = Some("Too many failed attempts; try again later.".into());
            account_page(&app, v, StatusCode::TOO_MANY_REQUESTS).await
        }
        Err(e) => failure(&e),
    }
}

/// Removes the visitor's own authenticator app and recovery codes, with the password; every
/// session of the user ends.
pub async fn totp_remove(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<CodesForm>,
) -> Response {
    let v = match form_visitor(&app, &headers, PATH, Role::Agent, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let name = v.session.user.to_string();
    let client = client(&app, &peer, &headers);
    let password = Zeroizing::new(form.password);
    let v = match own_password(&app, v, password, &client, "The password is wrong.").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let notice = Notice::Daemon(&app.auth.sessions);
    if let Err(e) =
        crate::auth::mfa::admin::remove_totp(&app.store, &app.vault, notice, &name, now_unix())
            .await
    {
        return failure(&e);
    }
    signed_out(
        v,
        "Your authenticator app is removed. Log in again.",
        &peer,
        &headers,
    )
}

/// The account page of `v`, with `status` (an error re-renders it with the message).
async fn account_page(app: &App, v: Visitor, status: StatusCode) -> Response {
    match build(app, v).await {
        Ok(page) => render(status, &page),
        Err(e) => {
            tracing::error!(error = %e, "reading the account page's data failed");
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database cannot answer right now; try again later",
            )
        }
    }
}

async fn build(app: &App, v: Visitor) -> Result<AccountPage, crate::store::StoreError> {
    let config = app.config.load();
    let store = &app.store;
    let user = store.user(&v.session.user).await?;
    let (totp_since, (recovery_total, recovery_left)) = match &user {
        Some(u) => (
            store.totp(u.id).await?.map(|(at, _)| rfc3339(at)),
            crate::auth::mfa::recovery::count(store, u.id).await?,
        ),
        None => (None, (0, 0)),
    };
    let (passkeys, passwordless) = match &user {
        Some(u) => (
            store
                .passkeys(u.id)
                .await?
                .iter()
                .map(PasskeyView::from)
                .collect(),
            store.passwordless(u.id).await?,
        ),
        None => (Vec::new(), false),
    };
    let passkeys_available = crate::auth::mfa::passkey::relying_party(
        config.http.as_ref().map(|h| h.public_url.as_str()),
        &config.mfa,
    )
    .is_ok();
    let sessions = admin::sessions(store, &config.auth, Some(&v.session.user), now_unix()).await?;
    let history = store
        .history(Some(&v.session.user), HISTORY)
        .await?
        .into_iter()
        .map(HistoryView::from)
        .collect();
    Ok(AccountPage {
        min_length: config.auth.password_min_length,
        totp_since,
        recovery_left,
        recovery_total,
        passkeys,
        passwordless,
        passkeys_available,
        sessions,
        current: v.session.id.to_string(),
        history,
        nav: v.nav,
    })
}

pub async fn page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let mut v = match visitor(&app, &headers, PATH, Role::Agent).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    v.nav.notice = notice(uri.query(), NOTICES);
    account_page(&app, v, StatusCode::OK).await
}

#[derive(Deserialize)]
pub struct PasswordForm {
    csrf: String,
    current: String,
    new: String,
    again: String,
}

/// Changes the visitor's own password (the current one is checked like a login's, throttled
/// and recorded); every session of the user ends, this one included.
pub async fn change_password(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<PasswordForm>,
) -> Response {
    let mut v = match form_visitor(&app, &headers, PATH, Role::Agent, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let (current, new, again) = (
        Zeroizing::new(form.current),
        Zeroizing::new(form.new),
        Zeroizing::new(form.again),
    );
    let config = app.config.load_full();
    let name = v.session.user.to_string();
    if *new != *again {
        v.nav.error = Some("The two new passwords differ.".into());
        return account_page(&app, v, StatusCode::BAD_REQUEST).await;
    }
    if let Err(e) = password::check_policy(&new, &name, Rules::of(&config.auth)) {
        v.nav.error = Some(capitalised(&e.to_string()));
        return account_page(&app, v, StatusCode::BAD_REQUEST).await;
    }
    let client = client(&app, &peer, &headers);
    let v = match own_password(&app, v, current, &client, "The current password is wrong.").await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let hash = match app.auth.hasher.hash(new).await {
        Ok(h) => h,
        Err(e) => return failure(&e),
    };
    let notice = Notice::Daemon(&app.auth.sessions);
    let actor = format!("web:{name}");
    if let Err(e) = users::set_password_hash(&app.store, notice, &actor, &name, &hash).await {
        return failure(&e);
    }
    signed_out(
        v,
        "Your password is changed. Log in again with the new one.",
        &peer,
        &headers,
    )
}

#[derive(Deserialize)]
pub struct CodesForm {
    csrf: String,
    password: String,
}

/// A new set of recovery codes, shown once; the old set is void.
pub async fn regenerate_codes(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<CodesForm>,
) -> Response {
    let mut v = match form_visitor(&app, &headers, PATH, Role::Agent, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let password = Zeroizing::new(form.password);
    let config = app.config.load_full();
    let client = client(&app, &peer, &headers);
    let name = v.session.user.to_string();
    match mfa(&app, &config)
        .regenerate_recovery_codes(&name, password, &client, now_unix())
        .await
    {
        Ok(codes) => render(
            StatusCode::OK,
            &CodesPage {
                codes: codes.iter().map(|c| c.to_string()).collect(),
                nav: v.nav,
            },
        ),
        Err(MfaError::WrongPassword) => {
            v.nav.error = Some("The password is wrong.".into());
            account_page(&app, v, StatusCode::UNAUTHORIZED).await
        }
        Err(MfaError::Throttled { .. }) => {
            v.nav.error = Some("Too many failed attempts; try again later.".into());
            account_page(&app, v, StatusCode::TOO_MANY_REQUESTS).await
        }
        Err(MfaError::NoSecondFactor) => {
            v.nav.error = Some(
                "Recovery codes come with an authenticator app or a passkey; set one up first."
                    .into(),
            );
            account_page(&app, v, StatusCode::CONFLICT).await
        }
        Err(e) => failure(&e),
    }
}

#[derive(Deserialize)]
pub struct PasskeyRemoveForm {
    csrf: String,
    id: String,
    password: String,
}

/// Removes one of the visitor's passkeys, with the password.
pub async fn passkey_remove(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<PasskeyRemoveForm>,
) -> Response {
    let v = match form_visitor(&app, &headers, PATH, Role::Agent, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let config = app.config.load_full();
    let client = client(&app, &peer, &headers);
    let name = v.session.user.to_string();
    let password = Zeroizing::new(form.password);
    let removed = mfa(&app, &config)
        .passkey_remove(&name, password, &form.id, &client)
        .await;
    passkey_answer(&app, v, removed.map(|()| "/account?done=passkey-removed")).await
}

#[derive(Deserialize)]
pub struct PasswordlessForm {
    csrf: String,
    /// `on` or `off`.
    enabled: String,
    #[serde(default)]
    password: String,
}

/// Turns the visitor's passwordless login on (with the password) or off.
pub async fn passwordless(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<PasswordlessForm>,
) -> Response {
    let v = match form_visitor(&app, &headers, PATH, Role::Agent, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let on = match form.enabled.as_str() {
        "on" => true,
        "off" => false,
        _ => return plain(StatusCode::BAD_REQUEST, "enabled is on or off"),
    };
    let config = app.config.load_full();
    let client = client(&app, &peer, &headers);
    let name = v.session.user.to_string();
    let password = (!form.password.is_empty()).then(|| Zeroizing::new(form.password));
    let done = mfa(&app, &config)
        .set_passwordless(&name, on, password, &client, now_unix())
        .await;
    let to = |now_on: bool| {
        if now_on {
            "/account?done=passwordless-on"
        } else {
            "/account?done=passwordless-off"
        }
    };
    passkey_answer(&app, v, done.map(to)).await
}

/// Where a passkey form leads: on to `Ok(path)`, or the account page with the refusal.
async fn passkey_answer(
    app: &App,
    mut v: Visitor,
    outcome: Result<&'static str, MfaError>,
) -> Response {
    let (message, status) = match outcome {
        Ok(path) => return see_other(path),
        Err(MfaError::WrongPassword) => (
            "The password is wrong.".to_string(),
            StatusCode::UNAUTHORIZED,
        ),
        Err(MfaError::Throttled { .. }) => (
            "Too many failed attempts; try again later.".to_string(),
            StatusCode::TOO_MANY_REQUESTS,
        ),
        Err(e @ (MfaError::NoSuchPasskey | MfaError::NoPasskey)) => {
            (capitalised(&e.to_string()), StatusCode::CONFLICT)
        }
        Err(e) => return failure(&e),
    };
    v.nav.error = Some(message);
    account_page(app, v, status).await
}

#[derive(Deserialize)]
pub struct RevokeForm {
    csrf: String,
    id: String,
}

/// Signs out one of the visitor's own sessions (never another user's).
pub async fn revoke_one(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<RevokeForm>,
) -> Response {
    let v = match form_visitor(&app, &headers, PATH, Role::Agent, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let config = app.config.load();
    let own =
        match admin::sessions(&app.store, &config.auth, Some(&v.session.user), now_unix()).await {
            Ok(list) => list.into_iter().any(|s| s.id == form.id),
            Err(e) => return failure(&e),
        };
    if !own {
        return plain(StatusCode::NOT_FOUND, "no such session of yours");
    }
    let actor = format!("web:{}", v.session.user);
    let notice = Notice::Daemon(&app.auth.sessions);
    if let Err(e) = admin::revoke_session(&app.store, notice, &actor, &form.id, now_unix()).await {
        return failure(&e);
    }
    see_other("/account?done=revoked")
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

/// Signs out every session of the visitor but this one.
pub async fn revoke_others(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let v = match form_visitor(&app, &headers, PATH, Role::Agent, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let config = app.config.load();
    let list =
        match admin::sessions(&app.store, &config.auth, Some(&v.session.user), now_unix()).await {
            Ok(list) => list,
            Err(e) => return failure(&e),
        };
    let actor = format!("web:{}", v.session.user);
    for s in list.iter().filter(|s| *s.id != *v.session.id) {
        let notice = Notice::Daemon(&app.auth.sessions);
        match admin::revoke_session(&app.store, notice, &actor, &s.id, now_unix()).await {
            // Ended meanwhile (expired, or signed out elsewhere).
            Ok(_) | Err(admin::AdminError::NoSuchSession) => {}
            Err(e) => return failure(&e),
        }
    }
    see_other("/account?done=others")
}

/// Logs the visitor out (the page's button; the API has its own endpoint).
pub async fn logout(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let v = match form_visitor(&app, &headers, PATH, Role::Agent, &form.csrf).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let client = client(&app, &peer, &headers);
    let config = app.config.load();
    if let Err(e) = login::logout(gate(&app, &config), &v.session, &client).await {
        return failure(&e);
    }
    let mut r = see_other("/login");
    clear_cookie(&mut r, &peer, &headers);
    r
}

/// Checks the visitor's own password as a login's password step is checked (throttled, a
/// failure recorded); a refusal is the account page again, saying `wrong` or to wait.
async fn own_password(
    app: &App,
    mut v: Visitor,
    password: Zeroizing<String>,
    client: &login::Client,
    wrong: &str,
) -> Result<Visitor, Response> {
    let config = app.config.load_full();
    let name = v.session.user.to_string();
    let (message, status) =
        match login::check_password(gate(app, &config), &name, password, client).await {
            Ok(PasswordStep::Verified(_)) => return Ok(v),
            Ok(PasswordStep::Refused(Refusal::Throttled { .. })) => (
                "Too many failed attempts; try again later.",
                StatusCode::TOO_MANY_REQUESTS,
            ),
            Ok(PasswordStep::Refused(_)) => (wrong, StatusCode::UNAUTHORIZED),
            Err(e) => return Err(failure(&e)),
        };
    v.nav.error = Some(message.to_string());
    Err(account_page(app, v, status).await)
}

/// The page after a change that ended every session of the visitor: `heading`, and the
/// cookie cleared.
fn signed_out(v: Visitor, heading: &str, peer: &Peer, headers: &HeaderMap) -> Response {
    let mut r = render(
        StatusCode::OK,
        &MessagePage {
            heading: heading.to_string(),
            nav: v.nav,
        },
    );
    clear_cookie(&mut r, peer, headers);
    r
}

fn clear_cookie(r: &mut Response, peer: &Peer, headers: &HeaderMap) {
    if let Some(c) = session_cookie("", 0, cookie_secure(peer, headers)) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
}

fn capitalised(text: &str) -> String {
    let mut c = text.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect::<String>() + ".",
        None => String::new(),
    }
}
