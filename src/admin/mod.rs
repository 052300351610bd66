//! The admin console: `psql -p 6432 pgtenant` (or `pgbouncer`), PgBouncer-compatible.
//!
//! A client that logs in to the admin database is handed to [`serve`] instead of the
//! session loop: no server connection, no pool. It speaks the simple query protocol; each
//! query is parsed into a [`Command`] (`parser.rs`) and answered as an ordinary result set
//! by the file of its family (`show_pools.rs`, `show_stats.rs`, …, `control.rs`).
//! `admin_users` may run everything, `stats_users` only SHOW.
//!
//! The columns of PgBouncer's SHOW commands are a contract tools depend on: names and
//! order are PgBouncer 1.25's exactly. Every value is sent as text.
mod control;
mod migrate;
pub mod parser;
mod pause;
pub mod registry;
mod show_activity;
mod show_citus;
mod show_clients;
mod show_config;
mod show_metrics;
mod show_pools;
mod show_stats;
mod suspend;
mod tenant_limits;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::config::Overrides;
use crate::context::Context;
use crate::logging::Escaped;
use crate::net::{Connection, Frame};
use crate::protocol::{build, sqlstate};

pub use parser::{parse, Command, Show};
pub use pause::PauseState;
pub use registry::{ClientInfo, ClientRegistry, SessionConsole};
pub use show_stats::spawn_stats;
pub use suspend::{lift_suspend_at_shutdown, SuspendState};

/// Database names that reach the admin console.
pub const ADMIN_DATABASES: [&str; 2] = ["pgtenant", "pgbouncer"];

pub fn is_admin_database(db: &str) -> bool {
    ADMIN_DATABASES.contains(&db)
}

/// What the console needs beyond the rest of the context: the client registry, the
/// overrides a RELOAD re-applies, when the process started.
pub struct AdminState {
    pub clients: ClientRegistry,
    pub overrides: Overrides,
    pub started: Instant,
    pub started_at: SystemTime,
    /// PAUSE / RESUME.
    pub pause: PauseState,
    /// SUSPEND / RESUME.
    pub suspend: SuspendState,
    /// SHOW STATS' averages over the last stats_period.
    pub stats: show_stats::StatsWindow,
}

impl AdminState {
    pub fn new(overrides: Overrides) -> AdminState {
        AdminState {
            clients: ClientRegistry::default(),
            overrides,
            started: Instant::now(),
            started_at: SystemTime::now(),
            pause: PauseState::default(),
            suspend: SuspendState::default(),
            stats: Default::default(),
        }
    }
}

/// A user's rights in the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Admin,
    Stats,
}

/// The access `user` has under the current settings (None: not allowed in).
pub fn access(ctx: &Context, user: &str) -> Option<Access> {
    let s = ctx.settings();
    if s.admin_users.iter().any(|u| u == user) {
        Some(Access::Admin)
    } else if s.stats_users.iter().any(|u| u == user) {
        Some(Access::Stats)
    } else {
        None
    }
}

/// An error answer to one command (the console stays open).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    pub code: &'static str,
    pub message: String,
}

impl AdminError {
    pub fn new(message: impl Into<String>) -> AdminError {
        AdminError {
            code: sqlstate::PROTOCOL_VIOLATION,
            message: message.into(),
        }
    }

    pub fn not_supported(what: &str) -> AdminError {
        AdminError {
            code: sqlstate::FEATURE_NOT_SUPPORTED,
            message: format!("{what} is not supported yet by pgtenant"),
        }
    }
}

/// The answer to one command: a result set, or just a command tag.
pub enum Reply {
    Rows(ResultSet),
    /// A NOTICE, then the SHOW tag (SHOW HELP, as PgBouncer answers it).
    Notice(String),
    /// A NOTICE, then a result set (SHOW QUIET TENANTS, when it ranked only part).
    RowsNotice(ResultSet, String),
    Tag(&'static str),
    /// A NOTICE, then the command tag (RESET TENANT of a tenant with no override).
    TagNotice(&'static str, String),
}

/// A result set of text columns.
pub struct ResultSet {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    pub fn new(columns: &[&'static str]) -> ResultSet {
        ResultSet {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Add a row; `None` is SQL NULL.
    pub fn push(&mut self, row: Vec<Option<String>>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }

    /// Add a row of non-null values.
    pub fn push_values<I, V>(&mut self, row: I)
    where
        I: IntoIterator<Item = V>,
        V: ToString,
    {
        self.push(row.into_iter().map(|v| Some(v.to_string())).collect());
    }

    fn queue(&self, conn: &mut Connection) {
        let mut body = Vec::new();
        body.extend_from_slice(&(self.columns.len() as i16).to_be_bytes());
        for c in &self.columns {
            body.extend_from_slice(c.as_bytes());
            body.push(0);
            body.extend_from_slice(&0i32.to_be_bytes()); // table oid
            body.extend_from_slice(&0i16.to_be_bytes()); // column number
            body.extend_from_slice(&25i32.to_be_bytes()); // text
            body.extend_from_slice(&(-1i16).to_be_bytes());
            body.extend_from_slice(&(-1i32).to_be_bytes());
            body.extend_from_slice(&0i16.to_be_bytes()); // text format
        }
        conn.queue(&Frame::new(b'T', &body));
        for row in &self.rows {
            let mut body = Vec::new();
            body.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for v in row {
                match v {
                    Some(v) => {
                        body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        body.extend_from_slice(v.as_bytes());
                    }
                    None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
            conn.queue(&Frame::new(b'D', &body));
        }
    }
}

/// Run one command for `user`.
pub async fn execute(
    ctx: &Arc<Context>,
    user: &str,
    access: Access,
    cmd: Command,
) -> Result<Reply, AdminError> {
    if access == Access::Stats && !cmd.is_read_only() {
        // PgBouncer's wording.
        return Err(AdminError::new("admin access needed"));
    }
    let rows = |r: ResultSet| Ok(Reply::Rows(r));
    match cmd {
        Command::Empty => Ok(Reply::Tag("")),
        Command::Show(s) => match s {
            Show::Help => Ok(Reply::Notice(format!(
                "Console usage\n\t{}",
                parser::USAGE.join("\n\t")
            ))),
            Show::Pools => rows(show_pools::pools(ctx)),
            Show::Stats => rows(show_stats::stats(ctx)),
            Show::StatsTotals => rows(show_stats::totals(ctx)),
            Show::StatsAverages => rows(show_stats::averages(ctx)),
            Show::Servers => rows(show_clients::servers(ctx)),
            Show::Clients => rows(show_clients::clients(ctx)),
            Show::Databases => rows(show_config::databases(ctx)),
            Show::Users => rows(show_config::users(ctx)),
            Show::Config => rows(show_config::config(ctx)),
            Show::Lists => rows(show_config::lists(ctx)),
            Show::Version => rows(show_config::version()),
            Show::State => rows(show_config::state(ctx)),
            Show::Nodes => rows(show_citus::nodes(ctx)),
            Show::Shards(t) => show_citus::shards(ctx, t.as_deref()).map(Reply::Rows),
            Show::Tenant { value, table } => {
                show_citus::tenant(ctx, &value, table.as_deref()).map(Reply::Rows)
            }
            Show::TenantActivity { value, table } => {
                show_activity::tenant_activity(ctx, &value, table.as_deref()).map(Reply::Rows)
            }
            Show::QuietTenants(q) => show_activity::quiet_tenants(ctx, q).await,
            Show::Routes => rows(show_citus::routes(ctx)),
            Show::PlanCache => rows(show_citus::plan_cache(ctx)),
            Show::Tenants => rows(show_metrics::tenants(ctx, &ctx.pools.tenant_waiting())),
            Show::Latency => rows(show_metrics::latency()),
            Show::Migration => migrate::show(ctx).await.map(Reply::Rows),
            Show::TenantLimits => Ok(tenant_limits::show(ctx)),
        },
        Command::TenantLimit(c) => tenant_limits::change(ctx, user, c).await,
        Command::Migrate(m) => migrate::migrate(ctx, m).await,
        Command::Reload => control::reload(ctx),
        Command::Shutdown => control::shutdown(ctx),
        Command::Reconnect(db) => control::reconnect(ctx, db.as_deref()),
        Command::Kill(db) => control::kill(ctx, db.as_deref()),
        Command::KillClient(id) => control::kill_client(ctx, id),
        Command::Set { key, value } => control::set(ctx, &key, &value),
        Command::Pause(_) if ctx.admin.suspend.is_on() => {
            Err(AdminError::new("already suspended/paused"))
        }
        Command::Pause(db) => pause::pause(ctx, db.as_deref()).await,
        Command::Resume(None) if ctx.admin.suspend.is_on() => suspend::resume(ctx),
        Command::Resume(db) => pause::resume(ctx, db.as_deref()),
        Command::Suspend => suspend::suspend(ctx).await,
        Command::WaitClose(db) => control::wait_close(ctx, db.as_deref()).await,
    }
}

/// Queue the greeting an admin client gets after authentication.
pub fn greet(conn: &mut Connection, pid: i32, secret: i32, application_name: &str) {
    conn.queue(&build::auth_ok());
    for (k, v) in [
        ("server_version", "16.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        ("application_name", application_name),
    ] {
        conn.queue(&build::parameter_status(k, v));
    }
    conn.queue(&build::backend_key_data(pid, secret));
    conn.queue(&build::ready_for_query(b'I'));
}

/// Serve one admin console connection until it leaves (or pgtenant shuts down, or an
/// admin kills it). `user` has logged in already and was greeted.
pub async fn serve(
    mut conn: Connection,
    user: String,
    ctx: Arc<Context>,
    kill: tokio_util::sync::CancellationToken,
) -> Result<(), crate::frontend::FrontendError> {
    // Extended protocol is refused; its messages are dropped until Sync.
    let mut extended_refused = false;
    loop {
        conn.flush().await?;
        let f = tokio::select! {
            f = conn.read_frame() => f?,
            _ = kill.cancelled() => {
                conn.queue(&build::fatal(sqlstate::ADMIN_SHUTDOWN, "pgtenant is shutting down"));
                let _ = conn.flush().await;
                return Ok(());
            }
        };
        let Some(f) = f else {
            return Ok(());
        };
        match f.tag() {
            b'X' => return Ok(()),
            b'Q' => {
                let text = crate::protocol::decode::query_text(f.body())?;
                let text: &str = &text;
                let parsed = parse(text);
                // Changes (SET, RELOAD, KILL, PAUSE, …) at info; SHOW and friends at
                // debug: a monitoring poller would otherwise fill the log.
                match &parsed {
                    Ok(cmd) if cmd.is_read_only() => {
                        tracing::debug!(user = %Escaped(&user), command = %Escaped(text), "admin command")
                    }
                    _ => {
                        tracing::info!(user = %Escaped(&user), command = %Escaped(text), "admin command")
                    }
                }
                let reply = match access(&ctx, &user) {
                    None => Err(AdminError::new("admin access needed")),
                    Some(a) => match parsed {
                        Ok(cmd) => execute(&ctx, &user, a, cmd).await,
                        Err(e) => Err(AdminError::new(e.to_string())),
                    },
                };
                match reply {
                    Ok(Reply::Rows(rs)) => {
                        rs.queue(&mut conn);
                        conn.queue(&crate::protocol::build::command_complete("SHOW"));
                    }
                    Ok(Reply::RowsNotice(rs, text)) => {
                        conn.queue(&build::notice(&text));
                        rs.queue(&mut conn);
                        conn.queue(&crate::protocol::build::command_complete("SHOW"));
                    }
                    Ok(Reply::Notice(text)) => {
                        conn.queue(&build::notice(&text));
                        conn.queue(&crate::protocol::build::command_complete("SHOW"));
                    }
                    Ok(Reply::Tag("")) => conn.queue(&Frame::new(b'I', &[])),
                    Ok(Reply::Tag(tag)) => {
                        conn.queue(&crate::protocol::build::command_complete(tag))
                    }
                    Ok(Reply::TagNotice(tag, text)) => {
                        conn.queue(&build::notice(&text));
                        conn.queue(&crate::protocol::build::command_complete(tag));
                    }
                    Err(e) => conn.queue(&build::error(e.code, &e.message)),
                }
                conn.queue(&build::ready_for_query(b'I'));
            }
            b'S' => {
                if extended_refused {
                    conn.queue(&build::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "the admin console supports only the simple query protocol",
                    ));
                    extended_refused = false;
                }
                conn.queue(&build::ready_for_query(b'I'));
            }
            b'H' => {}
            _ => extended_refused = true,
        }
    }
}

/// PgBouncer's time format: `2024-05-01 12:34:56 UTC`.
pub fn format_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A pool's database as the console shows it: `app` on the coordinator, `app@worker-1`
/// on a worker, so that nothing is summed away.
pub fn pool_database(key: &crate::pool::PoolKey) -> String {
    if !key.node.is_worker() {
        key.database.to_string()
    } else {
        format!("{}@{}", key.database, key.node.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_times_like_pgbouncer() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_566_896);
        assert_eq!(format_time(t), "2024-05-01 12:34:56 UTC");
        assert_eq!(
            format_time(SystemTime::UNIX_EPOCH),
            "1970-01-01 00:00:00 UTC"
        );
    }
}
