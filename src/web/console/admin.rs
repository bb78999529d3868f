//! `/admin` (level 9): the landing page, and the runtime security settings as a form.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;

use crate::app::App;
use crate::auth::roles::Role;
use crate::auth::sessions::Notice;
use crate::clock::now_unix;
use crate::settings::ops::{self, SettingsError};
use crate::settings::{self, Settings, KEYS};

use super::{form_visitor, plain, render, see_other, visitor, Nav};

#[derive(Template)]
#[template(path = "console/admin.html")]
struct AdminPage {
    nav: Nav,
}

pub async fn page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match visitor(&app, &headers, "/admin", Role::Admin).await {
        Ok(v) => render(StatusCode::OK, &AdminPage { nav: v.nav }),
        Err(r) => r,
    }
}

/// One row of the settings form.
struct Field {
    name: &'static str,
    label: &'static str,
    value: String,
    range: String,
    switch: bool,
    bad: bool,
}

#[derive(Template)]
#[template(path = "console/settings.html")]
struct SettingsPage {
    nav: Nav,
    fields: Vec<Field>,
}

fn fields(
    now: &Settings,
    typed: Option<&HashMap<String, String>>,
    bad: Option<&str>,
) -> Vec<Field> {
    KEYS.iter()
        .map(|k| Field {
            name: k.name(),
            label: k.label(),
            value: typed
                .and_then(|t| t.get(k.name()))
                .map(|v| v.chars().take(32).collect())
                .unwrap_or_else(|| now.get(*k).text()),
            range: k.allowed(),
            switch: k.is_switch(),
            bad: bad == Some(k.name()),
        })
        .collect()
}

pub async fn settings_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let mut v = match visitor(&app, &headers, "/admin/settings", Role::Admin).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if uri.query() == Some("done=saved") {
        v.nav.notice = Some("Saved. Every node applies the settings from its next request.".into());
    }
    match ops::current(&app.store, &app.file_config()).await {
        Ok(now) => render(
            StatusCode::OK,
            &SettingsPage {
                fields: fields(&now, None, None),
                nav: v.nav,
            },
        ),
        Err(e) => {
            tracing::error!(error = %e, "reading the settings failed");
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database cannot answer right now; try again later",
            )
        }
    }
}

/// Saves the form: every value is checked, and the whole, before anything is written; a
/// refusal shows the form again as typed, with the field at fault marked.
pub async fn save_settings(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let token = form.get("csrf").map(String::as_str).unwrap_or("");
    let mut v = match form_visitor(&app, &headers, "/admin/settings", Role::Admin, token).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let file = app.file_config();
    let now = match ops::current(&app.store, &file).await {
        Ok(now) => now,
        Err(e) => {
            tracing::error!(error = %e, "reading the settings failed");
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database cannot answer right now; nothing was changed",
            );
        }
    };
    let mut changes = Vec::new();
    let mut refused = None;
    for (name, text) in form.iter().filter(|(n, _)| n.as_str() != "csrf") {
        match settings::key(name).and_then(|k| settings::parse_text(k, text).map(|v| (k, v))) {
            Ok(change) => changes.push(change),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let outcome = match refused {
        Some(e) => Err(SettingsError::Invalid(e)),
        None => {
            let notice = Notice::Daemon(&app.auth.sessions);
            let actor = format!("web:{}", v.session.user);
            ops::change(&app.store, &file, notice, &actor, &changes, now_unix()).await
        }
    };
    match outcome {
        Ok(_) => {
            app.reload_settings().await;
            see_other("/admin/settings?done=saved")
        }
        Err(SettingsError::Invalid(e)) => {
            v.nav.error = Some(format!("{}: {}", e.field, e.message));
            let bad = KEYS.iter().map(|k| k.name()).find(|n| *n == e.field);
            render(
                StatusCode::BAD_REQUEST,
                &SettingsPage {
                    fields: fields(&now, Some(&form), bad),
                    nav: v.nav,
                },
            )
        }
        Err(e) => {
            if crate::store::is_unavailable(&e) {
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database cannot save changes right now; nothing was changed",
                );
            }
            tracing::error!(error = %e, "saving the settings failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; the daemon log has details",
            )
        }
    }
}
