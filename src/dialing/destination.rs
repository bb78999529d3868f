//! Destinations as both doors see them: the user part of a SIP INVITE's Request-URI, an AMI
//! `Exten`, or the number inside an AMI `Channel`. Checked before Asterisk parses them.

use super::config::{DialingConfig, DIALABLE};
use super::Rule;

/// Longest destination looked at; anything longer is refused as not dialable.
pub const MAX_DESTINATION: usize = 64;

/// Why a destination is refused.
pub fn check(dest: &str, cfg: &DialingConfig) -> Result<(), Rule> {
    check_characters(dest, cfg)?;
    if denied_prefix(dest, cfg).is_some() {
        return Err(Rule::DenyPrefix);
    }
    Ok(())
}

/// As [`check`] for AMI headers, where names are normal (`Exten: s`, `Channel: PJSIP/alice`):
/// letters, `-`, `_` and `.` pass, what splits or rewrites a dialplan argument does not.
pub fn check_named(dest: &str, cfg: &DialingConfig) -> Result<(), Rule> {
    let named = |ch: char| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.');
    if dest.is_empty()
        || dest.len() > MAX_DESTINATION
        || !dest
            .chars()
            .all(|ch| named(ch) || DIALABLE.contains(ch) || cfg.extra_dial_characters.contains(ch))
    {
        return Err(Rule::DialCharacters);
    }
    if denied_prefix(dest, cfg).is_some() {
        return Err(Rule::DenyPrefix);
    }
    Ok(())
}

/// The dialable set: digits, `*`, `#`, `+` (first only) and the admin's extra characters.
pub fn check_characters(dest: &str, cfg: &DialingConfig) -> Result<(), Rule> {
    if dest.is_empty() || dest.len() > MAX_DESTINATION {
        return Err(Rule::DialCharacters);
    }
    let ok = dest.char_indices().all(|(i, ch)| {
        if ch == '+' {
            // `+` means "international" only in front; inside it is a pattern character.
            i == 0 || cfg.extra_dial_characters.contains('+')
        } else {
            DIALABLE.contains(ch) || cfg.extra_dial_characters.contains(ch)
        }
    });
    if ok {
        Ok(())
    } else {
        Err(Rule::DialCharacters)
    }
}

/// The destination in international form: a leading `+`, `00` or the site's international
/// prefix removed. Other characters (`*`, `#`, letters) are kept, so `*67` stays itself.
pub fn normalise<'a>(dest: &'a str, cfg: &DialingConfig) -> &'a str {
    if let Some(rest) = dest.strip_prefix('+') {
        return rest;
    }
    if let Some(p) = cfg.international_prefix.as_deref() {
        if let Some(rest) = dest.strip_prefix(p) {
            return rest;
        }
    }
    dest.strip_prefix("00").unwrap_or(dest)
}

/// `dest` with everything but digits, `*`, `#` and a leading `+` removed: Asterisk's pattern matching skips
/// `-` (`00-882-…` lands in `_00X.`), and a dialplan may `FILTER()` the rest away before it
/// dials, so the comparison must not be fooled by separators.
fn digits_only(dest: &str) -> String {
    let plus = if dest.starts_with('+') { "+" } else { "" };
    let rest: String = dest
        .chars()
        .filter(|c| c.is_ascii_digit() || matches!(c, '*' | '#'))
        .collect();
    format!("{plus}{rest}")
}

/// The configured prefix `dest` falls under, if any. Internal extensions (at most
/// `internal_max_length` characters as dialled) and destinations no longer than the prefix
/// itself are not premium numbers and never match.
pub fn denied_prefix<'c>(dest: &str, cfg: &'c DialingConfig) -> Option<&'c str> {
    if dest.len() <= cfg.internal_max_length {
        return None;
    }
    // A star code in front (`*67` hides the caller ID, `*82` shows it) is dialled through to
    // the number behind it: the number is compared too.
    let behind_code = dest
        .strip_prefix(['*', '#'])
        .filter(|rest| rest.len() > 2 && rest.as_bytes()[..2].iter().all(u8::is_ascii_digit))
        .map(|rest| &rest[2..]);
    [Some(dest), behind_code]
        .into_iter()
        .flatten()
        .map(|d| normalise(&digits_only(d), cfg).to_string())
        .find_map(|number| {
            cfg.deny_prefixes
                .iter()
                .find(|p| number.len() > p.len() && number.starts_with(p.as_str()))
        })
        .map(String::as_str)
}

/// A SIP URI user part as Asterisk reads it: `%XX` escapes decoded (pjsip unescapes the user
/// part, so `1001%26PJSIP` reaches the dialplan as `1001&PJSIP`). `None` for a broken escape
/// or bytes that are not text.
pub fn sip_user(user: &str) -> Option<String> {
    if user.len() > 3 * MAX_DESTINATION {
        return None;
    }
    let b = user.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = user.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What an AMI `Channel` header dials: the technology, the number and, for `Local`, the
/// context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelTarget {
    pub tech: String,
    /// `None` when the channel names an endpoint without a number (`PJSIP/alice`).
    pub number: Option<String>,
    pub context: Option<String>,
}

/// Reads the channel forms AMI clients send:
/// - `PJSIP/1001` (an endpoint: its name is the destination),
/// - `PJSIP/NUMBER@trunk` (a number through an endpoint),
/// - `PJSIP/trunk/sip:NUMBER@host` and `PJSIP/trunk/NUMBER` (a URI or user through a trunk),
/// - `PJSIP/NUMBER@trunk/sip:OTHER@host`: chan_pjsip writes NUMBER over the URI's user, so
///   both are returned (one target each),
/// - `SIP/trunk/NUMBER`, `IAX2/trunk/NUMBER`, `DAHDI/g1/NUMBER`,
/// - `Local/NUMBER@CTX` with its `/n`-style options.
///
/// Several channels joined by `&` (Dial syntax) are all returned.
pub fn channel_targets(channel: &str) -> Vec<ChannelTarget> {
    channel
        .split('&')
        .filter(|c| !c.trim().is_empty())
        .flat_map(|c| one_channel(c.trim()))
        .collect()
}

/// The user part of a dial string's URI (`sip:`, `sips:`, `tel:` in any case), unescaped.
fn uri_user(uri: &str) -> String {
    let lower = uri.to_ascii_lowercase();
    let skip = ["sips:", "sip:", "tel:"]
        .iter()
        .find(|s| lower.starts_with(*s))
        .map_or(0, |s| s.len());
    let uri = uri.get(skip..).unwrap_or("");
    let user = uri.split(['@', ';', '?']).next().unwrap_or("");
    sip_user(user).unwrap_or_else(|| user.to_string())
}

fn one_channel(channel: &str) -> Vec<ChannelTarget> {
    let (tech, rest) = channel.split_once('/').unwrap_or((channel, ""));
    let target = |number: &str, context: Option<String>| ChannelTarget {
        tech: tech.to_string(),
        number: (!number.is_empty()).then(|| number.to_string()),
        context,
    };
    if tech.eq_ignore_ascii_case("local") {
        // Local/EXTEN@CONTEXT[/options], read as core_local.c `local_alloc` does: the options
        // follow the LAST `/` (an extension may hold slashes), the context the first `@`.
        let body = rest.rsplit_once('/').map_or(rest, |(before, _)| before);
        return vec![match body.split_once('@') {
            Some((e, c)) => target(e, Some(c.to_string())),
            // No context: Local channels use `default`.
            None => target(body, Some("default".to_string())),
        }];
    }
    match rest.split_once('/') {
        // PJSIP/[NUMBER@]trunk/URI-or-NUMBER
        Some((first, uri)) => {
            let mut out = Vec::new();
            if let Some((number, _)) = first.split_once('@') {
                out.push(target(number, None));
            }
            out.push(target(&uri_user(uri), None));
            out
        }
        // PJSIP/NUMBER@trunk or PJSIP/endpoint
        None => vec![target(rest.split('@').next().unwrap_or(""), None)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DialingConfig {
        DialingConfig {
            international_prefix: Some("011".into()),
            ..DialingConfig::default()
        }
    }

    #[test]
    fn prefixes_are_compared_in_international_form() {
        let c = cfg();
        assert_eq!(denied_prefix("+882123456789", &c), Some("882"));
        assert_eq!(denied_prefix("00882123456789", &c), Some("882"));
        assert_eq!(denied_prefix("011882123456789", &c), Some("882"));
        assert_eq!(denied_prefix("19005551234", &c), Some("1900"));
        assert_eq!(denied_prefix("+18705551234", &c), None);
        assert_eq!(denied_prefix("0044207946000", &c), None);
        assert_eq!(check("+8816123456", &c), Err(Rule::DenyPrefix));
        assert_eq!(check("02079460000", &c), Ok(()));
        // Behind a star code.
        assert_eq!(denied_prefix("*670088212345", &c), Some("882"));
        assert_eq!(denied_prefix("#31+88212345", &c), Some("882"));
        assert_eq!(denied_prefix("*6702079460000", &c), None);
    }

    #[test]
    fn internal_extensions_never_match_a_prefix() {
        let c = cfg();
        // A 4-digit plan with 8810-8839 overlaps the satellite and network codes.
        assert_eq!(denied_prefix("8812", &c), None);
        assert_eq!(denied_prefix("882", &c), None);
        let c = DialingConfig {
            internal_max_length: 0,
            deny_prefixes: vec!["882".into()],
            ..cfg()
        };
        assert_eq!(denied_prefix("8821", &c), Some("882"));
        // No longer than the prefix: not a number in the range.
        assert_eq!(denied_prefix("882", &c), None);
    }

    #[test]
    fn injection_characters_are_not_dialable() {
        let c = cfg();
        for bad in [
            "1001&PJSIP/trunk/900",
            "1001,30,tT",
            "1|2",
            "${SHELL(id)}",
            "1001(x)",
            "{a}",
            "1 2",
            "alice",
            "1+2",
            "",
        ] {
            assert_eq!(
                check_characters(bad, &c),
                Err(Rule::DialCharacters),
                "{bad}"
            );
        }
        assert_eq!(
            check_characters(&"1".repeat(MAX_DESTINATION + 1), &c),
            Err(Rule::DialCharacters)
        );
        for ok in ["1001", "*97", "#", "+442079460000", "0044207946000"] {
            assert_eq!(check_characters(ok, &c), Ok(()), "{ok}");
        }
        let letters = DialingConfig {
            extra_dial_characters: "abcdefghijklmnopqrstuvwxyz".into(),
            ..cfg()
        };
        assert_eq!(check_characters("alice", &letters), Ok(()));
        assert_eq!(
            check_characters("alice&bob", &letters),
            Err(Rule::DialCharacters)
        );
    }

    #[test]
    fn ami_names_pass_but_injection_does_not() {
        let c = cfg();
        for ok in ["s", "alice", "1001", "h", "sales-queue_1.2", "*97"] {
            assert_eq!(check_named(ok, &c), Ok(()), "{ok}");
        }
        for bad in ["1001&PJSIP/trunk", "a,b", "${EXTEN}", "x(y)", "a b", ""] {
            assert_eq!(check_named(bad, &c), Err(Rule::DialCharacters), "{bad}");
        }
        assert_eq!(check_named("0088212345", &c), Err(Rule::DenyPrefix));
        // Asterisk's matching skips `-`; separators must not hide a range.
        assert_eq!(check_named("00-882-12345", &c), Err(Rule::DenyPrefix));
        assert_eq!(check_named("0-0-882.12345", &c), Err(Rule::DenyPrefix));
        assert_eq!(check_named("1-900-555-1234", &c), Err(Rule::DenyPrefix));
        assert_eq!(check_named("020-7946-0000", &c), Ok(()));
    }

    #[test]
    fn sip_users_are_unescaped_as_asterisk_reads_them() {
        assert_eq!(sip_user("1001%26PJSIP").as_deref(), Some("1001&PJSIP"));
        assert_eq!(sip_user("%2b44").as_deref(), Some("+44"));
        assert_eq!(sip_user("1001"), Some("1001".into()));
        assert_eq!(sip_user("10%2"), None);
        assert_eq!(sip_user("10%zz"), None);
        assert_eq!(sip_user("%ff"), None);
    }

    fn target(tech: &str, number: Option<&str>, context: Option<&str>) -> ChannelTarget {
        ChannelTarget {
            tech: tech.into(),
            number: number.map(str::to_string),
            context: context.map(str::to_string),
        }
    }

    #[test]
    fn every_channel_form_gives_its_number() {
        assert_eq!(
            channel_targets("PJSIP/1001"),
            vec![target("PJSIP", Some("1001"), None)]
        );
        assert_eq!(
            channel_targets("PJSIP/0088212345@trunk"),
            vec![target("PJSIP", Some("0088212345"), None)]
        );
        assert_eq!(
            channel_targets("PJSIP/trunk/sip:+88212345@203.0.113.9:5060;transport=tcp"),
            vec![target("PJSIP", Some("+88212345"), None)]
        );
        assert_eq!(
            channel_targets("PJSIP/trunk/sip:%2B88212345@host"),
            vec![target("PJSIP", Some("+88212345"), None)]
        );
        assert_eq!(
            channel_targets("PJSIP/trunk/88212345"),
            vec![target("PJSIP", Some("88212345"), None)]
        );
        assert_eq!(
            channel_targets("SIP/provider/0088212345"),
            vec![target("SIP", Some("0088212345"), None)]
        );
        assert_eq!(
            channel_targets("Local/0088212345@outbound/n"),
            vec![target("Local", Some("0088212345"), Some("outbound"))]
        );
        assert_eq!(
            channel_targets("Local/1001"),
            vec![target("Local", Some("1001"), Some("default"))]
        );
        assert_eq!(
            channel_targets("PJSIP/1001&Local/2@default"),
            vec![
                target("PJSIP", Some("1001"), None),
                target("Local", Some("2"), Some("default"))
            ]
        );
        assert_eq!(channel_targets("PJSIP/"), vec![target("PJSIP", None, None)]);
        // chan_pjsip writes the number before `@` over the URI's user: both are checked.
        assert_eq!(
            channel_targets("PJSIP/0088212345@trunk/sip:1000@carrier"),
            vec![
                target("PJSIP", Some("0088212345"), None),
                target("PJSIP", Some("1000"), None)
            ]
        );
        assert_eq!(
            channel_targets("PJSIP/trunk/SIP:+88212345@host"),
            vec![target("PJSIP", Some("+88212345"), None)]
        );
        assert_eq!(
            channel_targets("DAHDI/g1/0088212345"),
            vec![target("DAHDI", Some("0088212345"), None)]
        );
        // Slashes belong to the extension; only what follows the last one is options.
        assert_eq!(
            channel_targets("Local/00/88212345@out/n"),
            vec![target("Local", Some("00/88212345"), Some("out"))]
        );
        assert_eq!(
            channel_targets("Local/00/88212345@out"),
            vec![target("Local", Some("00"), Some("default"))]
        );
        assert_eq!(
            channel_targets("local/1@sales"),
            vec![target("local", Some("1"), Some("sales"))]
        );
    }
}
