//! Attacks on the per-tenant limits (`crate::limits`): what one tenant's limits must never
//! do to another client's request, and counts that must always come back.
use crate::support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::citus::{CitusCluster, CitusOptions};
use support::{Pgtenant, TempDir};

fn start(cluster: &CitusCluster, dir: &TempDir, name: &str, extra: &str) -> Pgtenant {
    let cfg = dir.write(
        &format!("{name}.toml"),
        &format!(
            "upstream = \"{}\"\npool_mode = \"transaction\"\n\
             max_client_conn = 600\nadmin_users = [\"app\"]\n\
             auth_type = \"trust\"\n{extra}\n",
            cluster.upstream_url()
        ),
    );
    let p = Pgtenant::start(&["run", "--config", cfg.to_str().unwrap()], &[]);
    support::citus::wait_for_shard_map(&p);
    p
}

/// Two tenants whose rows live on the same worker.
fn two_on_one_worker(cluster: &CitusCluster, n: usize) -> Vec<String> {
    let port = cluster.workers[0].port();
    let keys: Vec<String> = cluster
        .tenant_keys("orders")
        .into_iter()
        .filter(|k| cluster.owner_port("orders", k) == port)
        .collect();
    assert!(keys.len() >= n, "{} tenants on worker 0", keys.len());
    keys[..n].to_vec()
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
    let keys = two_on_one_worker(&cluster, 2);
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
    let keys = two_on_one_worker(&cluster, 1);
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
        // A statement far shorter than the limit.
        if let Err(e) = a
            .simple_query(&format!(
                "select pg_sleep(0.005), count(*) from orders where account_id = {slow}"
            ))
            .await
        {
            wrongly_cancelled.push(support::citus::db_err(&e));
        }
        a.simple_query("rollback").await.unwrap();
    }
    eprintln!(
        "{blocks} blocks, {first_timeouts} first statements timed out, {} short ones cancelled",
        wrongly_cancelled.len()
    );
    assert!(first_timeouts > 0, "no timeout fired");
    assert!(
        wrongly_cancelled.is_empty(),
        "short statements cancelled: {wrongly_cancelled:?}"
    );
}
