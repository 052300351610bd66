//! Smoke test of tenant routing against the emulated Citus cluster: a few tenants, simple
//! and extended protocol, each answered by the worker that owns it.
use crate::support;

use support::citus::{CitusCluster, CitusOptions};

#[tokio::test(flavor = "multi_thread")]
async fn tenants_are_answered_by_their_owner() {
    let cluster = CitusCluster::start(CitusOptions {
        tenants: 50,
        ..CitusOptions::default()
    });
    let p = cluster.start_pgtenant(&[]);
    let c = support::connect(&p.url("app", "secret", "app")).await;
    let keys: Vec<String> = (1..=20).map(|i| cluster.tenant_key("orders", i)).collect();
    let owners = cluster.owner_ports("orders", &keys);
    for (k, owner) in keys.iter().zip(owners) {
        // Simple protocol, literal key.
        let rows = c
            .simple_query(&format!("select inet_server_port()::text, count(*)::text from orders where account_id = {k}"))
            .await
            .unwrap();
        let row = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        });
        let row = row.expect("a row");
        assert_eq!(row.get(0).unwrap(), owner.to_string(), "simple: tenant {k}");
        assert_ne!(
            row.get(1).unwrap(),
            "0",
            "simple: tenant {k} has rows on its owner"
        );
        // Extended protocol, parameter key.
        let id: i64 = k.parse().unwrap();
        let r = c
            .query_one(
                "select inet_server_port(), count(*) from orders where account_id = $1",
                &[&id],
            )
            .await
            .unwrap();
        let port: i32 = r.get(0);
        assert_eq!(port as u16, owner, "extended: tenant {k}");
        let n: i64 = r.get(1);
        assert!(n > 0);
    }
    // Multi-tenant: the coordinator.
    let r = c
        .query_one("select inet_server_port(), count(*) from orders", &[])
        .await
        .unwrap();
    let port: i32 = r.get(0);
    assert_eq!(port as u16, cluster.coordinator.port());
    // A transaction: BEGIN is held, the first statement decides, the rest follows.
    let k = keys[3].clone();
    let owner = cluster.owner_port("orders", &k);
    let rows = c.simple_query("begin").await.unwrap();
    assert!(!rows.is_empty());
    let r = c
        .query_one(
            &format!("select inet_server_port() from orders where account_id = {k} limit 1"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i32>(0) as u16, owner);
    let r = c.query_one("select inet_server_port()", &[]).await.unwrap();
    assert_eq!(
        r.get::<_, i32>(0) as u16,
        owner,
        "the transaction stays on its node"
    );
    c.simple_query("commit").await.unwrap();
}
