//! The download log: one audit row per request for a genuine link, written by one task in
//! batches (a transaction per batch) so that a busy recording server does not wait for a disk
//! sync per download. Rows are queued without a bound — each is a few hundred bytes and the
//! writer drains hundreds per transaction — and flushed before the daemon exits.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::store::{AuditEntry, Store};

const MAX_BATCH: usize = 1000;
const ATTEMPTS: u32 = 5;

enum Msg {
    Entry(AuditEntry),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Clone)]
pub struct Journal {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Journal {
    /// Starts the writer on the current runtime.
    pub fn start(store: Store) -> Journal {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer(store, rx));
        Journal { tx }
    }

    pub fn record(&self, entry: AuditEntry) {
        if let Err(mpsc::error::SendError(Msg::Entry(e))) = self.tx.send(Msg::Entry(entry)) {
            // Only after the writer is gone (shutdown): keep the row in the journal at least.
            warn!(action = %e.action, target = %e.target, detail = %e.detail, "download log closed; row not stored");
        }
    }

    /// Resolves once every row recorded before the call is stored (or given up on).
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.await;
        }
    }
}

async fn writer(store: Store, mut rx: mpsc::UnboundedReceiver<Msg>) {
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
