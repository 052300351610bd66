//! Loading: TOML file < environment < command-line flags, then validation.
//!
//! The file is walked key by key instead of being deserialized into one struct: serde stops
//! at the first bad field, and an operator fixing a ConfigMap wants every mistake at once.
//! Every error names its key (`pool_size: expected a positive integer, got -1`).
//!
//! Files: `load.rs` (the draft every source writes into, its defaults, the choice
//! tables, `load`/`reload`), `file.rs` (the file's keys), `overrides.rs` (flags and
//! environment), `finish.rs` (cross-checks and the `Settings`), `tests.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Value;

use crate::net::uring::IoEngine;

use super::values::*;

use super::{
    AuthType, ClientTls, Listener, LogFormat, MultiTenantReads, PoolMode, ReferenceReads, Routing,
    ServerTls, Settings, Upstream, UserSettings,
};

/// Values given on the command line or in the environment; `None` = not given.
///
/// clap fills this with flag > environment precedence; `load` puts it above the file.
/// The same value is kept for the life of the process so a reload re-applies it.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config` / `PGTENANT_CONFIG`. `load` reads only the file it is handed; this is
    /// kept here so the server knows what was asked for.
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub pool_mode: Option<String>,
    pub pool_size: Option<u32>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub workers: Option<usize>,
    pub io_engine: Option<String>,
    pub auth_type: Option<String>,
    pub max_client_conn: Option<u32>,
    /// `--max-startup-clients` / `PGTENANT_MAX_STARTUP_CLIENTS`.
    pub max_startup_clients: Option<u32>,
    /// `--client-login-timeout SECONDS` / `PGTENANT_CLIENT_LOGIN_TIMEOUT`.
    pub client_login_timeout: Option<f64>,
    /// `--http-listen` / `PGTENANT_HTTP_LISTEN`: the metrics and probes address.
    pub http_listen: Option<String>,
    /// `--admin-users a,b` / `PGTENANT_ADMIN_USERS`.
    pub admin_users: Option<String>,
    /// `--stats-users a,b` / `PGTENANT_STATS_USERS`.
    pub stats_users: Option<String>,
    /// `--server-pipelining off|auto` / `PGTENANT_SERVER_PIPELINING`.
    pub server_pipelining: Option<String>,
}

/// Every problem found, each naming its key.
#[derive(Debug, thiserror::Error)]
#[error("{}", .errors.join("\n"))]
pub struct ConfigError {
    pub errors: Vec<String>,
}

impl ConfigError {
    fn one(key: &str, msg: impl std::fmt::Display) -> ConfigError {
        ConfigError {
            errors: vec![format!("{key}: {msg}")],
        }
    }
}

/// Load settings from `file` (if any), then apply `overrides`, then validate.
pub fn load(file: Option<&PathBuf>, overrides: &Overrides) -> Result<Settings, ConfigError> {
    let mut draft = Draft::default();
    let mut errs = Errors::default();
    let mut notes = Vec::new();
    if let Some(path) = file {
        let table = read_file(path, &mut notes)?;
        // Relative paths in the file are relative to the file, not to the working
        // directory: the same file then means the same thing from `check` and from `run`.
        let base = path.parent().unwrap_or(Path::new(""));
        apply_file(&mut draft, &table, base, &mut errs);
    }
    apply_overrides(&mut draft, overrides, &mut errs);
    let mut settings = finish(draft, file.cloned(), errs)?;
    settings.notes = notes;
    Ok(settings)
}

/// Re-read the file the current settings came from and re-apply the same overrides.
/// The caller swaps the result in only if it is Ok; a bad edit leaves the old settings.
pub fn reload(current: &Settings, overrides: &Overrides) -> Result<Settings, ConfigError> {
    load(current.config_file.as_ref(), overrides)
}

/// Errors collected while loading; each is "key: message".
#[derive(Default)]
struct Errors(Vec<String>);

impl Errors {
    fn push(&mut self, key: &str, msg: impl std::fmt::Display) {
        self.0.push(format!("{key}: {msg}"));
    }

    /// Record `(key, message)` pairs found by a section's own parser.
    fn push_all(&mut self, found: Vec<(String, String)>) {
        for (k, m) in found {
            self.push(&k, m);
        }
    }

    /// Record the error of `r`, if any, under `key`.
    fn check<T>(&mut self, key: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| self.push(key, e)).ok()
    }
}

/// A listener as written, before its address is checked.
struct DraftListener {
    /// How errors name it: `listen` for the primary, `listener[i]` for the others.
    key: String,
    listen: String,
    auth_type: AuthType,
    client_tls: ClientTls,
}

/// Settings being assembled: defaults, then the file, then overrides. Values that need
/// cross-checks or parsing (listen, upstream) stay raw until `finish`.
struct Draft {
    primary: DraftListener,
    extra_listeners: Vec<DraftListener>,
    upstream: Option<String>,
    pool_mode: PoolMode,
    pool_size: u32,
    min_pool_size: u32,
    reserve_pool_size: u32,
    reserve_pool_timeout: Duration,
    max_client_conn: u32,
    max_startup_clients: u32,
    client_login_timeout: Duration,
    max_db_connections: u32,
    query_wait_timeout: Duration,
    server_connect_timeout: Duration,
    server_idle_timeout: Duration,
    server_lifetime: Duration,
    pool_idle_timeout: Duration,
    idle_transaction_timeout: Duration,
    server_reset_query: String,
    server_reset_query_always: bool,
    session_check_always: bool,
    server_pipelining: bool,
    server_pipeline_depth: u32,
    server_check_query: String,
    server_check_delay: Duration,
    stats_period: Duration,
    max_message_size: u32,
    max_buffered_message_bytes: u32,
    max_prepared_statements: u32,
    max_listen_channels: u32,
    max_pool_listen_channels: u32,
    shutdown_timeout: Duration,
    auth_file: Option<PathBuf>,
    auth_hba_file: Option<PathBuf>,
    unix_socket_dir: Option<PathBuf>,
    unix_socket_mode: u32,
    users: BTreeMap<String, UserSettings>,
    databases: BTreeMap<String, super::Database>,
    max_user_connections: u32,
    auth_user: Option<String>,
    auth_query: String,
    auth_dbname: Option<String>,
    auth_query_cache_ttl: Duration,
    client_tls_cert_file: Option<PathBuf>,
    client_tls_key_file: Option<PathBuf>,
    server_tls: ServerTls,
    server_tls_ca_file: Option<PathBuf>,
    log_format: LogFormat,
    log_level: String,
    workers: usize,
    io_engine: IoEngine,
    tcp_keepalive: Duration,
    routing: Routing,
    shard_map_refresh_interval: Duration,
    instance_name: Option<String>,
    tenant_homes_lease: Duration,
    node_addresses: BTreeMap<String, String>,
    reference_reads: ReferenceReads,
    multi_tenant_reads: MultiTenantReads,
    plan_cache_size: u32,
    worker_retry_delay: Duration,
    http_listen: String,
    shard_map_max_age: Duration,
    admin_users: Vec<String>,
    stats_users: Vec<String>,
    tenant_max_active: super::MaxActive,
    tenant_max_tps: f64,
    tenant_statement_timeout: Duration,
    tenant_limits: BTreeMap<String, super::TenantOverride>,
}

/// The defaults, as PgBouncer's where PgBouncer has the setting.
impl Default for Draft {
    fn default() -> Draft {
        Draft {
            primary: DraftListener {
                key: "listen".into(),
                listen: "127.0.0.1:6432".into(),
                auth_type: AuthType::ScramSha256,
                client_tls: ClientTls::Disable,
            },
            extra_listeners: Vec::new(),
            upstream: None,
            pool_mode: PoolMode::Transaction,
            pool_size: 20,
            min_pool_size: 0,
            reserve_pool_size: 0,
            reserve_pool_timeout: secs(5),
            max_client_conn: 100,
            // Not in PgBouncer; as many waiting logins as max_client_conn's default.
            max_startup_clients: 1000,
            // PgBouncer says 60; an honest login takes milliseconds, a silent socket
            // should not hold its place for a minute.
            client_login_timeout: secs(15),
            max_db_connections: 0,
            query_wait_timeout: secs(120),
            server_connect_timeout: secs(15),
            server_idle_timeout: secs(600),
            server_lifetime: secs(3600),
            pool_idle_timeout: secs(60),
            idle_transaction_timeout: secs(0),
            server_reset_query: "DISCARD ALL".into(),
            server_reset_query_always: false,
            session_check_always: false,
            server_pipelining: false,
            server_pipeline_depth: 8,
            server_check_query: "select 1".into(),
            server_check_delay: secs(30),
            stats_period: secs(60),
            max_message_size: 64 * 1024 * 1024,
            max_buffered_message_bytes: crate::net::budget::DEFAULT_BUDGET as u32,
            max_prepared_statements: 200,
            max_listen_channels: 1024,
            max_pool_listen_channels: 8192,
            shutdown_timeout: secs(30),
            auth_file: None,
            auth_hba_file: None,
            unix_socket_dir: None,
            unix_socket_mode: 0o777,
            users: BTreeMap::new(),
            databases: BTreeMap::new(),
            max_user_connections: 0,
            auth_user: None,
            auth_query: DEFAULT_AUTH_QUERY.into(),
            auth_dbname: None,
            // Not in PgBouncer (which asks at every login). Long enough that a client
            // retrying a refused name in a loop costs the server one query per 5 s;
            // short enough that a role created right after a refused try logs in
            // seconds later.
            auth_query_cache_ttl: secs(5),
            client_tls_cert_file: None,
            client_tls_key_file: None,
            server_tls: ServerTls::Disable,
            server_tls_ca_file: None,
            log_format: LogFormat::Plain,
            log_level: "info".into(),
            workers: 0,
            io_engine: IoEngine::Auto,
            tcp_keepalive: secs(0),
            routing: Routing::Auto,
            shard_map_refresh_interval: Duration::from_millis(500),
            instance_name: None,
            tenant_homes_lease: secs(10),
            node_addresses: BTreeMap::new(),
            reference_reads: ReferenceReads::Coordinator,
            multi_tenant_reads: MultiTenantReads::Coordinator,
            plan_cache_size: 10_000,
            worker_retry_delay: secs(5),
            http_listen: "127.0.0.1:9930".into(),
            shard_map_max_age: secs(60),
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            tenant_max_active: super::MaxActive::Off,
            tenant_max_tps: 0.0,
            tenant_statement_timeout: Duration::ZERO,
            tenant_limits: BTreeMap::new(),
        }
    }
}

/// PgBouncer 1.25's default auth_query: no row for a role that may not log in, NULL for
/// one whose password has expired.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin";

/// This host's name and the process id: unique per instance on a host, and across pods.
fn default_instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "pgtenant".into());
    format!("{host}:{}", std::process::id())
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `session_check`: after transactions that may have changed the session (`auto`), or
/// after every transaction (`always`: also what triggers, views and policies do).
const SESSION_CHECKS: &[(&str, bool)] = &[("auto", false), ("always", true)];

/// `server_pipelining`: several clients' self-contained statements back to back on one
/// server connection while the pool is saturated (`auto`), or never (`off`).
pub(crate) const SERVER_PIPELINING: &[(&str, bool)] = &[("off", false), ("auto", true)];

/// `io_engine`: which I/O engine drives the sockets (see `net::uring`).
pub(crate) const IO_ENGINES: &[(&str, IoEngine)] = &[
    ("auto", IoEngine::Auto),
    ("io_uring", IoEngine::IoUring),
    ("epoll", IoEngine::Epoll),
];

pub(super) const POOL_MODES: &[(&str, PoolMode)] = &[
    ("session", PoolMode::Session),
    ("transaction", PoolMode::Transaction),
    ("statement", PoolMode::Statement),
];
const AUTH_TYPES: &[(&str, AuthType)] = &[
    ("scram-sha-256", AuthType::ScramSha256),
    ("md5", AuthType::Md5),
    ("trust", AuthType::Trust),
    ("hba", AuthType::Hba),
];
const CLIENT_TLS: &[(&str, ClientTls)] = &[
    ("disable", ClientTls::Disable),
    ("allow", ClientTls::Allow),
    ("require", ClientTls::Require),
];
const SERVER_TLS: &[(&str, ServerTls)] = &[
    ("disable", ServerTls::Disable),
    ("prefer", ServerTls::Prefer),
    ("require", ServerTls::Require),
    ("verify-ca", ServerTls::VerifyCa),
    ("verify-full", ServerTls::VerifyFull),
];
const LOG_FORMATS: &[(&str, LogFormat)] = &[("plain", LogFormat::Plain), ("json", LogFormat::Json)];
pub(super) const ROUTING: &[(&str, Routing)] = &[
    ("auto", Routing::Auto),
    ("on", Routing::On),
    ("off", Routing::Off),
];
const REFERENCE_READS: &[(&str, ReferenceReads)] = &[
    ("coordinator", ReferenceReads::Coordinator),
    ("local_worker", ReferenceReads::LocalWorker),
];
const MULTI_TENANT_READS: &[(&str, MultiTenantReads)] = &[
    ("coordinator", MultiTenantReads::Coordinator),
    ("any", MultiTenantReads::Any),
];

mod file;
mod finish;
mod overrides;
use file::{apply_file, read_file};
use finish::finish;
use overrides::apply_overrides;

#[cfg(test)]
mod tests;
