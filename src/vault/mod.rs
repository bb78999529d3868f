//! The secret vault: SIP, SMTP and AMI passwords, API keys and signing keys, stored only as
//! AES-256-GCM ciphertext.
//!
//! Two levels of keys. The **master key** (32 bytes) comes from systemd
//! (`$CREDENTIALS_DIRECTORY/master.key`, from `LoadCredentialEncrypted=`) or from
//! `[vault] key_file`; it never touches the database. It wraps **data keys** (table
//! `vault_keys`, one per generation, named `k1`, `k2`, …), and the current data key encrypts
//! secrets. `rotate-key` makes a new generation and re-encrypts every secret under it in one
//! transaction that also deletes the old key, so a stolen database copy made before a rotation
//! stops matching the live keys.
//!
//! Every ciphertext is bound by AES-GCM's associated data to its secret name and key id: a
//! ciphertext copied onto another row, or relabelled with another key id, fails to decrypt.
//!
//! [`admin`] is the vault as admins use it by name, with an audit row for every use.

pub mod admin;

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::clock::now_unix;
use crate::store::{KeyRow, SecretRow, Store, StoreError};

/// Length of the master key and of every data key.
pub const KEY_LEN: usize = 32;
/// AES-GCM standard nonce length; random per encryption (2^-32 collision bound is far beyond
/// the few thousand encryptions a PBX vault sees over its life).
pub const NONCE_LEN: usize = 12;
/// Largest secret value accepted; certificates and API tokens fit, database dumps do not.
pub const MAX_SECRET_LEN: usize = 64 * 1024;
/// Longest secret name.
pub const MAX_NAME_LEN: usize = 128;
/// Name of the systemd credential that carries the master key.
pub const CREDENTIAL_NAME: &str = "master.key";

const SECRET_AAD: &[u8] = b"pbxguard/secret/v1";
const DATA_KEY_AAD: &[u8] = b"pbxguard/data-key/v1";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("master key file {0} does not exist (run `pbxguard init`, or pass the systemd credential {CREDENTIAL_NAME})")]
    KeyMissing(PathBuf),
    #[error("cannot read master key file {path}: {source}")]
    KeyRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("master key file {path} has mode {mode:04o}; it must be 0600 or stricter (chmod 600 {path})")]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("master key file {path} is owned by uid {owner}, not by the user running pbxguard (uid {me}); chown it")]
    KeyOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("cannot decrypt the master key credential {path} with systemd-creds (run as root on the host that encrypted it): {detail}")]
    CredentialDecrypt { path: PathBuf, detail: String },
    #[error("master key file {0} does not hold a 32-byte key (raw 32 bytes, 64 hex digits or base64 are accepted)")]
    KeyFormat(PathBuf),
    #[error("secret name {0}")]
    BadName(&'static str),
    #[error("secret {0:?} does not exist")]
    NotFound(String),
    #[error("secret value is larger than {MAX_SECRET_LEN} bytes")]
    TooLarge,
    #[error("secret {name:?} cannot be decrypted: its ciphertext was altered, truncated or moved from another row")]
    Decrypt { name: String },
    #[error("secret {name:?} names data key {key_id:?}, which the vault does not have")]
    UnknownKey { name: String, key_id: String },
    #[error("data key {0:?} cannot be unwrapped: the master key is not the one this database was created with")]
    WrongMasterKey(String),
    #[error("the vault's keys kept changing during the write (concurrent rotations); try again")]
    Busy,
    #[error("the new master key is the current one; generate a different key")]
    SameMasterKey,
    #[error("the vault has no data key yet (run `pbxguard init`)")]
    NotInitialised,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Secret names: 1-128 of `A-Z a-z 0-9 . _ - /`, no leading or trailing `/`, no `//`, no `.`/`..`
/// segment. Names show up in logs, audit rows and config keys, so they stay plain.
pub fn validate_name(name: &str) -> Result<(), VaultError> {
    if name.is_empty() {
        return Err(VaultError::BadName("must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(VaultError::BadName("is longer than 128 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
    {
        return Err(VaultError::BadName("may only contain A-Z a-z 0-9 . _ - /"));
    }
    if name
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(VaultError::BadName(
            "must not have empty, '.' or '..' path segments",
        ));
    }
    Ok(())
}

/// Name prefixes pbxguard manages itself; a secret the configuration names there would be
/// overwritten or deleted (a SIP credential `set`, a key rotation, a 2FA reset).
const RESERVED_PREFIXES: &[&str] = &["sip/", "keys/", "mfa/", "ami/clients/"];

/// A secret name the configuration points at: valid, and outside the prefixes pbxguard manages
/// itself. The error says which rule it breaks, for the config problem of its key.
pub fn check_configured_name(name: &str) -> Result<(), String> {
    validate_name(name).map_err(|e| e.to_string())?;
    match RESERVED_PREFIXES.iter().find(|p| name.starts_with(*p)) {
        Some(p) => Err(format!(
            "{name:?} is under {p}, which pbxguard manages itself; choose another name"
        )),
        None => Ok(()),
    }
}

/// Length of generated HMAC signing keys: 256 bits (HS256 and HMAC-SHA256 links want at least
/// the hash length).
pub const SIGNING_KEY_LEN: usize = 32;

/// A 32-byte key that is wiped from memory when dropped.
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    pub fn random() -> Key {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(k.as_mut_slice());
        Key(k)
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Key> {
        let arr: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(Key(Zeroizing::new(arr)))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.0.as_ref().into())
    }
}

/// The encrypted form of `key_file` that the Debian package leaves in its place
/// (`/etc/pbxguard/master.key.cred`, made by `systemd-creds encrypt --name=master.key`).
pub fn encrypted_key_file(key_file: &Path) -> PathBuf {
    let mut name = key_file.as_os_str().to_os_string();
    name.push(".cred");
    PathBuf::from(name)
}

/// Where the master key comes from: the systemd credential when present, else the key file,
/// else (key file absent) its encrypted form `<key_file>.cred` when that exists.
pub fn master_key_source(key_file: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let cred = PathBuf::from(dir).join(CREDENTIAL_NAME);
        if cred.exists() {
            return cred;
        }
    }
    if !key_file.exists() {
        let encrypted = encrypted_key_file(key_file);
        if encrypted.exists() {
            return encrypted;
        }
    }
    key_file.to_path_buf()
}

/// Reads the master key (the systemd credential, else `key_file`), refusing files that other
/// users could read or that belong to someone else (a key readable by the web tier's user would
/// defeat the vault). Outside the unit, when only `<key_file>.cred` is left (the package
/// encrypted the key), the key is decrypted with `systemd-creds`, which needs root (host key)
/// or the TPM2: this is how `pbxguard secret set` and the other commands run by root get it.
pub fn load_master_key(key_file: &Path) -> Result<Key, VaultError> {
    let source = master_key_source(key_file);
    if source != key_file && source == encrypted_key_file(key_file) {
        return decrypt_credential(&source);
    }
    read_key_file(&source)
}

/// `systemd-creds decrypt --name=master.key CRED -`: the plaintext goes from its stdout into a
/// buffer that is wiped on drop, never to a file or a log. Only its stderr is reported.
fn decrypt_credential(path: &Path) -> Result<Key, VaultError> {
    let output = std::process::Command::new("systemd-creds")
        .arg("decrypt")
        .arg(format!("--name={CREDENTIAL_NAME}"))
        .arg("--newline=no")
        .arg(path)
        .arg("-")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| VaultError::KeyRead {
            path: path.to_path_buf(),
            source,
        })?;
    let plain = Zeroizing::new(output.stdout);
    if !output.status.success() {
        let detail = String::from_utf8_lossy(&output.stderr);
        return Err(VaultError::CredentialDecrypt {
            path: path.to_path_buf(),
            detail: detail.trim().lines().last().unwrap_or("").to_string(),
        });
    }
    decode_key(&plain).ok_or_else(|| VaultError::KeyFormat(path.to_path_buf()))
}

/// Reads one key file with the same ownership and mode rules as the master key.
pub fn read_key_file(path: &Path) -> Result<Key, VaultError> {
    let path = path.to_path_buf();
    // Open first, then judge the opened file itself: no window to swap the path in between.
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VaultError::KeyMissing(path))
        }
        Err(source) => return Err(VaultError::KeyRead { path, source }),
    };
    let meta = file.metadata().map_err(|source| VaultError::KeyRead {
        path: path.clone(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(VaultError::KeyMode { path, mode });
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(VaultError::KeyOwner {
            path,
            owner: meta.uid(),
            me,
        });
    }
    let mut raw = Zeroizing::new(Vec::with_capacity(128));
    file.take(256)
        .read_to_end(&mut raw)
        .map_err(|source| VaultError::KeyRead {
            path: path.clone(),
            source,
        })?;
    decode_key(&raw).ok_or(VaultError::KeyFormat(path))
}

/// Accepts the raw 32 bytes `init` writes, or the 64-hex / base64 text that
/// `openssl rand -hex 32` / `-base64 32` print (one trailing newline allowed).
fn decode_key(raw: &[u8]) -> Option<Key> {
    if raw.len() == KEY_LEN {
        return Key::from_bytes(raw);
    }
    let text = std::str::from_utf8(raw).ok()?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.len() == 2 * KEY_LEN {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(chunk).ok()?;
            out[i] = u8::from_str_radix(hex, 16).ok()?;
        }
        return Some(Key(out));
    }
    use base64::Engine;
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?,
    );
    Key::from_bytes(&bytes)
}

/// Writes a fresh master key (raw 32 bytes, mode 0600) unless the file exists. Returns whether
/// a key was written. The file is created with O_EXCL so two racing inits cannot both write.
pub fn create_master_key_file(path: &Path) -> Result<bool, VaultError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = Key::random();
    let open = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    let mut file = match open {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(source) => {
            return Err(VaultError::KeyRead {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    file.write_all(key.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|source| VaultError::KeyRead {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(true)
}

fn aad(label: &[u8], parts: &[&str]) -> Vec<u8> {
    let mut out = label.to_vec();
    for p in parts {
        // NUL cannot occur in names or key ids, so the encoding is unambiguous.
        out.push(0);
        out.extend_from_slice(p.as_bytes());
    }
    out
}

/// Encrypts `plaintext` for the secret `name` under data key `key_id`. Returns (nonce, ciphertext
/// with tag). Pure, for tests and benches.
pub fn seal(key: &Key, key_id: &str, name: &str, plaintext: &[u8]) -> ([u8; NONCE_LEN], Vec<u8>) {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let aad = aad(SECRET_AAD, &[name, key_id]);
    // Encryption with a valid key and in-memory buffers cannot fail; an empty result would
    // fail to open and be reported, never silently accepted.
    let ct = key
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .unwrap_or_default();
    (nonce, ct)
}

/// Decrypts what [`seal`] produced; `None` when anything (nonce, ciphertext, tag, name, key id)
/// differs from what was sealed.
pub fn open(
    key: &Key,
    key_id: &str,
    name: &str,
    nonce: &[u8],
    ciphertext: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    if nonce.len() != NONCE_LEN {
        return None;
    }
    let aad = aad(SECRET_AAD, &[name, key_id]);
    key.cipher()
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

fn wrap(master: &Key, key_id: &str, data_key: &Key) -> ([u8; NONCE_LEN], Vec<u8>) {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let aad = aad(DATA_KEY_AAD, &[key_id]);
    let ct = master
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: data_key.as_bytes(),
                aad: &aad,
            },
        )
        .unwrap_or_default();
    (nonce, ct)
}

fn unwrap_key(master: &Key, row: &KeyRow) -> Option<Key> {
    if row.nonce.len() != NONCE_LEN {
        return None;
    }
    let aad = aad(DATA_KEY_AAD, &[&row.id]);
    let plain = Zeroizing::new(
        master
            .cipher()
            .decrypt(
                Nonce::from_slice(&row.nonce),
                Payload {
                    msg: &row.wrapped,
                    aad: &aad,
                },
            )
            .ok()?,
    );
    Key::from_bytes(&plain)
}

fn new_key_row(master: &Key, generation: i64) -> (KeyRow, Key) {
    let id = format!("k{generation}");
    let data_key = Key::random();
    let (nonce, wrapped) = wrap(master, &id, &data_key);
    let row = KeyRow {
        id,
        generation,
        nonce: nonce.to_vec(),
        wrapped,
        created_at: now_unix(),
    };
    (row, data_key)
}

/// What `secret list` shows: never values.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretInfo {
    pub name: String,
    pub key_id: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub old_key_ids: Vec<String>,
    pub new_key_id: String,
    pub secrets: usize,
}

/// The vault over a store. Cheap to clone.
#[derive(Clone)]
pub struct Vault {
    master: Key,
    store: Store,
    /// Unwrapped data keys by id; ids are never reused, so entries never go stale.
    cache: Arc<Mutex<HashMap<String, Key>>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(<redacted>)")
    }
}

impl Vault {
    pub fn new(master: Key, store: Store) -> Vault {
        Vault {
            master,
            store,
            cache: Arc::default(),
        }
    }

    /// Creates data key generation 1 if the vault has none; checks the master key otherwise.
    /// Returns whether a key was created.
    pub async fn initialise(&self) -> Result<bool, VaultError> {
        let (row, _) = new_key_row(&self.master, 1);
        let created = self.store.insert_first_data_key(&row).await?;
        if !created {
            self.current_key().await?;
        }
        Ok(created)
    }

    fn cached(&self, id: &str) -> Option<Key> {
        self.cache.lock().ok().and_then(|c| c.get(id).cloned())
    }

    fn remember(&self, id: &str, key: &Key) {
        if let Ok(mut c) = self.cache.lock() {
            c.insert(id.to_string(), key.clone());
        }
    }

    async fn current_key(&self) -> Result<(String, Key), VaultError> {
        let row = self
            .store
            .current_data_key()
            .await?
            .ok_or(VaultError::NotInitialised)?;
        if let Some(k) = self.cached(&row.id) {
            return Ok((row.id, k));
        }
        let key = unwrap_key(&self.master, &row)
            .ok_or_else(|| VaultError::WrongMasterKey(row.id.clone()))?;
        self.remember(&row.id, &key);
        Ok((row.id, key))
    }

    async fn key_for(&self, name: &str, id: &str) -> Result<Key, VaultError> {
        if let Some(k) = self.cached(id) {
            return Ok(k);
        }
        let row = self
            .store
            .data_key(id)
            .await?
            .ok_or_else(|| VaultError::UnknownKey {
                name: name.to_string(),
                key_id: id.to_string(),
            })?;
        let key = unwrap_key(&self.master, &row)
            .ok_or_else(|| VaultError::WrongMasterKey(row.id.clone()))?;
        self.remember(id, &key);
        Ok(key)
    }

    fn sealed_row(
        &self,
        key_id: &str,
        key: &Key,
        name: &str,
        value: &[u8],
        created_at: i64,
    ) -> SecretRow {
        let (nonce, ciphertext) = seal(key, key_id, name, value);
        SecretRow {
            name: name.to_string(),
            key_id: key_id.to_string(),
            nonce: nonce.to_vec(),
            ciphertext,
            created_at,
            updated_at: now_unix(),
        }
    }

    /// Stores (or replaces) a secret.
    pub async fn set(&self, name: &str, value: &[u8]) -> Result<(), VaultError> {
        validate_name(name)?;
        if value.len() > MAX_SECRET_LEN {
            return Err(VaultError::TooLarge);
        }
        // The write only lands if its data key still exists; a rotation in between makes us
        // seal again under the new key instead of leaving a row no key can open.
        for _ in 0..3 {
            let (key_id, key) = self.current_key().await?;
            let row = self.sealed_row(&key_id, &key, name, value, now_unix());
            if self.store.put_secret(&row).await? {
                return Ok(());
            }
        }
        Err(VaultError::Busy)
    }

    /// Stores a freshly generated random secret of `len` bytes unless `name` exists.
    pub async fn generate_if_absent(&self, name: &str, len: usize) -> Result<bool, VaultError> {
        validate_name(name)?;
        let mut value = Zeroizing::new(vec![0u8; len]);
        rand::rngs::OsRng.fill_bytes(&mut value);
        let (key_id, key) = self.current_key().await?;
        let row = self.sealed_row(&key_id, &key, name, &value, now_unix());
        Ok(self.store.put_secret_if_absent(&row).await?)
    }

    /// Generates `name` (random, `len` bytes) only when no secret's name starts with `prefix`
    /// (checked and written in one statement); returns whether it was written.
    pub async fn generate_first_under(
        &self,
        prefix: &str,
        name: &str,
        len: usize,
    ) -> Result<bool, VaultError> {
        validate_name(name)?;
        if !name.starts_with(prefix) {
            return Err(VaultError::BadName(
                "must start with the prefix it is generated under",
            ));
        }
        let mut value = Zeroizing::new(vec![0u8; len]);
        rand::rngs::OsRng.fill_bytes(&mut value);
        let (key_id, key) = self.current_key().await?;
        let row = self.sealed_row(&key_id, &key, name, &value, now_unix());
        Ok(self.store.put_secret_if_none_under(&row, prefix).await?)
    }

    /// Decrypts one secret; the plaintext is wiped when the caller drops it.
    pub async fn get(&self, name: &str) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        validate_name(name)?;
        let row = self
            .store
            .secret(name)
            .await?
            .ok_or_else(|| VaultError::NotFound(name.to_string()))?;
        let key = self.key_for(name, &row.key_id).await?;
        open(&key, &row.key_id, &row.name, &row.nonce, &row.ciphertext).ok_or(VaultError::Decrypt {
            name: name.to_string(),
        })
    }

    pub async fn list(&self) -> Result<Vec<SecretInfo>, VaultError> {
        Ok(self
            .store
            .secrets()
            .await?
            .into_iter()
            .map(|r| SecretInfo {
                name: r.name,
                key_id: r.key_id,
                created_at: crate::clock::rfc3339(r.created_at),
                updated_at: crate::clock::rfc3339(r.updated_at),
            })
            .collect())
    }

    /// The secrets named `prefix…`, oldest first (ties by name): a key ring's newest key is
    /// the last one.
    pub async fn keys_under(&self, prefix: &str) -> Result<Vec<SecretInfo>, VaultError> {
        let mut infos: Vec<_> = self
            .list()
            .await?
            .into_iter()
            .filter(|s| s.name.starts_with(prefix))
            .collect();
        infos.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
        Ok(infos)
    }

    pub async fn remove(&self, name: &str) -> Result<(), VaultError> {
        validate_name(name)?;
        if self.store.delete_secret(name).await? {
            Ok(())
        } else {
            Err(VaultError::NotFound(name.to_string()))
        }
    }

    /// New data key generation; every secret re-encrypted under it in one transaction. A secret
    /// that cannot be decrypted aborts the whole rotation (nothing changes) and is named.
    ///
    /// With `new_master`, the new data key is wrapped under that key instead: once this commits,
    /// only the new master key opens the vault (the old data keys are deleted in the same
    /// transaction), so the caller must install it before anything else uses the vault.
    pub async fn rotate(&self, new_master: Option<&Key>) -> Result<Rotation, VaultError> {
        if new_master.is_some_and(|k| k.as_bytes() == self.master.as_bytes()) {
            return Err(VaultError::SameMasterKey);
        }
        let keys = self.store.data_keys().await?;
        if keys.is_empty() {
            return Err(VaultError::NotInitialised);
        }
        let mut old = HashMap::new();
        for row in &keys {
            let key = unwrap_key(&self.master, row)
                .ok_or_else(|| VaultError::WrongMasterKey(row.id.clone()))?;
            old.insert(row.id.clone(), key);
        }
        let generation = keys.iter().map(|k| k.generation).max().unwrap_or(0) + 1;
        let (new_row, new_key) = new_key_row(new_master.unwrap_or(&self.master), generation);
        let outcome = self
            .store
            .rotate_data_key(&new_row, |row| -> Result<SecretRow, VaultError> {
                let key = old.get(&row.key_id).ok_or_else(|| VaultError::UnknownKey {
                    name: row.name.clone(),
                    key_id: row.key_id.clone(),
                })?;
                let plain = open(key, &row.key_id, &row.name, &row.nonce, &row.ciphertext)
                    .ok_or_else(|| VaultError::Decrypt {
                        name: row.name.clone(),
                    })?;
                Ok(self.sealed_row(&new_row.id, &new_key, &row.name, &plain, row.created_at))
            })
            .await?;
        let count = outcome?;
        self.remember(&new_row.id, &new_key);
        Ok(Rotation {
            old_key_ids: keys.into_iter().map(|k| k.id).collect(),
            new_key_id: new_row.id,
            secrets: count,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in [
            "smtp/password",
            "ami/upstream",
            "keys/jwt/1a2b",
            "a",
            "A.b_c-d",
        ] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        let long = "x".repeat(129);
        for bad in [
            "",
            "/abs",
            "trail/",
            "a//b",
            "a/../b",
            "..",
            "sp ace",
            "nul\0",
            "é",
            long.as_str(),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn configured_names_stay_out_of_managed_prefixes() {
        assert_eq!(check_configured_name("smtp/password"), Ok(()));
        assert_eq!(
            check_configured_name("a//b"),
            Err("secret name must not have empty, '.' or '..' path segments".into())
        );
        for managed in ["sip/1001", "keys/jwt/x", "mfa/alice", "ami/clients/crm"] {
            let err = check_configured_name(managed).unwrap_err();
            assert!(err.contains("pbxguard manages itself"), "{managed}: {err}");
        }
        // Only the managed folders are reserved, not every name that starts alike.
        assert_eq!(check_configured_name("sipx/password"), Ok(()));
        assert_eq!(check_configured_name("ami/upstream"), Ok(()));
    }

    #[tokio::test]
    async fn keys_under_a_prefix_come_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("v.db").display());
        let store = Store::open(&url, true).await.unwrap();
        store.migrate().await.unwrap();
        let vault = Vault::new(Key::random(), store);
        vault.initialise().await.unwrap();
        let (key_id, key) = vault.current_key().await.unwrap();
        for (name, created_at) in [
            ("keys/x/new", 300),
            ("keys/x/old", 100),
            ("keys/x/b", 200),
            ("keys/x/a", 200),
            ("keys/xy/other", 50),
            ("sip/keys/x/1", 10),
        ] {
            let row = vault.sealed_row(&key_id, &key, name, b"v", created_at);
            assert!(vault.store.put_secret_if_absent(&row).await.unwrap());
        }
        let names: Vec<String> = vault
            .keys_under("keys/x/")
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["keys/x/old", "keys/x/a", "keys/x/b", "keys/x/new"]);
        assert!(vault.keys_under("keys/z/").await.unwrap().is_empty());
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let key = Key::random();
        let (nonce, ct) = seal(&key, "k1", "smtp/password", b"hunter2");
        assert_eq!(
            open(&key, "k1", "smtp/password", &nonce, &ct)
                .unwrap()
                .as_slice(),
            b"hunter2"
        );
        assert!(
            open(&key, "k1", "other/name", &nonce, &ct).is_none(),
            "bound to the name"
        );
        assert!(
            open(&key, "k2", "smtp/password", &nonce, &ct).is_none(),
            "bound to the key id"
        );
        assert!(open(&Key::random(), "k1", "smtp/password", &nonce, &ct).is_none());
        for i in 0..ct.len() {
            let mut flipped = ct.clone();
            flipped[i] ^= 0x01;
            assert!(
                open(&key, "k1", "smtp/password", &nonce, &flipped).is_none(),
                "byte {i}"
            );
        }
        assert!(open(&key, "k1", "smtp/password", &nonce, &ct[..ct.len() - 1]).is_none());
        assert!(open(&key, "k1", "smtp/password", &nonce[..11], &ct).is_none());
    }

    #[test]
    fn nonces_are_fresh() {
        let key = Key::random();
        let (n1, c1) = seal(&key, "k1", "a", b"same");
        let (n2, c2) = seal(&key, "k1", "a", b"same");
        assert_ne!(n1, n2);
        assert_ne!(c1, c2);
    }

    #[test]
    fn key_file_formats() {
        let raw = [7u8; 32];
        assert_eq!(decode_key(&raw).unwrap().as_bytes(), &raw);
        let hex = format!("{}\n", "07".repeat(32));
        assert_eq!(decode_key(hex.as_bytes()).unwrap().as_bytes(), &raw);
        let b64 = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n";
        assert_eq!(decode_key(b64.as_bytes()).unwrap().as_bytes(), &raw);
        assert!(decode_key(&[1u8; 31]).is_none());
        assert!(decode_key(b"too short\n").is_none());
    }

    /// The CLI's path when the package left only `master.key.cred`. The null key
    /// (`--with-key=tpm2-absent`) needs neither root nor a host key, so this runs anywhere
    /// systemd-creds (systemd >= 250) is installed; elsewhere it says so and passes.
    #[test]
    fn encrypted_key_file_is_decrypted_with_systemd_creds() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("master.key");
        let cred = encrypted_key_file(&key_file);
        assert_eq!(cred, dir.path().join("master.key.cred"));
        let plain = dir.path().join("plain");
        std::fs::write(&plain, [9u8; KEY_LEN]).unwrap();
        let encrypt = |name: &str, out: &Path| {
            std::process::Command::new("systemd-creds")
                .args(["encrypt", "--with-key=tpm2-absent"])
                .arg(format!("--name={name}"))
                .arg(&plain)
                .arg(out)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !encrypt(CREDENTIAL_NAME, &cred) {
            eprintln!("skipped: systemd-creds cannot encrypt with the null key here");
            return;
        }
        assert_eq!(master_key_source(&key_file), cred);
        match load_master_key(&key_file) {
            Ok(key) => assert_eq!(key.as_bytes(), &[9u8; KEY_LEN]),
            // A host with a TPM2 refuses null-key credentials on decryption.
            Err(VaultError::CredentialDecrypt { detail, .. }) if detail.contains("TPM") => {
                eprintln!("skipped: {detail}");
                return;
            }
            Err(e) => panic!("{e}"),
        }
        // The credential's embedded name is checked.
        assert!(encrypt("other", &cred));
        assert!(matches!(
            load_master_key(&key_file),
            Err(VaultError::CredentialDecrypt { .. })
        ));
        // A plaintext key file, when present, wins over the credential.
        std::fs::rename(&plain, &key_file).unwrap();
        std::fs::set_permissions(
            &key_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        assert_eq!(master_key_source(&key_file), key_file);
    }

    #[test]
    fn data_key_wrapping_is_bound_to_its_id() {
        let master = Key::random();
        let (row, key) = new_key_row(&master, 3);
        assert_eq!(row.id, "k3");
        assert_eq!(
            unwrap_key(&master, &row).unwrap().as_bytes(),
            key.as_bytes()
        );
        let mut relabelled = row.clone();
        relabelled.id = "k4".into();
        assert!(unwrap_key(&master, &relabelled).is_none());
        assert!(unwrap_key(&Key::random(), &row).is_none());
    }
}
