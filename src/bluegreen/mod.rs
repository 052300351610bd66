//! Blue-green tenant migration: a database entry with a `blue` place (the old PostgreSQL
//! database) and its own place (green, a Citus cluster) sends each transaction to its
//! tenant's home, and moves tenants between the two one cutover at a time.
//!
//! Rules:
//! - A tenant is a value of a colocation group's distribution column, in its canonical
//!   spelling (`citus::hash::canonical_text`). It is found with green's shard map in both
//!   homes (blue has the same schema). Its home is blue unless the store says otherwise.
//! - A transaction pinned to a tenant runs in its tenant's home (in green: on the worker
//!   owning the shard); one that names no tenant, or several, runs in the entry's
//!   `default_home`. The home is looked up after the transaction has registered with the
//!   tenant's [`gate`] and the registration lasts until its server connection goes back:
//!   a cutover that holds the tenant and sees no registration left knows nothing of that
//!   tenant runs in the old home, and nothing will start there.
//! - One truth for every instance: the homes live on green's coordinator, in pgtenant's
//!   own schema ([`store`]). Each instance's [`agent`] loads them at start, is told of
//!   changes at once (LISTEN `pgtenant_homes`) and re-reads them at every lease renewal
//!   (a quarter of `tenant_homes_lease`) in case a notification was missed.
//! - Leases: an instance routes tenants of a blue-green database only while its lease is
//!   valid by its own clock: the lease runs from the moment it *sent* the renewal whose
//!   answer it has applied (holds placed, homes loaded). The store's `lease_until` is the
//!   server's `now()` at that renewal plus the lease, so it never ends before the
//!   instance's own view of it. A cutover flips only when every instance whose lease is
//!   still valid in the store has drained the tenant: an instance that does not answer
//!   (killed, frozen, cut off) is waited out until its lease has run out, and once it has,
//!   that instance holds every tenant transaction until its next renewal has re-read the
//!   homes. Hence no instance writes a tenant in its old home after the flip.
//! - Cutovers ([`cutover`]): drain (every live instance holds the tenant's new
//!   transactions and acknowledges when those already running have ended), optional sync
//!   (blue's WAL position reached by green's subscriber), flip (the new home written with
//!   a version, in one transaction that re-checks the drain under an exclusive lock that
//!   lease renewals share). Any phase past its timeout aborts: the home stays, held
//!   transactions go where they would have gone.
pub mod agent;
pub mod console;
pub mod cutover;
pub mod gate;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

pub use crate::config::Home;
use crate::context::Context;
pub use gate::{Enter, Gate, Running};

/// A tenant of a blue-green database: its colocation group and canonical value.
pub type TenantKey = (u32, Box<str>);

/// The tenants of one database that live outside blue, and the version they were read at.
#[derive(Debug, Default, Clone)]
pub struct Homes {
    /// The highest change version applied (0: none yet).
    pub version: i64,
    /// Colocation group → value → home, for every tenant with a row in the store.
    pub map: HashMap<u32, HashMap<Box<str>, Home>>,
}

impl Homes {
    pub fn get(&self, colocation: u32, value: &str) -> Home {
        self.map
            .get(&colocation)
            .and_then(|m| m.get(value))
            .copied()
            .unwrap_or(Home::Blue)
    }

    /// How many tenants are in each home (the ones with a row; all others are blue).
    pub fn counts(&self) -> (usize, usize) {
        let green = self
            .map
            .values()
            .flat_map(|m| m.values())
            .filter(|h| **h == Home::Green)
            .count();
        let rows: usize = self.map.values().map(|m| m.len()).sum();
        (rows - green, green)
    }
}

/// An instance's lease on the homes, by its own clock.
#[derive(Default)]
pub struct Lease {
    /// Milliseconds since [`epoch`] until which it is valid (0: never renewed).
    until_ms: AtomicU64,
    renewed: tokio::sync::Notify,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn ms_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_millis() as u64
}

impl Lease {
    pub fn valid(&self) -> bool {
        ms_since_epoch(Instant::now()) < self.until_ms.load(Ordering::Acquire)
    }

    /// Valid until `sent + lease` (`sent`: when the renewal was sent).
    pub fn renew(&self, sent: Instant, lease: Duration) {
        self.until_ms
            .store(ms_since_epoch(sent + lease), Ordering::Release);
        self.renewed.notify_waiters();
    }

    pub fn expire(&self) {
        self.until_ms.store(0, Ordering::Release);
    }

    /// Wait until valid, at most `limit`; true when valid.
    pub async fn wait_valid(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let renewed = self.renewed.notified();
            if self.valid() {
                return true;
            }
            if tokio::time::timeout_at(deadline, renewed).await.is_err() {
                return self.valid();
            }
        }
    }

    /// How long it stays valid from now (zero when it is not).
    pub fn remaining(&self) -> Duration {
        let until = self.until_ms.load(Ordering::Acquire);
        Duration::from_millis(until.saturating_sub(ms_since_epoch(Instant::now())))
    }
}

/// What the agent of one database knows about the store.
#[derive(Debug, Default, Clone)]
pub struct Status {
    pub connected: bool,
    pub last_error: Option<String>,
}

/// One blue-green database entry in this instance.
pub struct Entry {
    /// The entry's name (as clients name the database): the store's `database` column.
    pub name: Arc<str>,
    pub homes: ArcSwap<Homes>,
    /// `homes.version`, readable with one atomic load (written after `homes`).
    pub homes_version: AtomicI64,
    pub gate: Gate,
    pub lease: Lease,
    pub status: Mutex<Status>,
    /// Wakes the agent (a cutover started here, or a notification is owed).
    pub wake: tokio::sync::Notify,
    /// Ends its agent (the entry went away on RELOAD, or shutdown).
    pub stop: CancellationToken,
    /// Cutovers this instance held the tenant for, with the pause they caused here.
    pub held: Mutex<Vec<HeldRecord>>,
}

/// A hold this instance placed for a cutover, kept for SHOW MIGRATION.
#[derive(Debug, Clone)]
pub struct HeldRecord {
    pub cutover: i64,
    pub tenant: TenantKey,
    pub held_for: Duration,
    pub waited: u32,
}

impl Entry {
    fn new(name: &str, stop: CancellationToken) -> Entry {
        Entry {
            name: name.into(),
            homes: ArcSwap::from_pointee(Homes::default()),
            homes_version: AtomicI64::new(0),
            gate: Gate::default(),
            lease: Lease::default(),
            status: Mutex::new(Status::default()),
            wake: tokio::sync::Notify::new(),
            stop,
            held: Mutex::new(Vec::new()),
        }
    }

    pub fn home_of(&self, colocation: u32, value: &str) -> Home {
        self.homes.load().get(colocation, value)
    }

    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Every blue-green entry of this instance, by name.
#[derive(Default)]
pub struct BlueGreen {
    pub entries: dashmap::DashMap<String, Arc<Entry>>,
}

impl BlueGreen {
    pub fn get(&self, name: &str) -> Option<Arc<Entry>> {
        self.entries.get(name).map(|e| e.clone())
    }
}

/// Start an agent for every blue-green entry the settings name, and stop those no longer
/// named (at start and on RELOAD).
pub fn sync(ctx: &Arc<Context>) {
    let s = ctx.settings();
    let wanted: Vec<String> = s
        .databases
        .iter()
        .filter(|(_, d)| d.blue.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    ctx.bluegreen.entries.retain(|name, e| {
        let keep = wanted.contains(name);
        if !keep {
            tracing::info!(database = %name, "blue-green entry removed: its agent stops");
            e.stop.cancel();
        }
        keep
    });
    for name in wanted {
        if ctx.bluegreen.entries.contains_key(&name) {
            continue;
        }
        let e = Arc::new(Entry::new(&name, ctx.shutdown.child_token()));
        ctx.bluegreen.entries.insert(name.clone(), e.clone());
        agent::spawn(ctx.clone(), e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lease_is_valid_from_its_sending_for_its_length() {
        let l = Lease::default();
        assert!(!l.valid(), "never renewed");
        assert_eq!(l.remaining(), Duration::ZERO);
        l.renew(Instant::now(), Duration::from_millis(200));
        assert!(l.valid());
        assert!(l.remaining() > Duration::from_millis(100));
        // Renewed from a moment long past: already over.
        l.renew(
            Instant::now() - Duration::from_secs(1),
            Duration::from_millis(500),
        );
        assert!(!l.valid());
        // A waiter is woken by the renewal; one that waits in vain gives up at its limit.
        let l = Arc::new(Lease::default());
        let w = {
            let l = l.clone();
            tokio::spawn(async move { l.wait_valid(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        l.renew(Instant::now(), Duration::from_secs(1));
        assert!(w.await.unwrap());
        l.expire();
        let t0 = Instant::now();
        assert!(!l.wait_valid(Duration::from_millis(50)).await);
        assert!(t0.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn homes_default_to_blue_and_count_per_home() {
        let mut h = Homes::default();
        assert_eq!(h.get(1, "42"), Home::Blue);
        h.map.entry(1).or_default().insert("42".into(), Home::Green);
        h.map.entry(1).or_default().insert("43".into(), Home::Blue);
        h.map.entry(2).or_default().insert("42".into(), Home::Green);
        assert_eq!(h.get(1, "42"), Home::Green);
        assert_eq!(h.get(2, "43"), Home::Blue);
        assert_eq!(h.counts(), (1, 2));
    }
}
