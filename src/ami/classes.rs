//! Asterisk's event classes (`perms[]` in manager.c) and its reading of `Events:` and
//! `EventMask:` values (`strings_to_mask`, `get_perm`, `ast_instring`), quirks included: the
//! gateway must compute the same mask Asterisk would have.

/// `(label, bit)` in Asterisk's order; `Privilege:` lists labels in this order.
pub const CLASSES: &[(&str, u32)] = &[
    ("system", 1 << 0),
    ("call", 1 << 1),
    ("log", 1 << 2),
    ("verbose", 1 << 3),
    ("command", 1 << 4),
    ("agent", 1 << 5),
    ("user", 1 << 6),
    ("config", 1 << 7),
    ("dtmf", 1 << 8),
    ("reporting", 1 << 9),
    ("cdr", 1 << 10),
    ("dialplan", 1 << 11),
    ("originate", 1 << 12),
    ("agi", 1 << 13),
    ("cc", 1 << 15),
    ("aoc", 1 << 16),
    ("test", 1 << 17),
    ("security", 1 << 18),
    ("message", 1 << 30),
];

/// Asterisk's `all` (INT_MAX).
pub const ALL: u32 = i32::MAX as u32;
/// Asterisk's security events name other peers' addresses and accounts, and for failed MD5
/// logins the hash a right secret gives: read by pbxguard's own monitoring session, never
/// passed to a gateway client.
pub const SECURITY: u32 = 1 << 18;

/// `perms[]` also holds `all` and `none`, which `get_perm` matches like any label.
const LABELS: &[(&str, u32)] = &[("all", ALL), ("none", 0)];

fn labels() -> impl Iterator<Item = (&'static str, u32)> {
    CLASSES.iter().chain(LABELS).copied()
}

/// `ast_instring(big, small, ',')`: a token before a comma matches when it is a prefix of
/// `small` (so an empty token matches everything); the last token must equal it. Case-sensitive.
fn instring(big: &[u8], small: &[u8]) -> bool {
    let mut rest = big;
    loop {
        match rest.iter().position(|&b| b == b',') {
            Some(comma) => {
                let token = &rest[..comma];
                if small.starts_with(token) {
                    return true;
                }
                rest = &rest[comma + 1..];
                if rest.is_empty() {
                    return false;
                }
            }
            None => return rest == small,
        }
    }
}

/// `get_perm`: the classes a comma list names.
pub fn get_perm(text: &[u8]) -> u32 {
    labels()
        .filter(|(label, _)| instring(text, label.as_bytes()))
        .fold(0, |acc, (_, bit)| acc | bit)
}

fn is_true(v: &[u8]) -> bool {
    ["yes", "true", "y", "t", "1", "on"]
        .iter()
        .any(|t| v.eq_ignore_ascii_case(t.as_bytes()))
}

fn is_false(v: &[u8]) -> bool {
    ["no", "false", "n", "f", "0", "off"]
        .iter()
        .any(|t| v.eq_ignore_ascii_case(t.as_bytes()))
}

/// C's `atoi` on a string of digits (strtol clamps, then the cast to int truncates).
fn atoi(digits: &[u8]) -> u32 {
    let mut v: i64 = 0;
    for &d in digits {
        v = v.saturating_mul(10).saturating_add(i64::from(d - b'0'));
    }
    v as i32 as u32
}

/// `strings_to_mask`: `None` when the value leaves the mask unchanged (empty), else the mask.
pub fn strings_to_mask(value: &[u8]) -> Option<u32> {
    if value.is_empty() {
        return None;
    }
    if value.iter().all(u8::is_ascii_digit) {
        return Some(atoi(value));
    }
    if is_false(value) {
        return Some(0);
    }
    if is_true(value) {
        return Some(labels().fold(0, |acc, (_, bit)| acc | bit));
    }
    Some(get_perm(value))
}

/// The classes of an event from its `Privilege:` value (`call,reporting,all`).
pub fn privilege_mask(value: &[u8]) -> u32 {
    value
        .split(|&b| b == b',')
        .filter_map(|label| {
            CLASSES
                .iter()
                .find(|(name, _)| name.as_bytes().eq_ignore_ascii_case(label.trim_ascii()))
                .map(|(_, bit)| *bit)
        })
        .fold(0, |acc, bit| acc | bit)
}

/// A mask as the comma list Asterisk reads back to the same bits, or `off`.
pub fn mask_text(mask: u32) -> String {
    let names: Vec<&str> = CLASSES
        .iter()
        .filter(|(_, bit)| mask & bit != 0)
        .map(|(name, _)| *name)
        .collect();
    if names.is_empty() {
        "off".to_string()
    } else {
        names.join(",")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an event class (classes: all, none, {list})", list = CLASSES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "))]
pub struct UnknownClass(pub String);

/// An admin's `--events` list: exact class names, `all` or `none`.
pub fn parse_class_list(text: &str) -> Result<u32, UnknownClass> {
    let mut mask = 0;
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let item = item.to_ascii_lowercase();
        mask |= match item.as_str() {
            "all" => CLASSES.iter().fold(0, |acc, (_, bit)| acc | bit),
            "none" => 0,
            _ => CLASSES
                .iter()
                .find(|(name, _)| *name == item)
                .map(|(_, bit)| *bit)
                .ok_or(UnknownClass(item))?,
        };
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_never_get_the_security_class() {
        let named = CLASSES.iter().find(|(n, _)| *n == "security").map(|c| c.1);
        assert_eq!(named, Some(SECURITY));
        let asked = strings_to_mask(b"call,security").unwrap();
        assert_eq!(asked & ALL & !SECURITY & SECURITY, 0);
    }

    #[test]
    fn masks_as_asterisk_computes_them() {
        assert_eq!(strings_to_mask(b""), None);
        assert_eq!(strings_to_mask(b"off"), Some(0));
        assert_eq!(
            strings_to_mask(b"On"),
            Some(labels().fold(0, |a, (_, b)| a | b))
        );
        assert_eq!(strings_to_mask(b"call,system"), Some(0b11));
        assert_eq!(strings_to_mask(b"6"), Some(6));
        // A token before a comma only has to be a prefix of a label ...
        assert_eq!(strings_to_mask(b"cal,x"), Some(1 << 1));
        // ... and an empty one is a prefix of every label.
        assert_eq!(strings_to_mask(b",x"), Some(ALL));
        // Labels are case-sensitive; unknown words give nothing.
        assert_eq!(strings_to_mask(b"Call"), Some(0));
        assert_eq!(strings_to_mask(b"all"), Some(ALL));
        assert_eq!(strings_to_mask(b"99999999999999999999"), Some(u32::MAX));
    }

    #[test]
    fn privilege_and_text_round_trip() {
        assert_eq!(privilege_mask(b"call,reporting,all"), (1 << 1) | (1 << 9));
        assert_eq!(privilege_mask(b"<none>"), 0);
        let mask = (1 << 1) | (1 << 30);
        assert_eq!(get_perm(mask_text(mask).as_bytes()), mask);
        assert_eq!(mask_text(0), "off");
        assert_eq!(strings_to_mask(mask_text(0).as_bytes()), Some(0));
    }

    #[test]
    fn admin_lists() {
        assert_eq!(
            parse_class_list("call, agent").unwrap(),
            (1 << 1) | (1 << 5)
        );
        assert_eq!(parse_class_list("none").unwrap(), 0);
        assert!(parse_class_list("calls").is_err());
    }
}
