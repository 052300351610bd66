//! The shard map at Citus scale, against a real PostgreSQL: a coordinator catalog (the
//! emulated `pg_dist_*` tables of `support::citus`) with one distributed table of
//! 100,000 hash shards over 8 worker groups, loaded with the library calls the refresher
//! makes (`backend::connect`, then `DETECT_SQL`, `FINGERPRINT_SQL` and
//! `shard_map::load`).
//!
//! - The load (detect + fingerprint + load, as a refresh that finds a change does) must
//!   take < 1 s when built with optimizations (`cargo test --release --test it scale::`) and
//!   < 10 s in a debug build; the time is printed either way. The cost of building the
//!   map alone is measured precisely by `cargo bench --bench shard_map`.
//! - The map must agree with PostgreSQL: for 3,005 tenant values (edge values, 1..=1000
//!   and 2,000 pseudo-random int8s), the shard and node the map gives (hash of the value's
//!   text + `ShardMap::locate`) are the ones the coordinator's catalog gives for
//!   `hashint8(value)` (the hash function of the bigint column).

use crate::support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pgtenant::auth::ServerCredential;
use pgtenant::backend::{connect, ConnectParams};
use pgtenant::citus::hash::hash_value;
use pgtenant::citus::shard_map::{self, NodeResolver, DETECT_SQL, FINGERPRINT_SQL};
use pgtenant::citus::{Catalog, DistType, TableKind};
use pgtenant::config::ServerTls;
use pgtenant::pool::Node;
use support::citus::{db_err, CATALOG_DDL, FIRST_SHARD_ID};
use support::PgServer;

const SHARDS: i64 = 100_000;
const WORKERS: i32 = 8;
const COLOCATION: u32 = 1;

/// The catalog of a cluster with one distributed table `accounts (id bigint)` of
/// [`SHARDS`] uniform hash ranges (Citus' formula: `step = 2^32 / n`, the last range
/// ends at INT32_MAX), shard `i` placed on group `1 + i % 8`; groups 0 (coordinator,
/// no shards) to 8 in `pg_dist_node`. The indexes are those Citus has on these tables,
/// plus one on the shards' min value for the check query of this test.
fn catalog_sql() -> String {
    let step = (1i64 << 32) / SHARDS;
    format!(
        "{CATALOG_DDL}
CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL);
INSERT INTO pg_dist_partition
  SELECT a.attrelid, 'h', format('{{VAR :varno 1 :varattno %s :vartype %s :vartypmod %s \
:varcollid %s :varlevelsup 0 :varnosyn 1 :varattnosyn %s :location -1}}', a.attnum, \
a.atttypid, a.atttypmod, a.attcollation, a.attnum), {COLOCATION}, 's'
  FROM pg_attribute a WHERE a.attrelid = 'public.accounts'::regclass AND a.attname = 'id';
INSERT INTO pg_dist_colocation VALUES ({COLOCATION}, {SHARDS}, 1, 20, 0);
INSERT INTO pg_dist_node (nodeid, groupid, nodename, nodeport, hasmetadata, metadatasynced, \
shouldhaveshards)
  SELECT g + 1, g, '10.0.0.' || (10 + g), 5432, true, true, g > 0
  FROM generate_series(0, {WORKERS}) AS g;
INSERT INTO pg_dist_shard
  SELECT 'public.accounts'::regclass, {FIRST_SHARD_ID} + i, 't', lo::text,
         (CASE WHEN i = {SHARDS} - 1 THEN 2147483647 ELSE lo + {step} - 1 END)::text
  FROM (SELECT i, -2147483648::bigint + i * {step} AS lo
        FROM generate_series(0::bigint, {SHARDS} - 1) AS i) AS s;
INSERT INTO pg_dist_placement
  SELECT i + 1, {FIRST_SHARD_ID} + i, 1, 0, 1 + i % {WORKERS}
  FROM generate_series(0::bigint, {SHARDS} - 1) AS i;
CREATE INDEX ON pg_dist_shard (logicalrelid);
CREATE INDEX ON pg_dist_placement (shardid);
CREATE INDEX ON pg_dist_shard ((shardminvalue::int4));
ANALYZE;
"
    )
}

/// 64-bit LCG (Knuth's MMIX constants): reproducible pseudo-random values.
fn lcg_values(n: usize) -> Vec<i64> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            x as i64
        })
        .collect()
}

#[tokio::test]
async fn a_100k_shard_map_loads_fast_and_agrees_with_postgres() {
    let server = PgServer::start();
    let url = server.url("app", "secret", "app");
    let client = support::connect(&url).await;
    let t = Instant::now();
    client
        .batch_execute(&catalog_sql())
        .await
        .unwrap_or_else(|e| panic!("create the catalog: {}", db_err(&e)));
    println!(
        "catalog with {SHARDS} shards created in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    // The refresher's own connection and queries.
    let params = ConnectParams {
        host: "127.0.0.1".into(),
        port: server.port(),
        user: "app".into(),
        database: "app".into(),
        credential: Some(ServerCredential::Password("secret".into())),
        tls_mode: ServerTls::Disable,
        tls: None,
        connect_timeout: Duration::from_secs(10),
        max_message: 64 * 1024 * 1024,
        startup: vec![("application_name".into(), "pgtenant shard map".into())],
        keepalive: None,
    };
    let mut conn = connect(&params).await.expect("connect to the coordinator");
    let coordinator = Node {
        name: "coordinator".into(),
        host: "127.0.0.1".into(),
        port: server.port(),
    };
    let rewrites = BTreeMap::new();
    let resolver = NodeResolver {
        rewrites: &rewrites,
        coordinator: &coordinator,
        worker_prefix: "worker-",
    };
    let limit = if cfg!(debug_assertions) {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(1)
    };
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "optimized"
    };
    let mut map = None;
    for attempt in ["first (cold)", "second"] {
        let t = Instant::now();
        let detected = conn.query_rows(DETECT_SQL).await.expect("detect");
        assert_eq!(detected, vec![vec![Some("true".to_string())]]);
        let fp = conn.query_rows(FINGERPRINT_SQL).await.expect("fingerprint");
        let fp = fp[0][0].clone().expect("fingerprint value");
        let t_fp = t.elapsed();
        let m = shard_map::load(&mut conn, 1, fp, &resolver)
            .await
            .expect("load the shard map");
        let total = t.elapsed();
        println!(
            "{attempt} load of {} shards ({build} build): {:.0} ms \
             (detect + fingerprint {:.0} ms, load {:.0} ms)",
            m.shard_count(),
            total.as_secs_f64() * 1e3,
            t_fp.as_secs_f64() * 1e3,
            (total - t_fp).as_secs_f64() * 1e3
        );
        assert!(
            total < limit,
            "{attempt} load of {SHARDS} shards took {total:?} in a {build} build (limit {limit:?})"
        );
        map = Some(m);
    }
    let map = map.expect("loaded");

    assert_eq!(map.shard_count(), SHARDS as usize);
    assert_eq!(map.nodes.len(), WORKERS as usize + 1);
    let accounts = map
        .tables
        .table(None, "accounts")
        .expect("accounts in the map");
    assert_eq!(
        (
            accounts.kind,
            accounts.dist_column.as_str(),
            accounts.dist_type,
            accounts.colocation_id
        ),
        (TableKind::Distributed, "id", DistType::Int8, COLOCATION)
    );
    let col_type: String = client
        .query_one(
            "SELECT format_type(atttypid, NULL) FROM pg_attribute \
             WHERE attrelid = 'accounts'::regclass AND attname = 'id'",
            &[],
        )
        .await
        .expect("column type")
        .get(0);
    assert_eq!(col_type, "bigint", "the check below hashes with hashint8");

    // The catalog's answer for each value: the shard whose range holds hashint8(v) (the
    // index on the min value makes it one index probe per value), its placement's group
    // and that group's node.
    let mut values = vec![i64::MIN, i64::MIN + 1, -1, 0, i64::MAX];
    values.extend(1..=1000);
    values.extend(lcg_values(2000));
    let rows = client
        .query(
            "SELECT u.ord, hashint8(u.v), s.shardid, pl.groupid, n.nodename, n.nodeport \
             FROM unnest($1::int8[]) WITH ORDINALITY AS u(v, ord) \
             CROSS JOIN LATERAL (SELECT shardid FROM pg_dist_shard \
                  WHERE logicalrelid = 'accounts'::regclass \
                    AND hashint8(u.v) BETWEEN shardminvalue::int4 AND shardmaxvalue::int4 \
                  ORDER BY shardminvalue::int4 DESC LIMIT 1) AS s \
             JOIN pg_dist_placement pl ON pl.shardid = s.shardid AND pl.shardstate = 1 \
             JOIN pg_dist_node n ON n.groupid = pl.groupid AND n.noderole = 'primary' \
             ORDER BY u.ord",
            &[&values],
        )
        .await
        .unwrap_or_else(|e| panic!("locate values in the catalog: {}", db_err(&e)));
    assert_eq!(
        rows.len(),
        values.len(),
        "every value has exactly one shard"
    );
    let mut per_group = [0usize; WORKERS as usize + 1];
    for (v, row) in values.iter().zip(&rows) {
        let (pg_hash, shardid, group, host, port): (i32, i64, i32, String, i32) =
            (row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
        let hash = hash_value(DistType::Int8, &v.to_string()).expect("int8 text");
        assert_eq!(hash, pg_hash, "hash of {v}");
        let (range, node) = map
            .locate(COLOCATION, hash)
            .unwrap_or_else(|| panic!("no shard in the map for {v} (hash {hash})"));
        assert_eq!(
            (
                range.shard_id,
                &*node.name,
                &*node.host,
                i32::from(node.port)
            ),
            (
                shardid,
                format!("worker-{group}").as_str(),
                host.as_str(),
                port
            ),
            "tenant {v} (hash {hash})"
        );
        per_group[group as usize] += 1;
    }
    println!(
        "{} tenant values located as PostgreSQL does; per group: {per_group:?}",
        values.len()
    );
    assert_eq!(per_group[0], 0, "the coordinator has no shards");
    assert!(
        per_group[1..].iter().all(|&n| n > 200),
        "values spread over all 8 groups: {per_group:?}"
    );
    conn.terminate();
}
