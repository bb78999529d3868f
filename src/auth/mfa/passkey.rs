//! Passkeys (WebAuthn, through `webauthn-rs`): registration by a signed-in user (with the
//! current password), a passkey as the second factor of a login, and — per user opt-in — as
//! the only factor. User verification (PIN or biometrics on the authenticator) is required
//! every time, so a passkey alone stands for two factors.
//!
//! The relying party is `[http] public_url`: its host is the RP id and its origin the only
//! origin accepted. Ceremony states live in the database (any node may finish what another
//! started) and are single use. A signature counter that does not move forward is refused
//! and audited as a possible clone; the counter is compared with the database in the
//! session's own transaction, so two logins cannot both spend the same count.

use serde_json::Value;
use webauthn_rs::prelude::{
    Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, RequestChallengeResponse, Url, Uuid, Webauthn, WebauthnBuilder,
    WebauthnError,
};
use zeroize::Zeroizing;

use crate::auth::config::{host_within, MfaConfig};
use crate::auth::login::{self, bounded, Client, Issued, LoginError};
use crate::clock::{now_unix, rfc3339};
use crate::store::{AddRefusal, Finish, PasskeyRow, PasskeyUse, PendingRow, UserRow};

use super::{
    email_key, hash_token, live_pending, looks_like_token, new_token, user_of, Mfa, MfaError,
};

/// Passkeys one user may hold.
pub const MAX_PASSKEYS: usize = 10;
/// Longest passkey name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// How long a registration waits for the authenticator.
const REGISTRATION_TTL: i64 = 300;
/// How long a browser lets the user answer (the WebAuthn `timeout`).
const CEREMONY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The passkeys' relying party: the WebAuthn verifier and its RP id.
pub struct RelyingParty {
    webauthn: Webauthn,
    pub id: String,
}

impl std::ops::Deref for RelyingParty {
    type Target = Webauthn;

    fn deref(&self) -> &Webauthn {
        &self.webauthn
    }
}

/// The relying party of `public_url` (its host, or `[mfa] passkey_rp_id` when set and the host
/// is under it), or why there is none.
pub fn relying_party(public_url: Option<&str>, cfg: &MfaConfig) -> Result<RelyingParty, MfaError> {
    let url = public_url
        .and_then(|u| Url::parse(u).ok())
        .ok_or(MfaError::NoRelyingParty)?;
    // Browsers refuse an IP address as an RP id.
    let host = url
        .host_str()
        .filter(|h| !h.starts_with('[') && h.parse::<std::net::IpAddr>().is_err())
        .ok_or(MfaError::NoRelyingParty)?
        .to_string();
    let rp_id = match &cfg.passkey_rp_id {
        Some(domain) if host_within(&host, domain) => domain.clone(),
        Some(domain) => {
            tracing::error!(host = %host, passkey_rp_id = %domain, "[http] public_url's host is not under [mfa] passkey_rp_id: no passkeys");
            return Err(MfaError::NoRelyingParty);
        }
        None => host,
    };
    let origin =
        Url::parse(&url.origin().ascii_serialization()).map_err(|_| MfaError::NoRelyingParty)?;
    // The other hosts' and a load balancer's origins: named one by one (checked to be under
    // the RP id when the configuration was read), never "any subdomain".
    let others: Vec<Url> = cfg
        .passkey_origins
        .iter()
        .filter_map(|o| Url::parse(o).ok())
        .collect();
    WebauthnBuilder::new(&rp_id, &origin)
        .and_then(|b| {
            let b = b.rp_name(&cfg.totp_issuer).timeout(CEREMONY_TIMEOUT);
            others
                .iter()
                .fold(b, |b, o| b.append_allowed_origin(o))
                .build()
        })
        .map(|webauthn| RelyingParty {
            webauthn,
            id: rp_id.clone(),
        })
        .map_err(|e| {
            tracing::error!(error = %e, "[http] public_url cannot be a WebAuthn relying party");
            MfaError::NoRelyingParty
        })
}

/// A passkey as its owner sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PasskeyView {
    pub id: String,
    pub name: String,
    /// The site name it works for.
    pub rp_id: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

impl From<&PasskeyRow> for PasskeyView {
    fn from(r: &PasskeyRow) -> Self {
        PasskeyView {
            id: r.id.clone(),
            name: r.name.clone(),
            rp_id: r.rp_id.clone(),
            created_at: rfc3339(r.created_at),
            last_used_at: r.last_used_at.map(rfc3339),
        }
    }
}

/// A passkey name as typed, trimmed: 1 to 64 characters, none of them control characters.
pub fn check_name(name: &str) -> Result<String, MfaError> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(MfaError::BadPasskeyName);
    }
    Ok(name.to_string())
}

/// The text form of a credential id, as stored (base64url without padding).
fn credential_id_text(passkey: &Passkey) -> String {
    data_encoding::BASE64URL_NOPAD.encode(passkey.cred_id().as_ref())
}

/// Whether a passkey row is the one an authenticator just used.
fn is_credential(row: &PasskeyRow, id: &[u8]) -> bool {
    row.credential_id == data_encoding::BASE64URL_NOPAD.encode(id)
}

fn parse_json<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, MfaError> {
    serde_json::from_value(v.clone()).map_err(|_| MfaError::BadCredential)
}

/// A login's passkey challenge, ready for the pending row and the answer.
pub struct Challenge {
    pub state: String,
    pub options: Value,
}

/// Starts the passkey part of a login for `keys` (the user's passkeys), or `None` when there
/// is nothing to start: no passkeys, none made for this relying party (another host's name),
/// or no relying party (logged).
pub fn login_challenge(
    rp: Option<&RelyingParty>,
    keys: &[PasskeyRow],
) -> Result<Option<Challenge>, MfaError> {
    if keys.is_empty() {
        return Ok(None);
    }
    let Some(rp) = rp else {
        tracing::error!("a user with passkeys logs in, but [http] public_url is no WebAuthn relying party: the passkeys cannot be offered");
        return Ok(None);
    };
    let passkeys: Vec<Passkey> = keys
        .iter()
        .filter(|k| k.rp_id == rp.id)
        .filter_map(|k| serde_json::from_str(&k.credential).ok())
        .collect();
    if passkeys.is_empty() {
        return Ok(None);
    }
    let (rcr, state) = rp
        .start_passkey_authentication(&passkeys)
        .map_err(|e| MfaError::Webauthn(e.to_string()))?;
    Ok(Some(Challenge {
        state: serde_json::to_string(&state).map_err(|e| MfaError::Webauthn(e.to_string()))?,
        options: options_json(&rcr)?,
    }))
}

/// The options a browser passes to `navigator.credentials.get`, with the transports left out
/// (so that an answer for a real user and one for an unknown name look alike; browsers then
/// simply try every transport).
fn options_json(rcr: &RequestChallengeResponse) -> Result<Value, MfaError> {
    let mut v = serde_json::to_value(rcr).map_err(|e| MfaError::Webauthn(e.to_string()))?;
    if let Some(list) = v
        .pointer_mut("/publicKey/allowCredentials")
        .and_then(Value::as_array_mut)
    {
        for c in list {
            if let Some(o) = c.as_object_mut() {
                o.remove("transports");
            }
        }
    }
    Ok(v)
}

impl Mfa<'_> {
    fn rp(&self) -> Result<RelyingParty, MfaError> {
        relying_party(self.public_url, self.cfg)
    }

    /// The relying party, or `None` (logged by [`relying_party`]) when there is none.
    pub fn relying_party(&self) -> Option<RelyingParty> {
        self.rp().ok()
    }

    /// The passkeys of the user named `name`.
    pub async fn passkeys_of(&self, name: &str) -> Result<Vec<PasskeyView>, MfaError> {
        let user = self
            .gate
            .store
            .user(name)
            .await?
            .ok_or(MfaError::NoSession)?;
        let rows = self.gate.store.passkeys(user.id).await?;
        Ok(rows.iter().map(PasskeyView::from).collect())
    }

    /// Whether the user named `name` logs in with a passkey alone.
    pub async fn passwordless_of(&self, name: &str) -> Result<bool, MfaError> {
        let user = self
            .gate
            .store
            .user(name)
            .await?
            .ok_or(MfaError::NoSession)?;
        Ok(self.gate.store.passwordless(user.id).await?)
    }

    /// Starts registering a passkey named `name` for the signed-in user `user_name`, whose
    /// current password is checked first (a stolen session must not add a way in): the
    /// registration token and the options for `navigator.credentials.create`.
    pub async fn passkey_register_start(
        &self,
        user_name: &str,
        password: Zeroizing<String>,
        name: &str,
        client: &Client,
        now: i64,
    ) -> Result<(String, Value), MfaError> {
        let name = check_name(name)?;
        let rp = self.rp()?;
        let user = self.own_password(user_name, password, client).await?;
        let store = self.gate.store;
        let existing = store.passkeys(user.id).await?;
        if existing.len() >= MAX_PASSKEYS {
            return Err(MfaError::TooManyPasskeys);
        }
        if existing.iter().any(|p| p.name == name) {
            return Err(MfaError::PasskeyNameTaken);
        }
        // One handle per user, the same for each of the user's passkeys.
        let handle = existing
            .iter()
            .find_map(|p| Uuid::parse_str(&p.user_handle).ok())
            .unwrap_or_else(Uuid::new_v4);
        let exclude = existing
            .iter()
            .filter(|p| p.rp_id == rp.id)
            .filter_map(|p| serde_json::from_str::<Passkey>(&p.credential).ok())
            .map(|p| p.cred_id().clone())
            .collect();
        let (ccr, state) = rp
            .start_passkey_registration(handle, &user.name, &user.name, Some(exclude))
            .map_err(|e| MfaError::Webauthn(e.to_string()))?;
        let token = new_token();
        let state = serde_json::to_string(&state).map_err(|e| MfaError::Webauthn(e.to_string()))?;
        store
            .put_passkey_registration(
                &hash_token(&token),
                user.id,
                &name,
                &handle.to_string(),
                &state,
                now + REGISTRATION_TTL,
            )
            .await?;
        let options = serde_json::to_value(&ccr).map_err(|e| MfaError::Webauthn(e.to_string()))?;
        Ok((token, options))
    }

    /// Finishes a registration with the authenticator's answer: the new passkey, and the
    /// user's first recovery codes when this is the user's first second factor (shown once).
    pub async fn passkey_register_finish(
        &self,
        user_name: &str,
        token: &str,
        credential: &Value,
        client: &Client,
        now: i64,
    ) -> Result<(PasskeyView, Option<Vec<Zeroizing<String>>>), MfaError> {
        let rp = self.rp()?;
        let store = self.gate.store;
        let user = store
            .user(user_name)
            .await?
            .filter(|u| !u.disabled)
            .ok_or(MfaError::NoSession)?;
        if !looks_like_token(token) {
            return Err(MfaError::InvalidRegistration);
        }
        let reg: RegisterPublicKeyCredential = parse_json(credential)?;
        let pending = store
            .take_passkey_registration(&hash_token(token), user.id, now)
            .await?
            .ok_or(MfaError::InvalidRegistration)?;
        let state: PasskeyRegistration =
            serde_json::from_str(&pending.state).map_err(|_| MfaError::InvalidRegistration)?;
        let passkey = rp.finish_passkey_registration(&reg, &state).map_err(|e| {
            tracing::warn!(user = %user.name, error = %e, "a passkey registration was refused");
            MfaError::PasskeyRejected
        })?;
        let credential =
            serde_json::to_string(&passkey).map_err(|e| MfaError::Webauthn(e.to_string()))?;
        let row = PasskeyRow {
            id: crate::ids::random_hex(16),
            user_id: user.id,
            name: pending.name,
            rp_id: rp.id.clone(),
            credential_id: credential_id_text(&passkey),
            user_handle: pending.user_handle,
            credential,
            sign_count: 0,
            created_at: now,
            last_used_at: None,
        };
        match store.add_passkey(&row).await? {
            Ok(()) => {}
            Err(AddRefusal::NameTaken) => return Err(MfaError::PasskeyNameTaken),
            Err(AddRefusal::CredentialTaken) => return Err(MfaError::PasskeyTaken),
        }
        store
            .audit(&user.name, "mfa.passkey.add", &user.name, &row.name)
            .await?;
        tracing::info!(user = %user.name, "passkey registered");
        self.tell_passkey_change(&user, &row.name, "added to", client);
        let codes = self.first_recovery_codes(&user, now).await;
        Ok((PasskeyView::from(&row), codes))
    }

    /// Mails the user that a passkey was `what` ("added to", "removed from") the account.
    fn tell_passkey_change(&self, user: &UserRow, key: &str, what: &str, client: &Client) {
        let verb = what.split(' ').next().unwrap_or(what);
        self.tell_user(
            user,
            &format!("a passkey was {verb}"),
            format!(
                "The passkey named \"{key}\" was {what} {name} from {ip} at {at}.\n\n\
                 If this was not you, someone has your password and a signed-in session: tell \
                 your administrator at once.\n",
                name = user.name,
                ip = client.ip,
                at = rfc3339(now_unix()),
            ),
        );
    }

    /// Removes one of the signed-in user's passkeys, with the current password.
    pub async fn passkey_remove(
        &self,
        user_name: &str,
        password: Zeroizing<String>,
        id: &str,
        client: &Client,
    ) -> Result<(), MfaError> {
        let user = self.own_password(user_name, password, client).await?;
        let store = self.gate.store;
        let Some(row) = store
            .passkeys(user.id)
            .await?
            .into_iter()
            .find(|p| p.id == id)
        else {
            return Err(MfaError::NoSuchPasskey);
        };
        if !store.remove_passkey(user.id, &row.id).await? {
            return Err(MfaError::NoSuchPasskey);
        }
        store
            .audit(&user.name, "mfa.passkey.remove", &user.name, &row.name)
            .await?;
        tracing::info!(user = %user.name, "passkey removed");
        self.tell_passkey_change(&user, &row.name, "removed from", client);
        Ok(())
    }

    /// Turns the signed-in user's passwordless login on (with the current password, and only
    /// with a passkey) or off; whether it is on now.
    pub async fn set_passwordless(
        &self,
        user_name: &str,
        on: bool,
        password: Option<Zeroizing<String>>,
        client: &Client,
        now: i64,
    ) -> Result<bool, MfaError> {
        let store = self.gate.store;
        let user = if on {
            let password = password.ok_or(MfaError::WrongPassword)?;
            self.own_password(user_name, password, client).await?
        } else {
            store.user(user_name).await?.ok_or(MfaError::NoSession)?
        };
        if on && store.passkeys(user.id).await?.is_empty() {
            return Err(MfaError::NoPasskey);
        }
        let now_on = store.set_passwordless(user.id, on, now).await?;
        let action = if now_on {
            "mfa.passwordless.on"
        } else {
            "mfa.passwordless.off"
        };
        store.audit(&user.name, action, &user.name, "").await?;
        Ok(now_on)
    }

    /// Starts a passwordless login for the typed name: a token and the options for
    /// `navigator.credentials.get`. A name that is unknown, disabled or not opted in gets an
    /// answer of the same shape, with a credential id derived from the name, that no
    /// authenticator holds (the answer does not tell who may log in this way).
    pub async fn passwordless_start(
        &self,
        typed: &str,
        client: &Client,
        now: i64,
    ) -> Result<(String, Value), MfaError> {
        let rp = self.rp()?;
        let gate = self.gate;
        if let Some(left) = client
            .ip
            .parse::<std::net::IpAddr>()
            .ok()
            .and_then(|ip| gate.bans.banned(ip))
        {
            return Err(MfaError::Throttled {
                retry_after: left.max(1) as u64,
            });
        }
        let account = typed.replace('\0', "\u{FFFD}").to_ascii_lowercase();
        // The password step's lockout, by the typed name and the address, for every name
        // alike (a locked name answers 429 whether it exists or not).
        match gate
            .auth
            .pending
            .admit(gate.store, gate.cfg, &account, &client.ip, now)
            .await?
        {
            Ok(ticket) => gate.auth.pending.release(ticket).await,
            Err(retry_after) => return Err(MfaError::Throttled { retry_after }),
        }
        let store = gate.store;
        let user = store.user(&account).await?.filter(|u| !u.disabled);
        if let Some(user) = user {
            if store.passwordless(user.id).await? {
                let keys = store.passkeys(user.id).await?;
                if let Some(ch) = login_challenge(Some(&rp), &keys)? {
                    let token = new_token();
                    let row = PendingRow {
                        token_hash: hash_token(&token),
                        attempt: crate::ids::random_hex(16),
                        kind: "mfa".to_string(),
                        user_id: user.id,
                        password_hash: user.password_hash.clone(),
                        methods: "webauthn".to_string(),
                        ip: client.ip.clone(),
                        user_agent: bounded(&client.user_agent, 256),
                        created_at: now,
                        expires_at: now
                            + i64::try_from(self.cfg.mfa_token_ttl.as_secs()).unwrap_or(300),
                        failures: 0,
                        used_at: None,
                        email_code_hash: None,
                        email_sent_at: None,
                        email_code_failures: 0,
                        emails_sent: 0,
                        webauthn_state: Some(ch.state),
                    };
                    store.insert_pending(&[row]).await?;
                    return Ok((token, ch.options));
                }
            }
        }
        Ok((new_token(), self.decoy_options(&rp, &account).await?))
    }

    /// Options shaped like a real login's, for a name that may not log in without a password.
    async fn decoy_options(&self, rp: &RelyingParty, account: &str) -> Result<Value, MfaError> {
        use hmac::{Hmac, Mac};
        let key = email_key(self.vault).await?;
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key)
            .map_err(|e| MfaError::Webauthn(e.to_string()))?;
        mac.update(b"passkey decoy\0");
        mac.update(account.as_bytes());
        let id = data_encoding::BASE64URL_NOPAD.encode(&mac.finalize().into_bytes());
        let mut challenge = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut challenge);
        Ok(serde_json::json!({
            "publicKey": {
                "challenge": data_encoding::BASE64URL_NOPAD.encode(&challenge),
                "timeout": CEREMONY_TIMEOUT.as_millis() as u64,
                "rpId": rp.id,
                "allowCredentials": [{ "type": "public-key", "id": id }],
                "userVerification": "required",
            }
        }))
    }

    /// Finishes a login (with a password before it, or passwordless) with a passkey's
    /// assertion. Every refusal answers the same `InvalidCode`, whether the token was never
    /// issued, expired or the assertion failed; the last counts towards the lockout.
    pub async fn finish_passkey(
        &self,
        token: &str,
        credential: &Value,
        client: &Client,
        now: i64,
    ) -> Result<Issued, MfaError> {
        let assertion: PublicKeyCredential = parse_json(credential)?;
        let row = match live_pending(self.gate.store, self.cfg, token, "mfa", now).await? {
            Some(row) if row.methods.split(',').any(|m| m == "webauthn") => row,
            Some(row) => {
                return Err(MfaError::MethodNotAllowed {
                    methods: row.methods,
                })
            }
            None => return Err(MfaError::InvalidCode),
        };
        let user = user_of(self.gate.store, &row)
            .await?
            .ok_or(MfaError::InvalidCode)?;
        let ticket = self.admit(&user, client, now).await?;
        let result = match self.claim(&row, now).await {
            Ok(()) => self.check_passkey(&row, &user, client, &assertion).await,
            Err(_) => Err(MfaError::InvalidCode),
        };
        self.gate.auth.pending.release(ticket).await;
        result
    }

    async fn check_passkey(
        &self,
        row: &PendingRow,
        user: &UserRow,
        client: &Client,
        assertion: &PublicKeyCredential,
    ) -> Result<Issued, MfaError> {
        let rp = self.rp()?;
        let state: PasskeyAuthentication = row
            .webauthn_state
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or(MfaError::InvalidCode)?;
        let result = match rp.finish_passkey_authentication(assertion, &state) {
            Ok(r) => r,
            Err(WebauthnError::CredentialPossibleCompromise) => {
                self.possible_clone(user, client, "the counter went back")
                    .await;
                return Err(MfaError::PasskeyCloned);
            }
            Err(e) => {
                tracing::info!(user = %user.name, error = %e, "a passkey assertion was refused");
                self.wrong_code(None, user, client).await;
                return Err(MfaError::InvalidCode);
            }
        };
        // The database, not the challenge's copy, says which passkeys still exist and what
        // their counters are: one removed since, or one another login moved on, is refused.
        let keys = self.gate.store.passkeys(user.id).await?;
        let Some(key) = keys
            .iter()
            .find(|k| is_credential(k, result.cred_id().as_ref()))
        else {
            tracing::info!(user = %user.name, "a login used a passkey that was removed");
            self.wrong_code(None, user, client).await;
            return Err(MfaError::InvalidCode);
        };
        let count = i64::from(result.counter());
        if (count > 0 || key.sign_count > 0) && count <= key.sign_count {
            self.possible_clone(user, client, &key.name).await;
            return Err(MfaError::PasskeyCloned);
        }
        let mut passkey: Passkey =
            serde_json::from_str(&key.credential).map_err(|e| MfaError::Webauthn(e.to_string()))?;
        passkey.update_credential(&result);
        let credential =
            serde_json::to_string(&passkey).map_err(|e| MfaError::Webauthn(e.to_string()))?;
        let finish = Finish {
            attempt: &row.attempt,
            totp_step: None,
            recovery: None,
            passkey: Some(PasskeyUse {
                id: &key.id,
                user_id: user.id,
                credential: &credential,
                sign_count: count,
            }),
        };
        match login::issue_session_after_mfa(self.gate, user, client, &finish).await {
            Ok(issued) => Ok(issued),
            // Another request finished this login first, or spent this count (a replay).
            Err(LoginError::UserChanged) => Err(MfaError::InvalidCode),
            Err(e) => Err(e.into()),
        }
    }

    /// A counter that did not move forward: the login is refused, audited as
    /// `mfa.passkey.clone`, counted like a wrong code and mailed to the user.
    async fn possible_clone(&self, user: &UserRow, client: &Client, what: &str) {
        tracing::warn!(user = %user.name, ip = %client.ip, "a passkey's signature counter did not move forward: possibly a cloned authenticator; login refused");
        let detail = format!("{what}, from {}", client.ip);
        if let Err(e) = self
            .gate
            .store
            .audit(&user.name, "mfa.passkey.clone", &user.name, &detail)
            .await
        {
            tracing::error!(error = %e, "auditing a possible passkey clone failed");
        }
        self.wrong_code(None, user, client).await;
        self.tell_user(
            user,
            "a passkey login was refused",
            format!(
                "A login to {name} from {ip} at {at} was refused: the passkey's signature counter \
                 went back, which is what a copied authenticator does.\n\n\
                 If you did not just log in, tell your administrator at once.\n",
                name = user.name,
                ip = client.ip,
                at = rfc3339(now_unix()),
            ),
        );
    }
}
