//! Wildcard matching shared by SQL `LIKE` (realtime lookups: `%`, `_`) and file globs (Asterisk
//! `#include`: `*`, `?`). Dynamic programming over pattern × text, so no pattern can make it
//! backtrack exponentially.

/// Whether `text` matches `pattern`, where `many` stands for any run of characters (also none)
/// and `one` for exactly one; every other character matches itself.
pub fn wildcard(pattern: &str, text: &str, many: char, one: char) -> bool {
    let t: Vec<char> = text.chars().collect();
    // row[j]: does the pattern so far match t[..j]?
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    for pc in pattern.chars() {
        let mut next = vec![false; t.len() + 1];
        if pc == many {
            let mut any = false;
            for j in 0..=t.len() {
                any |= row[j];
                next[j] = any;
            }
        } else {
            for j in 1..=t.len() {
                next[j] = row[j - 1] && (pc == one || pc == t[j - 1]);
            }
        }
        row = next;
    }
    row[t.len()]
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn globs() {
        assert!(wildcard("*.conf", "a.conf", '*', '?'));
        assert!(!wildcard("*.conf", "a.conf.bak", '*', '?'));
        assert!(wildcard("pjsip_?.conf", "pjsip_1.conf", '*', '?'));
        assert!(wildcard("*", "", '*', '?'));
    }
}
