//! Which least role a URI needs: `[auth.routes]` prefixes matched against the normalised
//! `X-Original-URI`. Normalising first (query dropped, percent-decoded once, `\` as `/`,
//! duplicate slashes folded, `.` and `..` resolved) means `/admin/../monitoring`,
//! `/monitoring%2f..%2fadmin` and `//admin` are judged by where they really lead.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;

use super::roles::Role;

/// The normalised path of a request target; always starts with `/`, never ends with one
/// (except the root itself).
pub fn normalize(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode_str(path).decode_utf8_lossy();
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split(['/', '\\']) {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

/// Longest configured prefix of the normalised path wins; `None` when no prefix matches.
/// Prefixes match as strings and without regard to ASCII case, so `/admin` also covers
/// `/administration` and `/Admin` (the strict side: an app that treats paths
/// case-insensitively cannot be reached around a rule).
pub fn required_role(routes: &BTreeMap<String, String>, target: &str) -> Option<Role> {
    let path = normalize(target).to_ascii_lowercase();
    routes
        .iter()
        .map(|(prefix, role)| (normalize(prefix).to_ascii_lowercase(), role))
        .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
        .max_by_key(|(prefix, _)| prefix.len())
        .and_then(|(_, role)| Role::parse(role))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        for (input, want) in [
            ("/monitoring", "/monitoring"),
            ("/monitoring/", "/monitoring"),
            ("/admin/../monitoring", "/monitoring"),
            ("/monitoring/..%2fadmin", "/admin"),
            ("/monitoring%2F..%2Fadmin", "/admin"),
            ("//admin", "/admin"),
            ("/./admin//users", "/admin/users"),
            ("/admin?x=/monitoring", "/admin"),
            ("/a/b/../../../../admin", "/admin"),
            ("\\admin", "/admin"),
            ("%2e%2e/admin", "/admin"),
            ("/%252e%252e/admin", "/%2e%2e/admin"),
            ("", "/"),
            ("/x%00y", "/x\u{0}y"),
            ("/%ff", "/\u{fffd}"),
        ] {
            assert_eq!(normalize(input), want, "{input}");
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let routes: BTreeMap<String, String> = [
            ("/monitoring", "supervisor"),
            ("/monitoring/admin", "admin"),
            ("/reports", "manager"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(
            required_role(&routes, "/monitoring/queues"),
            Some(Role::Supervisor)
        );
        assert_eq!(
            required_role(&routes, "/monitoring/admin/x"),
            Some(Role::Admin)
        );
        assert_eq!(
            required_role(&routes, "/monitoring/x/../admin"),
            Some(Role::Admin)
        );
        assert_eq!(
            required_role(&routes, "/admin/../reports/daily"),
            Some(Role::Manager)
        );
        assert_eq!(
            required_role(&routes, "/reports%2f..%2fmonitoring"),
            Some(Role::Supervisor)
        );
        assert_eq!(required_role(&routes, "/agent/home"), None);
        assert_eq!(
            required_role(&routes, "/MONITORING/queues"),
            Some(Role::Supervisor)
        );
        assert_eq!(
            required_role(&routes, "/Monitoring/Admin"),
            Some(Role::Admin)
        );
    }
}
