//! Command-line flags and `PGTENANT_*` environment variables, applied above the file.
use super::*;

/// Overrides sit above the file. Their errors say where the value came from, since the
/// operator will otherwise look for it in the file.
/// Where an override's value came from, in its error.
const FROM: &str = "(from command line or environment)";

pub(super) fn apply_overrides(d: &mut Draft, o: &Overrides, errs: &mut Errors) {
    if let Some(x) = &o.listen {
        d.primary.listen = x.clone();
    }
    if let Some(x) = &o.upstream {
        d.upstream = Some(x.clone());
    }
    choice_override(
        errs,
        "pool_mode",
        &o.pool_mode,
        POOL_MODES,
        &mut d.pool_mode,
    );
    if let Some(x) = o.pool_size {
        d.pool_size = x;
    }
    choice_override(
        errs,
        "log_format",
        &o.log_format,
        LOG_FORMATS,
        &mut d.log_format,
    );
    if let Some(x) = &o.log_level {
        d.log_level = x.clone();
    }
    if let Some(x) = o.workers {
        d.workers = x;
    }
    choice_override(
        errs,
        "auth_type",
        &o.auth_type,
        AUTH_TYPES,
        &mut d.primary.auth_type,
    );
    if let Some(x) = o.max_client_conn {
        d.max_client_conn = x;
    }
    if let Some(x) = o.max_startup_clients {
        d.max_startup_clients = x;
    }
    choice_override(
        errs,
        "io_engine",
        &o.io_engine,
        IO_ENGINES,
        &mut d.io_engine,
    );
    choice_override(
        errs,
        "server_pipelining",
        &o.server_pipelining,
        SERVER_PIPELINING,
        &mut d.server_pipelining,
    );
    if let Some(x) = o.client_login_timeout {
        let r = Duration::try_from_secs_f64(x)
            .map_err(|_| format!("expected a number of seconds, got {x} {FROM}"));
        if let Some(x) = errs.check("client_login_timeout", r) {
            d.client_login_timeout = x;
        }
    }
    if let Some(x) = &o.http_listen {
        d.http_listen = x.clone();
    }
    if let Some(x) = &o.admin_users {
        d.admin_users = split_users(x);
    }
    if let Some(x) = &o.stats_users {
        d.stats_users = split_users(x);
    }
}

/// A flag or variable naming one of `table`'s choices, checked like the file's key.
fn choice_override<T: Copy>(
    errs: &mut Errors,
    key: &str,
    value: &Option<String>,
    table: &[(&str, T)],
    field: &mut T,
) {
    if let Some(x) = value {
        let r = choice_str(x, table).map_err(|e| format!("{e} {FROM}"));
        if let Some(x) = errs.check(key, r) {
            *field = x;
        }
    }
}
