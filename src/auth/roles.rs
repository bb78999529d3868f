//! Levels and roles: level 1-4 agent, 5-6 supervisor, 7-8 manager, 9 admin. A role includes
//! every role below it, so "least role" checks compare levels.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Agent,
    Supervisor,
    Manager,
    Admin,
}

pub const MIN_LEVEL: u8 = 1;
pub const MAX_LEVEL: u8 = 9;

impl Role {
    /// The role of a valid level; `None` outside 1-9.
    pub fn of_level(level: u8) -> Option<Role> {
        match level {
            1..=4 => Some(Role::Agent),
            5..=6 => Some(Role::Supervisor),
            7..=8 => Some(Role::Manager),
            9 => Some(Role::Admin),
            _ => None,
        }
    }

    /// The lowest level that has this role.
    pub fn min_level(self) -> u8 {
        match self {
            Role::Agent => 1,
            Role::Supervisor => 5,
            Role::Manager => 7,
            Role::Admin => 9,
        }
    }

    /// Exact, lowercase role names only: a header like `Admin ` is not silently accepted.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "agent" => Some(Role::Agent),
            "supervisor" => Some(Role::Supervisor),
            "manager" => Some(Role::Manager),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Supervisor => "supervisor",
            Role::Manager => "manager",
            Role::Admin => "admin",
        }
    }

    /// Whether a user of `level` holds at least this role.
    pub fn allows(self, level: u8) -> bool {
        Role::of_level(level).is_some_and(|r| r >= self)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_roles_and_roles_include_lower_ones() {
        let expected = [
            (0, None),
            (1, Some(Role::Agent)),
            (4, Some(Role::Agent)),
            (5, Some(Role::Supervisor)),
            (6, Some(Role::Supervisor)),
            (7, Some(Role::Manager)),
            (8, Some(Role::Manager)),
            (9, Some(Role::Admin)),
            (10, None),
        ];
        for (level, role) in expected {
            assert_eq!(Role::of_level(level), role, "level {level}");
        }
        assert!(Role::Supervisor.allows(9));
        assert!(Role::Supervisor.allows(5));
        assert!(!Role::Supervisor.allows(4));
        assert!(!Role::Agent.allows(0));
        assert!(!Role::Admin.allows(8));
        for r in [Role::Agent, Role::Supervisor, Role::Manager, Role::Admin] {
            assert_eq!(Role::parse(r.name()), Some(r));
            assert_eq!(Role::of_level(r.min_level()), Some(r));
        }
        assert_eq!(Role::parse("Admin"), None);
        assert_eq!(Role::parse("admin "), None);
    }
}
