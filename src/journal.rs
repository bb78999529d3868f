//! The high-volume audit log: one row per recording download and per state-changing AMI action,
//! written by one task in batches (a transaction per batch) so that a busy recording server or
//! dialer does not wait for a disk sync per row. The queue holds up to [`QUEUE`] rows (a few hundred bytes each); should
//! the database stall for that long, further rows go to the daemon's log (journald) instead
//! and are counted, so memory stays bounded and nothing vanishes silently. Flushed before the
//! daemon exits.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::store::{AuditEntry, Store};

const MAX_BATCH: usize = 1000;
/// Rows waiting for the writer at most.
pub const QUEUE: usize = 65_536;
const ATTEMPTS: u32 = 5;

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
        tokio::spawn(writer(store, rx));
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

async fn writer(store: Store, mut rx: mpsc::Receiver<Msg>) {
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
            write(&store, &batch).await;
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

async fn write(store: &Store, batch: &[AuditEntry]) {
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=ATTEMPTS {
        match store.audit_many(batch).await {
            Ok(()) => return,
            Err(e) if attempt < ATTEMPTS => {
                warn!(error = %e, rows = batch.len(), attempt, "writing the download log failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                error!(error = %e, rows = batch.len(), "writing the download log failed; the rows follow in this log");
                for row in batch {
                    error!(at = row.at, actor = %row.actor, action = %row.action, target = %row.target, detail = %row.detail, "download log row");
                }
            }
        }
    }
}
