//! The `[realtime]` section: the loopback listener Asterisk's `res_config_curl` asks.

use std::net::SocketAddr;

use serde::Deserialize;

use super::FAMILIES;
use crate::problems::{is_loopback, Checker};

#[derive(Debug, Clone, PartialEq)]
pub struct RealtimeConfig {
    pub listen: SocketAddr,
    pub username: String,
    pub password_secret: String,
    /// Families whose `store`/`update`/`destroy` are honoured; the others answer -1.
    pub writable: Vec<String>,
}

/// `[realtime]` as serde reads it: every key optional, values unconverted.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRealtime {
    listen: Option<String>,
    username: Option<String>,
    password_secret: Option<String>,
    writable: Option<Vec<String>>,
}

impl RealtimeConfig {
    /// Converts `[realtime]` with its defaults, reporting each bad value under its key.
    pub(crate) fn from_raw(r: RawRealtime, c: &mut Checker) -> RealtimeConfig {
        let listen = c.addr("realtime.listen", r.listen.as_deref(), "127.0.0.1:8088");
        if !is_loopback(&listen) {
            c.bad(
                "realtime.listen",
                format!("Asterisk's realtime interface must stay on loopback, not {listen}"),
            );
        }
        let cfg = RealtimeConfig {
            listen,
            username: c.nonempty("realtime.username", r.username.as_ref(), "asterisk"),
            password_secret: r
                .password_secret
                .unwrap_or_else(|| "realtime/password".into()),
            writable: r.writable.unwrap_or_default(),
        };
        for family in &cfg.writable {
            if !FAMILIES.contains(&family.as_str()) {
                c.bad(
                    "realtime.writable",
                    format!(
                        "{family:?} is not a family pbxguard serves (served: {})",
                        FAMILIES.join(", ")
                    ),
                );
            }
        }
        c.check(
            "realtime.password_secret",
            crate::vault::check_configured_name(&cfg.password_secret),
        );
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<String> {
        crate::problems::convert_section(text, RealtimeConfig::from_raw).1
    }

    #[test]
    fn realtime_must_stay_on_loopback() {
        assert_eq!(keys("listen = \"0.0.0.0:8088\"\n"), ["realtime.listen"]);
        assert!(keys("listen = \"[::1]:8088\"\n").is_empty());
    }

    #[test]
    fn only_served_families_are_writable() {
        assert!(keys("writable = [\"ps_auths\"]\n").is_empty());
        assert_eq!(
            keys("writable = [\"ps_auths\", \"sippeers\"]\npassword_secret = \"sip/x\"\n"),
            ["realtime.writable", "realtime.password_secret"]
        );
    }
}
