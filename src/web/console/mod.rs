//! The security console: server-rendered pages (askama templates, no script) for every user's
//! account (`/account`) and for admins (`/admin`). Pages are read with the session cookie; a
//! visitor without a session is sent to `/login` and back. Every form carries a per-session
//! CSRF token (an HMAC of the session id under the vault's MFA key), checked before anything
//! else on each POST, on top of the `SameSite=Strict` cookie. Answers carry the login page's
//! strict Content-Security-Policy and are never cached.

mod account;
mod admin;
mod manage;

use std::sync::Arc;

use askama::Template;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::app::App;
use crate::auth::roles::Role;
use crate::auth::sessions::Session;

use super::login_page::CSP;

const CSS: &str = include_str!("../../../assets/console/style.css");

/// The console's routes, merged into the API router.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/console/style.css", get(style))
        .route("/account", get(account::page))
        .route("/account/password", post(account::change_password))
        .route(
            "/account/totp",
            get(account::totp_page).post(account::totp_confirm),
        )
        .route("/account/totp/remove", post(account::totp_remove))
        .route("/account/recovery-codes", post(account::regenerate_codes))
        .route("/account/passkeys/remove", post(account::passkey_remove))
        .route("/account/passwordless", post(account::passwordless))
        .route("/console/passkeys.js", get(passkeys_script))
        .route("/account/sessions/revoke", post(account::revoke_one))
        .route(
            "/account/sessions/revoke-others",
            post(account::revoke_others),
        )
        .route("/account/logout", post(account::logout))
        .route("/admin", get(admin::page))
        .route(
            "/admin/settings",
            get(admin::settings_page).post(admin::save_settings),
        )
        .route("/admin/users", get(manage::users_page))
        .route("/admin/users/create", post(manage::create_user))
        .route("/admin/users/level", post(manage::set_level))
        .route("/admin/users/state", post(manage::set_state))
        .route("/admin/users/reset-2fa", post(manage::reset_2fa))
        .route("/admin/users/exempt", post(manage::exempt))
        .route("/admin/sessions", get(manage::sessions_page))
        .route("/admin/sessions/revoke", post(manage::revoke_session))
        .route("/admin/history", get(manage::history_page))
        .route("/admin/history.csv", get(manage::history_csv))
        .route("/admin/bans", get(manage::bans_page))
        .route("/admin/bans/add", post(manage::add_ban))
        .route("/admin/bans/remove", post(manage::remove_ban))
        .route("/admin/ami", get(manage::ami_page))
        .route("/admin/audit", get(manage::audit_page))
}

/// What the layout shows of the visitor, and the token its forms carry.
#[derive(Debug, Clone)]
pub struct Nav {
    pub user: String,
    pub role: &'static str,
    pub admin: bool,
    pub csrf: String,
    pub notice: Option<String>,
    pub error: Option<String>,
}

/// The fixed notice a redirect names with `?done=KEY` (never text from the request).
pub fn notice(query: Option<&str>, table: &[(&str, &str)]) -> Option<String> {
    let done = query?.split('&').find_map(|kv| kv.strip_prefix("done="))?;
    table
        .iter()
        .find(|(k, _)| *k == done)
        .map(|(_, text)| text.to_string())
}

/// A failure the visitor cannot fix: logged; 503 when the database cannot take the write.
pub fn failure(e: &(dyn std::error::Error + 'static)) -> Response {
    if crate::store::is_unavailable(e) {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database cannot save changes right now; nothing was changed, try again later",
        );
    }
    tracing::error!(error = %e, "a console request failed");
    plain(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error; the daemon log has details",
    )
}

/// A signed-in visitor of a page.
pub struct Visitor {
    pub session: Session,
    pub nav: Nav,
}

/// Headers of every console answer.
pub fn secure(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn style() -> Response {
    secure(([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response())
}

/// The one script: passkeys for the account page and the login page.
const PASSKEYS_JS: &str = include_str!("../../../assets/console/passkeys.js");

async fn passkeys_script() -> Response {
    secure(
        (
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            PASSKEYS_JS,
        )
            .into_response(),
    )
}

/// A rendered template with `status`; a template that fails to render is a 500 page.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => secure(
            (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                html,
            )
                .into_response(),
        ),
        Err(e) => {
            tracing::error!(error = %e, "rendering a console page failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; the daemon log has details",
            )
        }
    }
}

/// A page without the layout (no session to show one for).
pub fn plain(status: StatusCode, text: &'static str) -> Response {
    secure(
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text,
        )
            .into_response(),
    )
}

/// `303 See Other` to `to`, a path of ours.
pub fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure(r)
}

/// The token the forms of session `sid` carry.
async fn csrf_token(app: &App, sid: &str) -> Result<String, Response> {
    let key = crate::auth::mfa::email_key(&app.vault).await.map_err(|e| {
        tracing::error!(error = %e, "reading the form key failed");
        plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; the daemon log has details",
        )
    })?;
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
        return Err(plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error"));
    };
    mac.update(b"csrf\0");
    mac.update(sid.as_bytes());
    Ok(mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The visitor of `path`, or the answer to give instead: to `/login` without a session, 403
/// below `least`.
pub async fn visitor(
    app: &App,
    headers: &HeaderMap,
    path: &'static str,
    least: Role,
) -> Result<Visitor, Response> {
    let Ok(session) = super::auth_api::authenticate(app, headers).await else {
        return Err(see_other(&format!("/login?next={path}")));
    };
    if !least.allows(session.level) {
        return Err(plain(
            StatusCode::FORBIDDEN,
            "forbidden: this page is for admins",
        ));
    }
    let csrf = csrf_token(app, &session.id).await?;
    let nav = Nav {
        user: session.user.to_string(),
        role: Role::of_level(session.level).map_or("agent", Role::name),
        admin: Role::Admin.allows(session.level),
        csrf,
        notice: None,
        error: None,
    };
    Ok(Visitor { session, nav })
}

/// As [`visitor`], for a form: the form's token must be the session's, or nothing is done.
pub async fn form_visitor(
    app: &App,
    headers: &HeaderMap,
    path: &'static str,
    least: Role,
    token: &str,
) -> Result<Visitor, Response> {
    let v = visitor(app, headers, path, least).await?;
    let ok = !token.is_empty() && bool::from(token.as_bytes().ct_eq(v.nav.csrf.as_bytes()));
    if !ok {
        tracing::warn!(user = %v.session.user, path, "a console form without its CSRF token was refused");
        return Err(plain(
            StatusCode::FORBIDDEN,
            "forbidden: this form is not from this session (reload the page and try again)",
        ));
    }
    Ok(v)
}
