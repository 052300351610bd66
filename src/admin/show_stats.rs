//! SHOW STATS, STATS_TOTALS, STATS_AVERAGES: per database as PgBouncer, where a worker
//! pool's database is `db@node`. Totals since start; averages, as PgBouncer's, cover the
//! last full `stats_period` (60 s): a task snapshots the totals every period and the
//! averages are the change over it, per second (counts, bytes) or per transaction /
//! query / server assignment (xact, query and wait time, µs). Zero until the first
//! period ends.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{pool_database, ResultSet};
use crate::context::Context;

pub const STATS: &[&str] = &[
    "database",
    "total_server_assignment_count",
    "total_xact_count",
    "total_query_count",
    "total_received",
    "total_sent",
    "total_xact_time",
    "total_query_time",
    "total_wait_time",
    "total_client_parse_count",
    "total_server_parse_count",
    "total_bind_count",
    "avg_server_assignment_count",
    "avg_xact_count",
    "avg_query_count",
    "avg_recv",
    "avg_sent",
    "avg_xact_time",
    "avg_query_time",
    "avg_wait_time",
    "avg_client_parse_count",
    "avg_server_parse_count",
    "avg_bind_count",
];

pub const STATS_TOTALS: &[&str] = &[
    "database",
    "server_assignment_count",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
];

pub const STATS_AVERAGES: &[&str] = &[
    "database",
    "server_assignment_count",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
    "avg_client_parse_count",
    "avg_server_parse_count",
    "avg_bind_count",
];

/// Summed counters of one database row.
#[derive(Default, Clone, Copy)]
struct Totals {
    assignments: u64,
    xacts: u64,
    queries: u64,
    received: u64,
    sent: u64,
    xact_us: u64,
    query_us: u64,
    wait_us: u64,
    client_parses: u64,
    server_parses: u64,
    binds: u64,
}

impl Totals {
    fn list(&self) -> [u64; 11] {
        [
            self.assignments,
            self.xacts,
            self.queries,
            self.received,
            self.sent,
            self.xact_us,
            self.query_us,
            self.wait_us,
            self.client_parses,
            self.server_parses,
            self.binds,
        ]
    }

    /// What changed since `old` (counters only grow; a pool that went away counts 0).
    fn since(&self, old: &Totals) -> Totals {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        Totals {
            assignments: d(self.assignments, old.assignments),
            xacts: d(self.xacts, old.xacts),
            queries: d(self.queries, old.queries),
            received: d(self.received, old.received),
            sent: d(self.sent, old.sent),
            xact_us: d(self.xact_us, old.xact_us),
            query_us: d(self.query_us, old.query_us),
            wait_us: d(self.wait_us, old.wait_us),
            client_parses: d(self.client_parses, old.client_parses),
            server_parses: d(self.server_parses, old.server_parses),
            binds: d(self.binds, old.binds),
        }
    }

    /// PgBouncer 1.25's averages (stats.c calc_average) of a change over `secs`: counts
    /// and bytes per second; xact/query time per transaction/query; wait time per server
    /// assignment.
    fn averages(&self, secs: f64) -> [u64; 11] {
        let rate = |n: u64| (n as f64 / secs) as u64;
        let per = |t: u64, n: u64| t.checked_div(n).unwrap_or(0);
        [
            rate(self.assignments),
            rate(self.xacts),
            rate(self.queries),
            rate(self.received),
            rate(self.sent),
            per(self.xact_us, self.xacts),
            per(self.query_us, self.queries),
            per(self.wait_us, self.assignments),
            rate(self.client_parses),
            rate(self.server_parses),
            rate(self.binds),
        ]
    }
}

/// The averages of the last full stats_period, by database row.
#[derive(Default)]
pub struct StatsWindow {
    inner: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// Totals at the last snapshot.
    last: BTreeMap<String, Totals>,
    /// Averages over the period that ended at the last snapshot.
    avg: BTreeMap<String, [u64; 11]>,
}

impl StatsWindow {
    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Close a period of `secs` seconds ending with totals `now`.
    fn roll(&self, now: BTreeMap<String, Totals>, secs: f64) {
        let mut w = self.lock();
        let zero = Totals::default();
        w.avg = now
            .iter()
            .map(|(db, t)| {
                let old = w.last.get(db).unwrap_or(&zero);
                (db.clone(), t.since(old).averages(secs.max(1e-3)))
            })
            .collect();
        w.last = now;
    }

    fn averages(&self, db: &str) -> [u64; 11] {
        self.lock().avg.get(db).copied().unwrap_or_default()
    }
}

/// Snapshot the totals every stats_period (re-read each time, so RELOAD applies) until
/// `stop` fires. Also starts the console's coarse clock (SHOW CLIENTS' request_time),
/// which ends with `stop` too.
pub fn spawn_stats(ctx: Arc<Context>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    super::registry::spawn_clock(stop.clone());
    tokio::spawn(async move {
        let mut last = Instant::now();
        ctx.admin.stats.roll(by_database(&ctx), 1.0);
        loop {
            let period = ctx.settings().stats_period.max(Duration::from_millis(100));
            tokio::select! {
                _ = tokio::time::sleep_until((last + period).into()) => {}
                _ = stop.cancelled() => return,
            }
            let now = Instant::now();
            ctx.admin
                .stats
                .roll(by_database(&ctx), now.duration_since(last).as_secs_f64());
            last = now;
        }
    })
}

fn by_database(ctx: &Context) -> BTreeMap<String, Totals> {
    let mut out: BTreeMap<String, Totals> = BTreeMap::new();
    for p in ctx.pools.all() {
        let s = &p.stats;
        let t = out.entry(pool_database(&p.key)).or_default();
        let l = |a: &crate::metrics::striped::Striped| a.get();
        t.assignments += l(&s.assignments);
        t.xacts += l(&s.xact_count);
        t.queries += l(&s.query_count);
        t.received += l(&s.bytes_received);
        t.sent += l(&s.bytes_sent);
        t.xact_us += l(&s.xact_time_us);
        t.query_us += l(&s.query_time_us);
        t.wait_us += l(&s.wait_time_us);
        t.client_parses += l(&s.client_parse_count);
        t.server_parses += l(&s.server_parse_count);
        t.binds += l(&s.bind_count);
    }
    out
}

pub fn stats(ctx: &Context) -> ResultSet {
    let mut rs = ResultSet::new(STATS);
    for (db, t) in by_database(ctx) {
        let avg = ctx.admin.stats.averages(&db);
        let mut row = vec![Some(db)];
        row.extend(t.list().iter().map(|v| Some(v.to_string())));
        row.extend(avg.iter().map(|v| Some(v.to_string())));
        rs.push(row);
    }
    rs
}

pub fn totals(ctx: &Context) -> ResultSet {
    let mut rs = ResultSet::new(STATS_TOTALS);
    for (db, t) in by_database(ctx) {
        let mut row = vec![Some(db)];
        row.extend(t.list().iter().map(|v| Some(v.to_string())));
        rs.push(row);
    }
    rs
}

pub fn averages(ctx: &Context) -> ResultSet {
    let mut rs = ResultSet::new(STATS_AVERAGES);
    for db in by_database(ctx).into_keys() {
        let avg = ctx.admin.stats.averages(&db);
        let mut row = vec![Some(db)];
        row.extend(avg.iter().map(|v| Some(v.to_string())));
        rs.push(row);
    }
    rs
}
