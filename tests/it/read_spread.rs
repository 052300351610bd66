//! `multi_tenant_reads = any` (issue 13): reads that no tenant pins — cross-tenant and
//! no-key SELECTs, reference-table reads — spread over the coordinator and the workers,
//! and nothing that writes (or may) ever leaves the coordinator.
//!
//! Against the emulated Citus cluster of `tests/support/citus.rs` (coordinator + 2
//! workers). Its workers hold only the rows of their own tenants, so a cross-tenant read on
//! a worker gives a partial answer there (a real Citus worker with metadata would run the
//! distributed query): routing is checked by `inet_server_port()`, answers only where every
//! node has the same rows (the reference table `plans`).
use crate::support;

use std::collections::BTreeMap;
use std::process::Command;

use support::citus::{db_err, wait_for_shard_map, CitusCluster, CitusOptions, PLAN_ROWS};
use support::wire::{bind, execute, parse, query, sync, Raw};
use support::{free_port, pg_bin, try_connect, Pgtenant, TempDir};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, SimpleQueryMessage};

fn start_pgtenant(cluster: &CitusCluster, extra: &str) -> (Pgtenant, TempDir) {
    let dir = TempDir::new("read-spread-cfg");
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\npool_size = 8\nadmin_users = [\"app\"]\n{extra}\n",
        cluster.upstream_url()
    ));
    let p = Pgtenant::start(&["run", "--config", cfg.to_str().expect("utf-8 path")], &[]);
    wait_for_shard_map(&p);
    (p, dir)
}

fn small() -> CitusOptions {
    CitusOptions {
        tenants: 20,
        shard_count: 4,
        ..CitusOptions::default()
    }
}

async fn client(p: &Pgtenant) -> Client {
    try_connect(&p.url("app", "secret", "app"))
        .await
        .unwrap_or_else(|e| panic!("connect through pgtenant: {e}\n{}", p.logs()))
}

/// The first row of a simple query, every column as text.
async fn simple_row(c: &Client, sql: &str) -> Vec<String> {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", db_err(&e)));
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            return (0..r.len())
                .map(|i| r.get(i).unwrap_or("NULL").to_string())
                .collect();
        }
    }
    panic!("{sql}: no row")
}

/// The port that answered a simple query whose first column is `inet_server_port()`.
async fn simple_port(c: &Client, sql: &str) -> u16 {
    simple_row(c, sql).await[0].parse().expect("a port")
}

/// The same through the extended protocol.
async fn ext_port(c: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> u16 {
    let r = c
        .query_one(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", db_err(&e)));
    r.get::<_, i32>(0) as u16
}

/// A psql command against the admin console, unaligned, `|`-separated, with headers.
fn admin(p: &Pgtenant, sql: &str) -> Vec<BTreeMap<String, String>> {
    let out = Command::new(pg_bin("psql"))
        .args(["-X", "-A", "-F", "|", "-P", "footer=off", "-c", sql])
        .arg(p.url("app", "secret", "pgtenant"))
        .output()
        .expect("run psql");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = text.lines();
    let head: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split('|')
        .map(str::to_string)
        .collect();
    lines
        .map(|l| {
            head.iter()
                .cloned()
                .zip(l.split('|').map(str::to_string))
                .collect()
        })
        .collect()
}

/// SHOW ROUTES' row for `reason`: (to_coordinator, to_worker).
fn route(p: &Pgtenant, reason: &str) -> (u64, u64) {
    let rows = admin(p, "SHOW ROUTES");
    let r = rows
        .iter()
        .find(|r| r["reason"] == reason)
        .unwrap_or_else(|| panic!("no {reason} row in {rows:?}"));
    (
        r["to_coordinator"].parse().unwrap(),
        r["to_worker"].parse().unwrap(),
    )
}

/// How many of `ports` each node answered, by node name.
fn by_node(cluster: &CitusCluster, ports: &[u16]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for p in ports {
        *m.entry(cluster.node_name(*p)).or_default() += 1;
    }
    m
}

/// The reads this test spreads: `(simple-protocol text)`, each answering
/// `inet_server_port()` first. Reference reads, cross-tenant (IN, OR), no key.
fn reads(a: i64, b: i64) -> Vec<String> {
    vec![
        "select inet_server_port(), count(*) from plans".into(),
        format!("select inet_server_port(), count(*) from orders where account_id in ({a}, {b})"),
        format!(
            "select inet_server_port(), count(*) from orders where account_id = {a} or account_id = {b}"
        ),
        "select inet_server_port(), count(*) from orders where amount > 0".into(),
        "select inet_server_port(), count(*) from orders o join plans p on p.id = o.id".into(),
    ]
}

/// With the default (`coordinator`) every read stays on the coordinator; after `SET
/// multi_tenant_reads = any` in the admin console, reads go to every node, counted under
/// `read_spread`; the reference table answers the same everywhere.
#[tokio::test(flavor = "multi_thread")]
async fn reads_spread_over_every_node_only_when_asked() {
    let cluster = CitusCluster::start(small());
    let (p, _dir) = start_pgtenant(&cluster, "");
    let c = client(&p).await;
    let coord = cluster.coordinator.port();
    let keys = cluster.tenant_keys("orders");
    let (a, b): (i64, i64) = (keys[0].parse().unwrap(), keys[1].parse().unwrap());
    let all_nodes: Vec<String> = ["coordinator", "worker 0", "worker 1"]
        .iter()
        .map(|s| s.to_string())
        .collect();

    // Default: the coordinator, as before.
    for sql in reads(a, b) {
        for _ in 0..3 {
            assert_eq!(simple_port(&c, &sql).await, coord, "default: {sql}");
        }
    }
    assert_eq!(
        ext_port(
            &c,
            "select inet_server_port() from plans where id = $1",
            &[&1i32]
        )
        .await,
        coord
    );
    assert_eq!(route(&p, "read_spread"), (0, 0));
    assert!(
        route(&p, "multi_tenant").0 >= 6,
        "IN and OR are multi_tenant"
    );

    admin(&p, "SET multi_tenant_reads = any");
    let cfg = admin(&p, "SHOW CONFIG");
    let row = cfg
        .iter()
        .find(|r| r["key"] == "multi_tenant_reads")
        .unwrap();
    assert_eq!(
        (row["value"].as_str(), row["changeable"].as_str()),
        ("any", "yes")
    );

    // Simple protocol: each kind of read lands on every node.
    for sql in reads(a, b) {
        let mut ports = Vec::new();
        for _ in 0..9 {
            ports.push(simple_port(&c, &sql).await);
        }
        let seen = by_node(&cluster, &ports);
        assert_eq!(
            seen.keys().cloned().collect::<Vec<_>>(),
            all_nodes,
            "{sql}: {seen:?}"
        );
    }
    // The reference table answers the same on every node.
    let mut answers = BTreeMap::new();
    for _ in 0..9 {
        let r = simple_row(
            &c,
            "select inet_server_port(), count(*), min(name) from plans",
        )
        .await;
        answers.insert(
            cluster.node_name(r[0].parse().unwrap()),
            (r[1].clone(), r[2].clone()),
        );
    }
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert!(
        answers
            .values()
            .all(|v| *v == (PLAN_ROWS.to_string(), "plan 1".to_string())),
        "{answers:?}"
    );
    // Extended protocol (Bind, Execute, Sync): the same, parameters in IN included.
    let mut ports = Vec::new();
    for _ in 0..9 {
        ports.push(
            ext_port(
                &c,
                "select inet_server_port() from plans where id = $1",
                &[&1i32],
            )
            .await,
        );
        ports.push(
            ext_port(
                &c,
                "select inet_server_port(), count(*) from orders where account_id in ($1, $2)",
                &[&a, &b],
            )
            .await,
        );
    }
    let seen = by_node(&cluster, &ports);
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        all_nodes,
        "{seen:?}"
    );
    let (rc, rw) = route(&p, "read_spread");
    assert!(
        rc >= 10 && rw >= 20,
        "read_spread: {rc} to the coordinator, {rw} to workers"
    );

    // Pinned reads still go to their owner, and back to the default everything stays.
    let owner = cluster.owner_port("orders", &keys[0]);
    for _ in 0..3 {
        assert_eq!(
            simple_port(
                &c,
                &format!("select inet_server_port() from orders where account_id = {a}")
            )
            .await,
            owner
        );
    }
    admin(&p, "SET multi_tenant_reads = coordinator");
    for sql in reads(a, b) {
        for _ in 0..3 {
            assert_eq!(
                simple_port(&c, &sql).await,
                coord,
                "back to coordinator: {sql}"
            );
        }
    }
}

/// With `any`, nothing that writes or may write leaves the coordinator: DML, row locks,
/// sequences, advisory locks, data-modifying CTEs, functions not known to read only,
/// anything inside BEGIN … COMMIT (a read first included), and an extended-protocol
/// group holding a read and a write before its Sync.
#[tokio::test(flavor = "multi_thread")]
async fn writes_and_transactions_stay_on_the_coordinator() {
    let cluster = CitusCluster::start(small());
    // An application's function (on the coordinator only: it must never run elsewhere).
    let out = cluster.coordinator.psql(&[
        "-d",
        "app",
        "-c",
        "CREATE FUNCTION app_touch() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A loopback listener with trust auth, for the raw-protocol client (its server pools
    // use the credential the password clients brought).
    let trust = free_port();
    let (p, _dir) = start_pgtenant(
        &cluster,
        &format!(
            "multi_tenant_reads = \"any\"\n\
             [[listener]]\nlisten = \"127.0.0.1:{trust}\"\nauth_type = \"trust\"\n"
        ),
    );
    let c = client(&p).await;
    let coord = cluster.coordinator.port();
    let keys = cluster.tenant_keys("orders");
    let (a, b): (i64, i64) = (keys[0].parse().unwrap(), keys[1].parse().unwrap());

    // Sanity: reads do spread here.
    let mut ports = Vec::new();
    for _ in 0..6 {
        ports.push(simple_port(&c, "select inet_server_port() from plans limit 1").await);
    }
    assert_eq!(by_node(&cluster, &ports).len(), 3, "{ports:?}");

    let writes = [
        format!(
            "update orders set note = note where account_id in ({a}, {b}) returning inet_server_port()"
        ),
        "update orders set note = note where amount = 11 returning inet_server_port()".into(),
        format!(
            "delete from orders where account_id in ({a}, {b}) and amount < 0; \
             select inet_server_port()"
        ),
        "update plans set name = name where id = 1 returning inet_server_port()".into(),
        "select inet_server_port() from orders limit 1 for update".into(),
        "select inet_server_port() from plans limit 1 for share".into(),
        format!(
            "select inet_server_port() from orders o where account_id in ({a}, {b}) limit 1 for no key update"
        ),
        "select inet_server_port(), nextval('items_id_seq') from plans limit 1".into(),
        "select inet_server_port(), pg_advisory_xact_lock(1) from plans limit 1".into(),
        "select inet_server_port(), set_config('app.x', 'y', false) from plans limit 1".into(),
        "select inet_server_port(), txid_current() from plans limit 1".into(),
        "select inet_server_port(), app_touch() from plans limit 1".into(),
        "with d as (update plans set name = name where id = 1 returning id) \
         select inet_server_port() from d"
            .into(),
        "with d as (update orders set note = note where amount = 11 returning 1) \
         select inet_server_port() from d"
            .into(),
        "select inet_server_port() from plans limit 1; update plans set name = name where id = 2"
            .into(),
    ];
    for sql in &writes {
        for _ in 0..4 {
            assert_eq!(simple_port(&c, sql).await, coord, "{sql}");
        }
    }
    for _ in 0..4 {
        assert_eq!(
            ext_port(
                &c,
                "update orders set note = note where account_id in ($1, $2) and amount = 11 \
                 returning inet_server_port()",
                &[&a, &b]
            )
            .await,
            coord
        );
    }

    // Inside BEGIN … COMMIT: everything on the coordinator, a read first too.
    for _ in 0..4 {
        c.simple_query("BEGIN").await.unwrap();
        assert_eq!(
            simple_port(&c, "select inet_server_port() from plans limit 1").await,
            coord
        );
        assert_eq!(
            simple_port(
                &c,
                "update plans set name = name where id = 3 returning inet_server_port()"
            )
            .await,
            coord
        );
        c.simple_query("COMMIT").await.unwrap();
    }
    let mut c2 = client(&p).await;
    for _ in 0..4 {
        let tx = c2.transaction().await.unwrap();
        let r = tx
            .query_one(
                "select inet_server_port(), count(*) from orders where account_id in ($1, $2)",
                &[&a, &b],
            )
            .await
            .unwrap();
        assert_eq!(r.get::<_, i32>(0) as u16, coord);
        let r = tx
            .query_one(
                "update plans set name = name where id = $1 returning inet_server_port()",
                &[&4i32],
            )
            .await
            .unwrap();
        assert_eq!(r.get::<_, i32>(0) as u16, coord);
        tx.commit().await.unwrap();
    }

    // One extended-protocol group (one implicit transaction): a read, then a write,
    // then Sync. The read must not take the write to a worker.
    let mut raw = Raw::connect(trust);
    for round in 0..6 {
        let msgs = raw.exchange(&[
            parse("", "select inet_server_port() from plans limit 1", &[]),
            bind("", "", &[]),
            execute(""),
            parse(
                "",
                "update plans set name = name where id = 5 returning inet_server_port()",
                &[],
            ),
            bind("", "", &[]),
            execute(""),
            sync(),
        ]);
        let ports: Vec<String> = msgs
            .iter()
            .filter(|m| m.tag == b'D')
            .map(|m| m.value())
            .collect();
        assert_eq!(
            ports,
            vec![coord.to_string(), coord.to_string()],
            "round {round}: {msgs:?}"
        );
    }
    // A read alone in its group spreads.
    let mut ports = Vec::new();
    for _ in 0..6 {
        let msgs = raw.exchange(&[
            parse("", "select inet_server_port() from plans limit 1", &[]),
            bind("", "", &[]),
            execute(""),
            sync(),
        ]);
        let port = msgs.iter().find(|m| m.tag == b'D').expect("a row").value();
        ports.push(port.parse::<u16>().unwrap());
        // And a simple query holding a read and a write is one transaction: coordinator.
        let msgs = raw.exchange(&[query(
            "select inet_server_port() from plans limit 1; \
             update plans set name = name where id = 5 returning inet_server_port()",
        )]);
        let rows: Vec<String> = msgs
            .iter()
            .filter(|m| m.tag == b'D')
            .map(|m| m.value())
            .collect();
        assert_eq!(rows, vec![coord.to_string(), coord.to_string()], "{msgs:?}");
    }
    assert_eq!(by_node(&cluster, &ports).len(), 3, "{ports:?}");
    drop(c2);
}

/// A worker that is down gets no reads: the first read that picks it finds it
/// unreachable and is served by the coordinator (the client sees its answer), the worker
/// is marked down, and the spread goes on over the nodes that are up; once the worker
/// answers again (the background probe), it takes reads again.
#[tokio::test(flavor = "multi_thread")]
async fn a_down_worker_gets_no_reads() {
    let mut cluster = CitusCluster::start(small());
    let (p, _dir) = start_pgtenant(&cluster, "multi_tenant_reads = \"any\"");
    let c = client(&p).await;
    let down = cluster.workers[1].port();
    let sql = "select inet_server_port(), count(*) from plans";
    // Warm: every node has served (the worker pools exist).
    for _ in 0..6 {
        simple_row(&c, sql).await;
    }
    cluster.stop_worker(1);
    let mut ports = Vec::new();
    for _ in 0..30 {
        let r = simple_row(&c, sql).await;
        assert_eq!(r[1], PLAN_ROWS.to_string());
        ports.push(r[0].parse::<u16>().unwrap());
    }
    let seen = by_node(&cluster, &ports);
    assert!(!ports.contains(&down), "reads on the down worker: {seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen["worker 0"] >= 10 && seen["coordinator"] >= 10,
        "the nodes that are up share the reads: {seen:?}"
    );

    cluster.start_worker(1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let port: u16 = simple_row(&c, sql).await[0].parse().unwrap();
        if port == down {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker 1 never took reads again\n{}",
            p.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `reference_reads = local_worker` sends only reference reads that certainly read and are
/// a transaction of their own to a worker: a BEGIN block that starts with one stays on the
/// coordinator with its later writes, and a reference "read" that locks or calls an
/// application function stays too.
#[tokio::test(flavor = "multi_thread")]
async fn local_reference_reads_never_take_a_transaction_to_a_worker() {
    let cluster = CitusCluster::start(small());
    let (p, _dir) = start_pgtenant(&cluster, "reference_reads = \"local_worker\"");
    let coord = cluster.coordinator.port();
    let c = client(&p).await;
    // Alone: a worker's copy answers.
    let alone = simple_port(&c, "select inet_server_port() from plans limit 1").await;
    assert_ne!(
        alone, coord,
        "a lone reference read stays on the coordinator"
    );
    // Inside BEGIN: the whole transaction, its write included, on the coordinator.
    c.simple_query("begin").await.unwrap();
    let first = simple_port(&c, "select inet_server_port() from plans limit 1").await;
    let write = simple_port(
        &c,
        "update plans set name = name where id = 1 returning inet_server_port()",
    )
    .await;
    c.simple_query("commit").await.unwrap();
    assert_eq!((first, write), (coord, coord));
    // Not certainly a read: stays.
    let locked = simple_port(&c, "select inet_server_port() from plans limit 1 for share").await;
    assert_eq!(locked, coord);
}
