//! `[databases]` and `[users]` (issue 14, point 2): each entry its own upstream with its
//! own pools, aliases, a forced role, per-entry limits and startup settings,
//! `connect_query`, the `*` fallback, `3D000 no such database`, max_db_connections and
//! max_user_connections, SHOW DATABASES, and RELOAD adding, changing and removing entries
//! without dropping the clients of the others. Two real PostgreSQL servers, tokio-postgres
//! clients.
use crate::support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::{PgServer, Pgtenant, TempDir};
use tokio_postgres::SimpleQueryMessage;

/// Rows of an admin console command, each as column → value.
async fn show(admin: &tokio_postgres::Client, cmd: &str) -> Vec<HashMap<String, String>> {
    let mut out = Vec::new();
    for m in admin.simple_query(cmd).await.unwrap() {
        if let SimpleQueryMessage::Row(r) = m {
            let mut row = HashMap::new();
            for (i, c) in r.columns().iter().enumerate() {
                row.insert(c.name().to_string(), r.get(i).unwrap_or("").to_string());
            }
            out.push(row);
        }
    }
    out
}

/// The body of an HTTP GET on the loopback.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

async fn one(c: &tokio_postgres::Client, sql: &str) -> String {
    for m in c.simple_query(sql).await.unwrap() {
        if let SimpleQueryMessage::Row(r) = m {
            return r.get(0).unwrap_or("").to_string();
        }
    }
    panic!("no row from {sql}");
}

/// Servers A (the upstream) and B, with the roles and databases the entries name.
fn servers() -> (PgServer, PgServer) {
    let a = PgServer::start();
    let b = PgServer::start();
    for s in [&a, &b] {
        s.psql_ok("CREATE ROLE owner LOGIN PASSWORD 'ownerpw'");
        s.psql_ok("CREATE ROLE reporter LOGIN PASSWORD 'rpw'");
    }
    for (s, db) in [
        (&a, "app_a"),
        (&a, "other_a"),
        (&b, "app_b"),
        (&b, "reports_b"),
    ] {
        s.psql_ok(&format!("CREATE DATABASE {db} OWNER app"));
    }
    (a, b)
}

fn config(a: &PgServer, databases: &str) -> String {
    format!(
        "upstream = \"postgres://app:secret@127.0.0.1:{a}/app_a\"\n\
         pool_size = 4\n\
         query_wait_timeout = 2\n\
         admin_users = [\"app\"]\n\
         [users.reporter]\n\
         password = \"rpw\"\n\
         max_user_connections = 1\n\
         {databases}",
        a = a.port(),
    )
}

fn first_entries(b: &PgServer) -> String {
    format!(
        "[databases.app]\n\
         dbname = \"app_a\"\n\
         [databases.billing]\n\
         host = \"127.0.0.1\"\n\
         port = {b}\n\
         dbname = \"app_b\"\n\
         pool_size = 2\n\
         pool_mode = \"session\"\n\
         timezone = \"Asia/Tokyo\"\n\
         application_name = \"billing-pool\"\n\
         connect_query = \"SET lock_timeout = '7s'\"\n\
         [databases.forced]\n\
         dbname = \"app_a\"\n\
         user = \"owner\"\n\
         password = \"ownerpw\"\n\
         [databases.limited]\n\
         dbname = \"other_a\"\n\
         max_db_connections = 1\n\
         [databases.reports1]\n\
         host = \"127.0.0.1\"\n\
         port = {b}\n\
         dbname = \"reports_b\"\n\
         [databases.reports2]\n\
         host = \"127.0.0.1\"\n\
         port = {b}\n\
         dbname = \"app_b\"\n",
        b = b.port()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn each_entry_is_its_own_upstream() {
    let (a, b) = servers();
    let dir = TempDir::new("databases");
    let file = dir.config_file(&config(&a, &first_entries(&b)));
    let http = support::free_port();
    let http_listen = format!("127.0.0.1:{http}");
    let p = Pgtenant::start(
        &[
            "run",
            "--config",
            file.to_str().unwrap(),
            "--http-listen",
            &http_listen,
        ],
        &[],
    );

    // An alias on the upstream.
    let app = support::connect(&p.url("app", "secret", "app")).await;
    assert_eq!(one(&app, "SELECT current_database()").await, "app_a");
    assert_eq!(
        one(&app, "SELECT inet_server_port()").await,
        a.port().to_string()
    );

    // Another server, session mode, the entry's startup settings and connect_query.
    let billing = support::connect(&p.url("app", "secret", "billing")).await;
    assert_eq!(one(&billing, "SELECT current_database()").await, "app_b");
    assert_eq!(
        one(&billing, "SELECT inet_server_port()").await,
        b.port().to_string()
    );
    assert_eq!(one(&billing, "SHOW timezone").await, "Asia/Tokyo");
    assert_eq!(one(&billing, "SHOW lock_timeout").await, "7s");
    assert_eq!(
        one(
            &billing,
            "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        )
        .await,
        "billing-pool"
    );
    // Session mode: the same backend for the whole session.
    let pid = one(&billing, "SELECT pg_backend_pid()").await;
    assert_eq!(one(&billing, "SELECT pg_backend_pid()").await, pid);

    // A forced role: the client logs in as app, the server sees owner.
    let forced = support::connect(&p.url("app", "secret", "forced")).await;
    assert_eq!(one(&forced, "SELECT current_user").await, "owner");
    assert_eq!(one(&forced, "SELECT current_database()").await, "app_a");

    // No entry and no `*`: PgBouncer's error, after authentication.
    let Err(e) = support::try_connect(&p.url("app", "secret", "nosuch")).await else {
        panic!("an unknown database is refused");
    };
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "3D000");
    assert_eq!(db.message(), "no such database: nosuch");
    let Err(e) = support::try_connect(&p.url("app", "wrong", "nosuch")).await else {
        panic!("a wrong password is refused");
    };
    assert_eq!(e.as_db_error().unwrap().code().code(), "28P01");

    // max_db_connections = 1: a second transaction waits for the first, then times out.
    let l1 = support::connect(&p.url("app", "secret", "limited")).await;
    let l2 = support::connect(&p.url("app", "secret", "limited")).await;
    l1.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let t = Instant::now();
    let e = l2.simple_query("SELECT 2").await.unwrap_err();
    assert!(
        format!("{e:?}").contains("query_wait_timeout"),
        "expected query_wait_timeout, got {e:?}"
    );
    assert!(t.elapsed() >= Duration::from_millis(1900));
    l1.batch_execute("COMMIT").await.unwrap();
    // The connection went back: the next transaction of the other client runs.
    let l3 = support::connect(&p.url("app", "secret", "limited")).await;
    assert_eq!(one(&l3, "SELECT current_database()").await, "other_a");
    assert!(a.count_backends("app", "other_a").await <= 1);

    // max_user_connections = 1 for reporter, across two entries on server B.
    let r1 = support::connect(&p.url("reporter", "rpw", "reports1")).await;
    let r2 = support::connect(&p.url("reporter", "rpw", "reports2")).await;
    r1.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let e = r2.simple_query("SELECT 2").await.unwrap_err();
    assert!(format!("{e:?}").contains("query_wait_timeout"), "{e:?}");
    r1.batch_execute("COMMIT").await.unwrap();
    // Once r1's connection is idle, r2 may close it and open its own.
    assert_eq!(one(&r2, "SELECT current_database()").await, "app_b");
    // r1's closed backend leaves pg_stat_activity a moment after its Terminate (its exit
    // is asynchronous): wait for it rather than race it.
    let closed = b
        .wait_for_backends("reporter", "reports_b", 0, Duration::from_secs(5))
        .await;
    assert!(
        closed + b.count_backends("reporter", "app_b").await <= 1,
        "max_user_connections = 1"
    );

    // SHOW DATABASES: one row per entry, with its own server, database and limits.
    let admin = support::connect(&p.url("app", "secret", "pgtenant")).await;
    let dbs = show(&admin, "SHOW DATABASES").await;
    let row = |name: &str| {
        dbs.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no row {name} in {dbs:?}"))
            .clone()
    };
    let billing_row = row("billing");
    assert_eq!(billing_row["port"], b.port().to_string());
    assert_eq!(billing_row["database"], "app_b");
    assert_eq!(billing_row["pool_size"], "2");
    assert_eq!(billing_row["pool_mode"], "session");
    assert_eq!(row("forced")["force_user"], "owner");
    assert_eq!(row("limited")["max_connections"], "1");
    assert_eq!(row("app")["pool_mode"], "");
    assert!(!dbs.iter().any(|r| r["name"] == "nosuch"));
    // SHOW POOLS: the entry's pool mode; the forced entry's pool is owner's.
    let pools = show(&admin, "SHOW POOLS").await;
    assert!(pools
        .iter()
        .any(|r| r["database"] == "billing" && r["pool_mode"] == "session"));
    assert!(pools
        .iter()
        .any(|r| r["database"] == "forced" && r["user"] == "owner" && r["cl_active"] == "1"));
    // /metrics: a series per entry.
    let metrics = http_get(http, "/metrics");
    for want in [
        "pgtenant_database_server_connections{database=\"billing\"} 1",
        "pgtenant_database_waiting_clients{database=\"limited\"} 0",
    ] {
        assert!(metrics.contains(want), "missing {want} in:\n{metrics}");
    }
    let users = show(&admin, "SHOW USERS").await;
    assert!(users
        .iter()
        .any(|r| r["name"] == "reporter" && r["max_user_connections"] == "1"));

    // RELOAD: billing moves to server A, forced goes, `*` and a new entry arrive.
    let moved = format!(
        "[databases.app]\n\
         dbname = \"app_a\"\n\
         [databases.billing]\n\
         dbname = \"other_a\"\n\
         [databases.limited]\n\
         dbname = \"other_a\"\n\
         max_db_connections = 1\n\
         [databases.fresh]\n\
         dbname = \"other_a\"\n\
         [databases.\"*\"]\n\
         host = \"127.0.0.1\"\n\
         port = {b}\n",
        b = b.port()
    );
    std::fs::write(&file, config(&a, &moved)).unwrap();
    admin.simple_query("RELOAD").await.unwrap();

    // The unchanged entry's client carries on.
    assert_eq!(one(&app, "SELECT current_database()").await, "app_a");
    // The removed entry's client moves at its next transaction: `*` now catches its
    // name and passes it to server B, which has no such database.
    let e = forced.simple_query("SELECT 1").await.unwrap_err();
    let db = e.as_db_error().expect("an error from server B");
    assert_eq!(db.code().code(), "3D000");
    assert_eq!(db.message(), "database \"forced\" does not exist");
    // The changed entry: new clients reach its new place.
    let billing2 = support::connect(&p.url("app", "secret", "billing")).await;
    assert_eq!(one(&billing2, "SELECT current_database()").await, "other_a");
    assert_eq!(
        one(&billing2, "SELECT inet_server_port()").await,
        a.port().to_string()
    );
    // The new entry, and a name only `*` knows (passed through to server B).
    let fresh = support::connect(&p.url("app", "secret", "fresh")).await;
    assert_eq!(one(&fresh, "SELECT current_database()").await, "other_a");
    let any = support::connect(&p.url("app", "secret", "reports_b")).await;
    assert_eq!(one(&any, "SELECT current_database()").await, "reports_b");
    assert_eq!(
        one(&any, "SELECT inet_server_port()").await,
        b.port().to_string()
    );
    let dbs = show(&admin, "SHOW DATABASES").await;
    // `forced` is now a name `*` serves: server B, no forced role.
    let forced_row = dbs.iter().find(|r| r["name"] == "forced").unwrap();
    assert_eq!(forced_row["port"], b.port().to_string(), "{dbs:?}");
    assert_eq!(forced_row["force_user"], "");
    assert!(dbs.iter().any(|r| r["name"] == "fresh"));
    assert!(dbs.iter().any(|r| r["name"] == "reports_b"));
    drop(billing);
}

/// A transaction-mode client of an entry that RELOAD points elsewhere moves there at its
/// next transaction (its old pool's connections close), and keeps its session settings.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_entry_moves_its_clients_at_their_next_transaction() {
    let (a, b) = servers();
    let dir = TempDir::new("databases-move");
    let entry = |port: u16, db: &str| {
        format!("[databases.main]\nhost = \"127.0.0.1\"\nport = {port}\ndbname = \"{db}\"\n")
    };
    let gone = "[databases.gone]\ndbname = \"other_a\"\n";
    let file = dir.config_file(&config(&a, &(entry(a.port(), "app_a") + gone)));
    let p = Pgtenant::start(&["run", "--config", file.to_str().unwrap()], &[]);
    let c = support::connect(&p.url("app", "secret", "main")).await;
    c.batch_execute("SET application_name = 'mover'")
        .await
        .unwrap();
    assert_eq!(
        one(&c, "SELECT inet_server_port()").await,
        a.port().to_string()
    );
    let g = support::connect(&p.url("app", "secret", "gone")).await;
    assert_eq!(one(&g, "SELECT current_database()").await, "other_a");

    std::fs::write(&file, config(&a, &entry(b.port(), "app_b"))).unwrap();
    let admin = support::connect(&p.url("app", "secret", "pgtenant")).await;
    admin.simple_query("RELOAD").await.unwrap();

    assert_eq!(
        one(&c, "SELECT inet_server_port()").await,
        b.port().to_string()
    );
    assert_eq!(one(&c, "SELECT current_database()").await, "app_b");
    assert_eq!(one(&c, "SHOW application_name").await, "mover");
    // The removed entry's client is told at its next transaction, as a new login would be.
    let e = g.simple_query("SELECT 1").await.unwrap_err();
    let db = e.as_db_error().expect("a FATAL from pgtenant");
    assert_eq!(db.code().code(), "3D000");
    assert_eq!(db.message(), "no such database: gone");
    assert!(
        g.simple_query("SELECT 1").await.is_err(),
        "the session is over"
    );
    // The old place's idle connections were closed.
    assert_eq!(
        a.wait_for_backends("app", "app_a", 0, Duration::from_secs(5))
            .await,
        0
    );
}

/// PgBouncer's switchover (PAUSE, RELOAD, RESUME) moves waiting transactions to the new
/// place; an entry moved back onto the upstream and a dropped forced role move their
/// clients; connect_query survives another client's settings and a failing one is
/// ignored, as in PgBouncer.
#[tokio::test(flavor = "multi_thread")]
async fn switchover_forced_role_and_connect_query() {
    let (a, b) = servers();
    let dir = TempDir::new("databases-switch");
    let entries = |moved: &str, forced: &str| {
        format!(
            "[databases.moved]\n{moved}\
             [databases.forcer]\ndbname = \"app_a\"\n{forced}\
             [databases.cq]\ndbname = \"app_a\"\npool_size = 1\n\
             connect_query = \"SET search_path = cqschema, public\"\n\
             [databases.bad_cq]\ndbname = \"app_a\"\nconnect_query = \"SELECT no_such_function()\"\n"
        )
    };
    let away = format!(
        "host = \"127.0.0.1\"\nport = {}\ndbname = \"app_b\"\n",
        b.port()
    );
    let file = dir.config_file(&config(
        &a,
        &entries(&away, "user = \"owner\"\npassword = \"ownerpw\"\n"),
    ));
    let p = Pgtenant::start(&["run", "--config", file.to_str().unwrap()], &[]);
    let admin = support::connect(&p.url("app", "secret", "pgtenant")).await;

    let moved = support::connect(&p.url("app", "secret", "moved")).await;
    assert_eq!(
        one(&moved, "SELECT inet_server_port()").await,
        b.port().to_string()
    );
    let forcer = support::connect(&p.url("app", "secret", "forcer")).await;
    assert_eq!(one(&forcer, "SELECT current_user").await, "owner");

    // connect_query is the connection's starting point: another client's SET on the one
    // shared connection (pool_size 1) does not take it away from the next client.
    let cq1 = support::connect(&p.url("app", "secret", "cq")).await;
    let cq2 = support::connect(&p.url("app", "secret", "cq")).await;
    assert_eq!(one(&cq1, "SHOW search_path").await, "cqschema, public");
    cq2.batch_execute("SET search_path = elsewhere")
        .await
        .unwrap();
    assert_eq!(one(&cq2, "SHOW search_path").await, "elsewhere");
    assert_eq!(one(&cq1, "SHOW search_path").await, "cqschema, public");
    assert_eq!(one(&cq2, "SHOW search_path").await, "elsewhere");
    // A connect_query that fails is logged and the connection used anyway.
    let bad = support::connect(&p.url("app", "secret", "bad_cq")).await;
    assert_eq!(one(&bad, "SELECT 41 + 1").await, "42");
    p.wait_for_log("connect_query failed", Duration::from_secs(5));

    // PAUSE, RELOAD (moved goes back onto the upstream, forcer loses its forced role),
    // a transaction that waits in the pause, RESUME: it runs at the new place.
    admin.simple_query("PAUSE moved").await.unwrap();
    std::fs::write(&file, config(&a, &entries("dbname = \"app_a\"\n", ""))).unwrap();
    admin.simple_query("RELOAD").await.unwrap();
    let waiting = tokio::spawn(async move {
        let port = one(&moved, "SELECT inet_server_port()").await;
        let db = one(&moved, "SELECT current_database()").await;
        (port, db)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the transaction waits for RESUME");
    admin.simple_query("RESUME moved").await.unwrap();
    let (port, db) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered after RESUME")
        .unwrap();
    assert_eq!((port, db), (a.port().to_string(), "app_a".to_string()));
    // The forced role is gone: the client continues as itself.
    assert_eq!(one(&forcer, "SELECT current_user").await, "app");
    // The old place's connections closed.
    assert_eq!(
        b.wait_for_backends("app", "app_b", 0, Duration::from_secs(5))
            .await,
        0
    );
    assert_eq!(
        a.wait_for_backends("owner", "app_a", 0, Duration::from_secs(5))
            .await,
        0
    );
}
