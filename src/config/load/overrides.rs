//! Command-line flags and `PGTENANT_*` environment variables, applied above the file.
use super::*;

/// Overrides sit above the file. Their errors say where the value came from, since the
/// operator will otherwise look for it in the file.
pub(super) fn apply_overrides(d: &mut Draft, o: &Overrides, errs: &mut Errors) {
    const FROM: &str = "(from command line or environment)";
    if let Some(x) = &o.listen {
        d.primary.listen = x.clone();
    }
    if let Some(x) = &o.upstream {
        d.upstream = Some(x.clone());
    }
    if let Some(x) = &o.pool_mode {
        let r = choice_str(x, POOL_MODES).map_err(|e| format!("{e} {FROM}"));
        if let Some(x) = errs.check("pool_mode", r) {
            d.pool_mode = x;
        }
    }
    if let Some(x) = o.pool_size {
        d.pool_size = x;
    }
    if let Some(x) = &o.log_format {
        let r = choice_str(x, LOG_FORMATS).map_err(|e| format!("{e} {FROM}"));
        if let Some(x) = errs.check("log_format", r) {
            d.log_format = x;
        }
    }
    if let Some(x) = &o.log_level {
        d.log_level = x.clone();
    }
    if let Some(x) = o.workers {
        d.workers = x;
    }
    if let Some(x) = &o.auth_type {
        let r = choice_str(x, AUTH_TYPES).map_err(|e| format!("{e} {FROM}"));
        if let Some(x) = errs.check("auth_type", r) {
            d.primary.auth_type = x;
        }
    }
    if let Some(x) = o.max_client_conn {
        d.max_client_conn = x;
    }
    if let Some(x) = o.max_startup_clients {
        d.max_startup_clients = x;
    }
    if let Some(x) = &o.io_engine {
        let r = choice_str(x, IO_ENGINES).map_err(|e| format!("{e} {FROM}"));
        if let Some(x) = errs.check("io_engine", r) {
            d.io_engine = x;
        }
    }
    if let Some(x) = &o.server_pipelining {
        let r = choice_str(x, SERVER_PIPELINING).map_err(|e| format!("{e} {FROM}"));
        if let Some(x) = errs.check("server_pipelining", r) {
            d.server_pipelining = x;
        }
    }
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
