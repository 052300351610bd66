//! Per-tenant limits: one tenant must not starve the others (a burst of slow reports from
//! tenant 42 holding every server connection while everyone else waits).
//!
//! Rules:
//! - A transaction's tenant is the one the router pinned it to (a key or a hint); a
//!   transaction of no tenant (or several) is limited by nothing here.
//! - What applies to a tenant is resolved per transaction ([`TenantLimits::claim`]): the
//!   tenant's run-time override (`SET TENANT`, shared through the store) over its
//!   configured one (`[tenant_limits]`) over the entry's and global defaults, key by key.
//!   So an override set now applies to the tenant's next transaction.
//! - `max_active` is enforced by the pool (`pool::queue`): a tenant at its limit waits in
//!   its own queue while other tenants take free connections; the wait is bounded by
//!   `query_wait_timeout` and ends with the usual error for that request only. With any
//!   limit on, a full pool hands its next connection to the tenants in turn (fair
//!   queueing), not to whoever queued first.
//! - `max_tps` is a token bucket per tenant and instance (`rate.rs`): a transaction over
//!   the rate waits for its token, or is refused at once when the token would come after
//!   its `query_wait_timeout`.
//! - `statement_timeout` is enforced by pgtenant (a cancel request when a statement runs
//!   longer), not by a server setting the client could change.
//! - Run-time overrides live in the upstream's database (`store.rs`, table
//!   `pgtenant.tenant_limits`): `SET TENANT` on any instance's console writes them, and
//!   every instance's sync task (`sync.rs`) loads them at start and when told of a change
//!   (the shard-map refresher's connection LISTENs for it).
//! - Nothing is paid when no limit is configured or set: transactions carry no claim (one
//!   flag read per routed transaction) and pools queue FIFO as before.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{MaxActive, Settings, TenantOverride};

pub mod rate;
pub mod store;
pub mod sync;

/// What one transaction of a tenant may do, resolved when it starts.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The tenant value (canonical text).
    pub tenant: Arc<str>,
    /// Its colocation group (for the tenant sketches; the limits are by value).
    pub colocation: u32,
    /// Server connections of the pool the tenant may hold at once; 0 = no limit.
    pub max_active: u32,
    /// Transactions per second; 0 = no limit.
    pub max_tps: f64,
    /// Zero = none.
    pub statement_timeout: Duration,
    /// Set by the pool when the transaction waited because its tenant was at its limit.
    pub throttled: bool,
    /// Set when it waited for a rate token.
    pub rate_throttled: bool,
    /// How long its tenant's limits made it wait (the token, the tenant's queue).
    pub waited: Duration,
}

/// Counters since start (`/metrics`, SHOW TENANT LIMITS).
#[derive(Default)]
pub struct Counts {
    /// Transactions that waited because their tenant held `max_active` connections.
    pub throttled_active: AtomicU64,
    /// Transactions that waited for a token (`max_tps`).
    pub throttled_rate: AtomicU64,
    /// Transactions refused because their token would come too late.
    pub rate_refused: AtomicU64,
    /// Transactions that reached query_wait_timeout in their tenant's queue.
    pub wait_timeouts: AtomicU64,
    /// Statements cancelled by a tenant's statement_timeout.
    pub statement_timeouts: AtomicU64,
}

/// The limits every session consults (in `Context`).
pub struct TenantLimits {
    /// Overrides set at run time, as the shared store holds them (canonical value →
    /// override); replaced whole on each change.
    runtime: ArcSwap<HashMap<Arc<str>, TenantOverride>>,
    /// Any run-time override at all (with `Settings::tenant_limits_configured`, decides
    /// whether transactions carry a claim).
    runtime_any: AtomicBool,
    pub rate: rate::Buckets,
    pub counts: Counts,
    /// The run-time overrides with who set them, and the store's state (`store.rs`).
    pub store: store::Store,
    /// Load the store again (`sync.rs`): a notification came on the shard-map
    /// refresher's connection, or that connection was opened again.
    pub wake: tokio::sync::Notify,
}

impl Default for TenantLimits {
    fn default() -> Self {
        TenantLimits {
            runtime: ArcSwap::from_pointee(HashMap::new()),
            runtime_any: AtomicBool::new(false),
            rate: rate::Buckets::default(),
            counts: Counts::default(),
            store: store::Store::default(),
            wake: tokio::sync::Notify::new(),
        }
    }
}

impl TenantLimits {
    /// Is any limit on (configured, or set at run time)?
    pub fn on(&self, s: &Settings) -> bool {
        self.runtime_any.load(Ordering::Relaxed) || s.tenant_limits_configured()
    }

    /// Replace the run-time overrides (the store's content).
    pub fn set_runtime(&self, m: HashMap<Arc<str>, TenantOverride>) {
        self.runtime_any.store(!m.is_empty(), Ordering::Relaxed);
        self.runtime.store(Arc::new(m));
    }

    /// The run-time overrides now.
    pub fn runtime(&self) -> Arc<HashMap<Arc<str>, TenantOverride>> {
        self.runtime.load_full()
    }

    /// The tenant's override: run time over configuration, key by key.
    pub fn override_of(&self, s: &Settings, tenant: &str) -> TenantOverride {
        let rt = self.runtime.load();
        let run = rt.get(tenant).copied().unwrap_or_default();
        let conf = s.tenant_limits.get(tenant).copied().unwrap_or_default();
        run.over(conf)
    }

    /// What a transaction of `tenant` (canonical text) may do in a pool of database
    /// `database` with `pool_size` connections. None when no limit is on at all.
    pub fn claim(
        &self,
        s: &Settings,
        database: &str,
        pool_size: u32,
        tenant: Arc<str>,
    ) -> Option<Claim> {
        if !self.on(s) {
            return None;
        }
        let o = self.override_of(s, &tenant);
        let max_active: MaxActive = o
            .max_active
            .unwrap_or_else(|| s.tenant_max_active_of(database));
        Some(Claim {
            tenant,
            colocation: 0,
            max_active: max_active.of(pool_size),
            max_tps: o.max_tps.unwrap_or(s.tenant_max_tps),
            statement_timeout: o.statement_timeout.unwrap_or(s.tenant_statement_timeout),
            throttled: false,
            rate_throttled: false,
            waited: Duration::ZERO,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> Settings {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("pgtenant-limits-{}-{n}.toml", std::process::id()));
        let text = format!("upstream = \"postgres://u:p@127.0.0.1:5999/db\"\n{toml}");
        std::fs::write(&p, text).unwrap();
        let s = crate::config::load(Some(&p), &Default::default()).expect("config");
        let _ = std::fs::remove_file(&p);
        s
    }

    #[test]
    fn nothing_configured_means_no_claim() {
        let s = settings("");
        let l = TenantLimits::default();
        assert!(l.claim(&s, "db", 20, "42".into()).is_none());
    }

    #[test]
    fn run_time_over_file_over_defaults_key_by_key() {
        let s = settings(
            "tenant_max_active = \"25%\"\ntenant_max_tps = 100\n\
             [tenant_limits]\n\"42\" = { max_active = 8, statement_timeout = \"2s\" }\n",
        );
        let l = TenantLimits::default();
        let c = l.claim(&s, "db", 20, "7".into()).unwrap();
        assert_eq!((c.max_active, c.max_tps), (5, 100.0));
        let c = l.claim(&s, "db", 20, "42".into()).unwrap();
        assert_eq!(c.max_active, 8);
        assert_eq!(c.statement_timeout, Duration::from_secs(2));
        let mut rt = HashMap::new();
        let mut o = TenantOverride::default();
        o.set("max_active", "1").unwrap();
        o.set("max_tps", "0").unwrap();
        rt.insert(Arc::from("42"), o);
        l.set_runtime(rt);
        let c = l.claim(&s, "db", 20, "42".into()).unwrap();
        assert_eq!((c.max_active, c.max_tps), (1, 0.0));
        assert_eq!(
            c.statement_timeout,
            Duration::from_secs(2),
            "kept from the file"
        );
    }

    #[test]
    fn a_run_time_override_alone_turns_claims_on() {
        let s = settings("");
        let l = TenantLimits::default();
        let mut o = TenantOverride::default();
        o.set("max_active", "2").unwrap();
        l.set_runtime(HashMap::from([(Arc::from("9"), o)]));
        assert_eq!(l.claim(&s, "db", 20, "9".into()).unwrap().max_active, 2);
        assert_eq!(l.claim(&s, "db", 20, "10".into()).unwrap().max_active, 0);
        l.set_runtime(HashMap::new());
        assert!(l.claim(&s, "db", 20, "9".into()).is_none());
    }
}
