//! RELOAD, SHUTDOWN, RECONNECT [db], KILL [db], KILL_CLIENT id, SET key = value.
use std::sync::Arc;

use super::{AdminError, Reply};
use crate::context::Context;

/// Re-read the configuration as SIGHUP does. The file is checked first so that the
/// operator sees why a reload is refused (the running settings stay).
pub fn reload(ctx: &Arc<Context>) -> Result<Reply, AdminError> {
    let current = ctx.settings();
    if let Err(e) = crate::config::reload(&current, &ctx.admin.overrides) {
        return Err(AdminError::new(format!(
            "reload failed, keeping the running configuration: {}",
            e.errors.join("; ")
        )));
    }
    crate::server::reload(ctx, &ctx.admin.overrides);
    Ok(Reply::Tag("RELOAD"))
}

/// Drain and exit, as SIGTERM: idle clients leave now, busy ones after their transaction.
pub fn shutdown(ctx: &Arc<Context>) -> Result<Reply, AdminError> {
    tracing::info!("SHUTDOWN from the admin console");
    crate::frontend::shut_down_sessions(ctx);
    Ok(Reply::Tag("SHUTDOWN"))
}

/// Close idle server connections (of one database, or all); the next transaction opens
/// fresh ones. Connections lent to clients are marked close_needed: they finish their
/// transaction and are closed when they come back (WAIT_CLOSE waits for that).
pub fn reconnect(ctx: &Arc<Context>, db: Option<&str>) -> Result<Reply, AdminError> {
    for p in ctx.pools.all() {
        if db.is_none_or(|db| *p.key.database == *db) {
            p.mark_close_needed();
        }
    }
    match db {
        Some(db) => {
            ctx.pools.close_idle_entry(db);
            ctx.auth_query.close_database(db);
        }
        None => {
            ctx.pools.close_idle();
            ctx.auth_query.close_all();
        }
    }
    Ok(Reply::Tag("RECONNECT"))
}

/// Disconnect the clients of a database (all clients but the console's own without one),
/// then close its idle server connections.
pub fn kill(ctx: &Arc<Context>, db: Option<&str>) -> Result<Reply, AdminError> {
    for c in ctx.admin.clients.all() {
        let hit = match db {
            Some(db) => *c.database == *db,
            None => !super::is_admin_database(&c.database),
        };
        if hit {
            c.kill();
        }
    }
    reconnect(ctx, db)?;
    Ok(Reply::Tag("KILL"))
}

/// WAIT_CLOSE [db]: return once every server connection of the database (or of all)
/// that RECONNECT marked close_needed has closed.
pub async fn wait_close(ctx: &Arc<Context>, db: Option<&str>) -> Result<Reply, AdminError> {
    loop {
        let open: usize = ctx
            .pools
            .all()
            .iter()
            .filter(|p| db.is_none_or(|db| *p.key.database == *db))
            .map(|p| p.close_needed_open())
            .sum();
        if open == 0 {
            return Ok(Reply::Tag("WAIT_CLOSE"));
        }
        if ctx.shutdown.is_cancelled() {
            return Err(AdminError::new("pgtenant is shutting down"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub fn kill_client(ctx: &Arc<Context>, id: u64) -> Result<Reply, AdminError> {
    if ctx.admin.clients.kill(id) {
        tracing::info!(client = id, "client killed from the admin console");
        Ok(Reply::Tag("KILL_CLIENT"))
    } else {
        Err(AdminError::new(format!("client {id} not found")))
    }
}

/// Change a setting that may change at run time. Lasts until the next RELOAD, which
/// goes back to the file (as in PgBouncer).
pub fn set(ctx: &Arc<Context>, key: &str, value: &str) -> Result<Reply, AdminError> {
    let new = super::show_config::set(&ctx.settings(), key, value).map_err(AdminError::new)?;
    ctx.settings.store(Arc::new(new));
    ctx.config_epoch
        .fetch_add(1, std::sync::atomic::Ordering::Release);
    for p in ctx.pools.all() {
        p.regrant();
    }
    tracing::info!(key, value, "setting changed from the admin console");
    Ok(Reply::Tag("SET"))
}
