//! Reading and changing the runtime settings, shared by the API and the CLI.

use crate::auth::sessions::{Notice, StampError};
use crate::config::Config;
use crate::store::{SettingChange, Store, StoreError};

use super::{parse_text, Invalid, Key, Settings, Stored, Value, KEYS};

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Stamp(#[from] StampError),
}

/// The changes stored in the database. A row that no longer reads (written by a newer
/// version, or edited by hand) is skipped with a warning: the config file's value applies.
pub async fn stored(store: &Store) -> Result<Stored, StoreError> {
    let rows: Vec<&str> = KEYS.iter().map(|k| k.row()).collect();
    let mut out = Vec::new();
    for (row, text) in store.settings(&rows).await? {
        let Some(key) = KEYS.iter().copied().find(|k| k.row() == row) else {
            continue;
        };
        match parse_text(key, &text) {
            Ok(v) => out.push((key, v)),
            Err(e) => {
                tracing::warn!(setting = key.name(), error = %e.message, "a stored setting does not read; the config file's value applies")
            }
        }
    }
    Ok(Stored(out))
}

/// The settings in force under the config file `config`.
pub async fn current(store: &Store, config: &Config) -> Result<Settings, StoreError> {
    Ok(stored(store).await?.over(config))
}

/// Applies `changes` (each already parsed) on top of what is in force: checked together,
/// then every value that differs is stored with an audit row (old and new value) and the
/// other nodes are told. Nothing is written when any check fails. Returns the settings now
/// in force.
pub async fn change(
    store: &Store,
    config: &Config,
    notice: Notice<'_>,
    actor: &str,
    changes: &[(Key, Value)],
    now: i64,
) -> Result<Settings, SettingsError> {
    let before = current(store, config).await?;
    let mut after = before.clone();
    for (k, v) in changes {
        after.set(*k, *v);
    }
    if let Err(mut e) = after.check() {
        // The pair is at fault; name the one the admin sent (the lifetime alone, shortened
        // below the idle timeout in force, is the lifetime's fault).
        let sent = |k: Key| changes.iter().any(|(c, _)| *c == k);
        if !sent(Key::SessionIdleTimeout) && sent(Key::SessionMaxLifetime) {
            e = Invalid {
                field: Key::SessionMaxLifetime.name().into(),
                message: format!(
                    "must not be shorter than session_idle_timeout ({})",
                    after.get(Key::SessionIdleTimeout).text()
                ),
            };
        }
        return Err(e.into());
    }
    let rows: Vec<SettingChange<'_>> = super::KEYS
        .iter()
        .filter(|k| before.get(**k) != after.get(**k))
        .map(|k| SettingChange {
            row: k.row(),
            value: after.get(*k).text(),
            name: k.name(),
            detail: format!("{} -> {}", before.get(*k).text(), after.get(*k).text()),
        })
        .collect();
    if rows.is_empty() {
        return Ok(after);
    }
    store.change_settings(&rows, actor, now).await?;
    // Sessions are cached with the idle timeout they were checked under; the login history
    // and the pages read the rest afresh.
    notice.sessions_ended(store).await?;
    Ok(after)
}
