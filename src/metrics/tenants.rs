//! The busiest tenants in bounded memory: Space-Saving heavy-hitters sketches.
//!
//! Three sketches: one ranked by statements (routed transactions), one by transaction
//! time, and a smaller one by throttled transactions (transactions that waited because of
//! their tenant's limit, `limits`), so that the most throttled tenants are found even when
//! they are not among the busiest. Each has a fixed number of counters (`SHARDS` ×
//! `PER_SHARD`, `THROTTLED_PER_SHARD` for the third), split into shards by the key's hash,
//! each shard behind its own small `Mutex`: a routed transaction takes one shard lock per
//! sketch of the first two, never a global one; only a throttled transaction touches the
//! third. When a new tenant arrives at a full shard it
//! takes over the counter with the smallest weight, inheriting that weight (Space-Saving):
//! a listed count over-estimates the truth by at most `error_bound`, and any tenant whose
//! true weight exceeds total / capacity is guaranteed to be listed.
//!
//! Each counter also carries the other numbers (statements, time, errors, throttled and
//! throttle wait) accumulated since the tenant last took a counter; only the ranking
//! weight carries the inherited over-estimate. The throttled sketch counts only throttled
//! transactions (its rows' statements, time and errors stay 0). Process-wide totals of
//! throttled transactions and their wait are kept too (`/metrics` shows the top tenants
//! and the rest as `other`).
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub const SHARDS: usize = 16;
/// Counters per shard: 16 × 64 = 1,024 counters per sketch (statements, time).
pub const PER_SHARD: usize = 64;
/// Counters per shard of the throttled sketch: 16 × 16 = 256 (throttled tenants are the
/// few at their limit; any with more than 1/256 of all throttled transactions is listed).
pub const THROTTLED_PER_SHARD: usize = 16;

/// One tenant's counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRow {
    /// The tenant value as text.
    pub tenant: Arc<str>,
    pub colocation: u32,
    /// The node its last transaction went to.
    pub node: Arc<str>,
    pub statements: u64,
    pub time_us: u64,
    pub errors: u64,
    /// Transactions that waited because of a tenant limit (`Tenants::throttled`).
    pub throttled: u64,
    /// Their total wait, µs.
    pub throttle_wait_us: u64,
    /// The ranking weight (statements, time or throttled) may be over-stated by at most
    /// this much.
    pub error_bound: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Rank {
    Statements,
    Time,
    Throttled,
}

impl Rank {
    pub fn as_str(self) -> &'static str {
        match self {
            Rank::Statements => "statements",
            Rank::Time => "time",
            Rank::Throttled => "throttled",
        }
    }

    /// The ranking weight of a row.
    pub fn weight(self, r: &TenantRow) -> u64 {
        match self {
            Rank::Statements => r.statements,
            Rank::Time => r.time_us,
            Rank::Throttled => r.throttled,
        }
    }

    fn weight_mut(self, r: &mut TenantRow) -> &mut u64 {
        match self {
            Rank::Statements => &mut r.statements,
            Rank::Time => &mut r.time_us,
            Rank::Throttled => &mut r.throttled,
        }
    }
}

/// A tenant in a shard's index: its hash is computed once per transaction (in
/// [`Tenants::key`]) and the index uses it as is, rather than hashing the value again.
#[derive(Clone, PartialEq, Eq)]
struct Key {
    hash: u64,
    colocation: u32,
    value: Arc<str>,
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(self.hash);
    }
}

/// Passes a precomputed hash through (see [`Key`]).
#[derive(Default)]
struct PassHasher(u64);

impl std::hash::Hasher for PassHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Key`; anything else still hashes correctly.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

#[derive(Default)]
struct Shard {
    rows: Vec<TenantRow>,
    /// The hash of each row's key (same order as `rows`), for evictions.
    hashes: Vec<u64>,
    index: HashMap<Key, usize, std::hash::BuildHasherDefault<PassHasher>>,
}

struct Sketch {
    rank: Rank,
    per_shard: usize,
    shards: Vec<Mutex<Shard>>,
}

impl Sketch {
    fn new(rank: Rank, per_shard: usize) -> Sketch {
        Sketch {
            rank,
            per_shard,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn weight(&self, r: &TenantRow) -> u64 {
        self.rank.weight(r)
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        self.shards[shard].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply `f` to the tenant's counter; `insert`: take a counter if it has none.
    fn update(
        &self,
        shard: usize,
        key: &Key,
        node: Option<&Arc<str>>,
        insert: bool,
        f: impl FnOnce(&mut TenantRow),
    ) {
        let mut g = self.lock(shard);
        if let Some(&i) = g.index.get(key) {
            let r = &mut g.rows[i];
            if let Some(n) = node {
                if r.node != *n {
                    r.node = n.clone();
                }
            }
            f(r);
            return;
        }
        if !insert {
            return;
        }
        let node = node.cloned().unwrap_or_else(|| Arc::from(""));
        let fresh = |min: u64| TenantRow {
            tenant: key.value.clone(),
            colocation: key.colocation,
            node,
            statements: 0,
            time_us: 0,
            errors: 0,
            throttled: 0,
            throttle_wait_us: 0,
            error_bound: min,
        };
        let i = if g.rows.len() < self.per_shard {
            g.rows.push(fresh(0));
            g.hashes.push(key.hash);
            g.rows.len() - 1
        } else {
            let (i, min) = g
                .rows
                .iter()
                .enumerate()
                .map(|(i, r)| (i, self.weight(r)))
                .min_by_key(|&(_, w)| w)
                .expect("a full shard has rows");
            let old = &g.rows[i];
            let old_key = Key {
                hash: g.hashes[i],
                colocation: old.colocation,
                value: old.tenant.clone(),
            };
            g.index.remove(&old_key);
            g.hashes[i] = key.hash;
            let mut row = fresh(min);
            // Space-Saving: the newcomer inherits the evicted weight.
            *self.rank.weight_mut(&mut row) = min;
            g.rows[i] = row;
            i
        };
        g.index.insert(key.clone(), i);
        f(&mut g.rows[i]);
    }

    fn rows(&self) -> Vec<TenantRow> {
        let mut out = Vec::new();
        for s in 0..SHARDS {
            out.extend(self.lock(s).rows.iter().cloned());
        }
        out.sort_by(|a, b| {
            self.weight(b)
                .cmp(&self.weight(a))
                .then_with(|| a.tenant.cmp(&b.tenant))
        });
        out
    }

    fn counters(&self) -> usize {
        (0..SHARDS).map(|s| self.lock(s).rows.len()).sum()
    }
}

/// A tenant as the session loop knows it while its transaction runs.
#[derive(Debug, Clone)]
pub struct TenantKey {
    pub colocation: u32,
    pub value: Arc<str>,
    pub node: Arc<str>,
    hash: u64,
    shard: usize,
}

impl TenantKey {
    /// The tenant's 64-bit hash (of colocation group and value), as [`Tenants::hash`].
    pub fn hash(&self) -> u64 {
        self.hash
    }

    fn key(&self) -> Key {
        Key {
            hash: self.hash,
            colocation: self.colocation,
            value: self.value.clone(),
        }
    }
}

/// Bytes of a tenant value kept in the rankings (SHOW TENANTS).
pub const MAX_SHOWN_VALUE: usize = 256;

/// The process-wide tenant sketches (`Context::tenants`).
pub struct Tenants {
    by_statements: Sketch,
    by_time: Sketch,
    by_throttled: Sketch,
    /// Every throttled transaction and its wait (µs), listed or not.
    throttled_total: AtomicU64,
    throttle_wait_us_total: AtomicU64,
    hasher: RandomState,
}

impl Default for Tenants {
    fn default() -> Tenants {
        Tenants {
            by_statements: Sketch::new(Rank::Statements, PER_SHARD),
            by_time: Sketch::new(Rank::Time, PER_SHARD),
            by_throttled: Sketch::new(Rank::Throttled, THROTTLED_PER_SHARD),
            throttled_total: AtomicU64::new(0),
            throttle_wait_us_total: AtomicU64::new(0),
            hasher: RandomState::new(),
        }
    }
}

impl Tenants {
    /// The hash of a tenant value in a colocation group (this process' own hash: the
    /// activity sketches use it too).
    pub fn hash(&self, colocation: u32, value: &str) -> u64 {
        self.hasher.hash_one((colocation, value))
    }

    /// The key of a tenant value in a colocation group, routed to `node`. The value is
    /// kept (and shown) cut to [`MAX_SHOWN_VALUE`] bytes: rankings keep thousands of
    /// rows, and a client's key may be a megabyte of text; the hash is of the whole value.
    pub fn key(&self, colocation: u32, value: &str, node: Arc<str>) -> TenantKey {
        let hash = self.hash(colocation, value);
        TenantKey {
            colocation,
            value: Arc::from(crate::protocol::cut(value, MAX_SHOWN_VALUE)),
            node,
            hash,
            // The index uses the low bits of the hash; the shard takes the high ones.
            shard: (hash >> 32) as usize % SHARDS,
        }
    }

    /// A transaction routed by this tenant's key ended after `d`: one statement and its
    /// time, counted in both rankings at once (one lock per ranking per transaction).
    pub fn transaction(&self, k: &TenantKey, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let key = k.key();
        let count = |r: &mut TenantRow| {
            r.statements += 1;
            r.time_us = r.time_us.saturating_add(us);
        };
        self.by_statements
            .update(k.shard, &key, Some(&k.node), true, count);
        self.by_time
            .update(k.shard, &key, Some(&k.node), us > 0, count);
    }

    /// An ErrorResponse came back in the tenant's transaction.
    pub fn error(&self, k: &TenantKey) {
        let key = k.key();
        self.by_statements
            .update(k.shard, &key, None, false, |r| r.errors += 1);
        self.by_time
            .update(k.shard, &key, None, false, |r| r.errors += 1);
    }

    /// One transaction of the tenant waited `waited` because of a tenant limit (its
    /// `max_active` or `max_tps`; counted once even if both held it). Ranked in the
    /// throttled sketch (taking a counter there if needed), added to the tenant's counters
    /// of the other two rankings if it holds one, and to the process-wide totals. Called
    /// only for throttled transactions: three shard locks then, none otherwise.
    pub fn throttled(&self, k: &TenantKey, waited: Duration) {
        let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.throttled_total.fetch_add(1, Ordering::Relaxed);
        self.throttle_wait_us_total.fetch_add(us, Ordering::Relaxed);
        let key = k.key();
        let count = |r: &mut TenantRow| {
            r.throttled += 1;
            r.throttle_wait_us = r.throttle_wait_us.saturating_add(us);
        };
        self.by_throttled
            .update(k.shard, &key, Some(&k.node), true, count);
        self.by_statements.update(k.shard, &key, None, false, count);
        self.by_time.update(k.shard, &key, None, false, count);
    }

    /// Throttled transactions and their total wait (µs) since start, of every tenant.
    pub fn throttled_totals(&self) -> (u64, u64) {
        (
            self.throttled_total.load(Ordering::Relaxed),
            self.throttle_wait_us_total.load(Ordering::Relaxed),
        )
    }

    /// The top `n` tenants of one ranking, heaviest first.
    pub fn top(&self, rank: Rank, n: usize) -> Vec<TenantRow> {
        let mut v = match rank {
            Rank::Statements => self.by_statements.rows(),
            Rank::Time => self.by_time.rows(),
            Rank::Throttled => self.by_throttled.rows(),
        };
        v.truncate(n);
        v
    }

    /// Counters in use (all sketches); never more than
    /// SHARDS × (2 × PER_SHARD + THROTTLED_PER_SHARD).
    pub fn counters(&self) -> usize {
        self.by_statements.counters() + self.by_time.counters() + self.by_throttled.counters()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenant value of a megabyte is kept (and shown) cut; two long values with the
    /// same start stay two tenants (the hash is of the whole value).
    #[test]
    fn long_tenant_values_are_kept_cut() {
        let t = Tenants::default();
        let node: Arc<str> = Arc::from("w");
        let a = t.key(1, &format!("{}a", "é".repeat(1 << 19)), node.clone());
        let b = t.key(1, &format!("{}b", "é".repeat(1 << 19)), node.clone());
        assert!(a.value.len() <= MAX_SHOWN_VALUE + '…'.len_utf8());
        assert!(a.value.ends_with('…'));
        assert_eq!(a.value, b.value);
        assert_ne!(a.hash(), b.hash());
        t.transaction(&a, Duration::from_micros(5));
        t.transaction(&b, Duration::from_micros(5));
        assert_eq!(t.top(Rank::Statements, 10).len(), 2);
        assert_eq!(t.key(1, "42", node).value.as_ref(), "42");
    }

    #[test]
    fn a_million_tenants_in_fixed_memory_keep_the_heavy_ones() {
        let t = Tenants::default();
        let node: Arc<str> = Arc::from("worker-1");
        let heavy: Vec<TenantKey> = ["42", "acme", "7"]
            .iter()
            .map(|v| t.key(1, v, node.clone()))
            .collect();
        for i in 0..1_000_000u32 {
            let k = t.key(1, &format!("tenant-{i}"), node.clone());
            t.transaction(&k, Duration::from_micros(10));
            if i % 100 == 0 {
                for (j, h) in heavy.iter().enumerate() {
                    t.transaction(h, Duration::from_micros(1_000 * (j as u64 + 1)));
                }
            }
            if i % 100_000 == 0 {
                assert!(t.counters() <= 2 * SHARDS * PER_SHARD);
            }
        }
        assert!(t.counters() <= 2 * SHARDS * PER_SHARD);
        for rank in [Rank::Statements, Rank::Time] {
            let top = t.top(rank, 3);
            let mut names: Vec<&str> = top.iter().map(|r| &*r.tenant).collect();
            names.sort();
            assert_eq!(names, ["42", "7", "acme"], "{rank:?}");
            if rank == Rank::Statements {
                for r in &top {
                    // 10,000 true statements each, over-stated by at most error_bound.
                    assert!(r.statements >= 10_000, "{r:?}");
                    assert!(r.statements - r.error_bound <= 10_000, "{r:?}");
                }
            }
        }
        assert_eq!(&*t.top(Rank::Time, 1)[0].tenant, "7");
    }

    #[test]
    fn counts_errors_and_time() {
        let t = Tenants::default();
        let k = t.key(3, "42", Arc::from("worker-2"));
        for _ in 0..5 {
            t.transaction(&k, Duration::from_micros(50));
        }
        t.error(&k);
        for rank in [Rank::Statements, Rank::Time] {
            let r = &t.top(rank, 10)[0];
            assert_eq!(
                (r.statements, r.time_us, r.errors, r.error_bound),
                (5, 250, 1, 0),
                "{rank:?}"
            );
            assert_eq!((&*r.node, r.colocation), ("worker-2", 3));
        }
    }

    #[test]
    fn throttled_transactions_are_counted_in_every_ranking_and_in_total() {
        let t = Tenants::default();
        let k = t.key(3, "42", Arc::from("worker-2"));
        for _ in 0..5 {
            t.transaction(&k, Duration::from_micros(50));
        }
        t.throttled(&k, Duration::from_millis(3));
        t.throttled(&k, Duration::from_micros(500));
        // A tenant throttled before it ever ran takes a counter only in the throttled
        // ranking.
        let new = t.key(3, "7", Arc::from("worker-1"));
        t.throttled(&new, Duration::from_millis(1));
        for rank in [Rank::Statements, Rank::Time] {
            let top = t.top(rank, 10);
            assert_eq!(top.len(), 1, "{rank:?}: {top:?}");
            assert_eq!((top[0].throttled, top[0].throttle_wait_us), (2, 3_500));
        }
        let top = t.top(Rank::Throttled, 10);
        let names: Vec<(&str, u64, u64, u64)> = top
            .iter()
            .map(|r| (&*r.tenant, r.throttled, r.throttle_wait_us, r.statements))
            .collect();
        assert_eq!(names, [("42", 2, 3_500, 0), ("7", 1, 1_000, 0)]);
        assert_eq!(&*top[1].node, "worker-1");
        assert_eq!(t.throttled_totals(), (3, 4_500));
    }

    #[test]
    fn the_most_throttled_are_found_among_many_busier_tenants() {
        let t = Tenants::default();
        let node: Arc<str> = Arc::from("worker-1");
        let slow = t.key(1, "slow", node.clone());
        let mut truth = 0u64;
        for i in 0..200_000u32 {
            let k = t.key(1, &format!("tenant-{i}"), node.clone());
            // Busier tenants (by statements), one in ten throttled once (the noise: 20,000
            // throttled tenants for 256 counters).
            for _ in 0..3 {
                t.transaction(&k, Duration::from_micros(10));
            }
            if i % 10 == 0 {
                t.throttled(&k, Duration::from_micros(100));
            }
            if i % 500 == 0 {
                t.throttled(&slow, Duration::from_millis(20));
                truth += 1;
            }
        }
        assert!(t.counters() <= SHARDS * (2 * PER_SHARD + THROTTLED_PER_SHARD));
        let top = &t.top(Rank::Throttled, 1)[0];
        assert_eq!(&*top.tenant, "slow");
        // Counted since it took its counter: exact at least from there on.
        assert!(top.throttled >= truth && top.throttled - top.error_bound <= truth);
        assert_eq!(
            top.throttle_wait_us,
            20_000 * (top.throttled - top.error_bound)
        );
        assert_eq!(t.throttled_totals().0, truth + 20_000);
    }
}
