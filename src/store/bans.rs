//! The one ban list (see `crate::bans`): a row per source and address. Every write bumps
//! `ban_version` and announces [`Change::Bans`] in its own transaction, so a daemon sees a
//! change the CLI or another node made within its next poll (or at once, on PostgreSQL).

use super::changes::Change;
use super::{Store, StoreError};

/// Expired rows are kept this long: a repeat offender's next ban is doubled while its last
/// one is remembered.
pub const REMEMBER_SECS: i64 = 86_400;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BanRow {
    pub address: String,
    pub source: String,
    pub origin: String,
    pub reason: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub hits: i64,
    pub node: String,
}

/// A ban to impose (or renew).
#[derive(Debug, Clone)]
pub struct NewBan<'a> {
    pub address: &'a str,
    pub source: &'a str,
    pub reason: &'a str,
    pub node: &'a str,
    pub now: i64,
    /// The length of a first ban.
    pub base_secs: i64,
    /// Repeat offences double the length up to this; equal to `base_secs`, no escalation.
    pub max_secs: i64,
}

const COLUMNS: &str = "address, source, origin, reason, created_at, expires_at, hits, node";

const BUMP: &str = "INSERT INTO ban_version (id, version) VALUES (1, 1) \
     ON CONFLICT(id) DO UPDATE SET version = ban_version.version + 1";

/// The length of the `hits`-th ban: `base` doubled per earlier one, at most `max`.
pub fn escalate(base: i64, max: i64, hits: i64) -> i64 {
    let doublings = (hits - 1).clamp(0, 40) as u32;
    base.saturating_mul(1i64 << doublings.min(40))
        .min(max.max(base))
}

impl Store {
    /// Imposes a ban, or renews the one this source already holds on the address. A ban
    /// that ended less than [`REMEMBER_SECS`] ago makes this a repeat offence: `hits` grows
    /// and the length doubles per earlier offence (up to `max_secs`). One still in force is
    /// renewed at its length (several nodes banning on the same events must not double it).
    /// A ban never gets shorter. Returns the row as stored.
    pub async fn put_ban(&self, ban: &NewBan<'_>) -> Result<BanRow, StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            let old: Option<BanRow> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM bans WHERE address = $1 AND source = $2 AND origin = ''"
            ))
            .bind(ban.address)
            .bind(ban.source)
            .fetch_optional(&mut *tx)
            .await?;
            let row = match old {
                // Still in force (another node banned on the same events, an admin renewing):
                // renewed at its current length, not doubled.
                Some(old) if old.expires_at > ban.now => {
                    let until = ban.now + escalate(ban.base_secs, ban.max_secs, old.hits);
                    BanRow {
                        reason: ban.reason.to_string(),
                        expires_at: until.max(old.expires_at),
                        node: ban.node.to_string(),
                        ..old
                    }
                }
                // Ended lately: a repeat offence, doubled.
                Some(old) if old.expires_at > ban.now - REMEMBER_SECS => {
                    let hits = old.hits.saturating_add(1);
                    BanRow {
                        reason: ban.reason.to_string(),
                        created_at: ban.now,
                        expires_at: ban.now + escalate(ban.base_secs, ban.max_secs, hits),
                        hits,
                        node: ban.node.to_string(),
                        ..old
                    }
                }
                _ => BanRow {
                    address: ban.address.to_string(),
                    source: ban.source.to_string(),
                    origin: String::new(),
                    reason: ban.reason.to_string(),
                    created_at: ban.now,
                    expires_at: ban.now + ban.base_secs,
                    hits: 1,
                    node: ban.node.to_string(),
                },
            };
            tx.exec(
                sqlx::query(&format!(
                    "INSERT INTO bans ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT(address, source, origin) DO UPDATE SET reason = excluded.reason, \
                     created_at = excluded.created_at, expires_at = excluded.expires_at, \
                     hits = excluded.hits, node = excluded.node"
                ))
                .bind(&row.address)
                .bind(&row.source)
                .bind(&row.origin)
                .bind(&row.reason)
                .bind(row.created_at)
                .bind(row.expires_at)
                .bind(row.hits)
                .bind(&row.node),
            )
            .await?;
            tx.exec(sqlx::query(BUMP)).await?;
            tx.announce(&Change::Bans).await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    /// Bans in force at `now` (every source), soonest to end first.
    pub async fn bans(&self, now: i64) -> Result<Vec<BanRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM bans WHERE expires_at > $1 ORDER BY expires_at, address, source, origin"
            ))
            .bind(now)
            .fetch_all(db.pool)
            .await?)
        })
    }

    /// Changes with every write to the ban list (0 before the first).
    pub async fn ban_version(&self) -> Result<i64, StoreError> {
        with_db!(self, db => {
            let v: Option<i64> = sqlx::query_scalar("SELECT version FROM ban_version WHERE id = 1")
                .fetch_optional(db.pool)
                .await?;
            Ok(v.unwrap_or(0))
        })
    }

    /// Lifts every source's ban of `address` (exactly that key), or every ban with `None`;
    /// the offence history goes with it. Returns how many rows in force went.
    pub async fn delete_bans(&self, address: Option<&str>, now: i64) -> Result<u64, StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            let live: i64 = match address {
                Some(a) => sqlx::query_scalar("SELECT COUNT(*) FROM bans WHERE address = $1 AND expires_at > $2")
                    .bind(a)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?,
                None => sqlx::query_scalar("SELECT COUNT(*) FROM bans WHERE expires_at > $1")
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?,
            };
            match address {
                Some(a) => tx.exec(sqlx::query("DELETE FROM bans WHERE address = $1").bind(a)).await?,
                None => tx.exec(sqlx::query("DELETE FROM bans")).await?,
            };
            tx.exec(sqlx::query(BUMP)).await?;
            tx.announce(&Change::Bans).await?;
            tx.commit().await?;
            Ok(live as u64)
        })
    }

    /// Makes `feed`'s rows exactly `addresses`, each in force until `expires_at`: what the
    /// feed dropped goes, what it added comes. Returns (added, removed).
    pub async fn replace_feed_bans(
        &self,
        feed: &str,
        addresses: &[String],
        now: i64,
        expires_at: i64,
        node: &str,
    ) -> Result<(u64, u64), StoreError> {
        let wanted: std::collections::HashSet<&str> =
            addresses.iter().map(String::as_str).collect();
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            let have: Vec<String> = sqlx::query_scalar(
                "SELECT address FROM bans WHERE source = 'feed' AND origin = $1",
            )
            .bind(feed)
            .fetch_all(&mut *tx)
            .await?;
            let have_set: std::collections::HashSet<&str> = have.iter().map(String::as_str).collect();
            let mut removed = 0;
            for gone in have.iter().filter(|a| !wanted.contains(a.as_str())) {
                tx.exec(
                    sqlx::query("DELETE FROM bans WHERE address = $1 AND source = 'feed' AND origin = $2")
                        .bind(gone)
                        .bind(feed),
                )
                .await?;
                removed += 1;
            }
            tx.exec(
                sqlx::query("UPDATE bans SET expires_at = $2, node = $3 WHERE source = 'feed' AND origin = $1")
                    .bind(feed)
                    .bind(expires_at)
                    .bind(node),
            )
            .await?;
            let mut added = 0;
            for new in wanted.iter().filter(|a| !have_set.contains(*a)) {
                tx.exec(
                    sqlx::query(&format!(
                        "INSERT INTO bans ({COLUMNS}) VALUES ($1, 'feed', $2, $3, $4, $5, 1, $6) \
                         ON CONFLICT(address, source, origin) DO UPDATE SET expires_at = excluded.expires_at"
                    ))
                    .bind(*new)
                    .bind(feed)
                    .bind(format!("listed by feed {feed}"))
                    .bind(now)
                    .bind(expires_at)
                    .bind(node),
                )
                .await?;
                added += 1;
            }
            tx.exec(sqlx::query(BUMP)).await?;
            tx.announce(&Change::Bans).await?;
            tx.commit().await?;
            Ok((added, removed))
        })
    }

    /// Deletes rows that ended more than [`REMEMBER_SECS`] before `now`.
    pub async fn forget_bans(&self, now: i64) -> Result<u64, StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            let done = tx
                .exec(sqlx::query("DELETE FROM bans WHERE expires_at <= $1").bind(now - REMEMBER_SECS))
                .await?;
            tx.commit().await?;
            Ok(done.rows_affected())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escalation_doubles_and_stops_at_the_cap() {
        assert_eq!(escalate(3600, 3600 * 24, 1), 3600);
        assert_eq!(escalate(3600, 3600 * 24, 2), 7200);
        assert_eq!(escalate(3600, 3600 * 24, 5), 3600 * 16);
        assert_eq!(escalate(3600, 3600 * 24, 6), 3600 * 24);
        assert_eq!(escalate(3600, 3600 * 24, i64::MAX), 3600 * 24);
        assert_eq!(
            escalate(3600, 60, 3),
            3600,
            "a cap below the base does not shorten it"
        );
    }
}
