//! Extension names and patterns as `main/pbx.c` matches them (`_extension_match_core`): a
//! name without a leading `_` is literal; after `_`, `X` is 0-9, `Z` 1-9, `N` 2-9 (either
//! case), `[…]` a set with `a-b` ranges, `.` one or more of any character, `!` zero or more,
//! and `-` is ignored on both sides. Anything after `.` or `!` is never looked at.

/// The characters pbxguard's SIP edge and AMI gateway pass on in a destination (`[dialing]`):
/// the rules below judge patterns by what can arrive through those doors.
pub fn dialable(c: char) -> bool {
    c.is_ascii_digit() || matches!(c, '*' | '#' | '+')
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Elem {
    /// One character out of these inclusive ranges (a literal is a range of one).
    Set(Vec<(char, char)>),
    /// `.` (`at_least_one`) or `!`: the rest, whatever it is.
    Rest { at_least_one: bool },
}

/// One extension's name, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exten {
    /// Written with a leading `_`.
    pub pattern: bool,
    /// A `[` without its `]`: Asterisk warns and the pattern never matches.
    pub broken: bool,
    elems: Vec<Elem>,
}

impl Exten {
    pub fn parse(name: &str) -> Exten {
        let Some(body) = name.strip_prefix('_') else {
            return Exten {
                pattern: false,
                broken: false,
                elems: name
                    .chars()
                    .filter(|&c| c != '-')
                    .map(|c| Elem::Set(vec![(c, c)]))
                    .collect(),
            };
        };
        let mut elems = Vec::new();
        let mut broken = false;
        let chars: Vec<char> = body.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            let set = match c {
                '-' => continue,
                'x' | 'X' => vec![('0', '9')],
                'z' | 'Z' => vec![('1', '9')],
                'n' | 'N' => vec![('2', '9')],
                '.' | '!' => {
                    elems.push(Elem::Rest {
                        at_least_one: c == '.',
                    });
                    break;
                }
                '[' => {
                    let Some(len) = chars[i..].iter().position(|&c| c == ']') else {
                        broken = true;
                        break;
                    };
                    let inner = &chars[i..i + len];
                    i += len + 1;
                    let mut ranges = Vec::new();
                    let mut j = 0;
                    while j < inner.len() {
                        if j + 2 < inner.len() && inner[j + 1] == '-' {
                            ranges.push((inner[j], inner[j + 2]));
                            j += 3;
                        } else {
                            ranges.push((inner[j], inner[j]));
                            j += 1;
                        }
                    }
                    // Asterisk skips an empty set.
                    if ranges.is_empty() {
                        continue;
                    }
                    ranges
                }
                c => vec![(c, c)],
            };
            elems.push(Elem::Set(set));
        }
        Exten {
            pattern: true,
            broken,
            elems,
        }
    }

    /// Whether the dialled string `s` selects this extension (`-` ignored, as Asterisk does).
    pub fn matches(&self, s: &str) -> bool {
        self.walk(s) == Walk::Match
    }

    /// Whether some string that starts with `prefix` selects this extension: the targets of
    /// a `Goto(ctx,1${EXTEN},1)`.
    pub fn may_start_with(&self, prefix: &str) -> bool {
        self.walk(prefix) != Walk::Fail
    }

    fn walk(&self, s: &str) -> Walk {
        if self.broken {
            return Walk::Fail;
        }
        let mut chars = s.chars().filter(|&c| c != '-').peekable();
        for e in &self.elems {
            match e {
                Elem::Rest { at_least_one } => {
                    return if !at_least_one || chars.peek().is_some() {
                        Walk::Match
                    } else {
                        Walk::More
                    };
                }
                Elem::Set(ranges) => match chars.next() {
                    None => return Walk::More,
                    Some(c) if ranges.iter().any(|&(a, b)| a <= c && c <= b) => {}
                    Some(_) => return Walk::Fail,
                },
            }
        }
        if chars.next().is_some() {
            Walk::Fail
        } else {
            Walk::Match
        }
    }

    /// Whether a destination made of more than the dialable characters reaches `${EXTEN}`
    /// here: a pattern whose first character may be anything (`_.`, `_!`), or with a set or
    /// literal outside `0-9 * # +` before its `.`/`!`. `_X.` is not: its tail matches any
    /// character in Asterisk, but pbxguard's edge and gateway refuse non-dialable destinations
    /// before Asterisk sees them. A literal name is what it is and nobody else chooses it.
    pub fn admits_non_dialable(&self) -> bool {
        if !self.pattern || self.broken {
            return false;
        }
        match self.elems.first() {
            None => false,
            Some(Elem::Rest { .. }) => true,
            Some(Elem::Set(_)) => self.elems.iter().any(|e| match e {
                Elem::Set(ranges) => ranges.iter().any(|&(a, b)| !range_dialable(a, b)),
                Elem::Rest { .. } => false,
            }),
        }
    }

    /// The characters every match starts with: the leading elements that admit exactly one
    /// character.
    pub fn fixed_prefix(&self) -> String {
        self.elems
            .iter()
            .map_while(|e| match e {
                Elem::Set(r) if r.iter().all(|&(a, b)| a == b && a == r[0].0) => Some(r[0].0),
                _ => None,
            })
            .collect()
    }

    /// Whether the name matches exactly one string (a literal, or a pattern of single
    /// characters).
    pub fn is_fixed(&self) -> bool {
        !self.broken && self.fixed_prefix().chars().count() == self.elems.len()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Walk {
    Match,
    /// The string ran out while the pattern wants more.
    More,
    Fail,
}

/// Every character from `a` to `b` is dialable (an inverted range admits nothing).
fn range_dialable(a: char, b: char) -> bool {
    a > b || (a == b && dialable(a)) || (a.is_ascii_digit() && b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_as_asterisk_does() {
        let p = Exten::parse("_X.");
        assert!(
            p.matches("12") && p.matches("1&PJSIP/x"),
            "`.` is any character"
        );
        assert!(!p.matches("1"), "`.` wants one or more");
        assert!(!p.matches("a1"));
        let p = Exten::parse("_1NXX-XXXX!");
        assert!(p.matches("1212555-1234") && p.matches("12125551234999"));
        assert!(!p.matches("1112555123"), "N is 2-9");
        assert!(
            Exten::parse("_x!").matches("1"),
            "lower case wildcards, `!` zero or more"
        );
        assert!(Exten::parse("_[1-3a]Z").matches("a1"));
        assert!(!Exten::parse("_[1-3a]Z").matches("40"));
        assert!(!Exten::parse("_[1-3a]Z").matches("a0"), "Z is 1-9");
        assert!(Exten::parse("_[]5").matches("5"), "an empty set is skipped");
        let broken = Exten::parse("_[12");
        assert!(broken.broken && !broken.matches("1") && !broken.matches("[12"));
        let lit = Exten::parse("s");
        assert!(!lit.pattern && lit.matches("s") && !lit.matches("s1"));
        assert!(Exten::parse("1001").matches("10-01"), "`-` is ignored");
        assert!(Exten::parse("_X.").may_start_with("1"));
        assert!(Exten::parse("_9X.").may_start_with(""));
        assert!(!Exten::parse("_9X.").may_start_with("1"));
        assert!(!Exten::parse("_X.").matches(""));
    }

    #[test]
    fn which_patterns_admit_non_dialable_destinations() {
        for p in [
            "_.",
            "_!",
            "_[a-z].",
            "_[0-9a-f]X",
            "_abc.",
            "_[0-~]X",
            "_X[!-z]",
        ] {
            assert!(Exten::parse(p).admits_non_dialable(), "{p}");
        }
        for p in [
            "_X.", "_X!", "_+X.", "_*X!", "_[0-9]X.", "_00X.", "_[12]00X", "_X*X!", "s", "echo",
            "_[9-0]X", "_[",
        ] {
            assert!(!Exten::parse(p).admits_non_dialable(), "{p}");
        }
    }

    #[test]
    fn fixed_prefixes() {
        assert_eq!(Exten::parse("_X.").fixed_prefix(), "");
        assert_eq!(Exten::parse("_00X.").fixed_prefix(), "00");
        assert_eq!(Exten::parse("_9-011X.").fixed_prefix(), "9011");
        assert_eq!(Exten::parse("_[9]1X.").fixed_prefix(), "91");
        assert_eq!(Exten::parse("_[12]00X").fixed_prefix(), "");
        assert_eq!(Exten::parse("1001").fixed_prefix(), "1001");
        assert!(Exten::parse("1001").is_fixed() && Exten::parse("_1001").is_fixed());
        assert!(!Exten::parse("_100X").is_fixed() && !Exten::parse("_100.").is_fixed());
    }
}
