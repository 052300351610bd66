//! PgBouncer pooling behaviour through pgtenant, against a real PostgreSQL: pool modes
//! (transaction, session, statement) and the pool limits and timers (pool_size,
//! query_wait_timeout, max_client_conn, reserve pool, max_db_connections,
//! server_idle_timeout, server_lifetime, min_pool_size, server_check_query,
//! idle_transaction_timeout).
//!
//! Server-side truth comes from `pg_stat_activity`, read as the superuser directly on
//! PostgreSQL (never through pgtenant).

use crate::support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{connect, try_connect, PgServer, Pgtenant, TempDir};
use tokio::sync::oneshot;
use tokio_postgres::{Client, Error};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Start pgtenant in front of `pg` (upstream user app) with extra CLI args.
fn start(pg: &PgServer, extra: &[&str]) -> Pgtenant {
    let up = pg.url("app", "secret", "app");
    let mut args = vec!["run", "--upstream", &up];
    args.extend_from_slice(extra);
    Pgtenant::start(&args, &[])
}

/// Start pgtenant with a TOML config file (for settings without a CLI flag) plus CLI args.
fn start_toml(pg: &PgServer, toml: &str, extra: &[&str]) -> (Pgtenant, TempDir) {
    let dir = TempDir::new("pooling-conf");
    let path = dir.config_file(toml);
    let path = path.to_str().expect("utf-8 path").to_string();
    let up = pg.url("app", "secret", "app");
    let mut args = vec!["run", "--upstream", &up, "--config", &path];
    args.extend_from_slice(extra);
    (Pgtenant::start(&args, &[]), dir)
}

/// A client through pgtenant as app/secret on db app.
async fn app_client(p: &Pgtenant) -> Client {
    connect(&p.url("app", "secret", "app")).await
}

/// Connect and keep the connection task's result: it is where an unsolicited FATAL (an
/// error the server sends between requests) shows up in tokio-postgres.
async fn connect_watched(url: &str) -> (Client, oneshot::Receiver<Result<(), Error>>) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(conn.await);
    });
    (client, rx)
}

/// The backend pid behind this client right now (simple protocol: no named prepared
/// statement that would have to live on whichever server runs the next transaction).
async fn backend_pid(c: &Client) -> i32 {
    support::scalar(c, "select pg_backend_pid()")
        .await
        .parse()
        .expect("pid")
}

/// Client backends on db `app` (any user when `user` is None), straight from PostgreSQL.
async fn count_on(admin: &Client, user: Option<&str>, state: Option<&str>) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = 'app' AND backend_type = 'client backend' AND application_name NOT LIKE 'pgtenant %' \
             AND pid <> pg_backend_pid() \
             AND ($1::text IS NULL OR usename = $1) AND ($2::text IS NULL OR state = $2)",
            &[&user, &state],
        )
        .await
        .expect("count pg_stat_activity")
        .get(0)
}

/// Pids of user app's client backends on db app.
async fn app_pids(admin: &Client) -> HashSet<i32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE usename = 'app' AND datname = 'app' \
             AND backend_type = 'client backend' AND application_name NOT LIKE 'pgtenant %' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("pids")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Poll `count_on` until it equals `want`; return the last value.
async fn wait_count(
    admin: &Client,
    user: Option<&str>,
    state: Option<&str>,
    want: i64,
    timeout: Duration,
) -> i64 {
    let deadline = Instant::now() + timeout;
    loop {
        let n = count_on(admin, user, state).await;
        if n == want || Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Samples the number of client backends on db app (of `user`, or all users) until
/// stopped; reports the largest number seen and how many samples were taken.
struct Sampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicI64>,
    samples: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    async fn start(pg: &PgServer, user: Option<&'static str>) -> Sampler {
        let admin = pg.admin_client().await;
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicI64::new(0));
        let samples = Arc::new(AtomicUsize::new(0));
        let (s, m, n) = (stop.clone(), max.clone(), samples.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Acquire) {
                let c = count_on(&admin, user, None).await;
                m.fetch_max(c, Ordering::AcqRel);
                n.fetch_add(1, Ordering::AcqRel);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Sampler {
            stop,
            max,
            samples,
            task,
        }
    }

    /// Stop sampling; (max seen, samples taken).
    async fn finish(self) -> (i64, usize) {
        self.stop.store(true, Ordering::Release);
        self.task.await.expect("sampler task");
        (
            self.max.load(Ordering::Acquire),
            self.samples.load(Ordering::Acquire),
        )
    }
}

/// Whether `fut` is still pending after `d` (used to show a client is blocked).
async fn still_pending<F: std::future::Future>(
    fut: &mut std::pin::Pin<Box<F>>,
    d: Duration,
) -> bool {
    tokio::time::timeout(d, fut.as_mut()).await.is_err()
}

// ---------------------------------------------------------------------------------------
// Transaction mode
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transaction_mode_200_clients_share_5_server_connections() {
    let pg = PgServer::start();
    {
        let c = pg.client("app", "secret", "app").await;
        c.batch_execute(
            "CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL);
             INSERT INTO counters SELECT g, 0 FROM generate_series(0, 9) g;",
        )
        .await
        .unwrap();
    }
    // 200 SCRAM logins at once: the client side (tokio-postgres, a debug build) derives
    // each key with 4096 PBKDF2 rounds on the test's own two threads, which on a busy
    // 2-core machine can take longer than the default 15 s client_login_timeout. This
    // test is about sharing server connections, not login speed.
    let p = start(
        &pg,
        &[
            "--pool-size",
            "5",
            "--max-client-conn",
            "250",
            "--client-login-timeout",
            "60",
        ],
    );
    let sampler = Sampler::start(&pg, Some("app")).await;

    const CLIENTS: usize = 200;
    const ROUNDS: usize = 3;
    let url = p.url("app", "secret", "app");
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = try_connect(&url)
                .await
                .map_err(|e| format!("client {i}: connect: {e}"))?;
            for _ in 0..ROUNDS {
                c.simple_query("select pg_sleep(0.01)")
                    .await
                    .map_err(|e| format!("client {i}: pg_sleep: {e}"))?;
                let tx = c
                    .transaction()
                    .await
                    .map_err(|e| format!("client {i}: BEGIN: {e}"))?;
                tx.execute(
                    "UPDATE counters SET n = n + 1 WHERE id = $1",
                    &[&((i % 10) as i32)],
                )
                .await
                .map_err(|e| format!("client {i}: UPDATE: {e}"))?;
                tx.commit()
                    .await
                    .map_err(|e| format!("client {i}: COMMIT: {e}"))?;
            }
            Ok::<(), String>(())
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a client did not finish within 60 s")
            .expect("client task panicked")
        {
            failures.push(e);
        }
    }
    let (max, samples) = sampler.finish().await;
    assert!(
        failures.is_empty(),
        "{} clients failed, e.g. {:?}\n--- pgtenant logs ---\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        p.logs()
    );
    assert!(samples > 10, "sampler only took {samples} samples");
    assert!(max >= 1, "sampler never saw a server connection");
    assert!(
        max <= 5,
        "pool_size 5 but PostgreSQL showed {max} client backends of app"
    );

    let c = pg.client("app", "secret", "app").await;
    let total: i64 = c
        .query_one("SELECT sum(n)::int8 FROM counters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        total,
        (CLIENTS * ROUNDS) as i64,
        "every UPDATE committed once"
    );
}

#[tokio::test]
async fn transaction_mode_pool_of_one_isolates_interleaved_transactions() {
    let pg = PgServer::start();
    {
        let c = pg.client("app", "secret", "app").await;
        c.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    }
    let p = start(&pg, &["--pool-size", "1"]);
    let a = app_client(&p).await;
    let b = app_client(&p).await;

    // A opens a transaction and leaves state in it: an uncommitted row and a SET LOCAL.
    a.batch_execute("BEGIN").await.unwrap();
    a.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    a.batch_execute("SET LOCAL application_name = 'a_in_tx'")
        .await
        .unwrap();
    let pid_a = backend_pid(&a).await;

    // B needs the only server connection: it waits for A's transaction to end.
    let b2 = &b;
    let mut b_query = Box::pin(async move {
        let pid = backend_pid(b2).await;
        let rows = support::scalar(b2, "SELECT count(*) FROM t").await;
        let app_name = support::scalar(b2, "SHOW application_name").await;
        let fresh = support::scalar(b2, "SELECT now() = statement_timestamp()").await;
        (pid, rows, app_name, fresh == "t")
    });
    assert!(
        still_pending(&mut b_query, Duration::from_millis(500)).await,
        "B ran while A held the only server connection inside a transaction"
    );
    // A still sees its own state.
    assert_eq!(support::scalar(&a, "SELECT count(*) FROM t").await, "1");
    assert_eq!(
        support::scalar(&a, "SHOW application_name").await,
        "a_in_tx"
    );
    a.batch_execute("COMMIT").await.unwrap();

    let (pid_b, rows, app_name, fresh_tx) = tokio::time::timeout(Duration::from_secs(10), b_query)
        .await
        .expect("B still blocked after A committed");
    assert_eq!(pid_b, pid_a, "pool size 1: the same server connection");
    assert_eq!(rows, "1", "B sees A's row once it is committed");
    assert_ne!(
        app_name, "a_in_tx",
        "SET LOCAL of A's transaction leaked to B"
    );
    assert!(fresh_tx, "B runs in its own transaction");

    // The other way round: B's uncommitted insert, then rollback; A waits meanwhile.
    b.batch_execute("BEGIN").await.unwrap();
    b.execute("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    let a2 = &a;
    let mut a_query = Box::pin(async move { support::scalar(a2, "SELECT count(*) FROM t").await });
    assert!(
        still_pending(&mut a_query, Duration::from_millis(500)).await,
        "A ran while B held the only server connection inside a transaction"
    );
    b.batch_execute("ROLLBACK").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), a_query)
        .await
        .expect("A still blocked after B rolled back");
    assert_eq!(n, "1", "B's rolled-back row is never seen");
    assert_eq!(
        count_on(&pg.admin_client().await, Some("app"), None).await,
        1
    );
}

// ---------------------------------------------------------------------------------------
// Session mode
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn session_mode_client_keeps_its_backend_and_session_state() {
    let pg = PgServer::start();
    let p = start(&pg, &["--pool-mode", "session", "--pool-size", "2"]);
    let a = app_client(&p).await;
    let b = app_client(&p).await;

    a.batch_execute("SET statement_timeout = '123s'; CREATE TEMP TABLE tmp_a (x int)")
        .await
        .unwrap();
    let pid_a = backend_pid(&a).await;
    let pid_b = backend_pid(&b).await;
    assert_ne!(pid_a, pid_b, "two session clients, two server connections");
    for i in 0..5 {
        // Transactions of both clients interleave; each keeps its backend.
        let tx = format!("BEGIN; INSERT INTO tmp_a VALUES ({i}); COMMIT");
        a.batch_execute(&tx).await.unwrap();
        b.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
        assert_eq!(backend_pid(&a).await, pid_a);
        assert_eq!(backend_pid(&b).await, pid_b);
    }
    assert_eq!(support::scalar(&a, "SHOW statement_timeout").await, "123s");
    assert_eq!(support::scalar(&a, "SELECT count(*) FROM tmp_a").await, "5");
    // B has its own session: A's SET and temp table are not there.
    assert_eq!(support::scalar(&b, "SHOW statement_timeout").await, "0");
    assert_eq!(
        support::scalar(&b, "SELECT to_regclass('pg_temp.tmp_a') IS NULL").await,
        "t"
    );
}

#[tokio::test]
async fn session_mode_reset_query_wipes_state_for_the_next_client() {
    let pg = PgServer::start();
    let p = start(&pg, &["--pool-mode", "session", "--pool-size", "1"]);
    let pid_first = {
        let c = app_client(&p).await;
        c.batch_execute(
            "SET statement_timeout = '77s'; CREATE TEMP TABLE tmp_prev (x int); \
             INSERT INTO tmp_prev VALUES (1); PREPARE prev_stmt AS SELECT 1",
        )
        .await
        .unwrap();
        assert_eq!(support::scalar(&c, "SHOW statement_timeout").await, "77s");
        backend_pid(&c).await
    }; // dropped: the client leaves, its server goes back after DISCARD ALL

    // Pool size 1: the next client can only get the same server connection (it waits
    // for the first client's release if that is still in progress).
    let c = app_client(&p).await;
    let pid = tokio::time::timeout(Duration::from_secs(10), backend_pid(&c))
        .await
        .expect("next client never got the server connection");
    assert_eq!(pid, pid_first, "pool size 1 reuses the server connection");
    assert_eq!(support::scalar(&c, "SHOW statement_timeout").await, "0");
    assert_eq!(
        support::scalar(&c, "SELECT to_regclass('pg_temp.tmp_prev') IS NULL").await,
        "t",
        "the previous client's temp table survived"
    );
    assert_eq!(
        support::scalar(&c, "SELECT count(*) FROM pg_prepared_statements").await,
        "0",
        "the previous client's prepared statement survived"
    );
}

// ---------------------------------------------------------------------------------------
// Statement mode
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn statement_mode_refuses_transaction_blocks() {
    let pg = PgServer::start();
    let p = start(&pg, &["--pool-mode", "statement", "--pool-size", "1"]);
    let admin = pg.admin_client().await;

    let c = app_client(&p).await;
    assert_eq!(support::scalar(&c, "SELECT 40 + 2").await, "42");
    let n: i32 = c
        .query_one("SELECT $1::int4 * 2", &[&21i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 42, "extended protocol works in statement mode");
    let pid_before = backend_pid(&c).await;

    let err = c
        .batch_execute("BEGIN")
        .await
        .expect_err("BEGIN must fail in statement pooling mode");
    let msg = err
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| err.to_string());
    assert!(
        msg.contains("statement pooling mode"),
        "error should name statement pooling mode, got: {msg} ({err:?})"
    );

    // The server connection did not go back in a transaction: nothing sits idle in a
    // transaction, and the next client gets a fresh implicit transaction.
    assert_eq!(
        wait_count(
            &admin,
            Some("app"),
            Some("idle in transaction"),
            0,
            Duration::from_secs(10)
        )
        .await,
        0,
        "a server connection was left inside the refused transaction"
    );
    let next = app_client(&p).await;
    assert_eq!(
        support::scalar(&next, "SELECT now() = statement_timestamp()").await,
        "t"
    );
    let pid_after = backend_pid(&next).await;
    assert_ne!(
        pid_after, pid_before,
        "the server connection that ran BEGIN must not be reused"
    );
    assert_eq!(support::scalar(&next, "SELECT 1").await, "1");
}

// ---------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn query_wait_timeout_errors_instead_of_hanging() {
    let pg = PgServer::start();
    let (p, _dir) = start_toml(&pg, "query_wait_timeout = 1\n", &["--pool-size", "1"]);
    let a = app_client(&p).await;
    let b = app_client(&p).await;

    a.batch_execute("BEGIN").await.unwrap();
    a.simple_query("SELECT 1").await.unwrap();

    let t0 = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), b.simple_query("SELECT 1"))
        .await
        .expect("B hung instead of getting query_wait_timeout");
    let waited = t0.elapsed();
    let err = r.expect_err("B must get an error while the only server is busy");
    assert!(
        waited >= Duration::from_millis(900) && waited <= Duration::from_secs(3),
        "error after {waited:?}, expected about 1 s"
    );
    let db = err.as_db_error().expect("a server-style ErrorResponse");
    assert!(
        db.message().contains("query_wait_timeout"),
        "message: {}",
        db.message()
    );

    a.batch_execute("COMMIT").await.unwrap();
    // New clients work, and B's connection is still usable.
    let c = app_client(&p).await;
    assert_eq!(support::scalar(&c, "SELECT 7").await, "7");
    assert_eq!(support::scalar(&b, "SELECT 8").await, "8");
}

#[tokio::test]
async fn max_client_conn_refuses_the_fourth_client() {
    let pg = PgServer::start();
    let p = start(&pg, &["--max-client-conn", "3"]);
    let url = p.url("app", "secret", "app");
    let c1 = connect(&url).await;
    let c2 = connect(&url).await;
    let c3 = connect(&url).await;
    let err = match try_connect(&url).await {
        Ok(_) => panic!("a 4th client was accepted with max_client_conn 3"),
        Err(e) => e,
    };
    let code = err.as_db_error().map(|d| d.code().code().to_string());
    assert_eq!(code.as_deref(), Some("53300"), "error: {err}");
    for c in [&c1, &c2, &c3] {
        assert_eq!(support::scalar(c, "SELECT 1").await, "1");
    }
    // A slot frees up when a client leaves (the close is noticed asynchronously).
    drop(c1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let c4 = loop {
        match try_connect(&url).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no slot after a client left: {e}"),
        }
    };
    assert_eq!(support::scalar(&c4, "SELECT 1").await, "1");
}

#[tokio::test]
async fn reserve_pool_serves_a_waiting_client_after_reserve_pool_timeout() {
    let pg = PgServer::start();
    let (p, _dir) = start_toml(
        &pg,
        "reserve_pool_size = 1\nreserve_pool_timeout = 0.5\n",
        &["--pool-size", "1"],
    );
    let admin = pg.admin_client().await;
    let a = app_client(&p).await;
    let b = app_client(&p).await;
    a.batch_execute("BEGIN").await.unwrap();
    let pid_a = backend_pid(&a).await;

    // B opens a transaction too, so it keeps its server connection while we look.
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), b.batch_execute("BEGIN"))
        .await
        .expect("B was never served from the reserve pool")
        .unwrap();
    let waited = t0.elapsed();
    let pid_b = backend_pid(&b).await;
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(4),
        "B served after {waited:?}, expected about reserve_pool_timeout (0.5 s)"
    );
    assert_ne!(pid_b, pid_a, "B got a second server connection");
    assert_eq!(count_on(&admin, Some("app"), None).await, 2);
    assert_eq!(
        count_on(&admin, Some("app"), Some("idle in transaction")).await,
        2,
        "both clients are inside a transaction on their own server connection"
    );
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
    assert_eq!(support::scalar(&b, "SELECT 1").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_db_connections_caps_all_users_of_a_database() {
    let pg = PgServer::start();
    let toml = "pool_size = 3\nmax_db_connections = 3\n\
                [users.app]\npassword = \"secret\"\n\
                [users.md5user]\npassword = \"md5pass\"\n";
    let (p, _dir) = start_toml(&pg, toml, &[]);
    let admin = pg.admin_client().await;

    // app fills the database's 3 connections, then leaves them idle in its pool.
    {
        let holders = [
            app_client(&p).await,
            app_client(&p).await,
            app_client(&p).await,
        ];
        for h in &holders {
            h.batch_execute("BEGIN; SELECT 1").await.unwrap();
        }
        assert_eq!(count_on(&admin, Some("app"), None).await, 3);
        for h in &holders {
            h.batch_execute("COMMIT").await.unwrap();
        }
    }
    // md5user must still be served: an idle connection of another user's pool gives way
    // (PgBouncer closes an idle one to stay within max_db_connections).
    let m = tokio::time::timeout(
        Duration::from_secs(10),
        connect(&p.url("md5user", "md5pass", "app")),
    )
    .await
    .expect("md5user could not log in while app's idle connections filled max_db_connections");
    let who = tokio::time::timeout(
        Duration::from_secs(10),
        support::scalar(&m, "SELECT current_user"),
    )
    .await
    .expect("md5user starved by app's idle connections");
    assert_eq!(who, "md5user");
    assert!(count_on(&admin, None, None).await <= 3);
    drop(m);

    let sampler = Sampler::start(&pg, None).await;

    let mut tasks = Vec::new();
    for i in 0..24 {
        let url = if i % 2 == 0 {
            p.url("app", "secret", "app")
        } else {
            p.url("md5user", "md5pass", "app")
        };
        tasks.push(tokio::spawn(async move {
            let c = try_connect(&url)
                .await
                .map_err(|e| format!("client {i}: connect: {e}"))?;
            for _ in 0..4 {
                c.batch_execute("BEGIN; SELECT pg_sleep(0.02); COMMIT")
                    .await
                    .map_err(|e| format!("client {i}: {e}"))?;
            }
            Ok::<String, String>(support::scalar(&c, "SELECT current_user").await)
        }));
    }
    let mut users = HashSet::new();
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(40), t)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "a client did not finish within 40 s (max_db_connections starves a pool?)\n\
                     --- pgtenant logs ---\n{}",
                    p.logs()
                )
            })
            .expect("client task panicked");
        users.insert(r.unwrap_or_else(|e| panic!("{e}\n--- pgtenant logs ---\n{}", p.logs())));
    }
    let (max, samples) = sampler.finish().await;
    assert_eq!(
        users,
        HashSet::from(["app".to_string(), "md5user".to_string()])
    );
    assert!(samples > 10, "sampler only took {samples} samples");
    assert!(
        (1..=3).contains(&max),
        "max_db_connections 3, but PostgreSQL showed {max} client backends on db app"
    );
}

// ---------------------------------------------------------------------------------------
// Server connection lifecycle
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn server_idle_timeout_closes_idle_server_connections() {
    let pg = PgServer::start();
    let (p, _dir) = start_toml(&pg, "server_idle_timeout = 1\n", &["--pool-size", "3"]);
    let admin = pg.admin_client().await;
    let c = app_client(&p).await;
    let pid = backend_pid(&c).await;
    assert!(app_pids(&admin).await.contains(&pid));
    let t0 = Instant::now();
    let n = wait_count(&admin, Some("app"), None, 0, Duration::from_secs(10)).await;
    assert_eq!(
        n, 0,
        "idle server connection not closed after server_idle_timeout"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "closed after {:?}, before server_idle_timeout",
        t0.elapsed()
    );
    // The client is still connected and gets a new server connection.
    let pid2 = backend_pid(&c).await;
    assert_ne!(pid2, pid);
}

#[tokio::test]
async fn server_lifetime_replaces_server_connections() {
    let pg = PgServer::start();
    let (p, _dir) = start_toml(&pg, "server_lifetime = 1\n", &["--pool-size", "1"]);
    let c = app_client(&p).await;
    let t0 = Instant::now();
    let first = backend_pid(&c).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let changed_after = loop {
        let pid = backend_pid(&c).await;
        if pid != first {
            break t0.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "backend pid never changed with server_lifetime 1 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        changed_after >= Duration::from_millis(800),
        "connection replaced after {changed_after:?}, before server_lifetime"
    );
    let admin = pg.admin_client().await;
    assert!(
        !app_pids(&admin).await.contains(&first),
        "the expired backend is still there"
    );
}

#[tokio::test]
async fn min_pool_size_opens_connections_after_first_use_and_keeps_them() {
    let pg = PgServer::start();
    // server_idle_timeout is short: as in PgBouncer, connections up to min_pool_size
    // are kept anyway.
    let (p, _dir) = start_toml(
        &pg,
        "min_pool_size = 2\nserver_idle_timeout = 1\n",
        &["--pool-size", "5"],
    );
    let admin = pg.admin_client().await;
    // Before first use no pool exists.
    assert_eq!(count_on(&admin, Some("app"), None).await, 0);
    let c = app_client(&p).await;
    assert_eq!(support::scalar(&c, "SELECT 1").await, "1");
    let n = wait_count(&admin, Some("app"), None, 2, Duration::from_secs(10)).await;
    assert_eq!(n, 2, "min_pool_size 2 not reached");
    let kept = app_pids(&admin).await;
    // Idle for well over server_idle_timeout: the same two stay.
    let until = Instant::now() + Duration::from_millis(3000);
    while Instant::now() < until {
        let now = app_pids(&admin).await;
        assert_eq!(
            now, kept,
            "min_pool_size connections were closed or replaced while idle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(c);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app_pids(&admin).await,
        kept,
        "min_pool_size connections dropped after the client left"
    );
}

#[tokio::test]
async fn server_check_query_runs_before_reuse() {
    let pg = PgServer::builder().conf("log_statement = 'all'").start();
    let (p, _dir) = start_toml(
        &pg,
        "server_check_delay = 0\nserver_check_query = \"select 'pgtenant_check_probe'\"\n",
        &["--pool-size", "1"],
    );
    let c = app_client(&p).await;
    for _ in 0..3 {
        assert_eq!(
            support::scalar(&c, "SELECT 'client_stmt'").await,
            "client_stmt"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = pg.log();
        let checks = log.matches("select 'pgtenant_check_probe'").count();
        if checks >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "server_check_query ran {checks} times, expected one per reuse\n--- pg log ---\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn idle_transaction_timeout_disconnects_idle_in_transaction_client() {
    let pg = PgServer::start();
    let (p, _dir) = start_toml(&pg, "idle_transaction_timeout = 1\n", &["--pool-size", "1"]);
    let admin = pg.admin_client().await;
    let (c, conn_result) = connect_watched(&p.url("app", "secret", "app")).await;
    c.batch_execute("BEGIN").await.unwrap();
    let pid = backend_pid(&c).await;
    assert_eq!(
        count_on(&admin, Some("app"), Some("idle in transaction")).await,
        1
    );

    let t0 = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), conn_result)
        .await
        .expect("client idle in transaction was not disconnected")
        .expect("connection task vanished");
    let after = t0.elapsed();
    assert!(
        after >= Duration::from_millis(800),
        "disconnected after {after:?}, before idle_transaction_timeout"
    );
    if let Err(e) = r {
        if let Some(db) = e.as_db_error() {
            assert_eq!(db.code().code(), "25P03", "{db:?}");
        }
    }
    assert!(c.simple_query("SELECT 1").await.is_err());

    // The server connection is not handed out in that state.
    let n = wait_count(
        &admin,
        Some("app"),
        Some("idle in transaction"),
        0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(n, 0, "a server connection stayed idle in transaction");
    let next = app_client(&p).await;
    assert_eq!(
        support::scalar(&next, "SELECT now() = statement_timestamp()").await,
        "t"
    );
    assert_ne!(backend_pid(&next).await, pid);
}

/// A batch answered (Flush) but never synced keeps the server inside its implicit
/// transaction: idle_transaction_timeout ends it as it ends an idle BEGIN, rather than the
/// client holding the pool's only connection for ever.
#[test]
fn idle_transaction_timeout_covers_a_batch_without_sync() {
    use support::wire::{self, Raw};
    let pg = PgServer::start();
    let (p, _dir) = start_toml(
        &pg,
        "idle_transaction_timeout = 1\n",
        &["--pool-size", "1", "--auth-type", "trust"],
    );
    let mut r = Raw::connect(p.port());
    r.send(&[
        wire::parse("", "select 1", &[]),
        wire::bind("", "", &[]),
        wire::execute(""),
        wire::flush(),
    ]);
    let t0 = Instant::now();
    let msgs = r.until_closed(Duration::from_secs(10));
    assert!(
        t0.elapsed() >= Duration::from_millis(800),
        "closed after {:?}, before idle_transaction_timeout: {msgs:?}",
        t0.elapsed()
    );
    assert_eq!(wire::tags(&msgs[..4]), "12DC", "{msgs:?}");
    let last = msgs.last().unwrap();
    assert_eq!(last.tag, b'E', "{msgs:?}");
    assert_eq!(last.sqlstate(), "25P03", "{msgs:?}");
    // The pool's one connection serves the next client.
    let mut next = Raw::connect(p.port());
    let answer = next.exchange(&[wire::query("select 'next'")]);
    assert!(wire::tags(&answer).contains('D'), "{answer:?}");
}

/// Once a client has its answer, its server connection is back in the pool: clients
/// that take turns (one application thread using two connections) share one server
/// connection, however the pooler's threads are scheduled, and the admin console shows
/// it idle between their statements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_back_in_the_pool_when_its_client_has_the_answer() {
    let pg = PgServer::start();
    let (p, _dir) = start_toml(&pg, "admin_users = [\"app\"]\n", &["--pool-size", "4"]);
    let a = app_client(&p).await;
    let b = app_client(&p).await;
    let admin = connect(&p.url("app", "secret", "pgtenant")).await;
    let first = backend_pid(&a).await;
    for i in 0..300 {
        for (who, c) in [("A", &a), ("B", &b)] {
            let pid = backend_pid(c).await;
            assert_eq!(
                pid, first,
                "turn {i}: {who} found no idle connection and took another"
            );
        }
        if i % 50 == 0 {
            let rows = admin.simple_query("SHOW POOLS").await.unwrap();
            let row = rows
                .iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r)
                        if r.get("database") == Some("app") =>
                    {
                        Some((
                            r.get("cl_waiting").unwrap().to_string(),
                            r.get("sv_active").unwrap().to_string(),
                            r.get("sv_idle").unwrap().to_string(),
                        ))
                    }
                    _ => None,
                })
                .expect("the app pool in SHOW POOLS");
            assert_eq!(
                row,
                ("0".into(), "0".into(), "1".into()),
                "turn {i}: cl_waiting, sv_active, sv_idle"
            );
        }
    }
}
