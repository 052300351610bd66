//! The plan cache: statement shape → plan, so the hot path costs a scan, a hash lookup and
//! a value extraction instead of a parse (DESIGN.md, decision 2).
//!
//! - Extended protocol: keyed by the Parse text exactly; the plan's `KeySource::Param`s are
//!   resolved by the caller from Bind.
//! - Simple protocol: keyed by the text with literals masked ([`super::mask`]); the plan is
//!   made from the masked text with literal `k` as parameter `LITERAL_PARAM_BASE + k`, and
//!   resolved on every call from the current text's literal `k`.
//!
//! Bounded LRU: 16 shards, each a `Mutex` over a map from a 64-bit hash (SipHash, randomly
//! keyed: clients cannot aim collisions) to its entries; an entry records the last tick it
//! was used, and a full shard drops its least recently used eighth at once (amortised O(1)).
//! Entries carry the catalog version they were planned with: a plan made against another
//! catalog is a miss, and the first call with a newer version empties the cache.
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::mask::{self, Masked, LITERAL_PARAM_BASE};
use super::plan::{plan, KeySource, Plan, Reason, TenantValue};
use crate::citus::Catalog;
use crate::sync::lock;

const SHARDS: usize = 16;

/// The longest statement text (masked, for the simple protocol) the plan cache keeps:
/// its entries are shared by every client, and a client must not fill them with
/// megabytes of text each.
pub const MAX_CACHED_TEXT: usize = 64 * 1024;

/// Default number of cached plans.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// A simple-protocol statement's route: the plan, and the tenant key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// For `Tenant` and `HintTenant`, `key` holds the value; the plan's own `KeySource`
    /// (often `Param(LITERAL_PARAM_BASE + k)`) is an internal detail of the cache. A tenant
    /// plan whose key cannot be resolved, or whose keys disagree, comes back as
    /// `Coordinator(NoKey)` / `Coordinator(MultiTenant)` (`ReadOnly(…)` if it reads only).
    pub plan: Arc<Plan>,
    /// The tenant key's value text (for `citus::hash::hash_value(dist_type, text)`).
    pub key: Option<String>,
}

/// A named statement's own plan, for a text over [`MAX_CACHED_TEXT`] (see
/// [`Planner::plan_named`]): the catalog version and tenant hint it was made with. It
/// lives and goes with the statement.
#[derive(Default)]
pub struct PlanMemo(Mutex<Option<Kept>>);

/// A kept plan: (catalog version, tenant hint, plan).
type Kept = (u64, Box<str>, Arc<Plan>);

#[derive(Clone)]
enum Cached {
    Plan(Arc<Plan>),
    /// The masked text does not plan (e.g. `'x'::varchar(10)` → `varchar($2)`) and the
    /// text's plan depends on its literals: plan every such text in full.
    Uncacheable,
}

struct Entry {
    key: Box<str>,
    version: u64,
    cached: Cached,
    used: u64,
}

/// Passes a precomputed u64 hash through.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default)]
struct Shard {
    map: HashMap<u64, Vec<Entry>, BuildHasherDefault<IdHasher>>,
    len: usize,
    tick: u64,
}

impl Shard {
    fn get(&mut self, h: u64, key: &str, version: u64) -> Option<Cached> {
        self.tick += 1;
        let tick = self.tick;
        let e = self.map.get_mut(&h)?.iter_mut().find(|e| &*e.key == key)?;
        if e.version != version {
            return None;
        }
        e.used = tick;
        Some(e.cached.clone())
    }

    fn put(&mut self, h: u64, key: &str, version: u64, cached: Cached, cap: usize) {
        self.tick += 1;
        let tick = self.tick;
        let bucket = self.map.entry(h).or_default();
        if let Some(e) = bucket.iter_mut().find(|e| &*e.key == key) {
            e.version = version;
            e.cached = cached;
            e.used = tick;
            return;
        }
        bucket.push(Entry {
            key: key.into(),
            version,
            cached,
            used: tick,
        });
        self.len += 1;
        if self.len > cap {
            self.evict(cap);
        }
    }

    /// Drop the least recently used entries, down to 7/8 of `cap`.
    fn evict(&mut self, cap: usize) {
        let keep = cap - cap / 8;
        let drop = self.len.saturating_sub(keep);
        if drop == 0 {
            return;
        }
        let mut used: Vec<u64> = self.map.values().flatten().map(|e| e.used).collect();
        let (_, &mut threshold, _) = used.select_nth_unstable(drop - 1);
        let mut removed = 0;
        self.map.retain(|_, bucket| {
            bucket.retain(|e| {
                let gone = e.used <= threshold;
                removed += usize::from(gone);
                !gone
            });
            !bucket.is_empty()
        });
        self.len -= removed;
    }
}

/// The router's planner with its plan cache. Shared by all sessions (`&self` everywhere).
pub struct Planner {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
    version: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    /// What a tenant plan becomes when a value is missing / the values disagree:
    /// `[write or unknown, read-only]`.
    no_key: [Arc<Plan>; 2],
    multi: [Arc<Plan>; 2],
}

impl fmt::Debug for Planner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (hits, misses, len) = self.stats();
        f.debug_struct("Planner")
            .field("capacity", &(self.per_shard * SHARDS))
            .field("len", &len)
            .field("hits", &hits)
            .field("misses", &misses)
            .finish()
    }
}

impl Default for Planner {
    fn default() -> Planner {
        Planner::new(DEFAULT_CAPACITY)
    }
}

impl Planner {
    /// A planner caching up to about `capacity` plans (0: no caching).
    pub fn new(capacity: usize) -> Planner {
        Planner {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            hasher: RandomState::new(),
            version: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            no_key: [
                Arc::new(Plan::Coordinator(Reason::NoKey)),
                Arc::new(Plan::ReadOnly(Reason::NoKey)),
            ],
            multi: [
                Arc::new(Plan::Coordinator(Reason::MultiTenant)),
                Arc::new(Plan::ReadOnly(Reason::MultiTenant)),
            ],
        }
    }

    /// (hits, misses, cached plans).
    pub fn stats(&self) -> (u64, u64, usize) {
        let len = self.shards.iter().map(|s| lock(s).len).sum();
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
            len,
        )
    }

    /// Forget every plan.
    pub fn clear(&self) {
        for s in self.shards.iter() {
            let mut s = lock(s);
            s.map.clear();
            s.len = 0;
        }
    }

    /// Plan a simple-protocol query string: the plan and the tenant key's value. Texts
    /// over [`MAX_CACHED_TEXT`] are planned each time, never kept.
    pub fn plan_simple(&self, sql: &str, catalog: &dyn Catalog, catalog_version: u64) -> Routed {
        self.observe(catalog_version);
        let m = mask::mask_spans(sql);
        if !m.cacheable || self.per_shard == 0 || m.key.len() > MAX_CACHED_TEXT {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return self.resolve(Arc::new(plan(sql, catalog)), &m, sql);
        }
        let h = self.hasher.hash_one(m.key.as_str());
        let shard = &self.shards[(h as usize) % SHARDS];
        let found = lock(shard).get(h, &m.key, catalog_version);
        if let Some(c) = found {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return match c {
                Cached::Plan(p) => self.resolve(p, &m, sql),
                Cached::Uncacheable => self.resolve(Arc::new(plan(sql, catalog)), &m, sql),
            };
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let p = plan(&mask::parameterize(&m.key), catalog);
        let (cached, p) = if p == Plan::Coordinator(Reason::ParseFailure) && !m.lits.is_empty() {
            // The masked form does not parse; the text itself may.
            let full = Arc::new(plan(sql, catalog));
            if depends_on_literals(&full) {
                (Cached::Uncacheable, full)
            } else {
                (Cached::Plan(full.clone()), full)
            }
        } else {
            let p = Arc::new(p);
            (Cached::Plan(p.clone()), p)
        };
        lock(shard).put(h, &m.key, catalog_version, cached, self.per_shard);
        self.resolve(p, &m, sql)
    }

    /// Plan an extended-protocol Parse text (cached by its exact text). Resolve the key with
    /// [`Plan::tenant_value`] once Bind brings the parameters.
    pub fn plan_extended(
        &self,
        sql: &str,
        catalog: &dyn Catalog,
        catalog_version: u64,
    ) -> Arc<Plan> {
        self.observe(catalog_version);
        if self.per_shard == 0 || sql.len() > MAX_CACHED_TEXT || sql.contains(mask::MARK) {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Arc::new(plan(sql, catalog));
        }
        let h = self.hasher.hash_one(sql);
        let shard = &self.shards[(h as usize) % SHARDS];
        if let Some(Cached::Plan(p)) = lock(shard).get(h, sql, catalog_version) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return p;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let p = Arc::new(plan(sql, catalog));
        lock(shard).put(
            h,
            sql,
            catalog_version,
            Cached::Plan(p.clone()),
            self.per_shard,
        );
        p
    }

    /// [`Self::plan_extended`] for a named statement: `sql` with the session's tenant
    /// `hint` appended (if any). A text too long for the shared cache is planned once per
    /// catalog version and hint and kept in the statement's own `memo`: a client that
    /// binds a long statement again and again (each Bind a few bytes) must not make
    /// pgtenant plan its text each time (~100 ns a byte).
    pub fn plan_named(
        &self,
        sql: &str,
        hint: Option<&str>,
        catalog: &dyn Catalog,
        catalog_version: u64,
        memo: &PlanMemo,
    ) -> Arc<Plan> {
        let text: Cow<'_, str> = match hint {
            Some(h) => Cow::Owned(format!("{sql}{h}")),
            None => Cow::Borrowed(sql),
        };
        if text.len() <= MAX_CACHED_TEXT {
            return self.plan_extended(&text, catalog, catalog_version);
        }
        let hint = hint.unwrap_or_default();
        if let Some((v, h, p)) = lock(&memo.0).as_ref() {
            if *v == catalog_version && **h == *hint {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return p.clone();
            }
        }
        let p = self.plan_extended(&text, catalog, catalog_version);
        *lock(&memo.0) = Some((catalog_version, hint.into(), p.clone()));
        p
    }

    /// A newer catalog: the old plans can go.
    fn observe(&self, version: u64) {
        let seen = self.version.load(Ordering::Relaxed);
        if version > seen
            && self
                .version
                .compare_exchange(seen, version, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.clear();
        }
    }

    fn resolve(&self, p: Arc<Plan>, m: &Masked, sql: &str) -> Routed {
        if !matches!(*p, Plan::Tenant { .. } | Plan::HintTenant { .. }) {
            return Routed { plan: p, key: None };
        }
        let value = p.tenant_value(|k| match k {
            KeySource::Literal(s) => Some(Cow::Owned(s.clone())),
            // A hint naming a parameter (`/* tenant_id=$1 */`) is no value in the simple
            // protocol, as when the text is planned uncached (found by the `plan` fuzz
            // target: the cache took `$1` for the tenant's key).
            KeySource::Param(i) if *i >= LITERAL_PARAM_BASE => {
                let k = i - LITERAL_PARAM_BASE;
                match m.hint_param(sql, k) {
                    Some(_) => None,
                    None => m.literal(sql, k),
                }
            }
            KeySource::Param(_) => None,
            // An array literal (masked like any other): the element all its elements hold.
            KeySource::ParamElements(i) if *i >= LITERAL_PARAM_BASE => m
                .literal(sql, i - LITERAL_PARAM_BASE)
                .and_then(|a| super::array::text_common_element(&a))
                .map(Cow::Owned),
            KeySource::ParamElements(_) => None,
        });
        let read_only = usize::from(matches!(
            *p,
            Plan::Tenant {
                read_only: true,
                ..
            }
        ));
        match value {
            TenantValue::Value(v) => Routed {
                plan: p,
                key: Some(v.into_owned()),
            },
            TenantValue::Conflict => Routed {
                plan: self.multi[read_only].clone(),
                key: None,
            },
            TenantValue::Unknown | TenantValue::NotTenant => Routed {
                plan: self.no_key[read_only].clone(),
                key: None,
            },
        }
    }
}

/// Would another text of the same shape (other literal values) get another plan?
fn depends_on_literals(p: &Plan) -> bool {
    match p {
        Plan::Coordinator(Reason::MultiTenant) | Plan::ReadOnly(Reason::MultiTenant) => true,
        p => p.key_sources().any(|k| matches!(k, KeySource::Literal(_))),
    }
}
