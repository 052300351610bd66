//! What the shard map costs at Citus scale: building it from the catalog rows, and the
//! per-statement lookup of a tenant.
//!
//! The map is hash-range partitioned as Citus creates it: one distributed table (int8
//! key), `n` equal int4 ranges over the hash space (`step = 2^32 / n`, the last one ends
//! at `INT32_MAX`), placed round robin over 8 worker nodes (groups 1..8; the coordinator
//! is group 0 without shards). The rows are exactly what `shard_map::load` reads from the
//! coordinator (text columns), fed to `shard_map::build`, the pure half of the loader.
//!
//! - `build/<n> shards`: `shard_map::build` for 1,000 and 100,000 shards (the map is
//!   dropped outside the timing). Target (performance issue): 100,000 shards well under
//!   1 s, so a refresh never stalls; the load from a real PostgreSQL (query + build) is
//!   checked in `tests/it/scale.rs`.
//! - `lookup/<n> shards`: what routing does per statement for a tenant value: the int8
//!   hash of its text (`citus::hash::hash_value`) and `ShardMap::locate` (binary search of
//!   the colocation group's ranges), cycling through 4,096 pseudo-random tenant ids so the
//!   searches do not repeat one path. For 1,000 / 10,000 / 100,000 shards.
//! - `locate/<n> shards`: the binary search alone (precomputed hashes).
//!
//! Lookup must grow with log2(n) (10 → 13.3 → 16.6 steps), not with n: the summary at the
//! end times a lookup and, apart, the hash, `locate` and the bare binary search
//! (`partition_point` over the group's ranges; `locate` minus it is the colocation-group
//! `HashMap` lookup and the range checks), and prints ns per search step for each size
//! (best of 5 runs). The ranges (24 bytes each) of 1,000 shards fit in L1/L2, those of
//! 100,000 (2.4 MB) do not: the deep steps of the search then miss the cache, so the time
//! grows faster than log2(n) but nowhere near n.
//!
//! Run: `cargo bench --bench shard_map` (add `-- --quick` for a short run). `cargo test` runs
//! every benchmark and the summary once, briefly (`common::test_mode`).
mod common;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, Criterion};
use pgtenant::citus::hash::hash_value;
use pgtenant::citus::shard_map::{build, NodeResolver, ShardMap};
use pgtenant::citus::DistType;
use pgtenant::pool::Node;

const COLOCATION: u32 = 1;
const WORKERS: i32 = 8;
const FIRST_SHARD_ID: i64 = 102_008;
/// Tenant ids cycled through by the lookup benchmarks.
const TENANTS: usize = 4096;

type Rows = Vec<Vec<Option<String>>>;

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

/// The catalog rows of a cluster with one `n`-shard distributed table, as the loader's
/// queries return them: (tables, sequence columns, shards, nodes).
fn catalog_rows(n: u32) -> (Rows, Rows, Rows, Rows) {
    let tables = vec![vec![
        s("public"),
        s("accounts"),
        s("h"),
        s(COLOCATION),
        s("id"),
        s(20), // int8
    ]];
    let step = (1i64 << 32) / i64::from(n);
    let shards = (0..i64::from(n))
        .map(|i| {
            let min = i64::from(i32::MIN) + i * step;
            let max = if i == i64::from(n) - 1 {
                i64::from(i32::MAX)
            } else {
                min + step - 1
            };
            vec![
                s(COLOCATION),
                s(FIRST_SHARD_ID + i),
                s(min),
                s(max),
                s(1 + i % i64::from(WORKERS)),
            ]
        })
        .collect();
    let nodes = (0..=WORKERS)
        .map(|g| vec![s(g), s(format!("10.0.0.{}", 10 + g)), s(5432)])
        .collect();
    (tables, Vec::new(), shards, nodes)
}

fn coordinator() -> Node {
    Node {
        name: "coordinator".into(),
        host: "10.0.0.10".into(),
        port: 5432,
    }
}

fn build_map(rows: &(Rows, Rows, Rows, Rows)) -> ShardMap {
    let coord = coordinator();
    let rewrites = BTreeMap::new();
    let resolver = NodeResolver {
        rewrites: &rewrites,
        coordinator: &coord,
        worker_prefix: "worker-",
    };
    build(
        1,
        String::new(),
        &rows.0,
        &rows.1,
        &rows.2,
        &rows.3,
        &resolver,
    )
    .expect("catalog rows build a map")
}

/// Pseudo-random int8 tenant ids (64-bit LCG, Knuth's MMIX constants), as text.
fn tenant_ids() -> Vec<String> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..TENANTS)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((x >> 24) % 10_000_000).to_string()
        })
        .collect()
}

/// The per-statement lookup: hash the value's text, find its shard and node.
#[inline]
fn lookup(map: &ShardMap, value: &str) -> i64 {
    let h = hash_value(DistType::Int8, value).expect("int8 text");
    map.locate(COLOCATION, h)
        .expect("every hash has a shard")
        .0
        .shard_id
}

/// Setup check: every tenant lands in the shard the uniform ranges put it in, on the node
/// of that shard's round-robin group.
fn check(map: &ShardMap, n: u32, ids: &[String]) {
    assert_eq!(map.shard_count(), n as usize);
    let step = (1i64 << 32) / i64::from(n);
    for v in ids {
        let h = hash_value(DistType::Int8, v).expect("int8 text");
        let (r, node) = map.locate(COLOCATION, h).expect("located");
        let want = ((i64::from(h) - i64::from(i32::MIN)) / step).min(i64::from(n) - 1);
        assert_eq!(r.shard_id, FIRST_SHARD_ID + want, "tenant {v}");
        assert!(r.min <= h && h <= r.max);
        let group = 1 + want % i64::from(WORKERS);
        assert_eq!(&*node.name, format!("worker-{group}"), "tenant {v}");
    }
}

fn bench_shard_map(c: &mut Criterion) {
    let mut g = c.benchmark_group("shard_map");
    for n in [1_000u32, 100_000] {
        let rows = catalog_rows(n);
        g.bench_function(format!("build/{n} shards"), |b| {
            b.iter_with_large_drop(|| build_map(black_box(&rows)))
        });
    }
    let ids = tenant_ids();
    for n in [1_000u32, 10_000, 100_000] {
        let map = build_map(&catalog_rows(n));
        check(&map, n, &ids);
        let hashes: Vec<i32> = ids
            .iter()
            .map(|v| hash_value(DistType::Int8, v).expect("int8 text"))
            .collect();
        let mut i = 0usize;
        g.bench_function(format!("lookup/{n} shards"), |b| {
            b.iter(|| {
                i = (i + 1) % TENANTS;
                lookup(&map, black_box(&ids[i]))
            })
        });
        g.bench_function(format!("locate/{n} shards"), |b| {
            b.iter(|| {
                i = (i + 1) % TENANTS;
                map.locate(COLOCATION, black_box(hashes[i]))
                    .map(|r| r.0.min)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_shard_map);

fn summary() {
    let ids = tenant_ids();
    println!();
    let (_, runs) = common::sizes(1);
    println!("shard map (1 table, 8 workers), best of {runs}:");
    if common::test_mode() {
        println!("{}", common::TEST_MODE_NOTE);
    }
    for n in [1_000u32, 100_000] {
        let rows = catalog_rows(n);
        let ms = (0..runs)
            .map(|_| {
                let t = Instant::now();
                black_box(build_map(&rows));
                t.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::INFINITY, f64::min);
        println!("  build {n:>7} shards: {ms:8.2} ms (with drop)");
    }
    let mut base = None;
    for n in [1_000u32, 10_000, 100_000] {
        let map = build_map(&catalog_rows(n));
        let hashes: Vec<i32> = ids
            .iter()
            .map(|v| hash_value(DistType::Int8, v).expect("int8 text"))
            .collect();
        // Rounds over the 4,096 tenants, best of 5 (test mode: one round, once).
        let (rounds, runs) = if common::test_mode() {
            (1, 1)
        } else {
            (500, 5)
        };
        let best = |f: &dyn Fn()| {
            (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    for _ in 0..rounds {
                        f();
                    }
                    t.elapsed().as_nanos() as f64 / (rounds * TENANTS) as f64
                })
                .fold(f64::INFINITY, f64::min)
        };
        let lookup_ns = best(&|| {
            for v in &ids {
                black_box(lookup(&map, black_box(v)));
            }
        });
        let locate_ns = best(&|| {
            for h in &hashes {
                black_box(map.locate(COLOCATION, black_box(*h)).map(|r| r.0.min));
            }
        });
        let hash_ns = best(&|| {
            for v in &ids {
                black_box(hash_value(DistType::Int8, black_box(v)).ok());
            }
        });
        let ranges = &map.groups[&COLOCATION];
        let search_ns = best(&|| {
            for h in &hashes {
                let h = black_box(*h);
                black_box(ranges.partition_point(|r| r.max < h));
            }
        });
        let steps = f64::from(n).log2();
        let b = *base.get_or_insert(search_ns);
        println!(
            "  {n:>7} shards: lookup {lookup_ns:5.1} ns; apart: hash {hash_ns:4.1}, \
             locate {locate_ns:5.1} = binary search {search_ns:4.1} ({:.2} ns per step, \
             log2(n) = {steps:4.1}) + colocation HashMap and checks {:4.1}; search {:.2}x \
             the 1,000-shard time (log2 ratio {:.2}x, linear would be {}x)",
            search_ns / steps,
            locate_ns - search_ns,
            search_ns / b,
            steps / 1000f64.log2(),
            n / 1000
        );
    }
}

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    summary();
}
