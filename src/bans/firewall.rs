//! Keeps the kernel's copy of the ban list equal to the store's (`[bans] firewall =
//! "nftables"`): on start, after every change, on reload, at the end of each ban and every
//! `reconcile_interval` (someone flushing the table is repaired then).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::config::Firewall;
use super::list::Bans;
use super::nft::Nft;
use crate::clock::now_unix;
use crate::metrics::{Metrics, ResultLabels};

/// Changes arriving together (a feed's thousand rows, a burst of bans) are applied at once,
/// after this pause.
const SETTLE: Duration = Duration::from_millis(100);

/// Runs until `stop`. With `firewall = "none"` it only waits for a reload that turns it on;
/// turned off, the table is removed.
pub fn start(bans: Bans, metrics: Metrics, tracker: &TaskTracker, stop: CancellationToken) {
    tracker.spawn(async move {
        let mut changes = bans.subscribe();
        let mut owned: Option<String> = None;
        let mut nft: Option<Nft> = None;
        let mut dropped_seen: u64 = 0;
        let mut failing = false;
        loop {
            let config = bans.config();
            if config.firewall == Firewall::Nftables && !bans.loaded() {
                // Not read from the store yet: wait rather than empty the kernel's sets.
            } else if config.firewall == Firewall::Nftables {
                if owned.as_deref().is_some_and(|t| t != config.table) {
                    if let Some(old) = owned.take() {
                        remove(&old).await;
                    }
                    dropped_seen = 0;
                }
                // One instance per table: it remembers what it wrote, which is how a table
                // someone deleted or changed is told from a first start.
                if nft.as_ref().is_none_or(|n| n.table() != config.table) {
                    nft = Some(Nft::new(&config.table));
                }
                let Some(nft) = nft.as_ref() else {
                    continue;
                };
                let elements = bans.elements();
                match nft.reconcile(&elements, now_unix()).await {
                    Ok(done) => {
                        owned = Some(config.table.clone());
                        let result = if done.repaired { "repaired" } else { "ok" };
                        metrics.ban_reconciles.get_or_create(&ResultLabels { result }).inc();
                        if done.repaired {
                            info!(table = %config.table, elements = elements.len(), "firewall table (re)built");
                        }
                        if failing {
                            failing = false;
                            info!("the firewall takes the ban list again");
                        }
                        // The counters restart with a rebuilt table.
                        if done.dropped_packets >= dropped_seen {
                            metrics.ban_dropped_packets.inc_by(done.dropped_packets - dropped_seen);
                        } else {
                            metrics.ban_dropped_packets.inc_by(done.dropped_packets);
                        }
                        dropped_seen = done.dropped_packets;
                    }
                    Err(e) => {
                        metrics.ban_reconciles.get_or_create(&ResultLabels { result: "failed" }).inc();
                        if !failing {
                            failing = true;
                            warn!(error = %e, table = %config.table, "updating the firewall failed; pbxguard's own listeners still refuse banned addresses");
                        }
                    }
                }
            } else if let Some(old) = owned.take() {
                remove(&old).await;
            }
            let mut wait = config.reconcile_interval;
            if let Some(end) = bans.next_expiry() {
                let left = Duration::from_secs((end - now_unix()).max(0) as u64 + 1);
                wait = wait.min(left);
            }
            if failing {
                wait = wait.min(Duration::from_secs(5));
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                r = changes.changed() => {
                    if r.is_err() {
                        return;
                    }
                    tokio::time::sleep(SETTLE).await;
                    changes.borrow_and_update();
                }
            }
        }
    });
}

async fn remove(table: &str) {
    match Nft::new(table).remove().await {
        Ok(true) => info!(table, "firewall table removed"),
        Ok(false) => {}
        Err(e) => warn!(table, error = %e, "removing the firewall table failed"),
    }
}
