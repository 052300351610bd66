//! Tests of the emulated Citus cluster itself (`tests/support/citus.rs`); no pgtenant.
//! If these fail, the routing tests built on the cluster prove nothing.

use crate::support;

use std::collections::BTreeMap;
use support::citus::{
    block_on, cluster_ranges, uniform_ranges, CitusCluster, CitusOptions, ShardInfo, TABLES,
};

/// The Citus catalog columns as the issue lists them (name, `udt_name`).
const CATALOG: &[(&str, &[(&str, &str)])] = &[
    (
        "pg_dist_partition",
        &[
            ("logicalrelid", "regclass"),
            ("partmethod", "char"),
            ("partkey", "text"),
            ("colocationid", "int4"),
            ("repmodel", "char"),
        ],
    ),
    (
        "pg_dist_shard",
        &[
            ("logicalrelid", "regclass"),
            ("shardid", "int8"),
            ("shardstorage", "char"),
            ("shardminvalue", "text"),
            ("shardmaxvalue", "text"),
        ],
    ),
    (
        "pg_dist_placement",
        &[
            ("placementid", "int8"),
            ("shardid", "int8"),
            ("shardstate", "int4"),
            ("shardlength", "int8"),
            ("groupid", "int4"),
        ],
    ),
    (
        "pg_dist_node",
        &[
            ("nodeid", "int4"),
            ("groupid", "int4"),
            ("nodename", "text"),
            ("nodeport", "int4"),
            ("noderack", "text"),
            ("hasmetadata", "bool"),
            ("isactive", "bool"),
            ("noderole", "text"),
            ("nodecluster", "name"),
            ("metadatasynced", "bool"),
            ("shouldhaveshards", "bool"),
        ],
    ),
    (
        "pg_dist_colocation",
        &[
            ("colocationid", "int4"),
            ("shardcount", "int4"),
            ("replicationfactor", "int4"),
            ("distributioncolumntype", "oid"),
            ("distributioncolumncollation", "oid"),
        ],
    ),
];

/// Ranges in order cover [INT32_MIN, INT32_MAX] without gap or overlap.
fn assert_covers_int4(table: &str, shards: &[ShardInfo]) {
    assert_eq!(shards[0].min, i32::MIN, "{table}: first shard min");
    assert_eq!(
        shards.last().unwrap().max,
        i32::MAX,
        "{table}: last shard max"
    );
    for w in shards.windows(2) {
        assert!(w[0].min <= w[0].max, "{table}: empty range {:?}", w[0]);
        assert_eq!(
            i64::from(w[0].max) + 1,
            i64::from(w[1].min),
            "{table}: gap or overlap between {:?} and {:?}",
            w[0],
            w[1]
        );
    }
}

#[test]
fn catalog_schema_and_data_are_citus_like() {
    let cluster = CitusCluster::start(CitusOptions::default());
    eprintln!(
        "cluster start + load (1,000 tenants, 32 shards): {:?}",
        cluster.startup
    );
    let coord = &cluster.coordinator;
    let (w0, w1) = (&cluster.workers[0], &cluster.workers[1]);

    block_on(async {
        let c = cluster.app_client(coord).await;

        // The catalog tables have exactly the Citus columns, in order.
        for (table, want) in CATALOG {
            let rows = c
                .query(
                    "SELECT column_name::text, udt_name::text FROM information_schema.columns \
                     WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
                    &[table],
                )
                .await
                .unwrap();
            let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(n, t)| (n.to_string(), t.to_string()))
                .collect();
            assert_eq!(got, want, "columns of {table}");
        }

        // Nodes: the coordinator is group 0 without shards, the workers groups 1 and 2.
        let nodes: Vec<(i32, i32, String, i32, String, bool, bool)> = c
            .query(
                "SELECT nodeid, groupid, nodename, nodeport, noderole, isactive, shouldhaveshards \
                 FROM pg_dist_node ORDER BY groupid",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                )
            })
            .collect();
        let node = |id, group, port: u16, shards| {
            (
                id,
                group,
                "127.0.0.1".to_string(),
                i32::from(port),
                "primary".to_string(),
                true,
                shards,
            )
        };
        assert_eq!(
            nodes,
            vec![
                node(1, 0, coord.port(), false),
                node(2, 1, w0.port(), true),
                node(3, 2, w1.port(), true)
            ]
        );

        // partkey is a Var node; column_to_column_name turns it into the column name.
        for t in TABLES {
            let r = c
                .query_one(
                    "SELECT partmethod::text, partkey, colocationid, repmodel::text, \
                            column_to_column_name(logicalrelid, partkey) \
                     FROM pg_dist_partition WHERE logicalrelid = $1::text::regclass",
                    &[&t.name],
                )
                .await
                .unwrap();
            let (method, partkey, coloc, repmodel, column): (
                String,
                Option<String>,
                i32,
                String,
                Option<String>,
            ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            assert_eq!(coloc, t.colocation_id, "{}", t.name);
            match t.dist {
                Some((col, _)) => {
                    assert_eq!((method.as_str(), repmodel.as_str()), ("h", "s"));
                    let partkey = partkey.unwrap();
                    assert!(
                        partkey.starts_with("{VAR :varno 1 :varattno ") && partkey.ends_with('}'),
                        "{}: partkey {partkey}",
                        t.name
                    );
                    assert_eq!(column.as_deref(), Some(col), "{}", t.name);
                }
                None => {
                    assert_eq!((method.as_str(), repmodel.as_str()), ("n", "t"));
                    assert_eq!((partkey, column), (None, None));
                }
            }
        }
        // The attribute number decides, whatever the rest of the node says.
        let r = c
            .query_one(
                "SELECT column_to_column_name('orders'::regclass, '{VAR :varno 1 :varattno 3 :vartype 23}'), \
                        column_to_column_name('orders'::regclass, '{VAR :varno 1 :varattno 1}')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            (r.get::<_, String>(0), r.get::<_, String>(1)),
            ("amount".into(), "account_id".into())
        );

        // Colocation groups carry the distribution column type and collation.
        let colocs: Vec<(i32, i32, i32, String, u32)> = c
            .query(
                "SELECT colocationid, shardcount, replicationfactor, \
                        coalesce(format_type(nullif(distributioncolumntype, 0), NULL), '-'), \
                        distributioncolumncollation \
                 FROM pg_dist_colocation ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect();
        assert_eq!(
            colocs,
            vec![
                (1, 32, 1, "bigint".into(), 0),
                (2, 32, 1, "text".into(), 100),
                (3, 32, 1, "uuid".into(), 0),
                (4, 32, 1, "integer".into(), 0),
                (5, 1, -1, "-".into(), 0),
            ]
        );

        // Shard ids are unique and consecutive from 102008; one active placement each
        // (three for the reference table: every group).
        let r = c
            .query_one(
                "SELECT min(shardid), max(shardid), count(*), count(DISTINCT shardid) FROM pg_dist_shard",
                &[],
            )
            .await
            .unwrap();
        let n = 6 * 32 + 1;
        assert_eq!(
            (
                r.get::<_, i64>(0),
                r.get::<_, i64>(1),
                r.get::<_, i64>(2),
                r.get::<_, i64>(3)
            ),
            (102008, 102008 + n - 1, n, n)
        );
        let r = c
            .query_one(
                "SELECT count(*), count(DISTINCT placementid), count(*) FILTER (WHERE shardstate = 1) \
                 FROM pg_dist_placement",
                &[],
            )
            .await
            .unwrap();
        let p = 6 * 32 + 3;
        assert_eq!(
            (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)),
            (p, p, p)
        );

        // Tenants per table on the coordinator; both workers hold some of them.
        for t in TABLES {
            let sql = format!("SELECT count(*) FROM {}", t.name);
            let all: i64 = c.query_one(&sql, &[]).await.unwrap().get(0);
            let want = match t.dist {
                Some(_) => 1000 * t.rows_per_tenant,
                None => t.rows_per_tenant,
            };
            assert_eq!(all, want, "rows of {} on the coordinator", t.name);
            let mut on_workers = 0;
            for w in &cluster.workers {
                let n: i64 = cluster
                    .app_client(w)
                    .await
                    .query_one(&sql, &[])
                    .await
                    .unwrap()
                    .get(0);
                if t.dist.is_some() {
                    assert!(
                        n > all / 4,
                        "{}: only {n} of {all} rows on a worker",
                        t.name
                    );
                } else {
                    assert_eq!(n, all, "reference table {} on a worker", t.name);
                }
                on_workers += n;
            }
            if t.dist.is_some() {
                assert_eq!(on_workers, all, "{}: rows on the workers", t.name);
            }
        }
    });

    // Uniform ranges exactly as Citus computes them, covering int4, colocated tables
    // sharing ranges and placements, placements alternating between the workers.
    let ranges = uniform_ranges(32);
    assert_eq!(ranges[0], (-2147483648, -2013265921));
    assert_eq!(ranges[1], (-2013265920, -1879048193));
    assert_eq!(ranges[31], (2013265920, 2147483647));
    let mut by_colocation: BTreeMap<i32, Vec<(i32, i32, i32)>> = BTreeMap::new();
    for t in TABLES.iter().filter(|t| t.dist.is_some()) {
        let shards = cluster.shards(t.name);
        assert_eq!(shards.len(), 32, "{}", t.name);
        assert_covers_int4(t.name, &shards);
        let layout: Vec<(i32, i32, i32)> = shards.iter().map(|s| (s.min, s.max, s.group)).collect();
        let want: Vec<(i32, i32, i32)> = ranges
            .iter()
            .enumerate()
            .map(|(i, (lo, hi))| (*lo, *hi, 1 + (i % 2) as i32))
            .collect();
        assert_eq!(layout, want, "{}", t.name);
        let first = by_colocation
            .entry(t.colocation_id)
            .or_insert(layout.clone());
        assert_eq!(
            *first, layout,
            "{} shares its colocation group's shards",
            t.name
        );
    }
    let plans = cluster.shards("plans");
    assert_eq!(plans.len(), 3, "reference shard placed on every group");
    assert_eq!(
        plans.iter().map(|s| s.group).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );

    // The server's hash functions, as measured on Citus 13 (issue 4).
    let l = cluster.locate("accounts", &["42".into()]);
    assert_eq!(l[0].hash, 1509752520);
    let l = cluster.locate("events", &["acme".into()]);
    assert_eq!(l[0].hash, -1850687378);
    let org42 = cluster.tenant_key("devices", 42);
    assert_eq!(org42, "00000000-0000-0000-0000-00000000002a");
    let l = cluster.locate("devices", std::slice::from_ref(&org42));
    assert_eq!(l[0].hash, 1191735368);
    // hashint8(42) = 1509752520 falls in shard 27 (odd: group 2, worker 1).
    let l = cluster.locate("orders", &["42".into()]);
    assert_eq!(
        (l[0].shardid, l[0].group, l[0].port),
        (102008 + 32 + 27, 2, w1.port())
    );
    assert_eq!(cluster.owner_port("accounts", "42"), w1.port());
    assert_eq!(cluster.owner_port("plans", "1"), coord.port());

    // Every tenant's rows are on the coordinator and on its owner only.
    cluster.check_rows_on_owners().unwrap();
    let keys = cluster.tenant_keys("events");
    assert!(keys.contains(&"tenant-ñ-10".to_string()));
    let owners = cluster.owner_ports("events", &keys);
    assert_eq!(owners.len(), 1000);
    assert!(owners.iter().all(|p| *p == w0.port() || *p == w1.port()));

    // Sequences behave as on Citus: int defaults refuse on a worker, bigint ones use
    // the node's range; the coordinator continues after the loaded ids.
    block_on(async {
        let w = cluster.app_client(w0).await;
        let err = w
            .execute("INSERT INTO items (account_id, name) VALUES (1, 'x')", &[])
            .await
            .unwrap_err();
        let db = err.as_db_error().expect("server error");
        assert_eq!(
            db.message(),
            "nextval(sequence) calls in worker nodes are not supported for column defaults of type int or smallint"
        );
        assert_eq!(db.code().code(), "0A000");
        w.batch_execute("BEGIN").await.unwrap();
        w.execute(
            "INSERT INTO items (account_id, id, name) VALUES (1, 100000, 'x')",
            &[],
        )
        .await
        .unwrap();
        let id: i64 = w
            .query_one(
                "INSERT INTO events (tenant, payload) VALUES ('x', 'y') RETURNING id",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(id, (1i64 << 48) + 1, "bigint sequence on group 1");
        w.batch_execute("ROLLBACK").await.unwrap();

        let c = cluster.app_client(coord).await;
        c.batch_execute("BEGIN").await.unwrap();
        let id: i32 = c
            .query_one(
                "INSERT INTO items (account_id, name) VALUES (1, 'x') RETURNING id",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(id, 2001);
        c.batch_execute("ROLLBACK").await.unwrap();
    });
}

#[tokio::test]
async fn shard_moves_and_worker_restarts() {
    let mut cluster = CitusCluster::start(CitusOptions {
        shard_count: 8,
        tenants: 200,
        ..CitusOptions::default()
    });
    eprintln!(
        "cluster start + load (200 tenants, 8 shards): {:?}",
        cluster.startup
    );
    cluster.check_rows_on_owners().unwrap();
    let (p0, p1) = (cluster.workers[0].port(), cluster.workers[1].port());

    // Move the shard of account 42 (with its colocated orders and items shards).
    let loc = cluster.locate("accounts", &["42".into()])[0].clone();
    let (from, to) = (loc.group, 3 - loc.group);
    let old_placements: Vec<i64> = block_on(async {
        let c = cluster.app_client(&cluster.coordinator).await;
        c.query("SELECT placementid FROM pg_dist_placement ORDER BY 1", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    });
    let rows_before = |port: u16| {
        block_on(async {
            let w = cluster
                .app_client(if port == p0 {
                    &cluster.workers[0]
                } else {
                    &cluster.workers[1]
                })
                .await;
            let r = w
                .query_one(
                    "SELECT (SELECT count(*) FROM accounts WHERE id = 42), \
                            (SELECT count(*) FROM orders WHERE account_id = 42), \
                            (SELECT count(*) FROM items WHERE account_id = 42)",
                    &[],
                )
                .await
                .unwrap();
            (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2))
        })
    };
    let from_port = cluster.group_port(from);
    let to_port = cluster.group_port(to);
    assert_eq!(rows_before(from_port), (1, 3, 2));
    assert_eq!(rows_before(to_port), (0, 0, 0));

    let m = cluster.move_shard(loc.shardid, to);
    assert_eq!(
        m.shardids.len(),
        3,
        "accounts, orders and items move together"
    );
    assert!(m.shardids.contains(&loc.shardid));
    assert_eq!((m.from_group, m.to_group), (from, to));
    assert!(m.rows_copied >= 6);
    assert_eq!(rows_before(from_port), (0, 0, 0));
    assert_eq!(rows_before(to_port), (1, 3, 2));
    for t in ["accounts", "orders", "items"] {
        let l = cluster.locate(t, &["42".into()])[0].clone();
        assert_eq!((l.group, l.port), (to, to_port), "{t} after the move");
    }
    // The placements got new ids, as after a real move; others kept theirs.
    let new_placements: Vec<i64> = block_on(async {
        let c = cluster.app_client(&cluster.coordinator).await;
        c.query(
            "SELECT placementid FROM pg_dist_placement WHERE shardid = ANY($1) ORDER BY 1",
            &[&m.shardids],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    });
    assert_eq!(new_placements.len(), 3);
    assert!(new_placements.iter().all(|id| !old_placements.contains(id)));
    cluster.check_rows_on_owners().unwrap();
    // Other colocation groups are untouched.
    for t in ["events", "devices", "sites"] {
        let groups: Vec<i32> = cluster.shards(t).iter().map(|s| s.group).collect();
        assert_eq!(groups, vec![1, 2, 1, 2, 1, 2, 1, 2], "{t}");
    }

    // A move that keeps its source: rows on both until finished.
    let key = cluster.tenant_key("events", 7);
    let loc = cluster.locate("events", std::slice::from_ref(&key))[0].clone();
    let m = cluster.move_shard_keep_source(loc.shardid, 3 - loc.group);
    assert_eq!(m.shardids, vec![loc.shardid]);
    assert_eq!(
        cluster.owner_port("events", &key),
        cluster.group_port(3 - loc.group)
    );
    let err = cluster.check_rows_on_owners().unwrap_err();
    assert!(err.contains("events"), "{err}");
    cluster.finish_move(&m);
    cluster.check_rows_on_owners().unwrap();

    // A row on the wrong worker is caught.
    let wrong = if cluster.owner_port("sites", "5") == p0 {
        1
    } else {
        0
    };
    block_on(async {
        let w = cluster.app_client(&cluster.workers[wrong]).await;
        w.execute("INSERT INTO sites VALUES (5, 'stray')", &[])
            .await
            .unwrap();
    });
    let err = cluster.check_rows_on_owners().unwrap_err();
    assert!(err.contains("sites"), "{err}");
    block_on(async {
        let w = cluster.app_client(&cluster.workers[wrong]).await;
        w.execute("DELETE FROM sites WHERE id = 5", &[])
            .await
            .unwrap();
    });
    cluster.check_rows_on_owners().unwrap();

    // Stop and start a worker: down means refused connections, up means data back.
    cluster.stop_worker(1);
    assert!(
        support::try_connect(&cluster.workers[1].url("app", "secret", "app"))
            .await
            .is_err()
    );
    assert!(cluster.check_rows_on_owners().is_err());
    cluster.start_worker(1);
    assert_eq!(cluster.workers[1].port(), p1);
    cluster.check_rows_on_owners().unwrap();
    let c = support::connect(&cluster.upstream_url()).await;
    let port: i32 = c
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port, i32::from(cluster.coordinator.port()));
}

#[test]
fn uneven_ranges_still_cover_int4() {
    let opts = CitusOptions {
        shard_count: 4,
        tenants: 100,
        uneven_ranges: true,
    };
    let cluster = CitusCluster::start(opts.clone());
    let ranges = cluster_ranges(&opts);
    assert_eq!(ranges.len(), 5);
    assert_ne!(ranges[0].1 - ranges[0].0, ranges[2].1 - ranges[2].0);
    for t in TABLES.iter().filter(|t| t.dist.is_some()) {
        let shards = cluster.shards(t.name);
        assert_eq!(shards.len(), 5, "{}", t.name);
        assert_covers_int4(t.name, &shards);
    }
    cluster.check_rows_on_owners().unwrap();
}
