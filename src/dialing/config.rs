//! The `[dialing]` section: what nobody may dial, how many calls an extension or an AMI client
//! may have at once and start per minute, which characters a destination may hold, and who is
//! told when a rule trips.

use std::time::Duration;

use serde::Deserialize;

use crate::problems::Checker;

/// Destinations refused when `deny_prefixes` is not set, compared after the international
/// prefix is removed (so in E.164 form). Each is a range that is never a business call and that
/// toll-fraud rings dial because the attacker shares in the termination fee:
/// - `1900`: NANP premium-rate numbers (NANPA, 900 service access code).
/// - `870`: Inmarsat (ITU-T E.164 list, shared code for Inmarsat SNAC).
/// - `881`: Global Mobile Satellite System (Iridium 8816/8817, Globalstar 8818/8819).
/// - `882`, `883`: international networks (ITU-T E.164 shared codes; carriers resell them).
/// - `979`: International Premium Rate Service (ITU-T E.169.2).
///
/// NANP 976 numbers are an exchange inside each area code (`NPA-976-XXXX`); a site that wants
/// them refused adds `1NPA976` for the area codes it cares about.
pub const DEFAULT_DENY_PREFIXES: &[&str] = &["1900", "870", "881", "882", "883", "979"];

/// Characters every destination may hold: digits, `*`, `#` and a leading `+`.
pub const DIALABLE: &str = "0123456789*#+";

/// Characters an admin can never add to the dialable set: each ends or splits an argument,
/// starts an expression or a variable in Asterisk's dialplan (`Dial(PJSIP/${EXTEN})` with
/// `1001&PJSIP/trunk/…` dials the trunk too), or changes what a SIP URI means.
const NEVER_DIALABLE: &str = "&,|${}()[]\\\"'`;:@/<>%^~= ";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialingConfig {
    /// Digit strings; a destination starting with one (after its international prefix is
    /// removed) is refused.
    pub deny_prefixes: Vec<String>,
    /// The site's international access code besides `00` and `+` (for example `011` in the
    /// NANP, `9011` behind an outside-line `9`).
    pub international_prefix: Option<String>,
    /// Destinations of at most this many digits are internal extensions: never compared with
    /// `deny_prefixes` (4-digit extension plans overlap `881`, `882`, …).
    pub internal_max_length: usize,
    /// Characters allowed in a destination besides [`DIALABLE`] (for example letters for
    /// extensions named `alice`).
    pub extra_dial_characters: String,
    /// Per extension (SIP edge) and per AMI client; 0 = unlimited.
    pub max_concurrent_calls: u32,
    pub max_call_attempts_per_minute: u32,
    /// Addresses alerted besides the admins (level 9 users with an email address).
    pub alert_to: Vec<String>,
    /// At most one alert per rule and offender in this time.
    pub alert_interval: Duration,
}

impl Default for DialingConfig {
    fn default() -> DialingConfig {
        let mut c = Checker::default();
        DialingConfig::from_raw(RawDialing::default(), &mut c)
    }
}

/// `[dialing]` as serde reads it.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawDialing {
    deny_prefixes: Option<Vec<String>>,
    international_prefix: Option<String>,
    internal_max_length: Option<i64>,
    extra_dial_characters: Option<String>,
    max_concurrent_calls: Option<i64>,
    max_call_attempts_per_minute: Option<i64>,
    alert_to: Option<Vec<String>>,
    alert_interval: Option<String>,
}

/// A prefix as an admin writes it: digits, with an optional leading `+` that says nothing more.
fn digits(key: &str, raw: &str, c: &mut Checker) -> Option<String> {
    let text = raw.trim();
    let text = text.strip_prefix('+').unwrap_or(text);
    if text.is_empty() || text.len() > 32 || !text.bytes().all(|b| b.is_ascii_digit()) {
        c.bad(
            key,
            format!("{raw:?} is not a string of digits (an optional leading + is allowed)"),
        );
        return None;
    }
    Some(text.to_string())
}

impl DialingConfig {
    pub(crate) fn from_raw(raw: RawDialing, c: &mut Checker) -> DialingConfig {
        let deny_prefixes = match raw.deny_prefixes {
            None => DEFAULT_DENY_PREFIXES
                .iter()
                .map(|p| p.to_string())
                .collect(),
            Some(list) => {
                let mut out: Vec<String> = list
                    .iter()
                    .filter_map(|p| digits("dialing.deny_prefixes", p, c))
                    .collect();
                out.sort();
                out.dedup();
                out
            }
        };
        let international_prefix = raw
            .international_prefix
            .as_deref()
            .filter(|p| !p.trim().is_empty())
            .and_then(|p| {
                if p.trim().starts_with('+') {
                    c.bad(
                        "dialing.international_prefix",
                        format!("{p:?}: the digits dialled before a country code, such as 011"),
                    );
                    return None;
                }
                digits("dialing.international_prefix", p, c)
            });
        let extra = raw.extra_dial_characters.unwrap_or_default();
        if let Some(bad) = extra
            .chars()
            .find(|ch| NEVER_DIALABLE.contains(*ch) || ch.is_control() || !ch.is_ascii())
        {
            c.bad(
                "dialing.extra_dial_characters",
                format!(
                    "{bad:?} cannot be dialable: it splits or rewrites a dialplan argument or a SIP URI"
                ),
            );
        }
        let mut alert_to = Vec::new();
        for a in raw.alert_to.unwrap_or_default() {
            let a = a.trim();
            if a.parse::<lettre::Address>().is_err() {
                c.bad("dialing.alert_to", format!("{a:?} is not an email address"));
            } else {
                alert_to.push(a.to_string());
            }
        }
        DialingConfig {
            deny_prefixes,
            international_prefix,
            internal_max_length: c.int(
                "dialing.internal_max_length",
                raw.internal_max_length,
                4,
                0,
                15,
            ),
            extra_dial_characters: extra,
            max_concurrent_calls: c.int(
                "dialing.max_concurrent_calls",
                raw.max_concurrent_calls,
                10,
                0,
                100_000,
            ),
            max_call_attempts_per_minute: c.int(
                "dialing.max_call_attempts_per_minute",
                raw.max_call_attempts_per_minute,
                30,
                0,
                100_000,
            ),
            alert_to,
            alert_interval: c.duration(
                "dialing.alert_interval",
                raw.alert_interval.as_deref(),
                "15m",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> (DialingConfig, Vec<String>) {
        let raw: RawDialing = toml::from_str(toml_text).unwrap();
        let mut c = Checker::default();
        let cfg = DialingConfig::from_raw(raw, &mut c);
        let problems = c
            .into_problems()
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        (cfg, problems)
    }

    #[test]
    fn defaults_refuse_the_premium_ranges_and_never_reach_a_busy_agent() {
        let (c, problems) = parse("");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.deny_prefixes, DEFAULT_DENY_PREFIXES);
        assert_eq!(c.max_concurrent_calls, 10);
        assert_eq!(c.max_call_attempts_per_minute, 30);
        assert_eq!(c.alert_interval, Duration::from_secs(900));
        assert_eq!(c, DialingConfig::default());
    }

    #[test]
    fn prefixes_are_digits_with_an_optional_plus() {
        let (c, problems) =
            parse(r#"deny_prefixes = ["+882", " 1900 ", "882", "09x", "", "+", "4 4"]"#);
        assert_eq!(c.deny_prefixes, ["1900", "882"]);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems
            .iter()
            .all(|p| p.starts_with("dialing.deny_prefixes")));
        let (c, _) = parse("deny_prefixes = []");
        assert!(c.deny_prefixes.is_empty());
    }

    #[test]
    fn bad_values_name_their_key() {
        let (_, problems) = parse(
            r#"
international_prefix = "+011"
extra_dial_characters = "abc$"
max_concurrent_calls = -2
max_call_attempts_per_minute = 100001
alert_to = ["x"]
alert_interval = "0s"
"#,
        );
        for key in [
            "dialing.international_prefix",
            "dialing.extra_dial_characters",
            "dialing.max_concurrent_calls",
            "dialing.max_call_attempts_per_minute",
            "dialing.alert_to",
            "dialing.alert_interval",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(key)),
                "{key} not in {problems:?}"
            );
        }
        for injection in ["&", ",", "|", "$", "{", "(", ";", " ", "%", "\u{7}"] {
            let raw = RawDialing {
                extra_dial_characters: Some(format!("ab{injection}")),
                ..RawDialing::default()
            };
            let mut c = Checker::default();
            DialingConfig::from_raw(raw, &mut c);
            assert_eq!(c.into_problems().len(), 1, "{injection:?} accepted");
        }
        let (c, problems) = parse(r#"extra_dial_characters = "abcxyz-_.""#);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.extra_dial_characters, "abcxyz-_.");
    }
}
