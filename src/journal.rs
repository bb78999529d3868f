//! The high-volume audit log: one row per recording download and per state-changing AMI action,
//! written by one task in batches (a transaction per batch) so that a busy recording server or
//! dialer does not wait for a disk sync per row; and login history rows that could not be
//! written when they happened because the database was unreachable. The queue holds up to
//! [`QUEUE`] rows (a few hundred bytes each).
//!
//! A batch the database cannot take is retried: on SQLite for [`RETRY_FOR`] (a short fault of
//! the disk loses nothing; a full disk does not clear up by waiting); on a shared PostgreSQL
//! database until it is back, since an outage of the database server is expected to end and
//! the rows must not be lost. Rows that find the queue full, and batches given up (SQLite
//! after the retry time; either store once the daemon is stopping), go to the daemon's log
//! (journald) instead. Both are counted, so memory stays bounded and nothing vanishes
//! silently. Flushed before the daemon exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use crate::store::{AuditEntry, NewHistory, Store};

const MAX_BATCH: usize = 1000;
/// Rows waiting for the writer at most.
pub const QUEUE: usize = 65_536;
/// How long one batch is retried before its rows go to the daemon's log.
const RETRY_FOR: Duration = Duration::from_secs(5);
const MAX_DELAY: Duration = Duration::from_secs(1);

/// A login history row held until the database takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub at: i64,
    pub username: String,
    pub ip: String,
    pub user_agent: String,
    pub result: String,
}

impl HistoryEntry {
    fn as_new(&self) -> NewHistory<'_> {
        NewHistory {
            at: self.at,
            username: &self.username,
            ip: &self.ip,
            user_agent: &self.user_agent,
            result: &self.result,
        }
    }
}

enum Msg {
    Entry(AuditEntry),
    History(HistoryEntry),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Clone)]
pub struct Journal {
    tx: mpsc::Sender<Msg>,
    overflow: prometheus_client::metrics::counter::Counter,
    /// Set by [`Journal::flush`]: from then on a batch is retried for [`RETRY_FOR`] at most,
    /// so that stopping does not wait for the database.
    closing: Arc<AtomicBool>,
}

impl Journal {
    /// Starts the writer on the current runtime.
    /// `overflow` counts rows that went to the daemon's log instead of the database.
    pub fn start(store: Store, overflow: prometheus_client::metrics::counter::Counter) -> Journal {
        let (tx, rx) = mpsc::channel(QUEUE);
        let closing = Arc::new(AtomicBool::new(false));
        tokio::spawn(writer(store, rx, overflow.clone(), closing.clone()));
        Journal {
            tx,
            overflow,
            closing,
        }
    }

    pub fn record(&self, entry: AuditEntry) {
        if let Err(e) = self.tx.try_send(Msg::Entry(entry)) {
            let (mpsc::error::TrySendError::Full(msg) | mpsc::error::TrySendError::Closed(msg)) = e;
            self.overflow.inc();
            log_row(
                &msg,
                "journal queue full or closed; row kept here instead of the database",
            );
        }
    }

    /// Queues a login history row the database could not take when it happened.
    pub fn record_history(&self, entry: HistoryEntry) {
        if let Err(e) = self.tx.try_send(Msg::History(entry)) {
            let (mpsc::error::TrySendError::Full(msg) | mpsc::error::TrySendError::Closed(msg)) = e;
            self.overflow.inc();
            log_row(
                &msg,
                "journal queue full or closed; row kept here instead of the database",
            );
        }
    }

    /// Resolves once every row recorded before the call is stored (or given up on). Called
    /// when the daemon stops: later batches are not waited for beyond [`RETRY_FOR`].
    pub async fn flush(&self) {
        self.closing.store(true, Ordering::Release);
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
    closing: Arc<AtomicBool>,
) {
    // Set while a batch was given up and nothing was written since: later batches get one
    // try each, so that a flush at shutdown during a long fault does not wait RETRY_FOR per
    // batch.
    let mut refusing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut history = Vec::new();
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Entry(e) => batch.push(e),
                Msg::History(h) => history.push(h),
                Msg::Flush(ack) => acks.push(ack),
            }
            if batch.len() + history.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() || !history.is_empty() {
            let patience = if refusing {
                Patience::Once
            } else if store.is_shared() {
                Patience::UntilBack(&closing)
            } else {
                Patience::For(RETRY_FOR)
            };
            let lost = write(&store, &batch, &history, patience).await;
            overflow.inc_by(lost as u64);
            // On a shared database every batch waits for it again (an outage ends); on SQLite a
            // batch given up means the next ones get one try each.
            refusing = lost > 0 && !store.is_shared();
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

/// How long a batch is retried.
#[derive(Clone, Copy)]
enum Patience<'a> {
    Once,
    For(Duration),
    /// Until the database is back, or for [`RETRY_FOR`] once the flag (stopping) is set.
    UntilBack(&'a AtomicBool),
}

/// Stores `batch` and `history`, retrying as `patience` allows while the database is
/// unavailable; the number of rows that went to the daemon's log instead. A row the database
/// refuses for itself (not for being unavailable) goes to the log alone; the others are
/// still written.
async fn write(
    store: &Store,
    batch: &[AuditEntry],
    history: &[HistoryEntry],
    patience: Patience<'_>,
) -> usize {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    let mut lost = 0;
    let mut audit_done = batch.is_empty();
    let mut next_history = 0;
    loop {
        let e = if !audit_done {
            match store.audit_many(batch).await {
                Ok(()) => {
                    audit_done = true;
                    continue;
                }
                Err(e) if !e.is_unavailable() => {
                    // One bad row must not cost the batch: row by row, from here.
                    for row in batch {
                        if let Err(e) = store.audit_many(std::slice::from_ref(row)).await {
                            error!(error = %e, "an audit row was refused by the database");
                            log_row(&Msg::Entry(row.clone()), "journal row");
                            lost += 1;
                        }
                    }
                    audit_done = true;
                    continue;
                }
                Err(e) => e,
            }
        } else if let Some(h) = history.get(next_history) {
            match store.record_login(&h.as_new()).await {
                Ok(()) => {
                    next_history += 1;
                    continue;
                }
                Err(e) if !e.is_unavailable() => {
                    error!(error = %e, "a login history row was refused by the database");
                    log_row(&Msg::History(h.clone()), "journal row");
                    lost += 1;
                    next_history += 1;
                    continue;
                }
                Err(e) => e,
            }
        } else {
            return lost;
        };
        let waited = started.elapsed() + delay;
        let again = match patience {
            Patience::Once => false,
            Patience::For(limit) => waited < limit,
            Patience::UntilBack(closing) => {
                e.is_unavailable() && (!closing.load(Ordering::Acquire) || waited < RETRY_FOR)
            }
        };
        if again {
            // A fault of the database is logged by the store when it starts and ends.
            debug!(error = %e, "writing the journal failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_DELAY);
            continue;
        }
        let left = if audit_done { 0 } else { batch.len() } + history.len() - next_history;
        error!(error = %e, rows = left, "writing the journal failed; the rows follow in this log");
        if !audit_done {
            for row in batch {
                log_row(&Msg::Entry(row.clone()), "journal row");
            }
        }
        for h in &history[next_history..] {
            log_row(&Msg::History(h.clone()), "journal row");
        }
        return lost + left;
    }
}

/// A row that did not reach the database, in the daemon's log instead.
fn log_row(msg: &Msg, what: &str) {
    match msg {
        Msg::Entry(row) => {
            warn!(at = row.at, actor = %row.actor, action = %row.action, target = %row.target, detail = %row.detail, "{what}")
        }
        Msg::History(h) => {
            warn!(at = h.at, user = %h.username, ip = %h.ip, result = %h.result, "{what} (login history)")
        }
        Msg::Flush(_) => {}
    }
}
