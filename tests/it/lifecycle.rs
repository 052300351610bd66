//! Process lifecycle against real PostgreSQL: graceful drain on SIGTERM/SIGINT (open
//! transactions finish, idle clients leave, shutdown_timeout, a second signal), and
//! SIGHUP reloads of pool_size (growing, shrinking, a broken file).

use crate::support;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{PgServer, Pgtenant, Signal, TempDir};
use tokio_postgres::{Client, SimpleQueryMessage};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// pgtenant in front of `pg`, configured by a TOML file holding `extra` (upstream given).
fn start_with_config(pg: &PgServer, extra: &str) -> (Pgtenant, TempDir, std::path::PathBuf) {
    let dir = TempDir::new("lifecycle-cfg");
    let cfg = dir.config_file(&config_text(pg, extra));
    let p = Pgtenant::start(&["run", "--config", cfg.to_str().unwrap()], &[]);
    (p, dir, cfg)
}

fn config_text(pg: &PgServer, extra: &str) -> String {
    format!(
        "upstream = \"{}\"\n{extra}\n",
        pg.url("app", "secret", "app")
    )
}

fn app_url(p: &Pgtenant) -> String {
    p.url("app", "secret", "app")
}

/// First column of the first row, as text (simple protocol).
async fn value(c: &Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    for m in c.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).unwrap_or("NULL").to_string());
        }
    }
    panic!("{sql}: no row");
}

/// Connect and keep the connection task's result: how the server ended the connection.
async fn connect_watched(
    url: &str,
) -> (
    Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    (client, tokio::spawn(conn))
}

/// Poll `f` every 20 ms until it is true; false after `timeout`.
async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait (polling) until pgtenant's logs contain `needle` at least `n` times.
async fn wait_for_log(p: &Pgtenant, needle: &str, n: usize) {
    let ok = eventually(Duration::from_secs(10), || {
        p.logs().matches(needle).count() >= n
    })
    .await;
    assert!(
        ok,
        "pgtenant never logged {needle:?} ({n}x)\n--- logs ---\n{}",
        p.logs()
    );
}

/// Wait for the process to exit without blocking the runtime's other tasks.
async fn wait_exit(p: Pgtenant, timeout: Duration) -> (Pgtenant, Option<std::process::ExitStatus>) {
    tokio::task::spawn_blocking(move || {
        let mut p = p;
        let s = p.wait_exit(timeout);
        (p, s)
    })
    .await
    .unwrap()
}

async fn count_rows(pg: &PgServer) -> i64 {
    let c = pg.client("app", "secret", "app").await;
    c.query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0)
}

async fn create_table(pg: &PgServer) {
    let c = pg.client("app", "secret", "app").await;
    c.batch_execute("CREATE TABLE t (id int)").await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------

/// SIGTERM with a client inside a transaction: new connections are refused at once, the
/// client finishes and commits (durably), is then disconnected, and the process exits 0
/// long before shutdown_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_open_transaction_commit() {
    let pg = PgServer::start();
    create_table(&pg).await;
    let (p, _dir, _cfg) = start_with_config(&pg, "pool_size = 2\nshutdown_timeout = 60");
    let url = app_url(&p);
    let (a, a_conn) = connect_watched(&url).await;
    a.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    p.signal(Signal::Term);
    wait_for_log(&p, "shutting down", 1).await;
    let t0 = Instant::now();

    // New connections are refused (an error, or the port is closed).
    let refused = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout(Duration::from_secs(5), support::try_connect(&url)).await {
                Ok(Err(_)) => break true,
                Ok(Ok(c)) => drop(c),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert!(refused, "new clients are still accepted after SIGTERM");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", p.port())).is_err(),
        "the listen port is still open after SIGTERM"
    );

    // A is still served and commits.
    a.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    assert_eq!(value(&a, "SELECT count(*) FROM t").await.unwrap(), "2");
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(count_rows(&pg).await, 2, "the commit is not durable");

    // Then pgtenant closes A's connection (FATAL 57P01) and exits.
    let end = tokio::time::timeout(Duration::from_secs(10), a_conn)
        .await
        .expect("client still connected after its transaction ended during shutdown")
        .unwrap();
    let e = end.expect_err("connection should end with pgtenant's FATAL");
    assert_eq!(e.code().map(|c| c.code()), Some("57P01"), "{e:?}");
    let (p, status) = wait_exit(p, Duration::from_secs(10)).await;
    let status = status.unwrap_or_else(|| panic!("pgtenant did not exit\n{}", p.logs()));
    assert!(status.success(), "exit status {status}\n{}", p.logs());
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "shutdown took {:?} (shutdown_timeout is 60 s)",
        t0.elapsed()
    );
}

/// shutdown_timeout = 2 and a client idle in a transaction that never ends: the process
/// exits after about 2 s, and the unfinished transaction is rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_ends_a_stuck_transaction() {
    let pg = PgServer::start();
    create_table(&pg).await;
    let (p, _dir, _cfg) = start_with_config(&pg, "shutdown_timeout = 2");
    let a = support::connect(&app_url(&p)).await;
    a.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    let t0 = Instant::now();
    p.signal(Signal::Term);
    let (p, status) = wait_exit(p, Duration::from_secs(15)).await;
    let took = t0.elapsed();
    let status = status.unwrap_or_else(|| panic!("pgtenant did not exit\n{}", p.logs()));
    assert!(
        took >= Duration::from_millis(1500),
        "exited after {took:?}, before shutdown_timeout, with a transaction open"
    );
    assert!(
        took <= Duration::from_secs(6),
        "exited after {took:?} with shutdown_timeout = 2"
    );
    assert!(status.success(), "exit status {status}\n{}", p.logs());
    assert!(
        p.logs().contains("shutdown_timeout reached"),
        "{}",
        p.logs()
    );

    // The server connection went away with the process: the insert was never committed.
    let n = pg
        .wait_for_backends("app", "app", 0, Duration::from_secs(10))
        .await;
    assert_eq!(n, 0);
    assert_eq!(count_rows(&pg).await, 0);
    drop(a);
}

/// A second SIGTERM or SIGINT during the drain exits at once.
async fn second_signal_exits_at_once(first: Signal, second: Signal) {
    let pg = PgServer::start();
    let (p, _dir, _cfg) = start_with_config(&pg, "shutdown_timeout = 60");
    let a = support::connect(&app_url(&p)).await;
    a.batch_execute("BEGIN").await.unwrap();

    p.signal(first);
    wait_for_log(&p, "shutting down", 1).await;
    // Draining: still running because of A's transaction.
    let (p, status) = wait_exit(p, Duration::from_millis(500)).await;
    assert!(
        status.is_none(),
        "exited with a transaction open: {status:?}"
    );
    assert_eq!(value(&a, "SELECT 1").await.unwrap(), "1");

    let t0 = Instant::now();
    p.signal(second);
    let (p, status) = wait_exit(p, Duration::from_secs(10)).await;
    assert!(status.is_some(), "second signal ignored\n{}", p.logs());
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "second signal took {:?}",
        t0.elapsed()
    );
    assert!(p.logs().contains("second signal"), "{}", p.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_term_then_int() {
    second_signal_exits_at_once(Signal::Term, Signal::Int).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_int_then_term() {
    second_signal_exits_at_once(Signal::Int, Signal::Term).await;
}

/// Idle clients (no transaction) are told FATAL 57P01 and disconnected promptly; the
/// process exits soon after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_disconnects_idle_clients_promptly() {
    let pg = PgServer::start();
    let (p, _dir, _cfg) = start_with_config(&pg, "shutdown_timeout = 60");
    let url = app_url(&p);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (c, conn) = connect_watched(&url).await;
        c.simple_query("SELECT 1").await.unwrap();
        clients.push((c, conn));
    }

    let t0 = Instant::now();
    p.signal(Signal::Term);
    for (c, conn) in clients {
        let end = tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("idle client not disconnected within 5 s of SIGTERM")
            .unwrap();
        let e = end.expect_err("connection should end with pgtenant's FATAL");
        assert_eq!(e.code().map(|c| c.code()), Some("57P01"), "{e:?}");
        assert!(c.is_closed());
    }
    let (p, status) = wait_exit(p, Duration::from_secs(10)).await;
    let status = status.unwrap_or_else(|| panic!("pgtenant did not exit\n{}", p.logs()));
    assert!(status.success(), "exit status {status}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "exit took {:?} with only idle clients",
        t0.elapsed()
    );
    // And pgtenant closed its server connections on the way out.
    let n = pg
        .wait_for_backends("app", "app", 0, Duration::from_secs(10))
        .await;
    assert_eq!(n, 0, "server connections left behind");
}

// ---------------------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------------------

/// Clients running `pg_sleep(0.5)` in a loop; every error is recorded.
struct SleepLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl SleepLoad {
    async fn start(url: &str, clients: usize) -> SleepLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..clients {
            let c = support::connect(url).await;
            let (stop, ok) = (stop.clone(), ok.clone());
            tasks.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(
                        Duration::from_secs(30),
                        c.simple_query("SELECT pg_sleep(0.5)"),
                    )
                    .await
                    {
                        Ok(Ok(_)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => errors.push(format!("client {i}: {other:?}")),
                    }
                }
                errors
            }));
        }
        SleepLoad { stop, ok, tasks }
    }

    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.unwrap());
        }
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

/// Samples the number of `app` backends on PostgreSQL every 20 ms over one connection,
/// keeping the current value and the maximum since the last reset.
struct BackendMonitor {
    current: Arc<AtomicI64>,
    max: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl BackendMonitor {
    async fn start(pg: &PgServer) -> BackendMonitor {
        let admin = pg.admin_client().await;
        let current = Arc::new(AtomicI64::new(-1));
        let max = Arc::new(AtomicI64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (cur, mx, st) = (current.clone(), max.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let stmt = admin
                .prepare(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' \
                     AND datname = 'app' AND backend_type = 'client backend' AND application_name NOT LIKE 'pgtenant %'",
                )
                .await
                .unwrap();
            while !st.load(Ordering::Relaxed) {
                let n: i64 = admin.query_one(&stmt, &[]).await.unwrap().get(0);
                cur.store(n, Ordering::SeqCst);
                mx.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        BackendMonitor {
            current,
            max,
            stop,
            task,
        }
    }

    fn current(&self) -> i64 {
        self.current.load(Ordering::SeqCst)
    }

    /// Forget the maximum seen so far (start of a new phase).
    fn reset_max(&self) {
        self.max.store(self.current(), Ordering::SeqCst);
    }

    fn max(&self) -> i64 {
        self.max.load(Ordering::SeqCst)
    }

    /// Wait until the current count satisfies `f`.
    async fn wait_until(&self, what: &str, f: impl Fn(i64) -> bool) {
        let ok = eventually(Duration::from_secs(15), || f(self.current())).await;
        assert!(ok, "backends never {what} (now {})", self.current());
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
    }
}

/// SIGHUP changes pool_size under load: 2 → 4 → 1, never more backends than the size in
/// force, no client dropped, an idle client still works; a broken file is refused and
/// the running configuration stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_pool_size_under_load() {
    let pg = PgServer::start();
    let (p, _dir, cfg) = start_with_config(&pg, "pool_size = 2\nquery_wait_timeout = 60");
    let url = app_url(&p);
    let monitor = BackendMonitor::start(&pg).await;
    let idle = support::connect(&url).await;
    assert_eq!(value(&idle, "SELECT 1").await.unwrap(), "1");
    let load = SleepLoad::start(&url, 10).await;

    // pool_size = 2.
    monitor.wait_until("reached 2", |n| n == 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // observe a few rounds
    assert_eq!(monitor.max(), 2, "more than pool_size = 2 backends");

    // Grow to 4.
    std::fs::write(
        &cfg,
        config_text(&pg, "pool_size = 4\nquery_wait_timeout = 60"),
    )
    .unwrap();
    p.signal(Signal::Hup);
    wait_for_log(&p, "configuration reloaded", 1).await;
    monitor.wait_until("reached 4", |n| n == 4).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(monitor.max(), 4, "more than pool_size = 4 backends");
    // The client connected before the reload still works.
    let v = tokio::time::timeout(Duration::from_secs(20), value(&idle, "SELECT 2"))
        .await
        .expect("idle client's query hung after reload")
        .unwrap();
    assert_eq!(v, "2");

    // Shrink to 1: takes effect as connections come back.
    std::fs::write(
        &cfg,
        config_text(&pg, "pool_size = 1\nquery_wait_timeout = 60"),
    )
    .unwrap();
    p.signal(Signal::Hup);
    wait_for_log(&p, "configuration reloaded", 2).await;
    monitor.wait_until("shrank to 1", |n| n == 1).await;
    monitor.reset_max();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        monitor.max(),
        1,
        "more than pool_size = 1 backends after shrinking"
    );

    // A broken file: an error is logged, pool_size = 1 stays in force.
    std::fs::write(&cfg, "pool_size = [\n").unwrap();
    p.signal(Signal::Hup);
    wait_for_log(&p, "reload failed", 1).await;
    std::fs::write(&cfg, config_text(&pg, "pool_size = 3\npool_sizee = 9")).unwrap();
    p.signal(Signal::Hup);
    wait_for_log(&p, "reload failed", 2).await;
    assert!(p.logs().contains("pool_sizee"), "{}", p.logs());
    monitor.reset_max();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(monitor.max(), 1, "a broken config changed pool_size");
    let c = support::connect(&url).await;
    assert_eq!(value(&c, "SELECT 3").await.unwrap(), "3");

    let before = load.ok.load(Ordering::Relaxed);
    let (done, errors) = load.stop().await;
    assert!(errors.is_empty(), "clients saw errors: {errors:#?}");
    assert!(done > before, "load stalled");
    assert_eq!(value(&idle, "SELECT 4").await.unwrap(), "4");
    monitor.stop().await;
    assert!(p.logs().contains("configuration reloaded"), "{}", p.logs());
}
