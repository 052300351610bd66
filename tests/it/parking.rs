//! Idle clients park: after 0.5–1 s without a message a client's session gives up its
//! task and its socket waits in the parking lot (`pgtenant_clients_parked`); the next
//! message, a hang-up, KILL_CLIENT or a shutdown takes it up again, with its session as
//! it was (and it waits longer before it parks again: 1.5–2 s, then 3.5–4 s). What cannot travel with a parked session (a transaction, a LISTEN, a pinned
//! connection, session mode) keeps its task.
//!
//! They run on the suite's engine (`./scripts/test.sh` runs them on io_uring and on
//! epoll): an io_uring stream takes back its armed receive before it parks.

use crate::support;

use std::time::{Duration, Instant};

use support::{PgServer, Pgtenant, TempDir};

use crate::admin::{admin, rows};
use crate::pipelining::metric;

/// pgtenant in front of `pg`, /metrics on a port of its own,
/// `app` in admin_users, plus `extra` TOML lines.
fn start(pg: &PgServer, dir: &TempDir, extra: &str) -> (Pgtenant, u16) {
    let http = support::free_port();
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\nadmin_users = [\"app\"]\nunix_socket_dir = \"{}\"\n{extra}\n",
        pg.url("app", "secret", "app"),
        dir.path().display()
    ));
    let p = Pgtenant::start_with_metrics(&cfg, http);
    (p, http)
}

async fn parked(http: u16) -> u64 {
    metric(http, "pgtenant_clients_parked").await
}

/// Wait (15 s at most: a client that came back within 2 s of parking waits twice as
/// long before it parks again) until `n` clients of `p` are parked.
async fn wait_parked(p: &Pgtenant, http: u16, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = parked(http).await;
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{now} clients parked, waited for {n}\n--- logs ---\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client of pgtenant's unix socket in `dir`.
async fn unix_client(dir: &TempDir, port: u16) -> tokio_postgres::Client {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(dir.path())
        .port(port)
        .user("app")
        .password("secret")
        .dbname("app");
    let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c
}

/// Wait (5 s at most) until the client's connection is closed.
async fn wait_closed(c: &tokio_postgres::Client, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.is_closed() {
        assert!(Instant::now() < deadline, "{what}: still connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A parked client comes back with everything of its session: its settings, its
/// protocol-level and SQL-level prepared statements, its cancel key; it parks again once
/// idle, and leaves the lot when it hangs up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_parks_and_comes_back_as_it_was() {
    let pg = PgServer::start();
    let dir = TempDir::new("parking");
    let (p, http) = start(&pg, &dir, "");
    let c = support::connect(&p.url("app", "secret", "app")).await;
    c.batch_execute("SET work_mem = '3MB'").await.unwrap();
    c.batch_execute("PREPARE answer AS SELECT 42")
        .await
        .unwrap();
    let plus_one = c.prepare("SELECT $1::int + 1").await.unwrap();
    wait_parked(&p, http, 1).await;
    let clients = rows(&admin(&p, "show clients"));
    assert!(
        clients
            .iter()
            .any(|r| r["database"] == "app" && r["state"] == "idle"),
        "{clients:?}"
    );

    // Taken up by its next message, with its session as it was.
    assert_eq!(support::scalar(&c, "SHOW work_mem").await, "3MB");
    assert_eq!(parked(http).await, 0);
    let r = c.query_one(&plus_one, &[&41i32]).await.unwrap();
    assert_eq!(r.get::<_, i32>(0), 42);
    assert_eq!(support::scalar(&c, "EXECUTE answer").await, "42");

    // Its cancel key still reaches its own statement after it parked again.
    wait_parked(&p, http, 1).await;
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let started = Instant::now();
    let err = c.simple_query("SELECT pg_sleep(20)").await.unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("57014"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    sleeper.await.unwrap().unwrap();
    assert_eq!(support::scalar(&c, "SELECT 1").await, "1");

    // A parked client that hangs up leaves the lot and pgtenant.
    wait_parked(&p, http, 1).await;
    drop(c);
    wait_parked(&p, http, 0).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(http, "pgtenant_client_connections").await != 0 {
        assert!(Instant::now() < deadline, "the client is still counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// KILL_CLIENT ends a parked client at once (it is not waiting for its next message),
/// and a shutdown ends the parked ones and does not wait for them until
/// shutdown_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_and_shutdown_reach_parked_clients() {
    let pg = PgServer::start();
    let dir = TempDir::new("parking");
    let (mut p, http) = start(&pg, &dir, "shutdown_timeout = 60");
    let a = support::connect(&format!(
        "{}?application_name=to_kill",
        p.url("app", "secret", "app")
    ))
    .await;
    let b = support::connect(&p.url("app", "secret", "app")).await;
    let u = unix_client(&dir, p.port()).await;
    wait_parked(&p, http, 3).await;

    let id = rows(&admin(&p, "show clients"))
        .into_iter()
        .find(|r| r["application_name"] == "to_kill")
        .map(|r| r["id"].clone())
        .expect("the client to kill");
    admin(&p, &format!("KILL_CLIENT {id}"));
    wait_closed(&a, "the killed client").await;
    wait_parked(&p, http, 2).await;
    assert_eq!(support::scalar(&b, "SELECT 2").await, "2");
    wait_parked(&p, http, 2).await;

    let started = Instant::now();
    p.signal(support::Signal::Term);
    let status = p
        .wait_exit(Duration::from_secs(20))
        .expect("pgtenant exits with its clients parked");
    assert!(status.success(), "{status:?}\n{}", p.logs());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
    wait_closed(&b, "a parked TCP client at shutdown").await;
    wait_closed(&u, "a parked unix-socket client at shutdown").await;
}

/// What cannot travel keeps its task: a client inside a transaction, one that listens,
/// one pinned by a temp table, and every session-mode client. A unix-socket client
/// parks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_travel_does_not_park() {
    let pg = PgServer::start();
    let dir = TempDir::new("parking");
    let (p, http) = start(&pg, &dir, "");
    let in_tx = support::connect(&p.url("app", "secret", "app")).await;
    in_tx.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let listening = support::connect(&p.url("app", "secret", "app")).await;
    listening.batch_execute("LISTEN parking").await.unwrap();
    let pinned = support::connect(&p.url("app", "secret", "app")).await;
    pinned
        .batch_execute("CREATE TEMP TABLE mine (x int)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(parked(http).await, 0);
    // They still work, and the transaction is still open.
    assert_eq!(support::scalar(&in_tx, "SELECT 1").await, "1");
    in_tx.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        support::scalar(&pinned, "SELECT count(*) FROM mine").await,
        "0"
    );
    drop((in_tx, listening, pinned));

    let u = unix_client(&dir, p.port()).await;
    u.batch_execute("SET work_mem = '5MB'").await.unwrap();
    wait_parked(&p, http, 1).await;
    assert_eq!(support::scalar(&u, "SHOW work_mem").await, "5MB");
    drop(u);

    let dir2 = TempDir::new("parking-session");
    let (s, http2) = start(&pg, &dir2, "pool_mode = \"session\"");
    let c = support::connect(&s.url("app", "secret", "app")).await;
    assert_eq!(support::scalar(&c, "SELECT 1").await, "1");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(parked(http2).await, 0);
    assert_eq!(support::scalar(&c, "SELECT 1").await, "1");
}
