//! The run-time tenant limits' sync task (one per process): keeps a connection of its own
//! to the upstream's coordinator, LISTENs on [`store::CHANNEL`] and loads every override
//! into `ctx.tenant_limits`.
//!
//! Rules:
//! - Loads at start, at once on a notification (those that come within
//!   [`COALESCE`] of it are one load), and every `shard_map_refresh_interval` in case a
//!   notification was missed (a connection lost and opened again).
//! - A failure keeps the last good set (limits in force stay in force), is logged once per
//!   distinct error, and the task connects again after a backoff from [`RETRY_MIN`]
//!   doubling to [`RETRY_MAX`].
//! - The connection follows RELOAD: a changed `upstream` is connected to afresh.
//! - With `routing = "off"` there is no tenant, so no limit applies: the task keeps no
//!   connection (nor does the shard map's refresher).
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::store;
use crate::backend::ServerConn;
use crate::config::{Routing, Upstream};
use crate::context::Context;
use crate::pgschema;

pub const RETRY_MIN: Duration = Duration::from_millis(500);
pub const RETRY_MAX: Duration = Duration::from_secs(10);

/// Notifications this close after the one that woke the task are read with it.
pub const COALESCE: Duration = Duration::from_millis(20);

/// How many times in a row a load is read again because a console write overtook it.
const STALE_RETRIES: usize = 5;

/// Where the upstream's coordinator is, as the task connected to it.
fn place(u: &Upstream) -> (String, u16, String, String) {
    (u.host.clone(), u.port, u.database.clone(), u.user.clone())
}

pub fn spawn(ctx: Arc<Context>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { run(ctx, stop).await })
}

async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let mut conn: Option<(ServerConn, (String, u16, String, String))> = None;
    let mut retry = RETRY_MIN;
    // Rows skipped by the last load, warned about once (not at every load).
    let mut warned: HashSet<(String, String)> = HashSet::new();
    loop {
        let s = ctx.settings();
        if s.routing == Routing::Off {
            // No tenant anywhere: no limit can apply, and no connection is kept. Looked
            // at again after a RELOAD (within the period).
            if let Some((c, _)) = conn.take() {
                c.terminate();
            }
            ctx.tenant_limits.with_status(|st| st.connected = false);
            tokio::select! {
                _ = tokio::time::sleep(s.shard_map_refresh_interval) => continue,
                _ = stop.cancelled() => return,
            }
        }
        if conn.as_ref().is_some_and(|(_, p)| *p != place(&s.upstream)) {
            tracing::info!("upstream changed: tenant limits store connected afresh");
            if let Some((c, _)) = conn.take() {
                c.terminate();
            }
        }
        if conn.is_none() {
            match connect(&ctx).await {
                Ok(c) => conn = Some((c, place(&s.upstream))),
                Err(e) => {
                    failed(&ctx, e);
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = stop.cancelled() => return,
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            }
        }
        let Some((c, _)) = conn.as_mut() else {
            continue;
        };
        if let Err(e) = load(&ctx, c, &mut warned).await {
            failed(&ctx, e);
            conn = None;
            continue;
        }
        retry = RETRY_MIN;
        match wait(c, s.shard_map_refresh_interval, &stop).await {
            Wake::Load => {}
            Wake::Lost(e) => {
                failed(&ctx, e);
                conn = None;
            }
            Wake::Stop => {
                if let Some((c, _)) = conn.take() {
                    c.terminate();
                }
                return;
            }
        }
    }
}

/// A connection to the upstream's coordinator, LISTENing on the channel.
async fn connect(ctx: &Arc<Context>) -> Result<ServerConn, String> {
    let mut c = ctx
        .primary_cluster
        .open_own(ctx, "tenant limits", "the upstream's coordinator")
        .await?;
    pgschema::run(&mut c, &format!("LISTEN {}", store::CHANNEL))
        .await
        .map_err(|e| format!("LISTEN {}: {}", store::CHANNEL, pgschema::error_text(&e)))?;
    c.notified = false;
    Ok(c)
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

enum Wake {
    Load,
    Lost(String),
    Stop,
}

/// Until a notification (and those right after it), the period, or the stop.
async fn wait(c: &mut ServerConn, period: Duration, stop: &CancellationToken) -> Wake {
    if c.notified {
        c.notified = false;
        return Wake::Load;
    }
    let until = tokio::time::Instant::now() + period;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return Wake::Load,
            _ = stop.cancelled() => return Wake::Stop,
            f = c.conn.read_frame() => match f {
                Ok(Some(f)) if f.tag() == b'A' => break,
                Ok(Some(f)) if f.tag() == b'S' => c.note_parameter(f.body()),
                Ok(Some(f)) if f.tag() == b'E' => {
                    let why = crate::protocol::ErrorFields::parse(f.body())
                        .map(|e| format!("{} ({})", e.message, e.code))
                        .unwrap_or_else(|_| "an error".into());
                    return Wake::Lost(format!("the store's connection: {why}"));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Wake::Lost("the store's connection closed".into()),
            },
        }
    }
    // Notifications of a burst (a script setting many tenants) make one load.
    let until = tokio::time::Instant::now() + COALESCE;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return Wake::Load,
            f = c.conn.read_frame() => match f {
                Ok(Some(f)) if f.tag() == b'S' => c.note_parameter(f.body()),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Wake::Lost("the store's connection closed".into()),
            },
        }
    }
}
