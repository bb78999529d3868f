//! Accounts as admins manage them: adding users, their level, state, password and SIP
//! extension. Every change is audited; a change that ends sessions is made known (see
//! [`Notice`]) so that it applies from the very next request.

use serde::Serialize;
use zeroize::Zeroizing;

use crate::clock::{now_unix, rfc3339};
use crate::store::{ExtensionSet, Store, StoreError};

use super::login::validate_username;
use super::password::{self, PasswordError};
use super::roles::Role;
use super::sessions::{Notice, StampError};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// Input the admin can correct (a name, an address, an extension, a level).
    #[error("{0}")]
    Invalid(String),
    #[error("user {0:?} already exists")]
    Exists(String),
    #[error("user {0:?} does not exist")]
    NoSuchUser(String),
    #[error("extension {ext:?} already belongs to {owner}")]
    ExtensionTaken { ext: String, owner: String },
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Stamp(#[from] StampError),
}

fn check_name(name: &str) -> Result<(), UserError> {
    validate_username(name).map_err(|e| UserError::Invalid(e.to_string()))
}

fn check_level(level: u8) -> Result<(), UserError> {
    Role::of_level(level)
        .map(|_| ())
        .ok_or_else(|| UserError::Invalid(format!("level {level} is not between 1 and 9")))
}

/// An address codes can be mailed to (a sanity check, not RFC 5322).
pub fn check_email(email: &str) -> Result<(), UserError> {
    let ok = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if ok {
        Ok(())
    } else {
        Err(UserError::Invalid(format!(
            "{email:?} is not an email address"
        )))
    }
}

/// An extension is the user part of a SIP URI: kept to characters that need no escaping.
pub fn check_extension(ext: &str) -> Result<(), UserError> {
    let ok = !ext.is_empty()
        && ext.len() <= 32
        && ext
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(UserError::Invalid(format!(
            "extension {ext:?} must be 1-32 letters, digits, '_', '.', '-' or '+'"
        )))
    }
}

/// A new password of the user `name` as typed: checked against the rules in force.
pub fn check_password(
    text: &str,
    name: &str,
    rules: password::Rules,
) -> Result<Zeroizing<String>, UserError> {
    password::check_policy(text, name, rules).map_err(|e| UserError::Invalid(e.to_string()))?;
    Ok(Zeroizing::new(text.to_string()))
}

/// A user to add.
#[derive(Debug, Clone, Copy)]
pub struct NewUser<'a> {
    pub name: &'a str,
    /// 1-4 agent, 5-6 supervisor, 7-8 manager, 9 admin.
    pub level: u8,
    pub email: Option<&'a str>,
    /// The SIP extension of the user's browser softphone.
    pub extension: Option<&'a str>,
}

impl NewUser<'_> {
    /// Everything about the user that can be checked before the password is asked for.
    pub fn check(&self) -> Result<(), UserError> {
        check_name(self.name)?;
        check_level(self.level)?;
        if let Some(e) = self.email {
            check_email(e)?;
        }
        if let Some(ext) = self.extension {
            check_extension(ext)?;
        }
        Ok(())
    }
}

/// Adds a user (audited as `user.add`).
pub async fn add(
    store: &Store,
    actor: &str,
    user: NewUser<'_>,
    password: &Zeroizing<String>,
) -> Result<(), UserError> {
    let hash = password::hash_now(password.as_bytes())?;
    add_hashed(store, actor, user, &hash).await
}

/// Adds a user whose password is already hashed (the daemon hashes on its bounded pool).
pub async fn add_hashed(
    store: &Store,
    actor: &str,
    user: NewUser<'_>,
    hash: &str,
) -> Result<(), UserError> {
    user.check()?;
    if !store
        .insert_user(user.name, user.level, user.email, hash)
        .await?
    {
        return Err(UserError::Exists(user.name.to_string()));
    }
    if let Some(ext) = user.extension {
        bind_extension(store, user.name, Some(ext)).await?;
    }
    let detail = format!("level {}", user.level);
    store.audit(actor, "user.add", user.name, &detail).await?;
    Ok(())
}

/// A user as `user list` shows it (never the password hash).
#[derive(Debug, Serialize)]
pub struct UserView {
    pub name: String,
    pub level: u8,
    pub role: &'static str,
    pub email: Option<String>,
    /// The SIP extension of the user's browser softphone.
    pub extension: Option<String>,
    pub disabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

/// Every user.
pub async fn list(store: &Store) -> Result<Vec<UserView>, StoreError> {
    let extensions: std::collections::HashMap<String, String> =
        store.user_extensions().await?.into_iter().collect();
    Ok(store
        .users()
        .await?
        .into_iter()
        .map(|u| UserView {
            extension: extensions.get(&u.name).cloned(),
            role: Role::of_level(u.level).map(Role::name).unwrap_or("agent"),
            name: u.name,
            level: u.level,
            email: u.email,
            disabled: u.disabled,
            created_at: rfc3339(u.created_at),
            updated_at: rfc3339(u.updated_at),
        })
        .collect())
}

fn changed(result: Option<u64>, name: &str) -> Result<u64, UserError> {
    result.ok_or_else(|| UserError::NoSuchUser(name.to_string()))
}

/// Changes a user's level and ends the user's sessions (audited as `user.set-level`); the
/// number of sessions ended.
pub async fn set_level(
    store: &Store,
    notice: Notice<'_>,
    actor: &str,
    name: &str,
    level: u8,
) -> Result<u64, UserError> {
    check_level(level)?;
    let ended = changed(store.set_user_level(name, level).await?, name)?;
    // Committed: audited even when telling the daemon failed.
    let told = notice.sessions_ended(store).await;
    let detail = format!("level {level}");
    store.audit(actor, "user.set-level", name, &detail).await?;
    told?;
    Ok(ended)
}

/// Disables a user and ends the user's sessions (`user.disable`), or enables a disabled user
/// (`user.enable`); the number of sessions ended.
pub async fn set_disabled(
    store: &Store,
    notice: Notice<'_>,
    actor: &str,
    name: &str,
    disabled: bool,
) -> Result<u64, UserError> {
    let ended = changed(store.set_user_disabled(name, disabled).await?, name)?;
    let (action, told) = if disabled {
        ("user.disable", notice.sessions_ended(store).await)
    } else {
        ("user.enable", Ok(()))
    };
    store.audit(actor, action, name, "").await?;
    told?;
    Ok(ended)
}

/// Sets a new password and ends the user's sessions (audited as `user.passwd`); the number of
/// sessions ended.
pub async fn set_password(
    store: &Store,
    notice: Notice<'_>,
    actor: &str,
    name: &str,
    password: &Zeroizing<String>,
) -> Result<u64, UserError> {
    let hash = password::hash_now(password.as_bytes())?;
    set_password_hash(store, notice, actor, name, &hash).await
}

/// Stores a password already hashed (the daemon hashes on its bounded pool), ending the
/// user's sessions; audited as `user.passwd`. The sessions ended.
pub async fn set_password_hash(
    store: &Store,
    notice: Notice<'_>,
    actor: &str,
    name: &str,
    hash: &str,
) -> Result<u64, UserError> {
    let ended = changed(store.set_user_password(name, hash).await?, name)?;
    let told = notice.sessions_ended(store).await;
    store.audit(actor, "user.passwd", name, "").await?;
    told?;
    Ok(ended)
}

async fn bind_extension(store: &Store, name: &str, ext: Option<&str>) -> Result<(), UserError> {
    match store.set_user_extension(name, ext, now_unix()).await? {
        ExtensionSet::Done => Ok(()),
        ExtensionSet::NoSuchUser => Err(UserError::NoSuchUser(name.to_string())),
        ExtensionSet::Taken(owner) => Err(UserError::ExtensionTaken {
            ext: ext.unwrap_or_default().to_string(),
            owner,
        }),
    }
}

/// Binds the SIP extension a user's browser softphone may use (`None` removes it); audited as
/// `user.set-extension`.
pub async fn set_extension(
    store: &Store,
    actor: &str,
    name: &str,
    ext: Option<&str>,
) -> Result<(), UserError> {
    if let Some(ext) = ext {
        check_extension(ext)?;
    }
    bind_extension(store, name, ext).await?;
    let detail = ext.unwrap_or("(none)");
    store
        .audit(actor, "user.set-extension", name, detail)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_users_are_checked_before_anything_is_stored() {
        let ok = NewUser {
            name: "alice",
            level: 5,
            email: Some("alice@example.com"),
            extension: Some("1001"),
        };
        assert!(ok.check().is_ok());
        for bad in [
            NewUser {
                name: "Alice",
                ..ok
            },
            NewUser { level: 0, ..ok },
            NewUser { level: 10, ..ok },
            NewUser {
                email: Some("not-an-email"),
                ..ok
            },
            NewUser {
                email: Some("a@b@example.com"),
                ..ok
            },
            NewUser {
                extension: Some("10 01"),
                ..ok
            },
            NewUser {
                extension: Some(""),
                ..ok
            },
        ] {
            assert!(matches!(bad.check(), Err(UserError::Invalid(_))), "{bad:?}");
        }
        assert!(check_extension(&"1".repeat(33)).is_err());
        assert!(check_extension("+49.30_1-2").is_ok());
    }
}
