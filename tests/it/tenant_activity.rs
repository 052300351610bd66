//! SHOW TENANT ACTIVITY and SHOW QUIET TENANTS against the emulated Citus cluster: traffic
//! for a few tenants through pgtenant, then the counts (never under the truth, within the
//! error bound) and the quiet listing (idle tenants first, the candidates read from the
//! coordinator), through a real admin connection (tokio-postgres, simple query).
use crate::support;

use std::collections::HashMap;

use support::citus::{wait_for_shard_map, CitusCluster, CitusOptions};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Rows of an admin SHOW as maps column → value (NULL: absent).
async fn show(c: &Client, sql: &str) -> Result<Vec<HashMap<String, String>>, String> {
    let msgs = c
        .simple_query(sql)
        .await
        .map_err(|e| support::citus::db_err(&e))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .filter_map(|(i, col)| Some((col.name().to_string(), r.get(i)?.to_string())))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

fn num(r: &HashMap<String, String>, col: &str) -> u64 {
    r[col].parse().unwrap_or_else(|_| panic!("{col} in {r:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn activity_counts_and_the_quietest_tenants() {
    let cluster = CitusCluster::start(CitusOptions {
        tenants: 30,
        shard_count: 8,
        ..CitusOptions::default()
    });
    let p = cluster.start_pgtenant(&["--admin-users", "app"]);
    wait_for_shard_map(&p);
    let app = support::connect(&p.url("app", "secret", "app")).await;
    let admin = support::connect(&p.url("app", "secret", "pgtenant")).await;

    // Tenants 1..=5 of `orders` run 10, 20, … 50 transactions; 6..=30 none.
    let keys = cluster.tenant_keys("orders");
    let mut truth = HashMap::new();
    for (i, k) in keys[..5].iter().enumerate() {
        let n = 10 * (i as u64 + 1);
        for _ in 0..n {
            app.simple_query(&format!(
                "select count(*) from orders where account_id = {k}"
            ))
            .await
            .unwrap();
        }
        truth.insert(k.clone(), n);
    }

    // SHOW TENANT ACTIVITY: ≥ the truth, within the bound, with the home node.
    for k in &keys[..8] {
        let t = truth.get(k).copied().unwrap_or(0);
        let rows = show(&admin, &format!("SHOW TENANT ACTIVITY {k} TABLE orders"))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        let r = &rows[0];
        assert_eq!(r["tenant"], *k);
        assert!(r["tables"].contains("orders"), "{r:?}");
        for w in ["1m", "1h", "24h"] {
            let (n, bound) = (
                num(r, &format!("xacts_{w}")),
                num(r, &format!("error_bound_{w}")),
            );
            assert!(
                n >= t && n <= t + bound,
                "tenant {k}, {w}: {n} for {t} (bound {bound})"
            );
        }
        let home = show(&admin, &format!("SHOW TENANT {k} orders"))
            .await
            .unwrap();
        assert_eq!(r["node"], home[0]["node"], "{r:?} {home:?}");
        if t > 0 {
            assert!(r.contains_key("last_seen"), "{r:?}");
        }
    }
    // Without TABLE: every colocation group whose type takes the value (bigint, int and
    // text here; not uuid).
    let all = show(&admin, &format!("show tenant activity {}", keys[0]))
        .await
        .unwrap();
    assert!(all.len() >= 2, "{all:?}");
    let mine = all.iter().filter(|r| num(r, "xacts_1h") >= 10).count();
    assert!(mine >= 1, "{all:?}");
    let e = show(&admin, "show tenant activity 1 table nosuch")
        .await
        .unwrap_err();
    assert!(e.contains("nosuch is not a distributed table"), "{e}");

    // SHOW QUIET TENANTS: every tenant of orders (read from the coordinator), the 25 idle
    // ones first, then 1..=5 by activity.
    let q = show(&admin, "SHOW QUIET TENANTS TABLE orders")
        .await
        .unwrap();
    assert_eq!(q.len(), keys.len(), "{q:?}");
    let idle: Vec<&String> = keys[5..].iter().collect();
    for r in &q[..25] {
        assert!(idle.contains(&&r["tenant"]), "{r:?} is not idle");
        assert!(num(r, "xacts") <= num(r, "error_bound"), "{r:?}");
        assert_eq!(
            (r["window"].as_str(), r["colocation"].as_str()),
            ("24h", "1")
        );
    }
    let busiest: Vec<&str> = q[25..].iter().map(|r| r["tenant"].as_str()).collect();
    let want: Vec<&str> = keys[..5].iter().map(String::as_str).collect();
    assert_eq!(busiest, want, "{q:?}");
    for r in &q[25..] {
        let t = truth[&r["tenant"]];
        assert!(num(r, "xacts") >= t && num(r, "xacts") <= t + num(r, "error_bound"));
        assert!(
            r.contains_key("last_seen") && r.contains_key("node"),
            "{r:?}"
        );
    }
    // Ties by value: the idle ones (estimate 0 but for a collision) in text order.
    let zeros: Vec<&str> = q
        .iter()
        .filter(|r| num(r, "xacts") == 0)
        .map(|r| r["tenant"].as_str())
        .collect();
    let mut sorted = zeros.clone();
    sorted.sort();
    assert_eq!(zeros, sorted);

    let few = show(&admin, "show quiet tenants window 5m limit 3 table orders;")
        .await
        .unwrap();
    assert_eq!(few.len(), 3, "{few:?}");
    assert!(few
        .iter()
        .all(|r| idle.contains(&&r["tenant"]) && r["window"] == "5m"));

    // Several colocation groups: TABLE is needed; unknown and reference tables refused.
    let e = show(&admin, "show quiet tenants").await.unwrap_err();
    assert!(e.contains("TABLE"), "{e}");
    let e = show(&admin, "show quiet tenants table nosuch")
        .await
        .unwrap_err();
    assert!(e.contains("not a distributed table"), "{e}");
    let e = show(&admin, "show quiet tenants table plans")
        .await
        .unwrap_err();
    assert!(e.contains("reference table"), "{e}");
    // Other tables' columns and types: text keys of events.
    let ev = show(&admin, "show quiet tenants table events limit 1000")
        .await
        .unwrap();
    assert_eq!(ev.len(), cluster.tenant_keys("events").len(), "{ev:?}");

    // A uuid written in upper case (and an integer with leading zeros) is the tenant the
    // database lists: the values are counted as PostgreSQL prints them.
    let org = cluster.tenant_key("devices", 11);
    for _ in 0..7 {
        app.simple_query(&format!(
            "select count(*) from devices where org = '{}'",
            org.to_uppercase()
        ))
        .await
        .unwrap();
    }
    let dev = show(&admin, "show quiet tenants table devices limit 1000")
        .await
        .unwrap();
    let last = dev.last().unwrap();
    assert_eq!(last["tenant"], org, "{dev:?}");
    assert!(num(last, "xacts") >= 7, "{last:?}");
    let padded = format!("00{}", keys[4]);
    let r = show(
        &admin,
        &format!("show tenant activity {padded} table orders"),
    )
    .await
    .unwrap();
    assert_eq!(r[0]["tenant"], keys[4]);
    assert!(num(&r[0], "xacts_24h") >= 50, "{r:?}");

    // While one SHOW QUIET TENANTS waits on the coordinator (the table locked there), the
    // other console clients and the sessions go on, and a second one is refused.
    let locker = cluster.app_client(&cluster.coordinator).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let slow = tokio::spawn({
        let url = p.url("app", "secret", "pgtenant");
        async move {
            let c = support::connect(&url).await;
            show(&c, "show quiet tenants table orders limit 2").await
        }
    });
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                   AND application_name = 'pgtenant quiet tenants'";
    // (Not on `locker`: pg_stat_activity is read once per transaction.)
    let watcher = cluster.app_client(&cluster.coordinator).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let n: i64 = watcher.query_one(waiting, &[]).await.unwrap().get(0);
        if n == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && !slow.is_finished(),
            "the read never waited on the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let other = support::connect(&p.url("app", "secret", "pgtenant")).await;
    assert!(show(&other, "show pools").await.is_ok());
    assert!(show(&admin, &format!("show tenant activity {}", keys[0]))
        .await
        .is_ok());
    let e = show(&other, "show quiet tenants table orders")
        .await
        .unwrap_err();
    assert!(e.contains("another SHOW QUIET TENANTS is running"), "{e}");
    app.simple_query(&format!(
        "select count(*) from orders where account_id = {}",
        keys[0]
    ))
    .await
    .unwrap();
    assert!(!slow.is_finished());
    locker.batch_execute("COMMIT").await.unwrap();
    let done = slow.await.unwrap().unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(show(&other, "show quiet tenants table orders limit 1")
        .await
        .is_ok());
}
