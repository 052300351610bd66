//! What per-tenant limits (issue 18) add to a routed transaction.
//!
//! - `claim, nothing configured`: `TenantLimits::claim` with no limit in the file and none
//!   set at run time, as every routed transaction calls it; it returns None. Should be a
//!   flag read: compared with a bare relaxed `AtomicBool` load. Measured with no
//!   `[databases]` entry and with 100 (`Settings::tenant_limits_configured` looks at each
//!   entry's `tenant_max_active`).
//! - `claim, limits on`: `tenant_max_active = "25%"`, `tenant_max_tps = 1000`, 1,000 tenants
//!   in `[tenant_limits]` and 1,000 set at run time; cycling over 100 tenants of which one
//!   in ten has an override. The claim resolves the tenant's override (run time, then the
//!   file) and copies its value into an `Arc<str>`.
//! - `Buckets::take`: one `max_tps` token (1,000 tps per tenant), 100 tenants and 100,000
//!   tenants (inserts and sweeps of full buckets), 1 and 2 threads.
//! - `Tenants::throttled`: counting one throttled transaction (three shard locks: the
//!   throttled sketch, and the tenant's counters in the other two), 100 tenants and
//!   100,000 (the throttled sketch evicting), 1 and 2 threads. Paid only by a transaction
//!   that waited anyway.
//!
//! Each is printed in ns per call next to `Tenants::transaction` (the SHOW TENANTS work
//! every tenant-routed transaction already does) and to the ~15 µs of CPU one
//! `pgbench -S` transaction costs pgtenant. Best of 5 runs of 1,000,000 calls per thread.
//!
//! Run: `cargo bench --bench tenant_limits` (`cargo test` runs it once, briefly, in test
//! mode).
mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgtenant::config::{Settings, TenantOverride};
use pgtenant::limits::rate::Buckets;
use pgtenant::limits::TenantLimits;
use pgtenant::metrics::tenants::{TenantKey, Tenants};

/// CPU time of one `pgbench -S` transaction through pgtenant (transaction mode).
const XACT_CPU_NS: f64 = 15_000.0;

/// Settings from a configuration file's text (after the upstream line).
fn settings(toml: &str) -> Settings {
    let p = std::env::temp_dir().join(format!(
        "pgtenant-bench-limits-{}-{}.toml",
        std::process::id(),
        toml.len()
    ));
    let text = format!("upstream = \"postgres://u:p@127.0.0.1:5999/db\"\n{toml}");
    std::fs::write(&p, text).unwrap();
    let s = pgtenant::config::load(Some(&p), &Default::default()).expect("config");
    let _ = std::fs::remove_file(&p);
    s
}

fn row(what: &str, ns: f64, against: &str) {
    println!(
        "  {what:<44} {ns:8.2} ns  ({:.2}% of a transaction; {against})",
        100.0 * ns / XACT_CPU_NS
    );
}

fn main() {
    let n = common::sizes(1_000_000);
    println!(
        "per-tenant limits, ns per call (vs ~{:.0} µs CPU per pgbench -S transaction):",
        XACT_CPU_NS / 1000.0
    );
    if common::test_mode() {
        println!("{}", common::TEST_MODE_NOTE);
    }
    let known: Vec<String> = (0..100).map(|i| format!("{}", 1_000 + i)).collect();
    // The router hands the claim the tenant text it already holds (an `Arc<str>`).
    let known_arcs: Vec<Arc<str>> = known.iter().map(|v| Arc::from(v.as_str())).collect();
    let many: Vec<String> = (0..100_000).map(|i| format!("tenant-{i}")).collect();

    // The baseline: a flag read.
    let flag = AtomicBool::new(false);
    let bare = common::ns_per(1, n, &|_, _| {
        black_box(black_box(&flag).load(Ordering::Relaxed));
    });
    row("AtomicBool load (a flag read)", bare, "the baseline");

    // claim, nothing configured.
    let off = settings("");
    let hundred_entries: String = (0..100)
        .map(|i| format!("[databases.db{i}]\ndbname = \"db{i}\"\n"))
        .collect();
    let off_entries = settings(&hundred_entries);
    let limits = TenantLimits::default();
    for (what, s) in [
        ("claim, nothing configured", &off),
        ("claim, nothing configured, 100 [databases]", &off_entries),
    ] {
        assert!(limits
            .claim(s, "db", 20, Arc::from(known[0].as_str()))
            .is_none());
        let ns = common::ns_per(1, n, &|_, i| {
            black_box(limits.claim(
                black_box(s),
                "db",
                20,
                black_box(known_arcs[i as usize % known_arcs.len()].clone()),
            ));
        });
        row(
            what,
            ns,
            &format!("{:+.1} ns over the flag read", ns - bare),
        );
    }

    // claim, limits on: 1,000 file overrides and 1,000 run-time ones; one known tenant in
    // ten has an override of each kind.
    let mut conf =
        String::from("tenant_max_active = \"25%\"\ntenant_max_tps = 1000\n[tenant_limits]\n");
    for i in 0..1_000 {
        conf.push_str(&format!("\"{}\" = {{ max_active = 4 }}\n", 1_000 + i * 10));
    }
    let on = settings(&conf);
    let limits_on = TenantLimits::default();
    let mut rt = std::collections::HashMap::new();
    for i in 0..1_000 {
        let mut o = TenantOverride::default();
        o.set("max_tps", "50").unwrap();
        rt.insert(Arc::<str>::from(format!("{}", 1_005 + i * 10)), o);
    }
    limits_on.set_runtime(rt);
    assert_eq!(
        limits_on
            .claim(&on, "db", 20, "1000".into())
            .unwrap()
            .max_active,
        4
    );
    assert_eq!(
        limits_on
            .claim(&on, "db", 20, "1005".into())
            .unwrap()
            .max_tps,
        50.0
    );
    assert_eq!(
        limits_on
            .claim(&on, "db", 20, "1001".into())
            .unwrap()
            .max_active,
        5
    );
    let claim_on = common::ns_per(1, n, &|_, i| {
        black_box(limits_on.claim(
            black_box(&on),
            "db",
            20,
            black_box(known_arcs[i as usize % known_arcs.len()].clone()),
        ));
    });
    row(
        "claim, limits on (100 tenants)",
        claim_on,
        "resolves overrides, allocates the Arc<str>",
    );

    // The existing per-transaction sketch work, to compare with.
    let node: Arc<str> = Arc::from("worker-1");
    let t = Tenants::default();
    let keys: Vec<TenantKey> = known.iter().map(|v| t.key(1, v, node.clone())).collect();
    let many_keys: Vec<TenantKey> = many.iter().map(|v| t.key(1, v, node.clone())).collect();
    for k in keys.iter().chain(&many_keys) {
        t.transaction(k, Duration::from_micros(180));
    }
    let xact = common::ns_per(1, n, &|_, i| {
        t.transaction(
            &keys[i as usize % keys.len()],
            black_box(Duration::from_micros(180)),
        )
    });
    row(
        "Tenants::transaction (existing, 100 tenants)",
        xact,
        "what every tenant-routed transaction already pays",
    );

    // Buckets::take at 1,000 tps per tenant; each thread's clock advances 1 µs per call.
    let known_arc: Vec<Arc<str>> = known.iter().map(|v| Arc::from(v.as_str())).collect();
    let many_arc: Vec<Arc<str>> = many.iter().map(|v| Arc::from(v.as_str())).collect();
    for (what, tenants) in [("100 tenants", &known_arc), ("100k tenants", &many_arc)] {
        for threads in [1, 2] {
            let b = Buckets::default();
            let base = Instant::now();
            let ns = common::ns_per(threads, n, &|th, i| {
                let now = base + Duration::from_micros(i);
                let k = &tenants[(i as usize * 7 + th * 50) % tenants.len()];
                black_box(b.take(k, 1000.0, now, Some(Duration::from_secs(5))));
            });
            row(
                &format!("Buckets::take, {what}, {threads} thread(s)"),
                ns,
                &format!("{:.1}x Tenants::transaction", ns / xact),
            );
        }
    }

    // Tenants::throttled on the same sketches.
    for (what, ks) in [("100 tenants", &keys), ("100k tenants", &many_keys)] {
        for threads in [1, 2] {
            let ns = common::ns_per(threads, n, &|th, i| {
                let k = &ks[(i as usize * 7919 + th * 50) % ks.len()];
                t.throttled(k, black_box(Duration::from_millis(3)));
            });
            row(
                &format!("Tenants::throttled, {what}, {threads} thread(s)"),
                ns,
                &format!("{:.1}x Tenants::transaction", ns / xact),
            );
        }
    }
}
