//! The high-volume audit log: one row per recording download and per state-changing AMI action,
//! written by one task in batches (a transaction per batch) so that a busy recording server or
//! dialer does not wait for a disk sync per row. The queue holds up to [`QUEUE`] rows (a few
//! hundred bytes each). A batch the database cannot take is retried for [`RETRY_FOR`] (a
//! short fault of the disk loses nothing); after that, and for further batches while the
//! database still refuses, rows go to the daemon's log (journald) instead, as do rows that
//! find the queue full. Both are counted, so memory stays bounded and nothing vanishes
//! silently. Flushed before the daemon exits.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use crate::store::{AuditEntry, Store};

const MAX_BATCH: usize = 1000;
/// Rows waiting for the writer at most.
pub const QUEUE: usize = 65_536;
/// How long one batch is retried before its rows go to the daemon's log.
const RETRY_FOR: Duration = Duration::from_secs(5);
const MAX_DELAY: Duration = Duration::from_secs(1);

enum Msg {
    Entry(AuditEntry),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Clone)]
pub struct Journal {
    tx: mpsc::Sender<Msg>,
    overflow: prometheus_client::metrics::counter::Counter,
}

impl Journal {
    /// Starts the writer on the current runtime.
    /// `overflow` counts rows that went to the daemon's log instead of the database.
    pub fn start(store: Store, overflow: prometheus_client::metrics::counter::Counter) -> Journal {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(store, rx, overflow.clone()));
        Journal { tx, overflow }
    }

    pub fn record(&self, entry: AuditEntry) {
        if let Err(e) = self.tx.try_send(Msg::Entry(entry)) {
            let (mpsc::error::TrySendError::Full(Msg::Entry(row))
            | mpsc::error::TrySendError::Closed(Msg::Entry(row))) = e
            else {
                return;
            };
            self.overflow.inc();
            warn!(at = row.at, actor = %row.actor, action = %row.action, target = %row.target, detail = %row.detail, "download log queue full or closed; row kept here instead of the database");
        }
    }

    /// Resolves once every row recorded before the call is stored (or given up on).
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Flush(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

async fn writer(
    store: Store,
    mut rx: mpsc::Receiver<Msg>,
    overflow: prometheus_client::metrics::counter::Counter,
) {
    // Set while a batch was given up and nothing was written since: later batches get one
    // try each, so that a flush at shutdown during a long fault does not wait RETRY_FOR per
    // batch.
    let mut refusing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Entry(e) => batch.push(e),
                Msg::Flush(ack) => acks.push(ack),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let written = write(&store, &batch, !refusing).await;
            if !written {
                overflow.inc_by(batch.len() as u64);
            }
            refusing = !written;
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

/// Stores `batch`, retrying for [`RETRY_FOR`] when `retry`; `false` when the rows went to the
/// daemon's log instead.
async fn write(store: &Store, batch: &[AuditEntry], retry: bool) -> bool {
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut delay = Duration::from_millis(50);
    loop {
        match store.audit_many(batch).await {
            Ok(()) => return true,
            Err(e) if retry && tokio::time::Instant::now() + delay < deadline => {
                // A fault of the database is logged by the store when it starts and ends.
                debug!(error = %e, rows = batch.len(), "writing the download log failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_DELAY);
            }
            Err(e) => {
                error!(error = %e, rows = batch.len(), "writing the download log failed; the rows follow in this log");
                for row in batch {
                    error!(at = row.at, actor = %row.actor, action = %row.action, target = %row.target, detail = %row.detail, "download log row");
                }
                return false;
            }
        }
    }
}
