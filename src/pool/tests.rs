use super::*;

fn pools() -> Arc<Pools> {
    let s = crate::config::load(
        None,
        &crate::config::Overrides {
            upstream: Some("postgres://app:secret@127.0.0.1:1/app".into()),
            ..Default::default()
        },
    )
    .unwrap();
    Pools::new(Arc::new(ArcSwap::from_pointee(s)), None)
}

fn key(db: &str) -> PoolKey {
    PoolKey {
        node: Node {
            name: "coordinator".into(),
            host: "127.0.0.1".into(),
            port: 1,
        },
        database: db.into(),
        dbname: db.into(),
        user: "app".into(),
        forced: false,
    }
}

#[test]
fn unused_pools_are_removed() {
    let pools = pools();
    let idle = Duration::from_secs(60);
    let t0 = Instant::now();

    // Never connected (a database the server refused): removed at the first pass
    // that finds it unused, with its database counter.
    drop(pools.get(&key("nope")));
    assert_eq!((pools.len(), pools.dbs.len()), (1, 1));
    assert_eq!(pools.remove_unused(idle, t0), 1);
    assert_eq!((pools.len(), pools.dbs.len()), (0, 0));

    // Held by someone (a client session): kept, however long.
    let held = pools.get(&key("held"));
    assert_eq!(pools.remove_unused(idle, t0 + idle * 10), 0);
    assert_eq!(pools.len(), 1);
    drop(held);

    // Connected once: kept until it has been unused for `idle`.
    let used = pools.get(&key("used"));
    used.stats.connects.store(1, Ordering::Relaxed);
    let other = pools.get(&key("used2"));
    other.stats.connects.store(1, Ordering::Relaxed);
    drop(used);
    assert_eq!(
        pools.remove_unused(idle, t0),
        1,
        "'held' goes (never connected)"
    );
    assert_eq!(pools.remove_unused(idle, t0 + idle / 2), 0);
    // 'used2' is held meanwhile: its clock starts only once it is let go.
    assert_eq!(pools.remove_unused(idle, t0 + idle), 1, "'used' goes");
    let again = pools.get(&key("used2"));
    assert!(Arc::ptr_eq(&again, &other));
    drop((other, again));
    assert_eq!(pools.remove_unused(idle, t0 + idle * 2), 0);
    assert_eq!(pools.remove_unused(idle, t0 + idle * 3), 1);
    assert!(pools.is_empty() && pools.dbs.is_empty());

    // pool_idle_timeout = 0: pools are kept.
    drop(pools.get(&key("kept")));
    assert_eq!(pools.remove_unused(Duration::ZERO, t0), 0);
    assert_eq!(pools.len(), 1);

    // A fresh pool after removal, sharing nothing with the old one; the node's
    // counters keep what the removed pools counted.
    let a = pools.get(&key("again"));
    a.stats.connects.store(5, Ordering::Relaxed);
    a.stats.query_count.add(7);
    drop(a);
    assert_eq!(pools.remove_unused(idle, t0), 1, "'kept' goes");
    assert_eq!(pools.remove_unused(idle, t0 + idle), 1);
    assert_eq!(
        pools
            .get(&key("again"))
            .stats
            .connects
            .load(Ordering::Relaxed),
        0
    );
    let retired = pools.retired();
    assert_eq!(retired.len(), 1, "one entry per node");
    assert_eq!(&*retired[0].0, "coordinator");
    assert_eq!(
        (retired[0].1.connects, retired[0].1.queries),
        (1 + 1 + 5, 7)
    );
}
