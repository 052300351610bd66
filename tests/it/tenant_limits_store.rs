//! Run-time tenant limits shared by every instance (`src/limits/store.rs`, `sync.rs`,
//! `src/admin/tenant_limits.rs`): two pgtenant instances on one upstream; SET TENANT and
//! RESET TENANT on one show in the other's SHOW TENANT LIMITS within a bound, and at once
//! in its own; the configuration's overrides; bad input; access; the store lost and back.
use crate::support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use support::citus::{CitusCluster, CitusOptions};
use support::{PgServer, Pgtenant, TempDir};

/// How soon another instance must see a change (it is told by NOTIFY; measured well
/// under 100 ms on an idle machine).
const PROPAGATION_BOUND: Duration = Duration::from_secs(2);

/// psql against an instance's admin console: (success, stdout, stderr). Unaligned, `|`
/// separated, no footer.
fn psql(p: &Pgtenant, user: &str, password: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new(support::pg_bin("psql"))
        .args(["-X", "-A", "-F", "|", "-P", "footer=off", "-h", "127.0.0.1"])
        .args([
            "-p",
            &p.port().to_string(),
            "-U",
            user,
            "-d",
            "pgtenant",
            "-c",
            sql,
        ])
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

/// As the admin user; must succeed. Returns (stdout, stderr: the notices).
fn admin(p: &Pgtenant, sql: &str) -> (String, String) {
    let (ok, out, err) = psql(p, "app", "secret", sql);
    assert!(ok, "{sql}: {err}\n--- logs ---\n{}", p.logs());
    (out, err)
}

/// As the admin user; must fail. Returns the error text.
fn admin_err(p: &Pgtenant, sql: &str) -> String {
    let (ok, out, err) = psql(p, "app", "secret", sql);
    assert!(!ok, "{sql} succeeded: {out}");
    err
}

type Row = HashMap<String, String>;

/// SHOW TENANT LIMITS as tenant → row (column → value; NULL is "").
fn limits(p: &Pgtenant) -> HashMap<String, Row> {
    let (out, _) = admin(p, "SHOW TENANT LIMITS");
    parse(&out)
}

fn parse(out: &str) -> HashMap<String, Row> {
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split('|').collect();
    assert_eq!(
        header[..7],
        [
            "tenant",
            "max_active",
            "max_tps",
            "statement_timeout",
            "source",
            "set_by",
            "set_at"
        ],
        "{out}"
    );
    lines
        .map(|l| {
            let r: Row = header
                .iter()
                .zip(l.split('|'))
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect();
            (r["tenant"].clone(), r)
        })
        .collect()
}

/// Poll `p`'s SHOW TENANT LIMITS until `ok` holds; how long it took (panics after
/// `limit`).
fn wait_until(
    p: &Pgtenant,
    limit: Duration,
    what: &str,
    ok: impl Fn(&HashMap<String, Row>) -> bool,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let l = limits(p);
        if ok(&l) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "{what}: not within {limit:?}; SHOW TENANT LIMITS: {l:?}\n--- logs ---\n{}",
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn citus_cluster() -> CitusCluster {
    CitusCluster::start(CitusOptions {
        tenants: 10,
        shard_count: 4,
        ..CitusOptions::default()
    })
}

fn start(pg: &PgServer, dir: &TempDir, name: &str, extra: &str) -> Pgtenant {
    let cfg = dir.config_file(&format!(
        "upstream = \"{}\"\npool_size = 8\nadmin_users = [\"app\"]\ninstance_name = \"{name}\"\n\
         {extra}\n[users.monitor]\npassword = \"monpw\"\n",
        pg.url("app", "secret", "app")
    ));
    let p = Pgtenant::start(
        &[
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--stats-users",
            "monitor",
        ],
        &[],
    );
    // The sync task has loaded once (an empty store: no table yet).
    wait_until(&p, Duration::from_secs(10), "first load", |_| true);
    p
}

/// The store's rows, straight from the upstream: tenant → (max_active, max_tps,
/// statement_timeout_ms, set_by).
fn store_rows(pg: &PgServer) -> Vec<String> {
    let out = pg.psql(&[
        "-At",
        "-d",
        "app",
        "-c",
        "SELECT tenant || '|' || coalesce(max_active, '') || '|' || coalesce(max_tps::text, '') \
         || '|' || coalesce(statement_timeout_ms::text, '') || '|' || set_by \
         FROM pgtenant.tenant_limits ORDER BY tenant",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("does not exist"), "{err}");
        return Vec::new();
    }
    text.lines().map(String::from).collect()
}

#[test]
fn set_and_reset_reach_every_instance() {
    // Tenants (and so their limits) exist on a Citus upstream: the emulated one.
    let cluster = citus_cluster();
    let pg = &cluster.coordinator;
    let (da, db) = (TempDir::new("limits-a"), TempDir::new("limits-b"));
    let a = start(
        pg,
        &da,
        "a",
        "tenant_max_active = \"25%\"\ntenant_statement_timeout = \"30s\"\n\
         [tenant_limits]\n\"7\" = { max_active = 2 }\n",
    );
    let b = start(pg, &db, "b", "");

    // The defaults first, then the configured override.
    let l = limits(&a);
    assert_eq!(l.len(), 2, "{l:?}");
    let star = &l["*"];
    assert_eq!(
        (
            star["max_active"].as_str(),
            star["max_tps"].as_str(),
            star["statement_timeout"].as_str(),
            star["source"].as_str()
        ),
        ("25%", "0", "30s", "default")
    );
    let seven = &l["7"];
    assert_eq!(
        (
            seven["max_active"].as_str(),
            seven["max_tps"].as_str(),
            seven["source"].as_str(),
            seven["set_by"].as_str()
        ),
        ("2", "", "config", "")
    );
    assert_eq!(limits(&b).len(), 1, "b has no configured override");

    // SET on A: at once on A, within the bound on B.
    let (_, notices) = admin(
        &a,
        "SET TENANT '042' max_active = 8, statement_timeout = 2s",
    );
    assert!(notices.is_empty(), "{notices}");
    let l = limits(&a);
    let r = &l["42"];
    assert_eq!(
        (
            r["max_active"].as_str(),
            r["max_tps"].as_str(),
            r["statement_timeout"].as_str(),
            r["source"].as_str(),
            r["set_by"].as_str()
        ),
        ("8", "", "2s", "runtime", "app on a")
    );
    assert!(r["set_at"].ends_with(" UTC"), "{r:?}");
    let took = wait_until(&b, PROPAGATION_BOUND, "42 on b", |l| {
        l.get("42").is_some_and(|r| r["max_active"] == "8")
    });
    eprintln!("SET TENANT on a seen by b after {took:?}");
    assert_eq!(store_rows(pg), ["42|8||2000|app on a"]);

    // B's change to a configured tenant of A: key by key over the file.
    admin(&b, "set tenant 7 max_tps=10,statement_timeout=500ms");
    let took = wait_until(&a, PROPAGATION_BOUND, "7 on a", |l| {
        l["7"]["source"] == "runtime+config"
    });
    eprintln!("SET TENANT on b seen by a after {took:?}");
    let l = limits(&a);
    let seven = &l["7"];
    assert_eq!(
        (
            seven["max_active"].as_str(),
            seven["max_tps"].as_str(),
            seven["statement_timeout"].as_str(),
            seven["set_by"].as_str()
        ),
        ("2", "10", "500ms", "app on b")
    );

    // One key back to the default; then the whole override.
    admin(&a, "RESET TENANT 42 max_active");
    let l = limits(&a);
    assert_eq!(
        (
            l["42"]["max_active"].as_str(),
            l["42"]["statement_timeout"].as_str()
        ),
        ("", "2s")
    );
    wait_until(&b, PROPAGATION_BOUND, "42's max_active reset on b", |l| {
        l["42"]["max_active"].is_empty()
    });
    admin(&a, "SET TENANT 42 statement_timeout = default");
    assert!(!limits(&a).contains_key("42"), "no key left: no override");
    admin(&a, "SET TENANT 43 max_tps = 1.5");
    admin(&a, "RESET TENANT 43");
    assert!(!limits(&a).contains_key("43"));
    let took = wait_until(&b, PROPAGATION_BOUND, "42 and 43 gone on b", |l| {
        !l.contains_key("42") && !l.contains_key("43")
    });
    eprintln!("RESET TENANT on a seen by b after {took:?}");
    // B's runtime override of 7 reset from A: A keeps its configured one.
    let (_, notices) = admin(&a, "RESET TENANT 7");
    assert!(notices.is_empty(), "{notices}");
    let l = limits(&a);
    assert_eq!(
        (l["7"]["source"].as_str(), l["7"]["max_tps"].as_str()),
        ("config", "")
    );
    let (_, notices) = admin(&a, "RESET TENANT 7");
    assert!(
        notices.contains(
            "tenant 7 had no run-time override; its override from the configuration file"
        ),
        "{notices}"
    );
    wait_until(&b, PROPAGATION_BOUND, "7 gone on b", |l| {
        !l.contains_key("7")
    });
    assert!(store_rows(pg).is_empty());

    // Bad input: a clear error, nothing written anywhere.
    admin(&a, "SET TENANT 5 max_active = 1");
    let before = store_rows(pg);
    let long = "x".repeat(201);
    for (sql, needle) in [
        ("SET TENANT 5 color = 1", "unknown tenant limit 'color'"),
        ("SET TENANT 5 max_active = lots", "max_active: expected"),
        (
            "SET TENANT 5 max_active = 2, max_tps = -1",
            "max_tps: expected",
        ),
        (
            "SET TENANT 5 statement_timeout = 3days",
            "statement_timeout",
        ),
        ("SET TENANT '' max_active = 1", "the tenant value is empty"),
        (
            &format!("SET TENANT '{long}' max_active = 1"),
            "201 characters; at most 200",
        ),
        (
            "SET TENANT 5 max_active = 1 max_tps = 2",
            "usage: SET TENANT",
        ),
        ("SET TENANT 5 max_active = 1, max_active = 2", "given twice"),
        ("RESET TENANT 5 color", "unknown tenant limit 'color'"),
        ("RESET TENANTS 5", "usage: RESET TENANT"),
    ] {
        let err = admin_err(&a, sql);
        assert!(err.contains(needle), "{sql}: {err}");
    }
    assert_eq!(store_rows(pg), before);
    assert_eq!(limits(&a)["5"]["max_active"], "1");

    // A stats user reads, and may not write.
    let (ok, out, err) = psql(&a, "monitor", "monpw", "SET TENANT 5 max_active = 9");
    assert!(!ok && err.contains("admin access needed"), "{out}{err}");
    let (ok, _, err) = psql(&a, "monitor", "monpw", "RESET TENANT 5");
    assert!(!ok && err.contains("admin access needed"), "{err}");
    let (ok, out, err) = psql(&a, "monitor", "monpw", "SHOW TENANT LIMITS");
    assert!(ok, "{err}");
    assert_eq!(parse(&out)["5"]["max_active"], "1");
    assert_eq!(store_rows(pg), before);

    // A row written by hand that does not read is skipped with a warning; the others stay.
    let out = pg.psql(&[
        "-At",
        "-d",
        "app",
        "-c",
        "INSERT INTO pgtenant.tenant_limits (tenant, max_active, set_by) VALUES ('6', 'lots', 'hand'); \
         NOTIFY pgtenant_tenant_limits, '6'",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.wait_for_log(
        "pgtenant.tenant_limits: row skipped",
        Duration::from_secs(5),
    );
    let (out, notices) = admin(&b, "SHOW TENANT LIMITS");
    let l = parse(&out);
    assert!(!l.contains_key("6") && l["5"]["max_active"] == "1", "{l:?}");
    assert!(
        notices.contains("1 rows of pgtenant.tenant_limits were skipped"),
        "{notices}"
    );
}

#[test]
fn the_store_lost_and_back() {
    let mut cluster = citus_cluster();
    let pg = &mut cluster.coordinator;
    let (da, db) = (TempDir::new("limits-a"), TempDir::new("limits-b"));
    let a = start(pg, &da, "a", "");
    let b = start(pg, &db, "b", "");
    admin(&a, "SET TENANT 1 max_active = 3");
    wait_until(&b, PROPAGATION_BOUND, "1 on b", |l| l.contains_key("1"));

    // Fast (clean) stop: the test servers commit asynchronously, so an immediate stop
    // could lose the last commits.
    pg.stop_fast();
    let t0 = Instant::now();
    let err = admin_err(&a, "SET TENANT 2 max_active = 4");
    eprintln!(
        "SET TENANT with the store down failed after {:?}",
        t0.elapsed()
    );
    assert!(
        err.contains("SET TENANT 2: nothing changed: connecting to the tenant limits store"),
        "{err}"
    );
    let err = admin_err(&a, "RESET TENANT 1");
    assert!(err.contains("RESET TENANT 1: nothing changed"), "{err}");
    // Both keep the last set; SHOW says the store is out of reach once the task knows.
    for p in [&a, &b] {
        let t0 = Instant::now();
        loop {
            let (out, notices) = admin(p, "SHOW TENANT LIMITS");
            let l = parse(&out);
            assert_eq!(l["1"]["max_active"], "3", "{l:?}");
            assert!(!l.contains_key("2"), "{l:?}");
            if notices.contains("the tenant limits store is unreachable") {
                assert!(notices.contains("those last loaded, at "), "{notices}");
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "no notice: {notices}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    b.wait_for_log("tenant limits store: load failed", Duration::from_secs(5));

    // Back: the sync tasks connect again (backoff at most 10 s) and load; a change made
    // meanwhile straight in the store is seen.
    std::thread::sleep(Duration::from_secs(2));
    pg.start_again();
    let back = Instant::now();
    let out = pg.psql(&[
        "-At",
        "-d",
        "app",
        "-c",
        "INSERT INTO pgtenant.tenant_limits (tenant, max_tps, set_by) VALUES ('3', 7, 'hand')",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = wait_until(
        &b,
        Duration::from_secs(15),
        "3 on b after the restart",
        |l| l.contains_key("3"),
    );
    eprintln!("b loaded again {took:?} after the store came back");
    b.wait_for_log(
        "tenant limits store reachable again",
        Duration::from_secs(1),
    );
    let (_, notices) = admin(&b, "SHOW TENANT LIMITS");
    assert!(notices.is_empty(), "{notices}");
    admin(&a, "SET TENANT 2 max_active = 4");
    let took = wait_until(&b, PROPAGATION_BOUND, "2 on b", |l| l.contains_key("2"));
    eprintln!(
        "after the restart ({:?} ago), SET TENANT on a seen by b after {took:?}",
        back.elapsed()
    );
    wait_until(&a, Duration::from_secs(15), "3 on a", |l| {
        l.get("3").is_some_and(|r| r["max_tps"] == "7")
    });
}
