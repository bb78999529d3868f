//! The kernel's copy of the ban list: one nftables table of pbxguard's own (family `inet`)
//! whose input-hook chain drops the packets of banned sources.
//!
//! ```text
//! table inet pbxguard {
//!     set v4 { type ipv4_addr; flags interval,timeout; elements = { 192.0.2.66 timeout 1h } }
//!     set v6 { type ipv6_addr; flags interval,timeout; elements = { 2001:db8:1::/64 timeout 1h } }
//!     chain input {
//!         type filter hook input priority raw; policy accept;
//!         ip saddr @v4 counter drop
//!         ip6 saddr @v6 counter drop
//!     }
//! }
//! ```
//!
//! The store is the truth and this table a copy: [`Nft::reconcile`] lists the table, rebuilds
//! it in one transaction when anything of its structure is missing or different (someone
//! flushed or deleted it, or changed a rule), and otherwise adds, deletes and replaces
//! elements in one transaction. Each element carries the ban's remaining time as its timeout,
//! so the kernel lifts a ban on time even if pbxguard is stopped. No other table is ever
//! touched.
//!
//! pbxguard talks to the kernel through the `nft` program's JSON interface (`nft -j -f -` fed
//! with JSON built here, `nft -j list table` parsed with serde), spawned with an argument
//! vector, a timeout and bounded output. The `nftables` crate speaks the same JSON, but its
//! helpers run `nft` blocking, without a timeout or an output bound, so the runner would be
//! ours anyway; the few objects this table needs are simpler written out than mapped onto the
//! crate's complete schema.
//!
//! The chain's priority is -300 (`raw`). A drop verdict in any base chain is final, whatever
//! the priority: an `accept` in another table's input chain (before or after ours) ends only
//! that chain and cannot let a banned packet through. The priority decides only who sees the
//! packet first: at -300 ours runs before the usual input chains (iptables-nft's mangle -150
//! and filter 0, firewalld, fail2ban's own table at -1), so their counters, logs, rate limits
//! and queues never see banned traffic.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Stdio;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::key::{V4_MAX_WIDTH, V6_MAX_WIDTH};

/// The base chain's name.
pub const CHAIN: &str = "input";
/// The sets' names, IPv4 and IPv6.
pub const SET_V4: &str = "v4";
pub const SET_V6: &str = "v6";
/// The base chain's priority on the input hook (see the module's documentation).
pub const PRIORITY: i64 = -300;
/// More elements than this are refused as a whole: a bug or a runaway feed, not a ban list.
pub const MAX_ELEMENTS: usize = 500_000;
/// The longest timeout given to the kernel. Longer bans get this, and are renewed when less
/// than half of it is left (kernels refuse timeouts of centuries with ERANGE; a year is far
/// from any limit).
pub const MAX_TIMEOUT_SECS: i64 = 365 * 24 * 3600;
/// A kernel element whose expiry is within this of the ban's is left alone.
pub const EXPIRY_SLACK_SECS: i64 = 5;
/// How long one run of `nft` may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What `nft` may print: a listing of [`MAX_ELEMENTS`] elements is about 60 MB.
const MAX_OUTPUT: usize = 128 << 20;
/// What is kept of `nft`'s stderr for an error.
const MAX_STDERR: usize = 2048;
/// An unwanted kernel element that expires within this many seconds is left to expire:
/// deleting it could race its expiry, and a delete of an element that is gone fails the whole
/// transaction.
const NEAR_EXPIRY_SECS: u64 = 2;

/// One element of the kernel's copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub net: IpNet,
    /// Unix seconds.
    pub expires_at: i64,
}

/// What one reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// The kernel's copy was not as pbxguard left it (table, chain, sets or rules missing or
    /// changed, or elements flushed, added or changed by someone else) and was repaired.
    pub repaired: bool,
    /// The table did not exist and was created (true on a first start; with `repaired` when
    /// someone deleted it).
    pub created: bool,
    /// Elements added (bans new to the kernel).
    pub added: usize,
    /// Elements deleted (unbanned or expired in the store, or never pbxguard's).
    pub removed: usize,
    /// Elements whose expiry changed (deleted and added again).
    pub replaced: usize,
    /// Elements left out because they would cut this host off: loopback, or wider than a ban
    /// may be (`key::V4_MAX_WIDTH`, `key::V6_MAX_WIDTH`). The store should never hold them.
    pub refused: usize,
    /// The drop rules' packet counters, summed.
    pub dropped_packets: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(
        "{program:?} not found: install the nftables package, or set [bans] firewall = \"none\""
    )]
    Missing { program: String },
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft {action} failed ({status}): {stderr}")]
    Failed {
        action: &'static str,
        status: String,
        /// At most 2 KiB of it.
        stderr: String,
    },
    #[error("nft {action} did not finish within {after:?}")]
    Timeout {
        action: &'static str,
        after: Duration,
    },
    #[error("nft {action} printed more than {limit} bytes")]
    TooMuchOutput { action: &'static str, limit: usize },
    #[error("nft's listing of table inet {table} is not understood: {detail}")]
    BadJson { table: String, detail: String },
    #[error("{count} firewall elements: more than the limit of {limit}")]
    TooManyElements { count: usize, limit: usize },
    #[error("{0:?} is not an nftables table name pbxguard uses (up to 32 letters, digits and _, starting with a letter)")]
    TableName(String),
    #[error("talking to nft: {0}")]
    Io(#[from] std::io::Error),
}

/// pbxguard's table in nftables.
pub struct Nft {
    table: String,
    program: Vec<String>,
    timeout: Duration,
    /// Serialises reconciles (two diffs in flight would each delete what the other deletes)
    /// and remembers what the last one left in the kernel.
    state: tokio::sync::Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    /// This Nft has seen or made the table: its absence now is someone's doing.
    seen_table: bool,
    /// The elements and kernel expiries (unix seconds) the last successful reconcile left.
    written: Option<HashMap<IpNet, i64>>,
    /// The drop rules' last counters (v4, v6), carried into a rebuilt table.
    counters: [Counter; 2],
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counter {
    packets: u64,
    bytes: u64,
}

impl Nft {
    /// The table `table` (family `inet`), through the `nft` program found on PATH.
    pub fn new(table: &str) -> Nft {
        Nft::with_program(table, vec!["nft".to_string()])
    }

    /// The same through another argument vector, to which nft's own arguments are appended
    /// (tests: `["ip", "netns", "exec", NS, "nft"]`).
    pub fn with_program(table: &str, program: Vec<String>) -> Nft {
        Nft {
            table: table.to_string(),
            program,
            timeout: DEFAULT_TIMEOUT,
            state: tokio::sync::Mutex::new(Memory::default()),
        }
    }

    /// How long one run of `nft` may take (default [`DEFAULT_TIMEOUT`]); it is killed then.
    pub fn with_timeout(mut self, timeout: Duration) -> Nft {
        self.timeout = timeout;
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Makes the kernel's copy hold `desired` (elements with `expires_at <= now` left out),
    /// each element timing out at its `expires_at`. See the module documentation.
    pub async fn reconcile(&self, desired: &[Element], now: i64) -> Result<Reconciled, NftError> {
        self.check_name()?;
        let mut memory = self.state.lock().await;
        let plan = Wanted::plan(desired, now)?;
        let listing = self.list().await;
        let listing = match listing {
            Ok(l) => l,
            Err(e) => {
                memory.written = None;
                return Err(e);
            }
        };
        let result = self.apply_plan(&mut memory, &plan, listing, now).await;
        if result.is_err() {
            // Whatever is in the kernel now, the next reconcile compares it afresh.
            memory.written = None;
        }
        result
    }

    /// Deletes the table if it exists; whether it did. Touches nothing else.
    pub async fn remove(&self) -> Result<bool, NftError> {
        self.check_name()?;
        let mut memory = self.state.lock().await;
        let present = self.table_exists().await?;
        if present {
            // "add; delete" cannot fail on a table that vanished meanwhile.
            let batch = json!({"nftables": [
                {"add": {"table": self.table_json()}},
                {"delete": {"table": self.table_json()}},
            ]});
            self.apply("delete", &batch).await?;
            tracing::info!(table = %self.table, "nftables: table deleted");
        }
        *memory = Memory::default();
        Ok(present)
    }

    fn check_name(&self) -> Result<(), NftError> {
        let t = &self.table;
        let ok = !t.is_empty()
            && t.len() <= 32
            && t.starts_with(|c: char| c.is_ascii_alphabetic())
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ok {
            Ok(())
        } else {
            Err(NftError::TableName(t.clone()))
        }
    }

    async fn apply_plan(
        &self,
        memory: &mut Memory,
        plan: &Wanted,
        listing: Option<Listing>,
        now: i64,
    ) -> Result<Reconciled, NftError> {
        let mut out = Reconciled {
            refused: plan.refused,
            ..Reconciled::default()
        };
        let Some(listing) = listing else {
            out.created = true;
            out.repaired = memory.seen_table;
            if out.repaired {
                tracing::warn!(table = %self.table, "nftables: the table was deleted; rebuilding it");
            }
            out.added = plan.v4.len() + plan.v6.len();
            let counters = memory.counters;
            return self.rebuild(memory, plan, counters, now, out).await;
        };
        memory.seen_table = true;
        for (i, c) in listing.counters.iter().enumerate() {
            if let Some(c) = c {
                memory.counters[i] = *c;
            }
        }
        if let Err(why) = &listing.structure {
            tracing::warn!(table = %self.table, %why, "nftables: the table is not as pbxguard builds it; rebuilding it");
            out.repaired = true;
            out.added = plan.v4.len() + plan.v6.len();
            out.removed = listing.unwanted(plan);
            let counters = memory.counters;
            return self.rebuild(memory, plan, counters, now, out).await;
        }
        if let Some(written) = &memory.written {
            if let Some(why) = tampered(written, &listing, now) {
                tracing::warn!(table = %self.table, %why, "nftables: the sets were changed outside pbxguard; repairing them");
                out.repaired = true;
            }
        }
        let diff = Diff::new(&listing, plan, now);
        out.added = diff.added;
        out.removed = diff.removed;
        out.replaced = diff.replaced;
        out.dropped_packets = memory.counters.iter().map(|c| c.packets).sum();
        if diff.is_empty() {
            memory.written = Some(diff.written);
            return Ok(out);
        }
        let counters = memory.counters;
        if diff.delete_work(&listing) > rebuild_work(plan) {
            tracing::debug!(table = %self.table, "nftables: many deletions; rebuilding the table instead");
            return self.rebuild(memory, plan, counters, now, out).await;
        }
        let batch = diff.batch(&self.table, now);
        if let Err(e) = self.apply("update", &batch).await {
            // Most likely an element expired between the listing and the transaction. A
            // rebuild does not depend on what is there.
            tracing::info!(table = %self.table, error = %e, "nftables: update refused; rebuilding the table instead");
            return self.rebuild(memory, plan, counters, now, out).await;
        }
        memory.written = Some(diff.written);
        Ok(out)
    }

    /// Replaces the table as a whole in one transaction, the drop counters carried over.
    async fn rebuild(
        &self,
        memory: &mut Memory,
        plan: &Wanted,
        counters: [Counter; 2],
        now: i64,
        mut out: Reconciled,
    ) -> Result<Reconciled, NftError> {
        let batch = rebuild_batch(&self.table, plan, counters, now);
        self.apply("rebuild", &batch).await?;
        memory.seen_table = true;
        memory.counters = counters;
        memory.written = Some(
            plan.v4
                .iter()
                .chain(&plan.v6)
                .map(|w| (w.net, now + w.timeout(now)))
                .collect(),
        );
        out.dropped_packets = counters.iter().map(|c| c.packets).sum();
        Ok(out)
    }

    fn table_json(&self) -> Value {
        json!({"family": "inet", "name": self.table})
    }

    /// The table's listing, or `None` when it does not exist.
    async fn list(&self) -> Result<Option<Listing>, NftError> {
        let listed = self
            .run("list", &["-j", "list", "table", "inet", &self.table], None)
            .await;
        match listed {
            Ok(out) => Listing::parse(&out, &self.table).map(Some),
            // nft's message for a missing table is not meant for parsing: ask which exist.
            Err(e @ NftError::Failed { .. }) => {
                if self.table_exists().await? {
                    Err(e)
                } else {
                    Ok(None)
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn table_exists(&self) -> Result<bool, NftError> {
        let out = self
            .run("list tables", &["-j", "list", "tables", "inet"], None)
            .await?;
        let doc: Doc = serde_json::from_slice(&out).map_err(|e| NftError::BadJson {
            table: self.table.clone(),
            detail: e.to_string(),
        })?;
        Ok(doc.nftables.iter().any(
            |item| matches!(item, Item::Table(t) if t.family == "inet" && t.name == self.table),
        ))
    }

    async fn apply(&self, action: &'static str, batch: &impl Serialize) -> Result<(), NftError> {
        let input = serde_json::to_vec(batch).map_err(std::io::Error::other)?;
        self.run(action, &["-j", "-f", "-"], Some(input)).await?;
        Ok(())
    }

    /// Runs the program with `args`, `input` on its stdin; its stdout.
    async fn run(
        &self,
        action: &'static str,
        args: &[&str],
        input: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, NftError> {
        let Some((program, pre)) = self.program.split_first() else {
            return Err(NftError::Missing {
                program: String::new(),
            });
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(pre)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NftError::Missing {
                program: program.clone(),
            },
            _ => NftError::Spawn {
                program: program.clone(),
                source: e,
            },
        })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let work = async {
            let write = async move {
                if let (Some(mut w), Some(data)) = (stdin, input) {
                    w.write_all(&data).await?;
                    w.shutdown().await?;
                }
                Ok::<(), std::io::Error>(())
            };
            let (written, out, err) = tokio::join!(
                write,
                read_bounded(stdout, MAX_OUTPUT),
                read_bounded(stderr, MAX_STDERR)
            );
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, written, out?, err?))
        };
        let (status, written, (out, out_overflow), (err, _)) =
            match tokio::time::timeout(self.timeout, work).await {
                Ok(done) => done?,
                Err(_) => {
                    let _ = child.start_kill();
                    return Err(NftError::Timeout {
                        action,
                        after: self.timeout,
                    });
                }
            };
        if !status.success() {
            let stderr = String::from_utf8_lossy(&err).trim().to_string();
            return Err(NftError::Failed {
                action,
                status: status.to_string(),
                stderr,
            });
        }
        written?;
        if out_overflow {
            return Err(NftError::TooMuchOutput {
                action,
                limit: MAX_OUTPUT,
            });
        }
        Ok(out)
    }
}

impl fmt::Debug for Nft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nft")
            .field("table", &self.table)
            .field("program", &self.program)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Reads all of `r`, keeping the first `limit` bytes (reading on, so the child never blocks
/// on a full pipe); whether there was more.
async fn read_bounded<R: AsyncRead + Unpin>(
    r: Option<R>,
    limit: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let Some(mut r) = r else {
        return Ok((Vec::new(), false));
    };
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut overflow = false;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, overflow));
        }
        let room = limit - kept.len();
        kept.extend_from_slice(&buf[..n.min(room)]);
        overflow |= n > room;
    }
}

// ---- what the kernel should hold ---------------------------------------------------------

/// One element as it goes to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Want {
    net: IpNet,
    expires_at: i64,
}

impl Want {
    /// The timeout given to the kernel now: the time left, at most [`MAX_TIMEOUT_SECS`].
    fn timeout(&self, now: i64) -> i64 {
        (self.expires_at - now).clamp(1, MAX_TIMEOUT_SECS)
    }

    /// Whether a kernel element with `left` seconds to live may stay as it is.
    fn fits(&self, left: Option<u64>, now: i64) -> bool {
        // No timeout: someone added it by hand; it would never expire.
        let Some(left) = left else { return false };
        let left = i64::try_from(left).unwrap_or(i64::MAX);
        let kernel_expiry = now.saturating_add(left);
        if self.expires_at - now > MAX_TIMEOUT_SECS {
            // Longer than the kernel is given: renewed once half of it is gone.
            left >= MAX_TIMEOUT_SECS / 2 && kernel_expiry <= self.expires_at + EXPIRY_SLACK_SECS
        } else {
            (kernel_expiry - self.expires_at).abs() <= EXPIRY_SLACK_SECS
        }
    }
}

/// The desired list as the two sets should hold it.
#[derive(Debug, Default)]
struct Wanted {
    /// Sorted by address, no two overlapping.
    v4: Vec<Want>,
    v6: Vec<Want>,
    refused: usize,
}

impl Wanted {
    fn plan(desired: &[Element], now: i64) -> Result<Wanted, NftError> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut refused = 0;
        for e in desired.iter().filter(|e| e.expires_at > now) {
            let net = canonical(e.net);
            if !bannable(&net) {
                if refused == 0 {
                    tracing::warn!(net = %net, "nftables: refusing to drop loopback or so wide a prefix");
                }
                refused += 1;
                continue;
            }
            let want = Want {
                net,
                expires_at: e.expires_at,
            };
            match net {
                IpNet::V4(_) => v4.push(want),
                IpNet::V6(_) => v6.push(want),
            }
        }
        let count = v4.len() + v6.len();
        if count > MAX_ELEMENTS {
            return Err(NftError::TooManyElements {
                count,
                limit: MAX_ELEMENTS,
            });
        }
        Ok(Wanted {
            v4: without_overlaps(v4),
            v6: without_overlaps(v6),
            refused,
        })
    }

    fn get(&self, family: usize) -> &[Want] {
        if family == 0 {
            &self.v4
        } else {
            &self.v6
        }
    }
}

/// Host bits cleared; an IPv4-mapped IPv6 prefix becomes the IPv4 prefix it is (the kernel
/// sees those packets as IPv4).
fn canonical(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net {
        if let Some(v4) = n.addr().to_ipv4_mapped() {
            if n.prefix_len() >= 96 {
                if let Ok(m) = Ipv4Net::new(v4, n.prefix_len() - 96) {
                    return IpNet::V4(m.trunc());
                }
            }
        }
    }
    net.trunc()
}

/// Not loopback (the daemon talks to Asterisk there) nor wider than a ban may be.
fn bannable(net: &IpNet) -> bool {
    let loopback: [IpNet; 2] = [
        IpNet::V4(Ipv4Net::new(Ipv4Addr::LOCALHOST, 8).unwrap_or_default()),
        IpNet::V6(Ipv6Net::from(Ipv6Addr::LOCALHOST)),
    ];
    let width_ok = match net {
        IpNet::V4(n) => n.prefix_len() >= V4_MAX_WIDTH,
        IpNet::V6(n) => n.prefix_len() >= V6_MAX_WIDTH,
    };
    width_ok && !loopback.iter().any(|l| l.contains(net) || net.contains(l))
}

/// Interval sets refuse overlapping elements, so a prefix inside a wider one is left out (a
/// duplicate keeps the later expiry). The wider ban covers it; never more is banned than
/// asked. When the wider ban expires first, the kernel lifts it and the narrower one is not in
/// the set until the next reconcile, which the caller runs on each expiry (and every
/// `[bans] reconcile_interval`): the gap is that long at most.
fn without_overlaps(mut wants: Vec<Want>) -> Vec<Want> {
    // By first address, then widest first; for one prefix, the latest expiry first.
    wants.sort_by(|a, b| {
        (
            a.net.network(),
            a.net.prefix_len(),
            std::cmp::Reverse(a.expires_at),
        )
            .cmp(&(
                b.net.network(),
                b.net.prefix_len(),
                std::cmp::Reverse(b.expires_at),
            ))
    });
    let mut kept: Vec<Want> = Vec::with_capacity(wants.len());
    for w in wants {
        // Prefixes nest or are disjoint, so in this order only the last kept one can cover w.
        if kept.last().is_some_and(|k| k.net.contains(&w.net)) {
            continue;
        }
        kept.push(w);
    }
    kept
}

/// First and last address as numbers, to compare ranges of either family.
fn span(net: &IpNet) -> (u128, u128) {
    match net {
        IpNet::V4(n) => (
            u32::from(n.network()).into(),
            u32::from(n.broadcast()).into(),
        ),
        IpNet::V6(n) => (n.network().into(), n.broadcast().into()),
    }
}

fn ip_num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => v6.into(),
    }
}

// ---- what the kernel holds ---------------------------------------------------------------

/// An element's key as listed: a prefix (single addresses are /32 or /128), or a range that
/// is no prefix (never pbxguard's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KVal {
    Net(IpNet),
    Range(IpAddr, IpAddr),
}

impl KVal {
    fn span(&self) -> (u128, u128) {
        match self {
            KVal::Net(n) => span(n),
            KVal::Range(a, b) => (ip_num(*a), ip_num(*b)),
        }
    }

    fn out(&self) -> ValOut {
        match self {
            KVal::Net(n) => ValOut::net(n),
            KVal::Range(a, b) => ValOut::Range { range: [*a, *b] },
        }
    }
}

impl fmt::Display for KVal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KVal::Net(n) => write!(f, "{n}"),
            KVal::Range(a, b) => write!(f, "{a}-{b}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KElem {
    val: KVal,
    /// Seconds left; `None` without a timeout.
    expires: Option<u64>,
}

/// The table as listed.
#[derive(Debug)]
struct Listing {
    /// Whether it is exactly what [`rebuild_batch`] makes (elements aside); why not.
    structure: Result<(), String>,
    /// The elements of v4 and v6 (empty when the structure is wrong and the set is not ours).
    elems: [Vec<KElem>; 2],
    /// The drop rules' counters, v4 and v6.
    counters: [Option<Counter>; 2],
}

impl Listing {
    fn parse(out: &[u8], table: &str) -> Result<Listing, NftError> {
        let doc: Doc = serde_json::from_slice(out).map_err(|e| NftError::BadJson {
            table: table.to_string(),
            detail: e.to_string(),
        })?;
        let mut problems: Vec<String> = Vec::new();
        let mut tables = 0;
        let mut sets_seen = [false; 2];
        let mut chains_seen = false;
        let mut elems: [Vec<KElem>; 2] = [Vec::new(), Vec::new()];
        let mut counters: [Option<Counter>; 2] = [None, None];
        for item in doc.nftables {
            match item {
                Item::Metainfo => {}
                Item::Table(t) => {
                    tables += 1;
                    if t.family != "inet" || t.name != table {
                        problems.push(format!("listed table {} {}", t.family, t.name));
                    }
                    // Table flags (dormant disables every chain). nft 1.0.6 prints this field
                    // garbled, so any value but an empty one counts.
                    let flagged = match &t.flags {
                        None | Some(Value::Null) => false,
                        Some(Value::Array(a)) => !a.is_empty(),
                        Some(Value::String(s)) => !s.is_empty(),
                        Some(_) => true,
                    };
                    if flagged {
                        problems.push(format!("table flags {:?}", t.flags));
                    }
                }
                Item::Set(s) => {
                    let family = match s.name.as_str() {
                        SET_V4 => 0,
                        SET_V6 => 1,
                        other => {
                            problems.push(format!("unexpected set {other}"));
                            continue;
                        }
                    };
                    if std::mem::replace(&mut sets_seen[family], true) {
                        problems.push(format!("set {} listed twice", s.name));
                    }
                    let want_type = ["ipv4_addr", "ipv6_addr"][family];
                    if s.kind != want_type {
                        problems.push(format!("set {} has type {}", s.name, s.kind));
                    }
                    let mut flags = flag_list(s.flags.as_ref());
                    flags.sort();
                    if flags != ["interval", "timeout"] {
                        problems.push(format!("set {} has flags {flags:?}", s.name));
                    }
                    for e in s.elem.unwrap_or_default() {
                        match e.into_kelem(family) {
                            Some(k) => elems[family].push(k),
                            None => {
                                problems.push(format!("set {} holds an unreadable element", s.name))
                            }
                        }
                    }
                }
                Item::Chain(c) => {
                    if c.name != CHAIN {
                        problems.push(format!("unexpected chain {}", c.name));
                        continue;
                    }
                    chains_seen = true;
                    let prio = match &c.prio {
                        Some(Value::Number(n)) => n.as_i64(),
                        Some(Value::String(s)) if s == "raw" => Some(-300),
                        _ => None,
                    };
                    let ok = c.kind.as_deref() == Some("filter")
                        && c.hook.as_deref() == Some("input")
                        && prio == Some(PRIORITY)
                        && matches!(c.policy.as_deref(), None | Some("accept"))
                        && c.dev.is_none();
                    if !ok {
                        problems.push(format!(
                            "chain {} is type {:?} hook {:?} priority {:?} policy {:?}",
                            c.name, c.kind, c.hook, c.prio, c.policy
                        ));
                    }
                }
                Item::Rule(r) => match drop_rule(&r.expr) {
                    Some((family, counter)) if r.chain == CHAIN && counters[family].is_none() => {
                        counters[family] = Some(counter);
                    }
                    _ => problems.push(format!("unexpected rule in chain {}", r.chain)),
                },
                Item::Other(kind) => problems.push(format!("unexpected {kind}")),
            }
        }
        if tables != 1 {
            problems.push(format!("{tables} tables listed"));
        }
        for (family, name) in [SET_V4, SET_V6].iter().enumerate() {
            if !sets_seen[family] {
                problems.push(format!("set {name} missing"));
            }
            if counters[family].is_none() {
                problems.push(format!("drop rule for set {name} missing"));
            }
        }
        if !chains_seen {
            problems.push(format!("chain {CHAIN} missing"));
        }
        problems.truncate(8);
        Ok(Listing {
            structure: if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("; "))
            },
            elems,
            counters,
        })
    }

    /// How many listed elements the plan does not have (what a rebuild removes).
    fn unwanted(&self, plan: &Wanted) -> usize {
        (0..2)
            .map(|f| {
                let wanted: std::collections::HashSet<IpNet> =
                    plan.get(f).iter().map(|w| w.net).collect();
                self.elems[f]
                    .iter()
                    .filter(|k| !matches!(k.val, KVal::Net(n) if wanted.contains(&n)))
                    .count()
            })
            .sum()
    }
}

/// Whether the sets differ from what the last reconcile left; how (for the log).
fn tampered(written: &HashMap<IpNet, i64>, listing: &Listing, now: i64) -> Option<String> {
    let alive = |expiry: i64| expiry > now + EXPIRY_SLACK_SECS;
    let mut present = 0usize;
    for k in listing.elems.iter().flatten() {
        let KVal::Net(net) = k.val else {
            return Some(format!("range {} added", k.val));
        };
        let Some(&expiry) = written.get(&net) else {
            return Some(format!("{net} added"));
        };
        present += usize::from(alive(expiry));
        let Some(left) = k.expires else {
            return Some(format!("{net} lost its timeout"));
        };
        let kernel = now.saturating_add(i64::try_from(left).unwrap_or(i64::MAX));
        if (kernel - expiry).abs() > EXPIRY_SLACK_SECS {
            return Some(format!("{net}'s timeout changed"));
        }
    }
    // Elements that expired meanwhile are gone by right.
    let alive = written.values().filter(|&&e| alive(e)).count();
    if present < alive {
        return Some(format!(
            "{} of {alive} elements missing (flushed?)",
            alive - present
        ));
    }
    None
}

/// The element changes that make the sets hold the plan.
#[derive(Debug, Default)]
struct Diff {
    delete: [Vec<KVal>; 2],
    add: [Vec<Want>; 2],
    added: usize,
    removed: usize,
    replaced: usize,
    /// What the sets hold afterwards, with their kernel expiries.
    written: HashMap<IpNet, i64>,
}

impl Diff {
    fn new(listing: &Listing, plan: &Wanted, now: i64) -> Diff {
        let mut d = Diff::default();
        for family in 0..2 {
            let wants = plan.get(family);
            let by_net: HashMap<IpNet, &Want> = wants.iter().map(|w| (w.net, w)).collect();
            let mut kept: std::collections::HashSet<IpNet> = Default::default();
            for k in &listing.elems[family] {
                if let KVal::Net(net) = k.val {
                    if let Some(w) = by_net.get(&net) {
                        kept.insert(net);
                        if w.fits(k.expires, now) {
                            let left = k.expires.and_then(|l| i64::try_from(l).ok());
                            d.written.insert(net, now + left.unwrap_or(0));
                        } else {
                            d.delete[family].push(k.val);
                            d.add[family].push(**w);
                            d.replaced += 1;
                        }
                        continue;
                    }
                }
                let soon = k.expires.filter(|&l| l < NEAR_EXPIRY_SECS);
                if let (KVal::Net(net), Some(left)) = (k.val, soon) {
                    if !overlaps_any(wants, k.val.span()) {
                        d.written.insert(net, now + left as i64);
                        continue;
                    }
                }
                d.delete[family].push(k.val);
                d.removed += 1;
            }
            for w in wants.iter().filter(|w| !kept.contains(&w.net)) {
                d.add[family].push(*w);
                d.added += 1;
            }
        }
        for w in d.add.iter().flatten() {
            d.written.insert(w.net, now + w.timeout(now));
        }
        d
    }

    fn is_empty(&self) -> bool {
        self.delete.iter().all(Vec::is_empty) && self.add.iter().all(Vec::is_empty)
    }

    /// What the deletions cost nft, in its own units: nft 1.0.6 looks each deleted element
    /// of an interval set up in a list of the whole set (deleting 100 of 19,000 took 0.56 s,
    /// 10 of 50,000 IPv6 /64s 1 s; all 100,000 of 100,000 would take most of an hour).
    fn delete_work(&self, listing: &Listing) -> usize {
        (0..2)
            .map(|f| self.delete[f].len().saturating_mul(listing.elems[f].len()))
            .fold(0, usize::saturating_add)
    }

    /// One transaction: deletes first (a replaced element, or an unwanted one a new wider
    /// prefix covers, must be gone before the add).
    fn batch<'a>(&'a self, table: &'a str, now: i64) -> Batch<'a> {
        let mut nftables = Vec::new();
        for (family, set) in [SET_V4, SET_V6].into_iter().enumerate() {
            if !self.delete[family].is_empty() {
                nftables.push(Cmd::Elements(ElementCmd {
                    op: "delete",
                    table,
                    set,
                    elems: Elems::Delete(&self.delete[family]),
                }));
            }
        }
        for (family, set) in [SET_V4, SET_V6].into_iter().enumerate() {
            if !self.add[family].is_empty() {
                nftables.push(Cmd::Elements(ElementCmd {
                    op: "add",
                    table,
                    set,
                    elems: Elems::Add(&self.add[family], now),
                }));
            }
        }
        Batch { nftables }
    }
}

/// What a rebuild costs nft in [`Diff::delete_work`]'s units: making a table with 100,000
/// elements took 1.3 s, about what deleting 15 elements from a set that size takes. Below
/// 200,000 (a fifth of a second) deletions are cheap enough whatever the set.
fn rebuild_work(plan: &Wanted) -> usize {
    (15 * (plan.v4.len() + plan.v6.len())).max(200_000)
}

/// Whether any of `wants` (sorted, disjoint) shares an address with `[lo, hi]`.
fn overlaps_any(wants: &[Want], (lo, hi): (u128, u128)) -> bool {
    // The last want starting at or before hi is the only one that can reach back to lo.
    let i = wants.partition_point(|w| span(&w.net).0 <= hi);
    i > 0 && span(&wants[i - 1].net).1 >= lo
}

// ---- the JSON pbxguard writes ------------------------------------------------------------

/// A transaction: the few structural commands as JSON values, the element lists serialised
/// straight from the plan (100,000 elements as `Value`s would take tens of MB).
#[derive(Debug, Serialize)]
struct Batch<'a> {
    nftables: Vec<Cmd<'a>>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Cmd<'a> {
    Json(Value),
    Elements(ElementCmd<'a>),
}

/// `{"add": {"element": {"family": "inet", "table": ..., "name": ..., "elem": [...]}}}`.
#[derive(Debug)]
struct ElementCmd<'a> {
    op: &'static str,
    table: &'a str,
    set: &'static str,
    elems: Elems<'a>,
}

#[derive(Debug)]
enum Elems<'a> {
    /// With their timeouts as of the given time.
    Add(&'a [Want], i64),
    Delete(&'a [KVal]),
}

impl Serialize for ElementCmd<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Inner<'b, 'a> {
            family: &'static str,
            table: &'b str,
            name: &'static str,
            elem: &'b Elems<'a>,
        }
        #[derive(Serialize)]
        struct Element<'b, 'a> {
            element: Inner<'b, 'a>,
        }
        let mut m = s.serialize_map(Some(1))?;
        let body = Element {
            element: Inner {
                family: "inet",
                table: self.table,
                name: self.set,
                elem: &self.elems,
            },
        };
        m.serialize_entry(self.op, &body)?;
        m.end()
    }
}

impl Serialize for Elems<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Body {
            val: ValOut,
            timeout: i64,
        }
        #[derive(Serialize)]
        struct WithTimeout {
            elem: Body,
        }
        match self {
            Elems::Add(wants, now) => {
                let mut seq = s.serialize_seq(Some(wants.len()))?;
                for w in wants.iter() {
                    seq.serialize_element(&WithTimeout {
                        elem: Body {
                            val: ValOut::net(&w.net),
                            timeout: w.timeout(*now),
                        },
                    })?;
                }
                seq.end()
            }
            Elems::Delete(vals) => {
                let mut seq = s.serialize_seq(Some(vals.len()))?;
                for v in vals.iter() {
                    seq.serialize_element(&v.out())?;
                }
                seq.end()
            }
        }
    }
}

/// An element's key as nft reads it: `"192.0.2.1"`, `{"prefix": {"addr": ..., "len": ...}}`,
/// `{"range": [..., ...]}` (addresses serialise as text in JSON).
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum ValOut {
    Addr(IpAddr),
    Prefix { prefix: PrefixOut },
    Range { range: [IpAddr; 2] },
}

#[derive(Debug, Serialize)]
struct PrefixOut {
    addr: IpAddr,
    len: u8,
}

impl ValOut {
    fn net(net: &IpNet) -> ValOut {
        if net.prefix_len() == net.max_prefix_len() {
            ValOut::Addr(net.addr())
        } else {
            ValOut::Prefix {
                prefix: PrefixOut {
                    addr: net.network(),
                    len: net.prefix_len(),
                },
            }
        }
    }
}

fn drop_rule_json(table: &str, family: usize, counter: Counter) -> Value {
    let (protocol, set) = [("ip", SET_V4), ("ip6", SET_V6)][family];
    json!({"add": {"rule": {
        "family": "inet", "table": table, "chain": CHAIN,
        "expr": [
            {"match": {
                "op": "==",
                "left": {"payload": {"protocol": protocol, "field": "saddr"}},
                "right": format!("@{set}"),
            }},
            {"counter": {"packets": counter.packets, "bytes": counter.bytes}},
            {"drop": null},
        ],
    }}})
}

/// The whole table in one transaction. "add; delete" removes whatever is there (and cannot
/// fail when nothing is), then everything is made anew.
fn rebuild_batch<'a>(
    table: &'a str,
    plan: &'a Wanted,
    counters: [Counter; 2],
    now: i64,
) -> Batch<'a> {
    let t = json!({"family": "inet", "name": table});
    let mut cmds = vec![
        json!({"add": {"table": t}}),
        json!({"delete": {"table": t}}),
        json!({"add": {"table": t}}),
    ];
    for (set, kind) in [(SET_V4, "ipv4_addr"), (SET_V6, "ipv6_addr")] {
        cmds.push(json!({"add": {"set": {
            "family": "inet", "table": table, "name": set, "type": kind,
            "flags": ["interval", "timeout"],
        }}}));
    }
    cmds.push(json!({"add": {"chain": {
        "family": "inet", "table": table, "name": CHAIN,
        "type": "filter", "hook": "input", "prio": PRIORITY, "policy": "accept",
    }}}));
    for (family, counter) in counters.iter().enumerate() {
        cmds.push(drop_rule_json(table, family, *counter));
    }
    let mut nftables: Vec<Cmd> = cmds.into_iter().map(Cmd::Json).collect();
    for (family, set) in [SET_V4, SET_V6].into_iter().enumerate() {
        if !plan.get(family).is_empty() {
            nftables.push(Cmd::Elements(ElementCmd {
                op: "add",
                table,
                set,
                elems: Elems::Add(plan.get(family), now),
            }));
        }
    }
    Batch { nftables }
}

// ---- the JSON nft prints -----------------------------------------------------------------

#[derive(Deserialize)]
struct Doc {
    nftables: Vec<Item>,
}

/// One object of a listing: `{"table": {...}}`, `{"set": {...}}`, ...
enum Item {
    Metainfo,
    Table(TableJ),
    Set(SetJ),
    Chain(ChainJ),
    Rule(RuleJ),
    /// Any other kind of object (map, flowtable, counter, ...): none belongs in this table.
    Other(String),
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Item, D::Error> {
        struct ItemVisitor;
        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = Item;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an nftables object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("an empty object"));
                };
                let item = match key.as_str() {
                    "metainfo" => {
                        map.next_value::<IgnoredAny>()?;
                        Item::Metainfo
                    }
                    "table" => Item::Table(map.next_value()?),
                    "set" => Item::Set(map.next_value()?),
                    "chain" => Item::Chain(map.next_value()?),
                    "rule" => Item::Rule(map.next_value()?),
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                        let mut kind = key;
                        kind.truncate(32);
                        Item::Other(kind)
                    }
                };
                if map.next_key::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("an object with more than one key"));
                }
                Ok(item)
            }
        }
        d.deserialize_map(ItemVisitor)
    }
}

#[derive(Deserialize)]
struct TableJ {
    family: String,
    name: String,
    flags: Option<Value>,
}

#[derive(Deserialize)]
struct SetJ {
    name: String,
    #[serde(rename = "type")]
    kind: Value,
    flags: Option<Value>,
    elem: Option<Vec<ElemJ>>,
}

#[derive(Deserialize)]
struct ChainJ {
    name: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    hook: Option<String>,
    prio: Option<Value>,
    policy: Option<String>,
    dev: Option<Value>,
}

#[derive(Deserialize)]
struct RuleJ {
    chain: String,
    expr: Vec<Value>,
}

/// An element: bare (`"192.0.2.1"`, `{"prefix": ...}`, `{"range": ...}`) or with attributes
/// (`{"elem": {"val": ..., "timeout": 3600, "expires": 3599}}`). Read by hand rather than as
/// an untagged enum, which buffers and retries every element (a listing has 100,000), and so
/// that anything odd becomes `Other` instead of failing the whole listing.
enum ElemJ {
    Addr(String),
    Prefix(Value),
    Range(Value),
    Wrapped(Box<ElemBody>),
    Other,
}

#[derive(Deserialize)]
struct ElemBody {
    val: ElemJ,
    /// Seconds left ("timeout", the length it was given, does not matter here).
    expires: Option<f64>,
}

impl<'de> Deserialize<'de> for ElemJ {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<ElemJ, D::Error> {
        struct ElemVisitor;
        impl<'de> Visitor<'de> for ElemVisitor {
            type Value = ElemJ;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a set element")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ElemJ, E> {
                Ok(ElemJ::Addr(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ElemJ, A::Error> {
                let mut out = ElemJ::Other;
                let mut keys = 0;
                while let Some(key) = map.next_key::<String>()? {
                    keys += 1;
                    out = match key.as_str() {
                        "elem" => ElemJ::Wrapped(map.next_value()?),
                        "prefix" => ElemJ::Prefix(map.next_value()?),
                        "range" => ElemJ::Range(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            ElemJ::Other
                        }
                    };
                }
                Ok(if keys == 1 { out } else { ElemJ::Other })
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<ElemJ, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(ElemJ::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<ElemJ, E> {
                Ok(ElemJ::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<ElemJ, E> {
                Ok(ElemJ::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<ElemJ, E> {
                Ok(ElemJ::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<ElemJ, E> {
                Ok(ElemJ::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<ElemJ, E> {
                Ok(ElemJ::Other)
            }
        }
        d.deserialize_any(ElemVisitor)
    }
}

impl ElemJ {
    /// `None` for anything but an address, prefix or range of the set's family.
    fn into_kelem(self, family: usize) -> Option<KElem> {
        let (val, expires) = match self {
            ElemJ::Wrapped(body) => (body.val, body.expires),
            v => (v, None),
        };
        let secs = |x: Option<f64>| {
            x.filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| s.min(u64::MAX as f64) as u64)
        };
        let val = val.into_kval()?;
        let is_v4 = match val {
            KVal::Net(n) => matches!(n, IpNet::V4(_)),
            KVal::Range(a, _) => a.is_ipv4(),
        };
        if is_v4 != (family == 0) {
            return None;
        }
        // Without "expires" the time left is unknown: such an element is replaced if wanted
        // and deleted if not, never trusted.
        Some(KElem {
            val,
            expires: secs(expires),
        })
    }

    fn into_kval(self) -> Option<KVal> {
        let ip = |v: &Value| v.as_str()?.parse::<IpAddr>().ok();
        match self {
            ElemJ::Addr(a) => Some(KVal::Net(IpNet::from(a.parse::<IpAddr>().ok()?))),
            ElemJ::Prefix(p) => {
                let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
                Some(KVal::Net(IpNet::new(ip(p.get("addr")?)?, len).ok()?))
            }
            ElemJ::Range(r) => {
                let [a, b] = r.as_array()?.as_slice() else {
                    return None;
                };
                let (a, b) = (ip(a)?, ip(b)?);
                if a.is_ipv4() != b.is_ipv4() || ip_num(a) > ip_num(b) {
                    return None;
                }
                Some(range_as_prefix(a, b).map_or(KVal::Range(a, b), KVal::Net))
            }
            ElemJ::Wrapped(_) | ElemJ::Other => None,
        }
    }
}

/// `[a, b]` as a prefix, when it is one.
fn range_as_prefix(a: IpAddr, b: IpAddr) -> Option<IpNet> {
    let (lo, hi, bits) = match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a).into(), u32::from(b).into(), 32u32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128u32),
        _ => return None,
    };
    let host_bits = (hi - lo).checked_add(1).map_or(bits, |size: u128| {
        if size.is_power_of_two() {
            size.trailing_zeros()
        } else {
            u32::MAX
        }
    });
    if host_bits > bits || (host_bits < 128 && lo & ((1u128 << host_bits) - 1) != 0) {
        return None;
    }
    IpNet::new(a, u8::try_from(bits - host_bits).ok()?).ok()
}

/// `set` lists one flag as a string in some nft versions, several as an array.
fn flag_list(flags: Option<&Value>) -> Vec<String> {
    match flags {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|f| f.as_str().unwrap_or("?").to_string())
            .collect(),
        _ => Vec::new(),
    }
}

/// `Some((family, counter))` for exactly `ip saddr @v4 counter drop` (or the ip6/v6 one).
fn drop_rule(expr: &[Value]) -> Option<(usize, Counter)> {
    let [m, counter, verdict] = expr else {
        return None;
    };
    let m = m.get("match")?;
    let op = m.get("op")?.as_str()?;
    let payload = m.get("left")?.get("payload")?;
    let family = match (
        payload.get("protocol")?.as_str()?,
        payload.get("field")?.as_str()?,
        m.get("right")?.as_str()?,
    ) {
        ("ip", "saddr", "@v4") => 0,
        ("ip6", "saddr", "@v6") => 1,
        _ => return None,
    };
    if !matches!(op, "==" | "in") {
        return None;
    }
    let c = counter.get("counter")?;
    let counter = match c {
        Value::Null => Counter::default(),
        _ => Counter {
            packets: c.get("packets")?.as_u64()?,
            bytes: c.get("bytes")?.as_u64()?,
        },
    };
    let verdict = verdict.as_object()?;
    if verdict.len() != 1 || !verdict.contains_key("drop") {
        return None;
    }
    Some((family, counter))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn el(net: &str, left: i64) -> Element {
        Element {
            net: net.parse().unwrap(),
            expires_at: NOW + left,
        }
    }

    fn nets(wants: &[Want]) -> Vec<String> {
        wants.iter().map(|w| w.net.to_string()).collect()
    }

    /// A listing as nft 1.0.6 prints it for the table rebuild_batch makes, with these
    /// elements in v4 and v6.
    fn listing_json(v4: Value, v6: Value) -> Vec<u8> {
        let rule = |proto: &str, set: &str, packets: u64| {
            json!({"rule": {"family": "inet", "table": "pbxguard", "chain": "input", "handle": 4,
                "expr": [
                    {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "saddr"}}, "right": set}},
                    {"counter": {"packets": packets, "bytes": packets * 60}},
                    {"drop": null}]}})
        };
        let set = |name: &str, kind: &str, elem: Value| {
            let mut s = json!({"family": "inet", "name": name, "table": "pbxguard", "type": kind,
                "handle": 1, "flags": ["interval", "timeout"]});
            if elem.as_array().is_some_and(|a| !a.is_empty()) {
                s["elem"] = elem;
            }
            json!({ "set": s })
        };
        serde_json::to_vec(&json!({"nftables": [
            {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
            {"table": {"family": "inet", "name": "pbxguard", "handle": 1}},
            set("v4", "ipv4_addr", v4),
            set("v6", "ipv6_addr", v6),
            {"chain": {"family": "inet", "table": "pbxguard", "name": "input", "handle": 3,
                "type": "filter", "hook": "input", "prio": -300, "policy": "accept"}},
            rule("ip", "@v4", 7),
            rule("ip6", "@v6", 5),
        ]}))
        .unwrap()
    }

    fn parse(out: &[u8]) -> Listing {
        Listing::parse(out, "pbxguard").unwrap()
    }

    fn with_expiry(val: Value, left: u64) -> Value {
        json!({"elem": {"val": val, "timeout": left + 1, "expires": left}})
    }

    #[test]
    fn rebuild_json_has_the_whole_structure_and_timeouts() {
        let plan = Wanted::plan(
            &[
                el("192.0.2.66/32", 3600),
                el("198.51.100.0/24", 60),
                el("2001:db8:1::/64", 7200),
                el("2001:db8::5/128", 10),
            ],
            NOW,
        )
        .unwrap();
        let counters = [
            Counter {
                packets: 3,
                bytes: 180,
            },
            Counter::default(),
        ];
        let b = serde_json::to_value(rebuild_batch("pbxguard", &plan, counters, NOW)).unwrap();
        let cmds = b["nftables"].as_array().unwrap();
        let t = json!({"family": "inet", "name": "pbxguard"});
        assert_eq!(cmds[0], json!({"add": {"table": t}}));
        assert_eq!(cmds[1], json!({"delete": {"table": t}}));
        assert_eq!(cmds[2], json!({"add": {"table": t}}));
        assert_eq!(
            cmds[3]["add"]["set"],
            json!({"family": "inet", "table": "pbxguard", "name": "v4", "type": "ipv4_addr",
                "flags": ["interval", "timeout"]})
        );
        assert_eq!(cmds[4]["add"]["set"]["type"], "ipv6_addr");
        assert_eq!(
            cmds[5]["add"]["chain"],
            json!({"family": "inet", "table": "pbxguard", "name": "input", "type": "filter",
                "hook": "input", "prio": -300, "policy": "accept"})
        );
        // The rules read back as ours, counters carried.
        let r4 = cmds[6]["add"]["rule"]["expr"].as_array().unwrap();
        assert_eq!(drop_rule(r4), Some((0, counters[0])));
        let r6 = cmds[7]["add"]["rule"]["expr"].as_array().unwrap();
        assert_eq!(drop_rule(r6), Some((1, Counter::default())));
        assert_eq!(
            cmds[8]["add"]["element"],
            json!({"family": "inet", "table": "pbxguard", "name": "v4", "elem": [
                {"elem": {"val": "192.0.2.66", "timeout": 3600}},
                {"elem": {"val": {"prefix": {"addr": "198.51.100.0", "len": 24}}, "timeout": 60}},
            ]})
        );
        assert_eq!(
            cmds[9]["add"]["element"]["elem"],
            json!([
                {"elem": {"val": "2001:db8::5", "timeout": 10}},
                {"elem": {"val": {"prefix": {"addr": "2001:db8:1::", "len": 64}}, "timeout": 7200}},
            ])
        );
        assert_eq!(cmds.len(), 10);
        // No elements: no element commands (nft refuses an empty "elem").
        let empty = Wanted::default();
        let b = serde_json::to_value(rebuild_batch("pbxguard", &empty, counters, NOW)).unwrap();
        assert_eq!(b["nftables"].as_array().unwrap().len(), 8);
    }

    #[test]
    fn expired_elements_are_left_out_and_long_timeouts_capped() {
        let plan = Wanted::plan(
            &[
                el("192.0.2.1/32", 0),
                el("192.0.2.2/32", -5),
                el("192.0.2.3/32", 1),
                el("192.0.2.4/32", 10 * MAX_TIMEOUT_SECS),
            ],
            NOW,
        )
        .unwrap();
        assert_eq!(nets(&plan.v4), ["192.0.2.3/32", "192.0.2.4/32"]);
        assert_eq!(plan.v4[0].timeout(NOW), 1);
        assert_eq!(plan.v4[1].timeout(NOW), MAX_TIMEOUT_SECS);
    }

    #[test]
    fn loopback_and_too_wide_prefixes_are_refused() {
        let plan = Wanted::plan(
            &[
                el("127.0.0.1/32", 60),
                el("0.0.0.0/0", 60),
                el("::1/128", 60),
                el("::/0", 60),
                el("2001:db8::/15", 60),
                el("10.0.0.0/7", 60),
                el("192.0.2.1/32", 60),
            ],
            NOW,
        )
        .unwrap();
        assert_eq!(plan.refused, 6);
        assert_eq!(nets(&plan.v4), ["192.0.2.1/32"]);
        assert!(plan.v6.is_empty());
    }

    #[test]
    fn mapped_addresses_and_host_bits_normalise() {
        let plan = Wanted::plan(
            &[el("::ffff:192.0.2.9/128", 60), el("198.51.100.7/24", 60)],
            NOW,
        )
        .unwrap();
        assert_eq!(nets(&plan.v4), ["192.0.2.9/32", "198.51.100.0/24"]);
        assert!(plan.v6.is_empty());
    }

    #[test]
    fn overlaps_keep_the_widest_and_duplicates_the_latest_expiry() {
        let plan = Wanted::plan(
            &[
                el("192.0.2.5/32", 9000),
                el("192.0.2.0/24", 60),
                el("192.0.2.128/25", 60),
                el("198.51.100.7/32", 60),
                el("198.51.100.7/32", 600),
                el("198.51.100.8/32", 60),
                el("203.0.113.0/25", 60),
                el("203.0.113.128/25", 60),
                el("2001:db8:1::/48", 60),
                el("2001:db8:1:2::/64", 60),
                el("2001:db8:2::/64", 60),
            ],
            NOW,
        )
        .unwrap();
        assert_eq!(
            nets(&plan.v4),
            [
                "192.0.2.0/24",
                "198.51.100.7/32",
                "198.51.100.8/32",
                "203.0.113.0/25",
                "203.0.113.128/25"
            ]
        );
        // The /24's own expiry, not the /32's: never longer than asked.
        assert_eq!(plan.v4[0].expires_at, NOW + 60);
        assert_eq!(plan.v4[1].expires_at, NOW + 600);
        assert_eq!(nets(&plan.v6), ["2001:db8:1::/48", "2001:db8:2::/64"]);
    }

    #[test]
    fn too_many_elements_is_an_error() {
        let many: Vec<Element> = (0..=MAX_ELEMENTS as u32)
            .map(|i| Element {
                net: IpNet::from(IpAddr::V4(Ipv4Addr::from(0xC000_0000 + i))),
                expires_at: NOW + 60,
            })
            .collect();
        match Wanted::plan(&many, NOW) {
            Err(NftError::TooManyElements { count, limit }) => {
                assert_eq!((count, limit), (MAX_ELEMENTS + 1, MAX_ELEMENTS))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn listing_reads_every_element_form() {
        let out = listing_json(
            json!([
                with_expiry(json!({"prefix": {"addr": "192.0.2.0", "len": 24}}), 3599),
                with_expiry(json!("198.51.100.7"), 119),
                with_expiry(json!({"range": ["198.51.100.20", "198.51.100.30"]}), 59),
                // A range that is a prefix reads as that prefix.
                with_expiry(json!({"range": ["203.0.113.0", "203.0.113.63"]}), 59),
                // Bare, without a timeout.
                json!("203.0.113.99"),
                json!({"prefix": {"addr": "203.0.113.128", "len": 25}}),
                // A timeout without "expires" and one with fractional seconds.
                json!({"elem": {"val": "203.0.113.100", "timeout": 10}}),
                json!({"elem": {"val": "203.0.113.101", "timeout": 10, "expires": 9.5}}),
            ]),
            json!([
                with_expiry(
                    json!({"prefix": {"addr": "2001:db8:21:1::", "len": 64}}),
                    3599
                ),
                with_expiry(json!("2001:db8::1"), 10),
                json!({"range": ["2001:db8::", "2001:db8::ffff:ffff:ffff:ffff"]}),
            ]),
        );
        let l = parse(&out);
        assert_eq!(l.structure, Ok(()));
        assert_eq!(
            l.counters,
            [
                Some(Counter {
                    packets: 7,
                    bytes: 420
                }),
                Some(Counter {
                    packets: 5,
                    bytes: 300
                })
            ]
        );
        let n = |s: &str| KVal::Net(s.parse().unwrap());
        let got: Vec<(KVal, Option<u64>)> = l.elems[0].iter().map(|k| (k.val, k.expires)).collect();
        assert_eq!(
            got,
            [
                (n("192.0.2.0/24"), Some(3599)),
                (n("198.51.100.7/32"), Some(119)),
                (
                    KVal::Range(
                        "198.51.100.20".parse().unwrap(),
                        "198.51.100.30".parse().unwrap()
                    ),
                    Some(59)
                ),
                (n("203.0.113.0/26"), Some(59)),
                (n("203.0.113.99/32"), None),
                (n("203.0.113.128/25"), None),
                (n("203.0.113.100/32"), None),
                (n("203.0.113.101/32"), Some(9)),
            ]
        );
        let got: Vec<(KVal, Option<u64>)> = l.elems[1].iter().map(|k| (k.val, k.expires)).collect();
        assert_eq!(
            got,
            [
                (n("2001:db8:21:1::/64"), Some(3599)),
                (n("2001:db8::1/128"), Some(10)),
                (n("2001:db8::/64"), None),
            ]
        );
    }

    #[test]
    fn ranges_become_prefixes_only_when_they_are_one() {
        let r = |a: &str, b: &str| range_as_prefix(a.parse().unwrap(), b.parse().unwrap());
        let p = |s: &str| Some(s.parse::<IpNet>().unwrap());
        assert_eq!(r("192.0.2.0", "192.0.2.255"), p("192.0.2.0/24"));
        assert_eq!(r("192.0.2.7", "192.0.2.7"), p("192.0.2.7/32"));
        assert_eq!(r("0.0.0.0", "255.255.255.255"), p("0.0.0.0/0"));
        assert_eq!(
            r("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            p("::/0")
        );
        assert_eq!(r("192.0.2.1", "192.0.2.2"), None);
        assert_eq!(r("192.0.2.2", "192.0.2.5"), None);
        assert_eq!(r("192.0.2.0", "192.0.2.2"), None);
        assert_eq!(r("192.0.2.0", "2001:db8::"), None);
    }

    #[test]
    fn a_listing_that_is_not_ours_says_why() {
        let good: Value = serde_json::from_slice(&listing_json(json!([]), json!([]))).unwrap();
        let check = |edit: &dyn Fn(&mut Vec<Value>), expect: &str| {
            let mut doc = good.clone();
            edit(doc["nftables"].as_array_mut().unwrap());
            let l = parse(&serde_json::to_vec(&doc).unwrap());
            let why = l.structure.expect_err(expect);
            assert!(why.contains(expect), "{why:?} should say {expect:?}");
        };
        assert_eq!(parse(&serde_json::to_vec(&good).unwrap()).structure, Ok(()));
        // `nft flush table`: the rules are gone.
        check(&|v| v.truncate(5), "drop rule for set v4 missing");
        check(&|v| v.retain(|i| i.get("set").is_none()), "set v4 missing");
        check(
            &|v| v.retain(|i| i.get("chain").is_none()),
            "chain input missing",
        );
        check(
            &|v| v[1]["table"]["flags"] = json!("Lester Gooch #5"),
            "table flags",
        );
        check(
            &|v| v[1]["table"]["flags"] = json!(["dormant"]),
            "table flags",
        );
        check(&|v| v[2]["set"]["flags"] = json!(["interval"]), "flags");
        check(&|v| v[2]["set"]["type"] = json!("ipv6_addr"), "type");
        check(&|v| v[4]["chain"]["prio"] = json!(0), "priority");
        check(&|v| v[4]["chain"]["policy"] = json!("drop"), "policy");
        check(&|v| v[4]["chain"]["hook"] = json!("prerouting"), "hook");
        check(
            &|v| v[5]["rule"]["expr"][2] = json!({"accept": null}),
            "unexpected rule",
        );
        check(
            &|v| v[5]["rule"]["expr"][0]["match"]["right"] = json!("@v6"),
            "unexpected rule",
        );
        check(&|v| v.push(v[5].clone()), "unexpected rule");
        check(
            &|v| v.push(json!({"chain": {"family": "inet", "table": "pbxguard", "name": "x"}})),
            "unexpected chain x",
        );
        check(
            &|v| v.push(json!({"map": {"family": "inet", "table": "pbxguard", "name": "m"}})),
            "unexpected map",
        );
        check(
            &|v| {
                v.push(json!({"set": {"family": "inet", "table": "pbxguard", "name": "x", "type": "ipv4_addr"}}))
            },
            "unexpected set x",
        );
        check(
            &|v| v[2]["set"]["elem"] = json!([{"concat": ["192.0.2.1", 80]}]),
            "unreadable element",
        );
        check(
            &|v| v[2]["set"]["elem"] = json!(["2001:db8::1"]),
            "unreadable element",
        );
    }

    #[test]
    fn garbage_from_nft_is_an_error_not_a_panic() {
        for out in [
            &b""[..],
            b"Error: something",
            b"{}",
            b"{\"nftables\": 5}",
            b"{\"nftables\": [{}]}",
            b"{\"nftables\": [{\"table\": 1}]}",
            b"{\"nftables\": [{\"table\": {\"family\": \"inet\", \"name\": \"pbxguard\"}, \"set\": {}}]}",
            b"{\"nftables\": [{\"set\": {\"name\": \"v4\", \"type\": \"ipv4_addr\", \"elem\": 7}}]}",
            b"\xff\xfe",
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        ] {
            match Listing::parse(out, "pbxguard") {
                Err(NftError::BadJson { table, .. }) => assert_eq!(table, "pbxguard"),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(out)),
            }
        }
        // Parseable, but nothing of ours: a structure problem, so a rebuild, not an error.
        let l = parse(b"{\"nftables\": []}");
        assert!(l.structure.unwrap_err().contains("0 tables listed"));
        // Odd values inside elements are unreadable elements, not panics.
        let out = listing_json(
            json!([
                {"elem": {"val": "192.0.2.1", "expires": -3}},
                {"elem": {"val": "192.0.2.2", "expires": 1e300}},
                {"prefix": {"addr": "192.0.2.0", "len": 99}},
                {"range": ["192.0.2.9", "192.0.2.1"]},
                "not-an-address",
                {"prefix": {"addr": "192.0.2.0", "len": 300}},
                {"prefix": {"addr": "192.0.2.0", "len": 24}, "range": ["192.0.2.0", "192.0.2.1"]},
                {"elem": {"val": {"elem": {"val": "192.0.2.1"}}}},
                {"range": ["192.0.2.1"]},
                [1, 2],
                true,
                null,
                3.5,
            ]),
            json!([]),
        );
        let l = parse(&out);
        assert!(l.structure.unwrap_err().contains("unreadable element"));
        assert_eq!(l.elems[0][0].expires, None);
        assert_eq!(l.elems[0][1].expires, Some(u64::MAX));
    }

    fn diff_for(v4: Value, desired: &[Element]) -> Diff {
        let l = parse(&listing_json(v4, json!([])));
        assert_eq!(l.structure, Ok(()));
        Diff::new(&l, &Wanted::plan(desired, NOW).unwrap(), NOW)
    }

    #[test]
    fn diff_adds_deletes_and_replaces() {
        let d = diff_for(
            json!([
                with_expiry(json!("192.0.2.1"), 100),  // kept: same expiry
                with_expiry(json!("192.0.2.2"), 104),  // kept: within the slack
                with_expiry(json!("192.0.2.3"), 50),   // replaced: extended
                with_expiry(json!("192.0.2.4"), 5000), // replaced: shortened
                with_expiry(json!("192.0.2.5"), 100),  // removed: unbanned
                json!("192.0.2.6"),                    // replaced: no timeout
                with_expiry(json!({"range": ["198.51.100.1", "198.51.100.3"]}), 100), // removed
            ]),
            &[
                el("192.0.2.1/32", 100),
                el("192.0.2.2/32", 100),
                el("192.0.2.3/32", 100),
                el("192.0.2.4/32", 100),
                el("192.0.2.6/32", 100),
                el("192.0.2.7/32", 100),
            ],
        );
        assert_eq!((d.added, d.removed, d.replaced), (1, 2, 3));
        let dels: Vec<String> = d.delete[0].iter().map(|k| k.to_string()).collect();
        assert_eq!(
            dels,
            [
                "192.0.2.3/32",
                "192.0.2.4/32",
                "192.0.2.5/32",
                "192.0.2.6/32",
                "198.51.100.1-198.51.100.3"
            ]
        );
        assert_eq!(
            nets(&d.add[0]),
            [
                "192.0.2.3/32",
                "192.0.2.4/32",
                "192.0.2.6/32",
                "192.0.2.7/32"
            ]
        );
        let b = serde_json::to_value(d.batch("pbxguard", NOW)).unwrap();
        let cmds = b["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 2, "one delete and one add, v4 only: {b}");
        assert_eq!(
            cmds[0]["delete"]["element"]["elem"][4],
            json!({"range": ["198.51.100.1", "198.51.100.3"]})
        );
        assert_eq!(
            cmds[1]["add"]["element"]["elem"][0],
            json!({"elem": {"val": "192.0.2.3", "timeout": 100}})
        );
        // What the sets hold afterwards.
        assert_eq!(d.written.len(), 6);
        assert_eq!(d.written[&"192.0.2.2/32".parse().unwrap()], NOW + 104);
        assert_eq!(d.written[&"192.0.2.7/32".parse().unwrap()], NOW + 100);
    }

    #[test]
    fn diff_of_the_same_list_is_empty() {
        let d = diff_for(
            json!([
                with_expiry(json!("192.0.2.1"), 99),
                with_expiry(json!({"prefix": {"addr": "198.51.100.0", "len": 24}}), 3600)
            ]),
            &[el("192.0.2.1/32", 100), el("198.51.100.0/24", 3600)],
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(
            serde_json::to_value(d.batch("pbxguard", NOW)).unwrap(),
            json!({"nftables": []})
        );
    }

    #[test]
    fn elements_about_to_expire_are_left_to_expire_unless_in_the_way() {
        let d = diff_for(
            json!([
                with_expiry(json!("192.0.2.1"), 1),
                with_expiry(json!("198.51.100.9"), 0),
                with_expiry(json!({"range": ["203.0.113.1", "203.0.113.2"]}), 0),
            ]),
            // A new /24 covers 198.51.100.9: it must go first, or the add overlaps.
            &[el("198.51.100.0/24", 100)],
        );
        let dels: Vec<String> = d.delete[0].iter().map(|k| k.to_string()).collect();
        assert_eq!(dels, ["198.51.100.9/32", "203.0.113.1-203.0.113.2"]);
        assert_eq!(d.removed, 2);
        assert!(d.written.contains_key(&"192.0.2.1/32".parse().unwrap()));
    }

    #[test]
    fn many_deletions_from_a_large_set_rebuild_instead() {
        let thousand: Vec<Value> = (0..1000u32)
            .map(|i| with_expiry(json!(Ipv4Addr::from(0xC633_6400 + i).to_string()), 60))
            .collect();
        let keep: Vec<Element> = (10..1000u32)
            .map(|i| Element {
                net: IpNet::from(IpAddr::V4(Ipv4Addr::from(0xC633_6400 + i))),
                expires_at: NOW + 60,
            })
            .collect();
        let l = parse(&listing_json(Value::from(thousand), json!([])));
        // 10 of 1,000: a diff.
        let plan = Wanted::plan(&keep, NOW).unwrap();
        let d = Diff::new(&l, &plan, NOW);
        assert_eq!(d.removed, 10);
        assert!(d.delete_work(&l) <= rebuild_work(&plan));
        // All of them: a rebuild.
        let plan = Wanted::plan(&[], NOW).unwrap();
        let d = Diff::new(&l, &plan, NOW);
        assert_eq!(d.removed, 1000);
        assert!(d.delete_work(&l) > rebuild_work(&plan));
    }

    #[test]
    fn capped_bans_are_renewed_only_when_half_is_gone() {
        let long = 3 * MAX_TIMEOUT_SECS;
        let want = Want {
            net: "192.0.2.1/32".parse().unwrap(),
            expires_at: NOW + long,
        };
        assert!(want.fits(Some(MAX_TIMEOUT_SECS as u64), NOW));
        assert!(want.fits(Some(MAX_TIMEOUT_SECS as u64 / 2 + 1), NOW));
        assert!(!want.fits(Some(MAX_TIMEOUT_SECS as u64 / 2 - 1), NOW));
        assert!(!want.fits(None, NOW));
        let short = Want {
            expires_at: NOW + 100,
            ..want
        };
        assert!(short.fits(Some(95), NOW));
        assert!(short.fits(Some(105), NOW));
        assert!(!short.fits(Some(94), NOW));
        assert!(!short.fits(Some(106), NOW));
        assert!(!short.fits(Some(u64::MAX), NOW));
    }

    #[test]
    fn overlap_lookup_finds_containing_and_contained() {
        let plan = Wanted::plan(&[el("192.0.2.0/25", 60), el("198.51.100.7/32", 60)], NOW).unwrap();
        let s = |n: &str| span(&n.parse().unwrap());
        assert!(overlaps_any(&plan.v4, s("192.0.2.9/32")));
        assert!(overlaps_any(&plan.v4, s("192.0.0.0/16")));
        assert!(overlaps_any(&plan.v4, s("198.51.100.0/24")));
        assert!(!overlaps_any(&plan.v4, s("192.0.2.128/25")));
        assert!(!overlaps_any(&plan.v4, s("10.0.0.0/8")));
        assert!(!overlaps_any(&[], s("10.0.0.0/8")));
    }

    #[test]
    fn tampering_is_told_from_expiry() {
        let written: HashMap<IpNet, i64> = [
            ("192.0.2.1/32".parse().unwrap(), NOW + 100),
            ("192.0.2.2/32".parse().unwrap(), NOW + 1),
        ]
        .into_iter()
        .collect();
        let l = |v4: Value| parse(&listing_json(v4, json!([])));
        // As left; the one about to expire may be gone already.
        assert_eq!(
            tampered(
                &written,
                &l(json!([with_expiry(json!("192.0.2.1"), 99)])),
                NOW
            ),
            None
        );
        let all = json!([
            with_expiry(json!("192.0.2.1"), 99),
            with_expiry(json!("192.0.2.2"), 0)
        ]);
        assert_eq!(tampered(&written, &l(all), NOW), None);
        // Flushed, added to, changed.
        assert!(tampered(&written, &l(json!([])), NOW)
            .unwrap()
            .contains("missing"));
        let added = json!([
            with_expiry(json!("192.0.2.1"), 99),
            with_expiry(json!("192.0.2.9"), 9)
        ]);
        assert!(tampered(&written, &l(added), NOW)
            .unwrap()
            .contains("192.0.2.9/32 added"));
        let changed = json!([with_expiry(json!("192.0.2.1"), 9999)]);
        assert!(tampered(&written, &l(changed), NOW)
            .unwrap()
            .contains("timeout changed"));
        let no_timeout = json!(["192.0.2.1"]);
        assert!(tampered(&written, &l(no_timeout), NOW)
            .unwrap()
            .contains("lost its timeout"));
    }

    #[test]
    fn table_names_are_checked_before_nft_runs() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for bad in ["", "1abc", "a-b", "a b", "x;y", &"a".repeat(33)] {
            // The program does not exist: reaching it would be a different error.
            let nft = Nft::with_program(bad, vec!["/nonexistent/nft".into()]);
            match rt.block_on(nft.reconcile(&[], NOW)) {
                Err(NftError::TableName(t)) => assert_eq!(t, bad),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_missing_program_a_failure_and_a_hang_are_clear_errors() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let nft = Nft::with_program("pbxguard", vec!["/nonexistent/nft".into()]);
        let e = rt.block_on(nft.reconcile(&[], NOW)).unwrap_err();
        assert!(matches!(e, NftError::Missing { .. }), "{e:?}");
        assert!(
            e.to_string().contains("install the nftables package"),
            "{e}"
        );
        // `false` fails both the listing and the check for the table: an error, not "absent".
        let nft = Nft::with_program("pbxguard", vec!["false".into()]);
        let e = rt.block_on(nft.reconcile(&[], NOW)).unwrap_err();
        assert!(matches!(e, NftError::Failed { .. }), "{e:?}");
        // A listing that is not JSON.
        let nft = Nft::with_program("pbxguard", vec!["echo".into()]);
        let e = rt.block_on(nft.reconcile(&[], NOW)).unwrap_err();
        assert!(matches!(e, NftError::BadJson { .. }), "{e:?}");
        // stderr is bounded.
        let nft = Nft::with_program(
            "pbxguard",
            vec![
                "sh".into(),
                "-c".into(),
                "head -c 100000 /dev/zero | tr '\\0' x >&2; exit 3".into(),
                "sh".into(),
            ],
        );
        match rt.block_on(nft.reconcile(&[], NOW)) {
            Err(NftError::Failed { stderr, .. }) => assert_eq!(stderr.len(), MAX_STDERR),
            other => panic!("{other:?}"),
        }
        // A hang is killed at the timeout.
        let nft = Nft::with_program(
            "pbxguard",
            vec!["sh".into(), "-c".into(), "sleep 30".into(), "sh".into()],
        )
        .with_timeout(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let e = rt.block_on(nft.reconcile(&[], NOW)).unwrap_err();
        assert!(matches!(e, NftError::Timeout { .. }), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
