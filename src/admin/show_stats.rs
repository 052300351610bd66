//! SHOW STATS, STATS_TOTALS, STATS_AVERAGES: per database as PgBouncer, where a worker
//! pool's database is `db@node`. Totals since start; averages are per second (counts,
//! bytes) or per transaction / query (times, µs) over the process lifetime.
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

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

    /// PgBouncer's averages: counts and bytes per second; xact/query time per
    /// transaction/query; wait time per server assignment.
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

fn by_database(ctx: &Context) -> BTreeMap<String, Totals> {
    let mut out: BTreeMap<String, Totals> = BTreeMap::new();
    for p in ctx.pools.all() {
        let s = &p.stats;
        let t = out.entry(pool_database(&p.key)).or_default();
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
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

fn uptime_secs(ctx: &Context) -> f64 {
    ctx.admin.started.elapsed().as_secs_f64().max(1.0)
}

pub fn stats(ctx: &Context) -> ResultSet {
    let secs = uptime_secs(ctx);
    let mut rs = ResultSet::new(STATS);
    for (db, t) in by_database(ctx) {
        let mut row = vec![Some(db)];
        row.extend(t.list().iter().map(|v| Some(v.to_string())));
        row.extend(t.averages(secs).iter().map(|v| Some(v.to_string())));
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
    let secs = uptime_secs(ctx);
    let mut rs = ResultSet::new(STATS_AVERAGES);
    for (db, t) in by_database(ctx) {
        let mut row = vec![Some(db)];
        row.extend(t.averages(secs).iter().map(|v| Some(v.to_string())));
        rs.push(row);
    }
    rs
}
