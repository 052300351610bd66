//! The per-tenant gate of a blue-green database: which tenants have transactions running
//! (registered before their home is looked up, until their server connection goes back)
//! and which are held by a cutover.
//!
//! Rules:
//! - [`Gate::enter`] and [`Gate::hold`] take the same lock (one of 16, by the tenant's
//!   hash): a transaction either registered before the hold (the cutover waits for it) or
//!   sees the hold (it waits for the release, then looks the home up again).
//! - A hold belongs to one cutover; releasing it wakes every waiter at once.
//! - Tenants with nothing running and no hold take no memory.
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{watch, Notify};

use super::TenantKey;

const SHARDS: usize = 16;

#[derive(Default)]
struct Slot {
    running: u32,
    hold: Option<Arc<Hold>>,
}

/// A cutover's hold on one tenant.
pub struct Hold {
    pub cutover: i64,
    pub since: Instant,
    /// Transactions that waited on it.
    pub waited: AtomicU32,
    /// Transactions waiting on it now.
    pub waiting: AtomicU32,
    released: watch::Sender<bool>,
    /// Notified when the last running transaction of the tenant ends.
    drained: Notify,
}

impl Hold {
    /// Wait for the release.
    pub async fn released(&self) {
        let mut rx = self.released.subscribe();
        self.waited.fetch_add(1, Ordering::Relaxed);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _ = rx.wait_for(|r| *r).await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Gate {
    shards: [Mutex<HashMap<TenantKey, Slot>>; SHARDS],
    hasher: RandomState,
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
        }
    }
}

/// What [`Gate::enter`] found.
pub enum Enter {
    /// Registered: look the home up now; the registration ends when this is dropped.
    Running(Running),
    /// A cutover holds the tenant: wait for [`Hold::released`], then enter again.
    Held(Arc<Hold>),
}

/// A registered transaction of a tenant.
pub struct Running {
    entry: Arc<super::Entry>,
    key: TenantKey,
    /// The home it was sent to (set once looked up).
    home: super::Home,
    /// The homes' version when it was looked up.
    version: i64,
}

impl Running {
    /// The tenant's home, looked up now (after the registration), and kept as this
    /// transaction's.
    pub fn look_up_home(&mut self) -> super::Home {
        let homes = self.entry.homes.load();
        self.version = homes.version;
        self.home = homes.get(self.key.0, &self.key.1);
        self.home
    }

    /// May this transaction write to its server now? This instance's lease is valid and
    /// the tenant's home is still the one it went to (looked up again only when the homes
    /// changed since: one atomic load otherwise). A flip of a tenant with a registered
    /// transaction happens only when this instance's lease ended without acknowledging,
    /// so after a renewal the home must be checked too.
    pub fn may_write(&self) -> bool {
        self.entry.lease.valid()
            && (self
                .entry
                .homes_version
                .load(std::sync::atomic::Ordering::Acquire)
                == self.version
                || self.still_home())
    }

    pub fn entry(&self) -> &Arc<super::Entry> {
        &self.entry
    }

    /// The tenant's home is still the one this transaction went to.
    pub fn still_home(&self) -> bool {
        self.entry.home_of(self.key.0, &self.key.1) == self.home
    }

    pub fn tenant(&self) -> &TenantKey {
        &self.key
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let gate = &self.entry.gate;
        let mut shard = gate.shard(&self.key);
        if let Some(slot) = shard.get_mut(&self.key) {
            slot.running = slot.running.saturating_sub(1);
            if slot.running == 0 {
                match &slot.hold {
                    Some(h) => h.drained.notify_waiters(),
                    None => {
                        shard.remove(&self.key);
                    }
                }
            }
        }
    }
}

impl Gate {
    fn shard(&self, key: &TenantKey) -> MutexGuard<'_, HashMap<TenantKey, Slot>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a transaction of `key`, unless a cutover holds it.
    pub fn enter(entry: &Arc<super::Entry>, key: TenantKey) -> Enter {
        let mut shard = entry.gate.shard(&key);
        let slot = shard.entry(key.clone()).or_default();
        if let Some(h) = &slot.hold {
            return Enter::Held(h.clone());
        }
        slot.running += 1;
        drop(shard);
        Enter::Running(Running {
            entry: entry.clone(),
            key,
            home: super::Home::Blue,
            version: 0,
        })
    }

    /// Hold `key` for `cutover` (kept if that cutover already holds it). None when another
    /// cutover holds it.
    pub fn hold(&self, key: &TenantKey, cutover: i64) -> Option<Arc<Hold>> {
        let mut shard = self.shard(key);
        let slot = shard.entry(key.clone()).or_default();
        match &slot.hold {
            Some(h) if h.cutover == cutover => Some(h.clone()),
            Some(_) => None,
            None => {
                let h = Arc::new(Hold {
                    cutover,
                    since: Instant::now(),
                    waited: AtomicU32::new(0),
                    waiting: AtomicU32::new(0),
                    released: watch::Sender::new(false),
                    drained: Notify::new(),
                });
                slot.hold = Some(h.clone());
                Some(h)
            }
        }
    }

    /// Transactions of `key` registered now.
    pub fn running(&self, key: &TenantKey) -> u32 {
        self.shard(key).get(key).map_or(0, |s| s.running)
    }

    /// Wait until nothing of `key` runs (the hold must be in place).
    pub async fn drained(&self, key: &TenantKey, hold: &Hold) {
        loop {
            let n = hold.drained.notified();
            if self.running(key) == 0 {
                return;
            }
            // The notification may come between the count and the wait: look again now
            // and then.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), n).await;
        }
    }

    /// End `cutover`'s hold on `key`: its waiters enter again (and look the home up).
    /// Returns the hold when there was one.
    pub fn release(&self, key: &TenantKey, cutover: i64) -> Option<Arc<Hold>> {
        let mut shard = self.shard(key);
        let slot = shard.get_mut(key)?;
        if slot.hold.as_ref().map(|h| h.cutover) != Some(cutover) {
            return None;
        }
        let h = slot.hold.take()?;
        if slot.running == 0 {
            shard.remove(key);
        }
        drop(shard);
        h.released.send_replace(true);
        Some(h)
    }

    /// Every hold in place: (tenant, hold).
    pub fn holds(&self) -> Vec<(TenantKey, Arc<Hold>)> {
        let mut out = Vec::new();
        for s in &self.shards {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(
                s.iter()
                    .filter_map(|(k, v)| v.hold.as_ref().map(|h| (k.clone(), h.clone()))),
            );
        }
        out
    }

    /// Transactions waiting on holds now (the metrics' held transactions).
    pub fn waiting(&self) -> u64 {
        self.holds()
            .iter()
            .map(|(_, h)| u64::from(h.waiting.load(Ordering::Relaxed)))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Entry;
    use super::*;

    fn key(v: &str) -> TenantKey {
        (7, v.into())
    }

    #[tokio::test]
    async fn a_hold_waits_for_running_transactions_and_stops_new_ones() {
        let e = Arc::new(Entry::new("app", Default::default()));
        let Enter::Running(r1) = Gate::enter(&e, key("42")) else {
            panic!("held")
        };
        let h = e.gate.hold(&key("42"), 1).expect("hold");
        // Another cutover cannot hold it; the same one gets its hold back.
        assert!(e.gate.hold(&key("42"), 2).is_none());
        assert!(e.gate.hold(&key("42"), 1).is_some());
        // New transactions see the hold; other tenants do not.
        assert!(matches!(Gate::enter(&e, key("42")), Enter::Held(_)));
        let Enter::Running(other) = Gate::enter(&e, key("43")) else {
            panic!("43 held")
        };
        assert_eq!(e.gate.running(&key("42")), 1);
        let drained = {
            let e = e.clone();
            let h = h.clone();
            tokio::spawn(async move { e.gate.drained(&key("42"), &h).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!drained.is_finished());
        drop(r1);
        tokio::time::timeout(std::time::Duration::from_secs(1), drained)
            .await
            .expect("drained after the last transaction ended")
            .unwrap();
        // A waiter is released by the release, and enters again.
        let waiter = {
            let h = h.clone();
            tokio::spawn(async move { h.released().await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(e.gate.waiting(), 1);
        assert!(e.gate.release(&key("42"), 2).is_none(), "not its hold");
        assert!(e.gate.release(&key("42"), 1).is_some());
        waiter.await.unwrap();
        assert!(matches!(Gate::enter(&e, key("42")), Enter::Running(_)));
        drop(other);
        // Nothing left: no memory kept.
        assert!(e.gate.shards.iter().all(|s| s.lock().unwrap().is_empty()));
    }
}
