//! Recovery codes as a second factor: the first set when a user confirms a second factor,
//! regeneration with the current password (which voids the old set), and the use of a code to
//! finish a login, which is audited and mailed to the user.

use zeroize::Zeroizing;

use crate::auth::login::{self, Client, PasswordStep, Refusal};
use crate::auth::recovery;
use crate::clock::{now_unix, rfc3339};
use crate::store::{Store, StoreError, UserRow};

use crate::vault::{Vault, VaultError};

use super::{Mfa, MfaError};

/// The vault key recovery codes are hashed under: one fixed name (created once, by whichever
/// node comes first), never rotated, since a new key would void every stored set.
pub const KEY_NAME: &str = "keys/recovery-codes";

async fn key(vault: &Vault) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    vault.generate_if_absent(KEY_NAME, 32).await?;
    vault.get(KEY_NAME).await
}

/// `(codes in the user's set, codes left)`.
pub async fn count(store: &Store, user_id: i64) -> Result<(i64, i64), StoreError> {
    store.recovery_codes(user_id).await
}

impl Mfa<'_> {
    /// The stored form of a typed code of `user` (checked for shape by the caller).
    pub(super) async fn recovery_hash(
        &self,
        user: &UserRow,
        typed: &str,
    ) -> Result<String, MfaError> {
        let code = recovery::normalize(typed).ok_or(MfaError::BadRecoveryCode)?;
        let key = key(self.vault).await?;
        Ok(recovery::keyed_hash(&key, user.id, &code))
    }

    /// Stores a fresh set for `user` in place of any old one; the codes to show, once.
    async fn new_set(&self, user: &UserRow, now: i64) -> Result<Vec<Zeroizing<String>>, MfaError> {
        let key = key(self.vault).await?;
        let codes = recovery::new_set();
        let hashes: Vec<String> = codes
            .iter()
            .map(|c| {
                let canonical = recovery::normalize(c).unwrap_or_default();
                recovery::keyed_hash(&key, user.id, &canonical)
            })
            .collect();
        self.gate
            .store
            .replace_recovery_codes(user.id, &hashes, now)
            .await?;
        Ok(codes)
    }

    /// The first set, when a user has confirmed a second factor and holds no set yet. The
    /// factor stands either way: a failure here is logged and shows no codes, and the user
    /// makes a set from the account page (nothing was stored, so nothing is lost).
    pub(super) async fn first_recovery_codes(
        &self,
        user: &UserRow,
        now: i64,
    ) -> Option<Vec<Zeroizing<String>>> {
        let made = async {
            if count(self.gate.store, user.id).await?.0 > 0 {
                return Ok(None);
            }
            let codes = self.new_set(user, now).await?;
            self.gate
                .store
                .audit(&user.name, "mfa.recovery.issue", &user.name, "10 codes")
                .await?;
            Ok::<_, MfaError>(Some(codes))
        };
        match made.await {
            Ok(codes) => codes,
            Err(e) => {
                tracing::error!(error = %e, user = %user.name, "making the first recovery codes failed; the user can make them from the account page");
                None
            }
        }
    }

    /// A new set for the user named `name` after checking `password` (throttled and recorded
    /// like a login's password step); the old set is void. Audited as
    /// `mfa.recovery.regenerate`.
    pub async fn regenerate_recovery_codes(
        &self,
        name: &str,
        password: Zeroizing<String>,
        client: &Client,
        now: i64,
    ) -> Result<Vec<Zeroizing<String>>, MfaError> {
        let user = self.own_password(name, password, client).await?;
        let store = self.gate.store;
        if store.totp(user.id).await?.is_none() && store.passkeys(user.id).await?.is_empty() {
            return Err(MfaError::NoSecondFactor);
        }
        let codes = self.new_set(&user, now).await?;
        self.gate
            .store
            .audit(
                &user.name,
                "mfa.recovery.regenerate",
                &user.name,
                "10 codes",
            )
            .await?;
        tracing::info!(user = %user.name, "recovery codes regenerated");
        self.tell_user(
            &user,
            "new recovery codes were made",
            format!(
                "New recovery codes were made for {name} from {ip} at {at}; the old ones no \
                 longer work.\n\n\
                 If this was not you, someone has your password and a signed-in session: tell \
                 your administrator at once.\n",
                name = user.name,
                ip = client.ip,
                at = rfc3339(now_unix()),
            ),
        );
        Ok(codes)
    }

    /// The signed-in user `name`, once `password` is checked (throttled and recorded like a
    /// login's password step).
    pub(super) async fn own_password(
        &self,
        name: &str,
        password: Zeroizing<String>,
        client: &Client,
    ) -> Result<UserRow, MfaError> {
        match login::check_password(self.gate, name, password, client).await? {
            PasswordStep::Verified(user) => Ok(user),
            PasswordStep::Refused(Refusal::Throttled { retry_after }) => {
                Err(MfaError::Throttled { retry_after })
            }
            PasswordStep::Refused(Refusal::InvalidCredentials) => Err(MfaError::WrongPassword),
            PasswordStep::Refused(Refusal::Disabled) => Err(MfaError::NoSession),
        }
    }

    /// Mails `text` to the user, in the background (a failure is logged; the step stands).
    pub(super) fn tell_user(&self, user: &UserRow, what: &str, text: String) {
        let Some(address) = user.email.clone().filter(|e| !e.is_empty()) else {
            return;
        };
        let subject = format!("{}: {what}", self.cfg.totp_issuer);
        let (smtp, vault, name) = (self.smtp.clone(), self.vault.clone(), user.name.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::mail::send(&smtp, &vault, &address, &subject, text).await {
                tracing::error!(error = %e, user = %name, "mailing a second-factor notice failed");
            }
        });
    }

    /// After a login finished with a recovery code: the audit row, and a mail to the user
    /// (sent in the background; a failure is logged, the login stands).
    pub(super) async fn recovery_used(&self, user: &UserRow, client: &Client) {
        let left = match count(self.gate.store, user.id).await {
            Ok((_, left)) => left,
            Err(e) => {
                tracing::error!(error = %e, "counting recovery codes failed");
                -1
            }
        };
        let detail = format!("{left} left, from {}", client.ip);
        if let Err(e) = self
            .gate
            .store
            .audit(&user.name, "mfa.recovery.use", &user.name, &detail)
            .await
        {
            tracing::error!(error = %e, "auditing a recovery code's use failed");
        }
        tracing::warn!(user = %user.name, left, "a login was finished with a recovery code");
        let issuer = &self.cfg.totp_issuer;
        let text = format!(
            "A recovery code was used to log in to {issuer} as {name} from {ip} at {at}.\n\
             {left} recovery codes are left; each works once. Regenerate them from your account \
             page when few are left.\n\n\
             If this was not you, someone has your password and a recovery code: tell your \
             administrator at once.\n",
            name = user.name,
            ip = client.ip,
            at = rfc3339(now_unix()),
        );
        self.tell_user(user, "a recovery code was used", text);
    }
}
