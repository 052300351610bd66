//! What it costs the router to plan a statement, on the corpus of Django-style statements in
//! `pgtenant::router::corpus` (reads, writes, joins, subqueries, transaction control, DDL).
//!
//! - `cached`: `Planner::plan_simple` on a warm cache — literal masking, one hash lookup and
//!   the extraction of the key's value (the path every repeated statement shape takes).
//!   Target (performance issue): < 1 µs per statement.
//! - `cached_extended`: `Planner::plan_extended` on a warm cache (exact-text lookup).
//! - `uncached`: `router::plan` — a full sqlparser parse and the tenant analysis, i.e. the
//!   first time a shape is seen. Target: < 25 µs per statement.
//! - `mask`: the literal masking alone.
//! - one typical Django SELECT (`… WHERE "shop_order"."account_id" = 42 LIMIT 21`) both ways.
//!
//! Throughput is per statement, so criterion's "elem/s" reads as statements per second and
//! time per iteration divided by the corpus size is the cost of one statement.
//!
//! Run: `cargo bench --bench router` (add `-- --quick` for a short run).
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgtenant::router::corpus::{catalog, CORPUS};
use pgtenant::router::{mask, plan, Planner};
use std::hint::black_box;

fn is_extended(sql: &str) -> bool {
    sql.contains("$1")
}

fn bench_router(c: &mut Criterion) {
    let cat = catalog();
    let simple: Vec<&str> = CORPUS
        .iter()
        .map(|e| e.0)
        .filter(|s| !is_extended(s))
        .collect();
    let extended: Vec<&str> = CORPUS
        .iter()
        .map(|e| e.0)
        .filter(|s| is_extended(s))
        .collect();
    let all: Vec<&str> = CORPUS.iter().map(|e| e.0).collect();

    let planner = Planner::new(10_000);
    for s in &simple {
        planner.plan_simple(s, &cat, 1);
    }
    for s in &extended {
        planner.plan_extended(s, &cat, 1);
    }

    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(simple.len() as u64));
    g.bench_function(format!("cached/{} simple statements", simple.len()), |b| {
        b.iter(|| {
            for s in &simple {
                black_box(planner.plan_simple(black_box(s), &cat, 1));
            }
        })
    });
    g.bench_function(format!("mask/{} simple statements", simple.len()), |b| {
        b.iter(|| {
            for s in &simple {
                black_box(mask::mask_spans(black_box(s)));
            }
        })
    });
    g.throughput(Throughput::Elements(extended.len() as u64));
    g.bench_function(
        format!("cached_extended/{} statements", extended.len()),
        |b| {
            b.iter(|| {
                for s in &extended {
                    black_box(planner.plan_extended(black_box(s), &cat, 1));
                }
            })
        },
    );
    g.throughput(Throughput::Elements(all.len() as u64));
    g.bench_function(format!("uncached/{} statements", all.len()), |b| {
        b.iter(|| {
            for s in &all {
                black_box(plan(black_box(s), &cat));
            }
        })
    });

    let django = CORPUS[0].0;
    g.throughput(Throughput::Elements(1));
    g.bench_function("cached/django select", |b| {
        b.iter(|| black_box(planner.plan_simple(black_box(django), &cat, 1)))
    });
    g.bench_function("uncached/django select", |b| {
        b.iter(|| black_box(plan(black_box(django), &cat)))
    });
    g.finish();

    let (hits, misses, len) = planner.stats();
    println!("plan cache: {hits} hits, {misses} misses, {len} plans");
}

criterion_group!(benches, bench_router);
criterion_main!(benches);
