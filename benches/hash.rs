//! What it costs the router to turn a tenant value into its Citus hash.
//!
//! Measures `citus::hash::hash_value` (text form: parse exactly as PostgreSQL's input
//! function, then the type's PostgreSQL hash) and `hash_binary` (binary Bind parameter)
//! for the distribution column types Citus users pick: int8, text (a short tenant name
//! and a 64-byte key) and uuid. The yardstick is the rest of the cached routing path (a
//! plan-cache lookup and a shard-range binary search), which costs tens of nanoseconds:
//! hashing must stay in that range, far below a network round trip (~50 µs).
//!
//! Run: `cargo bench --bench hash` (add `-- --quick` for a short run).
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgtenant::citus::hash::{hash_binary, hash_value};
use pgtenant::citus::DistType;
use std::hint::black_box;

fn bench_hash(c: &mut Criterion) {
    let text64 = "t".repeat(32) + &"0123456789abcdef".repeat(2);
    assert_eq!(text64.len(), 64);
    let cases: [(&str, DistType, &str); 6] = [
        ("int8 '42'", DistType::Int8, "42"),
        (
            "int8 '-9223372036854775808'",
            DistType::Int8,
            "-9223372036854775808",
        ),
        ("text 'acme' (4 bytes)", DistType::Text, "acme"),
        ("text (64 bytes)", DistType::Text, &text64),
        (
            "uuid '00000000-0000-0000-0000-00000000002a'",
            DistType::Uuid,
            "00000000-0000-0000-0000-00000000002a",
        ),
        (
            "uuid '{...}' no hyphens, upper case",
            DistType::Uuid,
            "{A0EEBC999C0B4EF8BB6D6BB9BD380A11}",
        ),
    ];

    println!("hash_value(type, text): parse as PostgreSQL's input function + PostgreSQL hash");
    let mut g = c.benchmark_group("hash_value");
    for (name, t, text) in cases {
        println!(
            "  {name}: {:?}",
            hash_value(t, text).expect("bench input hashes")
        );
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| hash_value(black_box(t), black_box(text)))
        });
    }
    g.finish();

    println!("hash_binary(type, bytes): binary-format Bind parameter + PostgreSQL hash");
    let uuid: [u8; 16] = [
        0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a,
        0x11,
    ];
    let bin: [(&str, DistType, &[u8]); 3] = [
        ("int8 (8 bytes)", DistType::Int8, &42i64.to_be_bytes()),
        ("text (64 bytes)", DistType::Text, text64.as_bytes()),
        ("uuid (16 bytes)", DistType::Uuid, &uuid),
    ];
    let mut g = c.benchmark_group("hash_binary");
    for (name, t, bytes) in bin {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| hash_binary(black_box(t), black_box(bytes)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_hash);
criterion_main!(benches);
