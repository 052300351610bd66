//! The admin console against a running pgtenant: PgBouncer's SHOW headers exactly, values
//! that move with traffic, access levels, RELOAD, SET, KILL_CLIENT, and pgtenant's own
//! SHOW NODES / SHARDS / TENANT against the emulated Citus cluster.
use crate::support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::citus::{CitusCluster, CitusOptions};
use support::{startup_v3, PgServer, Pgtenant, TempDir};

/// PgBouncer 1.25.2's headers (`psql -A -F '|'`), from
/// ../shared/reference/pgbouncer-1.25-admin-columns.txt.
const REFERENCE: &str = "\
POOLS database|user|cl_active|cl_waiting|cl_active_cancel_req|cl_waiting_cancel_req|sv_active|sv_active_cancel|sv_being_canceled|sv_idle|sv_used|sv_tested|sv_login|maxwait|maxwait_us|pool_mode|load_balance_hosts
STATS database|total_server_assignment_count|total_xact_count|total_query_count|total_received|total_sent|total_xact_time|total_query_time|total_wait_time|total_client_parse_count|total_server_parse_count|total_bind_count|avg_server_assignment_count|avg_xact_count|avg_query_count|avg_recv|avg_sent|avg_xact_time|avg_query_time|avg_wait_time|avg_client_parse_count|avg_server_parse_count|avg_bind_count
STATS_TOTALS database|server_assignment_count|xact_count|query_count|bytes_received|bytes_sent|xact_time|query_time|wait_time|client_parse_count|server_parse_count|bind_count
STATS_AVERAGES database|server_assignment_count|xact_count|query_count|bytes_received|bytes_sent|xact_time|query_time|wait_time|avg_client_parse_count|avg_server_parse_count|avg_bind_count
SERVERS type|user|database|replication|state|addr|port|local_addr|local_port|connect_time|request_time|wait|wait_us|close_needed|ptr|link|remote_pid|tls|application_name|prepared_statements|id
CLIENTS type|user|database|replication|state|addr|port|local_addr|local_port|connect_time|request_time|wait|wait_us|close_needed|ptr|link|remote_pid|tls|application_name|prepared_statements|id
DATABASES name|host|port|database|force_user|pool_size|min_pool_size|reserve_pool_size|server_lifetime|pool_mode|load_balance_hosts|max_connections|current_connections|max_client_connections|current_client_connections|paused|disabled
USERS name|pool_size|reserve_pool_size|pool_mode|max_user_connections|current_connections|max_user_client_connections|current_client_connections
LISTS list|items
CONFIG key|value|default|changeable
VERSION version
STATE key|value";

/// The reference headers; checked against the shared file when it is there.
fn reference() -> Vec<(String, String)> {
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/reference/pgbouncer-1.25-admin-columns.txt"
    );
    let parse = |text: &str| -> Vec<(String, String)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect()
    };
    let mine = parse(REFERENCE);
    if let Ok(text) = std::fs::read_to_string(shared) {
        assert_eq!(parse(&text), mine, "REFERENCE drifted from {shared}");
    }
    mine
}

/// psql against pgtenant's admin database: (success, stdout, stderr). Unaligned, `|`
/// separated, no footer: line 1 is the header.
fn psql(p: &Pgtenant, user: &str, password: &str, db: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new(support::pg_bin("psql"))
        .args(["-X", "-A", "-F", "|", "-P", "footer=off", "-h", "127.0.0.1"])
        .args(["-p", &p.port().to_string(), "-U", user, "-d", db, "-c", sql])
        .env("PGPASSWORD", password)
        .env_remove("PGSERVICE")
        .env_remove("PGSSLMODE")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

pub(crate) fn admin(p: &Pgtenant, sql: &str) -> String {
    let (ok, out, err) = psql(p, "app", "secret", "pgtenant", sql);
    assert!(ok, "{sql}: {err}\n--- logs ---\n{}", p.logs());
    out
}

/// Rows of a SHOW as maps column → value.
pub(crate) fn rows(out: &str) -> Vec<std::collections::HashMap<String, String>> {
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split('|').collect();
    lines
        .map(|l| {
            header
                .iter()
                .zip(l.split('|'))
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn start(pg: &PgServer, dir: &TempDir, extra: &str) -> Pgtenant {
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\npool_size = 4\nadmin_users = [\"app\"]\n{extra}\n[users.monitor]\npassword = \"monpw\"\n",
        pg.url("app", "secret", "app")
    ));
    Pgtenant::start(
        &[
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--stats-users",
            "monitor",
        ],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn pgbouncer_headers_and_counters() {
    let pg = PgServer::start();
    let dir = TempDir::new("admin");
    let p = start(&pg, &dir, "");

    // Every PgBouncer SHOW: the header is PgBouncer's, exactly.
    for (cmd, header) in reference() {
        for db in ["pgtenant", "pgbouncer"] {
            let (ok, out, err) = psql(&p, "app", "secret", db, &format!("SHOW {cmd};"));
            assert!(ok, "SHOW {cmd} on {db}: {err}");
            assert_eq!(out.lines().next().unwrap_or(""), header, "SHOW {cmd}");
        }
    }

    // Traffic moves the counters.
    let before = rows(&admin(&p, "show stats"));
    let q0: u64 = before
        .iter()
        .find(|r| r["database"] == "app")
        .map_or(0, |r| r["total_query_count"].parse().unwrap());
    let c = support::connect(&p.url("app", "secret", "app")).await;
    const N: u64 = 25;
    for i in 0..N {
        c.simple_query(&format!("select {i}")).await.unwrap();
    }
    let after = rows(&admin(&p, "SHOW STATS"));
    let app = after
        .iter()
        .find(|r| r["database"] == "app")
        .expect("app row");
    let q1: u64 = app["total_query_count"].parse().unwrap();
    assert!(q1 >= q0 + N, "query count {q0} → {q1}, expected +{N}");
    assert!(app["total_xact_count"].parse::<u64>().unwrap() >= N);
    assert!(app["total_received"].parse::<u64>().unwrap() > 0);
    assert!(app["total_sent"].parse::<u64>().unwrap() > 0);
    assert!(app["total_query_time"].parse::<u64>().unwrap() > 0);

    let totals = rows(&admin(&p, "show stats_totals"));
    let t = totals.iter().find(|r| r["database"] == "app").unwrap();
    assert!(t["query_count"].parse::<u64>().unwrap() >= N);

    // The last answer is written before its connection goes back (as PgBouncer does):
    // the connection may count as idle a moment after the client has it.
    let mut pools = rows(&admin(&p, "SHOW POOLS"));
    for _ in 0..200 {
        let idle = pools
            .iter()
            .find(|r| r["database"] == "app" && r["user"] == "app")
            .is_some_and(|r| r["sv_idle"] != "0");
        if idle {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        pools = rows(&admin(&p, "SHOW POOLS"));
    }
    let pool = pools
        .iter()
        .find(|r| r["database"] == "app" && r["user"] == "app")
        .unwrap_or_else(|| panic!("no app pool in {pools:?}"));
    assert_eq!(pool["cl_active"], "1", "{pool:?}");
    assert_eq!(pool["pool_mode"], "transaction");
    assert!(pool["sv_idle"].parse::<u32>().unwrap() >= 1, "{pool:?}");

    let servers = rows(&admin(&p, "show servers"));
    assert!(
        servers.iter().any(|r| r["type"] == "S"
            && r["database"] == "app"
            && r["port"] == pg.port().to_string()),
        "{servers:?}"
    );
    let clients = rows(&admin(&p, "show clients"));
    assert!(
        clients
            .iter()
            .any(|r| r["database"] == "app" && r["user"] == "app"),
        "{clients:?}"
    );
    assert!(
        clients.iter().any(|r| r["database"] == "pgtenant"),
        "{clients:?}"
    );

    let config = rows(&admin(&p, "show config"));
    let ps = config.iter().find(|r| r["key"] == "pool_size").unwrap();
    assert_eq!(
        (
            ps["value"].as_str(),
            ps["default"].as_str(),
            ps["changeable"].as_str()
        ),
        ("4", "20", "yes")
    );

    // SET changes a runtime setting; one that cannot change says so.
    admin(&p, "SET pool_size = 7");
    let config = rows(&admin(&p, "show config"));
    assert_eq!(
        config.iter().find(|r| r["key"] == "pool_size").unwrap()["value"],
        "7"
    );
    let (ok, _, err) = psql(&p, "app", "secret", "pgtenant", "set listen = '1.2.3.4:5'");
    assert!(!ok && err.contains("listen"), "{err}");

    let version = admin(&p, "show version");
    assert!(
        version.lines().nth(1).unwrap().starts_with("pgtenant "),
        "{version}"
    );
    let state = rows(&admin(&p, "show state"));
    assert_eq!(state[0]["key"], "active");

    // Unknown commands are refused as PgBouncer refuses them; the console stays usable.
    let (ok, _, err) = psql(&p, "app", "secret", "pgtenant", "frobnicate");
    assert!(!ok && err.contains("invalid command 'frobnicate'"), "{err}");
    // SUSPEND needs admin rights (what it does: `suspend_flushes_then_holds_until_resume`).
    let (ok, _, err) = psql(&p, "monitor", "monpw", "pgtenant", "suspend");
    assert!(!ok && err.contains("admin access needed"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_reload_and_kill_client() {
    let pg = PgServer::start();
    let dir = TempDir::new("admin");
    let p = start(&pg, &dir, "");

    // A stats user may SHOW, not RELOAD; an ordinary user may not come in at all.
    let (ok, out, err) = psql(&p, "monitor", "monpw", "pgtenant", "show pools");
    assert!(ok, "{err}");
    assert!(out.starts_with("database|user|"));
    let (ok, _, err) = psql(&p, "monitor", "monpw", "pgbouncer", "RELOAD");
    assert!(!ok && err.contains("admin access needed"), "{err}");
    // Nor SHOW QUIET TENANTS, which scans a table on the server and lists its values.
    let (ok, _, err) = psql(&p, "monitor", "monpw", "pgtenant", "show quiet tenants");
    assert!(!ok && err.contains("admin access needed"), "{err}");
    let (ok, _, _) = psql(&p, "monitor", "wrong", "pgtenant", "show pools");
    assert!(!ok, "a wrong password must not reach the console");

    // RELOAD re-reads the file: a new stats user can now log in.
    let cfg = format!(
        "upstream = \"{}\"\npool_size = 9\nadmin_users = [\"app\"]\n[users.monitor]\npassword = \"monpw\"\n[users.other]\npassword = \"otherpw\"\n",
        pg.url("app", "secret", "app")
    );
    dir.config_file(&cfg);
    let (ok, out, err) = psql(&p, "app", "secret", "pgtenant", "RELOAD");
    assert!(ok, "{err}");
    assert!(out.is_empty() || out.contains("RELOAD"), "{out}");
    let config = rows(&admin(&p, "show config"));
    assert_eq!(
        config.iter().find(|r| r["key"] == "pool_size").unwrap()["value"],
        "9"
    );

    // A broken file: RELOAD says why, the running settings stay.
    dir.config_file("pool_size = 0\n");
    let (ok, _, err) = psql(&p, "app", "secret", "pgtenant", "reload");
    assert!(!ok && err.contains("pool_size"), "{err}");
    dir.config_file(&cfg);

    // KILL_CLIENT disconnects that client.
    let c = support::connect(&p.url("app", "secret", "app")).await;
    c.simple_query("select 1").await.unwrap();
    let clients = rows(&admin(&p, "show clients"));
    let id = clients
        .iter()
        .find(|r| r["database"] == "app")
        .map(|r| r["id"].clone())
        .expect("the app client");
    admin(&p, &format!("KILL_CLIENT {id}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if c.simple_query("select 1").await.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "client {id} still connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let clients = rows(&admin(&p, "show clients"));
    assert!(!clients.iter().any(|r| r["id"] == id), "{clients:?}");
    let (ok, _, err) = psql(&p, "app", "secret", "pgtenant", "kill_client 999999");
    assert!(!ok && err.contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_from_the_console() {
    let pg = PgServer::start();
    let dir = TempDir::new("admin");
    let mut p = start(&pg, &dir, "");
    let _ = psql(&p, "app", "secret", "pgtenant", "SHUTDOWN");
    assert_exits_cleanly(&mut p);
}

#[tokio::test(flavor = "multi_thread")]
async fn citus_nodes_shards_tenants() {
    let cluster = CitusCluster::start(CitusOptions {
        tenants: 50,
        ..CitusOptions::default()
    });
    let p = cluster.start_pgtenant(&["--admin-users", "app"]);

    // Route traffic for a few tenants, so that worker pools exist.
    let c = support::connect(&p.url("app", "secret", "app")).await;
    let keys: Vec<String> = (1..=10).map(|i| cluster.tenant_key("orders", i)).collect();
    for k in &keys {
        c.simple_query(&format!(
            "select count(*) from orders where account_id = {k}"
        ))
        .await
        .unwrap();
    }

    let nodes = rows(&admin(&p, "SHOW NODES"));
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for (i, w) in cluster.workers.iter().enumerate() {
        let n = nodes
            .iter()
            .find(|r| r["port"] == w.port().to_string())
            .unwrap_or_else(|| panic!("worker {i} missing: {nodes:?}"));
        assert_eq!((n["role"].as_str(), n["state"].as_str()), ("worker", "up"));
    }
    let worker_queries: u64 = nodes
        .iter()
        .filter(|r| r["role"] == "worker")
        .map(|r| r["query_count"].parse::<u64>().unwrap())
        .sum();
    assert!(worker_queries >= keys.len() as u64, "{nodes:?}");

    // Worker pools show which node they are on.
    let pools = rows(&admin(&p, "show pools"));
    assert!(
        pools
            .iter()
            .any(|r| r["database"].starts_with("app@worker-")),
        "{pools:?}"
    );
    let stats = rows(&admin(&p, "show stats"));
    assert!(
        stats
            .iter()
            .any(|r| r["database"].starts_with("app@worker-")),
        "{stats:?}"
    );

    // SHOW SHARDS orders: the catalog's ranges and owners.
    let shards = rows(&admin(&p, "SHOW SHARDS orders"));
    let expected = cluster.shards("orders");
    assert_eq!(shards.len(), expected.len(), "{shards:?}");
    for e in &expected {
        let s = shards
            .iter()
            .find(|r| r["min_value"] == e.min.to_string())
            .unwrap_or_else(|| panic!("no shard with min {} in {shards:?}", e.min));
        assert_eq!(s["max_value"], e.max.to_string());
        assert_eq!(s["port"], cluster.group_port(e.group).to_string());
    }
    assert!(shards[0]["tables"].contains("orders"));

    // SHOW TENANT: the coordinator's own hash and placement.
    for k in &keys[..5] {
        let loc = &cluster.locate("orders", std::slice::from_ref(k))[0];
        let t = rows(&admin(&p, &format!("SHOW TENANT {k} orders")));
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0]["hash"], loc.hash.to_string(), "tenant {k}");
        assert_eq!(t[0]["port"], loc.port.to_string(), "tenant {k}");
    }
    let k = cluster.tenant_key("events", 3);
    let loc = &cluster.locate("events", std::slice::from_ref(&k))[0];
    let t = rows(&admin(&p, &format!("show tenant '{k}' events")));
    assert_eq!(t[0]["hash"], loc.hash.to_string());
    assert_eq!(t[0]["port"], loc.port.to_string());
    // Without a table: one row per colocation group whose type accepts the value.
    let all = rows(&admin(&p, &format!("show tenant {}", keys[0])));
    assert!(all.len() >= 2, "{all:?}");

    let routes = rows(&admin(&p, "show routes"));
    let tk = routes.iter().find(|r| r["reason"] == "tenant_key").unwrap();
    assert!(
        tk["to_worker"].parse::<u64>().unwrap() >= keys.len() as u64,
        "{routes:?}"
    );
    assert!(
        tk["statements_to_worker"].parse::<u64>().unwrap() >= keys.len() as u64,
        "{routes:?}"
    );
    let pc = rows(&admin(&p, "show plan_cache"));
    assert!(pc[0]["hits"].parse::<u64>().unwrap() >= 1, "{pc:?}");
}

/// The worker's counters in SHOW NODES for the node listening on `port`.
fn node_row(p: &Pgtenant, port: u16) -> std::collections::HashMap<String, String> {
    rows(&admin(p, "SHOW NODES"))
        .into_iter()
        .find(|r| r["port"] == port.to_string())
        .unwrap_or_else(|| panic!("no node on port {port}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn show_tenants_and_latency() {
    let cluster = CitusCluster::start(CitusOptions {
        tenants: 50,
        ..CitusOptions::default()
    });
    let p = cluster.start_pgtenant(&["--admin-users", "app"]);
    let t = rows(&admin(&p, "SHOW TENANTS"));
    assert!(t.is_empty(), "{t:?}");
    let header = admin(&p, "SHOW TENANTS");
    assert_eq!(
        header.lines().next().unwrap(),
        "tenant|colocation|node|statements|time_us|errors|throttled|waiting|error_bound|ranked_by"
    );

    let key = cluster.tenant_key("orders", 42);
    let port = cluster.owner_port("orders", &key);
    let before: u64 = node_row(&p, port)["query_count"].parse().unwrap();
    let c = support::connect(&p.url("app", "secret", "app")).await;
    for _ in 0..100 {
        c.simple_query(&format!(
            "select count(*) from orders where account_id = {key}"
        ))
        .await
        .unwrap();
    }
    // A little traffic for other tenants, and one error for 42.
    for i in 1..=5 {
        let k = cluster.tenant_key("orders", i);
        c.simple_query(&format!(
            "select count(*) from orders where account_id = {k}"
        ))
        .await
        .unwrap();
    }
    let after: u64 = node_row(&p, port)["query_count"].parse().unwrap();
    assert_eq!(
        after - before,
        105 - (1..=5)
            .filter(|&i| { cluster.owner_port("orders", &cluster.tenant_key("orders", i)) != port })
            .count() as u64,
        "node counter for tenant {key}'s node"
    );

    let bad = c
        .simple_query(&format!(
            "select 1 / (account_id - {key}) from orders where account_id = {key}"
        ))
        .await;
    assert!(bad.is_err());
    // Bind parameters name the tenant too.
    let n: i64 = c
        .query_one(
            "select count(*) from orders where account_id = $1",
            &[&key.parse::<i64>().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(n > 0);

    let t = rows(&admin(&p, "SHOW TENANTS"));
    let r = t
        .iter()
        .find(|r| r["tenant"] == key)
        .unwrap_or_else(|| panic!("tenant {key} not listed: {t:?}"));
    assert_eq!(r["ranked_by"], "statements");
    assert!(r["statements"].parse::<u64>().unwrap() >= 100, "{r:?}");
    assert!(r["errors"].parse::<u64>().unwrap() >= 1, "{r:?}");
    assert!(r["time_us"].parse::<u64>().unwrap() > 0, "{r:?}");
    assert_eq!(r["error_bound"], "0");
    // No tenant limit configured: nothing throttled, nothing waiting for one.
    assert_eq!((&*r["throttled"], &*r["waiting"]), ("0", "0"), "{r:?}");
    assert_eq!(r["node"], node_row(&p, port)["node"], "{r:?}");
    // Heaviest first.
    assert_eq!(t[0]["tenant"], key, "{t:?}");

    // SHOW LATENCY: process-wide rows, then per node; quantiles that moved.
    let out = admin(&p, "SHOW LATENCY");
    assert_eq!(
        out.lines().next().unwrap(),
        "metric|node|count|p50_us|p90_us|p99_us|p99_9_us|avg_us"
    );
    let lat = rows(&out);
    let owner_node = node_row(&p, port)["node"].clone();
    for m in ["query", "transaction", "wait"] {
        // The tenant's node has its own row, with at least its 100 statements.
        let r = lat
            .iter()
            .find(|r| r["metric"] == m && r["node"] == owner_node)
            .unwrap_or_else(|| panic!("no {m} row for {owner_node}: {lat:?}"));
        if m != "wait" {
            assert!(r["count"].parse::<u64>().unwrap() >= 100, "{r:?}");
        }
        let r = lat
            .iter()
            .find(|r| r["metric"] == m && r["node"] == "all")
            .unwrap();
        assert!(r["count"].parse::<u64>().unwrap() >= 100, "{r:?}");
        let q: Vec<u64> = ["p50_us", "p90_us", "p99_us", "p99_9_us"]
            .iter()
            .map(|c| r[*c].parse().unwrap_or(u64::MAX))
            .collect();
        assert!(q.windows(2).all(|w| w[0] <= w[1]), "{r:?}");
    }
}

/// An admin command run on a blocking thread (PAUSE may take a while to answer).
fn admin_async(p: &Pgtenant, sql: &str) -> tokio::task::JoinHandle<(bool, String, String)> {
    let port = p.port();
    let sql = sql.to_string();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(support::pg_bin("psql"))
            .args(["-X", "-A", "-F", "|", "-P", "footer=off", "-h", "127.0.0.1"])
            .args([
                "-p",
                &port.to_string(),
                "-U",
                "app",
                "-d",
                "pgtenant",
                "-c",
                &sql,
            ])
            .env("PGPASSWORD", "secret")
            .env_remove("PGSERVICE")
            .env_remove("PGSSLMODE")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run psql");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    })
}

fn state_paused(p: &Pgtenant) -> String {
    rows(&admin(p, "SHOW STATE"))
        .into_iter()
        .find(|r| r["key"] == "paused")
        .unwrap()["value"]
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_and_resume() {
    let pg = PgServer::start();
    let dir = TempDir::new("admin-pause");
    let p = start(&pg, &dir, "pool_mode = \"transaction\"");
    let url = p.url("app", "secret", "app");
    let busy = support::connect(&url).await;
    let waiter = std::sync::Arc::new(support::connect(&url).await);
    waiter.simple_query("select 1").await.unwrap();

    // RESUME with nothing paused is refused, as in PgBouncer.
    let (ok, _, err) = psql(&p, "app", "secret", "pgtenant", "RESUME");
    assert!(!ok && err.contains("not paused"), "{err}");
    // Stats users may not pause.
    let (ok, _, err) = psql(&p, "monitor", "monpw", "pgtenant", "PAUSE");
    assert!(!ok && err.contains("admin access needed"), "{err}");

    // PAUSE waits for the transaction that holds a server.
    busy.simple_query("begin; select 1").await.unwrap();
    let pause = admin_async(&p, "PAUSE");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!pause.is_finished(), "PAUSE returned with a server in use");
    assert_eq!(state_paused(&p), "yes");
    busy.simple_query("commit").await.unwrap();
    let (ok, _, err) = tokio::time::timeout(Duration::from_secs(10), pause)
        .await
        .expect("PAUSE returns once the server is released")
        .unwrap();
    assert!(ok, "{err}");

    // A new transaction waits until RESUME.
    let w = waiter.clone();
    let q = tokio::spawn(async move { w.simple_query("select 42").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!q.is_finished(), "a query ran while paused");
    admin(&p, "RESUME");
    assert_eq!(state_paused(&p), "no");
    tokio::time::timeout(Duration::from_secs(10), q)
        .await
        .expect("the query runs after RESUME")
        .unwrap()
        .unwrap();

    // PAUSE of one database holds its clients until RESUME of that database.
    admin(&p, "PAUSE app");
    let (ok, _, err) = psql(&p, "app", "secret", "pgtenant", "PAUSE app");
    assert!(!ok && err.contains("already paused"), "{err}");
    let w = waiter.clone();
    let q = tokio::spawn(async move { w.simple_query("select 7").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !q.is_finished(),
        "a query ran while its database was paused"
    );
    admin(&p, "RESUME app");
    tokio::time::timeout(Duration::from_secs(10), q)
        .await
        .expect("the query runs after RESUME app")
        .unwrap()
        .unwrap();
}

/// The state of every client of database `app`, by id.
fn app_client_states(p: &Pgtenant) -> Vec<String> {
    rows(&admin(p, "SHOW CLIENTS"))
        .into_iter()
        .filter(|r| r["database"] == "app")
        .map(|r| r["state"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn client_and_server_states_maxwait_and_wait_close() {
    let pg = PgServer::start();
    let dir = TempDir::new("admin-states");
    let p = start(&pg, &dir, "pool_mode = \"transaction\"");
    let url = p.url("app", "secret", "app");
    // pool_size = 4: four clients in a transaction hold every server.
    let mut busy = Vec::new();
    for _ in 0..4 {
        let c = support::connect(&url).await;
        c.simple_query("begin; select 1").await.unwrap();
        busy.push(c);
    }
    let waiter = std::sync::Arc::new(support::connect(&url).await);
    // Transaction mode, logged in, no server: idle.
    assert_eq!(
        app_client_states(&p),
        ["active", "active", "active", "active", "idle"]
    );
    let servers = rows(&admin(&p, "SHOW SERVERS"));
    assert_eq!(servers.len(), 4, "{servers:?}");
    assert!(
        servers.iter().all(|s| s["state"] == "active"),
        "{servers:?}"
    );

    // The fifth client waits for a server.
    let w = waiter.clone();
    let q = tokio::spawn(async move { w.simple_query("select 1").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!q.is_finished());
    assert_eq!(
        app_client_states(&p),
        ["active", "active", "active", "active", "waiting"]
    );
    let c = rows(&admin(&p, "SHOW CLIENTS"))
        .into_iter()
        .find(|r| r["state"] == "waiting")
        .unwrap();
    assert!(c["wait"].parse::<u64>().unwrap() >= 1, "{c:?}");
    let pool = rows(&admin(&p, "SHOW POOLS"))
        .into_iter()
        .find(|r| r["database"] == "app")
        .unwrap();
    assert_eq!(pool["cl_waiting"], "1", "{pool:?}");
    assert_eq!(pool["cl_active"], "4", "{pool:?}");
    assert_eq!(pool["sv_active"], "4", "{pool:?}");
    let maxwait = pool["maxwait"].parse::<u64>().unwrap();
    let maxwait_us = pool["maxwait_us"].parse::<u64>().unwrap();
    assert!(maxwait >= 1 && maxwait_us < 1_000_000, "{pool:?}");

    // RECONNECT marks the lent servers; WAIT_CLOSE returns once they have closed.
    admin(&p, "RECONNECT app");
    let servers = rows(&admin(&p, "SHOW SERVERS"));
    assert!(
        servers.iter().all(|s| s["close_needed"] == "1"),
        "{servers:?}"
    );
    let wait_close = admin_async(&p, "WAIT_CLOSE app");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!wait_close.is_finished(), "WAIT_CLOSE returned early");
    for c in &busy {
        c.simple_query("commit").await.unwrap();
    }
    let (ok, _, err) = tokio::time::timeout(Duration::from_secs(10), wait_close)
        .await
        .expect("WAIT_CLOSE returns once the marked servers closed")
        .unwrap();
    assert!(ok, "{err}");
    tokio::time::timeout(Duration::from_secs(10), q)
        .await
        .expect("the waiting client gets a server")
        .unwrap()
        .unwrap();
    // Fresh servers, none marked; nothing waits any more.
    let servers = rows(&admin(&p, "SHOW SERVERS"));
    assert!(
        servers.iter().all(|s| s["close_needed"] == "0"),
        "{servers:?}"
    );
    // The waiting client has its answer a moment before it counts as idle (the answer is
    // written before its connection goes back).
    let mut states = app_client_states(&p);
    for _ in 0..200 {
        if states.iter().all(|s| s == "idle") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        states = app_client_states(&p);
    }
    assert!(states.iter().all(|s| s == "idle"), "{states:?}");
    let pool = rows(&admin(&p, "SHOW POOLS"))
        .into_iter()
        .find(|r| r["database"] == "app")
        .unwrap();
    assert_eq!(
        (pool["cl_waiting"].as_str(), pool["maxwait"].as_str()),
        ("0", "0"),
        "{pool:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_averages_over_the_period_and_used_servers() {
    let pg = PgServer::start();
    let dir = TempDir::new("admin-period");
    let p = start(&pg, &dir, "stats_period = 1\nserver_check_delay = 0");
    let c = support::connect(&p.url("app", "secret", "app")).await;
    for _ in 0..20 {
        c.simple_query("select 1").await.unwrap();
    }
    let avg = |p: &Pgtenant| -> std::collections::HashMap<String, String> {
        rows(&admin(p, "SHOW STATS_AVERAGES"))
            .into_iter()
            .find(|r| r["database"] == "app")
            .unwrap()
    };
    // After the period ends, the averages are that period's: 20+ queries in ≤ 2 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = avg(&p);
        if a["query_count"].parse::<u64>().unwrap() >= 10 {
            assert!(a["query_time"].parse::<u64>().unwrap() > 0, "{a:?}");
            break;
        }
        assert!(Instant::now() < deadline, "averages never moved: {a:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A quiet period later they are back to zero, while the totals stay.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let a = avg(&p);
    assert_eq!(
        (a["query_count"].as_str(), a["query_time"].as_str()),
        ("0", "0"),
        "{a:?}"
    );
    let s = rows(&admin(&p, "SHOW STATS"))
        .into_iter()
        .find(|r| r["database"] == "app")
        .unwrap();
    assert!(
        s["total_query_count"].parse::<u64>().unwrap() >= 20,
        "{s:?}"
    );
    assert_eq!(s["avg_query_count"], "0", "{s:?}");

    // server_check_delay = 0: an idle server is checked before reuse: `used`.
    let servers = rows(&admin(&p, "SHOW SERVERS"));
    assert!(
        !servers.is_empty() && servers.iter().all(|s| s["state"] == "used"),
        "{servers:?}"
    );
    let pool = rows(&admin(&p, "SHOW POOLS"))
        .into_iter()
        .find(|r| r["database"] == "app")
        .unwrap();
    assert_eq!(
        (pool["sv_used"].as_str(), pool["sv_idle"].as_str()),
        ("1", "0"),
        "{pool:?}"
    );
    // Transaction mode (the default), between transactions: idle.
    assert_eq!(app_client_states(&p), ["idle"]);
}

/// A wire-protocol client that reads only when told to (trust login), so that pgtenant
/// can be left with an answer it cannot send.
struct RawClient {
    s: tokio::net::TcpStream,
    /// Everything received since the greeting.
    buf: Vec<u8>,
}

impl RawClient {
    /// Connect with a small receive buffer and log in as `user` on `db`.
    async fn login(port: u16, user: &str, db: &str) -> RawClient {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        // A fixed small buffer: no autotuning hides a large answer in the kernel.
        sock.set_recv_buffer_size(64 * 1024).unwrap();
        let s = sock
            .connect(([127, 0, 0, 1], port).into())
            .await
            .expect("connect to pgtenant");
        let mut c = RawClient { s, buf: Vec::new() };
        c.write(&startup_v3(user, db)).await;
        c.read_until_ready(Duration::from_secs(10)).await;
        assert!(
            !c.tags().contains(&b'E'),
            "login failed: {:?}",
            String::from_utf8_lossy(&c.buf)
        );
        c.buf.clear();
        c
    }

    async fn write(&mut self, b: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.s.write_all(b).await.expect("write to pgtenant");
    }

    async fn query(&mut self, sql: &str) {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        let mut f = vec![b'Q'];
        f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        f.extend(body);
        self.write(&f).await;
    }

    /// Read once (up to `wait`); false when nothing came.
    async fn read_some(&mut self, wait: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = vec![0u8; 256 * 1024];
        match tokio::time::timeout(wait, self.s.read(&mut chunk)).await {
            Ok(Ok(0)) => panic!("pgtenant closed the connection"),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Ok(Err(e)) => panic!("read from pgtenant: {e}"),
            Err(_) => false,
        }
    }

    /// Read until nothing more arrives for `quiet`.
    async fn drain(&mut self, quiet: Duration) {
        while self.read_some(quiet).await {}
    }

    /// Read until the last complete message is a ReadyForQuery.
    async fn read_until_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.tags().last() != Some(&b'Z') {
            assert!(
                Instant::now() < deadline,
                "no ReadyForQuery within {limit:?}"
            );
            self.read_some(Duration::from_millis(100)).await;
        }
    }

    /// The tags of the complete messages received.
    fn tags(&self) -> Vec<u8> {
        let mut tags = Vec::new();
        let mut i = 0;
        while i + 5 <= self.buf.len() {
            let len = i32::from_be_bytes(self.buf[i + 1..i + 5].try_into().unwrap()) as usize;
            if i + 1 + len > self.buf.len() {
                break;
            }
            tags.push(self.buf[i]);
            i += 1 + len;
        }
        tags
    }
}

fn show_state(p: &Pgtenant) -> std::collections::HashMap<String, String> {
    rows(&admin(p, "SHOW STATE"))
        .into_iter()
        .map(|r| (r["key"].clone(), r["value"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn suspend_flushes_then_holds_until_resume() {
    let pg = PgServer::start();
    let dir = TempDir::new("admin-suspend");
    let p = start(&pg, &dir, "auth_type = \"trust\"");
    let url = p.url("app", "secret", "app");
    let idle = std::sync::Arc::new(support::connect(&url).await);
    idle.simple_query("select 1").await.unwrap();

    // A client in the middle of a large answer it does not read: pgtenant holds a full
    // buffer for it (and stops reading the server, as backpressure).
    const ROWS: usize = 16_000;
    let mut raw = RawClient::login(p.port(), "app", "app").await;
    raw.query(&format!(
        "select repeat('x', 1000) from generate_series(1, {ROWS})"
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;

    // SUSPEND waits for that buffer to be flushed.
    let suspend = admin_async(&p, "SUSPEND");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !suspend.is_finished(),
        "SUSPEND answered while a client had unflushed output"
    );
    // The console works meanwhile, from another session.
    let st = show_state(&p);
    assert_eq!(
        (st["suspended"].as_str(), st["active"].as_str()),
        ("yes", "no"),
        "{st:?}"
    );
    assert!(
        rows(&admin(&p, "SHOW CLIENTS"))
            .iter()
            .any(|r| r["database"] == "app"),
        "SHOW CLIENTS while suspended"
    );

    // The client reads what pgtenant had queued; then nothing more comes (pgtenant reads
    // no more of the answer from the server) and SUSPEND answers.
    raw.drain(Duration::from_millis(700)).await;
    let (ok, _, err) = tokio::time::timeout(Duration::from_secs(10), suspend)
        .await
        .expect("SUSPEND answers once the buffer is flushed")
        .unwrap();
    assert!(ok, "{err}");
    let got = raw.tags();
    let rows_before = got.iter().filter(|t| **t == b'D').count();
    assert!(
        !got.contains(&b'Z') && rows_before < ROWS,
        "the answer went on while suspended: {rows_before} rows"
    );
    raw.drain(Duration::from_millis(500)).await;
    assert_eq!(
        raw.tags().iter().filter(|t| **t == b'D').count(),
        rows_before,
        "rows arrived while suspended"
    );

    // A logged-in client's next query waits; so does a new client.
    let i = idle.clone();
    let next = tokio::spawn(async move { i.simple_query("select 42").await.map(|_| ()) });
    let u = url.clone();
    let newcomer = tokio::spawn(async move {
        let c = support::connect(&u).await;
        c.simple_query("select 7").await.map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!next.is_finished(), "a query was answered while suspended");
    assert!(
        !newcomer.is_finished(),
        "a new client was served while suspended"
    );

    // Nothing else may start meanwhile.
    for cmd in ["SUSPEND", "PAUSE", "PAUSE app"] {
        let (ok, _, err) = psql(&p, "app", "secret", "pgtenant", cmd);
        assert!(
            !ok && err.contains("already suspended/paused"),
            "{cmd}: {err}"
        );
    }

    // RESUME: everyone goes on where they stopped.
    admin(&p, "RESUME");
    let st = show_state(&p);
    assert_eq!(
        (st["suspended"].as_str(), st["active"].as_str()),
        ("no", "yes"),
        "{st:?}"
    );
    raw.read_until_ready(Duration::from_secs(30)).await;
    assert_eq!(
        raw.tags().iter().filter(|t| **t == b'D').count(),
        ROWS,
        "the whole answer after RESUME"
    );
    for (what, t) in [
        ("the idle client's query", next),
        ("the new client", newcomer),
    ] {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .unwrap_or_else(|_| panic!("{what} waits after RESUME"))
            .unwrap()
            .unwrap();
    }
    raw.query("select 1").await;
    raw.read_until_ready(Duration::from_secs(10)).await;

    let (ok, _, err) = psql(&p, "app", "secret", "pgtenant", "RESUME");
    assert!(!ok && err.contains("not paused/suspended"), "{err}");
    // SUSPEND needs every database running (PgBouncer's rule).
    admin(&p, "PAUSE app");
    let (ok, _, err) = psql(&p, "app", "secret", "pgtenant", "SUSPEND");
    assert!(!ok && err.contains("paused databases"), "{err}");
    admin(&p, "RESUME app");
    // With every buffer empty SUSPEND answers at once.
    let (ok, _, err) = tokio::time::timeout(Duration::from_secs(10), admin_async(&p, "SUSPEND"))
        .await
        .expect("SUSPEND with nothing to flush")
        .unwrap();
    assert!(ok, "{err}");
    admin(&p, "RESUME");
    idle.simple_query("select 1").await.unwrap();
}

/// The id SHOW CLIENTS gives the one client of database `app`.
fn app_client_id(p: &Pgtenant) -> String {
    rows(&admin(p, "SHOW CLIENTS"))
        .into_iter()
        .find(|r| r["database"] == "app")
        .map(|r| r["id"].clone())
        .expect("the app client")
}

/// A client KILLed while idle in a transaction finishes the transaction before it goes;
/// SUSPEND meanwhile must still reach its session (it used to wait for it forever).
#[tokio::test(flavor = "multi_thread")]
async fn suspend_with_a_killed_client_idle_in_a_transaction() {
    let pg = PgServer::start();
    let dir = TempDir::new("admin-suspend-kill");
    let p = start(&pg, &dir, "");
    let c = support::connect(&p.url("app", "secret", "app")).await;
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let id = app_client_id(&p);
    admin(&p, &format!("KILL_CLIENT {id}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app_client_id(&p),
        id,
        "the killed client is still in its transaction"
    );

    let (ok, _, err) = tokio::time::timeout(Duration::from_secs(10), admin_async(&p, "SUSPEND"))
        .await
        .unwrap_or_else(|_| panic!("SUSPEND waits for the killed client\n{}", p.logs()))
        .unwrap();
    assert!(ok, "{err}");
    admin(&p, "RESUME");

    // The transaction ends, then the client is disconnected.
    c.batch_execute("COMMIT").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.simple_query("select 1").await.is_ok() {
        assert!(Instant::now() < deadline, "client {id} still connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client that logs in during SUSPEND is held before its session starts, listed in
/// SHOW CLIENTS, and KILL_CLIENT ends it there (it is not served, and not left waiting
/// for RESUME).
#[tokio::test(flavor = "multi_thread")]
async fn a_client_held_by_suspend_is_listed_and_can_be_killed() {
    let pg = PgServer::start();
    let dir = TempDir::new("admin-suspend-held-kill");
    let p = start(&pg, &dir, "auth_type = \"trust\"");
    let url = p.url("app", "secret", "app");
    let (ok, _, err) = tokio::time::timeout(Duration::from_secs(10), admin_async(&p, "SUSPEND"))
        .await
        .expect("SUSPEND with nothing to flush")
        .unwrap();
    assert!(ok, "{err}");
    let newcomer = tokio::spawn(async move {
        let c = support::connect(&url).await;
        c.simple_query("select 7").await.map(|_| ())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let held = rows(&admin(&p, "SHOW CLIENTS"))
            .into_iter()
            .find(|r| r["database"] == "app")
            .map(|r| r["id"].clone());
        if let Some(id) = held {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "the held client is not in SHOW CLIENTS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !newcomer.is_finished(),
        "a new client was served while suspended"
    );
    admin(&p, &format!("KILL_CLIENT {id}"));
    let served = tokio::time::timeout(Duration::from_secs(10), newcomer)
        .await
        .unwrap_or_else(|_| panic!("the killed client still waits for RESUME\n{}", p.logs()))
        .unwrap();
    assert!(
        served.is_err(),
        "a killed client was served while suspended"
    );
    // Its entry goes when its session has ended (just after the client saw the close).
    let deadline = Instant::now() + Duration::from_secs(5);
    while rows(&admin(&p, "SHOW CLIENTS"))
        .iter()
        .any(|r| r["database"] == "app")
    {
        assert!(
            Instant::now() < deadline,
            "the killed client is still listed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin(&p, "RESUME");
}

/// SHUTDOWN while suspended: a client inside a transaction gets to finish it, and pgtenant
/// exits then, not at shutdown_timeout.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lifts_suspend() {
    let pg = PgServer::start();
    let dir = TempDir::new("admin-suspend-shutdown");
    let mut p = start(&pg, &dir, "shutdown_timeout = 120");
    let c = support::connect(&p.url("app", "secret", "app")).await;
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let (ok, _, err) = tokio::time::timeout(Duration::from_secs(10), admin_async(&p, "SUSPEND"))
        .await
        .expect("SUSPEND with nothing to flush")
        .unwrap();
    assert!(ok, "{err}");

    let _ = psql(&p, "app", "secret", "pgtenant", "SHUTDOWN");
    tokio::time::timeout(Duration::from_secs(10), c.batch_execute("COMMIT"))
        .await
        .unwrap_or_else(|_| panic!("the transaction is still suspended\n{}", p.logs()))
        .unwrap();
    assert_exits_cleanly(&mut p);
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_and_servers_link_prepared_and_request_time() {
    let pg = PgServer::start();
    let dir = TempDir::new("admin-columns");
    let p = start(&pg, &dir, "pool_mode = \"transaction\"");
    let url = p.url("app", "secret", "app");
    let by_app = |out: &str, app: &str| {
        rows(out)
            .into_iter()
            .find(|r| r["application_name"] == app)
            .unwrap_or_else(|| panic!("no client {app} in {out}"))
    };

    // Two named statements in a client's view; prepared on the server it used.
    let preparer = support::connect(&format!("{url}?application_name=preparer")).await;
    let s1 = preparer.prepare("select $1::int4 + 1").await.unwrap();
    let s2 = preparer.prepare("select $1::text || 'x'").await.unwrap();
    let c = by_app(&admin(&p, "SHOW CLIENTS"), "preparer");
    assert_eq!(c["prepared_statements"], "2", "{c:?}");
    assert_eq!((c["link"].as_str(), c["remote_pid"].as_str()), ("", "0"));
    let servers = rows(&admin(&p, "SHOW SERVERS"));
    let on_servers: u32 = servers
        .iter()
        .map(|s| s["prepared_statements"].parse::<u32>().unwrap())
        .sum();
    assert_eq!(on_servers, 2, "{servers:?}");
    let n: i32 = preparer.query_one(&s1, &[&41i32]).await.unwrap().get(0);
    assert_eq!(n, 42);
    let t: String = preparer.query_one(&s2, &[&"a"]).await.unwrap().get(0);
    assert_eq!(t, "ax");

    // A client inside a transaction holds a server: link and ptr point at each other.
    let holder = support::connect(&format!("{url}?application_name=holder")).await;
    holder.simple_query("begin").await.unwrap();
    let pid: i32 = holder
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let c = by_app(&admin(&p, "SHOW CLIENTS"), "holder");
    let servers = rows(&admin(&p, "SHOW SERVERS"));
    let s = servers
        .iter()
        .find(|s| s["ptr"] == c["link"])
        .unwrap_or_else(|| panic!("client link {:?} is no server ptr: {servers:?}", c["link"]));
    assert_eq!(s["link"], c["ptr"], "{s:?} {c:?}");
    assert_eq!(s["state"], "active");
    assert_eq!(s["remote_pid"], pid.to_string());
    assert_eq!((s["wait"].as_str(), s["wait_us"].as_str()), ("0", "0"));
    // Nobody else is linked.
    assert!(
        servers
            .iter()
            .filter(|x| x["ptr"] != s["ptr"])
            .all(|x| x["link"].is_empty() && x["state"] != "active"),
        "{servers:?}"
    );
    let p_row = by_app(&admin(&p, "SHOW CLIENTS"), "preparer");
    assert_eq!(p_row["link"], "", "{p_row:?}");

    // request_time follows the client's requests (to the second), and the server's use.
    let before = by_app(&admin(&p, "SHOW CLIENTS"), "holder");
    assert!(
        before["request_time"] >= before["connect_time"],
        "{before:?}"
    );
    let s_before = s["request_time"].clone();
    tokio::time::sleep(Duration::from_millis(2300)).await;
    holder.simple_query("select 1").await.unwrap();
    holder.simple_query("commit").await.unwrap();
    let after = by_app(&admin(&p, "SHOW CLIENTS"), "holder");
    assert!(
        after["request_time"] > before["request_time"],
        "{before:?} → {after:?}"
    );
    assert_eq!(after["link"], "", "{after:?}");
    let servers = rows(&admin(&p, "SHOW SERVERS"));
    let s_after = servers.iter().find(|x| x["ptr"] == s["ptr"]).unwrap();
    assert_eq!(
        (s_after["state"].as_str(), s_after["link"].as_str()),
        ("idle", "")
    );
    assert!(
        s_after["request_time"] > s_before,
        "{s_before} → {:?}",
        s_after["request_time"]
    );
}

/// pgtenant exits, successfully, within 10 s (after SHUTDOWN).
fn assert_exits_cleanly(p: &mut Pgtenant) {
    let status = p.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "pgtenant did not exit: {}",
        p.logs()
    );
}

/// A monitoring poller's SHOWs do not fill the log (debug), changes are logged at info.
#[tokio::test(flavor = "multi_thread")]
async fn show_commands_are_logged_at_debug_changes_at_info() {
    let pg = PgServer::start();
    let dir = TempDir::new("admin");
    let p = start(&pg, &dir, "");
    for _ in 0..5 {
        admin(&p, "SHOW POOLS");
        admin(&p, "SHOW STATS");
    }
    admin(&p, "SET query_wait_timeout = 99");
    admin(&p, "RELOAD");
    let logs = p.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("admin command"))
        .collect();
    assert!(
        lines.iter().all(|l| !l.contains("SHOW")),
        "SHOW logged at info:\n{logs}"
    );
    assert!(
        lines.iter().any(|l| l.contains("SET query_wait_timeout"))
            && lines.iter().any(|l| l.contains("RELOAD")),
        "changes not logged:\n{logs}"
    );
}
