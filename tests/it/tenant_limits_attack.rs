//! Attacks on the per-tenant limits (`crate::limits`): what one tenant's limits must never
//! do to another client's request, and counts that must always come back.
use crate::support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tenant_limits::{start_with, tenant_row, tenants_on_worker0};
use support::citus::{CitusCluster, CitusOptions};
use support::{Pgtenant, TempDir};

fn start(cluster: &CitusCluster, dir: &TempDir, name: &str, settings: &str) -> Pgtenant {
    start_with(cluster, dir, name, settings).0
}

/// A tenant whose statements end right around its statement_timeout, on a worker pool of
/// one connection that another client's statements take the moment it comes back: the
/// timeout's cancel must never reach the other client's statement.
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_timeout_never_cancels_the_next_client() {
    let cluster = CitusCluster::start(CitusOptions {
        tenants: 20,
        shard_count: 4,
        ..CitusOptions::default()
    });
    let dir = TempDir::new("tl-attack-cancel");
    let keys = tenants_on_worker0(&cluster, 2);
    let (slow, other) = (&keys[0], &keys[1]);
    let p = start(
        &cluster,
        &dir,
        "cancel",
        &format!(
            "pool_size = 1\nquery_wait_timeout = 10\n\
             [tenant_limits]\n\"{slow}\" = {{ statement_timeout = \"20ms\" }}\n"
        ),
    );
    let url = p.url("app", "secret", "app");
    let a = support::connect(&url).await;
    let b = support::connect(&url).await;
    let stop = Arc::new(AtomicBool::new(false));
    let timeouts = Arc::new(AtomicUsize::new(0));
    let slow_task = {
        let (stop, timeouts, slow) = (stop.clone(), timeouts.clone(), slow.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // 17 to 23 ms: around the 20 ms limit.
                let ms = 17 + (i % 7);
                i += 1;
                match a
                    .simple_query(&format!(
                        "select pg_sleep({}), count(*) from orders where account_id = {slow}",
                        ms as f64 / 1000.0
                    ))
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == "57014") => {
                        timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => panic!("slow tenant: {}", support::citus::db_err(&e)),
                }
            }
        })
    };
    let t = Instant::now();
    let mut ran = 0;
    let mut hit = Vec::new();
    while t.elapsed() < Duration::from_secs(5) {
        match b
            .simple_query(&format!(
                "select pg_sleep(0.002), count(*) from orders where account_id = {other}"
            ))
            .await
        {
            Ok(_) => ran += 1,
            Err(e) => hit.push(support::citus::db_err(&e)),
        }
    }
    stop.store(true, Ordering::Relaxed);
    slow_task.await.unwrap();
    eprintln!(
        "other client: {ran} statements, {} errors; slow tenant: {} timeouts",
        hit.len(),
        timeouts.load(Ordering::Relaxed)
    );
    assert!(hit.is_empty(), "the other client was hit: {hit:?}");
    assert!(timeouts.load(Ordering::Relaxed) > 0, "no timeout fired");
}

/// Inside a transaction block, a statement that ends just as the tenant's timer fires
/// must not take the next statement of the block down with it (PostgreSQL's own
/// statement_timeout never cancels a statement that has not run that long).
#[tokio::test(flavor = "multi_thread")]
async fn a_late_timeout_does_not_cancel_the_next_statement_of_the_block() {
    let cluster = CitusCluster::start(CitusOptions {
        tenants: 20,
        shard_count: 4,
        ..CitusOptions::default()
    });
    let dir = TempDir::new("tl-attack-block");
    let keys = tenants_on_worker0(&cluster, 1);
    let slow = &keys[0];
    let p = start(
        &cluster,
        &dir,
        "block",
        &format!(
            "pool_size = 2\nquery_wait_timeout = 10\n\
             [tenant_limits]\n\"{slow}\" = {{ statement_timeout = \"20ms\" }}\n"
        ),
    );
    let url = p.url("app", "secret", "app");
    let a = support::connect(&url).await;
    let t = Instant::now();
    let (mut first_timeouts, mut wrongly_cancelled, mut blocks) = (0, Vec::new(), 0);
    let mut own_timeouts = 0;
    let mut i = 0u64;
    while t.elapsed() < Duration::from_secs(5) {
        let ms = 17 + (i % 7);
        i += 1;
        blocks += 1;
        a.simple_query("begin").await.unwrap();
        let first = a
            .simple_query(&format!(
                "select pg_sleep({}), count(*) from orders where account_id = {slow}",
                ms as f64 / 1000.0
            ))
            .await;
        if first.is_err() {
            first_timeouts += 1;
            a.simple_query("rollback").await.unwrap();
            continue;
        }
        // A statement far shorter than the limit. On a loaded machine it may itself take
        // longer than the limit (pgtenant times it from its send to its answer): only a
        // cancel that ended it sooner was meant for the statement before it.
        let started = Instant::now();
        if let Err(e) = a
            .simple_query(&format!(
                "select pg_sleep(0.005), count(*) from orders where account_id = {slow}"
            ))
            .await
        {
            if started.elapsed() < Duration::from_millis(20) {
                wrongly_cancelled.push(support::citus::db_err(&e));
            } else {
                own_timeouts += 1;
            }
        }
        a.simple_query("rollback").await.unwrap();
    }
    eprintln!(
        "{blocks} blocks, {first_timeouts} first statements timed out, {} short ones cancelled \
         early, {own_timeouts} short ones ran past the limit themselves (a loaded machine)",
        wrongly_cancelled.len()
    );
    assert!(first_timeouts > 0, "no timeout fired");
    assert!(
        wrongly_cancelled.is_empty(),
        "short statements cancelled: {wrongly_cancelled:?}"
    );
}

/// SHOW TENANT LIMITS of `tenant`: (active, waiting).
async fn load(admin: &tokio_postgres::Client, tenant: &str) -> (u64, u64) {
    tenant_row(admin, "SHOW TENANT LIMITS", tenant, ["active", "waiting"])
        .await
        .unwrap_or_else(|| panic!("no SHOW TENANT LIMITS row of {tenant}"))
}

/// Wait until the tenant's counts are back to zero; panics naming `after` otherwise.
async fn back_to_zero(admin: &tokio_postgres::Client, tenant: &str, after: &str) {
    let t = Instant::now();
    loop {
        let l = load(admin, tenant).await;
        if l == (0, 0) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "after {after}: tenant {tenant} still shows (active, waiting) = {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Four transactions of 0.3 s of `tenant` at once: with its max_active of 2, two
/// rounds (a leaked count would make it three rounds or more, or time out).
async fn runs_two_at_once(url: &str, tenant: &str, after: &str) {
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(support::connect(url).await);
    }
    let t = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let sql =
                format!("select pg_sleep(0.3), count(*) from orders where account_id = {tenant}");
            tokio::spawn(async move { c.simple_query(&sql).await.map(|_| ()) })
        })
        .collect();
    for t in tasks {
        t.await
            .unwrap()
            .unwrap_or_else(|e| panic!("after {after}: {}", support::citus::db_err(&e)));
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(850),
        "after {after}: 4 × 0.3 s at max_active 2 took {took:?}"
    );
}

/// A transaction of `tenant` left open on `c` (BEGIN, one statement marked `mark`).
async fn hold(url: &str, tenant: &str, mark: &str) -> tokio_postgres::Client {
    let c = support::connect(url).await;
    c.simple_query("begin").await.unwrap();
    c.simple_query(&format!(
        "select count(*) from orders where account_id = {tenant} /* {mark} */"
    ))
    .await
    .unwrap();
    c
}

/// A transaction of `tenant` sent on a client of its own, to wait in the tenant's queue.
async fn waiter(
    url: &str,
    tenant: &str,
) -> tokio::task::JoinHandle<Result<(), tokio_postgres::Error>> {
    let c = support::connect(url).await;
    let sql = format!("select count(*) from orders where account_id = {tenant}");
    tokio::spawn(async move { c.simple_query(&sql).await.map(|_| ()) })
}

/// Every way a lent or waiting transaction of a limited tenant can end badly gives its
/// count back: the tenant is neither shown busy nor throttled below its limit after.
#[tokio::test(flavor = "multi_thread")]
async fn a_limited_tenants_counts_come_back_whatever_ends_its_transactions() {
    let cluster = CitusCluster::start(CitusOptions {
        tenants: 20,
        shard_count: 4,
        ..CitusOptions::default()
    });
    let dir = TempDir::new("tl-attack-leaks");
    let keys = tenants_on_worker0(&cluster, 1);
    let t = &keys[0];
    let p = start(
        &cluster,
        &dir,
        "leaks",
        &format!(
            "pool_size = 4\nquery_wait_timeout = 2\n\
             [tenant_limits]\n\"{t}\" = {{ max_active = 2 }}\n"
        ),
    );
    let url = p.url("app", "secret", "app");
    let admin = support::connect(&p.url("app", "secret", "pgtenant")).await;
    let worker = cluster.app_client(&cluster.workers[0]).await;
    runs_two_at_once(&url, t, "start").await;

    // A client leaves mid-transaction; another's server connection is terminated while
    // it is lent; the one waiting for the tenant gets a connection.
    let h1 = hold(&url, t, "h1").await;
    let h2 = hold(&url, t, "h2").await;
    let w = waiter(&url, t).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(load(&admin, t).await, (2, 1));
    drop(h1);
    w.await
        .unwrap()
        .expect("the waiter got the connection freed");
    worker
        .simple_query(
            "select pg_terminate_backend(pid) from pg_stat_activity \
             where query like '%/* h2 */%' and pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    assert!(h2.simple_query("select 1").await.is_err());
    back_to_zero(&admin, t, "disconnect, terminate").await;
    runs_two_at_once(&url, t, "disconnect, terminate").await;

    // Waiters that leave while they wait, and waiters that reach query_wait_timeout.
    let h1 = hold(&url, t, "h1").await;
    let h2 = hold(&url, t, "h2").await;
    let leaving: Vec<_> = futures_join(&url, t, 5).await;
    let staying: Vec<_> = futures_join(&url, t, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(load(&admin, t).await, (2, 8));
    for l in &leaving {
        l.abort();
    }
    for s in staying {
        let e = s.await.unwrap().expect_err("query_wait_timeout");
        assert!(
            support::citus::db_err(&e).contains("query_wait_timeout"),
            "{e}"
        );
    }
    h1.simple_query("commit").await.unwrap();
    h2.simple_query("rollback").await.unwrap();
    back_to_zero(&admin, t, "waiters left or timed out").await;
    runs_two_at_once(&url, t, "waiters left or timed out").await;

    // The limit lowered and raised back while its transactions run and wait.
    let h1 = hold(&url, t, "h1").await;
    let h2 = hold(&url, t, "h2").await;
    admin
        .simple_query(&format!("SET TENANT {t} max_active = 1"))
        .await
        .unwrap();
    let w1 = waiter(&url, t).await;
    admin
        .simple_query(&format!("SET TENANT {t} max_active = 3"))
        .await
        .unwrap();
    let w2 = waiter(&url, t).await;
    w2.await.unwrap().expect("under the raised limit");
    admin
        .simple_query(&format!("RESET TENANT {t}"))
        .await
        .unwrap();
    h1.simple_query("commit").await.unwrap();
    w1.await.unwrap().expect("its turn after a commit");
    h2.simple_query("commit").await.unwrap();
    back_to_zero(&admin, t, "SET TENANT / RESET TENANT").await;
    runs_two_at_once(&url, t, "SET TENANT / RESET TENANT").await;

    // RECONNECT and KILL while its transactions are lent and waiting.
    let h1 = hold(&url, t, "h1").await;
    let h2 = hold(&url, t, "h2").await;
    let w = waiter(&url, t).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    admin.simple_query("RECONNECT app").await.unwrap();
    h1.simple_query("commit").await.unwrap();
    w.await.unwrap().expect("served after RECONNECT");
    let w = waiter(&url, t).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    admin.simple_query("KILL app").await.unwrap();
    let _ = w.await.unwrap();
    let _ = h2.simple_query("commit").await;
    back_to_zero(&admin, t, "RECONNECT, KILL").await;
    runs_two_at_once(&url, t, "RECONNECT, KILL").await;
}

/// `n` waiters of `tenant`, each on its own client.
async fn futures_join(
    url: &str,
    tenant: &str,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(waiter(url, tenant).await);
    }
    v
}

/// Hostile tenant values and limits on the console: values are stored and shown exactly
/// (quotes, backslashes, comment markers, newlines, non-ASCII), nothing else runs, and
/// values out of range are refused.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_set_tenant_values_are_stored_exactly_or_refused() {
    let pg = support::PgServer::start();
    let dir = TempDir::new("tl-attack-console");
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\npool_size = 2\nadmin_users = [\"app\"]\n",
        pg.url("app", "secret", "app")
    ));
    let p = Pgtenant::start(&["run", "--config", cfg.to_str().unwrap()], &[]);
    let admin = support::connect(&p.url("app", "secret", "pgtenant")).await;
    let up = support::connect(&pg.url("app", "secret", "app")).await;
    up.simple_query("create table canary(a int)").await.unwrap();
    let values = [
        (
            "'x''); DROP TABLE canary; --'",
            "x'); DROP TABLE canary; --",
        ),
        ("'a\\'", "a\\"),
        ("'b\\'' max_active = 9 --'", "b\\' max_active = 9 --"),
        ("'c/* */d'", "c/* */d"),
        ("'line\nbreak'", "line\nbreak"),
        ("'ünï€ode'", "ünï€ode"),
        ("'$$; DROP TABLE canary; $$'", "$$; DROP TABLE canary; $$"),
    ];
    for (sql_value, stored) in values {
        let sql = format!("SET TENANT {sql_value} max_active = 3, max_tps = 0.5");
        let r = admin.simple_query(&sql).await;
        if let Err(e) = &r {
            panic!("{sql}: {}", support::citus::db_err(e));
        }
        let rows = up
            .query(
                "select max_active, max_tps::text from pgtenant.tenant_limits where tenant = $1",
                &[&stored],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{sql}: stored as {stored:?}?");
        assert_eq!(rows[0].get::<_, Option<String>>(0).as_deref(), Some("3"));
        let shown = admin.simple_query("SHOW TENANT LIMITS").await.unwrap();
        assert!(
            shown.iter().any(|m| matches!(m,
                tokio_postgres::SimpleQueryMessage::Row(r) if r.get("tenant") == Some(stored)
                    && r.get("max_active") == Some("3"))),
            "{sql}: not shown as {stored:?}"
        );
        admin
            .simple_query(&format!("RESET TENANT {sql_value}"))
            .await
            .unwrap();
    }
    up.simple_query("select count(*) from canary")
        .await
        .unwrap();
    let n: i64 = up
        .query_one("select count(*) from pgtenant.tenant_limits", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "every RESET removed its row");
    for bad in [
        "SET TENANT 1 max_tps = NaN",
        "SET TENANT 1 max_tps = inf",
        "SET TENANT 1 max_tps = 1e300",
        "SET TENANT 1 max_tps = -0.5",
        "SET TENANT 1 max_active = 4294967296",
        "SET TENANT 1 max_active = -1",
        "SET TENANT 1 max_active = '0%'",
        "SET TENANT 1 max_active = '101%'",
        "SET TENANT 1 statement_timeout = -1",
        "SET TENANT 1 statement_timeout = 1e9",
        "SET TENANT 1 statement_timeout = 'NaN'",
        "SET TENANT 1 statement_timeout = 86401",
        "SET TENANT 1 max_active = 1; DROP TABLE canary",
    ] {
        assert!(admin.simple_query(bad).await.is_err(), "{bad} accepted");
    }
    up.simple_query("select count(*) from canary")
        .await
        .unwrap();
}
