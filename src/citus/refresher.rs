//! Keeps the shard map fresh: detects a Citus coordinator, checks a cheap fingerprint every
//! `shard_map_refresh_interval` (or when woken), and loads and swaps a new map when it
//! changed. Never blocks a statement: readers keep whatever map is current.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::cluster::Cluster;
use super::shard_map::{self, NodeResolver, DETECT_SQL, FINGERPRINT_SQL};
use crate::backend::ServerConn;
use crate::config::Routing;
use crate::context::Context;

static VERSION: AtomicU64 = AtomicU64::new(0);

/// How often a non-Citus upstream is checked again for a Citus catalog.
const NOT_CITUS_RECHECK: Duration = Duration::from_secs(60);

/// Keep `cluster`'s map fresh until `stop`.
pub fn spawn_refresher(
    ctx: Arc<Context>,
    cluster: Arc<Cluster>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn: Option<ServerConn> = None;
        let map = &cluster.map;
        loop {
            let s = ctx.settings();
            let interval = s.shard_map_refresh_interval;
            let mut wait = interval;
            if s.routing != Routing::Off {
                let r = refresh_once(&ctx, &cluster, &mut conn).await;
                if let Some(c) = conn.as_mut().filter(|c| c.notified) {
                    // A tenant limit changed (SET/RESET TENANT on some instance).
                    c.notified = false;
                    ctx.tenant_limits.wake.notify_one();
                }
                if r.is_ok() && cluster.is_primary() {
                    ctx.health.upstream_checked(map.get().is_some());
                }
                if !map.is_citus.load(Ordering::Relaxed) {
                    // A plain PostgreSQL: no connection kept; look again now and then (and
                    // on every reload) in case it becomes a Citus coordinator.
                    conn = None;
                    wait = interval.max(NOT_CITUS_RECHECK);
                }
                if let Err(e) = r {
                    if conn.is_some() && cluster.is_primary() {
                        // The connection that hears of tenant limit changes is lost: the
                        // limits' sync task finds out how the store is (and keeps trying).
                        ctx.tenant_limits.wake.notify_one();
                    }
                    conn = None;
                    map.refresh_failures.fetch_add(1, Ordering::Relaxed);
                    let msg = e.to_string();
                    let mut last = map.last_error.lock().unwrap_or_else(|p| p.into_inner());
                    if last.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(entry = cluster.entry.as_deref().unwrap_or(""), error = %msg, "shard map refresh failed; keeping the last good map");
                    }
                    *last = Some(msg);
                }
            } else {
                map.current.store(None);
                conn = None;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = map.wake.notified() => {}
                _ = stop.cancelled() => return,
            }
        }
    })
}

/// One check: connect if needed, detect Citus, compare the fingerprint, load on change.
async fn refresh_once(
    ctx: &Arc<Context>,
    cluster: &Cluster,
    conn: &mut Option<ServerConn>,
) -> Result<(), String> {
    let s = ctx.settings();
    let map = &cluster.map;
    if conn.is_none() {
        // A connection of its own, outside every pool: reading metadata must not create
        // pools (min_pool_size would then open connections nobody asked for).
        let l = cluster.login(ctx, &s);
        let params =
            ctx.pools
                .own_connect_params(&l.node, &l.dbname, &l.user, l.credential, "shard map");
        let c = tokio::time::timeout(Duration::from_secs(30), crate::backend::connect(&params))
            .await
            .map_err(|_| "connecting to the coordinator timed out".to_string())?
            .map_err(|e| format!("connecting to the coordinator: {e}"))?;
        let mut c = c;
        if cluster.is_primary() {
            // Run-time tenant limits (`limits::sync`): this connection, already kept and
            // read every interval, hears of their changes; a new connection may have
            // missed some, so they are loaded again.
            if let Err(e) = c
                .run_internal(&format!("LISTEN {}", crate::limits::store::CHANNEL))
                .await
            {
                tracing::debug!(error = %e, "LISTEN for tenant limits failed");
            }
            c.notified = false;
            ctx.tenant_limits.wake.notify_one();
        }
        *conn = Some(c);
    }
    let Some(c) = conn.as_mut() else {
        return Ok(());
    };
    if map.get().is_some() {
        // The usual case: one round trip per check (the fingerprint; the catalog was
        // there last time). If it fails, the detection below tells why.
        if let Ok(rows) = c.query_rows(FINGERPRINT_SQL).await {
            let fp = rows
                .first()
                .and_then(|r| r.first())
                .cloned()
                .flatten()
                .unwrap_or_default();
            return load_if_changed(ctx, cluster, c, fp).await;
        }
    }
    let detected = c.query_rows(DETECT_SQL).await.map_err(|e| e.to_string())?;
    let is_citus = matches!(detected.first().and_then(|r| r.first()), Some(Some(v)) if v == "true");
    let was = map.is_citus.swap(is_citus, Ordering::Relaxed);
    if !is_citus {
        if was || map.get().is_some() {
            tracing::warn!(
                entry = cluster.entry.as_deref().unwrap_or(""),
                "the server no longer has a Citus catalog: routing off"
            );
        }
        map.current.store(None);
        if s.routing == Routing::On {
            return Err("routing = on but the upstream has no Citus catalog (pg_dist_*)".into());
        }
        return Ok(());
    }
    let fp = c
        .query_rows(FINGERPRINT_SQL)
        .await
        .map_err(|e| e.to_string())?;
    let fp = fp
        .first()
        .and_then(|r| r.first())
        .cloned()
        .flatten()
        .unwrap_or_default();
    load_if_changed(ctx, cluster, c, fp).await
}

/// Load and swap a new map unless the current one has this fingerprint.
async fn load_if_changed(
    ctx: &Arc<Context>,
    cluster: &Cluster,
    c: &mut ServerConn,
    fp: String,
) -> Result<(), String> {
    let s = ctx.settings();
    let handle = &cluster.map;
    if let Some(m) = handle.get() {
        if m.fingerprint == fp {
            *handle.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return Ok(());
        }
    }
    let coordinator = cluster.coordinator(ctx);
    let prefix = cluster.worker_prefix();
    let resolver = NodeResolver {
        rewrites: &s.node_addresses,
        coordinator: &coordinator,
        worker_prefix: &prefix,
    };
    let version = VERSION.fetch_add(1, Ordering::Relaxed) + 1;
    let started = std::time::Instant::now();
    let map = shard_map::load(c, version, fp, &resolver)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        entry = cluster.entry.as_deref().unwrap_or(""),
        version,
        tables = map.tables.len(),
        shards = map.shard_count(),
        nodes = map.nodes.len(),
        load_ms = started.elapsed().as_millis() as u64,
        "shard map loaded"
    );
    let nodes: Vec<_> = map.nodes.iter().map(|(_, n)| n.clone()).collect();
    handle.current.store(Some(Arc::new(map)));
    ctx.pools.close_idle_on_nodes_except(&prefix, &nodes);
    *handle.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    Ok(())
}
