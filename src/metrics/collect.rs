//! The Prometheus collector: every value is read from the counters the rest of pgtenant
//! already keeps (atomics, the pools' counts, the shard-map handle) at scrape time, so
//! `/metrics` adds nothing to the statement path.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

use super::latency::{self, Kind, Snapshot};
use super::tenants::{Rank, TenantRow, Tenants};
use crate::context::Context;
use crate::frontend::routing::RouteReason;
use crate::limits::Counts;

use MetricType::{COUNTER, GAUGE, HISTOGRAM};

/// Every family `/metrics` serves: (name, type, labels, help). The README lists the same.
const FAMILIES: &[(&str, MetricType, &[&str], &str)] = &[
    (
        "pgtenant_info",
        GAUGE,
        &["version"],
        "Always 1; the version label says which pgtenant runs.",
    ),
    (
        "pgtenant_start_time_seconds",
        GAUGE,
        &[],
        "Unix time the process started.",
    ),
    (
        "pgtenant_ready",
        GAUGE,
        &[],
        "1 when /readyz answers 200, else 0.",
    ),
    (
        "pgtenant_draining",
        GAUGE,
        &[],
        "1 after SIGTERM/SIGINT while clients finish, else 0.",
    ),
    (
        "pgtenant_client_connections",
        GAUGE,
        &[],
        "Client connections open now.",
    ),
    (
        "pgtenant_clients",
        GAUGE,
        &["state"],
        "Client connections by state: login (not yet logged in), active (holding a server connection), waiting (for a server connection), idle (logged in, no server; admin console clients included).",
    ),
    (
        "pgtenant_clients_pinned",
        GAUGE,
        &[],
        "Clients pinned to their server connection by session state that cannot travel (temp tables, held cursors, session advisory locks, LISTEN or prepared statements made by dynamic SQL) in transaction and statement mode.",
    ),
    (
        "pgtenant_server_connections",
        GAUGE,
        &["node", "state"],
        "Server connections by node and state (idle, active = lent to a client, opening).",
    ),
    (
        "pgtenant_database_server_connections",
        GAUGE,
        &["database"],
        "Server connections of each [databases] entry, on every node (names the * entry serves count under \"*\"); absent without [databases].",
    ),
    (
        "pgtenant_database_waiting_clients",
        GAUGE,
        &["database"],
        "Clients waiting for a server connection of each [databases] entry (as pgtenant_database_server_connections).",
    ),
    (
        "pgtenant_pool_waiting_clients",
        GAUGE,
        &["node"],
        "Clients waiting for a server connection now.",
    ),
    (
        "pgtenant_pool_wait_timeouts_total",
        COUNTER,
        &["node"],
        "Clients that gave up waiting for a server connection (query_wait_timeout).",
    ),
    (
        "pgtenant_server_assignments_total",
        COUNTER,
        &["node"],
        "Server connections handed to clients.",
    ),
    (
        "pgtenant_server_connects_total",
        COUNTER,
        &["node"],
        "Server connections opened.",
    ),
    (
        "pgtenant_server_connect_failures_total",
        COUNTER,
        &["node"],
        "Server connections that failed to open.",
    ),
    (
        "pgtenant_queries_total",
        COUNTER,
        &["node"],
        "Queries answered by each node.",
    ),
    (
        "pgtenant_transactions_total",
        COUNTER,
        &["node"],
        "Transactions completed on each node.",
    ),
    (
        "pgtenant_bytes_received_total",
        COUNTER,
        &["node"],
        "Bytes from clients forwarded to each node.",
    ),
    (
        "pgtenant_bytes_sent_total",
        COUNTER,
        &["node"],
        "Bytes from each node forwarded to clients.",
    ),
    (
        "pgtenant_routed_transactions_total",
        COUNTER,
        &["destination", "reason"],
        "Transactions routed, by destination (worker, coordinator) and the reason it was chosen.",
    ),
    (
        "pgtenant_routed_statements_total",
        COUNTER,
        &["destination", "reason"],
        "Statements (Query and Execute) by the destination and route reason of their transaction.",
    ),
    (
        "pgtenant_server_errors_total",
        COUNTER,
        &["class"],
        "ErrorResponses from servers relayed to clients, by SQLSTATE class (first two characters of the code; other when unknown).",
    ),
    (
        "pgtenant_plan_cache_hits_total",
        COUNTER,
        &[],
        "Statements whose route plan came from the cache.",
    ),
    (
        "pgtenant_plan_cache_misses_total",
        COUNTER,
        &[],
        "Statements that had to be parsed to plan their route.",
    ),
    (
        "pgtenant_plan_cache_entries",
        GAUGE,
        &[],
        "Route plans cached now.",
    ),
    (
        "pgtenant_prepared_statements",
        GAUGE,
        &[],
        "Distinct named prepared statements in the process-wide registry (those no client uses any more are dropped every 5 s).",
    ),
    (
        "pgtenant_pools",
        GAUGE,
        &[],
        "Pools (node, database, user) now; unused ones are removed (pool_idle_timeout).",
    ),
    (
        "pgtenant_buffered_message_bytes",
        GAUGE,
        &[],
        "Bytes of large messages (over 1 MiB) reserved now from max_buffered_message_bytes.",
    ),
    (
        "pgtenant_citus_upstream",
        GAUGE,
        &[],
        "1 when the upstream has a Citus catalog, else 0.",
    ),
    (
        "pgtenant_coordinator_reachable",
        GAUGE,
        &[],
        "1 when the last TCP check of the coordinator succeeded, else 0.",
    ),
    (
        "pgtenant_shard_map_loaded",
        GAUGE,
        &[],
        "1 when a shard map is loaded, else 0.",
    ),
    (
        "pgtenant_shard_map_version",
        GAUGE,
        &[],
        "Version of the loaded shard map (increases with each load).",
    ),
    (
        "pgtenant_shard_map_age_seconds",
        GAUGE,
        &[],
        "Seconds since the shard map was last confirmed to match the coordinator.",
    ),
    (
        "pgtenant_shard_map_refresh_failures_total",
        COUNTER,
        &[],
        "Shard map checks or loads that failed.",
    ),
    (
        "pgtenant_shard_map_tables",
        GAUGE,
        &[],
        "Distributed and reference tables in the shard map.",
    ),
    (
        "pgtenant_shard_map_shards",
        GAUGE,
        &[],
        "Shards in the shard map.",
    ),
    (
        "pgtenant_node_up",
        GAUGE,
        &["node", "role"],
        "1 when the node is not marked down, else 0 (role: coordinator, worker).",
    ),
    (
        "pgtenant_workers_down",
        GAUGE,
        &[],
        "Workers marked down now (their tenants go to the coordinator).",
    ),
    (
        "pgtenant_worker_failures_total",
        COUNTER,
        &[],
        "Times a worker was marked down after a failed connection.",
    ),
    (
        "pgtenant_query_duration_seconds",
        HISTOGRAM,
        &[],
        "Query time from its first message to ReadyForQuery.",
    ),
    (
        "pgtenant_transaction_duration_seconds",
        HISTOGRAM,
        &[],
        "Transaction time from its first statement to ReadyForQuery idle.",
    ),
    (
        "pgtenant_client_wait_seconds",
        HISTOGRAM,
        &[],
        "Time clients waited for a server connection (connect included).",
    ),
    (
        "pgtenant_tenant_homes",
        GAUGE,
        &["database", "home"],
        "Blue-green: tenants with a home recorded in the store, by home (every other tenant is in blue).",
    ),
    (
        "pgtenant_tenant_homes_lease_valid",
        GAUGE,
        &["database"],
        "Blue-green: 1 while this instance's lease on the tenant homes is valid (else its tenant transactions wait).",
    ),
    (
        "pgtenant_cutover_held_transactions",
        GAUGE,
        &["database"],
        "Blue-green: transactions waiting now for a cutover of their tenant to end.",
    ),
    (
        "pgtenant_cutover_holds",
        GAUGE,
        &["database"],
        "Blue-green: tenants this instance holds now for a running cutover.",
    ),
    (
        "pgtenant_cutovers_total",
        COUNTER,
        &["result"],
        "Blue-green cutovers run by this instance, by result (done, aborted).",
    ),
    (
        "pgtenant_cutover_pauses_over_timeout_total",
        COUNTER,
        &[],
        "Blue-green cutovers run by this instance whose pause was longer than their own TIMEOUT.",
    ),
    (
        "pgtenant_cutover_pause_seconds",
        HISTOGRAM,
        &[],
        "Blue-green cutovers run by this instance: the pause each caused, from the start of its drain to its flip or abort.",
    ),
    (
        "pgtenant_tenant_throttled_total",
        COUNTER,
        &["tenant"],
        "Transactions that waited because of their tenant's limit (max_active or max_tps), for the 10 most throttled tenant values and tenant=\"other\" for the rest. A tenant's series appears when it enters the top 10 and disappears when it leaves (its later transactions count under other); the increases add up to all throttled transactions, so use rate() or increase() and sum them.",
    ),
    (
        "pgtenant_tenant_throttle_wait_seconds_total",
        COUNTER,
        &["tenant"],
        "Time the throttled transactions of pgtenant_tenant_throttled_total waited for their tenant's limit, by the same tenant classes (the 10 most throttled tenant values and other).",
    ),
    (
        "pgtenant_tenant_limit_events_total",
        COUNTER,
        &["event"],
        "Per-tenant limit events: throttled_active (waited for a connection: tenant at max_active), throttled_rate (waited for a max_tps token), rate_refused (refused: the token would come after query_wait_timeout), wait_timeout (query_wait_timeout in the tenant's queue: the tenant held max_active connections all along), statement_timeout (statement cancelled by the tenant's statement_timeout).",
    ),
];

/// Collects a snapshot of `ctx` on every scrape.
pub struct Scrape {
    ctx: Arc<Context>,
    descs: Vec<Desc>,
    throttled: Mutex<ThrottledSplit>,
}

impl Scrape {
    pub fn new(ctx: Arc<Context>) -> Scrape {
        let descs = FAMILIES
            .iter()
            .map(|(name, _, labels, help)| {
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels.iter().map(|l| l.to_string()).collect(),
                    HashMap::new(),
                )
                .unwrap_or_else(|e| panic!("metric {name}: {e}"))
            })
            .collect();
        Scrape {
            ctx,
            descs,
            throttled: Mutex::default(),
        }
    }
}

/// Families being filled, in `FAMILIES` order.
struct Out {
    families: Vec<MetricFamily>,
}

impl Out {
    fn new() -> Out {
        let families = FAMILIES
            .iter()
            .map(|(name, kind, _, help)| {
                let mut f = MetricFamily::default();
                f.set_name(name.to_string());
                f.set_help(help.to_string());
                f.set_field_type(*kind);
                f
            })
            .collect();
        Out { families }
    }

    fn push(&mut self, name: &str, labels: &[&str], m: impl FnOnce(&mut Metric)) {
        let Some(i) = FAMILIES.iter().position(|f| f.0 == name) else {
            debug_assert!(false, "unknown metric {name}");
            return;
        };
        let names = FAMILIES[i].2;
        debug_assert_eq!(names.len(), labels.len(), "{name}: labels");
        let pairs = names
            .iter()
            .zip(labels)
            .map(|(n, v)| {
                let mut p = LabelPair::default();
                p.set_name(n.to_string());
                p.set_value(v.to_string());
                p
            })
            .collect();
        let mut metric = Metric::from_label(pairs);
        m(&mut metric);
        self.families[i].mut_metric().push(metric);
    }

    fn gauge(&mut self, name: &str, labels: &[&str], v: f64) {
        self.push(name, labels, |m| {
            let mut g = Gauge::default();
            g.set_value(v);
            m.set_gauge(g);
        });
    }

    fn counter(&mut self, name: &str, labels: &[&str], v: u64) {
        self.counter_f64(name, labels, v as f64);
    }

    fn counter_f64(&mut self, name: &str, labels: &[&str], v: f64) {
        self.push(name, labels, |m| {
            let mut c = Counter::default();
            c.set_value(v);
            m.set_counter(c);
        });
    }

    /// A histogram with the fixed `latency::BOUNDS_US` buckets, from a merged HdrHistogram.
    fn histogram(&mut self, name: &str, s: &Snapshot) {
        self.push(name, &[], |m| {
            let mut h = Histogram::default();
            h.set_sample_count(s.count());
            h.set_sample_sum(s.sum_us() as f64 / 1e6);
            h.set_bucket(
                s.cumulative()
                    .into_iter()
                    .map(|(le, n)| {
                        let mut b = Bucket::default();
                        b.set_upper_bound(le);
                        b.set_cumulative_count(n);
                        b
                    })
                    .collect(),
            );
            m.set_histogram(h);
        });
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Per-node sums over the pools of that node.
#[derive(Default)]
struct NodeSums {
    idle: u64,
    active: u64,
    opening: u64,
    waiting: u64,
    wait_timeouts: u64,
    assignments: u64,
    connects: u64,
    connect_failures: u64,
    queries: u64,
    xacts: u64,
    bytes_received: u64,
    bytes_sent: u64,
}

impl Collector for Scrape {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let ctx = &*self.ctx;
        // Relaxed loads: a scrape is a sample, not a synchronisation point.
        let mut out = Out::new();
        let r = Ordering::Relaxed;

        out.gauge("pgtenant_info", &[env!("CARGO_PKG_VERSION")], 1.0);
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(ctx.health.started().elapsed());
        out.gauge("pgtenant_start_time_seconds", &[], started.as_secs_f64());
        out.gauge(
            "pgtenant_ready",
            &[],
            flag(super::health::readiness(ctx).is_empty()),
        );
        out.gauge("pgtenant_draining", &[], flag(ctx.shutdown.is_cancelled()));
        out.gauge(
            "pgtenant_client_connections",
            &[],
            ctx.clients.load(r) as f64,
        );

        // Clients by state. `ctx.clients` counts from accept, the registry from login;
        // the session guards count active and waiting (each read once, so a client changing
        // state during the scrape can be off by one: saturating).
        let open = u64::from(ctx.clients.load(r));
        let logged_in = ctx.admin.clients.count_where(|_| true) as u64;
        let active = super::counters::CLIENTS_ACTIVE.get_gauge();
        let waiting = super::counters::CLIENTS_WAITING.get_gauge();
        for (state, v) in [
            ("login", open.saturating_sub(logged_in)),
            ("active", active),
            ("waiting", waiting),
            ("idle", logged_in.saturating_sub(active + waiting)),
        ] {
            out.gauge("pgtenant_clients", &[state], v as f64);
        }
        out.gauge(
            "pgtenant_clients_pinned",
            &[],
            super::counters::CLIENTS_PINNED.load(r).max(0) as f64,
        );

        // Pools, summed per node (a pool is per node, database and user).
        let mut nodes: BTreeMap<Arc<str>, NodeSums> = BTreeMap::new();
        // Removed pools' counters stay in their node's (counters never go down).
        for (node, r) in ctx.pools.retired() {
            let n = nodes.entry(node).or_default();
            n.wait_timeouts += r.wait_timeouts;
            n.assignments += r.assignments;
            n.connects += r.connects;
            n.connect_failures += r.connect_failures;
            n.queries += r.queries;
            n.xacts += r.xacts;
            n.bytes_received += r.bytes_received;
            n.bytes_sent += r.bytes_sent;
        }
        for p in ctx.pools.all() {
            let (idle, total) = p.counts();
            let st = &p.stats;
            let n = nodes.entry(p.key.node.name.clone()).or_default();
            let active = st
                .active
                .get_gauge()
                .min(u64::from(total - idle.min(total)));
            n.idle += u64::from(idle);
            n.active += active;
            n.opening += u64::from(total).saturating_sub(u64::from(idle) + active);
            n.waiting += u64::from(st.waiting.load(r));
            n.wait_timeouts += st.wait_timeouts.load(r);
            n.assignments += st.assignments.get();
            n.connects += st.connects.load(r);
            n.connect_failures += st.connect_failures.load(r);
            n.queries += st.query_count.get();
            n.xacts += st.xact_count.get();
            n.bytes_received += st.bytes_received.get();
            n.bytes_sent += st.bytes_sent.get();
        }
        for (node, n) in &nodes {
            let node = &**node;
            for (state, v) in [
                ("idle", n.idle),
                ("active", n.active),
                ("opening", n.opening),
            ] {
                out.gauge("pgtenant_server_connections", &[node, state], v as f64);
            }
            out.gauge("pgtenant_pool_waiting_clients", &[node], n.waiting as f64);
            out.counter(
                "pgtenant_pool_wait_timeouts_total",
                &[node],
                n.wait_timeouts,
            );
            out.counter("pgtenant_server_assignments_total", &[node], n.assignments);
            out.counter("pgtenant_server_connects_total", &[node], n.connects);
            out.counter(
                "pgtenant_server_connect_failures_total",
                &[node],
                n.connect_failures,
            );
            out.counter("pgtenant_queries_total", &[node], n.queries);
            out.counter("pgtenant_transactions_total", &[node], n.xacts);
            out.counter("pgtenant_bytes_received_total", &[node], n.bytes_received);
            out.counter("pgtenant_bytes_sent_total", &[node], n.bytes_sent);
        }

        // Per [databases] entry: bounded by the configuration (what `*` serves is one
        // series), so an operator can alert per upstream.
        let s = ctx.settings();
        if !s.databases.is_empty() {
            let mut dbs: BTreeMap<&str, (u64, u64)> =
                s.databases.keys().map(|k| (k.as_str(), (0, 0))).collect();
            let pools = ctx.pools.all();
            for p in &pools {
                let name = if s.databases.contains_key(&*p.key.database) {
                    &*p.key.database
                } else {
                    "*"
                };
                let e = dbs.entry(name).or_default();
                e.0 += u64::from(p.counts().1);
                e.1 += u64::from(p.stats.waiting.load(r));
            }
            for (db, (conns, waiting)) in dbs {
                out.gauge("pgtenant_database_server_connections", &[db], conns as f64);
                out.gauge("pgtenant_database_waiting_clients", &[db], waiting as f64);
            }
        }

        for reason in RouteReason::ALL {
            for (dest, to_worker) in [("coordinator", false), ("worker", true)] {
                out.counter(
                    "pgtenant_routed_transactions_total",
                    &[dest, reason.as_str()],
                    ctx.routes.get_to(reason, to_worker),
                );
                out.counter(
                    "pgtenant_routed_statements_total",
                    &[dest, reason.as_str()],
                    ctx.routes.statements_to(reason, to_worker),
                );
            }
        }

        for (class, n) in super::counters::SERVER_ERRORS.nonzero() {
            out.counter("pgtenant_server_errors_total", &[class], n);
        }

        let (hits, misses, size) = ctx.router.planner().stats();
        out.counter("pgtenant_plan_cache_hits_total", &[], hits);
        out.counter("pgtenant_plan_cache_misses_total", &[], misses);
        out.gauge("pgtenant_plan_cache_entries", &[], size as f64);

        out.gauge(
            "pgtenant_prepared_statements",
            &[],
            ctx.statements.len() as f64,
        );
        out.gauge("pgtenant_pools", &[], ctx.pools.len() as f64);
        out.gauge(
            "pgtenant_buffered_message_bytes",
            &[],
            crate::net::budget::used() as f64,
        );

        out.gauge(
            "pgtenant_citus_upstream",
            &[],
            flag(ctx.shard_map.is_citus.load(r)),
        );
        out.gauge(
            "pgtenant_coordinator_reachable",
            &[],
            flag(ctx.health.coordinator_reachable() == Some(true)),
        );
        let map = ctx.shard_map.get();
        out.gauge("pgtenant_shard_map_loaded", &[], flag(map.is_some()));
        out.counter(
            "pgtenant_shard_map_refresh_failures_total",
            &[],
            ctx.shard_map.refresh_failures.load(r),
        );
        let down: Vec<Arc<str>> = ctx
            .node_health
            .down_nodes()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let coordinator = ctx.coordinator.load_full();
        let mut seen = vec![coordinator.name.clone()];
        out.gauge(
            "pgtenant_node_up",
            &[&coordinator.name, "coordinator"],
            flag(!down.contains(&coordinator.name)),
        );
        if let Some(m) = &map {
            out.gauge("pgtenant_shard_map_version", &[], m.version as f64);
            if let Some(age) = ctx.health.shard_map_age() {
                out.gauge("pgtenant_shard_map_age_seconds", &[], age.as_secs_f64());
            }
            out.gauge("pgtenant_shard_map_tables", &[], m.tables.len() as f64);
            out.gauge("pgtenant_shard_map_shards", &[], m.shard_count() as f64);
            for (_, node) in &m.nodes {
                if seen.contains(&node.name) {
                    continue;
                }
                seen.push(node.name.clone());
                out.gauge(
                    "pgtenant_node_up",
                    &[&node.name, "worker"],
                    flag(!down.contains(&node.name)),
                );
            }
        }
        let workers_down = down.iter().filter(|n| **n != coordinator.name).count();
        out.gauge("pgtenant_workers_down", &[], workers_down as f64);
        out.counter(
            "pgtenant_worker_failures_total",
            &[],
            ctx.node_health.failures.load(r),
        );

        let lat = latency::merged();
        out.histogram("pgtenant_query_duration_seconds", &lat.all(Kind::Query));
        out.histogram(
            "pgtenant_transaction_duration_seconds",
            &lat.all(Kind::Transaction),
        );
        out.histogram("pgtenant_client_wait_seconds", &lat.all(Kind::Wait));

        for e in ctx.bluegreen.entries.iter() {
            let (blue, green) = e.homes.load().counts();
            out.gauge("pgtenant_tenant_homes", &[&e.name, "blue"], blue as f64);
            out.gauge("pgtenant_tenant_homes", &[&e.name, "green"], green as f64);
            out.gauge(
                "pgtenant_tenant_homes_lease_valid",
                &[&e.name],
                flag(e.lease.valid()),
            );
            out.gauge(
                "pgtenant_cutover_held_transactions",
                &[&e.name],
                e.gate.waiting() as f64,
            );
            out.gauge(
                "pgtenant_cutover_holds",
                &[&e.name],
                e.gate.holds().len() as f64,
            );
        }
        let cut = &crate::metrics::migration::CUTOVERS;
        out.counter("pgtenant_cutovers_total", &["done"], cut.done.load(r));
        out.counter("pgtenant_cutovers_total", &["aborted"], cut.aborted.load(r));
        out.counter(
            "pgtenant_cutover_pauses_over_timeout_total",
            &[],
            cut.over_timeout.load(r),
        );
        out.push("pgtenant_cutover_pause_seconds", &[], |m| {
            let mut h = Histogram::default();
            h.set_sample_count(cut.pause_count.load(r));
            h.set_sample_sum(cut.pause_sum_us.load(r) as f64 / 1e6);
            let mut total = 0;
            h.set_bucket(
                crate::metrics::migration::PAUSE_BUCKETS
                    .iter()
                    .zip(&cut.pause_buckets)
                    .map(|(le, n)| {
                        total += n.load(r);
                        let mut b = Bucket::default();
                        b.set_upper_bound(*le);
                        b.set_cumulative_count(total);
                        b
                    })
                    .collect(),
            );
            m.set_histogram(h);
        });

        let split = &mut self.throttled.lock().unwrap_or_else(|p| p.into_inner());
        tenant_limits(&mut out, &ctx.tenants, &ctx.tenant_limits.counts, split);
        out.families
    }
}

/// Tenants with a series of their own in the per-tenant throttling metrics.
const TOP_THROTTLED: usize = 10;
/// The class of every other tenant.
const OTHER: &str = "other";

/// Throttled transactions and their wait (µs): one tenant class's counters.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Throttled {
    count: u64,
    wait_us: u64,
}

/// How the throttled transactions split into the top tenants and `other`, kept from one
/// scrape to the next.
///
/// A listed tenant's series is its count since it took its counter in the throttled
/// sketch (exact from there on: the sketch's count less its `error_bound`), so it rises
/// while listed, and restarts (a counter reset to Prometheus) only if the tenant lost its
/// counter. `other` must not fall, or `rate()` would read a reset and count its whole
/// value again: so it is not `total − Σ listed` (that falls whenever a tenant enters the
/// top 10) but a counter of its own, advanced at each scrape by what the total rose less
/// what the tenants listed both then and now rose (as Prometheus reads them, resets
/// included). A tenant entering the list brings its past count as its first sample, which
/// `rate()` does not count; a tenant leaving it stops rising; either way the throttled
/// transactions of that interval count under `other`. So the increases of all the series
/// add up to the increase of the total, whoever is listed, with at most 11 series.
#[derive(Default)]
struct ThrottledSplit {
    /// None before the first scrape.
    last: Option<SplitScrape>,
}

#[derive(Clone)]
struct SplitScrape {
    total: Throttled,
    listed: Vec<(Arc<str>, Throttled)>,
    other: Throttled,
}

impl ThrottledSplit {
    /// The series of this scrape from the throttled sketch's rows and the process total.
    fn next(&mut self, total: Throttled, rows: Vec<TenantRow>) -> SplitScrape {
        // Rank by the sketch's weight, merging the rows of one value in several colocation
        // groups (limits apply per value: one label value per tenant). The empty value and
        // a tenant named "other" count under other.
        let mut by_value: HashMap<Arc<str>, (u64, Throttled)> = HashMap::new();
        for r in rows {
            if r.tenant.is_empty() || &*r.tenant == OTHER {
                continue;
            }
            let e = by_value.entry(r.tenant).or_default();
            e.0 += r.throttled;
            e.1.count += r.throttled - r.error_bound;
            e.1.wait_us += r.throttle_wait_us;
        }
        let mut ranked: Vec<(Arc<str>, (u64, Throttled))> = by_value.into_iter().collect();
        ranked.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(TOP_THROTTLED);
        let listed: Vec<(Arc<str>, Throttled)> =
            ranked.into_iter().map(|(v, (_, t))| (v, t)).collect();
        let other = match &self.last {
            None => Throttled {
                count: total
                    .count
                    .saturating_sub(listed.iter().map(|(_, t)| t.count).sum()),
                wait_us: total
                    .wait_us
                    .saturating_sub(listed.iter().map(|(_, t)| t.wait_us).sum()),
            },
            Some(last) => {
                // What rate() will count for the tenants listed both times.
                let rise = |now: u64, before: u64| if now >= before { now - before } else { now };
                let mut seen = Throttled::default();
                for (v, t) in &listed {
                    if let Some((_, b)) = last.listed.iter().find(|(w, _)| w == v) {
                        seen.count += rise(t.count, b.count);
                        seen.wait_us += rise(t.wait_us, b.wait_us);
                    }
                }
                let grew = |now: u64, before: u64, seen: u64| {
                    now.saturating_sub(before).saturating_sub(seen)
                };
                Throttled {
                    count: last.other.count + grew(total.count, last.total.count, seen.count),
                    wait_us: last.other.wait_us
                        + grew(total.wait_us, last.total.wait_us, seen.wait_us),
                }
            }
        };
        let now = SplitScrape {
            total,
            listed,
            other,
        };
        self.last = Some(now.clone());
        now
    }
}

/// The per-tenant limit metrics: throttled transactions and their wait by tenant class,
/// and the limit events.
fn tenant_limits(out: &mut Out, tenants: &Tenants, counts: &Counts, split: &mut ThrottledSplit) {
    let (count, wait_us) = tenants.throttled_totals();
    let s = split.next(
        Throttled { count, wait_us },
        tenants.top(Rank::Throttled, usize::MAX),
    );
    let classes = s
        .listed
        .iter()
        .map(|(v, t)| (&**v, t))
        .chain([(OTHER, &s.other)]);
    for (tenant, t) in classes {
        out.counter("pgtenant_tenant_throttled_total", &[tenant], t.count);
        out.counter_f64(
            "pgtenant_tenant_throttle_wait_seconds_total",
            &[tenant],
            t.wait_us as f64 / 1e6,
        );
    }
    let r = Ordering::Relaxed;
    for (event, n) in [
        ("throttled_active", &counts.throttled_active),
        ("throttled_rate", &counts.throttled_rate),
        ("rate_refused", &counts.rate_refused),
        ("wait_timeout", &counts.wait_timeouts),
        ("statement_timeout", &counts.statement_timeouts),
    ] {
        out.counter("pgtenant_tenant_limit_events_total", &[event], n.load(r));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The value of every series of family `name`, by its only label's value.
    fn series(out: &Out, name: &str) -> BTreeMap<String, f64> {
        let f = out
            .families
            .iter()
            .find(|f| f.name() == name)
            .unwrap_or_else(|| panic!("no family {name}"));
        f.get_metric()
            .iter()
            .map(|m| {
                assert_eq!(m.get_label().len(), 1, "{name}");
                let v = m.get_counter().get_value();
                (m.get_label()[0].value().to_string(), v)
            })
            .collect()
    }

    fn scrape(t: &Tenants, c: &Counts, split: &mut ThrottledSplit) -> Out {
        let mut out = Out::new();
        tenant_limits(&mut out, t, c, split);
        out
    }

    fn throttle(t: &Tenants, value: &str, n: u64, each: Duration) {
        let k = t.key(1, value, Arc::from("worker-1"));
        for _ in 0..n {
            t.throttled(&k, each);
        }
    }

    #[test]
    fn the_ten_most_throttled_tenants_and_other() {
        let (t, c, mut split) = (Tenants::default(), Counts::default(), Default::default());
        // Tenants 1 … 12 throttled 1 … 12 times, 1 ms each; a tenant whose value is
        // "other" 20 times (it counts under other, not as a second "other" series).
        for i in 1..=12u64 {
            throttle(&t, &i.to_string(), i, Duration::from_millis(1));
        }
        throttle(&t, "other", 20, Duration::from_millis(1));
        c.throttled_active.store(7, Ordering::Relaxed);
        c.statement_timeouts.store(2, Ordering::Relaxed);
        let out = scrape(&t, &c, &mut split);
        let n = series(&out, "pgtenant_tenant_throttled_total");
        let mut want: BTreeMap<String, f64> = (3..=12).map(|i| (i.to_string(), i as f64)).collect();
        want.insert("other".into(), (1 + 2 + 20) as f64);
        assert_eq!(n, want);
        let w = series(&out, "pgtenant_tenant_throttle_wait_seconds_total");
        assert_eq!(w.len(), 11);
        assert!((w["12"] - 0.012).abs() < 1e-9 && (w["other"] - 0.023).abs() < 1e-9);
        assert_eq!(
            series(&out, "pgtenant_tenant_limit_events_total"),
            BTreeMap::from([
                ("rate_refused".into(), 0.0),
                ("statement_timeout".into(), 2.0),
                ("throttled_active".into(), 7.0),
                ("throttled_rate".into(), 0.0),
                ("wait_timeout".into(), 0.0),
            ])
        );
        // Nothing throttled at all: other alone, at 0.
        let mut empty = ThrottledSplit::default();
        let out = scrape(&Tenants::default(), &c, &mut empty);
        let n = series(&out, "pgtenant_tenant_throttled_total");
        assert_eq!(n, BTreeMap::from([("other".into(), 0.0)]));
    }

    fn row(tenant: &str, throttled: u64, error_bound: u64) -> TenantRow {
        TenantRow {
            tenant: Arc::from(tenant),
            colocation: 1,
            node: Arc::from("worker-1"),
            statements: 0,
            time_us: 0,
            errors: 0,
            throttled,
            throttle_wait_us: 1_000 * (throttled - error_bound),
            error_bound,
        }
    }

    fn total(count: u64) -> Throttled {
        Throttled {
            count,
            wait_us: 1_000 * count,
        }
    }

    /// (tenant, count) of one scrape, other last.
    fn counts(s: &SplitScrape) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = s
            .listed
            .iter()
            .map(|(n, t)| (n.to_string(), t.count))
            .collect();
        v.push(("other".into(), s.other.count));
        v
    }

    #[test]
    fn other_never_falls_and_the_increases_add_up() {
        let mut split = ThrottledSplit::default();
        // Ten tenants of 100 each: all listed.
        let mut rows: Vec<TenantRow> = (0..10).map(|i| row(&format!("a{i}"), 100, 0)).collect();
        let s = split.next(total(1_000), rows.clone());
        assert_eq!(s.other, Throttled::default());
        // b, throttled 150 times in this interval, enters; a9 leaves with its 100. b's
        // series starts at 150 (a first sample: rate() counts nothing of it), so its 150
        // count under other this once; a9's past 100 do not come back as a jump of other.
        rows.pop();
        rows.push(row("b", 150, 0));
        let s = split.next(total(1_150), rows.clone());
        assert_eq!(s.listed[0], (Arc::from("b"), total(150)));
        assert_eq!(s.other, total(150));
        // b +10, a0 +5, and 3 for tenants not listed: other +3.
        rows[0] = row("a0", 105, 0);
        rows[9] = row("b", 160, 0);
        let s = split.next(total(1_168), rows.clone());
        assert_eq!(s.other, total(153));
        // b lost its counter and took one again (ranked by 104, 100 of them inherited):
        // its series restarts at its exact count, 4, which rate() reads as a reset and
        // counts; the other 16 of the interval's 20 go to other.
        rows[9] = row("b", 104, 100);
        let s = split.next(total(1_188), rows.clone());
        assert_eq!(
            counts(&s)[..2],
            [("a0".to_string(), 105), ("b".to_string(), 4)]
        );
        assert_eq!(s.other, total(169));
    }

    #[test]
    fn one_value_in_several_colocation_groups_is_one_series() {
        let mut split = ThrottledSplit::default();
        let mut second = row("42", 5, 0);
        second.colocation = 2;
        let s = split.next(total(12), vec![row("42", 7, 0), second, row("", 3, 0)]);
        assert_eq!(
            counts(&s),
            [("42".to_string(), 12), ("other".to_string(), 0)]
        );
    }
}
