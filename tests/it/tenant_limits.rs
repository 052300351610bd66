//! Per-tenant limits against the emulated Citus cluster (`crate::limits`): one pool of 10
//! server connections on a worker, one tenant sending 200 concurrent slow transactions
//! (`pg_sleep`) and 50 other tenants of the same worker sending short ones, run three
//! ways — no limit, fair queueing only (`tenant_max_active = "100%"`), and
//! `tenant_max_active = 3` — with the short ones' latency measured each time; then a
//! tenant's statement_timeout and max_tps.
use crate::support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::citus::{CitusCluster, CitusOptions};
use support::{Pgtenant, TempDir};

const HEAVY: usize = 200;
const LIGHT: usize = 50;
const SLEEP: f64 = 0.2;

/// pgtenant in front of `cluster` (transaction pooling, trust, `app` an admin) with
/// `settings` and its metrics port.
pub(crate) fn start_with(
    cluster: &CitusCluster,
    dir: &TempDir,
    name: &str,
    settings: &str,
) -> (Pgtenant, u16) {
    let http = support::free_port();
    let cfg = dir.write(
        &format!("{name}.toml"),
        &format!(
            "upstream = \"{}\"\npool_mode = \"transaction\"\nmax_client_conn = 600\n\
             admin_users = [\"app\"]\nauth_type = \"trust\"\n{settings}\n",
            cluster.upstream_url()
        ),
    );
    let p = Pgtenant::start_with_metrics(&cfg, http);
    support::citus::wait_for_shard_map(&p);
    (p, http)
}

/// [`start_with`] a pool of 10 and `query_wait_timeout = 5`, then `extra`.
fn start(cluster: &CitusCluster, dir: &TempDir, name: &str, extra: &str) -> (Pgtenant, u16) {
    start_with(
        cluster,
        dir,
        name,
        &format!("pool_size = 10\nquery_wait_timeout = 5\n{extra}"),
    )
}

/// `/metrics` lines of `name` (with their labels).
async fn metric_lines(http: u16, name: &str) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", http))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body.lines()
        .filter(|l| l.starts_with(name))
        .map(str::to_string)
        .collect()
}

/// Two numeric columns of `tenant`'s row in an admin SHOW (None: no row).
pub(crate) async fn tenant_row(
    admin: &tokio_postgres::Client,
    show: &str,
    tenant: &str,
    [a, b]: [&str; 2],
) -> Option<(u64, u64)> {
    let msgs = admin.simple_query(show).await.unwrap();
    let num = |r: &tokio_postgres::SimpleQueryRow, c: &str| {
        r.get(c).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get("tenant") == Some(tenant) => {
            Some((num(r, a), num(r, b)))
        }
        _ => None,
    })
}

/// SHOW TENANTS of `tenant`: (throttled, waiting).
async fn shown(admin: &tokio_postgres::Client, tenant: &str) -> Option<(u64, u64)> {
    tenant_row(admin, "SHOW TENANTS", tenant, ["throttled", "waiting"]).await
}

/// The first `n` tenants of `orders` whose rows live on worker 0.
pub(crate) fn tenants_on_worker0(cluster: &CitusCluster, n: usize) -> Vec<String> {
    let port = cluster.workers[0].port();
    let keys: Vec<String> = cluster
        .tenant_keys("orders")
        .into_iter()
        .filter(|k| cluster.owner_port("orders", k) == port)
        .collect();
    assert!(keys.len() >= n, "{} tenants on worker 0", keys.len());
    keys[..n].to_vec()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

struct Outcome {
    light_p50: Duration,
    light_p99: Duration,
    light_count: usize,
    light_errors: Vec<String>,
    heavy_ok: usize,
    heavy_wait_timeouts: usize,
    heavy_other_errors: Vec<String>,
    /// Most of the heavy tenant's statements seen running at once on the worker.
    heavy_max_running: i64,
    /// Most of its transactions SHOW TENANTS showed waiting, and its throttled count after.
    heavy_max_waiting_shown: u64,
    heavy_throttled_shown: u64,
    took: Duration,
}

async fn scenario(cluster: &CitusCluster, p: &Pgtenant, heavy: &str, light: &[String]) -> Outcome {
    let url = p.url("app", "secret", "app");
    // Every client connects first; the burst starts together.
    let mut heavy_clients = Vec::new();
    for _ in 0..HEAVY {
        heavy_clients.push(support::connect(&url).await);
    }
    let mut light_clients = Vec::new();
    for _ in 0..LIGHT {
        light_clients.push(support::connect(&url).await);
    }
    let worker = cluster.app_client(&cluster.workers[0]).await;
    let admin = support::connect(&p.url("app", "secret", "pgtenant")).await;
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let heavy_sql = format!(
        "select pg_sleep({SLEEP}), count(*) from orders where account_id = {heavy} /* heavy */"
    );
    let heavy_tasks: Vec<_> = heavy_clients
        .into_iter()
        .map(|c| {
            let sql = heavy_sql.clone();
            tokio::spawn(async move {
                c.simple_query(&sql)
                    .await
                    .map(|_| ())
                    .map_err(|e| support::citus::db_err(&e))
            })
        })
        .collect();
    // The light tenants start once the heavy burst is queued.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let light_tasks: Vec<_> = light_clients
        .into_iter()
        .zip(light.iter().cloned())
        .map(|(c, key)| {
            let done = done.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = Vec::new();
                let sql = format!("select count(*) from orders where account_id = {key}");
                while !done.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match c.simple_query(&sql).await {
                        Ok(_) => lat.push(t.elapsed()),
                        Err(e) => errors.push(support::citus::db_err(&e)),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (lat, errors)
            })
        })
        .collect();
    // Sample the heavy tenant's statements running on the worker, and what SHOW TENANTS
    // says of it.
    let sampler = {
        let done = done.clone();
        let heavy = heavy.to_string();
        tokio::spawn(async move {
            let mut max = 0i64;
            let mut waiting = 0u64;
            while !done.load(Ordering::Relaxed) {
                let r = worker
                    .query_one(
                        "select count(*) from pg_stat_activity where state = 'active' and query like '%/* heavy */%' and pid <> pg_backend_pid()",
                        &[],
                    )
                    .await
                    .unwrap();
                max = max.max(r.get::<_, i64>(0));
                if let Some((_, w)) = shown(&admin, &heavy).await {
                    waiting = waiting.max(w);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            (max, waiting, admin)
        })
    };
    let mut heavy_ok = 0;
    let mut heavy_wait_timeouts = 0;
    let mut heavy_other_errors = Vec::new();
    for t in heavy_tasks {
        match t.await.unwrap() {
            Ok(()) => heavy_ok += 1,
            Err(e) if e.contains("query_wait_timeout") => heavy_wait_timeouts += 1,
            Err(e) => heavy_other_errors.push(e),
        }
    }
    done.store(true, Ordering::Relaxed);
    let took = started.elapsed();
    let mut lat = Vec::new();
    let mut light_errors = Vec::new();
    for t in light_tasks {
        let (l, e) = t.await.unwrap();
        lat.extend(l);
        light_errors.extend(e);
    }
    let (heavy_max_running, heavy_max_waiting_shown, admin) = sampler.await.unwrap();
    let heavy_throttled_shown = shown(&admin, heavy).await.map_or(0, |(t, _)| t);
    Outcome {
        light_p50: percentile(&mut lat, 0.50),
        light_p99: percentile(&mut lat, 0.99),
        light_count: lat.len(),
        light_errors,
        heavy_ok,
        heavy_wait_timeouts,
        heavy_other_errors,
        heavy_max_running,
        heavy_max_waiting_shown,
        heavy_throttled_shown,
        took,
    }
}

fn report(label: &str, o: &Outcome) {
    eprintln!(
        "{label}: light p50 {:.1} ms, p99 {:.1} ms over {} transactions, {} errors; heavy {} done, {} query_wait_timeout, {} other errors, at most {} running at once, SHOW TENANTS: up to {} waiting, {} throttled; {:.1} s",
        o.light_p50.as_secs_f64() * 1e3,
        o.light_p99.as_secs_f64() * 1e3,
        o.light_count,
        o.light_errors.len(),
        o.heavy_ok,
        o.heavy_wait_timeouts,
        o.heavy_other_errors.len(),
        o.heavy_max_running,
        o.heavy_max_waiting_shown,
        o.heavy_throttled_shown,
        o.took.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_heavy_tenant_does_not_starve_fifty_light_ones() {
    let cluster = CitusCluster::start(CitusOptions {
        tenants: 400,
        shard_count: 8,
        ..CitusOptions::default()
    });
    let dir = TempDir::new("tenant-limits");
    let keys = tenants_on_worker0(&cluster, LIGHT + 1);
    let (heavy, light) = (keys[0].clone(), keys[1..].to_vec());

    let off = {
        let (p, _) = start(&cluster, &dir, "off", "");
        scenario(&cluster, &p, &heavy, &light).await
    };
    report("no tenant limit", &off);
    let fair = {
        let (p, _) = start(&cluster, &dir, "fair", "tenant_max_active = \"100%\"");
        scenario(&cluster, &p, &heavy, &light).await
    };
    report("fair queueing only (tenant_max_active = 100%)", &fair);
    let (limited, throttled_metric) = {
        let (p, http) = start(&cluster, &dir, "limited", "tenant_max_active = 3");
        let o = scenario(&cluster, &p, &heavy, &light).await;
        (
            o,
            metric_lines(http, "pgtenant_tenant_throttled_total").await,
        )
    };
    report("tenant_max_active = 3", &limited);

    for (label, o) in [("off", &off), ("fair", &fair), ("limited", &limited)] {
        assert!(
            o.light_errors.is_empty(),
            "{label}: light tenants got errors: {:?}",
            &o.light_errors[..o.light_errors.len().min(5)]
        );
        assert!(
            o.heavy_other_errors.is_empty(),
            "{label}: the heavy tenant got errors other than query_wait_timeout: {:?}",
            &o.heavy_other_errors[..o.heavy_other_errors.len().min(5)]
        );
        assert_eq!(o.heavy_ok + o.heavy_wait_timeouts, HEAVY, "{label}");
        assert!(o.light_count >= LIGHT, "{label}: every light tenant ran");
    }
    // Without a limit the heavy tenant holds every connection and the short
    // transactions queue behind its backlog.
    assert!(off.heavy_max_running >= 8, "{}", off.heavy_max_running);
    assert!(
        off.light_p99 > Duration::from_millis(1000),
        "{:?}",
        off.light_p99
    );
    // With one: never more than 3 of its transactions at once, and the others' p99
    // stays near their own run time.
    assert!(
        limited.heavy_max_running <= 3,
        "{}",
        limited.heavy_max_running
    );
    assert!(
        limited.light_p99 < Duration::from_millis(500),
        "{:?}",
        limited.light_p99
    );
    assert!(
        limited.light_p99 * 4 < off.light_p99,
        "{:?} vs {:?}",
        limited.light_p99,
        off.light_p99
    );
    // Its own transactions complete at its share, the rest end at query_wait_timeout.
    assert!(limited.heavy_ok >= 30, "{}", limited.heavy_ok);
    // Seen: SHOW TENANTS showed its queue and counts its throttled transactions; /metrics
    // lists it by name among the most throttled.
    assert!(
        limited.heavy_max_waiting_shown >= 50,
        "{}",
        limited.heavy_max_waiting_shown
    );
    assert!(
        limited.heavy_throttled_shown >= 50,
        "{}",
        limited.heavy_throttled_shown
    );
    assert!(
        throttled_metric
            .iter()
            .any(|l| l.contains(&format!("tenant=\"{heavy}\""))),
        "{throttled_metric:?}"
    );
    assert_eq!(off.heavy_throttled_shown, 0);
    // Fair queueing alone: a light tenant waits for a turn, not for the whole backlog.
    assert!(
        fair.light_p99 * 2 < off.light_p99,
        "{:?} vs {:?}",
        fair.light_p99,
        off.light_p99
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenants_statement_timeout_and_rate_apply_to_it_only() {
    let cluster = CitusCluster::start(CitusOptions {
        tenants: 50,
        shard_count: 8,
        ..CitusOptions::default()
    });
    let dir = TempDir::new("tenant-limits-time");
    let keys = cluster.tenant_keys("orders");
    let (slow, other, rated) = (&keys[0], &keys[1], &keys[2]);
    let (p, _) = start(
        &cluster,
        &dir,
        "time",
        &format!(
            "[tenant_limits]\n\"{slow}\" = {{ statement_timeout = \"300ms\" }}\n\"{rated}\" = {{ max_tps = 10 }}\n"
        ),
    );
    let url = p.url("app", "secret", "app");
    let c = support::connect(&url).await;

    // The tenant's statement is cancelled with PostgreSQL's own error.
    let t = Instant::now();
    let e = c
        .simple_query(&format!(
            "select pg_sleep(3), count(*) from orders where account_id = {slow}"
        ))
        .await
        .expect_err("cancelled");
    let took = t.elapsed();
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "57014");
    assert_eq!(db.message(), "canceling statement due to statement timeout");
    assert!(
        db.detail().unwrap_or("").contains("statement_timeout"),
        "{db:?}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    // The connection goes on.
    c.simple_query(&format!(
        "select count(*) from orders where account_id = {slow}"
    ))
    .await
    .unwrap();
    // A client's own SET cannot lift it: inside a transaction block too.
    c.simple_query("begin").await.unwrap();
    c.simple_query(&format!(
        "select count(*) from orders where account_id = {slow}"
    ))
    .await
    .unwrap();
    c.simple_query("set local statement_timeout = 0")
        .await
        .unwrap();
    let e = c
        .simple_query(&format!(
            "select pg_sleep(3), count(*) from orders where account_id = {slow}"
        ))
        .await
        .expect_err("cancelled in a block");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("57014"));
    c.simple_query("rollback").await.unwrap();
    // Another tenant's slow statement is not touched.
    c.simple_query(&format!(
        "select pg_sleep(0.6), count(*) from orders where account_id = {other}"
    ))
    .await
    .unwrap();

    // max_tps = 10: a burst of 10, then 10 per second; tokens that would come after
    // query_wait_timeout (5 s) are refused at once with 53400.
    let clients = {
        let mut v = Vec::new();
        for _ in 0..100 {
            v.push(support::connect(&url).await);
        }
        v
    };
    let refused = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let sql = format!("select count(*) from orders where account_id = {rated}");
            let refused = refused.clone();
            tokio::spawn(async move {
                match c.simple_query(&sql).await {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        let d = e.as_db_error().cloned();
                        match d {
                            Some(d)
                                if d.code().code() == "53400"
                                    && d.message().contains("rate limit") =>
                            {
                                refused.fetch_add(1, Ordering::Relaxed);
                                Ok(())
                            }
                            _ => Err(support::citus::db_err(&e)),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let took = t.elapsed();
    let refused = refused.load(Ordering::Relaxed);
    eprintln!(
        "max_tps = 10, 100 at once: {} ran in {:.2} s, {refused} refused",
        100 - refused,
        took.as_secs_f64()
    );
    // 10 at once + 10/s for 5 s: about 60 ran, the rest refused.
    assert!((50..=70).contains(&(100 - refused)), "{refused} refused");
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(8),
        "{took:?}"
    );
    // Another tenant is not rate limited.
    let t = Instant::now();
    for _ in 0..50 {
        c.simple_query(&format!(
            "select count(*) from orders where account_id = {other}"
        ))
        .await
        .unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

/// `n` transactions of `tenant` at once, each sleeping `secs`: (how long they took, the
/// most seen running at once on `server`).
async fn burst(
    url: &str,
    cluster: &CitusCluster,
    tenant: &str,
    n: usize,
    secs: f64,
) -> (Duration, i64) {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(support::connect(url).await);
    }
    let owner = cluster.owner_port("orders", tenant);
    let server = if owner == cluster.workers[0].port() {
        &cluster.workers[0]
    } else {
        &cluster.workers[1]
    };
    let watch = cluster.app_client(server).await;
    let marker = format!("/* burst {tenant} */");
    let t = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let sql = format!("select pg_sleep({secs}), count(*) from orders where account_id = {tenant} {marker}");
            tokio::spawn(async move { c.simple_query(&sql).await.map(|_| ()) })
        })
        .collect();
    let mut max = 0;
    while tasks.iter().any(|t| !t.is_finished()) {
        let r = watch
            .query_one(
                "select count(*) from pg_stat_activity where state = 'active' and query like $1 and pid <> pg_backend_pid()",
                &[&format!("%{marker}%")],
            )
            .await
            .unwrap();
        max = max.max(r.get::<_, i64>(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    (t.elapsed(), max)
}

#[tokio::test(flavor = "multi_thread")]
async fn overrides_set_at_run_time_apply_to_the_next_transaction() {
    let cluster = CitusCluster::start(CitusOptions {
        tenants: 20,
        shard_count: 8,
        ..CitusOptions::default()
    });
    let dir = TempDir::new("tenant-limits-runtime");
    let keys = cluster.tenant_keys("orders");
    let (p, _) = start(&cluster, &dir, "runtime", "");
    let url = p.url("app", "secret", "app");
    let admin = support::connect(&p.url("app", "secret", "pgtenant")).await;
    let t = &keys[4];

    // No limit: 6 at once.
    let (took, max) = burst(&url, &cluster, t, 6, 0.4).await;
    eprintln!("no limit: {:.2} s, {max} at once", took.as_secs_f64());
    assert!(max >= 5, "{max}");
    // SET TENANT: the next transactions hold one connection at a time.
    admin
        .simple_query(&format!("SET TENANT {t} max_active = 1"))
        .await
        .unwrap();
    let (took, max) = burst(&url, &cluster, t, 6, 0.4).await;
    eprintln!("max_active = 1: {:.2} s, {max} at once", took.as_secs_f64());
    assert_eq!(max, 1);
    assert!(took >= Duration::from_millis(2300), "{took:?}");
    // Another tenant is not limited by it.
    let (_, max) = burst(&url, &cluster, &keys[5], 6, 0.4).await;
    assert!(max >= 5, "{max}");
    // The console's SET of the default applies to every tenant; the tenant's own
    // override stays over it.
    admin
        .simple_query("SET tenant_max_active = 2")
        .await
        .unwrap();
    let (_, max) = burst(&url, &cluster, &keys[5], 6, 0.4).await;
    assert_eq!(max, 2);
    let (_, max) = burst(&url, &cluster, t, 4, 0.3).await;
    assert_eq!(max, 1);
    // RESET TENANT: back to the default.
    admin
        .simple_query(&format!("RESET TENANT {t}"))
        .await
        .unwrap();
    let (_, max) = burst(&url, &cluster, t, 6, 0.4).await;
    assert_eq!(max, 2);
}

/// A client pinned to its server connection (a temp table) inside a tenant's transaction:
/// the tenant's claim ends with that transaction — the connection counts for no tenant and
/// the client's next statements (another tenant's) run without the first one's timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_connection_carries_no_tenant_claim_past_its_transaction() {
    let cluster = CitusCluster::start(CitusOptions {
        tenants: 20,
        shard_count: 4,
        ..CitusOptions::default()
    });
    let dir = TempDir::new("tenant-limits-pinned");
    let keys = cluster.tenant_keys("orders");
    let (t, other) = (&keys[0], &keys[1]);
    let (p, _) = start(
        &cluster,
        &dir,
        "pinned",
        &format!(
            "[tenant_limits]\n\"{t}\" = {{ max_active = 1, statement_timeout = \"300ms\" }}\n"
        ),
    );
    let c = support::connect(&p.url("app", "secret", "app")).await;
    let admin = support::connect(&p.url("app", "secret", "pgtenant")).await;
    for sql in [
        "begin".to_string(),
        format!("select count(*) from orders where account_id = {t}"),
        "create temp table pin(a int)".to_string(),
        "commit".to_string(),
    ] {
        c.simple_query(&sql).await.unwrap();
    }
    // Pinned now; the next statements are the same client's, of another tenant.
    c.simple_query(&format!(
        "select pg_sleep(0.6), count(*) from orders where account_id = {other}"
    ))
    .await
    .expect("not cancelled by the first tenant's statement_timeout");
    c.simple_query("select count(*) from pin").await.unwrap();
    let rows = admin.simple_query("SHOW TENANT LIMITS").await.unwrap();
    let active = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) if r.get("tenant") == Some(t.as_str()) => {
            r.get("active").map(str::to_string)
        }
        _ => None,
    });
    assert_eq!(active.as_deref(), Some("0"));
    // And the tenant itself still gets its one connection.
    let c2 = support::connect(&p.url("app", "secret", "app")).await;
    c2.simple_query(&format!(
        "select count(*) from orders where account_id = {t}"
    ))
    .await
    .unwrap();
}
