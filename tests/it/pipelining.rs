//! Server-side pipelining (`server_pipelining = auto`) against a real PostgreSQL: while
//! the pool is saturated, waiting clients' plain statements share one server connection
//! back to back. Every client must still get exactly its own answer, its own errors, its
//! own cancels, and lose only what ran on a connection that broke.
use crate::support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{PgServer, Pgtenant};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// pgtenant in transaction mode with pipelining on (`depth`), pool of `pool_size`,
/// trust auth with `app` an admin, then `extra`; its metrics port, and the directory
/// holding its configuration (removed when dropped).
/// Statements in these tests wait for their turn, however long the batch before them.
const WAIT: &str = "query_wait_timeout = 30";

pub(crate) fn start(
    pg: &PgServer,
    pool_size: u32,
    depth: u32,
    extra: &str,
) -> (Pgtenant, u16, support::TempDir) {
    let http = support::free_port();
    let dir = support::TempDir::new("pipelining");
    let cfg = dir.write(
        "pgtenant.toml",
        &format!(
            "upstream = \"{}\"\npool_mode = \"transaction\"\npool_size = {pool_size}\n\
             max_client_conn = 1000\nserver_pipelining = \"auto\"\n\
             server_pipeline_depth = {depth}\nadmin_users = [\"app\"]\n\
             auth_type = \"trust\"\n{extra}\n",
            pg.url("app", "secret", "app")
        ),
    );
    let p = Pgtenant::start_with_metrics(&cfg, http);
    assert!(
        support::wait_for_port(http, Duration::from_secs(10)),
        "{}",
        p.logs()
    );
    (p, http, dir)
}

/// A plain read that keeps its backend busy for about `n` / 10⁷ s of CPU (never a wait on
/// a lock or a sleep: `pg_sleep` and writes may only be the last unit of a batch), as a
/// scalar column: `select 1, {work(n)}`.
pub(crate) fn work(n: u64) -> String {
    format!("(select count(*) from (select generate_series(1, {n})) s)")
}

/// A plain read that runs until cancelled or terminated (a billion rows).
pub(crate) const FOREVER: u64 = 1_000_000_000;

pub(crate) async fn client(p: &Pgtenant) -> Client {
    let (c, conn) = tokio_postgres::connect(&p.url("app", "secret", "app"), NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", p.logs()));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    c
}

/// The rows of a simple query, as text.
pub(crate) async fn rows(c: &Client, sql: &str) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    Ok(c.simple_query(sql)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// A counter of pgtenant's /metrics.
pub(crate) async fn metric(http: u16, name: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", http))
        .await
        .expect("metrics port");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
        .round() as u64
}

/// Hold every connection of the pool in an open transaction until the returned senders
/// are used (each `()` commits one), so that the clients started meanwhile queue up.
pub(crate) async fn hold_pool(p: &Pgtenant, n: usize) -> Vec<tokio::sync::oneshot::Sender<()>> {
    let mut release = Vec::new();
    for _ in 0..n {
        let c = client(p).await;
        c.batch_execute("begin; select 1").await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = rx.await;
            c.batch_execute("commit").await.unwrap();
            // Keep the client until its commit is answered.
        });
        release.push(tx);
    }
    release
}

/// Wait until `n` clients wait in pgtenant's pool (SHOW POOLS would say cl_waiting).
pub(crate) async fn until_waiting(http: u16, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(http, "pgtenant_clients{state=\"waiting\"}").await < n {
        assert!(Instant::now() < deadline, "{n} clients never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_batches_and_every_client_gets_its_own_answers() {
    let pg = PgServer::start();
    // One connection: every release finds the other clients waiting.
    let (p, http, _dir) = start(&pg, 1, 8, WAIT);
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for cid in 0..32u32 {
        let c = client(&p).await;
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..60u32 {
                let r = rows(&c, &format!("select {cid}, {i}, {}", work(1000)))
                    .await
                    .expect("a plain select");
                assert_eq!(r.len(), 1);
                assert_eq!(
                    (r[0][0].as_str(), r[0][1].as_str()),
                    (&*cid.to_string(), &*i.to_string()),
                    "client {cid} got another's answer"
                );
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 32 * 60);
    let admin = pg.admin_client().await;
    let backends: i64 = admin
        .query_one(
            "select count(*) from pg_stat_activity where usename = 'app' \
             and backend_type = 'client backend' and application_name not like 'pgtenant %'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(backends <= 1, "more backends than the pool: {backends}");
    let batches = metric(http, "pgtenant_server_pipeline_batches_total").await;
    let units = metric(http, "pgtenant_server_pipelined_statements_total").await;
    eprintln!("32 clients x 60 statements, pool 1: {batches} batches, {units} statements in them");
    assert!(
        batches > 0 && units >= 2 * batches,
        "no batch formed: {batches}/{units}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_the_middle_of_a_batch_reaches_only_its_client() {
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 1, 8, WAIT);
    let release = hold_pool(&p, 1).await;
    // Queued behind the held connection: ok, error, ok, error, ok …
    let mut tasks = Vec::new();
    for k in 0..7u32 {
        let c = client(&p).await;
        tasks.push(tokio::spawn(async move {
            let sql = if k % 2 == 1 {
                format!("select 1/0, {k}")
            } else {
                format!("select {k}")
            };
            (
                k,
                rows(&c, &sql).await,
                rows(&c, &format!("select {k} + 100")).await,
            )
        }));
        until_waiting(http, u64::from(k) + 1).await;
    }
    let before = metric(http, "pgtenant_server_pipelined_statements_total").await;
    for r in release {
        r.send(()).unwrap();
    }
    for t in tasks {
        let (k, first, second) = t.await.unwrap();
        if k % 2 == 1 {
            let e = first.expect_err("division by zero");
            assert_eq!(e.code().map(|c| c.code()), Some("22012"), "client {k}: {e}");
        } else {
            assert_eq!(first.expect("its own select"), vec![vec![k.to_string()]]);
        }
        // The client's connection goes on either way.
        assert_eq!(second.unwrap(), vec![vec![(k + 100).to_string()]]);
    }
    let after = metric(http, "pgtenant_server_pipelined_statements_total").await;
    assert!(
        after >= before + 7,
        "the 7 waiting statements went in batches: {before} → {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_only_the_batched_statement_it_was_meant_for() {
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 1, 8, WAIT);
    let release = hold_pool(&p, 1).await;
    // The batch: a slow read, then quick ones, and a sleep (a unit that may wait goes
    // last) its client cancels while it still waits behind the others.
    let slow = client(&p).await;
    let slow_token = slow.cancel_token();
    let first =
        tokio::spawn(
            async move { rows(&slow, &format!("select {}, 'slow'", work(FOREVER))).await },
        );
    until_waiting(http, 1).await;
    let mut quick = Vec::new();
    for k in 0..3u32 {
        let c = client(&p).await;
        quick.push(tokio::spawn(async move {
            (k, rows(&c, &format!("select {k}, {}", work(500_000))).await)
        }));
        until_waiting(http, u64::from(k) + 2).await;
    }
    let late = client(&p).await;
    let late_token = late.cancel_token();
    let last = tokio::spawn(async move { rows(&late, "select pg_sleep(20), 'late'").await });
    until_waiting(http, 5).await;
    let started = Instant::now();
    for r in release {
        r.send(()).unwrap();
    }
    // The last one's client cancels while its statement waits in the batch: it is sent
    // when its statement starts. (Once the batch formed: a cancel while it still waits for
    // a connection has nothing to cancel, with or without pipelining.)
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(http, "pgtenant_server_pipelined_statements_total").await < 5 {
        assert!(Instant::now() < deadline, "no batch formed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    late_token.cancel_query(NoTls).await.unwrap();
    // The first one runs: cancel it.
    slow_token.cancel_query(NoTls).await.unwrap();
    let e = first.await.unwrap().expect_err("cancelled");
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
    for t in quick {
        let (k, r) = t.await.unwrap();
        let r = r.unwrap_or_else(|e| panic!("quick {k} was hit by a batch-mate cancel: {e:?}"));
        assert_eq!(r[0][0], k.to_string());
    }
    let e = last.await.unwrap().expect_err("cancelled when it started");
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "both slow ones were cancelled"
    );
}

/// A client firing cancels at its own short statements, batched with others: a cancel
/// that arrives after its statement ended must never fail a batch-mate's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_cancels_never_fail_a_batch_mate() {
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 1, 8, WAIT);
    let stop = Arc::new(AtomicBool::new(false));
    let mut mates = Vec::new();
    for k in 0..6u32 {
        let c = client(&p).await;
        let stop = stop.clone();
        mates.push(tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let r = rows(&c, &format!("select {k}, {}", work(1000)))
                    .await
                    .unwrap_or_else(|e| panic!("mate {k} failed: {e:?}"));
                assert_eq!(r[0][0], k.to_string());
                n += 1;
            }
            n
        }));
    }
    let shooter = Arc::new(client(&p).await);
    let _ = std::fs::write("/tmp/pipelining-late.log", "");
    let mut cancelled = 0u32;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut i = 0u64;
    while Instant::now() < deadline {
        i += 1;
        let c = shooter.clone();
        let token = c.cancel_token();
        let q = tokio::spawn(async move { rows(&c, &format!("select {}", work(20_000))).await });
        // Fire at a varying moment: before, during and just after the statement.
        tokio::time::sleep(Duration::from_micros(i * 397 % 4000)).await;
        let _ = token.cancel_query(NoTls).await;
        if q.await.unwrap().is_err() {
            cancelled += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for m in mates {
        match m.await {
            Ok(n) => total += n,
            Err(e) => panic!(
                "{e}\n{}",
                p.logs()
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("cancel"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }
    let batched = metric(http, "pgtenant_server_pipelined_statements_total").await;
    let reruns = metric(http, "pgtenant_server_pipeline_reruns_total").await;
    eprintln!("{i} cancels fired, {cancelled} cancelled; mates ran {total}; {batched} statements batched, {reruns} run again");
    assert!(batched > 0, "nothing was batched");
}

/// Three clients, each with the statement `sql(k)`, queued one after the other behind a
/// held pool (each waits before the next starts): a batch in that order once a
/// connection comes back. Each task gives the rows (or error) and its client.
async fn queue_up(
    p: &Pgtenant,
    http: u16,
    sql: impl Fn(u32) -> String,
) -> Vec<tokio::task::JoinHandle<(Result<Vec<Vec<String>>, tokio_postgres::Error>, Client)>> {
    let mut batch = Vec::new();
    for k in 0..3u32 {
        let c = client(p).await;
        let sql = sql(k);
        batch.push(tokio::spawn(async move { (rows(&c, &sql).await, c) }));
        until_waiting(http, u64::from(k) + 1).await;
    }
    batch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_on_a_batched_connection_fails_only_the_statement_it_ran() {
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 2, 8, WAIT);
    let release = hold_pool(&p, 2).await;
    let batch = queue_up(&p, http, |k| match k {
        0 => format!("select {}, 'doomed'", work(FOREVER)),
        _ => format!("select {k}"),
    })
    .await;
    let mut release = release.into_iter();
    release.next().unwrap().send(()).unwrap();
    let admin = pg.admin_client().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = admin
            .execute(
                "select pg_terminate_backend(pid) from pg_stat_activity \
                 where query like '%''doomed''%' and pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the batch never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (k, t) in batch.into_iter().enumerate() {
        let (r, c) = t.await.unwrap();
        if k == 0 {
            let e = r.expect_err("its connection was terminated");
            assert_eq!(e.code().map(|c| c.code()), Some("08006"), "{e}");
            assert!(c.is_closed() || rows(&c, "select 1").await.is_err());
            continue;
        }
        // The backend ended while the first ran: it never read theirs, which run again
        // on another connection, their clients none the wiser.
        assert_eq!(
            r.unwrap_or_else(|e| panic!("a batch-mate of the terminated statement: {e}")),
            vec![vec![k.to_string()]]
        );
        assert_eq!(
            rows(&c, "select 7").await.unwrap(),
            vec![vec!["7".to_string()]]
        );
    }
    // The other connection and new clients are untouched.
    release.next().unwrap().send(()).unwrap();
    let c = client(&p).await;
    assert_eq!(
        rows(&c, "select 42").await.unwrap(),
        vec![vec!["42".to_string()]]
    );
}

/// A batched statement whose answer holds a message over `max_message_size` ends its
/// own client's session (as without a batch), and only its: the message is skipped, and
/// its batch-mates get their answers on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_answer_in_a_batch_costs_only_its_client() {
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 2, 8, &format!("{WAIT}\nmax_message_size = 1048576"));
    let release = hold_pool(&p, 2).await;
    let batch = queue_up(&p, http, |k| match k {
        1 => "select repeat('x', 3000000)".to_string(),
        _ => format!("select {k}, {}", work(2_000_000)),
    })
    .await;
    let before = metric(http, "pgtenant_server_pipelined_statements_total").await;
    let mut release = release.into_iter();
    release.next().unwrap().send(()).unwrap();
    for (k, t) in batch.into_iter().enumerate() {
        let (r, c) = t.await.unwrap();
        if k == 1 {
            let e = r.expect_err("its answer is too large");
            assert_eq!(e.code().map(|c| c.code()), Some("08006"), "{e}");
            continue;
        }
        assert_eq!(
            r.unwrap_or_else(|e| panic!("a batch-mate of the oversized answer: {e}"))[0][0],
            k.to_string()
        );
        assert_eq!(
            rows(&c, "select 7").await.unwrap(),
            vec![vec!["7".to_string()]]
        );
    }
    let after = metric(http, "pgtenant_server_pipelined_statements_total").await;
    assert!(
        after >= before + 3,
        "the three went in one batch: {before} → {after}"
    );
    release.next().unwrap().send(()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_settings_and_prepared_statements_keep_their_own_connection_state() {
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 2, 8, WAIT);
    let setup = client(&p).await;
    setup
        .batch_execute("create table pipe_t(k int, v int)")
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // Plain clients keep the pool saturated and batches forming.
    for k in 0..16u32 {
        let c = client(&p).await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = rows(&c, &format!("select {k}, {}", work(1000)))
                    .await
                    .unwrap();
                assert_eq!(r[0][0], k.to_string());
            }
        }));
    }
    // A transaction: its statements all run in it, on one backend, never in a batch.
    let tx = client(&p).await;
    // Its own settings: the time zone is its own in every statement.
    let tz = client(&p).await;
    tz.batch_execute("set timezone = 'Asia/Kathmandu'")
        .await
        .unwrap();
    // Prepared statements, protocol and SQL level.
    let prep = client(&p).await;
    let stmt = prep.prepare("select $1::int + 1").await.unwrap();
    prep.batch_execute("prepare sq(int) as select $1 * 2")
        .await
        .unwrap();
    for i in 0..40i32 {
        let r = rows(&tx, &format!("begin; insert into pipe_t values ({i}, 1); select txid_current(), pg_backend_pid()")).await.unwrap();
        let r2 = rows(&tx, "select txid_current(), pg_backend_pid()")
            .await
            .unwrap();
        assert_eq!(r, r2, "the transaction moved");
        tx.batch_execute("commit").await.unwrap();
        let z = rows(&tz, "select current_setting('TimeZone')")
            .await
            .unwrap();
        assert_eq!(z[0][0], "Asia/Kathmandu");
        let n: i32 = prep.query_one(&stmt, &[&i]).await.unwrap().get(0);
        assert_eq!(n, i + 1);
        let d = rows(&prep, &format!("execute sq({i})")).await.unwrap();
        assert_eq!(d[0][0], (i * 2).to_string());
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let n: i64 = setup
        .query_one("select count(*) from pipe_t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 40);
    let plain = client(&p).await;
    let z = rows(&plain, "select current_setting('TimeZone')")
        .await
        .unwrap();
    assert_ne!(
        z[0][0], "Asia/Kathmandu",
        "a client's setting reached another"
    );
    assert!(metric(http, "pgtenant_server_pipelined_statements_total").await > 0);
}

/// The extended protocol's unnamed statement, as psycopg and tokio-postgres'
/// `query_typed` send it (Parse, Bind, Describe, Execute, Sync at once): batched too, each
/// client with its own parameters, types, errors and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_groups_of_different_clients_share_a_batch() {
    use tokio_postgres::types::Type;
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 1, 8, WAIT);
    let release = hold_pool(&p, 1).await;
    let before = metric(http, "pgtenant_server_pipelined_statements_total").await;
    let mut tasks = Vec::new();
    for k in 0..6i32 {
        let c = client(&p).await;
        tasks.push(tokio::spawn(async move {
            let r = if k == 3 {
                // An error in the middle of the batch: its own client's only.
                c.query_typed("select 1 / $1::int", &[(&0i32, Type::INT4)])
                    .await
                    .map(|_| 0)
            } else if k % 2 == 0 {
                c.query_typed("select $1::int * 10", &[(&k, Type::INT4)])
                    .await
                    .map(|rows| rows[0].get::<_, i32>(0))
            } else {
                c.query_typed(
                    "select length($1::text)",
                    &[(&"x".repeat(k as usize), Type::TEXT)],
                )
                .await
                .map(|rows| rows[0].get::<_, i32>(0))
            };
            // The client goes on with a named statement of its own afterwards.
            let stmt = c.prepare("select $1::int + 1").await.unwrap();
            let after: i32 = c.query_one(&stmt, &[&k]).await.unwrap().get(0);
            (k, r, after)
        }));
        until_waiting(http, k as u64 + 1).await;
    }
    for r in release {
        r.send(()).unwrap();
    }
    for t in tasks {
        let (k, r, after) = t.await.unwrap();
        match k {
            3 => {
                let e = r.expect_err("division by zero");
                assert_eq!(e.code().map(|c| c.code()), Some("22012"), "{e}");
            }
            k if k % 2 == 0 => assert_eq!(r.unwrap(), k * 10),
            k => assert_eq!(r.unwrap(), k),
        }
        assert_eq!(after, k + 1);
    }
    let after = metric(http, "pgtenant_server_pipelined_statements_total").await;
    assert!(
        after >= before + 6,
        "the 6 groups went in batches: {before} → {after}"
    );
}

/// Routed to a worker (the emulated Citus cluster): tenant-keyed statements, simple and
/// extended (the Parse held until its Bind names the tenant), batched on the owning
/// worker's pool; every client gets its own tenant's rows from the worker that owns them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_statements_are_batched_on_their_worker() {
    use support::citus::{CitusCluster, CitusOptions};
    use tokio_postgres::types::Type;
    let cluster = CitusCluster::start(CitusOptions {
        tenants: 200,
        shard_count: 8,
        ..CitusOptions::default()
    });
    let dir = support::TempDir::new("pipelining-routed");
    let (p, http) = crate::tenant_limits::start_with(
        &cluster,
        &dir,
        "routed",
        "pool_size = 1\nserver_pipelining = \"auto\"\nquery_wait_timeout = 30",
    );
    let keys = crate::tenant_limits::tenants_on_worker0(&cluster, 12);
    let worker = cluster.workers[0].port().to_string();
    let mut tasks = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let c = client(&p).await;
        let k: i64 = k.parse().unwrap();
        let worker = worker.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..30 {
                let (port, n) = if (i + round) % 2 == 0 {
                    let r = rows(
                        &c,
                        &format!(
                            "select inet_server_port(), count(*), min(account_id) \
                             from orders where account_id = {k}"
                        ),
                    )
                    .await
                    .unwrap();
                    assert_eq!(r[0][2], k.to_string(), "another tenant's rows");
                    (r[0][0].clone(), r[0][1].clone())
                } else {
                    let r = c
                        .query_typed(
                            "select inet_server_port()::text, count(*)::text \
                             from orders where account_id = $1",
                            &[(&k, Type::INT8)],
                        )
                        .await
                        .unwrap();
                    (r[0].get::<_, String>(0), r[0].get::<_, String>(1))
                };
                assert_eq!((port.as_str(), n.as_str()), (worker.as_str(), "3"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let units = metric(http, "pgtenant_server_pipelined_statements_total").await;
    eprintln!("12 tenants x 30 routed statements, worker pool 1: {units} batched");
    assert!(units > 0, "nothing was batched on the worker");
}

/// A unit that waits on a row lock (another client holds it in an open transaction) holds
/// no later client's read: nothing goes behind a unit that may wait, so the read takes
/// the next connection that comes free and is answered while the lock is still held
/// (behind the waiting UPDATE on its connection it would wait for the lock holder's
/// commit; for ever if the application waited for the read before committing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_waiting_on_a_row_lock_holds_no_later_read() {
    let pg = PgServer::start();
    let (p, http, _dir) = start(&pg, 3, 8, WAIT);
    let setup = client(&p).await;
    setup
        .batch_execute(
            "create table locked(id int primary key, v int); insert into locked values (1, 0)",
        )
        .await
        .unwrap();
    drop(setup);
    // The lock holder: one connection, in a transaction until the test commits it.
    let holder = client(&p).await;
    holder
        .batch_execute("begin; update locked set v = v + 1 where id = 1")
        .await
        .unwrap();
    // The two other connections held, so that the next ones queue.
    let mut release = hold_pool(&p, 2).await.into_iter();
    let waiter = client(&p).await;
    let w = tokio::spawn(async move {
        rows(
            &waiter,
            "update locked set v = v + 10 where id = 1 returning v",
        )
        .await
    });
    until_waiting(http, 1).await;
    let reader = client(&p).await;
    let r = tokio::spawn(async move {
        let r = rows(&reader, &format!("select 'free', {}", work(1000))).await;
        (r, Instant::now())
    });
    until_waiting(http, 2).await;
    // A connection comes back: the waiting UPDATE takes it (and waits for the lock there).
    release.next().unwrap().send(()).unwrap();
    let admin = pg.admin_client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = admin
            .query_one(
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock' \
                 and query like 'update locked set v = v + 10%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the UPDATE never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another comes back: the read is answered on it at once, the lock still held.
    let freed = Instant::now();
    release.next().unwrap().send(()).unwrap();
    let (got, at) = tokio::time::timeout(Duration::from_secs(5), r)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the read waited behind the UPDATE that waits on a row lock\n{}",
                p.logs()
            )
        })
        .unwrap();
    assert_eq!(got.unwrap()[0][0], "free");
    assert!(
        at.duration_since(freed) < Duration::from_secs(2),
        "the read took {:?}",
        at.duration_since(freed)
    );
    assert!(!w.is_finished(), "the UPDATE did not wait for the lock");
    holder.batch_execute("commit").await.unwrap();
    let v = tokio::time::timeout(Duration::from_secs(10), w)
        .await
        .expect("the UPDATE ran once the lock was free")
        .unwrap()
        .unwrap();
    assert_eq!(v, vec![vec!["11".to_string()]]);
}

/// Three clients waiting in turn for the pool's one (held) connection, each with
/// `select 'pipe_mate_K'`: a batch once the connection comes back.
type ProbeMate = tokio::task::JoinHandle<(u32, Result<Vec<Vec<String>>, tokio_postgres::Error>)>;

async fn three_probe_mates(p: &Pgtenant, http: u16) -> Vec<ProbeMate> {
    let mut mates = Vec::new();
    for k in 0..3u32 {
        let c = client(p).await;
        mates.push(tokio::spawn(async move {
            (k, rows(&c, &format!("select 'pipe_mate_{k}'")).await)
        }));
        until_waiting(http, u64::from(k) + 1).await;
    }
    mates
}

/// A connection a batch takes passes the same health check as one lent to one client:
/// with `server_check_delay = 0` server_check_query runs before every lend, so it runs on
/// the batch's connection before the batch's statements (the PostgreSQL log says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_takes_a_connection_only_after_server_check_query() {
    let pg = PgServer::builder().conf("log_statement = 'all'").start();
    let (p, http, _dir) = start(
        &pg,
        1,
        8,
        &format!(
            "{WAIT}\nserver_check_delay = 0\nserver_check_query = \"select 'pipe_check_probe'\""
        ),
    );
    let release = hold_pool(&p, 1).await;
    let mates = three_probe_mates(&p, http).await;
    let probes_before = pg.log().matches("select 'pipe_check_probe'").count();
    let before = metric(http, "pgtenant_server_pipelined_statements_total").await;
    for r in release {
        r.send(()).unwrap();
    }
    for m in mates {
        let (k, r) = m.await.unwrap();
        assert_eq!(r.unwrap()[0][0], format!("pipe_mate_{k}"));
    }
    assert!(
        metric(http, "pgtenant_server_pipelined_statements_total").await >= before + 3,
        "no batch formed"
    );
    // The probe before the batch's first statement in the server's log.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = pg.log();
        if let Some(at) = log.find("select 'pipe_mate_0'") {
            let probes = log[..at].matches("select 'pipe_check_probe'").count();
            assert!(
                probes > probes_before,
                "the batch's connection was not checked first ({probes_before} probes before, \
                 {probes} before the batch)\n--- pg log ---\n{log}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the batch is not in the log");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The check fails on the connection a batch took (here: server_check_query divides by
/// zero while `check_fail` has a row; the divisor comes from the table, so the planner
/// cannot fold `1/0` and fail it always): that connection is closed and nothing is sent on
/// it; the batch's clients take their statements again on another connection and get
/// their own answers, none the wiser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_connection_fails_its_check_runs_elsewhere() {
    let pg = PgServer::builder()
        .conf("log_statement = 'all'")
        .conf("log_line_prefix = '@@%p@@ '")
        .start();
    let (direct, conn) = tokio_postgres::connect(&pg.url("app", "secret", "app"), NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    direct
        .batch_execute("create table check_fail(x int)")
        .await
        .unwrap();
    let (p, http, _dir) = start(
        &pg,
        1,
        8,
        &format!(
            "{WAIT}\nserver_check_delay = 0\nserver_check_query = \
             \"select 1 / (1 - (select count(*)::int from check_fail))\""
        ),
    );
    // The pool's one connection, held in a transaction (and named by its backend pid:
    // pgtenant's other connections, such as the tenant-limits reader, are not the pool's).
    let holder = client(&p).await;
    let held = rows(&holder, "begin; select pg_backend_pid()")
        .await
        .unwrap_or_else(|e| panic!("the holder: {e}\n{}", p.logs()))[0][0]
        .clone();
    let mates = three_probe_mates(&p, http).await;
    direct
        .batch_execute("insert into check_fail values (1)")
        .await
        .unwrap();
    // Its commit gives the connection back to the waiting mates: it fails its check.
    holder.batch_execute("commit").await.unwrap();
    for m in mates {
        let (k, r) = tokio::time::timeout(Duration::from_secs(10), m)
            .await
            .unwrap_or_else(|_| panic!("a mate never answered\n{}", p.logs()))
            .unwrap();
        assert_eq!(
            r.unwrap_or_else(|e| panic!("mate {k}: {e}"))[0][0],
            format!("pipe_mate_{k}")
        );
    }
    // The check ran and failed on the connection the batch took, before any of its
    // statements: none of them ran on that backend.
    let log = pg.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("@@{held}@@")) && l.contains("division by zero")),
        "the check never failed on the held connection ({held})\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains(&format!("@@{held}@@")) && l.contains("pipe_mate_")),
        "a statement ran on the connection that failed its check\n{log}"
    );
}
