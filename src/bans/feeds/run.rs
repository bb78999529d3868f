//! The refresh loop: one task per feed, a handle to stop them or to apply a new feed list on
//! reload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::config::{FeedConfig, FeedFormat, FeedUrl};
use super::http::{Answer, Client};
use super::parse::{parse_apiban_page, parse_plain, ApibanPage, FeedList, ListBuilder};
use super::{FeedError, FeedSink, FeedUpdate, MAX_BODY};
use crate::bans::BanKey;
use crate::metrics::{FeedLabels, Metrics};
use crate::vault::Vault;

/// The first retry after a failed refresh; each further failure doubles it, up to the
/// feed's interval.
const FIRST_RETRY: Duration = Duration::from_secs(60);
/// APIBAN never says when an address leaves its list: the kept list is downloaded whole
/// again once a day, and between those only what is new is asked for.
const APIBAN_FULL_EVERY: Duration = Duration::from_secs(24 * 3600);
/// Pages one APIBAN download may take (250 addresses a page: a million addresses).
const APIBAN_MAX_PAGES: usize = 4000;
/// APIBAN keys are hex strings; anything outside this alphabet would change the URL's path.
const MAX_KEY_LEN: usize = 128;

/// What the feed tasks share.
struct Shared {
    client: Client,
    vault: Vault,
    metrics: Metrics,
    sink: FeedSink,
    /// One lock per feed name, held while its sink runs, so that after a reload the stopped
    /// task's last update can never land after the new task's first one.
    sink_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Shared {
    fn sink_lock(&self, feed: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.sink_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(feed.to_string()).or_default().clone()
    }
}

struct Running {
    config: FeedConfig,
    stop: CancellationToken,
}

/// The running feeds. Dropping it (or [`Feeds::stop`]) stops every feed task; the sink is
/// not called again once a task has seen the stop.
pub struct Feeds {
    tracker: TaskTracker,
    stop: CancellationToken,
    shared: Arc<Shared>,
    running: Vec<Running>,
}

/// What [`Feeds::reload`] did, by feed name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// New feeds, and feeds whose settings changed (restarted: first refresh at once).
    pub started: Vec<String>,
    /// Feeds no longer configured. Their bans stay until they expire (`ttl`) unless the
    /// caller removes them.
    pub removed: Vec<String>,
    /// Feeds whose settings are unchanged: they go on with their schedule and state.
    pub kept: Vec<String>,
}

/// Starts one task per feed on `tracker`; each makes its first refresh at once and stops
/// when `shutdown` is cancelled or the returned [`Feeds`] is dropped.
pub fn spawn(
    tracker: &TaskTracker,
    shutdown: CancellationToken,
    feeds: Vec<FeedConfig>,
    vault: Vault,
    metrics: Metrics,
    sink: FeedSink,
) -> Feeds {
    let mut all = Feeds {
        tracker: tracker.clone(),
        stop: shutdown.child_token(),
        shared: Arc::new(Shared {
            client: Client::default(),
            vault,
            metrics,
            sink,
            sink_locks: Mutex::default(),
        }),
        running: Vec::new(),
    };
    for config in feeds {
        all.start(config);
    }
    all
}

impl Feeds {
    fn start(&mut self, config: FeedConfig) {
        let stop = self.stop.child_token();
        self.tracker
            .spawn(run_feed(self.shared.clone(), config.clone(), stop.clone()));
        self.running.push(Running { config, stop });
    }

    /// Applies a new feed list (SIGHUP): unchanged feeds keep running, changed ones restart,
    /// removed ones stop, new ones start.
    pub fn reload(&mut self, feeds: Vec<FeedConfig>) -> Reloaded {
        let mut done = Reloaded::default();
        let old = std::mem::take(&mut self.running);
        let mut fresh = Vec::new();
        for running in old {
            match feeds.iter().find(|f| f.name == running.config.name) {
                Some(f) if *f == running.config => {
                    done.kept.push(f.name.clone());
                    self.running.push(running);
                }
                Some(_) => running.stop.cancel(),
                None => {
                    done.removed.push(running.config.name.clone());
                    running.stop.cancel();
                }
            }
        }
        for f in feeds {
            if !done.kept.contains(&f.name) {
                done.started.push(f.name.clone());
                fresh.push(f);
            }
        }
        for f in fresh {
            self.start(f);
        }
        done
    }

    /// The feeds running now, by name.
    pub fn names(&self) -> Vec<String> {
        self.running.iter().map(|r| r.config.name.clone()).collect()
    }

    /// Stops every feed task (they end at their next await).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for Feeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeds")
            .field("running", &self.names())
            .finish()
    }
}

impl Drop for Feeds {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What an APIBAN feed remembers between refreshes.
#[derive(Default)]
struct ApibanState {
    entries: Vec<BanKey>,
    /// The ID to ask for what is new; `None` until a full download worked.
    last_id: Option<String>,
    full_at: Option<Instant>,
}

/// A feed's state between refreshes.
#[derive(Default)]
struct FeedState {
    apiban: ApibanState,
}

async fn run_feed(shared: Arc<Shared>, config: FeedConfig, stop: CancellationToken) {
    let mut state = FeedState::default();
    let mut failures: u32 = 0;
    let mut next = Instant::now();
    let ok = shared
        .metrics
        .ban_feed_refreshes
        .get_or_create(&FeedLabels {
            feed: config.name.clone(),
            result: "ok",
        })
        .clone();
    let failed = shared
        .metrics
        .ban_feed_refreshes
        .get_or_create(&FeedLabels {
            feed: config.name.clone(),
            result: "failed",
        })
        .clone();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let started = Instant::now();
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = refresh(&shared, &config, &mut state) => r,
        };
        match result {
            Ok(list) => {
                ok.inc();
                failures = 0;
                log_summary(&config, &list);
                let update = FeedUpdate {
                    feed: config.name.clone(),
                    entries: list.entries,
                    ttl: config.ttl,
                };
                let lock = shared.sink_lock(&config.name);
                let _held = lock.lock().await;
                if stop.is_cancelled() {
                    return;
                }
                (shared.sink)(update).await;
                next = (started + config.interval).max(Instant::now());
            }
            Err(e) => {
                failed.inc();
                failures = failures.saturating_add(1);
                let wait = retry_after(failures, config.interval);
                warn!(
                    feed = %config.name,
                    error = %e,
                    failures,
                    retry_in = %humantime::format_duration(wait),
                    "feed refresh failed; its last good list stays in force"
                );
                next = Instant::now() + wait;
            }
        }
    }
}

/// 1 min, 2 min, 4 min… after consecutive failures, never longer than the interval.
fn retry_after(failures: u32, interval: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1u32 << doublings).min(interval)
}

/// One log line per good refresh: a warning when entries were skipped or the list was cut at
/// `max_entries`, with the first skipped entry's line and reason (not every line).
fn log_summary(config: &FeedConfig, list: &FeedList) {
    if list.bad == 0 && !list.truncated() {
        info!(
            feed = %config.name,
            entries = list.entries.len(),
            duplicates = list.duplicates,
            "feed refreshed"
        );
        return;
    }
    warn!(
        feed = %config.name,
        entries = list.entries.len(),
        duplicates = list.duplicates,
        skipped = list.bad,
        first_bad_line = list.first_bad.as_ref().map(|b| b.line),
        reason = list.first_bad.as_ref().map(|b| b.reason.as_str()),
        truncated = list.truncated(),
        left_out = list.over_max,
        max_entries = config.max_entries,
        "feed refreshed; entries that are not acceptable addresses were skipped, or entries \
         beyond max_entries were left out"
    );
}

async fn refresh(
    shared: &Shared,
    config: &FeedConfig,
    state: &mut FeedState,
) -> Result<FeedList, FeedError> {
    match config.format {
        FeedFormat::Plain => fetch_plain(&shared.client, config).await,
        FeedFormat::Apiban => {
            let st = &mut state.apiban;
            let full =
                st.last_id.is_none() || st.full_at.is_none_or(|t| t.elapsed() >= APIBAN_FULL_EVERY);
            let key = apiban_key(&shared.vault, config).await?;
            let (start, kept) = match (full, st.last_id.as_deref()) {
                (false, Some(id)) => (Some(id.to_string()), st.entries.as_slice()),
                _ => (None, &[][..]),
            };
            let (list, last_id) = apiban_download(&shared.client, config, &key, start, kept)
                .await
                .map_err(|e| e.scrub(key.expose_secret()))?;
            st.entries = list.entries.clone();
            st.last_id = Some(last_id);
            if full {
                st.full_at = Some(Instant::now());
            }
            Ok(list)
        }
    }
}

/// Fetches and parses a feed once, as a refresh does (for `apiban`: a full download), without
/// calling any sink: for checks and tests. `vault` is needed for `apiban` feeds.
pub async fn fetch(config: &FeedConfig, vault: Option<&Vault>) -> Result<FeedList, FeedError> {
    let client = Client::default();
    match config.format {
        FeedFormat::Plain => fetch_plain(&client, config).await,
        FeedFormat::Apiban => {
            let vault = vault.ok_or_else(|| FeedError::Key {
                secret: config.key_secret.clone().unwrap_or_default(),
                reason: "no vault to read it from".into(),
            })?;
            let key = apiban_key(vault, config).await?;
            apiban_download(&client, config, &key, None, &[])
                .await
                .map(|(list, _)| list)
                .map_err(|e| e.scrub(key.expose_secret()))
        }
    }
}

/// One GET under the feed's timeout.
async fn get(
    client: &Client,
    config: &FeedConfig,
    url: &FeedUrl,
    path: &str,
    accept: &str,
) -> Result<Answer, FeedError> {
    tokio::time::timeout(config.timeout, client.get(url, path, accept, MAX_BODY))
        .await
        .map_err(|_| FeedError::Timeout(config.timeout))?
}

async fn fetch_plain(client: &Client, config: &FeedConfig) -> Result<FeedList, FeedError> {
    let url = FeedUrl::parse(&config.url).map_err(FeedError::Url)?;
    let answer = get(client, config, &url, &url.path, "text/plain, */*").await?;
    match answer.status {
        200 => parse_plain(&answer.body, config.max_entries),
        s @ 300..=399 => Err(FeedError::Redirect {
            host: url.origin(),
            status: s,
        }),
        s => Err(FeedError::Status {
            host: url.origin(),
            status: s,
        }),
    }
}

/// The APIBAN key from the vault, read at each refresh so that a changed key needs no reload.
async fn apiban_key(vault: &Vault, config: &FeedConfig) -> Result<SecretString, FeedError> {
    let secret = config.key_secret.clone().unwrap_or_default();
    let bad = |reason: &str| FeedError::Key {
        secret: secret.clone(),
        reason: reason.into(),
    };
    let value = vault.get(&secret).await.map_err(|e| bad(&e.to_string()))?;
    let text = std::str::from_utf8(&value)
        .map_err(|_| bad("it is not text"))?
        .trim();
    if text.is_empty()
        || text.len() > MAX_KEY_LEN
        || !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad(
            "it is not an APIBAN key (1 to 128 letters, digits, - and _)",
        ));
    }
    Ok(SecretString::from(text.to_string()))
}

/// Follows APIBAN's pages from `start` (`None`: the whole list) until `"ID": "none"`, adding
/// to `kept`. Returns the list and the ID to ask from next time.
async fn apiban_download(
    client: &Client,
    config: &FeedConfig,
    key: &SecretString,
    start: Option<String>,
    kept: &[BanKey],
) -> Result<(FeedList, String), FeedError> {
    let url = FeedUrl::parse(&config.url).map_err(FeedError::Url)?;
    let root = url.path.trim_end_matches('/');
    let mut builder = ListBuilder::with_entries(config.max_entries, kept);
    let mut current = start;
    let mut position = 0usize;
    let mut complete = false;
    for page in 0..APIBAN_MAX_PAGES {
        if page > 0 && !config.request_gap.is_zero() {
            tokio::time::sleep(config.request_gap).await;
        }
        // The path holds the key: it lives in this string and the request only.
        let path = zeroize::Zeroizing::new(match &current {
            None => format!("{root}/{}/banned", key.expose_secret()),
            Some(id) => format!("{root}/{}/banned/{id}", key.expose_secret()),
        });
        let answer = get(client, config, &url, &path, "application/json").await?;
        if (300..=399).contains(&answer.status) {
            return Err(FeedError::Redirect {
                host: url.origin(),
                status: answer.status,
            });
        }
        match parse_apiban_page(answer.status, &answer.body)? {
            ApibanPage::End => {
                complete = true;
                break;
            }
            ApibanPage::Batch { ips, next } => {
                for ip in &ips {
                    position += 1;
                    builder.push(position, ip);
                }
                // An ID that does not move would loop for ever.
                let stuck = current.as_deref() == Some(next.as_str());
                current = Some(next);
                if stuck || builder.is_full() {
                    complete = true;
                    break;
                }
            }
        }
    }
    if !complete {
        warn!(
            feed = %config.name,
            pages = APIBAN_MAX_PAGES,
            "APIBAN kept sending pages; the rest is asked for at the next refresh"
        );
    }
    let list = builder.finish();
    if list.entries.is_empty() && list.duplicates == 0 {
        if let Some(first) = &list.first_bad {
            return Err(FeedError::NoAddresses {
                lines: position,
                first: first.line,
                reason: first.reason.clone(),
            });
        }
    }
    // APIBAN's own clients start from ID 100 when they have none.
    let id = current.unwrap_or_else(|| "100".into());
    Ok((list, id))
}
