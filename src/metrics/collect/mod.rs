//! The Prometheus collector: every value is read from the counters the rest of pgtenant
//! already keeps (atomics, the pools' counts, the shard-map handle) at scrape time, so
//! `/metrics` adds nothing to the statement path.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily};

use super::latency::{self, Kind, Snapshot};
use crate::context::Context;
use crate::frontend::routing::RouteReason;

mod families;
mod throttled;

use families::FAMILIES;
use throttled::{tenant_limits, ThrottledSplit};

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
            "pgtenant_clients_parked",
            &[],
            crate::net::park::parked() as f64,
        );
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

        for (name, c) in [
            (
                "pgtenant_server_pipeline_batches_total",
                &super::counters::PIPELINE_BATCHES,
            ),
            (
                "pgtenant_server_pipelined_statements_total",
                &super::counters::PIPELINED_STATEMENTS,
            ),
            (
                "pgtenant_server_pipeline_reruns_total",
                &super::counters::PIPELINE_RERUNS,
            ),
        ] {
            out.counter(name, &[], c.get());
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
