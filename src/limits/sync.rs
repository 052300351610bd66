//! The run-time tenant limits' sync task (one per process): loads every override from the
//! store into `ctx.tenant_limits`.
//!
//! Rules:
//! - Loads at start, and whenever `ctx.tenant_limits.wake` fires: the shard-map
//!   refresher's connection to the upstream's coordinator (kept anyway, read every
//!   `shard_map_refresh_interval`) LISTENs on [`store::CHANNEL`] and wakes this task when a
//!   notification came, and when it opened a new connection (a notification sent while it
//!   was down is lost). So a change reaches every instance within about one refresh
//!   interval, without a connection of its own per instance (hundreds of sidecars) and
//!   without reading the whole table (up to 100,000 rows) on a timer. Wakes within
//!   [`COALESCE`] of each other are one load (a script setting many tenants).
//! - A load opens a connection, reads, and closes it.
//! - A failure keeps the last good set (limits in force stay in force), is logged once per
//!   distinct error, and is tried again after a backoff from [`RETRY_MIN`] doubling to
//!   [`RETRY_MAX`] (or at the next wake).
//! - With `routing = "off"` there is no tenant, so no limit applies: nothing is loaded
//!   (nor does the refresher keep a connection).
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::store;
use crate::backend::ServerConn;
use crate::config::Routing;
use crate::context::Context;
use crate::pgschema;

pub const RETRY_MIN: Duration = Duration::from_millis(500);
pub const RETRY_MAX: Duration = Duration::from_secs(10);

/// Notifications this close after the one that woke the task are read with it.
pub const COALESCE: Duration = Duration::from_millis(20);

/// How many times in a row a load is read again because a console write overtook it.
const STALE_RETRIES: usize = 5;

pub fn spawn(ctx: Arc<Context>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { run(ctx, stop).await })
}

async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let mut retry = RETRY_MIN;
    // Rows skipped by the last load, warned about once (not at every load).
    let mut warned: HashSet<(String, String)> = HashSet::new();
    let limits = &ctx.tenant_limits;
    loop {
        let s = ctx.settings();
        let next = if s.routing == Routing::Off {
            // No tenant anywhere: no limit can apply. Looked at again after a RELOAD
            // (within the period).
            limits.with_status(|st| st.connected = false);
            Some(s.shard_map_refresh_interval)
        } else {
            match load_once(&ctx, &mut warned).await {
                Ok(()) => {
                    retry = RETRY_MIN;
                    None
                }
                Err(e) => {
                    failed(&ctx, e);
                    let r = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    Some(r)
                }
            }
        };
        let timer = async {
            match next {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = limits.wake.notified() => {
                // The notifications of a burst make one load.
                tokio::select! {
                    _ = tokio::time::sleep(COALESCE) => {}
                    _ = stop.cancelled() => return,
                }
            }
            _ = timer => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Connect, load, close.
async fn load_once(
    ctx: &Arc<Context>,
    warned: &mut HashSet<(String, String)>,
) -> Result<(), String> {
    let mut c = ctx
        .primary_cluster
        .open_own(ctx, "tenant limits", "the upstream's coordinator")
        .await?;
    let r = load(ctx, &mut c, warned).await;
    c.terminate();
    r
}

/// Read every override and replace this instance's copy; warn of skipped rows not in
/// `warned` (which then holds this load's).
async fn load(
    ctx: &Arc<Context>,
    c: &mut ServerConn,
    warned: &mut HashSet<(String, String)>,
) -> Result<(), String> {
    let limits = &ctx.tenant_limits;
    let sql = store::load_sql();
    for _ in 0..STALE_RETRIES {
        let mark = limits.writes_mark();
        let rows = match pgschema::run(c, &sql).await {
            Ok(r) => r,
            // Nobody has set a limit yet: no table, no overrides.
            Err(e) if pgschema::is_undefined_table(&e) => Vec::new(),
            Err(e) => {
                return Err(format!(
                    "loading the tenant limits: {}",
                    pgschema::error_text(&e)
                ))
            }
        };
        let loaded = store::read_rows(rows);
        let before = limits.store_status();
        if loaded.truncated && !before.truncated {
            tracing::warn!(
                max = store::MAX_ROWS,
                "pgtenant.tenant_limits has more rows than pgtenant loads: the first {} by tenant are in force, the others are not",
                store::MAX_ROWS
            );
        }
        let skipped_now: HashSet<(String, String)> = loaded.skipped.iter().cloned().collect();
        for (tenant, why) in skipped_now.difference(warned) {
            tracing::warn!(tenant = %crate::logging::Escaped(tenant), error = %why, "pgtenant.tenant_limits: row skipped");
        }
        *warned = skipped_now;
        let (n, skipped, truncated) = (loaded.rows.len(), loaded.skipped.len(), loaded.truncated);
        if !limits.replace_rows(loaded.rows, mark) {
            // A SET TENANT here committed while this load read: its own row is in force;
            // read again so that this copy has it and everything else.
            continue;
        }
        if before.last_error.is_some() {
            tracing::info!(overrides = n, "tenant limits store reachable again");
        } else {
            tracing::debug!(overrides = n, skipped, "tenant limits loaded");
        }
        limits.with_status(|st| {
            st.connected = true;
            st.last_load = Some(SystemTime::now());
            st.last_error = None;
            st.rows_loaded = n;
            st.rows_skipped = skipped;
            st.truncated = truncated;
            st.loads += 1;
        });
        return Ok(());
    }
    // Written to again and again while it read: the writes are in force, and the next
    // notification loads again.
    Ok(())
}

fn failed(ctx: &Context, e: String) {
    ctx.tenant_limits.with_status(|st| {
        if st.last_error.as_deref() != Some(e.as_str()) {
            tracing::warn!(error = %e, "tenant limits store: load failed; keeping the last loaded overrides");
        }
        st.connected = false;
        st.last_error = Some(e);
    });
}
