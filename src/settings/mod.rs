//! The security settings admins change at run time (console, API, CLI): stored in the
//! database so that every node follows them, with the config file's values as defaults until
//! an admin changes one. Each node keeps the effective values in its configuration in force
//! (see `App::reload_settings`), so the hot paths read them as they read the config file.

pub mod ops;

use std::time::Duration;

use serde_json::{Map, Value as Json};

use crate::config::Config;

use crate::auth::config::{PASSWORD_LENGTH_CEILING, PASSWORD_LENGTH_FLOOR};

/// One runtime setting, by its contract name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    SessionIdleTimeout,
    SessionMaxLifetime,
    PasswordMinLength,
    PasswordMinStrength,
    MfaForce,
    MfaEmailFallback,
    LockoutThreshold,
    LockoutWindow,
    LockoutDuration,
}

/// Every key, in the order `settings get` lists them.
pub const KEYS: [Key; 9] = [
    Key::SessionIdleTimeout,
    Key::SessionMaxLifetime,
    Key::PasswordMinLength,
    Key::PasswordMinStrength,
    Key::MfaForce,
    Key::MfaEmailFallback,
    Key::LockoutThreshold,
    Key::LockoutWindow,
    Key::LockoutDuration,
];

impl Key {
    pub fn name(self) -> &'static str {
        match self {
            Key::SessionIdleTimeout => "session_idle_timeout",
            Key::SessionMaxLifetime => "session_max_lifetime",
            Key::PasswordMinLength => "password_min_length",
            Key::PasswordMinStrength => "password_min_strength",
            Key::MfaForce => "mfa_force",
            Key::MfaEmailFallback => "mfa_email_fallback",
            Key::LockoutThreshold => "lockout_threshold",
            Key::LockoutWindow => "lockout_window",
            Key::LockoutDuration => "lockout_duration",
        }
    }

    pub fn parse(name: &str) -> Option<Key> {
        KEYS.into_iter().find(|k| k.name() == name)
    }

    /// The row in the `settings` table. The force policy keeps the row it had before the
    /// settings existed (`mfa policy --force` writes it too).
    pub(crate) fn row(self) -> &'static str {
        match self {
            Key::MfaForce => crate::auth::mfa::FORCE_SETTING,
            Key::SessionIdleTimeout => "security.session_idle_timeout",
            Key::SessionMaxLifetime => "security.session_max_lifetime",
            Key::PasswordMinLength => "security.password_min_length",
            Key::PasswordMinStrength => "security.password_min_strength",
            Key::MfaEmailFallback => "security.mfa_email_fallback",
            Key::LockoutThreshold => "security.lockout_threshold",
            Key::LockoutWindow => "security.lockout_window",
            Key::LockoutDuration => "security.lockout_duration",
        }
    }

    /// What the key takes, for people (forms, help).
    pub fn allowed(self) -> String {
        match self.kind() {
            Kind::Duration { min, max } => {
                format!("{} to {}", duration_text(min), duration_text(max))
            }
            Kind::Int { min, max } => format!("{min} to {max}"),
            Kind::Bool => "on or off".into(),
        }
    }

    /// Whether the key is a switch (on/off).
    pub fn is_switch(self) -> bool {
        matches!(self.kind(), Kind::Bool)
    }

    /// A short description, for forms.
    pub fn label(self) -> &'static str {
        match self {
            Key::SessionIdleTimeout => "Sign out after this long idle",
            Key::SessionMaxLifetime => "Sign out after this long at most",
            Key::PasswordMinLength => "Shortest password (characters)",
            Key::PasswordMinStrength => "Least password strength (0-4)",
            Key::MfaForce => "Everyone must use two-factor authentication",
            Key::MfaEmailFallback => "Emailed codes for users without an app",
            Key::LockoutThreshold => "Failed logins before a lockout",
            Key::LockoutWindow => "Counted within",
            Key::LockoutDuration => "Lockout lasts",
        }
    }

    fn kind(self) -> Kind {
        match self {
            // The idle timeout also bounds how long a softphone's WebSocket outlives activity;
            // below a minute every page load would race it.
            Key::SessionIdleTimeout => Kind::Duration {
                min: Duration::from_secs(60),
                max: Duration::from_secs(30 * 86_400),
            },
            Key::SessionMaxLifetime => Kind::Duration {
                min: Duration::from_secs(5 * 60),
                max: Duration::from_secs(365 * 86_400),
            },
            Key::PasswordMinLength => Kind::Int {
                min: PASSWORD_LENGTH_FLOOR,
                max: PASSWORD_LENGTH_CEILING,
            },
            Key::PasswordMinStrength => Kind::Int { min: 0, max: 4 },
            Key::MfaForce | Key::MfaEmailFallback => Kind::Bool,
            Key::LockoutThreshold => Kind::Int { min: 1, max: 1000 },
            Key::LockoutWindow => Kind::Duration {
                min: Duration::from_secs(10),
                max: Duration::from_secs(86_400),
            },
            Key::LockoutDuration => Kind::Duration {
                min: Duration::from_secs(10),
                max: Duration::from_secs(7 * 86_400),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Duration { min: Duration, max: Duration },
    Int { min: i64, max: i64 },
    Bool,
}

/// A duration as an admin writes it: in the largest unit that holds it whole (`365d`, `8h`,
/// `90m`, `45s`). humantime's own form counts months of 30.44 days (`11months 30days 3h…`).
pub fn duration_text(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A setting's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    Duration(Duration),
    Int(i64),
    Bool(bool),
}

impl Value {
    /// As the config file and the CLI write it, and as the `settings` table stores it
    /// (`on`/`off` for switches: the force policy's row has always been written so).
    pub fn text(self) -> String {
        match self {
            Value::Duration(d) => duration_text(d),
            Value::Int(n) => n.to_string(),
            Value::Bool(true) => "on".into(),
            Value::Bool(false) => "off".into(),
        }
    }

    pub fn json(self) -> Json {
        match self {
            Value::Duration(d) => Json::String(duration_text(d)),
            Value::Int(n) => Json::from(n),
            Value::Bool(b) => Json::Bool(b),
        }
    }
}

/// A value an admin can correct: the key and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(key: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        field: key.to_string(),
        message: message.into(),
    }
}

/// The key named `name`, or why there is none.
pub fn key(name: &str) -> Result<Key, Invalid> {
    Key::parse(name).ok_or_else(|| {
        let names: Vec<&str> = KEYS.iter().map(|k| k.name()).collect();
        invalid(
            name,
            format!("there is no such setting (settings: {})", names.join(", ")),
        )
    })
}

/// Reads a value as typed on the command line or stored in the table.
pub fn parse_text(key: Key, text: &str) -> Result<Value, Invalid> {
    let name = key.name();
    let text = text.trim();
    let value =
        match key.kind() {
            Kind::Duration { .. } => humantime::parse_duration(text)
                .map(Value::Duration)
                .map_err(|_| {
                    invalid(
                name,
                format!("{text:?} is not a duration (examples: \"30s\", \"10m\", \"8h\", \"2d\")"),
            )
                })?,
            Kind::Int { .. } => text
                .parse::<i64>()
                .map(Value::Int)
                .map_err(|_| invalid(name, format!("{text:?} is not a whole number")))?,
            Kind::Bool => match text.to_ascii_lowercase().as_str() {
                "on" | "true" | "yes" => Value::Bool(true),
                "off" | "false" | "no" => Value::Bool(false),
                _ => return Err(invalid(name, format!("{text:?} is not on or off"))),
            },
        };
    in_range(key, value)
}

/// Reads a value from a JSON body: durations as strings, numbers as numbers, switches as
/// booleans (a string where a number belongs is refused: the API has one form per key).
pub fn parse_json(key: Key, json: &Json) -> Result<Value, Invalid> {
    let name = key.name();
    let value = match (key.kind(), json) {
        (Kind::Duration { .. }, Json::String(s)) if s.len() <= 64 => return parse_text(key, s),
        (Kind::Duration { .. }, _) => {
            return Err(invalid(name, "must be a duration string such as \"8h\""))
        }
        (Kind::Int { .. }, Json::Number(n)) => match n.as_i64() {
            Some(n) => Value::Int(n),
            None => return Err(invalid(name, "must be a whole number")),
        },
        (Kind::Int { .. }, _) => return Err(invalid(name, "must be a whole number")),
        (Kind::Bool, Json::Bool(b)) => Value::Bool(*b),
        (Kind::Bool, _) => return Err(invalid(name, "must be true or false")),
    };
    in_range(key, value)
}

fn in_range(key: Key, value: Value) -> Result<Value, Invalid> {
    let name = key.name();
    match (key.kind(), value) {
        (Kind::Duration { min, max }, Value::Duration(d)) => {
            if d < min || d > max {
                return Err(invalid(
                    name,
                    format!(
                        "must be between {} and {}",
                        duration_text(min),
                        duration_text(max)
                    ),
                ));
            }
        }
        (Kind::Int { min, max }, Value::Int(n)) => {
            if n < min || n > max {
                return Err(invalid(name, format!("must be between {min} and {max}")));
            }
        }
        (Kind::Bool, Value::Bool(_)) => {}
        _ => return Err(invalid(name, "has the wrong type")),
    }
    Ok(value)
}

/// The effective settings: the config file's values with the stored changes applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub session_idle_timeout: Duration,
    pub session_max_lifetime: Duration,
    pub password_min_length: u32,
    pub password_min_strength: u8,
    pub mfa_force: bool,
    pub mfa_email_fallback: bool,
    pub lockout_threshold: u32,
    pub lockout_window: Duration,
    pub lockout_duration: Duration,
}

impl Settings {
    /// The config file's values.
    pub fn defaults(config: &Config) -> Settings {
        Settings {
            session_idle_timeout: config.auth.session_idle_timeout,
            session_max_lifetime: config.auth.session_max_lifetime,
            password_min_length: config.auth.password_min_length,
            password_min_strength: config.auth.password_min_strength,
            mfa_force: config.mfa.force,
            mfa_email_fallback: config.mfa.email_fallback,
            lockout_threshold: config.auth.lockout_threshold,
            lockout_window: config.auth.lockout_window,
            lockout_duration: config.auth.lockout_duration,
        }
    }

    pub fn get(&self, key: Key) -> Value {
        match key {
            Key::SessionIdleTimeout => Value::Duration(self.session_idle_timeout),
            Key::SessionMaxLifetime => Value::Duration(self.session_max_lifetime),
            Key::PasswordMinLength => Value::Int(self.password_min_length.into()),
            Key::PasswordMinStrength => Value::Int(self.password_min_strength.into()),
            Key::MfaForce => Value::Bool(self.mfa_force),
            Key::MfaEmailFallback => Value::Bool(self.mfa_email_fallback),
            Key::LockoutThreshold => Value::Int(self.lockout_threshold.into()),
            Key::LockoutWindow => Value::Duration(self.lockout_window),
            Key::LockoutDuration => Value::Duration(self.lockout_duration),
        }
    }

    /// Sets one value (already range-checked by the parsers; a value of the wrong kind is
    /// ignored, which the parsers never produce).
    pub fn set(&mut self, key: Key, value: Value) {
        let int = |n: i64| u32::try_from(n).ok();
        match (key, value) {
            (Key::SessionIdleTimeout, Value::Duration(d)) => self.session_idle_timeout = d,
            (Key::SessionMaxLifetime, Value::Duration(d)) => self.session_max_lifetime = d,
            (Key::PasswordMinLength, Value::Int(n)) => {
                if let Some(n) = int(n) {
                    self.password_min_length = n
                }
            }
            (Key::PasswordMinStrength, Value::Int(n)) => {
                if let Ok(n) = u8::try_from(n) {
                    self.password_min_strength = n
                }
            }
            (Key::MfaForce, Value::Bool(b)) => self.mfa_force = b,
            (Key::MfaEmailFallback, Value::Bool(b)) => self.mfa_email_fallback = b,
            (Key::LockoutThreshold, Value::Int(n)) => {
                if let Some(n) = int(n) {
                    self.lockout_threshold = n
                }
            }
            (Key::LockoutWindow, Value::Duration(d)) => self.lockout_window = d,
            (Key::LockoutDuration, Value::Duration(d)) => self.lockout_duration = d,
            _ => {}
        }
    }

    /// What must hold between settings.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.session_idle_timeout > self.session_max_lifetime {
            return Err(invalid(
                Key::SessionIdleTimeout.name(),
                format!(
                    "must not be longer than session_max_lifetime ({})",
                    duration_text(self.session_max_lifetime)
                ),
            ));
        }
        Ok(())
    }

    /// Puts these values into `config`, where the rest of the daemon reads them.
    pub fn apply(&self, config: &mut Config) {
        config.auth.session_idle_timeout = self.session_idle_timeout;
        config.auth.session_max_lifetime = self.session_max_lifetime;
        config.auth.password_min_length = self.password_min_length;
        config.auth.password_min_strength = self.password_min_strength;
        config.mfa.force = self.mfa_force;
        config.mfa.email_fallback = self.mfa_email_fallback;
        config.auth.lockout_threshold = self.lockout_threshold;
        config.auth.lockout_window = self.lockout_window;
        config.auth.lockout_duration = self.lockout_duration;
    }

    /// One flat object, the API's form.
    pub fn to_json(&self) -> Map<String, Json> {
        KEYS.iter()
            .map(|k| (k.name().to_string(), self.get(*k).json()))
            .collect()
    }
}

/// The changes stored in the database, as read; what the config file says fills the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored(pub Vec<(Key, Value)>);

impl Stored {
    /// The effective settings under `config`. A stored pair that contradicts the config
    /// file's other value (an idle timeout beyond a lifetime the file shortened) gives way to
    /// the file, so that the effective settings always hold together.
    pub fn over(&self, config: &Config) -> Settings {
        let mut s = Settings::defaults(config);
        for (k, v) in &self.0 {
            s.set(*k, *v);
        }
        if s.check().is_err() {
            s.session_idle_timeout = s.session_max_lifetime;
        }
        s
    }

    /// `config` with these changes in force.
    pub fn applied(&self, mut config: Config) -> Config {
        self.over(&config).apply(&mut config);
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for k in KEYS {
            assert_eq!(Key::parse(k.name()), Some(k));
        }
        let e = key("session_timeout").unwrap_err();
        assert_eq!(e.field, "session_timeout");
        assert!(e.message.contains("session_idle_timeout"), "{e}");
    }

    #[test]
    fn text_values_are_parsed_and_range_checked() {
        assert_eq!(
            parse_text(Key::SessionIdleTimeout, "4h"),
            Ok(Value::Duration(Duration::from_secs(4 * 3600)))
        );
        assert!(parse_text(Key::SessionIdleTimeout, "10s").is_err());
        assert!(parse_text(Key::SessionIdleTimeout, "8 lightyears").is_err());
        assert_eq!(parse_text(Key::PasswordMinStrength, "3"), Ok(Value::Int(3)));
        assert!(parse_text(Key::PasswordMinStrength, "5").is_err());
        assert!(parse_text(Key::PasswordMinStrength, "-1").is_err());
        assert!(parse_text(Key::PasswordMinLength, "7").is_err());
        assert!(parse_text(Key::LockoutThreshold, "0").is_err());
        assert_eq!(parse_text(Key::MfaForce, "ON"), Ok(Value::Bool(true)));
        assert_eq!(parse_text(Key::MfaForce, "false"), Ok(Value::Bool(false)));
        assert!(parse_text(Key::MfaForce, "maybe").is_err());
    }

    #[test]
    fn json_values_have_one_form_per_key() {
        use serde_json::json;
        assert_eq!(
            parse_json(Key::LockoutWindow, &json!("15m")),
            Ok(Value::Duration(Duration::from_secs(900)))
        );
        assert!(parse_json(Key::LockoutWindow, &json!(900)).is_err());
        assert!(parse_json(Key::LockoutThreshold, &json!("10")).is_err());
        assert!(parse_json(Key::LockoutThreshold, &json!(2.5)).is_err());
        assert!(parse_json(Key::LockoutThreshold, &json!(1_000_000_000_000_i64)).is_err());
        assert!(parse_json(Key::MfaEmailFallback, &json!("on")).is_err());
        assert!(parse_json(Key::SessionMaxLifetime, &json!("9".repeat(100))).is_err());
        assert_eq!(
            parse_json(Key::MfaEmailFallback, &json!(false)),
            Ok(Value::Bool(false))
        );
    }

    #[test]
    fn stored_changes_override_the_file_and_stay_consistent() {
        let config = Config::parse("[daemon]\ninit_if_missing = true\n").unwrap();
        let stored = Stored(vec![
            (Key::LockoutThreshold, Value::Int(3)),
            (Key::MfaEmailFallback, Value::Bool(false)),
        ]);
        let s = stored.over(&config);
        assert_eq!(s.lockout_threshold, 3);
        assert!(!s.mfa_email_fallback);
        assert_eq!(s.session_idle_timeout, config.auth.session_idle_timeout);
        let applied = stored.applied(config.clone());
        assert_eq!(applied.auth.lockout_threshold, 3);
        assert!(!applied.mfa.email_fallback);
        // An idle timeout beyond the lifetime gives way to the lifetime.
        let stored = Stored(vec![(
            Key::SessionIdleTimeout,
            Value::Duration(Duration::from_secs(20 * 86_400)),
        )]);
        let s = stored.over(&config);
        assert_eq!(s.session_idle_timeout, s.session_max_lifetime);
        assert!(s.check().is_ok());
    }

    #[test]
    fn values_print_as_the_config_file_writes_them() {
        assert_eq!(Value::Duration(Duration::from_secs(8 * 3600)).text(), "8h");
        assert_eq!(
            Value::Duration(Duration::from_secs(365 * 86_400)).text(),
            "365d"
        );
        assert_eq!(Value::Duration(Duration::from_secs(5400)).text(), "90m");
        assert_eq!(Value::Duration(Duration::from_secs(61)).text(), "61s");
        assert_eq!(Key::SessionMaxLifetime.allowed(), "5m to 365d");
        assert_eq!(Value::Bool(true).text(), "on");
        assert_eq!(Value::Int(12).json(), serde_json::json!(12));
    }
}
