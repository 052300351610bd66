//! What the metrics counters cost a transaction, to show they do not slow the hot path.
//!
//! One iteration is the counter work of one `pgbench -S` transaction in transaction mode
//! (a one-statement autocommit SELECT), as the session loop does it:
//!
//! - `Waiting` guard around the pool acquire, `Active` guard while attached;
//! - `RouteStats::count` (route decision of the first statement);
//! - `PoolStats::client_message` for the Query, `bytes_sent` for the server's four frames
//!   (RowDescription, DataRow, CommandComplete, ReadyForQuery);
//! - `PoolStats::add_query` and `add_xact` (each also records a latency observation);
//!
//! plus, separately, one latency observation alone (`Latency::record`: the thread's own
//! HdrHistogram) and `SERVER_ERRORS.count_body` for one ErrorResponse (errors are not on
//! every transaction).
//!
//! Each is measured single-threaded and from 2 threads at once on the same counters (the
//! worst case: both threads' atomic adds hit the same cache lines). At the end it prints
//! ns per transaction next to the CPU one `pgbench -S` transaction costs pgtenant
//! (~15 µs, measured earlier in this project with pgbench against a local PostgreSQL).
//!
//! Run: `cargo bench --bench counters` (add `-- --quick` for a short run). `cargo test` runs
//! every benchmark and the summary once, briefly (`common::test_mode`).
mod common;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use pgtenant::frontend::routing::{RouteReason, RouteStats};
use pgtenant::metrics::counters::{Active, Waiting, SERVER_ERRORS};
use pgtenant::pool::PoolStats;

/// CPU time of one `pgbench -S` transaction through pgtenant (transaction mode).
const XACT_CPU_NS: f64 = 15_000.0;

/// An ErrorResponse body for `SELECT 1/0`.
fn division_by_zero() -> Vec<u8> {
    let mut b = Vec::new();
    for (t, v) in [
        (b'S', "ERROR"),
        (b'V', "ERROR"),
        (b'C', "22012"),
        (b'M', "division by zero"),
        (b'F', "int.c"),
        (b'L', "841"),
        (b'R', "int4div"),
    ] {
        b.push(t);
        b.extend_from_slice(v.as_bytes());
        b.push(0);
    }
    b.push(0);
    b
}

/// The counter work of one transaction.
#[inline]
fn one_transaction(routes: &RouteStats, pool: &PoolStats, query: Duration) {
    drop(black_box(Waiting::enter()));
    let active = Active::enter();
    routes.count(black_box(RouteReason::TenantKey), black_box(true));
    pool.client_message(b'Q', black_box(40));
    for len in [black_box(60u64), 20, 13, 6] {
        pool.bytes_sent.add(len);
    }
    pool.add_query(black_box(query));
    pool.add_xact(black_box(query));
    drop(active);
}

#[inline]
fn one_error(body: &[u8]) {
    SERVER_ERRORS.count_body(black_box(body));
}

/// Wall time for each of `threads` threads to run `f` `iters` times, all at once, on
/// shared counters: the time one thread's transaction takes.
fn on_threads(threads: usize, iters: u64, f: &(impl Fn() + Sync)) -> Duration {
    let start = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                start.wait();
                for _ in 0..iters {
                    f();
                }
            });
        }
        start.wait();
        let t = Instant::now();
        // Scope end joins the threads.
        t
    })
    .elapsed()
}

fn bench_counters(c: &mut Criterion) {
    let routes = RouteStats::default();
    let pool = PoolStats::new("bench");
    let body = division_by_zero();
    let q = Duration::from_micros(180);

    let mut g = c.benchmark_group("counters");
    g.bench_function("transaction_1_thread", |b| {
        b.iter(|| one_transaction(&routes, &pool, q))
    });
    g.bench_function("transaction_2_threads", |b| {
        b.iter_custom(|iters| on_threads(2, iters, &|| one_transaction(&routes, &pool, q)))
    });
    g.bench_function("latency_record_1_thread", |b| {
        b.iter(|| pool.query_latency.record(black_box(q)))
    });
    g.bench_function("latency_record_2_threads", |b| {
        b.iter_custom(|iters| on_threads(2, iters, &|| pool.query_latency.record(black_box(q))))
    });
    g.bench_function("error_class_1_thread", |b| b.iter(|| one_error(&body)));
    g.bench_function("error_class_2_threads", |b| {
        b.iter_custom(|iters| on_threads(2, iters, &|| one_error(&body)))
    });
    g.finish();
}

criterion_group!(benches, bench_counters);

/// ns per call of `f` over `n` calls from `threads` threads (best of `runs` runs).
fn ns_per(threads: usize, (n, runs): (u64, usize), f: &(impl Fn() + Sync)) -> f64 {
    (0..runs)
        .map(|_| on_threads(threads, n, f).as_nanos() as f64 / n as f64)
        .fold(f64::INFINITY, f64::min)
}

fn summary() {
    let routes = RouteStats::default();
    let pool = PoolStats::new("bench");
    let body = division_by_zero();
    let q = Duration::from_micros(180);
    let n = common::sizes(2_000_000);
    let xact = || one_transaction(&routes, &pool, q);
    let err = || one_error(&body);
    let record = || pool.query_latency.record(black_box(q));
    println!();
    println!(
        "counter work per transaction vs ~{:.0} µs CPU per pgbench -S transaction:",
        XACT_CPU_NS / 1000.0
    );
    if common::test_mode() {
        println!("{}", common::TEST_MODE_NOTE);
    }
    for (what, f) in [
        ("transaction counters", &xact as &(dyn Fn() + Sync)),
        ("latency record", &record),
        ("error class count", &err),
    ] {
        for threads in [1, 2] {
            let ns = ns_per(threads, n, &f);
            println!(
                "  {what:<21} {threads} thread{}: {ns:6.1} ns  = {:.2}% of a transaction",
                if threads == 1 { " " } else { "s" },
                100.0 * ns / XACT_CPU_NS
            );
        }
    }
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
