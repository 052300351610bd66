//! The HTTP endpoints against a running pgtenant: `/healthz`, `/readyz` (ready on a plain
//! PostgreSQL; not ready while draining or when the upstream is down) and `/metrics`
//! (Prometheus text that parses, counters that move with traffic).

use crate::support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{PgServer, Pgtenant, Signal, TempDir};

// ---------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client (no dev-dependency): GET, Connection: close, read to the end.
// ---------------------------------------------------------------------------------------

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

fn get_blocking(port: u16, path: &str) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok(Reply {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    })
}

async fn get(port: u16, path: &str) -> Reply {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || get_blocking(port, &path))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("GET 127.0.0.1:{port}: {e}"))
}

/// Poll `path` until `ok(reply)`; the last reply either way.
async fn get_until(port: u16, path: &str, ok: impl Fn(&Reply) -> bool) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = get(port, path).await;
        if ok(&r) || Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Prometheus text parsing: every sample line is `name{labels} value`.
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (k, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad labels {s:?}"));
        // Values here never hold an escaped quote.
        let (v, after) = after
            .split_once('"')
            .unwrap_or_else(|| panic!("bad labels {s:?}"));
        out.insert(k.trim_start_matches(',').to_string(), v.to_string());
        rest = after.trim_start_matches(',');
    }
    out
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                parse_labels(
                    l.strip_suffix('}')
                        .unwrap_or_else(|| panic!("unclosed labels in {line:?}")),
                ),
            ),
            None => (series, BTreeMap::new()),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        assert!(name.starts_with("pgtenant_"), "unprefixed metric {line:?}");
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// Sum of the samples of `name` whose labels include every `(k, v)` of `want`.
fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

async fn scrape(port: u16) -> Vec<Sample> {
    let r = get(port, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{}",
        r.headers
    );
    parse_metrics(&r.body)
}

fn start(pg: &PgServer, extra: &[&str]) -> (Pgtenant, u16) {
    let http = support::free_port();
    let addr = format!("127.0.0.1:{http}");
    let up = pg.url("app", "secret", "app");
    let mut args = vec!["run", "--upstream", &up, "--http-listen", &addr];
    args.extend_from_slice(extra);
    let p = Pgtenant::start(&args, &[]);
    assert!(
        support::wait_for_port(http, Duration::from_secs(10)),
        "no HTTP listener on {addr}\n{}",
        p.logs()
    );
    (p, http)
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_on_plain_postgres() {
    let pg = PgServer::start();
    let (p, http) = start(&pg, &[]);

    let h = get(http, "/healthz").await;
    assert_eq!((h.status, h.body.trim()), (200, "ok"), "{}", p.logs());
    let r = get_until(http, "/readyz", |r| r.status == 200).await;
    assert_eq!(r.status, 200, "/readyz: {}\n{}", r.body, p.logs());
    assert_eq!(r.body.trim(), "ok");
    assert_eq!(get(http, "/nope").await.status, 404);

    let before = scrape(http).await;
    for name in [
        "pgtenant_info",
        "pgtenant_ready",
        "pgtenant_client_connections",
        "pgtenant_routed_transactions_total",
        "pgtenant_plan_cache_hits_total",
        "pgtenant_shard_map_loaded",
        "pgtenant_node_up",
        "pgtenant_query_duration_seconds_bucket",
        "pgtenant_transaction_duration_seconds_count",
        "pgtenant_client_wait_seconds_sum",
    ] {
        assert!(
            before.iter().any(|s| s.name == name),
            "{name} missing from /metrics"
        );
    }
    assert_eq!(sum(&before, "pgtenant_ready", &[]), 1.0);
    assert_eq!(sum(&before, "pgtenant_citus_upstream", &[]), 0.0);
    // Per-tenant limits: nothing throttled, so the tenant classes are "other" alone, and
    // every limit event is exported from the start.
    for name in [
        "pgtenant_tenant_throttled_total",
        "pgtenant_tenant_throttle_wait_seconds_total",
    ] {
        let classes: Vec<&Sample> = before.iter().filter(|s| s.name == name).collect();
        assert_eq!(classes.len(), 1, "{name}");
        assert_eq!(classes[0].labels["tenant"], "other", "{name}");
        assert_eq!(classes[0].value, 0.0, "{name}");
    }
    for event in [
        "throttled_active",
        "throttled_rate",
        "rate_refused",
        "statement_timeout",
    ] {
        let n = before
            .iter()
            .filter(|s| {
                s.name == "pgtenant_tenant_limit_events_total" && s.labels["event"] == event
            })
            .count();
        assert_eq!(n, 1, "{event}");
    }
    // Every reason is exported for both destinations, from the start.
    assert!(
        before
            .iter()
            .filter(|s| s.name == "pgtenant_routed_transactions_total")
            .count()
            >= 34
    );
    let routed = |s: &[Sample]| {
        sum(
            s,
            "pgtenant_routed_transactions_total",
            &[("destination", "coordinator")],
        )
    };
    let waits = |s: &[Sample]| sum(s, "pgtenant_client_wait_seconds_count", &[]);

    let c = support::connect(&p.url("app", "secret", "app")).await;
    for i in 0..50 {
        c.simple_query(&format!("SELECT {i}")).await.unwrap();
    }
    let after = scrape(http).await;
    assert!(
        routed(&after) - routed(&before) >= 50.0,
        "routed transactions to the coordinator: {} -> {}",
        routed(&before),
        routed(&after)
    );
    assert!(
        waits(&after) - waits(&before) >= 50.0,
        "client waits: {} -> {}",
        waits(&before),
        waits(&after)
    );
    for h in [
        "pgtenant_query_duration_seconds_count",
        "pgtenant_transaction_duration_seconds_count",
    ] {
        let (b, a) = (sum(&before, h, &[]), sum(&after, h, &[]));
        assert!(a - b >= 50.0, "{h}: {b} -> {a}");
    }
    assert!(
        sum(&after, "pgtenant_queries_total", &[("node", "coordinator")])
            - sum(
                &before,
                "pgtenant_queries_total",
                &[("node", "coordinator")]
            )
            >= 50.0
    );
    assert!(sum(&after, "pgtenant_bytes_received_total", &[]) > 0.0);
    assert!(sum(&after, "pgtenant_client_connections", &[]) >= 1.0);
    assert!(
        sum(
            &after,
            "pgtenant_server_connections",
            &[("node", "coordinator")]
        ) >= 1.0,
        "no server connection counted"
    );
    assert!(
        sum(
            &after,
            "pgtenant_server_connects_total",
            &[("node", "coordinator")]
        ) >= 1.0
    );
    // Histogram buckets are cumulative and end at the count.
    let inf = sum(
        &after,
        "pgtenant_client_wait_seconds_bucket",
        &[("le", "+Inf")],
    );
    assert_eq!(inf, waits(&after));
    drop(c);
}

/// SIGTERM with a transaction open: /readyz turns 503 and says it is draining, /healthz
/// stays 200 (the kubelet must not kill a draining pod), and the process still exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_draining() {
    let pg = PgServer::start();
    let dir = TempDir::new("metrics-drain");
    let http = support::free_port();
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\nshutdown_timeout = 60\nhttp_listen = \"127.0.0.1:{http}\"\n",
        pg.url("app", "secret", "app")
    ));
    // The harness sets PGTENANT_HTTP_LISTEN (which beats the file): pass the same here.
    let addr = format!("127.0.0.1:{http}");
    let mut p = Pgtenant::start(
        &["run", "--config", cfg.to_str().unwrap()],
        &[("PGTENANT_HTTP_LISTEN", &addr)],
    );
    assert!(support::wait_for_port(http, Duration::from_secs(10)));
    let r = get_until(http, "/readyz", |r| r.status == 200).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let c = support::connect(&p.url("app", "secret", "app")).await;
    c.batch_execute("BEGIN; SELECT 1").await.unwrap();
    p.signal(Signal::Term);

    let r = get_until(http, "/readyz", |r| r.status == 503).await;
    assert_eq!(r.status, 503, "{}\n{}", r.body, p.logs());
    assert!(r.body.contains("draining"), "{}", r.body);
    let h = get(http, "/healthz").await;
    assert_eq!(h.status, 200, "{}", h.body);
    let m = scrape(http).await;
    assert_eq!(sum(&m, "pgtenant_draining", &[]), 1.0);
    assert_eq!(sum(&m, "pgtenant_ready", &[]), 0.0);

    c.batch_execute("COMMIT").await.unwrap();
    drop(c);
    let status = tokio::task::spawn_blocking(move || {
        let s = p.wait_exit(Duration::from_secs(20));
        (s, p)
    })
    .await
    .unwrap();
    let (status, p) = status;
    assert!(
        status.is_some_and(|s| s.success()),
        "pgtenant did not exit cleanly: {status:?}\n{}",
        p.logs()
    );
}

/// An upstream that does not answer: pgtenant starts, is alive, but not ready, and says
/// the coordinator is unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_when_the_upstream_is_down() {
    let dead = support::free_port();
    let http = support::free_port();
    let up = format!("postgres://app:secret@127.0.0.1:{dead}/app");
    let addr = format!("127.0.0.1:{http}");
    let p = Pgtenant::start(&["run", "--upstream", &up, "--http-listen", &addr], &[]);
    assert!(support::wait_for_port(http, Duration::from_secs(10)));

    assert_eq!(get(http, "/healthz").await.status, 200);
    let r = get_until(http, "/readyz", |r| r.body.contains("unreachable")).await;
    assert_eq!(r.status, 503, "{}\n{}", r.body, p.logs());
    assert!(
        r.body
            .contains(&format!("coordinator 127.0.0.1:{dead} unreachable")),
        "{}",
        r.body
    );
    let m = scrape(http).await;
    assert_eq!(sum(&m, "pgtenant_coordinator_reachable", &[]), 0.0);
    assert_eq!(sum(&m, "pgtenant_ready", &[]), 0.0);
}

/// A taken metrics port fails startup with a message naming it (a sidecar whose probes
/// cannot be answered must crash-loop visibly, not run unobserved), saying that it is the
/// HTTP listener and how to pick another address or turn it off (a second pgtenant on the
/// same host meets the default port first).
#[test]
fn a_taken_http_port_fails_startup() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let listen = format!("127.0.0.1:{}", support::free_port());
    let (status, logs) = support::pgtenant_run(
        &[
            "run",
            "--upstream",
            "postgres://app:secret@127.0.0.1:1/app",
            "--listen",
            &listen,
            "--http-listen",
            &addr,
        ],
        &[],
        Duration::from_secs(10),
    );
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains(&format!(
            "cannot listen on {addr} for /metrics, /healthz and /readyz (the HTTP listener)"
        )),
        "{logs}"
    );
    for hint in [
        "Address already in use",
        "choose another address with --http-listen (PGTENANT_HTTP_LISTEN, or http_listen in the config file)",
        "or \"\" to turn it off",
    ] {
        assert!(logs.contains(hint), "no {hint:?} in:\n{logs}");
    }
}

/// An (emulated) Citus upstream: ready once the shard map is loaded, the shard-map
/// metrics describe it, 30 tenant-keyed transactions raise the worker counter for
/// reason `tenant_key` by 30, and a stopped worker shows as down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn citus_shard_map_routing_and_worker_down() {
    use support::citus::{CitusCluster, CitusOptions};
    let mut cluster = CitusCluster::start(CitusOptions {
        tenants: 40,
        ..CitusOptions::default()
    });
    let http = support::free_port();
    let addr = format!("127.0.0.1:{http}");
    let up = cluster.upstream_url();
    let p = Pgtenant::start(
        &[
            "run",
            "--upstream",
            &up,
            "--http-listen",
            &addr,
            "--pool-size",
            "4",
        ],
        &[],
    );
    assert!(support::wait_for_port(http, Duration::from_secs(10)));
    let r = get_until(http, "/readyz", |r| r.status == 200).await;
    assert_eq!(r.status, 200, "{}\n{}", r.body, p.logs());

    let before = scrape(http).await;
    assert_eq!(sum(&before, "pgtenant_citus_upstream", &[]), 1.0);
    assert_eq!(sum(&before, "pgtenant_shard_map_loaded", &[]), 1.0);
    assert!(sum(&before, "pgtenant_shard_map_version", &[]) >= 1.0);
    assert!(sum(&before, "pgtenant_shard_map_shards", &[]) >= 1.0);
    assert!(sum(&before, "pgtenant_shard_map_age_seconds", &[]) < 60.0);
    assert!(
        sum(&before, "pgtenant_node_up", &[("role", "worker")]) >= 2.0,
        "workers not listed as up"
    );
    let to_workers = |s: &[Sample]| {
        sum(
            s,
            "pgtenant_routed_transactions_total",
            &[("destination", "worker"), ("reason", "tenant_key")],
        )
    };

    let c = support::connect(&p.url("app", "secret", "app")).await;
    for i in 1..=30 {
        let k = cluster.tenant_key("orders", i);
        c.simple_query(&format!(
            "select count(*) from orders where account_id = {k}"
        ))
        .await
        .unwrap();
    }
    // A transaction of three statements on one tenant: its statements count under the
    // transaction's route.
    let k = cluster.tenant_key("orders", 7);
    c.batch_execute("begin").await.unwrap();
    c.batch_execute(&format!("select 1 from orders where account_id = {k}"))
        .await
        .unwrap();
    c.batch_execute("select 2").await.unwrap();
    c.batch_execute("select 3").await.unwrap();
    c.batch_execute("commit").await.unwrap();
    let after = scrape(http).await;
    assert!(
        to_workers(&after) - to_workers(&before) >= 30.0,
        "tenant_key transactions to workers: {} -> {}",
        to_workers(&before),
        to_workers(&after)
    );
    let statements = |s: &[Sample]| {
        sum(
            s,
            "pgtenant_routed_statements_total",
            &[("destination", "worker"), ("reason", "tenant_key")],
        )
    };
    assert!(
        statements(&after) - statements(&before) >= 30.0 + 3.0,
        "tenant_key statements to workers: {} -> {}",
        statements(&before),
        statements(&after)
    );
    assert!(
        sum(&after, "pgtenant_plan_cache_hits_total", &[]) >= 1.0,
        "the same statement shape 30 times never hit the plan cache"
    );

    // Stop a worker and send its tenants' statements: it is marked down.
    cluster.stop_worker(0);
    let down_port = cluster.group_port(cluster.worker_group(0));
    let keys = cluster.tenant_keys("orders");
    let owners = cluster.owner_ports("orders", &keys);
    let k = keys
        .iter()
        .zip(owners)
        .find(|(_, o)| *o == down_port)
        .map(|(k, _)| k.clone())
        .expect("a tenant on worker 0");
    let c2 = support::connect(&p.url("app", "secret", "app")).await;
    let _ = c2
        .simple_query(&format!(
            "select count(*) from orders where account_id = {k}"
        ))
        .await;
    let m = scrape(http).await;
    assert!(
        sum(&m, "pgtenant_workers_down", &[]) >= 1.0,
        "no worker down after stopping one\n{}",
        p.logs()
    );
    assert!(
        sum(&m, "pgtenant_node_up", &[("role", "worker")])
            < sum(&before, "pgtenant_node_up", &[("role", "worker")])
    );
    drop((c, c2));
}

/// `pgtenant_server_errors_total` counts relayed ErrorResponses by SQLSTATE class, and
/// `pgtenant_clients` tells logging-in, active, waiting and idle clients apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_by_class_and_clients_by_state() {
    let pg = PgServer::start();
    let (p, http) = start(&pg, &["--pool-size", "1", "--pool-mode", "transaction"]);
    let r = get_until(http, "/readyz", |r| r.status == 200).await;
    assert_eq!(r.status, 200, "/readyz: {}\n{}", r.body, p.logs());
    let url = p.url("app", "secret", "app");
    let errors =
        |s: &[Sample], class: &str| sum(s, "pgtenant_server_errors_total", &[("class", class)]);
    let clients = |s: &[Sample], state: &str| sum(s, "pgtenant_clients", &[("state", state)]);

    let before = scrape(http).await;
    let c1 = support::connect(&url).await;
    for _ in 0..3 {
        let e = c1.simple_query("SELECT 1/0").await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("22012"), "{e}");
    }
    let e = c1
        .simple_query("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42P01"), "{e}");
    c1.simple_query("SELECT 1").await.unwrap();

    // The answer is written before the connection goes back (as PgBouncer does): c1 may
    // count as active a moment after it has it.
    let after = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = scrape(http).await;
            if clients(&s, "active") == 0.0 || Instant::now() >= deadline {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(errors(&after, "22") - errors(&before, "22"), 3.0);
    assert_eq!(errors(&after, "42") - errors(&before, "42"), 1.0);
    assert_eq!(
        sum(&after, "pgtenant_server_errors_total", &[])
            - sum(&before, "pgtenant_server_errors_total", &[]),
        4.0,
        "only the four errors are counted"
    );
    // c1 is between transactions: idle, holding no server.
    assert_eq!(
        clients(&after, "active"),
        0.0,
        "{:?}",
        after
            .iter()
            .filter(|s| s.name == "pgtenant_clients")
            .collect::<Vec<_>>()
    );
    assert_eq!(clients(&after, "idle"), 1.0);
    assert_eq!(clients(&after, "waiting"), 0.0);
    assert_eq!(clients(&after, "login"), 0.0);

    // c2 holds the only server connection in a transaction; c3 waits for it; a raw TCP
    // connection that never sends a startup packet is logging in.
    let c2 = support::connect(&url).await;
    c2.simple_query("BEGIN; SELECT 1").await.unwrap();
    let c3 = support::connect(&url).await;
    let waiter = tokio::spawn(async move { c3.simple_query("SELECT 2").await.map(|_| c3) });
    let raw = std::net::TcpStream::connect(("127.0.0.1", p.port())).unwrap();
    let s = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = scrape(http).await;
            if (clients(&s, "waiting") >= 1.0 && clients(&s, "login") >= 1.0)
                || Instant::now() >= deadline
            {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let states: Vec<_> = ["login", "active", "waiting", "idle"]
        .iter()
        .map(|st| (*st, clients(&s, st)))
        .collect();
    assert_eq!(
        states,
        vec![
            ("login", 1.0),
            ("active", 1.0),
            ("waiting", 1.0),
            ("idle", 1.0)
        ],
        "c1 idle, c2 active, c3 waiting, raw logging in\n{}",
        p.logs()
    );
    assert_eq!(sum(&s, "pgtenant_client_connections", &[]), 4.0);

    c2.simple_query("COMMIT").await.unwrap();
    let c3 = waiter.await.unwrap().unwrap();
    drop(raw);
    // A client has its answer a moment before its connection goes back and it counts as
    // idle (the answer is written first, as PgBouncer does): wait for the states to settle.
    let s = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = scrape(http).await;
            let settled = clients(&s, "login") == 0.0
                && clients(&s, "active") + clients(&s, "waiting") == 0.0;
            if settled || Instant::now() >= deadline {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(clients(&s, "active") + clients(&s, "waiting"), 0.0);
    assert_eq!(clients(&s, "idle"), 3.0);
    assert_eq!(clients(&s, "login"), 0.0);
    drop((c1, c2, c3));
}
