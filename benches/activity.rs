//! What the tenant activity sketches (`metrics::activity::Activity`: count-min sketches in
//! minute and hour buckets) add to a routed transaction, and what answering costs.
//!
//! One "record" is the tenant work of one tenant-routed transaction as the session loop
//! does it at the closing ReadyForQuery: `Tenants::key` (at routing), `Tenants::transaction`
//! (SHOW TENANTS' sketches), and now `Activity::record` with the `Instant` the session
//! already read. Compared with and without the `Activity::record` call:
//!
//! - `known tenant`: cycling through 100 tenants; 1 thread, and 2 threads at once.
//! - `100k tenants`: cycling through 100,000 distinct tenants (counters spread over the
//!   whole current buckets: cache misses; SHOW TENANTS' sketch evicts all the time).
//! - `same tenant, 2 threads`: both threads on one tenant (the same counters: the worst
//!   contention).
//! - `activity alone`: `Activity::record` by itself, 1 and 2 threads.
//!
//! Also what canonicalizing the tenant text (`citus::hash::canonical_text`) costs against
//! copying it as written. Then the answering side: summing a window's buckets (`Activity::window`, 1h and 24h)
//! and ranking 1,000,000 candidate tenants (hash + estimate + select the 100 smallest),
//! which SHOW QUIET TENANTS does after reading the candidates.
//!
//! Run: `cargo bench --bench activity` (a summary table at the end; `cargo test` runs it
//! once, briefly, in test mode).
mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgtenant::citus::hash::canonical_text;
use pgtenant::citus::DistType;
use pgtenant::metrics::activity::{Activity, Window, BYTES};
use pgtenant::metrics::tenants::Tenants;

/// CPU time of one `pgbench -S` transaction through pgtenant (transaction mode).
const XACT_CPU_NS: f64 = 15_000.0;
const COLOCATION: u32 = 1;

/// The tenant work of one routed transaction; `activity`: with the new update.
#[inline]
fn record(t: &Tenants, a: Option<&Activity>, value: &str, node: &Arc<str>) {
    let k = t.key(COLOCATION, black_box(value), node.clone());
    let at = Instant::now();
    t.transaction(&k, black_box(Duration::from_micros(180)));
    if let Some(a) = a {
        a.record(k.hash(), at);
    }
}

fn main() {
    let node: Arc<str> = Arc::from("worker-3");
    let known: Vec<String> = (0..100).map(|i| format!("{}", 1_000 + i)).collect();
    let many: Vec<String> = (0..100_000).map(|i| format!("tenant-{i}")).collect();
    let (t, a) = (&Tenants::default(), &Activity::default());
    let (known, many, node) = (&known, &many, &node);
    for v in known.iter().chain(many) {
        record(t, Some(a), v, node);
    }
    let n = common::sizes(1_000_000);
    let n = (n.0, n.1 * 2);
    println!(
        "tenant work per routed transaction, without / with Activity::record \
         (vs ~{:.0} µs CPU per pgbench -S transaction); activity memory {} bytes:",
        XACT_CPU_NS / 1000.0,
        BYTES
    );
    if common::test_mode() {
        println!("{}", common::TEST_MODE_NOTE);
    }
    let spread = |a: Option<&Activity>, th: usize, i: u64| {
        record(t, a, &known[(i as usize * 7 + th * 50) % known.len()], node)
    };
    let wide = |a: Option<&Activity>, th: usize, i: u64| {
        record(
            t,
            a,
            &many[(i as usize * 7919 + th * 50_000) % many.len()],
            node,
        )
    };
    let same = |a: Option<&Activity>, _: usize, _: u64| record(t, a, &known[0], node);
    // Without and with in turns (best of each): the machine's load moves less between them.
    let pair = |threads: usize, f: &(dyn Fn(Option<&Activity>, usize, u64) + Sync)| {
        let (mut without, mut with) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..n.1 {
            without = without.min(common::ns_per(threads, (n.0, 1), &|th, i| f(None, th, i)));
            with = with.min(common::ns_per(threads, (n.0, 1), &|th, i| {
                f(Some(a), th, i)
            }));
        }
        (without, with)
    };
    let rows: Vec<(&str, usize, (f64, f64))> = vec![
        ("known tenant", 1, pair(1, &spread)),
        ("known tenant", 2, pair(2, &spread)),
        ("100k tenants", 1, pair(1, &wide)),
        ("100k tenants", 2, pair(2, &wide)),
        ("same tenant", 2, pair(2, &same)),
    ];
    for (what, threads, (without, with)) in rows {
        println!(
            "  {what:<13} {threads} thread{}: {without:6.1} → {with:6.1} ns (+{:5.1} ns = {:.2}% of a transaction)",
            if threads == 1 { " " } else { "s" },
            with - without,
            100.0 * (with - without) / XACT_CPU_NS
        );
    }
    let now = Instant::now();
    let hashes: Vec<u64> = many.iter().map(|v| t.hash(COLOCATION, v)).collect();
    for threads in [1, 2] {
        let ns = common::ns_per(threads, n, &|th, i| {
            a.record(
                hashes[(i as usize * 7919 + th * 50_000) % hashes.len()],
                now,
            )
        });
        println!(
            "  activity alone, 100k tenants, {threads} thread{}: {ns:6.1} ns",
            if threads == 1 { " " } else { "s" }
        );
    }

    // The tenant text the router now records: as PostgreSQL prints it (an integer parsed
    // and printed, a uuid parsed and formatted) instead of copied as written.
    for (what, dt, text) in [
        ("int8", DistType::Int8, "1234567"),
        (
            "uuid",
            DistType::Uuid,
            "5f0c1b2a-0000-4e6f-9a1b-00000000002a",
        ),
        (
            "UUID",
            DistType::Uuid,
            "5F0C1B2A-0000-4E6F-9A1B-00000000002A",
        ),
    ] {
        let copy = common::ns_per(1, n, &|_, _| {
            black_box(black_box(text).to_owned());
        });
        let canon = common::ns_per(1, n, &|_, _| {
            black_box(canonical_text(dt, black_box(text)).into_owned());
        });
        println!("  tenant text of an {what} key: copied {copy:5.1} ns, canonical {canon:5.1} ns");
    }

    // The answering side.
    let runs = if common::test_mode() { 1 } else { 5 };
    let candidates: Vec<String> = (0..if common::test_mode() {
        10_000
    } else {
        1_000_000
    })
        .map(|i| format!("{}", 10_000_000 + i))
        .collect();
    let best = (0..runs)
        .map(|_| {
            let s = Instant::now();
            let w = a.window(Window::Hours(24));
            let mut ranked: Vec<(u64, &str)> = candidates
                .iter()
                .map(|v| (w.estimate(t.hash(COLOCATION, v)).count, v.as_str()))
                .collect();
            ranked.select_nth_unstable(100);
            ranked.truncate(100);
            ranked.sort_unstable();
            black_box(ranked);
            s.elapsed()
        })
        .min()
        .unwrap();
    println!(
        "  rank {} candidates over 24h (the 100 quietest): {:.0} ms",
        candidates.len(),
        best.as_secs_f64() * 1e3
    );
    // A day on (every bucket of both rings in use): what summing a window costs.
    let later = 25 * 60;
    for w in [Window::Minutes(60), Window::Hours(24)] {
        let best = (0..runs)
            .map(|_| {
                let s = Instant::now();
                black_box(a.window_at(w, later));
                s.elapsed()
            })
            .min()
            .unwrap();
        println!(
            "  sum the {} window's buckets (all in use): {:.2} ms",
            w.label(),
            best.as_secs_f64() * 1e3
        );
    }
}
